//! The `file` sink: CloudTrail-style gzip files in a local folder.
//!
//! Layout (DESIGN.md §5), one file per kind per roll interval:
//! `<dir>/CFLogs/<foundation>/<kind>/<YYYY>/<MM>/<DD>/<foundation>_<kind>_<YYYYMMDDTHHmmZ>_<instance>_<unique>.json.gz`
//! holding gzip of `{"Records":[...]}`. As in CloudTrail, the time in the name
//! is when the file was delivered (closed), and the unique suffix keeps
//! instances and restarts from overwriting each other.
//!
//! A file is written under `<dir>/.partial/` and renamed into place once
//! complete and synced, so anything under `CFLogs/` is always a whole gzip file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use rand::Rng;
use rand::distr::Alphanumeric;

use super::{Output, Sink, SinkError};
use crate::record::{EncodeContext, Kind, Record};

#[derive(Clone, Debug)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
    pub instance_index: u32,
    pub roll_interval: Duration,
    /// gzip level, 0–9.
    pub gzip_level: u32,
}

struct OpenFile {
    partial: PathBuf,
    gz: GzEncoder<BufWriter<File>>,
    records: u64,
}

pub struct FileSink {
    cfg: FileSinkConfig,
    ctx: EncodeContext,
    open: [Option<OpenFile>; 4],
    written: Vec<Output>,
    buf: Vec<u8>,
}

impl FileSink {
    /// Creates the folder; warns about incomplete files an earlier run left.
    pub fn new(cfg: FileSinkConfig, ctx: EncodeContext) -> Result<Self, SinkError> {
        let partial_dir = cfg.dir.join(".partial");
        std::fs::create_dir_all(&partial_dir).map_err(|e| io(&partial_dir, e))?;
        let leftovers = std::fs::read_dir(&partial_dir)
            .map_err(|e| io(&partial_dir, e))?
            .count();
        if leftovers > 0 {
            tracing::warn!(
                dir = %partial_dir.display(),
                files = leftovers,
                "incomplete files from an earlier run were left; they are not valid gzip and are kept for inspection"
            );
        }
        Ok(Self {
            cfg,
            ctx,
            open: [None, None, None, None],
            written: Vec::new(),
            buf: Vec::with_capacity(1 << 16),
        })
    }

    fn open_file(&self, kind: Kind) -> Result<OpenFile, SinkError> {
        let partial =
            self.cfg
                .dir
                .join(".partial")
                .join(format!("{}_{}.json.gz", kind, unique_suffix()));
        let file = File::create(&partial).map_err(|e| io(&partial, e))?;
        let mut gz = GzEncoder::new(
            BufWriter::with_capacity(1 << 16, file),
            Compression::new(self.cfg.gzip_level),
        );
        gz.write_all(b"{\"Records\":[")
            .map_err(|e| io(&partial, e))?;
        Ok(OpenFile {
            partial,
            gz,
            records: 0,
        })
    }

    /// Completes one open file and moves it to its final name.
    fn close(&mut self, kind: Kind, file: OpenFile) -> Result<(), SinkError> {
        let OpenFile {
            partial,
            mut gz,
            records,
        } = file;
        gz.write_all(b"]}").map_err(|e| io(&partial, e))?;
        let file = gz
            .finish()
            .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
            .map_err(|e| io(&partial, e))?;
        file.sync_all().map_err(|e| io(&partial, e))?;
        let now = chrono::Utc::now();
        let dir = self
            .cfg
            .dir
            .join("CFLogs")
            .join(&self.ctx.foundation)
            .join(kind.as_str())
            .join(now.format("%Y/%m/%d").to_string());
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let path = dir.join(format!(
            "{}_{}_{}_{}_{}.json.gz",
            self.ctx.foundation,
            kind,
            now.format("%Y%m%dT%H%MZ"),
            self.cfg.instance_index,
            unique_suffix()
        ));
        std::fs::rename(&partial, &path).map_err(|e| io(&path, e))?;
        tracing::info!(kind = %kind, records, path = %path.display(), "file delivered");
        self.written.push(Output {
            kind: kind.to_string(),
            path: path.display().to_string(),
            records,
        });
        Ok(())
    }
}

/// 16 random characters, as CloudTrail's file names carry.
fn unique_suffix() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

fn io(path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        sink: "file",
        path: path.display().to_string(),
        source,
    }
}

// The writes are plain blocking file writes on the sink's own task: they go
// to the page cache, and the sink task is never the ingress task, so a slow
// disk delays only this sink. (The gzip work is CPU this sink owns anyway.)
impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    async fn write(&mut self, batch: &[Arc<Record>]) -> Result<(), SinkError> {
        for record in batch {
            let k = record.kind.index();
            if self.open[k].is_none() {
                self.open[k] = Some(self.open_file(record.kind)?);
            }
            let file = self.open[k].as_mut().expect("opened above");
            self.buf.clear();
            if file.records > 0 {
                self.buf.push(b',');
            }
            record.write_json(&self.ctx, &mut self.buf);
            file.gz
                .write_all(&self.buf)
                .map_err(|e| io(&file.partial, e))?;
            file.records += 1;
        }
        Ok(())
    }

    async fn roll(&mut self) -> Result<(), SinkError> {
        let mut first_error = None;
        for kind in Kind::ALL {
            if let Some(file) = self.open[kind.index()].take()
                && let Err(e) = self.close(kind, file)
            {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn roll_interval(&self) -> Option<Duration> {
        Some(self.cfg.roll_interval)
    }

    fn outputs(&self) -> Vec<Output> {
        self.written.clone()
    }
}

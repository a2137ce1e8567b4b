//! The `file` sink: CloudTrail-style gzip files in a local folder.
//!
//! One `FileSink` writes one kind (the pipeline starts one per kind routed to
//! the file sink), so the kinds are encoded and compressed in parallel and a
//! busy kind (app logs) never holds up another (API invocations).
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
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::archive::{RecordsFile, unique_suffix};
use super::{Batch, BuildError, Output, Sink, SinkError, SinkFailure};
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
    /// The encoder shared with the s3 sink (`sink::archive`).
    file: RecordsFile<BufWriter<File>>,
}

pub(crate) struct FileSink {
    cfg: FileSinkConfig,
    ctx: EncodeContext,
    kind: Kind,
    name: String,
    open: Option<OpenFile>,
    written: Vec<Output>,
}

impl FileSink {
    /// A writer of `kind` records. Creates the folder; warns about incomplete
    /// files of this kind that an earlier run left.
    pub fn new(cfg: FileSinkConfig, ctx: EncodeContext, kind: Kind) -> Result<Self, BuildError> {
        let partial_dir = cfg.dir.join(".partial");
        let unusable = |source| BuildError::FileDir {
            path: partial_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&partial_dir).map_err(unusable)?;
        let prefix = format!("{kind}_");
        let leftovers = std::fs::read_dir(&partial_dir)
            .map_err(unusable)?
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            })
            .count();
        if leftovers > 0 {
            tracing::warn!(
                dir = %partial_dir.display(),
                kind = %kind,
                files = leftovers,
                "incomplete files from an earlier run were left; they are not valid gzip and are kept for inspection"
            );
        }
        Ok(Self {
            cfg,
            ctx,
            kind,
            name: format!("file:{kind}"),
            open: None,
            written: Vec::new(),
        })
    }

    fn open_file(&self) -> Result<OpenFile, SinkError> {
        let kind = self.kind;
        let partial =
            self.cfg
                .dir
                .join(".partial")
                .join(format!("{}_{}.json.gz", kind, unique_suffix()));
        let file = File::create(&partial).map_err(|e| io(&partial, e))?;
        let file = RecordsFile::new(BufWriter::with_capacity(1 << 16, file), self.cfg.gzip_level);
        Ok(OpenFile { partial, file })
    }

    /// Appends a batch to the open file, opening one if needed.
    fn append(&mut self, batch: &[Arc<Record>]) -> Result<(), SinkError> {
        for record in batch {
            debug_assert_eq!(
                record.kind, self.kind,
                "routing sends a file sink only its kind"
            );
            if self.open.is_none() {
                self.open = Some(self.open_file()?);
            }
            let open = self.open.as_mut().expect("opened above");
            open.file
                .append(record, &self.ctx)
                .map_err(|e| io(&open.partial, e))?;
        }
        Ok(())
    }

    /// Completes one open file and moves it to its final name.
    fn close(&mut self, file: OpenFile) -> Result<(), SinkError> {
        let kind = self.kind;
        let OpenFile { partial, file } = file;
        let records = file.records();
        let file = file
            .finish()
            .and_then(|(w, _)| w.into_inner().map_err(|e| e.into_error()))
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

fn io(path: &Path, source: std::io::Error) -> SinkError {
    SinkError::Io {
        path: path.display().to_string(),
        source: Arc::new(source),
    }
}

// The writes are plain blocking file writes on the sink's own task: they go
// to the page cache, and the sink task is never the ingress task, so a slow
// disk delays only this sink. (The gzip work is CPU this sink owns anyway.)
impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        let in_flight_before = self.open.as_ref().map_or(0, |f| f.file.records());
        if let Err(error) = self.append(batch.records) {
            // A file that failed a write cannot be trusted to complete: abandon
            // it (it stays under .partial/ for inspection); the next batch
            // starts a new one.
            if let Some(f) = self.open.take() {
                tracing::warn!(path = %f.partial.display(), "abandoning a file after a failed write");
            }
            return Err(SinkFailure::Lost {
                error,
                in_flight: in_flight_before,
            });
        }
        // Nothing is delivered until the file is completed by a roll.
        Ok(0)
    }

    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        let Some(file) = self.open.take() else {
            return Ok(0);
        };
        let records = file.file.records();
        self.close(file).map_err(|error| SinkFailure::Lost {
            error,
            in_flight: records,
        })?;
        Ok(records)
    }

    fn roll_interval(&self) -> Option<Duration> {
        Some(self.cfg.roll_interval)
    }

    fn outputs(&self) -> Vec<Output> {
        self.written.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::proto::{Envelope, Log, envelope};
    use crate::sink::{BatchConfig, SinkQueue, run_sink};
    use std::sync::atomic::Ordering;

    fn app_logs(n: usize) -> Vec<Arc<Record>> {
        (0..n)
            .map(|i| {
                Arc::new(classify(Envelope {
                    message: Some(envelope::Message::Log(Log {
                        payload: format!("line {i}").into(),
                        r#type: 0,
                    })),
                    ..Default::default()
                }))
            })
            .collect()
    }

    fn sink(dir: &Path) -> FileSink {
        let cfg = FileSinkConfig {
            dir: dir.to_path_buf(),
            instance_index: 0,
            roll_interval: Duration::from_secs(60),
            gzip_level: 1,
        };
        let ctx = EncodeContext::new("t");
        FileSink::new(cfg, ctx, Kind::AppLog).unwrap()
    }

    #[tokio::test]
    async fn records_are_delivered_when_their_file_is_completed_and_lost_if_it_cannot_be() {
        let tmp = tempfile::tempdir().unwrap();
        // A file where the CFLogs folder must go: completing a file fails.
        std::fs::write(tmp.path().join("CFLogs"), "").unwrap();
        let mut sink = sink(tmp.path());
        let batch = app_logs(3);
        assert_eq!(
            sink.write(Batch::new(1, &batch)).await.unwrap(),
            0,
            "in flight"
        );
        let failure = sink.roll().await.unwrap_err();
        assert_eq!(failure.lost_in_flight(), 3);
        assert!(
            failure.error().to_string().contains("CFLogs"),
            "{}",
            failure.error()
        );

        std::fs::remove_file(tmp.path().join("CFLogs")).unwrap();
        let batch = app_logs(2);
        assert_eq!(sink.write(Batch::new(2, &batch)).await.unwrap(), 0);
        assert_eq!(sink.roll().await.unwrap(), 2, "delivered at completion");
        let outputs = sink.outputs();
        assert_eq!(outputs.len(), 1);
        assert_eq!(outputs[0].records, 2);
        assert_eq!(
            sink.roll().await.unwrap(),
            0,
            "nothing open, nothing written"
        );
    }

    #[tokio::test]
    async fn the_runner_counts_a_file_lost_at_completion_as_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("CFLogs"), "").unwrap();
        let (queue, rx) = SinkQueue::new("file:app_log", 100);
        queue.offer(app_logs(3));
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let s = run_sink(sink(tmp.path()), rx, stats, BatchConfig::default())
            .await
            .stats;
        assert_eq!(
            (s.received, s.delivered, s.pending(), s.dropped_write_error),
            (3, 0, 0, 3)
        );
    }

    /// With a disk buffer, the file sink's records stay unacknowledged until
    /// their file is completed: at a roll interval far away, 4,000 records
    /// (several times the buffer) went through only because the runner
    /// completes the file once it holds a quarter of the buffer. Before,
    /// the buffer filled and turned records away.
    #[tokio::test]
    async fn a_buffered_file_sink_completes_files_before_its_buffer_fills() {
        use crate::sink::buffer::{BufferConfig, Fsync, WhenFull};
        let tmp = tempfile::tempdir().unwrap();
        let buffer = BufferConfig {
            dir: tmp.path().join("buffer"),
            max_bytes: 16 * 1024,
            segment_bytes: 2 * 1024,
            when_full: WhenFull::DropNewest,
            fsync: Fsync::Every(Duration::from_secs(3600)),
            warn_fill: 0.0,
        };
        let (queue, rx) = SinkQueue::with_buffer("file:app_log", 100, &buffer).unwrap();
        let stats = Arc::clone(queue.stats());
        let mut sink = sink(tmp.path());
        sink.cfg.roll_interval = Duration::from_secs(3600);
        let batch = BatchConfig {
            max_records: Some(10),
            ..BatchConfig::default()
        };
        let runner = tokio::spawn(run_sink(sink, rx, Arc::clone(&stats), batch));
        let records = app_logs(4000);
        let framed: Vec<Record> = records.iter().map(|r| (**r).clone()).collect();
        let framed = crate::sink::buffer::segment_bytes(&framed).len();
        assert!(
            framed > 4 * 16 * 1024,
            "the records are several times the buffer: {framed} bytes"
        );
        for chunk in records.chunks(10) {
            assert!(queue.offer(chunk.to_vec()), "admitted");
            // Let the runner write it (and roll) before the next chunk.
            while stats.queued.load(Ordering::Acquire) > 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(queue);
        let report = runner.await.unwrap();
        let s = report.stats;
        assert_eq!(
            (s.received, s.delivered, s.dropped(), s.pending()),
            (4000, 4000, 0, 0)
        );
        let files = report.outputs.len();
        assert!(files >= 8, "completed by size, not by time: {files} files");
        let in_files: u64 = report.outputs.iter().map(|o| o.records).sum();
        assert_eq!(in_files, 4000);
    }
}

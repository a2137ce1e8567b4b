//! The `s3` sink: CloudTrail-style log files in an S3 bucket (or any
//! S3-compatible store), reached through the client in [`super::s3`].
//!
//! The same [`ObjectSink`] writes to a local folder ([`Target::Dir`]) when
//! the file sink must sign digests: one writer, two backends of [`Archive`].
//!
//! One `ObjectSink` writes one kind, like the file sink. Records are encoded into
//! an in-memory gzip [`RecordsFile`]; the file is completed when it reaches
//! `--roll-bytes` (uncompressed) or at `--roll-interval`, whichever comes first,
//! and uploaded as one PUT with `Content-Type: application/json`,
//! `Content-Encoding: gzip` and the configured server-side encryption.
//!
//! A completed file whose upload fails stays in memory (at most two per
//! kind) and is uploaded again before anything new is accepted: the sink
//! answers the next batch with a retryable failure, so the runner backs off
//! and the bounded queue in front of it absorbs (and past its bound, counts)
//! what arrives meanwhile. Its records stay `in_flight` until the upload
//! succeeds; nothing is dropped for an upload failure.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::notify::Notifier;
use super::s3::{S3Config, http_client, s3_archive};
use super::{Archive, ArchiveError, RecordsFile, log_file_key};
use crate::integrity::LogFileEntry;
use crate::record::{EncodeContext, Kind};
use crate::redact::SecretUrl;
use crate::sink::{Batch, BuildError, Output, Sink, SinkError, SinkFailure, SinkReport, SinkStats};

/// Where an [`ObjectSink`] stores its files.
#[derive(Clone, Debug)]
pub enum Target {
    S3(S3Config),
    /// A local folder (the file sink with a digest chain).
    Dir(std::path::PathBuf),
}

/// Everything an object sink (S3 or a signed local folder) needs. `Debug`
/// shows the webhook's credentials hidden and the S3 secrets masked.
#[derive(Clone, Debug)]
pub struct ObjectSinkConfig {
    pub target: Target,
    pub roll: RollConfig,
    pub digest: Option<super::digest::DigestSettings>,
    /// Where completed files are announced (`--notify-url`).
    pub notify_url: Option<SecretUrl>,
}

/// How the object sinks cut and name their files.
#[derive(Clone, Debug)]
pub struct RollConfig {
    pub roll_interval: Duration,
    /// Uncompressed bytes after which a file is completed.
    pub roll_bytes: u64,
    pub instance_index: u32,
    pub gzip_level: u32,
}

/// A completed file waiting for (another) upload attempt.
struct Ready {
    key: String,
    body: Bytes,
    entry: LogFileEntry,
    records: u64,
}

pub struct ObjectSink {
    archive: Archive,
    roll: RollConfig,
    ctx: EncodeContext,
    kind: Kind,
    name: String,
    open: Option<RecordsFile<Vec<u8>>>,
    ready: VecDeque<Ready>,
    /// Records of uploads that succeeded but were not yet reported delivered.
    delivered_unreported: u64,
    digests: Option<mpsc::UnboundedSender<LogFileEntry>>,
    notifier: Option<Notifier>,
    written: Vec<Output>,
    /// The capacity a new file's compressed body starts with: the last
    /// body's size and an eighth (growing a 12 MB body by doubling from
    /// 1 MB copied it four times and faulted in fresh pages each time).
    body_capacity: usize,
    /// The last upload's error, while completed files wait in `ready`.
    last_error: Option<String>,
}

impl ObjectSink {
    pub fn new(
        archive: Archive,
        roll: RollConfig,
        ctx: EncodeContext,
        kind: Kind,
        digests: Option<mpsc::UnboundedSender<LogFileEntry>>,
        notifier: Option<Notifier>,
        label: &str,
    ) -> Self {
        Self {
            archive,
            roll,
            ctx,
            kind,
            name: format!("{label}:{kind}"),
            open: None,
            ready: VecDeque::new(),
            delivered_unreported: 0,
            digests,
            notifier,
            written: Vec::new(),
            body_capacity: 1 << 20,
            last_error: None,
        }
    }

    /// Completes the open file (if any) and queues it for upload.
    fn complete(&mut self) {
        let Some(file) = self.open.take() else {
            return;
        };
        let (body, done) = file.finish().expect("writing to memory cannot fail");
        self.body_capacity = (body.len() + body.len() / 8).max(1 << 20);
        let key = log_file_key(
            &self.archive.prefix,
            &self.ctx.foundation,
            self.kind,
            chrono::Utc::now(),
            self.roll.instance_index,
        );
        self.ready.push_back(Ready {
            entry: LogFileEntry {
                s3_bucket: self.archive.bucket.clone(),
                s3_object: key.clone(),
                hash_value: done.sha256,
                hash_algorithm: "SHA-256".into(),
                newest_event_time: done.newest_event_time,
                oldest_event_time: done.oldest_event_time,
            },
            key,
            body: body.into(),
            records: done.records,
        });
    }

    /// Uploads the completed files in order; stops at the first failure.
    async fn upload(&mut self) -> Result<(), ArchiveError> {
        while let Some(next) = self.ready.front() {
            if let Err(e) = self
                .archive
                .put_json_gz(&self.archive.logs, &next.key, next.body.clone(), &[])
                .await
            {
                self.last_error = Some(e.to_string());
                return Err(e);
            }
            self.last_error = None;
            let done = self.ready.pop_front().expect("front exists");
            tracing::info!(kind = %self.kind, records = done.records, object = %self.archive.location(&done.key), "object delivered");
            self.delivered_unreported += done.records;
            self.written.push(Output {
                kind: self.kind.to_string(),
                path: self.archive.location(&done.key),
                records: done.records,
            });
            if let Some(tx) = &self.digests
                && tx.send(done.entry).is_err()
            {
                tracing::error!(object = %done.key, "the digest chain has stopped: this object is in no digest");
            }
            if let Some(n) = &self.notifier {
                n.notify(vec![done.key]);
            }
        }
        Ok(())
    }

    fn failure(&self, e: ArchiveError) -> SinkFailure {
        SinkFailure::Retry {
            error: SinkError::Upload {
                reason: e.to_string(),
                kept: self.ready.len(),
            },
            after: None,
        }
    }
}

impl Sink for ObjectSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        // Earlier files first: until they are up, take nothing new.
        if let Err(e) = self.upload().await {
            return Err(self.failure(e));
        }
        for record in batch.records {
            debug_assert_eq!(record.kind, self.kind, "routing sends a sink only its kind");
            let file = match &mut self.open {
                Some(f) => f,
                None => self.open.insert(RecordsFile::new(
                    Vec::with_capacity(self.body_capacity),
                    self.roll.gzip_level,
                )),
            };
            file.append(record, &self.ctx)
                .expect("writing to memory cannot fail");
            if file.uncompressed_bytes() >= self.roll.roll_bytes {
                self.complete();
            }
        }
        if let Err(e) = self.upload().await {
            // The batch is in a completed file kept for the next attempt.
            tracing::warn!(sink = %self.name, error = %e, "upload failed; the file is kept and retried");
        }
        Ok(std::mem::take(&mut self.delivered_unreported))
    }

    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        self.complete();
        if let Err(e) = self.upload().await {
            let records: u64 = self.ready.iter().map(|r| r.records).sum();
            tracing::error!(sink = %self.name, error = %e, records, "upload failed; the file is kept in memory and retried before the next batch");
        }
        Ok(std::mem::take(&mut self.delivered_unreported))
    }

    fn roll_interval(&self) -> Option<Duration> {
        Some(self.roll.roll_interval)
    }

    fn outputs(&self) -> Vec<Output> {
        self.written.clone()
    }

    fn undelivered_reason(&self) -> Option<String> {
        if self.ready.is_empty() {
            return None;
        }
        Some(format!(
            "{} completed file(s) not uploaded: {}",
            self.ready.len(),
            self.last_error.as_deref().unwrap_or("no upload attempted")
        ))
    }
}

/// A task that runs beside the sinks (digest chain, notifier): its name,
/// counters and report, awaited after the sinks.
pub(crate) type Follower = (String, Arc<SinkStats>, tokio::task::JoinHandle<SinkReport>);

/// Builds one [`ObjectSink`] per kind for `cfg`, and starts the digest chain
/// and the notifier they feed (pushed to `followers`).
pub(crate) fn start_object_sinks(
    cfg: &ObjectSinkConfig,
    encode: &EncodeContext,
    kinds: &[Kind],
    followers: &mut Vec<Follower>,
) -> Result<Vec<(ObjectSink, Vec<Kind>)>, BuildError> {
    let ca = match &cfg.target {
        Target::S3(s3) => s3.ca_pem.as_deref(),
        Target::Dir(_) => None,
    };
    let client = http_client(ca)?;
    let (archive, label) = match &cfg.target {
        // `--s3-sse none` is warned about with the other settings an
        // operator must not forget (config: RunArgs::warnings).
        Target::S3(s3) => (s3_archive(s3, &client)?, "s3"),
        Target::Dir(dir) => (
            Archive::local(dir, "").map_err(BuildError::ArchiveDir)?,
            "file",
        ),
    };
    let mut notify_task = None;
    let notifier = cfg.notify_url.as_ref().map(|url| {
        let (n, task) = Notifier::start(
            format!("{label}:notify"),
            url.clone(),
            archive.bucket.clone(),
            client.clone(),
            Duration::from_secs(1),
        );
        notify_task = Some((format!("{label}:notify"), Arc::clone(n.stats()), task));
        n
    });
    let digests = cfg.digest.as_ref().map(|d| {
        let (tx, rx) = mpsc::unbounded_channel();
        let name = format!("{label}:digest");
        let stats = Arc::new(SinkStats::default());
        let task = tokio::spawn(super::digest::run_digest_chain(
            archive.clone(),
            super::digest::DigestConfig {
                key: Arc::clone(&d.key),
                interval: d.interval,
                foundation: encode.foundation.clone(),
                instance_index: cfg.roll.instance_index,
            },
            rx,
            notifier.clone(),
            name.clone(),
            Arc::clone(&stats),
        ));
        followers.push((name, stats, task));
        tx
    });
    followers.extend(notify_task);
    Ok(kinds
        .iter()
        .map(|&kind| {
            let sink = ObjectSink::new(
                archive.clone(),
                cfg.roll.clone(),
                encode.clone(),
                kind,
                digests.clone(),
                notifier.clone(),
                label,
            );
            (sink, vec![kind])
        })
        .collect())
}

//! Sinks: where records go. Each sink runs as its own task behind its own
//! bounded queue, so a slow sink delays only itself and never the ingress.
//!
//! The shared machinery lives here and is not repeated per sink:
//! - [`SinkQueue::offer`]: admission into the bounded queue; never waits, and
//!   counts every record it turns away.
//! - [`run_sink`]: batching by count and age, the roll timer, draining at shutdown,
//!   retries with full-jitter backoff, dead-lettering of rejected batches,
//!   and the accounting
//!   `received = delivered + queued + buffered + in_flight + dead_lettered + dropped`.
//!
//! A sink itself only implements [`Sink`]: write a batch, complete what is open.

pub mod archive;
pub mod buffer;
pub mod file;
pub mod http;
pub mod latency;
mod queue;
mod runner;
pub mod stdout;
pub mod syslog;

pub use queue::{Intake, SinkQueue};
pub use runner::run_sink;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::record::Record;

/// Records travel in chunks: all the records of one received batch that are
/// routed to one sink. Records are shared between the sinks they go to.
pub type Chunk = Vec<Arc<Record>>;

/// One batch as the runner hands it to [`Sink::write`]: which batch it is
/// and which attempt at it. A retry of the same batch carries the same `id`
/// and the same records, with `attempt` one higher, so a sink that delivers
/// a batch in parts (the HTTP sink's requests) knows what already went
/// through; the next batch has a new `id`.
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// Unique per batch among those the runner hands this sink.
    pub id: u64,
    /// 1 for the first write of the batch, then 2, 3, ... for its retries.
    pub attempt: u32,
    pub records: &'a [Arc<Record>],
}

impl<'a> Batch<'a> {
    /// The first attempt at batch `id`.
    pub fn new(id: u64, records: &'a [Arc<Record>]) -> Self {
        Self {
            id,
            attempt: 1,
            records,
        }
    }

    /// The next attempt at the same batch.
    pub fn retry(self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self
        }
    }
}

/// Why a sink could not write or complete records, as it happened. The
/// runner names the sink where it reports one ([`SinkError::in_sink`]):
/// `http sink: <url> answered 400: ...`.
///
/// Cloned for each record a refusal concerns (the HTTP sink's refused
/// records), hence the shared I/O error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SinkError {
    /// A local write failed: a file, stdout, a connection's stream.
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: Arc<std::io::Error>,
    },
    /// No connection to the receiver, or no reply from it.
    #[error("cannot connect to {addr_shown}: {reason}", addr_shown = crate::redact::url(.addr))]
    Connect { addr: String, reason: String },
    /// The receiver answered with a failure status.
    #[error("{url_shown} answered {status}: {detail}", url_shown = crate::redact::url(.url))]
    Rejected {
        url: String,
        status: u16,
        detail: String,
    },
    /// Records could not be encoded (compressed) into a request body.
    #[error("cannot write <gzip>: {reason}")]
    Encode { reason: String },
    /// Completed files could not be uploaded; they are kept and retried.
    #[error("{reason} ({kept} completed file(s) kept in memory and retried)")]
    Upload { reason: String, kept: usize },
    /// Too many requests await the receiver's acknowledgement to send more.
    #[error("{requests} requests await HEC acknowledgement; waiting")]
    Unacknowledged { requests: usize },
}

impl SinkError {
    /// The error as reported for the sink named `sink` (`file:app_log`
    /// reports as `file sink: ...`: the name up to its first `:` is the
    /// sink's type).
    pub fn in_sink<'a>(&'a self, sink: &'a str) -> InSink<'a> {
        InSink {
            sink: sink.split(':').next().unwrap_or(sink),
            error: self,
        }
    }
}

/// A [`SinkError`] with the sink it happened in: `<type> sink: <error>`.
pub struct InSink<'a> {
    sink: &'a str,
    error: &'a SinkError,
}

impl std::fmt::Display for InSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sink: {}", self.sink, self.error)
    }
}

/// Why a sink could not be built from its (validated) configuration: what
/// it needs at start is missing or refused. Reported before anything runs,
/// naming the option where the sink knows which one it was.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The folder a file sink writes to (`--out-dir`, the demo's folder)
    /// cannot be created or read.
    #[error("file sink: cannot write {path}: {source}")]
    FileDir {
        path: String,
        source: std::io::Error,
    },
    /// The folder the signed file sink archives to cannot be used.
    #[error("file sink: {0}")]
    ArchiveDir(archive::ArchiveError),
    /// The HTTP sink's client cannot be built from its TLS settings.
    #[error("http sink: cannot build the HTTP client: {0}")]
    HttpClient(String),
    /// `--s3-ca` is not a usable CA bundle.
    #[error("s3 sink: --s3-ca (S3_CA): {0}")]
    S3Ca(String),
    /// The S3 sink's HTTP client cannot be built.
    #[error("s3 sink: {0}")]
    S3Client(String),
    /// The bucket settings are refused by the S3 client.
    #[error("s3 sink: {0}")]
    S3Store(String),
    /// The sink's disk buffer cannot be opened (`--buffer-dir`).
    #[error("buffer sink: {0}")]
    Buffer(#[from] buffer::BufferError),
}

/// A write or roll that failed: what becomes of the batch, and what it cost.
#[derive(Debug)]
pub enum SinkFailure {
    /// Worth retrying (a receiver that is down or busy): the runner writes
    /// the same batch again after `after` (a receiver's Retry-After) or
    /// its own backoff.
    Retry {
        error: SinkError,
        after: Option<Duration>,
    },
    /// The receiver refused the data itself and would refuse it again (HEC
    /// "invalid data format"): the batch goes to the dead-letter file.
    Reject { error: SinkError },
    /// The batch is lost, and with it `in_flight` records written earlier
    /// (such as those in a file that can no longer be completed).
    Lost { error: SinkError, in_flight: u64 },
}

impl SinkFailure {
    pub fn error(&self) -> &SinkError {
        match self {
            Self::Retry { error, .. } | Self::Reject { error } | Self::Lost { error, .. } => error,
        }
    }

    /// Records written earlier that this failure lost too.
    pub(crate) fn lost_in_flight(&self) -> u64 {
        match self {
            Self::Lost { in_flight, .. } => *in_flight,
            Self::Retry { .. } | Self::Reject { .. } => 0,
        }
    }
}

/// The batch is lost, nothing else.
impl From<SinkError> for SinkFailure {
    fn from(error: SinkError) -> Self {
        Self::Lost {
            error,
            in_flight: 0,
        }
    }
}

/// What every sink implements; everything else is shared.
///
/// Delivery is confirmed by count: `write` and `roll` say how many records
/// reached their destination for good. Records written but not yet confirmed
/// (in a file still open, later: awaiting an acknowledgement) are in flight.
pub trait Sink: Send + 'static {
    /// Short name used in metrics and messages (`stdout`, `file:app_log`).
    fn name(&self) -> &str;

    /// Writes one batch of records; returns how many of them are delivered
    /// now (the rest are in flight until a roll confirms them). After a
    /// [`SinkFailure::Retry`] the runner writes the same batch again, with
    /// the same [`Batch::id`], before any other.
    fn write(
        &mut self,
        batch: Batch<'_>,
    ) -> impl std::future::Future<Output = Result<u64, SinkFailure>> + Send;

    /// Completes whatever the sink has open (closes files); returns how many
    /// in-flight records that delivered. Called every [`Sink::roll_interval`]
    /// and once more at shutdown.
    fn roll(&mut self) -> impl std::future::Future<Output = Result<u64, SinkFailure>> + Send;

    /// Records per batch unless `--batch-max-records` says otherwise.
    fn batch_records(&self) -> usize {
        DEFAULT_BATCH_MAX_RECORDS
    }

    /// How often to call [`Sink::roll`]; `None` for sinks with nothing to roll.
    fn roll_interval(&self) -> Option<Duration> {
        None
    }

    /// What the sink produced (for the demo's summary), e.g. files written.
    fn outputs(&self) -> Vec<Output> {
        Vec::new()
    }

    /// Gives the sink its counters, once, before the first write, for what
    /// only the sink sees: connections it replaced ([`SinkStats::reconnects`])
    /// and records of requests outstanding ([`Outstanding`]).
    fn attach(&mut self, _stats: &Arc<SinkStats>) {}

    /// Records of the last successful [`Sink::write`]'s batch that the
    /// receiver refused for their content, by position in the batch, with
    /// the reason: the runner dead-letters only these. They are not part of
    /// the count `write` returned.
    fn take_rejected(&mut self) -> Vec<(usize, SinkError)> {
        Vec::new()
    }

    /// Why the records the sink still holds after its last roll at
    /// shutdown were not delivered (e.g. the upload error of the files an
    /// object sink could not upload), for the summary; `None` to say only
    /// that they were still queued or in flight.
    fn undelivered_reason(&self) -> Option<String> {
        None
    }
}

/// The records of one outstanding request, counted `in_flight` instead of
/// `queued` while the request is out (a receiver holding a request shows in
/// `/metrics`), and given back when the guard is dropped, whatever the
/// outcome: the runner then accounts for the batch as usual. The identity
/// never comes up short: each move adds before it subtracts.
pub(crate) struct Outstanding {
    stats: Option<Arc<SinkStats>>,
    records: u64,
}

impl Outstanding {
    pub fn new(stats: Option<&Arc<SinkStats>>, records: u64) -> Self {
        if let Some(s) = stats {
            s.in_flight.fetch_add(records, Ordering::AcqRel);
            s.queued.fetch_sub(records, Ordering::AcqRel);
        }
        Self {
            stats: stats.cloned(),
            records,
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if let Some(s) = &self.stats {
            s.queued.fetch_add(self.records, Ordering::AcqRel);
            s.in_flight.fetch_sub(self.records, Ordering::AcqRel);
        }
    }
}

/// Appends `parts` joined by `sep` as one JSON string, escaped as the record
/// JSON is. (Sinks wrap record JSON in a few fields; allocating a String per
/// field cost the HEC encoder about a fifth of its time.)
pub(crate) fn write_json_joined(out: &mut Vec<u8>, parts: &[&str], sep: &str) {
    out.push(b'"');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            crate::record::write_str_contents(out, sep);
        }
        crate::record::write_str_contents(out, p);
    }
    out.push(b'"');
}

/// One finished artefact of a sink.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Output {
    pub kind: String,
    pub path: String,
    pub records: u64,
}

/// Where batches a receiver rejected are kept, one JSON line per record with
/// the reason: `<dir>/<sink>.dead-letter.jsonl`.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    pub dir: std::path::PathBuf,
    pub encode: crate::record::EncodeContext,
}

/// 10 MiB, Vector's usual batch size: large enough that count and age
/// decide for typical records, small enough to bound a batch of huge ones.
pub(crate) const DEFAULT_BATCH_MAX_BYTES: usize = 10 * 1024 * 1024;

/// Records per batch of a sink that does not name its own
/// ([`Sink::batch_records`]), unless `--batch-max-records` says otherwise.
pub(crate) const DEFAULT_BATCH_MAX_RECORDS: usize = 1000;

/// How a sink's runner groups records before writing them, and retries.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Write as soon as this many records are waiting (`--batch-max-records`);
    /// `None`: the sink's own [`Sink::batch_records`].
    pub max_records: Option<usize>,
    /// Write as soon as the waiting records' estimated size
    /// ([`Record::approx_size`](crate::record::Record::approx_size)) reaches this.
    pub max_bytes: usize,
    /// Write at the latest this long after the first record of a batch arrived.
    pub max_age: Duration,
    /// First retry delay of a batch whose write failed retryably (full jitter).
    pub retry_initial: Duration,
    /// Longest retry delay; also caps a receiver's Retry-After.
    pub retry_max: Duration,
    /// Where rejected batches go; without it they are counted as dropped.
    pub dead_letter: Option<DeadLetter>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: None,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            max_age: Duration::from_millis(500),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            dead_letter: None,
        }
    }
}

crate::counters::counters! {
    /// Counters of one sink. Always (between updates),
    /// `received = delivered + queued + buffered + in_flight + dead_lettered + dropped_*`.
    #[derive(Debug)]
    pub struct SinkStats {
        received: Counter("sink_received", "Records offered to the sink."),
        delivered: Counter("sink_delivered", "Records the sink's destination confirmed."),
        /// Rejected by the receiver and kept in the dead-letter file.
        dead_lettered: Counter(
            "sink_dead_lettered",
            "Records the receiver rejected, kept in the dead-letter file."
        ),
        /// Retried writes (not part of the accounting identity: a retried batch
        /// is still queued).
        retries: Counter("sink_retries", "Batch writes retried."),
        /// Connections to the receiver the sink replaced: closed by the
        /// receiver, failed, or not taking data within the write timeout.
        reconnects: Counter(
            "sink_reconnects",
            "Connections to the receiver replaced: closed by it, failed, or not taking data within the write timeout."
        ),
        /// Turned away because the queue was full.
        dropped_queue_full: Counter("sink_dropped", "Records lost, by reason.", "reason" = "queue_full"),
        /// Turned away because the disk buffer was at `--buffer-max-bytes`.
        dropped_buffer_full: Counter("sink_dropped", "Records lost, by reason.", "reason" = "buffer_full"),
        /// Turned away because the disk buffer could not be written (disk full).
        dropped_buffer_error: Counter("sink_dropped", "Records lost, by reason.", "reason" = "buffer_error"),
        /// Lost because the sink failed to write them.
        dropped_write_error: Counter("sink_dropped", "Records lost, by reason.", "reason" = "write_error"),
        /// In the queue or in the batch being written (what the queue bound
        /// limits), except the records of requests outstanding.
        queued: Gauge("sink_queued", "Records waiting in the sink's queue or batch."),
        /// Written, awaiting confirmation (e.g. in a file not yet completed, a
        /// HEC request awaiting its acknowledgement), or in a request still
        /// outstanding ([`Outstanding`]).
        in_flight: Gauge("sink_in_flight", "Records written, awaiting confirmation."),
        /// Accepted into the disk buffer and not in memory: the runner reads
        /// them back (`--buffer-dir`).
        buffered: Gauge(
            "sink_buffered",
            "Records in the sink's disk buffer and not in memory (--buffer-dir)."
        ),
        /// Bytes the sink's disk buffer holds (a gauge, not in the identity).
        buffer_bytes: Gauge("sink_buffer_bytes", "Bytes the sink's disk buffer holds."),
    }
    extra {
        /// Estimated bytes ([`Record::approx_size`](crate::record::Record::approx_size))
        /// of the records counted in `queued`: what `--queue-max-bytes` bounds.
        pub queued_bytes: AtomicU64,
        /// The most it may hold; 0 without a disk buffer.
        pub buffer_max_bytes: AtomicU64,
        /// The disk buffer's fill warning and whether its disk refuses writes.
        pub buffer_health: buffer::BufferHealth,
        /// Seconds from the first write attempt of a batch to its outcome
        /// (retries included), for `/metrics`.
        pub batch_seconds: prometheus_client::metrics::histogram::Histogram =
            // 1 ms … ~65 s.
            prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17),
            ),
        /// Time from admission into the queue to delivery, per delivered record
        /// (see [`latency`]).
        pub delivery_latency: latency::LatencyHistogram,
    }
    /// A copy of [`SinkStats`] at one moment, for summaries and metrics.
    #[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
    pub struct SinkSnapshot {
        pub name: String,
    }
    then {
        /// p50, p99 and max of the delivery latency so far, in milliseconds.
        pub delivery_latency_ms: latency::LatencyQuantiles,
    }
}

impl SinkSnapshot {
    /// Records not yet delivered nor dropped: queued, buffered or in flight.
    pub fn pending(&self) -> u64 {
        self.queued + self.buffered + self.in_flight
    }

    /// Records lost, every reason of `sink_dropped` added up.
    pub fn dropped(&self) -> u64 {
        crate::counters::family_sum(Self::METRICS, self, "sink_dropped")
    }
}

impl SinkStats {
    pub fn snapshot(&self, name: &str) -> SinkSnapshot {
        SinkSnapshot {
            name: name.to_string(),
            delivery_latency_ms: self.delivery_latency.quantiles(),
            ..self.load()
        }
    }
}

/// The final account of a sink after its queue closed and it drained.
#[derive(Clone, Debug, Serialize)]
pub struct SinkReport {
    #[serde(flatten)]
    pub stats: SinkSnapshot,
    pub outputs: Vec<Output>,
    /// Records of a sink without a disk buffer that were neither delivered
    /// nor counted dropped when the run ended: lost with the process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_delivered: Option<NotDelivered>,
}

/// Records a sink without a disk buffer still held at exit, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotDelivered {
    pub records: u64,
    pub reason: String,
}

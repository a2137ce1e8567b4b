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

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{sink} sink: cannot write {path}: {source}")]
    Io {
        sink: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{sink} sink: cannot connect to {addr_shown}: {reason}", addr_shown = crate::redact::url(.addr))]
    Connect {
        sink: &'static str,
        addr: String,
        reason: String,
    },
    #[error("{sink} sink: {what}")]
    Config { sink: &'static str, what: String },
    #[error("{sink} sink: {url_shown} answered {status}: {detail}", url_shown = crate::redact::url(.url))]
    Rejected {
        sink: &'static str,
        url: String,
        status: u16,
        detail: String,
    },
}

/// A write or roll that failed: whether to try the batch again, or what it cost.
#[derive(Debug)]
pub struct SinkFailure {
    pub error: SinkError,
    /// Records written earlier (in flight) that this failure lost too, such as
    /// those in a file that can no longer be completed. The failed batch itself
    /// counts as lost unless the failure is retryable.
    pub lost_in_flight: u64,
    /// `Some` when the same batch should be written again (a receiver that is
    /// down or busy), after the given delay or the runner's backoff.
    pub retry: Option<Option<Duration>>,
    /// The receiver refused the data itself and would refuse it again (HEC
    /// "invalid data format"): the batch goes to the dead-letter file.
    pub rejected: bool,
}

impl SinkFailure {
    /// A failure worth retrying: the runner writes the same batch again after
    /// `after` (a receiver's Retry-After) or its own backoff.
    pub fn retryable(error: SinkError, after: Option<Duration>) -> Self {
        Self {
            error,
            lost_in_flight: 0,
            retry: Some(after),
            rejected: false,
        }
    }

    /// The receiver refused the batch's content: dead-letter it, do not retry.
    pub fn rejected(error: SinkError) -> Self {
        Self {
            rejected: true,
            ..error.into()
        }
    }
}

impl From<SinkError> for SinkFailure {
    fn from(error: SinkError) -> Self {
        Self {
            error,
            lost_in_flight: 0,
            retry: None,
            rejected: false,
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
    /// now (the rest are in flight until a roll confirms them).
    fn write(
        &mut self,
        batch: &[Arc<Record>],
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
pub struct Outstanding {
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
pub fn write_json_joined(out: &mut Vec<u8>, parts: &[&str], sep: &str) {
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
pub const DEFAULT_BATCH_MAX_BYTES: usize = 10 * 1024 * 1024;

/// Records per batch of a sink that does not name its own
/// ([`Sink::batch_records`]), unless `--batch-max-records` says otherwise.
pub const DEFAULT_BATCH_MAX_RECORDS: usize = 1000;

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

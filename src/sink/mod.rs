//! Sinks: where records go. Each sink runs as its own task behind its own
//! bounded queue, so a slow sink delays only itself and never the ingress.
//!
//! The shared machinery lives here and is not repeated per sink:
//! - [`SinkQueue::offer`]: admission into the bounded queue; never waits, and
//!   counts every record it turns away.
//! - [`run_sink`]: batching by count and age, the roll timer, draining at shutdown,
//!   retries with full-jitter backoff, dead-lettering of rejected batches,
//!   and the accounting
//!   `received = delivered + queued + in_flight + dead_lettered + dropped`.
//!
//! A sink itself only implements [`Sink`]: write a batch, complete what is open.

pub mod file;
pub mod http;
pub mod stdout;
pub mod syslog;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::record::Record;
use crate::source::Backoff;

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
    #[error("{sink} sink: cannot connect to {addr}: {reason}")]
    Connect {
        sink: &'static str,
        addr: String,
        reason: String,
    },
    #[error("{sink} sink: {what}")]
    Config { sink: &'static str, what: String },
    #[error("{sink} sink: {url} answered {status}: {detail}")]
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

    /// How often to call [`Sink::roll`]; `None` for sinks with nothing to roll.
    fn roll_interval(&self) -> Option<Duration> {
        None
    }

    /// What the sink produced (for the demo's summary), e.g. files written.
    fn outputs(&self) -> Vec<Output> {
        Vec::new()
    }
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

/// How a sink's runner groups records before writing them, and retries.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// Write as soon as this many records are waiting.
    pub max_records: usize,
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
            max_records: 1000,
            max_age: Duration::from_millis(500),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            dead_letter: None,
        }
    }
}

/// Counters of one sink. Always (between updates),
/// `received = delivered + queued + in_flight + dead_lettered + dropped_*`.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    /// In the queue or in the batch being written (what the queue bound limits).
    pub queued: AtomicU64,
    /// Written, awaiting confirmation (e.g. in a file not yet completed).
    pub in_flight: AtomicU64,
    /// Turned away because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Lost because the sink failed to write them.
    pub dropped_write_error: AtomicU64,
    /// Rejected by the receiver and kept in the dead-letter file.
    pub dead_lettered: AtomicU64,
    /// Retried writes (not part of the accounting identity: a retried batch
    /// is still queued).
    pub retries: AtomicU64,
}

/// A copy of [`SinkStats`] at one moment, for summaries and metrics.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SinkSnapshot {
    pub name: String,
    pub received: u64,
    pub delivered: u64,
    pub queued: u64,
    pub in_flight: u64,
    pub dropped_queue_full: u64,
    pub dropped_write_error: u64,
    pub dead_lettered: u64,
    pub retries: u64,
}

impl SinkSnapshot {
    /// Records not yet delivered nor dropped: queued or in flight.
    pub fn pending(&self) -> u64 {
        self.queued + self.in_flight
    }

    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full + self.dropped_write_error
    }
}

impl SinkStats {
    pub fn snapshot(&self, name: &str) -> SinkSnapshot {
        SinkSnapshot {
            name: name.to_string(),
            received: self.received.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_write_error: self.dropped_write_error.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// The sending side of a sink's bounded queue.
#[derive(Clone)]
pub struct SinkQueue {
    name: Arc<str>,
    tx: mpsc::UnboundedSender<Chunk>,
    capacity: u64,
    stats: Arc<SinkStats>,
}

impl SinkQueue {
    /// A queue holding at most `capacity` records, and the receiver its runner reads.
    ///
    /// The channel itself is unbounded; the bound is the `queued` record count,
    /// checked on admission. That bounds memory in records (what an operator
    /// sizes), not in chunks of varying length, and keeps drop counts exact.
    pub fn new(name: &str, capacity: usize) -> (Self, mpsc::UnboundedReceiver<Chunk>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Self {
            name: name.into(),
            tx,
            capacity: capacity as u64,
            stats: Arc::new(SinkStats::default()),
        };
        (queue, rx)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// Hands a chunk to the sink without waiting. When the queue cannot take
    /// the whole chunk, the chunk is dropped and counted (`dropped_queue_full`).
    pub fn offer(&self, chunk: Chunk) {
        let n = chunk.len() as u64;
        let stats = &self.stats;
        stats.received.fetch_add(n, Ordering::Relaxed);
        let admitted = stats
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + n <= self.capacity).then_some(q + n)
            })
            .is_ok();
        if admitted && self.tx.send(chunk).is_ok() {
            return;
        }
        if admitted {
            // The runner is gone (shutdown); the records were never queued.
            stats.queued.fetch_sub(n, Ordering::AcqRel);
        }
        let before = stats.dropped_queue_full.fetch_add(n, Ordering::Relaxed);
        // Warn on the first drop and then once per ~100k, not per chunk.
        if before / 100_000 != (before + n) / 100_000 || before == 0 {
            tracing::warn!(
                sink = &*self.name,
                dropped_total = before + n,
                capacity = self.capacity,
                "sink queue full: dropping newest records"
            );
        }
    }
}

/// The final account of a sink after its queue closed and it drained.
#[derive(Clone, Debug, Serialize)]
pub struct SinkReport {
    #[serde(flatten)]
    pub stats: SinkSnapshot,
    pub outputs: Vec<Output>,
}

/// Runs a sink until its queue is closed (every [`SinkQueue`] dropped) and
/// drained, then rolls it one last time and reports.
pub async fn run_sink<S: Sink>(
    mut sink: S,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    stats: Arc<SinkStats>,
    batch: BatchConfig,
) -> SinkReport {
    let mut pending: Vec<Arc<Record>> = Vec::with_capacity(batch.max_records);
    let mut batch_deadline: Option<Instant> = None;
    let roll_every = sink.roll_interval();
    let mut next_roll = roll_every.map(|d| Instant::now() + d);
    loop {
        let due = [batch_deadline, next_roll].into_iter().flatten().min();
        tokio::select! {
            // Take what is queued first; the timers are checked below either way.
            biased;
            chunk = rx.recv() => match chunk {
                Some(chunk) => {
                    if pending.is_empty() {
                        batch_deadline = Some(Instant::now() + batch.max_age);
                    }
                    pending.extend(chunk);
                    if pending.len() >= batch.max_records {
                        write_pending(&mut sink, &mut pending, &stats, &batch).await;
                        batch_deadline = None;
                    }
                }
                None => break,
            },
            _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
        }
        // Checked after every event, not only when a timer branch wins, so a
        // queue that is never empty (a sink behind its input) still ages its
        // batches out and rolls its files on time.
        let now = Instant::now();
        if batch_deadline.is_some_and(|d| now >= d) {
            write_pending(&mut sink, &mut pending, &stats, &batch).await;
            batch_deadline = None;
        }
        if let (Some(d), Some(every)) = (next_roll, roll_every)
            && now >= d
        {
            write_pending(&mut sink, &mut pending, &stats, &batch).await;
            batch_deadline = None;
            roll(&mut sink, &stats).await;
            next_roll = Some(Instant::now() + every);
        }
    }
    write_pending(&mut sink, &mut pending, &stats, &batch).await;
    roll(&mut sink, &stats).await;
    SinkReport {
        stats: stats.snapshot(sink.name()),
        outputs: sink.outputs(),
    }
}

async fn write_pending<S: Sink>(
    sink: &mut S,
    pending: &mut Vec<Arc<Record>>,
    stats: &SinkStats,
    batch: &BatchConfig,
) {
    if pending.is_empty() {
        return;
    }
    let n = pending.len() as u64;
    let mut backoff = Backoff::full_jitter(batch.retry_initial, batch.retry_max);
    let mut attempt: u64 = 0;
    let result = loop {
        match sink.write(pending).await {
            Err(SinkFailure {
                error,
                retry: Some(after),
                ..
            }) => {
                attempt += 1;
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let delay = after.map_or_else(|| backoff.next_delay(), |a| a.min(batch.retry_max));
                // Logged on attempts 1, 2, 4, 8, ...: visible, not a flood.
                if attempt.is_power_of_two() {
                    tracing::warn!(sink = sink.name(), records = n, attempt, ?delay, %error, "write failed; retrying the batch");
                }
                tokio::time::sleep(delay).await;
            }
            other => break other,
        }
    };
    // Account before releasing the queue slots, so the sum never comes up short.
    match result {
        Ok(delivered) => {
            stats.delivered.fetch_add(delivered, Ordering::Relaxed);
            stats
                .in_flight
                .fetch_add(n.saturating_sub(delivered), Ordering::Relaxed);
        }
        Err(failure) if failure.rejected && batch.dead_letter.is_some() => {
            let dl = batch.dead_letter.as_ref().expect("checked above");
            match dead_letter(dl, sink.name(), &failure.error, pending) {
                Ok(path) => {
                    stats.dead_lettered.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(sink = sink.name(), records = n, error = %failure.error, path = %path.display(), "receiver rejected a batch; kept in the dead-letter file");
                }
                Err(e) => {
                    tracing::error!(sink = sink.name(), error = %e, "cannot write the dead-letter file");
                    account_loss(sink.name(), stats, n, &failure);
                }
            }
        }
        Err(failure) => {
            account_loss(sink.name(), stats, n, &failure);
        }
    }
    pending.clear();
    stats.queued.fetch_sub(n, Ordering::AcqRel);
}

/// Appends `records` to the sink's dead-letter file, one line each:
/// `{"time":…,"sink":…,"reason":…,"record":{…}}`.
fn dead_letter(
    dl: &DeadLetter,
    sink: &str,
    reason: &SinkError,
    records: &[Arc<Record>],
) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(&dl.dir)?;
    let name: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dl.dir.join(format!("{name}.dead-letter.jsonl"));
    let head = format!(
        r#"{{"time":{},"sink":{},"reason":{},"record":"#,
        serde_json::to_string(&chrono::Utc::now().to_rfc3339()).expect("string"),
        serde_json::to_string(sink).expect("string"),
        serde_json::to_string(&reason.to_string()).expect("string"),
    );
    let mut buf = Vec::new();
    for r in records {
        buf.extend_from_slice(head.as_bytes());
        r.write_json(&dl.encode, &mut buf);
        buf.extend_from_slice(b"}\n");
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    file.write_all(&buf)?;
    file.sync_data()?;
    Ok(path)
}

async fn roll<S: Sink>(sink: &mut S, stats: &SinkStats) {
    match sink.roll().await {
        Ok(delivered) => {
            stats.delivered.fetch_add(delivered, Ordering::Relaxed);
            stats.in_flight.fetch_sub(delivered, Ordering::Relaxed);
        }
        Err(failure) => account_loss(sink.name(), stats, 0, &failure),
    }
}

/// Counts what a failure cost: the failed batch (`batch` records, still
/// counted as queued by the caller) and the in-flight records it took along.
fn account_loss(sink: &str, stats: &SinkStats, batch: u64, failure: &SinkFailure) {
    let lost = batch + failure.lost_in_flight;
    stats.dropped_write_error.fetch_add(lost, Ordering::Relaxed);
    stats
        .in_flight
        .fetch_sub(failure.lost_in_flight, Ordering::Relaxed);
    tracing::error!(sink, records = lost, error = %failure.error, "sink failed; records lost");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::proto::Envelope;

    /// A sink that remembers what it was asked to do.
    #[derive(Default)]
    struct Recorder {
        writes: Arc<std::sync::Mutex<Vec<usize>>>,
        rolls: Arc<AtomicU64>,
        fail: bool,
    }

    impl Sink for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        async fn write(&mut self, batch: &[Arc<Record>]) -> Result<u64, SinkFailure> {
            self.writes.lock().unwrap().push(batch.len());
            if self.fail {
                return Err(SinkError::Io {
                    sink: "recorder",
                    path: "x".into(),
                    source: std::io::Error::other("disk full"),
                }
                .into());
            }
            Ok(batch.len() as u64)
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            self.rolls.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        }
        fn roll_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(60))
        }
    }

    fn chunk(n: usize) -> Chunk {
        (0..n)
            .map(|_| Arc::new(classify(Envelope::default())))
            .collect()
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_newest_chunk_and_counts_every_record() {
        let (queue, rx) = SinkQueue::new("recorder", 250);
        for _ in 0..3 {
            queue.offer(chunk(100));
        }
        let s = queue.stats().snapshot("recorder");
        assert_eq!(
            (s.received, s.queued, s.dropped_queue_full),
            (300, 200, 100)
        );

        let stats = Arc::clone(queue.stats());
        drop(queue);
        let report = run_sink(Recorder::default(), rx, stats, BatchConfig::default()).await;
        let s = report.stats;
        assert_eq!(
            (s.received, s.delivered, s.queued, s.dropped()),
            (300, 200, 0, 100)
        );
    }

    /// A sink whose writes take a second each, logging what happens when.
    struct Slow(Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Sink for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        async fn write(&mut self, batch: &[Arc<Record>]) -> Result<u64, SinkFailure> {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.0.lock().unwrap().push("write");
            Ok(batch.len() as u64)
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            self.0.lock().unwrap().push("roll");
            Ok(0)
        }
        fn roll_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(10))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_behind_its_input_still_rolls_on_time() {
        let (queue, rx) = SinkQueue::new("slow", 10_000);
        for _ in 0..30 {
            queue.offer(chunk(10));
        }
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let batch = BatchConfig {
            max_records: 10,
            max_age: Duration::from_secs(1),
            ..BatchConfig::default()
        };
        let report = run_sink(Slow(Arc::clone(&log)), rx, stats, batch).await;
        assert_eq!(report.stats.delivered, 300);
        // 30 one-second writes with the queue never empty: rolls every 10 s
        // between them, and one at the end.
        let log = log.lock().unwrap();
        let rolls: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, e)| **e == "roll")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(rolls, [10, 21, 32, 33], "{log:?}");
    }

    /// Fails retryably: first with a Retry-After of 7 s, then without one, then succeeds.
    struct Flaky(u32);

    impl Sink for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        async fn write(&mut self, batch: &[Arc<Record>]) -> Result<u64, SinkFailure> {
            self.0 += 1;
            let unavailable = || SinkError::Connect {
                sink: "flaky",
                addr: "x".into(),
                reason: "refused".into(),
            };
            match self.0 {
                1 => Err(SinkFailure::retryable(
                    unavailable(),
                    Some(Duration::from_secs(7)),
                )),
                2 => Err(SinkFailure::retryable(unavailable(), None)),
                _ => Ok(batch.len() as u64),
            }
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            Ok(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_retry_the_same_batch_honouring_retry_after() {
        let (queue, rx) = SinkQueue::new("flaky", 100);
        queue.offer(chunk(5));
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let start = Instant::now();
        let s = run_sink(Flaky(0), rx, stats, BatchConfig::default())
            .await
            .stats;
        let waited = start.elapsed();
        assert_eq!(
            (s.received, s.delivered, s.pending(), s.dropped(), s.retries),
            (5, 5, 0, 0, 2)
        );
        // The closed queue flushes at once: 7 s Retry-After, then a full-jitter delay of 1 ms..=1 s.
        assert!(
            waited > Duration::from_secs(7) && waited <= Duration::from_secs(8),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn failed_writes_are_counted_as_dropped_not_delivered() {
        let (queue, rx) = SinkQueue::new("recorder", 1000);
        queue.offer(chunk(7));
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let sink = Recorder {
            fail: true,
            ..Default::default()
        };
        let s = run_sink(sink, rx, stats, BatchConfig::default())
            .await
            .stats;
        assert_eq!(
            (s.received, s.delivered, s.queued, s.dropped_write_error),
            (7, 0, 0, 7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_written_when_full_or_when_old_and_rolled_on_the_interval() {
        let (queue, rx) = SinkQueue::new("recorder", 10_000);
        let sink = Recorder::default();
        let (writes, rolls) = (Arc::clone(&sink.writes), Arc::clone(&sink.rolls));
        let batch = BatchConfig {
            max_records: 10,
            max_age: Duration::from_millis(500),
            ..BatchConfig::default()
        };
        let task = tokio::spawn(run_sink(sink, rx, Arc::clone(queue.stats()), batch));

        queue.offer(chunk(4));
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(writes.lock().unwrap().is_empty(), "not yet old enough");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(*writes.lock().unwrap(), [4], "written at max_age");

        queue.offer(chunk(6));
        queue.offer(chunk(6));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            *writes.lock().unwrap(),
            [4, 12],
            "written once max_records is reached"
        );

        assert_eq!(rolls.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(rolls.load(Ordering::SeqCst), 1, "rolled after the interval");

        drop(queue);
        let report = task.await.unwrap();
        assert_eq!(
            rolls.load(Ordering::SeqCst),
            2,
            "rolled once more at shutdown"
        );
        assert_eq!(report.stats.delivered, 16);
    }
}

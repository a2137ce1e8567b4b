//! Sinks: where records go. Each sink runs as its own task behind its own
//! bounded queue, so a slow sink delays only itself and never the ingress.
//!
//! The shared machinery lives here and is not repeated per sink:
//! - [`SinkQueue::offer`]: admission into the bounded queue; never waits, and
//!   counts every record it turns away.
//! - [`run_sink`]: batching by count and age, the roll timer, draining at shutdown,
//!   and the accounting `received = delivered + queued + dropped`.
//!
//! A sink itself only implements [`Sink`]: write a batch, complete what is open.

pub mod file;
pub mod stdout;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

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
}

/// What every sink implements; everything else is shared.
pub trait Sink: Send + 'static {
    /// Short name used in metrics and messages (`file`, `stdout`).
    fn name(&self) -> &'static str;

    /// Writes one batch of records.
    fn write(
        &mut self,
        batch: &[Arc<Record>],
    ) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;

    /// Completes whatever the sink has open (closes files); called every
    /// [`Sink::roll_interval`] and once more at shutdown.
    fn roll(&mut self) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;

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

/// How a sink's runner groups records before writing them.
#[derive(Clone, Copy, Debug)]
pub struct BatchConfig {
    /// Write as soon as this many records are waiting.
    pub max_records: usize,
    /// Write at the latest this long after the first record of a batch arrived.
    pub max_age: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 1000,
            max_age: Duration::from_millis(500),
        }
    }
}

/// Counters of one sink. At rest, `received = delivered + queued + dropped_*`.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    /// In the queue or in the batch being written.
    pub queued: AtomicU64,
    /// Turned away because the queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Lost because the sink failed to write them.
    pub dropped_write_error: AtomicU64,
}

/// A copy of [`SinkStats`] at one moment, for summaries and metrics.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SinkSnapshot {
    pub name: String,
    pub received: u64,
    pub delivered: u64,
    pub queued: u64,
    pub dropped_queue_full: u64,
    pub dropped_write_error: u64,
}

impl SinkSnapshot {
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
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_write_error: self.dropped_write_error.load(Ordering::Relaxed),
        }
    }
}

/// The sending side of a sink's bounded queue.
#[derive(Clone)]
pub struct SinkQueue {
    name: &'static str,
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
    pub fn new(name: &'static str, capacity: usize) -> (Self, mpsc::UnboundedReceiver<Chunk>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Self {
            name,
            tx,
            capacity: capacity as u64,
            stats: Arc::new(SinkStats::default()),
        };
        (queue, rx)
    }

    pub fn name(&self) -> &'static str {
        self.name
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
                sink = self.name,
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
        tokio::select! {
            // Drain the queue first: timers matter only when it is idle.
            biased;
            chunk = rx.recv() => match chunk {
                Some(chunk) => {
                    if pending.is_empty() {
                        batch_deadline = Some(Instant::now() + batch.max_age);
                    }
                    pending.extend(chunk);
                    if pending.len() >= batch.max_records {
                        write_pending(&mut sink, &mut pending, &stats).await;
                        batch_deadline = None;
                    }
                }
                None => break,
            },
            _ = sleep_until(batch_deadline.unwrap_or_else(Instant::now)), if batch_deadline.is_some() => {
                write_pending(&mut sink, &mut pending, &stats).await;
                batch_deadline = None;
            }
            _ = sleep_until(next_roll.unwrap_or_else(Instant::now)), if next_roll.is_some() => {
                write_pending(&mut sink, &mut pending, &stats).await;
                batch_deadline = None;
                roll(&mut sink).await;
                next_roll = roll_every.map(|d| Instant::now() + d);
            }
        }
    }
    write_pending(&mut sink, &mut pending, &stats).await;
    roll(&mut sink).await;
    SinkReport {
        stats: stats.snapshot(sink.name()),
        outputs: sink.outputs(),
    }
}

async fn write_pending<S: Sink>(sink: &mut S, pending: &mut Vec<Arc<Record>>, stats: &SinkStats) {
    if pending.is_empty() {
        return;
    }
    let n = pending.len() as u64;
    match sink.write(pending).await {
        Ok(()) => {
            stats.delivered.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            stats.dropped_write_error.fetch_add(n, Ordering::Relaxed);
            tracing::error!(sink = sink.name(), records = n, error = %e, "write failed; records dropped");
        }
    }
    stats.queued.fetch_sub(n, Ordering::AcqRel);
    pending.clear();
}

async fn roll<S: Sink>(sink: &mut S) {
    if let Err(e) = sink.roll().await {
        tracing::error!(sink = sink.name(), error = %e, "completing open output failed");
    }
}

//! A sink's queue, from admission to acknowledgement: [`SinkQueue::offer`]
//! admits a chunk into the bounded memory queue (or, with `--buffer-dir`,
//! into the sink's disk buffer, [`super::buffer`]) without waiting and counts
//! every record it turns away; [`Intake`] hands the runner the memory queue
//! and what waits on disk, oldest first, and tells the buffer what the sink
//! has settled.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::buffer;
use super::{Chunk, SinkStats};

/// What travels through a sink's memory queue: for a buffered sink the
/// number of the chunk's first record in the disk buffer, when the queue
/// accepted the chunk (for the delivery latency), and the chunk.
type Queued = (u64, Instant, Chunk);

/// The sending side of a sink's bounded queue.
#[derive(Clone)]
pub struct SinkQueue {
    name: Arc<str>,
    tx: mpsc::UnboundedSender<Queued>,
    capacity: u64,
    stats: Arc<SinkStats>,
    buffer: Option<Arc<buffer::DiskBuffer>>,
}

impl SinkQueue {
    /// A queue holding at most `capacity` records, and the receiver its runner reads.
    ///
    /// The channel itself is unbounded; the bound is the `queued` record count,
    /// checked on admission. That bounds memory in records (what an operator
    /// sizes), not in chunks of varying length, and keeps drop counts exact.
    pub fn new(name: &str, capacity: usize) -> (Self, Intake) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Self {
            name: name.into(),
            tx,
            capacity: capacity as u64,
            stats: Arc::new(SinkStats::default()),
            buffer: None,
        };
        (
            queue,
            Intake {
                rx,
                reader: None,
                behind: 0,
            },
        )
    }

    /// A queue backed by a disk buffer (see [`super::buffer`]): the memory
    /// queue of `capacity` records reads ahead, the rest waits on disk.
    /// Records left on disk by an earlier run come first.
    pub(crate) fn with_buffer(
        name: &str,
        capacity: usize,
        buffer: &buffer::BufferConfig,
    ) -> Result<(Self, Intake), buffer::BufferError> {
        let (mut queue, mut intake) = Self::new(name, capacity);
        let (disk, reader) = buffer::DiskBuffer::open(buffer, name, Arc::clone(&queue.stats))?;
        queue.buffer = Some(disk);
        intake.reader = Some(reader);
        Ok((queue, intake))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    pub fn buffer(&self) -> Option<&Arc<buffer::DiskBuffer>> {
        self.buffer.as_ref()
    }

    /// Whether a source that can read again should wait before offering
    /// about `records` more (`--buffer-when-full block`, or no room in the
    /// memory queue of an unbuffered sink).
    pub(crate) fn should_wait(&self, records: u64) -> bool {
        match &self.buffer {
            Some(b) => b.when_full() == buffer::WhenFull::Block && !b.has_room(records * 1024),
            None => self.stats.queued.load(Ordering::Acquire) + records > self.capacity,
        }
    }

    /// Hands a chunk to the sink without waiting. When the queue (or its
    /// disk buffer) cannot take the whole chunk, the chunk is dropped and
    /// counted (`dropped_queue_full`, `dropped_buffer_full`,
    /// `dropped_buffer_error`). Returns whether the chunk was admitted.
    pub fn offer(&self, chunk: Chunk) -> bool {
        let n = chunk.len() as u64;
        let stats = &self.stats;
        stats.received.fetch_add(n, Ordering::Relaxed);
        // The one clock read per chunk the delivery latency needs.
        let accepted = Instant::now();
        let to_memory = |first: u64, chunk: Chunk| -> Result<(), Chunk> {
            let admitted = stats
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q + n <= self.capacity).then_some(q + n)
                })
                .is_ok();
            if !admitted {
                return Err(chunk);
            }
            self.tx.send((first, accepted, chunk)).map_err(|e| {
                // The runner is gone (shutdown); the records were never queued.
                stats.queued.fetch_sub(n, Ordering::AcqRel);
                e.0.2
            })
        };
        // What turned the chunk away; a disk error is logged as an error.
        let (counter, what, disk_error) = match &self.buffer {
            None => match to_memory(0, chunk) {
                Ok(()) => return true,
                Err(_) => (
                    &stats.dropped_queue_full,
                    "sink queue full: dropping newest records",
                    None,
                ),
            },
            Some(buffer) => match buffer.append(chunk, |first, chunk| {
                to_memory(first, chunk).inspect_err(|_| {
                    stats.buffered.fetch_add(n, Ordering::Relaxed);
                })
            }) {
                buffer::Appended::Memory | buffer::Appended::Disk => return true,
                buffer::Appended::Full => (
                    &stats.dropped_buffer_full,
                    "disk buffer full (--buffer-max-bytes): dropping newest records",
                    None,
                ),
                buffer::Appended::Failed(e) => (
                    &stats.dropped_buffer_error,
                    "cannot write the disk buffer: dropping newest records",
                    Some(e),
                ),
            },
        };
        let before = counter.fetch_add(n, Ordering::Relaxed);
        // Log the first drop and then once per ~100k, not per chunk.
        if before / 100_000 != (before + n) / 100_000 || before == 0 {
            let (sink, dropped_total) = (&*self.name, before + n);
            match disk_error {
                Some(error) => tracing::error!(sink, dropped_total, %error, "{what}"),
                None => tracing::warn!(sink, dropped_total, capacity = self.capacity, "{what}"),
            }
        }
        false
    }
}

/// The receiving side of a sink's queue: the memory queue and, for a
/// buffered sink, what waits on disk.
pub struct Intake {
    rx: mpsc::UnboundedReceiver<Queued>,
    reader: Option<buffer::BufferReader>,
    /// Records settled (dead-lettered, lost) while earlier ones were still
    /// in flight: not yet part of the settled prefix the buffer may drop.
    behind: u64,
}

impl Intake {
    /// The next chunk, oldest first; `None` once every [`SinkQueue`] is
    /// dropped and nothing waits on disk. `max` bounds a chunk read from disk.
    /// Cancel-safe: it only waits where nothing has been taken yet.
    pub async fn recv_up_to(&mut self, max: usize, stats: &SinkStats) -> Option<Chunk> {
        self.recv_stamped(max, stats).await.map(|(_, chunk)| chunk)
    }

    /// [`Intake::recv_up_to`], with when the chunk was accepted: when its
    /// [`SinkQueue`] took it, or, for records read back from the disk
    /// buffer (after a restart, or spilled while the memory queue was
    /// full), when they were read back: the buffer keeps no time, so their
    /// latency counts from then and understates what they waited on disk.
    pub(crate) async fn recv_stamped(
        &mut self,
        max: usize,
        stats: &SinkStats,
    ) -> Option<(Instant, Chunk)> {
        let mut closed = false;
        loop {
            match self.rx.try_recv() {
                Ok((first, accepted, chunk)) => {
                    if let Some(r) = &mut self.reader {
                        r.took_from_memory(first, chunk.len() as u64);
                    }
                    return Some((accepted, chunk));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let Some(reader) = &mut self.reader else {
                if closed {
                    return None;
                }
                let (_, accepted, chunk) = self.rx.recv().await?;
                return Some((accepted, chunk));
            };
            match reader.read(max.max(1)) {
                Ok(buffer::Backlog::Records(records)) => {
                    let n = records.len() as u64;
                    // Counted as queued before leaving `buffered`, so the
                    // identity never comes up short.
                    stats.queued.fetch_add(n, Ordering::AcqRel);
                    stats.buffered.fetch_sub(n, Ordering::AcqRel);
                    if records.is_empty() {
                        continue;
                    }
                    let chunk = records.into_iter().map(Arc::new).collect();
                    return Some((Instant::now(), chunk));
                }
                Ok(buffer::Backlog::MemoryFirst) => continue,
                Ok(buffer::Backlog::CaughtUp) if closed => return None,
                Ok(buffer::Backlog::CaughtUp) => {}
                Err(e) => {
                    tracing::error!(error = %e, "disk buffer: cannot read back records; trying again in a second");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
            tokio::select! {
                got = self.rx.recv() => match got {
                    Some((first, accepted, chunk)) => {
                        reader.took_from_memory(first, chunk.len() as u64);
                        return Some((accepted, chunk));
                    }
                    None => closed = true,
                },
                _ = reader.on_disk() => {}
            }
        }
    }

    /// The next chunk of the memory queue (tests that read a queue directly).
    pub async fn recv(&mut self) -> Option<Chunk> {
        self.rx.recv().await.map(|(_, _, c)| c)
    }

    /// The next chunk of the memory queue if one is there, without waiting.
    pub fn try_recv(&mut self) -> Option<Chunk> {
        self.rx.try_recv().ok().map(|(_, _, c)| c)
    }

    /// Notes `n` records settled behind records still in flight (a batch
    /// dead-lettered while earlier ones await an acknowledgement).
    pub(crate) fn settled_out_of_order(&mut self, n: u64) {
        self.behind += n;
    }

    /// Tells the disk buffer how many records, from the oldest on, the sink
    /// has settled (delivered, dead-lettered or lost to write errors). Sinks
    /// confirm in-flight records in order; records settled behind them count
    /// only once nothing is in flight any more, so the buffer never lets go
    /// of a record that is not settled (at worst it keeps a few too many).
    pub fn settled(&mut self, stats: &SinkStats) {
        if stats.in_flight.load(Ordering::Acquire) == 0 {
            self.behind = 0;
        }
        if let Some(r) = &self.reader {
            let settled = stats.delivered.load(Ordering::Acquire)
                + stats.dead_lettered.load(Ordering::Acquire)
                + stats.dropped_write_error.load(Ordering::Acquire);
            r.buffer().ack(settled.saturating_sub(self.behind));
        }
    }

    /// Whether the sink should complete what it holds in flight now: its
    /// in-flight records take a quarter of its disk buffer or more
    /// ([`buffer::DiskBuffer::in_flight_holds_quarter`]). Always false
    /// without a disk buffer.
    pub(crate) fn roll_early(&self, stats: &SinkStats) -> bool {
        self.reader.as_ref().is_some_and(|r| {
            r.buffer()
                .in_flight_holds_quarter(stats.in_flight.load(Ordering::Acquire))
        })
    }

    /// Forces the disk buffer to disk (at the end of a run).
    pub fn sync(&self) {
        if let Some(r) = &self.reader {
            r.buffer().sync();
        }
    }
}

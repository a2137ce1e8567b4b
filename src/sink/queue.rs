//! A sink's queue, from admission to acknowledgement: [`SinkQueue::offer`]
//! admits a chunk into the bounded memory queue (or, with `--buffer-dir`,
//! into the sink's disk buffer, [`super::buffer`]) without waiting and counts
//! every record it turns away; [`Intake`] hands the runner the memory queue
//! and what waits on disk, oldest first, and tells the buffer what the sink
//! has settled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::buffer;
use super::{Chunk, SinkStats};

/// What travels through a sink's memory queue: for a buffered sink the
/// number of the chunk's first record in the disk buffer, when the queue
/// accepted the chunk (for the delivery latency), its records' estimated
/// bytes (counted in [`SinkStats::queued_bytes`]), and the chunk.
type Queued = (u64, Instant, u64, Chunk);

/// Estimated bytes of `chunk`'s records, as the queue and the batches count them.
pub(crate) fn chunk_bytes(chunk: &Chunk) -> u64 {
    chunk.iter().map(|r| r.approx_size() as u64).sum()
}

/// The sending side of a sink's bounded queue.
#[derive(Clone)]
pub struct SinkQueue {
    name: Arc<str>,
    tx: mpsc::UnboundedSender<Queued>,
    capacity: u64,
    /// Estimated bytes the queue holds at most (`--queue-max-bytes`).
    max_bytes: u64,
    stats: Arc<SinkStats>,
    buffer: Option<Arc<buffer::DiskBuffer>>,
    /// The records and bytes of the last chunk the queue turned away
    /// (estimated bytes for the memory queue, framed bytes for the disk
    /// buffer), or zero records when it took the last one offered: a queue
    /// that would turn that chunk away again is full ([`Self::is_full`]).
    refused: Arc<[AtomicU64; 2]>,
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
            max_bytes: u64::MAX,
            stats: Arc::new(SinkStats::default()),
            buffer: None,
            refused: Arc::default(),
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

    /// Bounds the queue by its records' estimated bytes too
    /// (`--queue-max-bytes`): a chunk that would take the queue past
    /// `max_bytes` is turned away and counted like one past the record
    /// capacity (`dropped_queue_full`); an empty queue takes any one chunk.
    /// Set before the queue is cloned.
    pub(crate) fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
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
            None => {
                self.stats.queued.load(Ordering::Acquire) + records > self.capacity
                    || self.stats.queued_bytes.load(Ordering::Acquire) >= self.max_bytes
            }
        }
    }

    /// Whether the queue would turn records away now, so that offering it
    /// any is wasted work: it would now turn away the chunk it last turned
    /// away, unless it has taken a chunk since. For an unbuffered queue,
    /// by records or bytes (an empty queue never is full); for a disk
    /// buffer that drops the newest (`--buffer-when-full drop_newest`), by
    /// its free bytes; a buffer that blocks is never full here (its source
    /// waits instead). A few atomic loads, or the buffer's lock.
    pub(crate) fn is_full(&self) -> bool {
        let n = self.refused[0].load(Ordering::Acquire);
        match &self.buffer {
            Some(b) => {
                n != 0
                    && b.when_full() == buffer::WhenFull::DropNewest
                    && !b.has_room(self.refused[1].load(Ordering::Acquire))
            }
            None => {
                let queued = self.stats.queued.load(Ordering::Acquire);
                if n == 0 || queued == 0 {
                    return false;
                }
                let bytes = self.refused[1].load(Ordering::Acquire);
                let queued_bytes = self.stats.queued_bytes.load(Ordering::Acquire);
                // The admission test of `offer`, for the chunk it turned away.
                queued + n > self.capacity || queued_bytes.saturating_add(bytes) > self.max_bytes
            }
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
        let bytes = chunk_bytes(&chunk);
        let to_memory = |first: u64, chunk: Chunk| -> Result<(), Chunk> {
            let room = stats
                .queued_bytes
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    (b == 0 || b.saturating_add(bytes) <= self.max_bytes).then_some(b + bytes)
                })
                .is_ok();
            if !room {
                return Err(chunk);
            }
            let admitted = stats
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    (q + n <= self.capacity).then_some(q + n)
                })
                .is_ok();
            if !admitted {
                stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                return Err(chunk);
            }
            self.tx.send((first, accepted, bytes, chunk)).map_err(|e| {
                // The runner is gone (shutdown); the records were never queued.
                stats.queued.fetch_sub(n, Ordering::AcqRel);
                stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                e.0.3
            })
        };
        // What turned the chunk away; a disk error is logged as an error.
        let (counter, what, disk_error) = match &self.buffer {
            None => match to_memory(0, chunk) {
                Ok(()) => {
                    if self.refused[0].load(Ordering::Relaxed) != 0 {
                        self.refused[0].store(0, Ordering::Release);
                    }
                    return true;
                }
                Err(_) => {
                    // An empty queue that refused a chunk larger than its
                    // bound is not full: a smaller chunk would go in.
                    if stats.queued.load(Ordering::Acquire) > 0 {
                        self.refused[1].store(bytes, Ordering::Release);
                        self.refused[0].store(n, Ordering::Release);
                    }
                    (
                        &stats.dropped_queue_full,
                        "sink queue full: dropping newest records",
                        None,
                    )
                }
            },
            Some(buffer) => match buffer.append(chunk, |first, chunk| {
                to_memory(first, chunk).inspect_err(|_| {
                    stats.buffered.fetch_add(n, Ordering::Relaxed);
                })
            }) {
                buffer::Appended::Memory | buffer::Appended::Disk => {
                    if self.refused[0].load(Ordering::Relaxed) != 0 {
                        self.refused[0].store(0, Ordering::Release);
                    }
                    return true;
                }
                buffer::Appended::Full { bytes } => {
                    self.refused[1].store(bytes, Ordering::Release);
                    self.refused[0].store(n, Ordering::Release);
                    (
                        &stats.dropped_buffer_full,
                        "disk buffer full (--buffer-max-bytes): dropping newest records",
                        None,
                    )
                }
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
                None => tracing::warn!(
                    sink,
                    dropped_total,
                    capacity = self.capacity,
                    max_bytes = self.max_bytes,
                    "{what}"
                ),
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
        self.recv_stamped(max, stats)
            .await
            .map(|(_, _, chunk)| chunk)
    }

    /// [`Intake::recv_up_to`], with when the chunk was accepted: when its
    /// [`SinkQueue`] took it, or, for records read back from the disk
    /// buffer (after a restart, or spilled while the memory queue was
    /// full), when they were read back: the buffer keeps no time, so their
    /// latency counts from then and understates what they waited on disk.
    /// Also the chunk's estimated bytes, counted in
    /// [`SinkStats::queued_bytes`] until the runner has written them.
    pub(crate) async fn recv_stamped(
        &mut self,
        max: usize,
        stats: &SinkStats,
    ) -> Option<(Instant, u64, Chunk)> {
        let mut closed = false;
        loop {
            match self.rx.try_recv() {
                Ok((first, accepted, bytes, chunk)) => {
                    if let Some(r) = &mut self.reader {
                        r.took_from_memory(first, chunk.len() as u64);
                    }
                    return Some((accepted, bytes, chunk));
                }
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            let Some(reader) = &mut self.reader else {
                if closed {
                    return None;
                }
                let (_, accepted, bytes, chunk) = self.rx.recv().await?;
                return Some((accepted, bytes, chunk));
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
                    // In memory now, until written: counted like the memory queue's.
                    let bytes = chunk_bytes(&chunk);
                    stats.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
                    return Some((Instant::now(), bytes, chunk));
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
                    Some((first, accepted, bytes, chunk)) => {
                        reader.took_from_memory(first, chunk.len() as u64);
                        return Some((accepted, bytes, chunk));
                    }
                    None => closed = true,
                },
                _ = reader.on_disk() => {}
            }
        }
    }

    /// The next chunk of the memory queue (tests that read a queue directly).
    pub async fn recv(&mut self) -> Option<Chunk> {
        self.rx.recv().await.map(|(_, _, _, c)| c)
    }

    /// The next chunk of the memory queue if one is there, without waiting.
    pub fn try_recv(&mut self) -> Option<Chunk> {
        self.rx.try_recv().ok().map(|(_, _, _, c)| c)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{BatchConfig, Sink, SinkFailure, run_sink};

    fn logs(n: usize) -> Chunk {
        (0..n)
            .map(|_| {
                Arc::new(crate::classify::classify(crate::proto::Envelope {
                    source_id: "app".into(),
                    message: Some(crate::proto::envelope::Message::Log(crate::proto::Log {
                        payload: "the same line".into(),
                        r#type: 0,
                    })),
                    ..Default::default()
                }))
            })
            .collect()
    }

    /// Delivers what it is given.
    struct Accept;

    impl Sink for Accept {
        fn name(&self) -> &str {
            "accept"
        }
        async fn write(&mut self, batch: crate::sink::Batch<'_>) -> Result<u64, SinkFailure> {
            Ok(batch.records.len() as u64)
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            Ok(0)
        }
    }

    /// Full means the chunk last turned away would be turned away again:
    /// in memory by bytes (until bytes are given back or a chunk is taken;
    /// an empty queue never is), in a disk buffer that drops the newest by
    /// its free bytes, never in one that blocks.
    #[tokio::test]
    async fn full_means_the_chunk_last_turned_away_would_be_turned_away_again() {
        let one = logs(1)[0].approx_size() as u64;
        let (mut queue, _intake) = SinkQueue::new("q", 1_000_000);
        queue.set_max_bytes(4 * one);
        let stats = Arc::clone(queue.stats());
        assert!(queue.offer(logs(3)));
        assert!(!queue.is_full());
        assert!(!queue.offer(logs(2)), "5 records' bytes pass the bound");
        assert!(queue.is_full());
        // The runner took the three but has not delivered them: their
        // bytes still count, so the two would still be turned away.
        stats.queued.fetch_sub(3, Ordering::AcqRel);
        stats.in_flight.fetch_add(3, Ordering::AcqRel);
        stats.queued.fetch_add(1, Ordering::AcqRel); // one more waits
        assert!(queue.is_full());
        stats.queued_bytes.fetch_sub(3 * one, Ordering::AcqRel);
        assert!(!queue.is_full(), "delivered: their bytes came back");
        assert!(queue.offer(logs(2)));
        assert!(!queue.is_full());

        for (when_full, full) in [
            (buffer::WhenFull::DropNewest, true),
            (buffer::WhenFull::Block, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = buffer::BufferConfig {
                dir: dir.path().to_path_buf(),
                max_bytes: 4096,
                segment_bytes: 4096,
                when_full,
                fsync: buffer::Fsync::Batch,
                warn_fill: 0.0,
            };
            let (queue, _intake) = SinkQueue::with_buffer("b", 1, &cfg).unwrap();
            let mut offers = 0;
            while queue.offer(logs(5)) {
                assert!(!queue.is_full());
                offers += 1;
            }
            assert!(offers > 0, "some chunks fit in 4 KiB");
            assert_eq!(queue.is_full(), full, "{when_full:?}");
            assert_eq!(queue.stats().load().dropped_buffer_full, 5);
        }
    }

    #[tokio::test]
    async fn a_queue_bounded_by_bytes_turns_away_what_would_pass_the_bound_and_counts_it() {
        let one = logs(1)[0].approx_size() as u64;
        // Room for ten and a half records by bytes; by count, for a million.
        let (mut queue, intake) = SinkQueue::new("q", 1_000_000);
        queue.set_max_bytes(10 * one + one / 2);
        let stats = Arc::clone(queue.stats());
        // 3 + 3 + 3 fit; a fourth chunk of 3 would take 12: turned away;
        // one more record fits (10); then nothing.
        let admitted: Vec<bool> = [3, 3, 3, 3, 1, 1].map(|n| queue.offer(logs(n))).into();
        assert_eq!(admitted, [true, true, true, false, true, false]);
        let s = stats.load();
        assert_eq!((s.received, s.queued, s.dropped_queue_full), (14, 10, 4));
        assert_eq!(stats.queued_bytes.load(Ordering::Acquire), 10 * one);
        // Written, the bytes are given back: the queue takes records again.
        let runner = tokio::spawn(run_sink(
            Accept,
            intake,
            Arc::clone(&stats),
            BatchConfig::default(),
        ));
        while stats.delivered.load(Ordering::Acquire) < 10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(stats.queued_bytes.load(Ordering::Acquire), 0);
        // An empty queue takes one chunk larger than the bound.
        assert!(queue.offer(logs(20)));
        drop(queue);
        let s = runner.await.unwrap().stats;
        assert_eq!(
            (s.received, s.delivered, s.dropped_queue_full, s.pending()),
            (34, 30, 4, 0)
        );
        assert_eq!(stats.queued_bytes.load(Ordering::Acquire), 0);
    }
}

//! The disk buffer of a sink (`--buffer-dir`): write-through segment files,
//! so that what a sink accepted survives a killed process and a sink that is
//! down for longer than its memory queue lasts.
//!
//! Every record offered to a buffered sink is appended to the buffer before
//! it counts as accepted; the sink's memory queue is only a read-ahead over
//! it. While the memory queue has room, records travel through it as well;
//! once it is full, later records stay on disk only and the sink's runner
//! reads them back from the segment files, oldest first, until it has caught
//! up ([`BufferReader::read`]). The runner acknowledges by count what the sink
//! settled (delivered, dead-lettered or lost by a write error, in order), and
//! a segment is deleted once every record in it is acknowledged; the segment
//! being written is emptied in place once every record written so far is, so
//! acknowledged records never hold space (on a disk smaller than a segment,
//! they would hold it for good). After a restart, every record not
//! acknowledged is replayed before new ones; segments with nothing to replay
//! are removed.
//!
//! A sink whose disk refuses (nearly) every write is marked in
//! [`BufferHealth::refusing`] (`/health` fails); the fill warning of
//! `--buffer-warn-fill` is [`BufferHealth::warn_bytes`] (the alert watcher).
//!
//! Why our own and not a crate: the maintained embedded stores (sled,
//! redb, fjall) are key-value stores with their own compaction and an
//! unbounded write amplification for a FIFO; what is needed here is an
//! append-only log with a CRC per record and a truncate-on-replay rule, which
//! is a few hundred lines. Vector's disk buffer is not a separate crate.
//!
//! ## Layout (one folder per sink under `--buffer-dir`)
//!
//! - `NNNNNNNNNNNNNNNNNNNN.seg`: segment files, numbered in order. A record is
//!   `len: u32 LE`, `crc32(payload): u32 LE`, `payload` (see [`encode_record`]).
//! - `ack`: where replay starts: segment number `u64 LE`, record index in it
//!   `u64 LE`, CRC-32 of those 16 bytes. Rewritten in place after every
//!   settled batch, so a restart replays at most the batch being written.
//!
//! A record whose length or CRC does not check out ends its segment: at open
//! the file is truncated there (a torn write at the tail after a crash), and
//! it is never replayed as garbage.
//!
//! Durability: segments and the ack file are written with `write` (so a
//! killed process loses nothing) and `fsync`ed per `--buffer-fsync`: after
//! every append (`batch`) or every N ms (default 100), so a machine crash
//! loses at most that interval.
//!
//! ## Code
//!
//! Here: the configuration, [`DiskBuffer`]'s state and appends. `recover.rs`:
//! [`DiskBuffer::open`] (what an earlier run left). `ack.rs`:
//! [`DiskBuffer::ack`] and the `ack` file. `read.rs`: [`BufferReader`].
//! `segment.rs`: the record format and reading a segment.

mod ack;
mod read;
mod recover;
mod segment;

pub use read::BufferReader;
pub use segment::{replay_segment, segment_bytes};

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::record::Record;
use crate::sink::{Chunk, SinkStats};
use segment::{append_framed, create_segment, segment_path};

/// What a full buffer does with new records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub(crate) enum WhenFull {
    /// Turn the newest records away, counted as `dropped{reason=buffer_full}`.
    DropNewest,
    /// Sources that can read again (the audit-events poller) wait for room
    /// instead of being turned away; the firehose cannot wait (a slow reader
    /// makes Loggregator drop), so its records are still dropped and counted.
    Block,
}

/// When appended records are forced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fsync {
    /// After every append (safest, slowest).
    Batch,
    /// At most this long after an append.
    Every(Duration),
}

#[derive(Clone, Debug)]
pub struct BufferConfig {
    /// The buffer's folder; each sink gets a folder of its own inside.
    pub dir: PathBuf,
    /// Most bytes of segment files one sink may hold.
    pub max_bytes: u64,
    /// A segment is closed once it holds this many bytes.
    pub segment_bytes: u64,
    pub(crate) when_full: WhenFull,
    pub(crate) fsync: Fsync,
    /// Fill (of `max_bytes`) at which the buffer counts as filling and an
    /// alert is raised (`--buffer-warn-fill`); 0 for none.
    pub(crate) warn_fill: f64,
}

impl BufferConfig {
    /// The same buffer with `total` bytes shared evenly by `sinks` sinks,
    /// and segments small enough that acknowledged space comes back soon.
    pub(crate) fn per_sink(&self, sinks: usize) -> Self {
        let max_bytes = self.max_bytes / sinks.max(1) as u64;
        Self {
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4096, 64 * 1024 * 1024),
            ..self.clone()
        }
    }
}

/// What `/health` and the alert watcher read of a sink's disk buffer (kept in
/// [`SinkStats::buffer_health`]).
#[derive(Debug, Default)]
pub struct BufferHealth {
    /// Bytes at which the buffer counts as filling (`--buffer-warn-fill`);
    /// 0 without a buffer or with the warning off.
    pub(crate) warn_bytes: AtomicU64,
    /// The disk refused (nearly) every record recently offered: the sink is
    /// dropping what it is given (see [`RefusalShare`]).
    pub refusing: AtomicBool,
}

/// The share of recently offered records the disk refused, weighted so that
/// about the last [`RefusalShare::HORIZON`] records count: each record's
/// weight decays by `e^(-1/HORIZON)` per record offered after it. Counted in
/// records, not time, so a quiet sink keeps its verdict until new records
/// say otherwise, or an acknowledgement frees space (which clears it).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RefusalShare(f64);

impl RefusalShare {
    pub(crate) const HORIZON: f64 = 1000.0;
    /// At or above this share the sink counts as dropping everything.
    pub(crate) const FAILING: f64 = 0.9;

    /// `n` more records offered, all refused by the disk or all kept.
    pub fn offered(self, n: u64, refused: bool) -> Self {
        let keep = (-(n as f64) / Self::HORIZON).exp();
        Self(self.0 * keep + if refused { 1.0 - keep } else { 0.0 })
    }

    pub fn failing(self) -> bool {
        self.0 >= Self::FAILING
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("disk buffer: cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BufferError {
    let path = path.display().to_string();
    move |source| BufferError::Io { what, path, source }
}

pub(super) struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Ordinal (see [`State::next_ord`]) of its first record.
    first_ord: u64,
    records: u64,
    /// Records at its start that were acknowledged before this run.
    skip: u64,
}

pub(super) struct State {
    /// Oldest first; the last one is written to.
    segments: VecDeque<Segment>,
    active: File,
    /// Records are numbered in order from 0 at each start (replayed ones
    /// first); this is the number the next appended record gets.
    next_ord: u64,
    /// The ordinal after the last record handed to the memory queue.
    memory_end: u64,
    /// False once a record went to disk only: later records follow it there
    /// until the reader has caught up, so the sink sees them in order.
    memory_ok: bool,
    disk_bytes: u64,
    acked: u64,
    ack_file: File,
    /// Rotated segments not yet synced.
    to_sync: Vec<File>,
    /// The active segment could not be restored after a failed write.
    broken: bool,
    /// How much of what was offered lately the disk refused.
    refusal: RefusalShare,
    scratch: Vec<u8>,
}

/// One sink's disk buffer. Appends come from the router (any thread); one
/// [`BufferReader`] (the sink's runner) reads.
pub struct DiskBuffer {
    dir: PathBuf,
    cfg: BufferConfig,
    state: Mutex<State>,
    stats: Arc<SinkStats>,
    /// Signalled when records went to disk only.
    on_disk: tokio::sync::Notify,
}

impl std::fmt::Debug for DiskBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBuffer")
            .field("dir", &self.dir)
            .finish()
    }
}

/// The outcome of [`DiskBuffer::append`].
#[derive(Debug)]
pub enum Appended {
    /// On disk, and in the memory queue.
    Memory,
    /// On disk only; the runner reads it back.
    Disk,
    /// Turned away: the buffer is at its size limit; `bytes`, the chunk's
    /// framed size, did not fit.
    Full { bytes: u64 },
    /// Turned away: the disk refused the write (nothing of it stays on disk).
    Failed(std::io::Error),
}

/// What [`BufferReader::read`] found.
#[derive(Debug)]
pub enum Backlog {
    /// Records read back from disk, oldest first.
    Records(Vec<Record>),
    /// Earlier records are still in the memory queue: take those first.
    MemoryFirst,
    /// Nothing on disk that the memory queue does not also carry.
    CaughtUp,
}

impl DiskBuffer {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent files (every
        // write is restored or rotated away); carry on with the state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn when_full(&self) -> WhenFull {
        self.cfg.when_full
    }

    /// Whether `bytes` more would fit.
    pub(crate) fn has_room(&self, bytes: u64) -> bool {
        let s = self.state();
        s.disk_bytes + bytes <= self.cfg.max_bytes
    }

    /// Appends `chunk`; then, unless earlier records are on disk only, offers
    /// it to the memory queue through `to_memory` (which gives it back when
    /// the queue is full, and must count it as buffered then). Both happen
    /// under one lock, so the sink sees records in the order appended.
    pub fn append(
        &self,
        chunk: Chunk,
        to_memory: impl FnOnce(u64, Chunk) -> Result<(), Chunk>,
    ) -> Appended {
        let mut guard = self.state();
        let s = &mut *guard;
        let n = chunk.len() as u64;
        s.scratch.clear();
        for r in &chunk {
            append_framed(r, &mut s.scratch);
        }
        let bytes = s.scratch.len() as u64;
        if s.disk_bytes + bytes > self.cfg.max_bytes {
            return Appended::Full { bytes };
        }
        let active = s
            .segments
            .back()
            .expect("there is always an active segment");
        if (s.broken || (active.bytes > 0 && active.bytes + bytes > self.cfg.segment_bytes))
            && let Err(e) = self.rotate(s)
        {
            self.note_refusal(s, n, true);
            return Appended::Failed(e);
        }
        let before = s.segments.back().expect("active").bytes;
        // At the segment's length, not the file position: a write the disk
        // refused half-way leaves the position past what is taken back.
        if let Err(e) = s.active.write_all_at(&s.scratch, before) {
            // Take back whatever part of it reached the file, so the segment
            // stays readable; if even that fails, start a new one next time.
            if s.active.set_len(before).is_err() {
                s.broken = true;
            }
            self.note_refusal(s, n, true);
            return Appended::Failed(e);
        }
        self.note_refusal(s, n, false);
        if self.cfg.fsync == Fsync::Batch
            && let Err(e) = s.active.sync_data()
        {
            tracing::warn!(error = %e, dir = %self.dir.display(), "disk buffer: fsync failed");
        }
        let active = s.segments.back_mut().expect("active");
        active.bytes += bytes;
        active.records += n;
        s.disk_bytes += bytes;
        self.stats
            .buffer_bytes
            .store(s.disk_bytes, Ordering::Relaxed);
        let ord = s.next_ord;
        s.next_ord += n;
        if s.memory_ok {
            match to_memory(ord, chunk) {
                Ok(()) => {
                    s.memory_end = s.next_ord;
                    return Appended::Memory;
                }
                Err(_) => s.memory_ok = false,
            }
        } else {
            self.stats.buffered.fetch_add(n, Ordering::Relaxed);
        }
        drop(guard);
        self.on_disk.notify_one();
        Appended::Disk
    }

    /// `n` records offered to the disk were `refused` (or written).
    fn note_refusal(&self, s: &mut State, n: u64, refused: bool) {
        s.refusal = s.refusal.offered(n, refused);
        self.stats
            .buffer_health
            .refusing
            .store(s.refusal.failing(), Ordering::Relaxed);
    }

    fn rotate(&self, s: &mut State) -> std::io::Result<()> {
        let last = s.segments.back().expect("active");
        let seq = last.seq + 1;
        let path = segment_path(&self.dir, seq);
        let file = create_segment(&path).map_err(|e| match e {
            BufferError::Io { source, .. } => source,
        })?;
        let old = std::mem::replace(&mut s.active, file);
        if self.cfg.fsync == Fsync::Batch {
            let _ = old.sync_data();
        } else {
            s.to_sync.push(old);
        }
        s.broken = false;
        s.segments.push_back(Segment {
            seq,
            path,
            bytes: 0,
            first_ord: s.next_ord,
            records: 0,
            skip: 0,
        });
        Ok(())
    }

    /// Forces what was written to disk (rotated segments, the active one and
    /// the ack file). Called on the fsync interval and at shutdown.
    pub fn sync(&self) {
        let (files, active, ack) = {
            let mut s = self.state();
            (
                std::mem::take(&mut s.to_sync),
                s.active.try_clone(),
                s.ack_file.try_clone(),
            )
        };
        for f in files
            .iter()
            .chain(active.as_ref().ok())
            .chain(ack.as_ref().ok())
        {
            if let Err(e) = f.sync_data() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "disk buffer: fsync failed");
            }
        }
    }
}

/// Forces the buffer to disk every `every` until it is dropped.
async fn sync_every(buffer: std::sync::Weak<DiskBuffer>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(b) = buffer.upgrade() else { return };
        if tokio::task::spawn_blocking(move || b.sync()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Intake, SinkQueue};

    fn cfg(dir: &Path) -> BufferConfig {
        BufferConfig {
            dir: dir.to_path_buf(),
            max_bytes: 1 << 30,
            // A few records per segment, so acknowledgements delete files.
            segment_bytes: 2048,
            when_full: WhenFull::DropNewest,
            fsync: Fsync::Batch,
            warn_fill: 0.8,
        }
    }

    fn numbered(from: u64, n: u64) -> Chunk {
        (from..from + n)
            .map(|i| {
                let mut r = crate::classify::classify(crate::proto::Envelope {
                    timestamp: i as i64,
                    source_id: "app".into(),
                    message: Some(crate::proto::envelope::Message::Log(crate::proto::Log {
                        payload: format!("seq={i}").into(),
                        r#type: 0,
                    })),
                    ..Default::default()
                });
                if i % 2 == 0 {
                    r.names = Some(Arc::new(crate::record::AppNames {
                        app_guid: "g".into(),
                        app_name: Some(format!("app-{i}")),
                        ..Default::default()
                    }));
                }
                Arc::new(r)
            })
            .collect()
    }

    fn seqs(chunk: &Chunk) -> Vec<u64> {
        chunk
            .iter()
            .map(|r| r.envelope.timestamp() as u64)
            .collect()
    }

    /// Pretends the sink delivered `chunk`.
    fn deliver(stats: &SinkStats, chunk: &Chunk) {
        let n = chunk.len() as u64;
        stats.delivered.fetch_add(n, Ordering::Relaxed);
        stats.queued.fetch_sub(n, Ordering::Relaxed);
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("t"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("seg".as_ref()))
            .count()
    }

    #[tokio::test]
    async fn records_beyond_the_memory_queue_wait_on_disk_and_come_back_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (queue, mut intake) = SinkQueue::with_buffer("t", 10, &cfg(tmp.path())).unwrap();
        let stats = Arc::clone(queue.stats());
        for c in 0..5 {
            assert!(queue.offer(numbered(c * 10, 10)));
        }
        let s = stats.snapshot("t");
        assert_eq!((s.received, s.queued, s.buffered), (50, 10, 40));
        let mut got = Vec::new();
        let first = intake.recv_up_to(25, &stats).await.unwrap();
        assert_eq!(first.len(), 10, "the memory chunk first");
        deliver(&stats, &first);
        intake.settled(&stats);
        got.extend(seqs(&first));
        // The memory queue has room again, but order holds: what follows
        // the records on disk waits behind them.
        assert!(queue.offer(numbered(50, 10)));
        assert_eq!(stats.snapshot("t").buffered, 50);
        while got.len() < 60 {
            let chunk = intake.recv_up_to(25, &stats).await.unwrap();
            assert!(chunk.len() <= 25);
            deliver(&stats, &chunk);
            intake.settled(&stats);
            got.extend(seqs(&chunk));
        }
        assert_eq!(got, (0..60).collect::<Vec<_>>());
        let s = stats.snapshot("t");
        assert_eq!(
            (s.received, s.delivered, s.queued, s.buffered),
            (60, 60, 0, 0)
        );
        // Caught up: new records travel through memory again.
        assert!(queue.offer(numbered(60, 5)));
        assert_eq!(stats.snapshot("t").queued, 5);
        let chunk = intake.recv_up_to(25, &stats).await.unwrap();
        assert_eq!(seqs(&chunk), (60..65).collect::<Vec<_>>());
        // Names survive the disk.
        deliver(&stats, &chunk);
        intake.settled(&stats);
        assert_eq!(segments(tmp.path()), 1, "delivered segments are deleted");
        drop(queue);
        assert!(intake.recv_up_to(25, &stats).await.is_none());
    }

    #[tokio::test]
    async fn a_restart_replays_exactly_what_was_not_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let original = numbered(0, 100);
        {
            let (queue, mut intake) = SinkQueue::with_buffer("t", 0, &cfg(tmp.path())).unwrap();
            let stats = Arc::clone(queue.stats());
            for c in original.chunks(10) {
                assert!(queue.offer(c.to_vec()));
            }
            // Reads stop at segment ends: take chunks until 30 are delivered.
            let mut delivered = Vec::new();
            while delivered.len() < 30 {
                let mut chunk = intake
                    .recv_up_to(30 - delivered.len(), &stats)
                    .await
                    .unwrap();
                chunk.truncate(30 - delivered.len());
                deliver(&stats, &chunk);
                intake.settled(&stats);
                delivered.extend(seqs(&chunk));
            }
            assert_eq!(delivered, (0..30).collect::<Vec<_>>());
            // Read but not delivered when the process dies.
            intake.recv_up_to(30, &stats).await.unwrap();
        }
        let (queue, mut intake) = SinkQueue::with_buffer("t", 0, &cfg(tmp.path())).unwrap();
        let stats = Arc::clone(queue.stats());
        let s = stats.snapshot("t");
        assert_eq!((s.received, s.buffered), (70, 70));
        drop(queue);
        let mut got = Vec::new();
        while let Some(chunk) = intake.recv_up_to(1000, &stats).await {
            got.extend(chunk);
        }
        assert_eq!(got.len(), 70);
        for (r, o) in got.iter().zip(&original[30..]) {
            assert_eq!(**r, **o);
        }
    }

    #[tokio::test]
    async fn a_full_buffer_turns_the_newest_away_and_counts_them() {
        let tmp = tempfile::tempdir().unwrap();
        let (queue, _intake) = SinkQueue::with_buffer(
            "t",
            0,
            &BufferConfig {
                max_bytes: 3000,
                ..cfg(tmp.path())
            },
        )
        .unwrap();
        let mut admitted = 0;
        for c in 0..20 {
            if queue.offer(numbered(c * 10, 10)) {
                admitted += 10;
            }
        }
        let s = queue.stats().snapshot("t");
        assert!(admitted > 0 && admitted < 200);
        assert_eq!(
            (s.received, s.buffered, s.dropped_buffer_full),
            (200, admitted, 200 - admitted)
        );
        assert!(s.buffer_bytes <= 3000);
    }

    /// Delivers whatever the intake has until `n` records came through.
    async fn take(intake: &mut Intake, stats: &SinkStats, n: usize) -> Vec<u64> {
        let mut got = Vec::new();
        while got.len() < n {
            let chunk = intake.recv_up_to(n - got.len(), stats).await.unwrap();
            assert!(got.len() + chunk.len() <= n);
            deliver(stats, &chunk);
            intake.settled(stats);
            got.extend(seqs(&chunk));
        }
        got
    }

    fn active_len(dir: &Path) -> Vec<u64> {
        let mut lens: Vec<(String, u64)> = std::fs::read_dir(dir.join("t"))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().extension() == Some("seg".as_ref()))
            .map(|e| {
                let name = e.file_name().into_string().unwrap();
                (name, e.metadata().unwrap().len())
            })
            .collect();
        lens.sort();
        lens.into_iter().map(|(_, len)| len).collect()
    }

    /// The issue-17 case in small: a buffer whose limit (the disk) is below
    /// one segment fills up while the sink is down; once the sink delivered
    /// everything, the space comes back and new records are taken again,
    /// in order, and replayed after a restart like any others.
    #[tokio::test]
    async fn delivered_records_give_the_active_segment_s_space_back() {
        let tmp = tempfile::tempdir().unwrap();
        let small = BufferConfig {
            max_bytes: 3000,
            segment_bytes: 1 << 20,
            ..cfg(tmp.path())
        };
        let (queue, mut intake) = SinkQueue::with_buffer("t", 10, &small).unwrap();
        let stats = Arc::clone(queue.stats());
        let mut admitted = 0;
        for c in 0..10 {
            if queue.offer(numbered(c * 10, 10)) {
                admitted += 10;
            }
        }
        let s = stats.snapshot("t");
        assert!((20..100).contains(&admitted), "{admitted}");
        assert_eq!(s.dropped_buffer_full, 100 - admitted);
        let got = take(&mut intake, &stats, admitted as usize).await;
        assert_eq!(got, (0..admitted).collect::<Vec<_>>());
        // Everything settled: nothing is held, on disk or in the count.
        assert_eq!(stats.snapshot("t").buffer_bytes, 0);
        assert_eq!(active_len(tmp.path()), [0]);

        // As much again fits, and comes back in order: 10 through memory,
        // the rest read back from the emptied segment.
        for c in 0..admitted / 10 {
            assert!(queue.offer(numbered(1000 + c * 10, 10)), "chunk {c}");
        }
        let s = stats.snapshot("t");
        assert_eq!(s.dropped_buffer_full, 100 - admitted);
        assert_eq!((s.queued, s.buffered), (10, admitted - 10));
        let got = take(&mut intake, &stats, 20).await;
        assert_eq!(got, (1000..1020).collect::<Vec<_>>());
        // The process stops with the rest not delivered: a restart replays
        // exactly those.
        drop(queue);
        drop(intake);
        let (queue, mut intake) = SinkQueue::with_buffer("t", 10, &small).unwrap();
        let stats = Arc::clone(queue.stats());
        let s = stats.snapshot("t");
        assert_eq!((s.received, s.buffered), (admitted - 20, admitted - 20));
        drop(queue);
        let mut got = Vec::new();
        while let Some(chunk) = intake.recv_up_to(1000, &stats).await {
            got.extend(seqs(&chunk));
        }
        assert_eq!(got, (1020..1000 + admitted).collect::<Vec<_>>());
    }

    /// A start after a stop with everything delivered holds and counts no
    /// space: the segment the ack points past is removed, and new segments
    /// are numbered after the ack's, so a later start never takes them for
    /// acknowledged ones.
    #[tokio::test]
    async fn a_start_removes_acknowledged_segments_and_numbers_after_the_ack() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        std::fs::create_dir_all(&dir).unwrap();
        let ack = |seq: u64, index: u64| {
            let mut buf = [0u8; 20];
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            buf[8..16].copy_from_slice(&index.to_le_bytes());
            let crc = crc32fast::hash(&buf[..16]);
            buf[16..].copy_from_slice(&crc.to_le_bytes());
            std::fs::write(dir.join("ack"), buf).unwrap();
        };
        // Segment 7 holds 30 records, all acknowledged (as a run that
        // stopped before this fix left it, or one killed mid-way).
        let records: Vec<Record> = numbered(0, 30).iter().map(|r| (**r).clone()).collect();
        std::fs::write(segment_path(&dir, 7), segment_bytes(&records)).unwrap();
        ack(7, 30);
        let (queue, intake) = SinkQueue::with_buffer("t", 0, &cfg(tmp.path())).unwrap();
        let s = queue.stats().snapshot("t");
        assert_eq!((s.received, s.buffered, s.buffer_bytes), (0, 0, 0));
        assert!(!segment_path(&dir, 7).exists());
        assert!(queue.offer(numbered(100, 10)));
        assert!(segment_path(&dir, 8).exists());
        drop((queue, intake));

        // The ack names a segment that is gone and no segment is left: the
        // new one still comes after it.
        for e in std::fs::read_dir(&dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        ack(5, 3);
        let (queue, intake) = SinkQueue::with_buffer("t", 0, &cfg(tmp.path())).unwrap();
        assert!(queue.offer(numbered(200, 10)));
        assert!(segment_path(&dir, 6).exists());
        drop((queue, intake));
        let (queue, mut intake) = SinkQueue::with_buffer("t", 0, &cfg(tmp.path())).unwrap();
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let mut got = Vec::new();
        while let Some(chunk) = intake.recv_up_to(1000, &stats).await {
            got.extend(seqs(&chunk));
        }
        assert_eq!(got, (200..210).collect::<Vec<_>>());
    }

    #[test]
    fn the_refusal_share_fails_a_sink_whose_disk_refuses_nearly_everything() {
        let mut r = RefusalShare::default();
        // 2,300 records refused in a row: 1 - e^-2.3 = 0.8997, not yet.
        for _ in 0..230 {
            r = r.offered(10, true);
        }
        assert!(!r.failing(), "{r:?}");
        r = r.offered(10, true);
        assert!(r.failing(), "{r:?}");
        // A chunk that squeezes into the last free bytes now and then (one
        // in 16) does not make the sink healthy.
        for i in 1..=320 {
            r = r.offered(10, i % 16 != 0);
            assert!(r.failing(), "after {i} chunks: {r:?}");
        }
        // Writes that work again clear it.
        r = r.offered(150, false);
        assert!(!r.failing(), "{r:?}");
        assert_eq!(
            RefusalShare::default().offered(1000, false),
            RefusalShare(0.0)
        );
    }
}

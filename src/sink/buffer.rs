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

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::record::{ApiSource, Record};
use crate::sink::{Chunk, SinkStats};

/// A length above this is corruption, not a record (the RLP's own limit on a
/// batch is 16 MiB).
const MAX_RECORD: u32 = 64 * 1024 * 1024;
const HEADER: usize = 8;
const SEGMENT_EXT: &str = "seg";

/// What a full buffer does with new records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum WhenFull {
    /// Turn the newest records away, counted as `dropped{reason=buffer_full}`.
    DropNewest,
    /// Sources that can read again (the audit-events poller) wait for room
    /// instead of being turned away; the firehose cannot wait (a slow reader
    /// makes Loggregator drop), so its records are still dropped and counted.
    Block,
}

/// When appended records are forced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
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
    pub when_full: WhenFull,
    pub fsync: Fsync,
    /// Fill (of `max_bytes`) at which the buffer counts as filling and an
    /// alert is raised (`--buffer-warn-fill`); 0 for none.
    pub warn_fill: f64,
}

impl BufferConfig {
    /// The same buffer with `total` bytes shared evenly by `sinks` sinks,
    /// and segments small enough that acknowledged space comes back soon.
    pub fn per_sink(&self, sinks: usize) -> Self {
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
    pub warn_bytes: AtomicU64,
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
pub struct RefusalShare(f64);

impl RefusalShare {
    pub const HORIZON: f64 = 1000.0;
    /// At or above this share the sink counts as dropping everything.
    pub const FAILING: f64 = 0.9;

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

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BufferError {
    let path = path.display().to_string();
    move |source| BufferError::Io { what, path, source }
}

struct Segment {
    seq: u64,
    path: PathBuf,
    bytes: u64,
    /// Ordinal (see [`State::next_ord`]) of its first record.
    first_ord: u64,
    records: u64,
    /// Records at its start that were acknowledged before this run.
    skip: u64,
}

struct State {
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
    /// Turned away: the buffer is at its size limit.
    Full,
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
    /// Opens (or creates) `sink`'s buffer, truncating a torn tail. Records
    /// left from an earlier run and not acknowledged are counted into
    /// `stats` as received and buffered; the reader replays them first.
    pub fn open(
        cfg: &BufferConfig,
        sink: &str,
        stats: Arc<SinkStats>,
    ) -> Result<(Arc<Self>, BufferReader), BufferError> {
        let dir = cfg.dir.join(folder_name(sink));
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let mut seqs: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(io("list", &dir))?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
                stem.parse().ok()
            })
            .collect();
        seqs.sort_unstable();
        let ack_path = dir.join("ack");
        let start = read_ack(&ack_path);
        let mut segments = VecDeque::new();
        let mut ord = 0u64;
        let mut disk_bytes = 0u64;
        for seq in &seqs {
            let path = segment_path(&dir, *seq);
            if start.is_some_and(|(s, _)| *seq < s) {
                // Acknowledged in full before the last stop.
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                continue;
            }
            let (records, valid_bytes, len) = scan(&path)?;
            if valid_bytes < len {
                tracing::warn!(
                    segment = %path.display(),
                    kept_records = records,
                    cut_bytes = len - valid_bytes,
                    "disk buffer: a torn or damaged record ends this segment; truncated there"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                f.set_len(valid_bytes).map_err(io("truncate", &path))?;
                f.sync_all().map_err(io("sync", &path))?;
            }
            let skip = match start {
                Some((s, idx)) if s == *seq => idx.min(records),
                _ => 0,
            };
            if skip == records {
                // Nothing in it to replay (acknowledged in full, or empty):
                // its space must not stay taken, or a disk that was full
                // when the last run stopped stays full.
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                continue;
            }
            segments.push_back(Segment {
                seq: *seq,
                path,
                bytes: valid_bytes,
                first_ord: ord,
                records: records - skip,
                skip,
            });
            ord += records - skip;
            disk_bytes += valid_bytes;
        }
        let backlog = ord;
        // New records go to a new segment; the old ones are only read. Its
        // number is above every one seen and above the ack's, so a later
        // start never takes it for an acknowledged one.
        let seq = seqs
            .last()
            .copied()
            .max(start.map(|(s, _)| s))
            .map_or(0, |s| s + 1);
        let path = segment_path(&dir, seq);
        let active = create_segment(&path)?;
        segments.push_back(Segment {
            seq,
            path,
            bytes: 0,
            first_ord: ord,
            records: 0,
            skip: 0,
        });
        let ack_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&ack_path)
            .map_err(io("open", &ack_path))?;
        stats.received.fetch_add(backlog, Ordering::Relaxed);
        stats.buffered.fetch_add(backlog, Ordering::Relaxed);
        stats.buffer_bytes.store(disk_bytes, Ordering::Relaxed);
        stats
            .buffer_max_bytes
            .store(cfg.max_bytes, Ordering::Relaxed);
        stats
            .buffer_health
            .warn_bytes
            .store(warn_bytes(cfg), Ordering::Relaxed);
        if backlog > 0 {
            tracing::info!(sink, records = backlog, bytes = disk_bytes, dir = %dir.display(), "disk buffer: replaying records not delivered before the last stop");
        }
        let buffer = Arc::new(Self {
            dir,
            cfg: cfg.clone(),
            state: Mutex::new(State {
                segments,
                active,
                next_ord: ord,
                memory_end: 0,
                memory_ok: backlog == 0,
                disk_bytes,
                acked: 0,
                ack_file,
                to_sync: Vec::new(),
                broken: false,
                refusal: RefusalShare::default(),
                scratch: Vec::new(),
            }),
            stats,
            on_disk: tokio::sync::Notify::new(),
        });
        if let Fsync::Every(every) = cfg.fsync {
            tokio::spawn(sync_every(Arc::downgrade(&buffer), every));
        }
        let reader = BufferReader {
            buffer: Arc::clone(&buffer),
            next_ord: 0,
            open: None,
        };
        Ok((buffer, reader))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent files (every
        // write is restored or rotated away); carry on with the state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn when_full(&self) -> WhenFull {
        self.cfg.when_full
    }

    /// Whether `bytes` more would fit.
    pub fn has_room(&self, bytes: u64) -> bool {
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
            let at = s.scratch.len();
            s.scratch.extend_from_slice(&[0; HEADER]);
            encode_record(r, &mut s.scratch);
            frame(&mut s.scratch, at);
        }
        let bytes = s.scratch.len() as u64;
        if s.disk_bytes + bytes > self.cfg.max_bytes {
            return Appended::Full;
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

    /// Records `settled` (counted from the start of this run, in order) as
    /// done: moves the replay start past them, deletes segments that hold
    /// nothing else, and empties the active segment once every record in it
    /// is settled (else its space would stay taken for as long as it is
    /// written to: on a disk smaller than a segment, for good).
    pub fn ack(&self, settled: u64) {
        let mut guard = self.state();
        let s = &mut *guard;
        if settled <= s.acked {
            return;
        }
        s.acked = settled.min(s.next_ord);
        let held = s.disk_bytes;
        while s.segments.len() > 1 {
            let first = &s.segments[0];
            if first.first_ord + first.records > s.acked {
                break;
            }
            let first = s.segments.pop_front().expect("checked");
            if let Err(e) = std::fs::remove_file(&first.path) {
                tracing::warn!(segment = %first.path.display(), error = %e, "disk buffer: cannot remove a delivered segment");
            }
            s.disk_bytes -= first.bytes;
        }
        if s.acked == s.next_ord {
            let active = s.segments.back_mut().expect("active");
            if active.bytes > 0 {
                // Truncated in place (appends write at the segment's length,
                // so the next one starts at 0). The ack written below then
                // says "this segment from its start". A kill between the two
                // leaves the old ack, which skips at most the records of an
                // empty file: nothing.
                match s.active.set_len(0) {
                    Ok(()) => {
                        s.disk_bytes -= active.bytes;
                        active.bytes = 0;
                        active.records = 0;
                        active.skip = 0;
                        active.first_ord = s.next_ord;
                    }
                    Err(e) => {
                        tracing::warn!(segment = %active.path.display(), error = %e, "disk buffer: cannot empty the delivered segment; starting a new one");
                        s.broken = true;
                    }
                }
            }
        }
        if s.disk_bytes < held {
            // Space came back: what the disk refused before says nothing
            // about the next write.
            s.refusal = RefusalShare::default();
            self.stats
                .buffer_health
                .refusing
                .store(false, Ordering::Relaxed);
        }
        self.stats
            .buffer_bytes
            .store(s.disk_bytes, Ordering::Relaxed);
        let seg = s
            .segments
            .iter()
            .find(|g| s.acked < g.first_ord + g.records)
            .or(s.segments.back())
            .expect("active");
        let index = seg.skip + (s.acked - seg.first_ord);
        let mut buf = [0u8; 20];
        buf[..8].copy_from_slice(&seg.seq.to_le_bytes());
        buf[8..16].copy_from_slice(&index.to_le_bytes());
        let crc = crc32fast::hash(&buf[..16]);
        buf[16..].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = s.ack_file.write_all_at(&buf, 0) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "disk buffer: cannot record delivered records; they will be sent again after a restart");
        }
        if self.cfg.fsync == Fsync::Batch {
            let _ = s.ack_file.sync_data();
        }
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

async fn sync_every(buffer: std::sync::Weak<DiskBuffer>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(b) = buffer.upgrade() else { return };
        if tokio::task::spawn_blocking(move || b.sync()).await.is_err() {
            return;
        }
    }
}

/// The runner's side: reads back what went to disk only.
pub struct BufferReader {
    buffer: Arc<DiskBuffer>,
    /// Ordinal of the next record the sink gets.
    next_ord: u64,
    open: Option<OpenSegment>,
}

struct OpenSegment {
    /// Which segment: its number and the ordinal of its first record (an
    /// emptied active segment keeps its number and starts again).
    seq: u64,
    first_ord: u64,
    reader: BufReader<File>,
    /// Ordinal of the record the reader is at.
    ord: u64,
}

impl BufferReader {
    pub fn buffer(&self) -> &Arc<DiskBuffer> {
        &self.buffer
    }

    /// The memory queue delivered `n` records numbered from `first`.
    pub fn took_from_memory(&mut self, first: u64, n: u64) {
        self.next_ord = first + n;
    }

    /// Waits until records go to disk only (or is woken spuriously).
    pub async fn on_disk(&self) {
        self.buffer.on_disk.notified().await;
    }

    /// Up to `max` records the memory queue does not carry, oldest first.
    /// Records that cannot be decoded (damaged on disk with a valid CRC, or
    /// written by an incompatible version) are skipped, logged and counted
    /// as lost to a write error.
    pub fn read(&mut self, max: usize) -> Result<Backlog, BufferError> {
        let (seq, path, skip, first_ord, end) = {
            let mut s = self.buffer.state();
            if s.memory_ok || self.next_ord < s.memory_end {
                if self.next_ord < s.memory_end {
                    return Ok(Backlog::MemoryFirst);
                }
                // Nothing to read: let go of the file, so a segment that
                // is deleted gives its space back now.
                self.open = None;
                return Ok(Backlog::CaughtUp);
            }
            if self.next_ord >= s.next_ord {
                s.memory_ok = true;
                s.memory_end = s.next_ord;
                self.open = None;
                return Ok(Backlog::CaughtUp);
            }
            let seg = s
                .segments
                .iter()
                .find(|g| self.next_ord < g.first_ord + g.records)
                .expect("an ordinal below next_ord lies in a segment");
            (
                seg.seq,
                seg.path.clone(),
                seg.skip,
                seg.first_ord,
                seg.first_ord + seg.records,
            )
        };
        let open = match self.open.take() {
            Some(o) if o.seq == seq && o.first_ord == first_ord && o.ord == self.next_ord => o,
            _ => {
                let file = File::open(&path).map_err(io("open", &path))?;
                let mut o = OpenSegment {
                    seq,
                    first_ord,
                    reader: BufReader::with_capacity(256 * 1024, file),
                    ord: self.next_ord,
                };
                // Skip the acknowledged head and what was already read.
                let mut at = 0u64;
                let target = skip + (self.next_ord - first_ord);
                while at < target {
                    let mut head = [0u8; HEADER];
                    o.reader.read_exact(&mut head).map_err(io("read", &path))?;
                    let len = u32::from_le_bytes(head[..4].try_into().expect("4")) as i64;
                    o.reader.seek_relative(len).map_err(io("read", &path))?;
                    at += 1;
                }
                o
            }
        };
        let mut open = open;
        let want = (end - self.next_ord).min(max as u64);
        let mut out = Vec::with_capacity(want as usize);
        let mut payload = Vec::new();
        for _ in 0..want {
            let mut head = [0u8; HEADER];
            open.reader
                .read_exact(&mut head)
                .map_err(io("read", &path))?;
            let len = u32::from_le_bytes(head[..4].try_into().expect("4"));
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
            payload.resize(len as usize, 0);
            open.reader
                .read_exact(&mut payload)
                .map_err(io("read", &path))?;
            open.ord += 1;
            self.next_ord += 1;
            let decoded = if crc32fast::hash(&payload) == crc {
                decode_record(&payload)
            } else {
                Err("CRC mismatch".to_string())
            };
            match decoded {
                Ok(r) => out.push(r),
                Err(why) => {
                    tracing::error!(segment = %path.display(), reason = %why, "disk buffer: a record cannot be read back; counted as lost");
                    let st = &self.buffer.stats;
                    st.buffered.fetch_sub(1, Ordering::Relaxed);
                    st.dropped_write_error.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.open = Some(open);
        // Caught up: new records may travel through memory again at once.
        let mut s = self.buffer.state();
        if self.next_ord >= s.next_ord {
            s.memory_ok = true;
            s.memory_end = s.next_ord;
            self.open = None;
        }
        Ok(Backlog::Records(out))
    }
}

/// The fill in bytes at which `cfg`'s buffer counts as filling; 0 for never.
fn warn_bytes(cfg: &BufferConfig) -> u64 {
    if cfg.warn_fill > 0.0 {
        ((cfg.max_bytes as f64 * cfg.warn_fill.min(1.0)) as u64).max(1)
    } else {
        0
    }
}

fn folder_name(sink: &str) -> String {
    sink.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

fn create_segment(path: &Path) -> Result<File, BufferError> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(io("create", path))
}

/// The replay start written by [`DiskBuffer::ack`]; `None` when missing or
/// damaged (then everything on disk is replayed: duplicates, never loss).
fn read_ack(path: &Path) -> Option<(u64, u64)> {
    let bytes = std::fs::read(path).ok()?;
    let b: &[u8; 20] = bytes.get(..20)?.try_into().ok()?;
    let crc = u32::from_le_bytes(b[16..].try_into().ok()?);
    if crc32fast::hash(&b[..16]) != crc {
        tracing::warn!(path = %path.display(), "disk buffer: the ack file is damaged; replaying every buffered record");
        return None;
    }
    Some((
        u64::from_le_bytes(b[..8].try_into().ok()?),
        u64::from_le_bytes(b[8..16].try_into().ok()?),
    ))
}

/// Counts the whole records at the start of a segment: (records, bytes
/// they span, the file's length).
fn scan(path: &Path) -> Result<(u64, u64, u64), BufferError> {
    let file = File::open(path).map_err(io("open", path))?;
    let len = file.metadata().map_err(io("read", path))?.len();
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let mut records = 0;
    let at = walk(&mut r, len, |_| records += 1).map_err(io("read", path))?;
    Ok((records, at, len))
}

/// Calls `each` with the payload of every whole record at the start of a
/// segment of `len` bytes; returns the bytes they span. A short header, a
/// length beyond [`MAX_RECORD`] or past the end, or a CRC mismatch ends it.
fn walk(r: &mut impl Read, len: u64, mut each: impl FnMut(&[u8])) -> std::io::Result<u64> {
    let mut at = 0u64;
    let mut payload = Vec::new();
    loop {
        if len - at < HEADER as u64 {
            return Ok(at);
        }
        let mut head = [0u8; HEADER];
        r.read_exact(&mut head)?;
        let n = u32::from_le_bytes(head[..4].try_into().expect("4"));
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4"));
        if n > MAX_RECORD || len - at - (HEADER as u64) < u64::from(n) {
            return Ok(at);
        }
        payload.resize(n as usize, 0);
        r.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            return Ok(at);
        }
        each(&payload);
        at += HEADER as u64 + u64::from(n);
    }
}

/// What a replay makes of a segment's bytes: each whole record rebuilt (or
/// why it cannot be), and how many bytes they span (the rest is cut). For
/// the fuzz target and tests; [`DiskBuffer::open`] does the same on files.
pub fn replay_segment(bytes: &[u8]) -> (Vec<Result<Record, String>>, u64) {
    let mut out = Vec::new();
    let at = walk(&mut &bytes[..], bytes.len() as u64, |p| {
        out.push(decode_record(p))
    })
    .expect("reading a slice within its length cannot fail");
    (out, at)
}

/// Frames `records` as a segment holds them (tests, fuzz seeds).
pub fn segment_bytes(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let at = out.len();
        out.extend_from_slice(&[0; HEADER]);
        encode_record(r, &mut out);
        frame(&mut out, at);
    }
    out
}

/// Fills in the header at `at` for the payload after it.
fn frame(buf: &mut [u8], at: usize) {
    let len = (buf.len() - at - HEADER) as u32;
    let crc = crc32fast::hash(&buf[at + HEADER..]);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A record on disk: one byte for its origin, the enrichment names as JSON
/// (length-prefixed, 0 for none), then what the record is rebuilt from:
/// - `0`: a firehose record: the envelope's protobuf; classification is
///   redone on replay (it depends on the envelope alone);
/// - `1`: an audit-events record: Cloud Controller's event JSON.
pub fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let audit = match r.api.as_deref().map(|a| &a.source) {
        Some(ApiSource::AuditEvents(f)) => Some(&f.original),
        _ => None,
    };
    out.push(u8::from(audit.is_some()));
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Some(names) = &r.names {
        serde_json::to_writer(&mut *out, &**names).expect("names serialise");
    }
    let names_len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&names_len.to_le_bytes());
    match audit {
        Some(event) => serde_json::to_writer(&mut *out, event).expect("JSON values serialise"),
        None => out.extend_from_slice(r.wire_bytes()),
    }
}

/// Rebuilds a record written by [`encode_record`].
pub fn decode_record(b: &[u8]) -> Result<Record, String> {
    let (&form, rest) = b.split_first().ok_or("empty record")?;
    let names_len = rest
        .get(..4)
        .ok_or("short record")?
        .try_into()
        .map(u32::from_le_bytes)
        .map_err(|_| "short record")? as usize;
    let names = rest.get(4..4 + names_len).ok_or("short record")?;
    let body = &rest[4 + names_len..];
    let mut record = match form {
        0 => crate::classify::classify(
            crate::record::envelope::EnvelopeView::from_wire(bytes::Bytes::copy_from_slice(body))
                .map_err(|e| format!("envelope: {e}"))?,
        ),
        1 => {
            let event: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("audit event: {e}"))?;
            crate::record::audit_event_record(event).map_err(|e| format!("audit event: {e}"))?
        }
        other => return Err(format!("unknown record form {other}")),
    };
    if names_len > 0 {
        let names: crate::record::AppNames =
            serde_json::from_slice(names).map_err(|e| format!("names: {e}"))?;
        record.names = Some(Arc::new(names));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Intake, SinkQueue};
    use std::io::{Seek, SeekFrom, Write};

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

    #[test]
    fn audit_event_records_and_names_survive_the_disk() {
        let mut r = crate::record::audit_event_record(serde_json::json!({
            "guid": "44444444-5555-4666-8777-888888888888",
            "type": "audit.app.update", "created_at": "2020-01-01T00:00:00Z",
            "actor": {"type": "user", "guid": "u", "name": "admin"},
            "target": {"type": "app", "guid": "a", "name": "web"},
            "data": {"request": {"state": "STOPPED"}}, "space": null, "organization": null}))
        .unwrap();
        r.names = Some(Arc::new(crate::record::AppNames {
            app_guid: "a".into(),
            org_name: Some("org".into()),
            ..Default::default()
        }));
        let mut buf = Vec::new();
        encode_record(&r, &mut buf);
        assert_eq!(decode_record(&buf).unwrap(), r);
        assert!(decode_record(&buf[..3]).is_err());
        buf[0] = 9;
        assert_eq!(decode_record(&buf).unwrap_err(), "unknown record form 9");
    }

    #[test]
    fn a_torn_tail_is_cut_and_not_replayed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s.seg");
        let mut f = File::create(&path).unwrap();
        let rec = |p: &[u8]| {
            let mut v = (p.len() as u32).to_le_bytes().to_vec();
            v.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            v.extend_from_slice(p);
            v
        };
        f.write_all(&rec(b"one")).unwrap();
        f.write_all(&rec(b"two")).unwrap();
        let whole = 2 * (HEADER as u64 + 3);
        // Torn: a header that promises more than is there.
        f.write_all(&rec(b"three")[..10]).unwrap();
        assert_eq!(scan(&path).unwrap(), (2, whole, whole + 10));
        // Damaged: a whole record with a wrong CRC.
        let mut bad = rec(b"four");
        *bad.last_mut().unwrap() ^= 1;
        f.set_len(whole).unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(&bad).unwrap();
        assert_eq!(scan(&path).unwrap(), (2, whole, whole + 12));
    }
}

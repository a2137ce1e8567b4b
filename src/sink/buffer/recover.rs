//! Opening a sink's buffer: the segments an earlier run left are checked
//! (a torn tail cut), those acknowledged removed, and what was not
//! acknowledged counted and queued for replay before new records.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::ack::read_ack;
use super::read::BufferReader;
use super::segment::{SEGMENT_EXT, create_segment, scan, segment_path};
use super::{
    BufferConfig, BufferError, DiskBuffer, Fsync, RefusalShare, Segment, State, io, sync_every,
};
use crate::sink::SinkStats;

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
        let seqs = segment_numbers(&dir)?;
        let ack_path = dir.join("ack");
        let start = read_ack(&ack_path);
        let Left {
            mut segments,
            records: backlog,
            bytes: disk_bytes,
        } = left_segments(&dir, &seqs, start)?;
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
            first_ord: backlog,
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
        count_backlog(&stats, cfg, backlog, disk_bytes);
        if backlog > 0 {
            tracing::info!(sink, records = backlog, bytes = disk_bytes, dir = %dir.display(), "disk buffer: replaying records not delivered before the last stop");
        }
        let buffer = Arc::new(Self {
            dir,
            cfg: cfg.clone(),
            state: Mutex::new(State {
                segments,
                active,
                next_ord: backlog,
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
}

/// The numbers of the segment files in `dir`, in order.
fn segment_numbers(dir: &Path) -> Result<Vec<u64>, BufferError> {
    let mut seqs: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name.strip_suffix(&format!(".{SEGMENT_EXT}"))?;
            stem.parse().ok()
        })
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// What an earlier run left to replay: its segments, oldest first, their
/// records not acknowledged and the bytes they hold.
struct Left {
    segments: VecDeque<Segment>,
    records: u64,
    bytes: u64,
}

/// Checks the segments `seqs` in `dir` against the replay start `start`
/// (from the ack file): removes those with nothing to replay, cuts a torn
/// tail, and numbers the records left from 0.
fn left_segments(dir: &Path, seqs: &[u64], start: Option<(u64, u64)>) -> Result<Left, BufferError> {
    let mut left = Left {
        segments: VecDeque::new(),
        records: 0,
        bytes: 0,
    };
    for &seq in seqs {
        let path = segment_path(dir, seq);
        if start.is_some_and(|(s, _)| seq < s) {
            // Acknowledged in full before the last stop.
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            continue;
        }
        let (records, valid_bytes, len) = scan(&path)?;
        if valid_bytes < len {
            cut_torn_tail(&path, records, valid_bytes, len)?;
        }
        let skip = match start {
            Some((s, idx)) if s == seq => idx.min(records),
            _ => 0,
        };
        if skip == records {
            // Nothing in it to replay (acknowledged in full, or empty):
            // its space must not stay taken, or a disk that was full
            // when the last run stopped stays full.
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
            continue;
        }
        left.segments.push_back(Segment {
            seq,
            path,
            bytes: valid_bytes,
            first_ord: left.records,
            records: records - skip,
            skip,
        });
        left.records += records - skip;
        left.bytes += valid_bytes;
    }
    Ok(left)
}

/// Truncates the segment at `path` (of `len` bytes) after its whole
/// records (`records` of them, `valid_bytes` long).
fn cut_torn_tail(path: &Path, records: u64, valid_bytes: u64, len: u64) -> Result<(), BufferError> {
    tracing::warn!(
        segment = %path.display(),
        kept_records = records,
        cut_bytes = len - valid_bytes,
        "disk buffer: a torn or damaged record ends this segment; truncated there"
    );
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    f.set_len(valid_bytes).map_err(io("truncate", path))?;
    f.sync_all().map_err(io("sync", path))
}

/// Counts the records left from an earlier run into `stats` (received and
/// buffered), with the buffer's size and limits.
fn count_backlog(stats: &SinkStats, cfg: &BufferConfig, backlog: u64, disk_bytes: u64) {
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

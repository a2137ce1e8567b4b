//! Acknowledgement: what the sink settled moves the replay start, frees
//! segments, and is recorded in the `ack` file (segment number `u64 LE`,
//! record index in it `u64 LE`, CRC-32 of those 16 bytes), which the next
//! start reads back.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use super::{DiskBuffer, Fsync, RefusalShare};

impl DiskBuffer {
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
        if let Err(e) = s.ack_file.write_all_at(&ack_bytes(seg.seq, index), 0) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "disk buffer: cannot record delivered records; they will be sent again after a restart");
        }
        if self.cfg.fsync == Fsync::Batch {
            let _ = s.ack_file.sync_data();
        }
    }
}

impl DiskBuffer {
    /// Whether the oldest `in_flight` unacknowledged records (those a sink
    /// holds until it completes a file) take a quarter of this buffer or
    /// more, so that the runner should complete the file now rather than at
    /// its roll interval: otherwise a sink that acknowledges only at a roll
    /// (the file sink, 300 s by default) fills its share before anything
    /// can be acknowledged, at rates it sustains without a buffer.
    ///
    /// Their bytes are estimated as their share of the records not yet
    /// acknowledged times the bytes the buffer holds (which also counts
    /// acknowledged records of a segment not yet deleted: a segment is an
    /// eighth of the share, so this errs towards rolling early).
    pub(crate) fn in_flight_holds_quarter(&self, in_flight: u64) -> bool {
        if in_flight == 0 {
            return false;
        }
        let s = self.state();
        let unacked = s.next_ord.saturating_sub(s.acked);
        if unacked == 0 {
            return false;
        }
        let held =
            u128::from(s.disk_bytes) * u128::from(in_flight.min(unacked)) / u128::from(unacked);
        held * 4 >= u128::from(self.cfg.max_bytes)
    }
}

/// The replay start written by [`DiskBuffer::ack`]; `None` when missing or
/// damaged (then everything on disk is replayed: duplicates, never loss).
pub(super) fn read_ack(path: &Path) -> Option<(u64, u64)> {
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

/// The `ack` file's content: replay starts at record `index` of segment `seq`.
pub(super) fn ack_bytes(seq: u64, index: u64) -> [u8; 20] {
    let mut buf = [0u8; 20];
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&index.to_le_bytes());
    let crc = crc32fast::hash(&buf[..16]);
    buf[16..].copy_from_slice(&crc.to_le_bytes());
    buf
}

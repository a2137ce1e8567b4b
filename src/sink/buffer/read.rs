//! The runner's side of the buffer: reads back, oldest first, the records
//! that went to disk only.

use std::fs::File;
use std::io::{BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::segment::{HEADER, decode_record};
use super::{Backlog, BufferError, DiskBuffer, io};

/// The runner's side: reads back what went to disk only.
pub struct BufferReader {
    pub(super) buffer: Arc<DiskBuffer>,
    /// Ordinal of the next record the sink gets.
    pub(super) next_ord: u64,
    pub(super) open: Option<OpenSegment>,
}

pub(super) struct OpenSegment {
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
    pub(crate) fn took_from_memory(&mut self, first: u64, n: u64) {
        self.next_ord = first + n;
    }

    /// Waits until records go to disk only (or is woken spuriously).
    pub(crate) async fn on_disk(&self) {
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

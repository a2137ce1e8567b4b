//! The on-disk format of a segment: each record framed as `len: u32 LE`,
//! `crc32(payload): u32 LE`, `payload` ([`encode_record`]); reading the
//! whole records at a segment's start, where a torn or damaged one ends it.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BufferError, io};
use crate::record::{ApiSource, Record};

/// A length above this is corruption, not a record (the RLP's own limit on a
/// batch is 16 MiB).
const MAX_RECORD: u32 = 64 * 1024 * 1024;
pub(super) const HEADER: usize = 8;
pub(super) const SEGMENT_EXT: &str = "seg";

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.{SEGMENT_EXT}"))
}

pub(super) fn create_segment(path: &Path) -> Result<File, BufferError> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .map_err(io("create", path))
}

/// Counts the whole records at the start of a segment: (records, bytes
/// they span, the file's length).
pub(super) fn scan(path: &Path) -> Result<(u64, u64, u64), BufferError> {
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
        append_framed(r, &mut out);
    }
    out
}

/// Appends `r` to `out` as a segment holds it: header, then payload.
pub(super) fn append_framed(r: &Record, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; HEADER]);
    encode_record(r, out);
    frame(out, at);
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
pub(crate) fn encode_record(r: &Record, out: &mut Vec<u8>) {
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
pub(crate) fn decode_record(b: &[u8]) -> Result<Record, String> {
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
    use std::io::{Seek, SeekFrom, Write};

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

//! The on-disk format of a segment: each record framed as `len: u32 LE`,
//! `crc32(payload): u32 LE`, `payload` ([`encode_record`]); reading the
//! whole records at a segment's start, where a torn or damaged one ends it.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{BufferError, io};
use crate::record::{ApiSource, Kind, Number, Position, Record};

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

/// The form byte's flag saying a number follows it.
const NUMBERED: u8 = 0x80;
/// The form byte's flag saying the correlated parts follow the number
/// (issue 22: `record::security::buffer_parts`, as length-prefixed JSON).
const WITH_PARTS: u8 = 0x40;

/// A record on disk: one byte for its form, its number when it has one,
/// the enrichment names as JSON (length-prefixed, 0 for none), then what
/// the record is rebuilt from. The form's low bits:
/// - `0`: a firehose record: the envelope's protobuf; classification is
///   redone on replay (it depends on the envelope alone);
/// - `1`: an audit-events record: Cloud Controller's event JSON;
/// - `2`: a declaration: its kind (one byte) and time (`i64` LE nanoseconds);
/// - `3`: a security-event record: nothing (its line is in the parts).
///
/// With [`WITH_PARTS`] set, after the number: the parts a record holds
/// besides its base (`u32` LE length and JSON; `security::buffer_parts`).
///
/// With [`NUMBERED`] set, the number follows the form byte: the boot's
/// length (`u16` LE) and text, then `0` (boot only), or `1` and the `seq`,
/// or `2` and the `last_seq` (`u64` LE). Records written before numbers
/// existed (forms 0 and 1 without the flag) replay without one.
pub(crate) fn encode_record(r: &Record, out: &mut Vec<u8>) {
    let audit = match r.api.as_deref().map(|a| &a.source) {
        Some(ApiSource::AuditEvents(f)) => Some(&f.original),
        _ => None,
    };
    let declared = crate::record::is_declaration(r);
    let security_only = matches!(
        r.api.as_deref().map(|a| &a.source),
        Some(ApiSource::SecurityLog)
    );
    let parts = r
        .api
        .as_deref()
        .and_then(crate::record::security::buffer_parts);
    let form = match (declared, audit) {
        _ if security_only => 3,
        (true, _) => 2,
        (false, Some(_)) => 1,
        (false, None) => 0,
    } | if parts.is_some() { WITH_PARTS } else { 0 };
    match &r.number {
        None => out.push(form),
        Some(n) => {
            out.push(form | NUMBERED);
            // A boot is a few dozen bytes (see `record::boot_id`).
            let boot = &n.boot.as_bytes()[..n.boot.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&(boot.len() as u16).to_le_bytes());
            out.extend_from_slice(boot);
            match n.position {
                Position::BootOnly => out.push(0),
                Position::Seq(seq) => {
                    out.push(1);
                    out.extend_from_slice(&seq.to_le_bytes());
                }
                Position::LastSeq(last) => {
                    out.push(2);
                    out.extend_from_slice(&last.to_le_bytes());
                }
            }
        }
    }
    if let Some(parts) = &parts {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        serde_json::to_writer(&mut *out, parts).expect("JSON values serialise");
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Some(names) = &r.names {
        serde_json::to_writer(&mut *out, &**names).expect("names serialise");
    }
    let names_len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&names_len.to_le_bytes());
    match (declared, audit) {
        _ if security_only => {}
        (true, _) => {
            out.push(r.kind.index() as u8);
            out.extend_from_slice(&r.envelope.timestamp().to_le_bytes());
        }
        (false, Some(event)) => {
            serde_json::to_writer(&mut *out, event).expect("JSON values serialise")
        }
        (false, None) => out.extend_from_slice(r.wire_bytes()),
    }
}

/// `n` bytes from the front of `b`, advancing it.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err("short record".into());
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Ok(head)
}

fn take_u64(b: &mut &[u8]) -> Result<u64, String> {
    Ok(u64::from_le_bytes(take(b, 8)?.try_into().expect("8 bytes")))
}

/// The number after a [`NUMBERED`] form byte.
fn decode_number(b: &mut &[u8]) -> Result<Number, String> {
    let len = u16::from_le_bytes(take(b, 2)?.try_into().expect("2 bytes"));
    let boot = std::str::from_utf8(take(b, usize::from(len))?)
        .map_err(|_| "boot is not UTF-8")?
        .into();
    let position = match take(b, 1)?[0] {
        0 => Position::BootOnly,
        1 => Position::Seq(take_u64(b)?),
        2 => Position::LastSeq(take_u64(b)?),
        other => return Err(format!("unknown number position {other}")),
    };
    Ok(Number { boot, position })
}

/// Rebuilds a record written by [`encode_record`] (or by the format before
/// numbers, without one).
pub(crate) fn decode_record(b: &[u8]) -> Result<Record, String> {
    let (&form, mut rest) = b.split_first().ok_or("empty record")?;
    let number = if form & NUMBERED != 0 {
        Some(decode_number(&mut rest)?)
    } else {
        None
    };
    let parts = if form & WITH_PARTS != 0 {
        let len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes")) as usize;
        let parts: serde_json::Value =
            serde_json::from_slice(take(&mut rest, len)?).map_err(|e| format!("parts: {e}"))?;
        Some(parts)
    } else {
        None
    };
    let names_len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes")) as usize;
    let names = take(&mut rest, names_len)?;
    let body = rest;
    let mut record = match form & !(NUMBERED | WITH_PARTS) {
        3 => crate::record::security::restore_parts(
            None,
            parts.as_ref().ok_or("security record without its parts")?,
        )?,
        0 => crate::classify::classify(
            crate::record::envelope::EnvelopeView::from_wire(bytes::Bytes::copy_from_slice(body))
                .map_err(|e| format!("envelope: {e}"))?,
        ),
        1 => {
            let event: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("audit event: {e}"))?;
            crate::record::audit_event_record(event).map_err(|e| format!("audit event: {e}"))?
        }
        2 => {
            let Some(Number {
                boot,
                position: Position::LastSeq(last),
            }) = &number
            else {
                return Err("declaration without its last_seq".into());
            };
            let mut body = body;
            let kind = *Kind::ALL
                .get(usize::from(take(&mut body, 1)?[0]))
                .ok_or("declaration of an unknown kind")?;
            let time = take_u64(&mut body)? as i64;
            crate::record::declaration(kind, boot, *last, time)
        }
        other => return Err(format!("unknown record form {other}")),
    };
    if let Some(parts) = parts
        .as_ref()
        .filter(|_| form & !(NUMBERED | WITH_PARTS) != 3)
    {
        record = crate::record::security::restore_parts(Some(record), parts)?;
    }
    record.number = number;
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

    /// Security-event records, and records with a security event merged
    /// in, are rebuilt from their line (issue 22).
    #[test]
    fn security_records_survive_the_disk() {
        use crate::record::security::{read_line, security_record};
        let line = "Audit: UserAuthenticationFailure ('m'): principal=u, origin=[remoteAddress=1.2.3.4], identityZoneId=[uaa]";
        let ev = read_line(line, "uaa/0", Some(7)).unwrap().unwrap();
        let mut alone = security_record(ev.clone());
        alone.number = Number::seq(&Arc::from("b"), 3);
        let mut merged = crate::record::audit_event_record(serde_json::json!({
            "guid": "g", "type": "audit.app.update", "created_at": "2020-01-01T00:00:00Z"}))
        .unwrap();
        let api = merged.api.as_deref_mut().unwrap();
        api.security = Some(Box::new(ev));
        api.merged_firehose = Some("f".into());
        for r in [alone, merged] {
            let mut buf = Vec::new();
            encode_record(&r, &mut buf);
            assert_eq!(decode_record(&buf).unwrap(), r);
        }
    }

    #[test]
    fn numbers_survive_the_disk_and_old_records_replay_without_one() {
        use crate::proto::Envelope;
        use crate::proto::envelope::Message;
        let boot: Arc<str> = "2-20261202T193322Z-9f3a2c1b".into();
        let mut log = crate::classify::classify(Envelope {
            timestamp: 5,
            source_id: "app".into(),
            message: Some(Message::Log(crate::proto::Log {
                payload: b"hello".to_vec().into(),
                r#type: 0,
            })),
            ..Envelope::default()
        });
        let round_trip = |r: &Record| {
            let mut buf = Vec::new();
            encode_record(r, &mut buf);
            decode_record(&buf).unwrap()
        };
        // Before numbers: form 0, names length 0, the envelope.
        let mut old = vec![0, 0, 0, 0, 0];
        old.extend_from_slice(log.wire_bytes());
        assert_eq!(decode_record(&old).unwrap(), log);
        assert_eq!(round_trip(&log), log);

        log.number = Number::seq(&boot, u64::MAX - 1);
        let back = round_trip(&log);
        assert_eq!(back, log);
        assert_eq!(
            back.number,
            Some(Number {
                boot: Arc::clone(&boot),
                position: Position::Seq(u64::MAX - 1)
            })
        );
        log.number = Some(Number {
            boot: Arc::clone(&boot),
            position: Position::BootOnly,
        });
        assert_eq!(round_trip(&log), log);

        let mut audit = crate::record::audit_event_record(serde_json::json!({
            "guid": "g", "type": "audit.app.start", "created_at": "2020-01-01T00:00:00Z"}))
        .unwrap();
        audit.number = Number::seq(&boot, 7);
        assert_eq!(round_trip(&audit), audit);

        let declared =
            crate::record::declaration(Kind::Metric, &boot, 41, 1_700_000_000_000_000_001);
        let back = round_trip(&declared);
        assert_eq!(back, declared);
        assert_eq!(back.kind, Kind::Metric);
        let ctx = crate::record::EncodeContext::new("f");
        assert_eq!(back.to_json(&ctx), declared.to_json(&ctx));

        // Cut anywhere, a numbered record is an error, never a wrong record.
        let mut buf = Vec::new();
        encode_record(&declared, &mut buf);
        for cut in 1..buf.len() {
            assert!(decode_record(&buf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = Vec::new();
        encode_record(&log, &mut bad);
        let position = 1 + 2 + boot.len();
        bad[position] = 5;
        assert_eq!(
            decode_record(&bad).unwrap_err(),
            "unknown number position 5"
        );
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

//! RFC 5424 messages for the `syslog` sink, and their framing on a stream.
//!
//! One message per record:
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG`
//! - PRI: the configured facility and a severity per kind (API invocations
//!   notice, stderr app logs warning, other logs and metrics info, events notice);
//! - TIMESTAMP: the envelope's time, UTC, microseconds;
//! - HOSTNAME `org.space.app` for app traffic, else `deployment.job`, else the origin;
//!   APP-NAME the source id; PROCID `[SOURCE_TYPE/INSTANCE]`; MSGID the record kind;
//! - MSG: the record's JSON (default) or, for logs, the log line itself;
//! - structured data: `-` when the MSG is the record's JSON (which holds
//!   every tag already); with a log line as the MSG, every envelope tag
//!   (and text deprecated tag), escaped as the RFC requires, the only place
//!   the tags then appear, and the record's number as
//!   `[seq@PEN boot="..." seq="N"]` (which the JSON MSG otherwise holds).
//!
//! Header fields are cut to the RFC's lengths and printable ASCII. A message
//! longer than `max_message_bytes` has its MSG cut with a `[truncated]`
//! marker (never split into two messages). Framing is octet counting
//! (RFC 6587, required with TLS) or newline; with newline framing a line
//! break inside a message is replaced by a space.

use crate::record::{EncodeContext, Kind, MessageRef, Position, Record, ValueRef, write_int};

/// RFC 5612's enterprise number for documentation; operators set their own.
pub(crate) const DEFAULT_ENTERPRISE_NUMBER: u32 = 32473;

/// rsyslog's default `maxMessageSize`, and RFC 5425's "SHOULD accept 8192".
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: usize = 8192;

const TRUNCATED: &[u8] = b"[truncated]";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `MSG-LEN SP SYSLOG-MSG` (RFC 6587 §3.4.1, RFC 5425).
    OctetCounting,
    /// The message and a line feed.
    Newline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgFormat {
    /// The record's JSON.
    Json,
    /// Log lines as they are; other kinds as JSON.
    Message,
    /// Every record as a CEF line (`cef.rs`).
    Cef,
}

/// What a message looks like.
#[derive(Clone, Debug)]
pub struct SyslogFormat {
    /// 0–23 (16 is local0).
    pub facility: u8,
    pub severities: Severities,
    pub enterprise_number: u32,
    pub msg: MsgFormat,
    pub max_message_bytes: usize,
}

impl Default for SyslogFormat {
    fn default() -> Self {
        Self {
            facility: 16,
            severities: Severities::default(),
            enterprise_number: DEFAULT_ENTERPRISE_NUMBER,
            msg: MsgFormat::Json,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

/// Syslog severity names, by value (RFC 5424 §6.2.1).
pub(crate) const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The severity (0–7) each kind of record is sent with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Severities {
    pub api: u8,
    pub app_log: u8,
    /// App log lines written to stderr.
    pub(crate) app_log_stderr: u8,
    pub metric: u8,
    pub event: u8,
}

impl Default for Severities {
    fn default() -> Self {
        Self {
            api: 5,            // notice
            app_log: 6,        // info
            app_log_stderr: 4, // warning
            metric: 6,         // info
            event: 5,          // notice
        }
    }
}

impl Severities {
    /// The severity of a record.
    pub fn of(&self, record: &Record) -> u8 {
        let s = match (&record.kind, record.envelope.message()) {
            (Kind::Event, _) if crate::record::is_alert(record) => 1, // alert
            (Kind::Api, _) => self.api,
            (Kind::AppLog, Some(MessageRef::Log(l))) if l.is_err() => self.app_log_stderr,
            (Kind::AppLog, _) => self.app_log,
            (Kind::Metric, _) => self.metric,
            (Kind::Event, _) => self.event,
        };
        s.min(7)
    }
}

/// Appends one RFC 5424 message (without framing) for `record` to `out`.
/// Returns whether the MSG had to be truncated to fit `max_message_bytes`.
pub fn encode(
    record: &Record,
    ctx: &EncodeContext,
    format: &SyslogFormat,
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    let env = &record.envelope;
    let tag = |k: &str| record.tag(k).filter(|v| !v.is_empty());
    let pri = u16::from(format.facility.min(23)) * 8 + u16::from(format.severities.of(record));
    out.push(b'<');
    write_int(out, pri);
    out.extend_from_slice(b">1 ");
    write_timestamp(out, env.timestamp());
    out.push(b' ');

    let (host, n) = record.host_parts();
    header_field(out, &host[..n], ".", 255);
    out.push(b' ');
    header_field(out, &[env.source_id()], "", 48);
    out.push(b' ');
    let instance_id = env.instance_id();
    match tag("source_type") {
        Some(st) if instance_id.is_empty() => header_field(out, &["[", st, "]"], "", 128),
        Some(st) => header_field(out, &["[", st, "/", instance_id, "]"], "", 128),
        None => header_field(out, &[instance_id], "", 128),
    }
    out.push(b' ');
    header_field(out, &[record.kind.as_str()], "", 32);
    out.push(b' ');
    let log_line = match (&format.msg, env.message()) {
        (MsgFormat::Message, Some(MessageRef::Log(l))) => Some(l.payload),
        _ => None,
    };
    match log_line {
        Some(_) => structured_data(out, record, format.enterprise_number),
        None => out.push(b'-'),
    }

    let msg_start = out.len() + 1;
    out.push(b' ');
    match (log_line, format.msg) {
        (Some(line), _) => out.extend_from_slice(line),
        (None, MsgFormat::Cef) => super::cef::write(record, ctx, out),
        (None, _) => record.write_json(ctx, out),
    }
    let limit = format
        .max_message_bytes
        .max(msg_start - start + TRUNCATED.len());
    if out.len() - start <= limit {
        return false;
    }
    // Cut the MSG at a character boundary (the JSON and most log lines are UTF-8).
    let mut cut = start + limit - TRUNCATED.len();
    while cut > msg_start && (out[cut] & 0xC0) == 0x80 {
        cut -= 1;
    }
    out.truncate(cut);
    out.extend_from_slice(TRUNCATED);
    true
}

/// A header field: `parts` joined by `sep`, printable US-ASCII only (others
/// become `_`), at most `max` bytes, `-` when empty. Written in place: the
/// header costs no allocation per message.
fn header_field(out: &mut Vec<u8>, parts: &[&str], sep: &str, max: usize) {
    let start = out.len();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(sep.as_bytes());
        }
        out.extend_from_slice(p.as_bytes());
    }
    out.truncate(start + max.min(out.len() - start));
    if out.len() == start {
        out.push(b'-');
        return;
    }
    for b in &mut out[start..] {
        if !(33..=126).contains(b) {
            *b = b'_';
        }
    }
}

/// RFC 3339 UTC with microseconds (`2023-11-14T22:13:20.123456Z`), from
/// UNIX nanoseconds.
fn write_timestamp(out: &mut Vec<u8>, nanos: i64) {
    crate::record::write_rfc3339(out, nanos, 6);
}

/// `[tags@PEN name="value" ...]` with every tag, then the record's number
/// `[seq@PEN boot="..." seq="N"]`; `-` when it has neither.
fn structured_data(out: &mut Vec<u8>, record: &Record, pen: u32) {
    let start = out.len();
    tags_element(out, record, pen);
    if let Some(number) = &record.number {
        out.extend_from_slice(b"[seq@");
        write_int(out, pen);
        out.extend_from_slice(b" boot=\"");
        // A boot is `<index>-<time>-<hex>`: nothing in it needs escaping.
        out.extend_from_slice(number.boot.as_bytes());
        out.push(b'"');
        match number.position {
            Position::Seq(n) => {
                out.extend_from_slice(b" seq=\"");
                write_int(out, n);
                out.push(b'"');
            }
            Position::LastSeq(n) => {
                out.extend_from_slice(b" last_seq=\"");
                write_int(out, n);
                out.push(b'"');
            }
            Position::BootOnly => {}
        }
        out.push(b']');
    }
    if out.len() == start {
        out.push(b'-');
    }
}

/// `[tags@PEN name="value" ...]` with every tag, nothing without tags.
fn tags_element(out: &mut Vec<u8>, record: &Record, pen: u32) {
    let env = &record.envelope;
    let deprecated = env.deprecated_tags().filter_map(|(k, v)| match v {
        Some(ValueRef::Text(t)) if !env.has_tag(k) => Some((k, t)),
        _ => None,
    });
    let mut params = env.tags().chain(deprecated).peekable();
    if params.peek().is_none() {
        return;
    }
    out.extend_from_slice(b"[tags@");
    write_int(out, pen);
    for (name, value) in params {
        out.push(b' ');
        // SD-NAME: 1–32 printable characters other than '=', ' ', ']' and '"'.
        if name.is_empty() {
            out.push(b'_');
        }
        out.extend(name.bytes().take(32).map(|b| match b {
            b'=' | b' ' | b']' | b'"' => b'_',
            33..=126 => b,
            _ => b'_',
        }));
        out.extend_from_slice(b"=\"");
        let special = |b: &u8| matches!(b, b'"' | b'\\' | b']');
        if value.as_bytes().iter().any(special) {
            for b in value.bytes() {
                if special(&b) {
                    out.push(b'\\');
                }
                out.push(b);
            }
        } else {
            out.extend_from_slice(value.as_bytes());
        }
        out.push(b'"');
    }
    out.push(b']');
}

/// Appends `record` framed for the transport.
pub(super) fn encode_framed(
    record: &Record,
    ctx: &EncodeContext,
    format: &SyslogFormat,
    framing: Framing,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> bool {
    scratch.clear();
    let truncated = encode(record, ctx, format, scratch);
    match framing {
        Framing::OctetCounting => {
            write_int(out, scratch.len());
            out.push(b' ');
            out.extend_from_slice(scratch);
        }
        Framing::Newline => {
            out.extend(
                scratch
                    .iter()
                    .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
            );
            out.push(b'\n');
        }
    }
    truncated
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_chronos_rfc3339_with_microseconds() {
        for ns in [
            0,
            1,
            999,
            1_700_000_000_123_456_789,
            -1,
            -86_400_000_000_001,
            i64::MAX,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            write_timestamp(&mut out, ns);
            let expected = chrono::DateTime::from_timestamp_nanos(ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(String::from_utf8(out).unwrap(), expected, "{ns}");
        }
    }
    use crate::classify::classify;
    use crate::proto::log;

    fn record(tags: &[(&str, &str)], payload: &str, ty: log::Type) -> Record {
        classify(crate::proto::log_envelope(
            1_700_000_000_123_456_789,
            "cdabc600-0b73-48e1-b7d2-26af2c63f933",
            payload,
            ty,
            tags,
        ))
    }

    fn ctx() -> EncodeContext {
        EncodeContext::new("prod")
    }

    fn message(format: &SyslogFormat, r: &Record) -> (String, bool) {
        let mut out = Vec::new();
        let truncated = encode(r, &ctx(), format, &mut out);
        (String::from_utf8(out).unwrap(), truncated)
    }

    #[test]
    fn an_app_log_line_as_an_exact_rfc5424_message() {
        let r = record(
            &[
                ("app_name", "spring-music"),
                ("organization_name", "acme"),
                ("space_name", "dev"),
                ("source_type", "APP/PROC/WEB"),
                ("weird", "a]b\"c\\d"),
            ],
            "line one\nline two",
            log::Type::Err,
        );
        let format = SyslogFormat {
            msg: MsgFormat::Message,
            ..SyslogFormat::default()
        };
        // local0 (16) * 8 + warning (4) = 132
        assert_eq!(
            message(&format, &r),
            (
                concat!(
                    "<132>1 2023-11-14T22:13:20.123456Z acme.dev.spring-music cdabc600-0b73-48e1-b7d2-26af2c63f933 ",
                    "[APP/PROC/WEB/0] app_log [tags@32473 app_name=\"spring-music\" organization_name=\"acme\" ",
                    "source_type=\"APP/PROC/WEB\" space_name=\"dev\" weird=\"a\\]b\\\"c\\\\d\"] line one\nline two"
                )
                .to_string(),
                false
            )
        );
    }

    #[test]
    fn a_log_line_as_the_msg_keeps_its_number_in_structured_data() {
        let format = SyslogFormat {
            msg: MsgFormat::Message,
            ..SyslogFormat::default()
        };
        let mut r = record(&[("source_type", "APP/PROC/WEB")], "hi", log::Type::Out);
        let boot: std::sync::Arc<str> = "3-20261202T193322Z-9f3a2c1b".into();
        r.number = crate::record::Number::seq(&boot, 41);
        let (msg, _) = message(&format, &r);
        assert!(
            msg.ends_with(concat!(
                " app_log [tags@32473 source_type=\"APP/PROC/WEB\"]",
                "[seq@32473 boot=\"3-20261202T193322Z-9f3a2c1b\" seq=\"41\"] hi"
            )),
            "{msg}"
        );
        // Without tags, the number alone; with the record JSON as the MSG, no SD.
        let mut bare = record(&[], "hi", log::Type::Out);
        bare.number = crate::record::Number::seq(&boot, 0);
        let (msg, _) = message(&format, &bare);
        assert!(
            msg.ends_with(" app_log [seq@32473 boot=\"3-20261202T193322Z-9f3a2c1b\" seq=\"0\"] hi"),
            "{msg}"
        );
        let (json, _) = message(&SyslogFormat::default(), &bare);
        assert!(
            json.contains(" app_log - {\"kind\":\"app_log\",\"boot\":\"3-"),
            "{json}"
        );
    }

    #[test]
    fn an_api_invocation_is_a_notice_with_the_record_json() {
        let r = record(
            &[("source_type", "API")],
            "Created app with guid x",
            log::Type::Out,
        );
        let (msg, _) = message(&SyslogFormat::default(), &r);
        // No structured data: the JSON MSG holds the tags (once).
        let expected_head = "<133>1 2023-11-14T22:13:20.123456Z - cdabc600-0b73-48e1-b7d2-26af2c63f933 [API/0] api - ";
        assert!(msg.starts_with(expected_head), "{msg}");
        let json: serde_json::Value = serde_json::from_str(&msg[expected_head.len()..]).unwrap();
        assert_eq!(json["eventName"], "audit.app.create");
        assert_eq!(json["source_type"], "API");
        assert_eq!(json.get("envelope"), None);
    }

    #[test]
    fn long_messages_are_cut_with_a_marker_at_a_character_boundary() {
        let long = "é".repeat(5000); // 10,000 bytes
        let r = record(&[], &long, log::Type::Out);
        let format = SyslogFormat {
            msg: MsgFormat::Message,
            max_message_bytes: 200,
            ..SyslogFormat::default()
        };
        let (msg, truncated) = message(&format, &r);
        assert!(truncated);
        assert!(msg.len() <= 200, "{}", msg.len());
        assert!(
            msg.len() >= 199,
            "cut at most one byte short: {}",
            msg.len()
        );
        assert!(msg.ends_with("é[truncated]"), "{msg}");
        assert!(msg.starts_with("<134>1 2023-11-14T22:13:20.123456Z - cdabc600-0b73-48e1-b7d2-26af2c63f933 0 app_log - é"));
    }

    #[test]
    fn severities_are_configurable_per_kind() {
        let err = record(&[], "boom", log::Type::Err);
        let out = record(&[], "fine", log::Type::Out);
        let format = SyslogFormat {
            facility: 1,
            severities: Severities {
                app_log_stderr: 3,
                app_log: 7,
                ..Severities::default()
            },
            ..SyslogFormat::default()
        };
        // user (1) * 8 + err (3) = 11; user * 8 + debug (7) = 15
        assert!(message(&format, &err).0.starts_with("<11>1 "));
        assert!(message(&format, &out).0.starts_with("<15>1 "));
    }

    #[test]
    fn header_fields_are_printable_ascii_within_their_limits() {
        let r = record(
            &[
                ("deployment", "cf"),
                ("job", "diego cell"),
                ("source_type", "X".repeat(200).as_str()),
            ],
            "x",
            log::Type::Out,
        );
        let (msg, _) = message(&SyslogFormat::default(), &r);
        let fields: Vec<&str> = msg.splitn(8, ' ').collect();
        assert_eq!(fields[2], "cf.diego_cell");
        assert_eq!(fields[4].len(), 128, "PROCID cut to 128");
        assert_eq!(fields[5], "app_log");
    }

    #[test]
    fn newline_framing_keeps_one_message_per_line() {
        let r = record(&[], "a\nb\r\nc", log::Type::Out);
        let format = SyslogFormat {
            msg: MsgFormat::Message,
            ..SyslogFormat::default()
        };
        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        encode_framed(
            &r,
            &ctx(),
            &format,
            Framing::Newline,
            &mut scratch,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(" a b  c\n"), "{text:?}");
        assert_eq!(text.matches('\n').count(), 1);

        let (mut scratch, mut out) = (Vec::new(), Vec::new());
        encode_framed(
            &r,
            &ctx(),
            &format,
            Framing::OctetCounting,
            &mut scratch,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        let (len, rest) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
        assert!(rest.ends_with(" a\nb\r\nc"));
    }
}

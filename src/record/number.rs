//! Record numbers: `boot` (this process start) and `seq` (per kind and
//! boot, from 0, with no hole in what the router accepted), and the
//! declaration record that states the last `seq` issued per kind, so a lost
//! tail shows downstream (DESIGN.md §4, issue 19).
//!
//! The router assigns the numbers ([`crate::route`]); this module holds what
//! a record carries, the `boot` format and the JSON pieces.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ALERT_SOURCE_ID, EncodeContext, EnvelopeView, Kind, Record, json};
use crate::proto::Envelope;

/// A record's number: the process start it was accepted in and its place there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number {
    /// This process start (see [`boot_id`]): one string shared by every record.
    pub boot: Arc<str>,
    pub position: Position,
}

/// What a record says after its `boot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// The nozzle's own alerts: `boot` only (they skip the sink they are
    /// about, so numbering them would make holes that are no loss).
    BootOnly,
    /// A record the router accepted: `seq`, its number within (boot, kind).
    Seq(u64),
    /// A declaration: `last_seq`, the last number issued for its kind.
    LastSeq(u64),
}

impl Number {
    pub(crate) fn seq(boot: &Arc<str>, seq: u64) -> Option<Number> {
        Some(Number {
            boot: Arc::clone(boot),
            position: Position::Seq(seq),
        })
    }
}

/// `<instance_index>-<YYYYMMDDTHHMMSSZ>-<8 lowercase hex>`: the boot of a
/// process with that instance index started at `started`, `random` telling
/// apart two starts within a second.
pub(crate) fn format_boot(
    instance_index: u32,
    started: chrono::DateTime<chrono::Utc>,
    random: u32,
) -> String {
    format!(
        "{instance_index}-{}-{random:08x}",
        started.format("%Y%m%dT%H%M%SZ")
    )
}

/// A new boot for a process start with `instance_index`, now.
pub fn boot_id(instance_index: u32) -> Arc<str> {
    format_boot(instance_index, chrono::Utc::now(), rand::random::<u32>()).into()
}

/// The declaration of `last_seq` for `kind` in `boot`, made at `time_ns`
/// (UNIX nanoseconds). Its envelope is the nozzle's own, like an alert's
/// (`source_id` and `origin` `cf-audit-nozzle`, no message), so that the
/// sinks that take header fields from the envelope (syslog's HOSTNAME and
/// APP-NAME, HEC's host and source) name the nozzle.
pub(crate) fn declaration(kind: Kind, boot: &Arc<str>, last_seq: u64, time_ns: i64) -> Record {
    Record {
        kind,
        envelope: EnvelopeView::from_prost(&Envelope {
            timestamp: time_ns,
            source_id: ALERT_SOURCE_ID.to_string(),
            tags: BTreeMap::from([("origin".to_string(), ALERT_SOURCE_ID.to_string())]),
            ..Envelope::default()
        }),
        api: None,
        names: None,
        number: Some(Number {
            boot: Arc::clone(boot),
            position: Position::LastSeq(last_seq),
        }),
    }
}

/// Whether `record` is a declaration (not a record of what was received).
pub(crate) fn is_declaration(record: &Record) -> bool {
    matches!(
        record.number,
        Some(Number {
            position: Position::LastSeq(_),
            ..
        })
    )
}

/// `,"boot":B,"seq":N` (alerts: `,"boot":B`), what follows a record's
/// `kind`; nothing for a record without a number.
pub(super) fn write_boot_seq(rec: &Record, out: &mut Vec<u8>) {
    let Some(n) = &rec.number else {
        return;
    };
    json::write_key(out, "boot");
    json::write_str(out, &n.boot);
    match n.position {
        Position::BootOnly => {}
        Position::Seq(seq) => {
            out.extend_from_slice(b",\"seq\":");
            json::write_int(out, seq);
        }
        Position::LastSeq(last) => {
            out.extend_from_slice(b",\"last_seq\":");
            json::write_int(out, last);
        }
    }
}

/// A declaration's JSON: `{"kind":K,"boot":B,"last_seq":N,"time":T,"foundation":F}`,
/// `time` when it was declared; nothing else, whatever the encoding options.
pub(super) fn write_declaration(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"kind\":");
    json::write_str(out, rec.kind.as_str());
    write_boot_seq(rec, out);
    json::write_key(out, "time");
    json::write_rfc3339_nanos(out, rec.envelope.timestamp());
    json::write_key(out, "foundation");
    json::write_str(out, &ctx.foundation);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::proto::envelope::Message;

    #[test]
    fn boot_names_the_instance_the_start_second_and_a_random_part() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-02T19:33:22.987Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            format_boot(0, t, 0x9f3a_2c1b),
            "0-20261202T193322Z-9f3a2c1b"
        );
        assert_eq!(format_boot(12, t, 7), "12-20261202T193322Z-00000007");
        let b = boot_id(3);
        let parts: Vec<&str> = b.split('-').collect();
        assert_eq!(parts.len(), 3, "{b}");
        assert_eq!(parts[0], "3");
        assert_eq!(parts[1].len(), 16);
        assert!(
            parts[2].len() == 8
                && parts[2]
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }

    #[test]
    fn numbers_follow_the_kind_and_a_declaration_says_only_its_own_fields() {
        let boot: Arc<str> = "0-20261202T193322Z-9f3a2c1b".into();
        let ctx = EncodeContext::new("f");
        let mut rec = classify(Envelope {
            timestamp: 1,
            source_id: "s".into(),
            message: Some(Message::Event(crate::proto::Event {
                title: "t".into(),
                body: "b".into(),
            })),
            ..Envelope::default()
        });
        rec.number = Number::seq(&boot, 41);
        let json = rec.to_json(&ctx);
        assert!(
            json.starts_with(
                r#"{"kind":"event","boot":"0-20261202T193322Z-9f3a2c1b","seq":41,"time":"#
            ),
            "{json}"
        );
        rec.number = Some(Number {
            boot: Arc::clone(&boot),
            position: Position::BootOnly,
        });
        let json = rec.to_json(&ctx);
        assert!(
            json.starts_with(r#"{"kind":"event","boot":"0-20261202T193322Z-9f3a2c1b","time":"#),
            "{json}"
        );

        let d = declaration(Kind::AppLog, &boot, 99, 1_700_000_000_123_456_789);
        assert!(is_declaration(&d) && !is_declaration(&rec));
        assert_eq!(
            d.to_json(&ctx),
            r#"{"kind":"app_log","boot":"0-20261202T193322Z-9f3a2c1b","last_seq":99,"time":"2023-11-14T22:13:20.123456789Z","foundation":"f"}"#
        );
        assert_eq!(d.envelope.source_id(), ALERT_SOURCE_ID);
        assert_eq!(d.host(), ALERT_SOURCE_ID);
        assert!(!super::super::is_alert(&d));
    }

    #[test]
    fn a_number_is_small() {
        assert!(std::mem::size_of::<Option<Number>>() <= 32);
    }
}

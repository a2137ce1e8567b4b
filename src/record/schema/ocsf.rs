//! OCSF 1.3.0 (with the `cloud` profile): API invocations as API Activity
//! (class 6003), app logs and events as Base Event (class 0, activity
//! Other), metrics native. `time` is milliseconds; the exact time is
//! `metadata.original_time`; `seq` is `metadata.sequence`; what OCSF has no
//! attribute for is under `unmapped`, with the native names.

use super::super::api::{ApiCall, ApiResource, ApiSource};
use super::super::envelope::MessageRef;
use super::super::{API_EVENT_VERSION, EncodeContext, Kind, Record, json, layout};
use super::{Verb, millis, seq, verb, write_kind_boot_foundation, write_provenance};

/// The OCSF version the records follow (`metadata.version`).
pub const VERSION: &str = "1.3.0";
const PRODUCT: &str = concat!(
    "{\"name\":\"cf-audit-nozzle\",\"vendor_name\":\"Cloud Foundry\",\"version\":\"",
    env!("CARGO_PKG_VERSION"),
    "\"}"
);
const CLOUD: &str = "{\"provider\":\"Cloud Foundry\"}";

/// Writes `rec` as OCSF; `false` for a metric, which stays native.
pub(super) fn write(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) -> bool {
    match (rec.kind, rec.api.as_deref()) {
        (Kind::Api, Some(api)) => {
            api_record(rec, api, ctx, out);
            true
        }
        (Kind::Metric, _) => false,
        _ => {
            base_event(rec, ctx, out);
            true
        }
    }
}

/// An app log or an event as a Base Event.
fn base_event(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) {
    let env = &rec.envelope;
    out.extend_from_slice(
        b"{\"class_uid\":0,\"category_uid\":0,\"activity_id\":99,\"type_uid\":99,\"severity_id\":1,\"time\":",
    );
    json::write_int(out, millis(env.timestamp()));
    // The message and what else the envelope's message holds.
    let mut log_type = None;
    let mut invalid_utf8 = false;
    match env.message() {
        Some(MessageRef::Log(l)) => {
            log_type = Some(l.r#type);
            match std::str::from_utf8(l.payload) {
                Ok(text) => {
                    json::write_key(out, "message");
                    json::write_str(out, text);
                }
                Err(_) => {
                    json::write_key(out, "raw_data");
                    json::write_base64(out, l.payload);
                    invalid_utf8 = true;
                }
            }
        }
        Some(MessageRef::Event(e)) => {
            json::write_key(out, "message");
            json::write_str(out, e.title);
            json::write_key(out, "raw_data");
            json::write_str(out, e.body);
        }
        _ => {}
    }
    write_metadata(rec, None, out);
    out.extend_from_slice(b",\"unmapped\":{");
    write_provenance(rec, ctx, out, true);
    if let Some(t) = log_type {
        json::write_key(out, "log_type");
        write_log_type(out, t);
    }
    if invalid_utf8 {
        out.extend_from_slice(b",\"message_invalid_utf8\":true");
    }
    out.extend_from_slice(b"}}");
}

/// A log's type as the native record writes it.
fn write_log_type(out: &mut Vec<u8>, t: i32) {
    match t {
        0 => out.extend_from_slice(b"\"OUT\""),
        1 => out.extend_from_slice(b"\"ERR\""),
        t => json::write_int(out, t),
    }
}

/// `,"metadata":{..},"cloud":{..}`, the members every OCSF record has:
/// version, product, the event's `uid` when it has one, `log_name` (the
/// kind), `sequence` (`seq`) and `original_time` (the exact time).
fn write_metadata(rec: &Record, uid: Option<&str>, out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"metadata\":{\"version\":\"");
    out.extend_from_slice(VERSION.as_bytes());
    out.extend_from_slice(b"\",\"product\":");
    out.extend_from_slice(PRODUCT.as_bytes());
    if let Some(uid) = uid {
        json::write_key(out, "uid");
        json::write_str(out, uid);
    }
    json::write_key(out, "log_name");
    json::write_str(out, rec.kind.as_str());
    if let Some(s) = seq(rec) {
        json::write_key(out, "sequence");
        json::write_int(out, s);
    }
    json::write_key(out, "original_time");
    json::write_rfc3339_nanos(out, rec.envelope.timestamp());
    out.extend_from_slice(b"},\"cloud\":");
    out.extend_from_slice(CLOUD.as_bytes());
}

/// `eventName`'s verb as OCSF's API activity: 1 Create, 2 Read, 3 Update,
/// 4 Delete, 99 Other.
fn activity(event_name: &str, read_only: Option<bool>) -> (u64, &'static str) {
    match verb(event_name, read_only) {
        Verb::Create => (1, "Create"),
        Verb::Read => (2, "Read"),
        Verb::Update => (3, "Update"),
        Verb::Delete => (4, "Delete"),
        Verb::Other => (99, "Other"),
    }
}

/// The outcome as OCSF's status: 1 Success, 2 Failure (failure and
/// denied), 0 Unknown (a firehose line alone does not say).
fn status(outcome: Option<&str>) -> (u64, &'static str) {
    match outcome {
        Some("success") => (1, "Success"),
        Some("failure" | "denied") => (2, "Failure"),
        _ => (0, "Unknown"),
    }
}

/// Cloud Controller's actor types as OCSF's user types.
fn user_type(kind: &str) -> (u64, &'static str) {
    match kind {
        "user" => (1, "User"),
        "system" => (3, "System"),
        "unknown" => (0, "Unknown"),
        _ => (99, "Other"),
    }
}

/// An API invocation as API Activity (class 6003), or a UAA sign-in
/// (`uaa.*Authentication*`) as Authentication (class 3002, activity 1
/// Logon), written straight from the record like the native writer does:
/// each native field where OCSF has an attribute for it, the rest under
/// `unmapped` with its native name (`docs/schemas.md`).
fn api_record(rec: &Record, api: &ApiCall, ctx: &EncodeContext, out: &mut Vec<u8>) {
    let env = &rec.envelope;
    let sec = api.security.as_deref();
    let event_name = api.event_name();
    let event_source = api.event_source();
    let authentication = event_source == "uaa" && event_name.contains("Authentication");
    let read_only = api.read_only();
    let (class_uid, category_uid, activity_id, activity_name) = if authentication {
        (3002, 3, 1, "Logon")
    } else {
        let (id, name) = activity(event_name, read_only);
        (6003, 6, id, name)
    };
    out.extend_from_slice(b"{\"class_uid\":");
    json::write_int(out, class_uid);
    json::write_key(out, "category_uid");
    json::write_int(out, category_uid);
    json::write_key(out, "activity_id");
    json::write_int(out, activity_id);
    json::write_key(out, "activity_name");
    json::write_str(out, activity_name);
    json::write_key(out, "type_uid");
    json::write_int(out, class_uid * 100 + activity_id);
    out.extend_from_slice(b",\"severity_id\":1");
    let outcome = api.outcome();
    let (status_id, status_name) = status(outcome);
    json::write_key(out, "status_id");
    json::write_int(out, status_id);
    json::write_key(out, "status");
    json::write_str(out, status_name);
    if let Some(code) = sec.and_then(|s| s.http_status) {
        // A string, as OCSF types it.
        json::write_key(out, "status_code");
        json::write_int_str(out, code);
    }
    if let Some(detail) = sec.and_then(|s| s.error_message.as_deref()) {
        json::write_key(out, "status_detail");
        json::write_str(out, detail);
    }
    json::write_key(out, "time");
    json::write_int(out, millis(env.timestamp()));
    // Only a firehose record is written from its envelope (as the native
    // writer does): its log line is the message.
    let envelope_form = matches!(api.source, ApiSource::Firehose);
    let log = match env.message() {
        Some(MessageRef::Log(l)) if envelope_form => Some(l),
        _ => None,
    };
    let text = log.and_then(|l| std::str::from_utf8(l.payload).ok());
    if let Some(text) = text {
        json::write_key(out, "message");
        json::write_str(out, text);
    }

    // Who: OCSF requires a user that names something; a firehose line and
    // an audit event do not say who called from where, and `unknown`
    // stands in for what the source did not say (the native record's
    // userIdentity.type `unknown`).
    let id = api.user_identity();
    let (type_id, type_caption) = user_type(id.kind);
    json::write_key(out, if authentication { "user" } else { "actor" });
    if !authentication {
        out.extend_from_slice(b"{\"user\":");
    }
    out.extend_from_slice(b"{\"type_id\":");
    json::write_int(out, type_id);
    json::write_key(out, "type");
    json::write_str(out, type_caption);
    if id.name.is_some() || id.guid.is_none() {
        json::write_key(out, "name");
        json::write_str(out, id.name.unwrap_or("unknown"));
    }
    if let Some(guid) = id.guid {
        json::write_key(out, "uid");
        json::write_str(out, guid);
    }
    out.push(b'}');
    if authentication {
        // The service signed in to (UAA): Authentication's `service`.
        json::write_key(out, "service");
        out.extend_from_slice(b"{\"name\":");
        json::write_str(out, event_source);
        out.push(b'}');
    } else {
        out.extend_from_slice(b"},\"api\":{\"operation\":");
        json::write_str(out, event_name);
        out.extend_from_slice(b",\"service\":{\"name\":");
        json::write_str(out, event_source);
        out.push(b'}');
        if let Some(id) = sec.and_then(|s| s.request_id.as_deref()) {
            out.extend_from_slice(b",\"request\":{\"uid\":");
            json::write_str(out, id);
            out.push(b'}');
        }
        out.push(b'}');
    }

    // From where: OCSF requires a source endpoint that names something.
    json::write_key(out, "src_endpoint");
    match sec.and_then(|s| s.source_ip.as_deref()) {
        Some(ip) => {
            out.extend_from_slice(b"{\"ip\":");
            json::write_str(out, ip);
        }
        None => out.extend_from_slice(b"{\"name\":\"unknown\""),
    }
    out.push(b'}');
    let user_agent = sec.and_then(|s| s.user_agent.as_deref());
    let forwarded_for = sec.map_or(&[][..], |s| &s.forwarded_for[..]);
    if user_agent.is_some() || !forwarded_for.is_empty() {
        json::write_key(out, "http_request");
        let mut first = true;
        out.push(b'{');
        if let Some(ua) = user_agent {
            out.extend_from_slice(b"\"user_agent\":");
            json::write_str(out, ua);
            first = false;
        }
        if !forwarded_for.is_empty() {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"\"x_forwarded_for\":");
            write_str_array(out, forwarded_for.iter().map(String::as_str));
        }
        out.push(b'}');
    }
    let [space, org] = match api.source {
        ApiSource::Firehose => layout::api_places(rec),
        ApiSource::AuditEvents(_) | ApiSource::SecurityLog => [None, None],
    };
    let resources = super::super::api::resources(rec, api, space, org);
    // Authentication has no `resources`: a sign-in's (none, for UAA) stay unmapped.
    if !authentication {
        json::write_key(out, "resources");
        write_resources(out, &resources);
    }
    write_metadata(rec, Some(&api.event_id(env)), out);

    // The rest, under its native name.
    out.extend_from_slice(b",\"unmapped\":{");
    if envelope_form {
        write_provenance(rec, ctx, out, true);
        match (log, text) {
            (Some(l), text) => {
                json::write_key(out, "log_type");
                write_log_type(out, l.r#type);
                if text.is_none() {
                    // Kept losslessly, as the native record keeps it.
                    json::write_key(out, "message_base64");
                    json::write_base64(out, l.payload);
                    out.extend_from_slice(b",\"message_invalid_utf8\":true");
                }
            }
            (None, _) => layout::write_message(env, out),
        }
    } else {
        write_kind_boot_foundation(rec, ctx, out);
    }
    json::write_key(out, "eventVersion");
    json::write_str(out, API_EVENT_VERSION);
    if authentication {
        // The operation (Authentication has no `api`).
        json::write_key(out, "eventName");
        json::write_str(out, event_name);
    }
    out.extend_from_slice(b",\"eventType\":\"CfApiCall\"");
    // What of userIdentity OCSF's user has no attribute for: a type other
    // than its own (the caption alone would lose which kind of actor it
    // was), the authentication mechanism and the OAuth client.
    let other_type = type_id == 99;
    if other_type || id.auth_mechanism.is_some() || id.client_id.is_some() {
        json::write_key(out, "userIdentity");
        let mut first = true;
        out.push(b'{');
        for (key, value) in [
            ("type", other_type.then_some(id.kind)),
            ("authMechanism", id.auth_mechanism),
            ("clientId", id.client_id),
        ] {
            if let Some(v) = value {
                if !first {
                    out.push(b',');
                }
                first = false;
                json::write_str(out, key);
                out.push(b':');
                json::write_str(out, v);
            }
        }
        out.push(b'}');
    }
    if authentication {
        if !resources.is_empty() {
            json::write_key(out, "resources");
            write_resources(out, &resources);
        }
        if let Some(id) = sec.and_then(|s| s.request_id.as_deref()) {
            json::write_key(out, "requestID");
            json::write_str(out, id);
        }
    }
    json::write_key(out, "requestParameters");
    match &api.request_parameters {
        // Serialising a Value into a Vec cannot fail.
        Some(v) => serde_json::to_writer(&mut *out, v).expect("a JSON value serialises"),
        None => out.extend_from_slice(b"null"),
    }
    if let Some(ro) = read_only {
        json::write_key(out, "readOnly");
        out.extend_from_slice(if ro { b"true" } else { b"false" });
    }
    // `denied` stays here too: OCSF's status has no word for it.
    if outcome == Some("denied") {
        out.extend_from_slice(b",\"outcome\":\"denied\"");
    }
    if let Some(code) = sec.and_then(|s| s.error_code.as_deref()) {
        json::write_key(out, "errorCode");
        json::write_str(out, code);
    }
    json::write_key(out, "sources");
    write_str_array(out, api.sources());
    json::write_key(out, "sourceEvent");
    json::write_str(out, api.source.as_str(sec));
    if let Some(s) = sec {
        out.extend_from_slice(b",\"security_event\":{\"source\":");
        json::write_str(out, s.from.as_str());
        json::write_key(out, "eventID");
        json::write_str(out, &s.event_id);
        json::write_key(out, "host");
        json::write_str(out, &s.host);
        json::write_key(out, "line");
        json::write_str(out, &s.line);
        out.push(b'}');
    }
    if let ApiSource::AuditEvents(a) = &api.source {
        json::write_key(out, "audit_event");
        serde_json::to_writer(&mut *out, &a.original).expect("a JSON value serialises");
    }
    out.extend_from_slice(b"}}");
}

/// `resources[]` as OCSF's: {`type`, `uid` (our `guid`), `name`}.
fn write_resources(out: &mut Vec<u8>, resources: &[ApiResource]) {
    out.push(b'[');
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"type\":");
        json::write_str(out, &r.kind);
        if let Some(guid) = &r.guid {
            json::write_key(out, "uid");
            json::write_str(out, guid);
        }
        if let Some(name) = &r.name {
            json::write_key(out, "name");
            json::write_str(out, name);
        }
        out.push(b'}');
    }
    out.push(b']');
}

fn write_str_array<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>) {
    out.push(b'[');
    for (i, s) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, s);
    }
    out.push(b']');
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the native
/// records write it (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`).
pub fn rfc3339_millis(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !t.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac = t.get(19..t.len() - 1).unwrap_or("");
    let ms = match frac.strip_prefix('.') {
        Some(f) if !f.is_empty() => {
            let digits: String = f.chars().chain("000".chars()).take(3).collect();
            digits.parse::<i64>().ok()?
        }
        _ => 0,
    };
    // Days from the civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_to_millis() {
        assert_eq!(rfc3339_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            rfc3339_millis("2026-12-02T23:29:01.191115801Z"),
            Some(1_796_254_141_191)
        );
        assert_eq!(
            rfc3339_millis("2000-02-29T12:00:00.5Z"),
            Some(951_825_600_500)
        );
        assert_eq!(rfc3339_millis("yesterday"), None);
    }

    #[test]
    fn verbs_become_activities() {
        assert_eq!(activity("audit.app.create", Some(false)).0, 1);
        assert_eq!(activity("audit.app.show", Some(true)).0, 2);
        assert_eq!(activity("audit.app.start", Some(false)).0, 3);
        assert_eq!(activity("audit.app.delete-request", Some(false)).0, 4);
        assert_eq!(activity("app.crash", None).0, 99);
    }
}

//! OCSF 1.3.0 (with the `cloud` profile): API invocations as API Activity
//! (class 6003), app logs and events as Base Event (class 0, activity
//! Other), metrics native. `time` is milliseconds; the exact time is
//! `metadata.original_time`; `seq` is `metadata.sequence`; what OCSF has no
//! attribute for is under `unmapped`, with the native names.

use serde_json::{Map, Value, json};

use super::super::envelope::MessageRef;
use super::super::{EncodeContext, Kind, Record, json};
use super::{Verb, failed, is_api, millis, native_map, seq, verb, write_provenance};

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
    if is_api(rec) {
        let n = native_map(rec, ctx);
        let value = if is_authentication(&n) {
            authentication(n)
        } else {
            api_activity(n)
        };
        // Serialising a Value into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &value).expect("OCSF API record serialises");
        return true;
    }
    match rec.kind {
        Kind::Metric => false,
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
    out.extend_from_slice(b",\"metadata\":{\"version\":\"");
    out.extend_from_slice(VERSION.as_bytes());
    out.extend_from_slice(b"\",\"product\":");
    out.extend_from_slice(PRODUCT.as_bytes());
    json::write_key(out, "log_name");
    json::write_str(out, rec.kind.as_str());
    if let Some(s) = seq(rec) {
        json::write_key(out, "sequence");
        json::write_int(out, s);
    }
    json::write_key(out, "original_time");
    json::write_rfc3339_nanos(out, env.timestamp());
    out.extend_from_slice(b"},\"cloud\":");
    out.extend_from_slice(CLOUD.as_bytes());
    out.extend_from_slice(b",\"unmapped\":{");
    write_provenance(rec, ctx, out, true);
    if let Some(t) = log_type {
        json::write_key(out, "log_type");
        match t {
            0 => out.extend_from_slice(b"\"OUT\""),
            1 => out.extend_from_slice(b"\"ERR\""),
            t => json::write_int(out, t),
        }
    }
    if invalid_utf8 {
        out.extend_from_slice(b",\"message_invalid_utf8\":true");
    }
    out.extend_from_slice(b"}}");
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

/// The outcome as OCSF's status: 1 Success, 2 Failure, 0 Unknown.
fn status(n: &mut Map<String, Value>) -> (u64, &'static str) {
    let status = match failed(n) {
        Some(false) => (1, "Success"),
        Some(true) => (2, "Failure"),
        None => (0, "Unknown"),
    };
    // `denied` stays under `unmapped` too: OCSF's status has no word for it.
    if n.get("outcome").and_then(Value::as_str) != Some("denied") {
        n.remove("outcome");
    }
    status
}

/// Whether a native API record is a UAA sign-in (`uaa.*Authentication*`),
/// which OCSF has its own class for.
fn is_authentication(n: &Map<String, Value>) -> bool {
    n.get("eventSource").and_then(Value::as_str) == Some("uaa")
        && n.get("eventName")
            .and_then(Value::as_str)
            .is_some_and(|e| e.contains("Authentication"))
}

/// A UAA sign-in as Authentication (class 3002, activity 1 Logon): the
/// API Activity form with `user` and `src_endpoint` where that class puts
/// them, `api.service` as `service`, and no `api`/`actor` (the operation
/// stays as `unmapped.eventName`).
fn authentication(n: Map<String, Value>) -> Value {
    let event_name = n.get("eventName").cloned();
    let mut v = api_activity(n);
    let o = v.as_object_mut().expect("an object");
    let user = o
        .remove("actor")
        .and_then(|mut a| a.get_mut("user").map(Value::take))
        .unwrap_or_else(|| json!({ "name": "unknown" }));
    o.insert("user".into(), user);
    // The service signed in to (UAA): Authentication's `service`.
    let service = o
        .remove("api")
        .and_then(|mut a| a.get_mut("service").map(Value::take))
        .unwrap_or_else(|| json!({ "name": "uaa" }));
    o.insert("service".into(), service);
    // Authentication has no `resources`: a sign-in's (none, for UAA) stay unmapped.
    if let (Some(resources), Some(Value::Object(unmapped))) =
        (o.remove("resources"), o.get_mut("unmapped"))
        && resources.as_array().is_some_and(|r| !r.is_empty())
    {
        unmapped.insert("resources".into(), resources);
    }
    o.insert("class_uid".into(), json!(3002));
    o.insert("category_uid".into(), json!(3));
    o.insert("activity_id".into(), json!(1));
    o.insert("activity_name".into(), json!("Logon"));
    o.insert("type_uid".into(), json!(300201));
    if let (Some(name), Some(Value::Object(unmapped))) = (event_name, o.get_mut("unmapped")) {
        unmapped.insert("eventName".into(), name);
    }
    v
}

/// An API invocation's native fields as API Activity; what OCSF has no
/// attribute for stays under `unmapped` with its native name.
fn api_activity(mut n: Map<String, Value>) -> Value {
    let take = |n: &mut Map<String, Value>, k: &str| n.remove(k);
    let event_name = n
        .get("eventName")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let read_only = n.get("readOnly").and_then(Value::as_bool);
    let (activity_id, activity_name) = activity(&event_name, read_only);
    let (status_id, status_name) = status(&mut n);
    let time_text = take(&mut n, "time");
    let time = time_text
        .as_ref()
        .and_then(Value::as_str)
        .and_then(rfc3339_millis)
        .unwrap_or(0);
    take(&mut n, "eventTime"); // the same instant as `time`
    take(&mut n, "eventName");
    let mut user = Map::new();
    if let Some(Value::Object(mut id)) = take(&mut n, "userIdentity") {
        if let Some(v) = id.remove("name") {
            user.insert("name".into(), v);
        }
        if let Some(v) = id.remove("guid") {
            user.insert("uid".into(), v);
        }
        if let Some(Value::String(t)) = id.remove("type") {
            // Cloud Controller's actor types as OCSF's user types.
            let (type_id, caption) = match t.as_str() {
                "user" => (1, "User"),
                "system" => (3, "System"),
                "unknown" => (0, "Unknown"),
                _ => (99, "Other"),
            };
            user.insert("type_id".into(), json!(type_id));
            user.insert("type".into(), json!(caption));
            if type_id == 99 {
                // The caption alone would lose which kind of actor it was.
                n.insert("userIdentity".into(), json!({ "type": t }));
            }
        }
        if !id.is_empty() {
            let kept = n
                .entry("userIdentity")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(k) = kept {
                k.extend(id);
            }
        }
    }
    // OCSF requires an actor and a source endpoint that name something;
    // a firehose line and an audit event do not say who called from where.
    // `unknown` stands in for what the source did not say (the native
    // record's userIdentity.type `unknown`).
    if !["name", "uid"].iter().any(|k| user.contains_key(*k)) {
        user.insert("name".into(), json!("unknown"));
    }
    let mut api = Map::new();
    api.insert("operation".into(), Value::String(event_name));
    if let Some(source) = take(&mut n, "eventSource") {
        api.insert("service".into(), json!({ "name": source }));
    }
    if let Some(id) = take(&mut n, "requestID") {
        api.insert("request".into(), json!({ "uid": id }));
    }
    let mut src = Map::new();
    match take(&mut n, "sourceIPAddress") {
        Some(ip) => src.insert("ip".into(), ip),
        None => src.insert("name".into(), json!("unknown")),
    };
    let mut http = Map::new();
    if let Some(ua) = take(&mut n, "userAgent") {
        http.insert("user_agent".into(), ua);
    }
    if let Some(xff) = take(&mut n, "forwardedFor") {
        http.insert("x_forwarded_for".into(), xff);
    }
    let mut out = Map::new();
    out.insert("class_uid".into(), json!(6003));
    out.insert("category_uid".into(), json!(6));
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity_name));
    out.insert("type_uid".into(), json!(6003 * 100 + activity_id));
    out.insert("severity_id".into(), json!(1));
    out.insert("status_id".into(), json!(status_id));
    out.insert("status".into(), json!(status_name));
    if let Some(code) = take(&mut n, "httpStatusCode") {
        out.insert("status_code".into(), Value::String(code.to_string()));
    }
    if let Some(detail) = take(&mut n, "errorMessage") {
        out.insert("status_detail".into(), detail);
    }
    out.insert("time".into(), json!(time));
    if let Some(msg) = take(&mut n, "message") {
        out.insert("message".into(), msg);
    }
    out.insert("actor".into(), json!({ "user": user }));
    out.insert("api".into(), Value::Object(api));
    out.insert("src_endpoint".into(), Value::Object(src));
    if !http.is_empty() {
        out.insert("http_request".into(), Value::Object(http));
    }
    if let Some(Value::Array(resources)) = take(&mut n, "resources") {
        let list: Vec<Value> = resources
            .into_iter()
            .map(|r| {
                let mut o = Map::new();
                for (from, to) in [("type", "type"), ("guid", "uid"), ("name", "name")] {
                    if let Some(v) = r.get(from) {
                        o.insert(to.into(), v.clone());
                    }
                }
                Value::Object(o)
            })
            .collect();
        out.insert("resources".into(), Value::Array(list));
    }
    out.insert("cloud".into(), json!({ "provider": "Cloud Foundry" }));
    let mut metadata = Map::new();
    metadata.insert("version".into(), json!(VERSION));
    metadata.insert(
        "product".into(),
        json!({"name": "cf-audit-nozzle", "vendor_name": "Cloud Foundry", "version": env!("CARGO_PKG_VERSION")}),
    );
    if let Some(id) = take(&mut n, "eventID") {
        metadata.insert("uid".into(), id);
    }
    metadata.insert("log_name".into(), json!("api"));
    if let Some(s) = take(&mut n, "seq") {
        metadata.insert("sequence".into(), s);
    }
    if let Some(t) = time_text {
        metadata.insert("original_time".into(), t);
    }
    out.insert("metadata".into(), Value::Object(metadata));
    out.insert("unmapped".into(), Value::Object(n));
    Value::Object(out)
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

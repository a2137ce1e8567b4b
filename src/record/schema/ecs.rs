//! Elastic Common Schema 9.4.0: `@timestamp` (nanoseconds, as a date
//! string), `event.*` (kind, dataset `cloudfoundry.<kind>`, sequence = our
//! `seq`, and for API invocations category `api`, type, action, outcome,
//! id, provider), `message`, `user.*`, `source.ip`, `user_agent.original`,
//! `http.*`, `error.*`, tags as `labels`, and what ECS has no field for
//! under the custom field set `cloudfoundry` with the native names.

use serde_json::{Map, Value, json};

use super::super::envelope::MessageRef;
use super::super::{EncodeContext, Kind, Record, json, layout};
use super::{Verb, failed, is_api, native_map, seq, verb, write_provenance};

/// The ECS version the records follow (`ecs.version`).
pub const VERSION: &str = "9.4.0";

/// Writes `rec` as an ECS document.
pub(super) fn write(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) {
    if is_api(rec) {
        let value = api(native_map(rec, ctx));
        serde_json::to_writer(&mut *out, &value).expect("ECS API record serialises");
        return;
    }
    let env = &rec.envelope;
    out.extend_from_slice(b"{\"@timestamp\":");
    json::write_rfc3339_nanos(out, env.timestamp());
    out.extend_from_slice(b",\"ecs\":{\"version\":\"");
    out.extend_from_slice(VERSION.as_bytes());
    out.extend_from_slice(b"\"}");
    let message = env.message();
    let mut title = None;
    match &message {
        Some(MessageRef::Log(l)) => {
            if let Ok(text) = std::str::from_utf8(l.payload) {
                json::write_key(out, "message");
                json::write_str(out, text);
            }
        }
        Some(MessageRef::Event(e)) => {
            json::write_key(out, "message");
            json::write_str(out, e.body);
            title = Some(e.title);
        }
        _ => {}
    }
    out.extend_from_slice(b",\"event\":{\"kind\":");
    out.extend_from_slice(if rec.kind == Kind::Metric {
        b"\"metric\""
    } else {
        b"\"event\""
    });
    out.extend_from_slice(b",\"module\":\"cloudfoundry\",\"dataset\":\"cloudfoundry.");
    out.extend_from_slice(rec.kind.as_str().as_bytes());
    out.push(b'"');
    if let Some(s) = seq(rec) {
        json::write_key(out, "sequence");
        json::write_int(out, s);
    }
    if let Some(t) = title {
        json::write_key(out, "reason");
        json::write_str(out, t);
    }
    out.push(b'}');
    write_labels(rec, out);
    out.extend_from_slice(b",\"cloudfoundry\":{");
    write_provenance(rec, ctx, out, false);
    match message {
        Some(MessageRef::Log(l)) if std::str::from_utf8(l.payload).is_err() => {
            // write_message puts log_type and the bytes as base64 with the flag.
            layout::write_message(env, out);
        }
        Some(MessageRef::Log(l)) => {
            json::write_key(out, "log_type");
            match l.r#type {
                0 => out.extend_from_slice(b"\"OUT\""),
                1 => out.extend_from_slice(b"\"ERR\""),
                t => json::write_int(out, t),
            }
        }
        Some(MessageRef::Event(_)) | None => {}
        Some(_) => layout::write_message(env, out),
    }
    out.extend_from_slice(b"}}");
}

/// `"labels":{..}`: the tags that have no readable field, as ECS labels
/// (keys with `.` written with `_`, which ECS asks of label keys).
fn write_labels(rec: &Record, out: &mut Vec<u8>) {
    let mut inner = Vec::new();
    // Reuse the native writer's choice of tags: it writes `,"tags":{..}`.
    layout::write_other_tags(&rec.envelope, &mut inner);
    if inner.is_empty() {
        return;
    }
    let body = &inner[",\"tags\":".len()..];
    out.extend_from_slice(b",\"labels\":");
    if body.contains(&b'.') {
        // Rare: only keys change, so re-read and write the pairs.
        let pairs: Map<String, Value> = serde_json::from_slice(body).unwrap_or_default();
        let fixed: Map<String, Value> = pairs
            .into_iter()
            .map(|(k, v)| (k.replace('.', "_"), v))
            .collect();
        serde_json::to_writer(&mut *out, &fixed).expect("labels serialise");
    } else {
        out.extend_from_slice(body);
    }
}

/// `event.type` of an API invocation: what it did, as ECS names it.
fn event_type(event_name: &str, read_only: Option<bool>) -> &'static str {
    match verb(event_name, read_only) {
        Verb::Create => "creation",
        Verb::Delete => "deletion",
        Verb::Read => "access",
        Verb::Update => "change",
        Verb::Other => "info",
    }
}

/// An API invocation's native fields as ECS.
fn api(mut n: Map<String, Value>) -> Value {
    let take = |n: &mut Map<String, Value>, k: &str| n.remove(k);
    let name = n
        .get("eventName")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let read_only = n.get("readOnly").and_then(Value::as_bool);
    let denied = n.get("outcome").and_then(Value::as_str) == Some("denied");
    let outcome = match failed(&n) {
        Some(false) => "success",
        Some(true) => "failure",
        None => "unknown",
    };
    n.remove("outcome");
    let mut out = Map::new();
    out.insert(
        "@timestamp".into(),
        take(&mut n, "time").unwrap_or(Value::Null),
    );
    take(&mut n, "eventTime");
    out.insert("ecs".into(), json!({ "version": VERSION }));
    if let Some(m) = take(&mut n, "message") {
        out.insert("message".into(), m);
    }
    let mut event = Map::new();
    event.insert("kind".into(), json!("event"));
    event.insert("category".into(), json!(["api"]));
    let mut types = vec![event_type(&name, read_only)];
    if denied {
        // ECS's word for an attempt refused by access control.
        types.push("denied");
    }
    event.insert("type".into(), json!(types));
    event.insert("action".into(), Value::String(name));
    take(&mut n, "eventName");
    event.insert("outcome".into(), json!(outcome));
    event.insert("module".into(), json!("cloudfoundry"));
    event.insert("dataset".into(), json!("cloudfoundry.api"));
    if let Some(id) = take(&mut n, "eventID") {
        event.insert("id".into(), id);
    }
    if let Some(p) = take(&mut n, "eventSource") {
        event.insert("provider".into(), p);
    }
    if let Some(s) = take(&mut n, "seq") {
        event.insert("sequence".into(), s);
    }
    out.insert("event".into(), Value::Object(event));
    if let Some(Value::Object(mut id)) = take(&mut n, "userIdentity") {
        let mut user = Map::new();
        if let Some(v) = id.remove("name") {
            user.insert("name".into(), v);
        }
        if let Some(v) = id.remove("guid") {
            user.insert("id".into(), v);
        }
        if !user.is_empty() {
            out.insert("user".into(), Value::Object(user));
        }
        if !id.is_empty() {
            n.insert("userIdentity".into(), Value::Object(id));
        }
    }
    if let Some(ip) = take(&mut n, "sourceIPAddress") {
        out.insert("source".into(), json!({ "ip": ip }));
    }
    if let Some(ua) = take(&mut n, "userAgent") {
        out.insert("user_agent".into(), json!({ "original": ua }));
    }
    let mut http = Map::new();
    if let Some(id) = take(&mut n, "requestID") {
        http.insert("request".into(), json!({ "id": id }));
    }
    if let Some(c) = take(&mut n, "httpStatusCode") {
        http.insert("response".into(), json!({ "status_code": c }));
    }
    if !http.is_empty() {
        out.insert("http".into(), Value::Object(http));
    }
    let mut error = Map::new();
    if let Some(c) = take(&mut n, "errorCode") {
        error.insert("code".into(), Value::String(value_text(&c)));
    }
    if let Some(m) = take(&mut n, "errorMessage") {
        error.insert("message".into(), m);
    }
    if !error.is_empty() {
        out.insert("error".into(), Value::Object(error));
    }
    if let Some(Value::Object(tags)) = take(&mut n, "tags") {
        let labels: Map<String, Value> = tags
            .into_iter()
            .map(|(k, v)| (k.replace('.', "_"), v))
            .collect();
        out.insert("labels".into(), Value::Object(labels));
    }
    out.insert("cloudfoundry".into(), Value::Object(n));
    Value::Object(out)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_become_event_types() {
        assert_eq!(event_type("audit.app.create", Some(false)), "creation");
        assert_eq!(event_type("audit.app.show", Some(true)), "access");
        assert_eq!(event_type("audit.app.update", Some(false)), "change");
        assert_eq!(
            event_type("audit.service_instance.delete", Some(false)),
            "deletion"
        );
        assert_eq!(event_type("app.crash", None), "info");
    }
}

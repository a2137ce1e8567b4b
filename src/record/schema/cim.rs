//! Splunk's Common Information Model: API invocations with the fields of
//! the Change data model, UAA sign-ins with those of the Authentication
//! data model, so that Splunk's CIM searches and apps find them once the
//! sourcetypes are tagged (`docs/schemas.md` has the props, eventtypes and
//! tags). App logs, metrics and events stay native: no CIM data model is
//! about them.
//!
//! What CIM has no field for stays under `cloudfoundry`, with its native
//! name, so every fact is still written once.

use serde_json::{Map, Value, json};

use super::super::{EncodeContext, Record};
use super::{Verb, failed, is_api, native_map, verb};

/// Writes an API record with CIM's fields; `false` for other kinds.
pub(super) fn write(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) -> bool {
    if !is_api(rec) {
        return false;
    }
    let value = map(native_map(rec, ctx));
    serde_json::to_writer(&mut *out, &value).expect("CIM record serialises");
    true
}

/// Change's `action` for an event name's verb (CIM has no word for an
/// action that is neither: `updated`).
fn change_action(event_name: &str, read_only: Option<bool>) -> &'static str {
    match verb(event_name, read_only) {
        Verb::Create => "created",
        Verb::Delete => "deleted",
        Verb::Read => "read",
        Verb::Update | Verb::Other => "updated",
    }
}

fn map(mut n: Map<String, Value>) -> Value {
    let take = |n: &mut Map<String, Value>, k: &str| n.remove(k);
    let name = n
        .get("eventName")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let uaa = n.get("eventSource").and_then(Value::as_str) == Some("uaa");
    let authentication = uaa && name.contains("Authentication");
    let read_only = n.get("readOnly").and_then(Value::as_bool);
    let failed = failed(&n);
    let mut out = Map::new();
    out.insert("time".into(), take(&mut n, "time").unwrap_or(Value::Null));
    take(&mut n, "eventTime");
    if authentication {
        out.insert(
            "action".into(),
            json!(if failed == Some(true) {
                "failure"
            } else {
                "success"
            }),
        );
        out.insert("app".into(), json!("uaa"));
        out.insert("signature".into(), json!(name));
        out.insert("vendor_product".into(), json!("Cloud Foundry UAA"));
        if let Some(m) = n
            .get_mut("userIdentity")
            .and_then(|u| u.as_object_mut())
            .and_then(|u| u.remove("authMechanism"))
        {
            out.insert("authentication_method".into(), m);
        }
    } else {
        out.insert("action".into(), json!(change_action(&name, read_only)));
        out.insert("change_type".into(), json!("Cloud Foundry"));
        out.insert("command".into(), json!(name));
        out.insert(
            "vendor_product".into(),
            json!(if uaa {
                "Cloud Foundry UAA"
            } else {
                "Cloud Foundry Cloud Controller"
            }),
        );
        // CIM's values are success and failure; a firehose line does not
        // say, so it has no status.
        if let Some(failed) = failed {
            out.insert(
                "status".into(),
                json!(if failed { "failure" } else { "success" }),
            );
        }
        // The resource acted on: the first of `resources` (the rest stay).
        if let Some(Value::Array(list)) = n.get_mut("resources")
            && !list.is_empty()
        {
            let first = list.remove(0);
            for (from, to) in [
                ("type", "object_category"),
                ("guid", "object_id"),
                ("name", "object"),
            ] {
                if let Some(v) = first.get(from) {
                    out.insert(to.into(), v.clone());
                }
            }
            if list.is_empty() {
                n.remove("resources");
            }
        }
    }
    take(&mut n, "eventName");
    if let Some(Value::Object(mut id)) = take(&mut n, "userIdentity") {
        out.insert(
            "user".into(),
            id.remove("name").unwrap_or_else(|| json!("unknown")),
        );
        if let Some(guid) = id.remove("guid") {
            out.insert("user_id".into(), guid);
        }
        if !id.is_empty() {
            n.insert("userIdentity".into(), Value::Object(id));
        }
    }
    if let Some(ip) = take(&mut n, "sourceIPAddress") {
        out.insert("src".into(), ip);
    }
    if let Some(f) = take(&mut n, "foundation") {
        // The system acted on: the foundation.
        out.insert("dest".into(), f);
    }
    if let Some(ua) = take(&mut n, "userAgent") {
        out.insert("http_user_agent".into(), ua);
    }
    if let Some(m) = take(&mut n, "errorMessage") {
        out.insert("reason".into(), m);
    }
    if let Some(id) = take(&mut n, "eventID") {
        out.insert("id".into(), id);
    }
    if let Some(m) = take(&mut n, "message") {
        out.insert("message".into(), m);
    }
    out.insert("cloudfoundry".into(), Value::Object(n));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_and_authentication_fields() {
        let n = json!({"time": "t", "eventName": "audit.app.delete-request", "eventSource": "cloud_controller",
            "readOnly": false, "outcome": "denied", "foundation": "prod",
            "userIdentity": {"type": "user", "name": "dev", "guid": "g"},
            "resources": [{"type": "app", "guid": "a", "name": "billing"}], "sourceIPAddress": "10.0.0.1"});
        let v = map(n.as_object().unwrap().clone());
        assert_eq!(v["action"], "deleted");
        assert_eq!(v["status"], "failure");
        assert_eq!(
            (
                v["object"].as_str(),
                v["object_id"].as_str(),
                v["object_category"].as_str()
            ),
            (Some("billing"), Some("a"), Some("app"))
        );
        assert_eq!(
            (
                v["user"].as_str(),
                v["user_id"].as_str(),
                v["src"].as_str(),
                v["dest"].as_str()
            ),
            (Some("dev"), Some("g"), Some("10.0.0.1"), Some("prod"))
        );
        assert_eq!(v["cloudfoundry"]["userIdentity"], json!({"type": "user"}));
        assert!(v["cloudfoundry"].get("resources").is_none());

        let n = json!({"time": "t", "eventName": "uaa.UserAuthenticationFailure", "eventSource": "uaa", "outcome": "denied",
            "userIdentity": {"type": "user", "name": "marissa", "authMechanism": "uaa"}, "sourceIPAddress": "203.0.113.9"});
        let v = map(n.as_object().unwrap().clone());
        assert_eq!(v["action"], "failure");
        assert_eq!(v["app"], "uaa");
        assert_eq!(v["authentication_method"], "uaa");
        assert_eq!(v["signature"], "uaa.UserAuthenticationFailure");
    }
}

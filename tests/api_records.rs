//! Golden ApiInvocation records (DESIGN.md §4): every Cloud Controller log
//! text of reference §3.4 and audit events shaped as reference §3.5
//! describes, each checked field by field and validated against the
//! published JSON Schema.

mod common;

use std::collections::BTreeMap;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::{Envelope, Log, envelope, log};
use cf_audit_nozzle::record::{EncodeContext, audit_event_record};
use common::schema::{as_numbered, assert_valid_api_record};
use serde_json::{Value, json};

const G: &str = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
const B: &str = "5f7b3a1e-9c2d-4e8f-a1b2-c3d4e5f60718";

fn ctx() -> EncodeContext {
    EncodeContext::new("prod-eu")
}

fn api_line(text: &str, ty: log::Type) -> Value {
    let env = Envelope {
        timestamp: 1_700_000_000_000_000_000,
        source_id: G.into(),
        instance_id: "0".into(),
        deprecated_tags: Default::default(),
        tags: BTreeMap::from([
            ("origin".to_string(), "cloud_controller".to_string()),
            ("source_type".to_string(), "API".to_string()),
            ("app_id".to_string(), G.to_string()),
            ("app_name".to_string(), "spring-music".to_string()),
        ]),
        message: Some(envelope::Message::Log(Log {
            payload: text.to_string().into(),
            r#type: ty as i32,
        })),
    };
    let record: Value = serde_json::from_str(&classify(env).to_json(&ctx())).unwrap();
    assert_valid_api_record(&as_numbered(&record));
    record
}

/// A log text, its eventName, target (type, guid) and requestParameters.
type Case = (
    String,
    &'static str,
    Option<(&'static str, &'static str)>,
    Value,
);

/// Every text of reference §3.4: (text, eventName, target type and guid, requestParameters).
#[test]
fn every_cloud_controller_log_text_maps_to_its_event_and_target() {
    let app = |name: &str| (format!("{name} {G}"), Some(("app", G)));
    let cases: Vec<Case> = vec![
        (
            app("Created app with guid").0,
            "audit.app.create",
            Some(("app", G)),
            Value::Null,
        ),
        (
            format!(
                r#"Updated app with guid {G} ({{"name"=>"spring-music", "instances"=>1, "memory"=>512, "environment_json"=>"PRIVATE DATA HIDDEN"}})"#
            ),
            "audit.app.update",
            Some(("app", G)),
            json!({"name": "spring-music", "instances": 1, "memory": 512, "environment_json": "PRIVATE DATA HIDDEN"}),
        ),
        (
            format!(
                "Applied manifest to app with guid {G} (---\napplications:\n- name: spring-music\n  instances: 2\n)"
            ),
            "audit.app.apply_manifest",
            Some(("app", G)),
            json!("---\napplications:\n- name: spring-music\n  instances: 2\n"),
        ),
        (
            app("Starting app with guid").0,
            "audit.app.start",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Stopping app with guid").0,
            "audit.app.stop",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Restarted app with guid").0,
            "audit.app.restart",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Deleted app with guid").0,
            "audit.app.delete-request",
            Some(("app", G)),
            Value::Null,
        ),
        (
            format!(
                r#"App instance exited with guid {G} payload: {{"instance"=>"b8e2", "index"=>1, "cell_id"=>"c1", "reason"=>"CRASHED", "exit_description"=>"APP/PROC/WEB: Exited with status 137 (out of memory)", "crash_count"=>2, "crash_timestamp"=>1700000000000000000}}"#
            ),
            "app.crash",
            Some(("app", G)),
            json!({"instance": "b8e2", "index": 1, "cell_id": "c1", "reason": "CRASHED", "exit_description": "APP/PROC/WEB: Exited with status 137 (out of memory)", "crash_count": 2, "crash_timestamp": 1_700_000_000_000_000_000_i64}),
        ),
        (
            app("Enqueued job to delete app with guid").0,
            "audit.app.delete-request",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Creating build for app with guid").0,
            "audit.app.build.create",
            Some(("app", G)),
            Value::Null,
        ),
        (
            format!("Staging complete for build {B}"),
            "audit.app.build.staged",
            Some(("build", B)),
            Value::Null,
        ),
        (
            format!("Staging failed for build {B}"),
            "audit.app.build.failed",
            Some(("build", B)),
            Value::Null,
        ),
        (
            app("Creating deployment for app with guid").0,
            "audit.app.deployment.create",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Cancelling deployment for app with guid").0,
            "audit.app.deployment.cancel",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Continuing deployment for app with guid").0,
            "audit.app.deployment.continue",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Creating droplet for app with guid").0,
            "audit.app.droplet.create",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Deleting droplet for app with guid").0,
            "audit.app.droplet.delete",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Downloading droplet for app with guid").0,
            "audit.app.droplet.download",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Uploading droplet for app with guid").0,
            "audit.app.droplet.upload",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Adding app package for app with guid").0,
            "audit.app.package.create",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Uploading app package for app with guid").0,
            "audit.app.package.upload",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Uploading bits for app with guid").0,
            "audit.app.upload-bits",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Deleting app package for app with guid").0,
            "audit.app.package.delete",
            Some(("app", G)),
            Value::Null,
        ),
        (
            app("Downloading app package for app with guid").0,
            "audit.app.package.download",
            Some(("app", G)),
            Value::Null,
        ),
        // No audit event stands for this error line: its name says so, the text stays in `message`.
        (
            format!("Could not find package for {B}"),
            "unknown",
            None,
            Value::Null,
        ),
    ];
    assert_eq!(cases.len(), 25);
    for (text, name, target, params) in cases {
        let ty = if name == "unknown" {
            log::Type::Err
        } else {
            log::Type::Out
        };
        let r = api_line(&text, ty);
        assert_eq!(r["eventName"], name, "{text}");
        assert_eq!(r["message"], text.as_str());
        assert_eq!(r["sourceEvent"], "firehose");
        assert_eq!(r["userIdentity"], json!({"type": "unknown"}));
        assert_eq!(r["requestParameters"], params, "{text}");
        let expected_target = target.map(|(kind, guid)| {
            let mut t = json!({"type": kind, "guid": guid});
            if kind == "app" {
                t["name"] = json!("spring-music");
            }
            t
        });
        assert_eq!(r["resources"].get(0).cloned(), expected_target, "{text}");
        let read_only = match name {
            "unknown" | "app.crash" => None,
            n => Some(n.ends_with(".download")),
        };
        assert_eq!(
            r.get("readOnly").and_then(Value::as_bool),
            read_only,
            "{text}"
        );
    }
}

/// `/v3/audit_events` resources as reference §3.5 describes them, each with
/// the exact record it becomes.
#[test]
fn audit_events_become_exact_schema_valid_records() {
    let space = "7a1c3a55-3e0b-4d7e-9a4b-3f3e1c2d4b5a";
    let org = "e2a3c0d1-4b5c-4d6e-8f70-1a2b3c4d5e6f";
    let user = "d5a2f3b4-1111-4222-8333-944455556666";
    let event = |guid: &str, ty: &str, actor: Value, target: Value, data: Value, scoped: bool| {
        json!({
            "guid": guid, "created_at": "2016-06-08T16:41:23Z", "updated_at": "2016-06-08T16:41:23Z",
            "type": ty, "actor": actor, "target": target, "data": data,
            "space": if scoped { json!({"guid": space}) } else { Value::Null },
            "organization": if scoped { json!({"guid": org}) } else { Value::Null },
            "links": {"self": {"href": format!("https://api.example.org/v3/audit_events/{guid}")}}
        })
    };
    let time = "2016-06-08T16:41:23.000000000Z";
    let scoped = json!([{"type": "space", "guid": space}, {"type": "org", "guid": org}]);
    let cases = vec![
        // The docs' example: a user updated an app, with data.request.
        (
            event(
                "a595fe2f-01ff-4965-a50c-290258ab8582",
                "audit.app.update",
                json!({"guid": user, "type": "user", "name": "admin"}),
                json!({"guid": G, "type": "app", "name": "my-app"}),
                json!({"request": {"recursive": true, "environment_variables": "PRIVATE DATA HIDDEN"}}),
                true,
            ),
            json!({"type": "user", "guid": user, "name": "admin"}),
            json!({"type": "app", "guid": G, "name": "my-app"}),
            json!({"recursive": true, "environment_variables": "PRIVATE DATA HIDDEN"}),
            Some(false),
        ),
        // An app crash: the app is the actor; no request.
        (
            event(
                "0f0e0d0c-0b0a-4909-8807-060504030201",
                "app.crash",
                json!({"guid": G, "type": "app", "name": "my-app"}),
                json!({"guid": G, "type": "app", "name": "my-app"}),
                json!({"index": 0, "reason": "CRASHED", "exit_description": "out of memory"}),
                true,
            ),
            json!({"type": "app", "guid": G, "name": "my-app"}),
            json!({"type": "app", "guid": G, "name": "my-app"}),
            Value::Null,
            None,
        ),
        // The system acting on an org: no space, no request, data {}.
        (
            event(
                "11111111-2222-4333-8444-555555555555",
                "audit.organization.create",
                json!({"guid": "system", "type": "system", "name": "system"}),
                json!({"guid": org, "type": "organization", "name": "acme"}),
                json!({}),
                false,
            ),
            json!({"type": "system", "guid": "system", "name": "system"}),
            json!({"type": "organization", "guid": org, "name": "acme"}),
            Value::Null,
            Some(false),
        ),
        // A service broker; a read-only event.
        (
            event(
                "22222222-3333-4444-8555-666666666666",
                "audit.service_binding.show",
                json!({"guid": "b-1", "type": "service_broker", "name": "mysql-broker"}),
                json!({"guid": "sb-1", "type": "service_binding", "name": ""}),
                json!({"request": {}}),
                true,
            ),
            json!({"type": "service_broker", "guid": "b-1", "name": "mysql-broker"}),
            json!({"type": "service_binding", "guid": "sb-1"}),
            json!({}),
            Some(true),
        ),
        // A process actor and an actor type the schema does not know; no target.
        (
            event(
                "33333333-4444-4555-8666-777777777777",
                "audit.app.process.scale",
                json!({"guid": "p-1", "type": "v2-process", "name": "web"}),
                Value::Null,
                json!({"request": {"instances": 3}}),
                true,
            ),
            json!({"type": "unknown", "guid": "p-1", "name": "web"}),
            Value::Null,
            json!({"instances": 3}),
            Some(false),
        ),
    ];
    for (event, user_identity, target, params, read_only) in cases {
        let record = audit_event_record(event.clone()).expect("valid event");
        let r: Value = serde_json::from_str(&record.to_json(&ctx())).unwrap();
        assert_valid_api_record(&as_numbered(&r));
        let mut resources = vec![];
        if !target.is_null() {
            resources.push(target);
        }
        if !event["space"].is_null() {
            resources.extend(scoped.as_array().unwrap().iter().cloned());
        }
        let mut expected = json!({
            "kind": "api", "time": time, "foundation": "prod-eu",
            "eventVersion": "1.1", "eventTime": time, "eventID": event["guid"],
            "eventSource": "cloud_controller", "eventName": event["type"], "eventType": "CfApiCall",
            "userIdentity": user_identity, "resources": resources, "requestParameters": params,
            "outcome": "success", "sources": ["audit_events"],
            "sourceEvent": "audit_events", "audit_event": event,
        });
        if let Some(ro) = read_only {
            expected["readOnly"] = json!(ro);
        }
        assert_eq!(r, expected);
    }
}

#[test]
fn audit_events_that_cannot_be_read_say_why() {
    let e = audit_event_record(
        json!({"type": "audit.app.update", "created_at": "2016-06-08T16:41:23Z"}),
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "audit event has no string `guid`");
    let e = audit_event_record(json!({"guid": "x", "type": "t", "created_at": "yesterday"}))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"audit event x: created_at "yesterday" is not an RFC 3339 time"#
    );
}

#[test]
fn the_schema_refuses_what_is_not_an_api_invocation() {
    let record = audit_event_record(json!({"guid": "44444444-5555-4666-8777-888888888888",
        "type": "audit.space.create", "created_at": "2020-01-01T00:00:00Z", "actor": null,
        "target": null, "data": {}, "space": null, "organization": null}))
    .unwrap();
    let mut r: Value = serde_json::from_str(&record.to_json(&ctx())).unwrap();
    assert_valid_api_record(&as_numbered(&r));
    r["userIdentity"]["type"] = json!("root");
    let result = std::panic::catch_unwind(|| assert_valid_api_record(&as_numbered(&r)));
    assert!(
        result.is_err(),
        "an unknown identity type must not validate"
    );
}

/// An audit-events record through the HEC encoder: its time, source and
/// sourcetype, and the record as the event.
#[test]
fn an_audit_event_as_a_hec_event() {
    let record = audit_event_record(json!({"guid": "55555555-6666-4777-8888-999999999999",
        "type": "audit.space.delete-request", "created_at": "2016-06-08T16:41:23Z",
        "actor": {"type": "user", "guid": "u-1", "name": "ops@example.org"},
        "target": {"type": "space", "guid": "s-1", "name": "dev"}, "data": {"request": {"recursive": true}},
        "space": {"guid": "s-1"}, "organization": {"guid": "o-1"}}))
    .unwrap();
    let mut out = Vec::new();
    cf_audit_nozzle::sink::http::encode_hec(&record, &ctx(), None, &mut out);
    let text = String::from_utf8(out).unwrap();
    let prefix = r#"{"time":1465404083.000000,"host":"-","source":"cloud_controller","sourcetype":"cf:api","fields":{"foundation":"prod-eu","kind":"api"},"event":"#;
    assert!(text.starts_with(prefix), "{text}");
    let event: Value = serde_json::from_str(&text[prefix.len()..text.len() - 1]).unwrap();
    assert_eq!(
        event,
        serde_json::from_str::<Value>(&record.to_json(&ctx())).unwrap()
    );
    assert_valid_api_record(&as_numbered(&event));
}

//! The golden envelopes of every type and the exact native record each
//! must become (DESIGN.md §4 shapes): `tests/records.rs` sends them through
//! the real pipeline, `tests/schemas.rs` writes them in every schema.

use std::collections::BTreeMap;

use bytes::Bytes;
use cf_audit_nozzle::proto::{
    Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer, Value, envelope, log, value,
};
use cf_audit_nozzle::record::firehose_event_id;
use serde_json::json;

use super::FOUNDATION;
pub const T: i64 = 1_700_000_000_123_456_789; // 2023-11-14T22:13:20.123456789Z
pub const TIME: &str = "2023-11-14T22:13:20.123456789Z";
pub const APP: &str = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
pub const SPACE: &str = "7a1c3a55-3e0b-4d7e-9a4b-3f3e1c2d4b5a";
pub const ORG: &str = "e2a3c0d1-4b5c-4d6e-8f70-1a2b3c4d5e6f";

pub fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn env(
    source_id: &str,
    instance_id: &str,
    tags_: &[(&str, &str)],
    message: envelope::Message,
) -> Envelope {
    Envelope {
        timestamp: T,
        source_id: source_id.into(),
        instance_id: instance_id.into(),
        deprecated_tags: Default::default(),
        tags: tags(tags_),
        message: Some(message),
    }
}

pub fn log_msg(payload: impl Into<Bytes>, ty: log::Type) -> envelope::Message {
    envelope::Message::Log(Log {
        payload: payload.into(),
        r#type: ty as i32,
    })
}

pub const CC_TAGS: &[(&str, &str)] = &[
    ("origin", "cloud_controller"),
    ("source_type", "API"),
    ("app_id", APP),
    ("app_name", "spring-music"),
    ("space_id", SPACE),
    ("space_name", "dev"),
    ("organization_id", ORG),
    ("organization_name", "acme"),
    ("deployment", "cf"),
    ("job", "api"),
    ("ip", "10.0.1.20"),
];

pub const UPDATE: &str = r#"Updated app with guid cdabc600-0b73-48e1-b7d2-26af2c63f933 ({"name"=>"spring-music", "instances"=>1, "memory"=>512, "environment_json"=>"PRIVATE DATA HIDDEN"})"#;

/// The golden envelopes and the exact record each must become.
pub fn goldens() -> Vec<(Envelope, serde_json::Value)> {
    let app_named = json!({"guid": APP, "name": "spring-music"});
    let space = json!({"guid": SPACE, "name": "dev"});
    let org = json!({"guid": ORG, "name": "acme"});
    let mut out = Vec::new();

    // 1. Cloud Controller "Updated app" line (reference §3.4): an API invocation.
    let api = env(APP, "0", CC_TAGS, log_msg(UPDATE, log::Type::Out));
    let id = firehose_event_id(&api);
    out.push((api, json!({
        "kind": "api", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "0",
        "origin": "cloud_controller", "source_type": "API", "deployment": "cf", "job": "api",
        "app": app_named, "space": space, "org": org, "tags": {"ip": "10.0.1.20"},
        "log_type": "OUT", "message": UPDATE,
        "eventVersion": "1.1", "eventTime": TIME, "eventID": id, "eventSource": "cloud_controller",
        "eventName": "audit.app.update", "eventType": "CfApiCall", "userIdentity": {"type": "unknown"},
        "resources": [
            {"type": "app", "guid": APP, "name": "spring-music"},
            {"type": "space", "guid": SPACE, "name": "dev"},
            {"type": "org", "guid": ORG, "name": "acme"}
        ],
        "requestParameters": {"name": "spring-music", "instances": 1, "memory": 512, "environment_json": "PRIVATE DATA HIDDEN"},
        "readOnly": false, "sources": ["firehose"], "sourceEvent": "firehose"
    })));

    // 2. An API line whose app is gone (CC sends empty tags) and whose text is not known.
    let gone = env(
        APP,
        "1",
        &[
            ("origin", "cloud_controller"),
            ("source_type", "API"),
            ("app_id", ""),
            ("app_name", ""),
        ],
        log_msg("Could not find package for 5f7b", log::Type::Err),
    );
    let id = firehose_event_id(&gone);
    out.push((gone, json!({
        "kind": "api", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "1",
        "origin": "cloud_controller", "source_type": "API", "app": {"guid": "", "name": ""},
        "log_type": "ERR", "message": "Could not find package for 5f7b",
        "eventVersion": "1.1", "eventTime": TIME, "eventID": id, "eventSource": "cloud_controller",
        "eventName": "unknown", "eventType": "CfApiCall", "userIdentity": {"type": "unknown"},
        "resources": [], "requestParameters": null, "sources": ["firehose"], "sourceEvent": "firehose"
    })));

    // 3. App stdout with the tags Diego sets (reference §3.2).
    let app_tags: &[(&str, &str)] = &[
        ("source_id", APP),
        ("app_id", APP),
        ("app_name", "spring-music"),
        ("space_id", SPACE),
        ("space_name", "dev"),
        ("organization_id", ORG),
        ("organization_name", "acme"),
        ("process_id", APP),
        ("process_type", "web"),
        ("process_instance_id", "7c5e4a41-6c2b-4d1e-5f6a-7b8c"),
        ("instance_id", "0"),
        ("source_type", "APP/PROC/WEB"),
        ("origin", "rep"),
        ("deployment", "cf"),
        ("job", "diego-cell"),
        ("index", "8e5f2c4e"),
        ("ip", "10.0.16.5"),
    ];
    let app_out = env(
        APP,
        "0",
        app_tags,
        log_msg("Log # 4340925\n", log::Type::Out),
    );
    out.push((app_out, json!({
        "kind": "app_log", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "0",
        "origin": "rep", "source_type": "APP/PROC/WEB", "deployment": "cf", "job": "diego-cell",
        "app": app_named, "space": space, "org": org,
        "tags": {"source_id": APP, "process_id": APP, "process_type": "web",
                 "process_instance_id": "7c5e4a41-6c2b-4d1e-5f6a-7b8c", "instance_id": "0",
                 "index": "8e5f2c4e", "ip": "10.0.16.5"},
        "log_type": "OUT", "message": "Log # 4340925\n"
    })));

    // 4. A gorouter access line converted from v1 (tags of the route endpoint, __v1_type).
    let rtr_line = r#"spring-music.apps.example.com - [2023-11-14T22:13:20.123+0000] "GET / HTTP/1.1" 200 0 17 "-" "curl/8.4.0" "10.0.1.12:51234" "10.0.16.5:61012" x_forwarded_for:"-" x_forwarded_proto:"https" vcap_request_id:"a1b2" response_time:0.004 gorouter_time:0.0002 app_id:"cdabc600-0b73-48e1-b7d2-26af2c63f933" app_index:"0" x_b3_traceid:"4bf92f3577b34da6" x_b3_spanid:"00f067aa0ba902b7" x_b3_parentspanid:"-""#;
    let rtr = env(
        APP,
        "2",
        &[
            ("__v1_type", "LogMessage"),
            ("origin", "gorouter"),
            ("source_type", "RTR"),
            ("component", "route-emitter"),
        ],
        log_msg(rtr_line, log::Type::Out),
    );
    out.push((rtr, json!({
        "kind": "app_log", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "2",
        "origin": "gorouter", "source_type": "RTR",
        "tags": {"__v1_type": "LogMessage", "component": "route-emitter"}, "log_type": "OUT", "message": rtr_line
    })));

    // 5. Invalid UTF-8 is kept losslessly, as base64 with a flag.
    let bin = env(
        APP,
        "0",
        &[("source_type", "APP/PROC/WORKER")],
        log_msg(vec![0x66, 0x6f, 0xff, 0xfe, 0x0a], log::Type::Err),
    );
    out.push((bin, json!({
        "kind": "app_log", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "0",
        "source_type": "APP/PROC/WORKER", "log_type": "ERR",
        "message_base64": "Zm///go=", "message_invalid_utf8": true
    })));

    // 6. A legacy subscriber's view: tags only in deprecated_tags (text, integer, decimal).
    let mut legacy = env(
        APP,
        "0",
        &[],
        log_msg(
            "Starting app with guid cdabc600-0b73-48e1-b7d2-26af2c63f933",
            log::Type::Out,
        ),
    );
    for (k, v) in [
        ("source_type", value::Data::Text("API".into())),
        ("origin", value::Data::Text("cloud_controller".into())),
        ("index", value::Data::Integer(3)),
        ("weight", value::Data::Decimal(0.5)),
    ] {
        legacy
            .deprecated_tags
            .insert(k.into(), Value { data: Some(v) });
    }
    let id = firehose_event_id(&legacy);
    out.push((legacy, json!({
        "kind": "api", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "0",
        "deprecated_tags": {"source_type": {"text": "API"}, "origin": {"text": "cloud_controller"},
                            "index": {"integer": "3"}, "weight": {"decimal": 0.5}},
        "log_type": "OUT",
        "message": "Starting app with guid cdabc600-0b73-48e1-b7d2-26af2c63f933",
        "eventVersion": "1.1", "eventTime": TIME, "eventID": id, "eventSource": "cloud_controller",
        "eventName": "audit.app.start", "eventType": "CfApiCall", "userIdentity": {"type": "unknown"},
        "resources": [{"type": "app", "guid": APP}], "requestParameters": null, "readOnly": false,
        "sources": ["firehose"], "sourceEvent": "firehose"
    })));

    // 7. Doppler's egress drop counter (reference §4.3).
    let counter = env(
        "doppler",
        "d-1",
        &[
            ("deployment", "cf"),
            ("direction", "egress"),
            ("job", "doppler"),
            ("origin", "loggregator.doppler"),
            ("metric_version", "2.0"),
        ],
        envelope::Message::Counter(Counter {
            name: "dropped".into(),
            delta: 9,
            total: 18_446_744_073_709_551_615,
        }),
    );
    out.push((counter, json!({
        "kind": "metric", "time": TIME, "foundation": FOUNDATION, "source_id": "doppler", "instance_id": "d-1",
        "origin": "loggregator.doppler", "deployment": "cf", "job": "doppler",
        "tags": {"direction": "egress", "metric_version": "2.0"},
        "metric_type": "counter", "name": "dropped", "delta": 9, "total": 18_446_744_073_709_551_615u64
    })));

    // 8. A container metric (five keys) with app tags.
    let mut metrics = BTreeMap::new();
    for (k, unit, v) in [
        ("cpu", "percentage", 12.5),
        ("memory", "bytes", 268435456.0),
        ("disk", "bytes", 134217728.0),
        ("memory_quota", "bytes", 1073741824.0),
        ("disk_quota", "bytes", 1073741824.0),
    ] {
        metrics.insert(
            k.to_string(),
            GaugeValue {
                unit: unit.into(),
                value: v,
            },
        );
    }
    let gauge = env(
        APP,
        "1",
        &[
            ("app_id", APP),
            ("app_name", "spring-music"),
            ("origin", "rep"),
        ],
        envelope::Message::Gauge(Gauge { metrics }),
    );
    let metrics_json = json!({
        "cpu": {"unit": "percentage", "value": 12.5}, "disk": {"unit": "bytes", "value": 134217728.0},
        "disk_quota": {"unit": "bytes", "value": 1073741824.0}, "memory": {"unit": "bytes", "value": 268435456.0},
        "memory_quota": {"unit": "bytes", "value": 1073741824.0}
    });
    out.push((gauge, json!({
        "kind": "metric", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "1",
        "origin": "rep", "app": app_named, "metric_type": "gauge", "metrics": metrics_json
    })));

    // 9. A gauge with values JSON numbers cannot hold: written as protojson does.
    let mut odd = BTreeMap::new();
    odd.insert(
        "nan".to_string(),
        GaugeValue {
            unit: "".into(),
            value: f64::NAN,
        },
    );
    odd.insert(
        "inf".to_string(),
        GaugeValue {
            unit: "ms".into(),
            value: f64::NEG_INFINITY,
        },
    );
    odd.insert(
        "zero".to_string(),
        GaugeValue {
            unit: "total".into(),
            value: 0.0,
        },
    );
    let odd_gauge = env(
        "reverse_log_proxy",
        "r-0",
        &[],
        envelope::Message::Gauge(Gauge { metrics: odd }),
    );
    let odd_json = json!({"inf": {"unit": "ms", "value": "-Infinity"}, "nan": {"unit": "", "value": "NaN"}, "zero": {"unit": "total", "value": 0.0}});
    out.push((odd_gauge, json!({
        "kind": "metric", "time": TIME, "foundation": FOUNDATION, "source_id": "reverse_log_proxy", "instance_id": "r-0",
        "metric_type": "gauge", "metrics": odd_json
    })));

    // 10. gorouter's HTTP timer.
    let timer = env(
        APP,
        "0",
        &[
            ("method", "GET"),
            ("peer_type", "Client"),
            ("status_code", "200"),
            ("uri", "https://spring-music.apps.example.com/"),
        ],
        envelope::Message::Timer(Timer {
            name: "http".into(),
            start: T - 4_000_000,
            stop: T,
        }),
    );
    out.push((timer, json!({
        "kind": "metric", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "0",
        "tags": {"method": "GET", "peer_type": "Client", "status_code": "200", "uri": "https://spring-music.apps.example.com/"},
        "metric_type": "timer", "name": "http", "start_ns": T - 4_000_000, "stop_ns": T
    })));

    // 11. Traffic Controller's slow-consumer event.
    let event = env(
        "trafficcontroller",
        "tc-0",
        &[("origin", "loggregator.trafficcontroller")],
        envelope::Message::Event(Event {
            title: "Traffic Controller has disconnected slow consumer".into(),
            body: "Remote Address: 10.0.4.2:44412".into(),
        }),
    );
    out.push((event, json!({
        "kind": "event", "time": TIME, "foundation": FOUNDATION, "source_id": "trafficcontroller", "instance_id": "tc-0",
        "origin": "loggregator.trafficcontroller",
        "title": "Traffic Controller has disconnected slow consumer", "body": "Remote Address: 10.0.4.2:44412"
    })));

    // 12. An envelope with no message at all (the gateway's "empty envelope"): kept as an event.
    let empty = Envelope {
        timestamp: 0,
        ..Default::default()
    };
    out.push((empty, json!({
        "kind": "event", "time": "1970-01-01T00:00:00.000000000Z", "foundation": FOUNDATION, "source_id": "", "instance_id": ""
    })));

    // 13. A log type Loggregator does not name (kept as its number), promoted
    // tags with empty values (kept, even ""), and a tag key in Unicode.
    let odd_log = env(
        APP,
        "3",
        &[("job", ""), ("space_name", ""), ("zone/ü", "é")],
        envelope::Message::Log(Log {
            payload: Bytes::from_static("ça va".as_bytes()),
            r#type: 7,
        }),
    );
    out.push((odd_log, json!({
        "kind": "app_log", "time": TIME, "foundation": FOUNDATION, "source_id": APP, "instance_id": "3",
        "job": "", "space": {"name": ""}, "tags": {"zone/ü": "é"}, "log_type": 7, "message": "ça va"
    })));
    out
}

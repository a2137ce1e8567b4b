//! The record says every fact of its envelope once, and losslessly: random
//! envelopes (every message kind and none, any tags including the promoted
//! ones with empty values, deprecated tags of every kind, payloads that are
//! not UTF-8, any 64-bit numbers, NaN and infinities, any log type) are
//! encoded by prost, read as the nozzle reads them, classified and written
//! as record JSON; the envelope is rebuilt from that JSON alone, by the
//! mapping the schemas document (written out here, not by calling the
//! nozzle), and compared with prost's decode of the same bytes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine as _;
use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::{
    Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer, Value, envelope, value,
};
use cf_audit_nozzle::record::{AppNames, EncodeContext, EnvelopeView, Number, Position, Record};
use common::schema;
use proptest::prelude::*;
use prost::Message;
use serde_json::{Value as Json, json};

/// The tags written as readable fields, and the places' members.
const PLAIN: [&str; 4] = ["origin", "source_type", "deployment", "job"];
const PLACES: [(&str, &str, &str); 3] = [
    ("app", "app_id", "app_name"),
    ("space", "space_id", "space_name"),
    ("org", "organization_id", "organization_name"),
];

// ---- the mapping back, from the record JSON alone ----

fn string(v: &Json) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a string"))
        .to_string()
}

/// A double as protojson writes it: a number, or "NaN", "Infinity", "-Infinity".
fn double(v: &Json) -> f64 {
    match v {
        Json::Number(n) => n.as_f64().unwrap(),
        Json::String(s) if s == "NaN" => f64::NAN,
        Json::String(s) if s == "Infinity" => f64::INFINITY,
        Json::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
        other => panic!("{other} is not a double"),
    }
}

/// The envelope a record describes.
fn rebuild(r: &Json) -> Envelope {
    let time = chrono::DateTime::parse_from_rfc3339(r["time"].as_str().unwrap()).unwrap();
    let mut tags = BTreeMap::new();
    for key in PLAIN {
        if let Some(v) = r.get(key) {
            tags.insert(key.to_string(), string(v));
        }
    }
    let enriched: Vec<&str> = r
        .get("enriched")
        .map(|e| {
            e.as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_str().unwrap())
                .collect()
        })
        .unwrap_or_default();
    for (field, guid, name) in PLACES {
        let Some(place) = r.get(field) else { continue };
        for (member, tag) in [("guid", guid), ("name", name)] {
            if let Some(v) = place.get(member)
                && !enriched.contains(&format!("{field}.{member}").as_str())
            {
                tags.insert(tag.to_string(), string(v));
            }
        }
    }
    for (k, v) in r
        .get("tags")
        .and_then(Json::as_object)
        .into_iter()
        .flatten()
    {
        assert!(
            tags.insert(k.clone(), string(v)).is_none(),
            "tag {k} twice in {r}"
        );
    }
    let deprecated_tags = r
        .get("deprecated_tags")
        .and_then(Json::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let data = if let Some(t) = v.get("text") {
                Some(value::Data::Text(string(t)))
            } else if let Some(i) = v.get("integer") {
                Some(value::Data::Integer(string(i).parse().unwrap()))
            } else {
                v.get("decimal").map(|d| value::Data::Decimal(double(d)))
            };
            (k.clone(), Value { data })
        })
        .collect();
    let message = if let Some(ty) = r.get("log_type") {
        let payload = match (r.get("message"), r.get("message_base64")) {
            (Some(m), None) => m.as_str().unwrap().as_bytes().to_vec(),
            (None, Some(b)) => {
                assert_eq!(r["message_invalid_utf8"], true);
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_str().unwrap())
                    .unwrap()
            }
            other => panic!("a log record needs message or message_base64: {other:?}"),
        };
        let r#type = match ty {
            Json::String(s) if s == "OUT" => 0,
            Json::String(s) if s == "ERR" => 1,
            n => i32::try_from(n.as_i64().unwrap()).unwrap(),
        };
        Some(envelope::Message::Log(Log {
            payload: payload.into(),
            r#type,
        }))
    } else if let Some(t) = r.get("metric_type") {
        Some(match t.as_str().unwrap() {
            "counter" => envelope::Message::Counter(Counter {
                name: string(&r["name"]),
                delta: r["delta"].as_u64().unwrap(),
                total: r["total"].as_u64().unwrap(),
            }),
            "gauge" => envelope::Message::Gauge(Gauge {
                metrics: r["metrics"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(name, m)| {
                        let unit = string(&m["unit"]);
                        let value = double(&m["value"]);
                        (name.clone(), GaugeValue { unit, value })
                    })
                    .collect(),
            }),
            "timer" => envelope::Message::Timer(Timer {
                name: string(&r["name"]),
                start: r["start_ns"].as_i64().unwrap(),
                stop: r["stop_ns"].as_i64().unwrap(),
            }),
            other => panic!("metric_type {other}"),
        })
    } else {
        r.get("title").map(|title| {
            envelope::Message::Event(Event {
                title: string(title),
                body: string(&r["body"]),
            })
        })
    };
    Envelope {
        timestamp: time.timestamp_nanos_opt().unwrap(),
        source_id: string(&r["source_id"]),
        instance_id: string(&r["instance_id"]),
        deprecated_tags,
        tags,
        message,
    }
}

/// Every NaN as the one NaN JSON can say (its payload bits are not kept by
/// protojson either), so that prost's encodings compare.
fn one_nan(mut e: Envelope) -> Vec<u8> {
    let fix = |v: &mut f64| {
        if v.is_nan() {
            *v = f64::NAN;
        }
    };
    for v in e.deprecated_tags.values_mut() {
        if let Some(value::Data::Decimal(d)) = &mut v.data {
            fix(d);
        }
    }
    if let Some(envelope::Message::Gauge(g)) = &mut e.message {
        g.metrics.values_mut().for_each(|m| fix(&mut m.value));
    }
    e.encode_to_vec()
}

/// The protojson copy of an envelope as records carried it before issue 19
/// (EmitUnpopulated, 64-bit integers as strings, payload base64, a log type
/// other than ERR written OUT), built here from prost's struct.
fn protojson(e: &Envelope) -> Json {
    let dbl = |d: f64| {
        if d.is_nan() {
            json!("NaN")
        } else if d.is_infinite() {
            json!(if d > 0.0 { "Infinity" } else { "-Infinity" })
        } else {
            json!(d)
        }
    };
    let deprecated: serde_json::Map<String, Json> = e
        .deprecated_tags
        .iter()
        .map(|(k, v)| {
            let v = match &v.data {
                Some(value::Data::Text(t)) => json!({"text": t}),
                Some(value::Data::Integer(i)) => json!({"integer": i.to_string()}),
                Some(value::Data::Decimal(d)) => json!({"decimal": dbl(*d)}),
                None => json!({}),
            };
            (k.clone(), v)
        })
        .collect();
    let mut out = json!({
        "timestamp": e.timestamp.to_string(), "source_id": e.source_id, "instance_id": e.instance_id,
        "deprecated_tags": deprecated, "tags": e.tags,
    });
    let (key, message) = match &e.message {
        None => return out,
        Some(envelope::Message::Log(l)) => (
            "log",
            json!({
                "payload": base64::engine::general_purpose::STANDARD.encode(&l.payload),
                "type": if l.r#type == 1 { "ERR" } else { "OUT" },
            }),
        ),
        Some(envelope::Message::Counter(c)) => (
            "counter",
            json!({"name": c.name, "delta": c.delta.to_string(), "total": c.total.to_string()}),
        ),
        Some(envelope::Message::Gauge(g)) => {
            let metrics: serde_json::Map<String, Json> = g
                .metrics
                .iter()
                .map(|(k, m)| (k.clone(), json!({"unit": m.unit, "value": dbl(m.value)})))
                .collect();
            ("gauge", json!({ "metrics": metrics }))
        }
        Some(envelope::Message::Timer(t)) => (
            "timer",
            json!({"name": t.name, "start": t.start.to_string(), "stop": t.stop.to_string()}),
        ),
        Some(envelope::Message::Event(ev)) => {
            ("event", json!({"title": ev.title, "body": ev.body}))
        }
    };
    out[key] = message;
    out
}

// ---- random envelopes ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("API".to_string()),
        "[a-c]{1,2}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn tag_key() -> impl Strategy<Value = String> {
    const KNOWN: [&str; 15] = [
        "origin",
        "source_type",
        "deployment",
        "job",
        "app_id",
        "app_name",
        "space_id",
        "space_name",
        "organization_id",
        "organization_name",
        "tags",
        "envelope",
        "kind",
        "message",
        "ü/é",
    ];
    prop_oneof![
        3 => proptest::sample::select(&KNOWN[..]).prop_map(str::to_string),
        1 => text(),
    ]
}

fn any_double() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<f64>(),
        Just(f64::NAN),
        Just(-f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
    ]
}

fn deprecated_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value { data: None }),
        text().prop_map(|t| Value {
            data: Some(value::Data::Text(t))
        }),
        any::<i64>().prop_map(|i| Value {
            data: Some(value::Data::Integer(i))
        }),
        any_double().prop_map(|d| Value {
            data: Some(value::Data::Decimal(d))
        }),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        text().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..24),
        Just(vec![0x66, 0x6f, 0xff, 0xfe, 0x0a]),
    ]
}

fn message() -> impl Strategy<Value = Option<envelope::Message>> {
    let log_type = prop_oneof![3 => 0..2i32, 1 => any::<i32>()];
    prop_oneof![
        Just(None),
        (payload(), log_type).prop_map(|(p, t)| Some(envelope::Message::Log(Log {
            payload: p.into(),
            r#type: t
        }))),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(name, delta, total)| Some(
            envelope::Message::Counter(Counter { name, delta, total })
        )),
        proptest::collection::btree_map(text(), (text(), any_double()), 0..4).prop_map(|m| Some(
            envelope::Message::Gauge(Gauge {
                metrics: m
                    .into_iter()
                    .map(|(k, (unit, value))| (k, GaugeValue { unit, value }))
                    .collect()
            })
        )),
        (text(), any::<i64>(), any::<i64>()).prop_map(|(name, start, stop)| Some(
            envelope::Message::Timer(Timer { name, start, stop })
        )),
        (text(), text())
            .prop_map(|(title, body)| Some(envelope::Message::Event(Event { title, body }))),
    ]
}

fn prost_envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<i64>(),
        text(),
        text(),
        proptest::collection::btree_map(tag_key(), text(), 0..8),
        proptest::collection::btree_map(tag_key(), deprecated_value(), 0..4),
        message(),
    )
        .prop_map(
            |(timestamp, source_id, instance_id, tags, deprecated_tags, message)| Envelope {
                timestamp,
                source_id,
                instance_id,
                deprecated_tags,
                tags,
                message,
            },
        )
}

fn names() -> impl Strategy<Value = Option<AppNames>> {
    let member = || proptest::option::of(text());
    proptest::option::of(
        (text(), member(), member(), member(), member(), member()).prop_map(
            |(app_guid, app_name, space_guid, space_name, org_guid, org_name)| AppNames {
                app_guid,
                app_name,
                space_guid,
                space_name,
                org_guid,
                org_name,
            },
        ),
    )
}

/// The envelope's bytes read as the nozzle reads them, classified.
fn record_of(bytes: &[u8]) -> Record {
    let view = EnvelopeView::from_wire(bytes.to_vec().into()).expect("prost's bytes are valid");
    let mut record = classify(view);
    // As the router numbers it: the number is the nozzle's, not the envelope's.
    record.number = Some(Number {
        boot: "0-20261202T193322Z-9f3a2c1b".into(),
        position: Position::Seq(17),
    });
    record
}

fn to_json(record: &Record, ctx: &EncodeContext) -> Json {
    serde_json::from_str(&record.to_json(ctx)).expect("record JSON parses")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_envelope_is_rebuilt_from_its_record_alone(e in prost_envelope(), names in names()) {
        let bytes = e.encode_to_vec();
        let decoded = Envelope::decode(bytes.as_slice()).unwrap();
        let mut record = record_of(&bytes);
        record.names = names.clone().map(Arc::new);
        let json = to_json(&record, &EncodeContext::new("f"));
        prop_assert_eq!(one_nan(rebuild(&json)), one_nan(decoded.clone()), "record {}", json);
        prop_assert!(json.get("envelope").is_none());
        schema::assert_valid_record(&json);

        // Cloud Controller's names fill exactly the members no tag gave, and say so.
        let mut listed = Vec::new();
        for (field, guid, name) in PLACES {
            for (m, (member, tag)) in [("guid", guid), ("name", name)].into_iter().enumerate() {
                let cc = names.as_ref().and_then(|n| match (field, m) {
                    ("app", 0) => Some(n.app_guid.clone()),
                    ("app", _) => n.app_name.clone(),
                    ("space", 0) => n.space_guid.clone(),
                    ("space", _) => n.space_name.clone(),
                    (_, 0) => n.org_guid.clone(),
                    _ => n.org_name.clone(),
                });
                let got = json.get(field).and_then(|p| p.get(member));
                match (decoded.tags.get(tag), cc) {
                    (Some(t), _) => prop_assert_eq!(got, Some(&json!(t))),
                    (None, Some(c)) => {
                        prop_assert_eq!(got, Some(&json!(c)));
                        listed.push(format!("{field}.{member}"));
                    }
                    (None, None) => prop_assert_eq!(got, None),
                }
            }
        }
        match json.get("enriched") {
            None => prop_assert!(listed.is_empty()),
            Some(e) => prop_assert_eq!(e, &json!(listed)),
        }
    }

    #[test]
    fn with_the_copy_on_the_record_is_the_same_and_the_copy_is_last(e in prost_envelope()) {
        let bytes = e.encode_to_vec();
        let record = record_of(&bytes);
        let off = record.to_json(&EncodeContext::new("f"));
        let on = record.to_json(&EncodeContext { record_envelope: true, ..EncodeContext::new("f") });
        let head = &off[..off.len() - 1];
        prop_assert!(on.starts_with(head) && on[head.len()..].starts_with(",\"envelope\":"), "{}", on);
        let on: Json = serde_json::from_str(&on).unwrap();
        let decoded = Envelope::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(&on["envelope"], &protojson(&decoded));
        schema::assert_valid_record(&on);
    }
}

#[test]
fn names_from_cloud_controller_are_marked_and_left_out_of_the_rebuild() {
    let e = Envelope {
        timestamp: 1_700_000_000_123_456_789,
        source_id: "cdabc600-0b73-48e1-b7d2-26af2c63f933".into(),
        instance_id: "0".into(),
        tags: [
            ("app_id", "cdabc600-0b73-48e1-b7d2-26af2c63f933"),
            ("space_name", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        message: Some(envelope::Message::Log(Log {
            payload: "hi".into(),
            r#type: 0,
        })),
        ..Default::default()
    };
    let bytes = e.encode_to_vec();
    let mut record = record_of(&bytes);
    record.names = Some(Arc::new(AppNames {
        app_guid: "cdabc600-0b73-48e1-b7d2-26af2c63f933".into(),
        app_name: Some("spring-music".into()),
        space_guid: Some("7a1c3a55".into()),
        space_name: Some("dev".into()),
        org_guid: None,
        org_name: Some("acme".into()),
    }));
    let json = to_json(&record, &EncodeContext::new("f"));
    assert_eq!(
        json["app"],
        json!({"guid": "cdabc600-0b73-48e1-b7d2-26af2c63f933", "name": "spring-music"})
    );
    // The empty space_name tag is the envelope's: it stays, not filled in.
    assert_eq!(json["space"], json!({"guid": "7a1c3a55", "name": ""}));
    assert_eq!(json["org"], json!({"name": "acme"}));
    assert_eq!(
        json["enriched"],
        json!(["app.name", "space.guid", "org.name"])
    );
    assert_eq!(rebuild(&json), e);
    schema::assert_valid_record(&json);
}

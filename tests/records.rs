//! Golden envelopes of every type, through a test RLP and the real pipeline,
//! to the exact records in the files (DESIGN.md §4 shapes).

mod common;

use std::collections::BTreeMap;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::{Counter, Envelope, Value, envelope, log, value};
use cf_audit_nozzle::record::{AppNames, EncodeContext, firehose_event_id};
use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed};
use common::*;
use serde_json::json;

use common::goldens::*;

#[tokio::test]
async fn golden_envelopes_become_exact_records_in_the_files() {
    let goldens = goldens();
    let envelopes: Vec<Envelope> = goldens.iter().map(|(e, _)| e.clone()).collect();
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(envelopes),
            batch_size: 5,
            ..Default::default()
        },
    )
    .await;
    let (summary, _dir) = receive(&emu, &pki, goldens.len() as u64).await;

    let mut expected: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (_, want) in &goldens {
        expected
            .entry(want["kind"].as_str().unwrap().to_string())
            .or_default()
            .push(want.clone());
    }
    let got = records_by_kind(&summary);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    let boot = got["api"][0]["boot"].clone();
    assert!(boot.as_str().unwrap().starts_with("3-"), "{boot}");
    for (kind, want) in &expected {
        assert_eq!(got[kind].len(), want.len(), "{kind}");
        for (i, (g, w)) in got[kind].iter().zip(want).enumerate() {
            // The number: the run's boot, and the place in the kind (one
            // source, in order); the rest is the golden record.
            schema::assert_valid_record(g);
            let mut g = g.clone();
            let fields = g.as_object_mut().unwrap();
            assert_eq!(fields.remove("boot"), Some(boot.clone()), "{kind} {i}");
            assert_eq!(fields.remove("seq"), Some(json!(i)), "{kind} {i}");
            let g = &g;
            assert_eq!(g, w, "\n got: {g}\nwant: {w}");
        }
    }
}

#[test]
fn a_record_encodes_to_exact_bytes() {
    let counter = Envelope {
        timestamp: 1_700_000_000_000_000_000,
        source_id: "doppler".into(),
        instance_id: "idx-1".into(),
        deprecated_tags: Default::default(),
        tags: tags(&[
            ("deployment", "cf"),
            ("direction", "egress"),
            ("job", "doppler"),
            ("origin", "loggregator.doppler"),
        ]),
        message: Some(envelope::Message::Counter(Counter {
            name: "dropped".into(),
            delta: 5,
            total: 1462,
        })),
    };
    let record = classify(counter);
    let fields = r#"{"kind":"metric","time":"2023-11-14T22:13:20.000000000Z","foundation":"test","source_id":"doppler","instance_id":"idx-1","origin":"loggregator.doppler","deployment":"cf","job":"doppler","tags":{"direction":"egress"},"metric_type":"counter","name":"dropped","delta":5,"total":1462"#;
    assert_eq!(
        record.to_json(&EncodeContext::new("test")),
        format!("{fields}}}")
    );
    // --record-envelope on: the same fields, and the protojson copy records
    // always carried before (byte for byte as before issue 19) last.
    let copy = r#""envelope":{"timestamp":"1700000000000000000","source_id":"doppler","instance_id":"idx-1","deprecated_tags":{},"tags":{"deployment":"cf","direction":"egress","job":"doppler","origin":"loggregator.doppler"},"counter":{"name":"dropped","delta":"5","total":"1462"}}"#;
    let with_copy = EncodeContext {
        record_envelope: true,
        ..EncodeContext::new("test")
    };
    assert_eq!(record.to_json(&with_copy), format!("{fields},{copy}}}"));
}

#[test]
fn every_part_of_an_envelope_record_in_order_with_names_from_cloud_controller() {
    let mut envelope = Envelope {
        timestamp: T,
        source_id: "A".into(),
        instance_id: "0".into(),
        deprecated_tags: Default::default(),
        tags: tags(&[
            ("app_id", "A"),
            ("space_id", "S"),
            ("organization_name", "acme"),
            ("origin", "rep"),
            ("source_type", "APP/PROC/WEB"),
            ("index", "0"),
        ]),
        message: Some(log_msg("boom", log::Type::Err)),
    };
    envelope.deprecated_tags.insert(
        "legacy".into(),
        Value {
            data: Some(value::Data::Integer(3)),
        },
    );
    envelope
        .deprecated_tags
        .insert("nada".into(), Value { data: None });
    let mut record = classify(envelope);
    record.names = Some(std::sync::Arc::new(AppNames {
        app_guid: "A".into(),
        app_name: Some("music".into()),
        space_guid: Some("S2".into()),
        space_name: Some("dev".into()),
        org_guid: Some("O".into()),
        org_name: Some("not-acme".into()),
    }));
    // Tags win over Cloud Controller's names; what CC filled in is listed.
    assert_eq!(
        record.to_json(&EncodeContext::new("test")),
        concat!(
            r#"{"kind":"app_log","time":"2023-11-14T22:13:20.123456789Z","foundation":"test","source_id":"A","instance_id":"0","#,
            r#""origin":"rep","source_type":"APP/PROC/WEB","app":{"guid":"A","name":"music"},"space":{"guid":"S","name":"dev"},"#,
            r#""org":{"guid":"O","name":"acme"},"enriched":["app.name","space.name","org.guid"],"tags":{"index":"0"},"#,
            r#""deprecated_tags":{"legacy":{"integer":"3"},"nada":{}},"log_type":"ERR","message":"boom"}"#
        )
    );
    let mut numbered: serde_json::Value =
        serde_json::from_str(&record.to_json(&EncodeContext::new("t"))).unwrap();
    numbered["boot"] = json!("0-20261202T193322Z-9f3a2c1b");
    numbered["seq"] = json!(0);
    schema::assert_valid_record(&numbered);
}

#[test]
fn the_event_id_of_a_log_line_is_stable_and_shaped_like_a_guid() {
    let (api, _) = goldens().remove(0);
    let id = firehose_event_id(&api);
    assert_eq!(id, firehose_event_id(&api.clone()));
    let parts: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12]);
    let mut other = api.clone();
    other.timestamp += 1;
    assert_ne!(id, firehose_event_id(&other));
}

#[test]
fn the_schemas_refuse_what_the_mapping_does_not_write() {
    let numbered = |mut r: serde_json::Value| {
        r["boot"] = json!("0-20261202T193322Z-9f3a2c1b");
        r["seq"] = json!(7);
        r
    };
    let app_log = numbered(goldens().remove(2).1);
    assert!(schema::violations("app-log.schema.json", &app_log).is_empty());
    // Every record the router accepted is numbered.
    let mut no_seq = app_log.clone();
    no_seq.as_object_mut().unwrap().remove("seq");
    assert!(!schema::violations("app-log.schema.json", &no_seq).is_empty());
    // A readable tag repeated under `tags`, and the removed copy's sibling fields.
    let mut repeated = app_log.clone();
    repeated["tags"]["app_id"] = json!(APP);
    assert!(!schema::violations("app-log.schema.json", &repeated).is_empty());
    let mut old_timer = numbered(goldens().remove(9).1);
    assert!(schema::violations("metric.schema.json", &old_timer).is_empty());
    old_timer["duration_ns"] = json!(4_000_000);
    assert!(!schema::violations("metric.schema.json", &old_timer).is_empty());
    let mut both = app_log;
    both["message_base64"] = json!("Zm8=");
    assert!(!schema::violations("app-log.schema.json", &both).is_empty());
    let declaration = json!({"kind": "metric", "boot": "0-20261202T193322Z-9f3a2c1b", "last_seq": 41, "time": TIME, "foundation": "f"});
    schema::assert_valid_record(&declaration);
    let mut with_seq = declaration;
    with_seq["seq"] = json!(3);
    assert!(!schema::violations("declaration.schema.json", &with_seq).is_empty());
}

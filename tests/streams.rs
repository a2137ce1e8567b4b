//! Envelope streams on the gRPC source: the subscription the RLP receives
//! names exactly the configured source ids, types, shard and deterministic
//! name (server-side selection, never subscribe-all-then-filter).

mod common;

use cf_audit_nozzle::proto::selector::Message as Sel;
use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed};
use cf_audit_nozzle::source::{EnvelopeType, Streams};
use common::*;

#[tokio::test]
async fn the_rlp_gets_one_selector_per_type_and_source_id_with_shard_and_deterministic_name() {
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(vec![log_envelope(1, "app-1", "x", &[])]),
            ..Default::default()
        },
    )
    .await;
    let mut cfg = rlp_config(&emu, &pki, "unused");
    cfg.streams = Streams {
        source_ids: vec!["app-1".into(), "doppler".into()],
        types: vec![EnvelopeType::Log, EnvelopeType::Counter],
        shard_id: "audit".into(),
        deterministic_name: "by-name".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    run_until(&file_pipeline(dir.path()), vec![cfg], |s| s.envelopes == 1).await;

    let req = emu.requests().remove(0);
    assert_eq!(req.shard_id, "audit");
    assert_eq!(req.deterministic_name, "by-name");
    assert!(req.use_preferred_tags);
    let selectors: Vec<(String, &str)> = req
        .selectors
        .iter()
        .map(|s| {
            let kind = match s.message.as_ref().unwrap() {
                Sel::Log(_) => "log",
                Sel::Counter(c) => {
                    assert_eq!(c.name, "");
                    "counter"
                }
                other => panic!("unexpected selector {other:?}"),
            };
            (s.source_id.clone(), kind)
        })
        .collect();
    assert_eq!(
        selectors,
        [
            ("app-1".to_string(), "log"),
            ("app-1".to_string(), "counter"),
            ("doppler".to_string(), "log"),
            ("doppler".to_string(), "counter"),
        ]
    );
}

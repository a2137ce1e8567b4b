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
        counter_names: vec!["dropped".into()],
        gauge_names: Vec::new(),
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
                    assert_eq!(c.name, "dropped");
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

/// An RLP at its stream limit is not hammered: the source waits at least
/// 10 s (whatever its backoff step) and says why.
#[tokio::test]
async fn the_rlp_stream_limit_backs_off_at_least_ten_seconds_and_says_so() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            max_streams: Some(0),
            ..Default::default()
        },
    )
    .await;
    let cfg = rlp_config(&emu, &pki, "s");
    let dir = tempfile::tempdir().unwrap();
    let pipeline = cf_audit_nozzle::pipeline::Pipeline::start(&file_pipeline(dir.path())).unwrap();
    let status = Arc::new(cf_audit_nozzle::source::SourceStatus::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(cf_audit_nozzle::source::rlp::run(
        cfg,
        pipeline.router(),
        Arc::clone(&status),
        stop.clone(),
    ));
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while status.backoff_ms.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < until, "no refusal seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let s = status.snapshot();
    assert!(s.backoff_ms >= 10_000, "{s:?}");
    assert_eq!(
        (s.attempts, s.failures, s.disconnects["refused"]),
        (1, 1, 1)
    );
    let error = s.last_error.unwrap();
    assert!(
        error.contains("ResourceExhausted: unable to create stream, max egress streams reached: 0")
            && error.contains("stream limit"),
        "{error}"
    );
    stop.cancel();
    task.await.unwrap();
    pipeline.finish(Duration::from_secs(5)).await;
}

/// An RLP that calls the request invalid gets a message naming it a
/// configuration error (and the source keeps running, with backoff).
#[tokio::test]
async fn an_invalid_subscription_is_reported_as_a_configuration_error() {
    use std::sync::Arc;
    use std::time::Duration;

    let pki = pki();
    let emu = emulator(&pki, EmulatorConfig::default()).await;
    let mut cfg = rlp_config(&emu, &pki, "s");
    cfg.streams.types.clear();
    let dir = tempfile::tempdir().unwrap();
    let pipeline = cf_audit_nozzle::pipeline::Pipeline::start(&file_pipeline(dir.path())).unwrap();
    let status = Arc::new(cf_audit_nozzle::source::SourceStatus::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(cf_audit_nozzle::source::rlp::run(
        cfg,
        pipeline.router(),
        Arc::clone(&status),
        stop.clone(),
    ));
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while status.snapshot().failures < 2 {
        assert!(tokio::time::Instant::now() < until, "no refusal seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let error = status.snapshot().last_error.unwrap();
    assert!(
        error.contains("InvalidArgument: Selectors cannot be empty (the subscription request is invalid: a configuration error"),
        "{error}"
    );
    stop.cancel();
    task.await.unwrap();
    pipeline.finish(Duration::from_secs(5)).await;
}

//! `/health` and `/metrics` of a running nozzle: health follows the RLP going
//! away and coming back; the metrics parse as Prometheus text and carry the
//! exact counts; `/metrics` can require basic auth.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cf_audit_nozzle::alert::AlertConfig;
use cf_audit_nozzle::pipeline::{self, RunConfig};
use cf_audit_nozzle::source::emulator::EmulatorConfig;
use cf_audit_nozzle::telemetry::{BasicAuth, TelemetryConfig};
use common::*;
use tokio_util::sync::CancellationToken;

fn free_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Envelopes in `count`, in streams that end every 3 batches, so the nozzle
/// reconnects often while the RLP is up.
fn feed(seed: u64, count: u64) -> EmulatorConfig {
    EmulatorConfig {
        feed: cf_audit_nozzle::source::emulator::Feed::Generated { seed },
        count: Some(count),
        end_stream_after: Some(3),
        ..EmulatorConfig::default()
    }
}

async fn get(client: &reqwest::Client, url: &str) -> (u16, String) {
    let r = client.get(url).send().await.expect("telemetry answers");
    let code = r.status().as_u16();
    (code, r.text().await.unwrap())
}

/// Polls `url` until it answers `code` (the test fails after 30 s).
async fn wait_for_status(client: &reqwest::Client, url: &str, code: u16) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (c, body) = get(client, url).await;
        if c == code {
            return serde_json::from_str(&body).expect("health is JSON");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {code}, last: {c} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every sample of a scrape as `name{labels} -> value` (labels sorted).
fn scrape(text: &str) -> HashMap<String, f64> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    parsed
        .samples
        .into_iter()
        .filter_map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            Some((format!("{}{{{}}}", s.metric, s.labels), v))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_rlp_and_metrics_carry_exact_counts() {
    let pki = pki();
    let first = emulator(&pki, feed(1, 3000)).await;
    let rlp_addr = first.addr;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let cfg = RunConfig {
        source: pipeline::SourceConfig::Rlp(Box::new(rlp_config(&first, &pki, "telemetry"))),
        pipeline: file_pipeline(dir.path()),
        shutdown_timeout: Duration::from_secs(10),
        telemetry: Some(TelemetryConfig {
            addr,
            addr_is_default: false,
            metrics_auth: Some(BasicAuth {
                user: "prom".into(),
                password: "s3cret:with:colons".into(),
            }),
            disconnect_threshold: Duration::from_secs(1),
        }),
        alerts: AlertConfig::default(),
        warnings: vec!["TLS verification is off (test)".into()],
        audit: Default::default(),
    };
    let stop = CancellationToken::new();
    let nozzle = tokio::spawn(pipeline::run(cfg, stop.clone()));
    let client = reqwest::Client::new();
    let health = format!("http://{addr}/health");

    // Up: healthy while the RLP serves (streams end and reconnect within ms).
    let body = wait_for_status(&client, &health, 200).await;
    assert_eq!(body["status"], "ok");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while first.envelopes_sent() < 3000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first RLP sent {}",
            first.envelopes_sent()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(body["warnings"][0], "TLS verification is off (test)");
    assert_eq!(body["sources"][0]["name"], "rlp");
    assert_eq!(
        body["sinks"].as_array().unwrap().len(),
        4,
        "one file sink per kind"
    );

    // Gone: 503 once disconnected for more than the threshold, naming why.
    first.stop().await;
    let body = wait_for_status(&client, &health, 503).await;
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["sources"][0]["connected"], false);
    let problem = body["problems"][0].as_str().unwrap();
    assert!(
        problem.starts_with("source rlp has been disconnected for "),
        "{problem}"
    );
    assert!(body["sources"][0]["last_error"].is_string(), "{body}");

    // Back on the same address: healthy again, and it delivers the new feed.
    let second = cf_audit_nozzle::source::emulator::Emulator::start(rlp_addr, &pki, feed(2, 3000))
        .await
        .expect("restart the RLP on its address");
    let body = wait_for_status(&client, &health, 200).await;
    assert_eq!(body["status"], "ok");

    // Metrics: unauthorised without the credentials.
    let metrics = format!("http://{addr}/metrics");
    let (code, _) = get(&client, &metrics).await;
    assert_eq!(code, 401);

    // Once all 6,000 envelopes are in and written (the file sink holds them
    // in flight until its files complete), every count is exact.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        let r = client
            .get(&metrics)
            .basic_auth("prom", Some("s3cret:with:colons"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let m = scrape(&r.text().await.unwrap());
        let queued: f64 = m
            .iter()
            .filter(|(k, _)| k.starts_with("cf_nozzle_sink_queued{"))
            .map(|(_, v)| v)
            .sum();
        if m["cf_nozzle_ingress_envelopes_total{}"] == 6000.0 && queued == 0.0 {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let sum = |prefix: &str| -> f64 {
        m.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
            .sum()
    };
    assert_eq!(sum("cf_nozzle_records_total{"), 6000.0);
    assert_eq!(sum("cf_nozzle_sink_received_total{"), 6000.0);
    assert_eq!(sum("cf_nozzle_sink_in_flight{"), 6000.0);
    assert_eq!(sum("cf_nozzle_sink_delivered_total{"), 0.0);
    assert_eq!(sum("cf_nozzle_sink_dropped_total{"), 0.0);
    assert_eq!(
        m["cf_nozzle_sink_queue_capacity{sink=\"file:api\"}"],
        1_000_000.0
    );
    assert_eq!(
        m["cf_nozzle_sink_dropped_total{reason=\"queue_full\",sink=\"file:api\"}"],
        0.0
    );
    assert_eq!(m["cf_nozzle_loggregator_dropped_total{}"], 0.0);
    assert_eq!(m["cf_nozzle_alerts_total{reason=\"sink_stalled\"}"], 0.0);
    assert!(m["cf_nozzle_source_connects_total{source=\"rlp\"}"] >= 2.0);
    assert!(m["cf_nozzle_source_attempts_total{source=\"rlp\"}"] >= 3.0);
    assert!(m["cf_nozzle_source_failures_total{source=\"rlp\"}"] >= 1.0);
    assert!(m["cf_nozzle_source_disconnects_total{reason=\"connect\",source=\"rlp\"}"] >= 1.0);
    assert_eq!(
        m["cf_nozzle_source_envelopes_total{source=\"rlp\"}"],
        6000.0
    );
    assert!(m["cf_nozzle_source_last_envelope_timestamp_seconds{source=\"rlp\"}"] > 1.7e9);
    assert!(m["cf_nozzle_process_resident_memory_bytes{}"] > 1e6);
    assert!(m.contains_key("cf_nozzle_process_cpu_seconds_total{}"));

    stop.cancel();
    let summary = nozzle.await.unwrap().expect("nozzle ran");
    assert_eq!(summary.total().delivered, 6000);
    assert_eq!(summary.ingress.envelopes, 6000);
    // A sink that delivered reports its delivery latency; one that did not, none.
    for s in &summary.sinks {
        let s = &s.stats;
        assert_eq!(
            s.delivery_latency_ms.max.is_some(),
            s.delivered > 0,
            "{}",
            s.name
        );
    }
    drop(second);
}

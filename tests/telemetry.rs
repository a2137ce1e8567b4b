//! `/health` and `/metrics` of a running nozzle: health follows the RLP going
//! away and coming back; the metrics parse as Prometheus text and carry the
//! exact counts (the audit-events poller's and enrichment's too); `/metrics`
//! can require basic auth; the listener holds at most its cap of connections
//! and closes clients that do not send a request head in time.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use cf_audit_nozzle::alert::AlertConfig;
use cf_audit_nozzle::config::{Built, SinkConfig};
use cf_audit_nozzle::run;
use cf_audit_nozzle::source::SourceConfig;
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
    let cfg = Built {
        source: SourceConfig::Rlp(Box::new(rlp_config(&first, &pki, "telemetry"))),
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
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
        }),
        // The disconnect below may raise `source_disconnected`; its alert
        // record would be one more received record than the 6,000 counted.
        alerts: AlertConfig {
            records: false,
            ..AlertConfig::default()
        },
        warnings: vec!["TLS verification is off (test)".into()],
        audit: Default::default(),
        syslog_in: None,
        // Off: the counts below are read mid-run, and the correlator would
        // still hold the api records it waits to merge.
        correlate: cf_audit_nozzle::route::CorrelateConfig {
            hold: Duration::ZERO,
            ..Default::default()
        },
    };
    let stop = CancellationToken::new();
    let nozzle = tokio::spawn(run::run(cfg, stop.clone()));
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
    // With the declaration of each kind's last number at shutdown.
    let i = &summary.ingress;
    let declared = [i.api, i.app_log, i.metric, i.event]
        .into_iter()
        .filter(|&n| n > 0)
        .count() as u64;
    assert_eq!(declared, 4);
    assert_eq!(summary.total().delivered, 6000 + declared);
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

/// Reads until the server closes the connection (EOF or reset); returns what it sent.
async fn read_to_close(c: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Lets the server task run (the clock stays where it is) until `cond` holds.
async fn settle(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// A whole `/health` request on a new connection: the status line and body.
async fn health_over_tcp(addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /health HTTP/1.1\r\nHost: nozzle\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    String::from_utf8(read_to_close(&mut c).await).unwrap()
}

/// Slowloris against /health: 12 clients that send half a request head each
/// against a cap of 4. Each connection beyond the cap closes the oldest at
/// once (never more than 4 open), /health still answers, and the clients
/// still holding a slot are closed when the header timeout passes, not before
/// (tokio's clock, paused: it moves only when every task waits).
#[tokio::test(start_paused = true)]
async fn the_listener_keeps_its_cap_answers_health_and_closes_slow_heads() {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::AsyncWriteExt;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let view = std::sync::Arc::new(cf_audit_nozzle::stats::View {
        ingress: Default::default(),
        sinks: Vec::new(),
        sources: Vec::new(),
        alerts: Default::default(),
        warnings: Vec::new(),
        disconnect_threshold: Duration::from_secs(60),
        started: tokio::time::Instant::now(),
        listener: Default::default(),
        audit_events: None,
        enrich: None,
        syslog_in: None,
        correlate: None,
    });
    let stats = std::sync::Arc::clone(&view.listener);
    let cfg = TelemetryConfig {
        addr,
        addr_is_default: false,
        metrics_auth: None,
        disconnect_threshold: Duration::from_secs(60),
        max_connections: 4,
        header_timeout: Duration::from_secs(10),
    };
    let stop = CancellationToken::new();
    let server = tokio::spawn(cf_audit_nozzle::telemetry::serve(
        listener,
        std::sync::Arc::clone(&view),
        cfg,
        stop.clone(),
    ));
    let t0 = tokio::time::Instant::now();

    let mut slow = Vec::new();
    for i in 1..=12u64 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: nozzle\r\n")
            .await
            .unwrap();
        slow.push(c);
        settle("the connection is accepted", || {
            stats.accepted.load(Relaxed) == i && stats.open.load(Relaxed) == i.min(4)
        })
        .await;
    }
    assert_eq!(stats.evicted.load(Relaxed), 8);
    // The 8 oldest were closed to make room, at once and without an answer.
    for c in &mut slow[..8] {
        assert_eq!(read_to_close(c).await, b"");
    }
    assert_eq!(tokio::time::Instant::now(), t0, "closed without waiting");

    // A health check gets through (and takes the oldest slot).
    let answer = health_over_tcp(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");
    assert_eq!(stats.evicted.load(Relaxed), 9);
    assert_eq!(read_to_close(&mut slow[8]).await, b"");
    assert_eq!(tokio::time::Instant::now(), t0);

    // The three still holding a slot are closed by the header timeout.
    for c in &mut slow[9..] {
        read_to_close(c).await;
        assert_eq!(
            tokio::time::Instant::now() - t0,
            Duration::from_secs(10),
            "closed when the header timeout passed"
        );
    }
    settle("the timeouts are counted", || {
        stats.header_timeouts.load(Relaxed) == 3 && stats.open.load(Relaxed) == 0
    })
    .await;
    assert_eq!(stats.evicted.load(Relaxed), 9);

    // Still serving; the counts are on /metrics.
    let answer = health_over_tcp(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let m = scrape(&cf_audit_nozzle::telemetry::metrics(&view));
    assert_eq!(m["cf_nozzle_telemetry_connections_accepted_total{}"], 14.0);
    assert_eq!(m["cf_nozzle_telemetry_connections_evicted_total{}"], 9.0);
    assert_eq!(m["cf_nozzle_telemetry_header_timeouts_total{}"], 3.0);
    assert_eq!(m["cf_nozzle_telemetry_accept_errors_total{}"], 0.0);
    stop.cancel();
    server.await.unwrap();
}

/// The audit-events poller's and enrichment's counters on `/metrics`, exact:
/// 25 audit events in pages of 10 from a test Cloud Controller, and 13
/// firehose logs: 6 of an app CC knows, 4 of one it does not, 3 of `doppler`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_poller_and_enrichment_counters_are_on_metrics() {
    use cf_audit_nozzle::source::audit_events::{AuditEventsConfig, CursorStore};
    use cf_audit_nozzle::source::cloud_controller::CcAccess;
    use cf_audit_nozzle::source::emulator::Feed;

    const KNOWN: &str = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
    const UNKNOWN: &str = "0badc0de-0b73-48e1-b7d2-26af2c63f933";
    let cc = cc::start().await;
    cc.apps.lock().unwrap().insert(
        KNOWN.to_string(),
        ["my-app", "s-guid", "dev", "o-guid", "acme"].map(String::from),
    );
    let base = chrono::Utc::now() - chrono::Duration::minutes(10);
    let events: Vec<serde_json::Value> = (0..25u64)
        .map(|i| {
            let t = (base + chrono::Duration::seconds(i as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            cc::event(&format!("000000ee-0000-4000-8000-{i:012x}"), &t, i)
        })
        .collect();
    let last_second = (base + chrono::Duration::seconds(24)).timestamp();
    *cc.events.lock().unwrap() = events;

    let pki = pki();
    let logs: Vec<_> = [(KNOWN, 6), (UNKNOWN, 4), ("doppler", 3)]
        .into_iter()
        .flat_map(|(id, n)| {
            (0..n).map(move |i| {
                log_envelope(
                    1_700_000_000_000_000_000 + i,
                    id,
                    "hello",
                    &[("source_type", "APP/PROC/WEB")],
                )
            })
        })
        .collect();
    let rlp = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(logs),
            batch_size: 1,
            ..EmulatorConfig::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut pipeline_cfg = file_pipeline(dir.path());
    // Files complete every second, so the sinks confirm the audit events.
    if let SinkConfig::File(f) = &mut pipeline_cfg.sinks[0].0 {
        f.roll_interval = Duration::from_secs(1);
    }
    let cc_url: reqwest::Url = cc.base.lock().unwrap().parse().unwrap();
    let addr = free_addr();
    let cfg = Built {
        source: SourceConfig::Rlp(Box::new(rlp_config(&rlp, &pki, "audit-metrics"))),
        pipeline: pipeline_cfg,
        shutdown_timeout: Duration::from_secs(10),
        telemetry: Some(TelemetryConfig {
            addr,
            addr_is_default: false,
            metrics_auth: None,
            disconnect_threshold: Duration::from_secs(60),
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
        }),
        alerts: AlertConfig::default(),
        warnings: Vec::new(),
        syslog_in: None,
        // Off: the counts below are read mid-run, and the correlator would
        // still hold the api records it waits to merge.
        correlate: cf_audit_nozzle::route::CorrelateConfig {
            hold: Duration::ZERO,
            ..Default::default()
        },
        audit: cf_audit_nozzle::config::AuditSetup {
            cc: Some(CcAccess {
                cf_api: cc_url,
                uaa: None,
                client_id: "audit-nozzle".into(),
                client_secret: "secret".into(),
                http: cf_audit_nozzle::http_client::http_client(None, false).unwrap(),
                max_body: cf_audit_nozzle::source::cf_api::DEFAULT_MAX_RESPONSE_BYTES,
            }),
            audit_events: Some(AuditEventsConfig {
                per_page: 10,
                cursor: CursorStore::File(dir.path().join("cursor.json")),
                // One poll in this test.
                poll_interval: Duration::from_secs(3600),
                ..AuditEventsConfig::default()
            }),
            enrich: Some(Default::default()),
            ..Default::default()
        },
    };
    let stop = CancellationToken::new();
    let nozzle = tokio::spawn(run::run(cfg, stop.clone()));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/metrics");

    // Wait until the poll is done and confirmed, and both lookups answered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let m = loop {
        if let Ok(r) = client.get(&url).send().await {
            let m = scrape(&r.text().await.unwrap());
            let v = |k: &str| m.get(k).copied().unwrap_or(-1.0);
            if v("cf_nozzle_audit_events_cursor_timestamp_seconds{}") == last_second as f64
                && v("cf_nozzle_enrich_table_entries{state=\"pending\"}") == 0.0
                && v("cf_nozzle_enrich_lookups_total{}") == 2.0
                && v("cf_nozzle_ingress_envelopes_total{}") == 13.0
            {
                break m;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "not settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let now = chrono::Utc::now().timestamp();
    for (k, v) in [
        ("audit_events_pages_total", 3.0),
        ("audit_events_events_total", 25.0),
        ("audit_events_duplicates_skipped_total", 0.0),
        ("audit_events_invalid_total", 0.0),
        ("audit_events_polls_completed_total", 1.0),
        ("audit_events_rewinds_total", 0.0),
        ("audit_events_errors_total", 0.0),
        ("audit_events_oversized_pages_total", 0.0),
        ("audit_events_refused_links_total", 0.0),
        ("enrich_lookups_total", 2.0),
        ("enrich_lookups_not_found_total", 1.0),
        ("enrich_lookup_errors_total", 0.0),
        ("enrich_not_guid_total", 3.0),
        ("enrich_queue_full_total", 0.0),
    ] {
        assert_eq!(m[&format!("cf_nozzle_{k}{{}}")], v, "{k}");
    }
    for (state, n) in [("named", 1.0), ("missing", 1.0), ("pending", 0.0)] {
        assert_eq!(
            m[&format!("cf_nozzle_enrich_table_entries{{state=\"{state}\"}}")],
            n
        );
    }
    // The known app's first record found no name yet; the rest of its and the
    // unknown app's records were hits or misses depending on when they came.
    let hits = m["cf_nozzle_enrich_cache_hits_total{}"];
    let misses = m["cf_nozzle_enrich_cache_misses_total{}"];
    assert!(misses >= 2.0 && hits + misses <= 10.0, "{hits} {misses}");
    let age = m["cf_nozzle_audit_events_cursor_age_seconds{}"];
    assert!(
        age >= 0.0 && age <= (now - last_second) as f64,
        "{age} vs {}",
        now - last_second
    );
    let cursor_writes = m["cf_nozzle_audit_events_cursor_writes_total{}"];

    stop.cancel();
    let summary = nozzle.await.unwrap().expect("nozzle ran");
    // The same counters the summary reports.
    let audit = summary.audit.expect("audit report");
    let a = audit.audit_events.expect("poller counters");
    assert_eq!(a.cursor_writes as f64, cursor_writes);
    assert_eq!(a.cursor_unix, last_second);
    let e = audit.enrich.expect("enrichment counters");
    assert_eq!((e.enriched as f64, e.pending as f64), (hits, misses));
}

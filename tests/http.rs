//! The HTTP sink against a test Splunk HEC receiver that parses bodies as
//! Splunk does (gzip, concatenated JSON event objects), answers with HEC's
//! JSON codes, and can be told to fail.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::pipeline::Pipeline;
use cf_audit_nozzle::proto::Envelope;
use cf_audit_nozzle::record::{EncodeContext, Kind, Record};
use cf_audit_nozzle::sink::http::{AckConfig, HecIndex, HttpFormat, HttpSink, HttpSinkConfig};
use cf_audit_nozzle::sink::{Batch, BatchConfig, DeadLetter, Sink, SinkQueue, run_sink};
use cf_audit_nozzle::source::SourceStatus;
use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed};
use cf_audit_nozzle::source::rlp;
use common::*;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// How the receiver answers.
#[derive(Default)]
struct Behaviour {
    /// Percent of requests answered 503 "Server is busy" (code 9), at random.
    busy_percent: u32,
    /// Answer this many requests 429 with `Retry-After: 1` first.
    throttle_first: AtomicU32,
    /// Answer every request 400 "Invalid data format" (code 6).
    reject: bool,
    /// Indexer acknowledgement: give every accepted request an `ackId`.
    acks: bool,
    /// Never acknowledge the first this many `ackId`s (lost in the indexer).
    lose_acks: AtomicU32,
    /// Events naming this index are refused, as Splunk refuses an index the
    /// token may not write to: the events before the first such one are
    /// indexed, and the reply is 400 "Incorrect index" (code 7) with its
    /// `invalid-event-number`.
    forbidden_index: Option<&'static str>,
    /// With `forbidden_index`: refuse the whole request, index nothing and
    /// give no event number (a receiver that only says "no").
    refuse_whole: bool,
    /// Hold every request until a permit is added (signalling `arrived`).
    hold: Option<Hold>,
}

struct Hold {
    arrived: tokio::sync::Notify,
    release: tokio::sync::Semaphore,
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            arrived: tokio::sync::Notify::new(),
            release: tokio::sync::Semaphore::new(0),
        }
    }
}

#[derive(Default)]
struct Hec {
    behaviour: Behaviour,
    rng: Mutex<Option<rand::rngs::StdRng>>,
    requests: AtomicU64,
    headers: Mutex<Vec<HashMap<String, String>>>,
    bodies: Mutex<Vec<Vec<u8>>>,
    events: Mutex<Vec<serde_json::Value>>,
    next_ack: AtomicU64,
    indexed: Mutex<std::collections::HashSet<u64>>,
    ack_queries: AtomicU64,
}

fn reply(status: StatusCode, text: &str, code: u32) -> (StatusCode, HeaderMap, String) {
    let body = serde_json::json!({"text": text, "code": code}).to_string();
    (status, HeaderMap::new(), body)
}

async fn collector(
    State(hec): State<Arc<Hec>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, String) {
    hec.requests.fetch_add(1, Ordering::SeqCst);
    let h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let gzip = h.get("content-encoding").is_some_and(|v| v == "gzip");
    hec.headers.lock().unwrap().push(h);
    let b = &hec.behaviour;
    if let Some(hold) = &b.hold {
        hold.arrived.notify_one();
        hold.release.acquire().await.unwrap().forget();
    }
    if b.throttle_first.load(Ordering::SeqCst) > 0 {
        b.throttle_first.fetch_sub(1, Ordering::SeqCst);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "1".parse().unwrap());
        return (StatusCode::TOO_MANY_REQUESTS, h, String::new());
    }
    let busy = {
        let mut rng = hec.rng.lock().unwrap();
        let rng = rng.get_or_insert_with(|| rand::rngs::StdRng::seed_from_u64(30));
        rng.random_range(0..100) < b.busy_percent
    };
    if busy {
        return reply(StatusCode::SERVICE_UNAVAILABLE, "Server is busy", 9);
    }
    if b.reject {
        return reply(StatusCode::BAD_REQUEST, "Invalid data format", 6);
    }
    let mut raw = body.to_vec();
    if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return reply(StatusCode::BAD_REQUEST, "Invalid data format", 6);
        }
        raw = out;
    }
    // Splunk reads concatenated JSON objects, not an array.
    let parsed: Result<Vec<serde_json::Value>, _> = serde_json::Deserializer::from_slice(&raw)
        .into_iter()
        .collect();
    let Ok(events) = parsed else {
        return reply(StatusCode::BAD_REQUEST, "Invalid data format", 6);
    };
    if events.iter().any(|e| e.get("event").is_none()) {
        return reply(StatusCode::BAD_REQUEST, "Event field is required", 12);
    }
    let bad = b
        .forbidden_index
        .and_then(|x| events.iter().position(|e| e["index"] == x));
    if let Some(k) = bad {
        let mut body = serde_json::json!({"text": "Incorrect index", "code": 7});
        if !b.refuse_whole {
            body["invalid-event-number"] = k.into();
            hec.events
                .lock()
                .unwrap()
                .extend(events[..k].iter().cloned());
        }
        return (StatusCode::BAD_REQUEST, HeaderMap::new(), body.to_string());
    }
    hec.bodies.lock().unwrap().push(raw);
    hec.events.lock().unwrap().extend(events);
    if b.acks {
        let id = hec.next_ack.fetch_add(1, Ordering::SeqCst);
        if b.lose_acks.load(Ordering::SeqCst) > 0 {
            b.lose_acks.fetch_sub(1, Ordering::SeqCst);
        } else {
            hec.indexed.lock().unwrap().insert(id);
        }
        let body = serde_json::json!({"text": "Success", "code": 0, "ackId": id}).to_string();
        return (StatusCode::OK, HeaderMap::new(), body);
    }
    reply(StatusCode::OK, "Success", 0)
}

/// `POST /services/collector/ack`: `{"acks":[ids]}` → `{"acks":{"id":bool}}`.
async fn ack(State(hec): State<Arc<Hec>>, body: Bytes) -> String {
    hec.ack_queries.fetch_add(1, Ordering::SeqCst);
    let asked: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let indexed = hec.indexed.lock().unwrap();
    let answer: serde_json::Map<String, serde_json::Value> = asked["acks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| {
            let id = id.as_u64().unwrap();
            (
                id.to_string(),
                serde_json::Value::Bool(indexed.contains(&id)),
            )
        })
        .collect();
    serde_json::json!({ "acks": answer }).to_string()
}

/// A plain JSON receiver: keeps what it got, answers 200.
async fn ingest(State(hec): State<Arc<Hec>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    hec.requests.fetch_add(1, Ordering::SeqCst);
    let h: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    hec.headers.lock().unwrap().push(h);
    hec.bodies.lock().unwrap().push(body.to_vec());
    StatusCode::OK
}

async fn start_hec(behaviour: Behaviour) -> (Arc<Hec>, String) {
    let hec = Arc::new(Hec {
        behaviour,
        ..Default::default()
    });
    let app = axum::Router::new()
        .route("/services/collector/event", axum::routing::post(collector))
        .route("/ingest", axum::routing::post(ingest))
        .route("/services/collector/ack", axum::routing::post(ack))
        .with_state(Arc::clone(&hec));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hec, url)
}

fn ctx() -> EncodeContext {
    EncodeContext::new(FOUNDATION)
}

fn records(envelopes: Vec<Envelope>) -> Vec<Arc<Record>> {
    envelopes
        .into_iter()
        .map(|e| Arc::new(classify(e)))
        .collect()
}

fn app_line(i: usize) -> Envelope {
    log_envelope(
        1_700_000_000_123_456_789 + i as i64,
        "cdabc600-0b73-48e1-b7d2-26af2c63f933",
        format!("seq={i}"),
        &[
            ("source_type", "APP/PROC/WEB"),
            ("app_name", "spring-music"),
            ("space_name", "dev"),
            ("organization_name", "acme"),
        ],
    )
}

#[tokio::test]
async fn hec_requests_carry_what_splunk_expects() {
    let (hec, url) = start_hec(Behaviour::default()).await;
    let mut cfg = http_config(&url, HttpFormat::Hec);
    cfg.hec_index = HecIndex {
        default: Some("cf_audit".into()),
        per_kind: [None, Some("cf_logs".into()), None, None],
        app_tag: Some("splunk_index".into()),
    };
    let mut sink = HttpSink::new(cfg, ctx()).unwrap();
    let api = log_envelope(
        1_700_000_000_123_456_789,
        "cdabc600-0b73-48e1-b7d2-26af2c63f933",
        "Created app with guid cdabc600-0b73-48e1-b7d2-26af2c63f933",
        &[("source_type", "API"), ("origin", "cloud_controller")],
    );
    let mut labelled = app_line(2);
    labelled.tags.insert("splunk_index".into(), "team_a".into());
    let batch = records(vec![api, app_line(1), labelled]);
    assert_eq!(sink.write(Batch::new(1, &batch)).await.unwrap(), 3);

    let headers = hec.headers.lock().unwrap()[0].clone();
    assert_eq!(
        headers["authorization"],
        "Splunk 11111111-2222-3333-4444-555555555555"
    );
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["content-type"], "application/json");
    let channel = &headers["x-splunk-request-channel"];
    assert_eq!(
        channel.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );

    let body = String::from_utf8(hec.bodies.lock().unwrap()[0].clone()).unwrap();
    assert!(
        body.starts_with(r#"{"time":1700000000.123456,"host":"cloud_controller","source":"API","sourcetype":"cf:api","index":"cf_audit","fields":{"foundation":"test","kind":"api"},"event":{"kind":"api","#),
        "{body}"
    );
    let events = hec.events.lock().unwrap().clone();
    assert_eq!(events.len(), 3);
    let indexes: Vec<&str> = events
        .iter()
        .map(|e| e["index"].as_str().unwrap())
        .collect();
    assert_eq!(
        indexes,
        ["cf_audit", "cf_logs", "team_a"],
        "default, per kind, per app tag"
    );
    let app = &events[1];
    assert_eq!(
        app["time"].as_f64(),
        Some(1_700_000_000.123_456),
        "microseconds, truncated"
    );
    assert_eq!(app["host"], "acme.dev.spring-music");
    assert_eq!(app["source"], "APP/PROC/WEB");
    assert_eq!(app["sourcetype"], "cf:app_log");
    assert_eq!(
        app["fields"],
        serde_json::json!({"foundation": "test", "kind": "app_log", "org": "acme", "space": "dev", "app": "spring-music"})
    );
    let want: serde_json::Value = serde_json::from_str(&batch[1].to_json(&ctx())).unwrap();
    assert_eq!(app["event"], want);
}

#[tokio::test]
async fn json_formats_send_the_records_and_custom_headers() {
    let (hec, url) = start_hec(Behaviour::default()).await;
    let batch = records(vec![app_line(1), app_line(2)]);
    let lines: Vec<String> = batch.iter().map(|r| r.to_json(&ctx())).collect();

    let mut cfg = http_config(&format!("{url}/ingest"), HttpFormat::Json);
    cfg.gzip = false;
    cfg.headers = vec![("Authorization".into(), "Bearer s3cret".into())];
    HttpSink::new(cfg, ctx())
        .unwrap()
        .write(Batch::new(1, &batch))
        .await
        .unwrap();
    let mut cfg = http_config(&format!("{url}/ingest"), HttpFormat::JsonArray);
    cfg.gzip = false;
    HttpSink::new(cfg, ctx())
        .unwrap()
        .write(Batch::new(1, &batch))
        .await
        .unwrap();

    let bodies = hec.bodies.lock().unwrap().clone();
    assert_eq!(
        String::from_utf8(bodies[0].clone()).unwrap(),
        format!("{}\n{}\n", lines[0], lines[1])
    );
    assert_eq!(
        String::from_utf8(bodies[1].clone()).unwrap(),
        format!("[{},{}]", lines[0], lines[1])
    );
    let headers = hec.headers.lock().unwrap().clone();
    assert_eq!(headers[0]["authorization"], "Bearer s3cret");
    assert_eq!(headers[0]["content-type"], "application/x-ndjson");
    assert!(!headers[0].contains_key("x-splunk-request-channel"));
    assert!(!headers[0].contains_key("content-encoding"));
}

#[tokio::test]
async fn a_batch_hec_rejects_goes_to_the_dead_letter_file_with_its_reason() {
    let (hec, url) = start_hec(Behaviour {
        reject: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (queue, rx) = SinkQueue::new("http", 100);
    let batch = records((0..5).map(app_line).collect());
    queue.offer(batch.clone());
    let stats = Arc::clone(queue.stats());
    drop(queue);
    let cfg = BatchConfig {
        dead_letter: Some(DeadLetter {
            dir: dir.path().to_path_buf(),
            encode: ctx(),
        }),
        ..BatchConfig::default()
    };
    let sink = HttpSink::new(http_config(&url, HttpFormat::Hec), ctx()).unwrap();
    let s = run_sink(sink, rx, stats, cfg).await.stats;
    assert_eq!(
        (
            s.received,
            s.delivered,
            s.dead_lettered,
            s.dropped(),
            s.pending(),
            s.retries
        ),
        (5, 0, 5, 0, 0, 0)
    );
    // Each record refused alone (halves down to single records: 2n - 1
    // requests), never retried.
    assert_eq!(hec.requests.load(Ordering::SeqCst), 9);
    let text = std::fs::read_to_string(dir.path().join("http.dead-letter.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for (line, record) in lines.iter().zip(&batch) {
        assert_eq!(line["sink"], "http");
        assert_eq!(
            line["reason"],
            format!(
                "http sink: {url}/services/collector/event answered 400: Invalid data format (HEC code 6)"
            )
        );
        let want: serde_json::Value = serde_json::from_str(&record.to_json(&ctx())).unwrap();
        assert_eq!(line["record"], want);
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_time_the_receiver_asked_for() {
    let (hec, url) = start_hec(Behaviour {
        throttle_first: AtomicU32::new(1),
        ..Default::default()
    })
    .await;
    let (queue, rx) = SinkQueue::new("http", 100);
    queue.offer(records((0..3).map(app_line).collect()));
    let stats = Arc::clone(queue.stats());
    drop(queue);
    let sink = HttpSink::new(http_config(&url, HttpFormat::Hec), ctx()).unwrap();
    let started = std::time::Instant::now();
    let s = run_sink(sink, rx, stats, BatchConfig::default())
        .await
        .stats;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured"
    );
    assert_eq!((s.delivered, s.retries, s.dropped()), (3, 1, 0));
    assert_eq!(hec.requests.load(Ordering::SeqCst), 2);
    assert_eq!(hec.events.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_30_percent_of_requests_failing_100000_records_arrive_exactly_once_and_acknowledged() {
    const N: usize = 100_000;
    let (hec, url) = start_hec(Behaviour {
        busy_percent: 30,
        acks: true,
        ..Default::default()
    })
    .await;
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed((0..N).map(app_line).collect()),
            ..Default::default()
        },
    )
    .await;
    // Four requests of ~250 kB in flight: a failed one is retried alone; a
    // record counts as delivered when the receiver acknowledged indexing it.
    let mut http = with_acks(&url, Duration::from_secs(300));
    http.concurrency = 4;
    http.max_request_bytes = 250_000;
    let pipeline = Pipeline::start(&PipelineConfig {
        sinks: vec![(SinkConfig::Http(Box::new(http)), Kind::ALL.to_vec())],
        queue_capacity: 1_000_000,
        queue_max_bytes: u64::MAX,
        batch: BatchConfig {
            retry_initial: Duration::from_millis(10),
            retry_max: Duration::from_millis(100),
            ..BatchConfig::default()
        },
        encode: ctx(),
        decode_only: false,
        buffer: None,
        instance_index: 0,
    })
    .unwrap();
    let stop = CancellationToken::new();
    let source = tokio::spawn(rlp::run(
        rlp_config(&emu, &pki, "s"),
        pipeline.router(),
        Arc::new(SourceStatus::default()),
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while hec.events.lock().unwrap().len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {N} arrived",
            hec.events.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    source.await.unwrap();
    let summary = pipeline.finish(Duration::from_secs(30)).await;
    let s = summary.total();
    // And the declaration of the last app_log number at shutdown.
    assert_eq!(
        (s.received, s.delivered, s.pending(), s.dropped()),
        (N as u64 + 1, N as u64 + 1, 0, 0)
    );
    assert!(s.retries > 0, "the receiver failed some requests");

    let mut events = hec.events.lock().unwrap().clone();
    let at = events
        .iter()
        .position(|e| e["event"].get("last_seq").is_some())
        .expect("a declaration");
    let declaration = events.remove(at);
    // It names the nozzle as host and source, its kind as sourcetype.
    assert_eq!(declaration["host"], "cf-audit-nozzle", "{declaration}");
    assert_eq!(declaration["source"], "cf-audit-nozzle", "{declaration}");
    assert_eq!(declaration["sourcetype"], "cf:app_log", "{declaration}");
    assert_eq!(declaration["event"]["last_seq"], N as u64 - 1);
    let mut seen = vec![0u32; N];
    for e in events.iter() {
        let msg = e["event"]["message"].as_str().unwrap();
        let seq: usize = msg.strip_prefix("seq=").unwrap().parse().unwrap();
        seen[seq] += 1;
    }
    let missing = seen.iter().filter(|c| **c == 0).count();
    let duplicates: u32 = seen.iter().map(|c| c.saturating_sub(1)).sum();
    assert_eq!((events.len(), missing, duplicates), (N, 0, 0));
}

fn with_acks(url: &str, timeout: Duration) -> HttpSinkConfig {
    let mut cfg = http_config(url, HttpFormat::Hec);
    cfg.acks = Some(AckConfig {
        interval: Duration::from_millis(50),
        timeout,
        max_pending: 100,
    });
    cfg
}

#[tokio::test]
async fn with_indexer_acks_records_are_delivered_only_once_splunk_indexed_them() {
    let (hec, url) = start_hec(Behaviour {
        acks: true,
        ..Default::default()
    })
    .await;
    let mut sink = HttpSink::new(with_acks(&url, Duration::from_secs(300)), ctx()).unwrap();
    assert_eq!(sink.roll_interval(), Some(Duration::from_millis(50)));
    let batch = records((0..5).map(app_line).collect());
    assert_eq!(
        sink.write(Batch::new(1, &batch)).await.unwrap(),
        0,
        "in flight"
    );
    assert_eq!(hec.ack_queries.load(Ordering::SeqCst), 0);
    assert_eq!(sink.roll().await.unwrap(), 5, "acknowledged");
    assert_eq!(hec.ack_queries.load(Ordering::SeqCst), 1);
    assert_eq!(sink.roll().await.unwrap(), 0, "nothing left to ask about");
    assert_eq!(hec.ack_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_splunk_never_acknowledges_is_sent_again_after_the_timeout() {
    let (hec, url) = start_hec(Behaviour {
        acks: true,
        lose_acks: AtomicU32::new(1),
        ..Default::default()
    })
    .await;
    let mut sink = HttpSink::new(with_acks(&url, Duration::from_millis(200)), ctx()).unwrap();
    let batch = records((0..5).map(app_line).collect());
    assert_eq!(sink.write(Batch::new(1, &batch)).await.unwrap(), 0);
    assert_eq!(sink.roll().await.unwrap(), 0, "not indexed yet");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        sink.roll().await.unwrap(),
        0,
        "sent again, not yet confirmed"
    );
    assert_eq!(sink.roll().await.unwrap(), 5, "the second copy was indexed");
    // At least once: Splunk holds the batch twice (the first copy was received, only its ack was lost).
    assert_eq!(hec.events.lock().unwrap().len(), 10);
    assert_eq!(hec.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_runner_keeps_acked_records_in_flight_until_confirmed() {
    let (_hec, url) = start_hec(Behaviour {
        acks: true,
        ..Default::default()
    })
    .await;
    let (queue, rx) = SinkQueue::new("http", 100);
    queue.offer(records((0..7).map(app_line).collect()));
    let stats = Arc::clone(queue.stats());
    drop(queue);
    let sink = HttpSink::new(with_acks(&url, Duration::from_secs(300)), ctx()).unwrap();
    let s = run_sink(sink, rx, stats, BatchConfig::default())
        .await
        .stats;
    // The final roll at shutdown asks once more and confirms them.
    assert_eq!(
        (s.received, s.delivered, s.in_flight, s.dropped()),
        (7, 7, 0, 0)
    );
}

/// Runs 50 records, of which 7 and 31 name an index HEC refuses, through the
/// runner with a dead-letter file; the stats, the seqs HEC indexed (with
/// repeats) and the seqs dead-lettered with their reasons.
async fn refuse_two_of_fifty(
    refuse_whole: bool,
) -> (
    cf_audit_nozzle::sink::SinkSnapshot,
    Vec<usize>,
    Vec<(usize, String)>,
    String,
) {
    let (hec, url) = start_hec(Behaviour {
        forbidden_index: Some("forbidden"),
        refuse_whole,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let envelopes = (0..50).map(|i| {
        let mut e = app_line(i);
        if i == 7 || i == 31 {
            e.tags.insert("splunk_index".into(), "forbidden".into());
        }
        e
    });
    let (queue, rx) = SinkQueue::new("http", 100);
    queue.offer(records(envelopes.collect()));
    let stats = Arc::clone(queue.stats());
    drop(queue);
    let mut cfg = http_config(&url, HttpFormat::Hec);
    cfg.hec_index.app_tag = Some("splunk_index".into());
    // Several requests per batch, two at a time.
    cfg.max_request_bytes = 8_000;
    cfg.concurrency = 2;
    let batch = BatchConfig {
        dead_letter: Some(DeadLetter {
            dir: dir.path().to_path_buf(),
            encode: ctx(),
        }),
        ..BatchConfig::default()
    };
    let sink = HttpSink::new(cfg, ctx()).unwrap();
    let s = run_sink(sink, rx, stats, batch).await.stats;
    let seq = |msg: &serde_json::Value| -> usize {
        msg.as_str()
            .unwrap()
            .strip_prefix("seq=")
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut indexed: Vec<usize> = hec
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| seq(&e["event"]["message"]))
        .collect();
    indexed.sort_unstable();
    let text = std::fs::read_to_string(dir.path().join("http.dead-letter.jsonl")).unwrap();
    let mut dead: Vec<(usize, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|l| {
            (
                seq(&l["record"]["message"]),
                l["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    dead.sort_unstable();
    (s, indexed, dead, url)
}

/// Of 50 records, exactly 7 and 31 are dead-lettered with HEC's reason, and
/// every other one is indexed exactly once (the events before a refused one
/// were indexed by that request and are not sent again).
async fn only_seven_and_thirty_one_are_dead_lettered(whole_request_refused: bool) {
    let (s, indexed, dead, url) = refuse_two_of_fifty(whole_request_refused).await;
    assert_eq!(
        (
            s.received,
            s.delivered,
            s.dead_lettered,
            s.dropped(),
            s.pending(),
            s.retries
        ),
        (50, 48, 2, 0, 0, 0)
    );
    let reason = format!(
        "http sink: {url}/services/collector/event answered 400: Incorrect index (HEC code 7)"
    );
    assert_eq!(dead, [(7, reason.clone()), (31, reason)]);
    let want: Vec<usize> = (0..50).filter(|i| *i != 7 && *i != 31).collect();
    assert_eq!(indexed, want);
}

#[tokio::test]
async fn only_the_events_hec_refuses_by_number_are_dead_lettered() {
    only_seven_and_thirty_one_are_dead_lettered(false).await;
}

#[tokio::test]
async fn without_an_event_number_refused_requests_are_halved_down_to_the_bad_records() {
    only_seven_and_thirty_one_are_dead_lettered(true).await;
}

#[tokio::test]
async fn the_records_of_an_outstanding_request_are_in_flight() {
    let (hec, url) = start_hec(Behaviour {
        hold: Some(Hold::default()),
        ..Default::default()
    })
    .await;
    let (queue, rx) = SinkQueue::new("http", 100);
    let stats = Arc::clone(queue.stats());
    let sink = HttpSink::new(http_config(&url, HttpFormat::Hec), ctx()).unwrap();
    let task = tokio::spawn(run_sink(
        sink,
        rx,
        Arc::clone(&stats),
        BatchConfig::default(),
    ));
    queue.offer(records((0..7).map(app_line).collect()));
    let hold = hec.behaviour.hold.as_ref().unwrap();
    hold.arrived.notified().await;
    // The receiver holds the request: its records are in flight, not queued.
    let s = stats.snapshot("http");
    assert_eq!(
        (s.received, s.queued, s.in_flight, s.delivered),
        (7, 0, 7, 0)
    );
    hold.release.add_permits(1);
    drop(queue);
    let s = task.await.unwrap().stats;
    assert_eq!(
        (s.received, s.queued, s.in_flight, s.delivered),
        (7, 0, 0, 7)
    );
    assert_eq!(hec.events.lock().unwrap().len(), 7);
}

//! The s3 sink against a real S3-compatible server that checks SigV4 and
//! keeps SSE headers (moto, see tests/common/moto.rs): every record once, objects
//! within the roll limits, encryption as configured (asserted by the server's
//! HEAD), signed digests that validate, delivery notifications, a wrong
//! secret surfaced without loss, an outage without loss, and two instances
//! that never overwrite each other.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::integrity::{Algorithm, SigningKey};
use cf_audit_nozzle::pipeline::Pipeline;
use cf_audit_nozzle::record::{EncodeContext, Kind};
use cf_audit_nozzle::sink::archive::Archive;
use cf_audit_nozzle::sink::archive::digest::{DigestSettings, gunzip};
use cf_audit_nozzle::sink::archive::{
    ObjectSink, ObjectSinkConfig, RollConfig, Target,
    s3::{S3Config, Sse, http_client, s3_archive},
};
use cf_audit_nozzle::sink::{
    Batch, BatchConfig, Chunk, Sink, SinkFailure, SinkQueue, SinkReport, run_sink,
};
use common::moto;

fn ctx() -> EncodeContext {
    EncodeContext::new(common::FOUNDATION)
}

/// App-log records whose message is their sequence number.
fn records(seqs: std::ops::Range<u64>) -> Chunk {
    seqs.map(|i| {
        Arc::new(classify(common::log_envelope(
            1_700_000_000_000_000_000 + i as i64,
            "app",
            i.to_string(),
            &[],
        )))
    })
    .collect()
}

fn archive(cfg: &S3Config) -> Archive {
    s3_archive(cfg, &http_client(cfg.ca_pem.as_deref()).unwrap()).unwrap()
}

fn roll(roll_bytes: u64, instance_index: u32) -> RollConfig {
    RollConfig {
        roll_interval: Duration::from_secs(3600),
        roll_bytes,
        instance_index,
        gzip_level: 1,
    }
}

fn fast_retries(max_records: usize) -> BatchConfig {
    BatchConfig {
        max_records: Some(max_records),
        max_age: Duration::from_millis(20),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(300),
        dead_letter: None,
        ..BatchConfig::default()
    }
}

/// Feeds `total` records in chunks of 1000 through a sink's queue without
/// ever overfilling it, then closes the queue and returns the sink's report.
/// `between` runs after each chunk (to cut the connection mid-stream).
async fn feed<S: Sink>(
    sink: S,
    total: u64,
    batch: BatchConfig,
    mut between: impl FnMut(u64),
) -> SinkReport {
    let (queue, rx) = SinkQueue::new("s3", 50_000);
    let stats = Arc::clone(queue.stats());
    let task = tokio::spawn(run_sink(sink, rx, Arc::clone(&stats), batch));
    for start in (0..total).step_by(1000) {
        while stats.queued.load(Ordering::Relaxed) > 40_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        queue.offer(records(start..(start + 1000).min(total)));
        between(start);
    }
    drop(queue);
    task.await.unwrap()
}

/// Every object under `prefix`: (key, uncompressed size, sequence numbers).
async fn read_back(archive: &Archive, keys: &[String]) -> Vec<(String, usize, Vec<u64>)> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(rename = "Records")]
        records: Vec<Rec>,
    }
    #[derive(serde::Deserialize)]
    struct Rec {
        message: String,
    }
    let mut out = Vec::new();
    for key in keys {
        let body = archive.get(&archive.logs, key).await.unwrap().body;
        let plain = gunzip(&body).unwrap();
        let file: File = serde_json::from_slice(&plain).unwrap();
        let seqs = file
            .records
            .iter()
            .map(|r| r.message.parse().unwrap())
            .collect();
        out.push((key.clone(), plain.len(), seqs));
    }
    out
}

/// Asserts that `objects` hold each of `0..total` exactly once.
fn assert_each_once(objects: &[(String, usize, Vec<u64>)], total: u64) {
    let mut seen = vec![false; total as usize];
    for (key, _, seqs) in objects {
        for &s in seqs {
            assert!(!seen[s as usize], "record {s} twice (again in {key})");
            seen[s as usize] = true;
        }
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "records missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_records_arrive_once_each_in_objects_within_the_roll_limits() {
    const TOTAL: u64 = 1_000_000;
    const ROLL_BYTES: u64 = 8 << 20;
    let m = moto::moto();
    let cfg = m.bucket("million");
    let archive = archive(&cfg);
    let sink = ObjectSink::new(
        archive.clone(),
        roll(ROLL_BYTES, 0),
        ctx(),
        Kind::AppLog,
        None,
        None,
        "s3",
    );
    let report = feed(sink, TOTAL, fast_retries(5000), |_| {}).await;
    let s = &report.stats;
    assert_eq!(
        (s.received, s.delivered, s.pending(), s.dropped(), s.retries),
        (TOTAL, TOTAL, 0, 0, 0)
    );

    // What the server has is what the sink reported, under DESIGN.md §5's names.
    let keys = m.list("million", "audit/CFLogs/");
    let reported: BTreeSet<String> = report
        .outputs
        .iter()
        .map(|o| o.path.strip_prefix("s3://million/").unwrap().to_string())
        .collect();
    assert_eq!(keys.iter().cloned().collect::<BTreeSet<_>>(), reported);
    for key in &keys {
        let name = key.rsplit('/').next().unwrap();
        assert!(
            key.starts_with("audit/CFLogs/test/app_log/20")
                && name.starts_with("test_app_log_20")
                && name.ends_with(".json.gz")
                && name.split('_').nth(4) == Some("0"),
            "{key}"
        );
    }

    let objects = read_back(&archive, &keys).await;
    assert_each_once(&objects, TOTAL);
    // Each object is completed as soon as it reaches roll_bytes, so only the
    // last one (completed at shutdown) may be smaller, and none exceeds it by
    // more than one record.
    let largest_record = 400;
    let small = objects.iter().filter(|o| (o.1 as u64) < ROLL_BYTES).count();
    assert!(small <= 1, "{small} objects below roll_bytes");
    for (key, size, _) in &objects {
        assert!(
            (*size as u64) < ROLL_BYTES + largest_record,
            "{key}: {size} bytes"
        );
    }
    assert!(objects.len() >= (TOTAL * 100 / ROLL_BYTES) as usize);

    // SSE-S3 by default, with the content headers, as the server keeps them.
    let head = m.head("million", &keys[0]);
    assert_eq!(head["ServerSideEncryption"], "AES256", "{head}");
    assert_eq!(head["ContentType"], "application/json", "{head}");
    assert_eq!(head["ContentEncoding"], "gzip", "{head}");
}

/// A webhook that keeps every body it is sent.
async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/landed",
        axum::routing::post(move |body: String| {
            let keep = Arc::clone(&keep);
            async move {
                keep.lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/landed"), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_logs_signed_sse_s3_digests_notifications_and_a_valid_chain() {
    let m = moto::moto();
    let mut cfg = m.bucket("kms-archive");
    cfg.sse = Sse::Kms;
    cfg.kms_key_id = Some("test-key-id".into());
    let key = Arc::new(SigningKey::generate(Algorithm::Ed25519));
    let (url, notified) = webhook().await;
    let pipeline = Pipeline::start(&PipelineConfig {
        sinks: vec![(
            SinkConfig::Object(Box::new(ObjectSinkConfig {
                target: Target::S3(cfg.clone()),
                roll: roll(4096, 2),
                digest: Some(DigestSettings {
                    key: Arc::clone(&key),
                    interval: Duration::from_secs(3600),
                }),
                notify_url: Some(url.into()),
            })),
            vec![Kind::AppLog],
        )],
        queue_capacity: 10_000,
        queue_max_bytes: u64::MAX,
        batch: fast_retries(1000),
        encode: ctx(),
        decode_only: false,
        buffer: None,
        instance_index: 0,
    })
    .unwrap();
    let envelopes = (0..60)
        .map(|i| common::log_envelope(1_700_000_000_000_000_000 + i, "app", i.to_string(), &[]))
        .collect();
    pipeline.router().dispatch(envelopes);
    let summary = pipeline.finish(Duration::from_secs(30)).await;
    assert!(summary.complete, "{summary:?}");
    let by_name = |n: &str| summary.sinks.iter().find(|s| s.stats.name == n).unwrap();
    // And the declaration of the last app_log number at shutdown.
    assert_eq!(by_name("s3:app_log").stats.delivered, 60 + 1);
    assert_eq!(by_name("s3:digest").stats.delivered, 1);

    let logs = m.list("kms-archive", "audit/CFLogs/");
    let (keys, digests): (Vec<String>, Vec<String>) = m
        .list("kms-archive", "audit/CFLogs-Digest/")
        .into_iter()
        .partition(|k| k.contains("/public-keys/"));
    // The public key, published under its fingerprint, SSE-S3 like the digests.
    let public = key.public_key();
    assert_eq!(
        keys,
        [format!(
            "audit/CFLogs-Digest/test/public-keys/{}.pem",
            public.fingerprint()
        )]
    );
    assert_eq!(
        m.head("kms-archive", &keys[0])["ServerSideEncryption"],
        "AES256"
    );
    assert!(logs.len() >= 3, "{logs:?}");
    assert_eq!(digests.len(), 1, "{digests:?}");
    assert!(
        digests[0].starts_with("audit/CFLogs-Digest/test/20")
            && digests[0].contains("/test_CFLogs-Digest_2_20"),
        "{}",
        digests[0]
    );
    for log in &logs {
        let head = m.head("kms-archive", log);
        assert_eq!(head["ServerSideEncryption"], "aws:kms", "{head}");
        assert_eq!(head["SSEKMSKeyId"], "test-key-id", "{head}");
        assert_eq!(head["ContentEncoding"], "gzip", "{head}");
    }
    // Digests stay SSE-S3, and carry their signature in the object metadata.
    let head = m.head("kms-archive", &digests[0]);
    assert_eq!(head["ServerSideEncryption"], "AES256", "{head}");
    assert_eq!(head["Metadata"]["signature-algorithm"], "Ed25519", "{head}");
    assert_eq!(
        head["Metadata"]["signature"].as_str().unwrap().len(),
        128,
        "{head}"
    );

    // One notification per object and digest, shaped like CloudTrail's SNS message.
    let mut expected: Vec<serde_json::Value> = logs
        .iter()
        .chain(&digests)
        .map(|k| serde_json::json!({"s3Bucket": "kms-archive", "s3ObjectKey": [k]}))
        .collect();
    let mut got = notified.lock().unwrap().clone();
    let sort = |v: &mut Vec<serde_json::Value>| v.sort_by_key(|x| x.to_string());
    sort(&mut expected);
    sort(&mut got);
    assert_eq!(got, expected);
    assert_eq!(by_name("s3:notify").stats.delivered, logs.len() as u64 + 1);

    // The chain validates against the bucket.
    let report = cf_audit_nozzle::validate::validate(
        &archive(&cfg),
        &[key.public_key()],
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(report.ok(), "{}", report.render());
    assert_eq!(
        report.summary(),
        format!(
            "Results: 1/1 digest files valid, 0/1 digest files INVALID; {n}/{n} log files valid, 0/{n} log files INVALID",
            n = logs.len()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_a_clear_403_and_the_records_wait_in_memory() {
    let m = moto::moto();
    let mut cfg = m.bucket("wrong-secret");
    cfg.secret_access_key = Some("not-the-secret-0123456789".into());
    let mut sink = ObjectSink::new(
        archive(&cfg),
        roll(1 << 20, 0),
        ctx(),
        Kind::AppLog,
        None,
        None,
        "s3",
    );
    let batch = records(0..10);
    assert_eq!(
        sink.write(Batch::new(1, &batch)).await.unwrap(),
        0,
        "in flight"
    );
    // The roll completes the file; its upload fails and it is kept.
    assert_eq!(sink.roll().await.unwrap(), 0);
    // Until it is uploaded, new batches are refused retryably, with the reason.
    let batch = records(10..20);
    let failure = sink.write(Batch::new(2, &batch)).await.unwrap_err();
    assert!(matches!(failure, SinkFailure::Retry { .. }), "retryable");
    let text = failure.error().to_string();
    assert!(
        text.contains("403") && text.contains("SignatureDoesNotMatch"),
        "{text}"
    );
    assert!(
        text.contains("s3://wrong-secret/audit/CFLogs/test/app_log/"),
        "{text}"
    );
    assert!(
        !text.contains("not-the-secret"),
        "no secret in errors: {text}"
    );
    assert!(m.list("wrong-secret", "").is_empty());

    // Through the runner: retried with backoff, nothing dropped.
    let (queue, rx) = SinkQueue::new("s3", 1000);
    let stats = Arc::clone(queue.stats());
    let sink = ObjectSink::new(
        archive(&cfg),
        roll(1024, 0),
        ctx(),
        Kind::AppLog,
        None,
        None,
        "s3",
    );
    let task = tokio::spawn(run_sink(sink, rx, Arc::clone(&stats), fast_retries(10)));
    queue.offer(records(0..10));
    queue.offer(records(10..20));
    while stats.retries.load(Ordering::Relaxed) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = stats.snapshot("s3");
    assert_eq!(
        (s.received, s.delivered, s.pending(), s.dropped()),
        (20, 0, 20, 0)
    );
    task.abort();
}

/// A TCP forwarder that can refuse connections: while down it closes every
/// open connection and has no listener (connections are refused).
struct Proxy {
    addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut listener = Some(socket.listen(64).unwrap());
        let (up, mut up_rx) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Some(l) = &listener else {
                    if up_rx.changed().await.is_err() {
                        return;
                    }
                    if *up_rx.borrow() {
                        let socket = tokio::net::TcpSocket::new_v4().unwrap();
                        socket.set_reuseaddr(true).unwrap();
                        socket.bind(addr).unwrap();
                        listener = Some(socket.listen(64).unwrap());
                    }
                    continue;
                };
                tokio::select! {
                    accepted = l.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let mut down = up_rx.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = tokio::net::TcpStream::connect(target).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = down.wait_for(|up| !up) => {}
                            }
                        });
                    }
                    changed = up_rx.changed() => {
                        if changed.is_err() { return; }
                        if !*up_rx.borrow() { listener = None; }
                    }
                }
            }
        });
        Self { addr, up }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_loses_nothing_and_never_stalls_ingress() {
    const TOTAL: u64 = 50_000;
    let m = moto::moto();
    let mut cfg = m.bucket("outage");
    let moto_addr: SocketAddr = m.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(moto_addr).await;
    cfg.endpoint = Some(format!("http://{}", proxy.addr));
    let sink = ObjectSink::new(
        archive(&cfg),
        roll(256 << 10, 0),
        ctx(),
        Kind::AppLog,
        None,
        None,
        "s3",
    );
    let (queue, rx) = SinkQueue::new("s3", 100_000);
    let stats = Arc::clone(queue.stats());
    let task = tokio::spawn(run_sink(sink, rx, Arc::clone(&stats), fast_retries(1000)));
    // The first fifth goes through; then the store is unreachable while the
    // rest arrives: every offer is taken at once (nothing dropped, nothing
    // waits); the sink retries until the store is back.
    queue.offer(records(0..TOTAL / 5));
    while stats.delivered.load(Ordering::Relaxed) + stats.in_flight.load(Ordering::Relaxed)
        < TOTAL / 5
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.set_up(false);
    for start in (TOTAL / 5..TOTAL).step_by(1000) {
        queue.offer(records(start..start + 1000));
    }
    while stats.retries.load(Ordering::Relaxed) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = stats.snapshot("s3");
    assert_eq!((during.received, during.dropped()), (TOTAL, 0));
    assert!(during.delivered < TOTAL, "{during:?}");
    proxy.set_up(true);
    drop(queue);
    let report = task.await.unwrap();
    let s = &report.stats;
    assert_eq!(
        (s.received, s.delivered, s.pending(), s.dropped()),
        (TOTAL, TOTAL, 0, 0)
    );
    let keys = m.list("outage", "audit/CFLogs/");
    assert_eq!(keys.len(), report.outputs.len());
    assert_each_once(
        &read_back(&archive(&m.config("outage")), &keys).await,
        TOTAL,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_overwrite_each_other_and_the_cursor_round_trips() {
    let m = moto::moto();
    let cfg = m.bucket("shared");
    let a = archive(&cfg);
    // Two instances, and a second process that wrongly reuses index 0:
    // every object still gets its own key.
    let sinks = [0, 1, 0].map(|i| {
        ObjectSink::new(
            a.clone(),
            roll(2048, i),
            ctx(),
            Kind::AppLog,
            None,
            None,
            "s3",
        )
    });
    let reports = futures_util::future::join_all(
        sinks
            .into_iter()
            .map(|s| feed(s, 3000, fast_retries(100), |_| {})),
    )
    .await;
    let written: usize = reports.iter().map(|r| r.outputs.len()).sum();
    let keys = m.list("shared", "audit/CFLogs/");
    assert_eq!(keys.len(), written, "no object overwritten");
    for r in &reports {
        assert_eq!(r.stats.delivered, 3000);
    }
    let objects = read_back(&a, &keys).await;
    let total: usize = objects.iter().map(|o| o.2.len()).sum();
    assert_eq!(total, 9000);
    let instance_1 = keys.iter().filter(|k| k.contains("_1_")).count();
    assert_eq!(instance_1, reports[1].outputs.len());

    // The audit-events cursor kept in the bucket.
    assert_eq!(a.get_cursor("test", "audit-events").await.unwrap(), None);
    a.put_cursor("test", "audit-events", "2026-11-27T15:00:00Z/guid-1".into())
        .await
        .unwrap();
    assert_eq!(
        a.get_cursor("test", "audit-events")
            .await
            .unwrap()
            .as_deref(),
        Some(&b"2026-11-27T15:00:00Z/guid-1"[..])
    );
    assert_eq!(
        m.list("shared", "audit/CFLogs-State/"),
        ["audit/CFLogs-State/test/audit-events"]
    );
}

#[test]
fn s3_options_are_checked_with_the_others_and_secrets_stay_hidden() {
    let out = common::nozzle()
        .args([
            "run",
            "--sink",
            "s3",
            "--s3-sse",
            "aes256",
            "--s3-kms-key-id",
            "k1",
            "--s3-access-key-id",
            "AKIA",
            "--signing-key",
            "/nonexistent/key.pem",
            "--roll-bytes",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        "--s3-bucket (S3_BUCKET) is required for --sink s3",
        "--rlp-addr (RLP_ADDR) is required",
    ] {
        assert!(err.contains(line), "{line} in {err}");
    }
    // With a bucket, the remaining s3 problems are listed together.
    let out = common::nozzle()
        .args([
            "run",
            "--sink",
            "s3",
            "--s3-bucket",
            "b",
            "--s3-kms-key-id",
            "k1",
            "--s3-access-key-id",
            "AKIA",
            "--signing-key",
            "/nonexistent/key.pem",
            "--roll-bytes",
            "10",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        "--s3-kms-key-id (S3_KMS_KEY_ID) needs --s3-sse aws:kms",
        "--s3-access-key-id and --s3-secret-access-key (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY) go together",
        "--roll-bytes (ROLL_BYTES) must be at least 1024, not 10",
        "--signing-key (SIGNING_KEY): cannot read key file /nonexistent/key.pem",
    ] {
        assert!(err.contains(line), "{line} in {err}");
    }
    let cfg = moto_free_config();
    let debug = format!("{cfg:?}");
    assert!(
        !debug.contains("s3cr3t") && debug.contains("Secret(********)"),
        "{debug}"
    );
}

fn moto_free_config() -> S3Config {
    S3Config {
        bucket: "b".into(),
        prefix: String::new(),
        region: "us-east-1".into(),
        endpoint: None,
        path_style: false,
        access_key_id: Some("AKIA".into()),
        secret_access_key: Some("s3cr3t".into()),
        session_token: Some("t0k3n".into()),
        sse: Sse::Aes256,
        kms_key_id: None,
        ca_pem: None,
        object_lock: None,
    }
}

/// The audit-events cursor of a pushed instance (ephemeral disk) lives in
/// the S3 sink's bucket: the configuration chooses it when --sink has s3 and
/// no --audit-cursor-file is given, and a cursor stored through it is the
/// object a restarted instance reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_cursor_is_kept_in_the_s3_bucket_unless_a_file_is_named() {
    use cf_audit_nozzle::config::{Cli, Command};
    use cf_audit_nozzle::source::audit_events::{Cursor, CursorStore};
    use clap::Parser;
    let m = moto::moto();
    let s3 = m.bucket("cursor");
    let endpoint = s3.endpoint.clone().unwrap();
    let config = |extra: &[&str]| {
        let mut args = vec![
            "cf-audit-nozzle",
            "run",
            "--source",
            "gateway",
            "--cf-api",
            "http://127.0.0.1:9",
            "--uaa-client-id",
            "nozzle",
            "--uaa-client-secret",
            "s",
            "--audit-events",
            "on",
            "--foundation",
            "prod",
            "--sink",
            "s3",
            "--s3-bucket",
            "cursor",
            "--s3-prefix",
            "audit",
            "--s3-endpoint",
            &endpoint,
            "--s3-path-style",
            "--s3-access-key-id",
            m.key.as_str(),
            "--s3-secret-access-key",
            m.secret.as_str(),
        ];
        args.extend_from_slice(extra);
        let Command::Run(run) = Cli::try_parse_from(args).expect("parses").command else {
            unreachable!()
        };
        let cfg = cf_audit_nozzle::config::build(&run.validate().expect("valid")).expect("built");
        cfg.audit.audit_events.expect("instance 0 polls").cursor
    };

    let store = config(&[]);
    let CursorStore::Object { name, .. } = &store else {
        panic!("expected the bucket, got {store:?}");
    };
    assert_eq!(
        name,
        "s3://cursor/audit/CFLogs-State/prod/audit-events.cursor.json"
    );
    assert_eq!(store.load().await.unwrap(), None);
    let cursor = Cursor {
        created_at: "2026-11-27T15:00:00Z".into(),
        guids: ["g1".to_string(), "g2".to_string()].into(),
    };
    store.store(&cursor).await.unwrap();
    assert_eq!(
        m.list("cursor", "audit/CFLogs-State/"),
        ["audit/CFLogs-State/prod/audit-events.cursor.json"]
    );
    // A restarted instance (a new configuration) reads it back.
    assert_eq!(config(&[]).load().await.unwrap(), Some(cursor));

    // A named file wins over the bucket.
    let file = config(&["--audit-cursor-file", "/tmp/x.json"]);
    assert!(matches!(file, CursorStore::File(p) if p == std::path::Path::new("/tmp/x.json")));
}

/// Puts a small object: whether the store takes this archive's credentials
/// and trusts its endpoint.
async fn put_probe(archive: &Archive) -> Result<(), String> {
    archive
        .put_json_gz(
            &archive.logs,
            "audit/probe.json.gz",
            bytes::Bytes::from_static(b"{}"),
            &[],
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Feeds `total` app-log records through an S3 sink on `archive` and asserts
/// each of them landed in `bucket` exactly once.
async fn every_record_lands_once(archive: &Archive, bucket: &str, total: u64) {
    let sink = ObjectSink::new(
        archive.clone(),
        roll(256 << 10, 0),
        ctx(),
        Kind::AppLog,
        None,
        None,
        "s3",
    );
    let report = feed(sink, total, fast_retries(1000), |_| {}).await;
    let s = &report.stats;
    assert_eq!(
        (s.received, s.delivered, s.pending(), s.dropped()),
        (total, total, 0, 0)
    );
    let keys = moto::moto().list(bucket, "audit/CFLogs/");
    assert_each_once(&read_back(archive, &keys).await, total);
}

/// Temporary credentials (an assumed role's key, secret and session token):
/// the server refuses the key without its token, and with
/// `session_token` (`--s3-session-token`) every record lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_credentials_are_sent_with_their_session_token() {
    const TOTAL: u64 = 5_000;
    let m = moto::moto();
    let mut cfg = m.bucket("temporary");
    let (key, secret, token) = m.assume_role();
    cfg.access_key_id = Some(key);
    cfg.secret_access_key = Some(secret.into());

    let refused = put_probe(&archive(&cfg)).await;
    assert!(refused.is_err(), "the key was accepted without its token");
    assert!(m.list("temporary", "audit/").is_empty());

    cfg.session_token = Some(token.into());
    let archive = archive(&cfg);
    put_probe(&archive)
        .await
        .expect("the key with its token is accepted");
    every_record_lands_once(&archive, "temporary", TOTAL).await;
}

/// A TLS-terminating forwarder in front of moto whose certificate a private
/// CA signed (for 127.0.0.1). Returns its address and the CA (PEM).
async fn tls_in_front_of(target: SocketAddr) -> (SocketAddr, String) {
    let pki = cf_audit_nozzle::tls::Pki::generate("privateS3CA", &["127.0.0.1"]).unwrap();
    let server = pki.server_config().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, pki.ca_pem)
}

/// An on-premise store behind HTTPS with a private CA: refused without
/// `--s3-ca` (the certificate's issuer is unknown), every record once with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_signed_by_a_private_ca_is_trusted_with_s3_ca() {
    const TOTAL: u64 = 5_000;
    let m = moto::moto();
    let mut cfg = m.bucket("private-ca");
    let moto_addr: SocketAddr = m.endpoint.trim_start_matches("http://").parse().unwrap();
    let (addr, ca) = tls_in_front_of(moto_addr).await;
    cfg.endpoint = Some(format!("https://{addr}"));

    let err = put_probe(&archive(&cfg)).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    cfg.ca_pem = Some(ca.into_bytes());
    let archive = archive(&cfg);
    put_probe(&archive)
        .await
        .expect("the private CA is trusted");
    every_record_lands_once(&archive, "private-ca", TOTAL).await;
}

/// `--s3-ca` is read and checked with the other options; the session token
/// comes from `--s3-session-token`, the binding or `AWS_SESSION_TOKEN` (only
/// with keys of our own), needs the keys when given on its own, and is
/// masked by `config check`.
#[test]
fn s3_ca_and_session_token_options() {
    use cf_audit_nozzle::config::S3Args;
    use clap::Parser;
    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        s3: S3Args,
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = cf_audit_nozzle::tls::Pki::generate("privateS3CA", &["127.0.0.1"]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let parse = |extra: &[&str], aws_token: Option<&str>| {
        let mut argv = vec!["t", "--s3-bucket", "b"];
        argv.extend_from_slice(extra);
        let mut errors = Vec::new();
        let cfg =
            Args::try_parse_from(argv)
                .unwrap()
                .s3
                .s3_config_with(None, aws_token, &mut errors);
        (cfg, errors)
    };
    let keys = ["--s3-access-key-id", "AK", "--s3-secret-access-key", "SK"];

    let (cfg, errors) = parse(&["--s3-ca", ca.to_str().unwrap()], None);
    assert_eq!(errors, Vec::<String>::new());
    assert_eq!(cfg.unwrap().ca_pem, Some(pki.ca_pem.clone().into_bytes()));
    let (_, errors) = parse(&["--s3-ca", junk.to_str().unwrap()], None);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("--s3-ca (S3_CA)"), "{errors:?}");

    let token = |extra: &[&str], aws: Option<&str>| parse(extra, aws).0.unwrap().session_token;
    assert_eq!(token(&keys, Some("from-env")), Some("from-env".into()));
    assert_eq!(token(&[], Some("from-env")), None);
    let flag = [&keys[..], &["--s3-session-token", "from-flag"]].concat();
    assert_eq!(token(&flag, Some("from-env")), Some("from-flag".into()));
    let (_, errors) = parse(&["--s3-session-token", "t"], None);
    assert_eq!(
        errors,
        [
            "--s3-session-token (S3_SESSION_TOKEN) needs --s3-access-key-id and --s3-secret-access-key (temporary credentials come as the three)"
        ]
    );

    let out = common::nozzle()
        .args(["config", "check", "--sink", "s3", "--s3-bucket", "b"])
        .args(["--s3-access-key-id", "AK", "--s3-secret-access-key", "SK"])
        .args(["--rlp-addr", "rlp.service.cf.internal"])
        .env("S3_SESSION_TOKEN", "tok-SECRET")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !stdout.contains("tok-SECRET") && !stderr.contains("tok-SECRET"),
        "{stdout}{stderr}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("--s3-session-token "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(
        line.split_whitespace().collect::<Vec<_>>(),
        ["--s3-session-token", "********", "env", "S3_SESSION_TOKEN"],
        "{line}"
    );
}

/// A forward proxy for `http://` targets that keeps the target of every
/// request it is sent (absolute-form, as a client sends through a proxy)
/// and answers one request per connection: `http://s3-behind-proxy/...`
/// is passed on to `s3` (moto); anything else gets a HEC success reply
/// (which a webhook takes as a 2xx too).
struct RecordingProxy {
    url: String,
    targets: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    async fn start(s3: SocketAddr) -> Self {
        use cf_audit_nozzle::source::emulator::gateway::{http_response, read_request};
        use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
        let targets = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keep = Arc::clone(&targets);
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let keep = Arc::clone(&keep);
                tokio::spawn(async move {
                    let (read, mut write) = tcp.into_split();
                    let Some(req) = read_request(&mut BufReader::new(read)).await else {
                        return;
                    };
                    keep.lock()
                        .unwrap()
                        .push(format!("{} {}", req.method, req.target));
                    let reply = match req.target.strip_prefix("http://s3-behind-proxy") {
                        Some(path) => {
                            let mut head = format!("{} {path} HTTP/1.1\r\n", req.method);
                            for (n, v) in &req.headers {
                                if !matches!(n.as_str(), "connection" | "proxy-connection") {
                                    head.push_str(&format!("{n}: {v}\r\n"));
                                }
                            }
                            head.push_str("connection: close\r\n\r\n");
                            let mut up = tokio::net::TcpStream::connect(s3).await.unwrap();
                            up.write_all(head.as_bytes()).await.unwrap();
                            up.write_all(&req.body).await.unwrap();
                            let mut answer = Vec::new();
                            up.read_to_end(&mut answer).await.unwrap();
                            // The client must not keep this connection: one request each.
                            let end = answer.windows(2).position(|w| w == b"\r\n").unwrap();
                            answer
                                .splice(end + 2..end + 2, b"Connection: close\r\n".iter().copied());
                            answer
                        }
                        None => http_response(
                            200,
                            "application/json",
                            br#"{"text":"Success","code":0}"#,
                        ),
                    };
                    let _ = write.write_all(&reply).await;
                    let _ = write.shutdown().await;
                });
            }
        });
        Self { url, targets }
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

/// Behind a corporate proxy (`HTTP_PROXY`), the HEC receiver, the S3 store
/// and the notification webhook are reached through it, like UAA, the CF
/// API and the gateway (tests/gateway.rs). Their host names resolve
/// nowhere, so nothing arrives unless the proxy is used; the gateway itself
/// is on 127.0.0.1, which `NO_PROXY` exempts. The S3 credentials are an
/// assumed role's, its session token from `AWS_SESSION_TOKEN`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hec_s3_and_the_webhook_go_through_the_proxy_from_the_environment() {
    use cf_audit_nozzle::source::emulator::Feed;
    use cf_audit_nozzle::source::emulator::gateway::{GatewayEmulator, GatewayEmulatorConfig};
    let m = moto::moto();
    m.create_bucket("proxied");
    let (key, secret, token) = m.assume_role();
    let proxy =
        RecordingProxy::start(m.endpoint.trim_start_matches("http://").parse().unwrap()).await;
    let envelopes = (0..10)
        .map(|i| {
            common::log_envelope(
                1_700_000_000_000_000_000 + i,
                "app-guid",
                format!("line {i}"),
                &[("source_type", "APP/PROC/WEB")],
            )
        })
        .collect();
    let gw = GatewayEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        GatewayEmulatorConfig {
            feed: Feed::Fixed(envelopes),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut cmd = common::nozzle();
    cmd.env("RUST_LOG", "warn")
        .env("HTTP_PROXY", &proxy.url)
        .env("NO_PROXY", "127.0.0.1")
        .env("AWS_SESSION_TOKEN", &token)
        .args(["run", "--source", "gateway"])
        .args(["--gateway-url", &gw.url(), "--uaa-url", &gw.url()])
        .args(["--uaa-client-id", "nozzle", "--uaa-client-secret", "s"])
        .args(["--sink", "http,s3", "--batch-max-age-ms", "10"])
        .args(["--http-url", "http://hec-behind-proxy", "--hec-token", "t"])
        .args(["--s3-bucket", "proxied", "--s3-prefix", "audit"])
        .args(["--s3-endpoint", "http://s3-behind-proxy", "--s3-path-style"])
        .args([
            "--s3-access-key-id",
            &key,
            "--s3-secret-access-key",
            &secret,
        ])
        .args(["--notify-url", "http://notify-behind-proxy/landed"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = common::spawn(&mut cmd);
    let hec = "POST http://hec-behind-proxy/services/collector/event";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !proxy.targets().iter().any(|t| t == hec) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            proxy.targets()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At shutdown the s3 sink completes its file, uploads it and notifies.
    let out = child.stop().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains(&token) && !stderr.contains(&secret),
        "{stderr}"
    );

    let keys = m.list("proxied", "audit/CFLogs/");
    assert_eq!(keys.len(), 1, "{keys:?}\n{stderr}");
    let targets = proxy.targets();
    let puts: Vec<&String> = targets.iter().filter(|t| t.starts_with("PUT ")).collect();
    assert_eq!(
        puts,
        [&format!("PUT http://s3-behind-proxy/proxied/{}", keys[0])],
        "{targets:?}"
    );
    assert!(
        targets
            .iter()
            .all(|t| t.starts_with("POST http://hec-behind-proxy/")
                || t.starts_with("PUT http://s3-behind-proxy/")
                || t == "POST http://notify-behind-proxy/landed"),
        "{targets:?}"
    );
    assert_eq!(
        targets
            .iter()
            .filter(|t| *t == "POST http://notify-behind-proxy/landed")
            .count(),
        1,
        "{targets:?}"
    );
    let archive = archive(&S3Config {
        session_token: Some(token.into()),
        access_key_id: Some(key),
        secret_access_key: Some(secret.into()),
        ..m.config("proxied")
    });
    let body = archive.get(&archive.logs, &keys[0]).await.unwrap().body;
    let file: serde_json::Value = serde_json::from_slice(&gunzip(&body).unwrap()).unwrap();
    // Ten records, then the declaration of the last number, written at shutdown.
    let records = file["Records"].as_array().unwrap();
    assert_eq!(records.len(), 10 + 1);
    assert_eq!(records[10]["last_seq"], 9, "{}", records[10]);
}

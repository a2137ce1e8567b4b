//! The `/v3/audit_events` poller against a test Cloud Controller: 12,000
//! events on pages that split seconds, events arriving while a poll is under
//! way, and a restart in the middle of pagination with the cursor in a file.
//! Every event must arrive exactly once, as a schema-valid record.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cf_audit_nozzle::backoff::Backoff;
use cf_audit_nozzle::pipeline::{Pipeline, Summary};
use cf_audit_nozzle::record::{ApiSource, Kind};
use cf_audit_nozzle::route::Router;
use cf_audit_nozzle::sink::{Batch, BatchConfig, Sink, SinkFailure, SinkQueue, run_sink};
use cf_audit_nozzle::source::audit_events::{
    self, AuditEventsConfig, AuditStatus, CursorStore, load_cursor,
};
use common::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// `n` events from `start` on, 30 per second, guids `<batch>-0000-4000-8000-<i>`.
fn events(batch: u32, start: chrono::DateTime<chrono::Utc>, n: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let t = start + chrono::Duration::seconds((i / 30) as i64);
            let created = t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            cc::event(&format!("{batch:08x}-0000-4000-8000-{i:012x}"), &created, i)
        })
        .collect()
}

fn config(cursor: &std::path::Path) -> AuditEventsConfig {
    AuditEventsConfig {
        per_page: 1000,
        lookback: Duration::from_secs(3600),
        cursor: CursorStore::File(cursor.to_path_buf()),
        poll_interval: Duration::from_millis(50),
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(100)),
        ..AuditEventsConfig::default()
    }
}

/// Runs the poller into a file pipeline until `stop` is cancelled (by the
/// test CC or by `done`), then shuts down in order, as `run::run` does.
async fn run_poller(
    cc: &cc::TestCc,
    cfg: AuditEventsConfig,
    stop: CancellationToken,
    done: impl Fn(&audit_events::AuditSnapshot) -> bool,
) -> (Summary, audit_events::AuditSnapshot, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::start(&file_pipeline(dir.path())).unwrap();
    let status = Arc::new(AuditStatus::default());
    let task = tokio::spawn(audit_events::run(
        cfg,
        cc.client(),
        pipeline.router(),
        Arc::clone(&status),
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !stop.is_cancelled() && !done(&status.snapshot()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out: {:?}",
            status.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let (summary, poller) = tokio::join!(pipeline.finish(Duration::from_secs(20)), task);
    poller.unwrap();
    assert!(summary.complete);
    (summary, status.snapshot(), dir)
}

fn api_records(summary: &Summary) -> Vec<Value> {
    records_by_kind(summary).remove("api").unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_exactly_once_across_a_restart_in_the_middle_of_pagination() {
    let cc = cc::start().await;
    let base = chrono::Utc::now() - chrono::Duration::minutes(40);
    let first = events(0xa, base, 12_000); // 400 seconds
    let last_second = base + chrono::Duration::seconds(399);
    *cc.events.lock().unwrap() = first;
    // During the first poll: 300 more events, 90 of them in the last second
    // already partly read (a boundary second that grows).
    cc.append_after
        .lock()
        .unwrap()
        .insert(3, events(0xb, last_second, 300));
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor.json");

    // Run 1 stops (a restart) when the 6th page is asked for: 5 pages of
    // 1,000 read, the 6th abandoned mid-request.
    let stop = CancellationToken::new();
    *cc.cancel_at.lock().unwrap() = Some((6, stop.clone()));
    let (summary1, status1, _d1) = run_poller(&cc, config(&cursor), stop, |_| false).await;
    let run1 = api_records(&summary1);
    assert_eq!(status1.events, 5000, "{status1:?}");
    assert_eq!(run1.len(), 5000);
    assert_eq!(status1.rewinds, 0);
    let kept = load_cursor(&cursor)
        .unwrap()
        .expect("cursor written at shutdown");
    // Event 4999 is at second 166 (4999 / 30); 19 of that second's 30 were read.
    let second_166 =
        (base + chrono::Duration::seconds(166)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(kept.created_at, second_166);
    assert_eq!(kept.guids.len(), 20);

    // Run 2 resumes from the file; 700 more events arrive while it reads.
    // (They are newer than every event so far, as CC's clock makes them.)
    let later = last_second + chrono::Duration::seconds(10);
    cc.append_after.lock().unwrap().insert(
        cc.event_requests.load(std::sync::atomic::Ordering::SeqCst) + 2,
        events(0xc, later, 700),
    );
    let (summary2, status2, _d2) =
        run_poller(&cc, config(&cursor), CancellationToken::new(), |s| {
            s.polls_completed >= 3
        })
        .await;
    let run2 = api_records(&summary2);
    // The boundary second of the cursor was read again and its 20 known events skipped, and
    // each later poll re-read its own last second.
    assert!(status2.duplicates_skipped >= 20, "{status2:?}");
    assert_eq!(status2.invalid, 0);

    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for r in run1.iter().chain(&run2) {
        schema::assert_valid_api_record(r);
        assert_eq!(r["sourceEvent"], "audit_events");
        assert_eq!(r["userIdentity"]["name"], "admin@example.com");
        assert_eq!(
            r["requestParameters"]["environment_variables"],
            "PRIVATE DATA HIDDEN"
        );
        *seen
            .entry(r["eventID"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let expected: Vec<String> = cc
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["guid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(expected.len(), 13_000);
    assert_eq!(
        run1.len() + run2.len(),
        13_000,
        "delivered more or fewer than the events"
    );
    assert!(
        seen.values().all(|&n| n == 1),
        "an event was delivered twice"
    );
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), {
        let mut e = expected.clone();
        e.sort();
        e
    });
    // The cursor now stands at the last event's second.
    let kept = load_cursor(&cursor).unwrap().unwrap();
    let last = (later + chrono::Duration::seconds(699 / 30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(kept.created_at, last);
    assert_eq!(kept.guids.len(), 700 - (699 / 30) * 30);
}

/// A sink that delivers only once its gate is open, and remembers the audit
/// event ids it delivered.
struct GateSink {
    open: tokio::sync::watch::Receiver<bool>,
    delivered: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Sink for GateSink {
    fn name(&self) -> &str {
        "gate"
    }

    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        let _ = self.open.wait_for(|open| *open).await;
        let mut d = self.delivered.lock().unwrap();
        for r in batch.records {
            if let Some(ApiSource::AuditEvents(a)) = r.api.as_deref().map(|a| &a.source) {
                d.push(a.guid.clone());
            }
        }
        Ok(batch.records.len() as u64)
    }

    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        Ok(0)
    }
}

/// A sink whose queue is full turns pages away: the poller goes back to the
/// last confirmed cursor (never past what was not delivered) and, once the
/// sink moves again, every event arrives (some twice, none lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sink_queue_sends_the_poller_back_and_loses_nothing() {
    let cc = cc::start().await;
    let base = chrono::Utc::now() - chrono::Duration::minutes(20);
    *cc.events.lock().unwrap() = events(0xd, base, 3000);
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor.json");

    let (open_tx, open) = tokio::sync::watch::channel(false);
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Room for one page and a half: the second page is turned away while the first waits.
    let (queue, rx) = SinkQueue::new("gate", 1500);
    let stats = Arc::clone(queue.stats());
    let sink = tokio::spawn(run_sink(
        GateSink {
            open,
            delivered: Arc::clone(&delivered),
        },
        rx,
        Arc::clone(&stats),
        BatchConfig {
            max_records: Some(1000),
            max_age: Duration::from_millis(10),
            ..BatchConfig::default()
        },
    ));
    let router = Arc::new(Router::new(
        vec![(queue, vec![Kind::Api])],
        Default::default(),
        None,
        false,
    ));
    let status = Arc::new(AuditStatus::default());
    let stop = CancellationToken::new();
    let poller = tokio::spawn(audit_events::run(
        config(&cursor),
        cc.client(),
        Arc::clone(&router),
        Arc::clone(&status),
        stop.clone(),
    ));

    let s = Arc::clone(&status);
    wait_for("two rewinds", Duration::from_secs(30), move || {
        s.snapshot().rewinds >= 2
    })
    .await;
    assert!(
        stats
            .dropped_queue_full
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1000
    );
    assert_eq!(
        load_cursor(&cursor).unwrap(),
        None,
        "nothing was confirmed while the sink held the first page"
    );

    open_tx.send(true).unwrap();
    let last = (base + chrono::Duration::seconds(2999 / 30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let c = cursor.clone();
    let l = last.clone();
    wait_for(
        "the cursor at the last event",
        Duration::from_secs(30),
        move || load_cursor(&c).unwrap().is_some_and(|k| k.created_at == l),
    )
    .await;
    stop.cancel();
    poller.await.unwrap();
    drop(router);
    sink.await.unwrap();

    let got = delivered.lock().unwrap().clone();
    let unique: std::collections::BTreeSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 3000, "every event delivered");
    let expected: std::collections::BTreeSet<String> = cc
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["guid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        unique
            .into_iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    // The first page sat in the sink while it was read again: those arrive twice.
    assert!(
        got.len() > 3000,
        "re-read pages are delivered again ({} records)",
        got.len()
    );
    let k = load_cursor(&cursor).unwrap().unwrap();
    assert_eq!(k.guids.len(), 3000 - (2999 / 30) * 30);
}

/// The cursor kept as an object (how the S3 sink's bucket keeps it for an
/// instance with an ephemeral disk): written after the sinks settle, read
/// back by the next start, which then delivers nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_can_live_in_an_object_store() {
    let cc = cc::start().await;
    let base = chrono::Utc::now() - chrono::Duration::minutes(5);
    *cc.events.lock().unwrap() = events(0xe, base, 2000);
    let object: Arc<std::sync::Mutex<Option<bytes::Bytes>>> = Default::default();
    let (g, p) = (Arc::clone(&object), Arc::clone(&object));
    let store = CursorStore::Object {
        name: "memory://cursor".into(),
        get: Arc::new(move || {
            let v = g.lock().unwrap().clone();
            Box::pin(async move { Ok(v) })
        }),
        put: Arc::new(move |b| {
            *p.lock().unwrap() = Some(b);
            Box::pin(async { Ok(()) })
        }),
    };
    let cfg = AuditEventsConfig {
        cursor: store,
        ..config(std::path::Path::new("/nonexistent/unused"))
    };
    let (s1, st1, _d1) = run_poller(&cc, cfg.clone(), CancellationToken::new(), |s| {
        s.polls_completed >= 1
    })
    .await;
    assert_eq!(api_records(&s1).len(), 2000);
    assert_eq!(st1.errors, 0);
    let kept: serde_json::Value =
        serde_json::from_slice(&object.lock().unwrap().clone().unwrap()).unwrap();
    let last = (base + chrono::Duration::seconds(1999 / 30))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(kept["created_at"], last.as_str());
    assert_eq!(
        kept["guids"].as_array().unwrap().len(),
        2000 - (1999 / 30) * 30
    );

    let (s2, st2, _d2) = run_poller(&cc, cfg, CancellationToken::new(), |s| {
        s.polls_completed >= 1
    })
    .await;
    assert_eq!(
        api_records(&s2).len(),
        0,
        "nothing delivered twice after a restart"
    );
    assert_eq!(st2.duplicates_skipped, (2000 - (1999 / 30) * 30) as u64);
}

/// Each event's guid, checked to have arrived exactly once, as valid records.
fn assert_each_once(records: &[Value], events: &[Value]) {
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for r in records {
        schema::assert_valid_api_record(r);
        *seen
            .entry(r["eventID"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "an event arrived twice");
    let mut expected: Vec<String> = events
        .iter()
        .map(|e| e["guid"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    assert_eq!(seen.into_keys().collect::<Vec<_>>(), expected);
}

/// Cloud Controller's `pagination.next.href` points to another origin: the
/// poller does not follow it with its token (the other origin receives
/// nothing), counts it, and the next poll reads on from the API's own URL,
/// so every event still arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_page_on_another_origin_is_not_followed_with_the_token() {
    let cc = cc::start().await;
    let elsewhere = peer::Peer::start(peer::Reply::Json(200, "{}".into())).await;
    *cc.link_base.lock().unwrap() = Some(elsewhere.url.clone());
    let all = events(
        0xd,
        chrono::Utc::now() - chrono::Duration::minutes(30),
        1500,
    );
    *cc.events.lock().unwrap() = all.clone();
    let dir = tempfile::tempdir().unwrap();
    let (summary, status, _d) = run_poller(
        &cc,
        config(&dir.path().join("cursor.json")),
        CancellationToken::new(),
        |s| s.polls_completed >= 1,
    )
    .await;
    assert!(elsewhere.seen().is_empty(), "{:?}", elsewhere.seen());
    // Poll 1: page 1 (1,000 events) and a refused link; poll 2: the other
    // 500 from the cursor's second on, on one page without a next link.
    assert_eq!((status.refused_links, status.errors), (1, 1), "{status:?}");
    assert_eq!(status.events, 1500);
    assert_each_once(&api_records(&summary), &all);
}

/// An audit page larger than `--cf-max-response-bytes` is not taken: the
/// poller counts it and asks again from the same cursor for half as many
/// events a page; nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_page_is_asked_for_again_in_smaller_pages() {
    const CAP: usize = 1 << 20;
    let cc = cc::start().await;
    let mut all = events(
        0xe,
        chrono::Utc::now() - chrono::Duration::minutes(30),
        2000,
    );
    all[0]["data"]["request"]["note"] = Value::String("x".repeat(500_000));
    let bytes = |n: usize| -> usize { all[..n].iter().map(|e| e.to_string().len()).sum() };
    // Precondition: 1,000 events a page are over the cap, 500 well under.
    assert!(
        bytes(1000) > CAP && bytes(500) + 4096 < CAP,
        "{} {}",
        bytes(1000),
        bytes(500)
    );
    *cc.events.lock().unwrap() = all.clone();
    *cc.max_body.lock().unwrap() = Some(CAP);
    let dir = tempfile::tempdir().unwrap();
    let (summary, status, _d) = run_poller(
        &cc,
        config(&dir.path().join("cursor.json")),
        CancellationToken::new(),
        |s| s.polls_completed >= 1,
    )
    .await;
    assert_eq!(
        (status.oversized_pages, status.errors, status.events),
        (1, 1, 2000),
        "{status:?}"
    );
    assert_each_once(&api_records(&summary), &all);
}

/// A test server whose answers are larger than a 1 MiB cap: sent in chunks
/// without a length (`/chunked`, also as UAA's token and the API root), or
/// with a `Content-Length` (`/declared`); `/small` fits.
async fn large_answers() -> String {
    use axum::body::Body;
    use axum::routing::get;
    fn chunked() -> Body {
        let pad = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let parts = std::iter::once(bytes::Bytes::from_static(
            b"{\"access_token\":\"t\",\"pad\":\"",
        ))
        .chain(std::iter::repeat_n(pad, 64))
        .chain(std::iter::once(bytes::Bytes::from_static(b"\"}")))
        .map(Ok::<_, std::io::Error>);
        Body::from_stream(futures_util::stream::iter(parts))
    }
    let app = axum::Router::new()
        .route("/", get(|| async { chunked() }))
        .route("/oauth/token", axum::routing::post(|| async { chunked() }))
        .route("/v3/chunked", get(|| async { chunked() }))
        .route(
            "/v3/declared",
            get(|| async { format!("{{\"pad\":\"{}\"}}", "x".repeat(4 << 20)) }),
        )
        .route("/v3/small", get(|| async { "{\"resources\":[]}" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Cloud Controller, UAA and the API root: a body over the cap is refused
/// with an error naming the URL and the option, whether it says its length
/// or not, and a body within it is read.
#[tokio::test]
async fn bodies_over_the_cap_are_refused_whatever_they_announce() {
    use cf_audit_nozzle::source::cf_api::discover_with_limit;
    use cf_audit_nozzle::source::cloud_controller::CloudController;
    use cf_audit_nozzle::source::uaa::{TokenProvider, UaaConfig};
    const CAP: usize = 1 << 20;
    let base = large_answers().await;
    let http = cf_audit_nozzle::http_client::http_client(None, false).unwrap();
    let cc = CloudController {
        base: base.parse().unwrap(),
        http: http.clone(),
        token: TokenProvider::fixed("t"),
        max_body: CAP,
    };
    for path in ["/v3/chunked", "/v3/declared"] {
        let err = match cc.get_json(&cc.url(path)).await {
            Ok(body) => panic!("read {path} whole: {} bytes", body.to_string().len()),
            Err(e) => e,
        };
        assert!(err.is_too_large(), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "Cloud Controller's answer to GET {base}{path} is larger than 1048576 bytes (--cf-max-response-bytes); it was not read"
            )
        );
    }
    assert_eq!(
        cc.get_json(&cc.url("/v3/small")).await.unwrap(),
        serde_json::json!({"resources": []})
    );

    let token_url = format!("{base}/oauth/token");
    let uaa = TokenProvider::with_limit(
        UaaConfig {
            token_url: token_url.parse().unwrap(),
            client_id: "nozzle".into(),
            client_secret: "s".into(),
        },
        http.clone(),
        CAP,
    );
    let err = match uaa.authorization().await {
        Ok(_) => panic!("read the oversized token response whole"),
        Err(e) => e,
    };
    assert_eq!(
        err.to_string(),
        format!(
            "UAA at {token_url} answered HTTP 200 with an unusable token response: the answer is larger than 1048576 bytes (--cf-max-response-bytes); it was not read"
        )
    );
    let root = reqwest::Url::parse(&base).unwrap();
    let err = match discover_with_limit(&http, &root, CAP).await {
        Ok(_) => panic!("read the oversized API root whole"),
        Err(e) => e,
    };
    assert_eq!(
        err.to_string(),
        format!(
            "the Cloud Foundry API root at {root} is not usable: the answer is larger than 1048576 bytes (--cf-max-response-bytes); it was not read"
        )
    );
}

//! The correlator (issue 22): the firehose line, the audit event and the
//! security event of one action become one numbered record naming every
//! source; halves that are missing, late or out of order still give exactly
//! one record per action; nothing is lost, nothing is doubled, memory is
//! bounded. Tokio's clock is paused and advanced by hand.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cf_audit_nozzle::classify::rules::Filters;
use cf_audit_nozzle::proto::{Envelope, Log, envelope};
use cf_audit_nozzle::record::security::{read_line, security_record};
use cf_audit_nozzle::record::{EncodeContext, Kind, Position, Record, audit_event_record};
use cf_audit_nozzle::route::{CorrelateConfig, Router};
use cf_audit_nozzle::sink::{Intake, SinkQueue};
use serde_json::{Value, json};
use tokio::time::{Instant, advance};

const T0: i64 = 1_700_000_000_000_000_000;
const SEC: i64 = 1_000_000_000;
const USER: &str = "d5a2f3b4-1111-4222-8333-944455556666";

fn app(n: u32) -> String {
    format!("cdabc600-0b73-48e1-b7d2-26af2c63f9{n:02}")
}

fn router(cfg: CorrelateConfig) -> (Router, Intake) {
    let (q, rx) = SinkQueue::new("all", 1_000_000);
    let r = Router::new(vec![(q, vec![Kind::Api])], Filters::default(), None, false);
    assert!(r.correlate(cfg).is_some() || cfg.hold.is_zero());
    (r, rx)
}

/// A Cloud Controller log line from the firehose, at `at_ns`.
fn firehose(text: &str, guid: &str, at_ns: i64) -> Envelope {
    Envelope {
        timestamp: at_ns,
        source_id: guid.into(),
        instance_id: "0".into(),
        deprecated_tags: Default::default(),
        tags: BTreeMap::from([
            ("origin".to_string(), "cloud_controller".to_string()),
            ("source_type".to_string(), "API".to_string()),
            ("app_id".to_string(), guid.to_string()),
        ]),
        message: Some(envelope::Message::Log(Log {
            payload: format!("{text} {guid}").into(),
            r#type: 0,
        })),
    }
}

/// A CC security event (CEF) for `method path`, by USER, at `at_ns`.
fn security(method: &str, path: &str, status: u16, req: &str, at_ns: i64) -> Record {
    let result = if status < 400 {
        "success"
    } else {
        "clientError"
    };
    let line = format!(
        "CEF:0|cloud_foundry|cloud_controller_ng|3.180.0|{method} {path}|{method} {path}|0|rt={} suser=dev@example.com suid={USER} cs1Label=userAuthenticationMechanism cs1=oauth-access-token cs2Label=vcapRequestId cs2={req} request={path} requestMethod={method} cs3Label=result cs3={result} cs4Label=httpStatusCode cs4={status} src=10.0.1.5 dst=10.0.2.9 cs5Label=xForwardedFor cs5=198.51.100.7, 10.0.0.2",
        at_ns / 1_000_000
    );
    security_record(read_line(&line, "api/0", None).unwrap().unwrap())
}

/// A `/v3/audit_events` event by USER on app `guid`.
fn audit(guid: &str, ty: &str, target: &str, at_ns: i64) -> Record {
    let t = chrono::DateTime::from_timestamp_nanos(at_ns).to_rfc3339();
    audit_event_record(json!({
        "guid": guid, "type": ty, "created_at": t,
        "actor": {"guid": USER, "type": "user", "name": "dev@example.com"},
        "target": {"guid": target, "type": "app", "name": "my-app"},
        "data": {"request": {"state": "STARTED"}},
    }))
    .unwrap()
}

/// Every api record delivered so far: (seq, JSON).
fn delivered(rx: &mut Intake) -> Vec<(u64, Value)> {
    let ctx = EncodeContext::new("f");
    let mut out = Vec::new();
    while let Some(chunk) = rx.try_recv() {
        for r in chunk {
            let seq = match r.number.as_ref().map(|n| n.position) {
                Some(Position::Seq(s)) => s,
                other => panic!("{other:?}"),
            };
            out.push((seq, serde_json::from_str(&r.to_json(&ctx)).unwrap()));
        }
    }
    out
}

fn summary(v: &Value) -> (String, String, Value) {
    (
        v["eventName"].as_str().unwrap().to_string(),
        v["resources"][0]["guid"].as_str().unwrap_or("").to_string(),
        v["sources"].clone(),
    )
}

#[tokio::test(start_paused = true)]
async fn one_record_per_action_whatever_order_its_halves_come_in() {
    let (router, mut rx) = router(CorrelateConfig::default());
    let (a, b, c, d, e) = (app(1), app(2), app(3), app(4), app(5));
    // t=0: A's security event and D's firehose line; B's firehose line;
    // C's refused request (403), which waits for nothing.
    assert!(router.dispatch_records(vec![security(
        "PATCH",
        &format!("/v3/apps/{a}"),
        200,
        "req-a",
        T0
    )]));
    router.dispatch(vec![
        firehose("Stopping app with guid", &d, T0),
        firehose("Starting app with guid", &b, T0),
    ]);
    router.dispatch_records(vec![security(
        "PATCH",
        &format!("/v3/apps/{c}"),
        403,
        "req-c",
        T0,
    )]);
    let now = delivered(&mut rx);
    assert_eq!(now.len(), 1, "only the refused request left at once");
    assert_eq!(now[0].0, 0);
    let denied = &now[0].1;
    assert_eq!(
        summary(denied),
        (
            "audit.app.update".into(),
            c.clone(),
            json!(["cc_security_event"])
        )
    );
    assert_eq!(denied["outcome"], "denied");
    assert_eq!(denied["httpStatusCode"], 403);
    assert_eq!(denied["errorCode"], "clientError");
    assert_eq!(denied["errorMessage"], "HTTP 403 Forbidden");
    assert_eq!(denied["requestID"], "req-c");
    assert_eq!(denied["sourceIPAddress"], "198.51.100.7");

    // t=2s: A's firehose line (late) and D's security event (after its line).
    advance(Duration::from_secs(2)).await;
    router.dispatch(vec![firehose("Updated app with guid", &a, T0 + SEC)]);
    router.dispatch_records(vec![security(
        "POST",
        &format!("/v3/apps/{d}/actions/stop"),
        200,
        "req-d",
        T0 + SEC,
    )]);
    router.release_held(Some(Instant::now()));
    assert_eq!(delivered(&mut rx), [], "writes wait for their audit event");

    // t=7s: the poller reads A's audit event (all three halves now: it
    // leaves at once) and E's, which has no other half.
    advance(Duration::from_secs(5)).await;
    router.dispatch_records(vec![
        audit(
            "a595fe2f-01ff-4965-a50c-290258ab8582",
            "audit.app.update",
            &a,
            T0 + SEC / 2,
        ),
        audit(
            "0f0e0d0c-0b0a-4909-8807-060504030201",
            "audit.app.start",
            &e,
            T0 + 3 * SEC,
        ),
    ]);
    let now = delivered(&mut rx);
    assert_eq!(now.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
    let merged = &now
        .iter()
        .find(|(_, v)| v["resources"][0]["guid"] == a.as_str())
        .unwrap()
        .1;
    assert_eq!(
        summary(merged),
        (
            "audit.app.update".into(),
            a.clone(),
            json!(["firehose", "audit_events", "cc_security_event"])
        )
    );
    assert_eq!(merged["eventID"], "a595fe2f-01ff-4965-a50c-290258ab8582");
    assert_eq!(merged["sourceEvent"], "audit_events");
    assert_eq!(
        merged["userIdentity"],
        json!({"type": "user", "guid": USER, "name": "dev@example.com", "authMechanism": "oauth-access-token"})
    );
    assert_eq!(merged["outcome"], "success");
    assert_eq!(merged["httpStatusCode"], 200);
    assert_eq!(merged["requestID"], "req-a");
    assert_eq!(merged["sourceIPAddress"], "198.51.100.7");
    assert_eq!(merged["forwardedFor"], json!(["198.51.100.7", "10.0.0.2"]));
    assert_eq!(merged["readOnly"], false);
    assert!(merged.get("errorCode").is_none());
    let alone = &now
        .iter()
        .find(|(_, v)| v["resources"][0]["guid"] == e.as_str())
        .unwrap()
        .1;
    assert_eq!(summary(alone).2, json!(["audit_events"]));

    // t=9.999s: nothing is due yet; t=10s: B and D leave with what they have.
    advance(Duration::from_millis(2999)).await;
    router.release_held(Some(Instant::now()));
    assert_eq!(delivered(&mut rx), []);
    advance(Duration::from_millis(1)).await;
    router.release_held(Some(Instant::now()));
    let mut now = delivered(&mut rx);
    now.sort_by_key(|(s, _)| *s);
    assert_eq!(now.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [3, 4]);
    let mut got: Vec<_> = now.iter().map(|(_, v)| summary(v)).collect();
    got.sort_by_key(|(name, ..)| name.clone());
    assert_eq!(
        got,
        [
            ("audit.app.start".into(), b.clone(), json!(["firehose"])),
            (
                "audit.app.stop".into(),
                d.clone(),
                json!(["firehose", "cc_security_event"])
            ),
        ]
    );
    let stopped = &now
        .iter()
        .find(|(_, v)| v["resources"][0]["guid"] == d.as_str())
        .unwrap()
        .1;
    assert_eq!(stopped["sourceEvent"], "firehose");
    assert_eq!(stopped["requestID"], "req-d");
    assert_eq!(stopped["userIdentity"]["guid"], USER);

    // Nothing is held any more, and nothing more comes out.
    router.release_held(None);
    assert_eq!(delivered(&mut rx), []);
    let s = router.stats().snapshot();
    assert_eq!(s.api, 5, "five actions, five api records");
}

/// Halves of the same action farther apart than the window, or by
/// another actor or request, stay apart; a half never joins twice.
#[tokio::test(start_paused = true)]
async fn halves_that_do_not_agree_are_not_merged() {
    let (router, mut rx) = router(CorrelateConfig::default());
    let a = app(1);
    let path = format!("/v3/apps/{a}");
    router.dispatch_records(vec![
        security("PATCH", &path, 200, "req-1", T0),
        // The same action again, 6 s later by its own time: outside the window.
        security("PATCH", &path, 200, "req-2", T0 + 6 * SEC),
    ]);
    // Two firehose lines: the first matches req-1, the second req-2.
    router.dispatch(vec![
        firehose("Updated app with guid", &a, T0),
        firehose("Updated app with guid", &a, T0 + 6 * SEC),
        // A third line for which no security event is left.
        firehose("Updated app with guid", &a, T0 + 6 * SEC),
    ]);
    // An audit event of another action name on the same app stays alone.
    router.dispatch_records(vec![audit(
        "11111111-2222-4333-8444-555555555555",
        "audit.app.start",
        &a,
        T0,
    )]);
    advance(Duration::from_secs(10)).await;
    router.release_held(Some(Instant::now()));
    let mut got: Vec<(u64, Value)> = delivered(&mut rx);
    got.sort_by_key(|(s, _)| *s);
    assert_eq!(
        got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    let mut by_request: Vec<(Value, Value)> = got
        .iter()
        .map(|(_, v)| (v["requestID"].clone(), v["sources"].clone()))
        .collect();
    by_request.sort_by_key(|(r, _)| r.to_string());
    assert_eq!(
        by_request,
        [
            (json!("req-1"), json!(["firehose", "cc_security_event"])),
            (json!("req-2"), json!(["firehose", "cc_security_event"])),
            (Value::Null, json!(["audit_events"])),
            (Value::Null, json!(["firehose"])),
        ]
    );
}

/// With `max_entries` actions held, one more sends the oldest out early:
/// counted, never lost, and memory stays bounded.
#[tokio::test(start_paused = true)]
async fn the_held_actions_are_bounded_and_none_is_lost() {
    let cfg = CorrelateConfig {
        max_entries: 100,
        ..CorrelateConfig::default()
    };
    let (q, mut rx) = SinkQueue::new("all", 1_000_000);
    let router = Router::new(vec![(q, vec![Kind::Api])], Filters::default(), None, false);
    let stats = router.correlate(cfg).unwrap();
    for batch in 0..10u32 {
        let lines: Vec<Envelope> = (0..100u32)
            .map(|i| firehose("Starting app with guid", &format!("{batch:04}-{i:04}"), T0))
            .collect();
        router.dispatch(lines);
        assert!(stats.held.load(Ordering::Relaxed) <= 100);
    }
    assert_eq!(stats.early.load(Ordering::Relaxed), 900);
    assert_eq!(delivered(&mut rx).len(), 900);
    router.release_held(None);
    let last = delivered(&mut rx);
    assert_eq!(last.len(), 100);
    let mut seqs: Vec<u64> = last.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (900..1000).collect::<Vec<u64>>());
    assert_eq!(stats.offered.load(Ordering::Relaxed), 1000);
    assert_eq!(stats.emitted.load(Ordering::Relaxed), 1000);
    assert_eq!(stats.merged.load(Ordering::Relaxed), 0);
    assert_eq!(stats.held.load(Ordering::Relaxed), 0);
}

/// `--correlate-hold 0`: every half is its own record, at once, as before.
#[tokio::test(start_paused = true)]
async fn a_zero_hold_turns_the_correlator_off() {
    let cfg = CorrelateConfig {
        hold: Duration::ZERO,
        ..CorrelateConfig::default()
    };
    let (router, mut rx) = router(cfg);
    assert!(router.correlate(cfg).is_none());
    let a = app(1);
    router.dispatch(vec![firehose("Updated app with guid", &a, T0)]);
    router.dispatch_records(vec![
        security("PATCH", &format!("/v3/apps/{a}"), 200, "r", T0),
        audit(
            "a595fe2f-01ff-4965-a50c-290258ab8582",
            "audit.app.update",
            &a,
            T0,
        ),
    ]);
    let got = delivered(&mut rx);
    let sources: Vec<Value> = got.iter().map(|(_, v)| v["sources"].clone()).collect();
    assert_eq!(
        sources,
        [
            json!(["firehose"]),
            json!(["cc_security_event"]),
            json!(["audit_events"])
        ]
    );
}

/// A router sending api records to `queue` through the correlator (its
/// default bounds), the task releasing what is held every second, and
/// the token that stops that task.
fn correlating_with_release_task(
    queue: SinkQueue,
) -> (
    std::sync::Arc<Router>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let router = std::sync::Arc::new(Router::new(
        vec![(queue, vec![Kind::Api])],
        Filters::default(),
        None,
        false,
    ));
    router.correlate(CorrelateConfig::default()).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(cf_audit_nozzle::route::release_held_every(
        std::sync::Arc::downgrade(&router),
        Duration::from_secs(1),
        stop.clone(),
    ));
    (router, stop, task)
}

/// The release task sends held actions out once their hold passed.
#[tokio::test(start_paused = true)]
async fn the_release_task_sends_out_what_waited_its_hold() {
    let (q, mut rx) = SinkQueue::new("all", 100);
    let (router, stop, task) = correlating_with_release_task(q);
    router.dispatch(vec![firehose("Starting app with guid", &app(1), T0)]);
    tokio::time::sleep(Duration::from_millis(9500)).await;
    assert_eq!(delivered(&mut rx), []);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(delivered(&mut rx).len(), 1);
    stop.cancel();
    task.await.unwrap();
}

/// What is held when the sources stop leaves in pieces a sink's queue takes
/// one after the other, not in one chunk the queue turns away.
#[tokio::test(start_paused = true)]
async fn what_is_held_at_shutdown_leaves_in_pieces_the_queue_takes() {
    let (q, mut rx) = SinkQueue::new("all", 1_500);
    let stats = std::sync::Arc::clone(q.stats());
    let (router, stop, task) = correlating_with_release_task(q);
    let n = 5_000;
    for i in 0..n {
        router.dispatch(vec![firehose("Starting app with guid", &app(i % 50), T0)]);
    }
    // A sink that writes what it takes at once, as the runner does.
    let sink_stats = std::sync::Arc::clone(&stats);
    let sink = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while let Some(chunk) = rx.recv().await {
            sink_stats
                .queued
                .fetch_sub(chunk.len() as u64, Ordering::AcqRel);
            for r in chunk {
                match r.number.as_ref().map(|n| n.position) {
                    Some(Position::Seq(s)) => seqs.push(s),
                    other => panic!("{other:?}"),
                }
            }
        }
        seqs
    });
    stop.cancel();
    task.await.unwrap();
    drop(router);
    let seqs = sink.await.unwrap();
    assert_eq!(seqs, (0..u64::from(n)).collect::<Vec<_>>());
    assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 0);
}

/// A refused request changed nothing: it never takes the firehose line of
/// the change another user made to the same app a moment later.
#[tokio::test(start_paused = true)]
async fn a_refused_request_never_takes_the_line_of_a_change_that_happened() {
    let (router, mut rx) = router(CorrelateConfig::default());
    let a = app(1);
    let path = format!("/v3/apps/{a}");
    router.dispatch(vec![firehose("Updated app with guid", &a, T0)]);
    router.dispatch_records(vec![
        security("PATCH", &path, 403, "req-refused", T0 - SEC / 50),
        security("PATCH", &path, 200, "req-done", T0),
    ]);
    let now = delivered(&mut rx);
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].1["requestID"], "req-refused");
    assert_eq!(now[0].1["sources"], json!(["cc_security_event"]));
    router.release_held(None);
    let rest = delivered(&mut rx);
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].1["requestID"], "req-done");
    assert_eq!(rest[0].1["outcome"], "success");
    assert_eq!(
        rest[0].1["sources"],
        json!(["firehose", "cc_security_event"])
    );
}

/// `POST /v3/apps` names no guid: its security event meets the audit
/// event of the app it created by actor and action, not by target.
#[tokio::test(start_paused = true)]
async fn a_create_without_a_guid_in_its_path_merges_by_its_actor() {
    let (router, mut rx) = router(CorrelateConfig::default());
    let a = app(7);
    // Many held changes by the same user on other apps do not get in the way.
    let others: Vec<Record> = (10..90)
        .map(|n| security("PATCH", &format!("/v3/apps/{}", app(n)), 200, "x", T0))
        .collect();
    router.dispatch_records(others);
    router.dispatch_records(vec![security("POST", "/v3/apps", 201, "req-create", T0)]);
    advance(Duration::from_secs(3)).await;
    router.dispatch_records(vec![audit(
        "22222222-3333-4444-8555-666666666666",
        "audit.app.create",
        &a,
        T0 + SEC,
    )]);
    let now = delivered(&mut rx);
    assert_eq!(now.len(), 1);
    let created = &now[0].1;
    assert_eq!(
        summary(created),
        (
            "audit.app.create".into(),
            a.clone(),
            json!(["audit_events", "cc_security_event"])
        )
    );
    assert_eq!(created["requestID"], "req-create");
    assert_eq!(created["httpStatusCode"], 201);
    router.release_held(None);
    assert_eq!(delivered(&mut rx).len(), 80);
}

//! Enrichment: names from Cloud Controller for envelopes without name tags,
//! through a bounded cache that never holds ingress up.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cf_audit_nozzle::enrich::{self, EnrichConfig, Enricher, Lookup};
use cf_audit_nozzle::pipeline::{Pipeline, Summary};
use cf_audit_nozzle::proto::Envelope;
use cf_audit_nozzle::record::AppNames;
use common::*;
use tokio_util::sync::CancellationToken;

fn app_guid(i: u64) -> String {
    format!("{i:08x}-0000-4000-8000-{i:012x}")
}

/// App logs without name tags (as RTR and container traffic arrive), round robin over `apps`.
fn batch(from: u64, n: u64, apps: u64, source: impl Fn(u64) -> String) -> Vec<Envelope> {
    (from..from + n)
        .map(|i| {
            log_envelope(
                1_700_000_000_000_000_000 + i as i64,
                &source(i % apps),
                format!("line {i}"),
                &[("source_type", "RTR")],
            )
        })
        .collect()
}

struct Running {
    pipeline: Pipeline,
    enricher: Arc<Enricher>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

fn start(lookup: Lookup) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EnrichConfig::default();
    let (enricher, requests) = Enricher::new(&cfg);
    let pipeline = Pipeline::start_with(
        &file_pipeline(dir.path()),
        Default::default(),
        Some(Arc::clone(&enricher)),
    )
    .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(enrich::run(
        cfg,
        Arc::clone(&enricher),
        requests,
        lookup,
        stop.clone(),
    ));
    Running {
        pipeline,
        enricher,
        stop,
        task,
        dir,
    }
}

/// Stops enrichment and the pipeline; keep the folder while reading the files.
async fn finish(r: Running) -> (Summary, tempfile::TempDir) {
    r.stop.cancel();
    r.task.await.unwrap();
    let s = r.pipeline.finish(Duration::from_secs(20)).await;
    assert!(s.complete);
    (s, r.dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_app_logs_over_a_thousand_apps_make_at_most_a_thousand_lookups() {
    let cc = cc::start().await;
    // CC knows 950 of the 1,000 apps; the other 50 were deleted (404, remembered as misses).
    for i in 0..950 {
        let names = [
            format!("app-{i}"),
            format!("{:08x}-1111-4000-8000-000000000000", i % 10),
            format!("space-{}", i % 10),
            "e2a3c0d1-4b5c-4d6e-8f70-1a2b3c4d5e6f".into(),
            "acme".into(),
        ];
        cc.apps.lock().unwrap().insert(app_guid(i), names);
    }
    let r = start(cf_audit_nozzle::source::cloud_controller::app_lookup(
        cc.client(),
    ));
    let router = r.pipeline.router();
    for b in 0..100 {
        router.dispatch(batch(b * 1000, 1000, 1000, app_guid));
        tokio::task::yield_now().await;
    }
    let stats = Arc::clone(r.enricher.stats());
    wait_for("every app looked up", Duration::from_secs(30), || {
        stats.snapshot().lookups == 1000 && cc.app_requests.load(Ordering::SeqCst) == 1000
    })
    .await;
    // Once the table the router reads has every answer, every known app's
    // records get names, and nothing is looked up again.
    let e = Arc::clone(&r.enricher);
    wait_for("the answers published", Duration::from_secs(30), || {
        e.table_counts() == (950, 50, 0)
    })
    .await;
    let before = stats.snapshot();
    drop(router);
    let (summary, _dir) = finish_pipeline(r.pipeline).await;
    // And the declaration of the last app_log number at shutdown.
    assert_eq!(summary.total().delivered, 100_000 + 1);
    // The last 1,000 records go through a second pipeline sharing the names
    // table, so only they are read back from the files.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::start_with(
        &file_pipeline(dir.path()),
        Default::default(),
        Some(Arc::clone(&r.enricher)),
    )
    .unwrap();
    pipeline
        .router()
        .dispatch(batch(100_000, 1000, 1000, app_guid));
    let after = stats.snapshot();
    assert_eq!(after.enriched - before.enriched, 950);
    assert_eq!(after.lookups, 1000);
    assert_eq!(after.misses, 50);
    assert_eq!(after.not_guid, 0);
    let summary = pipeline.finish(Duration::from_secs(20)).await;
    r.stop.cancel();
    r.task.await.unwrap();
    assert_eq!(
        cc.app_requests.load(Ordering::SeqCst),
        1000,
        "≤ 1,000 CC lookups for 101,000 envelopes"
    );
    let logs = records_by_kind(&summary).remove("app_log").unwrap();
    assert_eq!(logs.len(), 1000);
    for r in logs {
        let i = u64::from_str_radix(&r["source_id"].as_str().unwrap()[..8], 16).unwrap();
        if i < 950 {
            assert_eq!(
                r["app"],
                serde_json::json!({"guid": app_guid(i), "name": format!("app-{i}")})
            );
            assert_eq!(r["space"]["name"], format!("space-{}", i % 10));
            assert_eq!(
                r["org"],
                serde_json::json!({"guid": "e2a3c0d1-4b5c-4d6e-8f70-1a2b3c4d5e6f", "name": "acme"})
            );
            // No tag named the app: every member came from Cloud Controller.
            assert_eq!(
                r["enriched"],
                serde_json::json!([
                    "app.guid",
                    "app.name",
                    "space.guid",
                    "space.name",
                    "org.guid",
                    "org.name"
                ])
            );
        } else {
            // A deleted app stays unnamed; its guid is the record's source_id.
            for absent in ["app", "space", "enriched"] {
                assert!(r.get(absent).is_none(), "{absent} in {r}");
            }
        }
    }
}

async fn finish_pipeline(p: Pipeline) -> (Summary, ()) {
    let s = p.finish(Duration::from_secs(20)).await;
    assert!(s.complete);
    (s, ())
}

#[tokio::test]
async fn source_ids_that_are_not_guids_are_never_looked_up() {
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    let lookup: Lookup = Arc::new(move |_guid| {
        c.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(None) })
    });
    let r = start(lookup);
    let router = r.pipeline.router();
    let names = [
        "doppler",
        "gorouter",
        "rep",
        "loggregator.rlp",
        "cdabc600-0b73-48e1-b7d2-26af2c63f93",
    ];
    for b in 0..10 {
        router.dispatch(batch(b * 1000, 1000, names.len() as u64, |i| {
            names[i as usize].to_string()
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(router);
    let stats = r.enricher.stats().snapshot();
    let (summary, _dir) = finish(r).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(stats.lookups, 0);
    assert_eq!(stats.not_guid, 10_000);
    // And the declaration of the last app_log number at shutdown.
    assert_eq!(summary.total().delivered, 10_000 + 1);
}

/// A Cloud Controller that takes 5 s per answer, on a paused clock: ingress
/// hands every record on at once (without names, counted as pending) and
/// names appear once the answers are in.
#[tokio::test(start_paused = true)]
async fn a_cloud_controller_that_answers_in_five_seconds_does_not_hold_ingress_up() {
    let calls = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&calls);
    let lookup: Lookup = Arc::new(move |guid: String| {
        c.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(Some(AppNames {
                app_name: Some(format!("name-of-{}", &guid[..8])),
                app_guid: guid,
                ..Default::default()
            }))
        })
    });
    let r = start(lookup);
    let router = r.pipeline.router();
    let t0 = tokio::time::Instant::now();
    for b in 0..10 {
        router.dispatch(batch(b * 1000, 1000, 100, app_guid));
    }
    // Dispatch is synchronous: 10,000 envelopes were handed on without the clock moving.
    assert_eq!(tokio::time::Instant::now(), t0);
    let received: u64 = r
        .pipeline
        .router()
        .sinks_of(cf_audit_nozzle::record::Kind::AppLog)
        .iter()
        .map(|(_, s)| s.received.load(Ordering::SeqCst))
        .sum();
    assert_eq!(received, 10_000);
    assert_eq!(r.enricher.stats().snapshot().pending, 10_000);
    // 100 apps, 4 at a time, 5 s each: all answered after 125 s of CC time.
    tokio::time::sleep(Duration::from_secs(130)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 100);
    router.dispatch(batch(10_000, 100, 100, app_guid));
    drop(router);
    let stats = r.enricher.stats().snapshot();
    assert_eq!(stats.enriched, 100);
    assert_eq!(stats.lookups, 100);
    let (summary, _dir) = finish(r).await;
    // And 3 declarations of the last app_log number: at 60 s, at 120 s of
    // the paused clock, and at shutdown.
    assert_eq!(summary.total().delivered, 10_100 + 3);
    let named = records_by_kind(&summary)["app_log"]
        .iter()
        .filter(|r| r["app"]["name"].is_string())
        .count();
    assert_eq!(named, 100);
}

//! The binary with every audit option on: the firehose from a test RLP,
//! audit events and app names from a test Cloud Controller discovered from
//! --cf-api with a UAA token, rules and routes, and the cursor at exit.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cf_audit_nozzle::demo::read_records_file;
use cf_audit_nozzle::source::audit_events::load_cursor;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_enrichment_rules_and_routes_in_the_running_nozzle() {
    let pki = pki();
    let emu = generated_emulator(&pki, 5, 2000).await;
    let cc = cc::start().await;
    let base = chrono::Utc::now() - chrono::Duration::minutes(10);
    let events: Vec<serde_json::Value> = (0..2500u64)
        .map(|i| {
            let t = (base + chrono::Duration::seconds((i / 7) as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            cc::event(&format!("000000ee-0000-4000-8000-{i:012x}"), &t, i)
        })
        .collect();
    let last_second = events[2499]["created_at"].as_str().unwrap().to_string();
    *cc.events.lock().unwrap() = events;

    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    pki.write_client_files(&tls).unwrap();
    let out = tmp.path().join("out");
    let cursor = tmp.path().join("cursor.json");
    let summary_file = tmp.path().join("summary.json");
    let cc_url = cc.base.lock().unwrap().clone();
    let mut cmd = nozzle();
    cmd.env("CF_INSTANCE_INDEX", "0")
        .env("UAA_CLIENT_SECRET", "s3cr&t=+%");
    run_args(&mut cmd, &emu.addr.to_string(), &tls);
    cmd.args(["--cf-api", &cc_url, "--uaa-client-id", "audit-nozzle"])
        .args([
            "--audit-events",
            "on",
            "--audit-per-page",
            "1000",
            "--audit-poll-interval",
            "1s",
            "--audit-lookback",
            "1h",
        ])
        .arg("--audit-cursor-file")
        .arg(&cursor)
        .args(["--enrich", "on"])
        .args([
            "--sink",
            "file",
            "--roll-interval",
            "3600",
            "--foundation",
            "test",
        ])
        .args(["--route", "event=none", "--exclude", "source_type=RTR"])
        .arg("--out-dir")
        .arg(&out)
        .arg("--summary-file")
        .arg(&summary_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = spawn(&mut cmd);
    // Three pages, a second poll (its answer is handled once a third poll asks).
    wait_for(
        "the poller to poll three times",
        Duration::from_secs(30),
        || cc.event_requests.load(Ordering::SeqCst) >= 5,
    )
    .await;
    let status = child.stop().await.status;
    assert!(status.success(), "exit status {status}");

    // UAA got the client credentials form-encoded.
    let token_bodies = cc.token_requests.lock().unwrap().clone();
    assert!(
        token_bodies
            .iter()
            .all(|b| b.contains("client_id=audit-nozzle")
                && b.contains("client_secret=s3cr%26t%3D%2B%25")),
        "{token_bodies:?}"
    );

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    let audit = &summary["audit"]["audit_events"];
    assert_eq!(audit["events"], 2500, "{audit}");
    assert_eq!(audit["invalid"], 0);
    assert_eq!(audit["rewinds"], 0);
    assert!(
        audit["duplicates_skipped"].as_u64().unwrap() >= 1,
        "the second poll re-read the last second"
    );
    let enrich = &summary["audit"]["enrich"];
    assert!(enrich["lookups"].as_u64().unwrap() > 0, "{enrich}");
    // CC knows none of the emulator's apps: every lookup is a remembered miss.
    assert_eq!(enrich["misses"], enrich["lookups"]);
    assert_eq!(enrich["errors"], 0);
    assert!(
        summary["ingress"]["filtered"].as_u64().unwrap() > 0,
        "RTR lines excluded"
    );
    let sinks: Vec<&str> = summary["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        sinks,
        ["file:api", "file:app_log", "file:metric"],
        "events routed nowhere"
    );

    // The cursor stands at the last event's second, after the sinks confirmed.
    let kept = load_cursor(&cursor).unwrap().expect("cursor file");
    assert_eq!(kept.created_at, last_second);
    assert_eq!(kept.guids.len(), 2500 - (2499 / 7) * 7);

    let mut from_cc = 0;
    let mut from_firehose = 0;
    let mut api_declared = 0;
    for sink in summary["sinks"].as_array().unwrap() {
        for o in sink["outputs"].as_array().unwrap() {
            for r in read_records_file(o["path"].as_str().unwrap()).unwrap() {
                assert_ne!(r["source_type"], "RTR");
                if r.get("last_seq").is_some() {
                    // A declaration of the kind's last number, no API call.
                    if r["kind"] == "api" {
                        api_declared += 1;
                    }
                    continue;
                }
                if r["kind"] == "api" {
                    schema::assert_valid_api_record(&r);
                    match r["sourceEvent"].as_str().unwrap() {
                        "audit_events" => from_cc += 1,
                        _ => from_firehose += 1,
                    }
                }
            }
        }
    }
    assert_eq!(from_cc, 2500);
    assert!(from_firehose > 0);
    assert_eq!(api_declared, 1, "the api kind's last number, at shutdown");
}

//! Alerts (AU-5) of the running binary, one test per reason this file owns:
//! a source disconnected past `--health-disconnect-threshold`, an
//! audit-events poller that keeps failing, and the log's rate limit, which
//! is per alert reason and sink (five `sink_dropped` lines do not hide a
//! `sink_stalled` one). Each alert is an error log line, a count on
//! `/metrics` and an alert record on the other sinks.

mod common;

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use common::*;

/// The binary, logging JSON at info, /health and /metrics on `health`.
fn nozzle_at(health: std::net::SocketAddr) -> Command {
    let mut cmd = nozzle();
    cmd.env("LOG_FORMAT", "json")
        .env("HEALTH_ADDR", health.to_string());
    cmd
}

/// The JSON log lines among `lines` whose `alert` field is `reason`.
fn alert_lines(lines: &Mutex<Vec<String>>, reason: &str) -> Vec<serde_json::Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["alert"] == reason)
        .collect()
}

/// The alert records among `lines` (the stdout sink's JSON records).
fn alert_records(lines: &Mutex<Vec<String>>, reason: &str) -> Vec<serde_json::Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["tags"]["nozzle_alert"] == reason)
        .collect()
}

/// `cf_nozzle_alerts_total{reason=...}` from /metrics.
async fn alerts_total(health: std::net::SocketAddr, reason: &str) -> u64 {
    let text = metrics_text(health).await.expect("/metrics answers");
    let prefix = format!("cf_nozzle_alerts_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {text}"))
        .parse()
        .unwrap()
}

/// Waits for the first error line of alert `reason` and returns its message.
async fn first_alert_message(lines: &Mutex<Vec<String>>, reason: &str) -> String {
    wait_for(
        &format!("the {reason} log line"),
        Duration::from_secs(40),
        || !alert_lines(lines, reason).is_empty(),
    )
    .await;
    let line = &alert_lines(lines, reason)[0];
    assert_eq!(line["level"], "ERROR", "{line}");
    line["message"].as_str().unwrap().to_string()
}

/// Waits for the first alert record of `reason` and checks its kind and
/// title; returns its body.
async fn first_alert_body(lines: &Mutex<Vec<String>>, reason: &str) -> String {
    wait_for("the alert record", Duration::from_secs(40), || {
        !alert_records(lines, reason).is_empty()
    })
    .await;
    let record = &alert_records(lines, reason)[0];
    assert_eq!(record["kind"], "event");
    assert_eq!(record["title"], format!("cf-audit-nozzle alert: {reason}"));
    record["body"].as_str().unwrap().to_string()
}

/// A nozzle of `pki`'s reading the RLP at `rlp` (its client files in `tmp`).
fn nozzle_for(
    pki: &cf_audit_nozzle::tls::Pki,
    tmp: &std::path::Path,
    rlp: &str,
    health: std::net::SocketAddr,
) -> Command {
    let tls = tmp.join("tls");
    pki.write_client_files(&tls).unwrap();
    let mut cmd = nozzle_at(health);
    run_args(&mut cmd, rlp, &tls);
    cmd
}

/// The RLP is not there: once the source has been disconnected for the
/// threshold (when /health turns 503), one alert: a log line naming the
/// source, the threshold and the last error, a count, and an alert record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_source_raises_an_alert() {
    let pki = pki();
    let tmp = tempfile::tempdir().unwrap();
    let health = free_addr();
    let mut cmd = nozzle_for(&pki, tmp.path(), &free_addr().to_string(), health);
    cmd.args(["--sink", "stdout", "--health-disconnect-threshold", "1"]);
    let n = spawn_collected(&mut cmd);

    let text = first_alert_message(&n.stderr, "source_disconnected").await;
    assert!(
        text.starts_with("source rlp has been disconnected for ")
            && text.contains(" s (threshold 1 s); last error: "),
        "{text}"
    );
    let body = first_alert_body(&n.stdout, "source_disconnected").await;
    assert!(
        body.starts_with("source rlp has been disconnected for "),
        "{body}"
    );
    assert_eq!(alerts_total(health, "source_disconnected").await, 1);
    // Once per disconnection, not once per check.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alerts_total(health, "source_disconnected").await, 1);
    assert_eq!(alert_lines(&n.stderr, "source_disconnected").len(), 1);
    assert!(n.stop(Duration::from_secs(30)).await.success());
}

/// Cloud Controller answers discovery but UAA is down: every poll fails.
/// After --alert-after without a page, one audit_events_failing alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_audit_events_poller_raises_an_alert() {
    let pki = pki();
    let cc = cc::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let health = free_addr();
    let mut cmd = nozzle_for(&pki, tmp.path(), &free_addr().to_string(), health);
    let cc_url = cc.base.lock().unwrap().clone();
    cmd.env("CF_INSTANCE_INDEX", "0")
        .env("UAA_CLIENT_SECRET", "secret")
        .args(["--cf-api", &cc_url, "--uaa-client-id", "audit-nozzle"])
        .args(["--uaa-url", &format!("http://{}", free_addr())])
        .args(["--audit-events", "on", "--alert-after", "1"])
        .arg("--audit-cursor-file")
        .arg(tmp.path().join("cursor.json"))
        .args(["--sink", "stdout"]);
    let n = spawn_collected(&mut cmd);

    let text = first_alert_message(&n.stderr, "audit_events_failing").await;
    assert!(
        text.starts_with("the audit-events poller has read no page for "),
        "{text}"
    );
    let body = first_alert_body(&n.stdout, "audit_events_failing").await;
    assert_eq!(body, text);
    assert_eq!(alerts_total(health, "audit_events_failing").await, 1);
    assert_eq!(
        cc.event_requests.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no request reached Cloud Controller without a token"
    );
    assert!(n.stop(Duration::from_secs(30)).await.success());
}

/// A syslog receiver that is not there: the sink's small queue overflows
/// every second (a sink_dropped alert each time) and after --alert-after
/// the sink is stalled. Five sink_dropped lines a minute reach the log; the
/// sink_stalled line reaches it too, because each reason and sink has an
/// allowance of its own (one allowance per call site hid it before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_limit_is_per_alert_reason_and_sink() {
    let pki = pki();
    let emu = generated_emulator(&pki, 7, 2000).await;
    let tmp = tempfile::tempdir().unwrap();
    let health = free_addr();
    let mut cmd = nozzle_for(&pki, tmp.path(), &emu.addr.to_string(), health);
    cmd.args(["--sink", "syslog", "--syslog-transport", "tcp"])
        .args(["--syslog-addr", &free_addr().to_string()])
        .args(["--queue-capacity", "100", "--alert-after", "10"]);
    let n = spawn_collected(&mut cmd);

    wait_for("the sink_stalled log line", Duration::from_secs(40), || {
        !alert_lines(&n.stdout, "sink_stalled").is_empty()
    })
    .await;
    let stalled = &alert_lines(&n.stdout, "sink_stalled")[0];
    assert_eq!(stalled["sink"], "syslog");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .starts_with("sink syslog has delivered nothing for "),
        "{stalled}"
    );
    // More sink_dropped alerts were raised than the log let through.
    let dropped_lines = alert_lines(&n.stdout, "sink_dropped");
    assert_eq!(dropped_lines.len(), 5, "{dropped_lines:?}");
    assert!(dropped_lines.iter().all(|l| l["sink"] == "syslog"));
    assert!(alerts_total(health, "sink_dropped").await >= 6);
    assert_eq!(alerts_total(health, "sink_stalled").await, 1);
    // The firehose is the only source of API records here: nothing to
    // correlate, so no correlator holds them (and it has no counts).
    let metrics = metrics_text(health).await.unwrap();
    assert!(!metrics.contains("cf_nozzle_correlate"), "{metrics}");
    n.stop(Duration::from_secs(30)).await;
}

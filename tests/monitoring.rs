//! The monitoring we ship for `/metrics`, checked with the real Prometheus
//! (Debian's `prometheus` package):
//! - `monitoring/alerts.yml` passes `promtool check rules`, and its unit
//!   tests (`monitoring/alerts.test.yml`) pass `promtool test rules`, with
//!   a test that fires every alert;
//! - every metric the rules and the dashboard name is one `/metrics` has
//!   (`src/telemetry/metrics.golden.txt`), and every dashboard query parses;
//! - end to end: Prometheus scrapes a running nozzle whose sink is down,
//!   and `CfAuditNozzleSinkStalled` fires (read from Prometheus's HTTP API).

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::*;

const RULES: &str = "monitoring/alerts.yml";
const RULE_TESTS: &str = "monitoring/alerts.test.yml";
const DASHBOARD: &str = "monitoring/dashboard.json";
const GOLDEN: &str = "src/telemetry/metrics.golden.txt";

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool (scripts/test installs Debian's prometheus)");
    (out.status.success(), printed(&out))
}

fn alert_names() -> Vec<String> {
    yaml(RULES)["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_rules_check_and_their_unit_tests_pass() {
    let (ok, out) = promtool(&["check", "rules", RULES]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alert_names().len())),
        "{out}"
    );
    let (ok, out) = promtool(&["test", "rules", RULE_TESTS]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it() {
    let names = alert_names();
    for needed in [
        "CfAuditNozzleSourceDisconnected",
        "CfAuditNozzleSinkStalled",
        "CfAuditNozzleRecordsDropped",
        "CfAuditNozzleBufferFilling",
        "CfAuditNozzleAuditPollerFailing",
        "CfAuditNozzleLoggregatorDropping",
        "CfAuditNozzleOverloaded",
    ] {
        assert!(names.iter().any(|n| n == needed), "no alert {needed}");
    }
    let tests = yaml(RULE_TESTS);
    let mut fired = BTreeSet::new();
    for t in tests["tests"].as_array().unwrap() {
        for case in t["alert_rule_test"].as_array().unwrap() {
            if !case["exp_alerts"].as_array().unwrap().is_empty() {
                fired.insert(case["alertname"].as_str().unwrap().to_string());
            }
        }
    }
    let names: BTreeSet<String> = names.into_iter().collect();
    assert_eq!(fired, names, "alerts without a test that fires them");
}

/// The metric families `/metrics` serves, from the golden text.
fn families() -> BTreeSet<String> {
    std::fs::read_to_string(GOLDEN)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect()
}

/// Every `cf_nozzle_*` name in `text`.
fn named_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cf_nozzle_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.insert(text[start..end].to_string());
        i = end;
    }
    names
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_exists() {
    let families = families();
    let text =
        std::fs::read_to_string(RULES).unwrap() + &std::fs::read_to_string(DASHBOARD).unwrap();
    let named = named_metrics(&text);
    assert!(named.len() >= 12, "{named:?}");
    for name in named {
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .unwrap_or(&name);
        assert!(
            families.contains(family),
            "{name} is not a metric of /metrics ({GOLDEN})"
        );
    }
}

#[test]
fn every_dashboard_query_parses_and_the_panels_cover_the_nozzle() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for needed in [
        "Records accepted per kind",
        "Delivered per sink",
        "Delivery latency p99 per sink",
        "Queue fill per sink",
        "Disk buffer fill per sink",
        "Records dropped, by sink and reason",
    ] {
        assert!(titles.contains(&needed), "no panel {needed:?}: {titles:?}");
    }
    // Each query as a recording rule, Grafana's variables given values:
    // promtool parses every expression.
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    let mut n = 0;
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "2m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            n += 1;
            rules.push_str(&format!(
                "  - record: dashboard:query{n}\n    expr: {}\n",
                serde_json::Value::String(expr)
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let (ok, out) = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "{out}");
}

/// Prometheus scraping a nozzle whose syslog receiver is not there: the
/// nozzle marks the sink stalled after --alert-after, Prometheus's rule
/// fires, and its HTTP API says so with the sink's label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_sink_stalled_for_a_nozzle_whose_sink_is_down() {
    let pki = pki();
    let emu = generated_emulator(&pki, 11, 500).await;
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    pki.write_client_files(&tls).unwrap();
    let health = free_addr();
    let mut cmd = nozzle();
    cmd.env("HEALTH_ADDR", health.to_string());
    run_args(&mut cmd, &emu.addr.to_string(), &tls);
    cmd.args(["--sink", "syslog", "--syslog-transport", "tcp"])
        .args(["--syslog-addr", &free_addr().to_string()])
        .args(["--alert-after", "2", "--queue-capacity", "1000"]);
    let n = spawn_collected(&mut cmd);

    let prom_addr = free_addr();
    let rules = std::fs::canonicalize(RULES).unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n- {}\nscrape_configs:\n- job_name: cf-audit-nozzle\n  static_configs:\n  - targets: ['{health}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let mut prometheus = Command::new("prometheus");
    prometheus
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let prom = spawn(&mut prometheus);

    let client = cf_audit_nozzle::http_client::http_client(None, false).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let firing = loop {
        let alerts: Option<Value> = async {
            client
                .get(format!("http://{prom_addr}/api/v1/alerts"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
        }
        .await;
        let found = alerts.and_then(|a| {
            a["data"]["alerts"].as_array().and_then(|list| {
                list.iter()
                    .find(|x| {
                        x["labels"]["alertname"] == "CfAuditNozzleSinkStalled"
                            && x["state"] == "firing"
                    })
                    .cloned()
            })
        });
        if let Some(alert) = found {
            break alert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "CfAuditNozzleSinkStalled did not fire"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("Prometheus says: {firing}");
    assert_eq!(firing["labels"]["sink"], "syslog");
    assert_eq!(firing["labels"]["job"], "cf-audit-nozzle");
    assert_eq!(firing["labels"]["instance"], health.to_string());
    assert_eq!(firing["labels"]["severity"], "critical");
    assert_eq!(
        firing["annotations"]["summary"],
        format!("cf-audit-nozzle {health}: sink syslog delivers nothing")
    );
    drop(prom);
    n.stop(Duration::from_secs(30)).await;
}

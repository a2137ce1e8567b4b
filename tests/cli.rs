//! The `cf-audit-nozzle` binary as an operator runs it: flags, environment,
//! signals, exit codes, and what it leaves on disk and on stdout.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cf_audit_nozzle::demo::read_records_file;
use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_completes_the_open_files_and_exits_zero() {
    let pki = pki();
    let emu = generated_emulator(&pki, 3, 5000).await;
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    pki.write_client_files(&tls).unwrap();
    let out = tmp.path().join("out");
    let summary_file = tmp.path().join("summary.json");
    let mut cmd = nozzle();
    run_args(&mut cmd, &emu.addr.to_string(), &tls);
    cmd.args([
        "--sink",
        "file",
        "--roll-interval",
        "3600",
        "--foundation",
        "test",
    ])
    .arg("--out-dir")
    .arg(&out)
    .arg("--summary-file")
    .arg(&summary_file)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let child = spawn(&mut cmd);

    let partial = out.join(".partial");
    wait_for(
        "records written to open files",
        Duration::from_secs(30),
        || {
            std::fs::read_dir(&partial)
                .map(|d| d.count() >= 4)
                .unwrap_or(false)
        },
    )
    .await;
    child.terminate();
    let status = child.finish_within(Duration::from_secs(15)).await.status;
    assert!(status.success(), "exit status {status}");

    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    let received = summary["ingress"]["envelopes"].as_u64().unwrap();
    assert!(received > 0);
    assert_eq!(
        summary["rlp"]["attempts"].as_u64(),
        Some(1),
        "one stream, never dropped"
    );
    assert_eq!(summary["rlp"]["failures"].as_u64(), Some(0));
    assert!(summary["rlp"]["last_error"].is_null());
    let sinks = summary["sinks"].as_array().unwrap();
    let names: Vec<&str> = sinks.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["file:api", "file:app_log", "file:metric", "file:event"]
    );
    let sum = |field: &str| {
        sinks
            .iter()
            .map(|s| s[field].as_u64().unwrap())
            .sum::<u64>()
    };
    // Each kind's sink also took the declaration of its last number at shutdown.
    let declared = ["api", "app_log", "metric", "event"]
        .into_iter()
        .filter(|k| summary["ingress"][k].as_u64().unwrap() > 0)
        .count() as u64;
    assert_eq!(declared, 4);
    assert_eq!(sum("received"), received + declared);
    assert_eq!(sum("delivered"), received + declared);
    assert_eq!(sum("queued") + sum("in_flight"), 0);
    assert_eq!(sum("dropped_queue_full") + sum("dropped_write_error"), 0);
    let mut in_files = 0;
    let outputs: Vec<&serde_json::Value> = sinks
        .iter()
        .flat_map(|s| s["outputs"].as_array().unwrap())
        .collect();
    assert_eq!(outputs.len(), 4, "one file per kind");
    for o in outputs {
        let path = o["path"].as_str().unwrap();
        assert!(path.contains("/CFLogs/test/"), "{path}");
        let records = read_records_file(path).expect("a complete gzip Records file");
        assert_eq!(records.len() as u64, o["records"].as_u64().unwrap());
        in_files += records.len() as u64;
    }
    assert_eq!(in_files, received + declared);
    assert_eq!(
        std::fs::read_dir(&partial).unwrap().count(),
        0,
        "no partial files left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_sink_writes_exactly_one_json_line_per_record() {
    let envelopes: Vec<_> = (0..3)
        .map(|i| {
            log_envelope(
                1_700_000_000_000_000_000 + i,
                "app-guid",
                format!("hello {i}"),
                &[("source_type", "APP/PROC/WEB"), ("origin", "rep")],
            )
        })
        .collect();
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(envelopes.clone()),
            ..Default::default()
        },
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    pki.write_client_files(tmp.path()).unwrap();
    let mut cmd = nozzle();
    run_args(&mut cmd, &emu.addr.to_string(), tmp.path());
    cmd.env("SINK", "stdout")
        .env("BATCH_MAX_AGE_MS", "10")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn(&mut cmd);
    let lines = child.lines(3, Duration::from_secs(30)).await;
    child.terminate();
    let status = child.finish_within(Duration::from_secs(15)).await.status;
    assert!(status.success());

    let expected = json_lines(envelopes, "cf");
    // Each line numbered, in one boot; otherwise the record's JSON.
    let numbered: Vec<(String, String)> =
        (0..3).map(|i| unnumbered(&lines[i], 0, i as u64)).collect();
    assert!(numbered.iter().all(|(_, boot)| *boot == numbered[0].1));
    let lines: Vec<String> = numbered.into_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, expected);
    assert!(lines[0].starts_with(r#"{"kind":"app_log","time":"2023-11-14T22:13:20.000000000Z","foundation":"cf","source_id":"app-guid""#));
}

#[test]
fn configuration_errors_are_all_listed_at_once_with_their_options() {
    let out = nozzle()
        .env_remove("RLP_ADDR")
        .args([
            "run",
            "--rlp-addr",
            "no-port",
            "--gzip-level",
            "12",
            "--roll-interval",
            "0",
        ])
        .args(["--sink", "file,syslog", "--syslog-facility", "local9"])
        .args(["--syslog-severity-api", "loud"])
        .args(["--rlp-ca", "/nonexistent/ca.pem"])
        .args([
            "--health-addr",
            "localhost",
            "--metrics-auth",
            "only-a-secret",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("only-a-secret"),
        "a secret was echoed:\n{err}"
    );
    for expected in [
        "--health-addr (HEALTH_ADDR) must be ip:port or off, not \"localhost\"",
        "--metrics-auth (METRICS_AUTH) must be user:password, both non-empty",
        "--rlp-addr (RLP_ADDR) must be host:port, not \"no-port\"",
        "--rlp-cert (RLP_CERT) is required",
        "--rlp-key (RLP_KEY) is required",
        "--gzip-level (GZIP_LEVEL) must be 0 to 9, not 12",
        "--roll-interval (ROLL_INTERVAL) must be at least 1 second",
        "--syslog-addr (SYSLOG_ADDR) is required with --sink syslog",
        "--syslog-severity-api (SYSLOG_SEVERITY_API) must be one of emerg, alert, crit, err, warning, notice, info, debug, not \"loud\"",
        "--syslog-facility (SYSLOG_FACILITY) must be a facility name (local0 ... local7, user, ...) or 0-23, not \"local9\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert!(!err.contains("backtrace"), "{err}");
}

#[test]
fn an_unreadable_certificate_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    let out = nozzle()
        .args([
            "run",
            "--rlp-addr",
            "rlp:8082",
            "--rlp-cert",
            "/nonexistent/client.pem",
            "--rlp-key",
            "/nonexistent/key.pem",
        ])
        .arg("--rlp-ca")
        .arg(&ca)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "CA certificate file {} holds no PEM block \"CERTIFICATE\"",
            ca.display()
        )),
        "{err}"
    );
}

#[test]
fn run_is_the_default_command_and_flags_come_from_the_environment() {
    // No command given: `run` is assumed, and its options are read from the environment.
    let out = nozzle().env("RLP_ADDR", "bad").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--rlp-addr (RLP_ADDR) must be host:port, not \"bad\""),
        "{err}"
    );
}

#[test]
fn help_lists_every_option_with_its_environment_variable() {
    let out = nozzle().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--rlp-addr", "RLP_ADDR"),
        ("--rlp-ca", "RLP_CA"),
        ("--rlp-cert", "RLP_CERT"),
        ("--rlp-key", "RLP_KEY"),
        ("--rlp-server-name", "RLP_SERVER_NAME"),
        ("--shard-id", "SHARD_ID"),
        ("--sink", "SINK"),
        ("--out-dir", "OUT_DIR"),
        ("--roll-interval", "ROLL_INTERVAL"),
        ("--foundation", "FOUNDATION"),
        ("--queue-capacity", "QUEUE_CAPACITY"),
        ("--duration", "DEMO_DURATION"),
        ("--syslog-addr", "SYSLOG_ADDR"),
        ("--syslog-transport", "SYSLOG_TRANSPORT"),
        ("--syslog-ca", "SYSLOG_CA"),
        ("--syslog-server-name", "SYSLOG_SERVER_NAME"),
        ("--syslog-cert", "SYSLOG_CERT"),
        ("--syslog-key", "SYSLOG_KEY"),
        ("--syslog-framing", "SYSLOG_FRAMING"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(
            help.contains(&format!("[env: {env}")),
            "{env} missing from --help"
        );
    }
}

#[test]
fn demo_prints_every_kind_and_leaves_valid_gzip_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = nozzle()
        .current_dir(tmp.path())
        .args(["demo", "--duration", "2", "--rate", "3000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in ["api", "app_log", "metric", "event"] {
        assert!(
            stdout.contains(&format!("\n-- {kind} --\n{{")),
            "no {kind} record printed"
        );
    }
    let mut files = Vec::new();
    let mut stack = vec![tmp.path().join("nozzle-demo/CFLogs/demo")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert_eq!(files.len(), 4, "{files:?}");
    let records: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|f| read_records_file(f.to_str().unwrap()).unwrap())
        .collect();
    // Each file ends with the declaration of its kind's last number.
    let (declarations, records): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|r| r.get("last_seq").is_some());
    assert_eq!(declarations.len(), 4, "{declarations:?}");
    let total = records.len();
    // Every envelope and every component log line the ingress read is in
    // the files once, but for the halves merged into another's record.
    let number = |prefix: &str| -> u64 {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {stdout}"));
        line.split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    let envelopes = number("envelopes received: ");
    let lines = stdout
        .lines()
        .find_map(|l| l.strip_prefix("component log lines forwarded to the syslog ingress: "))
        .expect("syslog line");
    let (sent, read) = lines.split_once(" (read ").unwrap();
    assert_eq!(format!("{sent})"), read, "the ingress read every line sent");
    let read: u64 = sent.parse().unwrap();
    let merged = number("records merged into another's by the correlator: ");
    assert!(read > 0 && merged > 0, "{stdout}");
    assert_eq!(
        total as u64,
        envelopes + read - merged,
        "{envelopes} envelopes + {read} lines - {merged} merged vs {total} in files"
    );
    // The api records show the merge: who, from where, with what outcome.
    let api: Vec<&serde_json::Value> = records.iter().filter(|r| r["kind"] == "api").collect();
    let with = |sources: serde_json::Value| api.iter().filter(|r| r["sources"] == sources).count();
    assert_eq!(
        with(serde_json::json!(["firehose", "cc_security_event"])) as u64,
        merged
    );
    assert!(with(serde_json::json!(["uaa_audit"])) > 0);
    let merged_one = api
        .iter()
        .find(|r| r["sources"] == serde_json::json!(["firehose", "cc_security_event"]))
        .unwrap();
    for field in ["sourceIPAddress", "requestID", "httpStatusCode", "outcome"] {
        assert!(merged_one.get(field).is_some(), "{field}: {merged_one}");
    }
    assert_eq!(merged_one["userIdentity"]["type"], "user");
    assert!(
        api.iter().any(|r| r["outcome"] == "denied"),
        "refused attempts are records too"
    );
    assert!(stdout.contains("dropped 0"), "{stdout}");
}

/// The binary with the s3 sink at `endpoint` (which never stores anything),
/// its open files completed only at shutdown, /health and /metrics on `health`.
fn s3_nozzle(
    emu: &str,
    tls: &std::path::Path,
    endpoint: &str,
    health: std::net::SocketAddr,
    summary_file: &std::path::Path,
) -> Command {
    let mut cmd = nozzle();
    run_args(&mut cmd, emu, tls);
    cmd.env("HEALTH_ADDR", health.to_string())
        .args(["--sink", "s3", "--s3-bucket", "audit", "--s3-path-style"])
        .args(["--s3-endpoint", endpoint, "--s3-region", "us-east-1"])
        .args([
            "--s3-access-key-id",
            "AKIATEST",
            "--s3-secret-access-key",
            "s3cret",
        ])
        .args(["--roll-interval", "3600", "--foundation", "test"])
        .args(["--shutdown-timeout", "3"])
        .arg("--summary-file")
        .arg(summary_file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Starts `cmd` once the RLP has sent `n` envelopes and the nozzle received
/// them all; SIGTERM; the exit status, the summary and stderr.
async fn run_until_received(
    mut cmd: Command,
    health: std::net::SocketAddr,
    n: u64,
    summary_file: &std::path::Path,
) -> (std::process::ExitStatus, serde_json::Value, String) {
    let child = spawn(&mut cmd);
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while ingress_envelopes(health).await.unwrap_or(0) < n {
        assert!(
            tokio::time::Instant::now() < until,
            "the nozzle never received {n} envelopes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.terminate();
    let out = child.finish_within(Duration::from_secs(30)).await;
    let (status, stderr) = (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let summary = serde_json::from_slice(&std::fs::read(summary_file).unwrap()).unwrap();
    (status, summary, stderr)
}

/// Exactly 500 envelopes: five batches of 100, then a silent open stream.
async fn five_hundred(
    pki: &cf_audit_nozzle::tls::Pki,
) -> cf_audit_nozzle::source::emulator::Emulator {
    emulator(
        pki,
        EmulatorConfig {
            feed: Feed::Generated { seed: 7 },
            batch_size: 100,
            silent_after: Some(5),
            ..Default::default()
        },
    )
    .await
}

/// Each sink's not-delivered records equal what it received (nothing
/// delivered, nothing dropped), all 500 over all sinks, and the reason
/// contains `reason`.
fn assert_all_500_not_delivered(summary: &serde_json::Value, reason: &str) {
    assert_eq!(summary["ingress"]["envelopes"], 500);
    assert_eq!(summary["complete"], false);
    // With the declaration of each kind's last number at shutdown.
    let declared = ["api", "app_log", "metric", "event"]
        .into_iter()
        .filter(|k| summary["ingress"][k].as_u64().unwrap() > 0)
        .count() as u64;
    assert_eq!(summary["not_delivered"], 500 + declared);
    let sinks = summary["sinks"].as_array().unwrap();
    let names: Vec<&str> = sinks.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["s3:api", "s3:app_log", "s3:metric", "s3:event"]);
    let mut total = 0;
    for s in sinks {
        let received = s["received"].as_u64().unwrap();
        assert_eq!(s["delivered"], 0, "{s}");
        assert_eq!(s["dropped_write_error"], 0, "{s}");
        assert_eq!(s["outputs"].as_array().unwrap().len(), 0, "{s}");
        if received == 0 {
            assert!(s.get("not_delivered").is_none(), "{s}");
            continue;
        }
        assert_eq!(
            s["not_delivered"]["records"].as_u64(),
            Some(received),
            "{s}"
        );
        let why = s["not_delivered"]["reason"].as_str().unwrap();
        assert!(why.contains(reason), "{why}");
        total += received;
    }
    assert_eq!(total, 500 + declared);
}

/// An S3 store that refuses connections: the files completed at shutdown
/// cannot be uploaded. The nozzle used to exit 0 with them reported only as
/// `in_flight`; the records are lost with the process, so the exit status
/// is 1 and the summary and stderr say how many and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_an_unbuffered_s3_sink_could_not_upload_make_the_exit_status_1() {
    let pki = pki();
    let emu = five_hundred(&pki).await;
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    pki.write_client_files(&tls).unwrap();
    let summary_file = tmp.path().join("summary.json");
    // A port nothing listens on.
    let closed = format!("http://{}", free_addr());
    let health = free_addr();
    let cmd = s3_nozzle(&emu.addr.to_string(), &tls, &closed, health, &summary_file);
    let (status, summary, stderr) = run_until_received(cmd, health, 500, &summary_file).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_all_500_not_delivered(
        &summary,
        "completed file(s) not uploaded: PUT s3://audit/CFLogs/test/",
    );
    assert!(
        // 500 records and the declarations of the 4 kinds' last numbers.
        stderr.contains("cf-audit-nozzle: 504 records not delivered: s3:api "),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

/// An S3 store that takes the connection and never answers: the sinks are
/// still uploading at the shutdown deadline. Exit status 1 (it was 2, the
/// status of an error that stopped the run), with the deadline as reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_an_unbuffered_sink_still_holds_at_the_deadline_make_the_exit_status_1() {
    let pki = pki();
    let emu = five_hundred(&pki).await;
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    pki.write_client_files(&tls).unwrap();
    let summary_file = tmp.path().join("summary.json");
    // Connections complete in the backlog and are never answered.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let health = free_addr();
    let cmd = s3_nozzle(
        &emu.addr.to_string(),
        &tls,
        &endpoint,
        health,
        &summary_file,
    );
    let (status, summary, stderr) = run_until_received(cmd, health, 500, &summary_file).await;
    drop(silent);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_all_500_not_delivered(
        &summary,
        "still queued or in flight at the shutdown deadline (3s, --shutdown-timeout)",
    );
    assert!(
        // 500 records and the declarations of the 4 kinds' last numbers.
        stderr.contains("cf-audit-nozzle: 504 records not delivered: s3:api "),
        "{stderr}"
    );
}

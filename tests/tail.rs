//! `cf-audit-nozzle tail` against the emulated RLP Gateway: exact human
//! lines (or records) for a known set of envelopes, the filters, a shard id
//! of its own, and a clean exit on Ctrl-C.

mod common;

use std::process::Stdio;
use std::time::Duration;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::{Counter, Envelope, envelope};
use cf_audit_nozzle::record::EncodeContext;
use cf_audit_nozzle::source::emulator::Feed;
use cf_audit_nozzle::source::emulator::gateway::{GatewayEmulator, GatewayEmulatorConfig};
use common::{log_envelope, nozzle, spawn, unnumbered};

const APP: &str = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
const T: i64 = 1_700_000_000_000_000_000;

fn app_tags<'a>(source_type: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut tags = vec![
        ("source_type", source_type),
        ("app_id", APP),
        ("app_name", "spring-music"),
        ("organization_id", "0f0e0d0c-0000-4000-8000-000000000001"),
        ("organization_name", "acme"),
    ];
    tags.extend_from_slice(extra);
    tags
}

/// A Cloud Controller API line, an app's log line, a router line, a counter.
fn envelopes() -> Vec<Envelope> {
    let update =
        format!(r#"Updated app with guid {APP} ({{"name"=>"spring-music", "instances"=>2}})"#);
    let mut counter = Envelope {
        timestamp: T + 3,
        source_id: "gorouter".into(),
        instance_id: "1".into(),
        message: Some(envelope::Message::Counter(Counter {
            name: "total_requests".into(),
            delta: 5,
            total: 42,
        })),
        ..Default::default()
    };
    counter.tags.insert("origin".into(), "gorouter".into());
    vec![
        log_envelope(
            T,
            APP,
            update,
            &app_tags("API", &[("origin", "cloud_controller")]),
        ),
        log_envelope(
            T + 1,
            APP,
            "Started on port 8080",
            &app_tags("APP/PROC/WEB", &[]),
        ),
        log_envelope(T + 2, APP, "GET /health 200", &app_tags("RTR", &[])),
        counter,
    ]
}

async fn gateway() -> GatewayEmulator {
    GatewayEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        GatewayEmulatorConfig {
            feed: Feed::Fixed(envelopes()),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// Runs `tail` with `args` until it printed `n` lines, then Ctrl-C; returns
/// the lines and what it wrote to stderr.
async fn tail(gw: &GatewayEmulator, args: &[&str], n: usize) -> (Vec<String>, String) {
    let mut cmd = nozzle();
    cmd.env("HEALTH_ADDR", "off")
        .args(["tail", "--source", "gateway", "--cf-api", &gw.url()])
        .args(["--uaa-client-id", "nozzle", "--uaa-client-secret", "s"])
        .args(["--shard-id", "cf-audit-nozzle"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(&mut cmd);
    let lines = child.lines(n, Duration::from_secs(30)).await;
    child.signal(nix::sys::signal::Signal::SIGINT);
    let out = child.finish().await;
    let rest = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "exit {}: {stderr}", out.status);
    assert_eq!(rest, "", "more lines than expected");
    (lines, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_lines_for_every_kind_then_a_clean_exit_on_ctrl_c() {
    let gw = gateway().await;
    let (lines, stderr) = tail(&gw, &[], 4).await;
    assert_eq!(
        lines,
        [
            "[API/0] audit.app.update app=spring-music by unknown",
            "[APP/PROC/WEB/0] spring-music Started on port 8080",
            "[RTR/0] spring-music GET /health 200",
            "[gorouter/1] counter total_requests delta=5 total=42",
        ]
    );
    assert!(stderr.contains("tail: 4 records shown"), "{stderr}");
    // A shard of its own: the nozzle's instances keep their whole share.
    let read = &gw.reads()[0];
    let shard = read
        .split('&')
        .find_map(|p| p.strip_prefix("shard_id="))
        .unwrap();
    assert!(shard.starts_with("cf-audit-nozzle-tail-"), "{read}");
    assert_eq!(shard.len(), "cf-audit-nozzle-tail-".len() + 8, "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_json_print_exactly_the_matching_records() {
    let gw = gateway().await;
    let (lines, _) = tail(
        &gw,
        &[
            "--kind",
            "api,app_log",
            "--source-type",
            "APP*,API",
            "--app",
            "spring-music",
            "--org",
            "acme",
            "--json",
        ],
        2,
    )
    .await;
    let ctx = EncodeContext::new("cf");
    let expected: Vec<String> = envelopes()
        .into_iter()
        .take(2)
        .map(|e| classify(e).to_json(&ctx))
        .collect();
    // Numbered like any record (one boot; the first api, the first app_log).
    let (api, boot) = unnumbered(&lines[0], 0, 0);
    let (app_log, boot_too) = unnumbered(&lines[1], 0, 0);
    assert_eq!(boot, boot_too);
    assert_eq!([api, app_log], *expected);
}

/// An app's log line carrying a screen clear, a title change (OSC), a
/// carriage return, a backspace, NUL, a newline (a forged second line),
/// DEL and a one-character CSI (U+009B).
const HOSTILE: &str =
    "a\x1b[2Jb\x1b]0;pwned\x07c\rd\x08e\0f\n[API/0] audit.app.delete by admin\x7fg\u{9b}31mh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_escaped_in_human_lines_and_json() {
    let gw = GatewayEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        GatewayEmulatorConfig {
            feed: Feed::Fixed(vec![log_envelope(
                T,
                APP,
                HOSTILE,
                &app_tags("APP/PROC/WEB", &[]),
            )]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (lines, _) = tail(&gw, &[], 1).await;
    assert_eq!(
        lines[0].as_bytes(),
        br"[APP/PROC/WEB/0] spring-music a\x1b[2Jb\x1b]0;pwned\x07c\rd\x08e\x00f\n[API/0] audit.app.delete by admin\x7fg\u{9b}31mh"
    );
    // --json stays the record's JSON (the same value), with DEL and C1
    // written as \u escapes instead of raw.
    let (lines, _) = tail(&gw, &["--json"], 1).await;
    let ctx = EncodeContext::new("cf");
    let record = classify(log_envelope(
        T,
        APP,
        HOSTILE,
        &app_tags("APP/PROC/WEB", &[]),
    ))
    .to_json(&ctx);
    assert!(record.contains('\u{7f}') && record.contains('\u{9b}'));
    assert_eq!(
        unnumbered(&lines[0], 0, 0).0,
        record
            .replace('\u{7f}', r"\u007f")
            .replace('\u{9b}', r"\u009b")
    );
    assert!(lines[0].bytes().all(|b| b >= 0x20 && b != 0x7f));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&unnumbered(&lines[0], 0, 0).0).unwrap(),
        serde_json::from_str::<serde_json::Value>(&record).unwrap()
    );
}

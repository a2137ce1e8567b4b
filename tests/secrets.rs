//! Secrets never reach a log line: the nozzle runs with every secret it
//! takes configured, at debug level, against a receiver that rejects the
//! credentials, and nothing it prints contains any of them.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed};
use common::*;

const HEC_TOKEN: &str = "hec-token-7f3a9c1e-SECRET";
const HEADER_SECRET: &str = "api-key-55d0c2-SECRET";
const METRICS_PASSWORD: &str = "metrics-pw-0b9e-SECRET";

/// A HEC endpoint that refuses every token, as Splunk does.
async fn refusing_receiver() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|| async {
        (
            axum::http::StatusCode::FORBIDDEN,
            r#"{"text":"Invalid token","code":4}"#,
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_output() {
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Generated { seed: 5 },
            rate: Some(2000),
            ..Default::default()
        },
    )
    .await;
    let receiver = refusing_receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    pki.write_client_files(tmp.path()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cf-audit-nozzle"));
    cmd.env_remove("OUT_DIR")
        .env_remove("PORT")
        .env("RUST_LOG", "debug")
        .arg("run")
        .args(["--rlp-addr", &emu.addr.to_string()])
        .arg("--rlp-ca")
        .arg(tmp.path().join("ca.pem"))
        .arg("--rlp-cert")
        .arg(tmp.path().join("client.pem"))
        .arg("--rlp-key")
        .arg(tmp.path().join("client-key.pem"))
        .args(["--sink", "http", "--http-format", "hec"])
        .args(["--http-url", &format!("http://{receiver}")])
        .args(["--http-header", &format!("X-Api-Key: {HEADER_SECRET}")])
        .args(["--health-addr", "127.0.0.1:0", "--shutdown-timeout", "1"])
        .env("HEC_TOKEN", HEC_TOKEN)
        .env("METRICS_AUTH", format!("prom:{METRICS_PASSWORD}"))
        .env("BATCH_MAX_AGE_MS", "50")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // Long enough for batches to be refused and retried.
    tokio::time::sleep(Duration::from_secs(4)).await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The scenario happened: the refusal was logged (with its reason).
    assert!(text.contains("Invalid token"), "{text}");
    assert!(text.contains("retrying"), "{text}");
    for secret in [HEC_TOKEN, HEADER_SECRET, METRICS_PASSWORD] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

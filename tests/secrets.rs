//! Secrets never reach a log line: the nozzle runs with every secret it
//! takes configured, at debug level, against a receiver that rejects the
//! credentials, and nothing it prints contains any of them.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const HEC_TOKEN: &str = "hec-token-7f3a9c1e-SECRET";
const HEADER_SECRET: &str = "api-key-55d0c2-SECRET";
const METRICS_PASSWORD: &str = "metrics-pw-0b9e-SECRET";
const UAA_SECRET: &str = "uaa-secret-91c4-SECRET";
const S3_SECRET: &str = "s3-secret-key-3e77-SECRET";

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

/// Runs the nozzle for `for_`, stops it with SIGTERM, and returns all it
/// printed (stdout and stderr).
async fn run_then_stop(cmd: &mut Command, for_: Duration) -> String {
    let child = spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()));
    tokio::time::sleep(for_).await;
    printed(&child.stop().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_output() {
    let pki = pki();
    let emu = generated_emulator(&pki, 5, 2000).await;
    let receiver = refusing_receiver().await;
    let tmp = tempfile::tempdir().unwrap();
    pki.write_client_files(tmp.path()).unwrap();
    let mut cmd = nozzle();
    cmd.env("RUST_LOG", "debug");
    run_args(&mut cmd, &emu.addr.to_string(), tmp.path());
    cmd.args(["--sink", "http", "--http-format", "hec"])
        .args(["--http-url", &format!("http://{receiver}")])
        .args(["--http-header", &format!("X-Api-Key: {HEADER_SECRET}")])
        .args(["--health-addr", "127.0.0.1:0", "--shutdown-timeout", "1"])
        .env("HEC_TOKEN", HEC_TOKEN)
        .env("METRICS_AUTH", format!("prom:{METRICS_PASSWORD}"))
        .env("BATCH_MAX_AGE_MS", "50");
    // Long enough for batches to be refused and retried.
    let text = run_then_stop(&mut cmd, Duration::from_secs(4)).await;
    // The scenario happened: the refusal was logged (with its reason).
    assert!(text.contains("Invalid token"), "{text}");
    assert!(text.contains("retrying"), "{text}");
    for secret in [HEC_TOKEN, HEADER_SECRET, METRICS_PASSWORD] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
}

/// The gateway source's UAA client secret and the S3 secret key: the UAA
/// refuses the client, the digest chain cannot read the bucket, at debug
/// level, and neither secret shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_uaa_or_s3_secret_appears_when_both_refuse() {
    let refusing = refusing_receiver().await;
    let url = format!("http://{refusing}");
    let tmp = tempfile::tempdir().unwrap();
    let keygen = nozzle()
        .args(["keygen", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let mut cmd = nozzle();
    cmd.env("RUST_LOG", "debug")
        .args(["run", "--source", "gateway"])
        .args(["--gateway-url", &url, "--uaa-url", &url])
        .args(["--uaa-client-id", "nozzle"])
        .env("UAA_CLIENT_SECRET", UAA_SECRET)
        .args([
            "--sink",
            "s3",
            "--s3-bucket",
            "audit",
            "--s3-endpoint",
            &url,
        ])
        .args(["--s3-path-style", "--s3-access-key-id", "AKIATEST"])
        .env("S3_SECRET_ACCESS_KEY", S3_SECRET)
        .arg("--signing-key")
        .arg(tmp.path().join("signing-key.pem"))
        .args(["--health-addr", "127.0.0.1:0", "--shutdown-timeout", "1"]);
    let text = run_then_stop(&mut cmd, Duration::from_secs(3)).await;
    // The scenario happened: the UAA refused and signed S3 requests failed.
    assert!(text.contains("cannot get a UAA token"), "{text}");
    assert!(text.contains("cannot read the digest chain back"), "{text}");
    for secret in [UAA_SECRET, S3_SECRET] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    let key = std::fs::read_to_string(tmp.path().join("signing-key.pem")).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    assert!(!text.contains(key_body), "the signing key leaked:\n{text}");
}

/// A key given as PEM text (`--signing-key "$(cat key.pem)"`, which the
/// option takes), a key pasted where a path goes, a secret that begins with
/// `-`, a header without its colon: the argument parser and the validation
/// name each problem and never print the secret.
#[test]
fn parse_errors_never_print_a_secret_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let keygen = nozzle()
        .args(["keygen", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(keygen.status.success(), "{keygen:?}");
    let key = std::fs::read_to_string(tmp.path().join("signing-key.pem")).unwrap();
    let key_body = key.lines().nth(1).unwrap().to_string();
    let run = |args: &[String]| {
        let out = nozzle()
            .current_dir(tmp.path())
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), printed(&out))
    };
    let strings = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let gateway = strings(&[
        "--source",
        "gateway",
        "--cf-api",
        "https://api.example.com",
        "--uaa-client-id",
        "nozzle",
    ]);
    // The PEM text itself is a valid --signing-key, shown masked.
    let mut args = strings(&["config", "check", "--uaa-client-secret", "s"]);
    args.extend(gateway.clone());
    args.extend(strings(&["--sink", "file", "--signing-key"]));
    args.push(key.clone());
    let (code, text) = run(&args);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains(&key_body), "the key leaked:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["--signing-key", "********", "flag"]),
        "{text}"
    );
    let secret = format!("-{UAA_SECRET}");
    let header = format!("Authorization Bearer {HEADER_SECRET}");
    for command in [&["config", "check"][..], &["run"], &["tail"]] {
        let mut args = strings(command);
        args.extend(gateway.clone());
        args.extend(strings(&[
            "--sink",
            "http",
            "--http-url",
            "https://siem.example.com",
        ]));
        args.extend(["--rlp-key".to_string(), key.clone()]);
        args.extend(["--uaa-client-secret".to_string(), secret.clone()]);
        args.extend(["--http-header".to_string(), header.clone()]);
        let (code, text) = run(&args);
        assert_eq!(code, Some(2), "{text}");
        for leak in [&key_body[..], UAA_SECRET, HEADER_SECRET] {
            assert!(!text.contains(leak), "{leak} leaked:\n{text}");
        }
        for expected in [
            "an argument that is not an option (not shown: it may be a secret, e.g. a key pasted where its file's path goes)",
            "--uaa-client-secret: a value beginning with '-' (not shown: it is a secret); write it as --uaa-client-secret=VALUE",
            "--http-header (HTTP_HEADER) must look like 'Name: value' (not shown: it may hold a credential)",
        ] {
            assert!(
                text.contains(&format!("  - {expected}\n")),
                "{expected} in\n{text}"
            );
        }
    }
    // A command that is not run-like masks what may be a secret too.
    let (code, text) = run(&["keygen".into(), key.clone()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(!text.contains(&key_body), "the key leaked:\n{text}");
    assert!(text.contains("unexpected argument '********"), "{text}");
}

const URL_PASSWORD: &str = "url-pw-4d1a-SECRET";
const URL_TOKEN: &str = "url-token-9c2f-SECRET";

/// `GET /health` on `addr`, the body.
async fn health(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    tcp.write_all(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.ok()?;
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// Credentials in URLs (`user:password@`, `?token=`): the gateway source's
/// and UAA's (refused: the error is in the log, /health and the summary),
/// the HTTP sink's (refused: the retry warnings) and `config check`'s
/// listing. The secret is nowhere; the redacted URL is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_are_redacted_everywhere() {
    let refusing = refusing_receiver().await;
    let secret_url =
        |path: &str| format!("http://nozzle:{URL_PASSWORD}@{refusing}{path}?token={URL_TOKEN}&x");
    let shown = |path: &str| format!("http://***@{refusing}{path}?token=***&x");
    let tmp = tempfile::tempdir().unwrap();
    let summary = tmp.path().join("summary.json");
    let health_addr = free_addr().to_string();
    // 1. The gateway source: UAA refuses, the error names the URL.
    let mut cmd = nozzle();
    cmd.env("RUST_LOG", "debug")
        .args(["run", "--source", "gateway"])
        .args(["--gateway-url", &secret_url("/gw")])
        .args(["--uaa-url", &secret_url("/uaa")])
        .args(["--uaa-client-id", "nozzle", "--uaa-client-secret", "s"])
        .args(["--health-addr", &health_addr, "--shutdown-timeout", "1"])
        .arg("--summary-file")
        .arg(&summary)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = spawn(&mut cmd);
    let mut body = String::new();
    for _ in 0..300 {
        if let Some(b) = health(&health_addr).await
            && b.contains("UAA at")
        {
            body = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = printed(&child.stop().await);
    let summary = std::fs::read_to_string(&summary).unwrap();
    // The token URL is UAA's base and /oauth/token, without the query.
    let uaa_error =
        format!("UAA at http://***@{refusing}/uaa/oauth/token refused the client credentials");
    for (what, text) in [("/health", &body), ("summary", &summary), ("log", &logs)] {
        assert!(text.contains(&uaa_error), "{what}: {uaa_error} in\n{text}");
        for secret in [URL_PASSWORD, URL_TOKEN] {
            assert!(!text.contains(secret), "{what}: {secret} leaked:\n{text}");
        }
    }

    // 2. The HTTP sink: the receiver refuses, the retry warnings name the URL.
    let pki = pki();
    let emu = generated_emulator(&pki, 5, 1000).await;
    pki.write_client_files(tmp.path()).unwrap();
    let mut cmd = nozzle();
    cmd.env("RUST_LOG", "debug");
    run_args(&mut cmd, &emu.addr.to_string(), tmp.path());
    cmd.args(["--sink", "http", "--http-format", "json"])
        .args(["--http-url", &secret_url("/ingest")])
        .args(["--health-addr", "127.0.0.1:0", "--shutdown-timeout", "1"])
        .env("BATCH_MAX_AGE_MS", "50");
    let text = run_then_stop(&mut cmd, Duration::from_secs(3)).await;
    let refused = format!(
        "http sink: {} answered 403: Invalid token",
        shown("/ingest")
    );
    assert!(text.contains(&refused), "{refused} in\n{text}");
    for secret in [URL_PASSWORD, URL_TOKEN] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }

    // 3. config check: the listing and the errors.
    let out = nozzle()
        .args(["config", "check", "--source", "gateway"])
        .args(["--cf-api", &secret_url("/api")])
        .args(["--uaa-client-id", "nozzle", "--uaa-client-secret", "s"])
        .args(["--sink", "http", "--http-format", "json"])
        .args([
            "--http-url",
            &format!("ftp://u:{URL_PASSWORD}@siem?token={URL_TOKEN}"),
        ])
        .output()
        .unwrap();
    let text = printed(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    for secret in [URL_PASSWORD, URL_TOKEN] {
        assert!(!text.contains(secret), "{secret} leaked:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["--cf-api", &shown("/api"), "flag"]),
        "{text}"
    );
    assert!(
        text.contains(
            "  - --http-url (HTTP_URL) must be an http:// or https:// URL, not \"ftp://***@siem/?token=***\"\n"
        ),
        "{text}"
    );
}

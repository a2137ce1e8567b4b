//! The syslog ingress against the real sender BOSH uses: Debian's rsyslog
//! tails a file of Cloud Controller CEF security events and UAA audit lines
//! (imfile, as BOSH's syslog release does) and forwards them over TLS with
//! a client certificate, octet-counted RFC 5424 (omfwd with the GnuTLS
//! driver), to the ingress, which must turn exactly the security events
//! into exactly these records and count the other lines as ignored.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cf_audit_nozzle::classify::rules::Filters;
use cf_audit_nozzle::config::syslog_in::{SyslogInSettings, build};
use cf_audit_nozzle::record::{EncodeContext, Kind};
use cf_audit_nozzle::route::Router;
use cf_audit_nozzle::sink::SinkQueue;
use cf_audit_nozzle::source::syslog_in::{self, SyslogInSnapshot, SyslogInStats};
use cf_audit_nozzle::tls::Pki;
use common::schema::assert_valid_api_record;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CEF_DENIED: &str = "CEF:0|cloud_foundry|cloud_controller_ng|3.180.0|PATCH /v3/apps/6f2a1c1e-0b73-48e1-b7d2-26af2c63f933|PATCH /v3/apps/6f2a1c1e-0b73-48e1-b7d2-26af2c63f933|0|rt=1714557600123 suser=dev@example.com suid=1d7c9f4e-aaaa-4bbb-8ccc-0123456789ab cs1Label=userAuthenticationMechanism cs1=oauth-access-token cs2Label=vcapRequestId cs2=0f1e2d3c-req cs3Label=result cs3=clientError cs4Label=httpStatusCode cs4=403 src=10.0.1.5 dst=10.0.2.9 cs5Label=xForwardedFor cs5=198.51.100.7, 10.0.0.2";
const CEF_LIST: &str = r"CEF:0|cloud_foundry|cloud_controller_ng|3.180.0|GET /v3/apps|GET /v3/apps|0|rt=1714557601000 suser=admin suid=a-1 cs1Label=userAuthenticationMechanism cs1=basic-auth cs2Label=vcapRequestId cs2=r-2 request=/v3/apps?names\=a b requestMethod=GET cs3Label=result cs3=success cs4Label=httpStatusCode cs4=200 src=10.0.1.6 dst=10.0.2.9";
const UAA_FAIL: &str = "[2024-05-01T10:00:02.000Z] uaa - 4711 [http-nio-8080-exec-3] .... INFO --- Audit: UserAuthenticationFailure ('marissa'): principal=9e1f, origin=[remoteAddress=203.0.113.9, clientId=cf], identityZoneId=[uaa], authenticationType=[uaa]";
const OTHER: &str = "[2024-05-01T10:00:03.000Z] cloud_controller_ng started a worker";

/// The process, and the folder of its configuration (removed on drop).
struct Rsyslog(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// rsyslogd tailing `input` and forwarding to `port` over TLS, presenting
/// the client certificate of `pki` and checking the server's against its CA.
fn rsyslog(pki: &Pki, input: &Path, port: u16) -> Rsyslog {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, pem) in [
        ("ca.pem", &pki.ca_pem),
        ("client.pem", &pki.client_cert_pem),
        ("client.key", &pki.client_key_pem),
    ] {
        std::fs::write(d.join(name), pem).unwrap();
    }
    std::fs::create_dir_all(d.join("work")).unwrap();
    let conf = format!(
        r#"global(workDirectory="{d}/work" maxMessageSize="64k" localHostName="api-0"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/client.pem"
       defaultNetstreamDriverKeyFile="{d}/client.key")
module(load="imfile" mode="polling" PollingInterval="1")
input(type="imfile" file="{input}" tag="vcap.cloud_controller_ng" ruleset="fwd" freshStartTail="off")
ruleset(name="fwd") {{
  action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
         StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/certvalid"
         TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
}}
"#,
        d = d.display(),
        input = input.display(),
    );
    std::fs::write(d.join("rsyslog.conf"), conf).unwrap();
    let child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(d.join("rsyslog.conf"))
        .arg("-i")
        .arg(d.join("work/rsyslogd.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rsyslogd (scripts/test installs rsyslog and rsyslog-gnutls)");
    Rsyslog(child, dir)
}

fn expected() -> Vec<Value> {
    let line_of = |v: &Value| v["security_event"]["line"].clone();
    let mut out = vec![
        json!({
            "kind": "api", "time": "2024-05-01T10:00:00.123000000Z", "foundation": "prod",
            "eventVersion": "1.1", "eventTime": "2024-05-01T10:00:00.123000000Z",
            "eventSource": "cloud_controller", "eventName": "audit.app.update", "eventType": "CfApiCall",
            "userIdentity": {"type": "user", "guid": "1d7c9f4e-aaaa-4bbb-8ccc-0123456789ab",
                             "name": "dev@example.com", "authMechanism": "oauth-access-token"},
            "resources": [{"type": "app", "guid": "6f2a1c1e-0b73-48e1-b7d2-26af2c63f933"}],
            "requestParameters": {"requestMethod": "PATCH", "request": "/v3/apps/6f2a1c1e-0b73-48e1-b7d2-26af2c63f933"},
            "readOnly": false, "outcome": "denied", "sourceIPAddress": "198.51.100.7",
            "requestID": "0f1e2d3c-req", "forwardedFor": ["198.51.100.7", "10.0.0.2"],
            "httpStatusCode": 403, "errorCode": "clientError", "errorMessage": "HTTP 403 Forbidden",
            "sources": ["cc_security_event"], "sourceEvent": "cc_security_event",
            "security_event": {"source": "cc_security_event", "host": "api-0", "line": CEF_DENIED},
        }),
        json!({
            "kind": "api", "time": "2024-05-01T10:00:01.000000000Z", "foundation": "prod",
            "eventVersion": "1.1", "eventTime": "2024-05-01T10:00:01.000000000Z",
            "eventSource": "cloud_controller", "eventName": "audit.app.list", "eventType": "CfApiCall",
            "userIdentity": {"type": "user", "guid": "a-1", "name": "admin", "authMechanism": "basic-auth"},
            "resources": [], "requestParameters": {"requestMethod": "GET", "request": "/v3/apps?names=a b"},
            "readOnly": true, "outcome": "success", "sourceIPAddress": "10.0.1.6", "requestID": "r-2",
            "httpStatusCode": 200, "sources": ["cc_security_event"], "sourceEvent": "cc_security_event",
            "security_event": {"source": "cc_security_event", "host": "api-0", "line": CEF_LIST},
        }),
        json!({
            "kind": "api", "time": "2024-05-01T10:00:02.000000000Z", "foundation": "prod",
            "eventVersion": "1.1", "eventTime": "2024-05-01T10:00:02.000000000Z",
            "eventSource": "uaa", "eventName": "uaa.UserAuthenticationFailure", "eventType": "CfApiCall",
            "userIdentity": {"type": "user", "guid": "9e1f", "name": "marissa", "authMechanism": "uaa", "clientId": "cf"},
            "resources": [], "requestParameters": null, "outcome": "denied", "sourceIPAddress": "203.0.113.9",
            "errorCode": "UserAuthenticationFailure",
            "errorMessage": "UserAuthenticationFailure for 'marissa' in zone uaa",
            "sources": ["uaa_audit"], "sourceEvent": "uaa_audit",
            "security_event": {"source": "uaa_audit", "host": "api-0", "line": UAA_FAIL},
        }),
    ];
    for v in &mut out {
        assert!(line_of(v).is_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_forwards_cef_and_uaa_lines_over_tls_into_exact_records() {
    let pki = Pki::generate("syslogCA", &["127.0.0.1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (name, pem) in [
        ("server.pem", &pki.server_cert_pem),
        ("server.key", &pki.server_key_pem),
        ("ca.pem", &pki.ca_pem),
    ] {
        std::fs::write(d.join(name), pem).unwrap();
    }
    let mut errors = Vec::new();
    let cfg = build(
        &SyslogInSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some((d.join("server.pem"), d.join("server.key"))),
            client_ca: Some(d.join("ca.pem")),
            max_message: 64 * 1024,
            max_connections: 4,
        },
        &mut errors,
    )
    .expect("ingress configuration");
    assert!(errors.is_empty(), "{errors:?}");
    let listener = syslog_in::bind(&cfg).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (queue, mut intake) = SinkQueue::new("api", 1000);
    let router = Arc::new(Router::new(
        vec![(queue, vec![Kind::Api])],
        Filters::default(),
        None,
        false,
    ));
    let stats = Arc::new(SyslogInStats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(syslog_in::run(
        listener,
        cfg,
        Arc::clone(&router),
        Arc::clone(&stats),
        stop.clone(),
    ));

    let input = d.join("security_events.log");
    std::fs::write(
        &input,
        format!("{CEF_DENIED}\n{OTHER}\n{CEF_LIST}\n{UAA_FAIL}\n"),
    )
    .unwrap();
    let _rsyslog = rsyslog(&pki, &input, port);

    let mut got = Vec::new();
    let ctx = EncodeContext::new("prod");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of 3 records; {:?}",
            got.len(),
            stats.load()
        );
        match tokio::time::timeout(Duration::from_millis(200), intake.recv()).await {
            Ok(Some(chunk)) => got.extend(chunk.iter().map(|r| {
                let v: Value = serde_json::from_str(&r.to_json(&ctx)).unwrap();
                assert_valid_api_record(&v);
                v
            })),
            Ok(None) => panic!("queue closed"),
            Err(_) => {}
        }
    }
    // Wait for the ignored line too, then check the counts exactly.
    while stats.load().received < 4 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", stats.load());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    task.await.unwrap();
    for (i, (mut g, want)) in got.into_iter().zip(expected()).enumerate() {
        let obj = g.as_object_mut().unwrap();
        assert_eq!(obj.remove("seq"), Some(json!(i)), "numbered in order");
        assert!(obj.remove("boot").is_some());
        let id = obj.remove("eventID").unwrap();
        let sec = obj
            .get_mut("security_event")
            .unwrap()
            .as_object_mut()
            .unwrap();
        assert_eq!(
            sec.remove("eventID"),
            Some(id),
            "the record's id is its line's"
        );
        assert_eq!(g, want, "record {i}");
    }
    assert_eq!(
        stats.load(),
        SyslogInSnapshot {
            connections: 1,
            refused: 0,
            received: 4,
            parsed: 3,
            ignored: 1,
            malformed: 0,
            dropped: 0,
        }
    );
    assert!(intake.try_recv().is_none(), "exactly three records");
}

/// A flood: 50,000 lines written as fast as the socket takes them, half of
/// them changes that wait for their other halves. Every line is counted
/// and becomes exactly one record; the correlator holds at most its bound
/// (the oldest sent on early, counted), and nothing is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_50000_lines_is_held_bounded_and_counted_exactly() {
    use cf_audit_nozzle::route::CorrelateConfig;
    use tokio::io::AsyncWriteExt;

    const LINES: u64 = 50_000;
    let mut errors = Vec::new();
    let cfg = build(
        &SyslogInSettings {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            client_ca: None,
            max_message: 64 * 1024,
            max_connections: 4,
        },
        &mut errors,
    )
    .expect("ingress configuration");
    let listener = syslog_in::bind(&cfg).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (queue, mut intake) = SinkQueue::new("api", 2 * LINES as usize);
    let router = Arc::new(Router::new(
        vec![(queue, vec![Kind::Api])],
        Filters::default(),
        None,
        false,
    ));
    let correlator = router
        .correlate(CorrelateConfig {
            max_entries: 1000,
            ..CorrelateConfig::default()
        })
        .unwrap();
    let stats = Arc::new(SyslogInStats::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(syslog_in::run(
        listener,
        cfg,
        Arc::clone(&router),
        Arc::clone(&stats),
        stop.clone(),
    ));

    // Per ten lines: five app updates (held for their audit event), two
    // reads, one refusal, one UAA sign-in, one other line (ignored).
    let line = |i: u64| -> String {
        let app = format!("00000000-0000-4000-8000-{i:012}");
        let cef = |method: &str, path: &str, status: u16| {
            format!(
                "CEF:0|cloud_foundry|cloud_controller_ng|3.181.0|{method} {path}|{method} {path}|0|rt={} suser=u suid=u-1 request={path} requestMethod={method} cs2Label=vcapRequestId cs2=r-{i} cs4Label=httpStatusCode cs4={status} src=10.0.1.5",
                1_700_000_000_000 + i
            )
        };
        match i % 10 {
            0..5 => cef("PATCH", &format!("/v3/apps/{app}"), 200),
            5 | 6 => cef("GET", &format!("/v3/apps/{app}"), 200),
            7 => cef("DELETE", &format!("/v3/apps/{app}"), 403),
            8 => format!(
                "Audit: UserAuthenticationSuccess ('u{i}'): principal=u-{i}, origin=[remoteAddress=10.0.0.{}], identityZoneId=[uaa]",
                i % 250
            ),
            _ => format!("cloud_controller_ng: worker {i} finished"),
        }
    };
    let mut bytes = Vec::new();
    for i in 0..LINES {
        let msg = format!("<14>1 2024-05-01T10:00:00Z api-0 cc - - - {}", line(i));
        bytes.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
    }
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&bytes).await.unwrap();
    tcp.shutdown().await.unwrap();
    // Until the ingress counted every line (it never drops: TCP paces the sender).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while stats.load().received < LINES {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", stats.load());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(correlator.held.load(std::sync::atomic::Ordering::Relaxed) <= 1000);
    }
    stop.cancel();
    task.await.unwrap();
    let s = stats.load();
    assert_eq!(
        (s.received, s.parsed, s.ignored, s.malformed, s.dropped),
        (LINES, LINES / 10 * 9, LINES / 10, 0, 0)
    );
    let held = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(held(&correlator.held), 1000, "the bound, full");
    assert_eq!(held(&correlator.early), LINES / 2 - 1000);
    router.release_held(None);
    assert_eq!(held(&correlator.held), 0);
    let mut records = 0;
    let mut seqs = Vec::new();
    while let Some(chunk) = intake.try_recv() {
        for r in chunk {
            records += 1;
            if let Some(cf_audit_nozzle::record::Position::Seq(s)) =
                r.number.as_ref().map(|n| n.position)
            {
                seqs.push(s);
            }
        }
    }
    assert_eq!(records, LINES / 10 * 9, "one record per security event");
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (0..LINES / 10 * 9).collect::<Vec<u64>>(),
        "each numbered once"
    );
    assert_eq!(held(&correlator.offered), LINES / 10 * 9);
    assert_eq!(held(&correlator.emitted), LINES / 10 * 9);
    assert_eq!(router.sinks_of(Kind::Api)[0].1.snapshot("api").dropped(), 0);
}

/// `run` with the syslog ingress turns the correlator on (a second source
/// of API records); its counts are on `/metrics`. Without the ingress (and
/// without the audit poller) it stays off: `tests/alerts.rs` checks that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_the_syslog_ingress_correlates() {
    let pki = common::pki();
    let emu = common::generated_emulator(&pki, 3, 200).await;
    let tmp = tempfile::tempdir().unwrap();
    let tls = tmp.path().join("tls");
    pki.write_client_files(&tls).unwrap();
    let health = common::free_addr();
    let mut cmd = common::nozzle();
    cmd.env("HEALTH_ADDR", health.to_string());
    common::run_args(&mut cmd, &emu.addr.to_string(), &tls);
    cmd.args(["--sink", "stdout"])
        .args(["--syslog-in-addr", &common::free_addr().to_string()]);
    let n = common::spawn_collected(&mut cmd);
    let mut text = String::new();
    common::wait_for(
        "the correlator's counts on /metrics",
        Duration::from_secs(30),
        || {
            text = futures_lite_block(common::metrics_text(health)).unwrap_or_default();
            text.contains("cf_nozzle_correlate_offered_total")
        },
    )
    .await;
    assert!(text.contains("cf_nozzle_correlate_held "), "{text}");
    n.stop(Duration::from_secs(30)).await;
}

/// Runs a future to completion from a synchronous closure (the poll in
/// `wait_for` is synchronous; the metrics fetch is not).
fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

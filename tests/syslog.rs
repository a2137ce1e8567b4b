//! The syslog sink against real receivers: Debian's rsyslog with the GnuTLS
//! driver (RFC 5424 over TLS, octet counting), whose parser is an independent
//! check of our messages, and a plain TCP listener for reconnect cases.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::proto::{Counter, Envelope, Event, envelope};
use cf_audit_nozzle::record::{EncodeContext, Record};
use cf_audit_nozzle::sink::syslog::{
    Framing, MsgFormat, SyslogConfig, SyslogFormat, SyslogSink, Transport,
};
use cf_audit_nozzle::sink::{Batch, BatchConfig, Sink, SinkFailure};
use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed};
use cf_audit_nozzle::tls::{Pki, rustls_client_config};
use common::*;

/// A non-system rsyslogd in the foreground: TLS (anonymous clients) on a free
/// port, every message parsed into one JSON line of RFC 5424 fields.
struct Rsyslog {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rsyslog {
    fn start(pki: &Pki) -> Self {
        Self::start_with(pki, "fields")
    }

    /// `template`: `fields` (each message's RFC 5424 fields as a JSON line)
    /// or `cef` (its MSG parsed as CEF by rsyslog's mmnormalize, liblognorm's
    /// `cef` parser: `{"cef":{"DeviceVendor":..,"Extensions":{..}}}`).
    fn start_with(pki: &Pki, template: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (name, pem) in [
            ("ca.pem", &pki.ca_pem),
            ("server.pem", &pki.server_cert_pem),
            ("server.key", &pki.server_key_pem),
        ] {
            std::fs::write(d.join(name), pem).unwrap();
        }
        std::fs::create_dir_all(d.join("work")).unwrap();
        let out = d.join("fields.jsonl");
        let conf = format!(
            r#"global(workDirectory="{d}/work" maxMessageSize="64k"
       parser.escapeControlCharactersOnReceive="off"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{d}/ca.pem"
       defaultNetstreamDriverCertFile="{d}/server.pem"
       defaultNetstreamDriverKeyFile="{d}/server.key")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{d}/port" ruleset="sink")
template(name="fields" type="list" option.jsonf="on") {{
  property(outname="pri" name="pri" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
template(name="cef" type="string" string="%$!%\n")
module(load="mmnormalize")
ruleset(name="sink") {{
  if "{template}" == "cef" then {{
    action(type="mmnormalize" rulebase="{d}/cef.rb")
  }}
  action(type="omfile" file="{out}" template="{template}")
}}
"#,
            d = d.display(),
            out = out.display()
        );
        std::fs::write(d.join("cef.rb"), "version=2\nrule=:%cef:cef%\n").unwrap();
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
        let port_file = d.join("port");
        let until = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file)
                && let Ok(port) = text.trim().parse::<u16>()
            {
                break port;
            }
            assert!(Instant::now() < until, "rsyslogd did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// The parsed messages, once at least `n` have been written.
    fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let lines = read_lines(&self.out);
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < until,
                "rsyslog wrote {} of {n} messages",
                lines.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        // A line still being written is not complete JSON yet.
        .map_while(|l| serde_json::from_str(&l).ok())
        .collect()
}

fn syslog_config(pki: &Pki, port: u16, msg: MsgFormat) -> SyslogConfig {
    let tls = rustls_client_config("test", Some(pki.ca_pem.as_bytes()), None).unwrap();
    SyslogConfig {
        addr: format!("127.0.0.1:{port}"),
        transport: Transport::Tls,
        framing: Framing::OctetCounting,
        server_name: "localhost".to_string(),
        tls: Some(tls.into()),
        format: SyslogFormat {
            msg,
            ..SyslogFormat::default()
        },
        write_timeout: cf_audit_nozzle::sink::syslog::DEFAULT_WRITE_TIMEOUT,
    }
}

fn syslog_pipeline(cfg: SyslogConfig) -> PipelineConfig {
    one_sink_pipeline(SinkConfig::Syslog(cfg))
}

const APP: &str = "cdabc600-0b73-48e1-b7d2-26af2c63f933";

/// One envelope of each kind, with characters RFC 5424 makes us escape.
fn kinds() -> Vec<Envelope> {
    let tags: &[(&str, &str)] = &[
        ("app_name", "spring-music"),
        ("organization_name", "acme"),
        ("space_name", "dev"),
        ("source_type", "APP/PROC/WEB"),
        ("odd", r#"a]b"c\d"#),
    ];
    let mut api = log_envelope(
        1_700_000_000_123_456_789,
        APP,
        format!("Updated app with guid {APP} ({{\"name\"=>\"spring-music\"}})"),
        &[("source_type", "API"), ("origin", "cloud_controller")],
    );
    api.instance_id = "1".into();
    let app = log_envelope(
        1_700_000_000_223_456_789,
        APP,
        "first line\nsecond line with ] and \" and \\",
        tags,
    );
    let counter = Envelope {
        timestamp: 1_700_000_000_323_456_789,
        source_id: "doppler".into(),
        instance_id: "d-1".into(),
        deprecated_tags: Default::default(),
        tags: [
            ("deployment", "cf"),
            ("job", "doppler"),
            ("direction", "egress"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        message: Some(envelope::Message::Counter(Counter {
            name: "dropped".into(),
            delta: 3,
            total: 9,
        })),
    };
    let event = Envelope {
        timestamp: 1_700_000_000_423_456_789,
        source_id: "trafficcontroller".into(),
        message: Some(envelope::Message::Event(Event {
            title: "Traffic Controller has disconnected slow consumer".into(),
            body: "Remote Address: 10.0.4.2:44412".into(),
        })),
        ..Default::default()
    };
    vec![api, app, counter, event]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_parses_every_kind_sent_over_tls_with_octet_counting() {
    let pki = Pki::generate("syslogCA", &["localhost"]).unwrap();
    let rsyslog = Rsyslog::start(&pki);
    let envelopes = kinds();
    let rlp_pki = common::pki();
    let emu = emulator(
        &rlp_pki,
        EmulatorConfig {
            feed: Feed::Fixed(envelopes.clone()),
            ..Default::default()
        },
    )
    .await;
    let summary = run_until(
        &syslog_pipeline(syslog_config(&pki, rsyslog.port, MsgFormat::Json)),
        vec![rlp_config(&emu, &rlp_pki, "s")],
        |s| s.envelopes == 4,
    )
    .await;
    let total = summary.total();
    // The 4 records, then the declarations of each kind's last number.
    assert_eq!((total.delivered, total.dropped()), (8, 0));

    let got = rsyslog.wait_for(8);
    assert_eq!(got.len(), 8);
    let (got, declarations) = got.split_at(4);
    let ctx = EncodeContext::new(FOUNDATION);
    let expected = [
        // (pri, timestamp, hostname, app_name, procid, msgid, sd): no
        // structured data, the JSON MSG holds every tag (once).
        (
            "133",
            "2023-11-14T22:13:20.123456Z",
            "cloud_controller",
            APP,
            "[API/1]",
            "api",
            "-",
        ),
        (
            "134",
            "2023-11-14T22:13:20.223456Z",
            "acme.dev.spring-music",
            APP,
            "[APP/PROC/WEB/0]",
            "app_log",
            "-",
        ),
        (
            "134",
            "2023-11-14T22:13:20.323456Z",
            "cf.doppler",
            "doppler",
            "d-1",
            "metric",
            "-",
        ),
        (
            "133",
            "2023-11-14T22:13:20.423456Z",
            "-",
            "trafficcontroller",
            "-",
            "event",
            "-",
        ),
    ];
    for ((line, env), want) in got.iter().zip(&envelopes).zip(expected) {
        let fields = (
            line["pri"].as_str().unwrap(),
            line["timestamp"].as_str().unwrap(),
            line["hostname"].as_str().unwrap(),
            line["app_name"].as_str().unwrap(),
            line["procid"].as_str().unwrap(),
            line["msgid"].as_str().unwrap(),
            line["sd"].as_str().unwrap(),
        );
        assert_eq!(fields, want);
        let record: Record = classify(env.clone());
        let mut msg: serde_json::Value = serde_json::from_str(line["msg"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("msg is not the record JSON ({e}): {line}"));
        // The first of each kind.
        assert_eq!(msg.as_object_mut().unwrap().remove("seq"), Some(0.into()));
        let boot = msg.as_object_mut().unwrap().remove("boot").unwrap();
        assert!(boot.as_str().unwrap().starts_with("0-"), "{boot}");
        let want: serde_json::Value = serde_json::from_str(&record.to_json(&ctx)).unwrap();
        assert_eq!(msg, want, "the record survives intact, newlines and all");
        assert_eq!(msg.get("envelope"), None);
        if msg["kind"] == "app_log" {
            assert_eq!(msg["tags"], serde_json::json!({"odd": r#"a]b"c\d"#}));
        }
    }
    // A declaration names the nozzle in the header fields, its kind as MSGID.
    for (line, (pri, kind)) in declarations.iter().zip([
        ("133", "api"),
        ("134", "app_log"),
        ("134", "metric"),
        ("133", "event"),
    ]) {
        let fields = (
            line["pri"].as_str().unwrap(),
            line["hostname"].as_str().unwrap(),
            line["app_name"].as_str().unwrap(),
            line["procid"].as_str().unwrap(),
            line["msgid"].as_str().unwrap(),
            line["sd"].as_str().unwrap(),
        );
        assert_eq!(
            fields,
            (pri, "cf-audit-nozzle", "cf-audit-nozzle", "-", kind, "-")
        );
        let msg: serde_json::Value = serde_json::from_str(line["msg"].as_str().unwrap()).unwrap();
        assert_eq!(msg["kind"], kind);
        assert_eq!(msg["last_seq"], 0);
        let keys: Vec<&String> = msg.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["boot", "foundation", "kind", "last_seq", "time"]);
    }
}

/// `--syslog-msg cef`: every golden record as a CEF line, through the real
/// rsyslog over TLS, parsed there by liblognorm's CEF parser (mmnormalize):
/// the header and the extension fields read back exactly what the record
/// says, escapes (`\`, `=`, `|`, line breaks) and all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_parses_every_golden_record_as_cef() {
    let pki = Pki::generate("syslogCA", &["localhost"]).unwrap();
    let rsyslog = Rsyslog::start_with(&pki, "cef");
    let goldens = common::goldens::goldens();
    let envelopes: Vec<Envelope> = goldens.iter().map(|(e, _)| e.clone()).collect();
    let n = envelopes.len() as u64;
    let rlp_pki = common::pki();
    let emu = emulator(
        &rlp_pki,
        EmulatorConfig {
            feed: Feed::Fixed(envelopes),
            ..Default::default()
        },
    )
    .await;
    let summary = run_until(
        &syslog_pipeline(syslog_config(&pki, rsyslog.port, MsgFormat::Cef)),
        vec![rlp_config(&emu, &rlp_pki, "s")],
        |s| s.envelopes == n,
    )
    .await;
    let total = summary.total();
    assert_eq!(total.dropped(), 0);
    let lines = rsyslog.wait_for(total.delivered as usize);
    let (records, declarations): (Vec<_>, Vec<_>) = lines
        .iter()
        .map(|l| l["cef"].clone())
        .partition(|c| c["SignatureID"] != "declaration");
    assert_eq!(records.len() as u64, n, "{lines:?}");
    assert_eq!(declarations.len(), 4);
    // The records arrive in order per kind; match each with its golden by
    // kind and place.
    let mut by_kind: std::collections::BTreeMap<String, Vec<&serde_json::Value>> =
        Default::default();
    for (_, want) in &goldens {
        by_kind
            .entry(want["kind"].as_str().unwrap().to_string())
            .or_default()
            .push(want);
    }
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for cef in &records {
        assert_eq!(cef["DeviceVendor"], "Cloud Foundry", "{cef}");
        assert_eq!(cef["DeviceProduct"], "cf-audit-nozzle");
        assert_eq!(cef["DeviceVersion"], env!("CARGO_PKG_VERSION"));
        let ext = &cef["Extensions"];
        let kind = ext["cat"].as_str().unwrap().to_string();
        let i = seen.entry(kind.clone()).or_default();
        let want = by_kind[&kind][*i];
        assert_eq!(ext["cn1"], i.to_string(), "{cef}");
        assert_eq!(ext["cn1Label"], "seq");
        *i += 1;
        assert_eq!(ext["cs5"], FOUNDATION);
        assert!(ext["cs6"].as_str().unwrap().starts_with("0-"), "{cef}");
        let time = want["time"].as_str().unwrap();
        let ms = cf_audit_nozzle::record::schema::ocsf::rfc3339_millis(time).unwrap();
        assert_eq!(ext["rt"], ms.to_string());
        let field = |k: &str| want.get(k).and_then(|v| v.as_str());
        assert_eq!(
            ext["deviceExternalId"].as_str(),
            field("source_id").filter(|s| !s.is_empty())
        );
        match kind.as_str() {
            "api" => {
                assert_eq!(cef["SignatureID"].as_str(), field("eventName"));
                assert_eq!(ext["act"].as_str(), field("eventName"));
                assert_eq!(ext["externalId"].as_str(), field("eventID"));
                assert_eq!(ext["msg"].as_str(), field("message"), "{cef}");
                assert_eq!(cef["Name"].as_str(), field("message"));
            }
            "app_log" => {
                assert_eq!(cef["SignatureID"], "app_log");
                let message = field("message").or(field("message_base64"));
                assert_eq!(ext["msg"].as_str(), message, "{cef}");
                let sev = if field("log_type") == Some("ERR") {
                    "3"
                } else {
                    "1"
                };
                assert_eq!(cef["Severity"], sev);
            }
            "metric" => {
                let ty = field("metric_type").unwrap();
                assert_eq!(cef["SignatureID"], format!("metric:{ty}"));
                if ty == "counter" {
                    assert_eq!(ext["cn2"], want["delta"].to_string());
                    assert_eq!(ext["cn3"], want["total"].to_string());
                }
            }
            _ => {
                assert_eq!(cef["SignatureID"], "event");
                // An envelope with no message is an event named `event`.
                assert_eq!(
                    cef["Name"].as_str(),
                    Some(field("title").unwrap_or("event"))
                );
                assert_eq!(ext["msg"].as_str(), field("body"));
            }
        }
        if let Some(app) = want
            .get("app")
            .and_then(|a| a.get("guid"))
            .and_then(|g| g.as_str())
            && !app.is_empty()
        {
            assert_eq!(ext["cs1"], app);
            assert_eq!(ext["cs1Label"], "appGuid");
        }
    }
    for d in &declarations {
        assert_eq!(d["Extensions"]["cn1Label"], "lastSeq");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_receives_100000_records_over_tls_none_missing_or_altered() {
    const N: usize = 100_000;
    let pki = Pki::generate("syslogCA", &["localhost"]).unwrap();
    let rsyslog = Rsyslog::start(&pki);
    let line = |i: usize| format!("seq={i} ] \" \\ [x=\"y\"]\nnext line é");
    let envelopes: Vec<Envelope> = (0..N)
        .map(|i| log_envelope(i as i64, APP, line(i), &[("source_type", "APP/PROC/WEB")]))
        .collect();
    let rlp_pki = common::pki();
    let emu = emulator(
        &rlp_pki,
        EmulatorConfig {
            feed: Feed::Fixed(envelopes),
            ..Default::default()
        },
    )
    .await;
    let summary = run_until(
        &syslog_pipeline(syslog_config(&pki, rsyslog.port, MsgFormat::Message)),
        vec![rlp_config(&emu, &rlp_pki, "s")],
        |s| s.envelopes == N as u64,
    )
    .await;
    // And the declaration of the last app_log number at shutdown.
    assert_eq!(summary.total().delivered, N as u64 + 1);
    let mut got = rsyslog.wait_for(N + 1);
    let declaration = got.pop().unwrap();
    let declared: serde_json::Value =
        serde_json::from_str(declaration["msg"].as_str().unwrap()).unwrap();
    assert_eq!(declared["last_seq"], N as u64 - 1, "{declaration}");
    let mut seen = vec![false; N];
    for l in &got {
        let msg = l["msg"].as_str().unwrap();
        let seq: usize = msg
            .strip_prefix("seq=")
            .and_then(|m| m.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected message {msg:?}"));
        assert_eq!(msg, line(seq), "altered");
        assert!(!seen[seq], "seq {seq} arrived twice");
        seen[seq] = true;
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!((got.len(), missing), (N, 0));
}

fn app_records(range: std::ops::Range<usize>) -> Vec<Arc<Record>> {
    range
        .map(|i| {
            Arc::new(classify(log_envelope(
                i as i64,
                "app",
                format!("line {i}"),
                &[("source_type", "APP/PROC/WEB")],
            )))
        })
        .collect()
}

fn tcp_config(port: u16) -> SyslogConfig {
    SyslogConfig {
        addr: format!("127.0.0.1:{port}"),
        transport: Transport::Tcp,
        framing: Framing::Newline,
        server_name: "localhost".into(),
        tls: None,
        format: SyslogFormat {
            msg: MsgFormat::Message,
            ..SyslogFormat::default()
        },
        write_timeout: cf_audit_nozzle::sink::syslog::DEFAULT_WRITE_TIMEOUT,
    }
}

/// Reads newline-framed messages from one connection until `n` arrived; returns their MSG.
async fn read_messages(stream: tokio::net::TcpStream, n: usize) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stream).lines();
    let mut out = Vec::new();
    while out.len() < n {
        let line = lines.next_line().await.unwrap().expect("connection open");
        // The MSG follows the structured data: `... [tags@32473 k="v"] MSG`.
        out.push(
            line.rsplit_once("\"] ")
                .map(|(_, m)| m.to_string())
                .unwrap(),
        );
    }
    out
}

#[tokio::test]
async fn a_connection_the_receiver_closed_is_replaced_before_the_next_batch() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut sink = SyslogSink::new(tcp_config(port), EncodeContext::new("t"));

    let batch = app_records(0..3);
    assert_eq!(sink.write(Batch::new(1, &batch)).await.unwrap(), 3);
    let (first, _) = listener.accept().await.unwrap();
    assert_eq!(
        read_messages(first, 3).await,
        ["line 0", "line 1", "line 2"]
    );
    // The receiver has closed that connection (read_messages dropped it).
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Without the check, this batch would go into a socket nobody reads.
    let batch = app_records(3..5);
    assert_eq!(sink.write(Batch::new(2, &batch)).await.unwrap(), 2);
    let (second, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the sink reconnected for the second batch")
        .unwrap();
    assert_eq!(read_messages(second, 2).await, ["line 3", "line 4"]);
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_batch_when_it_comes_back() {
    // Find a free port, then leave it closed for a while.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (queue, rx) = cf_audit_nozzle::sink::SinkQueue::new("syslog", 100);
    queue.offer(app_records(0..4));
    let stats = Arc::clone(queue.stats());
    drop(queue);
    let batch = BatchConfig {
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..BatchConfig::default()
    };
    let sink = SyslogSink::new(tcp_config(port), EncodeContext::new("t"));
    let runner = tokio::spawn(cf_audit_nozzle::sink::run_sink(
        sink,
        rx,
        Arc::clone(&stats),
        batch,
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while stats.retries.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (conn, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .expect("the sink retried")
        .unwrap();
    assert_eq!(
        read_messages(conn, 4).await,
        ["line 0", "line 1", "line 2", "line 3"]
    );
    let report = runner.await.unwrap();
    let s = report.stats;
    assert_eq!(
        (s.received, s.delivered, s.pending(), s.dropped()),
        (4, 4, 0, 0)
    );
    assert!(s.retries >= 3);
}

/// A receiver on one port whose first `hold` connections are accepted and
/// never read (a receiver that hangs: its small receive buffer and then the
/// sender's fill up); later connections are read to the end, their MSGs
/// collected in `got`.
async fn hanging_then_reading_receiver(hold: usize) -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A fixed small buffer (no autotuning), inherited by accepted sockets.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Arc::clone(&got);
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            if held.len() < hold {
                held.push(conn);
                continue;
            }
            let got = Arc::clone(&sink);
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(conn).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let msg = line.rsplit_once("\"] ").map(|(_, m)| m.to_string());
                    got.lock().unwrap().push(msg.unwrap_or(line));
                }
            });
        }
    });
    (port, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_takes_no_data_is_replaced_after_the_write_timeout() {
    // 1,000 messages of 16 kB: one batch of 16 MB, more than the socket
    // buffers of a connection nobody reads can hold.
    const N: usize = 1000;
    let line = |i: usize| format!("seq={i} {}", "x".repeat(16_000));
    let records: Vec<Arc<Record>> = (0..N)
        .map(|i| {
            Arc::new(classify(log_envelope(
                i as i64,
                "app",
                line(i),
                &[("source_type", "APP/PROC/WEB")],
            )))
        })
        .collect();
    // The first two connections hang; the third reads.
    let (port, got) = hanging_then_reading_receiver(2).await;
    let mut cfg = tcp_config(port);
    cfg.write_timeout = Duration::from_secs(2);
    cfg.format.max_message_bytes = 65_536;
    let (queue, rx) = cf_audit_nozzle::sink::SinkQueue::new("syslog", N);
    queue.offer(records);
    let stats = Arc::clone(queue.stats());
    drop(queue);
    let batch = BatchConfig {
        max_records: Some(N),
        max_bytes: usize::MAX,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(50),
        ..BatchConfig::default()
    };
    let sink = SyslogSink::new(cfg, EncodeContext::new("t"));
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        cf_audit_nozzle::sink::run_sink(sink, rx, Arc::clone(&stats), batch),
    )
    .await
    .expect("the sink stays blocked on a receiver that takes no data");
    let s = report.stats;
    // Two connections timed out and were replaced; the batch went whole
    // over the third.
    assert_eq!(
        (
            s.received,
            s.delivered,
            s.pending(),
            s.dropped(),
            s.dead_lettered
        ),
        (N as u64, N as u64, 0, 0, 0)
    );
    assert_eq!((s.reconnects, s.retries), (2, 2));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.lock().unwrap().len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {N} arrived",
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = got.lock().unwrap();
    let mut seen = vec![0u32; N];
    for msg in got.iter() {
        let seq: usize = msg
            .strip_prefix("seq=")
            .and_then(|m| m.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected message {:?}", &msg[..40.min(msg.len())]));
        assert_eq!(*msg, line(seq), "altered");
        seen[seq] += 1;
    }
    // The reading receiver got every record exactly once.
    assert_eq!(
        (got.len(), seen.iter().filter(|c| **c != 1).count()),
        (N, 0)
    );
}

#[tokio::test]
async fn a_tls_receiver_that_never_answers_the_handshake_times_out() {
    // Accepts and says nothing: the TLS handshake waits for a ServerHello.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let pki = Pki::generate("syslogCA", &["localhost"]).unwrap();
    let mut cfg = syslog_config(&pki, port, MsgFormat::Message);
    cfg.write_timeout = Duration::from_millis(300);
    let mut sink = SyslogSink::new(cfg, EncodeContext::new("t"));
    let batch = app_records(0..1);
    let failure = tokio::time::timeout(Duration::from_secs(30), sink.write(Batch::new(1, &batch)))
        .await
        .expect("the handshake waits for good")
        .unwrap_err();
    assert!(
        matches!(failure, SinkFailure::Retry { .. }),
        "retried by the runner"
    );
    assert_eq!(
        failure.error().in_sink("syslog").to_string(),
        format!(
            "syslog sink: cannot connect to 127.0.0.1:{port}: TLS handshake: the receiver took no data for 300ms (--syslog-write-timeout)"
        )
    );
    held.abort();
}

//! Shared helpers of the black-box tests: a test RLP (the emulator) on port 0
//! with its own CA, the nozzle pipeline writing files to a temporary folder,
//! and readers for what landed there. Each test file takes them with
//! `mod common;`; the peers and the process helpers are its submodules:
//!
//! - `process`: the nozzle binary (and other processes) started, signalled,
//!   read and waited for; re-exported here;
//! - `cc`: a test Cloud Controller (audit events, apps) and UAA;
//! - `gateway`: a scripted RLP Gateway and UAA for the gateway source;
//! - `moto`: the S3 peer (moto with SigV4 checking, via `moto_peer.py`);
//! - `peer`: an HTTP peer that records requests and answers one way;
//! - `schema`: the checks against the published JSON Schemas (`schema/`);
//! - `goldens`: the golden envelopes and the exact native record of each.
#![allow(dead_code)]

pub mod cc;
pub mod gateway;
pub mod goldens;
pub mod moto;
pub mod peer;
pub mod process;
pub mod schema;

#[allow(unused_imports)] // not every test starts a process
pub use process::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cf_audit_nozzle::backoff::Backoff;
use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::demo::read_records_file;
use cf_audit_nozzle::pipeline::{Pipeline, Summary};
use cf_audit_nozzle::proto::{Envelope, Log, envelope, log};
use cf_audit_nozzle::record::{EncodeContext, Kind};
use cf_audit_nozzle::route::IngressSnapshot;
use cf_audit_nozzle::sink::BatchConfig;
use cf_audit_nozzle::sink::file::FileSinkConfig;
use cf_audit_nozzle::sink::http::{HttpFormat, HttpSinkConfig};
use cf_audit_nozzle::source::SourceStatus;
use cf_audit_nozzle::source::emulator::{Emulator, EmulatorConfig, Feed};
use cf_audit_nozzle::source::rlp::{self, RlpConfig};
use cf_audit_nozzle::tls::Pki;
use tokio_util::sync::CancellationToken;

pub const FOUNDATION: &str = "test";

pub fn pki() -> Pki {
    Pki::generate("loggregatorCA", &["reverselogproxy"]).expect("generate PKI")
}

pub async fn emulator(pki: &Pki, cfg: EmulatorConfig) -> Emulator {
    Emulator::start("127.0.0.1:0".parse().unwrap(), pki, cfg)
        .await
        .expect("start emulator")
}

/// A test RLP sending generated traffic from `seed` at `rate` envelopes a second.
pub async fn generated_emulator(pki: &Pki, seed: u64, rate: u64) -> Emulator {
    emulator(
        pki,
        EmulatorConfig {
            feed: Feed::Generated { seed },
            rate: Some(rate),
            ..Default::default()
        },
    )
    .await
}

/// The JSON lines the stdout sink prints for `envelopes` in `foundation`.
pub fn json_lines(envelopes: Vec<Envelope>, foundation: &str) -> Vec<String> {
    let ctx = EncodeContext::new(foundation);
    envelopes
        .into_iter()
        .map(|e| cf_audit_nozzle::classify::classify(e).to_json(&ctx))
        .collect()
}

/// The nozzle's RLP settings for a test RLP, with short backoff so reconnect tests are quick.
pub fn rlp_config(emulator: &Emulator, pki: &Pki, shard_id: &str) -> RlpConfig {
    let mut tls = pki.client_tls();
    tls.ca_origin = "/etc/nozzle/loggregator-ca.pem".to_string();
    RlpConfig {
        addr: emulator.addr.to_string(),
        server_name: "reverselogproxy".to_string(),
        tls,
        streams: cf_audit_nozzle::source::Streams {
            shard_id: shard_id.to_string(),
            ..Default::default()
        },
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(200)),
        idle_timeout: Some(rlp::DEFAULT_IDLE_TIMEOUT),
    }
}

/// `run` against a test RLP at `addr`, with the client files
/// [`Pki::write_client_files`] put in `tls`.
pub fn run_args(cmd: &mut std::process::Command, addr: &str, tls: &Path) {
    cmd.arg("run")
        .args(["--rlp-addr", addr])
        .arg("--rlp-ca")
        .arg(tls.join("ca.pem"))
        .arg("--rlp-cert")
        .arg(tls.join("client.pem"))
        .arg("--rlp-key")
        .arg(tls.join("client-key.pem"));
}

pub fn file_pipeline(dir: &Path) -> PipelineConfig {
    PipelineConfig {
        instance_index: 3,
        ..one_sink_pipeline(SinkConfig::File(FileSinkConfig {
            dir: dir.to_path_buf(),
            instance_index: 3,
            roll_interval: Duration::from_secs(3600),
            gzip_level: 1,
        }))
    }
}

/// A pipeline of `sink` alone, taking every kind.
pub fn one_sink_pipeline(sink: SinkConfig) -> PipelineConfig {
    PipelineConfig {
        sinks: vec![(sink, Kind::ALL.to_vec())],
        queue_capacity: 1_000_000,
        queue_max_bytes: u64::MAX,
        batch: BatchConfig::default(),
        encode: EncodeContext::new(FOUNDATION),
        decode_only: false,
        buffer: None,
        instance_index: 0,
    }
}

/// The HTTP sink's settings for `url` in `format`: a HEC token, gzip, the
/// platform's roots, one request at a time.
pub fn http_config(url: &str, format: HttpFormat) -> HttpSinkConfig {
    HttpSinkConfig {
        url: url.into(),
        format,
        hec_token: Some("11111111-2222-3333-4444-555555555555".into()),
        hec_index: Default::default(),
        headers: Vec::new(),
        gzip: true,
        tls: cf_audit_nozzle::tls::rustls_client_config("test", None, None)
            .unwrap()
            .into(),
        tls_verify: true,
        timeout: Duration::from_secs(10),
        concurrency: 1,
        max_request_bytes: 10_000_000,
        acks: None,
    }
}

/// Runs a pipeline fed by one RLP source per config until `done` holds for
/// what has been received (or panics after 30 s), then shuts down in order.
pub async fn run_until(
    pipeline: &PipelineConfig,
    sources: Vec<RlpConfig>,
    done: impl Fn(&IngressSnapshot) -> bool,
) -> Summary {
    let pipeline = Pipeline::start(pipeline).expect("start pipeline");
    let stats = pipeline.ingress_stats();
    let stop = CancellationToken::new();
    let tasks: Vec<_> = sources
        .into_iter()
        .map(|cfg| {
            tokio::spawn(rlp::run(
                cfg,
                pipeline.router(),
                Arc::new(SourceStatus::default()),
                stop.clone(),
            ))
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&stats.snapshot()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; received so far: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for t in tasks {
        t.await.expect("source task");
    }
    let summary = pipeline.finish(Duration::from_secs(10)).await;
    assert!(summary.complete, "sinks drained: {summary:?}");
    summary
}

/// Runs the pipeline, with file sinks in a fresh temporary folder, against
/// one test RLP until `n` envelopes arrived. Keep the folder while reading
/// the files.
pub async fn receive(emulator: &Emulator, pki: &Pki, n: u64) -> (Summary, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let summary = run_until(
        &file_pipeline(dir.path()),
        vec![rlp_config(emulator, pki, "s")],
        |s| s.envelopes == n,
    )
    .await;
    (summary, dir)
}

/// Every record in the files a run wrote, per kind, in file order,
/// without the declarations of the last numbers ([`split_declarations`]
/// checks them).
pub fn records_by_kind(summary: &Summary) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut out: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for sink in &summary.sinks {
        for o in &sink.outputs {
            let records = read_records_file(&o.path).expect("valid records file");
            assert_eq!(records.len() as u64, o.records, "{}", o.path);
            out.entry(o.kind.clone()).or_default().extend(records);
        }
    }
    out.into_iter()
        .map(|(kind, records)| {
            let (records, _) = split_declarations(&kind, records);
            (kind, records)
        })
        .collect()
}

/// The records of one kind from one run (one boot, no replays) and its
/// declarations, checked: every record carries the run's `boot` and the
/// `seq`s are 0..n, each once (alerts have none); a declaration (`last_seq`, at least the one at
/// shutdown) says n - 1 at last. Returns (records, declarations).
pub fn split_declarations(
    kind: &str,
    all: Vec<serde_json::Value>,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (declarations, records): (Vec<_>, Vec<_>) =
        all.into_iter().partition(|r| r.get("last_seq").is_some());
    let boot = records.first().map(|r| r["boot"].clone());
    let mut seqs: Vec<u64> = records
        .iter()
        .filter_map(|r| {
            assert_eq!(Some(&r["boot"]), boot.as_ref(), "one boot: {r}");
            assert_eq!(r["kind"], kind, "{r}");
            match r["seq"].as_u64() {
                Some(seq) => Some(seq),
                // The nozzle's own alerts carry the boot alone.
                None if r["source_id"] == "cf-audit-nozzle" => None,
                None => panic!("a seq: {r}"),
            }
        })
        .collect();
    seqs.sort_unstable();
    let n = seqs.len() as u64;
    assert!(
        seqs.iter().copied().eq(0..n),
        "{kind}: seq 0..{n} each once"
    );
    if n > 0 {
        let last = declarations.iter().filter_map(|d| {
            assert_eq!(Some(&d["boot"]), boot.as_ref(), "{d}");
            assert_eq!(d["kind"], kind, "{d}");
            d["last_seq"].as_u64()
        });
        assert_eq!(last.max(), Some(n - 1), "{kind}: the last number declared");
    } else {
        assert_eq!(declarations, [] as [serde_json::Value; 0]);
    }
    (records, declarations)
}

/// A log envelope with the given payload and tags.
pub fn log_envelope(
    ts: i64,
    source_id: &str,
    payload: impl Into<Bytes>,
    tags: &[(&str, &str)],
) -> Envelope {
    Envelope {
        timestamp: ts,
        source_id: source_id.to_string(),
        instance_id: "0".to_string(),
        deprecated_tags: Default::default(),
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        message: Some(envelope::Message::Log(Log {
            payload: payload.into(),
            r#type: log::Type::Out as i32,
        })),
    }
}

/// A record's JSON `line` without its number, which must follow `kind`
/// exactly: `"boot":B` (B of instance `index`) and `"seq":seq`. Returns the
/// line without them, and B.
pub fn unnumbered(line: &str, index: u32, seq: u64) -> (String, String) {
    let after_kind = line
        .strip_prefix(r#"{"kind":""#)
        .and_then(|rest| rest.find('"'))
        .map(|end| r#"{"kind":""#.len() + end + 1)
        .unwrap_or_else(|| panic!("a record starting with its kind: {line}"));
    let rest = &line[after_kind..];
    let boot_start = format!(r#","boot":"{index}-"#);
    assert!(
        rest.starts_with(&boot_start),
        "the boot after the kind: {line}"
    );
    let boot_end = rest[r#","boot":""#.len()..].find('"').unwrap() + r#","boot":""#.len();
    let boot = rest[r#","boot":""#.len()..boot_end].to_string();
    let seq_field = format!(r#","seq":{seq}"#);
    let after_boot = &rest[boot_end + 1..];
    assert!(
        after_boot.starts_with(&seq_field)
            && !after_boot[seq_field.len()..].starts_with(|c: char| c.is_ascii_digit()),
        "seq {seq} after the boot: {line}"
    );
    let without = format!("{}{}", &line[..after_kind], &after_boot[seq_field.len()..]);
    (without, boot)
}

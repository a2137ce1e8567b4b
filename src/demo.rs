//! `cf-audit-nozzle demo`: the built-in Loggregator emulator feeding the real
//! pipeline over loopback gRPC with mutual TLS (certificates generated at
//! start), writing CloudTrail-style files; then a summary, read back from
//! the files themselves. The emulator also writes the Cloud Controller
//! security events and UAA audit lines of its API actions, which the demo
//! forwards to the syslog ingress (RFC 5424, octet counting) as BOSH's
//! syslog forwarding would; the correlator merges them with the firehose
//! lines, so the api records say who, from where and with what outcome.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{PipelineConfig, SinkConfig};
use crate::pipeline::{Pipeline, Summary};
use crate::record::{EncodeContext, Kind};
use crate::sink::BatchConfig;
use crate::sink::file::FileSinkConfig;
use crate::source::emulator::{Emulator, EmulatorConfig, EmulatorError, Feed, SecurityLog};
use crate::source::rlp::{self, RlpConfig};
use crate::source::syslog_in::{self, SyslogInConfig, SyslogInStats};
use crate::source::{SourceConfig, SourceStatus};
use crate::tls::{Pki, TlsError};

#[derive(Clone, Debug)]
pub struct DemoConfig {
    pub duration: Duration,
    pub rate: u64,
    pub out_dir: PathBuf,
    pub roll_interval: Duration,
    pub gzip_level: u32,
    /// Records carry the protojson copy of their envelope.
    pub record_envelope: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error(transparent)]
    Start(#[from] crate::pipeline::StartError),
    #[error(transparent)]
    SyslogIn(#[from] syslog_in::SyslogInError),
    #[error("demo syslog ingress: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo file {path} is not a valid gzip JSON Records file: {reason}")]
    BadFile { path: String, reason: String },
}

/// What the demo did: the pipeline's account and one record of each kind
/// as read back from the files.
pub struct DemoReport {
    pub summary: Summary,
    pub samples: Vec<(Kind, serde_json::Value)>,
    pub(crate) records_in_files: u64,
    /// The api records read back, by the sources each was built from
    /// (`firehose+cc_security_event`, ...).
    pub api_sources: BTreeMap<String, u64>,
    /// Component log lines forwarded to the syslog ingress, and how many it read.
    pub security_lines: (u64, u64),
    /// Records the correlator folded into another's (records in the files =
    /// envelopes + lines read − merged).
    pub merged: u64,
}

pub async fn run(cfg: DemoConfig, shutdown: CancellationToken) -> Result<DemoReport, DemoError> {
    let pki = Pki::generate("loggregatorCA", &["reverselogproxy"])?;
    let security_log = SecurityLog::new(100_000);
    let emulator = Emulator::start(
        "127.0.0.1:0".parse().expect("literal address"),
        &pki,
        EmulatorConfig {
            feed: Feed::Generated { seed: 1 },
            rate: Some(cfg.rate),
            security_log: Some(security_log.clone()),
            ..EmulatorConfig::default()
        },
    )
    .await?;
    tracing::info!(addr = %emulator.addr, "emulator listening (mTLS, server name reverselogproxy)");

    let pipeline_cfg = PipelineConfig {
        sinks: vec![(
            SinkConfig::File(FileSinkConfig {
                dir: cfg.out_dir.clone(),
                instance_index: 0,
                roll_interval: cfg.roll_interval,
                gzip_level: cfg.gzip_level,
            }),
            Kind::ALL.to_vec(),
        )],
        queue_capacity: 100_000,
        queue_max_bytes: u64::MAX,
        batch: BatchConfig::default(),
        encode: EncodeContext {
            record_envelope: cfg.record_envelope,
            ..EncodeContext::new("demo")
        },
        decode_only: false,
        buffer: None,
        instance_index: 0,
    };
    let pipeline = Pipeline::start(&pipeline_cfg)?;
    let correlate = crate::route::CorrelateConfig::default();
    let correlated = pipeline.router().correlate(correlate);
    let stop_release = CancellationToken::new();
    let release = tokio::spawn(crate::route::release_held_every(
        Arc::downgrade(&pipeline.router()),
        crate::run::release_tick(correlate.hold),
        stop_release.clone(),
    ));
    let ingress = Ingress::start(pipeline.router()).await?;
    let stop_forward = CancellationToken::new();
    let forward = tokio::spawn(forward(security_log, ingress.addr, stop_forward.clone()));
    let rlp_cfg = RlpConfig {
        addr: emulator.addr.to_string(),
        server_name: "reverselogproxy".to_string(),
        tls: pki.client_tls(),
        streams: crate::source::Streams {
            shard_id: "cf-audit-nozzle-demo".to_string(),
            ..Default::default()
        },
        backoff: Backoff::default(),
        idle_timeout: Some(rlp::DEFAULT_IDLE_TIMEOUT),
    };
    let stop_source = CancellationToken::new();
    let source = crate::source::spawn(
        SourceConfig::Rlp(Box::new(rlp_cfg)),
        pipeline.router(),
        Arc::new(SourceStatus::default()),
        stop_source.clone(),
    );
    tokio::select! {
        _ = tokio::time::sleep(cfg.duration) => {}
        _ = shutdown.cancelled() => tracing::info!("interrupted; finishing the demo"),
    }
    stop_source.cancel();
    let _ = source.await;
    stop_forward.cancel();
    let sent = forward.await.unwrap_or(0);
    let read = ingress.stop(sent).await;
    stop_release.cancel();
    let _ = release.await;
    pipeline.router().release_held(None);
    let summary = pipeline.finish(Duration::from_secs(8)).await;
    emulator.stop().await;

    // Read every file back: the demo proves the files are what they claim.
    let mut samples: Vec<(Kind, serde_json::Value)> = Vec::new();
    let mut records_in_files = 0;
    let mut api_sources = BTreeMap::new();
    for report in &summary.sinks {
        for output in &report.outputs {
            let mut records = read_records_file(&output.path)?;
            records_in_files += records.len() as u64;
            let sources = |r: &serde_json::Value| {
                r["sources"].as_array().map(|s| {
                    let names: Vec<&str> = s.iter().filter_map(|v| v.as_str()).collect();
                    names.join("+")
                })
            };
            for r in &records {
                if let Some(s) = sources(r) {
                    *api_sources.entry(s).or_insert(0) += 1;
                }
            }
            // The api sample: a record merged from the most sources.
            records.sort_by_key(|r| std::cmp::Reverse(r["sources"].as_array().map_or(0, Vec::len)));
            let kind: Kind = output.kind.parse().map_err(|reason| DemoError::BadFile {
                path: output.path.clone(),
                reason,
            })?;
            if !samples.iter().any(|(k, _)| *k == kind)
                && let Some(first) = records.into_iter().next()
            {
                samples.push((kind, first));
            }
        }
    }
    samples.sort_by_key(|(k, _)| *k);
    Ok(DemoReport {
        summary,
        samples,
        records_in_files,
        api_sources,
        security_lines: (sent, read),
        merged: correlated.map_or(0, |c| c.merged.load(std::sync::atomic::Ordering::Relaxed)),
    })
}

/// The syslog ingress the demo forwards component logs to (plain TCP on loopback).
struct Ingress {
    addr: std::net::SocketAddr,
    stats: Arc<SyslogInStats>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Ingress {
    async fn start(router: Arc<crate::route::Router>) -> Result<Self, DemoError> {
        let cfg = SyslogInConfig {
            addr: "127.0.0.1:0".parse().expect("literal address"),
            tls: None,
            max_message: syslog_in::DEFAULT_MAX_MESSAGE,
            max_connections: 4,
        };
        let listener = syslog_in::bind(&cfg).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(SyslogInStats::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(syslog_in::run(
            listener,
            cfg,
            router,
            Arc::clone(&stats),
            stop.clone(),
        ));
        Ok(Self {
            addr,
            stats,
            stop,
            task,
        })
    }

    /// Stops once it read the `sent` lines (or after 5 s); returns how many it read.
    async fn stop(self, sent: u64) -> u64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.stats.load().received < sent && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        let _ = self.task.await;
        self.stats.load().received
    }
}

/// Forwards what the emulator writes to `log` to the ingress at `addr`,
/// RFC 5424 with octet counting (RFC 6587 §3.4.1), every 100 ms until
/// `stop`, then what is left. Returns the lines sent.
async fn forward(log: SecurityLog, addr: std::net::SocketAddr, stop: CancellationToken) -> u64 {
    use tokio::io::AsyncWriteExt;
    let mut sent = 0;
    let mut tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "demo: cannot reach the syslog ingress");
            return 0;
        }
    };
    loop {
        let last = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(Duration::from_millis(100)) => false,
        };
        let mut out = Vec::new();
        for line in log.drain() {
            // UAA's lines start with their time; CC's CEF lines carry `rt`.
            let (host, app) = if line.starts_with("CEF:") {
                ("api-0", "cloud_controller_ng")
            } else {
                ("uaa-0", "uaa")
            };
            let msg = format!("<14>1 - {host} {app} - - - {line}");
            out.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
            sent += 1;
        }
        if let Err(e) = tcp.write_all(&out).await {
            tracing::warn!(error = %e, "demo: forwarding to the syslog ingress failed");
            return sent;
        }
        if last {
            let _ = tcp.shutdown().await;
            return sent;
        }
    }
}

/// Reads a `{"Records":[...]}` gzip file.
pub fn read_records_file(path: &str) -> Result<Vec<serde_json::Value>, DemoError> {
    let bad = |reason: String| DemoError::BadFile {
        path: path.to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    let mut doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    match doc.get_mut("Records").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(records)) => Ok(records),
        _ => Err(bad("no \"Records\" array".to_string())),
    }
}

/// The human-readable summary the demo prints.
pub fn render(report: &DemoReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = &report.summary;
    let i = &s.ingress;
    let _ = writeln!(
        out,
        "\n== one record of each kind, read back from the files =="
    );
    for (kind, record) in &report.samples {
        let _ = writeln!(
            out,
            "\n-- {kind} --\n{}",
            serde_json::to_string_pretty(record).unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\n== summary ==");
    let _ = writeln!(
        out,
        "envelopes received: {} in {} batches",
        i.envelopes, i.batches
    );
    let _ = writeln!(
        out,
        "records per kind:   api {}  app_log {}  metric {}  event {}",
        i.api, i.app_log, i.metric, i.event
    );
    for sink in &s.sinks {
        let st = &sink.stats;
        let _ = writeln!(
            out,
            "sink {}: received {}  delivered {}  pending {}  dropped {}",
            st.name,
            st.received,
            st.delivered,
            st.pending(),
            st.dropped()
        );
        let _ = writeln!(out, "files written ({}):", sink.outputs.len());
        for o in &sink.outputs {
            let _ = writeln!(out, "  {:>6} records  {}", o.records, o.path);
        }
    }
    let _ = writeln!(
        out,
        "records read back from the files: {}",
        report.records_in_files
    );
    let (sent, read) = report.security_lines;
    let _ = writeln!(
        out,
        "component log lines forwarded to the syslog ingress: {sent} (read {read})"
    );
    let _ = writeln!(
        out,
        "records merged into another's by the correlator: {}",
        report.merged
    );
    let _ = writeln!(out, "api records by the sources merged into each:");
    for (sources, n) in &report.api_sources {
        let _ = writeln!(out, "  {n:>6}  {sources}");
    }
    let _ = writeln!(out, "check one: zcat <file> | python3 -m json.tool | head");
    out
}

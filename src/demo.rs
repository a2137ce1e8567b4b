//! `cf-audit-nozzle demo`: the built-in Loggregator emulator feeding the real
//! pipeline over loopback gRPC with mutual TLS (certificates generated at
//! start), writing CloudTrail-style files; then a summary, read back from
//! the files themselves.

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
use crate::source::emulator::{Emulator, EmulatorConfig, EmulatorError, Feed};
use crate::source::rlp::{self, RlpConfig};
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
    #[error("demo file {path} is not a valid gzip JSON Records file: {reason}")]
    BadFile { path: String, reason: String },
}

/// What the demo did: the pipeline's account and one record of each kind
/// as read back from the files.
pub struct DemoReport {
    pub summary: Summary,
    pub samples: Vec<(Kind, serde_json::Value)>,
    pub(crate) records_in_files: u64,
}

pub async fn run(cfg: DemoConfig, shutdown: CancellationToken) -> Result<DemoReport, DemoError> {
    let pki = Pki::generate("loggregatorCA", &["reverselogproxy"])?;
    let emulator = Emulator::start(
        "127.0.0.1:0".parse().expect("literal address"),
        &pki,
        EmulatorConfig {
            feed: Feed::Generated { seed: 1 },
            rate: Some(cfg.rate),
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
    let summary = pipeline.finish(Duration::from_secs(8)).await;
    emulator.stop().await;

    // Read every file back: the demo proves the files are what they claim.
    let mut samples: Vec<(Kind, serde_json::Value)> = Vec::new();
    let mut records_in_files = 0;
    for report in &summary.sinks {
        for output in &report.outputs {
            let records = read_records_file(&output.path)?;
            records_in_files += records.len() as u64;
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
    })
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
    let _ = writeln!(out, "check one: zcat <file> | python3 -m json.tool | head");
    out
}

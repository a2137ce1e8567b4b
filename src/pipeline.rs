//! Sinks behind their queues and the router in front of them; the account
//! of a run ([`Summary`]). [`crate::run`] puts the sources in front and
//! shuts everything down in order.
//!
//! The pipeline's part of the shutdown order (DESIGN.md §2, invariant 4):
//! once the sources stopped, drop the router (which closes every sink
//! queue), and let each sink drain its queue, write its last batch and
//! complete its open files. Before the router goes, it declares the last
//! record number issued per kind, as a task of its own does every
//! [`DECLARE_EVERY`] while it runs.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::classify::rules::Filters;
use crate::config::{PipelineConfig, SinkConfig};
use crate::enrich::{EnrichSnapshot, Enricher};
use crate::record::Kind;
use crate::route::{IngressSnapshot, IngressStats, Router};
use crate::sink::file::FileSink;
use crate::sink::stdout::StdoutSink;
use crate::sink::syslog::SyslogSink;
use crate::sink::{BuildError, NotDelivered, SinkQueue, SinkReport, SinkStats, run_sink};
use crate::source::SourceSnapshot;
use crate::source::audit_events::AuditSnapshot;

/// A running set of sinks and the router that feeds them.
pub struct Pipeline {
    router: Arc<Router>,
    /// Declares the last numbers every [`DECLARE_EVERY`]; holds the router
    /// only weakly, so it never keeps the sink queues open.
    declarer: JoinHandle<()>,
    sinks: Vec<(String, Arc<SinkStats>, JoinHandle<SinkReport>)>,
    /// Synced once more after the sinks stopped (also those cut off by the deadline).
    buffers: Vec<Arc<crate::sink::buffer::DiskBuffer>>,
}

/// The account of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub ingress: IngressSnapshot,
    pub sinks: Vec<SinkReport>,
    /// False when a sink without a disk buffer ended with records neither
    /// delivered nor counted dropped: cut off by the shutdown deadline, or
    /// stopped with them still in flight (files it could not upload); each
    /// such sink's report says how many and why. A buffered sink keeps
    /// what it holds on disk. The exit status is 1 when false.
    pub complete: bool,
    /// Records lost that way, over all sinks.
    pub not_delivered: u64,
    /// The source's connection history (RLP or gateway), when the run had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlp: Option<SourceSnapshot>,
    /// The audit-events poller's and enrichment's counters, when they ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditReport>,
}

/// A sink that could not start (a folder that cannot be created, a client
/// that cannot be built), with the options that configure it.
#[derive(Debug, thiserror::Error)]
#[error("{options}: {error}")]
pub struct StartError {
    /// Where to look, e.g. `--out-dir (OUT_DIR)`.
    pub options: &'static str,
    pub error: BuildError,
}

impl SinkConfig {
    /// The options that configure this sink, for errors at start.
    fn options(&self) -> &'static str {
        use crate::sink::archive::Target;
        match self {
            SinkConfig::Stdout => "--sink stdout",
            SinkConfig::File(_) => "--out-dir (OUT_DIR)",
            SinkConfig::Syslog(_) => "--sink syslog (the --syslog-* options)",
            SinkConfig::Http(_) => "--sink http (the --http-* and --hec-* options)",
            SinkConfig::Object(o) => match o.target {
                Target::S3(_) => "--sink s3 (the --s3-* options)",
                Target::Dir(_) => "--out-dir (OUT_DIR) with --signing-key (SIGNING_KEY)",
            },
        }
    }

    /// The sink's `--sink` name, which `--record-schema SINK=SCHEMA` names.
    fn sink_name(&self) -> &'static str {
        use crate::sink::archive::Target;
        match self {
            SinkConfig::Stdout => "stdout",
            SinkConfig::File(_) => "file",
            SinkConfig::Syslog(_) => "syslog",
            SinkConfig::Http(_) => "http",
            SinkConfig::Object(o) => match o.target {
                Target::S3(_) => "s3",
                Target::Dir(_) => "file",
            },
        }
    }
}

/// The counters of the audit tasks that ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_events: Option<AuditSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichSnapshot>,
}

impl Summary {
    pub fn dropped(&self) -> u64 {
        self.sinks.iter().map(|s| s.stats.dropped()).sum()
    }

    /// Every sink's counters added up (named `all`).
    pub fn total(&self) -> crate::sink::SinkSnapshot {
        let mut t = crate::sink::SinkSnapshot {
            name: "all".to_string(),
            ..Default::default()
        };
        for s in &self.sinks {
            t += &s.stats;
        }
        t
    }
}

impl Pipeline {
    /// Starts one task per sink, routing every record that reaches the
    /// router (no rules, no enrichment). Fails only on what the sinks need at
    /// start (a folder that cannot be created), naming the options at fault.
    pub fn start(cfg: &PipelineConfig) -> Result<Self, StartError> {
        Self::start_with(cfg, Filters::default(), None)
    }

    /// [`Pipeline::start`] with the router keeping what `filters` let
    /// through and naming apps through `enricher`.
    pub fn start_with(
        cfg: &PipelineConfig,
        filters: Filters,
        enricher: Option<Arc<Enricher>>,
    ) -> Result<Self, StartError> {
        let mut queues = Vec::new();
        let mut sinks = Vec::new();
        let mut buffers = Vec::new();
        // The buffer's size is shared evenly: one sink that is down fills
        // its own share, never the others'.
        let buffer = cfg.buffer.as_ref().map(|b| b.per_sink(sink_count(cfg)));
        // So is the queues' byte bound: memory stays bounded whatever the
        // number of sinks.
        let queue_bytes = cfg.queue_max_bytes / sink_count(cfg).max(1) as u64;
        let mut add = |sink: Spawned, kinds: Vec<Kind>| -> Result<(), StartError> {
            let (task, queue) =
                sink(cfg, queue_bytes, buffer.as_ref()).map_err(|error| StartError {
                    options: "--buffer-dir (BUFFER_DIR)",
                    error,
                })?;
            if let Some(b) = queue.buffer() {
                buffers.push(Arc::clone(b));
            }
            sinks.push((queue.name().to_string(), Arc::clone(queue.stats()), task));
            queues.push((queue, kinds));
            Ok(())
        };
        // Digest chains and notifiers finish after the sinks that feed them.
        let mut followers = Vec::new();
        for (sink_cfg, kinds) in &cfg.sinks {
            let named = |error| StartError {
                options: sink_cfg.options(),
                error,
            };
            let encode = cfg.encode.for_sink(sink_cfg.sink_name());
            match sink_cfg {
                SinkConfig::Object(o) => {
                    for (sink, kinds) in
                        crate::sink::archive::start_object_sinks(o, &encode, kinds, &mut followers)
                            .map_err(named)?
                    {
                        add(spawner(sink), kinds)?;
                    }
                }
                SinkConfig::Stdout => add(spawner(StdoutSink::new(encode.clone())), kinds.clone())?,
                SinkConfig::Http(h) => add(
                    spawner(
                        crate::sink::http::HttpSink::new((**h).clone(), encode.clone())
                            .map_err(named)?,
                    ),
                    kinds.clone(),
                )?,
                SinkConfig::Syslog(s) => add(
                    spawner(SyslogSink::new(s.clone(), encode.clone())),
                    kinds.clone(),
                )?,
                // One writer per kind: kinds are compressed in parallel and isolated.
                SinkConfig::File(f) => {
                    for &kind in kinds {
                        let sink = FileSink::new(f.clone(), encode.clone(), kind).map_err(named)?;
                        add(spawner(sink), vec![kind])?;
                    }
                }
            }
        }
        sinks.extend(followers);
        let router = Arc::new(
            Router::new(queues, filters, enricher, cfg.decode_only)
                .with_boot(crate::record::boot_id(cfg.instance_index)),
        );
        Ok(Self {
            declarer: tokio::spawn(declare_every(Arc::downgrade(&router), DECLARE_EVERY)),
            router,
            sinks,
            buffers,
        })
    }

    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router)
    }

    /// Each sink's name and counters, in the router's order, for telemetry.
    pub(crate) fn sink_views(&self, capacity: usize) -> Vec<crate::stats::SinkView> {
        self.sinks
            .iter()
            .map(|(name, stats, _)| crate::stats::SinkView {
                name: name.clone(),
                stats: Arc::clone(stats),
                capacity: capacity as u64,
            })
            .collect()
    }

    pub fn ingress_stats(&self) -> Arc<IngressStats> {
        Arc::clone(self.router.stats())
    }

    /// Closes the sink queues and waits up to `deadline` for the sinks to
    /// drain. Every other clone of the router must be dropped first (stop the
    /// sources), or the queues stay open until the deadline.
    pub async fn finish(self, deadline: Duration) -> Summary {
        let ingress = self.router.stats().snapshot();
        // The sources have stopped: what this declares is the last number
        // of this boot (the poller confirming its pages offers nothing new).
        self.declarer.abort();
        self.router.declare(now_ns());
        drop(self.router);
        let until = tokio::time::Instant::now() + deadline;
        let mut reports = Vec::new();
        for (name, stats, mut task) in self.sinks {
            let buffered = stats
                .buffer_max_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0;
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(Ok(report)) => reports.push(report),
                Ok(Err(join)) => {
                    tracing::error!(sink = %name, error = %join, "sink task failed");
                    let snapshot = stats.snapshot(&name);
                    reports.push(SinkReport {
                        // Even with nothing pending: a sink that failed has not finished.
                        not_delivered: (!buffered).then(|| NotDelivered {
                            records: snapshot.pending(),
                            reason: format!("the sink task failed: {join}"),
                        }),
                        stats: snapshot,
                        outputs: Vec::new(),
                    });
                }
                Err(_) => {
                    let snapshot = stats.snapshot(&name);
                    task.abort();
                    let records = snapshot.pending();
                    let not_delivered = if buffered {
                        // Everything it holds is in its disk buffer (write-through).
                        tracing::warn!(
                            sink = name,
                            records,
                            "sink did not drain before the shutdown deadline; its records stay in the disk buffer for the next start"
                        );
                        None
                    } else {
                        let reason = format!(
                            "still queued or in flight at the shutdown deadline ({}s, --shutdown-timeout)",
                            deadline.as_secs_f64()
                        );
                        tracing::error!(
                            sink = name,
                            records,
                            reason = %reason,
                            "sink did not drain before the shutdown deadline; its records are lost"
                        );
                        Some(NotDelivered { records, reason })
                    };
                    reports.push(SinkReport {
                        stats: snapshot,
                        outputs: Vec::new(),
                        not_delivered,
                    });
                }
            }
        }
        for b in &self.buffers {
            b.sync();
        }
        Summary {
            ingress,
            complete: reports.iter().all(|r| r.not_delivered.is_none()),
            not_delivered: reports
                .iter()
                .filter_map(|r| r.not_delivered.as_ref())
                .map(|n| n.records)
                .sum(),
            sinks: reports,
            rlp: None,
            audit: None,
        }
    }
}

/// How often the last record numbers are declared: a lost tail shows
/// downstream within this time.
pub(crate) const DECLARE_EVERY: Duration = Duration::from_secs(60);

/// Declares `router`'s last numbers every `every` (the first after `every`)
/// until the router is gone.
async fn declare_every(router: Weak<Router>, every: Duration) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(router) = router.upgrade() else {
            return;
        };
        router.declare(now_ns());
    }
}

/// Now, in UNIX nanoseconds (a declaration's `time`).
fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

/// A sink ready to start behind its queue (and disk buffer, if any).
type Spawned = Box<
    dyn FnOnce(
        &PipelineConfig,
        u64,
        Option<&crate::sink::buffer::BufferConfig>,
    ) -> Result<(JoinHandle<SinkReport>, SinkQueue), BuildError>,
>;

/// `sink` behind its queue, batching by the pipeline's batch limits.
fn spawner<S: crate::sink::Sink>(sink: S) -> Spawned {
    Box::new(move |cfg, queue_bytes, buffer| {
        let (mut queue, intake) = match buffer {
            None => SinkQueue::new(sink.name(), cfg.queue_capacity),
            Some(b) => SinkQueue::with_buffer(sink.name(), cfg.queue_capacity, b)?,
        };
        queue.set_max_bytes(queue_bytes);
        let task = tokio::spawn(run_sink(
            sink,
            intake,
            Arc::clone(queue.stats()),
            cfg.batch.clone(),
        ));
        Ok((task, queue))
    })
}

/// How many sink tasks `cfg` starts (the file and object sinks run one per kind).
fn sink_count(cfg: &PipelineConfig) -> usize {
    cfg.sinks
        .iter()
        .map(|(s, kinds)| match s {
            SinkConfig::File(_) | SinkConfig::Object(_) => kinds.len(),
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EncodeContext;
    use crate::sink::BatchConfig;
    use crate::sink::file::FileSinkConfig;

    /// A sink that cannot start says which options configure it.
    #[test]
    fn a_sink_that_cannot_start_names_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("a-file");
        std::fs::write(&not_a_dir, b"").unwrap();
        let cfg = PipelineConfig {
            sinks: vec![(
                SinkConfig::File(FileSinkConfig {
                    dir: not_a_dir.join("out"),
                    instance_index: 0,
                    roll_interval: Duration::from_secs(60),
                    gzip_level: 1,
                }),
                Kind::ALL.to_vec(),
            )],
            queue_capacity: 10,
            queue_max_bytes: u64::MAX,
            batch: BatchConfig::default(),
            encode: EncodeContext::new("test"),
            decode_only: false,
            buffer: None,
            instance_index: 0,
        };
        let Err(e) = Pipeline::start(&cfg) else {
            panic!("a file sink below a file started");
        };
        let text = e.to_string();
        assert!(
            text.starts_with("--out-dir (OUT_DIR): file sink: cannot write "),
            "{text}"
        );
    }

    fn app_log(text: &str) -> crate::proto::Envelope {
        use crate::proto::envelope::Message;
        crate::proto::Envelope {
            source_id: "app".into(),
            message: Some(Message::Log(crate::proto::Log {
                payload: text.as_bytes().to_vec().into(),
                r#type: 0,
            })),
            ..Default::default()
        }
    }

    /// (kind, last_seq) of each declaration waiting in `rx`; panics on anything else.
    fn declared(rx: &mut crate::sink::Intake) -> Vec<(Kind, u64)> {
        let mut out = Vec::new();
        while let Some(chunk) = rx.try_recv() {
            for r in chunk {
                if let Some(crate::record::Position::LastSeq(n)) =
                    r.number.as_ref().map(|n| n.position)
                {
                    out.push((r.kind, n));
                }
            }
        }
        out
    }

    /// A declaration per kind that issued a number, once a minute, with the
    /// last number at that time; the task ends once the router is gone.
    #[tokio::test(start_paused = true)]
    async fn the_last_numbers_are_declared_every_minute() {
        let (q, mut rx) = SinkQueue::new("all", 1000);
        let router = Arc::new(Router::new(
            vec![(q, Kind::ALL.to_vec())],
            Filters::default(),
            None,
            false,
        ));
        let task = tokio::spawn(declare_every(Arc::downgrade(&router), DECLARE_EVERY));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(declared(&mut rx), [], "nothing before the first minute");
        router.dispatch(vec![app_log("a"); 5]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(declared(&mut rx), [(Kind::AppLog, 4)]);
        router.dispatch(vec![app_log("b"); 3]);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(declared(&mut rx), [(Kind::AppLog, 7)]);
        tokio::time::sleep(Duration::from_secs(180)).await;
        assert_eq!(declared(&mut rx), [(Kind::AppLog, 7); 3], "one a minute");
        // Holding the router weakly, the task keeps no queue open.
        drop(router);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(task.is_finished());
        assert!(rx.recv().await.is_none(), "the queue closed");
    }

    /// The records of every `*.json.gz` under `dir`.
    fn records_under(dir: &std::path::Path) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.to_string_lossy().ends_with(".json.gz") {
                    out.extend(crate::demo::read_records_file(path.to_str().unwrap()).unwrap());
                }
            }
        }
        out
    }

    /// At shutdown, each kind that issued a number is declared once more,
    /// into the file of its kind, after its last record.
    #[tokio::test]
    async fn finish_declares_the_last_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PipelineConfig {
            sinks: vec![(
                SinkConfig::File(FileSinkConfig {
                    dir: dir.path().to_path_buf(),
                    instance_index: 4,
                    roll_interval: Duration::from_secs(3600),
                    gzip_level: 1,
                }),
                Kind::ALL.to_vec(),
            )],
            queue_capacity: 1000,
            queue_max_bytes: u64::MAX,
            batch: BatchConfig::default(),
            encode: EncodeContext::new("test"),
            decode_only: false,
            buffer: None,
            instance_index: 4,
        };
        let pipeline = Pipeline::start(&cfg).unwrap();
        let boot = pipeline.router().boot().to_string();
        assert!(boot.starts_with("4-"), "{boot}");
        pipeline.router().dispatch(vec![app_log("a"); 3]);
        let summary = pipeline.finish(Duration::from_secs(10)).await;
        assert!(summary.complete);
        assert_eq!(
            summary.ingress.app_log, 3,
            "a declaration is no record received"
        );
        let records = records_under(dir.path());
        let numbers: Vec<(String, Option<u64>, Option<u64>)> = records
            .iter()
            .map(|r| {
                assert_eq!(r["boot"], boot.as_str());
                (
                    r["kind"].as_str().unwrap().to_string(),
                    r["seq"].as_u64(),
                    r["last_seq"].as_u64(),
                )
            })
            .collect();
        let log = |seq, last| ("app_log".to_string(), seq, last);
        assert_eq!(
            numbers,
            [
                log(Some(0), None),
                log(Some(1), None),
                log(Some(2), None),
                log(None, Some(2))
            ]
        );
        let declaration = records.last().unwrap().as_object().unwrap();
        let keys: Vec<&str> = declaration.keys().map(String::as_str).collect();
        // (Sorted: serde_json's map; the order is held by record::number's tests.)
        assert_eq!(keys, ["boot", "foundation", "kind", "last_seq", "time"]);
    }
}

//! `run`: the nozzle assembled. The pipeline (sinks behind their queues, the
//! router in front), the source feeding the router, the audit tasks beside
//! it (the `/v3/audit_events` poller and enrichment, both talking to Cloud
//! Controller once it is discovered), `/health` and `/metrics`, the alert
//! watcher; and the orderly end of it all.
//!
//! Shutdown order (DESIGN.md §2, invariant 4): cancel the sources, wait for
//! them to stop, drop the router (which closes every sink queue), and let each
//! sink drain its queue, write its last batch and complete its open files.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{AuditSetup, Built};
use crate::enrich::{self, EnrichStats, Enricher};
use crate::pipeline::{AuditReport, Pipeline, StartError, Summary};
use crate::route::Router;
use crate::source::SourceStatus;
use crate::source::audit_events::{self, AuditStatus};
use crate::source::cloud_controller::CloudController;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    #[error(transparent)]
    SyslogIn(#[from] crate::source::syslog_in::SyslogInError),
}

/// Runs the nozzle until `shutdown` is cancelled, then shuts down in order.
pub async fn run(cfg: Built, shutdown: CancellationToken) -> Result<Summary, RunError> {
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let listener = match &cfg.telemetry {
        Some(t) => crate::telemetry::bind(t).await?,
        None => None,
    };
    let enricher = cfg.audit.enrich.as_ref().map(Enricher::new);
    let pipeline = Pipeline::start_with(
        &cfg.pipeline,
        cfg.audit.filters.clone(),
        enricher.as_ref().map(|(e, _)| Arc::clone(e)),
    )?;
    // Api records are merged before numbering; what is held leaves after
    // its hold, and all of it before the sinks close.
    // Only a second source of API records (the syslog ingress, or this
    // instance's audit-events poller) gives the correlator anything to merge:
    // firehose lines alone never merge with each other, and holding them
    // costs memory (a held record keeps its batch's bytes) and throughput.
    let correlate = if cfg.syslog_in.is_some() || cfg.audit.audit_events.is_some() {
        cfg.correlate
    } else {
        crate::route::CorrelateConfig {
            hold: Duration::ZERO,
            ..cfg.correlate
        }
    };
    let correlator_stop = CancellationToken::new();
    let correlate_stats = pipeline.router().correlate(correlate);
    let correlator = correlate_stats.as_ref().map(|_| {
        tokio::spawn(crate::route::release_held_every(
            Arc::downgrade(&pipeline.router()),
            release_tick(correlate.hold),
            correlator_stop.clone(),
        ))
    });
    let audit = start_audit(&cfg.audit, enricher, pipeline.router(), shutdown.clone());
    let syslog_in = match &cfg.syslog_in {
        Some(c) => Some((crate::source::syslog_in::bind(c).await?, c.clone())),
        None => None,
    };
    let syslog_in_stats = syslog_in
        .as_ref()
        .map(|_| Arc::new(crate::source::syslog_in::SyslogInStats::default()));
    let status = Arc::new(SourceStatus::default());
    let view = Arc::new(crate::stats::View {
        ingress: pipeline.ingress_stats(),
        sinks: pipeline.sink_views(cfg.pipeline.queue_capacity),
        sources: vec![(cfg.source.name().to_string(), Arc::clone(&status))],
        alerts: Arc::default(),
        warnings: cfg.warnings.clone(),
        disconnect_threshold: cfg
            .telemetry
            .as_ref()
            .map_or(Duration::from_secs(60), |t| t.disconnect_threshold),
        started: tokio::time::Instant::now(),
        listener: Arc::default(),
        audit_events: audit.poller.clone(),
        enrich: audit.enricher.clone(),
        syslog_in: syslog_in_stats.clone(),
        correlate: correlate_stats,
    });
    // The server outlives the sources so /health answers during the drain.
    let server_stop = CancellationToken::new();
    let server = listener.zip(cfg.telemetry.clone()).map(|(l, t)| {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "serving /health and /metrics");
        tokio::spawn(crate::telemetry::serve(
            l,
            Arc::clone(&view),
            t,
            server_stop.clone(),
        ))
    });
    let alerts = tokio::spawn(crate::alert::watch(
        Arc::clone(&view),
        pipeline.router(),
        cfg.alerts.clone(),
        shutdown.clone(),
    ));
    let source = crate::source::spawn(
        cfg.source.clone(),
        pipeline.router(),
        Arc::clone(&status),
        shutdown.clone(),
    );
    let syslog_in = syslog_in.zip(syslog_in_stats).map(|((listener, c), stats)| {
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), tls = c.tls.is_some(), "syslog ingress listening");
        tokio::spawn(crate::source::syslog_in::run(
            listener,
            c,
            pipeline.router(),
            stats,
            shutdown.clone(),
        ))
    });
    shutdown.cancelled().await;
    if let Some(task) = syslog_in
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "syslog ingress failed");
    }
    if let Err(e) = source.await {
        tracing::error!(error = %e, "source task failed");
    }
    if let Err(e) = alerts.await {
        tracing::error!(error = %e, "alert watcher failed");
    }
    correlator_stop.cancel();
    if let Some(task) = correlator {
        let _ = task.await;
    }
    pipeline.router().release_held(None);
    // The poller confirms its last pages while the sinks drain.
    let (mut summary, audit) = tokio::join!(pipeline.finish(cfg.shutdown_timeout), audit.finish());
    summary.rlp = Some(status.snapshot());
    summary.audit = audit;
    server_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(summary)
}

/// How often held api records are looked at: a tenth of the hold, from
/// 10 ms to 1 s (a record leaves at most that late).
pub(crate) fn release_tick(hold: Duration) -> Duration {
    (hold / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// The running audit tasks.
struct AuditTasks {
    task: Option<JoinHandle<()>>,
    /// The poller's counters, when this instance polls (for `/metrics` and alerts).
    poller: Option<Arc<AuditStatus>>,
    enrich: Option<Arc<EnrichStats>>,
    /// Enrichment, when on (for `/metrics`).
    enricher: Option<Arc<Enricher>>,
}

/// Starts the tasks `setup` asks for: enrichment filling `enricher`'s table
/// (the router reads it) from the lookups it requests, and the poller
/// offering audit events to `router`. They stop when `shutdown` is cancelled
/// (the poller after confirming what the draining sinks settle).
fn start_audit(
    setup: &AuditSetup,
    enricher: Option<(Arc<Enricher>, mpsc::Receiver<String>)>,
    router: Arc<Router>,
    shutdown: CancellationToken,
) -> AuditTasks {
    let mut tasks = AuditTasks {
        task: None,
        poller: None,
        enrich: enricher.as_ref().map(|(e, _)| Arc::clone(e.stats())),
        enricher: enricher.as_ref().map(|(e, _)| Arc::clone(e)),
    };
    let enricher = setup
        .enrich
        .clone()
        .zip(enricher)
        .map(|(cfg, (e, requests))| (cfg, e, requests));
    let poller = setup.audit_events.clone().map(|cfg| {
        let status = Arc::new(AuditStatus::default());
        tasks.poller = Some(Arc::clone(&status));
        (cfg, status, router)
    });
    let Some(access) = setup.cc.clone() else {
        return tasks;
    };
    if enricher.is_none() && poller.is_none() {
        return tasks;
    }
    // Discovery failures count as the poller's errors (its alert watches them).
    let discovery_failures = tasks.poller.clone();
    tasks.task = Some(tokio::spawn(async move {
        let unwatched = std::sync::atomic::AtomicU64::new(0);
        let failures = discovery_failures
            .as_ref()
            .map_or(&unwatched, |s| &s.errors);
        let Some(cc) = CloudController::connect(&access, &shutdown, failures).await else {
            return;
        };
        let enrich_task = enricher.map(|(cfg, enricher, requests)| {
            tokio::spawn(enrich::run(
                cfg,
                enricher,
                requests,
                crate::source::cloud_controller::app_lookup(cc.clone()),
                shutdown.clone(),
            ))
        });
        if let Some((cfg, status, router)) = poller {
            audit_events::run(cfg, cc, router, status, shutdown.clone()).await;
        }
        if let Some(t) = enrich_task {
            let _ = t.await;
        }
    }));
    tasks
}

impl AuditTasks {
    /// Waits for the tasks to end (after shutdown) and reports their counters.
    async fn finish(self) -> Option<AuditReport> {
        if let Some(t) = self.task
            && let Err(e) = t.await
        {
            tracing::error!(error = %e, "audit task failed");
        }
        if self.poller.is_none() && self.enrich.is_none() {
            return None;
        }
        Some(AuditReport {
            audit_events: self.poller.map(|s| s.snapshot()),
            enrich: self.enrich.map(|s| s.snapshot()),
        })
    }
}

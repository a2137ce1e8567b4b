//! Starts what the audit options ask for next to the firehose source: the
//! `/v3/audit_events` poller and the enrichment task, both talking to Cloud
//! Controller once it is discovered, and collects their counters at the end.

use std::sync::Arc;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::AuditSetup;
use crate::enrich::{self, EnrichSnapshot, EnrichStats, Enricher};
use crate::pipeline::Pipeline;
use crate::source::audit_events::{self, AuditSnapshot, AuditStatus};
use crate::source::cloud_controller::CloudController;

/// The counters of the audit tasks that ran.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AuditReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_events: Option<AuditSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrich: Option<EnrichSnapshot>,
}

/// The running audit tasks.
pub struct AuditTasks {
    task: Option<JoinHandle<()>>,
    poller: Option<Arc<AuditStatus>>,
    enrich: Option<Arc<EnrichStats>>,
    enricher: Option<Arc<Enricher>>,
}

/// Turns enrichment on in `pipeline` and starts the tasks `setup` asks for;
/// they stop when `shutdown` is cancelled (the poller after confirming what
/// the draining sinks settle).
pub fn start(
    setup: &AuditSetup,
    mut pipeline: Pipeline,
    shutdown: CancellationToken,
) -> (Pipeline, AuditTasks) {
    let mut tasks = AuditTasks {
        task: None,
        poller: None,
        enrich: None,
        enricher: None,
    };
    let mut enricher = None;
    if let Some(cfg) = &setup.enrich {
        let (e, requests) = Enricher::new(cfg);
        pipeline = pipeline.with_enricher(Arc::clone(&e));
        tasks.enrich = Some(Arc::clone(e.stats()));
        tasks.enricher = Some(Arc::clone(&e));
        enricher = Some((cfg.clone(), e, requests));
    }
    let poller = setup.audit_events.clone().map(|cfg| {
        let status = Arc::new(AuditStatus::default());
        tasks.poller = Some(Arc::clone(&status));
        (cfg, status, pipeline.router())
    });
    let Some(access) = setup.cc.clone() else {
        return (pipeline, tasks);
    };
    if enricher.is_none() && poller.is_none() {
        return (pipeline, tasks);
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
                enrich::cc_lookup(cc.clone()),
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
    (pipeline, tasks)
}

impl AuditTasks {
    /// The poller's counters, when this instance polls (for `/metrics` and alerts).
    pub fn poller_status(&self) -> Option<Arc<AuditStatus>> {
        self.poller.clone()
    }

    /// Enrichment, when on (for `/metrics`).
    pub fn enricher(&self) -> Option<Arc<Enricher>> {
        self.enricher.clone()
    }

    /// Waits for the tasks to end (after shutdown) and reports their counters.
    pub async fn finish(self) -> Option<AuditReport> {
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

//! The counters every stage keeps, gathered for the readers beside the flow:
//! [`View`] is what `/health`, `/metrics` ([`crate::telemetry`]) and the alert
//! watcher ([`crate::alert`]) read, and [`AlertStats`] is what the watcher
//! writes and telemetry shows. Both readers import this module and neither
//! imports the other.
//!
//! It sits above the stages whose counters it gathers (route, sink, the
//! audit-events poller, enrich) and below every reader and the assembly.
//! The counters themselves are declared once with
//! [`counters!`](crate::counters) where each stage keeps them (the
//! sources' [`SourceStatus`] in [`crate::counters`] itself, the listener's
//! [`ListenerStats`] here).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::counters::SourceStatus;
use crate::enrich::Enricher;
use crate::route::IngressStats;
use crate::sink::SinkStats;
use crate::source::audit_events::AuditStatus;

/// A sink as telemetry sees it.
#[derive(Clone, Debug)]
pub struct SinkView {
    pub name: String,
    pub stats: Arc<SinkStats>,
    pub capacity: u64,
}

/// Everything `/health` and `/metrics` read.
#[derive(Debug)]
pub struct View {
    pub ingress: Arc<IngressStats>,
    pub sinks: Vec<SinkView>,
    pub sources: Vec<(String, Arc<SourceStatus>)>,
    pub alerts: Arc<AlertStats>,
    /// Configuration an operator should not forget, e.g. TLS verification off.
    pub warnings: Vec<String>,
    pub disconnect_threshold: Duration,
    pub started: tokio::time::Instant,
    /// The telemetry listener's own connection counts.
    pub listener: Arc<ListenerStats>,
    /// The audit-events poller, when this instance polls.
    pub audit_events: Option<Arc<AuditStatus>>,
    /// Enrichment, when on.
    pub enrich: Option<Arc<Enricher>>,
    /// The syslog ingress, when on.
    pub syslog_in: Option<Arc<crate::source::syslog_in::SyslogInStats>>,
    /// The correlator's counts, when `--correlate-hold` is not 0.
    pub correlate: Option<Arc<crate::route::CorrelateStats>>,
}

crate::counters::counters! {
    /// What the telemetry listener did with connections (`/metrics` shows it).
    #[derive(Debug)]
    pub struct ListenerStats {
        /// Connections accepted.
        accepted: Counter(
            "telemetry_connections_accepted",
            "Connections the /health and /metrics listener accepted."
        ),
        /// Connections closed to make room for a newer one (the cap was reached).
        evicted: Counter(
            "telemetry_connections_evicted",
            "Connections closed to make room for a newer one (--health-max-connections reached)."
        ),
        /// Connections closed because the request head did not arrive in time.
        header_timeouts: Counter(
            "telemetry_header_timeouts",
            "Connections closed because no whole request head arrived within --health-header-timeout."
        ),
        /// `accept` failures (e.g. the process is out of file descriptors).
        accept_errors: Counter(
            "telemetry_accept_errors",
            "Connections the listener could not accept (e.g. out of file descriptors)."
        ),
        /// Connections open now.
        open: Gauge(
            "telemetry_connections",
            "Connections open to the /health and /metrics listener."
        ),
    }
    /// A copy of [`ListenerStats`] for `/metrics`.
    #[derive(Clone, Debug, Default)]
    pub struct ListenerSnapshot {}
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertReason {
    /// A sink delivered nothing for `--alert-after` while records waited.
    SinkStalled,
    /// A sink dropped records (queue full or write error).
    SinkDropped,
    /// Doppler or the RLP dropped envelopes on the way to this nozzle.
    LoggregatorDropped,
    /// A source has been disconnected for `--health-disconnect-threshold`.
    SourceDisconnected,
    /// The audit-events poller failed (Cloud Controller, UAA or discovery)
    /// and read no page for `--alert-after`.
    AuditEventsFailing,
    /// A sink's disk buffer reached `--buffer-warn-fill` of its size.
    BufferFilling,
    /// Envelopes were shed on arrival because every sink of their kind was
    /// full (overload; [`crate::route::Router::dispatch`]).
    IngressShed,
}

impl AlertReason {
    pub const ALL: [AlertReason; 7] = [
        AlertReason::SinkStalled,
        AlertReason::SinkDropped,
        AlertReason::LoggregatorDropped,
        AlertReason::SourceDisconnected,
        AlertReason::AuditEventsFailing,
        AlertReason::BufferFilling,
        AlertReason::IngressShed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertReason::SinkStalled => "sink_stalled",
            AlertReason::SinkDropped => "sink_dropped",
            AlertReason::LoggregatorDropped => "loggregator_dropped",
            AlertReason::SourceDisconnected => "source_disconnected",
            AlertReason::AuditEventsFailing => "audit_events_failing",
            AlertReason::BufferFilling => "buffer_filling",
            AlertReason::IngressShed => "ingress_shed",
        }
    }
}

/// Alerts raised so far, and which sinks are stalled now.
#[derive(Debug, Default)]
pub struct AlertStats {
    raised: [AtomicU64; AlertReason::ALL.len()],
    stalled: Mutex<Vec<bool>>,
}

impl AlertStats {
    pub fn raised(&self, reason: AlertReason) -> u64 {
        self.raised[reason as usize].load(Ordering::Relaxed)
    }

    pub(crate) fn is_stalled(&self, sink: usize) -> bool {
        self.stalled
            .lock()
            .expect("alert lock")
            .get(sink)
            .copied()
            .unwrap_or(false)
    }

    /// Counts one alert of `reason` (the watcher, when it raises one).
    pub(crate) fn raise(&self, reason: AlertReason) {
        self.raised[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Starts tracking `sinks` sinks, none of them stalled.
    pub(crate) fn track_sinks(&self, sinks: usize) {
        *self.stalled.lock().expect("alert lock") = vec![false; sinks];
    }

    /// Marks sink `sink` (an index into [`View::sinks`]) stalled or not.
    pub(crate) fn set_stalled(&self, sink: usize, stalled: bool) {
        self.stalled.lock().expect("alert lock")[sink] = stalled;
    }
}

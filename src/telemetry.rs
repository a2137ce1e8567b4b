//! Telemetry: `/health` (JSON status) and `/metrics` (Prometheus text) over
//! HTTP, served by axum on `--health-addr`.
//!
//! Both read the counters the pipeline keeps anyway (gathered in
//! [`View`], from [`crate::stats`]) at request time: nothing is
//! counted twice, and a scrape costs the hot path nothing. Neither endpoint
//! shows record content or secrets.
//!
//! `/health` answers 503 when a source has been disconnected longer than
//! `--health-disconnect-threshold`, and when a sink's disk buffer refuses
//! (nearly) every record offered to it (the disk under `--buffer-dir` is full
//! or not writable): then the sink drops everything it is given, and the
//! nozzle, not the receiver, is what is broken. A stalled sink shows in the
//! body and raises an alert but keeps 200, because a restart would throw away
//! the records waiting in memory and fix nothing at the receiver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::json;

mod listener;

pub use listener::{bind, serve};

use crate::counters::{Metric, MetricKind};
use crate::enrich::EnrichSnapshot;
use crate::route::IngressSnapshot;
use crate::sink::SinkSnapshot;
use crate::source::SourceSnapshot;
use crate::source::audit_events::AuditSnapshot;
use crate::stats::{AlertReason, ListenerSnapshot, SinkView, View};

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    pub addr: SocketAddr,
    /// The address came from the defaults, not from the operator: if it is
    /// taken, run without telemetry (with an error line) instead of failing.
    pub addr_is_default: bool,
    /// `/metrics` requires these credentials (HTTP basic auth) when set.
    pub metrics_auth: Option<BasicAuth>,
    /// `/health` says 503 once a source has been disconnected this long.
    pub disconnect_threshold: Duration,
    /// Connections served at once; a new one beyond it closes the oldest.
    pub max_connections: usize,
    /// A connection that has not sent a whole request head this long after
    /// connecting (or after its last response) is closed.
    pub header_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct BasicAuth {
    pub user: String,
    pub password: crate::redact::Secret,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen on --health-addr {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The `/health` verdict and body.
pub fn health(view: &View) -> (bool, serde_json::Value) {
    let mut problems = Vec::new();
    let sources: Vec<_> = view
        .sources
        .iter()
        .map(|(name, status)| {
            let (connected, since) = status.connection();
            let since = since.unwrap_or_else(|| view.started.elapsed());
            if !connected && since >= view.disconnect_threshold {
                problems.push(format!(
                    "source {name} has been disconnected for {} s (threshold {} s)",
                    since.as_secs(),
                    view.disconnect_threshold.as_secs()
                ));
            }
            let snap = status.snapshot();
            json!({
                "name": name,
                "connected": connected,
                "for_seconds": since.as_secs(),
                "attempts": snap.attempts,
                "failures": snap.failures,
                "last_error": snap.last_error,
            })
        })
        .collect();
    let sinks: Vec<_> = view
        .sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let snap = s.stats.snapshot(&s.name);
            let refusing = s.stats.buffer_health.refusing.load(Ordering::Relaxed);
            if refusing {
                problems.push(format!(
                    "sink {} is dropping the records it is given: the disk under --buffer-dir refuses its buffer's writes ({} dropped for that so far, dropped{{reason=buffer_error}})",
                    s.name, snap.dropped_buffer_error
                ));
            }
            json!({
                "name": s.name,
                "stalled": view.alerts.is_stalled(i),
                "buffer_refusing": refusing,
                "queue_fill": snap.queued as f64 / s.capacity.max(1) as f64,
                "received": snap.received,
                "delivered": snap.delivered,
                "queued": snap.queued,
                "in_flight": snap.in_flight,
                "buffered": snap.buffered,
                "buffer_fill": match s.stats.buffer_max_bytes.load(Ordering::Relaxed) {
                    0 => serde_json::Value::Null,
                    max => json!(snap.buffer_bytes as f64 / max as f64),
                },
                "dead_lettered": snap.dead_lettered,
                "dropped": snap.dropped(),
            })
        })
        .collect();
    let healthy = problems.is_empty();
    let body = json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "problems": problems,
        "warnings": view.warnings,
        "sources": sources,
        "sinks": sinks,
        "ingress": view.ingress.snapshot(),
    });
    (healthy, body)
}

/// The Prometheus text exposition (format 0.0.4) of every counter, read now.
pub fn metrics(view: &Arc<View>) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("cf_nozzle");
    registry.register_collector(Box::new(ViewCollector(Arc::clone(view))));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Reads the view's counters at scrape time.
#[derive(Debug)]
struct ViewCollector(Arc<View>);

type Labels = Vec<(&'static str, String)>;

/// The correlator's counters and the actions it holds now.
fn encode_correlate(
    e: &mut DescriptorEncoder,
    c: &crate::route::CorrelateStats,
) -> std::fmt::Result {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    for (name, help, value) in [
        (
            "correlate_offered",
            "API records (halves of an action) offered to the correlator.",
            load(&c.offered),
        ),
        (
            "correlate_emitted",
            "Records the correlator sent on, merged or alone.",
            load(&c.emitted),
        ),
        (
            "correlate_merged",
            "Halves folded into another half's record (offered = emitted + merged + held).",
            load(&c.merged),
        ),
        (
            "correlate_early",
            "Actions sent on before their hold because --correlate-max-entries were held.",
            load(&c.early),
        ),
    ] {
        family(e, name, help, [(vec![], ConstCounter::new(value))])?;
    }
    family(
        e,
        "correlate_held",
        "Actions the correlator holds now, waiting for their other halves.",
        [(vec![], ConstGauge::new(load(&c.held) as i64))],
    )
}

/// One metric family: its name, help, type and samples.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> std::fmt::Result {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, m) in samples {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Each family of `table` (its consecutive entries of one name) with a
/// sample per row and entry: the row's labels (e.g. `sink="http"`), then the
/// entry's own (e.g. `reason="queue_full"`).
fn families<S>(
    encoder: &mut DescriptorEncoder,
    table: &[Metric<S>],
    rows: &[(Labels, S)],
) -> std::fmt::Result {
    for group in table.chunk_by(|a, b| a.name == b.name) {
        let samples = rows.iter().flat_map(|(labels, snap)| {
            group.iter().map(move |m| {
                let mut labels = labels.clone();
                labels.extend(m.label.map(|(k, v)| (k, v.to_string())));
                (labels, Sample::of(m.kind, (m.value)(snap)))
            })
        });
        family(encoder, group[0].name, group[0].help, samples)?;
    }
    Ok(())
}

/// A value of a [`Metric`] table, typed as its kind says.
#[derive(Debug)]
enum Sample {
    Counter(ConstCounter<u64>),
    Gauge(ConstGauge<i64>),
}

impl Sample {
    fn of(kind: MetricKind, value: u64) -> Self {
        match kind {
            MetricKind::Counter => Sample::Counter(ConstCounter::new(value)),
            MetricKind::Gauge => Sample::Gauge(ConstGauge::new(value as i64)),
        }
    }
}

impl EncodeMetric for Sample {
    fn encode(&self, encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        match self {
            Sample::Counter(c) => c.encode(encoder),
            Sample::Gauge(g) => g.encode(encoder),
        }
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        match self {
            Sample::Counter(c) => c.metric_type(),
            Sample::Gauge(g) => g.metric_type(),
        }
    }
}

/// Encodes a histogram the sink owns (the crate encodes owned metrics only).
#[derive(Debug)]
struct HistogramRef<'a>(&'a prometheus_client::metrics::histogram::Histogram);

impl EncodeMetric for HistogramRef<'_> {
    fn encode(&self, encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.0.metric_type()
    }
}

const RECORDS: &str = "Records classified, by kind.";

/// What enters the pipeline (declared in [`crate::route`]).
const INGRESS: &[Metric<IngressSnapshot>] = &[
    Metric::counter(
        "ingress_envelopes",
        "Envelopes received from Loggregator.",
        |s| s.envelopes,
    ),
    Metric::counter(
        "ingress_batches",
        "Envelope batches received from Loggregator.",
        |s| s.batches,
    ),
    Metric::labelled("records", RECORDS, ("kind", "api"), |s| s.api),
    Metric::labelled("records", RECORDS, ("kind", "app_log"), |s| s.app_log),
    Metric::labelled("records", RECORDS, ("kind", "metric"), |s| s.metric),
    Metric::labelled("records", RECORDS, ("kind", "event"), |s| s.event),
    Metric::counter(
        "unrouted_records",
        "Records of a kind no sink is configured for.",
        |s| s.unrouted,
    ),
    Metric::counter(
        "loggregator_dropped",
        "Envelopes Doppler and the RLP report dropped on egress to slow consumers (dropped{direction=egress} deltas).",
        |s| s.upstream_dropped,
    ),
    Metric::counter(
        "ingress_shed",
        "Envelopes shed on arrival, unread, because every sink of their kind was full (overload): lost, like a sink's drops.",
        |s| s.shed,
    ),
];

/// The audit-events poller's counters (declared in `source::audit_events`).
const AUDIT_EVENTS: &[Metric<AuditSnapshot>] = &[
    Metric::counter(
        "audit_events_pages",
        "Pages of /v3/audit_events read.",
        |s| s.pages,
    ),
    Metric::counter(
        "audit_events_events",
        "Audit events handed to the sinks as api records.",
        |s| s.events,
    ),
    Metric::counter(
        "audit_events_duplicates_skipped",
        "Audit events of the cursor's second read again and skipped.",
        |s| s.duplicates_skipped,
    ),
    Metric::counter(
        "audit_events_invalid",
        "Audit events Cloud Controller sent that could not be read (skipped, logged).",
        |s| s.invalid,
    ),
    Metric::counter(
        "audit_events_polls_completed",
        "Polls that reached the last page.",
        |s| s.polls_completed,
    ),
    Metric::counter(
        "audit_events_rewinds",
        "Times the poller read again from the confirmed cursor because a sink lost or turned away records.",
        |s| s.rewinds,
    ),
    Metric::counter(
        "audit_events_cursor_writes",
        "Times the confirmed cursor was stored.",
        |s| s.cursor_writes,
    ),
    Metric::counter(
        "audit_events_errors",
        "Cloud Controller, UAA, discovery and cursor-store failures of the poller.",
        |s| s.errors,
    ),
    Metric::counter(
        "audit_events_oversized_pages",
        "Pages larger than --cf-max-response-bytes, not read (asked for again in smaller pages).",
        |s| s.oversized_pages,
    ),
    Metric::counter(
        "audit_events_refused_links",
        "pagination.next.href links not followed: to another origin than the API's, or not a URL.",
        |s| s.refused_links,
    ),
];

/// Enrichment's counters (declared in [`crate::enrich`]).
const ENRICH: &[Metric<EnrichSnapshot>] = &[
    Metric::counter(
        "enrich_cache_hits",
        "Records given app, space and org names from the names table.",
        |s| s.enriched,
    ),
    Metric::counter(
        "enrich_cache_misses",
        "Records delivered without names because their app's lookup had not answered yet.",
        |s| s.pending,
    ),
    Metric::counter(
        "enrich_not_guid",
        "Records whose app id is not a GUID (never looked up).",
        |s| s.not_guid,
    ),
    Metric::counter(
        "enrich_lookups",
        "App lookups sent to Cloud Controller.",
        |s| s.lookups,
    ),
    Metric::counter(
        "enrich_lookups_not_found",
        "App lookups Cloud Controller answered 404 (remembered as missing).",
        |s| s.misses,
    ),
    Metric::counter(
        "enrich_lookup_errors",
        "App lookups that failed otherwise (remembered as missing for a while).",
        |s| s.errors,
    ),
    Metric::counter(
        "enrich_queue_full",
        "App ids not queued for lookup because the lookup queue was full.",
        |s| s.queue_full,
    ),
];

impl prometheus_client::collector::Collector for ViewCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let v = &*self.0;
        families(&mut e, INGRESS, &[(vec![], v.ingress.snapshot())])?;
        encode_sinks(&mut e, v)?;
        encode_sources(&mut e, v)?;
        families(
            &mut e,
            ListenerSnapshot::METRICS,
            &[(vec![], v.listener.load())],
        )?;
        if let Some(a) = &v.audit_events {
            encode_audit_events(&mut e, a.snapshot())?;
        }
        if let Some(s) = &v.syslog_in {
            families(
                &mut e,
                crate::source::syslog_in::SyslogInSnapshot::METRICS,
                &[(vec![], s.load())],
            )?;
        }
        if let Some(c) = &v.correlate {
            encode_correlate(&mut e, c)?;
        }
        if let Some(en) = &v.enrich {
            families(&mut e, ENRICH, &[(vec![], en.stats().snapshot())])?;
            let (named, missing, pending) = en.table_counts();
            family(
                &mut e,
                "enrich_table_entries",
                "Apps in the names table the router reads, by state.",
                [("named", named), ("missing", missing), ("pending", pending)]
                    .map(|(k, n)| (vec![("state", k.to_string())], ConstGauge::new(n as i64))),
            )?;
        }
        family(
            &mut e,
            "alerts",
            "Alerts raised, by reason.",
            AlertReason::ALL.map(|r| {
                (
                    vec![("reason", r.as_str().to_string())],
                    ConstCounter::new(v.alerts.raised(r)),
                )
            }),
        )?;
        if let Some(p) = process_stats() {
            family(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory of the nozzle process.",
                [(vec![], ConstGauge::new(p.rss_bytes as i64))],
            )?;
            family(
                &mut e,
                "process_cpu_seconds",
                "CPU time of the nozzle process, user and system.",
                [(vec![], ConstCounter::new(p.cpu_seconds))],
            )?;
        }
        Ok(())
    }
}

/// Every sink's counters, then what the sink holds besides them.
fn encode_sinks(e: &mut DescriptorEncoder, v: &View) -> std::fmt::Result {
    let rows: Vec<(Labels, SinkSnapshot)> = v
        .sinks
        .iter()
        .map(|s| (vec![("sink", s.name.clone())], s.stats.snapshot(&s.name)))
        .collect();
    families(e, SinkSnapshot::METRICS, &rows)?;
    // One sample per sink, labelled with its name.
    fn per_sink<'v, M: EncodeMetric>(
        e: &mut DescriptorEncoder,
        v: &'v View,
        name: &str,
        help: &str,
        value: impl Fn(usize, &'v SinkView) -> M,
    ) -> std::fmt::Result {
        let samples = v.sinks.iter().enumerate();
        let samples = samples.map(|(i, s)| (vec![("sink", s.name.clone())], value(i, s)));
        family(e, name, help, samples)
    }
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
    per_sink(
        e,
        v,
        "sink_buffer_capacity_bytes",
        "Bytes the sink's disk buffer may hold (its share of --buffer-max-bytes); 0 without one. Fill: sink_buffer_bytes / this.",
        |_, s| ConstGauge::new(load(&s.stats.buffer_max_bytes)),
    )?;
    per_sink(
        e,
        v,
        "sink_buffer_refusing",
        "1 while the disk under the sink's buffer refuses (nearly) every record offered: /health fails.",
        |_, s| {
            let refusing = s.stats.buffer_health.refusing.load(Ordering::Relaxed);
            ConstGauge::new(i64::from(refusing))
        },
    )?;
    per_sink(
        e,
        v,
        "sink_queue_capacity",
        "Records the sink's queue holds before dropping.",
        |_, s| ConstGauge::new(s.capacity as i64),
    )?;
    per_sink(
        e,
        v,
        "sink_stalled",
        "1 while the sink has delivered nothing for --alert-after with records waiting.",
        |i, _| ConstGauge::new(i64::from(v.alerts.is_stalled(i))),
    )?;
    per_sink(
        e,
        v,
        "sink_batch_seconds",
        "Time from a batch's first write attempt to its outcome, retries included.",
        |_, s| HistogramRef(&s.stats.batch_seconds),
    )?;
    per_sink(
        e,
        v,
        "sink_delivery_latency_seconds",
        "Time from the sink's queue accepting a record to the sink delivering it (records read back from the disk buffer: from reading them back).",
        |_, s| &s.stats.delivery_latency,
    )
}

/// Every source's counters, then its disconnects by reason and its state.
fn encode_sources(e: &mut DescriptorEncoder, v: &View) -> std::fmt::Result {
    let rows: Vec<(Labels, SourceSnapshot)> = v
        .sources
        .iter()
        .map(|(n, s)| (vec![("source", n.clone())], s.snapshot()))
        .collect();
    families(e, SourceSnapshot::METRICS, &rows)?;
    family(
        e,
        "source_disconnects",
        "Streams and attempts that ended, by reason.",
        rows.iter().flat_map(|(labels, s)| {
            s.disconnects.iter().map(|(reason, count)| {
                let mut labels = labels.clone();
                labels.push(("reason", reason.to_string()));
                (labels, ConstCounter::new(*count))
            })
        }),
    )?;
    family(
        e,
        "source_backoff_seconds",
        "The wait before the next attempt; 0 while connected or trying.",
        rows.iter()
            .map(|(l, s)| (l.clone(), ConstGauge::new(s.backoff_ms as f64 / 1000.0))),
    )?;
    family(
        e,
        "source_connected",
        "1 while a stream is open.",
        rows.iter()
            .zip(&v.sources)
            .map(|((l, _), (_, s))| (l.clone(), ConstGauge::new(i64::from(s.connection().0)))),
    )?;
    family(
        e,
        "source_last_envelope_timestamp_seconds",
        "When the last envelope arrived (Unix time); 0 before the first.",
        rows.iter().map(|(l, s)| {
            let ms = s.last_envelope_unix_ms.unwrap_or(0).max(0) as u64;
            (l.clone(), ConstGauge::new(ms as f64 / 1000.0))
        }),
    )
}

/// The audit-events poller's counters and its cursor.
fn encode_audit_events(e: &mut DescriptorEncoder, a: AuditSnapshot) -> std::fmt::Result {
    let cursor = a.cursor_unix;
    families(e, AUDIT_EVENTS, &[(vec![], a)])?;
    family(
        e,
        "audit_events_cursor_timestamp_seconds",
        "created_at of the newest audit event the sinks confirmed (Unix time; the look-back start before the first); 0 before the poller starts.",
        [(vec![], ConstGauge::new(cursor))],
    )?;
    let age = if cursor == 0 {
        0
    } else {
        (chrono::Utc::now().timestamp() - cursor).max(0)
    };
    family(
        e,
        "audit_events_cursor_age_seconds",
        "Seconds from the confirmed cursor to now: how far behind Cloud Controller the confirmed audit trail is; 0 before the poller starts.",
        [(vec![], ConstGauge::new(age))],
    )
}

struct ProcessStats {
    rss_bytes: u64,
    cpu_seconds: f64,
}

/// RSS from `/proc/self/status` and CPU time from `/proc/self/stat` (Linux;
/// `None` elsewhere). `/proc` reports CPU time in USER_HZ ticks, which the
/// kernel fixes at 100 per second for user space on every architecture.
fn process_stats() -> Option<ProcessStats> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ProcessStats {
        rss_bytes: rss_kb * 1024,
        cpu_seconds: (utime + stime) as f64 / 100.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkStats;
    use crate::stats::SinkView;

    fn view(sinks: &[(&str, &Arc<SinkStats>)]) -> View {
        View {
            ingress: Arc::default(),
            sinks: sinks
                .iter()
                .map(|(name, stats)| SinkView {
                    name: name.to_string(),
                    stats: Arc::clone(stats),
                    capacity: 100,
                })
                .collect(),
            sources: Vec::new(),
            alerts: Arc::default(),
            warnings: Vec::new(),
            disconnect_threshold: Duration::from_secs(60),
            started: tokio::time::Instant::now(),
            listener: Arc::default(),
            audit_events: None,
            syslog_in: None,
            correlate: None,
            enrich: None,
        }
    }

    /// Sets `counters` to `from`, `from + 1`, … in turn.
    fn count_from(from: u64, counters: &[&std::sync::atomic::AtomicU64]) {
        for (i, c) in counters.iter().enumerate() {
            c.store(from + i as u64, Ordering::Relaxed);
        }
    }

    /// Every family `/metrics` shows, with values that are not zero where a
    /// test can set them, against the text captured before the counters
    /// were declared once (`telemetry/metrics.golden.txt`): names, help,
    /// types, labels and order stay byte for byte. The process's own
    /// families (memory, CPU) vary and are cut off.
    #[tokio::test(start_paused = true)]
    async fn metrics_text_stays_byte_for_byte() {
        use crate::backoff::Backoff;
        use crate::source::SourceStatus;
        use crate::source::status::{Attempt, Disconnect, reconnect_loop};
        use tokio_util::sync::CancellationToken;

        let (a, b) = (
            Arc::new(SinkStats::default()),
            Arc::new(SinkStats::default()),
        );
        let mut n = 1;
        for s in [&a, &b] {
            for c in [
                &s.received,
                &s.delivered,
                &s.queued,
                &s.in_flight,
                &s.buffered,
                &s.buffer_bytes,
                &s.buffer_max_bytes,
                &s.dropped_queue_full,
                &s.dropped_buffer_full,
                &s.dropped_buffer_error,
                &s.dropped_write_error,
                &s.dead_lettered,
                &s.retries,
                &s.reconnects,
            ] {
                c.store(n, Ordering::Relaxed);
                n += 1;
            }
            s.batch_seconds.observe(0.25 * n as f64);
            s.delivery_latency.observe(Duration::from_millis(3 * n), n);
        }
        a.buffer_health.refusing.store(true, Ordering::Relaxed);
        let mut v = view(&[("http", &a), ("syslog", &b)]);
        count_from(
            100,
            &[
                &v.ingress.batches,
                &v.ingress.envelopes,
                &v.ingress.by_kind[0],
                &v.ingress.by_kind[1],
                &v.ingress.by_kind[2],
                &v.ingress.by_kind[3],
                &v.ingress.unrouted,
                &v.ingress.upstream_dropped,
                &v.ingress.filtered,
                &v.ingress.shed,
            ],
        );
        let (rlp, gateway) = (
            Arc::new(SourceStatus::default()),
            Arc::new(SourceStatus::default()),
        );
        let stop = CancellationToken::new();
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        reconnect_loop("test", backoff, &rlp, &stop, || async {
            stop.cancel();
            Attempt::failed(Disconnect::Refused, "refused".into())
        })
        .await;
        rlp.backoff_ms.store(1500, Ordering::Relaxed);
        gateway.opened("gateway", "gw:443");
        gateway.received(3);
        gateway
            .last_envelope_unix_ms
            .store(1_700_000_000_123, Ordering::Relaxed);
        for (i, s) in [&rlp, &gateway].into_iter().enumerate() {
            for (j, c) in [
                &s.attempts,
                &s.connects,
                &s.failures,
                &s.envelopes,
                &s.malformed_frames,
                &s.token_renewals,
            ]
            .into_iter()
            .enumerate()
            {
                c.fetch_add(200 + 10 * i as u64 + j as u64, Ordering::Relaxed);
            }
        }
        v.sources = vec![("rlp".into(), rlp), ("gateway".into(), gateway)];
        let audit = Arc::new(crate::source::audit_events::AuditStatus::default());
        count_from(
            300,
            &[
                &audit.pages,
                &audit.events,
                &audit.duplicates_skipped,
                &audit.invalid,
                &audit.oversized_pages,
                &audit.refused_links,
                &audit.polls_completed,
                &audit.rewinds,
                &audit.cursor_writes,
                &audit.errors,
            ],
        );
        v.audit_events = Some(audit);
        let (enricher, _requests) = crate::enrich::Enricher::new(&Default::default());
        let es = enricher.stats();
        count_from(
            400,
            &[
                &es.enriched,
                &es.pending,
                &es.not_guid,
                &es.lookups,
                &es.misses,
                &es.errors,
                &es.queue_full,
            ],
        );
        v.enrich = Some(enricher);
        v.alerts.track_sinks(2);
        v.alerts.set_stalled(1, true);
        v.alerts.raise(AlertReason::SinkDropped);
        v.alerts.raise(AlertReason::SinkDropped);
        v.alerts.raise(AlertReason::BufferFilling);
        count_from(
            500,
            &[
                &v.listener.accepted,
                &v.listener.open,
                &v.listener.evicted,
                &v.listener.header_timeouts,
                &v.listener.accept_errors,
            ],
        );

        let text = metrics(&Arc::new(v));
        let text = &text[..text
            .find("# HELP cf_nozzle_process_")
            .expect("process families on Linux")];
        let golden = include_str!("telemetry/metrics.golden.txt");
        assert_eq!(text, golden);
    }

    /// The correlator's counts, when it runs: exact families and values.
    #[test]
    fn the_correlators_counts_are_metrics() {
        let mut v = view(&[]);
        assert!(!metrics(&Arc::new(view(&[]))).contains("correlate"));
        let c = Arc::new(crate::route::CorrelateStats::default());
        count_from(10, &[&c.offered, &c.emitted, &c.merged, &c.early, &c.held]);
        v.correlate = Some(c);
        let text = metrics(&Arc::new(v));
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("cf_nozzle_correlate"))
            .collect();
        assert_eq!(
            lines,
            [
                "cf_nozzle_correlate_offered_total 10",
                "cf_nozzle_correlate_emitted_total 11",
                "cf_nozzle_correlate_merged_total 12",
                "cf_nozzle_correlate_early_total 13",
                "cf_nozzle_correlate_held 14",
            ]
        );
    }

    /// A sink whose disk refuses its buffer's writes fails `/health`, named;
    /// one that only drops because it is full (its receiver is slow) does not.
    #[test]
    fn a_sink_whose_disk_buffer_refuses_everything_fails_health() {
        let (broken, full) = (
            Arc::new(SinkStats::default()),
            Arc::new(SinkStats::default()),
        );
        full.dropped_buffer_full.store(500, Ordering::Relaxed);
        broken.dropped_buffer_error.store(1234, Ordering::Relaxed);
        let v = view(&[("http", &broken), ("syslog", &full)]);
        let (healthy, body) = health(&v);
        assert!(healthy, "{body}");
        assert_eq!(body["sinks"][0]["buffer_refusing"], false);

        broken.buffer_health.refusing.store(true, Ordering::Relaxed);
        let (healthy, body) = health(&v);
        assert!(!healthy);
        assert_eq!(body["status"], "unhealthy");
        assert_eq!(
            body["problems"],
            json!([
                "sink http is dropping the records it is given: the disk under --buffer-dir refuses its buffer's writes (1234 dropped for that so far, dropped{reason=buffer_error})"
            ])
        );
        assert_eq!(body["sinks"][0]["buffer_refusing"], true);
        assert_eq!(body["sinks"][1]["buffer_refusing"], false);
        let text = metrics(&Arc::new(v));
        assert!(
            text.contains("cf_nozzle_sink_buffer_refusing{sink=\"http\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("cf_nozzle_sink_buffer_refusing{sink=\"syslog\"} 0\n"));
    }
}

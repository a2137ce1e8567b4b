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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::stats::{AlertReason, View};

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

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

impl prometheus_client::collector::Collector for ViewCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let v = &*self.0;
        let ingress = v.ingress.snapshot();
        family(
            &mut e,
            "ingress_envelopes",
            "Envelopes received from Loggregator.",
            [(vec![], counter(ingress.envelopes))],
        )?;
        family(
            &mut e,
            "ingress_batches",
            "Envelope batches received from Loggregator.",
            [(vec![], counter(ingress.batches))],
        )?;
        family(
            &mut e,
            "records",
            "Records classified, by kind.",
            [
                ("api", ingress.api),
                ("app_log", ingress.app_log),
                ("metric", ingress.metric),
                ("event", ingress.event),
            ]
            .map(|(k, n)| (vec![("kind", k.to_string())], counter(n))),
        )?;
        family(
            &mut e,
            "unrouted_records",
            "Records of a kind no sink is configured for.",
            [(vec![], counter(ingress.unrouted))],
        )?;
        family(
            &mut e,
            "loggregator_dropped",
            "Envelopes Doppler and the RLP report dropped on egress to slow consumers (dropped{direction=egress} deltas).",
            [(vec![], counter(ingress.upstream_dropped))],
        )?;

        let snaps: Vec<_> = v
            .sinks
            .iter()
            .map(|s| (s, s.stats.snapshot(&s.name)))
            .collect();
        let per_sink = |f: fn(&crate::sink::SinkSnapshot) -> u64| {
            snaps
                .iter()
                .map(move |(s, snap)| (vec![("sink", s.name.clone())], counter(f(snap))))
        };
        family(
            &mut e,
            "sink_received",
            "Records offered to the sink.",
            per_sink(|s| s.received),
        )?;
        family(
            &mut e,
            "sink_delivered",
            "Records the sink's destination confirmed.",
            per_sink(|s| s.delivered),
        )?;
        family(
            &mut e,
            "sink_dead_lettered",
            "Records the receiver rejected, kept in the dead-letter file.",
            per_sink(|s| s.dead_lettered),
        )?;
        family(
            &mut e,
            "sink_retries",
            "Batch writes retried.",
            per_sink(|s| s.retries),
        )?;
        family(
            &mut e,
            "sink_reconnects",
            "Connections to the receiver replaced: closed by it, failed, or not taking data within the write timeout.",
            per_sink(|s| s.reconnects),
        )?;
        family(
            &mut e,
            "sink_dropped",
            "Records lost, by reason.",
            snaps.iter().flat_map(|(s, snap)| {
                [
                    ("queue_full", snap.dropped_queue_full),
                    ("buffer_full", snap.dropped_buffer_full),
                    ("buffer_error", snap.dropped_buffer_error),
                    ("write_error", snap.dropped_write_error),
                ]
                .map(|(reason, n)| {
                    (
                        vec![("sink", s.name.clone()), ("reason", reason.to_string())],
                        counter(n),
                    )
                })
            }),
        )?;
        let gauge = |f: fn(&crate::sink::SinkSnapshot) -> u64| {
            snaps.iter().map(move |(s, snap)| {
                (
                    vec![("sink", s.name.clone())],
                    ConstGauge::new(f(snap) as i64),
                )
            })
        };
        family(
            &mut e,
            "sink_queued",
            "Records waiting in the sink's queue or batch.",
            gauge(|s| s.queued),
        )?;
        family(
            &mut e,
            "sink_in_flight",
            "Records written, awaiting confirmation.",
            gauge(|s| s.in_flight),
        )?;
        family(
            &mut e,
            "sink_buffered",
            "Records in the sink's disk buffer and not in memory (--buffer-dir).",
            gauge(|s| s.buffered),
        )?;
        family(
            &mut e,
            "sink_buffer_bytes",
            "Bytes the sink's disk buffer holds.",
            gauge(|s| s.buffer_bytes),
        )?;
        family(
            &mut e,
            "sink_buffer_capacity_bytes",
            "Bytes the sink's disk buffer may hold (its share of --buffer-max-bytes); 0 without one. Fill: sink_buffer_bytes / this.",
            snaps.iter().map(|(s, _)| {
                (
                    vec![("sink", s.name.clone())],
                    ConstGauge::new(s.stats.buffer_max_bytes.load(Ordering::Relaxed) as i64),
                )
            }),
        )?;
        family(
            &mut e,
            "sink_buffer_refusing",
            "1 while the disk under the sink's buffer refuses (nearly) every record offered: /health fails.",
            snaps.iter().map(|(s, _)| {
                (
                    vec![("sink", s.name.clone())],
                    ConstGauge::new(i64::from(
                        s.stats.buffer_health.refusing.load(Ordering::Relaxed),
                    )),
                )
            }),
        )?;
        family(
            &mut e,
            "sink_queue_capacity",
            "Records the sink's queue holds before dropping.",
            v.sinks.iter().map(|s| {
                (
                    vec![("sink", s.name.clone())],
                    ConstGauge::new(s.capacity as i64),
                )
            }),
        )?;
        family(
            &mut e,
            "sink_stalled",
            "1 while the sink has delivered nothing for --alert-after with records waiting.",
            v.sinks.iter().enumerate().map(|(i, s)| {
                (
                    vec![("sink", s.name.clone())],
                    ConstGauge::new(i64::from(v.alerts.is_stalled(i))),
                )
            }),
        )?;
        family(
            &mut e,
            "sink_batch_seconds",
            "Time from a batch's first write attempt to its outcome, retries included.",
            v.sinks.iter().map(|s| {
                (
                    vec![("sink", s.name.clone())],
                    HistogramRef(&s.stats.batch_seconds),
                )
            }),
        )?;
        family(
            &mut e,
            "sink_delivery_latency_seconds",
            "Time from the sink's queue accepting a record to the sink delivering it (records read back from the disk buffer: from reading them back).",
            v.sinks
                .iter()
                .map(|s| (vec![("sink", s.name.clone())], &s.stats.delivery_latency)),
        )?;

        let sources: Vec<_> = v
            .sources
            .iter()
            .map(|(n, s)| {
                (
                    n,
                    s.snapshot(),
                    s.connection().0,
                    s.last_envelope_unix_ms.load(Ordering::Relaxed).max(0) as u64,
                )
            })
            .collect();
        let per_source = |f: fn(&crate::source::SourceSnapshot) -> u64| {
            sources
                .iter()
                .map(move |(n, s, ..)| (vec![("source", n.to_string())], counter(f(s))))
        };
        family(
            &mut e,
            "source_attempts",
            "Connection attempts.",
            per_source(|s| s.attempts),
        )?;
        family(
            &mut e,
            "source_connects",
            "Streams opened.",
            per_source(|s| s.connects),
        )?;
        family(
            &mut e,
            "source_failures",
            "Attempts and streams that ended in an error.",
            per_source(|s| s.failures),
        )?;
        family(
            &mut e,
            "source_envelopes",
            "Envelopes the source received.",
            per_source(|s| s.envelopes),
        )?;
        family(
            &mut e,
            "source_malformed_frames",
            "What a source skipped while its stream went on: RLP envelopes that do not decode, RLP Gateway frames that do not decode or exceed --gateway-max-frame-bytes.",
            per_source(|s| s.malformed_frames),
        )?;
        family(
            &mut e,
            "source_token_renewals",
            "UAA tokens fetched.",
            per_source(|s| s.token_renewals),
        )?;
        family(
            &mut e,
            "source_disconnects",
            "Streams and attempts that ended, by reason.",
            sources.iter().flat_map(|(n, s, ..)| {
                s.disconnects.iter().map(|(reason, count)| {
                    (
                        vec![("source", n.to_string()), ("reason", reason.to_string())],
                        counter(*count),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "source_backoff_seconds",
            "The wait before the next attempt; 0 while connected or trying.",
            sources.iter().map(|(n, s, ..)| {
                (
                    vec![("source", n.to_string())],
                    ConstGauge::new(s.backoff_ms as f64 / 1000.0),
                )
            }),
        )?;
        family(
            &mut e,
            "source_connected",
            "1 while a stream is open.",
            sources.iter().map(|(n, _, c, _)| {
                (
                    vec![("source", n.to_string())],
                    ConstGauge::new(i64::from(*c)),
                )
            }),
        )?;
        family(
            &mut e,
            "source_last_envelope_timestamp_seconds",
            "When the last envelope arrived (Unix time); 0 before the first.",
            sources.iter().map(|(n, _, _, ms)| {
                (
                    vec![("source", n.to_string())],
                    ConstGauge::new(*ms as f64 / 1000.0),
                )
            }),
        )?;

        let l = &v.listener;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, n) in [
            (
                "telemetry_connections_accepted",
                "Connections the /health and /metrics listener accepted.",
                load(&l.accepted),
            ),
            (
                "telemetry_connections_evicted",
                "Connections closed to make room for a newer one (--health-max-connections reached).",
                load(&l.evicted),
            ),
            (
                "telemetry_header_timeouts",
                "Connections closed because no whole request head arrived within --health-header-timeout.",
                load(&l.header_timeouts),
            ),
            (
                "telemetry_accept_errors",
                "Connections the listener could not accept (e.g. out of file descriptors).",
                load(&l.accept_errors),
            ),
        ] {
            family(&mut e, name, help, [(vec![], counter(n))])?;
        }
        family(
            &mut e,
            "telemetry_connections",
            "Connections open to the /health and /metrics listener.",
            [(vec![], ConstGauge::new(load(&l.open) as i64))],
        )?;

        if let Some(a) = &v.audit_events {
            let a = a.snapshot();
            for (name, help, n) in [
                (
                    "audit_events_pages",
                    "Pages of /v3/audit_events read.",
                    a.pages,
                ),
                (
                    "audit_events_events",
                    "Audit events handed to the sinks as api records.",
                    a.events,
                ),
                (
                    "audit_events_duplicates_skipped",
                    "Audit events of the cursor's second read again and skipped.",
                    a.duplicates_skipped,
                ),
                (
                    "audit_events_invalid",
                    "Audit events Cloud Controller sent that could not be read (skipped, logged).",
                    a.invalid,
                ),
                (
                    "audit_events_polls_completed",
                    "Polls that reached the last page.",
                    a.polls_completed,
                ),
                (
                    "audit_events_rewinds",
                    "Times the poller read again from the confirmed cursor because a sink lost or turned away records.",
                    a.rewinds,
                ),
                (
                    "audit_events_cursor_writes",
                    "Times the confirmed cursor was stored.",
                    a.cursor_writes,
                ),
                (
                    "audit_events_errors",
                    "Cloud Controller, UAA, discovery and cursor-store failures of the poller.",
                    a.errors,
                ),
                (
                    "audit_events_oversized_pages",
                    "Pages larger than --cf-max-response-bytes, not read (asked for again in smaller pages).",
                    a.oversized_pages,
                ),
                (
                    "audit_events_refused_links",
                    "pagination.next.href links not followed: to another origin than the API's, or not a URL.",
                    a.refused_links,
                ),
            ] {
                family(&mut e, name, help, [(vec![], counter(n))])?;
            }
            let cursor = a.cursor_unix;
            family(
                &mut e,
                "audit_events_cursor_timestamp_seconds",
                "created_at of the newest audit event the sinks confirmed (Unix time; the look-back start before the first); 0 before the poller starts.",
                [(vec![], ConstGauge::new(cursor))],
            )?;
            family(
                &mut e,
                "audit_events_cursor_age_seconds",
                "Seconds from the confirmed cursor to now: how far behind Cloud Controller the confirmed audit trail is; 0 before the poller starts.",
                [(
                    vec![],
                    ConstGauge::new(if cursor == 0 {
                        0
                    } else {
                        (chrono::Utc::now().timestamp() - cursor).max(0)
                    }),
                )],
            )?;
        }

        if let Some(en) = &v.enrich {
            let s = en.stats().snapshot();
            for (name, help, n) in [
                (
                    "enrich_cache_hits",
                    "Records given app, space and org names from the names table.",
                    s.enriched,
                ),
                (
                    "enrich_cache_misses",
                    "Records delivered without names because their app's lookup had not answered yet.",
                    s.pending,
                ),
                (
                    "enrich_not_guid",
                    "Records whose app id is not a GUID (never looked up).",
                    s.not_guid,
                ),
                (
                    "enrich_lookups",
                    "App lookups sent to Cloud Controller.",
                    s.lookups,
                ),
                (
                    "enrich_lookups_not_found",
                    "App lookups Cloud Controller answered 404 (remembered as missing).",
                    s.misses,
                ),
                (
                    "enrich_lookup_errors",
                    "App lookups that failed otherwise (remembered as missing for a while).",
                    s.errors,
                ),
                (
                    "enrich_queue_full",
                    "App ids not queued for lookup because the lookup queue was full.",
                    s.queue_full,
                ),
            ] {
                family(&mut e, name, help, [(vec![], counter(n))])?;
            }
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
                    counter(v.alerts.raised(r)),
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

/// Serves `/health` and `/metrics` until `shutdown` is cancelled.
///
/// The accept loop is our own so that the listener can never take the file
/// descriptors the sinks need: at most `cfg.max_connections` connections are
/// open at once, and a new connection beyond that closes the oldest one (a
/// health check still gets through while idle or slow clients hold every
/// slot; the clients that lose their slot are the ones that held it
/// longest). A connection that does not send a whole request head within
/// `cfg.header_timeout` of connecting, or of its previous response, is
/// closed (hyper's header-read timeout, on tokio's clock).
pub async fn serve(
    listener: tokio::net::TcpListener,
    view: Arc<View>,
    cfg: TelemetryConfig,
    shutdown: CancellationToken,
) {
    let app = router(Arc::clone(&view), cfg.metrics_auth.clone());
    let stats = Arc::clone(&view.listener);
    let max = cfg.max_connections.max(1);
    let mut conns = tokio::task::JoinSet::new();
    // Open connections, oldest first.
    let mut order: std::collections::VecDeque<(tokio::task::Id, tokio::task::AbortHandle)> =
        std::collections::VecDeque::new();
    let forget = |order: &mut std::collections::VecDeque<(tokio::task::Id, _)>,
                  id: tokio::task::Id| {
        order.retain(|(i, _)| *i != id);
        stats.open.fetch_sub(1, Ordering::Relaxed);
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = conns.join_next_with_id(), if !conns.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                forget(&mut order, id);
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "the /health and /metrics listener cannot accept a connection");
                // Out of file descriptors, most likely: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        // Make room: close the oldest connection and wait until its socket
        // is closed, so that no more than `max` are ever open.
        while conns.len() >= max {
            if let Some((_, oldest)) = order.front() {
                oldest.abort();
            }
            if let Some(done) = conns.join_next_with_id().await {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        if e.is_cancelled() {
                            stats.evicted.fetch_add(1, Ordering::Relaxed);
                        }
                        e.id()
                    }
                };
                forget(&mut order, id);
            }
        }
        stats.open.fetch_add(1, Ordering::Relaxed);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let header_timeout = cfg.header_timeout;
        let conn_stats = Arc::clone(&stats);
        let handle = conns.spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                if e.is_timeout() {
                    conn_stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "a /health or /metrics connection ended with an error");
            }
        });
        order.push_back((handle.id(), handle));
    }
    conns.shutdown().await;
    stats.open.store(0, Ordering::Relaxed);
}

/// The routes: `/health` and `/metrics` (behind `auth` when set).
fn router(view: Arc<View>, auth: Option<BasicAuth>) -> axum::Router {
    let auth = Arc::new(auth);
    axum::Router::new()
        .route(
            "/health",
            axum::routing::get({
                let view = Arc::clone(&view);
                move || async move {
                    let (healthy, body) = health(&view);
                    let code = if healthy {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (
                        code,
                        [(header::CONTENT_TYPE, "application/json")],
                        body.to_string(),
                    )
                        .into_response()
                }
            }),
        )
        .route(
            "/metrics",
            axum::routing::get(move |headers: HeaderMap| async move {
                if let Some(auth) = &*auth
                    && !authorized(&headers, auth)
                {
                    return Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header(header::WWW_AUTHENTICATE, "Basic realm=\"metrics\"")
                        .body(axum::body::Body::empty())
                        .expect("static response");
                }
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics(&view),
                )
                    .into_response()
            }),
        )
}

fn authorized(headers: &HeaderMap, auth: &BasicAuth) -> bool {
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        auth.user,
        auth.password.expose()
    ));
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| v.trim() == expected)
}

/// Binds the telemetry address. A taken default address is not fatal.
pub async fn bind(
    cfg: &TelemetryConfig,
) -> Result<Option<tokio::net::TcpListener>, TelemetryError> {
    match tokio::net::TcpListener::bind(cfg.addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if cfg.addr_is_default => {
            tracing::error!(addr = %cfg.addr, error = %e, "cannot listen on the default --health-addr; running without /health and /metrics (set --health-addr)");
            Ok(None)
        }
        Err(source) => Err(TelemetryError::Listen {
            addr: cfg.addr,
            source,
        }),
    }
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
            enrich: None,
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
        for (i, c) in [
            &v.ingress.batches,
            &v.ingress.envelopes,
            &v.ingress.by_kind[0],
            &v.ingress.by_kind[1],
            &v.ingress.by_kind[2],
            &v.ingress.by_kind[3],
            &v.ingress.unrouted,
            &v.ingress.upstream_dropped,
            &v.ingress.filtered,
        ]
        .into_iter()
        .enumerate()
        {
            c.store(100 + i as u64, Ordering::Relaxed);
        }
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
        for (i, c) in [
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
        ]
        .into_iter()
        .enumerate()
        {
            c.store(300 + i as u64, Ordering::Relaxed);
        }
        v.audit_events = Some(audit);
        let (enricher, _requests) = crate::enrich::Enricher::new(&Default::default());
        let es = enricher.stats();
        for (i, c) in [
            &es.enriched,
            &es.pending,
            &es.not_guid,
            &es.lookups,
            &es.misses,
            &es.errors,
            &es.queue_full,
        ]
        .into_iter()
        .enumerate()
        {
            c.store(400 + i as u64, Ordering::Relaxed);
        }
        v.enrich = Some(enricher);
        v.alerts.track_sinks(2);
        v.alerts.set_stalled(1, true);
        v.alerts.raise(AlertReason::SinkDropped);
        v.alerts.raise(AlertReason::SinkDropped);
        v.alerts.raise(AlertReason::BufferFilling);
        for (i, c) in [
            &v.listener.accepted,
            &v.listener.open,
            &v.listener.evicted,
            &v.listener.header_timeouts,
            &v.listener.accept_errors,
        ]
        .into_iter()
        .enumerate()
        {
            c.store(500 + i as u64, Ordering::Relaxed);
        }

        let text = metrics(&Arc::new(v));
        let text = &text[..text
            .find("# HELP cf_nozzle_process_")
            .expect("process families on Linux")];
        let golden = include_str!("telemetry/metrics.golden.txt");
        assert_eq!(text, golden);
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

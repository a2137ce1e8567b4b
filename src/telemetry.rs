//! Telemetry: `/health` (JSON status) and `/metrics` (Prometheus text) over
//! HTTP, served by axum on `--health-addr`.
//!
//! Both read the counters the pipeline keeps anyway ([`IngressStats`],
//! [`SinkStats`], [`RlpStatus`], [`AlertStats`]) at request time: nothing is
//! counted twice, and a scrape costs the hot path nothing. Neither endpoint
//! shows record content or secrets.
//!
//! `/health` answers 503 only when a source has been disconnected longer than
//! `--health-disconnect-threshold`: that is what a restart (Cloud Foundry's
//! reaction to a failing health check) can fix. A stalled sink shows in the
//! body and raises an alert but keeps 200, because a restart would throw away
//! the records waiting in memory and fix nothing at the receiver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::alert::{AlertReason, AlertStats};
use crate::route::IngressStats;
use crate::sink::SinkStats;
use crate::source::rlp::RlpStatus;

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
}

#[derive(Clone)]
pub struct BasicAuth {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicAuth({:?}, ****)", self.user)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen on --health-addr {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

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
    pub sources: Vec<(String, Arc<RlpStatus>)>,
    pub alerts: Arc<AlertStats>,
    /// Configuration an operator should not forget, e.g. TLS verification off.
    pub warnings: Vec<String>,
    pub disconnect_threshold: Duration,
    pub started: tokio::time::Instant,
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
            json!({
                "name": s.name,
                "stalled": view.alerts.is_stalled(i),
                "queue_fill": snap.queued as f64 / s.capacity.max(1) as f64,
                "received": snap.received,
                "delivered": snap.delivered,
                "queued": snap.queued,
                "in_flight": snap.in_flight,
                "buffered": snap.buffered,
                "buffer_fill": match s.stats.buffer_max_bytes.load(std::sync::atomic::Ordering::Relaxed) {
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
            "Gateway frames that could not be decoded (skipped).",
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
pub async fn serve(
    listener: tokio::net::TcpListener,
    view: Arc<View>,
    auth: Option<BasicAuth>,
    shutdown: CancellationToken,
) {
    let auth = Arc::new(auth);
    let app = axum::Router::new()
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
        );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the /health and /metrics server failed");
    }
}

fn authorized(headers: &HeaderMap, auth: &BasicAuth) -> bool {
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", auth.user, auth.password));
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

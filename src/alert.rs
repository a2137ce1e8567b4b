//! Alerts on audit processing failures (NIST 800-53 AU-5): a sink that
//! delivers nothing while records wait, records dropped, loss Loggregator
//! reports upstream, a source disconnected past `--health-disconnect-threshold`
//! (when `/health` turns 503), and an audit-events poller that keeps failing.
//!
//! [`watch`] looks at the counters once per `check_every` and raises each
//! alert as an error log line, a count in `cf_nozzle_alerts_total{reason}`,
//! and (unless turned off) an alert record offered to the *other* sinks that
//! events are routed to, so a SIEM learns that one of its feeds is broken. Alert records are events
//! with `source_id` [`ALERT_SOURCE_ID`] and a `nozzle_alert` tag; the syslog
//! sink sends them with severity `alert`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::classify::classify;
use crate::counters::SourceStatus;
use crate::proto::envelope::Message;
use crate::proto::{Envelope, Event};
use crate::record::{ALERT_SOURCE_ID, Record};
use crate::route::Router;
use crate::source::audit_events::AuditSnapshot;
use crate::stats::{AlertReason, View};

#[derive(Clone, Debug)]
pub struct AlertConfig {
    /// A sink that delivered nothing this long while records waited is stalled.
    pub after: Duration,
    /// Offer alert records to the other sinks.
    pub records: bool,
    /// How often the counters are compared.
    pub check_every: Duration,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            after: Duration::from_secs(60),
            records: true,
            check_every: Duration::from_secs(1),
        }
    }
}

/// What the watcher remembers of a sink between checks.
struct SinkWatch {
    delivered: u64,
    /// When `delivered` last moved, or records started waiting.
    progress_at: Instant,
    dropped: u64,
    stalled: bool,
    /// Its disk buffer is at or above `--buffer-warn-fill` (alerted once;
    /// again after it went below 90 % of that).
    filling: bool,
}

/// What the watcher remembers of the audit-events poller between checks.
struct PollerWatch {
    pages: u64,
    errors: u64,
    /// The first check that saw an error with no page read since.
    failing_since: Option<Instant>,
    alerted: bool,
}

/// Compares the counters every `cfg.check_every` until `shutdown`.
/// Holds a router clone: stop it before the pipeline finishes.
pub async fn watch(
    view: Arc<View>,
    router: Arc<Router>,
    cfg: AlertConfig,
    shutdown: CancellationToken,
) {
    let now = Instant::now();
    let mut sinks: Vec<SinkWatch> = view
        .sinks
        .iter()
        .map(|s| {
            let snap = s.stats.snapshot(&s.name);
            SinkWatch {
                delivered: snap.delivered,
                progress_at: now,
                dropped: snap.dropped(),
                stalled: false,
                filling: false,
            }
        })
        .collect();
    view.alerts.track_sinks(sinks.len());
    let (mut upstream, mut shed) = {
        let s = view.ingress.snapshot();
        (s.upstream_dropped, s.shed)
    };
    // Per source: alerted for the current disconnection.
    let mut disconnected = vec![false; view.sources.len()];
    let mut poller = view.audit_events.as_ref().map(|s| {
        let snap = s.snapshot();
        PollerWatch {
            pages: snap.pages,
            errors: snap.errors,
            failing_since: None,
            alerted: false,
        }
    });
    let raise = |reason, sink, text| raise(&view, &router, &cfg, reason, sink, text);
    let mut tick = tokio::time::interval(cfg.check_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for (i, w) in sinks.iter_mut().enumerate() {
            check_sink(&view, &cfg, i, w, now, &raise);
        }
        for ((name, status), alerted) in view.sources.iter().zip(&mut disconnected) {
            check_source(&view, name, status, alerted, &raise);
        }
        if let (Some(w), Some(status)) = (&mut poller, &view.audit_events) {
            check_poller(&cfg, w, &status.snapshot(), now, &raise);
        }
        let ingress = view.ingress.snapshot();
        if ingress.shed > shed {
            let text = format!(
                "shed {} envelopes on arrival: every sink of their kind was full (the nozzle is overloaded: add instances with the same shard id, or find the slow sink)",
                ingress.shed - shed
            );
            shed = ingress.shed;
            raise(AlertReason::IngressShed, None, text);
        }
        let now_upstream = ingress.upstream_dropped;
        if now_upstream > upstream {
            let text = format!(
                "Loggregator dropped {} envelopes on egress to slow consumers (Doppler/RLP dropped{{direction=egress}}); add nozzle instances with the same shard id or reduce the load",
                now_upstream - upstream
            );
            upstream = now_upstream;
            raise(AlertReason::LoggregatorDropped, None, text);
        }
    }
}

/// Raises an alert: its reason, the index of the sink it is about, its text.
type Raise<'a> = dyn Fn(AlertReason, Option<usize>, String) + 'a;

/// Sink `i`: stalled (or delivering again), its disk buffer filling, drops.
fn check_sink(
    view: &View,
    cfg: &AlertConfig,
    i: usize,
    w: &mut SinkWatch,
    now: Instant,
    raise: &Raise<'_>,
) {
    let s = &view.sinks[i];
    let snap = s.stats.snapshot(&s.name);
    if snap.delivered != w.delivered || snap.pending() == 0 {
        w.delivered = snap.delivered;
        w.progress_at = now;
        if w.stalled {
            w.stalled = false;
            view.alerts.set_stalled(i, false);
            tracing::info!(sink = %s.name, "sink delivers again");
        }
    } else if !w.stalled && now.duration_since(w.progress_at) >= cfg.after {
        w.stalled = true;
        view.alerts.set_stalled(i, true);
        let text = format!(
            "sink {} has delivered nothing for {} s while {} records wait",
            s.name,
            now.duration_since(w.progress_at).as_secs(),
            snap.pending()
        );
        raise(AlertReason::SinkStalled, Some(i), text);
    }
    if let Some(text) = buffer_filling(&s.name, &s.stats, snap.buffer_bytes, &mut w.filling) {
        raise(AlertReason::BufferFilling, Some(i), text);
    }
    let dropped = snap.dropped();
    if dropped > w.dropped {
        let text = format!(
            "sink {} dropped {} records (queue full: {}, buffer full: {}, buffer write errors: {}, write errors: {} in all)",
            s.name,
            dropped - w.dropped,
            snap.dropped_queue_full,
            snap.dropped_buffer_full,
            snap.dropped_buffer_error,
            snap.dropped_write_error
        );
        w.dropped = dropped;
        raise(AlertReason::SinkDropped, Some(i), text);
    }
}

/// A source disconnected past the threshold (once per disconnection).
fn check_source(
    view: &View,
    name: &str,
    status: &SourceStatus,
    alerted: &mut bool,
    raise: &Raise<'_>,
) {
    let (connected, since) = status.connection();
    let since = since.unwrap_or_else(|| view.started.elapsed());
    if connected {
        if *alerted {
            *alerted = false;
            tracing::info!(source = %name, "source connected again");
        }
    } else if !*alerted && since >= view.disconnect_threshold {
        *alerted = true;
        let snap = status.snapshot();
        let text = format!(
            "source {name} has been disconnected for {} s (threshold {} s); last error: {}",
            since.as_secs(),
            view.disconnect_threshold.as_secs(),
            snap.last_error.as_deref().unwrap_or("none")
        );
        raise(AlertReason::SourceDisconnected, None, text);
    }
}

/// The audit-events poller failing and reading no page for `cfg.after`.
fn check_poller(
    cfg: &AlertConfig,
    w: &mut PollerWatch,
    snap: &AuditSnapshot,
    now: Instant,
    raise: &Raise<'_>,
) {
    if snap.pages > w.pages {
        w.failing_since = None;
        if w.alerted {
            w.alerted = false;
            tracing::info!("audit events: the poller reads pages again");
        }
    } else if snap.errors > w.errors && w.failing_since.is_none() {
        w.failing_since = Some(now);
    }
    if let Some(since) = w.failing_since
        && !w.alerted
        && now.duration_since(since) >= cfg.after
    {
        w.alerted = true;
        let text = format!(
            "the audit-events poller has read no page for {} s and failed {} times in all (Cloud Controller, UAA or discovery; see the poller's warnings); audit events wait in Cloud Controller and are read once it recovers",
            now.duration_since(since).as_secs(),
            snap.errors
        );
        raise(AlertReason::AuditEventsFailing, None, text);
    }
    w.pages = snap.pages;
    w.errors = snap.errors;
}

/// The alert text when a sink's disk buffer, holding `bytes`, has just
/// reached its warning fill; updates `filling` (which ends once the buffer is
/// below 90 % of the warning fill, so a fill around it alerts once).
fn buffer_filling(
    sink: &str,
    stats: &crate::sink::SinkStats,
    bytes: u64,
    filling: &mut bool,
) -> Option<String> {
    let warn = stats.buffer_health.warn_bytes.load(Ordering::Relaxed);
    if warn == 0 {
        return None;
    }
    if *filling {
        if bytes < warn - warn / 10 {
            *filling = false;
            tracing::info!(sink, bytes, "disk buffer below its warning fill again");
        }
        return None;
    }
    if bytes < warn {
        return None;
    }
    *filling = true;
    let max = stats.buffer_max_bytes.load(Ordering::Relaxed).max(1);
    Some(format!(
        "sink {sink}'s disk buffer is {:.0} % full ({bytes} of {max} bytes; --buffer-warn-fill {:.0} %): its receiver is down or slower than the input; once full, new records are dropped",
        bytes as f64 * 100.0 / max as f64,
        warn as f64 * 100.0 / max as f64,
    ))
}

fn raise(
    view: &View,
    router: &Router,
    cfg: &AlertConfig,
    reason: AlertReason,
    sink: Option<usize>,
    text: String,
) {
    view.alerts.raise(reason);
    let sink_name = sink.map(|i| view.sinks[i].name.clone());
    // `alert` and `sink` key the log rate limit (logging::KEY_FIELDS): each
    // reason and sink has its own allowance at this one call site.
    tracing::error!(
        alert = reason.as_str(),
        sink = sink_name.as_deref(),
        "{text}"
    );
    if cfg.records {
        router.offer_except(sink, alert_record(reason, sink_name.as_deref(), text));
    }
}

/// The alert as a record: an event envelope from the nozzle itself.
pub(crate) fn alert_record(reason: AlertReason, sink: Option<&str>, text: String) -> Record {
    let mut tags = BTreeMap::from([
        ("nozzle_alert".to_string(), reason.as_str().to_string()),
        ("origin".to_string(), ALERT_SOURCE_ID.to_string()),
    ]);
    if let Some(sink) = sink {
        tags.insert("sink".to_string(), sink.to_string());
    }
    classify(Envelope {
        timestamp: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        source_id: ALERT_SOURCE_ID.to_string(),
        tags,
        message: Some(Message::Event(Event {
            title: format!("cf-audit-nozzle alert: {}", reason.as_str()),
            body: text,
        })),
        ..Envelope::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Kind, is_alert};
    use crate::sink::SinkQueue;
    use crate::stats::SinkView;

    fn records(n: usize) -> crate::sink::Chunk {
        (0..n)
            .map(|_| Arc::new(classify(Envelope::default())))
            .collect()
    }

    #[test]
    fn a_filling_buffer_alerts_once_per_episode() {
        let stats = crate::sink::SinkStats::default();
        let mut filling = false;
        // Without a buffer (or with the warning off): never.
        assert_eq!(buffer_filling("s", &stats, u64::MAX, &mut filling), None);
        stats.buffer_max_bytes.store(1000, Ordering::Relaxed);
        stats.buffer_health.warn_bytes.store(800, Ordering::Relaxed);
        let mut raised = Vec::new();
        for bytes in [0, 799, 800, 1000, 850, 720, 900, 719, 800] {
            raised.extend(buffer_filling("s", &stats, bytes, &mut filling).map(|t| (bytes, t)));
        }
        assert_eq!(
            raised.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
            [800, 800],
            "{raised:?}"
        );
        assert_eq!(
            raised[0].1,
            "sink s's disk buffer is 80 % full (800 of 1000 bytes; --buffer-warn-fill 80 %): its receiver is down or slower than the input; once full, new records are dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_sink_and_drops_raise_alerts_that_reach_the_other_sinks() {
        let (dead, _dead_rx) = SinkQueue::new("dead", 100);
        let (other, mut other_rx) = SinkQueue::new("other", 100);
        // The other sink delivers everything it gets at once.
        let other_stats = Arc::clone(other.stats());
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collector = tokio::spawn({
            let got = Arc::clone(&got);
            async move {
                while let Some(chunk) = other_rx.recv().await {
                    let n = chunk.len() as u64;
                    got.lock().unwrap().extend(chunk);
                    other_stats.delivered.fetch_add(n, Ordering::Relaxed);
                    other_stats.queued.fetch_sub(n, Ordering::Relaxed);
                }
            }
        });
        let view = Arc::new(View {
            ingress: Arc::default(),
            sinks: [&dead, &other]
                .map(|q| SinkView {
                    name: q.name().to_string(),
                    stats: Arc::clone(q.stats()),
                    capacity: 100,
                })
                .to_vec(),
            sources: Vec::new(),
            alerts: Arc::default(),
            warnings: Vec::new(),
            disconnect_threshold: Duration::from_secs(60),
            started: Instant::now(),
            listener: Arc::default(),
            audit_events: None,
            enrich: None,
            syslog_in: None,
            correlate: None,
        });
        let router = Arc::new(Router::new(
            vec![
                (dead.clone(), Kind::ALL.to_vec()),
                (other, vec![Kind::Event]),
            ],
            Default::default(),
            None,
            false,
        ));
        let stop = CancellationToken::new();
        let cfg = AlertConfig {
            after: Duration::from_secs(60),
            ..AlertConfig::default()
        };
        let task = tokio::spawn(watch(
            Arc::clone(&view),
            Arc::clone(&router),
            cfg,
            stop.clone(),
        ));
        // 80 records wait at a sink whose runner never takes them.
        dead.offer(records(80));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(view.alerts.raised(AlertReason::SinkStalled), 0);
        assert!(!view.alerts.is_stalled(0));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(view.alerts.raised(AlertReason::SinkStalled), 1);
        assert!(view.alerts.is_stalled(0));
        assert!(!view.alerts.is_stalled(1));

        // 30 more do not fit: dropped, counted, alerted once.
        dead.offer(records(30));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(view.alerts.raised(AlertReason::SinkDropped), 1);
        // Stalled is raised once per episode, not every check.
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(view.alerts.raised(AlertReason::SinkStalled), 1);

        // Loggregator reports egress drops.
        view.ingress
            .upstream_dropped
            .fetch_add(12, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(view.alerts.raised(AlertReason::LoggregatorDropped), 1);

        // The router shed envelopes on arrival.
        view.ingress.shed.fetch_add(40, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(view.alerts.raised(AlertReason::IngressShed), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(view.alerts.raised(AlertReason::IngressShed), 1);

        stop.cancel();
        task.await.unwrap();
        let router_boot = &Arc::clone(router.boot());
        drop(router);
        drop(view);
        collector.await.unwrap();
        // Each alert went to the other sink only, as an alert event record.
        let got = got.lock().unwrap();
        let reasons: Vec<_> = got
            .iter()
            .map(|r| {
                assert!(is_alert(r));
                assert_eq!(r.kind, Kind::Event);
                // The boot, no seq: an alert skips the sink it is about.
                let n = r.number.as_ref().expect("an alert names its boot");
                assert_eq!(n.boot, *router_boot);
                assert_eq!(n.position, crate::record::Position::BootOnly);
                (r.tag("nozzle_alert").unwrap(), r.tag("sink"))
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("sink_stalled", Some("dead")),
                ("sink_dropped", Some("dead")),
                ("loggregator_dropped", None),
                ("ingress_shed", None)
            ]
        );
        // The upstream-loss and shed alerts concern no sink, so the dead
        // sink was offered them too.
        let s = dead.stats().snapshot("dead");
        assert_eq!((s.received, s.queued, s.dropped_queue_full), (112, 82, 30));
    }
}

//! Routing: each record kind goes to its set of sinks.
//!
//! [`Router::dispatch`] is what the ingress calls for every received batch. It
//! classifies the envelopes and offers each sink its share without waiting:
//! ingress never waits on a sink (DESIGN.md §2, invariant 1).
//!
//! It also numbers what it accepts: every record the include/exclude rules
//! keep and some sink takes gets the router's `boot` and the next `seq` of
//! its kind, so no number is skipped in what was accepted; [`Router::declare`]
//! states the last number issued per kind ([`crate::record::Number`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::classify::rules::Filters;
use crate::classify::{classify, kind_of};
use crate::record::{EnvelopeView, Kind, MessageRef, Number, Position, Record};
use crate::sink::{Chunk, SinkQueue, SinkStats};

mod correlate;
pub use correlate::{CorrelateConfig, CorrelateStats, release_held_every};

/// Counters of what entered the pipeline.
#[derive(Debug, Default)]
pub struct IngressStats {
    pub batches: AtomicU64,
    pub envelopes: AtomicU64,
    /// Records per kind, indexed by [`Kind::index`].
    pub(crate) by_kind: [AtomicU64; 4],
    /// Records of a kind no sink is configured for (an operator's choice, not a loss).
    pub(crate) unrouted: AtomicU64,
    /// Envelopes Loggregator says it dropped on the way to slow consumers:
    /// the deltas of `dropped{direction=egress}` counters from Doppler and the
    /// RLP (reference: loggregator-protocol.md, slow consumers). Upstream loss
    /// the nozzle cannot see otherwise.
    pub(crate) upstream_dropped: AtomicU64,
    /// Records the include/exclude rules left out (an operator's choice, not a loss).
    pub filtered: AtomicU64,
    /// Envelopes shed on arrival, unread, because every sink of their kind
    /// (or, before a gateway frame is parsed, every sink) was full
    /// ([`SinkQueue::is_full`]): they would have been dropped
    /// after classification, and classifying them took the CPU the sinks
    /// need to catch up (graceful overload; [`Router::dispatch`]). A loss,
    /// counted like a sink's drops.
    pub(crate) shed: AtomicU64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct IngressSnapshot {
    pub batches: u64,
    pub envelopes: u64,
    pub api: u64,
    pub app_log: u64,
    pub metric: u64,
    pub event: u64,
    pub(crate) unrouted: u64,
    pub(crate) upstream_dropped: u64,
    pub filtered: u64,
    pub shed: u64,
}

impl IngressStats {
    pub fn snapshot(&self) -> IngressSnapshot {
        let k = |kind: Kind| self.by_kind[kind.index()].load(Ordering::Relaxed);
        IngressSnapshot {
            batches: self.batches.load(Ordering::Relaxed),
            envelopes: self.envelopes.load(Ordering::Relaxed),
            api: k(Kind::Api),
            app_log: k(Kind::AppLog),
            metric: k(Kind::Metric),
            event: k(Kind::Event),
            unrouted: self.unrouted.load(Ordering::Relaxed),
            upstream_dropped: self.upstream_dropped.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
        }
    }
}

/// Where the ingress hands batches. Dropping every clone closes the sinks' queues.
pub struct Router {
    queues: Vec<SinkQueue>,
    /// For each kind, the indexes into `queues` of the sinks it goes to.
    routes: [Vec<usize>; 4],
    stats: Arc<IngressStats>,
    /// Benchmark mode: count envelopes and stop there (no classification, no sinks).
    decode_only: bool,
    /// Include/exclude rules, own-app and opt-out exclusion.
    filters: Filters,
    /// Names from Cloud Controller for envelopes without name tags.
    enricher: Option<Arc<crate::enrich::Enricher>>,
    /// This process start, in every record's number.
    boot: Arc<str>,
    /// Numbers issued per kind (the next `seq`), indexed by [`Kind::index`].
    issued: [AtomicU64; 4],
    /// Merges the halves of one action before numbering, when on.
    correlator: OnceLock<correlate::Correlator>,
}

impl Router {
    /// `sinks` pairs each sink's queue with the kinds routed to it;
    /// `filters` are the include/exclude rules; `enricher`, when given, adds
    /// names from Cloud Controller to records without them.
    pub fn new(
        sinks: Vec<(SinkQueue, Vec<Kind>)>,
        filters: Filters,
        enricher: Option<Arc<crate::enrich::Enricher>>,
        decode_only: bool,
    ) -> Self {
        let mut routes: [Vec<usize>; 4] = Default::default();
        let mut queues = Vec::with_capacity(sinks.len());
        for (i, (queue, kinds)) in sinks.into_iter().enumerate() {
            for kind in kinds {
                routes[kind.index()].push(i);
            }
            queues.push(queue);
        }
        Self {
            queues,
            routes,
            stats: Arc::new(IngressStats::default()),
            decode_only,
            filters,
            enricher,
            boot: crate::record::boot_id(0),
            issued: Default::default(),
            correlator: OnceLock::new(),
        }
    }

    /// The router numbering its records in `boot` (a new router is in a
    /// boot of instance 0 of its own).
    pub fn with_boot(mut self, boot: Arc<str>) -> Self {
        self.boot = boot;
        self
    }

    /// The boot this router numbers records in.
    pub fn boot(&self) -> &Arc<str> {
        &self.boot
    }

    /// Numbers `kept` (accepted records, in order) with one reservation of
    /// a range per kind (`counts`: how many of each), and puts each record
    /// into the chunk of every sink of its kind. Ranges of batches
    /// dispatched at once never overlap, and each is used whole.
    fn number_and_share(&self, kept: Vec<Record>, counts: [u64; 4], chunks: &mut [Chunk]) {
        let mut next = [0u64; 4];
        for (k, &n) in counts.iter().enumerate() {
            if n > 0 {
                next[k] = self.issued[k].fetch_add(n, Ordering::Relaxed);
            }
        }
        for mut record in kept {
            let k = record.kind.index();
            record.number = Number::seq(&self.boot, next[k]);
            next[k] += 1;
            let record = Arc::new(record);
            for &t in &self.routes[k] {
                chunks[t].push(Arc::clone(&record));
            }
        }
    }

    /// Offers each sink, for every kind that issued a number and is routed
    /// to it, a declaration of the last number issued, made at `time_ns`
    /// (UNIX nanoseconds). Not counted as records in the ingress counters.
    /// Returns how many kinds were declared.
    pub fn declare(&self, time_ns: i64) -> usize {
        let mut declared = 0;
        for kind in Kind::ALL {
            let issued = self.issued[kind.index()].load(Ordering::Relaxed);
            let targets = &self.routes[kind.index()];
            if issued == 0 || targets.is_empty() {
                continue;
            }
            let record = Arc::new(crate::record::declaration(
                kind,
                &self.boot,
                issued - 1,
                time_ns,
            ));
            for &t in targets {
                self.queues[t].offer(vec![Arc::clone(&record)]);
            }
            declared += 1;
        }
        declared
    }

    /// The counters of the sinks records of `kind` go to.
    pub fn sinks_of(&self, kind: Kind) -> Vec<(String, Arc<SinkStats>)> {
        self.routes[kind.index()]
            .iter()
            .map(|&i| {
                let q = &self.queues[i];
                (q.name().to_string(), Arc::clone(q.stats()))
            })
            .collect()
    }

    /// Whether a source that can read again should wait before offering
    /// `records` more of `kind` (a sink of that kind has `--buffer-when-full
    /// block` and no room).
    pub(crate) fn should_wait(&self, kind: Kind, records: u64) -> bool {
        self.routes[kind.index()].iter().any(|&i| {
            let q = &self.queues[i];
            q.buffer().is_some() && q.should_wait(records)
        })
    }

    /// Turns on the correlator ([`correlate`]): api records are held and
    /// merged before the rules and numbering. A `hold` of zero leaves it
    /// off; so does a second call. Returns its counters when on.
    pub fn correlate(&self, cfg: CorrelateConfig) -> Option<Arc<CorrelateStats>> {
        if cfg.hold.is_zero() {
            return None;
        }
        let mut fresh = false;
        let c = self.correlator.get_or_init(|| {
            fresh = true;
            correlate::Correlator::new(cfg)
        });
        fresh.then(|| Arc::clone(c.stats()))
    }

    /// Sends out the actions the correlator held past their hold at `now`,
    /// or every held action (`None`: before the sinks close).
    pub fn release_held(&self, now: Option<tokio::time::Instant>) {
        if let Some(c) = self.correlator.get() {
            let out = c.due(now);
            if !out.is_empty() {
                self.accept_records(out);
            }
        }
    }

    /// Offers records made elsewhere (the audit-events poller's, the
    /// syslog ingress's) to their sinks, after the same rules as envelopes
    /// (and the correlator, when on). Never waits. Returns whether every
    /// sink took its share (false: some were dropped, counted by the sink).
    pub fn dispatch_records(&self, mut records: Vec<Record>) -> bool {
        if let Some(c) = self.correlator.get()
            && records.iter().any(|r| r.kind == Kind::Api)
        {
            let (api, mut rest): (Vec<Record>, Vec<Record>) =
                records.into_iter().partition(|r| r.kind == Kind::Api);
            rest.extend(c.offer(api, tokio::time::Instant::now()));
            records = rest;
        }
        self.accept_records(records)
    }

    /// [`Router::dispatch_records`] past the correlator.
    fn accept_records(&self, records: Vec<Record>) -> bool {
        let mut chunks: Vec<Chunk> = vec![Vec::new(); self.queues.len()];
        let mut kept = Vec::with_capacity(records.len());
        let mut counts = [0u64; 4];
        for record in records {
            let k = record.kind.index();
            self.stats.by_kind[k].fetch_add(1, Ordering::Relaxed);
            if !self.filters.keeps(&record) {
                self.stats.filtered.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if self.routes[k].is_empty() {
                self.stats.unrouted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counts[k] += 1;
            kept.push(record);
        }
        self.number_and_share(kept, counts, &mut chunks);
        let mut all = true;
        for (queue, chunk) in self.queues.iter().zip(chunks) {
            if !chunk.is_empty() {
                all &= queue.offer(chunk);
            }
        }
        all
    }

    pub fn stats(&self) -> &Arc<IngressStats> {
        &self.stats
    }

    /// Offers one record the nozzle made itself (an alert) to the sinks its
    /// kind is routed to, except `except` (the sink the alert is about).
    /// Alerts carry the boot but no `seq`: skipping a sink, they would
    /// leave holes that are no loss.
    pub(crate) fn offer_except(&self, except: Option<usize>, mut record: Record) {
        record.number = Some(Number {
            boot: Arc::clone(&self.boot),
            position: Position::BootOnly,
        });
        let targets = &self.routes[record.kind.index()];
        let record = Arc::new(record);
        for &i in targets {
            if Some(i) != except {
                self.queues[i].offer(vec![Arc::clone(&record)]);
            }
        }
    }

    /// For each kind, whether every sink it goes to is full
    /// ([`SinkQueue::is_full`]); `false` for a kind no sink takes.
    fn full_kinds(&self) -> [bool; 4] {
        std::array::from_fn(|k| {
            let targets = &self.routes[k];
            !targets.is_empty() && targets.iter().all(|&i| self.queues[i].is_full())
        })
    }

    /// Whether every sink is full, so that a batch arriving now would be
    /// dropped whatever its kinds: a source may then shed it before it
    /// decodes it ([`Router::shed`]). False without sinks.
    pub(crate) fn saturated(&self) -> bool {
        !self.decode_only && !self.queues.is_empty() && self.queues.iter().all(SinkQueue::is_full)
    }

    /// Counts a batch a source received and shed unread because the
    /// router was [`saturated`](Router::saturated): `by_kind[k]` envelopes
    /// of each kind. Those of a kind no sink takes are unrouted, as always.
    pub(crate) fn shed(&self, by_kind: [u64; 4]) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .envelopes
            .fetch_add(by_kind.iter().sum(), Ordering::Relaxed);
        let mut shed = [0; 4];
        for (k, n) in by_kind.into_iter().enumerate() {
            if self.routes[k].is_empty() {
                self.stats.by_kind[k].fetch_add(n, Ordering::Relaxed);
                self.stats.unrouted.fetch_add(n, Ordering::Relaxed);
            } else {
                shed[k] = n;
            }
        }
        self.count_shed(shed);
    }

    /// Counts shed envelopes, `shed[k]` of each kind, and gives each a
    /// number of its kind that no record will carry: a shed envelope shows
    /// downstream as a hole, like a record a sink dropped. Warns on the
    /// first and then about once per 100,000.
    fn count_shed(&self, shed: [u64; 4]) {
        let n: u64 = shed.iter().sum();
        if n == 0 {
            return;
        }
        for (k, m) in shed.into_iter().enumerate() {
            if m > 0 {
                self.issued[k].fetch_add(m, Ordering::Relaxed);
            }
        }
        let before = self.stats.shed.fetch_add(n, Ordering::Relaxed);
        if before == 0 || before / 100_000 != (before + n) / 100_000 {
            tracing::warn!(
                shed_total = before + n,
                "every sink of these envelopes' kind is full: shedding them on arrival, unread (overload)"
            );
        }
    }

    /// Classifies a received batch and offers each sink its records. Never waits.
    /// Takes envelope views (the RLP source) or prost envelopes (the gateway
    /// source, tests), which are viewed one by one.
    ///
    /// Overload: an envelope of a kind whose every sink is full
    /// ([`SinkQueue::is_full`]: it would turn away again the chunk it last
    /// turned away) is shed before classification and counted (`shed`), not
    /// classified, numbered and dropped at the queue: the work saved is the
    /// sinks' to catch up with, so an overloaded nozzle delivers about what
    /// it delivers at its zero-drop maximum instead of less.
    pub fn dispatch<E: Into<EnvelopeView>>(&self, envelopes: Vec<E>) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .envelopes
            .fetch_add(envelopes.len() as u64, Ordering::Relaxed);
        if self.decode_only {
            return;
        }
        let full = self.full_kinds();
        let shedding = full.contains(&true);
        let mut shed = [0u64; 4];
        let mut chunks: Vec<Chunk> = vec![Vec::new(); self.queues.len()];
        let mut kept = Vec::with_capacity(envelopes.len());
        let mut counts = [0u64; 4];
        let mut by_kind = [0u64; 4];
        let mut unrouted = 0;
        let mut upstream_dropped = 0;
        let mut filtered = 0;
        let correlator = self.correlator.get();
        let mut held = Vec::new();
        // One look at the names table per batch, none per envelope.
        let names = self
            .enricher
            .as_deref()
            .map(crate::enrich::Enricher::snapshot);
        for envelope in envelopes {
            let envelope: EnvelopeView = envelope.into();
            if shedding {
                let kind = kind_of(&envelope);
                if full[kind.index()] {
                    // Loggregator's own drop counts still count.
                    if kind == Kind::Metric {
                        upstream_dropped += loggregator_egress_drops(&envelope);
                    }
                    shed[kind.index()] += 1;
                    continue;
                }
            }
            let mut record = classify(envelope);
            if correlator.is_some() && record.kind == Kind::Api {
                // Counted, filtered and numbered once merged.
                if let Some(names) = &names {
                    names.enrich(&mut record);
                }
                held.push(record);
                continue;
            }
            let k = record.kind.index();
            if record.kind == Kind::Metric {
                upstream_dropped += loggregator_egress_drops(&record.envelope);
            }
            by_kind[k] += 1;
            if !self.filters.keeps(&record) {
                filtered += 1;
                continue;
            }
            if let Some(names) = &names {
                names.enrich(&mut record);
            }
            if self.routes[k].is_empty() {
                unrouted += 1;
                continue;
            }
            counts[k] += 1;
            kept.push(record);
        }
        self.number_and_share(kept, counts, &mut chunks);
        for (k, n) in by_kind.into_iter().enumerate() {
            if n > 0 {
                self.stats.by_kind[k].fetch_add(n, Ordering::Relaxed);
            }
        }
        if unrouted > 0 {
            self.stats.unrouted.fetch_add(unrouted, Ordering::Relaxed);
        }
        if upstream_dropped > 0 {
            self.stats
                .upstream_dropped
                .fetch_add(upstream_dropped, Ordering::Relaxed);
        }
        if filtered > 0 {
            self.stats.filtered.fetch_add(filtered, Ordering::Relaxed);
        }
        self.count_shed(shed);
        for (queue, chunk) in self.queues.iter().zip(chunks) {
            if !chunk.is_empty() {
                queue.offer(chunk);
            }
        }
        if let Some(c) = correlator
            && !held.is_empty()
        {
            self.accept_records(c.offer(held, tokio::time::Instant::now()));
        }
    }
}

/// The envelopes a Doppler or RLP `dropped{direction=egress}` counter says
/// were lost on the way to consumers (its delta), else 0.
pub(crate) fn loggregator_egress_drops(envelope: &EnvelopeView) -> u64 {
    let Some(MessageRef::Counter(c)) = envelope.message() else {
        return 0;
    };
    if c.name != "dropped" {
        return 0;
    }
    let tag = |k| envelope.tag(k);
    let from_loggregator = matches!(envelope.source_id(), "doppler" | "reverse_log_proxy")
        || matches!(
            tag("origin"),
            Some("loggregator.doppler" | "loggregator.rlp")
        );
    if from_loggregator && tag("direction") == Some("egress") {
        c.delta
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::envelope::Message;
    use crate::proto::{Counter, Envelope};

    fn counter(source_id: &str, name: &str, direction: &str, delta: u64) -> Envelope {
        Envelope {
            source_id: source_id.into(),
            tags: [("direction".to_string(), direction.to_string())].into(),
            message: Some(Message::Counter(Counter {
                name: name.into(),
                delta,
                total: 1_000_000,
            })),
            ..Envelope::default()
        }
    }

    #[test]
    fn only_loggregator_egress_drop_counters_count_as_upstream_loss() {
        let drops = |e: Envelope| loggregator_egress_drops(&e.into());
        assert_eq!(drops(counter("doppler", "dropped", "egress", 7)), 7);
        assert_eq!(
            drops(counter("reverse_log_proxy", "dropped", "egress", 3)),
            3
        );
        assert_eq!(drops(counter("doppler", "dropped", "ingress", 5)), 0);
        assert_eq!(drops(counter("doppler", "egress", "egress", 5)), 0);
        assert_eq!(drops(counter("my-app", "dropped", "egress", 5)), 0);

        let router = Router::new(Vec::new(), Filters::default(), None, false);
        router.dispatch(vec![
            counter("doppler", "dropped", "egress", 7),
            counter("reverse_log_proxy", "dropped", "egress", 3),
            counter("doppler", "dropped", "ingress", 100),
        ]);
        assert_eq!(router.stats().snapshot().upstream_dropped, 10);
    }

    fn log(source_type: &str, text: &str) -> Envelope {
        Envelope {
            source_id: "app".into(),
            tags: [("source_type".to_string(), source_type.to_string())].into(),
            message: Some(Message::Log(crate::proto::Log {
                payload: text.as_bytes().to_vec().into(),
                r#type: 0,
            })),
            ..Envelope::default()
        }
    }

    fn event() -> Envelope {
        Envelope {
            source_id: "cell".into(),
            message: Some(Message::Event(crate::proto::Event {
                title: "t".into(),
                body: "b".into(),
            })),
            ..Envelope::default()
        }
    }

    /// Every record in `rx`, as (kind, boot, position).
    fn taken(rx: &mut crate::sink::Intake) -> Vec<(Kind, String, Position)> {
        let mut out = Vec::new();
        while let Some(chunk) = rx.try_recv() {
            for r in chunk {
                let n = r.number.clone().expect("numbered");
                out.push((r.kind, n.boot.to_string(), n.position));
            }
        }
        out
    }

    fn seqs(got: &[(Kind, String, Position)], kind: Kind) -> Vec<u64> {
        got.iter()
            .filter(|(k, ..)| *k == kind)
            .map(|(_, _, p)| match p {
                Position::Seq(n) => *n,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// Overload: once every sink of a kind would turn away again the chunk
    /// it last turned away, envelopes of that kind are shed unread,
    /// counted, and numbered as holes; other kinds, and a kind with one sink
    /// that still has room, go on as before; a sink that takes records off
    /// is offered again.
    #[test]
    fn envelopes_whose_every_sink_is_full_are_shed_unread_and_leave_holes() {
        let (logs_q, mut logs_rx) = SinkQueue::new("logs", 5);
        let (metrics_q, mut metrics_rx) = SinkQueue::new("metrics", 1000);
        let logs_stats = Arc::clone(logs_q.stats());
        let router = Router::new(
            vec![
                (logs_q, vec![Kind::AppLog]),
                (metrics_q, vec![Kind::Metric]),
            ],
            Filters::default(),
            None,
            false,
        );
        let logs = |n: usize| -> Vec<Envelope> {
            (0..n)
                .map(|i| log("APP/PROC/WEB", &format!("a{i}")))
                .collect()
        };
        router.dispatch(logs(4)); // app_log 0-3 queued
        router.dispatch(logs(3)); // 4-6: 7 > 5, turned away at the queue
        assert!(!router.saturated(), "the metrics sink has room");
        let mut batch = logs(2);
        batch.push(counter("doppler", "dropped", "egress", 9));
        batch.push(event()); // no sink takes events
        router.dispatch(batch); // two app logs shed (7, 8); the counter goes on

        let s = router.stats().snapshot();
        assert_eq!((s.envelopes, s.batches), (11, 3));
        assert_eq!((s.shed, s.app_log, s.metric, s.event), (2, 7, 1, 1));
        assert_eq!((s.unrouted, s.upstream_dropped), (1, 9));
        let l = logs_stats.snapshot("logs");
        assert_eq!((l.received, l.queued, l.dropped_queue_full), (7, 4, 3));

        // The runner takes two off: the next log is offered, and admitted.
        logs_stats.queued.fetch_sub(2, Ordering::AcqRel);
        router.dispatch(logs(1));
        let s = router.stats().snapshot();
        assert_eq!((s.shed, s.app_log), (2, 8));
        // Dropped at the queue (4-6) and shed (7, 8) are both holes.
        assert_eq!(seqs(&taken(&mut logs_rx), Kind::AppLog), [0, 1, 2, 3, 9]);
        assert_eq!(seqs(&taken(&mut metrics_rx), Kind::Metric), [0]);

        // Every sink full: the router is saturated, and a source may shed a
        // batch it has not decoded, by kind; kinds no sink takes stay unrouted.
        router.dispatch(logs(3)); // 10-12: 3 + 3 > 5, turned away
        router.dispatch((0..1001).map(|_| counter("c", "n", "x", 1)).collect());
        assert!(router.saturated());
        router.shed([0, 5, 2, 3]); // api, app_log (13-17), metric, event
        let s = router.stats().snapshot();
        assert_eq!((s.envelopes, s.batches, s.shed), (1026, 7, 9));
        assert_eq!((s.unrouted, s.event, s.app_log), (4, 4, 11));
        router.declare(0);
        let declared = |rx: &mut crate::sink::Intake| -> Vec<Position> {
            std::iter::from_fn(|| rx.try_recv())
                .flatten()
                .map(|r| r.number.clone().unwrap().position)
                .collect()
        };
        assert_eq!(declared(&mut logs_rx), [Position::LastSeq(17)]);
        // The counters 1-1001 were turned away, 1002-1003 shed.
        assert_eq!(declared(&mut metrics_rx), [Position::LastSeq(1003)]);
    }

    /// Numbers per kind from 0, contiguous over batches and both ways in;
    /// what the rules leave out and what no sink takes gets none.
    #[test]
    fn accepted_records_are_numbered_per_kind_without_a_hole() {
        let (all_q, mut all_rx) = SinkQueue::new("all", 1000);
        let (logs_q, mut logs_rx) = SinkQueue::new("logs", 1000);
        let router = Router::new(
            vec![
                (all_q, vec![Kind::Api, Kind::AppLog, Kind::Metric]),
                (logs_q, vec![Kind::AppLog]),
            ],
            Filters {
                exclude: vec!["source_type=RTR".parse().unwrap()],
                ..Filters::default()
            },
            None,
            false,
        )
        .with_boot("0-20261202T193322Z-9f3a2c1b".into());
        router.dispatch(vec![
            log("APP/PROC/WEB", "a0"),
            log("RTR", "filtered"),
            log("API", "Created app with guid x"),
            counter("doppler", "c", "x", 1),
            event(), // no sink takes events: unrouted, not numbered
            log("APP/PROC/WEB", "a1"),
        ]);
        router.dispatch(vec![log("RTR", "filtered"), log("STG", "a2")]);
        let audit = crate::record::audit_event_record(serde_json::json!({
            "guid": "g", "type": "audit.app.start", "created_at": "2020-01-01T00:00:00Z"}))
        .unwrap();
        assert!(router.dispatch_records(vec![audit.clone(), audit]));
        router.dispatch(vec![
            log("API", "Updated app with guid x"),
            log("CELL", "a3"),
        ]);

        let s = router.stats().snapshot();
        assert_eq!((s.filtered, s.unrouted), (2, 1));
        let all = taken(&mut all_rx);
        assert!(
            all.iter()
                .all(|(_, b, _)| b == "0-20261202T193322Z-9f3a2c1b")
        );
        assert_eq!(seqs(&all, Kind::AppLog), [0, 1, 2, 3]);
        assert_eq!(seqs(&all, Kind::Api), [0, 1, 2, 3]);
        assert_eq!(seqs(&all, Kind::Metric), [0]);
        assert_eq!(seqs(&all, Kind::Event), [] as [u64; 0]);
        // Each sink of a kind sees the same numbers.
        let logs = taken(&mut logs_rx);
        assert_eq!(seqs(&logs, Kind::AppLog), [0, 1, 2, 3]);
        assert_eq!(logs.len(), 4);
        // The audit-events records are numbered in their JSON too.
        let ctx = crate::record::EncodeContext::new("f");
        let mut audit = crate::record::audit_event_record(serde_json::json!({
            "guid": "g", "type": "audit.app.start", "created_at": "2020-01-01T00:00:00Z"}))
        .unwrap();
        audit.number = Number::seq(router.boot(), 1);
        assert!(
            audit.to_json(&ctx).starts_with(
                r#"{"kind":"api","boot":"0-20261202T193322Z-9f3a2c1b","seq":1,"time":"#
            ),
            "{}",
            audit.to_json(&ctx)
        );
    }

    /// Batches dispatched at once from several threads share no number and
    /// leave none out.
    #[test]
    fn concurrent_batches_reserve_ranges_that_do_not_overlap() {
        let (q, mut rx) = SinkQueue::new("all", 100_000);
        let router = Arc::new(Router::new(
            vec![(q, Kind::ALL.to_vec())],
            Filters::default(),
            None,
            false,
        ));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        router.dispatch(vec![log("APP", "x"); 7]);
                    }
                });
            }
        });
        let mut got = seqs(&taken(&mut rx), Kind::AppLog);
        got.sort_unstable();
        assert_eq!(got, (0..4 * 50 * 7).collect::<Vec<u64>>());
    }

    /// Alerts carry the boot alone; declarations state the last number of
    /// each kind that issued one, to that kind's sinks, and count as no
    /// record of their kind.
    #[test]
    fn alerts_are_not_numbered_and_declarations_state_the_last_seq() {
        let (all_q, mut all_rx) = SinkQueue::new("all", 1000);
        let (events_q, mut events_rx) = SinkQueue::new("events", 1000);
        let router = Router::new(
            vec![(all_q, Kind::ALL.to_vec()), (events_q, vec![Kind::Event])],
            Filters::default(),
            None,
            false,
        );
        assert_eq!(router.declare(1), 0, "nothing issued, nothing declared");
        router.offer_except(
            Some(0),
            classify(Envelope {
                tags: [("nozzle_alert".to_string(), "sink_stalled".to_string())].into(),
                ..event()
            }),
        );
        let alert = taken(&mut events_rx);
        assert_eq!(alert.len(), 1);
        assert_eq!(alert[0].2, Position::BootOnly);
        assert_eq!(&*alert[0].1, &**router.boot());
        assert_eq!(router.declare(1), 0, "an alert issues no number");

        router.dispatch(vec![log("APP", "a"), log("APP", "b"), log("APP", "c")]);
        router.dispatch(vec![counter("x", "c", "d", 1)]);
        let before = router.stats().snapshot();
        assert_eq!(router.declare(1_700_000_000_000_000_000), 2);
        assert_eq!(router.stats().snapshot(), before);
        let all = taken(&mut all_rx);
        let declared: Vec<_> = all
            .iter()
            .filter(|(_, _, p)| matches!(p, Position::LastSeq(_)))
            .map(|(k, _, p)| (*k, *p))
            .collect();
        assert_eq!(
            declared,
            [
                (Kind::AppLog, Position::LastSeq(2)),
                (Kind::Metric, Position::LastSeq(0))
            ]
        );
        assert!(taken(&mut events_rx).is_empty(), "no event was numbered");
    }
}

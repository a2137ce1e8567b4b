//! The correlator (issue 22): the firehose's Cloud Controller line, the
//! `/v3/audit_events` event and the CC security event that describe one
//! action become ONE `api` record naming every source it was built from.
//!
//! It sits in the router between the api-record producers and the
//! numbering: records are numbered once, after the merge, and the rules see
//! the merged record (its outcome, its `readOnly`).
//!
//! Matching: two halves describe the same action when their event names
//! agree (CC's `audit.app.delete-request` is the request's `audit.app.delete`)
//! and, where both carry them, the request ids, target guids and actor guids
//! are equal, with their times at most `window` apart; at least a target or
//! an actor guid is shared. A half is held at most `hold` from its arrival:
//!
//! - an audit event is polled, so it comes after the real-time halves: it
//!   takes what is held for its action and leaves at once (alone when
//!   nothing is held), so the poller's cursor never waits on the correlator;
//! - a security event of a read (`GET`) expects no audit event: it takes a
//!   held firehose line and leaves at once;
//! - a refused or failed request (4xx, 5xx) changed nothing, so no firehose
//!   line or audit event describes it: it leaves at once, alone, with its
//!   outcome (merging it with the line of another, successful request to
//!   the same app would put the wrong outcome on a change that happened);
//! - UAA's events and halves naming neither target nor actor match nothing
//!   and pass straight through;
//! - anything else waits for its other halves until `hold` has passed, and
//!   then leaves with what it has. Nothing is dropped: when `max_entries`
//!   actions are held, the oldest leaves early (counted).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::record::security::{Outcome, SecuritySource};
use bytes::Bytes;

use crate::record::{ApiCall, ApiSource, AppNames, EnvelopeView, Kind, Record, firehose_event_id};

/// The correlator's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CorrelateConfig {
    /// How far apart two halves' own times may be.
    pub window: Duration,
    /// How long a half waits for the others (from its arrival); zero: off.
    pub hold: Duration,
    /// Actions held at most; one more sends the oldest out early.
    pub max_entries: usize,
}

impl Default for CorrelateConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(5),
            hold: Duration::from_secs(10),
            max_entries: 50_000,
        }
    }
}

/// What the correlator did, by count.
#[derive(Debug, Default)]
pub struct CorrelateStats {
    /// Halves offered (api records from any source).
    pub offered: AtomicU64,
    /// Records that left (merged or alone).
    pub emitted: AtomicU64,
    /// Halves folded into another half's record (once nothing is held,
    /// offered = emitted + merged).
    pub merged: AtomicU64,
    /// Actions sent out before their hold because `max_entries` were held.
    pub early: AtomicU64,
    /// Actions held now.
    pub held: AtomicU64,
}

/// The three kinds of half, by slot.
const FIREHOSE: usize = 0;
const AUDIT: usize = 1;
const SECURITY: usize = 2;

/// The facts a half is matched on, read from its call.
#[derive(Debug)]
struct Facts<'a> {
    slot: usize,
    name: &'a str,
    target: Option<&'a str>,
    actor: Option<&'a str>,
    request_id: Option<&'a str>,
    time_ns: i64,
    /// No other half is expected after this one.
    last: bool,
    /// Matches nothing: passes straight through.
    alone: bool,
}

fn facts(api: &ApiCall, time_ns: i64) -> Facts<'_> {
    let sec = api.security.as_deref();
    let (slot, actor) = match &api.source {
        ApiSource::Firehose => (FIREHOSE, None),
        ApiSource::AuditEvents(a) => (AUDIT, a.actor.guid.as_deref()),
        ApiSource::SecurityLog => (SECURITY, sec.and_then(|s| s.caller.guid.as_deref())),
    };
    let name = api.event_name.trim_end_matches("-request");
    let target = api.target.as_ref().and_then(|t| t.guid.as_deref());
    let uaa = sec.is_some_and(|s| s.from == SecuritySource::UaaAudit);
    let failed = sec.is_some_and(|s| s.outcome != Outcome::Success);
    let last = match (slot, sec) {
        (AUDIT, _) => true,
        (SECURITY, Some(s)) => s.read_only == Some(true),
        _ => false,
    };
    Facts {
        slot,
        alone: uaa
            || failed
            || (target.is_none() && actor.is_none())
            || !name.starts_with("audit."),
        name,
        target,
        actor,
        request_id: sec.and_then(|s| s.request_id.as_deref()),
        time_ns,
        last,
    }
}

fn record_facts(rec: &Record) -> Facts<'_> {
    let api = rec.api.as_deref().expect("api records carry their call");
    facts(api, rec.envelope.timestamp())
}

/// The key a half is indexed under: its action with its target, or, for
/// a half without one (`POST /v3/apps` names no guid), with its actor. One
/// busy actor's many actions are not all under one key.
fn index_key(f: &Facts) -> Option<String> {
    match (f.target, f.actor) {
        (Some(t), _) => Some(format!("{}\0t\0{t}", f.name)),
        (None, Some(a)) => Some(format!("{}\0a\0{a}", f.name)),
        (None, None) => None,
    }
}

/// The keys a half looks for its action under: its target's, and its
/// actor's (which hold only halves that name no target).
fn lookup_keys<'a>(f: &'a Facts) -> impl Iterator<Item = String> + 'a {
    let t = f.target.map(|g| format!("{}\0t\0{g}", f.name));
    let a = f.actor.map(|g| format!("{}\0a\0{g}", f.name));
    t.into_iter().chain(a)
}

/// Held actions looked at per key, oldest first: many held actions on one
/// target or by one actor cost no more than this per half (one that finds
/// no match among them leaves alone after its hold).
const MAX_SCAN: usize = 64;

/// A half being held: its record without the envelope's view, which is
/// read again from the envelope's own bytes when it leaves. A view of the
/// received batch would keep the whole batch alive for the hold (~20
/// envelopes per api record); a view of its own bytes keeps their strings,
/// tags and spans a second time (~750 bytes more per held record).
struct Half {
    /// The envelope's protobuf encoding, copied out of its batch.
    wire: Bytes,
    time_ns: i64,
    api: Box<ApiCall>,
    names: Option<Arc<AppNames>>,
}

impl Half {
    fn new(rec: Record) -> Box<Half> {
        debug_assert!(rec.number.is_none(), "held before numbering");
        Box::new(Half {
            wire: Bytes::copy_from_slice(rec.envelope.encoded()),
            time_ns: rec.envelope.timestamp(),
            api: rec.api.expect("api records carry their call"),
            names: rec.names,
        })
    }

    fn facts(&self) -> Facts<'_> {
        facts(&self.api, self.time_ns)
    }

    fn into_record(self) -> Record {
        Record {
            kind: Kind::Api,
            // The same bytes were read inside their batch, with one level
            // of nesting less to spare: read alone, they cannot fail.
            envelope: EnvelopeView::from_wire(self.wire).expect("an envelope read before"),
            api: Some(self.api),
            names: self.names,
            number: None,
        }
    }
}

/// One action being held: up to one half of each slot (boxed: most actions
/// hold one half, and an empty slot then costs a pointer, not a record).
struct Entry {
    parts: [Option<Box<Half>>; 3],
    deadline: Instant,
}

impl Entry {
    /// Whether `f` may join: its slot is free and nothing held contradicts it.
    fn admits(&self, f: &Facts, window: Duration) -> bool {
        if self.parts[f.slot].is_some() {
            return false;
        }
        let window = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        let differ =
            |a: Option<&str>, b: Option<&str>| matches!((a, b), (Some(a), Some(b)) if a != b);
        self.parts.iter().flatten().all(|h| {
            let g = h.facts();
            g.name == f.name
                && !differ(g.request_id, f.request_id)
                && !differ(g.target, f.target)
                && !differ(g.actor, f.actor)
                && g.time_ns.abs_diff(f.time_ns) <= window.unsigned_abs()
        })
    }

    /// The keys the entry is indexed under: each half's (kept nowhere, so
    /// a held action costs no key strings).
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = Vec::with_capacity(3);
        for k in self
            .parts
            .iter()
            .flatten()
            .filter_map(|h| index_key(&h.facts()))
        {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        keys
    }
}

/// The held actions indexed under one key, by the slot they have free: a
/// half looks only at actions it could join. (Looking at every action under
/// its key, a firehose line checked up to [`MAX_SCAN`] held lines of the
/// same app and action, none of which could take it: with the firehose's
/// lines held, that scan was a tenth of the nozzle's CPU.)
#[derive(Default)]
struct Open([BTreeSet<u64>; 3]);

impl Open {
    fn is_empty(&self) -> bool {
        self.0.iter().all(BTreeSet::is_empty)
    }
}

#[derive(Default)]
struct State {
    /// Keyed by arrival order, which is deadline order (one `hold` for all).
    entries: BTreeMap<u64, Entry>,
    index: HashMap<String, Open>,
    next: u64,
    /// Held actions a half was checked against ([`Entry::admits`]), in all:
    /// what matching costs, counted (the tests hold it linear).
    probes: u64,
}

impl State {
    fn find(&mut self, f: &Facts, window: Duration) -> Option<u64> {
        let mut probes = 0;
        let found = lookup_keys(f)
            .filter_map(|k| {
                self.index.get(&k)?.0[f.slot]
                    .iter()
                    .take(MAX_SCAN)
                    .copied()
                    .find(|id| {
                        probes += 1;
                        self.entries.get(id).is_some_and(|e| e.admits(f, window))
                    })
            })
            .min();
        self.probes += probes;
        found
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.entries.remove(&id)?;
        for k in entry.keys() {
            if let Some(open) = self.index.get_mut(&k) {
                for (slot, part) in entry.parts.iter().enumerate() {
                    if part.is_none() {
                        open.0[slot].remove(&id);
                    }
                }
                if open.is_empty() {
                    self.index.remove(&k);
                }
            }
        }
        Some(entry)
    }

    /// Puts `half` into its slot of entry `id` (free), and indexes the
    /// entry under the half's key too.
    fn fill(&mut self, id: u64, half: Box<Half>) {
        let (slot, key) = {
            let f = half.facts();
            (f.slot, index_key(&f))
        };
        let entry = self.entries.get_mut(&id).expect("entry held");
        let keys = entry.keys();
        entry.parts[slot] = Some(half);
        // No longer open for this slot under the keys it had.
        for k in &keys {
            if let Some(open) = self.index.get_mut(k) {
                open.0[slot].remove(&id);
            }
        }
        if let Some(k) = key
            && !keys.contains(&k)
        {
            let open = self.index.entry(k).or_default();
            for (s, part) in entry.parts.iter().enumerate() {
                if part.is_none() {
                    open.0[s].insert(id);
                }
            }
        }
    }
}

/// Holds api records until their other halves came or their hold passed.
pub(crate) struct Correlator {
    cfg: CorrelateConfig,
    state: Mutex<State>,
    stats: Arc<CorrelateStats>,
}

/// A half as it arrives: one that may wait (already in its held form), or
/// one after which nothing is expected, which leaves at once either way.
enum Arrival {
    MayWait(Box<Half>),
    /// Boxed: few halves are last (audit events, reads).
    Last(Box<Record>),
}

impl Correlator {
    pub(crate) fn new(cfg: CorrelateConfig) -> Self {
        Self {
            cfg,
            state: Mutex::default(),
            stats: Arc::default(),
        }
    }

    pub(crate) fn stats(&self) -> &Arc<CorrelateStats> {
        &self.stats
    }

    /// Takes api records at `now`; returns the records that leave now
    /// (merged or alone), in no particular order.
    pub(crate) fn offer(&self, records: Vec<Record>, now: Instant) -> Vec<Record> {
        self.stats
            .offered
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        let mut out = Vec::new();
        // Facts are read, and halves that may wait put in their held form,
        // before the lock: neither depends on what is held.
        let mut arrivals = Vec::with_capacity(records.len());
        for rec in records {
            debug_assert_eq!(rec.kind, Kind::Api);
            let (alone, last) = {
                let f = record_facts(&rec);
                (f.alone, f.last)
            };
            if alone {
                out.push(rec);
            } else if last {
                arrivals.push(Arrival::Last(Box::new(rec)));
            } else {
                arrivals.push(Arrival::MayWait(Half::new(rec)));
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for arrival in arrivals {
            let found = match &arrival {
                Arrival::MayWait(h) => state.find(&h.facts(), self.cfg.window),
                Arrival::Last(r) => state.find(&record_facts(r), self.cfg.window),
            };
            let (half, last) = match (found, arrival) {
                (None, Arrival::Last(rec)) => {
                    out.push(*rec);
                    continue;
                }
                (None, Arrival::MayWait(half)) => {
                    self.hold(&mut state, half, now, &mut out);
                    continue;
                }
                (Some(_), Arrival::MayWait(half)) => (half, false),
                (Some(_), Arrival::Last(rec)) => (Half::new(*rec), true),
            };
            let id = found.expect("matched above");
            state.fill(id, half);
            let full = state.entries[&id].parts.iter().all(Option::is_some);
            if last || full {
                let entry = state.remove(id).expect("entry just found");
                out.push(self.merge(entry));
            }
        }
        self.stats
            .held
            .store(state.entries.len() as u64, Ordering::Relaxed);
        self.stats
            .emitted
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }

    /// Holds `half` as a new action, sending the oldest out early when
    /// `max_entries` are held.
    fn hold(&self, state: &mut State, half: Box<Half>, now: Instant, out: &mut Vec<Record>) {
        if state.entries.len() >= self.cfg.max_entries.max(1)
            && let Some((&oldest, _)) = state.entries.first_key_value()
        {
            let entry = state.remove(oldest).expect("oldest entry");
            self.stats.early.fetch_add(1, Ordering::Relaxed);
            out.push(self.merge(entry));
        }
        let id = state.next;
        state.next += 1;
        state.entries.insert(
            id,
            Entry {
                parts: [None, None, None],
                deadline: now + self.cfg.hold,
            },
        );
        state.fill(id, half);
    }

    /// The actions whose hold has passed at `now` (all of them when `now`
    /// is `None`: at shutdown), each as one record.
    pub(crate) fn due(&self, now: Option<Instant>) -> Vec<Record> {
        self.oldest(usize::MAX, now)
    }

    /// [`Self::due`], at most `max` of them, oldest first.
    fn oldest(&self, max: usize, now: Option<Instant>) -> Vec<Record> {
        let mut leaving = Vec::new();
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            while let Some((&id, e)) = state.entries.first_key_value() {
                if leaving.len() >= max || now.is_some_and(|now| e.deadline > now) {
                    break;
                }
                leaving.push(state.remove(id).expect("first entry"));
            }
            self.stats
                .held
                .store(state.entries.len() as u64, Ordering::Relaxed);
        }
        // Merged (their envelopes read again) without the lock.
        self.stats
            .emitted
            .fetch_add(leaving.len() as u64, Ordering::Relaxed);
        leaving.into_iter().map(|e| self.merge(e)).collect()
    }

    /// One record from an entry's halves: the audit event's record when
    /// there is one, else the firehose line's, else the security event's;
    /// the security event and the firehose line's id merged into it.
    fn merge(&self, entry: Entry) -> Record {
        let [firehose, audit, security] = entry.parts.map(|p| p.map(|h| h.into_record()));
        let halves = [&firehose, &audit, &security]
            .iter()
            .filter(|p| p.is_some())
            .count();
        self.stats
            .merged
            .fetch_add(halves as u64 - 1, Ordering::Relaxed);
        let (mut base, merged_firehose, security) = match (audit, firehose, security) {
            (None, None, Some(s)) => return s,
            (Some(a), f, s) => (a, f.map(|f| firehose_event_id(&f.envelope)), s),
            (None, Some(f), s) => (f, None, s),
            (None, None, None) => unreachable!("an entry holds at least one half"),
        };
        let security = security.and_then(|mut r| r.api.as_deref_mut()?.security.take());
        if let Some(api) = base.api.as_deref_mut() {
            if security.is_some() {
                api.security = security;
            }
            api.merged_firehose = merged_firehose;
        }
        base
    }
}

/// Sends out what `router`'s correlator held past its hold, every `every`,
/// until `stop` is cancelled or the router is gone (holding it weakly, it
/// keeps no sink queue open). Once `stop` is cancelled (the sources have
/// stopped), it sends out everything still held, as [`drain`] does, and
/// returns.
pub async fn release_held_every(
    router: std::sync::Weak<super::Router>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let Some(router) = router.upgrade() else {
            return;
        };
        router.release_held(Some(Instant::now()));
    }
    if let Some(router) = router.upgrade() {
        drain(&router).await;
    }
}

/// Records sent out per piece when everything held leaves at once.
const PIECE: usize = 1_000;
/// How long a piece waits for the api sinks' queues to take the one before.
const PIECE_PATIENCE: Duration = Duration::from_millis(50);

/// Sends out everything `router`'s correlator holds, oldest first, a piece
/// at a time, each once the queues of the sinks of api records have taken
/// in the one before (or [`PIECE_PATIENCE`] has passed). In one chunk, 10 s
/// of a firehose's Cloud Controller lines could fill a sink's queue share
/// (`--queue-max-bytes`) alone, and the queue then turned away the next
/// chunk: the kind's last-number declaration (`scripts/bench --mode full`
/// dropped it in every run) or, for a larger one, the held records themselves.
pub(crate) async fn drain(router: &super::Router) {
    let Some(c) = router.correlator.get() else {
        return;
    };
    let queues: Vec<_> = router.routes[Kind::Api.index()]
        .iter()
        .map(|&i| &router.queues[i])
        .collect();
    loop {
        let piece = c.oldest(PIECE, None);
        if piece.is_empty() {
            return;
        }
        router.accept_records(piece);
        let until = Instant::now() + PIECE_PATIENCE;
        while Instant::now() < until
            && queues.iter().any(|q| {
                q.should_wait(PIECE as u64)
                    || q.stats().queued.load(Ordering::Acquire) > PIECE as u64
            })
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::proto::{Envelope, EnvelopeBatch, log};
    use crate::record::decode_batch;
    use crate::record::security::{read_line, security_record};
    use prost::Message as _;

    const APP: &str = "cdabc600-0b73-48e1-b7d2-26af2c63f901";
    const T0: i64 = 1_700_000_000_000_000_000;

    fn log(source_id: &str, text: &str, api: bool) -> Envelope {
        let tags = if api {
            &[("origin", "cloud_controller"), ("source_type", "API")]
        } else {
            &[("origin", "rep"), ("source_type", "APP/PROC/WEB")]
        };
        crate::proto::log_envelope(T0, source_id, text, log::Type::Out, tags)
    }

    /// Cloud Controller's line for an update of APP.
    fn line() -> Record {
        classify(log(APP, &format!("Updated app with guid {APP}"), true))
    }

    /// The CC security event of an update of APP.
    fn security(req: &str) -> Record {
        let line = format!(
            "CEF:0|cloud_foundry|cloud_controller_ng|3.180.0|PATCH /v3/apps/{APP}|PATCH /v3/apps/{APP}|0|rt={} suser=dev@example.com suid=d5a2f3b4-1111-4222-8333-944455556666 cs2Label=vcapRequestId cs2={req} request=/v3/apps/{APP} requestMethod=PATCH cs3Label=result cs3=success cs4Label=httpStatusCode cs4=200 src=10.0.1.5",
            T0 / 1_000_000
        );
        security_record(read_line(&line, "api/0", None).unwrap().unwrap())
    }

    fn probes(c: &Correlator) -> u64 {
        c.state.lock().unwrap().probes
    }

    #[test]
    fn holding_the_lines_of_one_busy_action_costs_no_matching() {
        // A firehose line waits for a security event or an audit event;
        // held lines of the same app and action cannot take it.
        let c = Correlator::new(CorrelateConfig::default());
        let n = 2_000;
        for _ in 0..n {
            assert!(c.offer(vec![line()], Instant::now()).is_empty());
        }
        assert_eq!(c.stats.held.load(Ordering::Relaxed), n);
        assert_eq!(probes(&c), 0);
    }

    #[test]
    fn each_half_finds_its_action_at_the_first_look() {
        // n lines of one action held, then n security events of it: each
        // takes the oldest line still alone, looking at nothing else. (The
        // lines that already have their security event wait on for their
        // audit event, and are not looked at again.)
        let c = Correlator::new(CorrelateConfig::default());
        let n = 500;
        let lines: Vec<Record> = (0..n).map(|_| line()).collect();
        assert!(c.offer(lines, Instant::now()).is_empty());
        for i in 0..n {
            assert!(
                c.offer(vec![security(&format!("req-{i}"))], Instant::now())
                    .is_empty()
            );
        }
        assert_eq!(probes(&c), n);
        let held = c.due(None);
        assert_eq!(held.len() as u64, n);
        assert_eq!(c.stats.merged.load(Ordering::Relaxed), n);
        for r in &held {
            let api = r.api.as_deref().unwrap();
            assert_eq!(api.source, ApiSource::Firehose);
            assert!(api.security.is_some());
        }
    }

    #[test]
    fn a_held_line_keeps_nothing_else_of_its_batch() {
        // One Cloud Controller line among twenty envelopes, as on the firehose.
        let mut batch = EnvelopeBatch {
            batch: (0..19)
                .map(|i| log(&format!("app-{i}"), &"output ".repeat(40), false))
                .collect(),
        };
        batch
            .batch
            .insert(7, log(APP, &format!("Updated app with guid {APP}"), true));
        let bytes = bytes::Bytes::from(batch.encode_to_vec());
        let views = decode_batch(&bytes).unwrap();
        let batch_text = views[0].retained_text_len();
        let alone = crate::record::EnvelopeView::from_wire(views[7].encoded().clone()).unwrap();
        let records: Vec<Record> = views.into_iter().map(classify).collect();
        let api: Vec<Record> = records
            .into_iter()
            .filter(|r| r.kind == Kind::Api)
            .collect();
        assert_eq!(api.len(), 1);
        assert_eq!(api[0].envelope.retained_text_len(), batch_text);

        let c = Correlator::new(CorrelateConfig::default());
        assert!(c.offer(api, Instant::now()).is_empty());
        let held = c.due(None);
        assert_eq!(
            held[0].envelope.retained_text_len(),
            alone.retained_text_len()
        );
        assert!(alone.retained_text_len() * 10 < batch_text);
        assert_eq!(held[0].envelope, alone);
        assert!(
            !bytes
                .as_ptr_range()
                .contains(&held[0].envelope.encoded().as_ptr())
        );
    }
}

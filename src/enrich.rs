//! Enrichment: app, space and org names for records whose envelope does not
//! carry them (container metrics, router logs, CC lines of deleted apps).
//!
//! Names come from the envelope tags when present (CF puts them on app logs)
//! and nothing else happens. Otherwise the app guid is looked up in a table
//! of names that a background task keeps, filled from Cloud Controller
//! (`/v3/apps/:guid?include=space.organization`):
//!
//! - **Never blocks ingress.** The router reads the table once per received
//!   batch (one read lock per batch, none per envelope) and attaches the
//!   names it finds (a reference count, no allocation). A record whose app is
//!   not in the table yet is delivered at once without names (the bound on
//!   waiting for a lookup is zero), counted in `pending`, and its guid is
//!   offered to the background task without waiting (a full request queue
//!   is counted, not waited on).
//! - **Bounded.** At most `max_entries` names, each kept for `ttl` ±25%
//!   (jittered so entries fetched together do not expire together); apps CC
//!   does not know are remembered as misses for `miss_ttl`; ids that are not
//!   GUIDs (`doppler`, `gorouter`) are never looked up; at most
//!   `concurrency` requests to CC at once.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rand::Rng;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::record::{AppNames, Kind, Record, app_guid};

#[derive(Clone, Debug)]
pub struct EnrichConfig {
    pub(crate) max_entries: usize,
    pub(crate) ttl: Duration,
    pub(crate) miss_ttl: Duration,
    pub concurrency: usize,
    /// App guids waiting for a lookup; beyond it requests are dropped (and
    /// asked again by a later record).
    pub queue: usize,
    /// How often the table the router reads is refreshed.
    pub(crate) publish_every: Duration,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        Self {
            max_entries: 50_000,
            ttl: Duration::from_secs(600),
            miss_ttl: Duration::from_secs(300),
            concurrency: 4,
            queue: 10_000,
            publish_every: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Default)]
pub struct EnrichStats {
    /// Records given names from the table.
    pub enriched: AtomicU64,
    /// Records delivered without names because their lookup had not answered.
    pub pending: AtomicU64,
    /// Records whose app id is not a GUID (never looked up).
    pub not_guid: AtomicU64,
    /// Requests to Cloud Controller.
    pub lookups: AtomicU64,
    /// Lookups CC answered with 404 (remembered as misses).
    pub misses: AtomicU64,
    /// Lookups that failed otherwise (remembered as misses for `miss_ttl`).
    pub errors: AtomicU64,
    /// Guids not queued for lookup because the queue was full.
    pub queue_full: AtomicU64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct EnrichSnapshot {
    pub enriched: u64,
    pub pending: u64,
    pub not_guid: u64,
    pub lookups: u64,
    pub misses: u64,
    pub errors: u64,
    pub queue_full: u64,
}

impl EnrichStats {
    pub fn snapshot(&self) -> EnrichSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EnrichSnapshot {
            enriched: l(&self.enriched),
            pending: l(&self.pending),
            not_guid: l(&self.not_guid),
            lookups: l(&self.lookups),
            misses: l(&self.misses),
            errors: l(&self.errors),
            queue_full: l(&self.queue_full),
        }
    }
}

/// What the table holds for an app guid.
#[derive(Clone, Debug)]
enum Entry {
    Known(Arc<AppNames>),
    /// Looked up and not found, or the lookup failed: not asked again until it expires.
    Missing,
    /// A lookup is queued or under way.
    Pending,
}

type Table = HashMap<String, Entry>;

/// The router's side: reads the table, asks for lookups.
pub struct Enricher {
    table: RwLock<Arc<Table>>,
    requests: mpsc::Sender<String>,
    stats: Arc<EnrichStats>,
}

/// One batch's view of the table. Counts are kept here and added to the
/// shared counters once, when the batch is done.
pub struct Snapshot<'a> {
    table: Arc<Table>,
    enricher: &'a Enricher,
    enriched: Cell<u64>,
    pending: Cell<u64>,
    not_guid: Cell<u64>,
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        let stats = &self.enricher.stats;
        for (counter, n) in [
            (&stats.enriched, self.enriched.get()),
            (&stats.pending, self.pending.get()),
            (&stats.not_guid, self.not_guid.get()),
        ] {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Enricher {
    /// The handle the router uses and the receiver of lookup requests for [`run`].
    pub fn new(cfg: &EnrichConfig) -> (Arc<Self>, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(cfg.queue.max(1));
        let e = Arc::new(Self {
            table: RwLock::new(Arc::new(Table::new())),
            requests: tx,
            stats: Arc::new(EnrichStats::default()),
        });
        (e, rx)
    }

    pub fn stats(&self) -> &Arc<EnrichStats> {
        &self.stats
    }

    /// Apps in the table the router reads: (named, missing, pending lookup).
    pub fn table_counts(&self) -> (usize, usize, usize) {
        let table = Arc::clone(&self.table.read().expect("enrich table lock"));
        let mut counts = (0, 0, 0);
        for e in table.values() {
            match e {
                Entry::Known(_) => counts.0 += 1,
                Entry::Missing => counts.1 += 1,
                Entry::Pending => counts.2 += 1,
            }
        }
        counts
    }

    /// The table as it is now; call once per batch.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            table: Arc::clone(&self.table.read().expect("enrich table lock")),
            enricher: self,
            enriched: Cell::new(0),
            pending: Cell::new(0),
            not_guid: Cell::new(0),
        }
    }
}

impl Snapshot<'_> {
    /// Gives `rec` names when its envelope lacks them and the table has them.
    pub fn enrich(&self, rec: &mut Record) {
        if !matches!(rec.kind, Kind::AppLog | Kind::Metric | Kind::Api) {
            return;
        }
        if rec.tag("app_name").is_some_and(|n| !n.is_empty()) {
            return;
        }
        let Some(guid) = app_guid(rec) else { return };
        let add = |c: &Cell<u64>| c.set(c.get() + 1);
        if !is_guid(guid) {
            add(&self.not_guid);
            return;
        }
        match self.table.get(guid) {
            Some(Entry::Known(names)) => {
                rec.names = Some(Arc::clone(names));
                add(&self.enriched);
            }
            Some(Entry::Missing) => {}
            Some(Entry::Pending) => add(&self.pending),
            None => {
                add(&self.pending);
                if self.enricher.requests.try_send(guid.to_string()).is_err() {
                    self.enricher
                        .stats
                        .queue_full
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Whether `s` is a GUID: 8-4-4-4-12 hex digits.
pub(crate) fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// How names are fetched: Cloud Controller in production
/// (`source::cloud_controller::app_lookup`), a fake in tests. `Ok(None)`
/// means CC does not know the app. Enrichment knows only this function type,
/// not the client behind it.
pub type Lookup = Arc<dyn Fn(String) -> BoxFuture<'static, LookupResult> + Send + Sync>;

/// What one lookup found.
pub(crate) type LookupResult = Result<Option<AppNames>, LookupError>;

/// Why a lookup failed: the client's own error, kept whole for the log.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct LookupError(pub Box<dyn std::error::Error + Send + Sync>);

/// Reads an app with its included space and organization (Cloud
/// Controller's `/v3/apps/:guid?include=space.organization`).
pub(crate) fn names_of(guid: &str, app: &serde_json::Value) -> AppNames {
    let s = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    let space_guid = s(app.pointer("/relationships/space/data/guid"));
    let find = |list: &str, guid: &Option<String>| {
        app.pointer(&format!("/included/{list}"))
            .and_then(|l| l.as_array())
            .and_then(|l| {
                l.iter()
                    .find(|x| guid.is_some() && s(x.get("guid")) == *guid)
                    .cloned()
            })
    };
    let space = find("spaces", &space_guid);
    let org_guid = space
        .as_ref()
        .and_then(|sp| s(sp.pointer("/relationships/organization/data/guid")));
    let org = find("organizations", &org_guid);
    AppNames {
        app_guid: guid.to_string(),
        app_name: s(app.get("name")),
        space_name: space.as_ref().and_then(|sp| s(sp.get("name"))),
        space_guid,
        org_name: org.as_ref().and_then(|o| s(o.get("name"))),
        org_guid,
    }
}

struct Cached {
    entry: Entry,
    expires: Instant,
}

/// The background task: takes lookup requests, asks `lookup` (at most
/// `concurrency` at once), keeps the cache and publishes the table the
/// router reads. Ends when `shutdown` is cancelled.
pub async fn run(
    cfg: EnrichConfig,
    enricher: Arc<Enricher>,
    mut requests: mpsc::Receiver<String>,
    lookup: Lookup,
    shutdown: CancellationToken,
) {
    let stats = Arc::clone(&enricher.stats);
    let mut cache: HashMap<String, Cached> = HashMap::new();
    let mut waiting: VecDeque<String> = VecDeque::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut lookups: JoinSet<(String, LookupResult)> = JoinSet::new();
    let mut dirty = false;
    let mut publish = tokio::time::interval(cfg.publish_every);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let jittered = |ttl: Duration| ttl.mul_f64(rand::rng().random_range(0.75..=1.25));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            guid = requests.recv() => {
                let Some(guid) = guid else { break };
                let known = cache.get(&guid).is_some_and(|c| c.expires > Instant::now());
                if !known && !in_flight.contains(&guid) && !waiting.contains(&guid) {
                    waiting.push_back(guid.clone());
                    cache.insert(guid, Cached { entry: Entry::Pending, expires: Instant::now() + cfg.ttl });
                    dirty = true;
                }
            }
            Some(done) = lookups.join_next(), if !lookups.is_empty() => {
                let Ok((guid, result)) = done else { continue };
                in_flight.remove(&guid);
                let (entry, ttl) = match result {
                    Ok(Some(names)) => (Entry::Known(Arc::new(names)), cfg.ttl),
                    Ok(None) => {
                        stats.misses.fetch_add(1, Ordering::Relaxed);
                        (Entry::Missing, cfg.miss_ttl)
                    }
                    Err(e) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, app = %guid, "enrichment lookup failed; records of this app go without names for a while");
                        (Entry::Missing, cfg.miss_ttl)
                    }
                };
                cache.insert(guid, Cached { entry, expires: Instant::now() + jittered(ttl) });
                dirty = true;
            }
            _ = publish.tick() => {
                let now = Instant::now();
                let before = cache.len();
                cache.retain(|_, c| c.expires > now || matches!(c.entry, Entry::Pending));
                if cache.len() > cfg.max_entries {
                    evict_soonest_expiring(&mut cache, cfg.max_entries);
                }
                if dirty || cache.len() != before {
                    let table: Table = cache.iter().map(|(k, c)| (k.clone(), c.entry.clone())).collect();
                    *enricher.table.write().expect("enrich table lock") = Arc::new(table);
                    dirty = false;
                }
            }
        }
        while lookups.len() < cfg.concurrency.max(1) {
            let Some(guid) = waiting.pop_front() else {
                break;
            };
            in_flight.insert(guid.clone());
            stats.lookups.fetch_add(1, Ordering::Relaxed);
            let f = lookup(guid.clone());
            lookups.spawn(async move { (guid, f.await) });
        }
    }
}

fn evict_soonest_expiring(cache: &mut HashMap<String, Cached>, max: usize) {
    let mut by_expiry: Vec<(Instant, String)> = cache
        .iter()
        .filter(|(_, c)| !matches!(c.entry, Entry::Pending))
        .map(|(k, c)| (c.expires, k.clone()))
        .collect();
    by_expiry.sort();
    let excess = cache.len().saturating_sub(max);
    for (_, k) in by_expiry.into_iter().take(excess) {
        cache.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_and_not_guids() {
        assert!(is_guid("cdabc600-0b73-48e1-b7d2-26af2c63f933"));
        assert!(!is_guid("doppler"));
        assert!(!is_guid("gorouter"));
        assert!(!is_guid("cdabc600-0b73-48e1-b7d2-26af2c63f93"));
        assert!(!is_guid("cdabc600x0b73-48e1-b7d2-26af2c63f933"));
        assert!(!is_guid("cdabc600-0b73-48e1-b7d2-26af2c63f93g"));
    }

    #[test]
    fn names_from_an_app_with_its_space_and_org() {
        let v = serde_json::json!({
            "guid": "a", "name": "spring-music",
            "relationships": {"space": {"data": {"guid": "s"}}},
            "included": {
                "spaces": [{"guid": "other", "name": "x"}, {"guid": "s", "name": "dev", "relationships": {"organization": {"data": {"guid": "o"}}}}],
                "organizations": [{"guid": "o", "name": "acme"}]
            }
        });
        assert_eq!(
            names_of("a", &v),
            AppNames {
                app_guid: "a".into(),
                app_name: Some("spring-music".into()),
                space_guid: Some("s".into()),
                space_name: Some("dev".into()),
                org_guid: Some("o".into()),
                org_name: Some("acme".into()),
            }
        );
    }
}

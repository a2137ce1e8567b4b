//! The `/v3/audit_events` poller: Cloud Controller's audit events, with the
//! actor, as `api` records (`sourceEvent: audit_events`) into the same router
//! as the firehose.
//!
//! **Reading.** Each poll asks for
//! `order_by=created_at&created_ats[gte]=<cursor second>&per_page=<n>` and
//! follows `pagination.next.href` to the end. Timestamps have one-second
//! precision, so the cursor's second is read again on every poll: the
//! cursor is the last `created_at` plus the guids already taken in that
//! second, and those are skipped (counted as `duplicates_skipped`).
//!
//! **Confirming.** The cursor kept in the cursor file (or bucket object, see
//! [`CursorStore`]) only moves past events
//! the sinks have settled. After handing a page's records to the router, the
//! poller notes, for each sink `api` records go to, the sink's `received`
//! count ("the mark"). A sink's records settle (delivered, dead-lettered or
//! dropped, all counted) in the order it received them, so once
//! `delivered + dead_lettered + dropped` reaches the mark, every record of
//! that page has settled. A page a sink turned away (queue full) or that was
//! written while the sink lost records to write errors is not confirmed: the
//! poller goes back to the last confirmed cursor and reads again
//! (duplicates are possible then; losses are not). The poller also stops
//! reading ahead when more than `max_unconfirmed` records wait for
//! confirmation: backpressure on a source that can re-read, not on the firehose.
//!
//! **Stopping.** On shutdown the poller stops reading, lets go of its router
//! (so the sinks can drain), waits for the sinks to settle what it handed
//! them and writes the cursor: a restart neither loses nor repeats events.
//!
//! Only one instance polls (config decides, from the instance index).

use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::cloud_controller::{CcError, CloudController};
use crate::backoff::Backoff;
use crate::record::{Kind, audit_event_record};
use crate::route::Router;
use crate::sink::SinkStats;

/// Cloud Controller's largest page.
pub const MAX_PER_PAGE: u32 = 5000;
/// Cloud Controller keeps audit events this long (its default cutoff).
pub const MAX_LOOKBACK: Duration = Duration::from_secs(31 * 24 * 3600);

#[derive(Clone, Debug)]
pub struct AuditEventsConfig {
    /// Events per page, 1 to 5000.
    pub per_page: u32,
    /// On the first start (no cursor yet), how far back to begin.
    pub lookback: Duration,
    /// Where the cursor is kept.
    pub cursor: CursorStore,
    /// Pause between polls once caught up.
    pub poll_interval: Duration,
    /// Records handed to sinks and not yet confirmed before reading stops.
    pub max_unconfirmed: u64,
    /// How long to wait at shutdown for the sinks to settle the last pages.
    pub shutdown_timeout: Duration,
    pub backoff: Backoff,
}

impl Default for AuditEventsConfig {
    fn default() -> Self {
        Self {
            per_page: MAX_PER_PAGE,
            lookback: Duration::from_secs(3600),
            cursor: CursorStore::File(PathBuf::from("audit-events.cursor.json")),
            poll_interval: Duration::from_secs(60),
            max_unconfirmed: 20_000,
            shutdown_timeout: Duration::from_secs(8),
            backoff: Backoff::default(),
        }
    }
}

/// Where the poller is: the last `created_at` taken and the guids taken in that second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub created_at: String,
    pub guids: BTreeSet<String>,
}

impl Cursor {
    fn starting(lookback: Duration) -> Self {
        let start = chrono::Utc::now()
            - chrono::Duration::from_std(lookback.min(MAX_LOOKBACK)).unwrap_or_default();
        Self {
            created_at: start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            guids: BTreeSet::new(),
        }
    }

    fn second(&self) -> i64 {
        seconds(&self.created_at).unwrap_or(i64::MIN)
    }

    /// Whether an event was taken already.
    fn has(&self, created: i64, guid: &str) -> bool {
        created < self.second() || (created == self.second() && self.guids.contains(guid))
    }

    fn take(&mut self, created_at: &str, created: i64, guid: &str) {
        if created > self.second() {
            self.created_at = created_at.to_string();
            self.guids.clear();
        }
        self.guids.insert(guid.to_string());
    }
}

fn seconds(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp())
}

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cannot read the audit-events cursor file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot write the audit-events cursor file {path}: {reason}")]
    Write { path: String, reason: String },
}

/// Reads a stored cursor's bytes.
pub type GetCursor =
    Arc<dyn Fn() -> BoxFuture<'static, Result<Option<bytes::Bytes>, String>> + Send + Sync>;
/// Stores a cursor's bytes.
pub type PutCursor =
    Arc<dyn Fn(bytes::Bytes) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Where the cursor is kept: a file, or an object in a bucket (a `cf push`ed
/// instance has an ephemeral disk), given as get and put functions of its
/// JSON bytes.
#[derive(Clone)]
pub enum CursorStore {
    File(PathBuf),
    Object {
        /// For messages, e.g. `s3://bucket/prefix/CFLogs-State/prod/audit-events.cursor.json`.
        name: String,
        get: GetCursor,
        put: PutCursor,
    },
}

impl std::fmt::Debug for CursorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CursorStore::File(p) => write!(f, "File({})", p.display()),
            CursorStore::Object { name, .. } => write!(f, "Object({name})"),
        }
    }
}

impl CursorStore {
    pub async fn load(&self) -> Result<Option<Cursor>, CursorError> {
        match self {
            CursorStore::File(path) => load_cursor(path),
            CursorStore::Object { name, get, .. } => {
                let err = |reason: String| CursorError::Read {
                    path: name.clone(),
                    reason,
                };
                match get().await.map_err(err)? {
                    None => Ok(None),
                    Some(bytes) => parse_cursor(&bytes).map(Some).map_err(err),
                }
            }
        }
    }

    pub async fn store(&self, cursor: &Cursor) -> Result<(), CursorError> {
        match self {
            CursorStore::File(path) => store_cursor(path, cursor),
            CursorStore::Object { name, put, .. } => {
                let bytes = serde_json::to_vec(cursor).expect("cursor serialises");
                put(bytes.into())
                    .await
                    .map_err(|reason| CursorError::Write {
                        path: name.clone(),
                        reason,
                    })
            }
        }
    }
}

fn parse_cursor(bytes: &[u8]) -> Result<Cursor, String> {
    let c: Cursor = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if seconds(&c.created_at).is_none() {
        return Err(format!("created_at {:?} is not a time", c.created_at));
    }
    Ok(c)
}

/// Reads the cursor file; `None` when there is none yet.
pub fn load_cursor(path: &std::path::Path) -> Result<Option<Cursor>, CursorError> {
    let err = |reason: String| CursorError::Read {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => parse_cursor(&bytes).map(Some).map_err(err),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Writes the cursor file atomically: a temporary file, synced, renamed over it.
pub fn store_cursor(path: &std::path::Path, cursor: &Cursor) -> Result<(), CursorError> {
    use std::io::Write;
    let err = |e: std::io::Error| CursorError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&serde_json::to_vec(cursor).expect("cursor serialises"))
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// What the poller did, for the summary and tests.
#[derive(Debug, Default)]
pub struct AuditStatus {
    pub pages: AtomicU64,
    /// Events handed to the router.
    pub events: AtomicU64,
    /// Events of the boundary second read again and skipped.
    pub duplicates_skipped: AtomicU64,
    /// Events Cloud Controller sent that could not be read (logged).
    pub invalid: AtomicU64,
    /// Pages refused for being larger than `--cf-max-response-bytes` (asked
    /// for again in smaller pages).
    pub oversized_pages: AtomicU64,
    /// `pagination.next.href` links not followed: to another origin than the
    /// API's, or not a URL.
    pub refused_links: AtomicU64,
    /// Polls that reached the last page.
    pub polls_completed: AtomicU64,
    /// Times the poller went back to the confirmed cursor because a sink lost records.
    pub rewinds: AtomicU64,
    /// Cursor writes.
    pub cursor_writes: AtomicU64,
    pub errors: AtomicU64,
    /// The confirmed cursor's second (Unix time); 0 before the poller starts.
    pub cursor_unix: AtomicI64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct AuditSnapshot {
    pub pages: u64,
    pub events: u64,
    pub duplicates_skipped: u64,
    pub invalid: u64,
    pub oversized_pages: u64,
    pub refused_links: u64,
    pub polls_completed: u64,
    pub rewinds: u64,
    pub cursor_writes: u64,
    pub errors: u64,
    pub cursor_unix: i64,
}

impl AuditStatus {
    pub fn snapshot(&self) -> AuditSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        AuditSnapshot {
            pages: l(&self.pages),
            events: l(&self.events),
            duplicates_skipped: l(&self.duplicates_skipped),
            invalid: l(&self.invalid),
            oversized_pages: l(&self.oversized_pages),
            refused_links: l(&self.refused_links),
            polls_completed: l(&self.polls_completed),
            rewinds: l(&self.rewinds),
            cursor_writes: l(&self.cursor_writes),
            errors: l(&self.errors),
            cursor_unix: self.cursor_unix.load(Ordering::Relaxed),
        }
    }
}

/// A page handed to the sinks, waiting for them to settle it.
struct Unconfirmed {
    /// Per sink: its counters, its `received` after the hand-off, and its
    /// write-error losses before it.
    marks: Vec<(Arc<SinkStats>, u64, u64)>,
    cursor: Cursor,
    records: u64,
}

enum Settle {
    Done,
    Waiting,
    /// A sink lost records while this page was in it.
    Lost,
}

fn settle(u: &Unconfirmed) -> Settle {
    for (stats, mark, write_errors_before) in &u.marks {
        if stats.dropped_write_error.load(Ordering::Acquire) > *write_errors_before {
            return Settle::Lost;
        }
        let settled = stats.delivered.load(Ordering::Acquire)
            + stats.dead_lettered.load(Ordering::Acquire)
            + stats.dropped_queue_full.load(Ordering::Acquire)
            + stats.dropped_buffer_full.load(Ordering::Acquire)
            + stats.dropped_buffer_error.load(Ordering::Acquire)
            + stats.dropped_write_error.load(Ordering::Acquire);
        if settled < *mark {
            return Settle::Waiting;
        }
    }
    Settle::Done
}

struct Poller {
    cfg: AuditEventsConfig,
    cc: CloudController,
    status: Arc<AuditStatus>,
    /// What has been read (and handed to the router).
    read: Cursor,
    /// What the sinks confirmed (and the cursor file holds).
    confirmed: Cursor,
    unconfirmed: VecDeque<Unconfirmed>,
    /// Events per page asked for: `cfg.per_page`, halved after a page was
    /// too large, back to `cfg.per_page` once a poll reached the last page.
    per_page: u32,
}

impl Poller {
    fn unconfirmed_records(&self) -> u64 {
        self.unconfirmed.iter().map(|u| u.records).sum()
    }

    /// Confirms the pages the sinks settled and writes the newest cursor.
    /// When a sink lost records, reading must start again from the confirmed
    /// cursor: returns false then.
    #[must_use]
    async fn confirm(&mut self) -> bool {
        let mut newest = None;
        while let Some(front) = self.unconfirmed.front() {
            match settle(front) {
                Settle::Done => newest = self.unconfirmed.pop_front().map(|u| u.cursor),
                Settle::Waiting => break,
                Settle::Lost => {
                    self.rewind();
                    tracing::warn!(
                        cursor = %self.confirmed.created_at,
                        "a sink lost records while audit events were in it; reading them again"
                    );
                    return false;
                }
            }
        }
        if let Some(c) = newest
            && c != self.confirmed
        {
            match self.cfg.cursor.store(&c).await {
                Ok(()) => {
                    self.status.cursor_writes.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.status.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "audit events: cannot keep the cursor; a restart would read these events again");
                }
            }
            self.status
                .cursor_unix
                .store(c.second().max(0), Ordering::Relaxed);
            self.confirmed = c;
        }
        true
    }

    fn first_page(&self) -> reqwest::Url {
        let mut url = self.cc.url("/v3/audit_events");
        url.query_pairs_mut()
            .append_pair("order_by", "created_at")
            .append_pair("created_ats[gte]", &self.read.created_at)
            .append_pair("per_page", &self.per_page.to_string());
        url
    }

    /// Reads one page into records, advancing the read cursor. Returns the
    /// records and the next page's URL (an error when it is not one to
    /// follow with the token).
    fn read_page(
        &mut self,
        mut page: serde_json::Value,
    ) -> (
        Vec<crate::record::Record>,
        Result<Option<reqwest::Url>, CcError>,
    ) {
        let next = page
            .pointer("/pagination/next/href")
            .and_then(|v| v.as_str())
            .map(|href| self.cc.check_link(href))
            .transpose();
        let resources = match page.get_mut("resources").map(serde_json::Value::take) {
            Some(serde_json::Value::Array(r)) => r,
            _ => Vec::new(),
        };
        let mut records = Vec::with_capacity(resources.len());
        for event in resources {
            let guid = event
                .get("guid")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let created_at = event
                .get("created_at")
                .and_then(|v| v.as_str())
                .map(str::to_string);
            let (Some(guid), Some(created_at), Some(created)) = (
                guid,
                created_at.clone(),
                created_at.as_deref().and_then(seconds),
            ) else {
                self.status.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::error!(event = %event, "audit event without a guid or a created_at time; skipped");
                continue;
            };
            if self.read.has(created, &guid) {
                self.status
                    .duplicates_skipped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.read.take(&created_at, created, &guid);
            match audit_event_record(event) {
                Ok(r) => records.push(r),
                Err(e) => {
                    self.status.invalid.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "audit event skipped");
                }
            }
        }
        (records, next)
    }

    /// Hands records to the router and notes the marks. False when a sink
    /// turned them away.
    fn hand_off(&mut self, router: &Router, records: Vec<crate::record::Record>) -> bool {
        let n = records.len() as u64;
        let sinks = router.sinks_of(Kind::Api);
        let before: Vec<u64> = sinks
            .iter()
            .map(|(_, s)| s.dropped_write_error.load(Ordering::Acquire))
            .collect();
        let admitted = n == 0 || router.dispatch_records(records);
        self.status.events.fetch_add(n, Ordering::Relaxed);
        let marks = sinks
            .into_iter()
            .zip(before)
            .map(|((_, s), b)| {
                let mark = s.received.load(Ordering::Acquire);
                (s, mark, b)
            })
            .collect();
        self.unconfirmed.push_back(Unconfirmed {
            marks,
            cursor: self.read.clone(),
            records: n,
        });
        admitted
    }

    fn rewind(&mut self) {
        self.unconfirmed.clear();
        self.read = self.confirmed.clone();
        self.status.rewinds.fetch_add(1, Ordering::Relaxed);
    }
}

/// Polls until `shutdown` is cancelled, then waits for the sinks to settle
/// what it handed them (the caller drains the pipeline meanwhile) and
/// writes the cursor.
pub async fn run(
    cfg: AuditEventsConfig,
    cc: CloudController,
    router: Arc<Router>,
    status: Arc<AuditStatus>,
    shutdown: CancellationToken,
) {
    let start = match cfg.cursor.load().await {
        Ok(Some(c)) => c,
        Ok(None) => Cursor::starting(cfg.lookback),
        Err(e) => {
            // Never start over silently (that would skip or repeat a day of
            // events): say so and start from the look-back.
            tracing::error!(error = %e, lookback = ?cfg.lookback, "audit events: starting from the look-back");
            status.errors.fetch_add(1, Ordering::Relaxed);
            Cursor::starting(cfg.lookback)
        }
    };
    tracing::info!(cursor = %start.created_at, "audit events: polling");
    status
        .cursor_unix
        .store(start.second().max(0), Ordering::Relaxed);
    let mut p = Poller {
        cfg,
        cc,
        status,
        read: start.clone(),
        confirmed: start,
        unconfirmed: VecDeque::new(),
        per_page: 0,
    };
    p.per_page = p.cfg.per_page;
    let mut backoff = p.cfg.backoff.clone();
    let router = Some(router);
    'poll: while !shutdown.is_cancelled() {
        let router = router.as_ref().expect("held until shutdown");
        let mut url = p.first_page();
        let mut completed = true;
        loop {
            if shutdown.is_cancelled() {
                break 'poll;
            }
            // `--buffer-when-full block`: wait for room rather than be turned away.
            while router.should_wait(Kind::Api, u64::from(p.cfg.per_page)) {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'poll,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            let page = tokio::select! {
                // A stop wins over an answer that arrived at the same moment.
                biased;
                _ = shutdown.cancelled() => break 'poll,
                page = p.cc.get_json(&url) => page,
            };
            let page = match page {
                Ok(page) => {
                    backoff.reset();
                    page
                }
                // Nothing of the page was taken: ask again from the read
                // cursor in pages half as large. At one event a page, the
                // event itself is too large: retry with backoff, saying so,
                // until the operator raises the cap (never skip it silently).
                Err(e) if e.is_too_large() => {
                    p.status.oversized_pages.fetch_add(1, Ordering::Relaxed);
                    p.status.errors.fetch_add(1, Ordering::Relaxed);
                    if p.per_page > 1 {
                        p.per_page /= 2;
                        tracing::error!(error = %e, per_page = p.per_page, "audit events: page too large; reading it again in smaller pages");
                        continue 'poll;
                    }
                    let delay = backoff.next_delay();
                    tracing::error!(error = %e, ?delay, cursor = %p.read.created_at, "audit events: a single event is larger than --cf-max-response-bytes; raise it (retrying)");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'poll,
                        _ = tokio::time::sleep(delay) => continue 'poll,
                    }
                }
                Err(e) => {
                    p.status.errors.fetch_add(1, Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    log_error(&e, delay);
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'poll,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            p.status.pages.fetch_add(1, Ordering::Relaxed);
            let (records, next) = p.read_page(page);
            if !p.hand_off(router, records) {
                tracing::warn!(
                    "a sink's queue turned audit events away; reading them again after a pause"
                );
                p.rewind();
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => break 'poll,
                    _ = tokio::time::sleep(delay) => continue 'poll,
                }
            }
            if !p.confirm().await {
                continue 'poll;
            }
            // Backpressure: wait for the sinks before reading further ahead.
            while p.unconfirmed_records() > p.cfg.max_unconfirmed {
                tokio::select! {
                    _ = shutdown.cancelled() => break 'poll,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                if !p.confirm().await {
                    continue 'poll;
                }
            }
            match next {
                Ok(Some(n)) => url = n,
                Ok(None) => break,
                Err(e) => {
                    // The page's events are taken; the next poll starts
                    // after them, from the API's own URL.
                    p.status.refused_links.fetch_add(1, Ordering::Relaxed);
                    p.status.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "audit events: pagination.next.href refused; the next poll continues after this page");
                    completed = false;
                    break;
                }
            }
        }
        if completed {
            p.status.polls_completed.fetch_add(1, Ordering::Relaxed);
        }
        p.per_page = p.cfg.per_page;
        let until = tokio::time::Instant::now() + p.cfg.poll_interval;
        while tokio::time::Instant::now() < until {
            tokio::select! {
                _ = shutdown.cancelled() => break 'poll,
                _ = tokio::time::sleep(Duration::from_millis(200).min(p.cfg.poll_interval)) => {}
            }
            if !p.confirm().await {
                continue 'poll;
            }
        }
    }
    // Let go of the router so the sinks can drain, then confirm what they settle.
    drop(router);
    let deadline = tokio::time::Instant::now() + p.cfg.shutdown_timeout;
    loop {
        let _ = p.confirm().await;
        if p.unconfirmed.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !p.unconfirmed.is_empty() {
        tracing::warn!(
            records = p.unconfirmed_records(),
            cursor = %p.confirmed.created_at,
            "audit events: sinks did not confirm the last events before the deadline; they will be read again"
        );
    }
}

fn log_error(e: &CcError, delay: Duration) {
    tracing::warn!(error = %e, ?delay, "audit events: Cloud Controller request failed; retrying");
}

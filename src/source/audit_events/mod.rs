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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::cloud_controller::CloudController;
use crate::backoff::Backoff;
use crate::route::Router;

mod cursor;
mod poller;

pub use cursor::{Cursor, CursorError, CursorStore, load_cursor};
use poller::Poller;

/// Cloud Controller's largest page.
pub(crate) const MAX_PER_PAGE: u32 = 5000;
/// Cloud Controller keeps audit events this long (its default cutoff).
pub(crate) const MAX_LOOKBACK: Duration = Duration::from_secs(31 * 24 * 3600);

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
    let mut poller = Poller::start(cfg, cc, status).await;
    poller.poll_until(&router, &shutdown).await;
    // Let go of the router so the sinks can drain, then confirm what they settle.
    drop(router);
    poller.settle_at_shutdown().await;
}

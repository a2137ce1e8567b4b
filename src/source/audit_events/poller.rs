//! The poller: pages read into records, handed to the router, and
//! confirmed once the sinks settled them (the module doc of [`super`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::cursor::{Cursor, seconds};
use super::{AuditEventsConfig, AuditStatus};
use crate::backoff::Backoff;
use crate::record::{Kind, audit_event_record};
use crate::route::Router;
use crate::sink::SinkStats;
use crate::source::cloud_controller::{CcError, CloudController};

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

pub(super) struct Poller {
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

/// How a poll ended before its last page.
enum Interrupted {
    /// `shutdown` was cancelled.
    Shutdown,
    /// Read again from the read cursor (a page too large, a page turned
    /// away, a sink that lost records).
    Restart,
}

/// Sleeps for `delay`, or until `shutdown` is cancelled.
async fn pause(shutdown: &CancellationToken, delay: Duration) -> Result<(), Interrupted> {
    tokio::select! {
        _ = shutdown.cancelled() => Err(Interrupted::Shutdown),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

impl Poller {
    /// A poller from the stored cursor, or from the look-back when there is
    /// none (or it cannot be read: said, never silently).
    pub(super) async fn start(
        cfg: AuditEventsConfig,
        cc: CloudController,
        status: Arc<AuditStatus>,
    ) -> Self {
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
        let per_page = cfg.per_page;
        Poller {
            cfg,
            cc,
            status,
            read: start.clone(),
            confirmed: start,
            unconfirmed: VecDeque::new(),
            per_page,
        }
    }

    /// Polls, then waits the poll interval confirming what the sinks
    /// settle, until `shutdown` is cancelled.
    pub(super) async fn poll_until(&mut self, router: &Router, shutdown: &CancellationToken) {
        let mut backoff = self.cfg.backoff.clone();
        while !shutdown.is_cancelled() {
            let completed = match self.poll(router, &mut backoff, shutdown).await {
                Ok(completed) => completed,
                Err(Interrupted::Restart) => continue,
                Err(Interrupted::Shutdown) => break,
            };
            if completed {
                self.status.polls_completed.fetch_add(1, Ordering::Relaxed);
            }
            self.per_page = self.cfg.per_page;
            if let Err(Interrupted::Shutdown) = self.wait_interval(shutdown).await {
                break;
            }
        }
    }

    /// One poll: the pages from the read cursor on, handed to the router.
    /// `Ok(true)` when it reached the last page, `Ok(false)` when a
    /// `pagination.next.href` it would not follow ended it.
    async fn poll(
        &mut self,
        router: &Router,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<bool, Interrupted> {
        let mut url = self.first_page();
        loop {
            if shutdown.is_cancelled() {
                return Err(Interrupted::Shutdown);
            }
            // `--buffer-when-full block`: wait for room rather than be turned away.
            while router.should_wait(Kind::Api, u64::from(self.cfg.per_page)) {
                pause(shutdown, Duration::from_millis(200)).await?;
            }
            let Some(page) = self.fetch(&url, backoff, shutdown).await? else {
                continue;
            };
            self.status.pages.fetch_add(1, Ordering::Relaxed);
            let (records, next) = self.read_page(page);
            if !self.hand_off(router, records) {
                tracing::warn!(
                    "a sink's queue turned audit events away; reading them again after a pause"
                );
                self.rewind();
                pause(shutdown, backoff.next_delay()).await?;
                return Err(Interrupted::Restart);
            }
            if !self.confirm().await {
                return Err(Interrupted::Restart);
            }
            // Backpressure: wait for the sinks before reading further ahead.
            while self.unconfirmed_records() > self.cfg.max_unconfirmed {
                pause(shutdown, Duration::from_millis(50)).await?;
                if !self.confirm().await {
                    return Err(Interrupted::Restart);
                }
            }
            match next {
                Ok(Some(n)) => url = n,
                Ok(None) => return Ok(true),
                Err(e) => {
                    // The page's events are taken; the next poll starts
                    // after them, from the API's own URL.
                    self.status.refused_links.fetch_add(1, Ordering::Relaxed);
                    self.status.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "audit events: pagination.next.href refused; the next poll continues after this page");
                    return Ok(false);
                }
            }
        }
    }

    /// The page at `url`; `Ok(None)` when the request failed and is to be
    /// made again (after a backoff pause).
    async fn fetch(
        &mut self,
        url: &reqwest::Url,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<Option<serde_json::Value>, Interrupted> {
        let page = tokio::select! {
            // A stop wins over an answer that arrived at the same moment.
            biased;
            _ = shutdown.cancelled() => return Err(Interrupted::Shutdown),
            page = self.cc.get_json(url) => page,
        };
        match page {
            Ok(page) => {
                backoff.reset();
                Ok(Some(page))
            }
            // Nothing of the page was taken: ask again from the read
            // cursor in pages half as large. At one event a page, the
            // event itself is too large: retry with backoff, saying so,
            // until the operator raises the cap (never skip it silently).
            Err(e) if e.is_too_large() => {
                self.status.oversized_pages.fetch_add(1, Ordering::Relaxed);
                self.status.errors.fetch_add(1, Ordering::Relaxed);
                if self.per_page > 1 {
                    self.per_page /= 2;
                    tracing::error!(error = %e, per_page = self.per_page, "audit events: page too large; reading it again in smaller pages");
                    return Err(Interrupted::Restart);
                }
                let delay = backoff.next_delay();
                tracing::error!(error = %e, ?delay, cursor = %self.read.created_at, "audit events: a single event is larger than --cf-max-response-bytes; raise it (retrying)");
                pause(shutdown, delay).await?;
                Err(Interrupted::Restart)
            }
            Err(e) => {
                self.status.errors.fetch_add(1, Ordering::Relaxed);
                let delay = backoff.next_delay();
                log_error(&e, delay);
                pause(shutdown, delay).await?;
                Ok(None)
            }
        }
    }

    /// Waits the poll interval, confirming what the sinks settle meanwhile.
    async fn wait_interval(&mut self, shutdown: &CancellationToken) -> Result<(), Interrupted> {
        let until = tokio::time::Instant::now() + self.cfg.poll_interval;
        while tokio::time::Instant::now() < until {
            pause(
                shutdown,
                Duration::from_millis(200).min(self.cfg.poll_interval),
            )
            .await?;
            if !self.confirm().await {
                return Err(Interrupted::Restart);
            }
        }
        Ok(())
    }

    /// After the last poll (the router let go, the sinks draining): confirms
    /// what the sinks settle until all is or `shutdown_timeout` has passed.
    pub(super) async fn settle_at_shutdown(&mut self) {
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_timeout;
        loop {
            let _ = self.confirm().await;
            if self.unconfirmed.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.unconfirmed.is_empty() {
            tracing::warn!(
                records = self.unconfirmed_records(),
                cursor = %self.confirmed.created_at,
                "audit events: sinks did not confirm the last events before the deadline; they will be read again"
            );
        }
    }
}

fn log_error(e: &CcError, delay: Duration) {
    tracing::warn!(error = %e, ?delay, "audit events: Cloud Controller request failed; retrying");
}

//! What every source reports about its connection (for the summary,
//! `/health` and `/metrics`), and the reconnect loop they share.
//!
//! The loop's policy: after a stream ends, wait a jittered exponential
//! backoff (100 ms doubling to 30 s by default, [`Backoff`]) that resets
//! once a stream has delivered data; a source may ask for a longer wait
//! (the RLP's stream limit) or for none (the gateway's routine `closing`
//! after a stream that delivered). Nothing here spins: every attempt that
//! delivered nothing is followed by a backoff step.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Why a stream ended (or never started), for the disconnect counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    /// The server ended the stream as it routinely does (the gateway's
    /// `closing` event after its stream timeout; an RLP stream that ended
    /// without error).
    Closing,
    /// The stream ended without saying why.
    Ended,
    /// Nothing (not even a heartbeat) arrived for too long.
    Idle,
    /// The server could not be reached, or the TLS handshake failed.
    Connect,
    /// The server refused the subscription (bad token, bad request, stream
    /// limit, unavailable).
    Refused,
    /// The stream broke in the middle.
    Error,
}

impl Disconnect {
    const ALL: [Disconnect; 6] = [
        Disconnect::Closing,
        Disconnect::Ended,
        Disconnect::Idle,
        Disconnect::Connect,
        Disconnect::Refused,
        Disconnect::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Disconnect::Closing => "closing",
            Disconnect::Ended => "ended",
            Disconnect::Idle => "idle",
            Disconnect::Connect => "connect",
            Disconnect::Refused => "refused",
            Disconnect::Error => "error",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A source's connection health, shared with whoever reports it.
#[derive(Debug, Default)]
pub struct SourceStatus {
    /// Connection attempts, successful or not.
    pub attempts: AtomicU64,
    /// Streams opened, counted when they open (a run with one long stream
    /// says 1, not 0).
    pub connects: AtomicU64,
    /// Attempts and streams that ended in an error.
    pub failures: AtomicU64,
    disconnects: [AtomicU64; 6],
    /// The wait before the next attempt, in milliseconds (0 while connected
    /// or reconnecting at once).
    pub backoff_ms: AtomicU64,
    /// Envelopes received.
    pub envelopes: AtomicU64,
    /// Wall-clock time of the last batch received, Unix milliseconds (0: never).
    pub last_envelope_unix_ms: AtomicI64,
    /// What could not be decoded and was skipped while the stream went on:
    /// gateway frames (a batch that is not valid JSON, or a line or event
    /// larger than the frame limit) and RLP envelopes (one count each).
    pub malformed_frames: AtomicU64,
    /// UAA tokens fetched (gateway).
    pub token_renewals: AtomicU64,
    /// The error of the last failed attempt, cleared when a stream opens
    /// again: `Some` only while the source is failing.
    pub last_error: Mutex<Option<String>>,
    /// The last error the source recovered from (moved here from
    /// `last_error` when a stream opened after it).
    pub previous_error: Mutex<Option<String>>,
    /// Rate-limits the source's warning about skipped input.
    pub skip_log: Mutex<SkipLog>,
    /// Attempts since a stream last opened (for the recovery log line).
    attempts_since_open: AtomicU64,
    /// Whether a stream is open now, and since when it is (or is not):
    /// `None` before the first change. Tokio's clock, so tests can pause it.
    connection: Mutex<(bool, Option<tokio::time::Instant>)>,
}

/// A copy of [`SourceStatus`] for the summary and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceSnapshot {
    pub attempts: u64,
    pub connects: u64,
    pub failures: u64,
    /// Stream ends by [`Disconnect`] reason.
    pub disconnects: BTreeMap<&'static str, u64>,
    pub backoff_ms: u64,
    pub envelopes: u64,
    pub last_envelope_unix_ms: Option<i64>,
    pub malformed_frames: u64,
    pub token_renewals: u64,
    pub last_error: Option<String>,
    pub previous_error: Option<String>,
}

impl SourceStatus {
    pub fn snapshot(&self) -> SourceSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let last = self.last_envelope_unix_ms.load(Ordering::Relaxed);
        SourceSnapshot {
            attempts: load(&self.attempts),
            connects: load(&self.connects),
            failures: load(&self.failures),
            disconnects: Disconnect::ALL
                .iter()
                .map(|d| (d.as_str(), self.disconnects(*d)))
                .collect(),
            backoff_ms: load(&self.backoff_ms),
            envelopes: load(&self.envelopes),
            last_envelope_unix_ms: (last != 0).then_some(last),
            malformed_frames: load(&self.malformed_frames),
            token_renewals: load(&self.token_renewals),
            last_error: self.last_error.lock().expect("status lock").clone(),
            previous_error: self.previous_error.lock().expect("status lock").clone(),
        }
    }

    /// A source calls this when a stream has opened (`target` names where
    /// from, for the log): counts the connect, and after a failure clears
    /// `last_error` (keeping it as `previous_error`) and logs one line
    /// `reconnected to <target> after <n> attempts`.
    pub fn opened(&self, source: &'static str, target: &str) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        self.set_connected(true);
        let attempts = self.attempts_since_open.swap(0, Ordering::Relaxed);
        let recovered = self.last_error.lock().expect("status lock").take();
        if let Some(error) = recovered {
            tracing::info!(
                source,
                attempts,
                previous_error = %error,
                "reconnected to {target} after {attempts} attempt{}",
                if attempts == 1 { "" } else { "s" }
            );
            *self.previous_error.lock().expect("status lock") = Some(error);
        }
    }

    /// The reconnect loop calls this when a stream ends.
    pub fn set_connected(&self, connected: bool) {
        let mut c = self.connection.lock().expect("status lock");
        if c.0 != connected || c.1.is_none() {
            *c = (connected, Some(tokio::time::Instant::now()));
        }
    }

    /// Whether a stream is open, and for how long it has been (or not been);
    /// `None` before the first stream opened or attempt ended.
    pub fn connection(&self) -> (bool, Option<Duration>) {
        let c = self.connection.lock().expect("status lock");
        (c.0, c.1.map(|t| t.elapsed()))
    }

    pub fn disconnects(&self, reason: Disconnect) -> u64 {
        self.disconnects[reason.index()].load(Ordering::Relaxed)
    }

    /// A batch of `n` envelopes arrived.
    pub fn received(&self, n: usize) {
        self.envelopes.fetch_add(n as u64, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.last_envelope_unix_ms.store(now, Ordering::Relaxed);
    }
}

/// Rate-limits a warning about skipped input to one per
/// [`SKIP_LOG_INTERVAL`] per source, counting what it did not log.
#[derive(Debug, Default)]
pub struct SkipLog {
    last: Option<tokio::time::Instant>,
    since: u64,
}

/// At most one warning about skipped input per this interval.
pub const SKIP_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl SkipLog {
    /// Notes one skip; `Some(n)` when a warning is due now, `n` being the
    /// skips since the last warning (this one included).
    pub fn note(&mut self) -> Option<u64> {
        self.since += 1;
        if self.last.is_some_and(|at| at.elapsed() < SKIP_LOG_INTERVAL) {
            return None;
        }
        self.last = Some(tokio::time::Instant::now());
        Some(std::mem::take(&mut self.since))
    }
}

/// How one attempt (connect, then stream until it ends) went.
#[derive(Debug)]
pub struct Attempt {
    /// A stream was opened.
    pub connected: bool,
    /// Envelopes it delivered.
    pub envelopes: u64,
    pub end: Disconnect,
    /// What went wrong, in words for the operator; `None` for a routine end.
    pub error: Option<String>,
    /// Wait at least this long before the next attempt.
    pub min_delay: Option<Duration>,
    /// Reconnect at once (only for a routine end after a productive stream).
    pub immediate: bool,
}

impl Attempt {
    /// An attempt that failed before a stream opened.
    pub fn failed(end: Disconnect, error: String) -> Self {
        Self {
            connected: false,
            envelopes: 0,
            end,
            error: Some(error),
            min_delay: None,
            immediate: false,
        }
    }
}

/// Runs `attempt` until `shutdown` is cancelled, with the policy above,
/// keeping `status` current. `name` labels the log lines.
pub async fn reconnect_loop<F, Fut>(
    name: &'static str,
    mut backoff: Backoff,
    status: &SourceStatus,
    shutdown: &CancellationToken,
    mut attempt: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    loop {
        status.attempts.fetch_add(1, Ordering::Relaxed);
        status.attempts_since_open.fetch_add(1, Ordering::Relaxed);
        let a = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            a = attempt() => a,
        };
        status.set_connected(false);
        status.disconnects[a.end.index()].fetch_add(1, Ordering::Relaxed);
        if a.envelopes > 0 {
            backoff.reset();
        }
        match &a.error {
            None => tracing::info!(
                source = name,
                reason = a.end.as_str(),
                envelopes = a.envelopes,
                "stream ended; reconnecting"
            ),
            Some(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(source = name, error = %e, envelopes = a.envelopes, "stream failed; reconnecting");
                *status.last_error.lock().expect("status lock") = Some(e.clone());
            }
        }
        if a.immediate && a.error.is_none() {
            status.backoff_ms.store(0, Ordering::Relaxed);
            continue;
        }
        let mut delay = backoff.next_delay();
        if let Some(min) = a.min_delay {
            delay = delay.max(min);
        }
        status
            .backoff_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        status.backoff_ms.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts that all fail at once are spaced by the backoff steps, and a
    /// productive stream resets the step.
    #[tokio::test(start_paused = true)]
    async fn failing_attempts_never_spin_and_data_resets_the_backoff() {
        let status = SourceStatus::default();
        let stop = CancellationToken::new();
        let times = std::cell::RefCell::new(Vec::new());
        let start = tokio::time::Instant::now();
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let run = reconnect_loop("test", backoff, &status, &stop, || {
            let n = times.borrow().len();
            times.borrow_mut().push(start.elapsed());
            if n == 7 {
                stop.cancel();
            }
            let status = &status;
            async move {
                if n == 4 {
                    status.opened("test", "test-target");
                    Attempt {
                        connected: true,
                        envelopes: 10,
                        end: Disconnect::Ended,
                        error: None,
                        min_delay: None,
                        immediate: false,
                    }
                } else {
                    Attempt::failed(Disconnect::Connect, "refused".into())
                }
            }
        });
        run.await;
        let times = times.into_inner();
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // Steps 100, 200, 400, 800 ms; after the productive attempt 4, back to 100, 200.
        let steps = [100, 200, 400, 800, 100, 200, 400];
        for (gap, step) in gaps.iter().zip(steps) {
            let step = Duration::from_millis(step);
            assert!(*gap >= step / 2 && *gap <= step, "{gaps:?}");
        }
        let s = status.snapshot();
        assert_eq!(s.attempts, 8);
        assert_eq!(s.connects, 1);
        assert_eq!(s.failures, 6, "the cancelled eighth attempt is not counted");
        assert_eq!(s.disconnects["connect"], 6);
        assert_eq!(s.disconnects["ended"], 1);
        assert_eq!(s.last_error.as_deref(), Some("refused"));
        assert_eq!(
            s.previous_error.as_deref(),
            Some("refused"),
            "the failures before the productive attempt"
        );
    }

    /// A stream that opens counts as a connect at once, and clears the
    /// error the source recovered from.
    #[tokio::test(start_paused = true)]
    async fn a_stream_counts_when_it_opens_and_clears_the_error_it_recovered_from() {
        let status = SourceStatus::default();
        *status.last_error.lock().unwrap() = Some("refused".into());
        status.attempts_since_open.store(3, Ordering::Relaxed);
        status.opened("test", "rlp:8082");
        let s = status.snapshot();
        assert_eq!(s.connects, 1, "counted while the stream is open");
        assert_eq!(s.last_error, None);
        assert_eq!(s.previous_error.as_deref(), Some("refused"));
        assert!(status.connection().0);
    }
}

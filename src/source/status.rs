//! The reconnect loop every source shares, keeping the source's
//! [`SourceStatus`] (declared with the other counters in [`crate::counters`]
//! and re-exported here) current for the summary, `/health` and `/metrics`.
//!
//! The loop's policy: after a stream ends, wait a jittered exponential
//! backoff (100 ms doubling to 30 s by default, [`Backoff`]) that resets
//! once a stream has delivered data; a source may ask for a longer wait
//! (the RLP's stream limit) or for none (the gateway's routine `closing`
//! after a stream that delivered). Nothing here spins: every attempt that
//! delivered nothing is followed by a backoff step.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
pub(crate) use crate::counters::SKIP_LOG_INTERVAL;
pub use crate::counters::{Disconnect, SkipLog, SourceSnapshot, SourceStatus};

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
    pub(crate) min_delay: Option<Duration>,
    /// Reconnect at once (only for a routine end after a productive stream).
    pub(crate) immediate: bool,
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
pub(crate) async fn reconnect_loop<F, Fut>(
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
        status.attempt_started();
        let a = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            a = attempt() => a,
        };
        status.ended(a.end);
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

//! Exponential backoff with jitter: the one retry and reconnect pacing every
//! stage shares (sources reconnecting, sinks retrying, the digest and
//! notification tasks). A floor module: it imports nothing from the crate.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter, for reconnect and retry loops.
///
/// The step doubles from `initial` up to `max`. With [`Backoff::new`] each
/// delay is drawn from the upper half of the step (`step/2 ..= step`): the
/// lower bound keeps a reconnect loop that fails at once from spinning, the
/// jitter keeps many instances from reconnecting in lockstep after an RLP
/// restart. With [`Backoff::full_jitter`] it is drawn from `1 ms ..= step`,
/// which spreads retries of many senders against one receiver best (AWS's
/// "full jitter", as Vector's sinks use).
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    full_jitter: bool,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial,
            full_jitter: false,
        }
    }

    pub(crate) fn full_jitter(initial: Duration, max: Duration) -> Self {
        Self {
            full_jitter: true,
            ..Self::new(initial, max)
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let low = if self.full_jitter {
            Duration::from_millis(1).min(step)
        } else {
            step / 2
        };
        rand::rng().random_range(low..=step)
    }

    /// Back to the initial delay, after an attempt that worked.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let bounds = [100, 200, 400, 800, 800, 800];
        for step in bounds {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn full_jitter_draws_from_one_millisecond_up_to_the_step() {
        let step = Duration::from_millis(400);
        let mut b = Backoff::full_jitter(step, step);
        let draws: Vec<Duration> = (0..1000).map(|_| b.next_delay()).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_millis(1) && *d <= step)
        );
        // Equal jitter never goes below step/2; full jitter does (P(miss) ≈ 0.75^1000).
        assert!(draws.iter().any(|d| *d < Duration::from_millis(100)));
    }
}

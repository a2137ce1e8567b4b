//! Sources: where envelopes come from.
//!
//! - [`rlp`]: the Reverse Log Proxy's gRPC `BatchedReceiver`, over mutual TLS.
//! - [`emulator`]: an in-process Loggregator egress server for the demo, the
//!   tests and the benchmark.
//!
//! Every source reconnects forever with [`Backoff`] and stops when its
//! shutdown token is cancelled.

pub mod emulator;
pub mod rlp;

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter, for reconnect loops.
///
/// Each delay is drawn uniformly from the upper half of the current step
/// (`step/2 ..= step`), and the step doubles up to `max`. The lower bound
/// keeps a loop that fails at once from spinning; the jitter keeps many
/// instances from reconnecting in lockstep after an RLP restart.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=step - half)
    }

    /// Back to the initial delay, after an attempt that worked.
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(250), Duration::from_secs(30))
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
}

//! Options of the correlator (issue 22): how far apart the halves of one
//! action may be, how long a half waits for the others, and how many
//! actions are held at most ([`crate::route::CorrelateConfig`]).

use std::time::Duration;

use clap::Args;

use crate::route::CorrelateConfig;

/// The longest `--correlate-window` and `--correlate-hold` taken: what is
/// held is in memory only, and a restart loses it.
const MAX_WINDOW: Duration = Duration::from_secs(600);
const MAX_HOLD: Duration = Duration::from_secs(3600);
const MAX_ENTRIES: usize = 10_000_000;

#[derive(Debug, Args)]
pub struct CorrelateArgs {
    /// How far apart (by their own times) the firehose line, audit event and security event of one action may be to merge into one api record (`500ms`, `5s`, `1m`).
    #[arg(long, env = "CORRELATE_WINDOW", default_value = "5s")]
    pub(crate) correlate_window: String,
    /// How long an api record waits for the other halves of its action before it leaves with what it has (`10s`, `2m`); `0` turns the correlator off (every source's record leaves alone, at once). To merge /v3/audit_events, make it longer than --audit-poll-interval.
    #[arg(long, env = "CORRELATE_HOLD", default_value = "10s")]
    pub(crate) correlate_hold: String,
    /// Actions held at most; one more sends the oldest out before its hold (counted, never lost).
    #[arg(long, env = "CORRELATE_MAX_ENTRIES", default_value_t = 50_000)]
    pub(crate) correlate_max_entries: usize,
}

/// `250ms`, or what [`super::audit::parse_duration`] takes (`5s`, `2m`, plain seconds).
fn duration(text: &str) -> Option<Duration> {
    match text.trim().strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => super::audit::parse_duration(text),
    }
}

impl CorrelateArgs {
    /// The correlator's bounds, problems added to `errors`.
    pub(crate) fn settings(&self, errors: &mut Vec<String>) -> CorrelateConfig {
        let mut cfg = CorrelateConfig::default();
        let mut read = |name: &str, env: &str, text: &str, max: Duration| match duration(text) {
            Some(d) if d <= max => Some(d),
            Some(_) => {
                errors.push(format!(
                    "--{name} ({env}) {text:?} is longer than {}s",
                    max.as_secs()
                ));
                None
            }
            None => {
                errors.push(format!(
                    "--{name} ({env}) {text:?} is not a duration (`500ms`, `5s`, `2m`)"
                ));
                None
            }
        };
        if let Some(w) = read(
            "correlate-window",
            "CORRELATE_WINDOW",
            &self.correlate_window,
            MAX_WINDOW,
        ) {
            cfg.window = w;
        }
        if let Some(h) = read(
            "correlate-hold",
            "CORRELATE_HOLD",
            &self.correlate_hold,
            MAX_HOLD,
        ) {
            cfg.hold = h;
        }
        if !(1..=MAX_ENTRIES).contains(&self.correlate_max_entries) {
            errors.push(format!(
                "--correlate-max-entries (CORRELATE_MAX_ENTRIES) must be from 1 to {MAX_ENTRIES}"
            ));
        }
        cfg.max_entries = self.correlate_max_entries;
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(window: &str, hold: &str, max: usize) -> CorrelateArgs {
        CorrelateArgs {
            correlate_window: window.into(),
            correlate_hold: hold.into(),
            correlate_max_entries: max,
        }
    }

    #[test]
    fn durations_are_read_and_bounded() {
        let mut errors = Vec::new();
        let c = args("500ms", "2m", 7).settings(&mut errors);
        assert_eq!(errors, [] as [String; 0]);
        assert_eq!(
            c,
            CorrelateConfig {
                window: Duration::from_millis(500),
                hold: Duration::from_secs(120),
                max_entries: 7
            }
        );
        assert!(args("5s", "0", 1).settings(&mut errors).hold.is_zero());
        assert!(errors.is_empty());
        args("soon", "2h", 0).settings(&mut errors);
        assert_eq!(
            errors,
            [
                "--correlate-window (CORRELATE_WINDOW) \"soon\" is not a duration (`500ms`, `5s`, `2m`)",
                "--correlate-hold (CORRELATE_HOLD) \"2h\" is longer than 3600s",
                "--correlate-max-entries (CORRELATE_MAX_ENTRIES) must be from 1 to 10000000",
            ]
        );
    }
}

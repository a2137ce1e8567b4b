//! Counters declared once: `counters!` turns one list of counters (field,
//! kind, metric name, help, optional label) into the struct of atomics a
//! stage bumps, the snapshot the summary serializes, the copy between them
//! ([`load`](SourceStatus::load)), the sum of two snapshots (`AddAssign`)
//! and the table [`Metric`] that `/metrics` ([`crate::telemetry`]) and the
//! alerts iterate. A counter added to a list shows everywhere at once.
//!
//! It also holds [`SourceStatus`], the counters every source keeps, so that
//! [`crate::stats`] and the readers need not import a source to read them;
//! the reconnect loop that keeps them is in `source::status`.
//!
//! A floor module: it imports no stage.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// How `/metrics` types a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only grows (`_total` is added to its name).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One value of a snapshot `S` as `/metrics` shows it. Consecutive entries
/// of one name are one family, told apart by their `label`.
#[derive(Debug)]
pub struct Metric<S> {
    /// The family's name, without the `cf_nozzle_` prefix and `_total`.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
    /// This entry's own label in its family, e.g. `("reason", "queue_full")`.
    pub label: Option<(&'static str, &'static str)>,
    /// Reads the value from a snapshot.
    pub value: fn(&S) -> u64,
}

impl<S> Metric<S> {
    /// A counter without a label of its own.
    pub const fn counter(name: &'static str, help: &'static str, value: fn(&S) -> u64) -> Self {
        Self {
            name,
            help,
            kind: MetricKind::Counter,
            label: None,
            value,
        }
    }

    /// A counter labelled `label` (key, value) in its family.
    pub const fn labelled(
        name: &'static str,
        help: &'static str,
        label: (&'static str, &'static str),
        value: fn(&S) -> u64,
    ) -> Self {
        Self {
            label: Some(label),
            ..Self::counter(name, help, value)
        }
    }
}

/// The sum of the values in the family `name` of `metrics`, read from `snap`
/// (e.g. a sink's drops over every reason).
pub(crate) fn family_sum<S>(metrics: &[Metric<S>], snap: &S, name: &str) -> u64 {
    metrics
        .iter()
        .filter(|m| m.name == name)
        .map(|m| (m.value)(snap))
        .sum()
}

/// Declares counters once. Given
///
/// ```text
/// counters! {
///     /// docs of the struct of atomics
///     pub struct Stats {
///         /// docs of the counter
///         field: Counter("metric_name", "Help text.", "label" = "value"),
///         other: Gauge("other_metric", "Help text."),
///     }
///     extra {
///         // fields that are not counters, each with an optional initial
///         // value (else its `Default`)
///         pub more: SomeType = SomeType::new(),
///     }
///     #[derive(Clone, Debug, Default, serde::Serialize)]
///     pub struct Snapshot {
///         // snapshot fields before the counters
///     }
///     then {
///         // snapshot fields after the counters
///     }
/// }
/// ```
///
/// it writes `Stats` (a `pub AtomicU64` per counter, then the extras) with
/// `Default`; `Stats::load()`, a `Snapshot` with every counter read now and
/// its own fields at their defaults; `Snapshot` (its fields, a `pub u64` per
/// counter, then the `then` fields); `Snapshot::METRICS`, the counters in
/// `/metrics` order; and `AddAssign<&Snapshot>` adding the counters.
macro_rules! counters {
    (
        $(#[$attr:meta])*
        $vis:vis struct $stats:ident {
            $(
                $(#[$cattr:meta])*
                $field:ident: $kind:ident($name:literal, $help:literal $(, $lkey:literal = $lval:literal)?)
            ),* $(,)?
        }
        $(extra {
            $(
                $(#[$xattr:meta])*
                $xvis:vis $xfield:ident: $xty:ty $(= $xinit:expr)?
            ),* $(,)?
        })?
        $(#[$sattr:meta])*
        pub struct $snap:ident {
            $(
                $(#[$hattr:meta])*
                $hvis:vis $hfield:ident: $hty:ty
            ),* $(,)?
        }
        $(then {
            $(
                $(#[$tattr:meta])*
                $tvis:vis $tfield:ident: $tty:ty
            ),* $(,)?
        })?
    ) => {
        $(#[$attr])*
        $vis struct $stats {
            $( $(#[$cattr])* pub $field: ::std::sync::atomic::AtomicU64, )*
            $($( $(#[$xattr])* $xvis $xfield: $xty, )*)?
        }

        impl ::std::default::Default for $stats {
            fn default() -> Self {
                Self {
                    $( $field: ::std::sync::atomic::AtomicU64::new(0), )*
                    $($( $xfield: $crate::counters::or_default!($($xinit)?), )*)?
                }
            }
        }

        impl $stats {
            /// Every counter, read now; the snapshot's other fields are
            /// left at their defaults.
            #[allow(clippy::needless_update)]
            pub fn load(&self) -> $snap {
                $snap {
                    $( $field: self.$field.load(::std::sync::atomic::Ordering::Relaxed), )*
                    ..::std::default::Default::default()
                }
            }
        }

        $(#[$sattr])*
        pub struct $snap {
            $( $(#[$hattr])* $hvis $hfield: $hty, )*
            $( $(#[$cattr])* pub $field: u64, )*
            $($( $(#[$tattr])* $tvis $tfield: $tty, )*)?
        }

        impl $snap {
            /// The counters as `/metrics` shows them, in its order.
            pub const METRICS: &'static [$crate::counters::Metric<$snap>] = &[$(
                $crate::counters::Metric {
                    name: $name,
                    help: $help,
                    kind: $crate::counters::MetricKind::$kind,
                    label: $crate::counters::label!($($lkey = $lval)?),
                    value: |s: &$snap| s.$field,
                },
            )*];
        }

        impl ::std::ops::AddAssign<&$snap> for $snap {
            /// Adds `other`'s counters (its other fields are not added).
            fn add_assign(&mut self, other: &$snap) {
                $( self.$field += other.$field; )*
            }
        }
    };
}
pub(crate) use counters;

/// `Default::default()`, or the expression given.
macro_rules! or_default {
    () => {
        ::std::default::Default::default()
    };
    ($init:expr) => {
        $init
    };
}
pub(crate) use or_default;

/// `None`, or the label given.
macro_rules! label {
    () => {
        None
    };
    ($key:literal = $value:literal) => {
        Some(($key, $value))
    };
}
pub(crate) use label;

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

counters! {
    /// A source's connection health, shared with whoever reports it (the
    /// summary, `/health`, `/metrics`, the alerts).
    #[derive(Debug)]
    pub struct SourceStatus {
        /// Connection attempts, successful or not.
        attempts: Counter("source_attempts", "Connection attempts."),
        /// Streams opened, counted when they open (a run with one long stream
        /// says 1, not 0).
        connects: Counter("source_connects", "Streams opened."),
        /// Attempts and streams that ended in an error.
        failures: Counter("source_failures", "Attempts and streams that ended in an error."),
        /// Envelopes received.
        envelopes: Counter("source_envelopes", "Envelopes the source received."),
        /// What could not be decoded and was skipped while the stream went on:
        /// gateway frames (a batch that is not valid JSON, or a line or event
        /// larger than the frame limit) and RLP envelopes (one count each).
        malformed_frames: Counter(
            "source_malformed_frames",
            "What a source skipped while its stream went on: RLP envelopes that do not decode, RLP Gateway frames that do not decode or exceed --gateway-max-frame-bytes."
        ),
        /// UAA tokens fetched (gateway).
        token_renewals: Counter("source_token_renewals", "UAA tokens fetched."),
    }
    extra {
        disconnects: [AtomicU64; 6],
        /// The wait before the next attempt, in milliseconds (0 while connected
        /// or reconnecting at once).
        pub backoff_ms: AtomicU64,
        /// Wall-clock time of the last batch received, Unix milliseconds (0: never).
        pub last_envelope_unix_ms: AtomicI64,
        /// The error of the last failed attempt, cleared when a stream opens
        /// again: `Some` only while the source is failing.
        pub last_error: Mutex<Option<String>>,
        /// The last error the source recovered from (moved here from
        /// `last_error` when a stream opened after it).
        pub previous_error: Mutex<Option<String>>,
        /// Rate-limits the source's warning about skipped input.
        pub skip_log: Mutex<SkipLog>,
        /// Attempts since a stream last opened (for the recovery log line).
        pub(crate) attempts_since_open: AtomicU64,
        /// Whether a stream is open now, and since when it is (or is not):
        /// `None` before the first change. Tokio's clock, so tests can pause it.
        connection: Mutex<(bool, Option<tokio::time::Instant>)>,
    }
    /// A copy of [`SourceStatus`] for the summary and metrics.
    #[derive(Clone, Debug, Default, serde::Serialize)]
    pub struct SourceSnapshot {}
    then {
        /// Stream ends by [`Disconnect`] reason.
        pub disconnects: BTreeMap<&'static str, u64>,
        pub backoff_ms: u64,
        pub last_envelope_unix_ms: Option<i64>,
        pub last_error: Option<String>,
        pub previous_error: Option<String>,
    }
}

impl SourceStatus {
    pub fn snapshot(&self) -> SourceSnapshot {
        let last = self.last_envelope_unix_ms.load(Ordering::Relaxed);
        SourceSnapshot {
            disconnects: Disconnect::ALL
                .iter()
                .map(|d| (d.as_str(), self.disconnects(*d)))
                .collect(),
            backoff_ms: self.backoff_ms.load(Ordering::Relaxed),
            last_envelope_unix_ms: (last != 0).then_some(last),
            last_error: self.last_error.lock().expect("status lock").clone(),
            previous_error: self.previous_error.lock().expect("status lock").clone(),
            ..self.load()
        }
    }

    /// A source calls this when a stream has opened (`target` names where
    /// from, for the log): counts the connect, and after a failure clears
    /// `last_error` (keeping it as `previous_error`) and logs one line
    /// `reconnected to <target> after <n> attempts`.
    pub(crate) fn opened(&self, source: &'static str, target: &str) {
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
    pub(crate) fn set_connected(&self, connected: bool) {
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

    /// The reconnect loop starts an attempt.
    pub(crate) fn attempt_started(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        self.attempts_since_open.fetch_add(1, Ordering::Relaxed);
    }

    /// The reconnect loop saw an attempt end for `reason`.
    pub(crate) fn ended(&self, reason: Disconnect) {
        self.set_connected(false);
        self.disconnects[reason.index()].fetch_add(1, Ordering::Relaxed);
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
pub(crate) const SKIP_LOG_INTERVAL: Duration = Duration::from_secs(10);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{SinkSnapshot, SinkStats};

    fn keys(v: serde_json::Value) -> Vec<String> {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The summary's keys for a sink and a source stay what they were before
    /// the counters were declared once (`--summary-file` readers depend on them).
    #[test]
    fn snapshots_keep_their_summary_keys() {
        let sink = serde_json::to_value(SinkStats::default().snapshot("s")).unwrap();
        let mut want = vec![
            "name",
            "received",
            "delivered",
            "queued",
            "in_flight",
            "buffered",
            "buffer_bytes",
            "dropped_queue_full",
            "dropped_buffer_full",
            "dropped_buffer_error",
            "dropped_write_error",
            "dead_lettered",
            "retries",
            "reconnects",
            "delivery_latency_ms",
        ];
        want.sort();
        assert_eq!(keys(sink), want);
        let source = serde_json::to_value(SourceStatus::default().snapshot()).unwrap();
        let mut want = vec![
            "attempts",
            "connects",
            "failures",
            "disconnects",
            "backoff_ms",
            "envelopes",
            "last_envelope_unix_ms",
            "malformed_frames",
            "token_renewals",
            "last_error",
            "previous_error",
        ];
        want.sort();
        assert_eq!(keys(source), want);
    }

    /// `load`, `AddAssign` and a family's sum read every counter of the list.
    #[test]
    fn one_list_feeds_load_sum_and_the_metrics_table() {
        let stats = SinkStats::default();
        stats.received.store(5, Ordering::Relaxed);
        stats.dropped_queue_full.store(1, Ordering::Relaxed);
        stats.dropped_write_error.store(2, Ordering::Relaxed);
        stats.buffer_bytes.store(7, Ordering::Relaxed);
        let one = stats.snapshot("a");
        assert_eq!(one.dropped(), 3);
        let mut two = one.clone();
        two += &one;
        assert_eq!(
            (
                two.received,
                two.dropped(),
                two.buffer_bytes,
                two.name.as_str()
            ),
            (10, 6, 14, "a")
        );
        let values: Vec<u64> = SinkSnapshot::METRICS
            .iter()
            .map(|m| (m.value)(&one))
            .collect();
        assert_eq!(values, [5, 0, 0, 0, 0, 1, 0, 0, 2, 0, 0, 0, 7]);
        assert_eq!(
            SinkSnapshot::METRICS[5].label,
            Some(("reason", "queue_full"))
        );
    }
}

//! Delivery latency of a sink: how long its records took from the moment its
//! [`SinkQueue`](super::SinkQueue) accepted them to the moment the sink
//! reported them delivered (`Sink::write` or `Sink::roll` counts).
//!
//! Records travel in chunks, so the queue reads the clock once per chunk and
//! the runner once per write or roll outcome; an observation carries a
//! record count (all the records of one chunk delivered together). The
//! histogram is a fixed array of counters with log-spaced bounds, eight per
//! doubling from 1 ms: a bound is 1 ms · 2^(i/8), so a reported quantile (the
//! upper bound of the bucket that holds it, capped at the exact maximum)
//! overstates the true value by less than 9.1 %. Buckets run up to 2^20 ms
//! (about 17.5 minutes); longer latencies share an overflow bucket.
//!
//! `/metrics` exposes it as the Prometheus histogram
//! `cf_nozzle_sink_delivery_latency_seconds` with every eighth bound (1 ms,
//! 2 ms, 4 ms, … 1048.576 s); the summary file reports p50, p99 and max per
//! sink from the full resolution. (prometheus-client's own `Histogram` takes
//! a lock per observation and has neither a weighted observation nor a way to
//! read its buckets back, hence this one.)

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use serde::Serialize;

/// Buckets per doubling of the latency.
const PER_DOUBLING: usize = 8;
/// Doublings covered from 1 ms (2^20 ms ≈ 17.5 min, past the 10 minutes asked for).
const DOUBLINGS: usize = 20;
/// Finite upper bounds: 1 ms · 2^(i/8) for i in 0..=160.
const BOUNDS: usize = PER_DOUBLING * DOUBLINGS + 1;

/// Upper bounds of the buckets in microseconds; bucket `BOUNDS` is the overflow.
static UPPER_US: LazyLock<[f64; BOUNDS]> =
    LazyLock::new(|| std::array::from_fn(|i| 1000.0 * 2f64.powf(i as f64 / PER_DOUBLING as f64)));

/// Delivered records by latency (see the module documentation).
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BOUNDS + 1],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }
}

/// The bucket holding `us` microseconds: the first whose upper bound is at least `us`.
fn bucket(us: u64) -> usize {
    UPPER_US.partition_point(|&b| b < us as f64)
}

impl LatencyHistogram {
    /// Counts `records` records delivered `latency` after they were accepted.
    pub(crate) fn observe(&self, latency: Duration, records: u64) {
        if records == 0 {
            return;
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(records, Ordering::Relaxed);
        self.sum_us
            .fetch_add(us.saturating_mul(records), Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Records observed so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// p50, p99 and the maximum, in milliseconds (`None` before any delivery).
    pub(crate) fn quantiles(&self) -> LatencyQuantiles {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return LatencyQuantiles::default();
        }
        let max_us = self.max_us.load(Ordering::Relaxed);
        let quantile = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            let i = counts
                .iter()
                .position(|&c| {
                    seen += c;
                    seen >= rank
                })
                .unwrap_or(BOUNDS);
            let upper = UPPER_US.get(i).copied().unwrap_or(f64::INFINITY);
            Some(ms(upper.min(max_us as f64)))
        };
        LatencyQuantiles {
            p50: quantile(0.5),
            p99: quantile(0.99),
            max: Some(ms(max_us as f64)),
        }
    }
}

/// Microseconds to milliseconds, to the microsecond.
fn ms(us: f64) -> f64 {
    us.round() / 1000.0
}

/// Delivery latency quantiles of one sink, in milliseconds: `null` until it
/// has delivered something. p50 and p99 are upper bucket bounds (≤ 9.1 % high,
/// never above `max`); `max` is exact.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct LatencyQuantiles {
    pub(crate) p50: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub max: Option<f64>,
}

// Quantiles are never NaN: they come from bucket bounds and integer microseconds.
impl Eq for LatencyQuantiles {}

// On the reference: `/metrics` encodes the sink's own histogram at scrape time.
impl EncodeMetric for &LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        // Every PER_DOUBLING-th bound; the encoder adds the counts up.
        let mut buckets = Vec::with_capacity(DOUBLINGS + 2);
        let mut in_bucket = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            in_bucket += b.load(Ordering::Relaxed);
            if i < BOUNDS && i % PER_DOUBLING == 0 {
                buckets.push((UPPER_US[i] / 1e6, in_bucket));
                in_bucket = 0;
            }
        }
        buckets.push((f64::INFINITY, in_bucket));
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_double_every_eight_buckets_from_one_millisecond() {
        assert_eq!(UPPER_US[0], 1000.0);
        assert_eq!(UPPER_US[8], 2000.0);
        assert_eq!(UPPER_US[56], 128_000.0);
        assert_eq!(UPPER_US[160], 1_048_576_000.0);
        // Ten minutes is inside the finite buckets.
        assert!(bucket(600_000_000) < BOUNDS);
        assert_eq!(bucket(1_048_576_001), BOUNDS);
    }

    #[test]
    fn an_exact_bound_belongs_to_its_bucket_and_a_microsecond_more_to_the_next() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1000), 0);
        assert_eq!(bucket(1001), 1);
        assert_eq!(bucket(128_000), 56);
        assert_eq!(bucket(128_001), 57);
    }

    #[test]
    fn quantiles_are_bucket_upper_bounds_capped_at_the_exact_maximum() {
        let h = LatencyHistogram::default();
        assert_eq!(h.quantiles(), LatencyQuantiles::default());
        // 98 records at 10 ms, 1 at 100 ms, 1 at 300 ms.
        h.observe(Duration::from_millis(10), 98);
        h.observe(Duration::from_millis(100), 1);
        h.observe(Duration::from_millis(300), 1);
        h.observe(Duration::from_millis(5), 0);
        let q = h.quantiles();
        // 10 ms lies in (9.514 ms, 10.375 ms]: 2^(27/8) ms = 10.374716… ms.
        assert_eq!(q.p50, Some(10.375));
        // The 99th record is the one at 100 ms, in (98.701 ms, 107.635 ms].
        assert_eq!(q.p99, Some(107.635));
        assert_eq!(q.max, Some(300.0));
        assert_eq!(h.count(), 100);
        // The bucket of the maximum is capped at the maximum itself.
        let one = LatencyHistogram::default();
        one.observe(Duration::from_millis(300), 3);
        assert_eq!(one.quantiles().p99, Some(300.0));
    }

    #[test]
    fn metrics_show_every_eighth_bound_in_seconds_with_exact_sum_and_count() {
        let h: &'static LatencyHistogram = Box::leak(Box::default());
        h.observe(Duration::from_micros(500), 1);
        h.observe(Duration::from_millis(4096), 3);
        h.observe(Duration::from_millis(8000), 2);
        h.observe(Duration::from_secs(3600), 1);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("latency", "Test", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..2],
            ["# HELP latency Test.", "# TYPE latency histogram"]
        );
        assert_eq!(
            lines[2..5],
            [
                "latency_sum 3628.2885",
                "latency_count 7",
                r#"latency_bucket{le="0.001"} 1"#,
            ]
        );
        let bucket = |le: &str| {
            let head = format!(r#"latency_bucket{{le="{le}"}} "#);
            lines.iter().find_map(|l| l.strip_prefix(&head)).unwrap()
        };
        // 2, 4, … 1048.576 s: 22 buckets with 1 ms and +Inf.
        assert_eq!(text.matches("latency_bucket").count(), 22);
        assert_eq!(bucket("2.048"), "1");
        assert_eq!(bucket("4.096"), "4");
        assert_eq!(bucket("8.192"), "6");
        assert_eq!(bucket("1048.576"), "6");
        assert_eq!(bucket("+Inf"), "7");
    }
}

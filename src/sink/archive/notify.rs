//! Delivery notifications: after each log or digest file lands, an HTTP POST
//! shaped like CloudTrail's SNS message, `{"s3Bucket":"…","s3ObjectKey":["…"]}`,
//! retried with jittered backoff and counted. Notifications wait in a bounded
//! queue on their own task, so a slow webhook never delays a sink.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::redact::SecretUrl;
use crate::sink::{SinkReport, SinkStats};

/// Notifications waiting to be sent; beyond this they are dropped and counted.
const QUEUE: usize = 10_000;
/// Attempts per notification before it counts as failed.
const ATTEMPTS: u32 = 5;

/// The sending side: cheap to clone, never waits.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Vec<String>>,
    stats: Arc<SinkStats>,
}

impl Notifier {
    /// Starts the notification task posting to `url`. Its report (named
    /// `name`) counts notifications: received, delivered (2xx),
    /// `dropped_queue_full`, `dropped_write_error` (failed every attempt).
    pub fn start(
        name: String,
        url: SecretUrl,
        bucket: String,
        client: reqwest::Client,
        retry_initial: Duration,
    ) -> (Self, JoinHandle<SinkReport>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let stats = Arc::new(SinkStats::default());
        let task = tokio::spawn(run(
            name,
            url,
            bucket,
            client,
            rx,
            Arc::clone(&stats),
            retry_initial,
        ));
        (Self { tx, stats }, task)
    }

    pub fn stats(&self) -> &Arc<SinkStats> {
        &self.stats
    }

    /// Queues one notification for `keys` (object keys in the bucket).
    pub fn notify(&self, keys: Vec<String>) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(keys) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let before = self
                    .stats
                    .dropped_queue_full
                    .fetch_add(1, Ordering::Relaxed);
                if before.is_power_of_two() || before == 0 {
                    tracing::warn!(
                        dropped_total = before + 1,
                        "delivery notification queue full: dropping notifications"
                    );
                }
            }
        }
    }
}

async fn run(
    name: String,
    url: SecretUrl,
    bucket: String,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Vec<String>>,
    stats: Arc<SinkStats>,
    retry_initial: Duration,
) -> SinkReport {
    while let Some(keys) = rx.recv().await {
        let body = serde_json::json!({ "s3Bucket": bucket, "s3ObjectKey": keys }).to_string();
        let mut backoff = Backoff::full_jitter(retry_initial, Duration::from_secs(30));
        let mut ok = false;
        for attempt in 1..=ATTEMPTS {
            let result = client
                .post(url.expose())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let problem = match result {
                Ok(r) if r.status().is_success() => {
                    ok = true;
                    break;
                }
                Ok(r) => format!("answered {}", r.status()),
                Err(e) => crate::error_chain(&e),
            };
            tracing::warn!(%url, attempt, problem, "delivery notification failed");
            if attempt < ATTEMPTS {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        if ok {
            stats.delivered.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.dropped_write_error.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%url, keys = ?keys, "delivery notification given up after {ATTEMPTS} attempts");
        }
        stats.queued.fetch_sub(1, Ordering::Relaxed);
    }
    SinkReport {
        stats: stats.snapshot(&name),
        outputs: Vec::new(),
        not_delivered: None,
    }
}

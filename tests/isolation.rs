//! Invariants 1 and 3 of DESIGN.md §2 on a paused clock: a sink that is down
//! for a minute neither blocks the ingress nor slows another sink.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cf_audit_nozzle::proto::{Envelope, Log, envelope};
use cf_audit_nozzle::record::Kind;
use cf_audit_nozzle::route::Router;
use cf_audit_nozzle::sink::{
    Batch, BatchConfig, Sink, SinkError, SinkFailure, SinkQueue, run_sink,
};

/// A receiver that is down: every write fails retryably.
struct Down(Arc<AtomicU64>);

impl Sink for Down {
    fn name(&self) -> &str {
        "down"
    }
    async fn write(&mut self, _batch: Batch<'_>) -> Result<u64, SinkFailure> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(SinkFailure::Retry {
            error: SinkError::Connect {
                addr: "siem:6514".into(),
                reason: "connection refused".into(),
            },
            after: None,
        })
    }
    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        Ok(0)
    }
}

/// A healthy sink that counts what it was given.
struct Up(Arc<AtomicU64>);

impl Sink for Up {
    fn name(&self) -> &str {
        "up"
    }
    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        self.0
            .fetch_add(batch.records.len() as u64, Ordering::SeqCst);
        Ok(batch.records.len() as u64)
    }
    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        Ok(0)
    }
}

fn batch(n: usize) -> Vec<Envelope> {
    (0..n)
        .map(|i| Envelope {
            timestamp: i as i64,
            message: Some(envelope::Message::Log(Log {
                payload: format!("line {i}").into(),
                r#type: 0,
            })),
            ..Default::default()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_sink_down_for_a_minute_blocks_neither_ingress_nor_the_other_sink() {
    let (up_queue, up_rx) = SinkQueue::new("up", 10_000);
    let (down_queue, down_rx) = SinkQueue::new("down", 10_000);
    let (up_stats, down_stats) = (Arc::clone(up_queue.stats()), Arc::clone(down_queue.stats()));
    let delivered = Arc::new(AtomicU64::new(0));
    let attempts = Arc::new(AtomicU64::new(0));
    let batch_cfg = BatchConfig {
        max_age: Duration::from_millis(100),
        ..BatchConfig::default()
    };
    let up = tokio::spawn(run_sink(
        Up(Arc::clone(&delivered)),
        up_rx,
        Arc::clone(&up_stats),
        batch_cfg.clone(),
    ));
    let down = tokio::spawn(run_sink(
        Down(Arc::clone(&attempts)),
        down_rx,
        Arc::clone(&down_stats),
        batch_cfg,
    ));
    let router = Router::new(
        vec![
            (up_queue, Kind::ALL.to_vec()),
            (down_queue, Kind::ALL.to_vec()),
        ],
        Default::default(),
        None,
        false,
    );

    // One minute of ingress at 1,000 envelopes per 100 ms (10,000/s).
    let start = tokio::time::Instant::now();
    for second in 0..60u64 {
        for _ in 0..10 {
            let before = tokio::time::Instant::now();
            router.dispatch(batch(1000));
            assert_eq!(tokio::time::Instant::now(), before, "dispatch never waits");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The healthy sink keeps up the whole time: at most the batch age behind.
        let offered = (second + 1) * 10_000;
        let got = delivered.load(Ordering::SeqCst);
        assert!(
            got + 1000 >= offered,
            "second {second}: up delivered {got} of {offered}"
        );
    }
    assert_eq!(start.elapsed(), Duration::from_secs(60));

    drop(router);
    let up_report = up.await.unwrap();
    assert_eq!(up_report.stats.delivered, 600_000);
    let d = down_stats.snapshot("down");
    assert_eq!(d.received, 600_000);
    assert_eq!(d.delivered, 0);
    // The down sink holds exactly its bound (the batch being retried and the
    // queue behind it); everything beyond was turned away and counted.
    assert_eq!((d.queued, d.dropped_queue_full), (10_000, 590_000));
    assert!(attempts.load(Ordering::SeqCst) > 5, "kept retrying");
    down.abort();
}

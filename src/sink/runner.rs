//! The shared sink runner: takes records from a sink's queue, batches them by
//! count and age, writes them through the [`Sink`], retries retryable
//! failures with full-jitter backoff (honouring `Retry-After`), dead-letters
//! batches a receiver rejects, rolls the sink on its interval (also when the
//! queue never empties), and drains at shutdown. All accounting of
//! [`SinkStats`] past admission happens here, the delivery latency included.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::{
    Batch, BatchConfig, DeadLetter, Intake, NotDelivered, Sink, SinkError, SinkFailure, SinkReport,
    SinkStats,
};
use crate::backoff::Backoff;
use crate::record::Record;

/// Runs a sink until its queue is closed (every [`SinkQueue`](super::SinkQueue) dropped) and
/// drained, then rolls it one last time and reports.
pub async fn run_sink<S: Sink>(
    mut sink: S,
    mut intake: Intake,
    stats: Arc<SinkStats>,
    batch: BatchConfig,
) -> SinkReport {
    sink.attach(&stats);
    let max_records = batch.max_records.unwrap_or_else(|| sink.batch_records());
    let mut pending = Gathered {
        records: Vec::with_capacity(max_records),
        bytes: 0,
    };
    let mut batch_deadline: Option<Instant> = None;
    let roll_every = sink.roll_interval();
    let mut next_roll = roll_every.map(|d| Instant::now() + d);
    let mut stamps = Stamps::default();
    // Batches handed to the sink so far: the next one's id.
    let mut batches: u64 = 0;
    loop {
        // Whether a batch went to the sink in this turn (only then can what
        // it holds in flight have grown).
        let mut wrote = false;
        let due = [batch_deadline, next_roll].into_iter().flatten().min();
        tokio::select! {
            // Take what is queued first; the timers are checked below either way.
            biased;
            chunk = intake.recv_stamped(max_records, &stats) => match chunk {
                Some((accepted, bytes, chunk)) => {
                    stamps.pending.push((accepted, chunk.len() as u64));
                    if pending.records.is_empty() {
                        batch_deadline = Some(Instant::now() + batch.max_age);
                    }
                    pending.bytes += bytes;
                    pending.records.extend(chunk);
                    if pending.records.len() >= max_records || pending.bytes >= batch.max_bytes as u64 {
                        write_pending(&mut sink, &mut pending, &mut batches, &stats, &batch, &mut intake, &mut stamps).await;
                        wrote = true;
                        batch_deadline = None;
                    }
                }
                None => break,
            },
            _ = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
        }
        // Checked after every event, not only when a timer branch wins, so a
        // queue that is never empty (a sink behind its input) still ages its
        // batches out and rolls its files on time.
        let now = Instant::now();
        // A roll writes the pending batch first.
        let roll_due = roll_every.filter(|_| next_roll.is_some_and(|d| now >= d));
        if batch_deadline.is_some_and(|d| now >= d) || roll_due.is_some() {
            write_pending(
                &mut sink,
                &mut pending,
                &mut batches,
                &stats,
                &batch,
                &mut intake,
                &mut stamps,
            )
            .await;
            wrote = true;
            batch_deadline = None;
        }
        // With a disk buffer, a sink that settles only when it rolls rolls
        // early once what it holds takes a quarter of its buffer: else the
        // buffer fills before anything in it can be acknowledged.
        let roll_now = roll_due.or(roll_every.filter(|_| wrote && intake.roll_early(&stats)));
        if let Some(every) = roll_now {
            roll(&mut sink, &stats, &mut intake, &mut stamps).await;
            next_roll = Some(Instant::now() + every);
        }
    }
    write_pending(
        &mut sink,
        &mut pending,
        &mut batches,
        &stats,
        &batch,
        &mut intake,
        &mut stamps,
    )
    .await;
    roll(&mut sink, &stats, &mut intake, &mut stamps).await;
    intake.sync();
    let snapshot = stats.snapshot(sink.name());
    SinkReport {
        not_delivered: not_delivered(&sink, &stats, &snapshot),
        stats: snapshot,
        outputs: sink.outputs(),
    }
}

/// After the last roll: what a sink without a disk buffer still holds is
/// lost with the process (a buffered sink keeps it on disk for the next start).
fn not_delivered<S: Sink>(
    sink: &S,
    stats: &SinkStats,
    snapshot: &super::SinkSnapshot,
) -> Option<NotDelivered> {
    let records = snapshot.pending();
    if records == 0 {
        return None;
    }
    if stats.buffer_max_bytes.load(Ordering::Relaxed) > 0 {
        tracing::warn!(
            sink = sink.name(),
            records,
            "sink stopped with records not delivered; they stay in the disk buffer for the next start"
        );
        return None;
    }
    let reason = sink
        .undelivered_reason()
        .unwrap_or_else(|| "still queued or in flight when the sink stopped".to_string());
    tracing::error!(sink = sink.name(), records, reason = %reason, "sink stopped with records not delivered; they are lost");
    Some(NotDelivered { records, reason })
}

/// The records gathered for the next batch and their estimated bytes
/// (still counted in [`SinkStats::queued_bytes`]).
struct Gathered {
    records: Vec<Arc<Record>>,
    bytes: u64,
}

/// Writes the gathered records as batch `*batches + 1` until it succeeds or
/// fails for good, then accounts for it.
async fn write_pending<S: Sink>(
    sink: &mut S,
    gathered: &mut Gathered,
    batches: &mut u64,
    stats: &SinkStats,
    batch: &BatchConfig,
    intake: &mut Intake,
    stamps: &mut Stamps,
) {
    let bytes = std::mem::take(&mut gathered.bytes);
    let pending = &mut gathered.records;
    if pending.is_empty() {
        return;
    }
    let n = pending.len() as u64;
    let in_flight_before = stats.in_flight.load(Ordering::Acquire);
    let started = Instant::now();
    let mut backoff = Backoff::full_jitter(batch.retry_initial, batch.retry_max);
    *batches += 1;
    let mut attempt = Batch::new(*batches, pending);
    let result = loop {
        match sink.write(attempt).await {
            Err(SinkFailure::Retry { error, after }) => {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let delay = after.map_or_else(|| backoff.next_delay(), |a| a.min(batch.retry_max));
                // Logged on attempts 1, 2, 4, 8, ...: visible, not a flood.
                if attempt.attempt.is_power_of_two() {
                    let (sink, attempt) = (sink.name(), attempt.attempt);
                    tracing::warn!(sink, records = n, attempt, ?delay, error = %error.in_sink(sink), "write failed; retrying the batch");
                }
                tokio::time::sleep(delay).await;
                attempt = attempt.retry();
            }
            other => break other,
        }
    };
    stats.batch_seconds.observe(started.elapsed().as_secs_f64());
    // Account before releasing the queue slots, so the sum never comes up short.
    match result {
        Ok(delivered) => {
            // A write may also confirm records of earlier batches (an
            // object sink uploading a completed file), so `delivered` can
            // exceed `n`: the batch joins the in-flight records first.
            let rejected = sink.take_rejected();
            stats.in_flight.fetch_add(n, Ordering::Relaxed);
            stats.delivered.fetch_add(delivered, Ordering::Relaxed);
            stats.in_flight.fetch_sub(delivered, Ordering::Relaxed);
            stamps.commit();
            if !rejected.is_empty() {
                // They are this batch's, the newest in flight.
                stamps.drop_newest(rejected.len() as u64);
                settle_rejected(sink.name(), stats, batch, pending, &rejected);
                if stats.in_flight.load(Ordering::Acquire) > 0 {
                    intake.settled_out_of_order(rejected.len() as u64);
                }
            }
            stamps.delivered(delivered, stats);
        }
        Err(SinkFailure::Reject { error }) if batch.dead_letter.is_some() => {
            stamps.pending.clear();
            if in_flight_before > 0 {
                // Settled while earlier records still await confirmation.
                intake.settled_out_of_order(n);
            }
            let dl = batch.dead_letter.as_ref().expect("checked above");
            let sink = sink.name();
            match dead_letter(dl, sink, pending.iter().map(|r| (r, &error))) {
                Ok(path) => {
                    stats.dead_lettered.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(sink, records = n, error = %error.in_sink(sink), path = %path.display(), "receiver rejected a batch; kept in the dead-letter file");
                }
                Err(e) => {
                    tracing::error!(sink, error = %e, "cannot write the dead-letter file");
                    account_loss(sink, stats, n, &SinkFailure::Reject { error });
                }
            }
        }
        Err(failure) => {
            if in_flight_before > failure.lost_in_flight() {
                intake.settled_out_of_order(n);
            }
            stamps.pending.clear();
            stamps.lost(failure.lost_in_flight());
            account_loss(sink.name(), stats, n, &failure);
        }
    }
    pending.clear();
    stats.queued.fetch_sub(n, Ordering::AcqRel);
    stats.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    intake.settled(stats);
}

/// Settles the records of a delivered batch the receiver refused one by one
/// ([`Sink::take_rejected`]): into the dead-letter file, or, without one or
/// when it cannot be written, lost. They were counted in flight.
fn settle_rejected(
    sink: &str,
    stats: &SinkStats,
    batch: &BatchConfig,
    pending: &[Arc<Record>],
    rejected: &[(usize, SinkError)],
) {
    let r = rejected.len() as u64;
    let first = rejected[0].1.in_sink(sink);
    let records = rejected.iter().map(|(i, e)| (&pending[*i], e));
    let kept = match &batch.dead_letter {
        Some(dl) => dead_letter(dl, sink, records)
            .inspect_err(|e| tracing::error!(sink, error = %e, "cannot write the dead-letter file"))
            .ok(),
        None => None,
    };
    match kept {
        Some(path) => {
            stats.dead_lettered.fetch_add(r, Ordering::Relaxed);
            tracing::error!(sink, records = r, batch = pending.len(), error = %first, path = %path.display(), "receiver rejected records of a batch; only those kept in the dead-letter file");
        }
        None => {
            stats.dropped_write_error.fetch_add(r, Ordering::Relaxed);
            tracing::error!(sink, records = r, error = %first, "receiver rejected records of a batch; records lost");
        }
    }
    stats.in_flight.fetch_sub(r, Ordering::Relaxed);
}

/// Appends `records` to the sink's dead-letter file, one line each with its
/// reason: `{"time":…,"sink":…,"reason":…,"record":{…}}`.
fn dead_letter<'a>(
    dl: &DeadLetter,
    sink: &str,
    records: impl Iterator<Item = (&'a Arc<Record>, &'a SinkError)>,
) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(&dl.dir)?;
    let name: String = sink
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dl.dir.join(format!("{name}.dead-letter.jsonl"));
    let (time, sink_json) = (
        serde_json::to_string(&chrono::Utc::now().to_rfc3339()).expect("string"),
        serde_json::to_string(sink).expect("string"),
    );
    let mut buf = Vec::new();
    for (r, reason) in records {
        let reason = serde_json::to_string(&reason.in_sink(sink).to_string()).expect("string");
        buf.extend_from_slice(
            format!(r#"{{"time":{time},"sink":{sink_json},"reason":{reason},"record":"#).as_bytes(),
        );
        r.write_json(&dl.encode, &mut buf);
        buf.extend_from_slice(b"}\n");
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    file.write_all(&buf)?;
    file.sync_data()?;
    Ok(path)
}

/// Rolls the sink and, like [`write_pending`], settles what it confirmed.
async fn roll<S: Sink>(sink: &mut S, stats: &SinkStats, intake: &mut Intake, stamps: &mut Stamps) {
    match sink.roll().await {
        Ok(delivered) => {
            stats.delivered.fetch_add(delivered, Ordering::Relaxed);
            stats.in_flight.fetch_sub(delivered, Ordering::Relaxed);
            stamps.delivered(delivered, stats);
        }
        Err(failure) => {
            stamps.lost(failure.lost_in_flight());
            account_loss(sink.name(), stats, 0, &failure);
        }
    }
    intake.settled(stats);
}

/// When the records not yet settled were accepted, one entry per chunk
/// (`(accepted, records)`), oldest first: the records in flight, then the
/// batch being gathered. Delivered and lost in-flight counts settle the
/// oldest records first, as the disk buffer's acknowledgement assumes too.
#[derive(Default)]
struct Stamps {
    in_flight: VecDeque<(Instant, u64)>,
    pending: Vec<(Instant, u64)>,
}

impl Stamps {
    /// The batch was written: its records join those in flight. A chunk
    /// accepted within a tolerance of the newest in-flight entry joins that
    /// entry (and counts from its earlier instant): 1 ms, doubling with
    /// every 1,024 entries. A sink that holds records for minutes (a file
    /// rolled every 300 s) then keeps a few thousand entries, not one per
    /// chunk (memory the bound on in-flight records alone would not keep
    /// small); its records are counted from at most the tolerance too
    /// early (under 1 s after ten minutes of 100,000 records/s), well below
    /// the latency of nearly all of them. A sink that delivers as it writes
    /// keeps a short queue and 1 ms.
    fn commit(&mut self) {
        for (accepted, records) in self.pending.drain(..) {
            let shift = (self.in_flight.len() / 1024).min(20) as u32;
            let tolerance = Duration::from_millis(1 << shift);
            match self.in_flight.back_mut() {
                Some((newest, n)) if accepted.saturating_duration_since(*newest) <= tolerance => {
                    *n += records;
                }
                _ => self.in_flight.push_back((accepted, records)),
            }
        }
    }

    /// The oldest `n` in-flight records were delivered now: observes their latency.
    fn delivered(&mut self, n: u64, stats: &SinkStats) {
        let now = Instant::now();
        self.settle(n, |accepted, records| {
            stats
                .delivery_latency
                .observe(now.saturating_duration_since(accepted), records);
        });
    }

    /// The newest `n` in-flight records were settled without delivery
    /// (records of the batch just committed that the receiver refused).
    fn drop_newest(&mut self, mut n: u64) {
        while n > 0 {
            let Some((_, records)) = self.in_flight.back_mut() else {
                return;
            };
            let take = n.min(*records);
            *records -= take;
            n -= take;
            if *records == 0 {
                self.in_flight.pop_back();
            }
        }
    }

    /// The oldest `n` in-flight records were lost: no latency to observe.
    fn lost(&mut self, n: u64) {
        self.settle(n, |_, _| {});
    }

    fn settle(&mut self, mut n: u64, mut each: impl FnMut(Instant, u64)) {
        while n > 0 {
            let Some((accepted, records)) = self.in_flight.front_mut() else {
                return;
            };
            let take = n.min(*records);
            each(*accepted, take);
            *records -= take;
            n -= take;
            if *records == 0 {
                self.in_flight.pop_front();
            }
        }
    }
}

/// Counts what a failure cost: the failed batch (`batch` records, still
/// counted as queued by the caller) and the in-flight records it took along.
fn account_loss(sink: &str, stats: &SinkStats, batch: u64, failure: &SinkFailure) {
    let lost = batch + failure.lost_in_flight();
    stats.dropped_write_error.fetch_add(lost, Ordering::Relaxed);
    stats
        .in_flight
        .fetch_sub(failure.lost_in_flight(), Ordering::Relaxed);
    tracing::error!(sink, records = lost, error = %failure.error().in_sink(sink), "sink failed; records lost");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::proto::Envelope;
    use crate::sink::{Chunk, SinkQueue};
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    /// A sink that remembers what it was asked to do.
    #[derive(Default)]
    struct Recorder {
        writes: Arc<std::sync::Mutex<Vec<usize>>>,
        rolls: Arc<AtomicU64>,
        fail: bool,
        /// Its own records per batch (0: the default).
        batch_records: usize,
    }

    impl Sink for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn batch_records(&self) -> usize {
            match self.batch_records {
                0 => crate::sink::DEFAULT_BATCH_MAX_RECORDS,
                n => n,
            }
        }
        async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
            self.writes.lock().unwrap().push(batch.records.len());
            if self.fail {
                return Err(SinkError::Io {
                    path: "x".into(),
                    source: Arc::new(std::io::Error::other("disk full")),
                }
                .into());
            }
            Ok(batch.records.len() as u64)
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            self.rolls.fetch_add(1, Ordering::SeqCst);
            Ok(0)
        }
        fn roll_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(60))
        }
    }

    fn chunk(n: usize) -> Chunk {
        (0..n)
            .map(|_| Arc::new(classify(Envelope::default())))
            .collect()
    }

    /// Offers `n` records one at a time to a [`Recorder`] batching
    /// `batch_records` of its own under `max_records`; the sizes it wrote.
    async fn batch_sizes(batch_records: usize, max_records: Option<usize>, n: usize) -> Vec<usize> {
        let (queue, rx) = SinkQueue::new("recorder", 10_000);
        let sink = Recorder {
            batch_records,
            ..Recorder::default()
        };
        let writes = Arc::clone(&sink.writes);
        let batch = BatchConfig {
            max_records,
            ..BatchConfig::default()
        };
        for _ in 0..n {
            queue.offer(chunk(1));
        }
        drop(queue);
        run_sink(sink, rx, Arc::new(SinkStats::default()), batch).await;
        writes.lock().unwrap().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_batches_by_its_own_record_count_unless_the_operator_sets_one() {
        assert_eq!(
            batch_sizes(3, None, 7).await,
            [3, 3, 1],
            "the sink's own count"
        );
        assert_eq!(
            batch_sizes(3, Some(5), 7).await,
            [5, 2],
            "--batch-max-records wins"
        );
        assert_eq!(
            batch_sizes(0, None, 2500).await,
            [1000, 1000, 500],
            "the default count"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_newest_chunk_and_counts_every_record() {
        let (queue, rx) = SinkQueue::new("recorder", 250);
        for _ in 0..3 {
            queue.offer(chunk(100));
        }
        let s = queue.stats().snapshot("recorder");
        assert_eq!(
            (s.received, s.queued, s.dropped_queue_full),
            (300, 200, 100)
        );

        let stats = Arc::clone(queue.stats());
        drop(queue);
        let report = run_sink(Recorder::default(), rx, stats, BatchConfig::default()).await;
        let s = report.stats;
        assert_eq!(
            (s.received, s.delivered, s.queued, s.dropped()),
            (300, 200, 0, 100)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_at_the_byte_limit_before_the_count_limit() {
        let (queue, rx) = SinkQueue::new("recorder", 10_000);
        let one = chunk(1)[0].approx_size();
        for _ in 0..10 {
            queue.offer(chunk(10));
        }
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let sink = Recorder::default();
        let writes = Arc::clone(&sink.writes);
        let batch = BatchConfig {
            max_records: Some(1000),
            // Room for 25 records: the batch closes after the third chunk of 10.
            max_bytes: 25 * one,
            ..BatchConfig::default()
        };
        let report = run_sink(sink, rx, stats, batch).await;
        assert_eq!(report.stats.delivered, 100);
        assert_eq!(*writes.lock().unwrap(), [30, 30, 30, 10]);
    }

    /// A sink whose writes take a second each, logging what happens when.
    struct Slow(Arc<std::sync::Mutex<Vec<&'static str>>>);

    impl Sink for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.0.lock().unwrap().push("write");
            Ok(batch.records.len() as u64)
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            self.0.lock().unwrap().push("roll");
            Ok(0)
        }
        fn roll_interval(&self) -> Option<Duration> {
            Some(Duration::from_secs(10))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_sink_behind_its_input_still_rolls_on_time() {
        let (queue, rx) = SinkQueue::new("slow", 10_000);
        for _ in 0..30 {
            queue.offer(chunk(10));
        }
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let batch = BatchConfig {
            max_records: Some(10),
            max_age: Duration::from_secs(1),
            ..BatchConfig::default()
        };
        let report = run_sink(Slow(Arc::clone(&log)), rx, stats, batch).await;
        assert_eq!(report.stats.delivered, 300);
        // 30 one-second writes with the queue never empty: rolls every 10 s
        // between them, and one at the end.
        let log = log.lock().unwrap();
        let rolls: Vec<usize> = log
            .iter()
            .enumerate()
            .filter(|(_, e)| **e == "roll")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(rolls, [10, 21, 32, 33], "{log:?}");
    }

    /// Fails retryably: first with a Retry-After of 7 s, then without one, then succeeds.
    struct Flaky(u32);

    impl Sink for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
            self.0 += 1;
            let unavailable = || SinkError::Connect {
                addr: "x".into(),
                reason: "refused".into(),
            };
            match self.0 {
                1 => Err(SinkFailure::Retry {
                    error: unavailable(),
                    after: Some(Duration::from_secs(7)),
                }),
                2 => Err(SinkFailure::Retry {
                    error: unavailable(),
                    after: None,
                }),
                _ => Ok(batch.records.len() as u64),
            }
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            Ok(0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_retry_the_same_batch_honouring_retry_after() {
        let (queue, rx) = SinkQueue::new("flaky", 100);
        queue.offer(chunk(5));
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let start = Instant::now();
        let s = run_sink(Flaky(0), rx, stats, BatchConfig::default())
            .await
            .stats;
        let waited = start.elapsed();
        assert_eq!(
            (s.received, s.delivered, s.pending(), s.dropped(), s.retries),
            (5, 5, 0, 0, 2)
        );
        // The closed queue flushes at once: 7 s Retry-After, then a full-jitter delay of 1 ms..=1 s.
        assert!(
            waited > Duration::from_secs(7) && waited <= Duration::from_secs(8),
            "{waited:?}"
        );
    }

    /// Holds what it is given; a roll delivers at most 4 of the held records.
    #[derive(Default)]
    struct FourPerRoll(u64);

    impl Sink for FourPerRoll {
        fn name(&self) -> &str {
            "four"
        }
        async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
            self.0 += batch.records.len() as u64;
            Ok(0)
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            let n = self.0.min(4);
            self.0 -= n;
            Ok(n)
        }
        fn roll_interval(&self) -> Option<Duration> {
            Some(Duration::from_millis(8192))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn delivery_latency_runs_from_admission_to_the_roll_that_delivered_oldest_first() {
        let (queue, rx) = SinkQueue::new("four", 100);
        let batch = BatchConfig {
            max_age: Duration::from_secs(1),
            ..BatchConfig::default()
        };
        let task = tokio::spawn(run_sink(
            FourPerRoll::default(),
            rx,
            Arc::clone(queue.stats()),
            batch,
        ));
        // t = 0: one record; t = 4.096 s: four (each written 1 s later).
        queue.offer(chunk(1));
        tokio::time::sleep(Duration::from_millis(4096)).await;
        queue.offer(chunk(4));
        // The roll at 8.192 s delivers the oldest four: the first record
        // (8.192 s) and three of the chunk of four (4.096 s). The last one
        // goes with the final roll at 12.288 s (8.192 s).
        tokio::time::sleep(Duration::from_millis(8192)).await;
        let stats = Arc::clone(queue.stats());
        assert_eq!(stats.delivery_latency.count(), 4);
        drop(queue);
        let s = task.await.unwrap().stats;
        assert_eq!((s.delivered, s.in_flight), (5, 0));
        assert_eq!(stats.delivery_latency.count(), 5);
        // 4.096 s and 8.192 s are bucket bounds, so the quantiles are exact.
        assert_eq!(
            s.delivery_latency_ms,
            crate::sink::latency::LatencyQuantiles {
                p50: Some(4096.0),
                p99: Some(8192.0),
                max: Some(8192.0),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_stamps_stay_few_when_records_wait_long_and_none_is_lost() {
        let start = Instant::now();
        let mut stamps = Stamps::default();
        // Ten minutes of chunks of 10 records, one every 100 µs (100,000/s).
        for i in 0..6_000_000u64 {
            stamps
                .pending
                .push((start + Duration::from_micros(i * 100), 10));
            if stamps.pending.len() == 1000 {
                stamps.commit();
            }
        }
        stamps.commit();
        let entries = stamps.in_flight.len();
        // 9,364 entries instead of 6,000,000.
        assert!(entries < 10_000, "{entries} entries");
        let records: u64 = stamps.in_flight.iter().map(|(_, n)| n).sum();
        assert_eq!(records, 60_000_000);
        // A new entry starts just past the tolerance of its time: the
        // largest gap shows the tolerance stayed at 512 ms or below.
        let gaps = stamps
            .in_flight
            .iter()
            .zip(stamps.in_flight.iter().skip(1))
            .map(|(a, b)| b.0 - a.0);
        assert!(gaps.max().unwrap() <= Duration::from_millis(1 << 10));
        let stats = SinkStats::default();
        tokio::time::advance(Duration::from_secs(600)).await;
        stamps.delivered(60_000_000, &stats);
        assert_eq!(stats.delivery_latency.count(), 60_000_000);
        assert!(stamps.in_flight.is_empty());
    }

    #[tokio::test]
    async fn records_lost_to_a_failed_write_have_no_delivery_latency() {
        let (queue, rx) = SinkQueue::new("recorder", 1000);
        queue.offer(chunk(7));
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let sink = Recorder {
            fail: true,
            ..Default::default()
        };
        let s = run_sink(sink, rx, Arc::clone(&stats), BatchConfig::default())
            .await
            .stats;
        assert_eq!(
            (s.dropped_write_error, stats.delivery_latency.count()),
            (7, 0)
        );
        assert_eq!(s.delivery_latency_ms, Default::default());
    }

    /// Delivers every record of a batch but those at the given positions,
    /// which the receiver refuses.
    struct Refuses(Vec<usize>, Vec<(usize, SinkError)>);

    impl Sink for Refuses {
        fn name(&self) -> &str {
            "refuses"
        }
        async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
            self.1 = self
                .0
                .iter()
                .map(|&i| {
                    let e = SinkError::Rejected {
                        url: "x".into(),
                        status: 400,
                        detail: format!("record {i}"),
                    };
                    (i, e)
                })
                .collect();
            Ok((batch.records.len() - self.0.len()) as u64)
        }
        async fn roll(&mut self) -> Result<u64, SinkFailure> {
            Ok(0)
        }
        fn take_rejected(&mut self) -> Vec<(usize, SinkError)> {
            std::mem::take(&mut self.1)
        }
    }

    #[tokio::test]
    async fn only_the_refused_records_of_a_batch_are_dead_lettered_each_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        for dead_letter in [true, false] {
            let (queue, rx) = SinkQueue::new("refuses", 100);
            queue.offer(chunk(5));
            let stats = Arc::clone(queue.stats());
            drop(queue);
            let batch = BatchConfig {
                dead_letter: dead_letter.then(|| crate::sink::DeadLetter {
                    dir: dir.path().to_path_buf(),
                    encode: crate::record::EncodeContext::new("f"),
                }),
                ..BatchConfig::default()
            };
            let s = run_sink(Refuses(vec![1, 3], Vec::new()), rx, stats, batch)
                .await
                .stats;
            let (dead_lettered, lost) = if dead_letter { (2, 0) } else { (0, 2) };
            assert_eq!(
                (
                    s.received,
                    s.delivered,
                    s.dead_lettered,
                    s.dropped_write_error
                ),
                (5, 3, dead_lettered, lost)
            );
            assert_eq!((s.queued, s.in_flight), (0, 0));
        }
        let text = std::fs::read_to_string(dir.path().join("refuses.dead-letter.jsonl")).unwrap();
        let reasons: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].to_string())
            .collect();
        assert_eq!(
            reasons,
            [
                r#""refuses sink: x answered 400: record 1""#,
                r#""refuses sink: x answered 400: record 3""#
            ]
        );
    }

    #[tokio::test]
    async fn failed_writes_are_counted_as_dropped_not_delivered() {
        let (queue, rx) = SinkQueue::new("recorder", 1000);
        queue.offer(chunk(7));
        let stats = Arc::clone(queue.stats());
        drop(queue);
        let sink = Recorder {
            fail: true,
            ..Default::default()
        };
        let s = run_sink(sink, rx, stats, BatchConfig::default())
            .await
            .stats;
        assert_eq!(
            (s.received, s.delivered, s.queued, s.dropped_write_error),
            (7, 0, 0, 7)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_written_when_full_or_when_old_and_rolled_on_the_interval() {
        let (queue, rx) = SinkQueue::new("recorder", 10_000);
        let sink = Recorder::default();
        let (writes, rolls) = (Arc::clone(&sink.writes), Arc::clone(&sink.rolls));
        let batch = BatchConfig {
            max_records: Some(10),
            max_age: Duration::from_millis(500),
            ..BatchConfig::default()
        };
        let task = tokio::spawn(run_sink(sink, rx, Arc::clone(queue.stats()), batch));

        queue.offer(chunk(4));
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(writes.lock().unwrap().is_empty(), "not yet old enough");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(*writes.lock().unwrap(), [4], "written at max_age");

        queue.offer(chunk(6));
        queue.offer(chunk(6));
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            *writes.lock().unwrap(),
            [4, 12],
            "written once max_records is reached"
        );

        assert_eq!(rolls.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(rolls.load(Ordering::SeqCst), 1, "rolled after the interval");

        drop(queue);
        let report = task.await.unwrap();
        assert_eq!(
            rolls.load(Ordering::SeqCst),
            2,
            "rolled once more at shutdown"
        );
        assert_eq!(report.stats.delivered, 16);
    }
}

//! One stream, read and decoded: SSE events read from the response body,
//! data frames decoded on another task and dispatched on a third, the
//! handover to the next stream and the drain of the one handed over.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sse::{Sse, SseParser};
use super::{
    GatewayConfig, GatewayError, HANDOVER_DRAIN_MAX, MIN_PRODUCTIVE_STREAM, Target, connect,
    count_batch_kinds, decode_batch_views,
};
use crate::record::envelope::EnvelopeView;
use crate::route::Router;
use crate::source::status::{Attempt, Disconnect, SourceStatus};

/// Frames read but not yet decoded, per stream: bounds memory while the
/// decoder runs on another core than the reader.
pub(crate) const DECODE_QUEUE_FRAMES: usize = 16;

/// Connects once and forwards batches until the stream ends, or until it
/// is due for its handover (then its reading goes on in a task of its own
/// until it closes, and this returns so the next stream opens at once).
///
/// Reading (HTTP, SSE), decoding (JSON) and dispatching (the router) run
/// as three tasks joined by bounded channels, so on a multi-core runtime
/// they use more than one core; one decoder and its one dispatcher keep
/// the batches in order. The decoder's handle is left in
/// `decoder` so that whoever stops the source can wait for it.
pub(crate) async fn stream_once(
    cfg: &GatewayConfig,
    target: &Arc<Target>,
    router: &Arc<Router>,
    status: &Arc<SourceStatus>,
    decoder: &std::sync::Mutex<Option<JoinHandle<u64>>>,
    shutdown: &CancellationToken,
) -> Attempt {
    let url = target.url.as_str();
    let connected = connect(cfg, target).await;
    status
        .token_renewals
        .store(target.tokens.renewals(), Ordering::Relaxed);
    let response = match connected {
        Ok(r) => r,
        Err(e) => {
            let end = match e {
                GatewayError::Connect { .. } | GatewayError::Token(_) => Disconnect::Connect,
                _ => Disconnect::Refused,
            };
            if matches!(e, GatewayError::BadRequest { .. }) {
                tracing::error!(error = %e, "configuration error: fix the options and restart");
            }
            return Attempt::failed(end, e.to_string());
        }
    };
    let started = Instant::now();
    status.opened("gateway", url);
    let envelopes_before = status.envelopes.load(Ordering::Relaxed);
    let (frames, rx) = tokio::sync::mpsc::channel(DECODE_QUEUE_FRAMES);
    let decoding = tokio::spawn(decode_frames(
        rx,
        Arc::clone(router),
        Arc::clone(status),
        url.to_string(),
    ));
    if let Some(previous) = decoder.lock().expect("decoder lock").replace(decoding) {
        // Finished already: its stream ended before this one started.
        drop(previous);
    }
    let lifetime = *target.lifetime.lock().expect("lifetime lock");
    let handover_at = (!cfg.handover.is_zero() && lifetime > 2 * cfg.handover)
        .then(|| started + (lifetime - cfg.handover));
    let mut reader = FrameReader {
        url: url.to_string(),
        idle_timeout: cfg.idle_timeout,
        body: Box::pin(response.bytes_stream()),
        parser: SseParser::new(cfg.max_frame_bytes),
        frames,
        status: Arc::clone(status),
        events: 0,
    };
    let (end, error) = match reader.read(handover_at).await {
        Some(end) => end,
        None => {
            // Due for the handover: read on until the old stream closes.
            let decoding = decoder.lock().expect("decoder lock").take();
            tokio::spawn(drain(reader, decoding, shutdown.clone()));
            let envelopes = status.envelopes.load(Ordering::Relaxed) - envelopes_before;
            tracing::info!(
                url = %crate::redact::url(url),
                age_secs = started.elapsed().as_secs(),
                "opening the next RLP Gateway stream before this one's expected end (handover)"
            );
            return Attempt {
                connected: true,
                envelopes,
                end: Disconnect::Closing,
                error: None,
                min_delay: None,
                immediate: true,
            };
        }
    };
    // Closes the frame channel, so the decoder finishes.
    drop(reader);
    let decoding = decoder.lock().expect("decoder lock").take();
    let envelopes = match decoding {
        Some(d) => d.await.unwrap_or(0),
        None => 0,
    };
    let age = started.elapsed();
    if end == Disconnect::Closing && age >= 4 * cfg.handover && age < lifetime {
        // This gateway closes streams sooner than expected: hand over sooner.
        *target.lifetime.lock().expect("lifetime lock") = age;
    }
    Attempt {
        connected: true,
        envelopes,
        end,
        error: error.map(|e| e.to_string()),
        min_delay: None,
        immediate: end == Disconnect::Closing && (envelopes > 0 || age >= MIN_PRODUCTIVE_STREAM),
    }
}

/// Reads a stream handed over until it ends (or [`HANDOVER_DRAIN_MAX`], or
/// shutdown), then lets its decoder finish.
async fn drain(
    mut reader: FrameReader,
    decoding: Option<JoinHandle<u64>>,
    shutdown: CancellationToken,
) {
    let ended = tokio::select! {
        _ = shutdown.cancelled() => None,
        _ = tokio::time::sleep(HANDOVER_DRAIN_MAX) => None,
        end = reader.read(None) => end,
    };
    let url = crate::redact::url(&reader.url);
    drop(reader);
    let envelopes = match decoding {
        Some(d) => d.await.unwrap_or(0),
        None => 0,
    };
    match ended {
        Some((end, None)) => tracing::info!(
            url,
            reason = end.as_str(),
            envelopes,
            "the RLP Gateway stream handed over has ended"
        ),
        Some((end, Some(e))) => tracing::warn!(
            url,
            reason = end.as_str(),
            error = %e,
            envelopes,
            "the RLP Gateway stream handed over has ended"
        ),
        None => tracing::info!(
            url,
            envelopes,
            "closed the RLP Gateway stream handed over (shutdown, or it outlived the handover)"
        ),
    }
}

type Body = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>,
>;

/// One stream's SSE reading: bytes → events → data frames for the decoder.
struct FrameReader {
    url: String,
    idle_timeout: Duration,
    body: Body,
    parser: SseParser,
    frames: tokio::sync::mpsc::Sender<Vec<u8>>,
    status: Arc<SourceStatus>,
    /// Events seen (data, heartbeat or other).
    events: u64,
}

type End = (Disconnect, Option<GatewayError>);

impl FrameReader {
    /// Reads events until the stream ends (`Some`), or until `until` has
    /// come (`None`; the stream is still open).
    async fn read(&mut self, until: Option<Instant>) -> Option<End> {
        let mut found = Vec::new();
        let mut idle_at = Instant::now() + self.idle_timeout;
        loop {
            let deadline = until.map_or(idle_at, |u| u.min(idle_at));
            let next = match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(next) => next,
                Err(_) if until.is_some_and(|u| u <= Instant::now()) => return None,
                Err(_) => {
                    self.parser.finish(&mut found);
                    self.handle(&mut found).await;
                    let e = GatewayError::Idle {
                        url: self.url.clone(),
                        secs: self.idle_timeout.as_secs(),
                    };
                    return Some((Disconnect::Idle, Some(e)));
                }
            };
            let chunk = match next {
                None => {
                    self.parser.finish(&mut found);
                    if let Some(end) = self.handle(&mut found).await {
                        return Some(end);
                    }
                    if self.events == 0 {
                        let e = GatewayError::Empty {
                            url: self.url.clone(),
                        };
                        return Some((Disconnect::Ended, Some(e)));
                    }
                    return Some((Disconnect::Ended, None));
                }
                Some(Err(e)) => {
                    let e = GatewayError::Stream {
                        url: self.url.clone(),
                        reason: crate::error_chain(&e),
                    };
                    return Some((Disconnect::Error, Some(e)));
                }
                Some(Ok(chunk)) => chunk,
            };
            self.parser.push(&chunk, &mut found);
            if !found.is_empty() {
                idle_at = Instant::now() + self.idle_timeout;
            }
            if let Some(end) = self.handle(&mut found).await {
                return Some(end);
            }
        }
    }

    /// Hands the events found to the decoder; `Some` when one ends the stream.
    async fn handle(&mut self, found: &mut Vec<Sse>) -> Option<End> {
        for item in found.drain(..) {
            let (event, data) = match item {
                Sse::Event { event, data } => (event, data),
                Sse::Oversized { bytes } => {
                    self.status.malformed_frames.fetch_add(1, Ordering::Relaxed);
                    let reason = "larger than --gateway-max-frame-bytes";
                    note_skipped(&self.status, &self.url, bytes, reason);
                    continue;
                }
            };
            self.events += 1;
            match event.as_deref() {
                None | Some("") | Some("message") => {
                    if self.frames.send(data).await.is_err() {
                        // The decoder is gone only if it panicked.
                        let e = GatewayError::Stream {
                            url: self.url.clone(),
                            reason: "the frame decoder stopped".into(),
                        };
                        return Some((Disconnect::Error, Some(e)));
                    }
                }
                Some("heartbeat") => {}
                Some("closing") => return Some((Disconnect::Closing, None)),
                Some(other) => tracing::debug!(event = other, "ignoring an unknown SSE event"),
            }
        }
        None
    }
}

/// Decoded batches not yet dispatched, per stream: bounds memory while the
/// router (classification, numbering, the sinks' queues and disk buffers)
/// runs on another core than the decoder.
pub(crate) const DISPATCH_QUEUE_BATCHES: usize = 4;

/// Decodes data frames in order and hands their envelopes, in order, to a
/// dispatching task of its own; returns how many envelopes it decoded, once
/// every one of them is dispatched.
///
/// Why two tasks: the JSON decode is the gateway's largest cost, and the
/// router's work per envelope comes on top of it in one task, so that task
/// alone bounded the rate while both cores had time to spare (measured:
/// 80 % busy each at the full rate, `--mode manifest`). Split, the router's
/// work runs beside the next frame's decode (about a fifth more envelopes
/// per second, `docs/sizing.md`). One dispatcher keeps the batches in order.
async fn decode_frames(
    mut frames: tokio::sync::mpsc::Receiver<Vec<u8>>,
    router: Arc<Router>,
    status: Arc<SourceStatus>,
    url: String,
) -> u64 {
    let (batches, mut decoded) =
        tokio::sync::mpsc::channel::<Vec<EnvelopeView>>(DISPATCH_QUEUE_BATCHES);
    let dispatcher = {
        let router = Arc::clone(&router);
        tokio::spawn(async move {
            while let Some(batch) = decoded.recv().await {
                router.dispatch(batch);
            }
        })
    };
    let mut envelopes = 0u64;
    while let Some(data) = frames.recv().await {
        let text = std::str::from_utf8(&data)
            .map_err(|e| format!("not UTF-8 at byte {}", e.valid_up_to()));
        if router.saturated() {
            // Every sink is full: count the frame's envelopes and shed them
            // unread; decoding them is the CPU the sinks need.
            match text.and_then(|t| count_batch_kinds(t).map_err(|e| e.to_string())) {
                Ok(kinds) => {
                    let n: u64 = kinds.iter().sum();
                    if n > 0 {
                        envelopes += n;
                        status.received(n as usize);
                        router.shed(kinds);
                    }
                }
                Err(reason) => {
                    status.malformed_frames.fetch_add(1, Ordering::Relaxed);
                    note_skipped(&status, &url, data.len(), &reason);
                }
            }
            continue;
        }
        let decoded = text.and_then(|t| decode_batch_views(t).map_err(|e| e.to_string()));
        match decoded {
            Ok(batch) => {
                if !batch.is_empty() {
                    envelopes += batch.len() as u64;
                    status.received(batch.len());
                    if batches.send(batch).await.is_err() {
                        // The dispatcher is gone only if it panicked; as
                        // when the decoder panics, the reader then ends the
                        // stream and the next one starts afresh.
                        break;
                    }
                }
            }
            Err(reason) => {
                status.malformed_frames.fetch_add(1, Ordering::Relaxed);
                note_skipped(&status, &url, data.len(), &reason);
            }
        }
    }
    // Every batch sent is dispatched before the decoder counts as finished
    // (shutdown and the handover wait for it).
    drop(batches);
    let _ = dispatcher.await;
    envelopes
}

/// Warns about a skipped frame, at most once per [`MALFORMED_LOG_INTERVAL`](super::MALFORMED_LOG_INTERVAL)
/// for the source: its size and why, never its content.
fn note_skipped(status: &SourceStatus, url: &str, bytes: usize, reason: &str) {
    let due = status.skip_log.lock().expect("skip log lock").note();
    if let Some(skipped_since_last_warning) = due {
        tracing::warn!(
            url = %crate::redact::url(url),
            bytes,
            reason,
            skipped_since_last_warning,
            "skipped an RLP Gateway frame that is not a valid envelope batch; the stream goes on"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::rules::Filters;
    use crate::record::Kind;
    use crate::sink::SinkQueue;

    /// While every sink is full, a frame is counted by kind and shed without
    /// being decoded (an envelope that would not decode is shed too, not
    /// refused); broken JSON is still a malformed frame; once the sink has
    /// room again, frames are decoded and dispatched.
    #[tokio::test]
    async fn a_saturated_router_sheds_frames_unread() {
        let (queue, _intake) = SinkQueue::new("all", 2);
        let sink = Arc::clone(queue.stats());
        let router = Arc::new(Router::new(
            vec![(queue, vec![Kind::AppLog, Kind::Metric])],
            Filters::default(),
            None,
            false,
        ));
        let status = Arc::new(SourceStatus::default());
        let (tx, frames) = tokio::sync::mpsc::channel(8);
        let log = r#"{"log":{"payload":"YQ=="},"tags":{"source_type":"APP/PROC/WEB"}}"#;
        let frame = |n: usize| format!(r#"{{"batch":[{}]}}"#, vec![log; n].join(",")).into_bytes();
        let decoding = tokio::spawn(decode_frames(
            frames,
            Arc::clone(&router),
            Arc::clone(&status),
            "https://gateway/v2/read".into(),
        ));
        tx.send(frame(2)).await.unwrap(); // admitted
        tx.send(frame(1)).await.unwrap(); // turned away: the sink is full
        // The dispatcher runs behind the decoder: once it has offered both,
        // the decoder sees the router saturated.
        while sink.snapshot("all").dropped_queue_full == 0 {
            tokio::task::yield_now().await;
        }
        // A counter whose name is a number does not decode; unread, it is shed.
        tx.send(br#"{"batch":[{"counter":{"name":7}},{"event":{"title":"t"}}]}"#.to_vec())
            .await
            .unwrap();
        tx.send(br#"{"batch":[{"log":{}"#.to_vec()).await.unwrap();
        while tx.capacity() < 8 {
            tokio::task::yield_now().await;
        }
        // The runner takes the two off: decoded and offered again.
        sink.queued.fetch_sub(2, Ordering::AcqRel);
        tx.send(frame(1)).await.unwrap();
        drop(tx);
        assert_eq!(decoding.await.unwrap(), 6);

        let s = router.stats().snapshot();
        assert_eq!((s.envelopes, s.batches, s.shed), (6, 4, 1));
        assert_eq!((s.app_log, s.metric, s.event, s.unrouted), (4, 0, 1, 1));
        assert_eq!(status.malformed_frames.load(Ordering::Relaxed), 1);
        let k = sink.snapshot("all");
        assert_eq!((k.received, k.queued, k.dropped_queue_full), (4, 1, 1));
    }
}

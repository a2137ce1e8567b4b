//! The `http` sink: records to a SIEM over HTTP(S), as Splunk HTTP Event
//! Collector events (`hec`), newline-delimited JSON (`json`) or one JSON
//! array (`json_array`); gzip by default.
//!
//! A batch goes out as requests of about `max_request_bytes` each (Splunk's
//! and Vector's default is 1 MB), up to `concurrency` of them in flight. When
//! some fail retryably, the runner retries the batch and only the requests
//! that did not go through are sent again. What a reply means (reference: Splunk's HEC codes,
//! Vector's HTTP retry logic):
//! - 2xx: delivered;
//! - 429, 408 and 5xx except 501: retried by the runner with backoff,
//!   honouring `Retry-After`;
//! - 401 and 403 (a token or permission problem, not the data's fault):
//!   retried too, so the records wait in the queue while an operator fixes
//!   the token, instead of filling the dead-letter file;
//! - any other 4xx and 501 (e.g. HEC code 6 "Invalid data format"): the
//!   receiver rejects the data itself: the records go to the dead-letter file;
//! - no reply (connection refused, timeout): retried.
//!
//! A request refused for its content (400, 413, 422) usually holds one bad
//! record among hundreds (an index the token may not write to, HEC code 7),
//! so the refused records are isolated and only they are dead-lettered:
//! - with HEC's `invalid-event-number` k (0-based: "the first invalid
//!   event" of the request), the events before it count as delivered, event
//!   k is dead-lettered and the events after it are sent again. HEC reads a
//!   request's events in order and hands each to the indexing pipeline as
//!   it goes, stopping at the first bad one, so the earlier events are
//!   indexed and the later ones are not; sending the earlier ones again
//!   would index them twice. (With `--hec-acks` they have no `ackId` to wait
//!   for: they count as delivered like a 200 without one.)
//! - without it (other receivers, other codes), the request is split in two
//!   and each half sent again, down to single records.
//!
//! Isolating costs at most [`MAX_ISOLATION_REQUESTS`] requests per batch; a
//! request still refused after that goes to the dead-letter file whole.
//!
//! Bodies are encoded in `encode.rs`; HEC indexer acknowledgements are
//! followed in `acks.rs`; sending, what a reply means and isolating refused
//! records are here.

mod acks;
mod encode;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;

pub use acks::AckConfig;
use acks::Unacked;
use encode::{Encoder, encode_tasks};
pub use encode::{HecIndex, encode_hec, endpoint, sourcetype};

use super::{Batch, BuildError, Outstanding, Sink, SinkError, SinkFailure, SinkStats};
use crate::record::EncodeContext;
use crate::redact::{Secret, SecretUrl};
use crate::tls::ClientSettings;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFormat {
    /// Splunk HEC event objects, concatenated.
    Hec,
    /// One record JSON per line.
    Json,
    /// `[record, record, ...]`.
    JsonArray,
}

/// `Debug` shows the URL's credentials hidden and the secrets masked.
#[derive(Clone, Debug)]
pub struct HttpSinkConfig {
    /// For `hec`, a base URL gets `/services/collector/event` appended.
    pub url: SecretUrl,
    pub format: HttpFormat,
    /// HEC token, sent as `Authorization: Splunk <token>`.
    pub hec_token: Option<Secret>,
    /// Which HEC index each event goes to.
    pub hec_index: HecIndex,
    /// Extra headers (e.g. `Authorization: Bearer ...` for a JSON receiver).
    pub headers: Vec<(String, Secret)>,
    pub gzip: bool,
    pub tls: ClientSettings,
    /// False when the operator turned certificate verification off (`tls` then trusts anyone).
    pub tls_verify: bool,
    pub timeout: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// A batch is sent as requests of about this many bytes (uncompressed).
    pub max_request_bytes: usize,
    /// HEC indexer acknowledgement: records count as delivered only when
    /// Splunk says they were indexed.
    pub acks: Option<AckConfig>,
}

/// Requests a batch may spend isolating the records a receiver refused
/// (with `invalid-event-number`, one per bad record; by halves, about two
/// per level). A receiver that refuses everything costs this much per batch,
/// then its requests go to the dead-letter file whole.
pub(crate) const MAX_ISOLATION_REQUESTS: usize = 100;

/// Records of a batch sent as one request: the first one's position in
/// the batch, how many, and the body.
struct Piece {
    start: usize,
    records: u64,
    body: bytes::Bytes,
}

/// A request that did not go through: what it means, the HTTP status
/// (none without a reply) and HEC's `invalid-event-number`.
struct Refused {
    failure: SinkFailure,
    status: Option<u16>,
    invalid_event: Option<u64>,
}

/// What is left of a batch the runner will write again.
struct Progress {
    /// The runner's id of the batch ([`Batch::id`]).
    batch: u64,
    /// Requests not yet accepted (sent again on the retry).
    todo: Vec<Piece>,
    /// Records whose requests await an acknowledgement.
    awaiting: u64,
    /// Records refused for their content, with the reason.
    rejected: Vec<(usize, SinkError)>,
    /// Requests spent isolating refused records.
    isolation_requests: usize,
}

pub struct HttpSink {
    cfg: HttpSinkConfig,
    client: reqwest::Client,
    endpoint: String,
    /// Sent on every HEC request (required when the token uses indexer acks, harmless otherwise).
    channel: String,
    /// The batch being retried and what of it is left to send.
    progress: Option<Progress>,
    /// The last delivered batch's records refused for their content.
    rejected: Vec<(usize, SinkError)>,
    stats: Option<Arc<SinkStats>>,
    unacked: Vec<Unacked>,
    encoder: Arc<Encoder>,
    /// Uncompressed body buffers kept for the next batch.
    buffers: Vec<Vec<u8>>,
    /// Encoding tasks per batch ([`encode_tasks`]).
    encode_tasks: usize,
    /// Records acknowledged while writing (backpressure), reported by the next roll.
    acked_unreported: u64,
    warned_no_ack_id: bool,
}

impl HttpSink {
    pub fn new(cfg: HttpSinkConfig, ctx: EncodeContext) -> Result<Self, BuildError> {
        // Verification off is warned about at start and in /health
        // (config: RunArgs::warnings), not once more here.
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((**cfg.tls.config()).clone())
            .timeout(cfg.timeout)
            // A batch and the --http-header values never follow a redirect
            // to another origin.
            .redirect(crate::http_client::same_origin_redirects())
            .build()
            .map_err(|e| BuildError::HttpClient(e.to_string()))?;
        let channel = crate::record::guid(rand::rng().random());
        let encoder = Arc::new(Encoder {
            format: cfg.format,
            ctx: ctx.clone(),
            hec_index: cfg.hec_index.clone(),
            max_request_bytes: cfg.max_request_bytes,
            gzip: cfg.gzip,
        });
        Ok(Self {
            endpoint: endpoint(cfg.url.expose(), cfg.format),
            encoder,
            cfg,
            client,
            channel,
            progress: None,
            rejected: Vec::new(),
            stats: None,
            unacked: Vec::new(),
            buffers: Vec::new(),
            encode_tasks: encode_tasks(),
            acked_unreported: 0,
            warned_no_ack_id: false,
        })
    }

    /// Sends one body and reads what the reply means; with acks on, the
    /// `ackId` Splunk gave the request.
    async fn post(&self, body: bytes::Bytes) -> Result<Option<u64>, Refused> {
        let reply = self.request(body).send().await.map_err(|e| {
            let reason = if e.is_timeout() {
                format!("no reply within {:?}", self.cfg.timeout)
            } else {
                crate::error_chain(&e)
            };
            Refused {
                failure: SinkFailure::Retry {
                    error: SinkError::Connect {
                        addr: self.endpoint.clone(),
                        reason,
                    },
                    after: None,
                },
                status: None,
                invalid_event: None,
            }
        })?;
        let status = reply.status().as_u16();
        let retry_after = reply
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = if (200..300).contains(&status) && self.cfg.acks.is_none() {
            String::new()
        } else {
            reply.text().await.unwrap_or_default()
        };
        let json = serde_json::from_str::<serde_json::Value>(&text).ok();
        let field = |name: &str| json.as_ref().and_then(|v| v.get(name)?.as_u64());
        classify_reply(status, retry_after, &text, &self.endpoint).map_err(|failure| Refused {
            failure,
            status: Some(status),
            invalid_event: field("invalid-event-number"),
        })?;
        Ok(field("ackId"))
    }

    /// The channel and token every HEC request (events and ack queries) carries.
    fn hec_identity(&self, mut req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req = req.header("X-Splunk-Request-Channel", &self.channel);
        if let Some(token) = &self.cfg.hec_token {
            req = req.header(
                "Authorization",
                secret_header(&format!("Splunk {}", token.expose())),
            );
        }
        req
    }

    fn request(&self, body: bytes::Bytes) -> reqwest::RequestBuilder {
        let content_type = match self.cfg.format {
            HttpFormat::Json => "application/x-ndjson",
            HttpFormat::Hec | HttpFormat::JsonArray => "application/json",
        };
        let mut req = self
            .client
            .post(&self.endpoint)
            .header("Content-Type", content_type);
        if self.cfg.format == HttpFormat::Hec {
            req = self.hec_identity(req);
        }
        // Custom headers often carry credentials: all are kept out of debug output.
        for (name, value) in &self.cfg.headers {
            req = req.header(name, secret_header(value.expose()));
        }
        if self.cfg.gzip {
            req = req.header("Content-Encoding", "gzip");
        }
        req.body(body)
    }
}

/// A header value marked sensitive, so the HTTP stack never prints it in
/// debug output. (Values were validated at configuration time; one that is
/// not a valid header value is sent empty, which the receiver rejects.)
fn secret_header(value: &str) -> reqwest::header::HeaderValue {
    let mut v = reqwest::header::HeaderValue::from_str(value)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// What an HTTP reply means for the batch.
fn classify_reply(
    status: u16,
    retry_after: Option<Duration>,
    body: &str,
    url: &str,
) -> Result<(), SinkFailure> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    // HEC answers {"text": "...", "code": N}; other receivers say what they say.
    let detail = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let text = v.get("text")?.as_str()?.to_string();
            Some(match v.get("code").and_then(|c| c.as_i64()) {
                Some(code) => format!("{text} (HEC code {code})"),
                None => text,
            })
        })
        .unwrap_or_else(|| body.chars().take(200).collect());
    let hint = match status {
        401 | 403 => " (check --hec-token or the authorization header)",
        _ => "",
    };
    let error = SinkError::Rejected {
        url: url.to_string(),
        status,
        detail: format!("{detail}{hint}"),
    };
    match status {
        408 | 429 | 401 | 403 | 500 | 502..=599 => Err(SinkFailure::Retry {
            error,
            after: retry_after,
        }),
        _ => Err(SinkFailure::Reject { error }),
    }
}

/// Records per batch of the HTTP sink unless `--batch-max-records` says
/// otherwise. It encodes a batch in chunks on every core and sends it as
/// several requests at once: batches of 1,000 left a core idle between
/// rounds (`scripts/bench --mode http`: 124,079 envelopes/s sustained with
/// 1,000, 173,733 with 4,000).
pub(crate) const BATCH_RECORDS: usize = 4000;

impl Sink for HttpSink {
    fn name(&self) -> &str {
        "http"
    }

    fn batch_records(&self) -> usize {
        BATCH_RECORDS
    }

    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        // A retry of the same batch (the runner retries until success or a
        // final failure) skips the requests that already went through.
        self.wait_for_acks().await?;
        let mut progress = match self.progress.take() {
            Some(p) if p.batch == batch.id => p,
            _ => {
                let parts = self.encode(batch.records).await?;
                Progress {
                    batch: batch.id,
                    todo: pieces(0, parts),
                    awaiting: 0,
                    rejected: Vec::new(),
                    isolation_requests: 0,
                }
            }
        };
        // The failure to retry the batch with and its Retry-After.
        let mut retry: Option<(SinkError, Option<Duration>)> = None;
        // Rounds: every request left, then those isolating refused records.
        while !progress.todo.is_empty() && retry.is_none() {
            let todo = std::mem::take(&mut progress.todo);
            let this = &*self;
            let results: Vec<(Piece, Result<Option<u64>, Refused>)> =
                futures_util::stream::iter(todo)
                    .map(|piece| async move {
                        // The records count in flight while the request is out.
                        let _outstanding = Outstanding::new(this.stats.as_ref(), piece.records);
                        let result = this.post(piece.body.clone()).await;
                        (piece, result)
                    })
                    .buffer_unordered(self.cfg.concurrency.max(1))
                    .collect()
                    .await;
            let mut split = Vec::new();
            for (piece, result) in results {
                match result {
                    Ok(Some(ack_id)) if self.cfg.acks.is_some() => {
                        progress.awaiting += piece.records;
                        self.unacked.push(Unacked {
                            ack_id,
                            body: piece.body,
                            records: piece.records,
                            sent: tokio::time::Instant::now(),
                            acked: false,
                        });
                    }
                    Ok(_) => {
                        if self.cfg.acks.is_some() && !self.warned_no_ack_id {
                            self.warned_no_ack_id = true;
                            tracing::warn!(
                                "HEC answered without an ackId: the token does not use indexer acknowledgement; a 200 counts as delivered"
                            );
                        }
                    }
                    Err(Refused {
                        failure: SinkFailure::Retry { error, after },
                        ..
                    }) => {
                        // Keep the longest Retry-After any request was given.
                        let longer = |(_, kept): &(SinkError, Option<Duration>)| {
                            after.unwrap_or_default() > kept.unwrap_or_default()
                        };
                        if retry.as_ref().is_none_or(longer) {
                            retry = Some((error, after));
                        }
                        progress.todo.push(piece);
                    }
                    Err(r) => isolate(&mut progress, piece, r, &mut split),
                }
            }
            for (start, end) in split {
                // Some of the batch already went through: a range that
                // cannot be encoded is refused on its own, not the batch.
                match self.encode_range(batch.records, start, end).await {
                    Ok(parts) => progress.todo.extend(pieces(start, parts)),
                    Err(f) => progress
                        .rejected
                        .extend((start..end).map(|i| (i, f.error().clone()))),
                }
            }
        }
        if let Some((error, after)) = retry {
            self.progress = Some(progress);
            return Err(SinkFailure::Retry { error, after });
        }
        // Refused records go to the dead-letter file; records whose
        // requests await an acknowledgement stay in flight.
        let rejected = progress.rejected.len() as u64;
        self.rejected = progress.rejected;
        Ok(batch.records.len() as u64 - progress.awaiting - rejected)
    }

    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        self.poll_acks().await;
        Ok(std::mem::take(&mut self.acked_unreported))
    }

    fn roll_interval(&self) -> Option<Duration> {
        self.cfg.acks.as_ref().map(|a| a.interval)
    }

    fn attach(&mut self, stats: &Arc<SinkStats>) {
        self.stats = Some(Arc::clone(stats));
    }

    fn take_rejected(&mut self) -> Vec<(usize, SinkError)> {
        std::mem::take(&mut self.rejected)
    }
}

/// Encoded parts (body, records) of consecutive records from `start` on.
fn pieces(mut start: usize, parts: Vec<(bytes::Bytes, u64)>) -> Vec<Piece> {
    parts
        .into_iter()
        .map(|(body, records)| {
            let piece = Piece {
                start,
                records,
                body,
            };
            start += records as usize;
            piece
        })
        .collect()
}

/// A request the receiver refused for good: which of its records to
/// dead-letter and which ranges `[start, end)` to send again (see the module
/// documentation).
fn isolate(
    progress: &mut Progress,
    piece: Piece,
    refused: Refused,
    again: &mut Vec<(usize, usize)>,
) {
    let (start, n) = (piece.start, piece.records as usize);
    let error = refused.failure.error().clone();
    let content = matches!(refused.status, Some(400 | 413 | 422));
    if !content || progress.isolation_requests >= MAX_ISOLATION_REQUESTS {
        if content {
            tracing::warn!(
                records = n,
                requests = progress.isolation_requests,
                "stopped isolating the records the receiver refuses; the request goes to the dead-letter file whole"
            );
        }
        progress
            .rejected
            .extend((start..start + n).map(|i| (i, error.clone())));
        return;
    }
    let mut send = |from: usize, to: usize| {
        if from < to {
            progress.isolation_requests += 1;
            again.push((from, to));
        }
    };
    match refused.invalid_event.map(|k| k as usize) {
        // Events before k are indexed; k is refused; the rest go again.
        Some(k) if k < n => {
            send(start + k + 1, start + n);
            progress.rejected.push((start + k, error));
        }
        _ if n == 1 => progress.rejected.push((start, error)),
        _ => {
            send(start, start + n / 2);
            send(start + n / 2, start + n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `isolate` on a refused request of `n` records from 10 on: the records
    /// dead-lettered and the ranges sent again.
    fn isolated(
        n: u64,
        status: u16,
        invalid_event: Option<u64>,
        spent: usize,
    ) -> (Vec<usize>, Vec<(usize, usize)>, usize) {
        let mut progress = Progress {
            batch: 0,
            todo: Vec::new(),
            awaiting: 0,
            rejected: Vec::new(),
            isolation_requests: spent,
        };
        let piece = Piece {
            start: 10,
            records: n,
            body: bytes::Bytes::new(),
        };
        let refused = Refused {
            failure: classify_reply(status, None, "", "u").unwrap_err(),
            status: Some(status),
            invalid_event,
        };
        let mut again = Vec::new();
        isolate(&mut progress, piece, refused, &mut again);
        let rejected = progress.rejected.iter().map(|(i, _)| *i).collect();
        (rejected, again, progress.isolation_requests)
    }

    #[test]
    fn refused_records_are_isolated_by_event_number_by_halves_or_not_at_all() {
        // HEC names event 3: 10..13 were indexed, 13 is refused, 14..20 go again.
        assert_eq!(isolated(10, 400, Some(3), 0), (vec![13], vec![(14, 20)], 1));
        // The last event: nothing to send again.
        assert_eq!(isolated(10, 400, Some(9), 0), (vec![19], vec![], 0));
        // No number (or one outside the request): halves.
        assert_eq!(
            isolated(10, 400, None, 0),
            (vec![], vec![(10, 15), (15, 20)], 2)
        );
        assert_eq!(
            isolated(5, 413, Some(5), 0),
            (vec![], vec![(10, 12), (12, 15)], 2)
        );
        assert_eq!(isolated(1, 422, None, 0), (vec![10], vec![], 0));
        // Not about the content (a wrong URL): the request is refused whole.
        assert_eq!(isolated(3, 404, None, 0), (vec![10, 11, 12], vec![], 0));
        // The batch spent its isolation requests: refused whole.
        assert_eq!(
            isolated(3, 400, Some(1), MAX_ISOLATION_REQUESTS),
            (vec![10, 11, 12], vec![], MAX_ISOLATION_REQUESTS)
        );
    }

    #[test]
    fn replies_are_retried_rejected_or_accepted_as_hec_means_them() {
        let retry = |status, body: &str| match classify_reply(status, None, body, "u") {
            Ok(()) => "ok",
            Err(SinkFailure::Retry { .. }) => "retry",
            Err(SinkFailure::Reject { .. }) => "dead-letter",
            Err(SinkFailure::Lost { .. }) => "drop",
        };
        assert_eq!(retry(200, r#"{"text":"Success","code":0}"#), "ok");
        assert_eq!(retry(503, r#"{"text":"Server is busy","code":9}"#), "retry");
        assert_eq!(
            retry(500, r#"{"text":"Internal server error","code":8}"#),
            "retry"
        );
        assert_eq!(retry(429, ""), "retry");
        assert_eq!(retry(408, ""), "retry");
        assert_eq!(retry(403, r#"{"text":"Invalid token","code":4}"#), "retry");
        assert_eq!(
            retry(400, r#"{"text":"Invalid data format","code":6}"#),
            "dead-letter"
        );
        assert_eq!(
            retry(400, r#"{"text":"Incorrect index","code":7}"#),
            "dead-letter"
        );
        assert_eq!(retry(501, ""), "dead-letter");
        let f = classify_reply(
            400,
            None,
            r#"{"text":"Invalid data format","code":6}"#,
            "https://s/e",
        )
        .unwrap_err();
        assert_eq!(
            f.error().in_sink("http").to_string(),
            "http sink: https://s/e answered 400: Invalid data format (HEC code 6)"
        );
        let f = classify_reply(429, Some(Duration::from_secs(7)), "", "u").unwrap_err();
        assert!(
            matches!(f, SinkFailure::Retry { after: Some(a), .. } if a == Duration::from_secs(7)),
            "{f:?}"
        );
    }
}

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

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use futures_util::StreamExt;
use rand::Rng;

use super::{Outstanding, Sink, SinkError, SinkFailure, SinkStats};
use crate::record::{EncodeContext, Kind, Record, put_digits, write_int};
use crate::redact::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFormat {
    /// Splunk HEC event objects, concatenated.
    Hec,
    /// One record JSON per line.
    Json,
    /// `[record, record, ...]`.
    JsonArray,
}

#[derive(Clone)]
pub struct HttpSinkConfig {
    /// For `hec`, a base URL gets `/services/collector/event` appended.
    pub url: String,
    pub format: HttpFormat,
    /// HEC token, sent as `Authorization: Splunk <token>`.
    pub hec_token: Option<Secret>,
    /// Which HEC index each event goes to.
    pub hec_index: HecIndex,
    /// Extra headers (e.g. `Authorization: Bearer ...` for a JSON receiver).
    pub headers: Vec<(String, Secret)>,
    pub gzip: bool,
    pub tls: Arc<rustls::ClientConfig>,
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

/// How HEC indexer acknowledgements are followed.
#[derive(Clone, Debug)]
pub struct AckConfig {
    /// How often `/services/collector/ack` is asked (the sink's roll interval).
    pub interval: Duration,
    /// A request not acknowledged after this long is sent again (at least once).
    pub timeout: Duration,
    /// Requests awaiting acknowledgement at most; beyond, writes wait.
    pub max_pending: usize,
}

/// Requests a batch may spend isolating the records a receiver refused
/// (with `invalid-event-number`, one per bad record; by halves, about two
/// per level). A receiver that refuses everything costs this much per batch,
/// then its requests go to the dead-letter file whole.
pub const MAX_ISOLATION_REQUESTS: usize = 100;

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
    /// The batch's address and length.
    id: (usize, usize),
    /// Requests not yet accepted (sent again on the retry).
    todo: Vec<Piece>,
    /// Records whose requests await an acknowledgement.
    awaiting: u64,
    /// Records refused for their content, with the reason.
    rejected: Vec<(usize, SinkError)>,
    /// Requests spent isolating refused records.
    isolation_requests: usize,
}

/// A request Splunk accepted and has not yet said it indexed.
struct Unacked {
    ack_id: u64,
    body: bytes::Bytes,
    records: u64,
    sent: tokio::time::Instant,
    /// Indexed, but reported only once every earlier request is too: the
    /// runner and the disk buffer count deliveries in order.
    acked: bool,
}

impl std::fmt::Debug for HttpSinkConfig {
    // Written out for the URL (its credentials hidden) and to leave out the
    // TLS settings; the token and header values show themselves masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSinkConfig")
            .field("url", &crate::redact::url(&self.url))
            .field("format", &self.format)
            .field("hec_token", &self.hec_token)
            .field("hec_index", &self.hec_index)
            .field("headers", &self.headers)
            .field("gzip", &self.gzip)
            .field("tls_verify", &self.tls_verify)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("acks", &self.acks)
            .finish_non_exhaustive()
    }
}

/// Which Splunk index an event goes to: the value of `app_tag` on the record
/// (e.g. an app label carried as a tag), else the kind's index, else the
/// default; no index at all leaves it to the token's default.
#[derive(Clone, Debug, Default)]
pub struct HecIndex {
    pub default: Option<String>,
    /// Indexed by [`Kind::index`].
    pub per_kind: [Option<String>; 4],
    pub app_tag: Option<String>,
}

impl HecIndex {
    pub fn for_record<'a>(&'a self, record: &'a Record) -> Option<&'a str> {
        self.app_tag
            .as_deref()
            .and_then(|t| record.tag(t))
            .filter(|v| !v.is_empty())
            .or(self.per_kind[record.kind.index()].as_deref())
            .or(self.default.as_deref())
    }
}

/// The URL requests go to.
pub fn endpoint(url: &str, format: HttpFormat) -> String {
    let trimmed = url.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if format == HttpFormat::Hec && !has_path {
        format!("{trimmed}/services/collector/event")
    } else {
        url.to_string()
    }
}

/// Where HEC acknowledgements are asked for, next to the event endpoint.
pub fn ack_endpoint(endpoint: &str) -> String {
    match endpoint.find("/services/collector") {
        Some(i) => format!("{}/services/collector/ack", &endpoint[..i]),
        None => format!("{}/ack", endpoint.trim_end_matches('/')),
    }
}

/// Splunk's sourcetype for a kind.
pub fn sourcetype(kind: Kind) -> &'static str {
    match kind {
        Kind::Api => "cf:api",
        Kind::AppLog => "cf:app_log",
        Kind::Metric => "cf:metric",
        Kind::Event => "cf:event",
    }
}

/// Appends one HEC event object for `record` to `out`: `time` (epoch seconds,
/// microseconds), `host`, `source`, `sourcetype`, optional `index`, indexed
/// `fields` and the record as `event`.
pub fn encode_hec(record: &Record, ctx: &EncodeContext, index: Option<&str>, out: &mut Vec<u8>) {
    let env = &record.envelope;
    let micros = env.timestamp().div_euclid(1000);
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    out.extend_from_slice(br#"{"time":"#);
    write_int(out, secs);
    out.push(b'.');
    let mut digits = [0; 6];
    put_digits(&mut digits, frac as u32);
    out.extend_from_slice(&digits);
    out.extend_from_slice(br#","host":"#);
    match record.host_parts() {
        (["", ..], 1) => out.extend_from_slice(br#""-""#),
        (parts, n) => super::write_json_joined(out, &parts[..n], "."),
    }
    let source = record
        .tag("source_type")
        .or_else(|| record.tag("origin"))
        .unwrap_or(env.source_id());
    out.extend_from_slice(br#","source":"#);
    super::write_json_joined(out, &[source], "");
    out.extend_from_slice(br#","sourcetype":""#);
    out.extend_from_slice(sourcetype(record.kind).as_bytes());
    out.extend_from_slice(br#"","#);
    if let Some(index) = index {
        out.extend_from_slice(br#""index":"#);
        super::write_json_joined(out, &[index], "");
        out.push(b',');
    }
    out.extend_from_slice(br#""fields":{"foundation":"#);
    super::write_json_joined(out, &[&ctx.foundation], "");
    out.extend_from_slice(br#","kind":""#);
    out.extend_from_slice(record.kind.as_str().as_bytes());
    out.push(b'"');
    for (key, tag) in [
        (br#","org":"#.as_slice(), "organization_name"),
        (br#","space":"#, "space_name"),
        (br#","app":"#, "app_name"),
    ] {
        if let Some(v) = record.tag(tag).filter(|v| !v.is_empty()) {
            out.extend_from_slice(key);
            super::write_json_joined(out, &[v], "");
        }
    }
    out.extend_from_slice(br#"},"event":"#);
    record.write_json(ctx, out);
    out.push(b'}');
}

/// Records per chunk an encoding task takes (see [`HttpSink::encode`]).
const ENCODE_CHUNK: usize = 250;

/// How many encoding tasks a batch gets: one per core. More only adds
/// threads to the blocking pool, each with its own allocator heap and gzip
/// state (16 tasks of 250 records kept ~150 MB more resident in the `full`
/// benchmark).
fn encode_tasks() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// What encoding a request body needs, shared with the encoding tasks.
struct Encoder {
    format: HttpFormat,
    ctx: EncodeContext,
    hec_index: HecIndex,
    max_request_bytes: usize,
    gzip: bool,
}

impl Encoder {
    /// `records` as bodies of about `max_request_bytes` (compressed when
    /// configured) with their record counts, and a cleared buffer to reuse.
    #[allow(clippy::type_complexity)]
    fn encode(
        &self,
        records: &[Arc<Record>],
        buffer: Option<Vec<u8>>,
    ) -> std::io::Result<(Vec<(bytes::Bytes, u64)>, Vec<u8>)> {
        // Sized for the chunk (a 1 MB buffer per task for 250 records of
        // ~1.7 kB each kept 2-3x the memory resident).
        let want = records
            .iter()
            .map(|r| r.approx_size())
            .sum::<usize>()
            .min(self.max_request_bytes)
            + (16 << 10);
        let mut body = buffer.unwrap_or_else(|| Vec::with_capacity(want));
        body.clear();
        let mut parts = Vec::new();
        let mut count = 0;
        for (i, r) in records.iter().enumerate() {
            count += 1;
            match self.format {
                HttpFormat::JsonArray => body.push(if body.is_empty() { b'[' } else { b',' }),
                HttpFormat::Hec | HttpFormat::Json => {}
            }
            match self.format {
                HttpFormat::Hec => {
                    encode_hec(r, &self.ctx, self.hec_index.for_record(r), &mut body)
                }
                HttpFormat::Json => {
                    r.write_json(&self.ctx, &mut body);
                    body.push(b'\n');
                }
                HttpFormat::JsonArray => r.write_json(&self.ctx, &mut body),
            }
            if body.len() >= self.max_request_bytes || i + 1 == records.len() {
                if self.format == HttpFormat::JsonArray {
                    body.push(b']');
                }
                parts.push((self.compress(&body)?, count));
                body.clear();
                count = 0;
            }
        }
        Ok((parts, body))
    }

    /// The body as it goes on the wire (gzip when configured).
    fn compress(&self, body: &[u8]) -> std::io::Result<bytes::Bytes> {
        if !self.gzip {
            return Ok(bytes::Bytes::copy_from_slice(body));
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        gz.write_all(body)?;
        gz.finish().map(bytes::Bytes::from)
    }
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
    pub fn new(cfg: HttpSinkConfig, ctx: EncodeContext) -> Result<Self, SinkError> {
        // Verification off is warned about at start and in /health
        // (config: RunArgs::warnings), not once more here.
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*cfg.tls).clone())
            .timeout(cfg.timeout)
            // A batch and the --http-header values never follow a redirect
            // to another origin.
            .redirect(crate::config::same_origin_redirects())
            .build()
            .map_err(|e| SinkError::Config {
                sink: "http",
                what: format!("cannot build the HTTP client: {e}"),
            })?;
        let channel = crate::record::guid(rand::rng().random());
        let encoder = Arc::new(Encoder {
            format: cfg.format,
            ctx: ctx.clone(),
            hec_index: cfg.hec_index.clone(),
            max_request_bytes: cfg.max_request_bytes,
            gzip: cfg.gzip,
        });
        Ok(Self {
            endpoint: endpoint(&cfg.url, cfg.format),
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

    /// The batch as compressed request bodies of about `max_request_bytes`
    /// each (uncompressed; a record larger than that goes alone), with their
    /// record counts, in batch order. One blocking task per core encodes
    /// and compresses chunks of [`ENCODE_CHUNK`] records, taking the next
    /// chunk as it finishes one: on one task the sink encoded at most ~100k
    /// records/s (callgrind: JSON and gzip are 8 µs a record) while the
    /// other core waited, and a task per chunk started up to 16 threads.
    async fn encode(
        &mut self,
        batch: &[Arc<Record>],
    ) -> Result<Vec<(bytes::Bytes, u64)>, SinkFailure> {
        let batch: Arc<[Arc<Record>]> = batch.into();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let chunks = batch.len().div_ceil(ENCODE_CHUNK);
        let tasks: Vec<_> = (0..self.encode_tasks.min(chunks))
            .map(|_| {
                let (batch, next) = (Arc::clone(&batch), Arc::clone(&next));
                let encoder = Arc::clone(&self.encoder);
                let mut buffer = self.buffers.pop();
                tokio::task::spawn_blocking(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let start = i * ENCODE_CHUNK;
                        if start >= batch.len() {
                            return Ok::<_, std::io::Error>((done, buffer));
                        }
                        let chunk = &batch[start..batch.len().min(start + ENCODE_CHUNK)];
                        let (bodies, reuse) = encoder.encode(chunk, buffer.take())?;
                        done.push((i, bodies));
                        buffer = Some(reuse);
                    }
                })
            })
            .collect();
        let mut encoded = Vec::with_capacity(chunks);
        let mut failed = None;
        for task in tasks {
            match task.await {
                Ok(Ok((done, buffer))) => {
                    encoded.extend(done);
                    if let Some(buffer) = buffer
                        && self.buffers.len() < self.cfg.concurrency.max(1) * 2
                    {
                        self.buffers.push(buffer);
                    }
                }
                Ok(Err(e)) => failed = Some(e.to_string()),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        match failed {
            None => {
                encoded.sort_unstable_by_key(|(i, _)| *i);
                Ok(encoded.into_iter().flat_map(|(_, bodies)| bodies).collect())
            }
            Some(reason) => Err(SinkError::Io {
                sink: "http",
                path: "<gzip>".into(),
                source: std::io::Error::other(reason),
            }
            .into()),
        }
    }

    /// Records `start..end` of the batch as request bodies, encoded on a
    /// blocking thread (a range isolating refused records).
    async fn encode_range(
        &mut self,
        batch: &[Arc<Record>],
        start: usize,
        end: usize,
    ) -> Result<Vec<(bytes::Bytes, u64)>, SinkFailure> {
        let records = batch[start..end].to_vec();
        let encoder = Arc::clone(&self.encoder);
        let encoded = tokio::task::spawn_blocking(move || encoder.encode(&records, None))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        encoded.map(|(parts, _)| parts).map_err(|e| {
            SinkError::Io {
                sink: "http",
                path: "<gzip>".into(),
                source: e,
            }
            .into()
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
                failure: SinkFailure::retryable(
                    SinkError::Connect {
                        sink: "http",
                        addr: self.endpoint.clone(),
                        reason,
                    },
                    None,
                ),
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

    /// Asks Splunk which requests it indexed; counts their records as
    /// acknowledged and sends again those waiting longer than the timeout.
    async fn poll_acks(&mut self) {
        let Some(acks) = self.cfg.acks.clone() else {
            return;
        };
        if self.unacked.is_empty() {
            return;
        }
        let ids: Vec<u64> = self
            .unacked
            .iter()
            .filter(|u| !u.acked)
            .map(|u| u.ack_id)
            .collect();
        let req = self
            .client
            .post(ack_endpoint(&self.endpoint))
            .header("Content-Type", "application/json")
            .body(serde_json::json!({ "acks": ids }).to_string());
        let answer = match self.hec_identity(req).send().await {
            Ok(r) if r.status().is_success() => r
                .text()
                .await
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()),
            Ok(r) => {
                tracing::warn!(
                    status = r.status().as_u16(),
                    "HEC acknowledgement query refused"
                );
                None
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "HEC acknowledgement query failed");
                None
            }
        };
        if let Some(acked) = answer.as_ref().and_then(|a| a.get("acks")) {
            for u in &mut self.unacked {
                if acked.get(u.ack_id.to_string()).and_then(|v| v.as_bool()) == Some(true) {
                    u.acked = true;
                }
            }
        }
        let now = tokio::time::Instant::now();
        for i in 0..self.unacked.len() {
            if self.unacked[i].acked || now.duration_since(self.unacked[i].sent) < acks.timeout {
                continue;
            }
            // Not indexed in time: send it again (Splunk may then hold it twice).
            let body = self.unacked[i].body.clone();
            match self.post(body).await {
                Ok(Some(id)) => {
                    tracing::warn!(
                        records = self.unacked[i].records,
                        "HEC request not acknowledged in time; sent again"
                    );
                    self.unacked[i].ack_id = id;
                    self.unacked[i].sent = now;
                }
                Ok(None) => self.unacked[i].acked = true,
                Err(f) => {
                    tracing::warn!(error = %f.failure.error, "resending an unacknowledged HEC request failed")
                }
            }
        }
        // Report in order: the acknowledged requests at the front.
        let done = self.unacked.iter().take_while(|u| u.acked).count();
        self.acked_unreported += self.unacked.drain(..done).map(|u| u.records).sum::<u64>();
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

/// What an HTTP reply means for the batch.
/// A header value marked sensitive, so the HTTP stack never prints it in
/// debug output. (Values were validated at configuration time; one that is
/// not a valid header value is sent empty, which the receiver rejects.)
fn secret_header(value: &str) -> reqwest::header::HeaderValue {
    let mut v = reqwest::header::HeaderValue::from_str(value)
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

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
        sink: "http",
        url: url.to_string(),
        status,
        detail: format!("{detail}{hint}"),
    };
    match status {
        408 | 429 | 401 | 403 => Err(SinkFailure::retryable(error, retry_after)),
        500..=599 if status != 501 => Err(SinkFailure::retryable(error, retry_after)),
        _ => Err(SinkFailure::rejected(error)),
    }
}

/// Records per batch of the HTTP sink unless `--batch-max-records` says
/// otherwise. It encodes a batch in chunks on every core and sends it as
/// several requests at once: batches of 1,000 left a core idle between
/// rounds (`scripts/bench --mode http`: 124,079 envelopes/s sustained with
/// 1,000, 173,733 with 4,000).
pub const BATCH_RECORDS: usize = 4000;

impl Sink for HttpSink {
    fn name(&self) -> &str {
        "http"
    }

    fn batch_records(&self) -> usize {
        BATCH_RECORDS
    }

    async fn write(&mut self, batch: &[Arc<Record>]) -> Result<u64, SinkFailure> {
        // A retry of the same batch (the runner retries until success or a
        // final failure) skips the requests that already went through.
        let id = (batch.as_ptr() as usize, batch.len());
        let max_pending = self.cfg.acks.as_ref().map_or(usize::MAX, |a| a.max_pending);
        if self.unacked.len() >= max_pending {
            self.poll_acks().await;
            if self.unacked.len() >= max_pending {
                let error = SinkError::Config {
                    sink: "http",
                    what: format!(
                        "{} requests await HEC acknowledgement; waiting",
                        self.unacked.len()
                    ),
                };
                return Err(SinkFailure::retryable(error, None));
            }
        }
        let mut progress = match self.progress.take() {
            Some(p) if p.id == id => p,
            _ => {
                let parts = self.encode(batch).await?;
                Progress {
                    id,
                    todo: pieces(0, parts),
                    awaiting: 0,
                    rejected: Vec::new(),
                    isolation_requests: 0,
                }
            }
        };
        let mut retry: Option<SinkFailure> = None;
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
                    Err(r) if r.failure.retry.is_some() => {
                        // Keep the longest Retry-After any request was given.
                        let after = |f: &SinkFailure| f.retry.flatten().unwrap_or_default();
                        if retry.as_ref().is_none_or(|k| after(&r.failure) > after(k)) {
                            retry = Some(r.failure);
                        }
                        progress.todo.push(piece);
                    }
                    Err(r) => isolate(&mut progress, piece, r, &mut split),
                }
            }
            for (start, end) in split {
                // Some of the batch already went through: a range that
                // cannot be encoded is refused on its own, not the batch.
                match self.encode_range(batch, start, end).await {
                    Ok(parts) => progress.todo.extend(pieces(start, parts)),
                    Err(f) => progress
                        .rejected
                        .extend((start..end).map(|i| (i, clone_error(&f.error)))),
                }
            }
        }
        if let Some(f) = retry {
            self.progress = Some(progress);
            return Err(f);
        }
        // Refused records go to the dead-letter file; records whose
        // requests await an acknowledgement stay in flight.
        let rejected = progress.rejected.len() as u64;
        self.rejected = progress.rejected;
        Ok(batch.len() as u64 - progress.awaiting - rejected)
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
    let error = refused.failure.error;
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
            .extend((start..start + n).map(|i| (i, clone_error(&error))));
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

/// The same error again, for each record it refused.
fn clone_error(e: &SinkError) -> SinkError {
    match e {
        SinkError::Rejected {
            sink,
            url,
            status,
            detail,
        } => SinkError::Rejected {
            sink,
            url: url.clone(),
            status: *status,
            detail: detail.clone(),
        },
        other => SinkError::Config {
            sink: "http",
            what: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hec_time_is_seconds_with_six_digits_of_microseconds() {
        let ctx = EncodeContext {
            foundation: "f".into(),
        };
        let time = |nanos: i64| {
            let record = crate::classify::classify(crate::proto::Envelope {
                timestamp: nanos,
                ..Default::default()
            });
            let mut out = Vec::new();
            encode_hec(&record, &ctx, None, &mut out);
            let out = String::from_utf8(out).unwrap();
            let rest = out.strip_prefix(r#"{"time":"#).unwrap();
            rest[..rest.find(',').unwrap()].to_string()
        };
        assert_eq!(time(1_700_000_000_000_042_999), "1700000000.000042");
        assert_eq!(time(1_700_000_000_100_000_000), "1700000000.100000");
        assert_eq!(time(0), "0.000000");
        // Before 1970: the whole seconds round down, the fraction counts up.
        assert_eq!(time(-1_000), "-1.999999");
    }

    #[test]
    fn hec_events_are_exact_and_escape_what_json_requires() {
        use crate::proto::envelope::Message;
        use crate::proto::{Envelope, Log};
        let ctx = EncodeContext {
            foundation: "prod".into(),
        };
        let tags = |t: &[(&str, &str)]| {
            t.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let log = |tags| {
            crate::classify::classify(Envelope {
                timestamp: 1_700_000_000_123_456_789,
                source_id: "app-guid".into(),
                tags,
                message: Some(Message::Log(Log {
                    payload: "hi".into(),
                    r#type: 0,
                })),
                ..Envelope::default()
            })
        };
        let event = |r: &Record, index| {
            let mut out = Vec::new();
            encode_hec(r, &ctx, index, &mut out);
            let text = String::from_utf8(out).unwrap();
            // The wrapper, without the record JSON (tested elsewhere).
            let (head, _) = text.split_once(r#","event":"#).unwrap();
            head.to_string()
        };
        let plain = log(tags(&[
            ("organization_name", "org"),
            ("space_name", "dev"),
            ("app_name", "web"),
            ("source_type", "APP/PROC/WEB"),
        ]));
        assert_eq!(
            event(&plain, Some("cf_apps")),
            r#"{"time":1700000000.123456,"host":"org.dev.web","source":"APP/PROC/WEB","sourcetype":"cf:app_log","index":"cf_apps","fields":{"foundation":"prod","kind":"app_log","org":"org","space":"dev","app":"web"}"#
        );
        let odd = log(tags(&[
            ("organization_name", "o\"rg"),
            ("app_name", "a\\b\n"),
        ]));
        assert_eq!(
            event(&odd, None),
            r#"{"time":1700000000.123456,"host":"o\"rg.a\\b\n","source":"app-guid","sourcetype":"cf:app_log","fields":{"foundation":"prod","kind":"app_log","org":"o\"rg","app":"a\\b\n"}"#
        );
        assert_eq!(
            event(&log(tags(&[])), None),
            r#"{"time":1700000000.123456,"host":"-","source":"app-guid","sourcetype":"cf:app_log","fields":{"foundation":"prod","kind":"app_log"}"#
        );
    }

    /// `isolate` on a refused request of `n` records from 10 on: the records
    /// dead-lettered and the ranges sent again.
    fn isolated(
        n: u64,
        status: u16,
        invalid_event: Option<u64>,
        spent: usize,
    ) -> (Vec<usize>, Vec<(usize, usize)>, usize) {
        let mut progress = Progress {
            id: (0, 0),
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
    fn hec_base_urls_get_the_event_path() {
        assert_eq!(
            endpoint("https://splunk:8088", HttpFormat::Hec),
            "https://splunk:8088/services/collector/event"
        );
        assert_eq!(
            endpoint("https://splunk:8088/", HttpFormat::Hec),
            "https://splunk:8088/services/collector/event"
        );
        assert_eq!(
            endpoint("https://splunk:8088/services/collector", HttpFormat::Hec),
            "https://splunk:8088/services/collector"
        );
        assert_eq!(
            endpoint("https://siem/ingest", HttpFormat::Json),
            "https://siem/ingest"
        );
    }

    #[test]
    fn replies_are_retried_rejected_or_accepted_as_hec_means_them() {
        let retry = |status, body: &str| match classify_reply(status, None, body, "u") {
            Ok(()) => "ok",
            Err(f) if f.retry.is_some() => "retry",
            Err(f) if f.rejected => "dead-letter",
            Err(_) => "drop",
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
            f.error.to_string(),
            "http sink: https://s/e answered 400: Invalid data format (HEC code 6)"
        );
        let f = classify_reply(429, Some(Duration::from_secs(7)), "", "u").unwrap_err();
        assert_eq!(f.retry, Some(Some(Duration::from_secs(7))));
    }
}

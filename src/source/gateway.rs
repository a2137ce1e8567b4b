//! The RLP Gateway source: `GET <log-stream>/v2/read` over HTTPS with a UAA
//! token, Server-Sent Events of JSON envelope batches. This is how a nozzle
//! that runs as a Cloud Foundry app (`cf push`) reads the firehose: an app
//! container cannot reach the RLP's internal gRPC port.
//!
//! - Selection is server-side: the query names the envelope types, the
//!   source ids, `shard_id` and `deterministic_name` ([`Streams`]).
//! - SSE is parsed by `sse-stream`, which appends a line split across reads
//!   to a growing buffer with no length cap (batch lines can be megabytes)
//!   and scans with `memchr`.
//! - `event: heartbeat` only proves the stream alive: no frame at all for
//!   [`IDLE_TIMEOUT`] (the gateway's 15 s heartbeat plus slack) ends the
//!   stream and reconnects. `event: closing` (the gateway ends every stream
//!   after 14 minutes) reconnects at once and is not an error.
//! - A frame that does not decode is counted, logged at most once per
//!   [`MALFORMED_LOG_INTERVAL`] with its size and the reason (never its
//!   content), and skipped; the stream goes on. (Invalid UTF-8 in a frame
//!   is the one thing `sse-stream` does not skip: it ends the stream, which
//!   is then reconnected like any broken stream.)
//! - 401 or 404 (the gateway's answer to any auth problem) renews the token
//!   once and retries at once; a fresh token that is refused too is an
//!   error naming the missing scope, and every later attempt (one per
//!   backoff step) uses a fresh token so a granted scope is picked up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Url;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cf_api;
use super::status::{Attempt, Disconnect, SourceStatus, reconnect_loop};
use super::uaa::{TokenProvider, UaaConfig, UaaError};
use super::{Backoff, Streams};
use crate::route::Router;

pub mod json;
pub use json::{DecodeError, decode_batch};

/// The gateway sends a heartbeat after 15 s without data; allow 3 s more.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(18);

/// At most one log line per this interval about malformed frames.
pub const MALFORMED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A `closing` that ends a stream younger than this, without data, is
/// followed by a backoff step like any other end (a gateway that closes at
/// once must not make the nozzle spin).
pub const MIN_PRODUCTIVE_STREAM: Duration = Duration::from_secs(1);

/// Where the gateway is and how to get a token for it.
#[derive(Clone)]
#[allow(clippy::large_enum_variant)] // built once per run
pub enum GatewayEndpoints {
    /// Both known: the gateway's URL and a token provider.
    Given { url: Url, tokens: TokenProvider },
    /// Whatever is not given is read from the CF API root's `links` at start.
    Discover {
        cf_api: Url,
        gateway_url: Option<Url>,
        uaa_url: Option<Url>,
        client_id: String,
        client_secret: String,
    },
}

impl std::fmt::Debug for GatewayEndpoints {
    // The client secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Given { url, tokens } => f
                .debug_struct("Given")
                .field("url", &url.as_str())
                .field("tokens", tokens)
                .finish(),
            Self::Discover {
                cf_api,
                gateway_url,
                uaa_url,
                client_id,
                ..
            } => f
                .debug_struct("Discover")
                .field("cf_api", &cf_api.as_str())
                .field("gateway_url", &gateway_url.as_ref().map(Url::as_str))
                .field("uaa_url", &uaa_url.as_ref().map(Url::as_str))
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub endpoints: GatewayEndpoints,
    /// The client for UAA, the CF API and the gateway ([`crate::config::http_client`]).
    pub http: reqwest::Client,
    pub streams: Streams,
    pub backoff: Backoff,
    pub idle_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot get a UAA token for the RLP Gateway: {0}")]
    Token(#[from] UaaError),
    #[error("cannot discover the RLP Gateway and UAA: {0}")]
    Discover(#[from] cf_api::CfApiError),
    #[error("the Cloud Foundry API at {} links to no log_stream (RLP Gateway); set --gateway-url", crate::redact::url(.0))]
    NoLogStream(String),
    #[error("cannot reach the RLP Gateway at {url_shown}: {reason}", url_shown = crate::redact::url(.url))]
    Connect { url: String, reason: String },
    #[error(
        "the RLP Gateway at {url_shown} refused a fresh token (HTTP {status}): the token lacks doppler.firehose or logs.admin{hint}", url_shown = crate::redact::url(.url))]
    Unauthorized {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error(
        "the RLP Gateway at {url_shown} refused the request as invalid (HTTP 400{detail}): a configuration error, check --source-ids and --envelope-types", url_shown = crate::redact::url(.url))]
    BadRequest { url: String, detail: String },
    #[error(
        "the RLP Gateway at {url_shown} cannot open a stream from the RLP (HTTP {status}{detail}); retrying", url_shown = crate::redact::url(.url))]
    Unavailable {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("the RLP Gateway at {url_shown} answered HTTP {status}{detail}", url_shown = crate::redact::url(.url))]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("no data or heartbeat from the RLP Gateway at {url_shown} for {secs} s; reconnecting", url_shown = crate::redact::url(.url))]
    Idle { url: String, secs: u64 },
    #[error("the stream from the RLP Gateway at {url_shown} failed: {reason}", url_shown = crate::redact::url(.url))]
    Stream { url: String, reason: String },
}

/// The `/v2/read` URL for a gateway base URL (a URL that already ends in
/// `/v2/read` is kept) and a selection.
pub fn read_url(base: &Url, streams: &Streams) -> Url {
    let mut url = base.clone();
    let path = base.path().trim_end_matches('/');
    if !path.ends_with("/v2/read") {
        url.set_path(&format!("{path}/v2/read"));
    }
    url.set_query(Some(&streams.gateway_query()));
    url
}

/// Reads from the gateway until `shutdown` is cancelled, reconnecting as
/// needed. Endpoint discovery, when configured, is retried with the same
/// backoff until it succeeds.
pub async fn run(
    cfg: GatewayConfig,
    router: Arc<Router>,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) {
    let resolved: std::sync::Mutex<Option<Arc<Target>>> = Default::default();
    let decoder: std::sync::Mutex<Option<JoinHandle<u64>>> = Default::default();
    reconnect_loop(
        "gateway",
        cfg.backoff.clone(),
        &status,
        &shutdown,
        || async {
            let known = resolved.lock().expect("target lock").clone();
            let target = match known {
                Some(t) => t,
                None => match resolve(&cfg).await {
                    Ok(t) => {
                        tracing::info!(url = %crate::redact::parsed_url(&t.url), "RLP Gateway source");
                        let t = Arc::new(t);
                        *resolved.lock().expect("target lock") = Some(Arc::clone(&t));
                        t
                    }
                    Err(e) => return Attempt::failed(Disconnect::Connect, e.to_string()),
                },
            };
            let attempt = stream_once(&cfg, &target, &router, &status, &decoder).await;
            status
                .token_renewals
                .store(target.tokens.renewals(), Ordering::Relaxed);
            attempt
        },
    )
    .await;
}

/// A resolved gateway: where to read and how to authenticate.
pub struct Target {
    pub url: Url,
    pub tokens: TokenProvider,
    /// The last attempt's fresh token was refused: fetch a new one first.
    refused: std::sync::atomic::AtomicBool,
    /// One malformed-frame warning per interval for the whole source.
    malformed: std::sync::Mutex<MalformedLog>,
}

impl Target {
    pub fn new(base: &Url, streams: &Streams, tokens: TokenProvider) -> Self {
        Self {
            url: read_url(base, streams),
            tokens,
            refused: Default::default(),
            malformed: Default::default(),
        }
    }
}

async fn resolve(cfg: &GatewayConfig) -> Result<Target, GatewayError> {
    match &cfg.endpoints {
        GatewayEndpoints::Given { url, tokens } => {
            Ok(Target::new(url, &cfg.streams, tokens.clone()))
        }
        GatewayEndpoints::Discover {
            cf_api,
            gateway_url,
            uaa_url,
            client_id,
            client_secret,
        } => {
            let found = cf_api::discover(&cfg.http, cf_api).await?;
            let gateway = match (gateway_url.clone(), found.log_stream) {
                (Some(u), _) | (None, Some(u)) => u,
                (None, None) => return Err(GatewayError::NoLogStream(cf_api.to_string())),
            };
            let uaa = uaa_url.clone().unwrap_or(found.uaa);
            let tokens = TokenProvider::new(
                UaaConfig {
                    token_url: UaaConfig::token_url_of(&uaa),
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                },
                cfg.http.clone(),
            );
            Ok(Target::new(&gateway, &cfg.streams, tokens))
        }
    }
}

/// Opens the stream: a token, the request, and on 401/404 one retry with a
/// fresh token.
pub async fn connect(
    cfg: &GatewayConfig,
    target: &Target,
) -> Result<reqwest::Response, GatewayError> {
    let url = target.url.as_str();
    let tokens = &target.tokens;
    let mut retried = false;
    loop {
        let renewals = tokens.renewals();
        if target.refused.load(Ordering::Relaxed) && !retried {
            // Refused last time: ask for a token that carries today's scopes.
            tokens.invalidate(&tokens.authorization().await?);
        }
        let auth = tokens.authorization().await?;
        let fresh = tokens.renewals() > renewals;
        let request = cfg
            .http
            .get(target.url.clone())
            .header(reqwest::header::AUTHORIZATION, &auth)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CACHE_CONTROL, "no-cache")
            .send();
        let response = match tokio::time::timeout(cfg.idle_timeout, request).await {
            Err(_) => {
                return Err(GatewayError::Connect {
                    url: url.to_string(),
                    reason: format!(
                        "no response headers within {} s",
                        cfg.idle_timeout.as_secs()
                    ),
                });
            }
            Ok(Err(e)) => {
                return Err(GatewayError::Connect {
                    url: url.to_string(),
                    reason: crate::error_chain(&e.without_url()),
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if status == 200 {
            target.refused.store(false, Ordering::Relaxed);
            return Ok(response);
        }
        let detail = error_detail(response, cfg.idle_timeout).await;
        match status {
            401 | 404 => {
                if !fresh && !retried && !tokens.is_fixed() {
                    // Possibly just expired or revoked: one more try with a new token.
                    tokens.invalidate(&auth);
                    retried = true;
                    continue;
                }
                target.refused.store(true, Ordering::Relaxed);
                return Err(GatewayError::Unauthorized {
                    url: url.to_string(),
                    status,
                    hint: if tokens.is_fixed() {
                        " (a fixed token cannot be renewed)"
                    } else {
                        " (or, without them, access to every --source-ids)"
                    },
                });
            }
            400 => {
                return Err(GatewayError::BadRequest {
                    url: url.to_string(),
                    detail,
                });
            }
            502..=504 => {
                return Err(GatewayError::Unavailable {
                    url: url.to_string(),
                    status,
                    detail,
                });
            }
            _ => {
                return Err(GatewayError::Status {
                    url: url.to_string(),
                    status,
                    detail,
                });
            }
        }
    }
}

/// `: <error>: <message>` from the gateway's JSON error body, cut short;
/// empty when the body is not one.
async fn error_detail(response: reqwest::Response, within: Duration) -> String {
    #[derive(serde::Deserialize)]
    struct JsonError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        message: String,
    }
    let Ok(Ok(body)) = tokio::time::timeout(within, response.bytes()).await else {
        return String::new();
    };
    match serde_json::from_slice::<JsonError>(&body[..body.len().min(64 * 1024)]) {
        Ok(e) if !e.error.is_empty() || !e.message.is_empty() => {
            let text = format!(": {}: {}", e.error, e.message);
            text.chars().take(300).collect()
        }
        _ => String::new(),
    }
}

/// Frames read but not yet decoded, per stream: bounds memory while the
/// decoder runs on another core than the reader.
pub const DECODE_QUEUE_FRAMES: usize = 16;

/// Connects once and forwards batches until the stream ends.
///
/// Reading (HTTP, SSE) and decoding (JSON) run as two tasks joined by a
/// bounded channel, so on a multi-core runtime they use two cores; one
/// decoder keeps the batches in order. The decoder's handle is left in
/// `decoder` so that whoever stops the source can wait for it.
pub async fn stream_once(
    cfg: &GatewayConfig,
    target: &Arc<Target>,
    router: &Arc<Router>,
    status: &Arc<SourceStatus>,
    decoder: &std::sync::Mutex<Option<JoinHandle<u64>>>,
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
    status.set_connected(true);
    let (frames, rx) = tokio::sync::mpsc::channel(DECODE_QUEUE_FRAMES);
    let decoding = tokio::spawn(decode_frames(
        rx,
        Arc::clone(router),
        Arc::clone(status),
        Arc::clone(target),
    ));
    if let Some(previous) = decoder.lock().expect("decoder lock").replace(decoding) {
        // Finished already: its stream ended before this one started.
        drop(previous);
    }
    let (end, error) = read_frames(cfg, url, response, frames).await;
    let decoding = decoder.lock().expect("decoder lock").take();
    let envelopes = match decoding {
        Some(d) => d.await.unwrap_or(0),
        None => 0,
    };
    Attempt {
        connected: true,
        envelopes,
        end,
        error: error.map(|e| e.to_string()),
        min_delay: None,
        immediate: end == Disconnect::Closing
            && (envelopes > 0 || started.elapsed() >= MIN_PRODUCTIVE_STREAM),
    }
}

/// Reads SSE events until the stream ends, handing data frames to `frames`.
async fn read_frames(
    cfg: &GatewayConfig,
    url: &str,
    response: reqwest::Response,
    frames: tokio::sync::mpsc::Sender<String>,
) -> (Disconnect, Option<GatewayError>) {
    let mut events = sse_stream::SseByteStream::new(response.bytes_stream());
    loop {
        let next = match tokio::time::timeout(cfg.idle_timeout, events.next()).await {
            Ok(next) => next,
            Err(_) => {
                let e = GatewayError::Idle {
                    url: url.to_string(),
                    secs: cfg.idle_timeout.as_secs(),
                };
                return (Disconnect::Idle, Some(e));
            }
        };
        let event = match next {
            None => return (Disconnect::Ended, None),
            Some(Err(e)) => {
                let e = GatewayError::Stream {
                    url: url.to_string(),
                    reason: crate::error_chain(&e),
                };
                return (Disconnect::Error, Some(e));
            }
            Some(Ok(event)) => event,
        };
        match event.event.as_deref() {
            None | Some("") | Some("message") => {
                if frames.send(event.data.unwrap_or_default()).await.is_err() {
                    // The decoder is gone only if it panicked.
                    let e = GatewayError::Stream {
                        url: url.to_string(),
                        reason: "the frame decoder stopped".into(),
                    };
                    return (Disconnect::Error, Some(e));
                }
            }
            Some("heartbeat") => {}
            Some("closing") => return (Disconnect::Closing, None),
            Some(other) => tracing::debug!(event = other, "ignoring an unknown SSE event"),
        }
    }
}

/// Decodes data frames in order and dispatches their envelopes; returns how
/// many envelopes it dispatched.
async fn decode_frames(
    mut frames: tokio::sync::mpsc::Receiver<String>,
    router: Arc<Router>,
    status: Arc<SourceStatus>,
    target: Arc<Target>,
) -> u64 {
    let mut envelopes = 0u64;
    while let Some(data) = frames.recv().await {
        match decode_batch(&data) {
            Ok(batch) => {
                if !batch.is_empty() {
                    envelopes += batch.len() as u64;
                    status.received(batch.len());
                    router.dispatch(batch);
                }
            }
            Err(e) => {
                status.malformed_frames.fetch_add(1, Ordering::Relaxed);
                let mut log = target.malformed.lock().expect("malformed log lock");
                log.note(target.url.as_str(), data.len(), &e);
            }
        }
    }
    envelopes
}

/// Rate-limits the malformed-frame warning.
#[derive(Default)]
struct MalformedLog {
    last: Option<Instant>,
    since: u64,
}

impl MalformedLog {
    fn note(&mut self, url: &str, bytes: usize, error: &DecodeError) {
        self.since += 1;
        if self
            .last
            .is_some_and(|at| at.elapsed() < MALFORMED_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            url,
            bytes,
            reason = %error,
            skipped_since_last_warning = self.since,
            "skipped an RLP Gateway frame that is not a valid envelope batch; the stream goes on"
        );
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_url_appends_the_path_once_and_the_selection() {
        let s = Streams {
            shard_id: "s".into(),
            ..Streams::default()
        };
        let base = Url::parse("https://log-stream.sys.example.com").unwrap();
        let want =
            "https://log-stream.sys.example.com/v2/read?log&counter&gauge&timer&event&shard_id=s";
        assert_eq!(read_url(&base, &s).as_str(), want);
        let full = Url::parse("https://log-stream.sys.example.com/v2/read?x=1").unwrap();
        assert_eq!(read_url(&full, &s).as_str(), want);
    }
}

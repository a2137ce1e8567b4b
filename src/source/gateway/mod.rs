//! The RLP Gateway source: `GET <log-stream>/v2/read` over HTTPS with a UAA
//! token, Server-Sent Events of JSON envelope batches. This is how a nozzle
//! that runs as a Cloud Foundry app (`cf push`) reads the firehose: an app
//! container cannot reach the RLP's internal gRPC port.
//!
//! - Selection is server-side: the query names the envelope types, the
//!   source ids, `shard_id` and `deterministic_name` ([`Streams`]).
//! - SSE is parsed by [`sse::SseParser`]: batch lines can be megabytes, so
//!   a line or event may hold up to `max_frame_bytes` (16 MiB by default,
//!   the RLP path's limit); a larger one is dropped as it arrives, counted in
//!   `malformed_frames`, and the stream goes on with the next event.
//! - `event: heartbeat` only proves the stream alive: no complete event for
//!   [`IDLE_TIMEOUT`] (the gateway's 15 s heartbeat plus slack) ends the
//!   stream and reconnects (this also cuts a line that never ends).
//!   `event: closing` (the gateway ends every stream after 14 minutes)
//!   reconnects at once and is not an error.
//! - Handover: [`HANDOVER_LEAD`] before the stream's expected end (14
//!   minutes, or what the last `closing` showed), the next stream is opened
//!   while the old one is read until it closes, so the rollover leaves no
//!   gap without a subscription. This duplicates nothing: both streams
//!   carry the same `shard_id`, and Loggregator gives each envelope to one
//!   subscription of a shard id (Doppler picks one per envelope, and the new
//!   stream only sees envelopes from its start). An RLP stream ending loses
//!   what was in flight for it, with or without the overlap; the overlap
//!   removes the reconnect gap in which the shard had no subscriber at all.
//! - A stream that ends without `closing` and without any event (what the
//!   gateway does while the RLP behind it is down: 200 and an empty body)
//!   is a failure: counted, logged as a warning, followed by a backoff step.
//! - A frame that does not decode (or is not UTF-8) is counted, logged at
//!   most once per [`MALFORMED_LOG_INTERVAL`] with its size and the reason
//!   (never its content), and skipped; the stream goes on.
//! - 401 or 404 (the gateway's answer to any auth problem) renews the token
//!   once and retries at once; a fresh token that is refused too is an
//!   error naming the missing scope, and every later attempt (one per
//!   backoff step) uses a fresh token so a granted scope is picked up.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Url;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Streams;
use super::cf_api;
use super::status::{Attempt, Disconnect, SourceStatus, reconnect_loop};
use super::uaa::{TokenProvider, UaaConfig, UaaError};
use crate::backoff::Backoff;
use crate::route::Router;

mod connect;
pub mod json;
pub mod sse;
mod stream;
mod to_wire;

pub use connect::connect;
pub use json::{DecodeError, count_batch_kinds, decode_batch, decode_batch_views};
pub(crate) use stream::stream_once;

/// The gateway sends a heartbeat after 15 s without data; allow 3 s more.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(18);

/// At most one log line per this interval about malformed frames.
pub const MALFORMED_LOG_INTERVAL: Duration = super::status::SKIP_LOG_INTERVAL;

/// The default of `--gateway-max-frame-bytes`: the RLP path's message limit.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// The gateway's stream timeout (`STREAM_TIMEOUT`, not exposed by its BOSH
/// job): what a stream is expected to live until a `closing` shows otherwise.
pub(crate) const GATEWAY_STREAM_TIMEOUT: Duration = Duration::from_secs(14 * 60);

/// The default of `--gateway-handover`: open the next stream this long
/// before the current one's expected end.
pub const HANDOVER_LEAD: Duration = Duration::from_secs(30);

/// A stream handed over is closed by us if it has not ended this long after
/// the handover (its gateway runs a longer timeout than expected).
pub(crate) const HANDOVER_DRAIN_MAX: Duration = Duration::from_secs(120);

/// A `closing` that ends a stream younger than this, without data, is
/// followed by a backoff step like any other end (a gateway that closes at
/// once must not make the nozzle spin).
pub(crate) const MIN_PRODUCTIVE_STREAM: Duration = Duration::from_secs(1);

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
        client_secret: crate::redact::Secret,
    },
}

impl std::fmt::Debug for GatewayEndpoints {
    // Written out for the URLs, shown as `redact::parsed_url` does (a
    // derived `Debug` of a `Url` shows its password); the secret shows
    // itself masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::redact::parsed_url;
        match self {
            Self::Given { url, tokens } => f
                .debug_struct("Given")
                .field("url", &parsed_url(url))
                .field("tokens", tokens)
                .finish(),
            Self::Discover {
                cf_api,
                gateway_url,
                uaa_url,
                client_id,
                client_secret,
            } => f
                .debug_struct("Discover")
                .field("cf_api", &parsed_url(cf_api))
                .field("gateway_url", &gateway_url.as_ref().map(parsed_url))
                .field("uaa_url", &uaa_url.as_ref().map(parsed_url))
                .field("client_id", client_id)
                .field("client_secret", client_secret)
                .finish(),
        }
    }
}

/// The gateway source's settings. `E` and `H` are where the endpoints come
/// from and the HTTP client: the running source has them made; the
/// validated configuration (`config::GatewaySettings`) holds what makes them,
/// and [`GatewayConfig::with`] turns one into the other.
#[derive(Clone, Debug)]
pub struct GatewayConfig<E = GatewayEndpoints, H = reqwest::Client> {
    pub endpoints: E,
    /// The client for UAA, the CF API and the gateway ([`crate::http_client::http_client`]).
    pub http: H,
    pub streams: Streams,
    pub backoff: Backoff,
    pub idle_timeout: Duration,
    /// The largest SSE line or event kept; larger ones are skipped and counted.
    pub max_frame_bytes: usize,
    /// Open the next stream this long before the current one's expected
    /// end; zero turns the handover off.
    pub handover: Duration,
    /// The largest UAA or CF API body read when discovering the endpoints
    /// (`--cf-max-response-bytes`); a [`GatewayEndpoints::Given`] token
    /// provider carries its own.
    pub max_response_bytes: usize,
}

impl<E, H> GatewayConfig<E, H> {
    /// The same settings with `endpoints` and `http` in place of this one's.
    pub fn with<E2, H2>(&self, endpoints: E2, http: H2) -> GatewayConfig<E2, H2> {
        GatewayConfig {
            endpoints,
            http,
            streams: self.streams.clone(),
            backoff: self.backoff.clone(),
            idle_timeout: self.idle_timeout,
            max_frame_bytes: self.max_frame_bytes,
            handover: self.handover,
            max_response_bytes: self.max_response_bytes,
        }
    }
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
    #[error(
        "the RLP Gateway at {url_shown} answered 200 but ended the stream without any event (the RLP behind it is likely down); retrying",
        url_shown = crate::redact::url(.url)
    )]
    Empty { url: String },
}

/// The `/v2/read` URL for a gateway base URL (a URL that already ends in
/// `/v2/read` is kept) and a selection.
pub(crate) fn read_url(base: &Url, streams: &Streams) -> Url {
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
            let attempt = stream_once(&cfg, &target, &router, &status, &decoder, &shutdown).await;
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
    /// How long streams live until the gateway closes them (learned from
    /// `closing`), for the handover.
    lifetime: std::sync::Mutex<Duration>,
}

impl Target {
    pub fn new(base: &Url, streams: &Streams, tokens: TokenProvider) -> Self {
        Self {
            url: read_url(base, streams),
            tokens,
            refused: Default::default(),
            lifetime: std::sync::Mutex::new(GATEWAY_STREAM_TIMEOUT),
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
            let found =
                cf_api::discover_with_limit(&cfg.http, cf_api, cfg.max_response_bytes).await?;
            let gateway = match (gateway_url.clone(), found.log_stream) {
                (Some(u), _) | (None, Some(u)) => u,
                (None, None) => return Err(GatewayError::NoLogStream(cf_api.to_string())),
            };
            let uaa = uaa_url.clone().unwrap_or(found.uaa);
            let tokens = TokenProvider::with_limit(
                UaaConfig {
                    token_url: UaaConfig::token_url_of(&uaa),
                    client_id: client_id.clone(),
                    client_secret: client_secret.clone(),
                },
                cfg.http.clone(),
                cfg.max_response_bytes,
            );
            Ok(Target::new(&gateway, &cfg.streams, tokens))
        }
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

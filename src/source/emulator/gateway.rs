//! The emulator's RLP Gateway: `GET /v2/read` as Server-Sent Events of
//! protojson batches over plain HTTP/1.1, plus a UAA token endpoint
//! (`POST /oauth/token`) and a CF API root (`GET /`) linking to both, so a
//! nozzle started with `--source gateway --cf-api http://<addr>` finds
//! everything here. For the benchmark, the CLI tests and trying the
//! gateway source out; not a production server.
//!
//! Like the real gateway it answers 404 `not_found` to a missing or unknown
//! token, 400 `missing_envelope_type` to a query without a type, sends
//! `event: heartbeat` after `heartbeat` without data, and ends every stream
//! with `event: closing` after `stream_timeout`. Connections sharing a
//! `shard_id` split the stream (each batch goes to one of them).
//!
//! Batches are encoded to SSE frames once (64 of them cycled for generated
//! traffic), so in a benchmark the emulator costs little.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{EmulatorError, Feed, Traffic};
use crate::proto::Envelope;
use crate::record::write_envelope_json;

#[derive(Clone, Debug)]
pub struct GatewayEmulatorConfig {
    pub feed: Feed,
    /// Envelopes per second per shard; `None` is as fast as the client reads.
    pub rate: Option<u64>,
    /// Envelopes per shard, then only heartbeats; `None` is endless.
    pub count: Option<u64>,
    pub batch_size: usize,
    /// Each stream ends with `event: closing` after this long (14 minutes on a real gateway).
    pub stream_timeout: Duration,
    /// A heartbeat after this long without data (15 s on a real gateway).
    pub heartbeat: Duration,
    /// Lifetime of the tokens the UAA endpoint issues.
    pub token_lifetime: Duration,
}

impl Default for GatewayEmulatorConfig {
    fn default() -> Self {
        Self {
            feed: Feed::Generated { seed: 1 },
            rate: None,
            count: None,
            batch_size: 100,
            stream_timeout: Duration::from_secs(14 * 60),
            heartbeat: Duration::from_secs(15),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

/// A running emulated gateway; stops when dropped.
pub struct GatewayEmulator {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
}

struct State {
    cfg: GatewayEmulatorConfig,
    addr: SocketAddr,
    shards: Mutex<HashMap<String, Arc<Mutex<ShardFrames>>>>,
    /// Issued tokens and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
    streams_opened: AtomicU64,
    envelopes_sent: AtomicU64,
    refused: AtomicU64,
    /// The target (path and query) of every request.
    targets: Mutex<Vec<String>>,
}

struct ShardFrames {
    /// SSE frames and their envelope counts.
    frames: Vec<(Bytes, u64)>,
    next: usize,
    cycle: bool,
    remaining: Option<u64>,
    next_at: Instant,
}

impl GatewayEmulator {
    pub async fn start(
        listen: SocketAddr,
        cfg: GatewayEmulatorConfig,
    ) -> Result<Self, EmulatorError> {
        let (listener, addr) = super::bind(listen).await?;
        let state = Arc::new(State {
            cfg,
            addr,
            shards: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            streams_opened: AtomicU64::new(0),
            envelopes_sent: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            targets: Mutex::new(Vec::new()),
        });
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    _ = stop.cancelled() => return,
                    conn = listener.accept() => conn,
                };
                let Ok((tcp, _)) = conn else { continue };
                let _ = tcp.set_nodelay(true);
                let state = Arc::clone(&serving);
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve(tcp, &state) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            state,
            shutdown,
        })
    }

    /// `http://<addr>`, the URL to give the nozzle (as gateway, UAA or CF API).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn streams_opened(&self) -> u64 {
        self.state.streams_opened.load(Ordering::Relaxed)
    }

    pub fn envelopes_sent(&self) -> u64 {
        self.state.envelopes_sent.load(Ordering::Relaxed)
    }

    /// The target of every request so far, as sent (absolute through a proxy).
    pub fn targets(&self) -> Vec<String> {
        self.state.targets.lock().expect("targets lock").clone()
    }

    /// The targets of the `/v2/read` requests so far.
    pub fn reads(&self) -> Vec<String> {
        self.targets()
            .into_iter()
            .filter(|t| t.split('?').next().is_some_and(|p| p.ends_with("/v2/read")))
            .collect()
    }

    /// Requests refused for their token (404).
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Issues a token as the UAA endpoint would (for tests that skip UAA).
    pub fn issue_token(&self) -> String {
        self.state.issue()
    }
}

impl Drop for GatewayEmulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An HTTP/1.1 request head (and body, when it has a `Content-Length`).
#[derive(Clone, Debug)]
pub struct HttpRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names in lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query (also of an absolute-form target, as a
    /// client sends through a proxy: the emulator then answers as the origin).
    pub fn path(&self) -> &str {
        let target = self.target.split('?').next().unwrap_or("");
        match target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
        {
            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => target,
        }
    }

    /// The query parameters, decoded, in order (a bare `log` is `("log", "")`).
    pub fn query(&self) -> Vec<(String, String)> {
        let q = self.target.split_once('?').map_or("", |(_, q)| q);
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

/// Reads one request from a connection (bodies up to 1 MiB); `None` when
/// the peer closed or sent something that is not HTTP/1.1.
pub async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Option<HttpRequest> {
    let mut line = String::new();
    reader.read_line(&mut line).await.ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let mut req = HttpRequest {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    if len > 1 << 20 {
        return None;
    }
    req.body = vec![0; len];
    reader.read_exact(&mut req.body).await.ok()?;
    Some(req)
}

/// A complete response with a body (and `Connection: close`).
pub fn http_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The head of an SSE response; the body runs until the connection closes.
pub const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";

/// An SSE frame carrying a batch as the gateway writes it: `data: {"batch":[...]}`.
pub fn sse_batch_frame(envelopes: &[Envelope]) -> Vec<u8> {
    let mut out = b"data: {\"batch\":[".to_vec();
    for (i, e) in envelopes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let view = crate::record::EnvelopeView::from_prost(e);
        write_envelope_json(&view, &mut out);
    }
    out.extend_from_slice(b"]}\n\n");
    out
}

/// The gateway's heartbeat frame.
pub(crate) fn sse_heartbeat() -> Vec<u8> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("event: heartbeat\ndata: {secs}\n\n").into_bytes()
}

/// The gateway's end-of-stream frame.
pub const SSE_CLOSING: &[u8] = b"event: closing\ndata: closing due to stream timeout\n\n";

fn json_error(status: u16, error: &str, message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": error, "message": message }).to_string();
    http_response(status, "application/json", body.as_bytes())
}

impl State {
    fn issue(&self) -> String {
        let mut tokens = self.tokens.lock().expect("tokens lock");
        let token = format!("emulator-token-{}", tokens.len() + 1);
        tokens.insert(token.clone(), Instant::now() + self.cfg.token_lifetime);
        token
    }

    fn token_valid(&self, authorization: Option<&str>) -> bool {
        let Some(token) = authorization.and_then(|a| a.strip_prefix("bearer ")) else {
            return false;
        };
        let tokens = self.tokens.lock().expect("tokens lock");
        tokens.get(token).is_some_and(|exp| Instant::now() < *exp)
    }

    fn shard(&self, shard_id: &str) -> Arc<Mutex<ShardFrames>> {
        let mut shards = self.shards.lock().expect("shards lock");
        let cfg = &self.cfg;
        Arc::clone(shards.entry(shard_id.to_string()).or_insert_with(|| {
            let size = cfg.batch_size.max(1);
            let (frames, cycle, remaining) = match &cfg.feed {
                Feed::Fixed(envs) => (
                    envs.chunks(size)
                        .map(|c| (Bytes::from(sse_batch_frame(c)), c.len() as u64))
                        .collect(),
                    false,
                    None,
                ),
                // Protobuf batches are for the gRPC emulator; the gateway sends none.
                Feed::Encoded(_) => (Vec::new(), false, None),
                Feed::Generated { seed } => {
                    let mut traffic = Traffic::new(*seed);
                    let frames = (0..64)
                        .map(|_| {
                            let envs = traffic.batch(size);
                            (Bytes::from(sse_batch_frame(&envs)), envs.len() as u64)
                        })
                        .collect();
                    (frames, true, cfg.count)
                }
            };
            Arc::new(Mutex::new(ShardFrames {
                frames,
                next: 0,
                cycle,
                remaining,
                next_at: Instant::now(),
            }))
        }))
    }
}

impl ShardFrames {
    /// The next frame, when it may be sent, or `None` when the feed is done.
    fn take(&mut self, rate: Option<u64>) -> Option<(Bytes, u64, Instant)> {
        if self.remaining == Some(0) || (!self.cycle && self.next >= self.frames.len()) {
            return None;
        }
        let (frame, n) = self.frames[self.next % self.frames.len()].clone();
        self.next += 1;
        if let Some(r) = &mut self.remaining {
            *r = r.saturating_sub(n);
        }
        let at = match rate {
            None => Instant::now(),
            Some(rate) => {
                let now = Instant::now();
                if self.next_at + Duration::from_secs(1) < now {
                    self.next_at = now;
                }
                let at = self.next_at;
                self.next_at += Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
                at
            }
        };
        Some((frame, n, at))
    }
}

async fn serve(tcp: TcpStream, state: &State) {
    let (read, mut write) = tcp.into_split();
    let mut reader = BufReader::new(read);
    let Some(req) = read_request(&mut reader).await else {
        return;
    };
    state
        .targets
        .lock()
        .expect("targets lock")
        .push(req.target.clone());
    let reply = match (req.method.as_str(), req.path()) {
        ("POST", "/oauth/token") => {
            let token = state.issue();
            let body = serde_json::json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": state.cfg.token_lifetime.as_secs(),
                "scope": "doppler.firehose",
            })
            .to_string();
            http_response(200, "application/json", body.as_bytes())
        }
        ("GET", "/") => {
            let url = format!("http://{}", state.addr);
            let body = serde_json::json!({ "links": {
                "self": { "href": url },
                "uaa": { "href": url },
                "login": { "href": url },
                "log_stream": { "href": url },
            }})
            .to_string();
            http_response(200, "application/json", body.as_bytes())
        }
        ("GET", "/v2/read") => {
            if !state.token_valid(req.header("authorization")) {
                state.refused.fetch_add(1, Ordering::Relaxed);
                json_error(404, "not_found", "resource not found")
            } else {
                let query = req.query();
                let has_type = query.iter().any(|(k, _)| {
                    matches!(k.as_str(), "log" | "counter" | "gauge" | "timer" | "event")
                });
                if !has_type {
                    json_error(
                        400,
                        "missing_envelope_type",
                        "query must provide at least one envelope type",
                    )
                } else {
                    let shard = query
                        .iter()
                        .find(|(k, _)| k == "shard_id")
                        .map_or("", |(_, v)| v.as_str())
                        .to_string();
                    stream(&mut write, state, &shard).await;
                    return;
                }
            }
        }
        _ => json_error(404, "not_found", "resource not found"),
    };
    let _ = write.write_all(&reply).await;
    let _ = write.shutdown().await;
}

async fn stream(write: &mut tokio::net::tcp::OwnedWriteHalf, state: &State, shard_id: &str) {
    if write.write_all(SSE_HEAD).await.is_err() {
        return;
    }
    state.streams_opened.fetch_add(1, Ordering::Relaxed);
    let feed = state.shard(shard_id);
    let end = Instant::now() + state.cfg.stream_timeout;
    let mut last_data = Instant::now();
    loop {
        let next = {
            let mut f = feed.lock().expect("feed lock");
            // A rate-limited batch due after the stream's end stays for the next stream.
            if state.cfg.rate.is_some() && f.next_at >= end {
                None
            } else {
                f.take(state.cfg.rate)
            }
        };
        match next {
            Some((frame, n, at)) => {
                // Only a rate-limited feed waits: a timer, even one already
                // due, costs a tick of the timer wheel (1 ms), which capped
                // the full-speed feed at about 1000 frames a second.
                if at > Instant::now() {
                    tokio::time::sleep_until(at).await;
                }
                if write.write_all(&frame).await.is_err() {
                    // The batch was taken from the shard and not delivered,
                    // as when a real consumer disconnects mid-stream.
                    return;
                }
                state.envelopes_sent.fetch_add(n, Ordering::Relaxed);
                last_data = Instant::now();
            }
            _ => {
                // Nothing to send before the stream's end: heartbeat or close.
                let beat = last_data + state.cfg.heartbeat;
                if beat < end {
                    tokio::time::sleep_until(beat).await;
                    if write.write_all(&sse_heartbeat()).await.is_err() {
                        return;
                    }
                    last_data = Instant::now();
                    continue;
                }
                tokio::time::sleep_until(end).await;
                let _ = write.write_all(SSE_CLOSING).await;
                let _ = write.shutdown().await;
                return;
            }
        }
        if Instant::now() >= end {
            let _ = write.write_all(SSE_CLOSING).await;
            let _ = write.shutdown().await;
            return;
        }
    }
}

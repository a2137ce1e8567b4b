//! An in-process Loggregator: a `loggregator.v2.Egress` server over mutual TLS
//! that streams a realistic mix of Cloud Foundry traffic (or a fixed list of
//! envelopes, for tests).
//!
//! Like the real RLP it batches up to `batch_size` envelopes, rejects
//! subscriptions without selectors, answers `Receiver` with `Unimplemented`,
//! and splits the stream evenly across the connections that share a
//! `shard_id` (each distinct shard id gets the whole stream).
//!
//! Batches are encoded once, up front, and sent as bytes ([`EncodedBatch`]),
//! so in a benchmark the emulator costs next to nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::proto::{EgressBatchRequest, EgressRequest, Envelope, EnvelopeBatch};
use crate::tls::Pki;

pub mod gateway;
pub mod security;
pub mod serve;
pub mod traffic;
pub use security::SecurityLog;
pub use traffic::Traffic;

/// The server side generated for the emulator: identical service and method
/// names, but the batch type is [`EncodedBatch`].
#[allow(clippy::all, clippy::pedantic)]
mod server {
    include!(concat!(env!("OUT_DIR"), "/emulator/loggregator.v2.rs"));
}
use server::egress_server::{Egress, EgressServer};

/// An `EnvelopeBatch` already encoded to protobuf bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedBatch(pub Bytes);

impl EncodedBatch {
    pub fn encode(envelopes: &[Envelope]) -> Self {
        let batch = EnvelopeBatch {
            batch: envelopes.to_vec(),
        };
        Self(batch.encode_to_vec().into())
    }
}

// The emulator only ever sends this type, so decoding is never used; it is
// implemented (as "skip everything") because the trait requires it.
impl prost::Message for EncodedBatch {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// What the emulator streams.
#[derive(Clone, Debug)]
pub enum Feed {
    /// The realistic mix of [`Traffic`], deterministic for a seed.
    Generated { seed: u64 },
    /// Exactly these envelopes, in order, then the stream ends.
    Fixed(Vec<Envelope>),
    /// Exactly these batches, already encoded (possibly malformed), each
    /// with the number of envelopes it holds, then the stream ends.
    Encoded(Vec<(u64, Bytes)>),
}

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub feed: Feed,
    /// Envelopes per second per shard; `None` is as fast as the client reads.
    pub rate: Option<u64>,
    /// Envelopes per shard before every stream of that shard ends; `None` is endless.
    /// For [`Feed::Fixed`] the list's length is the count.
    pub count: Option<u64>,
    pub batch_size: usize,
    /// End each stream after this many batches (to test reconnects).
    pub end_stream_after: Option<u64>,
    /// End those streams with gRPC `Unavailable` instead of cleanly.
    pub end_stream_with_error: bool,
    /// After this many batches, keep each stream open but send nothing
    /// more (until the emulator stops or the client leaves).
    pub silent_after: Option<u64>,
    /// For [`Feed::Generated`]: cycle through 64 batches encoded at start
    /// instead of generating fresh ones (whose timestamps are current). The
    /// benchmark uses this so the emulator costs next to no CPU.
    pub pre_encoded: bool,
    /// After this many subscriptions, refuse new ones with `ResourceExhausted`
    /// as an RLP at its stream limit does.
    pub max_streams: Option<u64>,
    /// For fresh [`Feed::Generated`] traffic: the Cloud Controller security
    /// events and UAA audit lines of its API actions are written here.
    pub security_log: Option<SecurityLog>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            feed: Feed::Generated { seed: 1 },
            rate: None,
            count: None,
            batch_size: 100,
            end_stream_after: None,
            end_stream_with_error: false,
            silent_after: None,
            pre_encoded: false,
            max_streams: None,
            security_log: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("emulator cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("emulator TLS setup: {0}")]
    Tls(#[from] tonic::transport::Error),
}

/// A running emulator; stops when dropped or on [`Emulator::stop`].
pub struct Emulator {
    pub addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Emulator {
    /// Listens on `listen` (port 0 picks one) with the server half of `pki`.
    pub async fn start(
        listen: SocketAddr,
        pki: &Pki,
        cfg: EmulatorConfig,
    ) -> Result<Self, EmulatorError> {
        let (listener, addr) = bind(listen).await?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &pki.server_cert_pem,
                &pki.server_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem));
        let shutdown = CancellationToken::new();
        let state = Arc::new(State {
            cfg,
            shutdown: shutdown.clone(),
            shards: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            streams_opened: AtomicU64::new(0),
            envelopes_sent: AtomicU64::new(0),
        });
        let router = Server::builder()
            .tls_config(tls)?
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .add_service(EgressServer::new(Service(Arc::clone(&state))));
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.cancelled_owned(),
                )
                .await
        });
        Ok(Self {
            addr,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// Every subscription request received so far.
    pub fn requests(&self) -> Vec<EgressBatchRequest> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    pub fn streams_opened(&self) -> u64 {
        self.state.streams_opened.load(Ordering::Relaxed)
    }

    pub fn envelopes_sent(&self) -> u64 {
        self.state.envelopes_sent.load(Ordering::Relaxed)
    }

    /// Appends `envelopes` to the fixed feed of every shard that has
    /// subscribed: streams that ended when it ran out deliver them on the
    /// client's next subscription (tests that need records after a phase).
    pub fn extend(&self, envelopes: &[Envelope]) {
        for feed in self.state.shards.lock().expect("shards lock").values() {
            let mut f = feed.lock().expect("feed lock");
            if let BatchSource::Fixed(queue) = &mut f.source {
                queue.extend(
                    envelopes
                        .chunks(self.state.cfg.batch_size.max(1))
                        .map(|c| (c.len() as u64, EncodedBatch::encode(c))),
                );
                f.remaining = f.remaining.map(|r| r + envelopes.len() as u64);
            }
        }
    }

    /// Stops serving and waits for the server to close.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Listens on `listen` (port 0 picks one); the listener and its address.
pub(crate) async fn bind(
    listen: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), EmulatorError> {
    let error = |source| EmulatorError::Listen {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(error)?;
    let addr = listener.local_addr().map_err(error)?;
    Ok((listener, addr))
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct State {
    cfg: EmulatorConfig,
    shutdown: CancellationToken,
    shards: Mutex<HashMap<String, Arc<Mutex<ShardFeed>>>>,
    requests: Mutex<Vec<EgressBatchRequest>>,
    streams_opened: AtomicU64,
    envelopes_sent: AtomicU64,
}

/// The stream one shard id's connections share: each batch goes to one of them.
struct ShardFeed {
    source: BatchSource,
    remaining: Option<u64>,
    /// When the next batch may go out, for rate limiting.
    next_at: Instant,
}

enum BatchSource {
    /// Endless pre-encoded batches, cycled (full speed).
    Pool {
        batches: Vec<(Vec<Envelope>, EncodedBatch)>,
        next: usize,
    },
    /// Fresh envelopes per batch, with current timestamps (rate-limited runs).
    Fresh { traffic: Box<Traffic> },
    /// A fixed list, already cut into batches.
    Fixed(std::collections::VecDeque<(u64, EncodedBatch)>),
}

impl ShardFeed {
    fn new(cfg: &EmulatorConfig) -> Self {
        let (source, remaining) = match &cfg.feed {
            Feed::Fixed(envelopes) => {
                let batches = envelopes
                    .chunks(cfg.batch_size.max(1))
                    .map(|c| (c.len() as u64, EncodedBatch::encode(c)))
                    .collect();
                (BatchSource::Fixed(batches), Some(envelopes.len() as u64))
            }
            Feed::Encoded(batches) => {
                let queue = batches
                    .iter()
                    .map(|(n, b)| (*n, EncodedBatch(b.clone())))
                    .collect();
                (BatchSource::Fixed(queue), None)
            }
            Feed::Generated { seed } => {
                let mut traffic = Traffic::new(*seed).with_security_log(cfg.security_log.clone());
                let source = if cfg.pre_encoded {
                    let batches = (0..64)
                        .map(|_| {
                            let envs = traffic.batch(cfg.batch_size);
                            let enc = EncodedBatch::encode(&envs);
                            (envs, enc)
                        })
                        .collect();
                    BatchSource::Pool { batches, next: 0 }
                } else {
                    BatchSource::Fresh {
                        traffic: Box::new(traffic),
                    }
                };
                (source, cfg.count)
            }
        };
        Self {
            source,
            remaining,
            next_at: Instant::now(),
        }
    }

    /// The next batch and its envelope count, or `None` when the feed is exhausted.
    fn take(&mut self, batch_size: usize) -> Option<(u64, EncodedBatch)> {
        let want = match self.remaining {
            Some(0) => return None,
            Some(r) => r.min(batch_size as u64) as usize,
            None => batch_size,
        };
        let (n, batch) = match &mut self.source {
            BatchSource::Fixed(queue) => queue.pop_front()?,
            BatchSource::Fresh { traffic } => {
                (want as u64, EncodedBatch::encode(&traffic.batch(want)))
            }
            BatchSource::Pool { batches, next } => {
                let (envs, enc) = &batches[*next % batches.len()];
                *next += 1;
                if want == envs.len() {
                    (want as u64, enc.clone())
                } else {
                    (want as u64, EncodedBatch::encode(&envs[..want]))
                }
            }
        };
        if let Some(r) = &mut self.remaining {
            *r -= n;
        }
        Some((n, batch))
    }
}

struct Service(Arc<State>);

type BatchStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<EncodedBatch, Status>> + Send>>;
type EnvelopeStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Egress for Service {
    type ReceiverStream = EnvelopeStream;
    type BatchedReceiverStream = BatchStream;

    async fn receiver(
        &self,
        _request: Request<EgressRequest>,
    ) -> Result<Response<Self::ReceiverStream>, Status> {
        Err(Status::unimplemented("use BatchedReceiver instead"))
    }

    async fn batched_receiver(
        &self,
        request: Request<EgressBatchRequest>,
    ) -> Result<Response<Self::BatchedReceiverStream>, Status> {
        let req = request.into_inner();
        if req.selectors.is_empty() {
            return Err(Status::invalid_argument("Selectors cannot be empty"));
        }
        if req.selectors.iter().any(|s| s.message.is_none()) {
            return Err(Status::invalid_argument("Selectors must have a Message"));
        }
        let state = Arc::clone(&self.0);
        if let Some(max) = state.cfg.max_streams
            && state.streams_opened.load(Ordering::Relaxed) >= max
        {
            return Err(Status::resource_exhausted(format!(
                "unable to create stream, max egress streams reached: {max}"
            )));
        }
        state
            .requests
            .lock()
            .expect("requests lock")
            .push(req.clone());
        state.streams_opened.fetch_add(1, Ordering::Relaxed);
        let feed = Arc::clone(
            state
                .shards
                .lock()
                .expect("shards lock")
                .entry(req.shard_id.clone())
                .or_insert_with(|| Arc::new(Mutex::new(ShardFeed::new(&state.cfg)))),
        );
        // Polled by tonic only when the client has window for more: a batch is
        // taken from the shared feed only when this connection can carry it.
        // The state is the number of batches sent, or None once the stream ended.
        let stream = futures_util::stream::unfold(Some(0u64), move |sent| {
            let state = Arc::clone(&state);
            let feed = Arc::clone(&feed);
            async move {
                let sent = sent?;
                if state.cfg.silent_after.is_some_and(|max| sent >= max) {
                    state.shutdown.cancelled().await;
                    return None;
                }
                if state.cfg.end_stream_after.is_some_and(|max| sent >= max) {
                    return state
                        .cfg
                        .end_stream_with_error
                        .then(|| (Err(Status::unavailable("emulated RLP restart")), None));
                }
                let (n, batch, at) = {
                    let mut f = feed.lock().expect("feed lock");
                    let (n, batch) = f.take(state.cfg.batch_size)?;
                    let at = state.cfg.rate.map(|rate| {
                        let now = Instant::now();
                        // Never burst to catch up after a stall of more than a second.
                        if f.next_at + Duration::from_secs(1) < now {
                            f.next_at = now;
                        }
                        let at = f.next_at;
                        f.next_at += Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
                        at
                    });
                    (n, batch, at)
                };
                if let Some(at) = at {
                    tokio::time::sleep_until(at).await;
                }
                state.envelopes_sent.fetch_add(n, Ordering::Relaxed);
                Some((Ok(batch), Some(sent + 1)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

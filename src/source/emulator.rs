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
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::proto::{
    Counter, EgressBatchRequest, EgressRequest, Envelope, EnvelopeBatch, Event, Gauge, GaugeValue,
    Log, Timer, envelope, log,
};
use crate::tls::Pki;

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
    /// For [`Feed::Generated`]: cycle through 64 batches encoded at start
    /// instead of generating fresh ones (whose timestamps are current). The
    /// benchmark uses this so the emulator costs next to no CPU.
    pub pre_encoded: bool,
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
            pre_encoded: false,
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
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| EmulatorError::Listen {
                addr: listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Listen {
                addr: listen,
                source,
            })?;
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &pki.server_cert_pem,
                &pki.server_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(&pki.ca_pem));
        let state = Arc::new(State {
            cfg,
            shards: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            streams_opened: AtomicU64::new(0),
            envelopes_sent: AtomicU64::new(0),
        });
        let shutdown = CancellationToken::new();
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

    /// Stops serving and waits for the server to close.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct State {
    cfg: EmulatorConfig,
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
            Feed::Generated { seed } => {
                let mut traffic = Traffic::new(*seed);
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

/// A deterministic generator of realistic Cloud Foundry traffic.
pub struct Traffic {
    rng: StdRng,
    apps: Vec<App>,
    seq: u64,
}

struct App {
    guid: String,
    name: String,
    process_guid: String,
    space_guid: String,
    space: String,
    org_guid: String,
    org: String,
}

const ORGS: [&str; 3] = ["payments", "platform", "retail"];
const SPACES: [&str; 3] = ["prod", "staging", "dev"];
const APP_NAMES: [&str; 8] = [
    "checkout", "ledger", "catalog", "search", "notifier", "gateway", "billing", "reports",
];
const COMPONENTS: [(&str, &str, &str); 5] = [
    ("doppler", "loggregator.doppler", "doppler"),
    ("reverse_log_proxy", "loggregator.rlp", "log-api"),
    ("gorouter", "gorouter", "router"),
    ("cloud_controller", "cloud_controller", "api"),
    ("rep", "rep", "diego-cell"),
];

impl Traffic {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let guid = |rng: &mut StdRng| {
            let v: u128 = rng.random();
            let h = format!("{v:032x}");
            format!(
                "{}-{}-{}-{}-{}",
                &h[0..8],
                &h[8..12],
                &h[12..16],
                &h[16..20],
                &h[20..32]
            )
        };
        let orgs: Vec<(String, &str)> = ORGS.iter().map(|o| (guid(&mut rng), *o)).collect();
        let mut apps = Vec::new();
        for (i, name) in APP_NAMES.iter().enumerate() {
            let (org_guid, org) = &orgs[i % orgs.len()];
            apps.push(App {
                guid: guid(&mut rng),
                name: name.to_string(),
                process_guid: guid(&mut rng),
                space_guid: guid(&mut rng),
                space: SPACES[i % SPACES.len()].to_string(),
                org_guid: org_guid.clone(),
                org: org.to_string(),
            });
        }
        Self { rng, apps, seq: 0 }
    }

    /// `n` envelopes of the mix, timestamped now.
    pub fn batch(&mut self, n: usize) -> Vec<Envelope> {
        let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        (0..n).map(|i| self.envelope(now + i as i64)).collect()
    }

    /// One envelope; the mix per 100: 40 app output, 18 router, 2 staging,
    /// 3 cell, 5 API, 12 container metrics, 8 counters, 5 component gauges,
    /// 5 timers, 2 events.
    pub fn envelope(&mut self, timestamp: i64) -> Envelope {
        self.seq += 1;
        let app_index = self.rng.random_range(0..self.apps.len());
        let roll = self.rng.random_range(0..100u32);
        let instance = self.rng.random_range(0..3u32);
        match roll {
            0..40 => {
                let err = self.rng.random_bool(0.2);
                let line = if err {
                    format!(
                        "ERROR [{}] request failed: upstream timeout after 30s seq={}",
                        self.apps[app_index].name, self.seq
                    )
                } else {
                    format!(
                        r#"{{"level":"info","msg":"handled request","path":"/api/v1/items/{}","status":200,"duration_ms":{},"seq":{}}}"#,
                        self.rng.random_range(1..10_000u32),
                        self.rng.random_range(1..500u32),
                        self.seq
                    )
                };
                self.app_log(
                    app_index,
                    instance,
                    "APP/PROC/WEB",
                    "rep",
                    line,
                    err,
                    timestamp,
                )
            }
            40..58 => {
                let app = &self.apps[app_index];
                let line = format!(
                    r#"{name}.apps.example.com - [{t}] "GET /api/v1/items HTTP/1.1" 200 0 {bytes} "-" "curl/8.4.0" "10.0.1.12:51234" "10.0.16.{ip}:61012" x_forwarded_for:"203.0.113.7" x_forwarded_proto:"https" vcap_request_id:"{req}" response_time:0.{rt:03} gorouter_time:0.000211 app_id:"{guid}" app_index:"{instance}" instance_id:"{iid}" x_b3_traceid:"{trace:016x}" x_b3_spanid:"{span:016x}" x_b3_parentspanid:"-" b3:"{trace:016x}-{span:016x}""#,
                    name = app.name,
                    t = crate::record::rfc3339_nanos(timestamp),
                    bytes = self.rng.random_range(100..20_000u32),
                    ip = self.rng.random_range(2..250u32),
                    req = self.seq,
                    rt = self.rng.random_range(1..999u32),
                    guid = app.guid,
                    iid = app.process_guid,
                    trace = self.rng.random::<u64>(),
                    span = self.rng.random::<u64>(),
                );
                let mut env = self.app_log(
                    app_index, instance, "RTR", "gorouter", line, false, timestamp,
                );
                env.tags.insert("__v1_type".into(), "LogMessage".into());
                env
            }
            58..60 => {
                let line = format!("Downloaded buildpack artifacts (seq {})", self.seq);
                self.app_log(app_index, 0, "STG", "rep", line, false, timestamp)
            }
            60..63 => {
                let line = [
                    "Creating container for app instance",
                    "Successfully created container for instance",
                    "Exit status 0",
                ][self.rng.random_range(0..3)]
                .to_string();
                self.app_log(app_index, instance, "CELL", "rep", line, false, timestamp)
            }
            63..68 => self.api_log(app_index, timestamp),
            68..80 => self.container_metrics(app_index, instance, timestamp),
            80..88 => {
                let (src, origin, job) = COMPONENTS[self.rng.random_range(0..COMPONENTS.len())];
                let name = ["ingress", "egress", "dropped", "sinks.errors.dropped"]
                    [self.rng.random_range(0..4)];
                let delta = self.rng.random_range(0..5000u64);
                let mut env = self.component(src, origin, job, timestamp);
                if name == "dropped" {
                    env.tags.insert("direction".into(), "egress".into());
                }
                env.message = Some(envelope::Message::Counter(Counter {
                    name: name.into(),
                    delta,
                    total: self.seq * 1000 + delta,
                }));
                env
            }
            88..93 => {
                let (src, origin, job) = COMPONENTS[self.rng.random_range(0..COMPONENTS.len())];
                let mut env = self.component(src, origin, job, timestamp);
                let mut metrics = std::collections::BTreeMap::new();
                metrics.insert(
                    "subscriptions".into(),
                    GaugeValue {
                        unit: "total".into(),
                        value: self.rng.random_range(1..900u32) as f64,
                    },
                );
                env.message = Some(envelope::Message::Gauge(Gauge { metrics }));
                env
            }
            93..98 => {
                let (guid, name) = (
                    self.apps[app_index].guid.clone(),
                    self.apps[app_index].name.clone(),
                );
                let start = timestamp - self.rng.random_range(1_000_000..900_000_000i64);
                let mut env = self.component("gorouter", "gorouter", "router", timestamp);
                env.source_id = guid.clone();
                env.instance_id = instance.to_string();
                for (k, v) in [
                    ("peer_type", "Client".to_string()),
                    ("method", "GET".to_string()),
                    (
                        "uri",
                        format!("https://{name}.apps.example.com/api/v1/items"),
                    ),
                    ("remote_address", "203.0.113.7:53312".to_string()),
                    ("user_agent", "curl/8.4.0".to_string()),
                    ("status_code", "200".to_string()),
                    (
                        "content_length",
                        self.rng.random_range(100..20_000u32).to_string(),
                    ),
                    ("request_id", format!("0000{:028x}", self.seq)),
                    ("app_id", guid),
                ] {
                    env.tags.insert(k.into(), v);
                }
                env.message = Some(envelope::Message::Timer(Timer {
                    name: "http".into(),
                    start,
                    stop: timestamp,
                }));
                env
            }
            _ => {
                let mut env = self.component(
                    "trafficcontroller",
                    "loggregator.trafficcontroller",
                    "log-api",
                    timestamp,
                );
                env.message = Some(envelope::Message::Event(Event {
                    title: "Traffic Controller has disconnected slow consumer".into(),
                    body: format!(
                        "Remote Address: 10.0.4.{}:44412, X-Forwarded-For: -, Path: /firehose/audit-nozzle",
                        self.rng.random_range(2..250u32)
                    ),
                }));
                env
            }
        }
    }

    fn app_tags(
        &self,
        app_index: usize,
        instance: u32,
    ) -> std::collections::BTreeMap<String, String> {
        let app = &self.apps[app_index];
        [
            ("source_id", app.guid.clone()),
            ("app_id", app.guid.clone()),
            ("app_name", app.name.clone()),
            ("space_id", app.space_guid.clone()),
            ("space_name", app.space.clone()),
            ("organization_id", app.org_guid.clone()),
            ("organization_name", app.org.clone()),
            ("process_id", app.process_guid.clone()),
            ("process_type", "web".to_string()),
            (
                "process_instance_id",
                format!("{:08x}-7c5e-4a41-6c2b-{:012x}", instance + 1, app_index),
            ),
            ("instance_id", instance.to_string()),
            ("deployment", "cf".to_string()),
            ("job", "diego-cell".to_string()),
            ("index", "8e5f2c4e-4b5d-4a1a-9f3b-0d0c1e2f3a4b".to_string()),
            ("ip", format!("10.0.16.{}", 10 + app_index)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn app_log(
        &self,
        app_index: usize,
        instance: u32,
        source_type: &str,
        origin: &str,
        line: String,
        err: bool,
        timestamp: i64,
    ) -> Envelope {
        let mut tags = self.app_tags(app_index, instance);
        tags.insert("source_type".into(), source_type.into());
        tags.insert("origin".into(), origin.into());
        Envelope {
            timestamp,
            source_id: self.apps[app_index].guid.clone(),
            instance_id: instance.to_string(),
            deprecated_tags: Default::default(),
            tags,
            message: Some(envelope::Message::Log(Log {
                payload: Bytes::from(line),
                r#type: if err { log::Type::Err } else { log::Type::Out } as i32,
            })),
        }
    }

    fn api_log(&mut self, app_index: usize, timestamp: i64) -> Envelope {
        let app = &self.apps[app_index];
        let g = &app.guid;
        let line = match self.rng.random_range(0..6) {
            0 => format!(
                r#"Updated app with guid {g} ({{"name"=>"{}", "instances"=>{}, "memory"=>1024, "environment_json"=>"PRIVATE DATA HIDDEN"}})"#,
                app.name,
                self.rng.random_range(1..6)
            ),
            1 => format!("Starting app with guid {g}"),
            2 => format!("Stopping app with guid {g}"),
            3 => format!("Creating build for app with guid {g}"),
            4 => format!("Uploading bits for app with guid {g}"),
            _ => format!("Created app with guid {g}"),
        };
        let mut tags: std::collections::BTreeMap<String, String> = [
            ("app_id", g.clone()),
            ("app_name", app.name.clone()),
            ("space_id", app.space_guid.clone()),
            ("space_name", app.space.clone()),
            ("organization_id", app.org_guid.clone()),
            ("organization_name", app.org.clone()),
            ("deployment", "cf".to_string()),
            ("job", "api".to_string()),
            ("index", "1c7a2d7e-3f7e-4c8a-9f1e-5b6a7c8d9e0f".to_string()),
            ("ip", "10.0.1.20".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        tags.insert("source_type".into(), "API".into());
        tags.insert("origin".into(), "cloud_controller".into());
        Envelope {
            timestamp,
            source_id: g.clone(),
            instance_id: "0".into(),
            deprecated_tags: Default::default(),
            tags,
            message: Some(envelope::Message::Log(Log {
                payload: Bytes::from(line),
                r#type: log::Type::Out as i32,
            })),
        }
    }

    fn container_metrics(&mut self, app_index: usize, instance: u32, timestamp: i64) -> Envelope {
        let mut tags = self.app_tags(app_index, instance);
        tags.insert("origin".into(), "rep".into());
        let mut metrics = std::collections::BTreeMap::new();
        let mut put = |k: &str, unit: &str, v: f64| {
            metrics.insert(
                k.to_string(),
                GaugeValue {
                    unit: unit.into(),
                    value: v,
                },
            );
        };
        put("cpu", "percentage", self.rng.random_range(0.0..100.0));
        put(
            "memory",
            "bytes",
            self.rng.random_range(50_000_000..900_000_000u64) as f64,
        );
        put(
            "disk",
            "bytes",
            self.rng.random_range(50_000_000..500_000_000u64) as f64,
        );
        put("memory_quota", "bytes", 1_073_741_824.0);
        put("disk_quota", "bytes", 1_073_741_824.0);
        Envelope {
            timestamp,
            source_id: self.apps[app_index].guid.clone(),
            instance_id: instance.to_string(),
            deprecated_tags: Default::default(),
            tags,
            message: Some(envelope::Message::Gauge(Gauge { metrics })),
        }
    }

    fn component(&mut self, source_id: &str, origin: &str, job: &str, timestamp: i64) -> Envelope {
        let index = self.rng.random_range(0..4u32);
        let tags = [
            ("deployment", "cf".to_string()),
            ("job", job.to_string()),
            ("index", format!("{index:08x}-5a3e-4c2b-8d1f-0e9a8b7c6d5e")),
            ("ip", format!("10.0.2.{}", 10 + index)),
            ("origin", origin.to_string()),
            ("metric_version", "2.0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Envelope {
            timestamp,
            source_id: source_id.to_string(),
            instance_id: format!("{index:08x}-5a3e-4c2b-8d1f-0e9a8b7c6d5e"),
            deprecated_tags: Default::default(),
            tags,
            message: None,
        }
    }
}

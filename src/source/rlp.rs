//! The Reverse Log Proxy source: `loggregator.v2.Egress/BatchedReceiver` over mutual TLS.
//!
//! One task per connection: connect, subscribe, hand every received batch to
//! the [`Router`] (which never waits), and on stream end or error reconnect
//! after a jittered exponential backoff that resets once a stream has
//! delivered data. Connection problems are reported with what was wrong (the
//! certificate, the server name, the address), not just "transport error".
//!
//! An envelope that does not decode (a string that is not UTF-8, messages
//! nested past protobuf's recursion limit, ...) is skipped and counted in
//! `malformed_frames`; the rest of its batch and the stream go on. A stream
//! that stays open but silent for `idle_timeout` is replaced (the firehose
//! is never silent: the RLP and Dopplers emit their own metrics).

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use bytes::{Buf as _, Bytes};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::Streams;
use super::status::{Attempt, Disconnect, SourceStatus, reconnect_loop};
use crate::backoff::Backoff;
use crate::proto::EgressBatchRequest;
use crate::record::{EnvelopeView, decode_batch};
use crate::route::Router;
use crate::tls::ClientTls;

/// Batches hold up to 100 envelopes and Diego splits log lines at ~60 KiB; the
/// RLP's own limit towards Doppler is 10 MiB. Leave room above that.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The RLP closes connections that ping more often than every 10 s.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct RlpConfig {
    /// `host:port`, e.g. `reverse-log-proxy.service.cf.internal:8082`.
    pub addr: String,
    /// The name the RLP's certificate must carry (`reverselogproxy` in cf-deployment).
    pub server_name: String,
    pub tls: ClientTls,
    /// What to subscribe to, and the shard id instances share.
    pub streams: Streams,
    pub backoff: Backoff,
    /// Replace a stream that delivers no batch for this long; `None` never.
    pub idle_timeout: Option<Duration>,
}

/// The default of `--rlp-idle-timeout`: the firehose is never silent for
/// this long (the RLP and every Doppler emit metrics each minute, apps far
/// more often).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RlpError {
    #[error("invalid RLP address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("RLP TLS configuration for {addr}: {reason}")]
    TlsConfig { addr: String, reason: String },
    #[error("cannot connect to the RLP at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the RLP at {addr} refused the subscription: {status}")]
    Subscribe {
        addr: String,
        status: String,
        code: tonic::Code,
    },
    #[error("the RLP stream from {addr} failed: {status}")]
    Stream { addr: String, status: String },
    #[error("no envelope from the RLP at {addr} for {idle:?}; replacing the stream")]
    Idle { addr: String, idle: Duration },
}

/// How long to wait at least after the RLP refused a stream for its stream
/// limit (`ResourceExhausted`): hammering a full RLP keeps it full.
pub(crate) const STREAM_LIMIT_BACKOFF: Duration = Duration::from_secs(10);

/// The subscription the nozzle asks for: the selectors of `streams`, tags
/// in `tags`, sharing the shard id with the other instances.
pub(crate) fn batch_request(streams: &Streams) -> EgressBatchRequest {
    EgressBatchRequest {
        shard_id: streams.shard_id.clone(),
        deterministic_name: streams.deterministic_name.clone(),
        legacy_selector: None,
        selectors: streams.selectors(),
        use_preferred_tags: true,
    }
}

/// One response of the stream: the envelopes read from it, and how many
/// could not be read (skipped).
#[derive(Debug, Default)]
pub struct Received {
    pub envelopes: Vec<EnvelopeView>,
    /// Envelopes skipped because they do not decode; a tail of the batch
    /// whose framing is broken counts as one.
    pub skipped: u64,
    /// Why the first skipped envelope did not decode (never its content).
    pub reason: Option<String>,
}

/// The codec of the `BatchedReceiver` stream: the request is encoded by
/// prost; each response is read in place as envelope views over the bytes
/// received (no owned decode, see [`crate::record::envelope`]). A batch with
/// an envelope that does not decode is read again envelope by envelope
/// ([`decode_leniently`]): only the bad envelope is lost, not the stream.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BatchCodec;

impl Codec for BatchCodec {
    type Encode = EgressBatchRequest;
    type Decode = Received;
    type Encoder = BatchCodec;
    type Decoder = BatchCodec;

    fn encoder(&mut self) -> Self::Encoder {
        BatchCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        BatchCodec
    }
}

impl Encoder for BatchCodec {
    type Item = EgressBatchRequest;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the subscription: {e}")))
    }
}

impl Decoder for BatchCodec {
    type Item = Received;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        // Splits the message off tonic's receive buffer: no copy.
        let batch = src.copy_to_bytes(src.remaining());
        Ok(Some(decode_leniently(&batch)))
    }
}

/// Reads an `EnvelopeBatch` into views; when some envelope does not
/// decode, reads each envelope on its own and skips the bad ones. The
/// common case (every envelope good) costs what [`decode_batch`] costs.
pub fn decode_leniently(batch: &Bytes) -> Received {
    let first_error = match decode_batch(batch) {
        Ok(envelopes) => {
            return Received {
                envelopes,
                ..Received::default()
            };
        }
        Err(e) => e,
    };
    let (pieces, broken) = split_batch(batch);
    let mut received = Received::default();
    for piece in pieces {
        // Each piece is the batch's own bytes of one `batch` field: a valid
        // batch of one envelope if that envelope is valid.
        match decode_batch(&piece) {
            Ok(views) => received.envelopes.extend(views),
            Err(e) => {
                received.skipped += 1;
                received.reason.get_or_insert_with(|| e.to_string());
            }
        }
    }
    if let Some(at) = broken {
        received.skipped += 1;
        received
            .reason
            .get_or_insert_with(|| format!("the batch's framing is broken at byte {at}"));
    }
    if received.skipped == 0 {
        // Every envelope read on its own: the batch's problem was elsewhere.
        received.skipped = 1;
        received.reason = Some(first_error.to_string());
    }
    received
}

/// The `batch` fields of an `EnvelopeBatch`, each as the slice of `batch`
/// holding its key, length and envelope; and where the framing broke, if
/// it did (what follows cannot be split into envelopes).
fn split_batch(batch: &Bytes) -> (Vec<Bytes>, Option<usize>) {
    fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*pos)?;
            *pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }
    let buf = &batch[..];
    let mut pieces = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let at = pos;
        let Some(key) = varint(buf, &mut pos) else {
            return (pieces, Some(at));
        };
        let len = match key & 7 {
            0 => match varint(buf, &mut pos) {
                Some(_) => 0,
                None => return (pieces, Some(at)),
            },
            1 => 8,
            5 => 4,
            2 => match varint(buf, &mut pos) {
                Some(len) => len,
                None => return (pieces, Some(at)),
            },
            // Groups (and invalid wire types) never appear at the top of a
            // batch the RLP sends; what follows is not split further.
            _ => return (pieces, Some(at)),
        };
        if len > (buf.len() - pos) as u64 {
            return (pieces, Some(at));
        }
        pos += len as usize;
        if key == (1 << 3) | 2 {
            pieces.push(batch.slice(at..pos));
        }
    }
    (pieces, None)
}

/// Connects and opens the batched stream.
pub async fn subscribe(cfg: &RlpConfig) -> Result<tonic::Streaming<Received>, RlpError> {
    let addr = &cfg.addr;
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| RlpError::Address {
            addr: addr.clone(),
            reason: crate::error_chain(&e),
        })?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cfg.tls.ca_pem))
                .identity(Identity::from_pem(
                    &cfg.tls.cert_pem,
                    cfg.tls.key_pem.expose(),
                ))
                .domain_name(cfg.server_name.clone()),
        )
        .map_err(|e| RlpError::TlsConfig {
            addr: addr.clone(),
            reason: crate::error_chain(&e),
        })?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    let channel: Channel = endpoint.connect().await.map_err(|e| RlpError::Connect {
        addr: addr.clone(),
        reason: explain_connect_error(&crate::error_chain(&e), cfg),
    })?;
    let subscribe_error = |status: tonic::Status| RlpError::Subscribe {
        addr: addr.clone(),
        status: describe_status(&status),
        code: status.code(),
    };
    // What the generated client's `batched_receiver` does, with our codec.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready().await.map_err(|e| {
        subscribe_error(tonic::Status::unknown(format!(
            "service was not ready: {}",
            crate::error_chain(&e)
        )))
    })?;
    let mut request = tonic::Request::new(batch_request(&cfg.streams));
    request.extensions_mut().insert(tonic::GrpcMethod::new(
        "loggregator.v2.Egress",
        "BatchedReceiver",
    ));
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/loggregator.v2.Egress/BatchedReceiver",
    );
    let response = grpc
        .server_streaming(request, path, BatchCodec)
        .await
        .map_err(subscribe_error)?;
    Ok(response.into_inner())
}

/// Subscribes once and forwards batches until the stream ends.
pub(crate) async fn stream_once(
    cfg: &RlpConfig,
    router: &Router,
    status: &SourceStatus,
) -> Attempt {
    let mut stream = match subscribe(cfg).await {
        Ok(s) => {
            status.opened("rlp", &cfg.addr);
            s
        }
        Err(e) => {
            let mut a = Attempt::failed(
                match &e {
                    RlpError::Subscribe { .. } => Disconnect::Refused,
                    _ => Disconnect::Connect,
                },
                e.to_string(),
            );
            if let RlpError::Subscribe { code, .. } = &e {
                if *code == tonic::Code::ResourceExhausted {
                    a.min_delay = Some(STREAM_LIMIT_BACKOFF);
                }
                if *code == tonic::Code::InvalidArgument {
                    tracing::error!(error = %e, "configuration error: the RLP refuses this subscription; fix the options and restart");
                }
            }
            return a;
        }
    };
    let mut envelopes = 0;
    let ended = |envelopes, end, error: Option<RlpError>| Attempt {
        connected: true,
        envelopes,
        end,
        error: error.map(|e| e.to_string()),
        min_delay: None,
        immediate: false,
    };
    loop {
        let next = match cfg.idle_timeout {
            None => stream.message().await,
            Some(idle) => match tokio::time::timeout(idle, stream.message()).await {
                Ok(next) => next,
                Err(_) => {
                    let e = RlpError::Idle {
                        addr: cfg.addr.clone(),
                        idle,
                    };
                    return ended(envelopes, Disconnect::Idle, Some(e));
                }
            },
        };
        match next {
            Ok(Some(received)) => {
                if received.skipped > 0 {
                    note_skipped(cfg, status, &received);
                }
                let batch = received.envelopes;
                if !batch.is_empty() {
                    envelopes += batch.len() as u64;
                    status.received(batch.len());
                    router.dispatch(batch);
                }
            }
            Ok(None) => return ended(envelopes, Disconnect::Ended, None),
            Err(status) => {
                let e = RlpError::Stream {
                    addr: cfg.addr.clone(),
                    status: describe_status(&status),
                };
                return ended(envelopes, Disconnect::Error, Some(e));
            }
        }
    }
}

/// Counts skipped envelopes and warns (at most once per interval).
fn note_skipped(cfg: &RlpConfig, status: &SourceStatus, received: &Received) {
    status
        .malformed_frames
        .fetch_add(received.skipped, Ordering::Relaxed);
    let due = status.skip_log.lock().expect("skip log lock").note();
    if let Some(batches_since_last_warning) = due {
        tracing::warn!(
            addr = %cfg.addr,
            skipped = received.skipped,
            batches_since_last_warning,
            reason = received.reason.as_deref().unwrap_or(""),
            "skipped RLP envelopes that do not decode; the rest of the batch and the stream go on"
        );
    }
}

/// Reads from the RLP until `shutdown` is cancelled, reconnecting as needed.
pub async fn run(
    cfg: RlpConfig,
    router: Arc<Router>,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) {
    reconnect_loop("rlp", cfg.backoff.clone(), &status, &shutdown, || {
        stream_once(&cfg, &router, &status)
    })
    .await;
}

/// Puts the certificate problems an operator meets into words that name the fix.
fn explain_connect_error(detail: &str, cfg: &RlpConfig) -> String {
    // A CA with the same name but another key (every cf-deployment names its
    // CA "loggregatorCA") gives BadSignature; a differently named one UnknownIssuer.
    let hint = if detail.contains("UnknownIssuer") || detail.contains("BadSignature") {
        format!(
            "the server certificate is not signed by the CA in {}",
            cfg.tls.ca_origin
        )
    } else if detail.contains("NotValidForName") || detail.contains("not valid for name") {
        format!(
            "the server certificate is not valid for the TLS server name {:?} (set --rlp-server-name to a name the certificate carries)",
            cfg.server_name
        )
    } else if detail.contains("Expired") {
        "the server certificate has expired".to_string()
    } else if detail.contains("CertificateRequired") || detail.contains("certificate required") {
        "the server requires a client certificate it accepts (check --rlp-cert and --rlp-key)"
            .to_string()
    } else if detail.contains("BadCertificate")
        || detail.contains("UnknownCA")
        || detail.contains("unknown ca")
    {
        "the server rejected our client certificate (it must be signed by Loggregator's CA)"
            .to_string()
    } else {
        return detail.to_string();
    };
    format!("{hint} ({detail})")
}

fn describe_status(status: &tonic::Status) -> String {
    let hint = match status.code() {
        tonic::Code::ResourceExhausted => {
            " (the RLP has reached its stream limit; add log-api instances; backing off at least 10 s)"
        }
        tonic::Code::InvalidArgument => {
            " (the subscription request is invalid: a configuration error, check --source-ids and --envelope-types)"
        }
        tonic::Code::Unavailable => " (the RLP is unavailable or restarting)",
        _ => "",
    };
    let mut text = format!("{:?}: {}{hint}", status.code(), status.message());
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(&format!(" ({})", crate::error_chain(source)));
    }
    text
}

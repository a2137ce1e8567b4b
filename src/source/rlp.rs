//! The Reverse Log Proxy source: `loggregator.v2.Egress/BatchedReceiver` over mutual TLS.
//!
//! One task per connection: connect, subscribe, hand every received batch to
//! the [`Router`] (which never waits), and on stream end or error reconnect
//! after a jittered exponential backoff that resets once a stream has
//! delivered data. Connection problems are reported with what was wrong (the
//! certificate, the server name, the address), not just "transport error".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::Backoff;
use crate::proto::egress_client::EgressClient;
use crate::proto::{
    CounterSelector, EgressBatchRequest, EventSelector, GaugeSelector, LogSelector, Selector,
    TimerSelector, selector,
};
use crate::route::Router;
use crate::tls::ClientTls;

/// Batches hold up to 100 envelopes and Diego splits log lines at ~60 KiB; the
/// RLP's own limit towards Doppler is 10 MiB. Leave room above that.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The RLP closes connections that ping more often than every 10 s.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Clone, Debug)]
pub struct RlpConfig {
    /// `host:port`, e.g. `reverse-log-proxy.service.cf.internal:8082`.
    pub addr: String,
    /// The name the RLP's certificate must carry (`reverselogproxy` in cf-deployment).
    pub server_name: String,
    pub tls: ClientTls,
    /// Subscriptions sharing a shard id split the firehose between them.
    pub shard_id: String,
    pub backoff: Backoff,
}

#[derive(Debug, thiserror::Error)]
pub enum RlpError {
    #[error("invalid RLP address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("RLP TLS configuration for {addr}: {reason}")]
    TlsConfig { addr: String, reason: String },
    #[error("cannot connect to the RLP at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("the RLP at {addr} refused the subscription: {status}")]
    Subscribe { addr: String, status: String },
    #[error("the RLP stream from {addr} failed: {status}")]
    Stream { addr: String, status: String },
}

/// Health of the source, for the summary, `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct RlpStatus {
    /// Subscription attempts, successful or not.
    pub attempts: std::sync::atomic::AtomicU64,
    /// Attempts and streams that ended in an error.
    pub failures: std::sync::atomic::AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Whether a stream is open now, and since when it is (or is not): `None`
    /// before the first attempt ended. Tokio's clock, so tests can pause it.
    pub connection: Mutex<(bool, Option<tokio::time::Instant>)>,
    /// Wall-clock time (ms since the epoch) the last batch arrived; 0 before the first.
    pub last_batch_unix_ms: std::sync::atomic::AtomicU64,
}

/// A copy of [`RlpStatus`] for the summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RlpSnapshot {
    pub attempts: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

impl RlpStatus {
    /// Records that a stream opened (`true`) or ended (`false`).
    pub fn set_connected(&self, connected: bool) {
        let mut c = self.connection.lock().expect("status lock");
        if c.0 != connected || c.1.is_none() {
            *c = (connected, Some(tokio::time::Instant::now()));
        }
    }

    /// Whether a stream is open, and for how long it has been (or not been).
    /// Before the first attempt ended: not connected, for `None`.
    pub fn connection(&self) -> (bool, Option<std::time::Duration>) {
        let c = self.connection.lock().expect("status lock");
        (c.0, c.1.map(|t| t.elapsed()))
    }

    pub fn snapshot(&self) -> RlpSnapshot {
        use std::sync::atomic::Ordering;
        RlpSnapshot {
            attempts: self.attempts.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: self.last_error.lock().expect("status lock").clone(),
        }
    }
}

/// The subscription the nozzle asks for: every envelope type from every
/// source, tags in `tags`, sharing `shard_id` with the other instances.
pub fn batch_request(shard_id: &str) -> EgressBatchRequest {
    use selector::Message as M;
    let selectors = [
        M::Log(LogSelector {}),
        M::Counter(CounterSelector::default()),
        M::Gauge(GaugeSelector::default()),
        M::Timer(TimerSelector {}),
        M::Event(EventSelector {}),
    ]
    .into_iter()
    .map(|m| Selector {
        source_id: String::new(),
        message: Some(m),
    })
    .collect();
    EgressBatchRequest {
        shard_id: shard_id.to_string(),
        deterministic_name: String::new(),
        legacy_selector: None,
        selectors,
        use_preferred_tags: true,
    }
}

/// Connects and opens the batched stream.
pub async fn subscribe(
    cfg: &RlpConfig,
) -> Result<tonic::Streaming<crate::proto::EnvelopeBatch>, RlpError> {
    let addr = &cfg.addr;
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| RlpError::Address {
            addr: addr.clone(),
            reason: crate::error_chain(&e),
        })?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&cfg.tls.ca_pem))
                .identity(Identity::from_pem(&cfg.tls.cert_pem, &cfg.tls.key_pem))
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
    let mut client = EgressClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let response = client
        .batched_receiver(batch_request(&cfg.shard_id))
        .await
        .map_err(|status| RlpError::Subscribe {
            addr: addr.clone(),
            status: describe_status(&status),
        })?;
    Ok(response.into_inner())
}

/// How one stream ended.
pub struct StreamEnd {
    pub batches: u64,
    pub error: Option<RlpError>,
}

/// Subscribes once and forwards batches until the stream ends.
pub async fn stream_once(cfg: &RlpConfig, router: &Router, status: &RlpStatus) -> StreamEnd {
    let mut stream = match subscribe(cfg).await {
        Ok(s) => {
            status.set_connected(true);
            s
        }
        Err(e) => {
            return StreamEnd {
                batches: 0,
                error: Some(e),
            };
        }
    };
    let mut batches = 0;
    loop {
        match stream.message().await {
            Ok(Some(batch)) => {
                batches += 1;
                status.last_batch_unix_ms.store(
                    chrono::Utc::now().timestamp_millis().max(0) as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                router.dispatch(batch.batch);
            }
            Ok(None) => {
                return StreamEnd {
                    batches,
                    error: None,
                };
            }
            Err(status) => {
                return StreamEnd {
                    batches,
                    error: Some(RlpError::Stream {
                        addr: cfg.addr.clone(),
                        status: describe_status(&status),
                    }),
                };
            }
        }
    }
}

/// Reads from the RLP until `shutdown` is cancelled, reconnecting as needed.
pub async fn run(
    cfg: RlpConfig,
    router: Arc<Router>,
    status: Arc<RlpStatus>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let mut backoff = cfg.backoff.clone();
    loop {
        status.attempts.fetch_add(1, Ordering::Relaxed);
        let end = tokio::select! {
            _ = shutdown.cancelled() => return,
            end = stream_once(&cfg, &router, &status) => end,
        };
        status.set_connected(false);
        if end.batches > 0 {
            backoff.reset();
        }
        match end.error {
            None => {
                tracing::info!(addr = %cfg.addr, batches = end.batches, "RLP stream ended; reconnecting")
            }
            Some(e) => {
                status.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, batches = end.batches, "RLP stream failed; reconnecting");
                *status.last_error.lock().expect("status lock") = Some(e.to_string());
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
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
            " (the RLP has reached its stream limit; add log-api instances or retry later)"
        }
        tonic::Code::InvalidArgument => {
            " (the subscription request is invalid: a configuration bug)"
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

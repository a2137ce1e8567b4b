//! The `syslog` sink: RFC 5424 messages over TCP, TLS (RFC 5425) or UDP, as
//! AlienVault USM's syslog-ng listener and rsyslog receive them.
//!
//! Messages are encoded and framed as RFC 5424 and RFC 6587 describe in
//! `rfc5424.rs`; this file holds the connection.
//!
//! Delivery is at least once: a batch whose write fails is retried whole on a
//! new connection (the runner's retry), so a receiver can see part of it twice.
//! A receiver that accepts but takes no data (a full socket buffer nobody
//! reads, a TLS handshake never answered) fails the write after
//! `write_timeout`; the connection is replaced (counted in
//! [`SinkStats::reconnects`]) and the batch retried with backoff.

mod cef;
mod rfc5424;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use rfc5424::encode_framed;
pub(crate) use rfc5424::{DEFAULT_ENTERPRISE_NUMBER, DEFAULT_MAX_MESSAGE_BYTES, SEVERITIES};
pub use rfc5424::{Framing, MsgFormat, Severities, SyslogFormat, encode};

use super::{Batch, Sink, SinkError, SinkFailure, SinkStats};
use crate::record::{EncodeContext, Record};

/// How long a write (a piece of [`WRITE_CHUNK`], the TLS handshake) may
/// wait for the receiver to take data before the connection is replaced:
/// the HTTP sink's reply timeout.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// Framed messages are written to the stream in pieces of about this size
/// while the rest of the batch is still being encoded, so what the TLS
/// layer copies to encrypt was just written (not a whole ~2 MB batch ago).
const WRITE_CHUNK: usize = 64 << 10;

/// The largest TLS record the sink sends (rustls' `max_fragment_size`; TLS
/// allows 16 KiB). rustls copies each record's plaintext before encrypting
/// it, and at 16 KiB that copy was 12 % of the syslog benchmark's CPU
/// (`perf`); with records of 8 KiB and [`WRITE_CHUNK`], all copies together
/// were 14.5 % instead of 20.3 %, and 1.2 M envelopes took 6.33-7.86 CPU-s
/// instead of 6.59-8.12 (five alternating runs each at 150,000/s).
const TLS_FRAGMENT: usize = 8192;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    Udp,
}

#[derive(Clone, Debug)]
pub struct SyslogConfig {
    /// `host:port`.
    pub addr: String,
    pub transport: Transport,
    pub framing: Framing,
    /// Name the receiver's certificate must carry (TLS); the host of `addr` by default.
    pub server_name: String,
    /// TLS client settings (trust, client certificate).
    pub tls: Option<crate::tls::ClientSettings>,
    pub format: SyslogFormat,
    /// Longest wait for the receiver to take data ([`DEFAULT_WRITE_TIMEOUT`]).
    pub write_timeout: Duration,
}

enum Connection {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Udp(UdpSocket),
}

impl Connection {
    /// The byte stream of a TCP or TLS connection (`None` for UDP).
    fn stream(&mut self) -> Option<&mut (dyn tokio::io::AsyncWrite + Unpin + Send)> {
        match self {
            Connection::Tcp(s) => Some(s),
            Connection::Tls(s) => Some(s),
            Connection::Udp(_) => None,
        }
    }

    /// Whether the receiver has closed or reset the stream: a write would go
    /// to a socket buffer nobody reads (and be lost), so reconnect first.
    fn peer_closed(&mut self) -> bool {
        use futures_util::FutureExt;
        let mut byte = [0u8; 64];
        let polled = match self {
            Connection::Tcp(s) => s.read(&mut byte).now_or_never(),
            Connection::Tls(s) => s.read(&mut byte).now_or_never(),
            Connection::Udp(_) => None,
        };
        matches!(polled, Some(Ok(0) | Err(_)))
    }
}

pub struct SyslogSink {
    cfg: SyslogConfig,
    ctx: EncodeContext,
    conn: Option<Connection>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    truncated: u64,
    stats: Option<Arc<SinkStats>>,
}

/// `io` unless the receiver takes no data for `limit`: then a `TimedOut`
/// error naming the option.
async fn within<T>(
    limit: Duration,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, io).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the receiver took no data for {:?} (--syslog-write-timeout)",
                limit
            ),
        ))
    })
}

impl SyslogSink {
    pub fn new(mut cfg: SyslogConfig, ctx: EncodeContext) -> Self {
        if cfg.transport == Transport::Udp {
            // A message must fit one datagram.
            cfg.format.max_message_bytes = cfg.format.max_message_bytes.min(MAX_DATAGRAM);
        }
        cfg.tls = cfg
            .tls
            .map(|tls| tls.with(|c| c.max_fragment_size = Some(TLS_FRAGMENT)));
        Self {
            cfg,
            ctx,
            conn: None,
            buf: Vec::with_capacity(WRITE_CHUNK + DEFAULT_MAX_MESSAGE_BYTES + 16),
            scratch: Vec::with_capacity(DEFAULT_MAX_MESSAGE_BYTES),
            truncated: 0,
            stats: None,
        }
    }

    async fn connect(&self) -> Result<Connection, SinkError> {
        let addr = &self.cfg.addr;
        let failed = |reason: String| SinkError::Connect {
            addr: addr.clone(),
            reason,
        };
        if self.cfg.transport == Transport::Udp {
            let socket = UdpSocket::bind(if addr.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })
            .await
            .map_err(|e| failed(e.to_string()))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| failed(e.to_string()))?;
            return Ok(Connection::Udp(socket));
        }
        let tcp =
            tokio::time::timeout(std::time::Duration::from_secs(10), TcpStream::connect(addr))
                .await
                .map_err(|_| failed("timed out after 10 s".into()))?
                .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if self.cfg.transport == Transport::Tcp {
            return Ok(Connection::Tcp(tcp));
        }
        let tls = self
            .cfg
            .tls
            .as_ref()
            .map(|tls| Arc::clone(tls.config()))
            .ok_or_else(|| failed("TLS transport without TLS settings".into()))?;
        let name =
            rustls_pki_types::ServerName::try_from(self.cfg.server_name.clone()).map_err(|e| {
                failed(format!(
                    "invalid TLS server name {:?}: {e}",
                    self.cfg.server_name
                ))
            })?;
        let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
        let stream = within(self.cfg.write_timeout, handshake)
            .await
            .map_err(|e| failed(format!("TLS handshake: {e}")))?;
        Ok(Connection::Tls(Box::new(stream)))
    }

    fn count_reconnect(&self) {
        if let Some(s) = &self.stats {
            s.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn send(&mut self, batch: &[Arc<Record>]) -> Result<(), SinkError> {
        if self.conn.as_mut().is_some_and(Connection::peer_closed) {
            tracing::info!(addr = %self.cfg.addr, "syslog receiver closed the connection; reconnecting");
            self.conn = None;
            self.count_reconnect();
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let io = |source| SinkError::Io {
            path: self.cfg.addr.clone(),
            source: Arc::new(source),
        };
        let (cfg, ctx) = (&self.cfg, &self.ctx);
        let limit = cfg.write_timeout;
        match self.conn.as_mut().expect("connected above") {
            Connection::Udp(socket) => {
                for record in batch {
                    self.buf.clear();
                    if encode(record, ctx, &cfg.format, &mut self.buf) {
                        self.truncated += 1;
                    }
                    within(limit, socket.send(&self.buf)).await.map_err(io)?;
                }
                Ok(())
            }
            conn => {
                let stream = conn.stream().expect("UDP is handled above");
                // A failure part way through fails the whole batch, which
                // is then sent again on a new connection (at least once).
                self.buf.clear();
                for (i, record) in batch.iter().enumerate() {
                    if encode_framed(
                        record,
                        ctx,
                        &cfg.format,
                        cfg.framing,
                        &mut self.scratch,
                        &mut self.buf,
                    ) {
                        self.truncated += 1;
                    }
                    if self.buf.len() >= WRITE_CHUNK || i + 1 == batch.len() {
                        within(limit, stream.write_all(&self.buf))
                            .await
                            .map_err(io)?;
                        self.buf.clear();
                    }
                }
                within(limit, stream.flush()).await.map_err(io)
            }
        }
    }
}

impl Sink for SyslogSink {
    fn name(&self) -> &str {
        "syslog"
    }

    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        let truncated_before = self.truncated;
        match self.send(batch.records).await {
            Ok(()) => {
                let truncated = self.truncated - truncated_before;
                if truncated > 0 {
                    tracing::warn!(
                        truncated,
                        max_message_bytes = self.cfg.format.max_message_bytes,
                        "syslog messages longer than the limit were truncated"
                    );
                }
                Ok(batch.records.len() as u64)
            }
            Err(error) => {
                // The stream's state is unknown: start a new connection and
                // send the whole batch again (at least once).
                if self.conn.take().is_some() {
                    self.count_reconnect();
                    let timed_out = matches!(&error, SinkError::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut);
                    if timed_out {
                        tracing::warn!(addr = %self.cfg.addr, timeout = ?self.cfg.write_timeout, "syslog receiver takes no data (--syslog-write-timeout); reconnecting");
                    } else {
                        tracing::warn!(addr = %self.cfg.addr, error = %error.in_sink(self.name()), "syslog write failed; reconnecting");
                    }
                }
                Err(SinkFailure::Retry { error, after: None })
            }
        }
    }

    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        // Close politely at shutdown (TLS close_notify), so the receiver sees a clean end.
        // A receiver that takes no data does not hold the shutdown up.
        if let Some(Connection::Tls(mut s)) = self.conn.take() {
            let _ = within(self.cfg.write_timeout, s.shutdown()).await;
        }
        Ok(0)
    }

    fn attach(&mut self, stats: &Arc<SinkStats>) {
        self.stats = Some(Arc::clone(stats));
    }
}

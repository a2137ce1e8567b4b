//! The syslog ingress (issue 22): component logs that BOSH's syslog
//! forwarding sends (rsyslog, RFC 5424 over TLS), from which Cloud
//! Controller's CEF security events and UAA's audit lines become `api`
//! records for the same router as every other source.
//!
//! One task accepts connections (TLS when configured, client certificates
//! when a client CA is); each connection is its own task, which frames
//! messages ([`frame`]), reads each into a security event
//! ([`crate::record::security::read_line`]) and offers the records of what
//! it read at once to the router, which never waits on a sink. Memory is
//! bounded per connection (one message of at most `max_message` bytes) and
//! in connections (`max_connections`; one more is refused). Lines that are
//! no security event are counted and ignored; lines that claim to be one
//! and cannot be read are counted as malformed and logged (rate-limited).

mod frame;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::record::security::{read_line, security_record};
use crate::route::Router;
use frame::{Frame, Framer};

/// The ingress, as configuration describes it.
#[derive(Clone, Debug)]
pub struct SyslogInConfig {
    pub addr: SocketAddr,
    /// TLS (RFC 5425); `None`: plain TCP (tests, a local relay).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The largest message read; larger ones are skipped and counted.
    pub max_message: usize,
    /// Connections served at once; one more is closed at once (counted).
    pub max_connections: usize,
}

/// The default largest message: rsyslog's default `maxMessageSize` is 8 KiB,
/// BOSH's syslog release raises it to 64 KiB.
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

crate::counters::counters! {
    /// What the syslog ingress read (`/metrics`, the summary).
    #[derive(Debug)]
    pub struct SyslogInStats {
        /// Connections accepted.
        connections: Counter("syslog_in_connections", "Connections the syslog ingress accepted."),
        /// Connections refused: TLS handshake failures, the connection cap.
        refused: Counter("syslog_in_refused", "Connections the syslog ingress closed at once: TLS handshakes that failed, or --syslog-in-max-connections reached."),
        /// Messages framed.
        received: Counter("syslog_in_lines_received", "Syslog messages received."),
        /// Messages read into a CC security event or UAA audit record.
        parsed: Counter("syslog_in_lines_parsed", "Syslog messages read into a Cloud Controller security event or a UAA audit record."),
        /// Messages that are neither.
        ignored: Counter("syslog_in_lines_ignored", "Syslog messages that are neither a Cloud Controller security event nor a UAA audit line."),
        /// Messages that claim to be one and cannot be read.
        malformed: Counter("syslog_in_lines_malformed", "Syslog messages that look like a security event or UAA audit line and cannot be read."),
        /// Messages skipped for their size, or cut off by a broken frame.
        dropped: Counter("syslog_in_lines_dropped", "Syslog messages dropped unread: over the size limit, or in a stream whose framing broke."),
    }
    extra {
        open: std::sync::atomic::AtomicUsize,
    }
    /// A copy of [`SyslogInStats`].
    #[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
    pub struct SyslogInSnapshot {}
    then {}
}

/// Why the ingress cannot start.
#[derive(Debug, thiserror::Error)]
#[error("--syslog-in-addr {addr}: cannot listen: {source}")]
pub struct SyslogInError {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Binds the ingress's address (at start, so a taken port fails the start).
pub async fn bind(cfg: &SyslogInConfig) -> Result<TcpListener, SyslogInError> {
    TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| SyslogInError {
            addr: cfg.addr,
            source,
        })
}

/// Serves `listener` until `shutdown` is cancelled, offering what it reads to `router`.
pub async fn run(
    listener: TcpListener,
    cfg: SyslogInConfig,
    router: Arc<Router>,
    stats: Arc<SyslogInStats>,
    shutdown: CancellationToken,
) {
    let acceptor = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "syslog ingress: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        if stats.open.load(Ordering::Relaxed) >= cfg.max_connections {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (router, stats, acceptor, stop) = (
            Arc::clone(&router),
            Arc::clone(&stats),
            acceptor.clone(),
            shutdown.clone(),
        );
        let max = cfg.max_message;
        tasks.spawn(async move {
            stats.open.fetch_add(1, Ordering::Relaxed);
            serve(tcp, peer, acceptor, max, &router, &stats, stop).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
    // Connections stop reading at shutdown; what they framed is offered.
    while tasks.join_next().await.is_some() {}
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    max: usize,
    router: &Router,
    stats: &SyslogInStats,
    stop: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    match acceptor {
        None => read_stream(tcp, peer, max, router, stats, stop).await,
        Some(acceptor) => match acceptor.accept(tcp).await {
            Ok(tls) => read_stream(tls, peer, max, router, stats, stop).await,
            Err(e) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "syslog ingress: TLS handshake failed");
            }
        },
    }
}

/// Reads messages from one connection until it ends, its framing breaks
/// or `stop` is cancelled.
async fn read_stream<S: AsyncRead + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    max: usize,
    router: &Router,
    stats: &SyslogInStats,
    stop: CancellationToken,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut framer = Framer::new(max);
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            n = stream.read_buf(&mut buf) => n,
        };
        match n {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut records = Vec::new();
        let broken = loop {
            match framer.next(&mut buf) {
                Ok(Some(Frame::Message(m))) => read_message(&m, stats, &mut records),
                Ok(Some(Frame::Oversize)) => {
                    stats.received.fetch_add(1, Ordering::Relaxed);
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        if !records.is_empty() {
            router.dispatch_records(records);
        }
        if let Some(e) = broken {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %e, "syslog ingress: closing a connection");
            return;
        }
        // Keep the buffer from growing past one message between reads.
        if buf.capacity() > 4 * max.max(64 * 1024) && buf.is_empty() {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
}

/// Reads one framed message into `records`, counting what became of it.
fn read_message(bytes: &[u8], stats: &SyslogInStats, records: &mut Vec<crate::record::Record>) {
    stats.received.fetch_add(1, Ordering::Relaxed);
    let text = String::from_utf8_lossy(bytes);
    let m = frame::message(&text);
    let msg = m.msg.trim_end_matches(['\n', '\r']);
    match read_line(msg, m.host, m.time_ns) {
        Ok(Some(ev)) => {
            stats.parsed.fetch_add(1, Ordering::Relaxed);
            records.push(security_record(ev));
        }
        Ok(None) => {
            stats.ignored.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "syslog ingress: skipped a line");
        }
    }
}

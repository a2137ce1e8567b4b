//! `cf-audit-nozzle emulator`: the emulator alone, as a server for
//! benchmarks and for trying a nozzle out: an RLP over mutual TLS (its
//! client files written for the nozzle) and, when asked, an RLP Gateway.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::gateway::{GatewayEmulator, GatewayEmulatorConfig};
use super::{Emulator, EmulatorConfig, EmulatorError, Feed};
use crate::tls::{Pki, TlsError};

/// What the emulator serves (from `emulator`'s options).
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Where ca.pem, client.pem and client-key.pem are written.
    pub(crate) tls_dir: PathBuf,
    /// Envelopes per second per shard; `None` is as fast as the client reads.
    pub rate: Option<u64>,
    /// Envelopes per shard before the streams end; `None` is endless.
    pub count: Option<u64>,
    pub seed: u64,
    /// Generate every batch fresh instead of cycling through batches encoded at start.
    pub fresh: bool,
    /// Also serve an RLP Gateway here.
    pub(crate) gateway_listen: Option<SocketAddr>,
    pub(crate) gateway_stream_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("writing TLS files to {dir}: {error}")]
    TlsFiles { dir: String, error: std::io::Error },
    #[error("writing to standard output: {0}")]
    Output(std::io::Error),
}

/// Serves until `shutdown` is cancelled, printing to `out` where it listens
/// (the gateway first: the benchmark reads the first address a line names)
/// and at the end how many envelopes it sent.
pub async fn serve(
    cfg: ServeConfig,
    out: &mut dyn Write,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut say = |line: String| {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(ServeError::Output)
    };
    let gateway = match cfg.gateway_listen {
        None => None,
        Some(listen) => {
            let gateway = GatewayEmulator::start(
                listen,
                GatewayEmulatorConfig {
                    feed: Feed::Generated { seed: cfg.seed },
                    rate: cfg.rate,
                    count: cfg.count,
                    stream_timeout: cfg.gateway_stream_timeout,
                    ..GatewayEmulatorConfig::default()
                },
            )
            .await?;
            say(format!(
                "gateway listening on {} (RLP Gateway /v2/read, UAA /oauth/token and CF API root; any client id and secret)",
                gateway.url()
            ))?;
            Some(gateway)
        }
    };
    let pki = Pki::generate("loggregatorCA", &["reverselogproxy"])?;
    pki.write_client_files(&cfg.tls_dir)
        .map_err(|error| ServeError::TlsFiles {
            dir: cfg.tls_dir.display().to_string(),
            error,
        })?;
    let emulator = Emulator::start(
        cfg.listen,
        &pki,
        EmulatorConfig {
            feed: Feed::Generated { seed: cfg.seed },
            rate: cfg.rate,
            count: cfg.count,
            pre_encoded: !cfg.fresh,
            ..EmulatorConfig::default()
        },
    )
    .await?;
    say(format!(
        "emulator listening on {} (server name reverselogproxy); client files in {}",
        emulator.addr,
        cfg.tls_dir.display()
    ))?;
    shutdown.cancelled().await;
    let sent = emulator.envelopes_sent();
    emulator.stop().await;
    say(format!("emulator sent {sent} envelopes"))?;
    if let Some(gateway) = gateway {
        say(format!(
            "gateway sent {} envelopes",
            gateway.envelopes_sent()
        ))?;
    }
    Ok(())
}

//! Sources: where envelopes come from.
//!
//! - [`rlp`]: the Reverse Log Proxy's gRPC `BatchedReceiver`, over mutual TLS.
//! - [`uaa`]: UAA client-credentials tokens, renewed before expiry;
//!   [`cf_api`]: endpoint discovery from the Cloud Foundry API root.
//! - [`audit_events`]: Cloud Controller's `/v3/audit_events`, polled into
//!   `api` records ([`cloud_controller`] makes the requests).
//! - [`emulator`]: an in-process Loggregator egress server for the demo, the
//!   tests and the benchmark.
//!
//! Every source reconnects forever through [`status::reconnect_loop`] with
//! [`Backoff`](crate::backoff::Backoff), reports in a [`SourceStatus`], asks for the envelopes its
//! [`Streams`] name, and stops when its shutdown token is cancelled.

pub mod audit_events;
pub mod cf_api;
pub mod cloud_controller;
pub mod emulator;
pub mod gateway;
pub mod rlp;
pub mod status;
pub mod streams;
pub mod syslog_in;
pub mod uaa;

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::route::Router;

pub use status::{SourceSnapshot, SourceStatus};
pub use streams::{EnvelopeType, Streams};

/// Where `run`, `tail` and `demo` read envelopes from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    Rlp(Box<rlp::RlpConfig>),
    Gateway(Box<gateway::GatewayConfig>),
}

impl SourceConfig {
    /// The source's name in /health and /metrics.
    pub fn name(&self) -> &'static str {
        match self {
            SourceConfig::Rlp(_) => "rlp",
            SourceConfig::Gateway(_) => "gateway",
        }
    }
}

/// Starts the source `cfg` names, feeding `router` and reporting in
/// `status`, until `shutdown` is cancelled. The task drops its router when it
/// ends, which closes the sink queues once every other clone is gone.
pub fn spawn(
    cfg: SourceConfig,
    router: Arc<Router>,
    status: Arc<SourceStatus>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    match cfg {
        SourceConfig::Rlp(rlp) => tokio::spawn(rlp::run(*rlp, router, status, shutdown)),
        SourceConfig::Gateway(gateway) => {
            tokio::spawn(gateway::run(*gateway, router, status, shutdown))
        }
    }
}

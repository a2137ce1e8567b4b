//! Options of `/health`, `/metrics` and alerts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::alert::AlertConfig;
use crate::telemetry::{BasicAuth, TelemetryConfig};

#[derive(Debug, Args)]
pub struct TelemetryArgs {
    /// Address of /health and /metrics, host:port, or `off`. Default:
    /// 0.0.0.0:$PORT when PORT is set (Cloud Foundry), else 127.0.0.1:8080.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<String>,
    /// Seconds a source may stay disconnected before /health answers 503.
    #[arg(long, env = "HEALTH_DISCONNECT_THRESHOLD", default_value_t = 60)]
    pub(crate) health_disconnect_threshold: u64,
    /// `user:password` that /metrics requires (HTTP basic auth); none by default.
    #[arg(long, env = "METRICS_AUTH", hide_env_values = true)]
    pub metrics_auth: Option<crate::redact::Secret>,
    /// Connections /health and /metrics serve at once; a new connection beyond
    /// it closes the oldest, so idle or slow clients can neither lock out a
    /// health check nor take the file descriptors the sinks need.
    #[arg(long, env = "HEALTH_MAX_CONNECTIONS", default_value_t = 64)]
    pub(crate) health_max_connections: usize,
    /// Seconds a /health or /metrics client has to send a whole request head
    /// (after connecting, or after its previous response) before it is closed.
    #[arg(long, env = "HEALTH_HEADER_TIMEOUT", default_value_t = 10)]
    pub(crate) health_header_timeout: u64,
    /// Seconds a sink may deliver nothing while records wait before an alert.
    #[arg(long, env = "ALERT_AFTER", default_value_t = 60)]
    pub(crate) alert_after: u64,
    /// Send alert records (event records from source_id cf-audit-nozzle) to the other sinks.
    #[arg(long, env = "ALERT_RECORDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub alert_records: bool,
}

impl TelemetryArgs {
    /// The telemetry server's configuration (`None` for `off`) and the alerts'.
    pub fn config(
        &self,
        port: Option<String>,
        errors: &mut Vec<String>,
    ) -> (Option<TelemetryConfig>, AlertConfig) {
        let alerts = AlertConfig {
            after: Duration::from_secs(self.alert_after),
            records: self.alert_records,
            ..AlertConfig::default()
        };
        if self.health_max_connections == 0 {
            errors.push(
                "--health-max-connections (HEALTH_MAX_CONNECTIONS) must be at least 1".into(),
            );
        }
        if self.health_header_timeout == 0 {
            errors.push(
                "--health-header-timeout (HEALTH_HEADER_TIMEOUT) must be at least 1 second".into(),
            );
        }
        if self.alert_after == 0 {
            errors.push("--alert-after (ALERT_AFTER) must be at least 1 second".into());
        }
        let metrics_auth = match self.metrics_auth.as_ref().map(|s| s.expose()) {
            None => None,
            Some(v) => match v.split_once(':') {
                Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                    Some(BasicAuth {
                        user: user.to_string(),
                        password: password.into(),
                    })
                }
                // The value is a secret: never echo it.
                _ => {
                    errors.push(
                        "--metrics-auth (METRICS_AUTH) must be user:password, both non-empty"
                            .into(),
                    );
                    None
                }
            },
        };
        let (addr, addr_is_default) = match (self.health_addr.as_deref(), port) {
            (Some("off"), _) => return (None, alerts),
            (Some(a), _) => match a.parse::<SocketAddr>() {
                Ok(a) => (a, false),
                Err(_) => {
                    errors.push(format!(
                        "--health-addr (HEALTH_ADDR) must be ip:port or off, not {a:?}"
                    ));
                    return (None, alerts);
                }
            },
            (None, Some(port)) => match port.parse::<u16>() {
                Ok(p) => (SocketAddr::from(([0, 0, 0, 0], p)), false),
                Err(_) => {
                    errors.push(format!("PORT must be a port number, not {port:?}"));
                    return (None, alerts);
                }
            },
            (None, None) => (SocketAddr::from(([127, 0, 0, 1], 8080)), true),
        };
        (
            Some(TelemetryConfig {
                addr,
                addr_is_default,
                metrics_auth,
                disconnect_threshold: Duration::from_secs(self.health_disconnect_threshold),
                max_connections: self.health_max_connections,
                header_timeout: Duration::from_secs(self.health_header_timeout),
            }),
            alerts,
        )
    }
}

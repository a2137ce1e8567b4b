//! Options of the syslog ingress (issue 22): where it listens, its TLS
//! server certificate and key, the CA client certificates must be signed
//! by, and its bounds. Validation checks values; [`build`] reads the files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::source::syslog_in::{DEFAULT_MAX_MESSAGE, SyslogInConfig};

#[derive(Debug, Args)]
pub struct SyslogInArgs {
    /// Listen for BOSH-forwarded component logs (RFC 5424 syslog; octet-counted or newline-framed) on host:port, and read Cloud Controller's CEF security events and UAA's audit lines into api records. Off when unset.
    #[arg(long, env = "SYSLOG_IN_ADDR")]
    pub syslog_in_addr: Option<String>,
    /// Server certificate (PEM, with its chain) of the syslog ingress: with --syslog-in-key it serves TLS (RFC 5425); without, plain TCP.
    #[arg(long, env = "SYSLOG_IN_CERT")]
    pub(crate) syslog_in_cert: Option<PathBuf>,
    /// Private key (PEM) of --syslog-in-cert.
    #[arg(long, env = "SYSLOG_IN_KEY")]
    pub(crate) syslog_in_key: Option<PathBuf>,
    /// CA (PEM) that must have signed the senders' client certificates; without it any sender may connect.
    #[arg(long, env = "SYSLOG_IN_CLIENT_CA")]
    pub(crate) syslog_in_client_ca: Option<PathBuf>,
    /// Largest syslog message read, in bytes; larger ones are skipped and counted.
    #[arg(long, env = "SYSLOG_IN_MAX_MESSAGE", default_value_t = DEFAULT_MAX_MESSAGE)]
    pub(crate) syslog_in_max_message: usize,
    /// Connections the syslog ingress serves at once; one more is closed and counted.
    #[arg(long, env = "SYSLOG_IN_MAX_CONNECTIONS", default_value_t = 256)]
    pub(crate) syslog_in_max_connections: usize,
}

/// The validated options: the files are read by [`build`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogInSettings {
    pub addr: SocketAddr,
    /// Certificate and key files, when TLS is on.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub client_ca: Option<PathBuf>,
    pub max_message: usize,
    pub max_connections: usize,
}

impl SyslogInArgs {
    /// The ingress's settings (`None`: off), problems added to `errors` and
    /// what an operator should know to `warnings`.
    pub(crate) fn settings(
        &self,
        errors: &mut Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Option<SyslogInSettings> {
        let addr = self.syslog_in_addr.as_deref()?;
        let addr = match addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!(
                    "--syslog-in-addr (SYSLOG_IN_ADDR) {addr:?} is not host:port with an IP address: {e}"
                ));
                None
            }
        };
        let tls = match (&self.syslog_in_cert, &self.syslog_in_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                errors.push("--syslog-in-cert (SYSLOG_IN_CERT) and --syslog-in-key (SYSLOG_IN_KEY) go together".into());
                None
            }
        };
        if self.syslog_in_client_ca.is_some() && tls.is_none() {
            errors.push("--syslog-in-client-ca (SYSLOG_IN_CLIENT_CA) needs --syslog-in-cert and --syslog-in-key (client certificates need TLS)".into());
        }
        if self.syslog_in_cert.is_none() && self.syslog_in_key.is_none() {
            warnings.push("the syslog ingress (--syslog-in-addr) serves plain TCP: security events travel unencrypted; set --syslog-in-cert and --syslog-in-key".into());
        }
        if self.syslog_in_max_message < 480 {
            // RFC 5424 §6.1: every receiver must take messages of 480 octets.
            errors.push(
                "--syslog-in-max-message (SYSLOG_IN_MAX_MESSAGE) must be at least 480 bytes".into(),
            );
        }
        if self.syslog_in_max_connections == 0 {
            errors.push(
                "--syslog-in-max-connections (SYSLOG_IN_MAX_CONNECTIONS) must be at least 1".into(),
            );
        }
        Some(SyslogInSettings {
            addr: addr?,
            tls,
            client_ca: self.syslog_in_client_ca.clone(),
            max_message: self.syslog_in_max_message,
            max_connections: self.syslog_in_max_connections,
        })
    }
}

/// Reads the files `s` names into the ingress's configuration, each
/// problem naming its option.
pub fn build(s: &SyslogInSettings, errors: &mut Vec<String>) -> Option<SyslogInConfig> {
    let tls = match &s.tls {
        None => None,
        Some((cert, key)) => Some(Arc::new(
            server_config(cert, key, s.client_ca.as_ref())
                .map_err(|e| errors.push(e))
                .ok()?,
        )),
    };
    Some(SyslogInConfig {
        addr: s.addr,
        tls,
        max_message: s.max_message,
        max_connections: s.max_connections,
    })
}

fn server_config(
    cert: &PathBuf,
    key: &PathBuf,
    client_ca: Option<&PathBuf>,
) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |path: &PathBuf, flag: &str| {
        std::fs::read(path).map_err(|e| format!("{flag}: cannot read {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert, "--syslog-in-cert")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--syslog-in-cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--syslog-in-cert {} holds no CERTIFICATE",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key, "--syslog-in-key")?)
        .map_err(|e| format!("--syslog-in-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("--syslog-in-cert: {e}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca, "--syslog-in-client-ca")?) {
                let c = c.map_err(|e| format!("--syslog-in-client-ca {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("--syslog-in-client-ca {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("--syslog-in-client-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("--syslog-in-cert and --syslog-in-key: {e}"))
}

//! The HTTP client every part of the nozzle builds from (UAA, Cloud
//! Controller, the RLP Gateway, the HTTP sink, S3, the notification webhook):
//! trust roots, timeouts, proxies from the environment and the one redirect
//! policy. A floor module: it knows TLS ([`crate::tls`]) and nothing of the
//! stages or the configuration.

use std::sync::Arc;
use std::time::Duration;

/// Time to set up a TCP (and TLS) connection to UAA, CC or the gateway.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for any read on a connection. The gateway sends a heartbeat
/// every 15 s, so this never ends a healthy stream; it ends a dead CC or UAA
/// call that a per-request timeout did not.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Redirects one request may follow (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// A redirect to another origin than the request's, refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused a redirect from {from} to {to}: credentials and records are sent only to the configured origin"
)]
pub(crate) struct CrossOriginRedirect {
    /// Origins (scheme://host:port), never paths or queries.
    pub from: String,
    pub to: String,
}

/// The redirect policy of every HTTP client the nozzle builds (UAA, Cloud
/// Controller, the gateway, the HTTP sink, S3, the notification webhook):
/// a redirect within the origin of the first request (same scheme, host and
/// port) is followed, up to 10; one to any other origin is an error
/// ([`CrossOriginRedirect`]), so neither a credential (a UAA secret re-posted
/// by a 307, a bearer token, an `--http-header`) nor a record leaves for a
/// host nobody configured.
pub(crate) fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else {
            return attempt.follow();
        };
        if attempt.url().origin() != first.origin() {
            let error = CrossOriginRedirect {
                from: first.origin().ascii_serialization(),
                to: attempt.url().origin().ascii_serialization(),
            };
            return attempt.error(error);
        }
        // The first URL is the request itself, not a redirect.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
        }
        attempt.follow()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// An HTTP client (rustls; HTTP/1.1) that trusts the Mozilla roots plus the
/// certificates in `extra_ca_pem`, verifies certificates unless
/// `skip_verify`, honours `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and
/// `NO_PROXY` from the environment, and times out connects and stalled
/// reads ([`CONNECT_TIMEOUT`], [`READ_TIMEOUT`]). Callers add a whole-request
/// timeout to requests that are not streams.
pub fn http_client(
    extra_ca_pem: Option<&[u8]>,
    skip_verify: bool,
) -> Result<reqwest::Client, HttpClientError> {
    let mut tls = rustls_config(extra_ca_pem)?;
    if skip_verify {
        crate::tls::disable_verification(&mut tls);
    }
    // reqwest reads the proxy variables itself (its system proxy matcher).
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(30))
        .user_agent(concat!("cf-audit-nozzle/", env!("CARGO_PKG_VERSION")))
        .redirect(same_origin_redirects())
        .build()
        .map_err(|e| HttpClientError::Build(crate::error_chain(&e)))
}

/// A rustls client configuration that trusts the Mozilla roots plus the
/// certificates in `extra_ca_pem` (refused when it holds none).
pub(crate) fn rustls_config(
    extra_ca_pem: Option<&[u8]>,
) -> Result<rustls::ClientConfig, HttpClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let invalid = |reason: String| crate::tls::TlsError::Invalid {
        what: "CA file",
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| invalid(e.to_string()))?;
            roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(invalid("it holds no certificate".into()).into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let err = http_client(Some(b"not pem"), false).unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");
    }
}

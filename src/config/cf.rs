//! The Cloud Foundry platform options (API, UAA, their TLS) and the HTTP
//! client the nozzle talks to UAA, Cloud Controller and the RLP Gateway
//! with; part of [`crate::config`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::redact::Secret;
use crate::source::uaa::UaaConfig;

/// Time to set up a TCP (and TLS) connection to UAA, CC or the gateway.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for any read on a connection. The gateway sends a heartbeat
/// every 15 s, so this never ends a healthy stream; it ends a dead CC or UAA
/// call that a per-request timeout did not.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The smallest `--cf-max-response-bytes`: a token response or an API root
/// needs a few KiB.
pub const MIN_RESPONSE_BYTES: usize = 64 * 1024;

/// Redirects one request may follow (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// A redirect to another origin than the request's, refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused a redirect from {from} to {to}: credentials and records are sent only to the configured origin"
)]
pub struct CrossOriginRedirect {
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
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
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

#[derive(Debug, Args)]
pub struct CfArgs {
    /// Cloud Foundry API URL (https://api.<system domain>); UAA and the RLP Gateway are discovered from it.
    #[arg(long, env = "CF_API")]
    pub cf_api: Option<String>,
    /// UAA base URL (https://uaa.<system domain>), when not discovered from --cf-api.
    #[arg(long, env = "UAA_URL")]
    pub uaa_url: Option<String>,
    /// UAA client (client_credentials grant) with the authority doppler.firehose or logs.admin.
    #[arg(long, env = "UAA_CLIENT_ID")]
    pub uaa_client_id: Option<String>,
    /// Secret of --uaa-client-id.
    #[arg(long, env = "UAA_CLIENT_SECRET", hide_env_values = true)]
    pub uaa_client_secret: Option<Secret>,
    /// Extra CA certificate(s) (PEM) trusted for the CF API, UAA and the gateway, besides the Mozilla roots.
    #[arg(long, env = "CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the TLS certificates of the CF API, UAA and the gateway (unsafe; testing only).
    #[arg(long, env = "SKIP_TLS_VERIFY")]
    pub skip_tls_verify: bool,
    /// Largest body read from Cloud Controller and UAA by the audit-events poller and enrichment; a larger answer is refused and counted (an audit-events page is asked for again in smaller pages).
    #[arg(long, env = "CF_MAX_RESPONSE_BYTES", default_value_t = crate::source::cf_api::DEFAULT_MAX_RESPONSE_BYTES)]
    pub cf_max_response_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

impl CfArgs {
    /// `--cf-api` as a URL, with problems added to `errors`.
    pub fn cf_api_url(&self, errors: &mut Vec<String>) -> Option<reqwest::Url> {
        parse_url(errors, "--cf-api (CF_API)", self.cf_api.as_deref())
    }

    /// `--uaa-url` as a URL, with problems added to `errors`.
    pub fn uaa_url(&self, errors: &mut Vec<String>) -> Option<reqwest::Url> {
        parse_url(errors, "--uaa-url (UAA_URL)", self.uaa_url.as_deref())
    }

    /// The UAA client for a UAA base URL, or a problem for each missing credential.
    pub fn uaa_config(&self, errors: &mut Vec<String>, uaa: &reqwest::Url) -> Option<UaaConfig> {
        let mut need = |v: Option<&str>, flag: &str| match v {
            Some(s) if !s.is_empty() => Some(s.to_string()),
            _ => {
                errors.push(format!(
                    "{flag} is required to get a UAA token (a client with the authority doppler.firehose or logs.admin)"
                ));
                None
            }
        };
        let client_id = need(
            self.uaa_client_id.as_deref(),
            "--uaa-client-id (UAA_CLIENT_ID)",
        );
        let client_secret = need(
            self.uaa_client_secret.as_ref().map(|s| s.expose()),
            "--uaa-client-secret (UAA_CLIENT_SECRET)",
        );
        Some(UaaConfig {
            token_url: UaaConfig::token_url_of(uaa),
            client_id: client_id?,
            client_secret: client_secret?.into(),
        })
    }

    /// `--cf-max-response-bytes`, with a problem in `errors` when it is too small
    /// for any real answer.
    pub fn max_response_bytes(&self, errors: &mut Vec<String>) -> usize {
        if self.cf_max_response_bytes < MIN_RESPONSE_BYTES {
            errors.push(format!(
                "--cf-max-response-bytes (CF_MAX_RESPONSE_BYTES) must be at least {MIN_RESPONSE_BYTES}, not {}",
                self.cf_max_response_bytes
            ));
        }
        self.cf_max_response_bytes.max(MIN_RESPONSE_BYTES)
    }

    /// The HTTP client for UAA, CC and the gateway, or a problem in `errors`.
    /// Warns loudly when verification is off.
    pub fn http_client(&self, errors: &mut Vec<String>) -> Option<reqwest::Client> {
        let ca_pem = match &self.ca_file {
            None => None,
            Some(path) => {
                match crate::tls::read_pem_file("--ca-file (CA_FILE)", path, "CERTIFICATE") {
                    Ok(pem) => Some(pem),
                    Err(e) => {
                        errors.push(e.to_string());
                        return None;
                    }
                }
            }
        };
        // --skip-tls-verify is warned about at start and in /health
        // (config: RunArgs::warnings).
        http_client(ca_pem.as_deref(), self.skip_tls_verify)
            .map_err(|e| errors.push(format!("--ca-file (CA_FILE): {e}")))
            .ok()
    }
}

pub(super) fn parse_url(
    errors: &mut Vec<String>,
    flag: &str,
    value: Option<&str>,
) -> Option<reqwest::Url> {
    let value = value.filter(|v| !v.is_empty())?;
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "https" | "http") && url.host().is_some() => Some(url),
        Ok(_) => {
            errors.push(format!(
                "{flag} must be an http(s) URL, not {:?}",
                crate::redact::url(value)
            ));
            None
        }
        Err(e) => {
            errors.push(format!(
                "{flag} is not a URL ({e}): {:?}",
                crate::redact::url(value)
            ));
            None
        }
    }
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
pub fn rustls_config(extra_ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, HttpClientError> {
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

    fn args() -> CfArgs {
        CfArgs {
            cf_api: None,
            uaa_url: None,
            uaa_client_id: None,
            uaa_client_secret: None,
            ca_file: None,
            skip_tls_verify: false,
            cf_max_response_bytes: crate::source::cf_api::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let a = CfArgs {
            uaa_client_secret: Some("s3cret".into()),
            ..args()
        };
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn missing_credentials_and_bad_urls_are_listed_together() {
        let a = CfArgs {
            cf_api: Some("api.example.com".into()),
            uaa_url: Some("ftp://uaa".into()),
            ..args()
        };
        let mut errors = Vec::new();
        assert!(a.cf_api_url(&mut errors).is_none());
        assert!(a.uaa_url(&mut errors).is_none());
        let uaa = reqwest::Url::parse("https://uaa").unwrap();
        assert!(a.uaa_config(&mut errors, &uaa).is_none());
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors[0].starts_with("--cf-api (CF_API) is not a URL"));
        assert!(errors[1].starts_with("--uaa-url (UAA_URL) must be an http(s) URL"));
        assert!(errors[2].starts_with("--uaa-client-id (UAA_CLIENT_ID) is required"));
        assert!(errors[3].starts_with("--uaa-client-secret (UAA_CLIENT_SECRET) is required"));
    }

    #[test]
    fn a_response_cap_below_64_kib_is_refused() {
        let a = CfArgs {
            cf_max_response_bytes: 1000,
            ..args()
        };
        let mut errors = Vec::new();
        assert_eq!(a.max_response_bytes(&mut errors), MIN_RESPONSE_BYTES);
        assert_eq!(
            errors,
            ["--cf-max-response-bytes (CF_MAX_RESPONSE_BYTES) must be at least 65536, not 1000"]
        );
        let mut errors = Vec::new();
        assert_eq!(args().max_response_bytes(&mut errors), 16 << 20);
        assert!(errors.is_empty());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let err = http_client(Some(b"not pem"), false).unwrap_err();
        assert!(err.to_string().contains("holds no certificate"), "{err}");
    }
}

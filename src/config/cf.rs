//! The Cloud Foundry platform options (API, UAA, their TLS), from which the
//! HTTP client ([`crate::http_client`]) the nozzle talks to UAA, Cloud
//! Controller and the RLP Gateway with is made; part of [`crate::config`].

use std::path::PathBuf;

use clap::Args;

use crate::http_client::http_client;
use crate::redact::Secret;
use crate::source::uaa::UaaConfig;

/// The smallest `--cf-max-response-bytes`: a token response or an API root
/// needs a few KiB.
pub(crate) const MIN_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Args)]
pub struct CfArgs {
    /// Cloud Foundry API URL (https://api.<system domain>); UAA and the RLP Gateway are discovered from it.
    #[arg(long, env = "CF_API")]
    pub cf_api: Option<String>,
    /// UAA base URL (https://uaa.<system domain>), when not discovered from --cf-api.
    #[arg(long, env = "UAA_URL")]
    pub(crate) uaa_url: Option<String>,
    /// UAA client (client_credentials grant) with the authority doppler.firehose or logs.admin.
    #[arg(long, env = "UAA_CLIENT_ID")]
    pub(crate) uaa_client_id: Option<String>,
    /// Secret of --uaa-client-id.
    #[arg(long, env = "UAA_CLIENT_SECRET", hide_env_values = true)]
    pub(crate) uaa_client_secret: Option<Secret>,
    /// Extra CA certificate(s) (PEM) trusted for the CF API, UAA and the gateway, besides the Mozilla roots.
    #[arg(long, env = "CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// Do not verify the TLS certificates of the CF API, UAA and the gateway (unsafe; testing only).
    #[arg(long, env = "SKIP_TLS_VERIFY")]
    pub(crate) skip_tls_verify: bool,
    /// Largest body read from Cloud Controller and UAA by the audit-events poller and enrichment; a larger answer is refused and counted (an audit-events page is asked for again in smaller pages).
    #[arg(long, env = "CF_MAX_RESPONSE_BYTES", default_value_t = crate::source::cf_api::DEFAULT_MAX_RESPONSE_BYTES)]
    pub(crate) cf_max_response_bytes: usize,
}

impl CfArgs {
    /// `--cf-api` as a URL, with problems added to `errors`.
    pub(crate) fn cf_api_url(&self, errors: &mut Vec<String>) -> Option<reqwest::Url> {
        parse_url(errors, "--cf-api (CF_API)", self.cf_api.as_deref())
    }

    /// `--uaa-url` as a URL, with problems added to `errors`.
    pub(crate) fn uaa_url(&self, errors: &mut Vec<String>) -> Option<reqwest::Url> {
        parse_url(errors, "--uaa-url (UAA_URL)", self.uaa_url.as_deref())
    }

    /// The UAA client for a UAA base URL, or a problem for each missing credential.
    pub(crate) fn uaa_config(
        &self,
        errors: &mut Vec<String>,
        uaa: &reqwest::Url,
    ) -> Option<UaaConfig> {
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

    /// How the client for UAA, CC and the gateway is made (no I/O: the
    /// `--ca-file` is read when it is built).
    pub(crate) fn platform_http(&self) -> PlatformHttp {
        PlatformHttp {
            ca_file: self.ca_file.clone(),
            skip_tls_verify: self.skip_tls_verify,
        }
    }
}

/// The settings of the HTTP client for UAA, Cloud Controller and the RLP
/// Gateway: `--ca-file` (a path, read at build) and `--skip-tls-verify`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformHttp {
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) skip_tls_verify: bool,
}

impl PlatformHttp {
    /// Reads `--ca-file` and makes the client; the error names the option.
    /// (`--skip-tls-verify` is warned about at start and in /health:
    /// `RunArgs::warnings`.)
    pub fn client(&self) -> Result<reqwest::Client, String> {
        let ca_pem = match &self.ca_file {
            None => None,
            Some(path) => Some(
                crate::tls::read_pem_file("--ca-file (CA_FILE)", path, "CERTIFICATE")
                    .map_err(|e| e.to_string())?,
            ),
        };
        http_client(ca_pem.as_deref(), self.skip_tls_verify)
            .map_err(|e| format!("--ca-file (CA_FILE): {e}"))
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
}

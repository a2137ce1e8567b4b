//! Cloud Controller v3 reads with a UAA token, shared by the audit-events
//! poller and enrichment.

use std::time::Duration;

use reqwest::{StatusCode, Url};

use super::cf_api::{BodyError, discover_with_limit, read_capped};
use super::uaa::{TokenProvider, UaaConfig, UaaError};
use crate::backoff::Backoff;
use crate::enrich::{Lookup, LookupError, names_of};

/// How long one Cloud Controller request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Cloud Controller is and how to call it.
#[derive(Clone, Debug)]
pub struct CloudController {
    /// The API's base URL; `/v3/...` paths go below it.
    pub base: Url,
    pub http: reqwest::Client,
    pub token: TokenProvider,
    /// The largest body read (`--cf-max-response-bytes`).
    pub max_body: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("cannot get a token for Cloud Controller: {0}")]
    Token(#[from] UaaError),
    #[error("cannot reach Cloud Controller at {url_shown}: {reason}", url_shown = crate::redact::url(.url))]
    Request { url: String, reason: String },
    #[error(
        "Cloud Controller answered HTTP {status} to GET {url_shown}{}",
        hint(*.status), url_shown = crate::redact::url(.url))]
    Status { url: String, status: u16 },
    #[error("Cloud Controller's answer to GET {url_shown} is not the JSON expected: {reason}", url_shown = crate::redact::url(.url))]
    Body { url: String, reason: String },
    #[error(
        "Cloud Controller's answer to GET {url} is larger than {limit} bytes (--cf-max-response-bytes); it was not read"
    )]
    TooLarge { url: String, limit: usize },
    #[error(
        "Cloud Controller linked to {link_origin}, not to the configured API {api_origin}; not followed (the token is sent only to the configured origin)"
    )]
    ForeignLink {
        api_origin: String,
        link_origin: String,
    },
}

fn hint(status: u16) -> &'static str {
    match status {
        401 => " (the token was refused)",
        403 => {
            " (the UAA client needs the scope cloud_controller.admin_read_only or cloud_controller.global_auditor)"
        }
        _ => "",
    }
}

impl CcError {
    /// A 404: the resource does not exist (for enrichment, a miss to remember).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, CcError::Status { status: 404, .. })
    }

    /// The answer was larger than the cap.
    pub fn is_too_large(&self) -> bool {
        matches!(self, CcError::TooLarge { .. })
    }
}

/// How to find Cloud Controller and UAA from the configuration.
#[derive(Clone, Debug)]
pub struct CcAccess {
    pub cf_api: Url,
    /// UAA's base URL when given, else discovered from the API root.
    pub uaa: Option<Url>,
    pub client_id: String,
    pub client_secret: crate::redact::Secret,
    pub http: reqwest::Client,
    /// The largest Cloud Controller or UAA body read (`--cf-max-response-bytes`).
    pub max_body: usize,
}

impl CloudController {
    /// Discovers Cloud Controller and UAA from the API root, retrying with
    /// backoff until it works or `shutdown` is cancelled.
    /// Each failed discovery adds one to `failures`.
    pub async fn connect(
        access: &CcAccess,
        shutdown: &tokio_util::sync::CancellationToken,
        failures: &std::sync::atomic::AtomicU64,
    ) -> Option<Self> {
        let mut backoff = Backoff::default();
        loop {
            match discover_with_limit(&access.http, &access.cf_api, access.max_body).await {
                Ok(endpoints) => {
                    let uaa = access.uaa.clone().unwrap_or(endpoints.uaa);
                    let token = TokenProvider::with_limit(
                        UaaConfig {
                            token_url: UaaConfig::token_url_of(&uaa),
                            client_id: access.client_id.clone(),
                            client_secret: access.client_secret.clone(),
                        },
                        access.http.clone(),
                        access.max_body,
                    );
                    return Some(Self {
                        base: endpoints.cloud_controller,
                        http: access.http.clone(),
                        token,
                        max_body: access.max_body,
                    });
                }
                Err(e) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, ?delay, "Cloud Foundry API discovery failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// `base` joined with a path and query such as `/v3/apps/<guid>?include=...`.
    pub fn url(&self, path_and_query: &str) -> Url {
        let base = self.base.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path_and_query}")).unwrap_or_else(|_| self.base.clone())
    }

    /// A link Cloud Controller sent (e.g. `pagination.next.href`) as a URL to
    /// follow with the token: only within the origin (scheme, host, port) of
    /// [`base`](Self::base).
    pub(crate) fn check_link(&self, href: &str) -> Result<Url, CcError> {
        let url = Url::parse(href).map_err(|e| CcError::Body {
            url: without_query(&self.base),
            reason: format!("a link is not a URL ({e})"),
        })?;
        if url.origin() != self.base.origin() {
            return Err(CcError::ForeignLink {
                api_origin: self.base.origin().ascii_serialization(),
                link_origin: url.origin().ascii_serialization(),
            });
        }
        Ok(url)
    }

    /// GETs a JSON document of at most [`max_body`](Self::max_body) bytes. A
    /// refused token is renewed and the request made once more.
    pub async fn get_json(&self, url: &Url) -> Result<serde_json::Value, CcError> {
        let mut renewed = false;
        loop {
            let auth = self.token.authorization().await?;
            let shown = without_query(url);
            let response = self
                .http
                .get(url.clone())
                .header(reqwest::header::AUTHORIZATION, &auth)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(REQUEST_TIMEOUT)
                .send()
                .await
                .map_err(|e| CcError::Request {
                    url: shown.clone(),
                    reason: crate::error_chain(&e.without_url()),
                })?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !renewed {
                self.token.invalidate(&auth);
                renewed = true;
                continue;
            }
            if !status.is_success() {
                return Err(CcError::Status {
                    url: shown,
                    status: status.as_u16(),
                });
            }
            let body = read_capped(response, self.max_body)
                .await
                .map_err(|e| match e {
                    BodyError::TooLarge { limit } => CcError::TooLarge {
                        url: shown.clone(),
                        limit,
                    },
                    BodyError::Read(reason) => CcError::Request {
                        url: shown.clone(),
                        reason,
                    },
                })?;
            return serde_json::from_slice(&body).map_err(|e| CcError::Body {
                url: shown,
                reason: e.to_string(),
            });
        }
    }
}

/// Enrichment's lookup: an app with its space and org from Cloud Controller
/// (an app CC does not know is `Ok(None)`).
pub fn app_lookup(cc: CloudController) -> Lookup {
    std::sync::Arc::new(move |guid: String| {
        let cc = cc.clone();
        Box::pin(async move {
            let url = cc.url(&format!("/v3/apps/{guid}?include=space.organization"));
            match cc.get_json(&url).await {
                Ok(v) => Ok(Some(names_of(&guid, &v))),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(LookupError(Box::new(e))),
            }
        })
    })
}

/// A URL for messages: the path only (queries can be long; paths name the resource).
fn without_query(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.to_string()
}

//! UAA client: OAuth2 client-credentials tokens for the RLP Gateway (and
//! Cloud Controller), renewed before they expire.
//!
//! The token is fetched with a form-encoded `POST <uaa>/oauth/token`
//! (`grant_type=client_credentials`, the client id and secret in the form, so
//! a secret with `&`, `=`, `+`, `%` or spaces arrives as it is). It is kept
//! until shortly before `expires_in` runs out (a fifth of its lifetime, at
//! most a minute, early), or until a resource server rejects it
//! ([`TokenProvider::invalidate`]). Concurrent callers share one fetch.
//!
//! Neither the secret nor a token ever appears in an error, a log line or a
//! `Debug` rendering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::redact::Secret;

/// How long one token request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Renew at most this long before a token expires.
pub(crate) const MAX_RENEW_MARGIN: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct UaaConfig {
    /// `<uaa>/oauth/token`.
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: Secret,
}

impl std::fmt::Debug for UaaConfig {
    // Written out for the URL, shown as `redact::parsed_url` does (a
    // derived `Debug` of a `Url` shows its password); the secret shows
    // itself masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UaaConfig")
            .field("token_url", &crate::redact::parsed_url(&self.token_url))
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .finish()
    }
}

impl UaaConfig {
    /// The token endpoint of a UAA base URL (`https://uaa.sys.example.com` →
    /// `https://uaa.sys.example.com/oauth/token`), keeping any path prefix.
    pub fn token_url_of(uaa: &reqwest::Url) -> reqwest::Url {
        let mut url = uaa.clone();
        let path = format!("{}/oauth/token", uaa.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_query(None);
        url
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UaaError {
    #[error("cannot reach UAA at {url_shown}: {reason}", url_shown = crate::redact::url(.url))]
    Request { url: String, reason: String },
    #[error(
        "UAA at {url_shown} refused the client credentials of {client_id:?}: HTTP {status} {error}{description}", url_shown = crate::redact::url(.url))]
    Rejected {
        url: String,
        client_id: String,
        status: u16,
        error: String,
        description: String,
    },
    #[error("UAA at {url_shown} answered HTTP 200 with an unusable token response: {reason}", url_shown = crate::redact::url(.url))]
    BadResponse { url: String, reason: String },
}

/// Hands out `Authorization` header values; cheap to clone (shared inside).
/// Its `Debug` shows no token: tokens are [`Secret`]s.
#[derive(Clone, Debug)]
pub struct TokenProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: Source,
    current: Mutex<Option<Token>>,
    /// Held while a token is fetched, so concurrent callers wait for that one.
    fetching: tokio::sync::Mutex<()>,
    renewals: AtomicU64,
}

#[derive(Debug)]
enum Source {
    Fixed,
    Uaa {
        cfg: UaaConfig,
        http: reqwest::Client,
        /// The largest token response read.
        max_body: usize,
    },
}

#[derive(Clone, Debug)]
struct Token {
    /// `bearer <token>`.
    header: Secret,
    /// When to fetch a new one; `None` never (fixed tokens, or no `expires_in`).
    renew_at: Option<Instant>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
}

#[derive(serde::Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenProvider {
    /// Tokens from UAA; a token response larger than
    /// [`DEFAULT_MAX_RESPONSE_BYTES`](super::cf_api::DEFAULT_MAX_RESPONSE_BYTES) is refused.
    pub fn new(cfg: UaaConfig, http: reqwest::Client) -> Self {
        Self::with_limit(cfg, http, super::cf_api::DEFAULT_MAX_RESPONSE_BYTES)
    }

    /// Tokens from UAA, reading at most `max_body` bytes of a response.
    pub fn with_limit(cfg: UaaConfig, http: reqwest::Client, max_body: usize) -> Self {
        Self::with(
            Source::Uaa {
                cfg,
                http,
                max_body,
            },
            None,
        )
    }

    /// A token that never expires (tests, pre-issued tokens). A leading
    /// `bearer ` (any case) is accepted and normalised.
    pub fn fixed(token: impl Into<String>) -> Self {
        let token = token.into();
        let bare = match token.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => token[7..].trim().to_string(),
            _ => token.trim().to_string(),
        };
        Self::with(
            Source::Fixed,
            Some(Token {
                header: format!("bearer {bare}").into(),
                renew_at: None,
            }),
        )
    }

    fn with(source: Source, current: Option<Token>) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                current: Mutex::new(current),
                fetching: tokio::sync::Mutex::new(()),
                renewals: AtomicU64::new(0),
            }),
        }
    }

    /// The `Authorization` header value, `bearer <token>` (lowercase, as the
    /// RLP Gateway expects); fetches or renews as needed.
    pub async fn authorization(&self) -> Result<String, UaaError> {
        if let Some(header) = self.valid() {
            return Ok(header);
        }
        let _fetching = self.inner.fetching.lock().await;
        // Another caller may have fetched while this one waited.
        if let Some(header) = self.valid() {
            return Ok(header);
        }
        let Source::Uaa {
            cfg,
            http,
            max_body,
        } = &self.inner.source
        else {
            // A fixed token is always valid; unreachable unless invalidated,
            // in which case it is all there is.
            return Ok(self.fixed_header());
        };
        let token = fetch(cfg, http, *max_body).await?;
        let header = token.header.expose().to_string();
        *self.inner.current.lock().expect("token lock") = Some(token);
        self.inner.renewals.fetch_add(1, Ordering::Relaxed);
        Ok(header)
    }

    /// A resource server rejected this header value (401, or gateway 404):
    /// the next [`authorization`](Self::authorization) fetches a new token,
    /// unless a newer one was fetched meanwhile. Fixed tokens stay.
    pub fn invalidate(&self, rejected: &str) {
        if matches!(self.inner.source, Source::Fixed) {
            return;
        }
        let mut current = self.inner.current.lock().expect("token lock");
        if current
            .as_ref()
            .is_some_and(|t| t.header.expose() == rejected)
        {
            *current = None;
        }
    }

    /// A token given at start, never renewed.
    pub(crate) fn is_fixed(&self) -> bool {
        matches!(self.inner.source, Source::Fixed)
    }

    /// Tokens fetched so far.
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }

    fn valid(&self) -> Option<String> {
        let current = self.inner.current.lock().expect("token lock");
        let token = current.as_ref()?;
        match token.renew_at {
            Some(at) if Instant::now() >= at => None,
            _ => Some(token.header.expose().to_string()),
        }
    }

    fn fixed_header(&self) -> String {
        self.inner
            .current
            .lock()
            .expect("token lock")
            .as_ref()
            .map(|t| t.header.expose().to_string())
            .unwrap_or_default()
    }
}

/// How early to renew a token that lives `lifetime`: a fifth of it, at most
/// [`MAX_RENEW_MARGIN`] (so a 12-hour token is renewed a minute early and a
/// 2-second one 0.4 s early).
pub(crate) fn renew_margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(MAX_RENEW_MARGIN)
}

async fn fetch(
    cfg: &UaaConfig,
    http: &reqwest::Client,
    max_body: usize,
) -> Result<Token, UaaError> {
    let url = cfg.token_url.as_str().to_string();
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("client_secret", cfg.client_secret.expose())
        .finish();
    let started = Instant::now();
    let response = http
        .post(cfg.token_url.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(REQUEST_TIMEOUT)
        .body(body)
        .send()
        .await
        .map_err(|e| UaaError::Request {
            url: url.clone(),
            // reqwest's errors name the URL and the cause, never the body.
            reason: crate::error_chain(&e.without_url()),
        })?;
    let status = response.status();
    let bytes = match super::cf_api::read_capped(response, max_body).await {
        Ok(bytes) => bytes,
        Err(super::cf_api::BodyError::Read(reason)) => {
            return Err(UaaError::Request { url, reason });
        }
        // An error answer too large to read is still a refusal.
        Err(too_large) if !status.is_success() => {
            return Err(UaaError::Rejected {
                url,
                client_id: cfg.client_id.clone(),
                status: status.as_u16(),
                error: String::new(),
                description: format!("({too_large})"),
            });
        }
        Err(too_large) => {
            return Err(UaaError::BadResponse {
                url,
                reason: too_large.to_string(),
            });
        }
    };
    if !status.is_success() {
        let err: ErrorResponse = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(UaaError::Rejected {
            url,
            client_id: cfg.client_id.clone(),
            status: status.as_u16(),
            error: short(&err.error),
            description: if err.error_description.is_empty() {
                String::new()
            } else {
                format!(": {}", short(&err.error_description))
            },
        });
    }
    // Parse errors from serde_json can quote the input; give only the shape.
    let bad = |reason: &str| UaaError::BadResponse {
        url: url.clone(),
        reason: reason.to_string(),
    };
    let parsed: TokenResponse =
        serde_json::from_slice(&bytes).map_err(|_| bad("the body is not a JSON token response"))?;
    let access_token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("it has no access_token"))?;
    if let Some(kind) = parsed.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(bad(&format!(
            "token_type is {:?}, not bearer",
            short(&kind)
        )));
    }
    let lifetime = match parsed.expires_in {
        None => None,
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    }
    .filter(|s| s.is_finite() && *s >= 0.0)
    .map(Duration::from_secs_f64);
    Ok(Token {
        header: format!("bearer {access_token}").into(),
        // Counted from when the request was sent: the token may be older than its arrival.
        renew_at: lifetime.map(|l| started + l - renew_margin(l)),
    })
}

/// A UAA error text, cut short (it is shown to operators, not stored).
fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_margin_is_a_fifth_up_to_a_minute() {
        assert_eq!(
            renew_margin(Duration::from_secs(2)),
            Duration::from_millis(400)
        );
        assert_eq!(
            renew_margin(Duration::from_secs(43_200)),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn token_url_keeps_a_path_prefix() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert_eq!(
            UaaConfig::token_url_of(&url("https://uaa.sys.example.com")).as_str(),
            "https://uaa.sys.example.com/oauth/token"
        );
        assert_eq!(
            UaaConfig::token_url_of(&url("https://login.example.com/uaa/")).as_str(),
            "https://login.example.com/uaa/oauth/token"
        );
    }

    #[tokio::test]
    async fn fixed_tokens_are_lowercase_bearer_and_survive_invalidation() {
        let p = TokenProvider::fixed("Bearer abc");
        assert_eq!(p.authorization().await.unwrap(), "bearer abc");
        p.invalidate("bearer abc");
        assert_eq!(p.authorization().await.unwrap(), "bearer abc");
        assert_eq!(p.renewals(), 0);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let cfg = UaaConfig {
            token_url: reqwest::Url::parse("https://uaa/oauth/token").unwrap(),
            client_id: "nozzle".into(),
            client_secret: "s3cret".into(),
        };
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let p = TokenProvider::fixed("t0ken-SECRET");
        let shown = format!("{p:?}");
        assert!(!shown.contains("t0ken"), "{shown}");
        assert!(shown.contains("renewals"), "{shown}");
    }
}

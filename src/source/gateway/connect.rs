//! Opening a stream: the request with a token, one retry with a fresh
//! token on 401/404, and the gateway's refusals read into [`GatewayError`]s.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{GatewayConfig, GatewayError, Target};

/// Opens the stream: a token, the request, and on 401/404 one retry with a
/// fresh token.
pub async fn connect(
    cfg: &GatewayConfig,
    target: &Target,
) -> Result<reqwest::Response, GatewayError> {
    let url = target.url.as_str();
    let tokens = &target.tokens;
    let mut retried = false;
    loop {
        let renewals = tokens.renewals();
        if target.refused.load(Ordering::Relaxed) && !retried {
            // Refused last time: ask for a token that carries today's scopes.
            tokens.invalidate(&tokens.authorization().await?);
        }
        let auth = tokens.authorization().await?;
        let fresh = tokens.renewals() > renewals;
        let request = cfg
            .http
            .get(target.url.clone())
            .header(reqwest::header::AUTHORIZATION, &auth)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .header(reqwest::header::CACHE_CONTROL, "no-cache")
            .send();
        let response = match tokio::time::timeout(cfg.idle_timeout, request).await {
            Err(_) => {
                return Err(GatewayError::Connect {
                    url: url.to_string(),
                    reason: format!(
                        "no response headers within {} s",
                        cfg.idle_timeout.as_secs()
                    ),
                });
            }
            Ok(Err(e)) => {
                return Err(GatewayError::Connect {
                    url: url.to_string(),
                    reason: crate::error_chain(&e.without_url()),
                });
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if status == 200 {
            target.refused.store(false, Ordering::Relaxed);
            return Ok(response);
        }
        let detail = error_detail(response, cfg.idle_timeout).await;
        match status {
            401 | 404 => {
                if !fresh && !retried && !tokens.is_fixed() {
                    // Possibly just expired or revoked: one more try with a new token.
                    tokens.invalidate(&auth);
                    retried = true;
                    continue;
                }
                target.refused.store(true, Ordering::Relaxed);
                return Err(GatewayError::Unauthorized {
                    url: url.to_string(),
                    status,
                    hint: if tokens.is_fixed() {
                        " (a fixed token cannot be renewed)"
                    } else {
                        " (or, without them, access to every --source-ids)"
                    },
                });
            }
            400 => {
                return Err(GatewayError::BadRequest {
                    url: url.to_string(),
                    detail,
                });
            }
            502..=504 => {
                return Err(GatewayError::Unavailable {
                    url: url.to_string(),
                    status,
                    detail,
                });
            }
            _ => {
                return Err(GatewayError::Status {
                    url: url.to_string(),
                    status,
                    detail,
                });
            }
        }
    }
}

/// `: <error>: <message>` from the gateway's JSON error body, cut short;
/// empty when the body is not one.
async fn error_detail(response: reqwest::Response, within: Duration) -> String {
    #[derive(serde::Deserialize)]
    struct JsonError {
        #[serde(default)]
        error: String,
        #[serde(default)]
        message: String,
    }
    let Ok(Ok(body)) = tokio::time::timeout(within, response.bytes()).await else {
        return String::new();
    };
    match serde_json::from_slice::<JsonError>(&body[..body.len().min(64 * 1024)]) {
        Ok(e) if !e.error.is_empty() || !e.message.is_empty() => {
            let text = format!(": {}: {}", e.error, e.message);
            text.chars().take(300).collect()
        }
        _ => String::new(),
    }
}

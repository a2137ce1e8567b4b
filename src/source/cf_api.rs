//! Cloud Foundry API discovery: `GET <cf_api>/` lists the platform's
//! endpoints under `links`, so an operator gives only the API URL and the
//! nozzle finds UAA and the RLP Gateway (`log_stream`) itself.

use std::time::Duration;

use reqwest::Url;

/// How long the discovery request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The default cap on a Cloud Controller or UAA body (`--cf-max-response-bytes`),
/// as for an RLP message: a 5000-event audit page is a few MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why a body was not read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// Larger than the cap (announced by `Content-Length` or found while reading).
    #[error("the answer is larger than {limit} bytes (--cf-max-response-bytes); it was not read")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Read(String),
}

/// Reads a response body of at most `limit` bytes. A `Content-Length` above
/// it is refused before reading; otherwise the body is read chunk by chunk
/// and reading stops as soon as it passes the cap (a chunked or lying
/// answer cannot make it hold more than `limit` plus one chunk).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(BodyError::Read(crate::error_chain(&e.without_url()))),
        }
    }
}

/// The endpoints a Cloud Foundry API root announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CfEndpoints {
    /// The API's base URL (`links.self`, else the URL asked), e.g.
    /// `https://api.sys.example.com`; `/v3/...` paths go below it.
    pub cloud_controller: Url,
    /// UAA's base URL (`links.uaa`, else `links.login`); the token endpoint
    /// is `<uaa>/oauth/token`.
    pub uaa: Url,
    /// The RLP Gateway's base URL (`links.log_stream`), e.g.
    /// `https://log-stream.sys.example.com`; absent on foundations without one.
    pub log_stream: Option<Url>,
}

#[derive(Debug, thiserror::Error)]
pub enum CfApiError {
    #[error("cannot reach the Cloud Foundry API at {url_shown}: {reason}", url_shown = crate::redact::url(.url))]
    Request { url: String, reason: String },
    #[error(
        "the Cloud Foundry API at {url_shown} answered HTTP {status} to GET / (is this the API URL, e.g. https://api.<system domain>?)", url_shown = crate::redact::url(.url))]
    Status { url: String, status: u16 },
    #[error("the Cloud Foundry API root at {url_shown} is not usable: {reason}", url_shown = crate::redact::url(.url))]
    BadRoot { url: String, reason: String },
}

#[derive(serde::Deserialize)]
struct Root {
    links: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Reads `GET <cf_api>/` and returns the endpoints it links to; a body
/// larger than [`DEFAULT_MAX_RESPONSE_BYTES`] is refused.
pub async fn discover(http: &reqwest::Client, cf_api: &Url) -> Result<CfEndpoints, CfApiError> {
    discover_with_limit(http, cf_api, DEFAULT_MAX_RESPONSE_BYTES).await
}

/// [`discover`] with a cap on the body of `max_body` bytes.
pub async fn discover_with_limit(
    http: &reqwest::Client,
    cf_api: &Url,
    max_body: usize,
) -> Result<CfEndpoints, CfApiError> {
    let url = cf_api.as_str().to_string();
    let request_error = |e: reqwest::Error| CfApiError::Request {
        url: url.clone(),
        reason: crate::error_chain(&e.without_url()),
    };
    let response = http
        .get(cf_api.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(CfApiError::Status {
            url,
            status: status.as_u16(),
        });
    }
    let body = read_capped(response, max_body).await.map_err(|e| match e {
        BodyError::TooLarge { .. } => CfApiError::BadRoot {
            url: url.clone(),
            reason: e.to_string(),
        },
        BodyError::Read(reason) => CfApiError::Request {
            url: url.clone(),
            reason,
        },
    })?;
    parse_root(cf_api, &body)
}

/// The endpoints in an API root document (the body of `GET /`).
pub(crate) fn parse_root(cf_api: &Url, body: &[u8]) -> Result<CfEndpoints, CfApiError> {
    let bad = |reason: String| CfApiError::BadRoot {
        url: cf_api.as_str().to_string(),
        reason,
    };
    let root: Root = serde_json::from_slice(body)
        .map_err(|e| bad(format!("the body is not JSON ({})", e.classify_text())))?;
    let links = root
        .links
        .ok_or_else(|| bad("it has no \"links\" object".into()))?;
    let href = |name: &str| -> Result<Option<Url>, CfApiError> {
        match links
            .get(name)
            .and_then(|l| l.get("href"))
            .and_then(|h| h.as_str())
        {
            None | Some("") => Ok(None),
            Some(h) => Url::parse(h)
                .map(Some)
                .map_err(|e| bad(format!("links.{name}.href {h:?} is not a URL: {e}"))),
        }
    };
    let uaa = match href("uaa")? {
        Some(u) => u,
        None => {
            href("login")?.ok_or_else(|| bad("it links to neither \"uaa\" nor \"login\"".into()))?
        }
    };
    Ok(CfEndpoints {
        cloud_controller: href("self")?.unwrap_or_else(|| cf_api.clone()),
        uaa,
        log_stream: href("log_stream")?,
    })
}

trait ClassifyText {
    fn classify_text(&self) -> String;
}

impl ClassifyText for serde_json::Error {
    /// The kind and place of a JSON error, without the input it quotes.
    fn classify_text(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> Url {
        Url::parse("https://api.sys.example.com").unwrap()
    }

    #[test]
    fn reads_self_uaa_and_log_stream() {
        let body = br#"{"links":{"self":{"href":"https://api.sys.example.com"},
            "cloud_controller_v3":{"href":"https://api.sys.example.com/v3","meta":{"version":"3.180.0"}},
            "login":{"href":"https://login.sys.example.com"},
            "uaa":{"href":"https://uaa.sys.example.com"},"credhub":null,
            "log_stream":{"href":"https://log-stream.sys.example.com"}}}"#;
        let e = parse_root(&api(), body).unwrap();
        assert_eq!(e.cloud_controller.as_str(), "https://api.sys.example.com/");
        assert_eq!(e.uaa.as_str(), "https://uaa.sys.example.com/");
        assert_eq!(
            e.log_stream.unwrap().as_str(),
            "https://log-stream.sys.example.com/"
        );
    }

    #[test]
    fn falls_back_to_login_and_tolerates_no_log_stream() {
        let body =
            br#"{"links":{"login":{"href":"https://login.sys.example.com"},"log_stream":null}}"#;
        let e = parse_root(&api(), body).unwrap();
        assert_eq!(e.uaa.as_str(), "https://login.sys.example.com/");
        assert_eq!(e.cloud_controller, api());
        assert_eq!(e.log_stream, None);
    }

    #[test]
    fn names_what_is_wrong() {
        let err = parse_root(&api(), b"<html>").unwrap_err().to_string();
        assert!(err.contains("not JSON"), "{err}");
        let err = parse_root(&api(), br#"{"links":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither \"uaa\" nor \"login\""), "{err}");
        let err = parse_root(&api(), br#"{"links":{"uaa":{"href":"::"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("links.uaa.href"), "{err}");
    }
}

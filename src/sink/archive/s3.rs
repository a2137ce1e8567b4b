//! The S3 client half of the archive: how a bucket (or any S3-compatible
//! store) is reached through `object_store`'s S3 client (SigV4, its own
//! short retries) over our rustls configuration, with the configured
//! server-side encryption. With Object Lock (`--s3-object-lock-mode`), the
//! trail's objects are written by our own signed PUT instead ([`locked`]).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use super::Archive;

mod locked;
use crate::redact::Secret;
use crate::sink::BuildError;
pub(crate) use locked::{LockCheck, object_lock_status};

/// Server-side encryption of log files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sse {
    /// SSE-S3 (`AES256`), the default.
    Aes256,
    /// SSE-KMS (`aws:kms`) with `--s3-kms-key-id` (or the bucket's default key).
    Kms,
    /// None: the bucket's default encryption, if any, applies.
    None,
}

/// Where and how to reach the bucket. `Debug` never shows the secret.
#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS without it.
    pub endpoint: Option<String>,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// The session token of temporary credentials (`x-amz-security-token`).
    pub session_token: Option<Secret>,
    pub sse: Sse,
    pub kms_key_id: Option<String>,
    /// Extra CA certificates (PEM, `--s3-ca`) trusted for the endpoint and
    /// the notification webhook, besides the Mozilla roots.
    pub ca_pem: Option<Vec<u8>>,
    /// S3 Object Lock retention on every object of the trail (logs, digests,
    /// public keys); `None` writes them as object_store does.
    pub object_lock: Option<ObjectLock>,
}

/// Object Lock retention mode (`x-amz-object-lock-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// A user with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// Nobody can delete the version or shorten its retention, root included.
    Compliance,
}

impl LockMode {
    /// The header's value.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// `--s3-object-lock-mode` and `--s3-object-lock-days`: each object written
/// is retained in `mode` until `days` days after its PUT (at most 36500, so
/// `u16`, which keeps `S3Config` within `Target`'s size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub days: u16,
}

/// Supplies our own reqwest client (rustls with the ring provider, as the
/// rest of the crate) to `object_store`, instead of its default TLS stack.
#[derive(Debug)]
struct Connector(reqwest::Client);

impl object_store::client::HttpConnector for Connector {
    fn connect(
        &self,
        _options: &ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        Ok(object_store::client::HttpClient::new(self.0.clone()))
    }
}

/// An HTTP client for S3 and webhooks: rustls, the Mozilla roots plus
/// `extra_ca_pem` (`--s3-ca`), timeouts, proxies from the environment
/// (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`), redirects only within the origin.
pub fn http_client(extra_ca_pem: Option<&[u8]>) -> Result<reqwest::Client, BuildError> {
    let tls = crate::http_client::rustls_config(extra_ca_pem)
        .map_err(|e| BuildError::S3Ca(e.to_string()))?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .redirect(crate::http_client::same_origin_redirects())
        .build()
        .map_err(|e| BuildError::S3Client(crate::error_chain(&e)))
}

fn store(cfg: &S3Config, client: &reqwest::Client, sse: Sse) -> Result<AmazonS3, BuildError> {
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(&cfg.bucket)
        .with_region(&cfg.region)
        .with_virtual_hosted_style_request(!cfg.path_style)
        .with_http_connector(Connector(client.clone()))
        // The sink's runner retries with its own backoff; object_store
        // retries a failed request only briefly, so an outage surfaces.
        .with_retry(RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        });
    if let Some(endpoint) = &cfg.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    if let Some(id) = &cfg.access_key_id {
        b = b.with_access_key_id(id);
    }
    if let Some(secret) = &cfg.secret_access_key {
        b = b.with_secret_access_key(secret.expose());
    }
    if let Some(token) = &cfg.session_token {
        b = b.with_token(token.expose());
    }
    b = match sse {
        Sse::Aes256 => b.with_config(sse_key(), "AES256"),
        Sse::Kms => match &cfg.kms_key_id {
            Some(id) => b.with_sse_kms_encryption(id),
            None => b.with_config(sse_key(), "aws:kms"),
        },
        Sse::None => b,
    };
    b.build()
        .map_err(|e| BuildError::S3Store(crate::error_chain(&e)))
}

/// The store objects are written through: object_store's client, or with
/// Object Lock our signed PUT in front of it.
fn writer(
    cfg: &S3Config,
    client: &reqwest::Client,
    sse: Sse,
) -> Result<Arc<dyn ObjectStore>, BuildError> {
    let s3 = store(cfg, client, sse)?;
    Ok(match cfg.object_lock {
        None => Arc::new(s3),
        Some(lock) => Arc::new(locked::LockedStore::new(s3, cfg, client, sse, lock)),
    })
}

fn sse_key() -> AmazonS3ConfigKey {
    "aws_server_side_encryption"
        .parse()
        .expect("object_store knows this key")
}

/// The bucket as an [`Archive`]: log files with the configured encryption,
/// digest files always SSE-S3 (as CloudTrail keeps them); with
/// `object_lock`, every object but the audit cursor carries its retention.
pub fn s3_archive(cfg: &S3Config, client: &reqwest::Client) -> Result<Archive, BuildError> {
    let logs = writer(cfg, client, cfg.sse)?;
    let digests = if cfg.sse == Sse::Aes256 {
        Arc::clone(&logs)
    } else {
        writer(cfg, client, Sse::Aes256)?
    };
    Ok(Archive {
        logs,
        digests,
        bucket: cfg.bucket.clone(),
        prefix: cfg.prefix.trim_matches('/').to_string(),
        display_root: format!("s3://{}/", cfg.bucket),
        local: false,
    })
}

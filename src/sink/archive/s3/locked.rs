//! S3 Object Lock (`--s3-object-lock-mode`, `--s3-object-lock-days`): the
//! trail's objects are written with `x-amz-object-lock-mode` and
//! `x-amz-object-lock-retain-until-date`.
//!
//! object_store 0.14 cannot send a header of our own on a PUT (its backends
//! ignore `PutOptions::extensions`; a header added after signing is an
//! unsigned `x-amz-*` header, which S3 refuses; the retain-until date differs
//! per object anyway). So [`LockedStore`] PUTs the trail's objects with a
//! request of its own, to the URL object_store would use, signed with
//! object_store's [`AwsAuthorizer`] and credentials (static keys, session
//! tokens, instance roles alike), with the SSE headers object_store would
//! send and the SHA-256 checksum S3 requires for a locked PUT. Everything
//! else (GET, LIST, the audit cursor's PUT) goes through object_store.
//!
//! Also here: `GET ?object-lock` on the bucket, which `config check` asks.

use std::ops::Range;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::aws::{AmazonS3, AwsAuthorizer};
use object_store::client::{HttpRequest, HttpRequestBody};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest as _, Sha256};

use super::{ObjectLock, S3Config, Sse};
use crate::sink::archive::join_prefix;

/// object_store's S3 client, with the PUTs of the trail's objects made here
/// with their Object Lock retention.
#[derive(Debug)]
pub(super) struct LockedStore {
    s3: AmazonS3,
    client: reqwest::Client,
    /// `https://bucket.s3.region.amazonaws.com`, `endpoint/bucket`, ...
    bucket_endpoint: String,
    region: String,
    /// The server-side encryption headers of this store's objects.
    sse: Vec<(&'static str, String)>,
    lock: ObjectLock,
    /// Keys under this folder (the audit cursor, rewritten in place) are
    /// state, not trail: written without retention.
    state_folder: String,
}

impl LockedStore {
    pub(super) fn new(
        s3: AmazonS3,
        cfg: &S3Config,
        client: &reqwest::Client,
        sse: Sse,
        lock: ObjectLock,
    ) -> Self {
        Self {
            s3,
            client: client.clone(),
            bucket_endpoint: bucket_endpoint(cfg),
            region: cfg.region.clone(),
            sse: sse_headers(sse, cfg.kms_key_id.as_deref()),
            lock,
            state_folder: join_prefix(&cfg.prefix, "CFLogs-State/"),
        }
    }

    /// Whether `key` gets retention: every object but the state folder's.
    fn locks(&self, key: &Path) -> bool {
        !key.as_ref().starts_with(&self.state_folder)
    }

    /// The headers of a locked PUT of `body` (hash `sha256`), before signing.
    fn put_headers(
        &self,
        attributes: &Attributes,
        sha256: &[u8; 32],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::new();
        let mut add = |name: &str, value: &str| -> Result<(), String> {
            let name = HeaderName::try_from(name).map_err(|e| format!("header {name}: {e}"))?;
            let value = HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?;
            headers.insert(name, value);
            Ok(())
        };
        for (k, v) in attributes {
            let name = match k {
                Attribute::CacheControl => "cache-control".to_string(),
                Attribute::ContentDisposition => "content-disposition".to_string(),
                Attribute::ContentEncoding => "content-encoding".to_string(),
                Attribute::ContentLanguage => "content-language".to_string(),
                Attribute::ContentType => "content-type".to_string(),
                Attribute::StorageClass => "x-amz-storage-class".to_string(),
                Attribute::Metadata(name) => format!("x-amz-meta-{name}"),
                _ => return Err(format!("attribute {k:?} is not supported with Object Lock")),
            };
            add(&name, v.as_ref())?;
        }
        for (name, value) in &self.sse {
            add(name, value)?;
        }
        add("x-amz-object-lock-mode", self.lock.mode.as_str())?;
        add(
            "x-amz-object-lock-retain-until-date",
            &retain_until(now, self.lock.days),
        )?;
        // S3 refuses a locked PUT without Content-MD5 or an SDK checksum.
        add("x-amz-sdk-checksum-algorithm", "SHA256")?;
        add(
            "x-amz-checksum-sha256",
            &base64::engine::general_purpose::STANDARD.encode(sha256),
        )?;
        Ok(headers)
    }

    /// PUTs `payload` to `location` with its retention.
    async fn put_locked(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if opts.mode != PutMode::Overwrite {
            return Err(refused(format!(
                "{:?} PUT of {location} with Object Lock",
                opts.mode
            )));
        }
        let body = Bytes::from(payload);
        let sha256: [u8; 32] = Sha256::digest(&body).into();
        let headers = self
            .put_headers(&opts.attributes, &sha256, chrono::Utc::now())
            .map_err(refused)?;
        let url = format!("{}/{}", self.bucket_endpoint, encode_key(location.as_ref()));
        let (status, headers, text) = send_signed(
            &self.s3,
            &self.client,
            &self.region,
            Method::PUT,
            &url,
            headers,
            body,
            sha256,
        )
        .await
        .map_err(failed)?;
        if !status.is_success() {
            return Err(failed(format!(
                "S3 refused the PUT with Object Lock: {}",
                s3_error(status, &text)
            )));
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Ok(PutResult {
            e_tag: header("etag"),
            version: header("x-amz-version-id"),
            extensions: object_store::Extensions::new(),
        })
    }
}

/// The bucket's base URL as object_store 0.14 builds it (`AmazonS3Builder::build`).
fn bucket_endpoint(cfg: &S3Config) -> String {
    let (bucket, region) = (&cfg.bucket, &cfg.region);
    match (&cfg.endpoint, cfg.path_style) {
        (Some(endpoint), false) => endpoint.clone(),
        (Some(endpoint), true) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
        (None, false) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
        (None, true) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
    }
}

/// A key in a URL path, as object_store encodes it: everything but
/// `A-Z a-z 0-9 - . _ ~ /` percent-encoded (S3's canonical URI is this path).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The SSE headers object_store sends for `sse`.
fn sse_headers(sse: Sse, kms_key_id: Option<&str>) -> Vec<(&'static str, String)> {
    const SSE: &str = "x-amz-server-side-encryption";
    match sse {
        Sse::Aes256 => vec![(SSE, "AES256".into())],
        Sse::Kms => {
            let mut h = vec![(SSE, "aws:kms".into())];
            if let Some(id) = kms_key_id {
                h.push(("x-amz-server-side-encryption-aws-kms-key-id", id.into()));
            }
            h
        }
        Sse::None => Vec::new(),
    }
}

/// `now` plus `days`, as S3 takes it: RFC 3339 in UTC, whole seconds.
fn retain_until(now: chrono::DateTime<chrono::Utc>, days: u16) -> String {
    (now + chrono::Duration::days(i64::from(days)))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Sends a request signed with the store's credentials (SigV4, payload hash
/// `sha256`); the status, headers and body text of the answer.
#[allow(clippy::too_many_arguments)]
async fn send_signed(
    s3: &AmazonS3,
    client: &reqwest::Client,
    region: &str,
    method: Method,
    url: &str,
    headers: HeaderMap,
    body: Bytes,
    sha256: [u8; 32],
) -> Result<(reqwest::StatusCode, HeaderMap, String), String> {
    let credential = s3
        .credentials()
        .get_credential()
        .await
        .map_err(|e| format!("no S3 credentials: {}", crate::error_chain(&e)))?;
    let mut request = HttpRequest::new(HttpRequestBody::from(body.clone()));
    *request.method_mut() = method.clone();
    *request.uri_mut() = url
        .parse()
        .map_err(|e| format!("bad URL {}: {e}", crate::redact::url(url)))?;
    *request.headers_mut() = headers;
    AwsAuthorizer::new(&credential, "s3", region)
        .try_authorize(&mut request, Some(&sha256))
        .map_err(|e| format!("cannot sign the request: {e}"))?;
    let response = client
        .request(method, url)
        .headers(request.headers().clone())
        .body(body)
        .send()
        .await
        .map_err(|e| crate::error_chain(&e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.map_err(|e| crate::error_chain(&e))?;
    Ok((status, headers, text))
}

/// `403 Forbidden, AccessDenied: Access Denied` from an S3 error answer.
fn s3_error(status: reqwest::StatusCode, body: &str) -> String {
    match (xml_text(body, "Code"), xml_text(body, "Message")) {
        (Some(code), Some(message)) => format!("{status}, {code}: {message}"),
        (Some(code), None) => format!("{status}, {code}"),
        _ => status.to_string(),
    }
}

/// The text of the first `<tag>` element of `xml`.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].trim())
}

fn failed(reason: String) -> object_store::Error {
    object_store::Error::Generic {
        store: "S3",
        source: reason.into(),
    }
}

fn refused(reason: String) -> object_store::Error {
    object_store::Error::NotSupported {
        source: reason.into(),
    }
}

/// What the bucket says about Object Lock (`GET ?object-lock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LockCheck {
    /// Object Lock is on; the bucket's default retention, if it has one
    /// (`GOVERNANCE 30 days`).
    Enabled { default_retention: Option<String> },
    /// No Object Lock configuration: a locked PUT is refused.
    NotEnabled,
}

/// Asks the bucket of `cfg` whether it has Object Lock. The error names the
/// HTTP status and S3 error code (never a credential).
pub(crate) async fn object_lock_status(
    cfg: &S3Config,
    client: &reqwest::Client,
) -> Result<LockCheck, String> {
    let s3 = super::store(cfg, client, Sse::None).map_err(|e| e.to_string())?;
    let url = format!("{}?object-lock", bucket_endpoint(cfg));
    let empty: [u8; 32] = Sha256::digest(b"").into();
    let (status, _, text) = send_signed(
        &s3,
        client,
        &cfg.region,
        Method::GET,
        &url,
        HeaderMap::new(),
        Bytes::new(),
        empty,
    )
    .await?;
    lock_answer(status, &text)
}

/// [`LockCheck`] from the answer to `GET ?object-lock`.
fn lock_answer(status: reqwest::StatusCode, body: &str) -> Result<LockCheck, String> {
    if status == reqwest::StatusCode::NOT_FOUND
        && xml_text(body, "Code") == Some("ObjectLockConfigurationNotFoundError")
    {
        return Ok(LockCheck::NotEnabled);
    }
    if !status.is_success() {
        return Err(s3_error(status, body));
    }
    if xml_text(body, "ObjectLockEnabled") != Some("Enabled") {
        return Ok(LockCheck::NotEnabled);
    }
    let period = xml_text(body, "Days")
        .map(|d| format!("{d} days"))
        .or_else(|| xml_text(body, "Years").map(|y| format!("{y} years")));
    let default_retention = xml_text(body, "Mode").map(|mode| match period {
        Some(p) => format!("{mode} {p}"),
        None => mode.to_string(),
    });
    Ok(LockCheck::Enabled { default_retention })
}

impl std::fmt::Display for LockedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} with Object Lock", self.s3)
    }
}

#[async_trait]
impl ObjectStore for LockedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if self.locks(location) {
            self.put_locked(location, payload, opts).await
        } else {
            self.s3.put_opts(location, payload, opts).await
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        if self.locks(location) {
            return Err(refused(format!(
                "multipart upload of {location} with Object Lock"
            )));
        }
        self.s3.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.s3.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.s3.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.s3.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.s3.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.s3.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.s3.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        if self.locks(to) {
            return Err(refused(format!("copy to {to} with Object Lock")));
        }
        self.s3.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        if self.locks(to) || self.locks(from) {
            return Err(refused(format!(
                "rename of {from} to {to} with Object Lock"
            )));
        }
        self.s3.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::archive::s3::LockMode;
    use object_store::signer::Signer;

    fn client() -> reqwest::Client {
        super::super::http_client(None).unwrap()
    }

    fn cfg(endpoint: Option<&str>, path_style: bool) -> S3Config {
        S3Config {
            bucket: "trail".into(),
            prefix: "audit".into(),
            region: "eu-west-1".into(),
            endpoint: endpoint.map(str::to_string),
            path_style,
            access_key_id: Some("AKIA".into()),
            secret_access_key: Some("secret".into()),
            session_token: None,
            sse: Sse::Aes256,
            kms_key_id: None,
            ca_pem: None,
            object_lock: Some(ObjectLock {
                mode: LockMode::Compliance,
                days: 30,
            }),
        }
    }

    /// Our PUT goes where object_store's own would: its presigned URL
    /// without the query, for every addressing style.
    #[tokio::test]
    async fn the_url_is_the_one_object_store_builds() {
        let key = "audit/CFLogs/cf/app_log/2026/12/03/cf app+log_20261203T0000Z_0_abc.json.gz";
        for (endpoint, path_style) in [
            (None, false),
            (None, true),
            (Some("http://127.0.0.1:9000"), true),
            (Some("http://127.0.0.1:9000/"), true),
            (Some("https://trail.s3.example.com"), false),
        ] {
            let cfg = cfg(endpoint, path_style);
            let client = client();
            let s3 = super::super::store(&cfg, &client, Sse::Aes256).unwrap();
            let theirs = s3
                .signed_url(
                    Method::PUT,
                    &Path::from(key),
                    std::time::Duration::from_secs(60),
                )
                .await
                .unwrap();
            let ours = format!(
                "{}/{}",
                bucket_endpoint(&cfg),
                encode_key(Path::from(key).as_ref())
            );
            let theirs = theirs.as_str().split_once('?').unwrap().0;
            assert_eq!(ours, theirs, "{endpoint:?} path_style={path_style}");
        }
    }

    #[test]
    fn a_locked_put_carries_mode_date_checksum_and_encryption() {
        let cfg = S3Config {
            sse: Sse::Kms,
            kms_key_id: Some("k1".into()),
            ..cfg(None, false)
        };
        let store = LockedStore::new(
            super::super::store(&cfg, &client(), Sse::Kms).unwrap(),
            &cfg,
            &client(),
            Sse::Kms,
            cfg.object_lock.unwrap(),
        );
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentEncoding, "gzip".into());
        attributes.insert(Attribute::Metadata("signature".into()), "ab12".into());
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-03T00:15:30.250Z")
            .unwrap()
            .to_utc();
        let sha: [u8; 32] = Sha256::digest(b"body").into();
        let headers = store.put_headers(&attributes, &sha, now).unwrap();
        let mut got: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        got.sort();
        let want = [
            ("content-encoding", "gzip"),
            (
                "x-amz-checksum-sha256",
                "Iw2DWNyOiJC0xY3utikS7i8gNXrpKlzIYbmOaP4xrLU=",
            ),
            ("x-amz-meta-signature", "ab12"),
            ("x-amz-object-lock-mode", "COMPLIANCE"),
            (
                "x-amz-object-lock-retain-until-date",
                "2027-01-02T00:15:30Z",
            ),
            ("x-amz-sdk-checksum-algorithm", "SHA256"),
            ("x-amz-server-side-encryption", "aws:kms"),
            ("x-amz-server-side-encryption-aws-kms-key-id", "k1"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(got, want);
    }

    #[test]
    fn the_audit_cursor_is_state_and_keeps_no_retention() {
        let cfg = cfg(None, false);
        let client = client();
        let archive = super::super::s3_archive(&cfg, &client).unwrap();
        let store = LockedStore::new(
            super::super::store(&cfg, &client, Sse::Aes256).unwrap(),
            &cfg,
            &client,
            Sse::Aes256,
            cfg.object_lock.unwrap(),
        );
        let cursor = archive.cursor_key("cf", "audit-events");
        assert!(!store.locks(&Path::from(cursor.as_str())), "{cursor}");
        for key in [
            "audit/CFLogs/cf/app_log/2026/12/03/x.json.gz",
            "audit/CFLogs-Digest/cf/2026/12/03/d.json.gz",
            "audit/CFLogs-Digest/cf/public-keys/ab.pem",
        ] {
            assert!(store.locks(&Path::from(key)), "{key}");
        }
    }

    #[test]
    fn the_buckets_answer_says_whether_it_has_object_lock() {
        use reqwest::StatusCode;
        let on = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled>\
                  <Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>7</Days></DefaultRetention></Rule>\
                  </ObjectLockConfiguration>";
        assert_eq!(
            lock_answer(StatusCode::OK, on),
            Ok(LockCheck::Enabled {
                default_retention: Some("GOVERNANCE 7 days".into())
            })
        );
        let bare = "<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";
        assert_eq!(
            lock_answer(StatusCode::OK, bare),
            Ok(LockCheck::Enabled {
                default_retention: None
            })
        );
        let none = "<Error><Code>ObjectLockConfigurationNotFoundError</Code>\
                    <Message>Object Lock configuration does not exist for this bucket</Message></Error>";
        assert_eq!(
            lock_answer(StatusCode::NOT_FOUND, none),
            Ok(LockCheck::NotEnabled)
        );
        let denied = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        assert_eq!(
            lock_answer(StatusCode::FORBIDDEN, denied),
            Err("403 Forbidden, AccessDenied: Access Denied".into())
        );
        assert_eq!(
            lock_answer(
                StatusCode::NOT_FOUND,
                "<Error><Code>NoSuchBucket</Code></Error>"
            ),
            Err("404 Not Found, NoSuchBucket".into())
        );
    }
}

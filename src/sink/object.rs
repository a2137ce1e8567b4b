//! The object writer shared by the `file` and `s3` sinks: how a CloudTrail-style
//! log file is encoded ([`RecordsFile`]), what it is called ([`log_file_key`]),
//! and where it is stored ([`Archive`]: an S3 bucket, or a local folder through
//! the same `object_store` interface).
//!
//! A log file is gzip of `{"Records":[...]}`. While it is written, the
//! SHA-256 of the *uncompressed* bytes and the oldest and newest event times
//! are kept, because the digest chain lists each file with them.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use object_store::path::Path as ObjectPath;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest as _, Sha256};

use crate::record::{EncodeContext, Kind, Record};

/// A log file being written: gzip of `{"Records":[...]}` into `W`.
pub struct RecordsFile<W: Write> {
    gz: GzEncoder<W>,
    /// Encoded records not yet hashed and compressed: both are much cheaper
    /// per call on 64 KiB than per record.
    pending: Vec<u8>,
    hash: Sha256,
    records: u64,
    uncompressed: u64,
    oldest_ns: i64,
    newest_ns: i64,
}

/// Bytes of encoded records gathered before hashing and compressing them.
const PENDING: usize = 64 * 1024;

/// What a completed log file holds, for the digest and the accounting.
#[derive(Clone, Debug)]
pub struct Completed {
    pub records: u64,
    pub uncompressed_bytes: u64,
    /// Hex SHA-256 of the uncompressed content.
    pub sha256: String,
    /// Event times as digests write them; `None` for an empty file.
    pub oldest_event_time: Option<String>,
    pub newest_event_time: Option<String>,
}

impl<W: Write> RecordsFile<W> {
    pub fn new(out: W, gzip_level: u32) -> std::io::Result<Self> {
        let mut file = Self {
            gz: GzEncoder::new(out, Compression::new(gzip_level)),
            pending: Vec::with_capacity(PENDING + 4096),
            hash: Sha256::new(),
            records: 0,
            uncompressed: 0,
            oldest_ns: i64::MAX,
            newest_ns: i64::MIN,
        };
        file.put(b"{\"Records\":[")?;
        Ok(file)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.uncompressed += bytes.len() as u64;
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= PENDING {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        self.hash.update(&self.pending);
        let result = self.gz.write_all(&self.pending);
        self.pending.clear();
        result
    }

    /// Appends one record. (`_buf` is kept for callers that reuse one scratch
    /// buffer across sinks; records are encoded straight into the file's own.)
    pub fn append(
        &mut self,
        record: &Record,
        ctx: &EncodeContext,
        _buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let before = self.pending.len();
        if self.records > 0 {
            self.pending.push(b',');
        }
        record.write_json(ctx, &mut self.pending);
        self.uncompressed += (self.pending.len() - before) as u64;
        if self.pending.len() >= PENDING {
            self.drain()?;
        }
        self.records += 1;
        let t = record.envelope.timestamp();
        self.oldest_ns = self.oldest_ns.min(t);
        self.newest_ns = self.newest_ns.max(t);
        Ok(())
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    /// Uncompressed bytes so far (what `--roll-bytes` limits).
    pub fn uncompressed_bytes(&self) -> u64 {
        self.uncompressed
    }

    /// Closes the JSON and the gzip stream; returns the writer and the summary.
    pub fn finish(mut self) -> std::io::Result<(W, Completed)> {
        self.put(b"]}")?;
        self.drain()?;
        let out = self.gz.finish()?;
        let time = |ns: i64| {
            (self.records > 0)
                .then(|| crate::integrity::digest_time(chrono::DateTime::from_timestamp_nanos(ns)))
        };
        let completed = Completed {
            records: self.records,
            uncompressed_bytes: self.uncompressed,
            sha256: hex::encode(self.hash.finalize_reset()),
            oldest_event_time: time(self.oldest_ns),
            newest_event_time: time(self.newest_ns),
        };
        Ok((out, completed))
    }
}

/// 16 random characters, as CloudTrail's file names carry.
pub fn unique_suffix() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

/// `prefix/rest`, or `rest` without a prefix.
pub fn join_prefix(prefix: &str, rest: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// DESIGN.md §5: `<prefix>/CFLogs/<foundation>/<kind>/<YYYY>/<MM>/<DD>/<foundation>_<kind>_<YYYYMMDDTHHmmZ>_<instance>_<unique>.json.gz`,
/// the time being the delivery time.
pub fn log_file_key(
    prefix: &str,
    foundation: &str,
    kind: Kind,
    delivered: chrono::DateTime<chrono::Utc>,
    instance: u32,
) -> String {
    join_prefix(
        prefix,
        &format!(
            "CFLogs/{foundation}/{kind}/{}/{foundation}_{kind}_{}_{instance}_{}.json.gz",
            delivered.format("%Y/%m/%d"),
            delivered.format("%Y%m%dT%H%MZ"),
            unique_suffix()
        ),
    )
}

/// Where an archive's objects go, and how each object must be written.
#[derive(Clone, Debug)]
pub struct Archive {
    /// Log files (with the configured server-side encryption).
    pub logs: Arc<dyn ObjectStore>,
    /// Digest files: CloudTrail keeps them SSE-S3 even when logs use SSE-KMS.
    pub digests: Arc<dyn ObjectStore>,
    /// The bucket name, or `local` for a local folder.
    pub bucket: String,
    pub prefix: String,
    /// How object names are shown: `s3://bucket/` or the folder with a slash.
    pub display_root: String,
    /// Local folders cannot keep object metadata: signatures go to `.sig` files.
    pub local: bool,
}

/// What an archive operation failed at; retryable unless the object is
/// simply absent.
#[derive(Debug, thiserror::Error)]
#[error("{op} {location}: {reason}")]
pub struct ArchiveError {
    pub op: &'static str,
    pub location: String,
    pub reason: String,
    pub not_found: bool,
}

/// An object read back, with its user metadata (`x-amz-meta-*`).
pub struct Fetched {
    pub body: Bytes,
    pub metadata: Vec<(String, String)>,
}

impl Fetched {
    pub fn meta(&self, name: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Archive {
    /// A local folder as an archive; object keys become relative paths.
    pub fn local(dir: &std::path::Path, prefix: &str) -> Result<Self, ArchiveError> {
        std::fs::create_dir_all(dir).map_err(|e| ArchiveError {
            op: "create",
            location: dir.display().to_string(),
            reason: e.to_string(),
            not_found: false,
        })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            ArchiveError {
                op: "open",
                location: dir.display().to_string(),
                reason: crate::error_chain(&e),
                not_found: false,
            }
        })?;
        let store: Arc<dyn ObjectStore> = Arc::new(store);
        Ok(Self {
            logs: Arc::clone(&store),
            digests: store,
            bucket: "local".into(),
            prefix: prefix.trim_matches('/').to_string(),
            display_root: format!("{}/", dir.display()),
            local: true,
        })
    }

    pub fn location(&self, key: &str) -> String {
        format!("{}{key}", self.display_root)
    }

    fn error(&self, op: &'static str, key: &str, e: object_store::Error) -> ArchiveError {
        ArchiveError {
            op,
            location: self.location(key),
            not_found: matches!(e, object_store::Error::NotFound { .. }),
            reason: describe(&e),
        }
    }

    /// Stores a gzip JSON object (a log or digest file) with `metadata` as
    /// `x-amz-meta-*` (ignored by a local folder).
    pub async fn put_json_gz(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        body: Bytes,
        metadata: &[(&'static str, String)],
    ) -> Result<(), ArchiveError> {
        let mut opts = PutOptions::default();
        if !self.local {
            let mut attributes = Attributes::new();
            attributes.insert(Attribute::ContentType, "application/json".into());
            attributes.insert(Attribute::ContentEncoding, "gzip".into());
            for (k, v) in metadata {
                attributes.insert(Attribute::Metadata((*k).into()), v.clone().into());
            }
            opts.attributes = attributes;
        }
        store
            .put_opts(&ObjectPath::from(key), PutPayload::from_bytes(body), opts)
            .await
            .map(|_| ())
            .map_err(|e| self.error("PUT", key, e))
    }

    /// Stores a small object as it is (cursors, signature sidecars).
    pub async fn put_plain(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
        body: Bytes,
    ) -> Result<(), ArchiveError> {
        store
            .put(&ObjectPath::from(key), PutPayload::from_bytes(body))
            .await
            .map(|_| ())
            .map_err(|e| self.error("PUT", key, e))
    }

    pub async fn get(
        &self,
        store: &Arc<dyn ObjectStore>,
        key: &str,
    ) -> Result<Fetched, ArchiveError> {
        let got = store
            .get(&ObjectPath::from(key))
            .await
            .map_err(|e| self.error("GET", key, e))?;
        let metadata = got
            .attributes
            .iter()
            .filter_map(|(k, v)| match k {
                Attribute::Metadata(name) => Some((name.to_string(), v.to_string())),
                _ => None,
            })
            .collect();
        let body = got.bytes().await.map_err(|e| self.error("GET", key, e))?;
        Ok(Fetched { body, metadata })
    }

    /// Every key under `under` (a folder below the prefix), sorted.
    pub async fn list(
        &self,
        store: &Arc<dyn ObjectStore>,
        under: &str,
    ) -> Result<Vec<String>, ArchiveError> {
        use futures_util::StreamExt;
        let folder = join_prefix(&self.prefix, under);
        let mut stream = store.list(Some(&ObjectPath::from(folder.as_str())));
        let mut keys = Vec::new();
        while let Some(meta) = stream.next().await {
            match meta {
                Ok(meta) => keys.push(meta.location.to_string()),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.error("LIST", &folder, e)),
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Where the audit-events cursor named `name` is kept:
    /// `<prefix>/CFLogs-State/<foundation>/<name>`.
    pub fn cursor_key(&self, foundation: &str, name: &str) -> String {
        join_prefix(&self.prefix, &format!("CFLogs-State/{foundation}/{name}"))
    }

    /// Stores a cursor (bytes as given). The caller writes it only after the
    /// records up to it are delivered.
    pub async fn put_cursor(
        &self,
        foundation: &str,
        name: &str,
        value: Bytes,
    ) -> Result<(), ArchiveError> {
        let key = self.cursor_key(foundation, name);
        self.put_plain(&self.digests, &key, value).await
    }

    /// Reads a cursor back; `None` when none was stored yet.
    pub async fn get_cursor(
        &self,
        foundation: &str,
        name: &str,
    ) -> Result<Option<Bytes>, ArchiveError> {
        let key = self.cursor_key(foundation, name);
        match self.get(&self.digests, &key).await {
            Ok(f) => Ok(Some(f.body)),
            Err(e) if e.not_found => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// An object_store error in words an operator can act on: the HTTP status
/// and the S3 error code when there is one (never credentials).
pub fn describe(e: &object_store::Error) -> String {
    crate::error_chain(e)
}

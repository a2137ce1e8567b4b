//! The object writer shared by the `file` and `s3` sinks: how a CloudTrail-style
//! log file is encoded ([`RecordsFile`]), what it is called ([`log_file_key`]),
//! and where it is stored ([`Archive`]: an S3 bucket, or a local folder through
//! the same `object_store` interface).
//!
//! A log file is gzip of `{"Records":[...]}`. While it is written, the
//! SHA-256 of the *uncompressed* bytes and the oldest and newest event times
//! are kept, because the digest chain lists each file with them.
//!
//! Beside it: the sink that writes and uploads the files ([`ObjectSink`],
//! `sink.rs`), the S3 client half ([`s3`]), the signed digest chain
//! ([`digest`]) and the upload notifications ([`notify`]).

pub mod digest;
pub mod notify;
pub mod s3;
mod sink;

pub(crate) use sink::start_object_sinks;
pub use sink::{ObjectSink, ObjectSinkConfig, RollConfig, Target};

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
///
/// Records are encoded on the caller's thread into 64 KiB buffers; hashing
/// and compressing them runs on a thread of the file's own, so one sink's
/// JSON encoding and its gzip + SHA-256 (about half of its CPU each) use two
/// cores instead of one. At most [`IN_FLIGHT`] buffers wait for that thread:
/// when it falls behind, `append` waits, as it did when it compressed inline.
/// A write error of the thread is returned by the next `append` or by `finish`.
pub(crate) struct RecordsFile<W: Write + Send + 'static> {
    /// Encoded records not yet handed to the compressing thread (sending
    /// 64 KiB at a time: hashing and compressing are much cheaper per call
    /// on 64 KiB than per record).
    pending: Vec<u8>,
    to_worker: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Buffers the thread is done with, for reuse.
    from_worker: std::sync::mpsc::Receiver<Vec<u8>>,
    worker: Option<Worker<W>>,
    records: u64,
    uncompressed: u64,
    oldest_ns: i64,
    newest_ns: i64,
}

/// Where a file's buffers are hashed and compressed.
enum Worker<W: Write> {
    Thread(std::thread::JoinHandle<std::io::Result<(W, [u8; 32])>>),
    /// No thread could be started: compressed by the caller.
    Inline(Box<(GzEncoder<W>, Sha256)>),
}

/// Bytes of encoded records gathered before hashing and compressing them.
const PENDING: usize = 64 * 1024;

/// Buffers of [`PENDING`] bytes queued for the compressing thread.
const IN_FLIGHT: usize = 2;

/// What a completed log file holds, for the digest and the accounting.
#[derive(Clone, Debug)]
pub struct Completed {
    pub records: u64,
    pub uncompressed_bytes: u64,
    /// Hex SHA-256 of the uncompressed content.
    pub(crate) sha256: String,
    /// Event times as digests write them; `None` for an empty file.
    pub oldest_event_time: Option<String>,
    pub newest_event_time: Option<String>,
}

/// The compressing thread: hashes and compresses every buffer it is sent,
/// returns each for reuse, and at the end the writer and the hash.
fn compress<W: Write>(
    out: W,
    gzip_level: u32,
    buffers: std::sync::mpsc::Receiver<Vec<u8>>,
    done: std::sync::mpsc::SyncSender<Vec<u8>>,
) -> std::io::Result<(W, [u8; 32])> {
    let mut gz = GzEncoder::new(out, Compression::new(gzip_level));
    let mut hash = Sha256::new();
    for mut buf in buffers {
        hash.update(&buf);
        gz.write_all(&buf)?;
        buf.clear();
        // The file may be finished already (nobody to reuse it): fine.
        let _ = done.try_send(buf);
    }
    Ok((gz.finish()?, hash.finalize().into()))
}

impl<W: Write + Send + 'static> RecordsFile<W> {
    pub fn new(out: W, gzip_level: u32) -> Self {
        let (to_worker, buffers) = std::sync::mpsc::sync_channel(IN_FLIGHT);
        let (done, from_worker) = std::sync::mpsc::sync_channel(IN_FLIGHT + 1);
        // The writer goes to the thread once it runs (a failed spawn would
        // drop whatever it was given).
        let (give, take) = std::sync::mpsc::sync_channel::<W>(1);
        let spawned = std::thread::Builder::new()
            .name("gzip".into())
            .spawn(move || {
                let out = take
                    .recv()
                    .map_err(|_| std::io::Error::other("the file was dropped before it started"))?;
                compress(out, gzip_level, buffers, done)
            });
        let worker = match spawned {
            Ok(handle) => {
                give.send(out).expect("the thread waits for the writer");
                Worker::Thread(handle)
            }
            Err(e) => {
                // The file is still written, compressed on the caller's thread.
                tracing::warn!(error = %e, "cannot start a thread to compress a file; compressing it on the sink's own");
                Worker::Inline(Box::new((
                    GzEncoder::new(out, Compression::new(gzip_level)),
                    Sha256::new(),
                )))
            }
        };
        const HEAD: &[u8] = b"{\"Records\":[";
        let mut pending = Vec::with_capacity(PENDING + 4096);
        pending.extend_from_slice(HEAD);
        Self {
            pending,
            to_worker: Some(to_worker),
            from_worker,
            worker: Some(worker),
            records: 0,
            uncompressed: HEAD.len() as u64,
            oldest_ns: i64::MAX,
            newest_ns: i64::MIN,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.uncompressed += bytes.len() as u64;
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= PENDING {
            self.drain()?;
        }
        Ok(())
    }

    /// Hands the pending bytes to the compressing thread.
    fn drain(&mut self) -> std::io::Result<()> {
        if let Some(Worker::Inline(inline)) = &mut self.worker {
            let (gz, hash) = &mut **inline;
            hash.update(&self.pending);
            let written = gz.write_all(&self.pending);
            self.pending.clear();
            return written;
        }
        let spare = self
            .from_worker
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PENDING + 4096));
        let full = std::mem::replace(&mut self.pending, spare);
        let sent = self.to_worker.as_ref().map(|tx| tx.send(full));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread stopped: it failed a write; its error says which.
            _ => Err(self
                .join()
                .err()
                .unwrap_or_else(|| std::io::Error::other("the compressing thread stopped"))),
        }
    }

    /// Waits for the compressing thread to end (the sender dropped first).
    fn join(&mut self) -> std::io::Result<(W, [u8; 32])> {
        self.to_worker = None;
        match self.worker.take() {
            Some(Worker::Thread(handle)) => handle
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the compressing thread panicked"))),
            Some(Worker::Inline(inline)) => {
                let (gz, hash) = *inline;
                Ok((gz.finish()?, hash.finalize().into()))
            }
            None => Err(std::io::Error::other(
                "the compressing thread already ended",
            )),
        }
    }

    /// Appends one record, encoded straight into the file's own buffer.
    pub fn append(&mut self, record: &Record, ctx: &EncodeContext) -> std::io::Result<()> {
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
    pub(crate) fn uncompressed_bytes(&self) -> u64 {
        self.uncompressed
    }

    /// Closes the JSON and the gzip stream; returns the writer and the summary.
    pub fn finish(mut self) -> std::io::Result<(W, Completed)> {
        self.put(b"]}")?;
        self.drain()?;
        let (out, sha256) = self.join()?;
        let time = |ns: i64| {
            (self.records > 0)
                .then(|| crate::integrity::digest_time(chrono::DateTime::from_timestamp_nanos(ns)))
        };
        let completed = Completed {
            records: self.records,
            uncompressed_bytes: self.uncompressed,
            sha256: hex::encode(sha256),
            oldest_event_time: time(self.oldest_ns),
            newest_event_time: time(self.newest_ns),
        };
        Ok((out, completed))
    }
}

/// 16 random characters, as CloudTrail's file names carry.
pub(crate) fn unique_suffix() -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
}

/// `prefix/rest`, or `rest` without a prefix.
pub(crate) fn join_prefix(prefix: &str, rest: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// DESIGN.md §5: `<prefix>/CFLogs/<foundation>/<kind>/<YYYY>/<MM>/<DD>/<foundation>_<kind>_<YYYYMMDDTHHmmZ>_<instance>_<unique>.json.gz`,
/// the time being the delivery time.
pub(crate) fn log_file_key(
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
    pub(crate) display_root: String,
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
    pub(crate) fn meta(&self, name: &str) -> Option<&str> {
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
    pub(crate) async fn put_plain(
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
    pub(crate) fn cursor_key(&self, foundation: &str, name: &str) -> String {
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
pub(crate) fn describe(e: &object_store::Error) -> String {
    crate::error_chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::proto::{Envelope, Log, envelope};
    use std::io::Read;

    fn record(i: usize) -> Record {
        classify(Envelope {
            timestamp: i as i64,
            message: Some(envelope::Message::Log(Log {
                payload: format!("line {i} {}", "x".repeat(200)).into(),
                r#type: 0,
            })),
            ..Default::default()
        })
    }

    /// Takes `room` bytes, then refuses every write.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_compressed_file_holds_every_record_and_its_hash_is_of_the_plain_bytes() {
        let ctx = EncodeContext::new("t");
        let mut file = RecordsFile::new(Vec::new(), 1);
        let mut expected = b"{\"Records\":[".to_vec();
        for i in 0..5000 {
            if i > 0 {
                expected.push(b',');
            }
            record(i).write_json(&ctx, &mut expected);
            file.append(&record(i), &ctx).unwrap();
        }
        expected.extend_from_slice(b"]}");
        let (gz, done) = file.finish().unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, expected);
        assert_eq!(done.records, 5000);
        assert_eq!(done.uncompressed_bytes, expected.len() as u64);
        assert_eq!(done.sha256, hex::encode(Sha256::digest(&expected)));
    }

    #[test]
    fn a_write_the_compressing_thread_fails_is_returned_to_the_writer() {
        let ctx = EncodeContext::new("t");
        let mut file = RecordsFile::new(Full { room: 100 }, 0);
        // Level 0 stores: 10,000 records of ~300 bytes are 3 MB to write.
        let failed = (0..10_000).find_map(|i| file.append(&record(i), &ctx).err());
        let error = match failed {
            Some(e) => e,
            None => file.finish().err().expect("finishing fails"),
        };
        assert_eq!(error.to_string(), "disk full");
    }
}

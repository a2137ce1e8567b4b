//! The digest chain writer: one task per archive (S3 bucket or local folder)
//! and instance. The object sinks send it each log file they delivered; every
//! `--digest-interval` (and once more at shutdown) it writes a signed digest
//! listing them, chained to the previous digest. Empty intervals still get a
//! digest, so a missing hour is visible as a gap.
//!
//! Digest keys (the time is the digest's end time):
//! `<prefix>/CFLogs-Digest/<foundation>/<YYYY>/<MM>/<DD>/<foundation>_CFLogs-Digest_<instance>_<YYYYMMDDTHHMMSSZ>.json.gz`.
//! Two digests of one instance never share a second (the writer waits for the
//! next one), so keys sort in chain order and never overwrite.
//!
//! At start the writer publishes its public key beside the digests, named by
//! its fingerprint (`<prefix>/CFLogs-Digest/<foundation>/public-keys/<fingerprint>.pem`,
//! the fingerprint being what each digest's `digestPublicKeyFingerprint`
//! says), so an auditor can fetch it and check it against the fingerprint
//! the operator gave them. A run that continues a chain declares in its first
//! digest how long it was not writing (`declaredGap`); the digest it writes
//! as it stops says so (`finalDigest`).

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::notify::Notifier;
use super::{Archive, join_prefix};
use crate::backoff::Backoff;
use crate::integrity::{
    DeclaredGap, DigestFile, LogFileEntry, META_SIGNATURE, META_SIGNATURE_ALGORITHM,
    SignatureSidecar, SigningKey, digest_time, sha256_hex, string_to_sign,
};
use crate::sink::{Output, SinkReport, SinkStats};

/// Digest chain settings from the command line (`--signing-key`, `--digest-interval`).
#[derive(Clone, Debug)]
pub struct DigestSettings {
    pub key: Arc<SigningKey>,
    pub interval: Duration,
}

#[derive(Clone, Debug)]
pub(crate) struct DigestConfig {
    pub key: Arc<SigningKey>,
    pub interval: Duration,
    pub foundation: String,
    pub instance_index: u32,
}

/// The link a new digest makes to the one before it.
#[derive(Clone, Debug)]
pub(crate) struct PreviousDigest {
    pub bucket: String,
    pub key: String,
    pub(crate) sha256: String,
    pub signature: String,
    /// Its `digestEndTime` (`None` when it cannot be read: no gap is declared).
    pub end_time: Option<String>,
}

/// The digest folder of a foundation: `CFLogs-Digest/<foundation>/`.
pub(crate) fn digest_folder(foundation: &str) -> String {
    format!("CFLogs-Digest/{foundation}/")
}

pub(crate) fn digest_key(
    prefix: &str,
    foundation: &str,
    instance: u32,
    end: DateTime<Utc>,
) -> String {
    join_prefix(
        prefix,
        &format!(
            "{}{}/{foundation}_CFLogs-Digest_{instance}_{}.json.gz",
            digest_folder(foundation),
            end.format("%Y/%m/%d"),
            end.format("%Y%m%dT%H%M%SZ")
        ),
    )
}

/// Whether `key` is a digest of `instance` in `foundation`.
pub(crate) fn is_digest_of(key: &str, foundation: &str, instance: u32) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.starts_with(&format!("{foundation}_CFLogs-Digest_{instance}_"))
        && name.ends_with(".json.gz")
}

/// Where the public key with `fingerprint` is published:
/// `<prefix>/CFLogs-Digest/<foundation>/public-keys/<fingerprint>.pem`.
pub fn public_key_key(prefix: &str, foundation: &str, fingerprint: &str) -> String {
    join_prefix(
        prefix,
        &format!("{}public-keys/{fingerprint}.pem", digest_folder(foundation)),
    )
}

pub(crate) fn sidecar_key(digest_key: &str) -> String {
    format!("{digest_key}.sig")
}

/// The uncompressed content of a gzip object: every member, as `gzip -d`
/// reads it (a member appended to a log file is content, not something to
/// skip: reading only the first would let it pass the hash check).
pub fn gunzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out)?;
    Ok(out)
}

/// The signature of a digest: from its metadata in S3, from its sidecar in a
/// local folder. `None` when there is none.
pub(crate) async fn read_signature(
    archive: &Archive,
    key: &str,
    fetched: &super::Fetched,
) -> Option<(String, String)> {
    if archive.local {
        let sidecar = archive
            .get(&archive.digests, &sidecar_key(key))
            .await
            .ok()?;
        let s: SignatureSidecar = serde_json::from_slice(&sidecar.body).ok()?;
        Some((s.signature, s.signature_algorithm))
    } else {
        Some((
            fetched.meta(META_SIGNATURE)?.to_string(),
            fetched
                .meta(META_SIGNATURE_ALGORITHM)
                .unwrap_or("")
                .to_string(),
        ))
    }
}

/// Finds the newest digest this instance wrote, to chain to it. `Ok(None)`
/// when there is none (a new chain); an error when the archive cannot be read.
pub(crate) async fn find_previous(
    archive: &Archive,
    foundation: &str,
    instance: u32,
) -> Result<Option<PreviousDigest>, super::ArchiveError> {
    let keys = archive
        .list(&archive.digests, &digest_folder(foundation))
        .await?;
    let Some(key) = keys
        .into_iter()
        .filter(|k| is_digest_of(k, foundation, instance))
        .max()
    else {
        return Ok(None);
    };
    let fetched = archive.get(&archive.digests, &key).await?;
    let plain = match gunzip(&fetched.body) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(key, error = %e, "the previous digest is not gzip: starting a new chain");
            return Ok(None);
        }
    };
    let Some((signature, _)) = read_signature(archive, &key, &fetched).await else {
        tracing::error!(
            key,
            "the previous digest has no signature: starting a new chain"
        );
        return Ok(None);
    };
    let end_time = serde_json::from_slice::<DigestFile>(&plain)
        .ok()
        .map(|d| d.digest_end_time);
    Ok(Some(PreviousDigest {
        bucket: archive.bucket.clone(),
        key,
        sha256: sha256_hex(&plain),
        signature,
        end_time,
    }))
}

/// Runs the chain until every sender of `rx` is gone, then writes a final
/// digest. `stats` (the follower's, on `/metrics` as sink `<label>:digest`)
/// and the report count digests: received = attempted, delivered = written,
/// so an alert can tell a chain that stopped (`monitoring/alerts.yml`).
pub(crate) async fn run_digest_chain(
    archive: Archive,
    cfg: DigestConfig,
    mut rx: mpsc::UnboundedReceiver<LogFileEntry>,
    notifier: Option<Notifier>,
    name: String,
    stats: Arc<SinkStats>,
) -> SinkReport {
    let mut outputs = Vec::new();
    let mut backoff = Backoff::full_jitter(Duration::from_secs(1), Duration::from_secs(30));
    let mut previous = loop {
        match find_previous(&archive, &cfg.foundation, cfg.instance_index).await {
            Ok(p) => break p,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "cannot read the digest chain back; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    };
    match &previous {
        Some(p) => tracing::info!(previous = %archive.location(&p.key), "digest chain continues"),
        None => tracing::info!("digest chain starts (no earlier digest of this instance)"),
    }
    publish_public_key(&archive, &cfg).await;
    let mut start = Utc::now();
    // The first digest says how long this instance was not writing.
    let mut gap = previous
        .as_ref()
        .and_then(|p| p.end_time.clone())
        .map(|from| DeclaredGap {
            from,
            until: digest_time(start),
        });
    let mut entries: Vec<LogFileEntry> = Vec::new();
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.interval, cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let closed = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => { entries.push(e); continue; }
                None => true,
            },
            _ = tick.tick() => false,
        };
        // Everything already delivered belongs in this digest.
        while let Ok(e) = rx.try_recv() {
            entries.push(e);
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        let run = RunMarks {
            gap: gap.take(),
            final_digest: closed,
        };
        let (end, link, key) = write_digest(
            &archive,
            &cfg,
            start,
            std::mem::take(&mut entries),
            previous.as_ref(),
            run,
        )
        .await;
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        outputs.push(Output {
            kind: "digest".into(),
            path: archive.location(&key),
            records: 0,
        });
        if let Some(n) = &notifier {
            n.notify(vec![key]);
        }
        previous = Some(link);
        start = end;
        if closed {
            break;
        }
    }
    SinkReport {
        stats: stats.snapshot(&name),
        outputs,
        not_delivered: None,
    }
}

/// Publishes the signing key's public half under its fingerprint, retrying
/// until it is stored (a key already there is written again: same bytes).
async fn publish_public_key(archive: &Archive, cfg: &DigestConfig) {
    let public = cfg.key.public_key();
    let key = public_key_key(&archive.prefix, &cfg.foundation, &public.fingerprint());
    let mut backoff = Backoff::full_jitter(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let pem = Bytes::from(public.to_pem());
        match archive.put_plain(&archive.digests, &key, pem).await {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "cannot publish the public key; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
    tracing::info!(public_key = %archive.location(&key), "public key published");
}

/// What a digest says about the run that wrote it.
struct RunMarks {
    gap: Option<DeclaredGap>,
    final_digest: bool,
}

/// Builds, signs and stores one digest, retrying until it is stored.
async fn write_digest(
    archive: &Archive,
    cfg: &DigestConfig,
    start: DateTime<Utc>,
    log_files: Vec<LogFileEntry>,
    previous: Option<&PreviousDigest>,
    run: RunMarks,
) -> (DateTime<Utc>, PreviousDigest, String) {
    let mut end = Utc::now();
    // One digest per instance per second: wait for the next second rather
    // than let two digests share a key.
    let key_at = |t| digest_key(&archive.prefix, &cfg.foundation, cfg.instance_index, t);
    while previous.is_some_and(|p| p.key == key_at(end)) {
        let rest = 1000 - u64::from(end.timestamp_subsec_millis()).min(999);
        tokio::time::sleep(Duration::from_millis(rest)).await;
        end = Utc::now();
    }
    if let Some(p) = previous
        && p.key > key_at(end)
    {
        tracing::warn!(previous = %p.key, "the previous digest is dated after now (clock skew?): the chain is kept, but its keys no longer sort in order");
    }
    let key = digest_key(&archive.prefix, &cfg.foundation, cfg.instance_index, end);
    let public = cfg.key.public_key();
    let newest = log_files
        .iter()
        .filter_map(|f| f.newest_event_time.clone())
        .max();
    let oldest = log_files
        .iter()
        .filter_map(|f| f.oldest_event_time.clone())
        .min();
    let digest = DigestFile {
        foundation: cfg.foundation.clone(),
        instance_index: cfg.instance_index,
        digest_start_time: digest_time(start),
        digest_end_time: digest_time(end),
        digest_s3_bucket: archive.bucket.clone(),
        digest_s3_object: key.clone(),
        digest_public_key_fingerprint: public.fingerprint(),
        digest_signature_algorithm: cfg.key.algorithm().as_str().to_string(),
        newest_event_time: newest,
        oldest_event_time: oldest,
        previous_digest_s3_bucket: previous.map(|p| p.bucket.clone()),
        previous_digest_s3_object: previous.map(|p| p.key.clone()),
        previous_digest_hash_value: previous.map(|p| p.sha256.clone()),
        previous_digest_hash_algorithm: previous.map(|_| "SHA-256".to_string()),
        previous_digest_signature: previous.map(|p| p.signature.clone()),
        log_files,
        declared_gap: run.gap,
        final_digest: run.final_digest,
    };
    let plain = serde_json::to_vec(&digest).expect("a digest serialises");
    let sha256 = sha256_hex(&plain);
    let signed = string_to_sign(
        &digest.digest_end_time,
        &archive.bucket,
        &key,
        &sha256,
        previous.map(|p| p.signature.as_str()),
    );
    let signature = hex::encode(cfg.key.sign(signed.as_bytes()));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).expect("writing to memory cannot fail");
    let body = Bytes::from(gz.finish().expect("writing to memory cannot fail"));
    let algorithm = cfg.key.algorithm().as_str().to_string();
    let mut backoff = Backoff::full_jitter(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let stored = async {
            if archive.local {
                let sidecar = serde_json::to_vec(&SignatureSidecar {
                    signature: signature.clone(),
                    signature_algorithm: algorithm.clone(),
                })
                .expect("serialises");
                archive
                    .put_plain(&archive.digests, &sidecar_key(&key), sidecar.into())
                    .await?;
            }
            archive
                .put_json_gz(
                    &archive.digests,
                    &key,
                    body.clone(),
                    &[
                        (META_SIGNATURE, signature.clone()),
                        (META_SIGNATURE_ALGORITHM, algorithm.clone()),
                    ],
                )
                .await
        }
        .await;
        match stored {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, ?delay, "cannot store a digest; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
    tracing::info!(digest = %archive.location(&key), log_files = digest.log_files.len(), "digest delivered");
    let link = PreviousDigest {
        bucket: archive.bucket.clone(),
        key: key.clone(),
        sha256,
        signature,
        end_time: Some(digest.digest_end_time.clone()),
    };
    (end, link, key)
}

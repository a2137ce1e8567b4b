//! `cf-audit-nozzle validate`: checks an archive (S3 bucket or local folder)
//! against its digest chains, in the spirit of `aws cloudtrail validate-logs`.
//!
//! For each chain (one per foundation and instance), from the newest digest in
//! the time range to the oldest: the digest must be where it says it is, be
//! signed by one of the given public keys (found by the fingerprint it names;
//! a key published in the bucket is never trusted: whoever can write the
//! bucket can publish one), have a valid signature over CloudTrail's
//! four-line string, and hash (uncompressed) to what the next digest recorded;
//! every log file it lists must exist and hash to the listed value. Then the
//! walk follows `previousDigestS3Object`. Digests in the range the walk never
//! reached, chains that restart while older digests exist, gaps between
//! linked digests (declared by a restart, or not), and log files no digest
//! lists (invalid in a covered period, unverified outside: [`coverage`]) are
//! reported too. [`Report`] prints as lines or as one JSON document.

mod coverage;
mod report;

pub use report::{Counts, FileKind, Finding, Gap, Report};

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::integrity::{DigestFile, PublicKey, sha256_hex, string_to_sign};
use crate::sink::archive::digest::{gunzip, read_signature};
use crate::sink::archive::{Archive, Fetched, join_prefix};
use coverage::{ChainCoverage, Walked, parse_digest_name};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("cannot list the archive: {0}")]
    List(#[from] crate::sink::archive::ArchiveError),
    #[error("--{flag} must be an RFC 3339 time such as 2026-11-27T00:00:00Z, not {value:?}")]
    Time { flag: &'static str, value: String },
}

pub(crate) fn parse_time(flag: &'static str, value: &str) -> Result<DateTime<Utc>, ValidateError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| ValidateError::Time {
            flag,
            value: value.to_string(),
        })
}

/// What the newer digest said about the one it links to.
struct Expected {
    sha256: Option<String>,
    signature: Option<String>,
    by: String,
}

/// Validates every chain with digests ending in `[start, end]` against
/// `public_keys` (every key the chains may have been signed with: an older
/// key keeps its digests valid while it is given).
pub async fn validate(
    archive: &Archive,
    public_keys: &[PublicKey],
    start: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
) -> Result<Report, ValidateError> {
    let mut report = Report::default();
    let chains = digest_chains(archive, start, end, &mut report).await?;
    let checks = Checks {
        archive,
        public_keys: public_keys
            .iter()
            .map(|k| (k.fingerprint(), k.clone()))
            .collect(),
        start,
    };
    let log_keys = archive.list(&archive.logs, "CFLogs/").await?;
    let mut listed = BTreeSet::new();
    let mut coverage = BTreeMap::new();
    for ((foundation, instance), keys) in &chains {
        let walk = checks.walk_chain(keys, &mut report).await;
        for key in keys.iter().filter(|k| !walk.visited.contains(*k)) {
            report.findings.push(Finding::new(
                FileKind::Digest,
                archive.location(key),
                Some("not in the chain: no later digest links to it".into()),
            ));
        }
        report
            .gaps
            .extend(walk.coverage.gaps(foundation, *instance));
        listed.extend(walk.listed_logs);
        coverage.insert((foundation.clone(), *instance), walk.coverage);
    }
    for (key, verdict) in coverage::unlisted_logs(&log_keys, &listed, &coverage, (start, end)) {
        let mut finding = Finding::new(FileKind::Log, archive.location(key), None);
        match verdict {
            Err(problem) => finding.problem = Some(problem),
            Ok(reason) => finding.unverified = Some(reason),
        }
        report.findings.push(finding);
    }
    if chains.is_empty() {
        tracing::warn!(
            root = %archive.location(&join_prefix(&archive.prefix, "CFLogs-Digest/")),
            "no digest files in the time range"
        );
    }
    Ok(report)
}

/// The digests ending in `[start, end]`, by chain (foundation, instance),
/// each chain's keys sorted; a digest whose name cannot be read is reported.
async fn digest_chains(
    archive: &Archive,
    start: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
    report: &mut Report,
) -> Result<BTreeMap<(String, u32), BTreeSet<String>>, ValidateError> {
    let digest_keys = archive.list(&archive.digests, "CFLogs-Digest/").await?;
    let mut chains: BTreeMap<(String, u32), BTreeSet<String>> = BTreeMap::new();
    for key in digest_keys.iter().filter(|k| k.ends_with(".json.gz")) {
        match parse_digest_name(key) {
            Some((foundation, instance, t)) => {
                if start.is_none_or(|s| t >= s) && t <= end {
                    chains
                        .entry((foundation, instance))
                        .or_default()
                        .insert(key.clone());
                }
            }
            None => report.findings.push(Finding::new(
                FileKind::Digest,
                archive.location(key),
                Some("invalid format: not a digest file name".into()),
            )),
        }
    }
    Ok(chains)
}

/// What every digest is checked against.
struct Checks<'a> {
    archive: &'a Archive,
    /// The given public keys by fingerprint.
    public_keys: BTreeMap<String, PublicKey>,
    start: Option<DateTime<Utc>>,
}

/// What the walk of one chain saw.
#[derive(Default)]
struct Walk {
    visited: BTreeSet<String>,
    listed_logs: BTreeSet<String>,
    coverage: ChainCoverage,
}

impl Checks<'_> {
    /// Walks one chain (its digest `keys`) from the newest digest along the
    /// `previousDigestS3Object` links, reporting each digest and the log
    /// files it lists.
    async fn walk_chain(&self, keys: &BTreeSet<String>, report: &mut Report) -> Walk {
        let archive = self.archive;
        let mut walk = Walk::default();
        let mut next: Option<(String, Option<Expected>)> =
            keys.iter().next_back().map(|k| (k.clone(), None));
        // The newest listed digest older than `key` not walked yet.
        let resume = |key: &str, walk: &Walk| {
            keys.range(..key.to_string())
                .next_back()
                .filter(|k| !walk.visited.contains(*k))
                .map(|k| (k.clone(), None))
        };
        while let Some((key, expected)) = next.take() {
            let location = archive.location(&key);
            if !walk.visited.insert(key.clone()) {
                report.findings.push(Finding::new(
                    FileKind::Digest,
                    location,
                    Some("the chain links back to a digest already seen (reordered)".into()),
                ));
                break;
            }
            let fetched = match archive.get(&archive.digests, &key).await {
                Ok(f) => f,
                Err(e) => {
                    let by = expected
                        .as_ref()
                        .map(|e| format!(" (named as previous digest by {})", e.by));
                    let problem = if e.not_found {
                        format!("not found{}", by.unwrap_or_default())
                    } else {
                        e.to_string()
                    };
                    report
                        .findings
                        .push(Finding::new(FileKind::Digest, location, Some(problem)));
                    next = resume(&key, &walk);
                    continue;
                }
            };
            let parsed = gunzip(&fetched.body).ok().and_then(|plain| {
                serde_json::from_slice::<DigestFile>(&plain)
                    .ok()
                    .map(|d| (plain, d))
            });
            let Some((plain, digest)) = parsed else {
                report.findings.push(Finding::new(
                    FileKind::Digest,
                    location,
                    Some("invalid format: not a gzip JSON digest".into()),
                ));
                next = resume(&key, &walk);
                continue;
            };
            let mut problems = self
                .check_digest(&key, &fetched, &plain, &digest, expected.as_ref())
                .await;
            for log in &digest.log_files {
                walk.listed_logs.insert(log.s3_object.clone());
                report.findings.push(Finding::new(
                    FileKind::Log,
                    archive.location(&log.s3_object),
                    check_log(archive, &log.s3_object, &log.hash_value).await,
                ));
            }
            match walked(&key, &location, &digest) {
                Some(w) => {
                    walk.coverage.walked.insert(key.clone(), w);
                }
                None => problems.push("invalid format: its start or end time is not a time".into()),
            }
            next = self.follow(&key, &digest, &location, keys, &mut problems);
            report.findings.push(Finding::new(
                FileKind::Digest,
                location,
                (!problems.is_empty()).then(|| problems.join("; ")),
            ));
        }
        walk
    }

    /// What is wrong with a digest read back (`plain`, parsed as `digest`):
    /// its place, its key and signature, and what the newer digest that
    /// links to it recorded (`expected`).
    async fn check_digest(
        &self,
        key: &str,
        fetched: &Fetched,
        plain: &[u8],
        digest: &DigestFile,
        expected: Option<&Expected>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let sha256 = sha256_hex(plain);
        if digest.digest_s3_bucket != self.archive.bucket || digest.digest_s3_object != key {
            problems.push(format!(
                "has been moved from its original location {}/{}",
                digest.digest_s3_bucket, digest.digest_s3_object
            ));
        }
        let signature = read_signature(self.archive, key, fetched).await;
        let fingerprint = &digest.digest_public_key_fingerprint;
        match (self.public_keys.get(fingerprint), &signature) {
            (None, _) => problems.push(format!(
                "public key not found: signed by the key with fingerprint {fingerprint}, which is not among the given public keys ({})",
                self.public_keys.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            (Some(_), None) => problems.push("signature missing".into()),
            (Some(public_key), Some((sig, _))) => {
                let signed = string_to_sign(
                    &digest.digest_end_time,
                    &digest.digest_s3_bucket,
                    &digest.digest_s3_object,
                    &sha256,
                    digest.previous_digest_signature.as_deref(),
                );
                let good =
                    hex::decode(sig).is_ok_and(|s| public_key.verify(signed.as_bytes(), &s));
                if !good {
                    problems.push("signature verification failed".into());
                }
            }
        }
        if let Some(exp) = expected {
            if exp.sha256.as_deref() != Some(sha256.as_str()) {
                problems.push(format!(
                    "hash value doesn't match the previousDigestHashValue of {} (changed)",
                    exp.by
                ));
            }
            if exp.signature.as_deref() != signature.as_ref().map(|s| s.0.as_str()) {
                problems.push(format!(
                    "signature doesn't match the previousDigestSignature of {}",
                    exp.by
                ));
            }
        }
        problems
    }

    /// The digest `digest` links to, unless the link leaves the time range;
    /// a chain that starts while older digests of the instance exist is a
    /// problem of `digest`'s.
    fn follow(
        &self,
        key: &str,
        digest: &DigestFile,
        location: &str,
        keys: &BTreeSet<String>,
        problems: &mut Vec<String>,
    ) -> Option<(String, Option<Expected>)> {
        match &digest.previous_digest_s3_object {
            Some(prev) => {
                let in_range = parse_digest_name(prev)
                    .is_none_or(|(_, _, t)| self.start.is_none_or(|s| t >= s));
                in_range.then(|| {
                    (
                        prev.clone(),
                        Some(Expected {
                            sha256: digest.previous_digest_hash_value.clone(),
                            signature: digest.previous_digest_signature.clone(),
                            by: location.to_string(),
                        }),
                    )
                })
            }
            None => {
                let older = keys.range(..key.to_string()).count();
                if older > 0 {
                    problems.push(format!(
                        "gap in the chain: starts a new chain, but {older} older digest file(s) of this instance exist"
                    ));
                }
                None
            }
        }
    }
}

async fn check_log(archive: &Archive, key: &str, hash: &str) -> Option<String> {
    match archive.get(&archive.logs, key).await {
        Err(e) if e.not_found => Some("not found".into()),
        Err(e) => Some(e.to_string()),
        Ok(f) => match gunzip(&f.body) {
            Err(_) => Some("invalid format: not gzip".into()),
            Ok(plain) if sha256_hex(&plain) != hash => {
                Some("hash value doesn't match (changed)".into())
            }
            Ok(_) => None,
        },
    }
}

/// What the walk keeps of a digest for the coverage of unlisted log files.
fn walked(key: &str, location: &str, d: &DigestFile) -> Option<Walked> {
    Some(Walked {
        key: key.to_string(),
        location: location.to_string(),
        start: parse_time("digestStartTime", &d.digest_start_time).ok()?,
        end: parse_time("digestEndTime", &d.digest_end_time).ok()?,
        start_text: d.digest_start_time.clone(),
        end_text: d.digest_end_time.clone(),
        previous: d.previous_digest_s3_object.clone(),
        declared_gap: d
            .declared_gap
            .as_ref()
            .map(|g| (g.from.clone(), g.until.clone())),
        final_digest: d.final_digest,
    })
}

/// Why the archive a command's options name could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Archive(#[from] crate::sink::archive::ArchiveError),
    #[error(transparent)]
    S3(#[from] crate::sink::BuildError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
}

/// The archive of a reading command (`validate`, `gaps`): the local folder
/// `dir` (with `--s3-prefix`), else the S3 bucket from the `s3` flags and an
/// S3 binding in `env`. `needs` is the first error when neither is given
/// (what the command needs).
pub(crate) fn open_archive(
    needs: &str,
    dir: Option<&std::path::Path>,
    s3: &crate::config::S3Args,
    env: &dyn crate::config::Env,
) -> Result<Archive, OpenError> {
    if let Some(dir) = dir {
        return Ok(Archive::local(dir, &s3.s3_prefix)?);
    }
    let mut errors = Vec::new();
    match s3.s3_config(env, &mut errors) {
        Some(s3) if errors.is_empty() => {
            let client = crate::sink::archive::s3::http_client(s3.ca_pem.as_deref())?;
            Ok(crate::sink::archive::s3::s3_archive(&s3, &client)?)
        }
        _ => {
            errors.insert(0, needs.to_string());
            Err(crate::config::ConfigErrors(errors).into())
        }
    }
}

/// Why `validate` could not check the archive its options name.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Key(#[from] crate::integrity::IntegrityError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Open(#[from] OpenError),
}

/// `cf-audit-nozzle validate`: the archive `args` name (`--dir`, else the S3
/// bucket from the flags and an S3 binding in `env`), checked from `--start`
/// to `--end` (default: now) against `--public-key`.
pub async fn validate_args(
    args: &crate::config::ValidateArgs,
    env: &dyn crate::config::Env,
) -> Result<Report, CommandError> {
    let public = args
        .public_key
        .iter()
        .map(|path| PublicKey::load(path))
        .collect::<Result<Vec<_>, _>>()?;
    let start = args
        .start
        .as_deref()
        .map(|s| parse_time("start", s))
        .transpose()?;
    let end = match args.end.as_deref() {
        Some(e) => parse_time("end", e)?,
        None => Utc::now(),
    };
    let archive = open_archive(
        "validate needs --dir or --s3-bucket",
        args.dir.as_deref(),
        &args.s3,
        env,
    )?;
    Ok(validate(&archive, &public, start, end).await?)
}

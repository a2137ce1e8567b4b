//! `cf-audit-nozzle validate`: checks an archive (S3 bucket or local folder)
//! against its digest chains, in the spirit of `aws cloudtrail validate-logs`.
//!
//! For each chain (one per foundation and instance), from the newest digest in
//! the time range to the oldest: the digest must be where it says it is, carry
//! the given public key's fingerprint, have a valid signature over CloudTrail's
//! four-line string, and hash (uncompressed) to what the next digest recorded;
//! every log file it lists must exist and hash to the listed value. Then the
//! walk follows `previousDigestS3Object`. Digests in the range the walk never
//! reached, chains that restart while older digests exist, and log files of
//! the covered period that no digest lists are reported too.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::integrity::{DigestFile, PublicKey, sha256_hex, string_to_sign};
use crate::sink::archive::digest::{gunzip, read_signature};
use crate::sink::archive::{Archive, Fetched, join_prefix};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Digest,
    Log,
}

/// One line of the report: a file and what is wrong with it (`None`: valid).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: FileKind,
    pub location: String,
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.problem.is_none())
    }

    fn count(&self, kind: FileKind) -> (usize, usize) {
        let all: Vec<_> = self.findings.iter().filter(|f| f.kind == kind).collect();
        let valid = all.iter().filter(|f| f.problem.is_none()).count();
        (valid, all.len())
    }

    /// One line per file, then the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let what = match f.kind {
                FileKind::Digest => "Digest file",
                FileKind::Log => "Log file",
            };
            match &f.problem {
                None => out.push_str(&format!("{what} {} valid\n", f.location)),
                Some(p) => out.push_str(&format!("{what} {} INVALID: {p}\n", f.location)),
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    pub fn summary(&self) -> String {
        let (dv, dn) = self.count(FileKind::Digest);
        let (lv, ln) = self.count(FileKind::Log);
        format!(
            "Results: {dv}/{dn} digest files valid, {}/{dn} digest files INVALID; {lv}/{ln} log files valid, {}/{ln} log files INVALID",
            dn - dv,
            ln - lv
        )
    }
}

/// A digest's name read back: chain (foundation, instance) and end time.
fn parse_digest_name(key: &str) -> Option<(String, u32, DateTime<Utc>)> {
    let name = key.rsplit('/').next()?.strip_suffix(".json.gz")?;
    let (foundation, rest) = name.split_once("_CFLogs-Digest_")?;
    let (instance, time) = rest.split_once('_')?;
    let t = NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").ok()?;
    Some((foundation.to_string(), instance.parse().ok()?, t.and_utc()))
}

/// A log file's name read back: foundation, delivery minute, instance.
fn parse_log_name(key: &str) -> Option<(String, DateTime<Utc>, u32)> {
    let name = key.rsplit('/').next()?.strip_suffix(".json.gz")?;
    let mut parts = name.rsplitn(3, '_');
    let _unique = parts.next()?;
    let instance: u32 = parts.next()?.parse().ok()?;
    let head = parts.next()?; // <foundation>_<kind>_<time>
    let (head, time) = head.rsplit_once('_')?;
    let t = NaiveDateTime::parse_from_str(&format!("{time}00"), "%Y%m%dT%H%MZ%S").ok()?;
    let (foundation, _kind) = head.rsplit_once('_').map_or((head, ""), |x| x);
    // Kinds contain underscores (app_log): the foundation is what the key's
    // folder says (CFLogs/<foundation>/...).
    let folder_foundation = key
        .split('/')
        .skip_while(|p| *p != "CFLogs")
        .nth(1)
        .unwrap_or(foundation);
    Some((folder_foundation.to_string(), t.and_utc(), instance))
}

/// What the newer digest said about the one it links to.
struct Expected {
    sha256: Option<String>,
    signature: Option<String>,
    by: String,
}

/// Validates every chain with digests ending in `[start, end]`.
pub async fn validate(
    archive: &Archive,
    public_key: &PublicKey,
    start: Option<DateTime<Utc>>,
    end: DateTime<Utc>,
) -> Result<Report, ValidateError> {
    let mut report = Report::default();
    let chains = digest_chains(archive, start, end, &mut report).await?;
    let checks = Checks {
        archive,
        public_key,
        fingerprint: public_key.fingerprint(),
        start,
    };
    let log_keys = archive.list(&archive.logs, "CFLogs/").await?;
    for ((foundation, instance), keys) in &chains {
        let walk = checks.walk_chain(keys, &mut report).await;
        for key in keys.iter().filter(|k| !walk.visited.contains(*k)) {
            report.findings.push(Finding {
                kind: FileKind::Digest,
                location: archive.location(key),
                problem: Some("not in the chain: no later digest links to it".into()),
            });
        }
        // Log files of this instance delivered in the covered period that no digest lists.
        if let Some(covered) = walk.covered {
            let chain = (foundation.as_str(), *instance);
            for key in unlisted_logs(&log_keys, &walk.listed_logs, chain, covered) {
                report.findings.push(Finding {
                    kind: FileKind::Log,
                    location: archive.location(key),
                    problem: Some("not listed in any digest (added, or moved here)".into()),
                });
            }
        }
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
            None => report.findings.push(Finding {
                kind: FileKind::Digest,
                location: archive.location(key),
                problem: Some("invalid format: not a digest file name".into()),
            }),
        }
    }
    Ok(chains)
}

/// The log files of `chain` (foundation, instance) delivered strictly inside
/// the minutes `covered` spans that no digest listed.
fn unlisted_logs<'a>(
    log_keys: &'a [String],
    listed: &'a BTreeSet<String>,
    (foundation, instance): (&'a str, u32),
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> impl Iterator<Item = &'a String> + 'a {
    let minute = |t: DateTime<Utc>| t.timestamp() / 60;
    log_keys.iter().filter(move |key| {
        if listed.contains(*key) {
            return false;
        }
        let Some((f, t, i)) = parse_log_name(key) else {
            return false;
        };
        f == foundation && i == instance && minute(t) > minute(from) && minute(t) < minute(to)
    })
}

/// What every digest is checked against.
struct Checks<'a> {
    archive: &'a Archive,
    public_key: &'a PublicKey,
    fingerprint: String,
    start: Option<DateTime<Utc>>,
}

/// What the walk of one chain saw.
#[derive(Default)]
struct Walk {
    visited: BTreeSet<String>,
    listed_logs: BTreeSet<String>,
    /// From the oldest digest's start to the newest one's end.
    covered: Option<(DateTime<Utc>, DateTime<Utc>)>,
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
        while let Some((key, expected)) = next.take() {
            if !walk.visited.insert(key.clone()) {
                report.findings.push(Finding {
                    kind: FileKind::Digest,
                    location: archive.location(&key),
                    problem: Some(
                        "the chain links back to a digest already seen (reordered)".into(),
                    ),
                });
                break;
            }
            let location = archive.location(&key);
            let fetched = match archive.get(&archive.digests, &key).await {
                Ok(f) => f,
                Err(e) => {
                    let by = expected
                        .as_ref()
                        .map(|e| format!(" (named as previous digest by {})", e.by));
                    report.findings.push(Finding {
                        kind: FileKind::Digest,
                        location,
                        problem: Some(if e.not_found {
                            format!("not found{}", by.unwrap_or_default())
                        } else {
                            e.to_string()
                        }),
                    });
                    // Resume with the newest listed digest older than this one.
                    next = keys
                        .range(..key.clone())
                        .next_back()
                        .filter(|k| !walk.visited.contains(*k))
                        .map(|k| (k.clone(), None));
                    continue;
                }
            };
            let parsed = gunzip(&fetched.body).ok().and_then(|plain| {
                serde_json::from_slice::<DigestFile>(&plain)
                    .ok()
                    .map(|d| (plain, d))
            });
            let Some((plain, digest)) = parsed else {
                report.findings.push(Finding {
                    kind: FileKind::Digest,
                    location,
                    problem: Some("invalid format: not a gzip JSON digest".into()),
                });
                next = keys
                    .range(..key.clone())
                    .next_back()
                    .map(|k| (k.clone(), None));
                continue;
            };
            let mut problems = self
                .check_digest(&key, &fetched, &plain, &digest, expected.as_ref())
                .await;
            for log in &digest.log_files {
                walk.listed_logs.insert(log.s3_object.clone());
                report.findings.push(Finding {
                    kind: FileKind::Log,
                    location: archive.location(&log.s3_object),
                    problem: check_log(archive, &log.s3_object, &log.hash_value).await,
                });
            }
            if let (Ok(s), Ok(e)) = (
                parse_time("digestStartTime", &digest.digest_start_time),
                parse_time("digestEndTime", &digest.digest_end_time),
            ) {
                walk.covered = Some(
                    walk.covered
                        .map_or((s, e), |(cs, ce)| (cs.min(s), ce.max(e))),
                );
            }
            next = self.follow(&key, &digest, &location, keys, &mut problems);
            report.findings.push(Finding {
                kind: FileKind::Digest,
                location,
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
            });
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
        let fingerprint = &self.fingerprint;
        if digest.digest_public_key_fingerprint != *fingerprint {
            problems.push(format!(
                "public key not found: signed by the key with fingerprint {}, not the given key ({fingerprint})",
                digest.digest_public_key_fingerprint
            ));
        } else {
            match &signature {
                None => problems.push("signature missing".into()),
                Some((sig, _)) => {
                    let signed = string_to_sign(
                        &digest.digest_end_time,
                        &digest.digest_s3_bucket,
                        &digest.digest_s3_object,
                        &sha256,
                        digest.previous_digest_signature.as_deref(),
                    );
                    let good = hex::decode(sig)
                        .is_ok_and(|s| self.public_key.verify(signed.as_bytes(), &s));
                    if !good {
                        problems.push("signature verification failed".into());
                    }
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
    let public = PublicKey::load(&args.public_key)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_back_for_chains_and_coverage() {
        let t = |s: &str| parse_time("t", s).unwrap();
        assert_eq!(
            parse_digest_name(
                "p/CFLogs-Digest/cf_1/2026/11/27/cf_1_CFLogs-Digest_3_20261127T150102Z.json.gz"
            ),
            Some(("cf_1".to_string(), 3, t("2026-11-27T15:01:02Z")))
        );
        assert_eq!(parse_digest_name("p/CFLogs-Digest/x/y.json.gz"), None);
        assert_eq!(
            parse_log_name(
                "p/CFLogs/cf_1/app_log/2026/11/27/cf_1_app_log_20261127T1501Z_12_AbCdEfGhIjKlMnOp.json.gz"
            ),
            Some(("cf_1".to_string(), t("2026-11-27T15:01:00Z"), 12))
        );
        assert_eq!(parse_log_name("p/CFLogs/cf/api/x.json.gz"), None);
    }
}

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
use crate::sink::archive::{Archive, join_prefix};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("cannot list the archive: {0}")]
    List(#[from] crate::sink::archive::ArchiveError),
    #[error("--{flag} must be an RFC 3339 time such as 2026-11-27T00:00:00Z, not {value:?}")]
    Time { flag: &'static str, value: String },
}

pub fn parse_time(flag: &'static str, value: &str) -> Result<DateTime<Utc>, ValidateError> {
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
    let digest_keys = archive.list(&archive.digests, "CFLogs-Digest/").await?;
    // Chains, each a sorted set of digest keys in the range.
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
    let fingerprint = public_key.fingerprint();
    let log_keys = archive.list(&archive.logs, "CFLogs/").await?;
    for ((foundation, instance), keys) in &chains {
        let mut visited: BTreeSet<String> = BTreeSet::new();
        let mut listed_logs: BTreeSet<String> = BTreeSet::new();
        let mut covered: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
        let mut next: Option<(String, Option<Expected>)> =
            keys.iter().next_back().map(|k| (k.clone(), None));
        while let Some((key, expected)) = next.take() {
            if !visited.insert(key.clone()) {
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
            let mut problems = Vec::new();
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
                        .filter(|k| !visited.contains(*k))
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
            let sha256 = sha256_hex(&plain);
            if digest.digest_s3_bucket != archive.bucket || digest.digest_s3_object != key {
                problems.push(format!(
                    "has been moved from its original location {}/{}",
                    digest.digest_s3_bucket, digest.digest_s3_object
                ));
            }
            let signature = read_signature(archive, &key, &fetched).await;
            if digest.digest_public_key_fingerprint != fingerprint {
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
                            .is_ok_and(|s| public_key.verify(signed.as_bytes(), &s));
                        if !good {
                            problems.push("signature verification failed".into());
                        }
                    }
                }
            }
            if let Some(exp) = &expected {
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
            for log in &digest.log_files {
                listed_logs.insert(log.s3_object.clone());
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
                covered = Some(covered.map_or((s, e), |(cs, ce)| (cs.min(s), ce.max(e))));
            }
            // Follow the link, unless it leaves the time range.
            match &digest.previous_digest_s3_object {
                Some(prev) => {
                    let in_range = parse_digest_name(prev)
                        .is_none_or(|(_, _, t)| start.is_none_or(|s| t >= s));
                    if in_range {
                        next = Some((
                            prev.clone(),
                            Some(Expected {
                                sha256: digest.previous_digest_hash_value.clone(),
                                signature: digest.previous_digest_signature.clone(),
                                by: location.clone(),
                            }),
                        ));
                    }
                }
                None => {
                    let older = keys.range(..key.clone()).count();
                    if older > 0 {
                        problems.push(format!(
                            "gap in the chain: starts a new chain, but {older} older digest file(s) of this instance exist"
                        ));
                    }
                }
            }
            report.findings.push(Finding {
                kind: FileKind::Digest,
                location,
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
            });
        }
        for key in keys.iter().filter(|k| !visited.contains(*k)) {
            report.findings.push(Finding {
                kind: FileKind::Digest,
                location: archive.location(key),
                problem: Some("not in the chain: no later digest links to it".into()),
            });
        }
        // Log files of this instance delivered in the covered period that no digest lists.
        if let Some((from, to)) = covered {
            let minute = |t: DateTime<Utc>| t.timestamp() / 60;
            for key in &log_keys {
                if listed_logs.contains(key) {
                    continue;
                }
                let Some((f, t, i)) = parse_log_name(key) else {
                    continue;
                };
                if &f == foundation
                    && i == *instance
                    && minute(t) > minute(from)
                    && minute(t) < minute(to)
                {
                    report.findings.push(Finding {
                        kind: FileKind::Log,
                        location: archive.location(key),
                        problem: Some("not listed in any digest (added, or moved here)".into()),
                    });
                }
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

/// Why `validate` could not check the archive its options name.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Key(#[from] crate::integrity::IntegrityError),
    #[error(transparent)]
    Validate(#[from] ValidateError),
    #[error(transparent)]
    Archive(#[from] crate::sink::archive::ArchiveError),
    #[error(transparent)]
    S3(#[from] crate::sink::BuildError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
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
    let archive = match &args.dir {
        Some(dir) => Archive::local(dir, &args.s3.s3_prefix)?,
        None => {
            let mut errors = Vec::new();
            match args.s3.s3_config(env, &mut errors) {
                Some(s3) if errors.is_empty() => {
                    let client = crate::sink::archive::s3::http_client(s3.ca_pem.as_deref())?;
                    crate::sink::archive::s3::s3_archive(&s3, &client)?
                }
                _ => {
                    errors.insert(0, "validate needs --dir or --s3-bucket".into());
                    return Err(crate::config::ConfigErrors(errors).into());
                }
            }
        }
    };
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

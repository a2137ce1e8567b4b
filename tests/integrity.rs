//! The digest chain and `validate` on a local-folder archive (the file sink
//! with --signing-key): an untouched archive validates; each kind of
//! tampering is reported precisely, on the file it concerns.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::integrity::{
    Algorithm, DigestFile, PublicKey, SignatureSidecar, SigningKey, sha256_hex, string_to_sign,
};
use cf_audit_nozzle::pipeline::Pipeline;
use cf_audit_nozzle::record::{EncodeContext, Kind};
use cf_audit_nozzle::sink::BatchConfig;
use cf_audit_nozzle::sink::archive::Archive;
use cf_audit_nozzle::sink::archive::digest::DigestSettings;
use cf_audit_nozzle::sink::archive::{ObjectSinkConfig, RollConfig, Target};
use cf_audit_nozzle::validate::{Report, validate};

const RUNS: usize = 3;
const RECORDS_PER_RUN: usize = 40;

fn pipeline(dir: &Path, key: &Arc<SigningKey>) -> PipelineConfig {
    PipelineConfig {
        sinks: vec![(
            SinkConfig::Object(Box::new(ObjectSinkConfig {
                target: Target::Dir(dir.to_path_buf()),
                roll: RollConfig {
                    roll_interval: Duration::from_secs(3600),
                    // Small files: each run writes several.
                    roll_bytes: 4096,
                    instance_index: 7,
                    gzip_level: 1,
                },
                digest: Some(DigestSettings {
                    key: Arc::clone(key),
                    interval: Duration::from_secs(3600),
                }),
                notify_url: None,
            })),
            vec![Kind::AppLog],
        )],
        queue_capacity: 100_000,
        queue_max_bytes: u64::MAX,
        batch: BatchConfig::default(),
        encode: EncodeContext::new(common::FOUNDATION),
        decode_only: false,
        buffer: None,
        instance_index: 0,
    }
}

/// Three runs of the nozzle into one folder: three digests, each chained to
/// the one the previous run wrote last (read back at start).
async fn build_archive(dir: &Path, key: &Arc<SigningKey>) {
    build_archive_with(dir, &[key, key, key]).await;
}

/// One run per key, each signing with its key (a key rotation between runs).
async fn build_archive_with(dir: &Path, keys: &[&Arc<SigningKey>]) {
    for (run, key) in keys.iter().enumerate() {
        let p = Pipeline::start(&pipeline(dir, key)).expect("start");
        let envelopes = (0..RECORDS_PER_RUN)
            .map(|i| {
                common::log_envelope(
                    1_700_000_000_000_000_000 + (run * 1000 + i) as i64,
                    "app",
                    format!("run {run} line {i}"),
                    &[],
                )
            })
            .collect();
        p.router().dispatch(envelopes);
        let summary = p.finish(Duration::from_secs(20)).await;
        assert!(summary.complete);
        let total = summary.total();
        assert_eq!(
            (
                total.received,
                total.delivered,
                total.pending(),
                total.dropped()
            ),
            // The digest task counts its one digest as received and
            // delivered, the file sink the declaration of the last app_log
            // number at shutdown.
            (RECORDS_PER_RUN as u64 + 2, RECORDS_PER_RUN as u64 + 2, 0, 0),
            "{summary:?}"
        );
    }
}

fn files_under(dir: &Path, sub: &str, suffix: &str) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join(sub), &mut out);
    out.retain(|p| p.to_string_lossy().ends_with(suffix));
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip_to(path: &Path, plain: &[u8]) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(plain).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    pristine: PathBuf,
    public: PublicKey,
}

async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    let key = Arc::new(SigningKey::generate(Algorithm::Ed25519));
    build_archive(&pristine, &key).await;
    let public = key.public_key();
    Fixture {
        _tmp: tmp,
        pristine,
        public,
    }
}

impl Fixture {
    /// A copy of the archive to tamper with.
    fn copy(&self, name: &str) -> PathBuf {
        let dir = self._tmp.path().join(name);
        copy_dir(&self.pristine, &dir);
        dir
    }
}

async fn check(dir: &Path, public: &PublicKey) -> Report {
    let archive = Archive::local(dir, "").unwrap();
    validate(
        &archive,
        std::slice::from_ref(public),
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap()
}

/// The problem reported for `file` (`None`: valid). Files of the pristine
/// archive are matched by their path inside it.
fn problem_of(report: &Report, file: &Path) -> Option<String> {
    let text = file.display().to_string();
    let rel = text.split_once("/pristine/").map(|(_, r)| format!("/{r}"));
    let hits: Vec<_> = report
        .findings
        .iter()
        .filter(|f| match &rel {
            Some(r) => f.location.ends_with(r.as_str()),
            None => f.location == text,
        })
        .collect();
    assert_eq!(hits.len(), 1, "{text} reported once:\n{}", report.render());
    hits[0].problem.clone()
}

fn invalid_lines(report: &Report) -> Vec<String> {
    report
        .render()
        .lines()
        .filter(|l| l.contains("INVALID:"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_reports_every_kind_of_tampering_precisely() {
    let f = fixture().await;
    let digests = files_under(&f.pristine, "CFLogs-Digest", ".json.gz");
    let logs = files_under(&f.pristine, "CFLogs", ".json.gz");
    assert_eq!(digests.len(), RUNS, "one digest per run: {digests:?}");
    assert!(logs.len() >= 2 * RUNS, "several files per run: {logs:?}");

    // The chain as written: a starting digest, then links with the
    // previous digest's hash and signature.
    let parsed: Vec<DigestFile> = digests
        .iter()
        .map(|d| serde_json::from_slice(&gunzip(d)).unwrap())
        .collect();
    assert_eq!(parsed[0].previous_digest_signature, None);
    assert_eq!(parsed[0].previous_digest_s3_object, None);
    for w in parsed.windows(2) {
        assert_eq!(
            w[1].previous_digest_s3_object.as_deref(),
            Some(w[0].digest_s3_object.as_str())
        );
        assert_eq!(
            w[1].previous_digest_hash_algorithm.as_deref(),
            Some("SHA-256")
        );
    }
    let listed: usize = parsed.iter().map(|d| d.log_files.len()).sum();
    assert_eq!(listed, logs.len(), "every log file in exactly one digest");
    assert_eq!(parsed[1].digest_signature_algorithm, "Ed25519");
    assert_eq!(
        parsed[1].digest_public_key_fingerprint,
        f.public.fingerprint()
    );
    assert_eq!(parsed[1].digest_s3_bucket, "local");

    // Untouched: everything valid.
    let report = check(&f.pristine, &f.public).await;
    assert!(report.ok(), "{}", report.render());
    assert_eq!(
        report.summary(),
        format!(
            "Results: {RUNS}/{RUNS} digest files valid, 0/{RUNS} digest files INVALID; {n}/{n} log files valid, 0/{n} log files INVALID; {gaps} declared gaps",
            n = logs.len(),
            gaps = RUNS - 1
        )
    );

    let rel = |p: &Path| p.strip_prefix(&f.pristine).unwrap().to_path_buf();

    // 1. One byte of a log file's content changed.
    let dir = f.copy("changed");
    let victim = dir.join(rel(&logs[1]));
    let mut plain = gunzip(&victim);
    let at = plain.len() / 2;
    plain[at] ^= 0x01;
    gzip_to(&victim, &plain);
    let report = check(&dir, &f.public).await;
    assert_eq!(
        problem_of(&report, &victim).as_deref(),
        Some("hash value doesn't match (changed)")
    );
    assert_eq!(invalid_lines(&report).len(), 1, "{}", report.render());

    // 2. A log file deleted.
    let dir = f.copy("deleted-log");
    let victim = dir.join(rel(&logs[0]));
    std::fs::remove_file(&victim).unwrap();
    let report = check(&dir, &f.public).await;
    assert_eq!(problem_of(&report, &victim).as_deref(), Some("not found"));
    assert_eq!(invalid_lines(&report).len(), 1, "{}", report.render());

    // 3. The middle digest deleted: the newest names it as missing; the
    // walk resumes with the oldest, which is still valid.
    let dir = f.copy("deleted-digest");
    let victim = dir.join(rel(&digests[1]));
    std::fs::remove_file(&victim).unwrap();
    let report = check(&dir, &f.public).await;
    let p = problem_of(&report, &victim).unwrap();
    assert!(
        p.starts_with("not found (named as previous digest by ")
            && p.ends_with(&format!(
                "{})",
                digests[2].file_name().unwrap().to_string_lossy()
            )),
        "{p}"
    );
    assert_eq!(problem_of(&report, &digests[0]), None);
    assert_eq!(problem_of(&report, &digests[2]), None);
    // Its log files are now in no digest: each is reported (invalid where
    // the neighbours' periods cover its minute, else unverified).
    let orphans: Vec<String> = parsed[1]
        .log_files
        .iter()
        .map(|l| {
            format!(
                "{}/{}",
                dir.display(),
                serde_json::to_value(l).unwrap()["s3Object"]
                    .as_str()
                    .unwrap()
            )
        })
        .collect();
    assert!(!orphans.is_empty());
    for orphan in &orphans {
        let finding = report
            .findings
            .iter()
            .find(|f| &f.location == orphan)
            .unwrap();
        let said = finding
            .problem
            .as_ref()
            .or(finding.unverified.as_ref())
            .unwrap();
        assert!(said.starts_with("not listed in any digest"), "{said}");
    }
    let digest_lines = invalid_lines(&report)
        .into_iter()
        .filter(|l| l.starts_with("Digest file"))
        .count();
    assert_eq!(digest_lines, 1, "{}", report.render());
    assert!(!report.ok());

    // 4. A log file moved: missing where its digest says it is.
    let dir = f.copy("moved-log");
    let victim = dir.join(rel(&logs[2]));
    let moved_to = victim.with_file_name("elsewhere.json.gz");
    std::fs::rename(&victim, &moved_to).unwrap();
    let report = check(&dir, &f.public).await;
    assert_eq!(problem_of(&report, &victim).as_deref(), Some("not found"));

    // 5. A digest moved (with its signature): moved from its original
    // location, and missing where the next digest links to it.
    let dir = f.copy("moved-digest");
    let original = dir.join(rel(&digests[1]));
    let moved = original.with_file_name(format!(
        "moved_{}",
        original.file_name().unwrap().to_string_lossy()
    ));
    std::fs::rename(&original, &moved).unwrap();
    std::fs::rename(
        format!("{}.sig", original.display()),
        format!("{}.sig", moved.display()),
    )
    .unwrap();
    let report = check(&dir, &f.public).await;
    assert!(
        problem_of(&report, &original)
            .unwrap()
            .starts_with("not found (named as previous digest by "),
        "{}",
        report.render()
    );

    // 6. Re-signed with another key: a digest's content changed (a log file
    // dropped from it) and signed again by an attacker's key of the same
    // type, fingerprint field copied so it still names ours.
    let dir = f.copy("re-signed");
    let victim = dir.join(rel(&digests[2]));
    let mut d: DigestFile = serde_json::from_slice(&gunzip(&victim)).unwrap();
    d.log_files.pop();
    let plain = serde_json::to_vec(&d).unwrap();
    gzip_to(&victim, &plain);
    let other = SigningKey::generate(Algorithm::Ed25519);
    let signed = string_to_sign(
        &d.digest_end_time,
        &d.digest_s3_bucket,
        &d.digest_s3_object,
        &sha256_hex(&plain),
        d.previous_digest_signature.as_deref(),
    );
    let sidecar = SignatureSidecar {
        signature: hex::encode(other.sign(signed.as_bytes())),
        signature_algorithm: "Ed25519".into(),
    };
    std::fs::write(
        format!("{}.sig", victim.display()),
        serde_json::to_vec(&sidecar).unwrap(),
    )
    .unwrap();
    let report = check(&dir, &f.public).await;
    assert_eq!(
        problem_of(&report, &victim).as_deref(),
        Some("signature verification failed")
    );
    // And the whole archive checked against the attacker's public key: no digest is theirs.
    let report = check(&f.pristine, &other.public_key()).await;
    assert_eq!(invalid_lines(&report).len(), RUNS, "{}", report.render());
    assert!(
        problem_of(&report, &digests[0])
            .unwrap()
            .starts_with("public key not found: signed by the key with fingerprint "),
    );

    // 7. Reordered: two digests swap places (with their signatures).
    let dir = f.copy("reordered");
    let (a, b) = (dir.join(rel(&digests[0])), dir.join(rel(&digests[1])));
    let tmp = a.with_extension("swap");
    for (x, y) in [(&a, &tmp), (&b, &a), (&tmp, &b)] {
        std::fs::rename(x, y).unwrap();
        std::fs::rename(
            format!("{}.sig", x.display()),
            format!("{}.sig", y.display()),
        )
        .unwrap();
    }
    let report = check(&dir, &f.public).await;
    // The newest digest links to b's place, which now holds a's content.
    let p = problem_of(&report, &b).unwrap();
    assert!(
        p.starts_with("has been moved from its original location local/")
            && p.contains("hash value doesn't match the previousDigestHashValue of "),
        "{p}"
    );
    assert_eq!(
        problem_of(&report, &a).as_deref(),
        Some("not in the chain: no later digest links to it")
    );
    assert_eq!(problem_of(&report, &digests[2]), None);
}

#[test]
fn keygen_and_validate_through_the_binary_exit_0_then_1() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::nozzle()
        .args(["keygen", "--out"])
        .arg(tmp.path().join("keys"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let private = std::fs::read_to_string(tmp.path().join("keys/signing-key.pem")).unwrap();
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("keys/signing-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key = Arc::new(SigningKey::from_pem(&private, "test").unwrap());
    let archive = tmp.path().join("archive");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(build_archive(&archive, &key));
    let validate = || {
        common::nozzle()
            .args(["validate", "--dir"])
            .arg(&archive)
            .arg("--public-key")
            .arg(tmp.path().join("keys/public-key.pem"))
            .output()
            .unwrap()
    };
    let out = validate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("Results: {RUNS}/{RUNS} digest files valid")),
        "{stdout}"
    );
    let log = files_under(&archive, "CFLogs", ".json.gz")[0].clone();
    std::fs::remove_file(&log).unwrap();
    let out = validate();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("Log file {} INVALID: not found", log.display())),
        "{stdout}"
    );

    // --json: the same facts as one document, the same exit status.
    let out = common::nozzle()
        .args(["validate", "--json", "--dir"])
        .arg(&archive)
        .arg("--public-key")
        .arg(tmp.path().join("keys/public-key.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["valid"], false);
    let files = doc["files"].as_array().unwrap();
    let logs = files_under(&archive, "CFLogs", ".json.gz").len() + 1;
    assert_eq!(files.len(), RUNS + logs, "{doc:#}");
    let bad: Vec<_> = files.iter().filter(|f| f["status"] != "valid").collect();
    assert_eq!(
        bad,
        [
            &serde_json::json!({"type": "log", "location": log.display().to_string(), "status": "invalid", "problem": "not found"})
        ]
    );
    assert_eq!(
        doc["summary"],
        serde_json::json!({
            "digestFiles": {"valid": RUNS, "invalid": 0, "unverified": 0},
            "logFiles": {"valid": logs - 1, "invalid": 1, "unverified": 0},
            "declaredGaps": RUNS - 1,
            "undeclaredGaps": 0,
        })
    );
    let gaps = doc["declaredGaps"].as_array().unwrap();
    assert_eq!(gaps.len(), RUNS - 1);
    assert_eq!(gaps[0]["foundation"], "test");
    assert_eq!(gaps[0]["instanceIndex"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_without_log_files_still_gets_a_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let key = Arc::new(SigningKey::generate(Algorithm::Sha256WithRsa));
    let p = Pipeline::start(&pipeline(tmp.path(), &key)).expect("start");
    let summary = p.finish(Duration::from_secs(20)).await;
    assert!(summary.complete);
    let digests = files_under(tmp.path(), "CFLogs-Digest", ".json.gz");
    assert_eq!(digests.len(), 1);
    let d: DigestFile = serde_json::from_slice(&gunzip(&digests[0])).unwrap();
    assert_eq!(d.log_files, []);
    assert_eq!((d.newest_event_time, d.oldest_event_time), (None, None));
    assert_eq!(d.digest_signature_algorithm, "SHA256withRSA");
    let report = check(tmp.path(), &key.public_key()).await;
    assert!(report.ok(), "{}", report.render());
    assert_eq!(
        report.summary(),
        "Results: 1/1 digest files valid, 0/1 digest files INVALID; 0/0 log files valid, 0/0 log files INVALID"
    );
}

/// A digest's times, read from its JSON.
fn digest_times(path: &Path) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    let v: serde_json::Value = serde_json::from_slice(&gunzip(path)).unwrap();
    let t = |f: &str| v[f].as_str().unwrap().parse().unwrap();
    (t("digestStartTime"), t("digestEndTime"))
}

/// A forged log file of this archive's chain (foundation `test`, instance
/// 7), named as the nozzle names them, dated `at`: a valid gzip of
/// `{"Records":[]}`.
fn forge_log(
    dir: &Path,
    folder: &str,
    name_head: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> PathBuf {
    let path = dir.join(format!(
        "CFLogs/{folder}/{}/{name_head}_{}_7_ForgedForgedForg.json.gz",
        at.format("%Y/%m/%d"),
        at.format("%Y%m%dT%H%MZ")
    ));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    gzip_to(&path, br#"{"Records":[]}"#);
    path
}

const ADDED: &str = "not listed in any digest, but dated in a period the digests cover (added, copied or moved here)";

/// Issue 21's tamper cases beyond the first suite: a log file added in the
/// first and last minute and the middle of the covered time, copied in from
/// another kind or foundation, truncated to a valid shorter gzip, grown by an
/// appended gzip member, and a digest replaced by one another key signed
/// (its public key published in the bucket beside ours). Each is reported,
/// named, and makes the report fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_forged_file_passes() {
    let f = fixture().await;
    let digests = files_under(&f.pristine, "CFLogs-Digest", ".json.gz");
    let logs = files_under(&f.pristine, "CFLogs", ".json.gz");
    let rel = |p: &Path| p.strip_prefix(&f.pristine).unwrap().to_path_buf();
    let (first_start, _) = digest_times(&digests[0]);
    let (middle_start, middle_end) = digest_times(&digests[1]);
    let (_, last_end) = digest_times(&digests[RUNS - 1]);
    let middle = middle_start + (middle_end - middle_start) / 2;

    for (case, at) in [
        ("first-minute", first_start),
        ("last-minute", last_end),
        ("middle", middle),
    ] {
        let dir = f.copy(case);
        let added = forge_log(&dir, "test/app_log", "test_app_log", at);
        let report = check(&dir, &f.public).await;
        assert_eq!(
            problem_of(&report, &added).as_deref(),
            Some(ADDED),
            "{case}"
        );
        assert_eq!(
            invalid_lines(&report).len(),
            1,
            "{case}: {}",
            report.render()
        );
        assert!(!report.ok(), "{case}");
    }

    // Copied in from another kind's folder, and from another foundation.
    let dir = f.copy("other-kind");
    let name = logs[0].file_name().unwrap().to_string_lossy().to_string();
    let copied = dir
        .join(
            rel(logs[0].parent().unwrap())
                .to_string_lossy()
                .replace("/app_log/", "/api/"),
        )
        .join(&name);
    std::fs::create_dir_all(copied.parent().unwrap()).unwrap();
    std::fs::copy(&logs[0], &copied).unwrap();
    let report = check(&dir, &f.public).await;
    assert_eq!(
        problem_of(&report, &copied).as_deref(),
        Some(
            "its name is of \"test_app_log\", not of the folder it is in (test/api): copied or moved in from another kind or foundation"
        )
    );
    assert_eq!(invalid_lines(&report).len(), 1, "{}", report.render());
    let dir = f.copy("other-foundation");
    let copied = forge_log(&dir, "test/app_log", "other_app_log", middle);
    let report = check(&dir, &f.public).await;
    assert_eq!(
        problem_of(&report, &copied).as_deref(),
        Some(
            "its name is of \"other_app_log\", not of the folder it is in (test/app_log): copied or moved in from another kind or foundation"
        )
    );
    assert!(!report.ok());

    // Truncated to a shorter file that is still valid gzip (and JSON).
    let dir = f.copy("truncated");
    let victim = dir.join(rel(&logs[1]));
    let plain = gunzip(&victim);
    let cut = plain.iter().position(|&b| b == b'}').unwrap() + 1;
    let mut shorter = plain[..cut].to_vec();
    shorter.extend_from_slice(b"]}");
    gzip_to(&victim, &shorter);
    let report = check(&dir, &f.public).await;
    assert_eq!(
        problem_of(&report, &victim).as_deref(),
        Some("hash value doesn't match (changed)")
    );
    assert_eq!(invalid_lines(&report).len(), 1, "{}", report.render());

    // A gzip member appended: `gzip -d` reads it as more content.
    let dir = f.copy("appended");
    let victim = dir.join(rel(&logs[2]));
    let mut body = std::fs::read(&victim).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"Records":[{"forged":true}]}"#).unwrap();
    body.extend_from_slice(&gz.finish().unwrap());
    std::fs::write(&victim, body).unwrap();
    let report = check(&dir, &f.public).await;
    assert_eq!(
        problem_of(&report, &victim).as_deref(),
        Some("hash value doesn't match (changed)")
    );
    assert_eq!(invalid_lines(&report).len(), 1, "{}", report.render());

    // A digest replaced by one another key signed, naming that key's
    // fingerprint, and that key published beside ours: still not ours.
    let dir = f.copy("other-key");
    let victim = dir.join(rel(&digests[1]));
    let mut d: DigestFile = serde_json::from_slice(&gunzip(&victim)).unwrap();
    let other = SigningKey::generate(Algorithm::Ed25519);
    d.digest_public_key_fingerprint = other.public_key().fingerprint();
    let plain = serde_json::to_vec(&d).unwrap();
    gzip_to(&victim, &plain);
    let signed = string_to_sign(
        &d.digest_end_time,
        &d.digest_s3_bucket,
        &d.digest_s3_object,
        &sha256_hex(&plain),
        d.previous_digest_signature.as_deref(),
    );
    let sidecar = SignatureSidecar {
        signature: hex::encode(other.sign(signed.as_bytes())),
        signature_algorithm: "Ed25519".into(),
    };
    std::fs::write(
        format!("{}.sig", victim.display()),
        serde_json::to_vec(&sidecar).unwrap(),
    )
    .unwrap();
    let published = dir.join(format!(
        "CFLogs-Digest/test/public-keys/{}.pem",
        other.public_key().fingerprint()
    ));
    std::fs::write(&published, other.public_key().to_pem()).unwrap();
    let report = check(&dir, &f.public).await;
    let p = problem_of(&report, &victim).unwrap();
    assert!(
        p.starts_with(&format!(
            "public key not found: signed by the key with fingerprint {}, which is not among the given public keys ({})",
            other.public_key().fingerprint(),
            f.public.fingerprint()
        )) && p.contains("hash value doesn't match the previousDigestHashValue of "),
        "{p}"
    );
    assert!(!report.ok());
}

/// Key rotation: two runs signed with one key, the third with a new one;
/// each key is published under its fingerprint, the chain runs on across
/// the change, and the digests of the older key stay valid while it is
/// given to validate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_of_a_rotated_key_stay_valid_with_its_public_key() {
    let tmp = tempfile::tempdir().unwrap();
    let old = Arc::new(SigningKey::generate(Algorithm::Ed25519));
    let new = Arc::new(SigningKey::generate(Algorithm::Sha256WithRsa));
    build_archive_with(tmp.path(), &[&old, &old, &new]).await;
    for key in [&old, &new] {
        let public = key.public_key();
        let published = tmp.path().join(format!(
            "CFLogs-Digest/test/public-keys/{}.pem",
            public.fingerprint()
        ));
        assert_eq!(
            std::fs::read_to_string(&published).unwrap(),
            public.to_pem()
        );
    }
    let archive = Archive::local(tmp.path(), "").unwrap();
    let both = [old.public_key(), new.public_key()];
    let report = validate(&archive, &both, None, chrono::Utc::now())
        .await
        .unwrap();
    assert!(report.ok(), "{}", report.render());
    assert!(
        report
            .summary()
            .starts_with("Results: 3/3 digest files valid"),
        "{}",
        report.summary()
    );
    // The new key alone: the older key's two digests are not verifiable.
    let report = validate(&archive, &both[1..], None, chrono::Utc::now())
        .await
        .unwrap();
    let lines = invalid_lines(&report);
    assert_eq!(lines.len(), 2, "{}", report.render());
    assert!(lines.iter().all(|l| l.contains(&format!(
        "INVALID: public key not found: signed by the key with fingerprint {}",
        old.public_key().fingerprint()
    ))));
}

//! Write-once retention (AU-11): with `--s3-object-lock-mode` and
//! `--s3-object-lock-days`, every object of the trail (log files, digests,
//! the public key) is written with S3 Object Lock retention, against moto
//! (SigV4 checked) with a bucket that has Object Lock enabled: the server
//! reports each object's mode and retain-until date, and refuses to delete
//! a locked version. `config check` asks the bucket and says when it has no
//! Object Lock; the two options go together.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::integrity::{Algorithm, SigningKey};
use cf_audit_nozzle::pipeline::Pipeline;
use cf_audit_nozzle::record::{EncodeContext, Kind};
use cf_audit_nozzle::sink::BatchConfig;
use cf_audit_nozzle::sink::archive::digest::DigestSettings;
use cf_audit_nozzle::sink::archive::s3::{LockMode, ObjectLock, S3Config, http_client, s3_archive};
use cf_audit_nozzle::sink::archive::{Archive, ObjectSinkConfig, RollConfig, Target};
use chrono::{DateTime, Utc};
use common::moto::{self, Moto};
use serde_json::json;

/// A source `config check` accepts without files or a network.
const GATEWAY: [&str; 10] = [
    "--source",
    "gateway",
    "--gateway-url",
    "https://gateway.example",
    "--uaa-url",
    "https://uaa.example",
    "--uaa-client-id",
    "nozzle",
    "--uaa-client-secret",
    "not-a-secret",
];

fn archive(cfg: &S3Config) -> Archive {
    s3_archive(cfg, &http_client(None).unwrap()).unwrap()
}

/// Settings for a new `bucket` (Object Lock enabled at creation when
/// `object_lock`), the trail written with `lock`.
fn bucket(m: &Moto, bucket: &str, object_lock: bool, lock: Option<ObjectLock>) -> S3Config {
    m.call(json!({"op": "create_bucket", "bucket": bucket, "object_lock": object_lock}));
    S3Config {
        object_lock: lock,
        ..m.config(bucket)
    }
}

/// Every version under `prefix`: (key, version id).
fn versions(m: &Moto, bucket: &str, prefix: &str) -> Vec<(String, String)> {
    let v = m.call(json!({"op": "versions", "bucket": bucket, "prefix": prefix}));
    v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("key"), s("version"))
        })
        .collect()
}

fn date(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("a date, not {v}")))
        .unwrap()
        .to_utc()
}

/// Asserts that `key` (version `version`) is retained in `mode` until
/// `days` days after a moment between `before` and `after` (S3 keeps whole
/// seconds), as HEAD of that version reports it (moto 5.2.5 has no
/// GetObjectRetention).
#[allow(clippy::too_many_arguments)]
fn assert_retained(
    m: &Moto,
    bucket: &str,
    key: &str,
    version: &str,
    mode: &str,
    days: i64,
    before: DateTime<Utc>,
    after: DateTime<Utc>,
) {
    let head = m.call(json!({"op": "head", "bucket": bucket, "key": key, "version": version}));
    assert_eq!(head["VersionId"], version, "{key}: {head}");
    assert_eq!(head["ObjectLockMode"], mode, "{key}: {head}");
    let until = date(&head["ObjectLockRetainUntilDate"]);
    let earliest = before + chrono::Duration::days(days) - chrono::Duration::seconds(1);
    let latest = after + chrono::Duration::days(days);
    assert!(
        earliest <= until && until <= latest,
        "{key}: retained until {until}, expected {days} days after the PUT ({before} to {after})"
    );
}

/// Deletes `key`'s `version`; the server's refusal code, or `None` if it
/// deleted it.
fn delete_version(
    m: &Moto,
    bucket: &str,
    key: &str,
    version: &str,
    bypass: bool,
) -> Option<String> {
    let v = m.call(json!({"op": "delete_version", "bucket": bucket, "key": key,
                          "version": version, "bypass_governance": bypass}));
    match v["deleted"].as_bool().unwrap() {
        true => None,
        false => Some(format!(
            "{}: {}",
            v["code"].as_str().unwrap(),
            v["message"].as_str().unwrap()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_file_digest_and_key_is_retained_and_no_locked_version_can_be_deleted() {
    let m = moto::moto();
    let lock = ObjectLock {
        mode: LockMode::Compliance,
        days: 30,
    };
    let cfg = bucket(m, "locked-trail", true, Some(lock));
    let key = Arc::new(SigningKey::generate(Algorithm::Ed25519));
    let before = Utc::now();
    let pipeline = Pipeline::start(&PipelineConfig {
        sinks: vec![(
            SinkConfig::Object(Box::new(ObjectSinkConfig {
                target: Target::S3(cfg.clone()),
                roll: RollConfig {
                    roll_interval: Duration::from_secs(3600),
                    roll_bytes: 4096,
                    instance_index: 0,
                    gzip_level: 1,
                },
                digest: Some(DigestSettings {
                    key: Arc::clone(&key),
                    interval: Duration::from_secs(3600),
                }),
                notify_url: None,
            })),
            vec![Kind::AppLog],
        )],
        queue_capacity: 10_000,
        queue_max_bytes: u64::MAX,
        batch: BatchConfig {
            max_records: Some(1000),
            max_age: Duration::from_millis(20),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(300),
            dead_letter: None,
            ..BatchConfig::default()
        },
        encode: EncodeContext::new(common::FOUNDATION),
        decode_only: false,
        buffer: None,
        instance_index: 0,
    })
    .unwrap();
    let envelopes = (0..60)
        .map(|i| common::log_envelope(1_700_000_000_000_000_000 + i, "app", i.to_string(), &[]))
        .collect();
    pipeline.router().dispatch(envelopes);
    let summary = pipeline.finish(Duration::from_secs(30)).await;
    let after = Utc::now();
    assert!(summary.complete, "{summary:?}");
    let by_name = |n: &str| summary.sinks.iter().find(|s| s.stats.name == n).unwrap();
    // 60 records and the declaration of the last number at shutdown.
    assert_eq!(by_name("s3:app_log").stats.delivered, 60 + 1);
    assert_eq!(by_name("s3:digest").stats.delivered, 1);

    let all = versions(m, "locked-trail", "audit/");
    let count = |part: &str| all.iter().filter(|(k, _)| k.contains(part)).count();
    let public_key = format!(
        "audit/CFLogs-Digest/test/public-keys/{}.pem",
        key.public_key().fingerprint()
    );
    assert!(count("/CFLogs/") >= 3, "{all:?}");
    assert_eq!(count("/test_CFLogs-Digest_0_"), 1, "{all:?}");
    assert_eq!(count(&public_key), 1, "{all:?}");
    assert_eq!(
        count("/CFLogs/") + 2,
        all.len(),
        "nothing but logs, one digest and the key: {all:?}"
    );
    for (key, version) in &all {
        assert_retained(
            m,
            "locked-trail",
            key,
            version,
            "COMPLIANCE",
            30,
            before,
            after,
        );
        // The SSE headers still go with the signed PUT.
        assert_eq!(
            m.head("locked-trail", key)["ServerSideEncryption"],
            "AES256"
        );
        assert_eq!(
            delete_version(m, "locked-trail", key, version, true).as_deref(),
            Some("AccessDenied: Access Denied"),
            "{key} version {version} must stay"
        );
    }
    assert_eq!(versions(m, "locked-trail", "audit/"), all);

    // The chain written with retention validates like any other.
    let archive = archive(&cfg);
    let report =
        cf_audit_nozzle::validate::validate(&archive, &[key.public_key()], None, Utc::now())
            .await
            .unwrap();
    assert!(report.ok(), "{}", report.render());
    assert_eq!(
        report.summary(),
        format!(
            "Results: 1/1 digest files valid, 0/1 digest files INVALID; {n}/{n} log files valid, 0/{n} log files INVALID",
            n = count("/CFLogs/")
        )
    );

    // The audit cursor is state, rewritten in place: no retention.
    archive
        .put_cursor(
            "test",
            "audit-events",
            Bytes::from_static(b"2026-12-03T00:00:00Z/g"),
        )
        .await
        .unwrap();
    let cursor = m.head("locked-trail", "audit/CFLogs-State/test/audit-events");
    assert_eq!(
        cursor["ObjectLockMode"],
        serde_json::Value::Null,
        "{cursor}"
    );
}

/// Governance retention, written with temporary credentials: deleting a
/// version needs the bypass permission and header; without them the server
/// refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_retention_with_a_session_token_refuses_a_delete_without_the_bypass() {
    let m = moto::moto();
    let lock = ObjectLock {
        mode: LockMode::Governance,
        days: 1,
    };
    // Temporary credentials: the session token goes with the signed PUT
    // (the server refuses their key without it).
    let (key_id, secret, token) = m.assume_role();
    let cfg = S3Config {
        access_key_id: Some(key_id),
        secret_access_key: Some(secret.into()),
        session_token: Some(token.into()),
        ..bucket(m, "governed", true, Some(lock))
    };
    let archive = archive(&cfg);
    let key = "audit/CFLogs/test/app_log/2026/12/03/test_app_log_20261203T0000Z_0_x.json.gz";
    let before = Utc::now();
    archive
        .put_json_gz(&archive.logs, key, Bytes::from_static(b"gz"), &[])
        .await
        .unwrap();
    let after = Utc::now();
    let all = versions(m, "governed", "audit/");
    assert_eq!(all.len(), 1, "{all:?}");
    let version = &all[0].1;
    assert_retained(m, "governed", key, version, "GOVERNANCE", 1, before, after);
    assert_eq!(
        m.head("governed", key)["ContentEncoding"],
        "gzip",
        "the object's attributes go with the signed PUT"
    );
    assert_eq!(
        delete_version(m, "governed", key, version, false).as_deref(),
        Some("AccessDenied: Access Denied")
    );
    assert_eq!(delete_version(m, "governed", key, version, true), None);
    assert_eq!(versions(m, "governed", "audit/"), []);
}

/// With retention asked for and a bucket without Object Lock, the PUT is
/// refused with S3's own words, and the sink keeps the file (a retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_without_object_lock_refuses_the_put_in_words() {
    let m = moto::moto();
    let lock = ObjectLock {
        mode: LockMode::Compliance,
        days: 1,
    };
    let cfg = bucket(m, "unlocked", false, Some(lock));
    let archive = archive(&cfg);
    let error = archive
        .put_json_gz(
            &archive.logs,
            "audit/CFLogs/x.json.gz",
            Bytes::from_static(b"gz"),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "PUT s3://unlocked/audit/CFLogs/x.json.gz: Generic S3 error: S3 refused the PUT with Object Lock: 400 Bad Request, InvalidRequest: Bucket is missing ObjectLockConfiguration"
        )
    );
    assert!(!error.not_found);
    assert_eq!(m.list("unlocked", "audit/"), Vec::<String>::new());
}

/// `config check` with the options set asks the bucket: no Object Lock is an
/// error naming the option (exit 2), Object Lock says how objects are kept.
#[test]
fn config_check_says_when_the_bucket_has_no_object_lock() {
    let m = moto::moto();
    m.call(json!({"op": "create_bucket", "bucket": "check-unlocked"}));
    m.call(json!({"op": "create_bucket", "bucket": "check-locked", "object_lock": true}));
    let check_at = |endpoint: &str, bucket: &str, extra: &[&str]| {
        let out = common::nozzle()
            .args(["config", "check", "--sink", "s3"])
            .args(GATEWAY)
            .args(["--s3-bucket", bucket, "--s3-path-style"])
            .args(["--s3-endpoint", endpoint])
            .args(["--s3-access-key-id", &m.key])
            .env("S3_SECRET_ACCESS_KEY", &m.secret)
            .args(extra)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let check = |bucket: &str, extra: &[&str]| check_at(&m.endpoint, bucket, extra);
    let lock = [
        "--s3-object-lock-mode",
        "compliance",
        "--s3-object-lock-days",
        "30",
    ];
    let (code, stdout, stderr) = check("check-unlocked", &lock);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(!stdout.contains("configuration is valid"), "{stdout}");
    assert!(
        stderr.contains(
            "  - --s3-object-lock-mode (S3_OBJECT_LOCK_MODE): bucket check-unlocked has no Object Lock, so S3 would refuse every PUT with retention; use a bucket with Object Lock enabled, or drop --s3-object-lock-mode and --s3-object-lock-days\n"
        ),
        "{stderr}"
    );
    assert!(
        !(stdout.clone() + &stderr).contains(&m.secret),
        "no secret shown"
    );

    let (code, stdout, stderr) = check("check-locked", &lock);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "s3 bucket check-locked: Object Lock is enabled; each log file, digest and public key is written COMPLIANCE for 30 days\n"
        ),
        "{stdout}"
    );
    assert!(stdout.ends_with("configuration is valid\n"), "{stdout}");

    // Without the options the bucket is not asked.
    let (code, stdout, stderr) = check("check-unlocked", &[]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains("Object Lock"), "{stdout}");

    // A bucket that cannot be reached is a warning, not a verdict.
    let (code, stdout, stderr) = check_at("http://127.0.0.1:9", "check-locked", &lock);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("warning: cannot ask bucket check-locked whether it has Object Lock ("),
        "{stdout}"
    );
}

/// The two options go together, and the days are a sensible count.
#[test]
fn the_lock_options_go_together() {
    let check = |extra: &[&str]| {
        let out = common::nozzle()
            .args(["config", "check", "--sink", "s3"])
            .args(GATEWAY)
            .args(["--s3-bucket", "b"])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let errors: Vec<String> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("  - "))
            .map(str::to_string)
            .collect();
        (out.status.code(), errors)
    };
    assert_eq!(
        check(&["--s3-object-lock-mode", "governance"]),
        (
            Some(2),
            vec!["--s3-object-lock-mode (S3_OBJECT_LOCK_MODE) needs --s3-object-lock-days (S3_OBJECT_LOCK_DAYS): how long each object is retained".to_string()]
        )
    );
    assert_eq!(
        check(&["--s3-object-lock-days", "30"]),
        (
            Some(2),
            vec!["--s3-object-lock-days (S3_OBJECT_LOCK_DAYS) needs --s3-object-lock-mode (S3_OBJECT_LOCK_MODE): governance or compliance".to_string()]
        )
    );
    assert_eq!(
        check(&[
            "--s3-object-lock-mode",
            "compliance",
            "--s3-object-lock-days",
            "0"
        ]),
        (
            Some(2),
            vec![
                "--s3-object-lock-days (S3_OBJECT_LOCK_DAYS) must be 1 to 36500, not 0".to_string()
            ]
        )
    );
}

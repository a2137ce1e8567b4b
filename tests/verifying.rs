//! The auditor's recipe of docs/verifying.md, run as written: the script is
//! taken from the page, the trail fetched from the S3 test server (moto)
//! by an S3 client (boto3), signatures checked with Debian's `openssl`. It
//! must agree with `validate` file by file, on a pristine chain (two runs,
//! an Ed25519 key then an RSA one: a rotation) and on a tampered one.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cf_audit_nozzle::config::{PipelineConfig, SinkConfig};
use cf_audit_nozzle::integrity::{Algorithm, PublicKey, SigningKey};
use cf_audit_nozzle::pipeline::Pipeline;
use cf_audit_nozzle::record::{EncodeContext, Kind};
use cf_audit_nozzle::sink::BatchConfig;
use cf_audit_nozzle::sink::archive::digest::DigestSettings;
use cf_audit_nozzle::sink::archive::s3::{S3Config, http_client, s3_archive};
use cf_audit_nozzle::sink::archive::{Archive, ObjectSinkConfig, RollConfig, Target};
use cf_audit_nozzle::validate::{FileKind, Report, validate};
use common::moto;

const BUCKET: &str = "verifying";

/// The page's script: the ```bash block under "## The recipe as one script".
fn recipe_script() -> String {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/verifying.md")).unwrap();
    let section = page.split("## The recipe as one script").nth(1).unwrap();
    let block = section.split("```bash\n").nth(1).unwrap();
    block.split("\n```").next().unwrap().to_string()
}

async fn run_once(cfg: &S3Config, key: &Arc<SigningKey>, run: i64) {
    let pipeline = Pipeline::start(&PipelineConfig {
        sinks: vec![(
            SinkConfig::Object(Box::new(ObjectSinkConfig {
                target: Target::S3(cfg.clone()),
                roll: RollConfig {
                    roll_interval: Duration::from_secs(3600),
                    roll_bytes: 2048,
                    instance_index: 4,
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
        queue_capacity: 10_000,
        queue_max_bytes: u64::MAX,
        batch: BatchConfig::default(),
        encode: EncodeContext::new(common::FOUNDATION),
        decode_only: false,
        buffer: None,
        instance_index: 0,
    })
    .unwrap();
    let envelopes = (0..30)
        .map(|i| {
            common::log_envelope(
                1_700_000_000_000_000_000 + run * 1000 + i,
                "app",
                format!("run {run} line {i}"),
                &[],
            )
        })
        .collect();
    pipeline.router().dispatch(envelopes);
    let summary = pipeline.finish(Duration::from_secs(30)).await;
    assert!(summary.complete, "{summary:?}");
}

/// What the recipe said: exit code and the (kind, key) of each file it
/// found invalid, and of each file it found valid.
struct Verdict {
    code: i32,
    invalid: BTreeSet<(FileKind, String)>,
    valid: BTreeSet<(FileKind, String)>,
    output: String,
}

fn run_recipe(dir: &Path, keys: &[&Path]) -> Verdict {
    let m = moto::moto();
    let trail = dir.join("trail");
    m.call(
        serde_json::json!({"op": "download", "bucket": BUCKET, "prefix": "audit/", "dir": trail}),
    );
    let script = dir.join("verify-trail.sh");
    std::fs::write(&script, recipe_script()).unwrap();
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&trail)
        .arg(BUCKET)
        .args(keys)
        .output()
        .expect("bash runs the recipe");
    let output = String::from_utf8_lossy(&out.stdout).to_string();
    let (mut invalid, mut valid) = (BTreeSet::new(), BTreeSet::new());
    for line in output.lines() {
        let (kind, rest) = if let Some(r) = line.strip_prefix("Digest file ") {
            (FileKind::Digest, r)
        } else if let Some(r) = line.strip_prefix("Log file ") {
            (FileKind::Log, r)
        } else {
            panic!("unexpected line {line:?}: {output}");
        };
        let (key, verdict) = rest.split_once(' ').unwrap();
        if verdict == "valid" {
            valid.insert((kind, key.to_string()));
        } else {
            assert!(verdict.starts_with("INVALID: "), "{line}");
            invalid.insert((kind, key.to_string()));
        }
    }
    Verdict {
        code: out.status.code().unwrap(),
        invalid,
        valid,
        output: output + &String::from_utf8_lossy(&out.stderr),
    }
}

/// `validate`'s findings as (kind, key) sets: invalid, valid.
type Files = BTreeSet<(FileKind, String)>;

fn by_key(report: &Report) -> (Files, Files) {
    let key = |l: &str| {
        l.strip_prefix(&format!("s3://{BUCKET}/"))
            .unwrap()
            .to_string()
    };
    let (mut invalid, mut valid) = (BTreeSet::new(), BTreeSet::new());
    for f in &report.findings {
        match (&f.problem, &f.unverified) {
            (Some(_), _) => invalid.insert((f.kind, key(&f.location))),
            (None, None) => valid.insert((f.kind, key(&f.location))),
            (None, Some(u)) => panic!("unverified {}: {u}", f.location),
        };
    }
    (invalid, valid)
}

fn write_pem(dir: &Path, name: &str, key: &PublicKey) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, key.to_pem()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openssl_recipe_agrees_with_validate_on_a_pristine_and_a_tampered_chain() {
    let m = moto::moto();
    let cfg = m.bucket(BUCKET);
    let archive: Archive = s3_archive(&cfg, &http_client(None).unwrap()).unwrap();
    let ed = Arc::new(SigningKey::generate(Algorithm::Ed25519));
    let rsa = Arc::new(SigningKey::generate(Algorithm::Sha256WithRsa));
    run_once(&cfg, &ed, 0).await;
    run_once(&cfg, &rsa, 1).await;
    let publics = [ed.public_key(), rsa.public_key()];

    // Each key is published under its fingerprint, and is the key.
    for public in &publics {
        let fp = public.fingerprint();
        let key = format!("audit/CFLogs-Digest/test/public-keys/{fp}.pem");
        assert!(m.list(BUCKET, &key).contains(&key), "{key}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let ed_pem = write_pem(tmp.path(), "ed25519.pem", &publics[0]);
    let rsa_pem = write_pem(tmp.path(), "rsa.pem", &publics[1]);

    // Pristine: both say every file is valid, and name the same files.
    let recipe = run_recipe(&tmp.path().join("pristine"), &[&ed_pem, &rsa_pem]);
    let report = validate(&archive, &publics, None, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(recipe.code, 0, "{}", recipe.output);
    assert!(report.ok(), "{}", report.render());
    let (invalid, valid) = by_key(&report);
    assert_eq!(
        (&recipe.invalid, &recipe.valid),
        (&invalid, &valid),
        "{}",
        recipe.output
    );
    let digests = valid.iter().filter(|(k, _)| *k == FileKind::Digest).count();
    assert_eq!(digests, 2, "{}", recipe.output);
    assert!(valid.len() >= 2 + 4, "{}", recipe.output);

    // Tampered: one log file's content replaced (a valid gzip, other
    // records), and a forged file added. Both name the same two files.
    let logs = m.list(BUCKET, "audit/CFLogs/");
    let victim = logs[1].clone();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"Records":[]}"#).unwrap();
    let body = gz.finish().unwrap();
    m.call(serde_json::json!({"op": "put", "bucket": BUCKET, "key": victim, "body_hex": hex::encode(&body)}));
    let forged = victim.replace(".json.gz", "X.json.gz");
    m.call(serde_json::json!({"op": "put", "bucket": BUCKET, "key": forged, "body_hex": hex::encode(&body)}));
    let recipe = run_recipe(&tmp.path().join("tampered"), &[&ed_pem, &rsa_pem]);
    let report = validate(&archive, &publics, None, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(recipe.code, 1, "{}", recipe.output);
    assert!(!report.ok());
    let (invalid, valid) = by_key(&report);
    assert_eq!(
        invalid,
        BTreeSet::from([
            (FileKind::Log, victim.clone()),
            (FileKind::Log, forged.clone())
        ]),
        "{}",
        report.render()
    );
    assert_eq!(
        (&recipe.invalid, &recipe.valid),
        (&invalid, &valid),
        "{}",
        recipe.output
    );

    // Without the older key, both refuse the Ed25519 run's digest.
    let recipe = run_recipe(&tmp.path().join("one-key"), &[&rsa_pem]);
    assert_eq!(recipe.code, 1);
    assert!(
        recipe.output.contains(&format!(
            "signed by key {}, not a trusted one",
            publics[0].fingerprint()
        )),
        "{}",
        recipe.output
    );
}

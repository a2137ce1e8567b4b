//! The S3 sink's and the digest chain's options, the `keygen` and `validate`
//! commands' options, and how they become configurations; part of
//! [`crate::config`]. Credentials and bucket may also come from a service
//! binding in `VCAP_SERVICES` when the flags are not given.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::integrity::Algorithm;
use crate::redact::Secret;
use crate::sink::archive::{
    RollConfig,
    s3::{LockMode, ObjectLock, S3Config, Sse},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SseArg {
    /// SSE-S3.
    #[value(name = "aes256")]
    Aes256,
    /// SSE-KMS, with --s3-kms-key-id.
    #[value(name = "aws:kms")]
    Kms,
    /// No encryption header (a warning at start).
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum LockModeArg {
    /// Deleting a version before its date needs s3:BypassGovernanceRetention.
    Governance,
    /// Nobody can delete a version before its date, root included.
    Compliance,
}

/// The longest retention `--s3-object-lock-days` takes (100 years, as S3's
/// default retention).
const MAX_LOCK_DAYS: u32 = 36_500;

#[derive(Debug, Args)]
pub struct S3Args {
    /// S3 bucket of the s3 sink (or from an S3 binding in VCAP_SERVICES).
    #[arg(long, env = "S3_BUCKET")]
    pub(crate) s3_bucket: Option<String>,
    /// Key prefix inside the bucket (CFLogs/ and CFLogs-Digest/ go below it).
    #[arg(long, env = "S3_PREFIX", default_value = "")]
    pub(crate) s3_prefix: String,
    /// Region of the bucket.
    #[arg(long, env = "S3_REGION")]
    pub(crate) s3_region: Option<String>,
    /// Endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000 (AWS without it).
    #[arg(long, env = "S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// Path-style requests (endpoint/bucket/key), as most S3-compatible stores want.
    #[arg(long, env = "S3_PATH_STYLE")]
    pub(crate) s3_path_style: bool,
    /// Access key id (or from VCAP_SERVICES).
    #[arg(long, env = "S3_ACCESS_KEY_ID")]
    pub(crate) s3_access_key_id: Option<String>,
    /// Secret access key (or from VCAP_SERVICES).
    #[arg(long, env = "S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub(crate) s3_secret_access_key: Option<Secret>,
    /// Session token of temporary credentials (with --s3-access-key-id and --s3-secret-access-key); AWS_SESSION_TOKEN is read too.
    #[arg(long, env = "S3_SESSION_TOKEN", hide_env_values = true)]
    pub(crate) s3_session_token: Option<Secret>,
    /// Extra CA certificate(s) (PEM) trusted for --s3-endpoint and --notify-url, besides the Mozilla roots.
    #[arg(long, env = "S3_CA")]
    pub(crate) s3_ca: Option<PathBuf>,
    /// Server-side encryption of log files (digest files are always aes256).
    #[arg(long, env = "S3_SSE", value_enum, default_value_t = SseArg::Aes256)]
    pub(crate) s3_sse: SseArg,
    /// KMS key id for --s3-sse aws:kms (the bucket's default KMS key without it).
    #[arg(long, env = "S3_KMS_KEY_ID")]
    pub(crate) s3_kms_key_id: Option<String>,
    /// S3 Object Lock retention mode of every log file, digest and public key (with --s3-object-lock-days; the bucket must have Object Lock enabled).
    #[arg(long, env = "S3_OBJECT_LOCK_MODE", value_enum)]
    pub(crate) s3_object_lock_mode: Option<LockModeArg>,
    /// Days each object is retained (write-once) after it is written (with --s3-object-lock-mode).
    #[arg(long, env = "S3_OBJECT_LOCK_DAYS")]
    pub(crate) s3_object_lock_days: Option<u32>,
    /// Uncompressed bytes after which the s3 sink completes an object.
    #[arg(long, env = "ROLL_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub roll_bytes: u64,
    /// PKCS#8 PEM private key (file, or the PEM text) that signs digest files; no digests without it.
    #[arg(
        long,
        env = "SIGNING_KEY",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub(crate) signing_key: Option<Secret>,
    /// Seconds between digest files.
    #[arg(long, env = "DIGEST_INTERVAL", default_value_t = 3600)]
    pub(crate) digest_interval: u64,
    /// Webhook URL that gets {"s3Bucket":..,"s3ObjectKey":[..]} after each object and digest lands.
    #[arg(long, env = "NOTIFY_URL")]
    pub notify_url: Option<String>,
}

/// The S3 credentials a Cloud Foundry service binding provides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct VcapS3 {
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
}

/// The first service in `VCAP_SERVICES` (any label, user-provided included)
/// whose credentials name a bucket. Accepts the common spellings
/// (`bucket`/`bucket_name`, `access_key_id`/`aws_access_key_id`, ...).
pub(crate) fn vcap_s3(vcap_services: &str) -> Option<VcapS3> {
    let v: serde_json::Value = serde_json::from_str(vcap_services).ok()?;
    let services = v
        .as_object()?
        .values()
        .filter_map(|s| s.as_array())
        .flatten();
    for service in services {
        let Some(c) = service.get("credentials").and_then(|c| c.as_object()) else {
            continue;
        };
        let get = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| c.get(*n).and_then(|v| v.as_str()).map(str::to_string))
        };
        let bucket = get(&["bucket", "bucket_name", "s3_bucket"]);
        if bucket.is_none() {
            continue;
        }
        return Some(VcapS3 {
            bucket,
            region: get(&["region", "aws_region", "s3_region"]),
            endpoint: get(&["endpoint", "s3_endpoint", "host"]),
            access_key_id: get(&["access_key_id", "aws_access_key_id", "access_key"]),
            secret_access_key: get(&["secret_access_key", "aws_secret_access_key", "secret_key"])
                .map(Secret::from),
            session_token: get(&["session_token", "aws_session_token"]).map(Secret::from),
        });
    }
    None
}

impl S3Args {
    /// The bucket settings, completed from an S3 binding in `VCAP_SERVICES`
    /// where a flag is missing (and the session token from `AWS_SESSION_TOKEN`).
    /// With `--s3-ca` read into it.
    pub(crate) fn s3_config(
        &self,
        env: &dyn super::Env,
        errors: &mut Vec<String>,
    ) -> Option<S3Config> {
        let vcap = env.var("VCAP_SERVICES");
        let aws_session_token = env.var("AWS_SESSION_TOKEN");
        self.s3_config_with(vcap.as_deref(), aws_session_token.as_deref(), errors)
    }

    /// [`s3_config`](Self::s3_config) with `VCAP_SERVICES` and
    /// `AWS_SESSION_TOKEN` given.
    pub fn s3_config_with(
        &self,
        vcap: Option<&str>,
        aws_session_token: Option<&str>,
        errors: &mut Vec<String>,
    ) -> Option<S3Config> {
        let s3 = self.s3_settings(vcap, aws_session_token, errors)?;
        let ca_pem = self
            .s3_ca
            .as_deref()
            .and_then(|path| super::sink_files::read_s3_ca(path, errors));
        Some(S3Config { ca_pem, ..s3 })
    }

    /// The bucket settings as validated: `--s3-ca` is not read (its path is
    /// in the sink's [`SinkFiles`](super::sink_files::SinkFiles)).
    pub(crate) fn s3_settings(
        &self,
        vcap: Option<&str>,
        aws_session_token: Option<&str>,
        errors: &mut Vec<String>,
    ) -> Option<S3Config> {
        let bound = vcap.and_then(vcap_s3).unwrap_or_default();
        fn pick<T: Clone>(flag: &Option<T>, bound: &Option<T>) -> Option<T> {
            flag.clone().or(bound.clone())
        }
        let Some(bucket) = pick(&self.s3_bucket, &bound.bucket) else {
            errors.push(
                "--s3-bucket (S3_BUCKET) is required for --sink s3 (or an S3 service binding in VCAP_SERVICES)".into(),
            );
            return None;
        };
        let endpoint = pick(&self.s3_endpoint, &bound.endpoint).map(|e| {
            if e.contains("://") {
                e
            } else {
                format!("https://{e}")
            }
        });
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            errors.push(format!(
                "--s3-endpoint (S3_ENDPOINT) must be an http:// or https:// URL, not {e:?}"
            ));
        }
        let sse = match self.s3_sse {
            SseArg::Aes256 => Sse::Aes256,
            SseArg::Kms => Sse::Kms,
            SseArg::None => Sse::None,
        };
        if self.s3_kms_key_id.is_some() && sse != Sse::Kms {
            errors.push("--s3-kms-key-id (S3_KMS_KEY_ID) needs --s3-sse aws:kms".into());
        }
        let access_key_id = pick(&self.s3_access_key_id, &bound.access_key_id);
        let secret_access_key = pick(&self.s3_secret_access_key, &bound.secret_access_key);
        if access_key_id.is_some() != secret_access_key.is_some() {
            errors.push(
                "--s3-access-key-id and --s3-secret-access-key (S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY) go together".into(),
            );
        }
        let explicit_token =
            pick(&self.s3_session_token, &bound.session_token).filter(|t| !t.is_empty());
        if explicit_token.is_some() && access_key_id.is_none() {
            errors.push(
                "--s3-session-token (S3_SESSION_TOKEN) needs --s3-access-key-id and --s3-secret-access-key (temporary credentials come as the three)".into(),
            );
        }
        // AWS_SESSION_TOKEN belongs to the AWS_* keys of the environment; it
        // is used only with keys of our own and no token of our own.
        let session_token = explicit_token.or_else(|| {
            access_key_id.as_ref()?;
            aws_session_token
                .filter(|t| !t.is_empty())
                .map(Secret::from)
        });
        let object_lock = self.object_lock(errors);
        Some(S3Config {
            bucket,
            prefix: self.s3_prefix.trim_matches('/').to_string(),
            region: pick(&self.s3_region, &bound.region).unwrap_or_else(|| "us-east-1".into()),
            endpoint,
            path_style: self.s3_path_style,
            access_key_id,
            secret_access_key,
            session_token,
            sse,
            kms_key_id: self.s3_kms_key_id.clone(),
            // Read at build (`--s3-ca`).
            ca_pem: None,
            object_lock,
        })
    }

    /// `--s3-object-lock-mode` and `--s3-object-lock-days`, both or neither.
    fn object_lock(&self, errors: &mut Vec<String>) -> Option<ObjectLock> {
        let (mode, days) = match (self.s3_object_lock_mode, self.s3_object_lock_days) {
            (None, None) => return None,
            (Some(mode), Some(days)) => (mode, days),
            (Some(_), None) => {
                errors.push(
                    "--s3-object-lock-mode (S3_OBJECT_LOCK_MODE) needs --s3-object-lock-days (S3_OBJECT_LOCK_DAYS): how long each object is retained".into(),
                );
                return None;
            }
            (None, Some(_)) => {
                errors.push(
                    "--s3-object-lock-days (S3_OBJECT_LOCK_DAYS) needs --s3-object-lock-mode (S3_OBJECT_LOCK_MODE): governance or compliance".into(),
                );
                return None;
            }
        };
        let mode = match mode {
            LockModeArg::Governance => LockMode::Governance,
            LockModeArg::Compliance => LockMode::Compliance,
        };
        if !(1..=MAX_LOCK_DAYS).contains(&days) {
            errors.push(format!(
                "--s3-object-lock-days (S3_OBJECT_LOCK_DAYS) must be 1 to {MAX_LOCK_DAYS}, not {days}"
            ));
        }
        let days = u16::try_from(days.min(MAX_LOCK_DAYS)).expect("36500 fits");
        Some(ObjectLock { mode, days })
    }

    pub fn roll(
        &self,
        roll_interval: u64,
        instance_index: u32,
        gzip_level: u32,
        errors: &mut Vec<String>,
    ) -> RollConfig {
        if self.roll_bytes < 1024 {
            errors.push(format!(
                "--roll-bytes (ROLL_BYTES) must be at least 1024, not {}",
                self.roll_bytes
            ));
        }
        RollConfig {
            roll_interval: Duration::from_secs(roll_interval.max(1)),
            roll_bytes: self.roll_bytes,
            instance_index,
            gzip_level,
        }
    }

    /// The files an object sink reads at build: `--s3-ca` (for S3) and
    /// `--signing-key`, with `--digest-interval` checked.
    pub(crate) fn files(&self, s3: bool, errors: &mut Vec<String>) -> super::sink_files::SinkFiles {
        if self.digest_interval == 0 {
            errors.push("--digest-interval (DIGEST_INTERVAL) must be at least 1 second".into());
        }
        super::sink_files::SinkFiles::Object {
            s3_ca: self.s3_ca.clone().filter(|_| s3),
            signing_key: self.signing_key.clone(),
            digest_interval: Duration::from_secs(self.digest_interval.max(1)),
        }
    }

    pub fn notify_url(&self, errors: &mut Vec<String>) -> Option<String> {
        let url = self.notify_url.clone()?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            errors.push(format!(
                "--notify-url (NOTIFY_URL) must be an http:// or https:// URL, not {:?}",
                crate::redact::url(&url)
            ));
        }
        Some(url)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyAlgorithmArg {
    Ed25519,
    /// RSA (PKCS#1 v1.5 signatures with SHA-256), CloudTrail's algorithm.
    Rsa,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Folder to write signing-key.pem and public-key.pem into.
    #[arg(long, env = "KEYGEN_OUT")]
    pub out: PathBuf,
    /// Key type.
    #[arg(long, env = "KEYGEN_ALGORITHM", value_enum, default_value_t = KeyAlgorithmArg::Ed25519)]
    pub algorithm: KeyAlgorithmArg,
}

impl KeygenArgs {
    pub fn algorithm(&self) -> Algorithm {
        match self.algorithm {
            KeyAlgorithmArg::Ed25519 => Algorithm::Ed25519,
            KeyAlgorithmArg::Rsa => Algorithm::Sha256WithRsa,
        }
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// A local folder archive (the file sink's --out-dir) instead of a bucket.
    #[arg(long, env = "VALIDATE_DIR", conflicts_with = "s3_bucket")]
    pub dir: Option<PathBuf>,
    /// Public key (PEM) the digests must be signed with; repeat it (or separate paths with commas) for every key the chain was signed with since, e.g. before and after a key rotation. Keys published in the bucket are not trusted.
    #[arg(long, env = "PUBLIC_KEY", required = true, value_delimiter = ',')]
    pub public_key: Vec<PathBuf>,
    /// Check digests that end at or after this time (RFC 3339, e.g. 2026-11-27T00:00:00Z).
    #[arg(long, env = "VALIDATE_START")]
    pub start: Option<String>,
    /// Check digests that end at or before this time (RFC 3339); now without it.
    #[arg(long, env = "VALIDATE_END")]
    pub end: Option<String>,
    /// Print the report as one JSON document (every file, declared gaps, summary) instead of lines.
    #[arg(long, env = "VALIDATE_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_binding_in_vcap_services_supplies_bucket_and_credentials() {
        let vcap = r#"{"user-provided":[{"name":"siem","credentials":{"url":"x"}},
            {"name":"archive","credentials":{"bucket":"b1","region":"eu-west-1",
             "access_key_id":"AK","secret_access_key":"SK","endpoint":"s3.example"}}]}"#;
        assert_eq!(
            vcap_s3(vcap),
            Some(VcapS3 {
                bucket: Some("b1".into()),
                region: Some("eu-west-1".into()),
                endpoint: Some("s3.example".into()),
                access_key_id: Some("AK".into()),
                secret_access_key: Some("SK".into()),
                session_token: None,
            })
        );
        assert_eq!(vcap_s3(r#"{"p-mysql":[{"credentials":{}}]}"#), None);
        assert_eq!(vcap_s3("not json"), None);
    }
}

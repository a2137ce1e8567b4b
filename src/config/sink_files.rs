//! The files the sinks read (their TLS files, `--s3-ca`, `--signing-key`):
//! [`validate`](super::validate) keeps them as [`SinkFiles`] next to each
//! sink's settings, and [`build_pipeline`] reads them into the runtime
//! [`PipelineConfig`], every problem listed. Part of [`crate::config`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{PipelineConfig, SinkConfig};
use crate::redact::Secret;
use crate::sink::archive::Target;

/// A sink as validated: its configuration, whose TLS settings, `--s3-ca`
/// certificate and digest key are filled in from `files` by
/// [`build_pipeline`] (until then the TLS settings trust the Mozilla roots
/// with no client certificate, and there is no CA and no digest).
#[derive(Clone, Debug)]
pub struct SinkSettings {
    pub config: SinkConfig,
    pub files: SinkFiles,
}

impl AsRef<SinkConfig> for SinkSettings {
    fn as_ref(&self) -> &SinkConfig {
        &self.config
    }
}

impl AsRef<SinkConfig> for SinkConfig {
    fn as_ref(&self) -> &SinkConfig {
        self
    }
}

/// The files one sink reads at build.
#[derive(Clone, Debug)]
pub enum SinkFiles {
    None,
    /// The http sink's, or the syslog sink's over TLS.
    Tls(TlsFiles),
    /// An object sink's: `--s3-ca` (S3 only) and `--signing-key` (with
    /// `--digest-interval`).
    Object {
        s3_ca: Option<PathBuf>,
        signing_key: Option<Secret>,
        digest_interval: Duration,
    },
}

/// A sink's CA bundle, client certificate and key options, each
/// `(flag, path)`, and what they are called together.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub(crate) what: &'static str,
    pub(crate) ca: (&'static str, Option<PathBuf>),
    pub(crate) cert: (&'static str, Option<PathBuf>),
    pub(crate) key: (&'static str, Option<PathBuf>),
}

impl TlsFiles {
    /// The TLS client these files make, read and checked with every
    /// problem listed.
    pub(crate) fn read(&self, errors: &mut Vec<String>) -> Option<rustls::ClientConfig> {
        let before = errors.len();
        let mut read = |(flag, path): &(&'static str, Option<PathBuf>), expected| {
            path.as_deref().and_then(|p| {
                crate::tls::read_pem_file(flag, p, expected)
                    .map_err(|e| errors.push(e.to_string()))
                    .ok()
            })
        };
        let ca_pem = read(&self.ca, "CERTIFICATE");
        let cert_pem = read(&self.cert, "CERTIFICATE");
        let key_pem = read(&self.key, "PRIVATE KEY");
        if self.cert.1.is_some() != self.key.1.is_some() {
            errors.push(format!("{} and {} go together", self.cert.0, self.key.0));
        }
        if let (Some(cert_path), Some(key_path), Some(cert_pem), Some(key_pem)) =
            (&self.cert.1, &self.key.1, &cert_pem, &key_pem)
            && let Err(e) = crate::tls::check_identity(
                (cert_path, cert_pem),
                (key_path, key_pem),
                std::time::SystemTime::now(),
            )
        {
            errors.push(format!("{}: {e}", self.what));
        }
        if errors.len() > before {
            return None;
        }
        crate::tls::rustls_client_config(
            self.what,
            ca_pem.as_deref(),
            cert_pem.as_deref().zip(key_pem.as_deref()),
        )
        .map_err(|e| errors.push(e.to_string()))
        .ok()
    }
}

impl SinkFiles {
    /// Reads the files, adding problems to `errors` (for `config check`
    /// when the values are invalid and nothing can be built).
    pub(crate) fn check(&self, errors: &mut Vec<String>) {
        match self {
            SinkFiles::None => {}
            SinkFiles::Tls(files) => {
                files.read(errors);
            }
            SinkFiles::Object {
                s3_ca, signing_key, ..
            } => {
                if let Some(path) = s3_ca {
                    read_s3_ca(path, errors);
                }
                if let Some(key) = signing_key {
                    load_signing_key(key, errors);
                }
            }
        }
    }
}

/// `--s3-ca`, checked to make an HTTP client's trust store.
pub(crate) fn read_s3_ca(path: &std::path::Path, errors: &mut Vec<String>) -> Option<Vec<u8>> {
    crate::tls::read_pem_file("--s3-ca (S3_CA)", path, "CERTIFICATE")
        .map_err(|e| e.to_string())
        .and_then(|pem| {
            crate::http_client::rustls_config(Some(&pem))
                .map(|_| pem)
                .map_err(|e| format!("--s3-ca (S3_CA) {}: {e}", path.display()))
        })
        .map_err(|e| errors.push(e))
        .ok()
}

fn load_signing_key(
    source: &Secret,
    errors: &mut Vec<String>,
) -> Option<crate::integrity::SigningKey> {
    crate::integrity::SigningKey::load(source.expose())
        .map_err(|e| errors.push(format!("--signing-key (SIGNING_KEY): {e}")))
        .ok()
}

/// The runtime pipeline `validated` describes: every sink's files read
/// into its configuration, problems added to `errors` (a sink whose files
/// fail is left out).
pub fn build_pipeline(
    validated: &PipelineConfig<SinkSettings>,
    errors: &mut Vec<String>,
) -> PipelineConfig {
    let sinks = validated
        .sinks
        .iter()
        .filter_map(|(s, kinds)| Some((build_sink(s, errors)?, kinds.clone())))
        .collect();
    PipelineConfig {
        sinks,
        queue_capacity: validated.queue_capacity,
        queue_max_bytes: validated.queue_max_bytes,
        batch: validated.batch.clone(),
        encode: validated.encode.clone(),
        decode_only: validated.decode_only,
        buffer: validated.buffer.clone(),
        instance_index: validated.instance_index,
    }
}

fn build_sink(settings: &SinkSettings, errors: &mut Vec<String>) -> Option<SinkConfig> {
    match (&settings.config, &settings.files) {
        (SinkConfig::Http(http), SinkFiles::Tls(files)) => {
            build_http(http, files, errors).map(|h| SinkConfig::Http(Box::new(h)))
        }
        (SinkConfig::Syslog(syslog), SinkFiles::Tls(files)) => {
            build_syslog(syslog, files, errors).map(SinkConfig::Syslog)
        }
        (
            SinkConfig::Object(object),
            SinkFiles::Object {
                s3_ca,
                signing_key,
                digest_interval,
            },
        ) => build_object(
            object,
            s3_ca.as_deref(),
            signing_key.as_ref(),
            *digest_interval,
            errors,
        )
        .map(|o| SinkConfig::Object(Box::new(o))),
        (config, _) => Some(config.clone()),
    }
}

fn build_http(
    http: &crate::sink::http::HttpSinkConfig,
    files: &TlsFiles,
    errors: &mut Vec<String>,
) -> Option<crate::sink::http::HttpSinkConfig> {
    let mut tls = files.read(errors)?;
    if !http.tls_verify {
        crate::tls::disable_verification(&mut tls);
    }
    Some(crate::sink::http::HttpSinkConfig {
        tls: tls.into(),
        ..http.clone()
    })
}

fn build_syslog(
    syslog: &crate::sink::syslog::SyslogConfig,
    files: &TlsFiles,
    errors: &mut Vec<String>,
) -> Option<crate::sink::syslog::SyslogConfig> {
    let tls = files.read(errors)?;
    Some(crate::sink::syslog::SyslogConfig {
        tls: Some(crate::tls::ClientSettings::new(tls)),
        ..syslog.clone()
    })
}

fn build_object(
    object: &crate::sink::archive::ObjectSinkConfig,
    s3_ca: Option<&std::path::Path>,
    signing_key: Option<&Secret>,
    digest_interval: Duration,
    errors: &mut Vec<String>,
) -> Option<crate::sink::archive::ObjectSinkConfig> {
    let before = errors.len();
    let target = match &object.target {
        Target::S3(s3) => Target::S3(crate::sink::archive::s3::S3Config {
            ca_pem: s3_ca.and_then(|path| read_s3_ca(path, errors)),
            ..s3.clone()
        }),
        Target::Dir(dir) => Target::Dir(dir.clone()),
    };
    let digest = signing_key.and_then(|key| {
        Some(crate::sink::archive::digest::DigestSettings {
            key: Arc::new(load_signing_key(key, errors)?),
            interval: digest_interval,
        })
    });
    (errors.len() == before).then(|| crate::sink::archive::ObjectSinkConfig {
        target,
        digest,
        ..object.clone()
    })
}

//! Log file integrity, as CloudTrail does it: signing keys, the digest file
//! format, and the string each digest's signature covers.
//!
//! A digest lists the log files delivered in its window with the SHA-256 of
//! each file's *uncompressed* content, names the previous digest with the
//! SHA-256 of its uncompressed content and its signature, and is signed over
//! CloudTrail's four-line string ([`string_to_sign`]). Because each signature
//! covers the previous one, changing or removing any digest breaks every later
//! link. Writing the chain is [`crate::sink::archive::digest`]; checking it is
//! [`crate::validate`].

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{what} is not a PEM PKCS#8 Ed25519 or RSA key (\"-----BEGIN {label}-----\" expected): {reason}"
    )]
    BadKey {
        what: String,
        label: &'static str,
        reason: String,
    },
}

/// The signature algorithms a digest can carry, named as CloudTrail names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (CloudTrail's own).
    Sha256WithRsa,
    Ed25519,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256WithRsa => "SHA256withRSA",
            Algorithm::Ed25519 => "Ed25519",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SHA256withRSA" => Some(Algorithm::Sha256WithRsa),
            "Ed25519" => Some(Algorithm::Ed25519),
            _ => None,
        }
    }
}

type RsaSigner = rsa::pkcs1v15::SigningKey<rsa::sha2::Sha256>;
type RsaVerifier = rsa::pkcs1v15::VerifyingKey<rsa::sha2::Sha256>;

/// A private key that signs digests. Its `Debug` never shows the key.
pub enum SigningKey {
    Rsa(Box<RsaSigner>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SigningKey({}, fingerprint {})",
            self.algorithm().as_str(),
            self.public_key().fingerprint()
        )
    }
}

impl SigningKey {
    /// A new key pair; RSA keys have the `rsa` crate's default size (3072 bits).
    pub fn generate(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Ed25519 => {
                let seed: [u8; 32] = rand::random();
                Self::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(&seed)))
            }
            Algorithm::Sha256WithRsa => {
                use rsa::Generate;
                Self::Rsa(Box::new(RsaSigner::generate()))
            }
        }
    }

    /// Reads a PKCS#8 PEM private key (`-----BEGIN PRIVATE KEY-----`) from
    /// `source`: the PEM text itself, or the path of a file holding it.
    pub fn load(source: &str) -> Result<Self, IntegrityError> {
        if source.trim_start().starts_with("-----BEGIN") {
            return Self::from_pem(source, "the signing key given as PEM text");
        }
        let pem = std::fs::read_to_string(source).map_err(|e| IntegrityError::Read {
            path: source.to_string(),
            source: e,
        })?;
        Self::from_pem(&pem, source)
    }

    pub fn from_pem(pem: &str, what: &str) -> Result<Self, IntegrityError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(Self::Ed25519(Box::new(k)));
        }
        match rsa::PrivateKey::from_pkcs8_pem(pem) {
            Ok(k) => Ok(Self::Rsa(Box::new(RsaSigner::new(k)))),
            // The reason never quotes the key.
            Err(e) => Err(IntegrityError::BadKey {
                what: what.to_string(),
                label: "PRIVATE KEY",
                reason: e.to_string(),
            }),
        }
    }

    /// The PKCS#8 PEM form of the private key.
    pub(crate) fn to_pem(&self) -> String {
        let pem = match self {
            SigningKey::Ed25519(k) => {
                use ed25519_dalek::pkcs8::EncodePrivateKey;
                k.to_pkcs8_pem(Default::default())
                    .expect("an Ed25519 key encodes")
            }
            SigningKey::Rsa(k) => {
                use rsa::pkcs8::EncodePrivateKey;
                k.to_pkcs8_pem(Default::default())
                    .expect("an RSA key encodes")
            }
        };
        pem.to_string()
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Rsa(_) => Algorithm::Sha256WithRsa,
            SigningKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::Rsa(k) => {
                use rsa::signature::Keypair;
                PublicKey::Rsa(Box::new(k.verifying_key()))
            }
            SigningKey::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
        }
    }

    /// Signs `message` (for RSA: SHA-256 and PKCS#1 v1.5 padding).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Rsa(k) => {
                use rsa::signature::{SignatureEncoding, Signer};
                k.sign(message).to_vec()
            }
            SigningKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(message).to_bytes().to_vec()
            }
        }
    }
}

/// A public key that checks digest signatures.
#[derive(Clone, Debug)]
pub enum PublicKey {
    Rsa(Box<RsaVerifier>),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl PublicKey {
    /// Reads a PEM public key (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo).
    pub fn load(path: &Path) -> Result<Self, IntegrityError> {
        let pem = std::fs::read_to_string(path).map_err(|e| IntegrityError::Read {
            path: path.display().to_string(),
            source: e,
        })?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    pub fn from_pem(pem: &str, what: &str) -> Result<Self, IntegrityError> {
        use ed25519_dalek::pkcs8::DecodePublicKey;
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::Ed25519(k));
        }
        match rsa::PublicKey::from_public_key_pem(pem) {
            Ok(k) => Ok(Self::Rsa(Box::new(RsaVerifier::new(k)))),
            Err(e) => Err(IntegrityError::BadKey {
                what: what.to_string(),
                label: "PUBLIC KEY",
                reason: e.to_string(),
            }),
        }
    }

    /// The SubjectPublicKeyInfo DER of the key.
    pub(crate) fn der(&self) -> Vec<u8> {
        match self {
            PublicKey::Ed25519(k) => {
                use ed25519_dalek::pkcs8::EncodePublicKey;
                k.to_public_key_der().expect("encodes").into_vec()
            }
            PublicKey::Rsa(k) => {
                use rsa::pkcs8::EncodePublicKey;
                k.to_public_key_der().expect("encodes").into_vec()
            }
        }
    }

    /// The PEM form (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo), as published beside the digests.
    pub fn to_pem(&self) -> String {
        match self {
            PublicKey::Ed25519(k) => {
                use ed25519_dalek::pkcs8::EncodePublicKey;
                k.to_public_key_pem(Default::default()).expect("encodes")
            }
            PublicKey::Rsa(k) => {
                use rsa::pkcs8::EncodePublicKey;
                k.to_public_key_pem(Default::default()).expect("encodes")
            }
        }
    }

    /// Hex SHA-256 of the key's DER: `digestPublicKeyFingerprint`.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.der())
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            PublicKey::Rsa(_) => Algorithm::Sha256WithRsa,
            PublicKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa(k) => {
                use rsa::signature::Verifier;
                rsa::pkcs1v15::Signature::try_from(signature)
                    .is_ok_and(|s| k.verify(message, &s).is_ok())
            }
            PublicKey::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|s| k.verify_strict(message, &s).is_ok()),
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// CloudTrail's signed string: the digest's end time, `bucket/key`, the hex
/// SHA-256 of the uncompressed digest, and the previous digest's signature
/// (`null` for the first digest of a chain), joined by line feeds.
pub fn string_to_sign(
    end_time: &str,
    bucket: &str,
    key: &str,
    digest_sha256_hex: &str,
    previous_signature: Option<&str>,
) -> String {
    format!(
        "{end_time}\n{bucket}/{key}\n{digest_sha256_hex}\n{}",
        previous_signature.unwrap_or("null")
    )
}

/// Time as digests write it: `2026-11-27T15:01:31Z`.
pub(crate) fn digest_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// One delivered log file, as a digest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogFileEntry {
    pub(crate) s3_bucket: String,
    pub(crate) s3_object: String,
    /// Hex SHA-256 of the uncompressed file.
    pub(crate) hash_value: String,
    pub(crate) hash_algorithm: String,
    pub newest_event_time: Option<String>,
    pub oldest_event_time: Option<String>,
}

/// A digest file: CloudTrail's fields, plus the foundation and instance
/// whose chain it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DigestFile {
    pub foundation: String,
    pub instance_index: u32,
    pub(crate) digest_start_time: String,
    pub digest_end_time: String,
    pub digest_s3_bucket: String,
    pub digest_s3_object: String,
    pub digest_public_key_fingerprint: String,
    pub digest_signature_algorithm: String,
    pub newest_event_time: Option<String>,
    pub oldest_event_time: Option<String>,
    pub(crate) previous_digest_s3_bucket: Option<String>,
    pub previous_digest_s3_object: Option<String>,
    pub(crate) previous_digest_hash_value: Option<String>,
    pub previous_digest_hash_algorithm: Option<String>,
    pub previous_digest_signature: Option<String>,
    pub log_files: Vec<LogFileEntry>,
    /// On the first digest of a run that continues a chain: the time the
    /// nozzle was not writing, from the previous digest's end to this run's
    /// start. `validate` reports a declared gap and fails on one that is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_gap: Option<DeclaredGap>,
    /// On the digest a run writes as it stops: every log file of the run is
    /// listed by now, so a file dated after it (until the next run's declared
    /// start) was not written by the nozzle.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub final_digest: bool,
}

/// The time a nozzle was not writing digests, declared by the run after it
/// (times as digests write them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclaredGap {
    pub from: String,
    pub until: String,
}

/// The metadata names of the signature on an S3 digest object (sent as
/// `x-amz-meta-signature` and `x-amz-meta-signature-algorithm`).
pub(crate) const META_SIGNATURE: &str = "signature";
pub(crate) const META_SIGNATURE_ALGORITHM: &str = "signature-algorithm";

/// The sidecar a local-folder digest's signature is kept in (`<digest>.sig`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureSidecar {
    pub signature: String,
    pub signature_algorithm: String,
}

/// Writes a new key pair: `dir/signing-key.pem` (PKCS#8, readable by the
/// owner only) and `dir/public-key.pem`. Refuses to overwrite a signing key.
pub fn keygen(dir: &Path, algorithm: Algorithm) -> Result<PublicKey, IntegrityError> {
    let write_err = |path: &Path, e| IntegrityError::Write {
        path: path.display().to_string(),
        source: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let key = SigningKey::generate(algorithm);
    let private = dir.join("signing-key.pem");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    {
        use std::io::Write;
        let mut f = options.open(&private).map_err(|e| write_err(&private, e))?;
        f.write_all(key.to_pem().as_bytes())
            .map_err(|e| write_err(&private, e))?;
    }
    let public = key.public_key();
    let public_path = dir.join("public-key.pem");
    std::fs::write(&public_path, public.to_pem()).map_err(|e| write_err(&public_path, e))?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_and_sign_what_they_verify() {
        for alg in [Algorithm::Ed25519, Algorithm::Sha256WithRsa] {
            let key = SigningKey::generate(alg);
            let again = SigningKey::from_pem(&key.to_pem(), "test").unwrap();
            assert_eq!(again.algorithm(), alg);
            let public = PublicKey::from_pem(&key.public_key().to_pem(), "test").unwrap();
            assert_eq!(public.fingerprint(), key.public_key().fingerprint());
            assert_eq!(public.fingerprint().len(), 64);
            let sig = again.sign(b"four\nlines\nof\nnull");
            assert!(public.verify(b"four\nlines\nof\nnull", &sig), "{alg:?}");
            assert!(!public.verify(b"four\nlines\nof\nnulL", &sig), "{alg:?}");
        }
    }

    #[test]
    fn the_signed_string_is_cloudtrails() {
        assert_eq!(
            string_to_sign("2026-11-27T15:00:00Z", "b", "p/k.json.gz", "ab", None),
            "2026-11-27T15:00:00Z\nb/p/k.json.gz\nab\nnull"
        );
        assert_eq!(
            string_to_sign("t", "b", "k", "h", Some("5ig")),
            "t\nb/k\nh\n5ig"
        );
    }

    #[test]
    fn digest_fields_have_cloudtrails_names() {
        let d = DigestFile {
            foundation: "f".into(),
            instance_index: 0,
            digest_start_time: "s".into(),
            digest_end_time: "e".into(),
            digest_s3_bucket: "b".into(),
            digest_s3_object: "o".into(),
            digest_public_key_fingerprint: "fp".into(),
            digest_signature_algorithm: "Ed25519".into(),
            newest_event_time: None,
            oldest_event_time: None,
            previous_digest_s3_bucket: None,
            previous_digest_s3_object: None,
            previous_digest_hash_value: None,
            previous_digest_hash_algorithm: None,
            previous_digest_signature: None,
            log_files: vec![LogFileEntry {
                s3_bucket: "b".into(),
                s3_object: "l".into(),
                hash_value: "h".into(),
                hash_algorithm: "SHA-256".into(),
                newest_event_time: None,
                oldest_event_time: None,
            }],
            declared_gap: Some(DeclaredGap {
                from: "f".into(),
                until: "u".into(),
            }),
            final_digest: true,
        };
        let json = serde_json::to_string(&d).unwrap();
        for field in [
            "\"digestStartTime\"",
            "\"digestEndTime\"",
            "\"digestS3Bucket\"",
            "\"digestS3Object\"",
            "\"digestPublicKeyFingerprint\"",
            "\"digestSignatureAlgorithm\"",
            "\"newestEventTime\"",
            "\"oldestEventTime\"",
            "\"previousDigestS3Bucket\"",
            "\"previousDigestS3Object\"",
            "\"previousDigestHashValue\"",
            "\"previousDigestHashAlgorithm\"",
            "\"previousDigestSignature\"",
            "\"logFiles\":[{\"s3Bucket\":\"b\",\"s3Object\":\"l\",\"hashValue\":\"h\",\"hashAlgorithm\":\"SHA-256\"",
            "\"declaredGap\":{\"from\":\"f\",\"until\":\"u\"}",
            "\"finalDigest\":true",
        ] {
            assert!(json.contains(field), "{field} in {json}");
        }
    }
}

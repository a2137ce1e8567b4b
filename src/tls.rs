//! TLS material: PEM files an operator points us at, and the throw-away
//! certificate authority the demo and the tests generate at start.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {path} holds no PEM block \"{expected}\"")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("cannot generate certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    /// A client certificate and key that cannot work: each says which
    /// files and why.
    #[error("{0}")]
    Identity(String),
}

/// The client side of mutual TLS: whom we trust and who we are, as PEM.
/// `Debug` shows the certificates by size and the key masked.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub ca_pem: Pem,
    pub(crate) cert_pem: Pem,
    pub(crate) key_pem: crate::redact::Secret<Vec<u8>>,
    /// Where the CA came from, so errors can name it.
    pub ca_origin: String,
}

/// Certificates as PEM: public, but long, so `Debug` shows their size
/// (`Pem(1184 bytes)`). A private key is a [`crate::redact::Secret`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pem(Vec<u8>);

impl std::ops::Deref for Pem {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Pem {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Pem {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pem({} bytes)", self.0.len())
    }
}

impl ClientTls {
    /// Reads the CA, certificate and key files, checking each holds PEM of
    /// the right kind, and that the certificate is valid now and belongs
    /// to the key ([`check_identity`]).
    pub(crate) fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let tls = Self {
            ca_pem: read_pem("CA certificate", ca, "CERTIFICATE")?.into(),
            cert_pem: read_pem("client certificate", cert, "CERTIFICATE")?.into(),
            key_pem: read_pem("client key", key, "PRIVATE KEY")?.into(),
            ca_origin: ca.display().to_string(),
        };
        check_identity(
            (cert, &tls.cert_pem),
            (key, tls.key_pem.expose()),
            std::time::SystemTime::now(),
        )?;
        Ok(tls)
    }
}

/// A client certificate (PEM, the first certificate is the client's) and
/// its key, each with the file it came from: the certificate must be valid
/// at `now` and its public key must be the key's. Either mistake would only
/// show at the handshake, as a retry that never succeeds.
pub(crate) fn check_identity(
    (cert_path, cert_pem): (&Path, &[u8]),
    (key_path, key_pem): (&Path, &[u8]),
    now: std::time::SystemTime,
) -> Result<(), TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let cert_name = format!("client certificate {}", cert_path.display());
    let key_name = format!("client key {}", key_path.display());
    let fail = |reason: String| Err(TlsError::Identity(reason));
    let certs = match CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>() {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => return fail(format!("{cert_name} holds no certificate")),
        Err(e) => return fail(format!("{cert_name} is not a readable certificate: {e}")),
    };
    let (_, parsed) = match x509_parser::parse_x509_certificate(&certs[0]) {
        Ok(parsed) => parsed,
        Err(e) => return fail(format!("{cert_name} is not a readable certificate: {e}")),
    };
    let validity = parsed.validity();
    let (from, until) = (
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    );
    let now_s = match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let date = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| t.to_string())
    };
    if now_s > until {
        return fail(format!(
            "{cert_name} expired on {} (valid from {}): the server will refuse it; issue a new one",
            date(until),
            date(from)
        ));
    }
    if now_s < from {
        return fail(format!(
            "{cert_name} is not valid before {} (until {}): the server will refuse it (or this machine's clock is wrong)",
            date(from),
            date(until)
        ));
    }
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(e) => return fail(format!("{key_name} is not a readable private key: {e}")),
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = match provider.key_provider.load_private_key(key) {
        Ok(k) => k,
        Err(e) => return fail(format!("{key_name} is not a usable private key: {e}")),
    };
    match rustls::sign::CertifiedKey::new(certs, signing_key).keys_match() {
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => fail(
            format!("{key_name} does not belong to {cert_name} (their public keys differ)"),
        ),
        // Unknown (a key type that does not say its public key) is left to the handshake.
        _ => Ok(()),
    }
}

/// PEM files are kilobytes; a CA bundle a few hundred. Reading stops past
/// this, so a wrong path (`/dev/zero`, a log file) fails instead of hanging.
const MAX_PEM_BYTES: u64 = 16 << 20;

fn read_pem(what: &'static str, path: &Path, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_error = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(read_error(std::io::Error::other(format!(
            "larger than {} MiB: not a PEM file",
            MAX_PEM_BYTES >> 20
        ))));
    }
    // "PRIVATE KEY" also matches "RSA PRIVATE KEY" and "EC PRIVATE KEY" headers.
    let text = String::from_utf8_lossy(&bytes);
    let has_block = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(expected));
    if !has_block {
        return Err(TlsError::NotPem {
            what,
            path: path.to_owned(),
            expected,
        });
    }
    Ok(bytes)
}

/// A certificate authority with one server and one client certificate, all
/// generated in memory: the demo's and the tests' stand-in for Loggregator's CA.
pub struct Pki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

impl Pki {
    /// Generates a CA named `ca_name` and a server certificate valid for `server_names`.
    pub fn generate(ca_name: &str, server_names: &[&str]) -> Result<Self, TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |cn: &str,
                    names: Vec<String>,
                    usage: ExtendedKeyUsagePurpose|
         -> Result<(String, String), TlsError> {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let names: Vec<String> = server_names.iter().map(|s| s.to_string()).collect();
        let (server_cert_pem, server_key_pem) = leaf(
            server_names.first().copied().unwrap_or("localhost"),
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert_pem, client_key_pem) = leaf(
            "cf-audit-nozzle",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem,
            server_key_pem,
            client_cert_pem,
            client_key_pem,
        })
    }

    /// The client half, as the nozzle's RLP source takes it.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca_pem: self.ca_pem.clone().into_bytes().into(),
            cert_pem: self.client_cert_pem.clone().into_bytes().into(),
            key_pem: self.client_key_pem.clone().into_bytes().into(),
            ca_origin: "the generated demo CA".to_string(),
        }
    }

    /// A TLS server with the server certificate that asks for no client
    /// certificate: the tests' HTTPS peers (a private CA's S3, a platform
    /// endpoint).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |e: &dyn std::fmt::Display| TlsError::Invalid {
            what: "generated server certificate",
            reason: e.to_string(),
        };
        let certs = CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&e))?;
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(|e| invalid(&e))?;
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&e))
    }

    /// Writes `ca.pem`, `client.pem` and `client-key.pem` into `dir` for a
    /// nozzle in another process.
    pub fn write_client_files(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)?;
        std::fs::write(dir.join("client.pem"), &self.client_cert_pem)?;
        std::fs::write(dir.join("client-key.pem"), &self.client_key_pem)?;
        Ok(())
    }
}

/// A sink's TLS client settings, shared by its connections. `Debug` shows
/// what they decide that an operator may ask about (whether a client
/// certificate is presented), not the trust store or the key, so a sink's
/// configuration can derive `Debug`.
#[derive(Clone)]
pub struct ClientSettings(std::sync::Arc<rustls::ClientConfig>);

impl ClientSettings {
    pub fn new(config: rustls::ClientConfig) -> Self {
        Self(std::sync::Arc::new(config))
    }

    /// The rustls configuration, for a connector or an HTTP client.
    pub fn config(&self) -> &std::sync::Arc<rustls::ClientConfig> {
        &self.0
    }

    /// These settings with `change` made (a copy if they are shared).
    pub fn with(self, change: impl FnOnce(&mut rustls::ClientConfig)) -> Self {
        let mut config = std::sync::Arc::unwrap_or_clone(self.0);
        change(&mut config);
        Self::new(config)
    }
}

impl From<rustls::ClientConfig> for ClientSettings {
    fn from(config: rustls::ClientConfig) -> Self {
        Self::new(config)
    }
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSettings")
            .field(
                "client_certificate",
                &self.0.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

/// A rustls client configuration for a sink: trust `ca_pem` (or, without
/// it, the Mozilla roots of `webpki-roots`) and present `identity`
/// (certificate and key PEM) when given.
pub fn rustls_client_config(
    what: &'static str,
    ca_pem: Option<&[u8]>,
    identity: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |reason: String| TlsError::Invalid { what, reason };
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| invalid(format!("CA bundle: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("CA bundle: {e}")))?;
            }
            if roots.is_empty() {
                return Err(invalid("CA bundle holds no certificate".into()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|e| invalid(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| invalid(format!("client certificate and key: {e}")))
        }
    }
}

/// Reads a PEM file for a sink option, naming the option in errors.
pub(crate) fn read_pem_file(
    what: &'static str,
    path: &Path,
    expected: &'static str,
) -> Result<Vec<u8>, TlsError> {
    read_pem(what, path, expected)
}

/// Turns certificate verification off in `config` (the operator asked for it
/// with a flag; callers warn loudly). Signatures are still checked, so the
/// peer must hold the key of the certificate it shows; who that is, is not.
pub(crate) fn disable_verification(config: &mut rustls::ClientConfig) {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    config
        .dangerous()
        .set_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)));
}

#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::ServerName;

    /// Handshakes with a TLS server whose certificate comes from a CA the client does not know.
    async fn handshake(mut client: rustls::ClientConfig) -> Result<(), std::io::Error> {
        let pki = Pki::generate("unknownCA", &["localhost"]).unwrap();
        let server = pki.server_config().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server))
                .accept(tcp)
                .await;
        });
        client.alpn_protocols.clear();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn verification_refuses_an_unknown_ca_unless_turned_off() {
        let verified = rustls_client_config("test", None, None).unwrap();
        let err = handshake(verified).await.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        let mut unverified = rustls_client_config("test", None, None).unwrap();
        disable_verification(&mut unverified);
        handshake(unverified)
            .await
            .expect("accepted without verification");
    }

    #[test]
    fn client_settings_show_whether_a_certificate_is_presented_and_no_key() {
        let pki = Pki::generate("debugCA", &["localhost"]).unwrap();
        let identity = (
            pki.client_cert_pem.as_bytes(),
            pki.client_key_pem.as_bytes(),
        );
        let mutual = ClientSettings::new(
            rustls_client_config("test", Some(pki.ca_pem.as_bytes()), Some(identity)).unwrap(),
        );
        assert_eq!(
            format!("{mutual:?}"),
            "ClientSettings { client_certificate: true, .. }"
        );
        let plain = ClientSettings::from(rustls_client_config("test", None, None).unwrap())
            .with(|c| c.max_fragment_size = Some(1024));
        assert_eq!(
            format!("{plain:?}"),
            "ClientSettings { client_certificate: false, .. }"
        );
        assert_eq!(plain.config().max_fragment_size, Some(1024));
    }

    #[test]
    fn client_tls_shows_the_certificates_by_size_and_the_key_masked() {
        let pki = Pki::generate("debugCA", &["localhost"]).unwrap();
        let text = format!("{:?}", pki.client_tls());
        assert_eq!(
            text,
            format!(
                r#"ClientTls {{ ca_pem: Pem({} bytes), cert_pem: Pem({} bytes), key_pem: Secret(********), ca_origin: "the generated demo CA" }}"#,
                pki.ca_pem.len(),
                pki.client_cert_pem.len()
            )
        );
    }

    #[test]
    fn an_endless_file_is_refused_not_read_forever() {
        let err = read_pem_file("CA", Path::new("/dev/zero"), "CERTIFICATE").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read CA file /dev/zero: larger than 16 MiB: not a PEM file"
        );
    }
}

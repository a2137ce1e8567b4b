//! The S3 peer of the tests: one moto server per test binary (moto 5.2.5 in
//! the virtualenv `scripts/test` installs, `$MOTO_VENV`, by default
//! /opt/cf-audit-nozzle/moto-5.2.5), with IAM access control so SigV4 is
//! checked, driven through `moto_peer.py`. The server lives until the test
//! process exits (it stops when its stdin closes).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use cf_audit_nozzle::sink::archive::s3::{S3Config, Sse};

pub struct Moto {
    pub endpoint: String,
    pub key: String,
    pub secret: String,
    channel: Mutex<(ChildStdin, BufReader<ChildStdout>)>,
    _child: Child,
}

fn venv() -> PathBuf {
    std::env::var_os("MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/cf-audit-nozzle/moto-5.2.5".into())
}

/// The shared server, started on first use.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let python = venv().join("bin/python");
        assert!(
            python.exists(),
            "moto is missing: {} not found. Run scripts/test (it installs moto==5.2.5 into that virtualenv) or set MOTO_VENV",
            python.display()
        );
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/moto_peer.py");
        let mut child = Command::new(&python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start moto_peer.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("moto_peer.py output");
        let hello: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("moto_peer.py did not start ({e}): {line:?}"));
        Moto {
            endpoint: hello["endpoint"].as_str().unwrap().to_string(),
            key: hello["key"].as_str().unwrap().to_string(),
            secret: hello["secret"].as_str().unwrap().to_string(),
            channel: Mutex::new((stdin, stdout)),
            _child: child,
        }
    })
}

impl Moto {
    /// Sends one command to the peer and returns its answer (panics on an error answer).
    pub fn call(&self, cmd: serde_json::Value) -> serde_json::Value {
        let mut ch = self.channel.lock().unwrap();
        writeln!(ch.0, "{cmd}").unwrap();
        ch.0.flush().unwrap();
        let mut line = String::new();
        ch.1.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("error").is_none(), "moto peer: {cmd} -> {v}");
        v
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.call(serde_json::json!({"op": "create_bucket", "bucket": bucket}));
    }

    /// Object keys under `prefix`, as the server lists them.
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let v = self.call(serde_json::json!({"op": "list", "bucket": bucket, "prefix": prefix}));
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    }

    /// HEAD as the server answers it: ServerSideEncryption, SSEKMSKeyId,
    /// ContentType, ContentEncoding, Metadata.
    pub fn head(&self, bucket: &str, key: &str) -> serde_json::Value {
        self.call(serde_json::json!({"op": "head", "bucket": bucket, "key": key}))
    }

    /// Temporary credentials (key, secret, session token) of a role allowed
    /// everything; the server refuses the key without its token.
    pub fn assume_role(&self) -> (String, String, String) {
        let v = self.call(serde_json::json!({"op": "assume_role"}));
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        (s("key"), s("secret"), s("token"))
    }

    /// Sink settings for `bucket` on this server (created here).
    pub fn bucket(&self, bucket: &str) -> S3Config {
        self.create_bucket(bucket);
        self.config(bucket)
    }

    /// Sink settings for an existing `bucket` on this server.
    pub fn config(&self, bucket: &str) -> S3Config {
        S3Config {
            bucket: bucket.to_string(),
            prefix: "audit".to_string(),
            region: "us-east-1".to_string(),
            endpoint: Some(self.endpoint.clone()),
            path_style: true,
            access_key_id: Some(self.key.clone()),
            secret_access_key: Some(self.secret.clone().into()),
            session_token: None,
            sse: Sse::Aes256,
            kms_key_id: None,
            ca_pem: None,
            object_lock: None,
        }
    }
}

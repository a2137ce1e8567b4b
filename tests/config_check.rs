//! `cf-audit-nozzle config check` and the configuration layers as an
//! operator meets them: every problem of every layer in one run, the
//! precedence flag > env > platform > VCAP_SERVICES > file > default, and
//! secrets masked.

mod common;

use std::process::{Command, Output};

const SECRET: &str = "hec-token-c0ffee-SECRET";

/// The binary with none of the variables these tests set inherited from the
/// test's own environment (not even the /health address the others get).
fn nozzle(dir: &std::path::Path) -> Command {
    let mut cmd = common::nozzle();
    cmd.current_dir(dir);
    for var in [
        "OUT_DIR",
        "PORT",
        "VCAP_SERVICES",
        "VCAP_APPLICATION",
        "CF_INSTANCE_INDEX",
        "CONFIG",
        "CONFIG_SERVICE",
        "SHARD_ID",
        "INSTANCE_INDEX",
        "CF_API",
        "HEC_TOKEN",
        "SOURCE",
        "SINK",
        "HEALTH_ADDR",
        "GZIP_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn service(credentials: &str) -> String {
    format!(
        r#"{{"user-provided":[{{"label":"user-provided","name":"cf-audit-nozzle-secrets","tags":[],"credentials":{credentials}}}]}}"#
    )
}

/// The option's line of the effective configuration, spaces collapsed.
fn line(stdout: &str, flag: &str) -> String {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(flag))
        .unwrap_or_else(|| panic!("no {flag} line in:\n{stdout}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn three_mistakes_in_three_places_are_reported_in_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("nozzle.toml"),
        "shard_id = \"audit\"\nsinks = [\"file\"]\n",
    )
    .unwrap();
    let out = nozzle(tmp.path())
        .args(["config", "check", "--config", "nozzle.toml"])
        .args(["--rlp-addr", "rlp.service.cf.internal"])
        .env(
            "VCAP_SERVICES",
            service(&format!(
                r#"{{"HEC_TOKEN":"{SECRET}","GZIP_LEVEL":"fast"}}"#
            )),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    assert_eq!(
        errors,
        [
            "config file nozzle.toml: unknown option \"sinks\" (keys are the long flags or environment variables of `cf-audit-nozzle run --help`)",
            "VCAP_SERVICES service cf-audit-nozzle-secrets: \"GZIP_LEVEL\": invalid value 'fast' for '--gzip-level <GZIP_LEVEL>': invalid digit found in string",
            "--rlp-ca (RLP_CA) is required: the CA certificate file that signed the RLP's certificate",
            "--rlp-cert (RLP_CERT) is required: the client certificate file",
            "--rlp-key (RLP_KEY) is required: the client key file",
            "--rlp-addr (RLP_ADDR) must be host:port, not \"rlp.service.cf.internal\"",
        ],
        "{stderr}"
    );
    // The effective configuration is printed even so, secrets masked.
    assert_eq!(
        line(&stdout, "--shard-id"),
        "--shard-id audit config file nozzle.toml"
    );
    assert_eq!(
        line(&stdout, "--hec-token"),
        "--hec-token ******** VCAP_SERVICES service cf-audit-nozzle-secrets"
    );
    assert_eq!(
        line(&stdout, "--rlp-addr"),
        "--rlp-addr rlp.service.cf.internal flag"
    );
    assert_eq!(line(&stdout, "--gzip-level"), "--gzip-level 1 default");
}

/// One option set in every layer; removing the highest layer each time
/// shows the next.
#[test]
fn precedence_is_flag_env_platform_service_file_default() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("nozzle.toml"),
        "instance-index = 5\nfoundation = \"from-file\"\n",
    )
    .unwrap();
    let check = |flag: bool, env: bool, platform: bool, svc: bool, file: bool| {
        let mut cmd = nozzle(tmp.path());
        cmd.args(["config", "check", "--source", "gateway"]);
        if flag {
            cmd.args(["--instance-index", "1"]);
        }
        if env {
            cmd.env("INSTANCE_INDEX", "2");
        }
        if platform {
            cmd.env("CF_INSTANCE_INDEX", "3");
        }
        if svc {
            cmd.env("VCAP_SERVICES", service(r#"{"instance_index":4}"#));
        }
        if file {
            cmd.args(["--config", "nozzle.toml"]);
        }
        let (stdout, _) = text(&cmd.output().unwrap());
        line(&stdout, "--instance-index")
    };
    assert_eq!(
        check(true, true, true, true, true),
        "--instance-index 1 flag"
    );
    assert_eq!(
        check(false, true, true, true, true),
        "--instance-index 2 env INSTANCE_INDEX"
    );
    assert_eq!(
        check(false, false, true, true, true),
        "--instance-index 3 platform CF_INSTANCE_INDEX"
    );
    assert_eq!(
        check(false, false, false, true, true),
        "--instance-index 4 VCAP_SERVICES service cf-audit-nozzle-secrets"
    );
    assert_eq!(
        check(false, false, false, false, true),
        "--instance-index 5 config file nozzle.toml"
    );
    assert_eq!(
        check(false, false, false, false, false),
        "--instance-index 0 default"
    );
}

/// A pushed app's environment: the CF API and the health port come from
/// the platform, the credentials from the service; the result is valid.
#[test]
fn a_pushed_apps_environment_is_a_valid_gateway_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let out = nozzle(tmp.path())
        .args(["config", "check"])
        .env("SOURCE", "gateway")
        .env("PORT", "8080")
        .env("CF_INSTANCE_INDEX", "1")
        .env(
            "VCAP_APPLICATION",
            r#"{"application_id":"6c1b0c59-7e28-4b8a-9e52-4a8f0d1a7c11","cf_api":"https://api.sys.example.com","instance_index":1}"#,
        )
        .env(
            "VCAP_SERVICES",
            service(r#"{"UAA_CLIENT_ID":"cf-audit-nozzle","UAA_CLIENT_SECRET":"uaa-SECRET"}"#),
        )
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("uaa-SECRET"));
    assert_eq!(
        line(&stdout, "--cf-api"),
        "--cf-api https://api.sys.example.com platform VCAP_APPLICATION"
    );
    assert_eq!(
        line(&stdout, "--health-addr"),
        "--health-addr 0.0.0.0:8080 platform PORT"
    );
    assert_eq!(
        line(&stdout, "--uaa-client-secret"),
        "--uaa-client-secret ******** VCAP_SERVICES service cf-audit-nozzle-secrets"
    );
    assert_eq!(stdout.lines().last(), Some("configuration is valid"));
}

#[test]
fn a_file_that_is_not_toml_is_named_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("bad.toml"),
        "shard_id = \"a\"\nsink = [file]\n",
    )
    .unwrap();
    let out = nozzle(tmp.path())
        .args([
            "config", "check", "--source", "gateway", "--config", "bad.toml",
        ])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("  - config file bad.toml: not valid TOML (line 2): "),
        "{stderr}"
    );
}

/// `run` with values from the platform layer (the instance index, the
/// health port) still parses every flag after them.
#[test]
fn run_parses_every_flag_when_the_platform_sets_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let out = nozzle(tmp.path())
        .env("CF_INSTANCE_INDEX", "0")
        .env("PORT", "8080")
        .args(["run", "--rlp-addr", "no-port", "--summary-file", "s.json"])
        .args(["--shutdown-timeout", "1", "--out-dir", "o"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("cf-audit-nozzle: invalid configuration:\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  - --rlp-addr (RLP_ADDR) must be host:port, not \"no-port\""),
        "{stderr}"
    );
}

/// Values the argument parser rejects (a flag's, an environment
/// variable's, an unknown option) are listed with every other problem
/// instead of hiding them.
#[test]
fn parser_errors_are_listed_with_every_other_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let out = nozzle(tmp.path())
        .args(["config", "check", "--sink", "nosuchsink"])
        .args(["--rlp-addr", "no-port", "--frobnicate", "3"])
        .env("GZIP_LEVEL", "fast")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    assert_eq!(
        errors,
        [
            "--sink: invalid value 'nosuchsink' for '--sink <SINK>' (possible values: stdout, file, syslog, http, s3)",
            "unknown option --frobnicate",
            "--gzip-level (GZIP_LEVEL, from the environment): invalid value 'fast' for '--gzip-level <GZIP_LEVEL>': invalid digit found in string",
            "--rlp-ca (RLP_CA) is required: the CA certificate file that signed the RLP's certificate",
            "--rlp-cert (RLP_CERT) is required: the client certificate file",
            "--rlp-key (RLP_KEY) is required: the client key file",
            "--rlp-addr (RLP_ADDR) must be host:port, not \"no-port\"",
        ],
        "{stderr}"
    );
    // The effective configuration is still printed.
    assert_eq!(line(&stdout, "--rlp-addr"), "--rlp-addr no-port flag");
    // A mistyped command is named (run is the default command).
    let out = nozzle(tmp.path()).arg("stauts").output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("  - unknown command or argument \"stauts\" (commands: run, demo, emulator, keygen, validate, gaps, config, tail, help)\n"),
        "{stderr}"
    );
}

/// `config check 2>&1 | head -1`: the reader is gone. The command ends
/// with exit status 2, not a panic (101).
#[test]
fn a_closed_pipe_ends_config_check_with_status_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = nozzle(tmp.path())
        .args(["config", "check", "--source", "gateway"])
        .args(["--cf-api", "https://api.example.com"])
        .args(["--uaa-client-id", "n", "--uaa-client-secret", "s"])
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "{status}");
}

/// Writes `ca.pem` and a client certificate `<name>.pem` valid from
/// `from` to `until` (years), with its key `<name>-key.pem`, into `dir`.
fn client_files(dir: &std::path::Path, name: &str, from: i32, until: i32) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, date_time_ymd};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    std::fs::write(
        dir.join("ca.pem"),
        ca.clone().self_signed(&ca_key).unwrap().pem(),
    )
    .unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.not_before = date_time_ymd(from, 1, 1);
    leaf.not_after = date_time_ymd(until, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
}

/// A client key that is not the certificate's, an expired certificate and
/// one not valid yet: each named at `config check` (RLP and sink alike),
/// instead of a handshake retried forever by `run`.
#[test]
fn client_certificates_that_cannot_work_are_named_at_check() {
    let tmp = tempfile::tempdir().unwrap();
    client_files(tmp.path(), "good", 2000, 2999);
    client_files(tmp.path(), "other", 2000, 2999);
    client_files(tmp.path(), "expired", 2000, 2001);
    client_files(tmp.path(), "future", 2998, 2999);
    let check = |cert: &str, key: &str, sink: &[&str]| {
        let out = nozzle(tmp.path())
            .args(["config", "check", "--rlp-addr", "rlp:8082"])
            .args(["--rlp-ca", "ca.pem", "--rlp-cert", cert, "--rlp-key", key])
            .args(sink)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        let errors: Vec<String> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("  - "))
            .map(str::to_string)
            .collect();
        (out.status.code(), errors, stdout)
    };
    let (code, errors, stdout) = check("good.pem", "good-key.pem", &[]);
    assert_eq!((code, errors), (Some(0), vec![]), "{stdout}");
    let (code, errors, _) = check("good.pem", "other-key.pem", &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        errors,
        [
            "--rlp-ca/--rlp-cert/--rlp-key: client key other-key.pem does not belong to client certificate good.pem (their public keys differ)"
        ]
    );
    let (_, errors, _) = check("expired.pem", "expired-key.pem", &[]);
    assert_eq!(
        errors,
        [
            "--rlp-ca/--rlp-cert/--rlp-key: client certificate expired.pem expired on 2001-01-01 00:00:00 UTC (valid from 2000-01-01 00:00:00 UTC): the server will refuse it; issue a new one"
        ]
    );
    let (_, errors, _) = check("future.pem", "future-key.pem", &[]);
    assert_eq!(
        errors,
        [
            "--rlp-ca/--rlp-cert/--rlp-key: client certificate future.pem is not valid before 2998-01-01 00:00:00 UTC (until 2999-01-01 00:00:00 UTC): the server will refuse it (or this machine's clock is wrong)"
        ]
    );
    let (_, errors, _) = check(
        "good.pem",
        "good-key.pem",
        &[
            "--sink",
            "syslog",
            "--syslog-addr",
            "siem:6514",
            "--syslog-cert",
            "expired.pem",
            "--syslog-key",
            "good-key.pem",
        ],
    );
    assert_eq!(
        errors,
        [
            "--syslog-ca/--syslog-cert/--syslog-key: client certificate expired.pem expired on 2001-01-01 00:00:00 UTC (valid from 2000-01-01 00:00:00 UTC): the server will refuse it; issue a new one"
        ]
    );
    let (_, errors, _) = check(
        "good.pem",
        "good-key.pem",
        &[
            "--sink",
            "http",
            "--http-url",
            "https://siem.example.com",
            "--http-format",
            "json",
            "--http-cert",
            "good.pem",
            "--http-key",
            "other-key.pem",
        ],
    );
    assert_eq!(
        errors,
        [
            "--http-ca/--http-cert/--http-key: client key other-key.pem does not belong to client certificate good.pem (their public keys differ)"
        ]
    );
}

/// Timeouts of 0, a sink listed twice: errors. Plain http:// for the CF
/// API, UAA or the gateway: a warning each.
#[test]
fn zero_timeouts_and_duplicate_sinks_are_errors_plain_http_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let gateway = |cmd: &mut Command| {
        cmd.args(["config", "check", "--source", "gateway"])
            .args(["--cf-api", "http://api.example.com"])
            .args(["--uaa-url", "HTTP://uaa.example.com"])
            .args(["--gateway-url", "http://log-stream.example.com"])
            .args(["--uaa-client-id", "n", "--uaa-client-secret", "s"]);
    };
    let mut cmd = nozzle(tmp.path());
    gateway(&mut cmd);
    let out = cmd
        .args([
            "--shutdown-timeout",
            "0",
            "--sink",
            "file,stdout,file,http,file",
        ])
        .args(["--alert-after", "0", "--health-disconnect-threshold", "0"])
        .args([
            "--http-url",
            "https://siem.example.com",
            "--http-format",
            "json",
        ])
        .args([
            "--http-timeout",
            "0",
            "--hec-ack-interval",
            "0",
            "--hec-ack-timeout",
            "0",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .collect();
    assert_eq!(
        errors,
        [
            "--shutdown-timeout (SHUTDOWN_TIMEOUT) must be at least 1 second",
            "--health-disconnect-threshold (HEALTH_DISCONNECT_THRESHOLD) must be at least 1 second",
            "--sink (SINK) names file more than once: list each sink once",
            "--http-timeout (HTTP_TIMEOUT) must be at least 1 second",
            "--hec-ack-interval (HEC_ACK_INTERVAL) must be at least 1 second",
            "--hec-ack-timeout (HEC_ACK_TIMEOUT) must be at least 1 second",
            "--alert-after (ALERT_AFTER) must be at least 1 second",
        ],
        "{stderr}"
    );
    let mut cmd = nozzle(tmp.path());
    gateway(&mut cmd);
    let out = cmd.output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(
        warnings,
        [
            "warning: --cf-api (CF_API) is plain http://: the UAA client secret, the tokens and the data cross the network unencrypted (use https://)",
            "warning: --uaa-url (UAA_URL) is plain http://: the UAA client secret, the tokens and the data cross the network unencrypted (use https://)",
            "warning: --gateway-url (GATEWAY_URL) is plain http://: the UAA client secret, the tokens and the data cross the network unencrypted (use https://)",
        ]
    );
}

/// Plain `http://` in a sink's URL is a warning saying what crosses the
/// network unencrypted, given only for what is in use: `--gateway-url`
/// without the gateway source, `--http-url` without the http sink and the
/// like say nothing.
#[test]
fn plain_http_urls_are_warnings_where_they_are_used() {
    let tmp = tempfile::tempdir().unwrap();
    let warnings = |cmd: &mut Command| -> Vec<String> {
        let out = cmd
            .args(["--gateway-url", "http://log-stream.example.com"])
            .args(["--http-url", "http://siem.example.com:8088"])
            .args(["--hec-token", "t", "--s3-bucket", "b"])
            .args(["--s3-endpoint", "http://127.0.0.1:9000"])
            .args(["--notify-url", "http://hooks.example.com/landed"])
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("warning: "))
            .map(str::to_string)
            .collect()
    };

    let mut cmd = nozzle(tmp.path());
    cmd.args(["config", "check", "--source", "gateway"])
        .args(["--cf-api", "https://api.example.com"])
        .args(["--uaa-client-id", "n", "--uaa-client-secret", "s"])
        .args(["--sink", "http,s3"]);
    assert_eq!(
        warnings(&mut cmd),
        [
            "--gateway-url (GATEWAY_URL) is plain http://: the UAA client secret, the tokens and the data cross the network unencrypted (use https://)",
            "--http-url (HTTP_URL) is plain http://: the records, the HEC token and the --http-header values cross the network unencrypted (use https://)",
            "--s3-endpoint (S3_ENDPOINT) is plain http://: the log files, the digests and any session token cross the network unencrypted (use https://)",
            "--notify-url (NOTIFY_URL) is plain http://: the delivery notifications (bucket and object keys) cross the network unencrypted (use https://)",
        ]
    );

    // The RLP source and the stdout sink use none of those URLs.
    let pki = cf_audit_nozzle::tls::Pki::generate("warnCA", &["reverselogproxy"]).unwrap();
    let rlp = tmp.path().join("rlp");
    pki.write_client_files(&rlp).unwrap();
    let rlp_args = |cmd: &mut Command| {
        cmd.args(["config", "check", "--rlp-addr", "rlp:8082"])
            .arg("--rlp-ca")
            .arg(rlp.join("ca.pem"))
            .arg("--rlp-cert")
            .arg(rlp.join("client.pem"))
            .arg("--rlp-key")
            .arg(rlp.join("client-key.pem"));
    };
    let mut cmd = nozzle(tmp.path());
    rlp_args(&mut cmd);
    cmd.args(["--sink", "stdout"]);
    assert_eq!(warnings(&mut cmd), Vec::<String>::new());

    // The file sink with a signing key notifies as the s3 sink does.
    let keys = tmp.path().join("keys");
    let out = nozzle(tmp.path())
        .arg("keygen")
        .arg("--out")
        .arg(&keys)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let mut cmd = nozzle(tmp.path());
    rlp_args(&mut cmd);
    cmd.args(["--sink", "file", "--signing-key"])
        .arg(keys.join("signing-key.pem"));
    assert_eq!(
        warnings(&mut cmd),
        [
            "--notify-url (NOTIFY_URL) is plain http://: the delivery notifications (bucket and object keys) cross the network unencrypted (use https://)"
        ]
    );

    // Object Lock options without the s3 sink lock nothing: said, not ignored.
    let mut cmd = nozzle(tmp.path());
    rlp_args(&mut cmd);
    cmd.args(["--sink", "stdout", "--s3-object-lock-mode", "compliance"])
        .args(["--s3-object-lock-days", "30"]);
    assert_eq!(
        warnings(&mut cmd),
        [
            "--s3-object-lock-mode/--s3-object-lock-days have no effect without --sink s3: nothing is written with retention"
        ]
    );
}

//! `cf-audit-nozzle config check` and the configuration layers as an
//! operator meets them: every problem of every layer in one run, the
//! precedence flag > env > platform > VCAP_SERVICES > file > default, and
//! secrets masked.

use std::process::{Command, Output};

const SECRET: &str = "hec-token-c0ffee-SECRET";

/// The binary with none of the variables these tests set inherited from the
/// test's own environment.
fn nozzle(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cf-audit-nozzle"));
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

//! The ways onto a VM, checked without a BOSH director or a booted systemd:
//! - the BOSH job's generated files are current (`config bosh-job`);
//! - its templates, rendered as the director renders them
//!   (`tests/bosh/render.rb`, Debian's `ruby`) with the ops file's
//!   properties and with a minimal manifest's, give a configuration that
//!   `config check` accepts, and a bad property value the same error as
//!   the flag;
//! - the systemd unit passes `systemd-analyze verify`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use serde_json::{Value, json};

use cf_audit_nozzle::config::Cli;
use cf_audit_nozzle::config::bosh::job_files;
use cf_audit_nozzle::tls::Pki;
use common::{nozzle, printed, yaml};

const JOB: &str = "bosh/jobs/cf-audit-nozzle";
const OPS_FILE: &str = "bosh/operations/add-cf-audit-nozzle.yml";

#[test]
fn the_jobs_generated_files_are_current() {
    let generated = job_files(&Cli::command());
    let mut expected: Vec<String> = generated.iter().map(|(p, _)| p.clone()).collect();
    for (path, text) in &generated {
        let committed = std::fs::read_to_string(Path::new(JOB).join(path))
            .unwrap_or_else(|e| panic!("{JOB}/{path}: {e}"));
        assert!(
            committed == *text,
            "{JOB}/{path} is stale; regenerate it:\n  cargo run -- config bosh-job {JOB}"
        );
    }
    // No template left behind by an option that is gone.
    let mut on_disk = vec!["spec".to_string(), "templates/config.toml.erb".to_string()];
    for entry in std::fs::read_dir(Path::new(JOB).join("templates/certs")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        on_disk.push(format!("templates/certs/{name}"));
    }
    on_disk.sort();
    expected.sort();
    assert_eq!(on_disk, expected);
}

/// The job's properties in the ops file, and its certificate variable.
fn ops_file_job() -> (serde_json::Map<String, Value>, Value) {
    let ops = yaml(OPS_FILE);
    let ops = ops.as_array().expect("an ops file is a list of operations");
    let group = ops
        .iter()
        .find(|op| op["path"] == "/instance_groups/name=cf-audit-nozzle?")
        .expect("the instance group");
    assert_eq!(group["type"], "replace");
    let jobs = group["value"]["jobs"].as_array().unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cf-audit-nozzle", "bpm"]);
    assert!(group["value"]["persistent_disk_type"].is_string());
    let variable = ops
        .iter()
        .find(|op| op["path"] == "/variables/name=cf_audit_nozzle_rlp_tls?")
        .expect("the certificate variable")["value"]
        .clone();
    (jobs[0]["properties"].as_object().unwrap().clone(), variable)
}

/// A machine's root in a temporary folder: the rendered job under
/// `var/vcap/jobs/cf-audit-nozzle`, its persistent disk under
/// `var/vcap/store/cf-audit-nozzle`.
struct Rendered {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Rendered {
    fn job(&self) -> PathBuf {
        self.root.join("var/vcap/jobs/cf-audit-nozzle")
    }

    /// The rendered config.toml as the nozzle on this root reads it: the
    /// absolute `/var/vcap/` paths moved under the root.
    fn config(&self) -> PathBuf {
        let text = std::fs::read_to_string(self.job().join("config/config.toml")).unwrap();
        let moved = text.replace("/var/vcap/", &format!("{}/var/vcap/", self.root.display()));
        let path = self.root.join("config.toml");
        std::fs::write(&path, moved).unwrap();
        path
    }

    fn check(&self) -> (bool, String) {
        let out = nozzle()
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(["config", "check", "--config"])
            .arg(self.config())
            .current_dir(&self.root)
            .output()
            .unwrap();
        (out.status.success(), printed(&out))
    }
}

fn render(properties: Value, index: u64) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir_all(root.join("var/vcap/store/cf-audit-nozzle")).unwrap();
    let instance = root.join("instance.json");
    std::fs::write(
        &instance,
        json!({"properties": properties, "index": index, "deployment": "cf"}).to_string(),
    )
    .unwrap();
    let out = Command::new("ruby")
        .arg("tests/bosh/render.rb")
        .arg(JOB)
        .arg(&instance)
        .arg(root.join("var/vcap/jobs/cf-audit-nozzle"))
        .output()
        .expect("ruby");
    assert!(out.status.success(), "render: {}", printed(&out));
    Rendered { _dir: dir, root }
}

/// CredHub's interpolation of `((name.field))`, from a generated CA and
/// client certificate standing in for `loggregator_ca`'s.
fn interpolate(properties: &mut serde_json::Map<String, Value>, pki: &Pki) {
    for value in properties.values_mut() {
        let Some(text) = value.as_str() else { continue };
        let with = match text {
            "((cf_audit_nozzle_rlp_tls.ca))" => pki.ca_pem.clone(),
            "((cf_audit_nozzle_rlp_tls.certificate))" => pki.client_cert_pem.clone(),
            "((cf_audit_nozzle_rlp_tls.private_key))" => pki.client_key_pem.clone(),
            "((system_domain))" => "sys.example.com".to_string(),
            other => {
                assert!(!other.contains("(("), "variable left: {other}");
                continue;
            }
        };
        *value = Value::String(with);
    }
}

#[test]
fn the_ops_files_defaults_render_to_a_configuration_config_check_accepts() {
    let (mut properties, variable) = ops_file_job();
    // The client certificate Loggregator's RLP accepts: signed by
    // loggregator_ca, extended key usage client_auth.
    assert_eq!(variable["type"], "certificate");
    assert_eq!(variable["options"]["ca"], "loggregator_ca");
    assert_eq!(
        variable["options"]["extended_key_usage"],
        json!(["client_auth"])
    );
    let pki = Pki::generate("loggregatorCA", &["reverselogproxy"]).unwrap();
    interpolate(&mut properties, &pki);
    let rendered = render(Value::Object(properties), 1);

    let job = rendered.job();
    let config = std::fs::read_to_string(job.join("config/config.toml")).unwrap();
    let lines: Vec<&str> = config.lines().collect();
    for line in [
        "instance-index = 1",
        "rlp-addr = \"reverse-log-proxy.service.cf.internal:8082\"",
        "shard-id = \"cf-audit-nozzle\"",
        "foundation = \"sys.example.com\"",
        "sink = [\"file\"]",
        "out-dir = \"/var/vcap/store/cf-audit-nozzle/files\"",
        "buffer-dir = \"/var/vcap/store/cf-audit-nozzle/buffer\"",
        "dead-letter-dir = \"/var/vcap/store/cf-audit-nozzle/dead-letter\"",
        "health-addr = \"0.0.0.0:9495\"",
        "rlp-ca = \"/var/vcap/jobs/cf-audit-nozzle/config/certs/rlp-ca.pem\"",
        "rlp-cert = \"/var/vcap/jobs/cf-audit-nozzle/config/certs/rlp-cert.pem\"",
        "rlp-key = \"/var/vcap/jobs/cf-audit-nozzle/config/certs/rlp-key.pem\"",
    ] {
        assert!(lines.contains(&line), "{line:?} not in:\n{config}");
    }
    assert!(!config.contains("signing-key"), "{config}");
    assert_eq!(
        std::fs::read_to_string(job.join("config/certs/rlp-key.pem")).unwrap(),
        format!("{}\n", pki.client_key_pem)
    );
    // The secret stays in its file; the TOML names the file.
    assert!(!config.contains("PRIVATE KEY"));
    let bpm = std::fs::read_to_string(job.join("config/bpm.yml")).unwrap();
    assert!(
        bpm.contains("  - /var/vcap/jobs/cf-audit-nozzle/config/config.toml\n"),
        "{bpm}"
    );
    assert!(bpm.contains("  persistent_disk: true\n"), "{bpm}");
    let drain = std::fs::read_to_string(job.join("bin/drain")).unwrap();
    assert!(drain.contains("(8 s)"), "{drain}");

    let (ok, out) = rendered.check();
    assert!(ok, "config check refused the ops file's defaults:\n{out}");
    let rlp_addr = out
        .lines()
        .find(|l| l.starts_with("--rlp-addr "))
        .expect("--rlp-addr in the effective configuration");
    assert!(
        rlp_addr.contains("reverse-log-proxy.service.cf.internal:8082")
            && rlp_addr.contains("config file"),
        "{rlp_addr}"
    );
}

#[test]
fn a_minimal_manifest_renders_to_a_configuration_config_check_accepts() {
    let pki = Pki::generate("loggregatorCA", &["reverselogproxy"]).unwrap();
    let rendered = render(
        json!({
            "rlp-addr": "10.0.0.5:8082",
            "rlp-ca": pki.ca_pem,
            "rlp-cert": pki.client_cert_pem,
            "rlp-key": pki.client_key_pem,
        }),
        0,
    );
    let (ok, out) = rendered.check();
    assert!(ok, "config check refused a minimal manifest:\n{out}");
    let sink = out.lines().find(|l| l.starts_with("--sink ")).unwrap();
    assert!(sink.contains("stdout"), "the flag's default: {sink}");
}

#[test]
fn a_bad_property_value_is_the_flags_error() {
    let pki = Pki::generate("loggregatorCA", &["reverselogproxy"]).unwrap();
    let rendered = render(
        json!({
            "rlp-addr": "10.0.0.5:8082",
            "rlp-ca": pki.ca_pem,
            "rlp-cert": pki.client_cert_pem,
            "rlp-key": pki.client_key_pem,
            "syslog-transport": "pigeon",
        }),
        0,
    );
    let (ok, out) = rendered.check();
    assert!(!ok, "{out}");
    let why = "invalid value 'pigeon' for '--syslog-transport <SYSLOG_TRANSPORT>' (possible values: tcp, tls, udp)";
    let line = out
        .lines()
        .find(|l| l.contains("pigeon"))
        .unwrap_or_else(|| panic!("no error names the value:\n{out}"));
    assert!(
        line.contains(&format!("\"syslog-transport\": {why}")),
        "{line}"
    );
    // The flag's own error says the same after its place.
    let flag = nozzle()
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["config", "check", "--syslog-transport", "pigeon"])
        .output()
        .unwrap();
    let flag_line = printed(&flag)
        .lines()
        .find(|l| l.contains("pigeon"))
        .unwrap()
        .to_string();
    assert_eq!(flag_line, format!("  - --syslog-transport: {why}"));
}

#[test]
fn an_unknown_property_is_refused_like_the_director_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let instance = dir.path().join("instance.json");
    std::fs::write(
        &instance,
        json!({"properties": {"rlp-adress": "x"}}).to_string(),
    )
    .unwrap();
    let out = Command::new("ruby")
        .arg("tests/bosh/render.rb")
        .arg(JOB)
        .arg(&instance)
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(printed(&out).contains("properties not in the job's spec: rlp-adress"));
}

#[test]
fn the_systemd_unit_verifies() {
    // `systemd-analyze verify` checks that ExecStart's binary exists: point
    // it at this build, and change nothing else.
    let unit = std::fs::read_to_string("packaging/systemd/cf-audit-nozzle.service").unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/cf-audit-nozzle run --config ${CREDENTIALS_DIRECTORY}/config.toml\n"
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cf-audit-nozzle.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/cf-audit-nozzle", common::BIN),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd)");
    let text = printed(&out);
    assert!(out.status.success(), "{text}");
    // Warnings are printed, not failed on: none allowed.
    assert_eq!(text.trim(), "", "systemd-analyze verify said:\n{text}");
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=cf-audit-nozzle",
        "DynamicUser=yes",
    ] {
        assert!(unit.lines().any(|l| l == hardening), "{hardening}");
    }
}

/// The syslog ingress ops file (issue 22), applied after the nozzle's: the
/// nozzle listens with TLS and requires the forwarders' client certificate;
/// every VM's forwarder sends to the name the server certificate carries,
/// on the port the nozzle listens on, with the CA that signed it and the
/// client certificate the nozzle's client CA signed; Cloud Controller
/// writes its security events. Rendered with CredHub's values, `config
/// check` accepts it.
#[test]
fn the_syslog_in_ops_file_renders_to_a_listening_ingress_config_check_accepts() {
    const SYSLOG_OPS: &str = "bosh/operations/add-cf-audit-nozzle-syslog-in.yml";
    let ops = yaml(SYSLOG_OPS);
    let ops = ops.as_array().expect("an ops file is a list of operations");
    assert!(ops.iter().all(|op| op["type"] == "replace"));
    let value = |path: &str| -> Value {
        ops.iter()
            .find(|op| op["path"] == path)
            .unwrap_or_else(|| panic!("no operation on {path}"))["value"]
            .clone()
    };
    let nozzle_prefix =
        "/instance_groups/name=cf-audit-nozzle/jobs/name=cf-audit-nozzle/properties/";
    let forwarder = |p: &str| {
        value(&format!(
            "/addons/name=syslog_forwarder/jobs/name=syslog_forwarder/properties/syslog/{p}"
        ))
    };
    // The forwarders reach the nozzle where it listens, by the name its certificate holds.
    let alias = "cf-audit-nozzle.service.cf.internal";
    assert_eq!(forwarder("address"), alias);
    assert_eq!(forwarder("permitted_peer"), alias);
    let addr = value(&format!("{nozzle_prefix}syslog-in-addr?"));
    assert_eq!(
        addr.as_str().unwrap().rsplit_once(':').unwrap().1,
        forwarder("port").to_string()
    );
    assert_eq!(
        forwarder("ca_cert?"),
        "((cf_audit_nozzle_syslog_in_tls.ca))"
    );
    assert_eq!(
        forwarder("client_cert?"),
        "((cf_audit_nozzle_syslog_client_tls.certificate))"
    );
    let server = value("/variables/name=cf_audit_nozzle_syslog_in_tls?");
    assert_eq!(server["options"]["common_name"], alias);
    assert_eq!(server["options"]["alternative_names"], json!([alias]));
    assert_eq!(
        server["options"]["extended_key_usage"],
        json!(["server_auth"])
    );
    let client = value("/variables/name=cf_audit_nozzle_syslog_client_tls?");
    assert_eq!(
        client["options"]["extended_key_usage"],
        json!(["client_auth"])
    );
    assert_eq!(client["options"]["ca"], server["options"]["ca"]);
    assert_eq!(
        value(
            "/addons/name=bosh-dns-aliases/jobs/name=bosh-dns-aliases/properties/aliases/domain=cf-audit-nozzle.service.cf.internal?"
        )["targets"][0]["instance_group"],
        "cf-audit-nozzle"
    );
    assert_eq!(
        value(
            "/instance_groups/name=api/jobs/name=cloud_controller_ng/properties/cc/security_event_logging?/enabled"
        ),
        true
    );

    // The nozzle's job: the base ops file's properties with these added.
    let (mut properties, _) = ops_file_job();
    for op in ops {
        let path = op["path"].as_str().unwrap();
        if let Some(name) = path.strip_prefix(nozzle_prefix) {
            properties.insert(name.trim_end_matches('?').to_string(), op["value"].clone());
        }
    }
    let rlp = Pki::generate("loggregatorCA", &["reverselogproxy"]).unwrap();
    interpolate_syslog_in(
        &mut properties,
        &Pki::generate("syslogCA", &[alias]).unwrap(),
    );
    interpolate(&mut properties, &rlp);
    let rendered = render(Value::Object(properties), 0);
    let config = std::fs::read_to_string(rendered.job().join("config/config.toml")).unwrap();
    let certs = "/var/vcap/jobs/cf-audit-nozzle/config/certs";
    for line in [
        "syslog-in-addr = \"0.0.0.0:6514\"".to_string(),
        format!("syslog-in-cert = \"{certs}/syslog-in-cert.pem\""),
        format!("syslog-in-key = \"{certs}/syslog-in-key.pem\""),
        format!("syslog-in-client-ca = \"{certs}/syslog-in-client-ca.pem\""),
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "{line:?} not in:\n{config}"
        );
    }
    assert!(!config.contains("PRIVATE KEY"));
    let (ok, out) = rendered.check();
    assert!(ok, "config check refused the syslog ingress:\n{out}");
    for flag in ["--syslog-in-addr ", "--syslog-in-client-ca "] {
        let line = out
            .lines()
            .find(|l| l.starts_with(flag))
            .unwrap_or_else(|| panic!("{flag} not in:\n{out}"));
        assert!(line.contains("config file"), "{line}");
    }
    assert!(
        !out.contains("serves plain TCP"),
        "no plain-TCP warning with TLS on:\n{out}"
    );
}

/// CredHub's values for the syslog ingress's certificate variables.
fn interpolate_syslog_in(properties: &mut serde_json::Map<String, Value>, pki: &Pki) {
    for value in properties.values_mut() {
        let with = match value.as_str() {
            Some("((cf_audit_nozzle_syslog_in_tls.certificate))") => pki.server_cert_pem.clone(),
            Some("((cf_audit_nozzle_syslog_in_tls.private_key))") => pki.server_key_pem.clone(),
            Some("((cf_audit_nozzle_syslog_client_tls.ca))") => pki.ca_pem.clone(),
            _ => continue,
        };
        *value = Value::String(with);
    }
}

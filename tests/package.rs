//! `scripts/package` and `manifest.yml` as `cf push` uses them: the app
//! folder it builds, the manifest's keys, the binary's glibc needs (the
//! cflinuxfs4 stack has 2.35), and the packaged binary started with nothing
//! but the manifest's environment and what Cloud Foundry adds to it
//! (VCAP_APPLICATION, VCAP_SERVICES with the user-provided secrets service,
//! CF_INSTANCE_INDEX, PORT), against a test RLP Gateway, UAA and S3.
//!
//! This test builds the release binary (through `scripts/package`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cf_audit_nozzle::config::Cli;
use cf_audit_nozzle::config::layers::{is_secret, option_for_key};
use cf_audit_nozzle::source::emulator::Feed;
use cf_audit_nozzle::source::emulator::gateway::{GatewayEmulator, GatewayEmulatorConfig};
use clap::CommandFactory;
use common::moto;
use yaml_rust2::{Yaml, YamlLoader};

const ENVELOPES: u64 = 1000;
const BUCKET: &str = "pushed";
const APP_GUID: &str = "6c1b0c59-7e28-4b8a-9e52-4a8f0d1a7c11";

/// Runs `scripts/package` into `dist` and returns what it printed.
fn package(dist: &Path) -> String {
    let out = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/package"))
        .env("DIST", dist)
        .env_remove("OUT_DIR")
        .output()
        .expect("run scripts/package");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "scripts/package failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The highest GLIBC_x.y version the binary's dynamic symbols need.
fn highest_glibc(binary: &Path) -> (u32, u32) {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(binary)
        .output()
        .expect("objdump (binutils) is installed: scripts/test installs it");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max()
        .expect("the binary links glibc")
}

fn string<'a>(app: &'a Yaml, key: &str) -> &'a str {
    app[key]
        .as_str()
        .unwrap_or_else(|| panic!("manifest: {key} is not a string: {:?}", app[key]))
}

/// `GET path` on the port: the status code and the body.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Envelopes the nozzle has taken in, from its /metrics.
fn ingress(port: u16) -> Option<u64> {
    let (_, body) = get(port, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix("cf_nozzle_ingress_envelopes_total "))?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packaged_app_runs_with_the_manifests_environment_and_cloud_foundrys() {
    let tmp = tempfile::tempdir().unwrap();
    let dist = tmp.path().join("dist");
    let printed = package(&dist);
    assert!(printed.contains("highest GLIBC_"), "{printed}");

    // The binary runs on cflinuxfs4 (glibc 2.35).
    let binary = dist.join("cf-audit-nozzle");
    let glibc = highest_glibc(&binary);
    assert!(glibc <= (2, 35), "needs GLIBC_{}.{}", glibc.0, glibc.1);

    // The manifest: the keys `cf push` needs, the app folder being dist/ itself.
    let text = std::fs::read_to_string(dist.join("manifest.yml")).unwrap();
    let docs = YamlLoader::load_from_str(&text).expect("manifest.yml is YAML");
    let apps = docs[0]["applications"].as_vec().expect("applications");
    assert_eq!(apps.len(), 1);
    let app = &apps[0];
    assert_eq!(string(app, "name"), "cf-audit-nozzle");
    assert_eq!(
        app["buildpacks"].as_vec().unwrap(),
        &[Yaml::String("binary_buildpack".into())]
    );
    assert_eq!(string(app, "stack"), "cflinuxfs4");
    assert_eq!(string(app, "path"), ".");
    assert_eq!(string(app, "command"), "./cf-audit-nozzle run");
    assert_eq!(app["instances"].as_i64(), Some(2));
    assert_eq!(string(app, "memory"), "1G");
    assert_eq!(string(app, "disk_quota"), "2G");
    assert_eq!(string(app, "health-check-type"), "http");
    assert_eq!(string(app, "health-check-http-endpoint"), "/health");
    assert_eq!(
        app["services"].as_vec().unwrap(),
        &[Yaml::String("cf-audit-nozzle-secrets".into())]
    );
    // Every env entry is an option, as a string (YAML's `on` would be a
    // boolean), and none is a secret.
    let cli = Cli::command();
    let run = cli.find_subcommand("run").unwrap();
    let mut env = BTreeMap::new();
    for (k, v) in app["env"].as_hash().expect("env") {
        let (k, v) = (k.as_str().unwrap(), v.as_str());
        let v = v.unwrap_or_else(|| panic!("env {k} is not a string"));
        let option = option_for_key(run, k).unwrap_or_else(|| panic!("env {k} is no option"));
        assert_eq!(
            option.get_env().unwrap(),
            k,
            "env {k} is the option's variable"
        );
        assert!(!is_secret(option), "secret {k} in the manifest");
        env.insert(k.to_string(), v.to_string());
    }
    assert_eq!(env["SOURCE"], "gateway");
    assert_eq!(env["SHARD_ID"], "cf-audit-nozzle");

    // Cloud Foundry's side: a gateway, UAA and CF API root; an S3 bucket.
    let gw = GatewayEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        GatewayEmulatorConfig {
            feed: Feed::Generated { seed: 8 },
            count: Some(ENVELOPES),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let m = moto::moto();
    m.create_bucket(BUCKET);
    let vcap_services = serde_json::json!({
        "user-provided": [{
            "label": "user-provided",
            "name": "cf-audit-nozzle-secrets",
            "tags": [],
            "credentials": {
                "UAA_CLIENT_ID": "cf-audit-nozzle",
                "UAA_CLIENT_SECRET": "uaa-secret",
                "S3_BUCKET": BUCKET,
                "S3_REGION": "us-east-1",
                "S3_ENDPOINT": m.endpoint,
                "S3_PATH_STYLE": true,
                "S3_ACCESS_KEY_ID": m.key,
                "S3_SECRET_ACCESS_KEY": m.secret,
            }
        }]
    });
    let vcap_application = serde_json::json!({
        "application_id": APP_GUID,
        "application_name": "cf-audit-nozzle",
        "cf_api": gw.url(),
        "instance_index": 0,
        "space_name": "system",
    });
    let port = common::free_addr().port();
    let mut command = string(app, "command").split_whitespace();
    let program = dist.join(command.next().unwrap());
    let mut cmd = Command::new(program);
    cmd.args(command)
        .current_dir(&dist)
        .env_clear()
        .envs(&env)
        .env("VCAP_SERVICES", vcap_services.to_string())
        .env("VCAP_APPLICATION", vcap_application.to_string())
        .env("CF_INSTANCE_INDEX", "0")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = common::spawn(&mut cmd);
    common::wait_for("/health on $PORT", Duration::from_secs(60), || {
        get(port, "/health").is_some_and(|(status, _)| status == 200)
    })
    .await;
    // Taken in by the nozzle (not only sent): SIGTERM then drains them.
    common::wait_for("every envelope taken in", Duration::from_secs(60), || {
        ingress(port) == Some(ENVELOPES)
    })
    .await;
    // What the platform side was sent, read below.
    let sent = gw;
    let out = child.stop().await;
    let (status, stderr) = (out.status, String::from_utf8_lossy(&out.stderr));
    assert!(status.success(), "exit {status}:\n{stderr}");

    // Discovery through the CF API from VCAP_APPLICATION, a UAA token, the
    // stream on the manifest's shard; instance 0 polls the audit events.
    let targets = sent.targets();
    assert!(targets.iter().any(|t| t == "/"), "{targets:?}");
    assert!(targets.iter().any(|t| t == "/oauth/token"), "{targets:?}");
    assert_eq!(
        sent.reads(),
        ["/v2/read?log&counter&gauge&timer&event&shard_id=cf-audit-nozzle"]
    );
    assert!(
        targets
            .iter()
            .any(|t| t.starts_with("/v3/audit_events?order_by=created_at&")),
        "{targets:?}"
    );
    assert_eq!(sent.refused(), 0);

    // Every envelope is one record in the bucket.
    let cfg = m.config(BUCKET);
    let archive = cf_audit_nozzle::sink::archive::s3::s3_archive(
        &cf_audit_nozzle::sink::archive::s3::S3Config {
            prefix: String::new(),
            ..cfg
        },
        &cf_audit_nozzle::sink::archive::s3::http_client(None).unwrap(),
    )
    .unwrap();
    let keys = m.list(BUCKET, "CFLogs/");
    assert!(!keys.is_empty(), "no objects:\n{stderr}");
    let mut records = 0;
    // Per kind: records (numbered) and the last number declared at shutdown.
    let mut per_kind: std::collections::BTreeMap<String, (u64, Option<u64>)> = Default::default();
    for key in &keys {
        assert!(key.starts_with("CFLogs/cf/"), "{key}");
        let body = archive.get(&archive.logs, key).await.unwrap().body;
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut plain)
            .unwrap();
        let file: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        for r in file["Records"].as_array().unwrap() {
            // Instance 0 of the app (VCAP_APPLICATION) names its boot.
            assert!(r["boot"].as_str().unwrap().starts_with("0-"), "{r}");
            let kind = per_kind
                .entry(r["kind"].as_str().unwrap().into())
                .or_default();
            match r["last_seq"].as_u64() {
                Some(last) => kind.1 = kind.1.max(Some(last)),
                None => {
                    kind.0 += 1;
                    records += 1;
                }
            }
        }
    }
    assert_eq!(records, ENVELOPES, "{keys:?}");
    for (kind, (n, declared)) in &per_kind {
        assert_eq!(*declared, Some(n - 1), "{kind}");
    }
}

//! Record numbers as a consumer of the output sees them: the nozzle as a
//! process, killed with `kill -9` mid-stream and started again on the same
//! disk buffer, and every record it wrote read back from its files.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cf_audit_nozzle::proto::{Counter, Envelope, envelope};
use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed};
use common::*;

const N: u64 = 12_000;

/// Envelope `i`: a counter every tenth, an API log line the next, else an
/// app log line; its timestamp names it.
fn feed() -> Vec<Envelope> {
    (0..N)
        .map(|i| {
            let ts = 1_700_000_000_000_000_000 + i as i64;
            match i % 10 {
                0 => Envelope {
                    timestamp: ts,
                    source_id: "doppler".into(),
                    message: Some(envelope::Message::Counter(Counter {
                        name: format!("c{i}"),
                        delta: 1,
                        total: i,
                    })),
                    ..Envelope::default()
                },
                1 => log_envelope(
                    ts,
                    "cloud_controller",
                    format!("Updated app with guid {i}"),
                    &[("source_type", "API")],
                ),
                _ => log_envelope(
                    ts,
                    "6f4d5c1e-0000-4000-8000-000000000001",
                    format!("line {i}"),
                    &[("source_type", "APP/PROC/WEB")],
                ),
            }
        })
        .collect()
}

async fn wait_envelopes(health: std::net::SocketAddr, what: &str, done: impl Fn(u64) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = ingress_envelopes(health).await;
        if n.is_some_and(&done) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {what}; envelopes in: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every completed records file under `dir`.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut dirs = vec![dir.join("CFLogs")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.to_string_lossy().ends_with(".json.gz") {
                out.insert(path);
            }
        }
    }
    out
}

/// One record's number as read back.
#[derive(Debug)]
struct Read {
    boot: String,
    kind: String,
    seq: Option<u64>,
    last_seq: Option<u64>,
    time: String,
    /// Written by the second process.
    after_restart: bool,
}

/// `kill -9` mid-stream with the file sink and a disk buffer, then a start
/// on the same buffer and a clean stop: for every boot and kind, the numbers
/// run from 0 with no hole; what the first process had not completed in a
/// file is replayed by the second under its first boot and number (so it
/// may appear twice, never under two numbers); the second declares its last
/// numbers at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_replay_keep_every_number_once_and_without_a_hole() {
    let pki = pki();
    let tmp = tempfile::tempdir().unwrap();
    pki.write_client_files(tmp.path()).unwrap();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(feed()),
            rate: Some(2_000),
            batch_size: 50,
            ..EmulatorConfig::default()
        },
    )
    .await;
    let out = tmp.path().join("out");
    let nozzle = |health: std::net::SocketAddr| -> Command {
        let mut cmd = common::nozzle();
        run_args(&mut cmd, &emu.addr.to_string(), tmp.path());
        cmd.args(["--sink", "file", "--roll-interval", "1"])
            .args(["--instance-index", "2"])
            .args(["--health-addr", &health.to_string()])
            .arg("--out-dir")
            .arg(&out)
            .arg("--buffer-dir")
            .arg(tmp.path().join("buffer"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };

    let health = free_addr();
    let first = spawn(&mut nozzle(health));
    // 4,900 envelopes at 2,000 a second: half-way between two rolls, so the
    // open file holds records the disk buffer must replay.
    wait_envelopes(health, "some of the stream", |n| n >= 4_900).await;
    wait_for("a completed file", Duration::from_secs(30), || {
        !files(&out).is_empty()
    })
    .await;
    first.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(!first.finish().await.status.success());
    let before_restart = files(&out);
    let sent_before = emu.envelopes_sent();
    assert!(sent_before < N, "killed mid-stream: {sent_before} sent");

    let health = free_addr();
    let second = spawn(&mut nozzle(health));
    // What the first process was sent but had not taken in is gone with it
    // (never numbered); the second gets the rest.
    // (The emulator takes a batch before it waits to send it: the one the
    // first connection was waiting on is neither sent nor sent again.)
    let rest = N - sent_before;
    wait_envelopes(health, "the rest of the stream", |n| n + 50 >= rest).await;
    let mut sent_after = 0;
    loop {
        let n = ingress_envelopes(health).await.unwrap();
        if n == sent_after {
            break;
        }
        sent_after = n;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(sent_after <= rest, "{sent_after} of {rest}");
    let (status, text) = status_text(&second.stop().await);
    assert!(status.success(), "{text}");

    let mut records = Vec::new();
    for path in files(&out) {
        let after_restart = !before_restart.contains(&path);
        for r in cf_audit_nozzle::demo::read_records_file(path.to_str().unwrap()).unwrap() {
            let text = |k: &str| {
                r[k].as_str()
                    .unwrap_or_else(|| panic!("{k}: {r}"))
                    .to_string()
            };
            records.push(Read {
                boot: text("boot"),
                kind: text("kind"),
                seq: r["seq"].as_u64(),
                last_seq: r["last_seq"].as_u64(),
                time: text("time"),
                after_restart,
            });
        }
    }
    let boots: BTreeSet<&str> = records.iter().map(|r| r.boot.as_str()).collect();
    assert_eq!(boots.len(), 2, "{boots:?}");
    assert!(boots.iter().all(|b| b.starts_with("2-")), "{boots:?}");
    let second_boot = records
        .iter()
        .rev()
        .find(|r| r.last_seq.is_some())
        .map(|r| r.boot.clone())
        .expect("the second process declared");

    // Per (boot, kind): the numbers seen (with their envelope) and declared.
    let mut seen: BTreeMap<(&str, &str), BTreeMap<u64, BTreeSet<&str>>> = BTreeMap::new();
    let mut copies: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut declared: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut numbers_of_envelope: BTreeMap<&str, BTreeSet<(&str, &str, u64)>> = BTreeMap::new();
    let mut replayed = 0;
    for r in &records {
        let key = (r.boot.as_str(), r.kind.as_str());
        match (r.seq, r.last_seq) {
            (Some(seq), None) => {
                seen.entry(key)
                    .or_default()
                    .entry(seq)
                    .or_default()
                    .insert(&r.time);
                *copies.entry(key).or_default() += 1;
                numbers_of_envelope
                    .entry(&r.time)
                    .or_default()
                    .insert((&r.boot, &r.kind, seq));
                if r.after_restart && r.boot != second_boot {
                    replayed += 1;
                }
            }
            (None, Some(last)) => {
                let d = declared.entry(key).or_default();
                *d = (*d).max(last);
            }
            other => panic!("a record with seq and last_seq {other:?}"),
        }
    }
    assert!(
        replayed > 0,
        "the second process replayed the first one's records: sent before {sent_before}, files before {}, seen {:?}",
        before_restart.len(),
        seen.iter()
            .map(|(k, v)| (k, v.len(), v.keys().max()))
            .collect::<Vec<_>>()
    );
    for (key, seqs) in &seen {
        let last = seqs
            .keys()
            .max()
            .copied()
            .unwrap()
            .max(declared.get(key).copied().unwrap_or(0));
        let missing: Vec<u64> = (0..=last).filter(|s| !seqs.contains_key(s)).collect();
        assert_eq!(missing, [] as [u64; 0], "{key:?}: no number missing");
        for (seq, times) in seqs {
            assert_eq!(
                times.len(),
                1,
                "{key:?} seq {seq} numbers one envelope: {times:?}"
            );
        }
    }
    for (time, numbers) in &numbers_of_envelope {
        assert_eq!(
            numbers.len(),
            1,
            "envelope {time} has one number: {numbers:?}"
        );
    }
    let distinct: u64 = seen.values().map(|s| s.len() as u64).sum();
    let written: u64 = copies.values().sum();
    assert!(written >= distinct);
    // The second process stopped cleanly: each kind it numbered is declared
    // with its last number; the first one was killed before any minute passed.
    let second_kinds: BTreeMap<&str, u64> = seen
        .iter()
        .filter(|((b, _), _)| *b == second_boot)
        .map(|((_, k), s)| (*k, *s.keys().max().unwrap()))
        .collect();
    assert_eq!(second_kinds.len(), 3, "{second_kinds:?}");
    let second_declared: BTreeMap<&str, u64> = declared
        .iter()
        .filter(|((b, _), _)| *b == second_boot)
        .map(|((_, k), n)| (*k, *n))
        .collect();
    assert_eq!(second_declared, second_kinds);
    assert!(
        declared.keys().all(|(b, _)| *b == second_boot),
        "{declared:?}"
    );
    // Every envelope the second process took in has its number.
    let second_numbered: u64 = seen
        .iter()
        .filter(|((b, _), _)| *b == second_boot)
        .map(|(_, s)| s.len() as u64)
        .sum();
    assert_eq!(second_numbered, sent_after);

    // `gaps` on the untouched output: complete (exit 0), the replays
    // reported as duplicates, exactly as many as were written twice.
    let (code, report) = gaps_report(&out);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(report["complete"], true);
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), seen.len(), "{report}");
    let duplicates: u64 = groups
        .iter()
        .map(|g| g["duplicate_count"].as_u64().unwrap())
        .sum();
    assert_eq!(duplicates, written - distinct, "{report}");
    assert!(groups.iter().all(|g| g["missing_count"] == 0), "{report}");

    // Records cut from the middle of one file: `gaps` names exactly them.
    let (path, removed) = cut_from_the_middle(&out, &second_boot);
    let (code, report) = gaps_report(&out);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["complete"], false);
    let mut missing = BTreeMap::new();
    for g in report["groups"].as_array().unwrap() {
        for m in g["missing"].as_array().unwrap() {
            let (from, to) = (m["from"].as_u64().unwrap(), m["to"].as_u64().unwrap());
            let key = (
                g["boot"].as_str().unwrap().to_string(),
                g["kind"].as_str().unwrap().to_string(),
            );
            missing
                .entry(key)
                .or_insert_with(Vec::new)
                .extend(from..=to);
        }
    }
    assert_eq!(
        missing,
        BTreeMap::from([((second_boot.clone(), "app_log".to_string()), removed)]),
        "cut from {}",
        path.display()
    );
}

/// `gaps --dir DIR --json`: exit code and report.
fn gaps_report(dir: &Path) -> (Option<i32>, serde_json::Value) {
    let out = common::nozzle()
        .args(["gaps", "--json", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "gaps --json: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// Rewrites the largest app_log file numbered under `boot` without its
/// records 10, 11, 12 and 20 (in file order); returns the file and their seqs.
fn cut_from_the_middle(dir: &Path, boot: &str) -> (PathBuf, Vec<u64>) {
    use std::io::Write as _;
    let read = |p: &PathBuf| cf_audit_nozzle::demo::read_records_file(p.to_str().unwrap()).unwrap();
    let (path, mut records) = files(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/app_log/"))
        .map(|p| {
            let records = read(&p);
            (p, records)
        })
        .filter(|(_, records)| {
            records
                .iter()
                .all(|r| r["boot"] == boot && r.get("seq").is_some())
        })
        .max_by_key(|(_, records)| records.len())
        .expect("an app_log file of the second process");
    assert!(
        records.len() > 40,
        "{}: {} records",
        path.display(),
        records.len()
    );
    let mut removed = Vec::new();
    for at in [20, 12, 11, 10] {
        removed.push(records.remove(at)["seq"].as_u64().unwrap());
    }
    removed.sort_unstable();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(&serde_json::json!({"Records": records})).unwrap())
        .unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    (path, removed)
}

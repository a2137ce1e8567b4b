//! The fault suite: the nozzle as a process, with the faults an operator
//! meets (a SIEM that is down, slow or gone for a while, the process killed
//! or stopped at full load, the RLP restarting, a full disk), and exact
//! accounting of every record afterwards.
//!
//! Every scenario feeds numbered log lines (`seq=000000` …) from a test RLP
//! that never sends an envelope twice, to a JSON-over-HTTP receiver that
//! records what it accepted, and checks the numbers that arrived.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use cf_audit_nozzle::source::emulator::{Emulator, EmulatorConfig, Feed};
use cf_audit_nozzle::tls::Pki;
use common::*;

/// A JSON-lines receiver: 503 while `up` is false, else accepts (after
/// `delay_ms`) and records every `seq=` it got.
#[derive(Default)]
struct Receiver {
    up: AtomicBool,
    /// Refuse every n-th request (0: none) with 503.
    refuse_every: AtomicU64,
    requests: AtomicU64,
    delay_ms: AtomicU64,
    seqs: std::sync::Mutex<Vec<u64>>,
    /// Declarations of the last record number (`last_seq`) received.
    declarations: AtomicU64,
    refused: AtomicU64,
}

impl Receiver {
    async fn start() -> (Arc<Self>, String) {
        let rx = Arc::new(Self::default());
        let state = Arc::clone(&rx);
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: bytes::Bytes| {
            let rx = Arc::clone(&state);
            async move {
                let n = rx.requests.fetch_add(1, Ordering::SeqCst) + 1;
                let every = rx.refuse_every.load(Ordering::SeqCst);
                if !rx.up.load(Ordering::SeqCst) || (every > 0 && n % every == 0) {
                    rx.refused.fetch_add(1, Ordering::SeqCst);
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let delay = rx.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&body[..]),
                        &mut out,
                    )
                    .unwrap();
                    out
                } else {
                    body.to_vec()
                };
                let mut got = Vec::new();
                for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                    if v.get("last_seq").is_some() {
                        rx.declarations.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let msg = v["message"].as_str().unwrap();
                    got.push(msg.strip_prefix("seq=").unwrap().parse::<u64>().unwrap());
                }
                rx.seqs.lock().unwrap().extend(got);
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (rx, url)
    }

    /// How many times each number of `range` arrived.
    fn counts(&self, range: std::ops::Range<u64>) -> Vec<u64> {
        let seqs = self.seqs.lock().unwrap();
        let mut count = vec![0; (range.end - range.start) as usize];
        for s in seqs.iter().filter(|s| range.contains(s)) {
            count[(s - range.start) as usize] += 1;
        }
        count
    }

    /// (distinct numbers, duplicates, whether they are exactly 0..n).
    fn tally(&self, n: u64) -> (u64, u64, bool) {
        let seqs = self.seqs.lock().unwrap();
        let mut count: BTreeMap<u64, u64> = BTreeMap::new();
        for s in seqs.iter() {
            *count.entry(*s).or_default() += 1;
        }
        let dups = seqs.len() as u64 - count.len() as u64;
        let exact = count.len() as u64 == n && count.keys().copied().eq(0..n);
        (count.len() as u64, dups, exact)
    }
}

fn numbered(n: u64) -> Feed {
    Feed::Fixed(envelopes(0..n))
}

/// Numbered log lines `seq=NNNNNN` for the numbers of `range`.
fn envelopes(range: std::ops::Range<u64>) -> Vec<cf_audit_nozzle::proto::Envelope> {
    range
        .map(|i| {
            log_envelope(
                1_700_000_000_000_000_000 + i as i64,
                "6f4d5c1e-0000-4000-8000-000000000001",
                format!("seq={i:06}"),
                &[("source_type", "APP/PROC/WEB")],
            )
        })
        .collect()
}

/// `/health`: its status code and body.
async fn health_of(health: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{health}/health"))
        .await
        .unwrap();
    let code = r.status().as_u16();
    (
        code,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

/// The nozzle against `emu`, delivering to `url` as JSON lines, with
/// `/metrics` on `health`.
fn http_nozzle(emu: &Emulator, tls: &Path, url: &str, health: std::net::SocketAddr) -> Command {
    let mut cmd = nozzle();
    run_args(&mut cmd, &emu.addr.to_string(), tls);
    cmd.args(["--sink", "http", "--http-format", "json", "--http-url", url])
        .args(["--health-addr", &health.to_string()])
        .args(["--batch-max-records", "500", "--batch-max-age-ms", "50"])
        .arg("--dead-letter-dir")
        .arg(tls.join("dead-letter"))
        // The nozzle logs JSON lines to stdout; the tests read both streams.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The `cf_nozzle_sink_*` samples of the http sink, by short name.
async fn sink_metrics(health: std::net::SocketAddr) -> Option<BTreeMap<String, f64>> {
    let text = metrics_text(health).await?;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).ok()?;
    let mut out = BTreeMap::new();
    for s in parsed.samples {
        // The http sink's samples, and the alerts raised (`alerts{reason}`).
        if s.labels.get("sink") != Some("http") && s.metric != "cf_nozzle_alerts_total" {
            continue;
        }
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let name = s
            .metric
            .trim_start_matches("cf_nozzle_sink_")
            .replace("cf_nozzle_alerts_total", "alerts");
        let name = match s.labels.get("reason") {
            Some(r) => format!("{name}{{{r}}}"),
            None => name,
        };
        *out.entry(name).or_default() += v;
    }
    Some(out)
}

/// Polls the metrics until `done` holds for them (fails after 60 s).
async fn wait_metrics(
    health: std::net::SocketAddr,
    what: &str,
    done: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    loop {
        if let Some(m) = sink_metrics(health).await {
            if done(&m) {
                return m;
            }
            last = Some(m);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {what}; last metrics: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A test RLP sending `n` numbered lines (each once), a receiver, and
/// folders for the nozzle's TLS files and disk buffer.
struct Setup {
    _pki: Pki,
    tmp: tempfile::TempDir,
    emu: Emulator,
    rx: Arc<Receiver>,
    url: String,
}

impl Setup {
    async fn start(n: u64, emu: EmulatorConfig) -> Self {
        let pki = pki();
        let tmp = tempfile::tempdir().unwrap();
        pki.write_client_files(tmp.path()).unwrap();
        let emu = emulator(
            &pki,
            EmulatorConfig {
                feed: numbered(n),
                ..emu
            },
        )
        .await;
        let (rx, url) = Receiver::start().await;
        Self {
            _pki: pki,
            tmp,
            emu,
            rx,
            url,
        }
    }

    /// The nozzle with `/metrics` on `health` and `extra` options.
    fn nozzle(&self, health: std::net::SocketAddr, extra: &[&str]) -> Command {
        let mut cmd = http_nozzle(&self.emu, self.tmp.path(), &self.url, health);
        cmd.args(extra);
        cmd
    }

    /// The same with the disk buffer in the test's folder.
    fn buffered(&self, health: std::net::SocketAddr, extra: &[&str]) -> Command {
        let mut cmd = self.nozzle(health, extra);
        cmd.arg("--buffer-dir").arg(self.tmp.path().join("buffer"));
        cmd
    }
}

/// `kill -9` while the SIEM is down and 20,000 records wait in the disk
/// buffer, then a restart once it is back: every record arrives, each once
/// (nothing was delivered before the kill, so there is nothing to repeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_the_siem_down_loses_nothing_the_disk_buffer_accepted() {
    const N: u64 = 20_000;
    let s = Setup::start(N, EmulatorConfig::default()).await;
    let (emu, rx) = (&s.emu, &s.rx);
    let health = free_addr();
    // A small memory queue: most records wait on disk only.
    let run = |health| s.buffered(health, &["--queue-capacity", "1000"]);
    let first = spawn(&mut run(health));
    let m = wait_metrics(health, "all records accepted", |m| {
        m.get("received_total") == Some(&(N as f64))
    })
    .await;
    assert_eq!(m.get("delivered_total"), Some(&0.0), "{m:?}");
    assert!(m["buffered"] >= (N - 1000) as f64, "{m:?}");
    assert!(rx.refused.load(Ordering::SeqCst) > 0, "the SIEM was asked");
    first.signal(nix::sys::signal::Signal::SIGKILL);
    let status = first.finish().await.status;
    assert!(!status.success());
    assert_eq!(emu.envelopes_sent(), N, "the RLP sent each envelope once");

    rx.up.store(true, Ordering::SeqCst);
    let health = free_addr();
    let second = spawn(&mut run(health));
    let m = wait_metrics(health, "the replay delivered", |m| {
        m.get("delivered_total") == Some(&(N as f64))
    })
    .await;
    // The replayed records count as received by this process.
    assert_eq!(m.get("received_total"), Some(&(N as f64)), "{m:?}");
    assert_eq!(m.get("dropped_total{buffer_full}"), Some(&0.0), "{m:?}");
    let (status, err) = status_text(&second.stop().await);
    assert!(status.success(), "{err}");
    assert_eq!(rx.tally(N), (N, 0, true));
    // Everything was acknowledged: the buffer is empty and a third start
    // replays nothing.
    let health = free_addr();
    let third = spawn(&mut run(health));
    let m = wait_metrics(health, "the third start", |_| true).await;
    assert_eq!(m.get("received_total"), Some(&0.0), "{m:?}");
    assert!(third.stop().await.status.success());
    assert_eq!(rx.tally(N).1, 0);
}

/// `kill -9` while a slow SIEM is taking the records: after the restart
/// every number is there, and what arrives twice is at most the batch that
/// was being delivered when the process died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_delivering_repeats_at_most_one_batch() {
    const N: u64 = 20_000;
    let s = Setup::start(N, EmulatorConfig::default()).await;
    let rx = &s.rx;
    rx.up.store(true, Ordering::SeqCst);
    rx.delay_ms.store(100, Ordering::SeqCst);
    let run = |health| s.buffered(health, &[]);
    let health = free_addr();
    let first = spawn(&mut run(health));
    wait_for("some records delivered", Duration::from_secs(60), || {
        rx.seqs.lock().unwrap().len() >= 3000
    })
    .await;
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.finish().await;
    let before = rx.seqs.lock().unwrap().len() as u64;
    assert!(before < N, "killed mid-way: {before}");

    rx.delay_ms.store(0, Ordering::SeqCst);
    let health = free_addr();
    let second = spawn(&mut run(health));
    wait_for("every number delivered", Duration::from_secs(60), || {
        rx.tally(N).0 == N
    })
    .await;
    let (status, err) = status_text(&second.stop().await);
    assert!(status.success(), "{err}");
    let (distinct, dups, exact) = rx.tally(N);
    assert_eq!((distinct, exact), (N, true));
    assert!(dups <= 500, "{dups} duplicates: more than one batch of 500");
}

/// SIGTERM at full load with a SIEM that takes a second per request: the
/// process exits 0 within the shutdown deadline, the rest stays in the disk
/// buffer, and the next start delivers it: every number, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_full_load_exits_in_time_and_keeps_the_rest_on_disk() {
    const N: u64 = 20_000;
    let s = Setup::start(N, EmulatorConfig::default()).await;
    let rx = &s.rx;
    rx.up.store(true, Ordering::SeqCst);
    rx.delay_ms.store(1000, Ordering::SeqCst);
    let run = |health| s.buffered(health, &["--shutdown-timeout", "2"]);
    let health = free_addr();
    let first = spawn(&mut run(health));
    wait_metrics(health, "all accepted", |m| {
        m.get("received_total") == Some(&(N as f64))
    })
    .await;
    let stopped = tokio::time::Instant::now();
    let (status, err) = status_text(&first.stop().await);
    assert!(status.success(), "exit status {status}: {err}");
    // Not a timed assertion of speed: the deadline is the contract (2 s,
    // plus process start-up and exit).
    assert!(stopped.elapsed() < Duration::from_secs(6), "{err}");
    assert!(
        err.contains("stay in the disk buffer"),
        "the operator is told where the rest is: {err}"
    );
    let delivered = rx.tally(N).0;
    assert!(delivered < N, "the slow SIEM took {delivered}");

    rx.delay_ms.store(0, Ordering::SeqCst);
    let health = free_addr();
    let second = spawn(&mut run(health));
    wait_for("every number delivered", Duration::from_secs(60), || {
        rx.tally(N).0 == N
    })
    .await;
    assert!(second.stop().await.status.success());
    let (distinct, dups, exact) = rx.tally(N);
    assert_eq!((distinct, exact), (N, true));
    assert!(dups <= 500, "{dups} duplicates");
}

/// The RLP ends every stream after two batches, half of them with an
/// error, and a SIEM refuses every third request: all 20,000 numbers arrive,
/// each exactly once, without a disk buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rlp_that_keeps_restarting_and_a_503_storm_lose_nothing() {
    const N: u64 = 20_000;
    let s = Setup::start(
        N,
        EmulatorConfig {
            end_stream_after: Some(2),
            end_stream_with_error: true,
            ..Default::default()
        },
    )
    .await;
    let (emu, rx) = (&s.emu, &s.rx);
    rx.up.store(true, Ordering::SeqCst);
    rx.refuse_every.store(3, Ordering::SeqCst);
    let health = free_addr();
    let child = spawn(&mut s.nozzle(health, &[]));
    wait_metrics(health, "every record delivered", |m| {
        m.get("delivered_total") == Some(&(N as f64))
    })
    .await;
    let (status, err) = status_text(&child.stop().await);
    assert!(status.success(), "{err}");
    assert_eq!(rx.tally(N), (N, 0, true));
    assert!(emu.streams_opened() >= N / 100 / 2, "the RLP restarted");
    assert!(
        rx.refused.load(Ordering::SeqCst) > 0,
        "the SIEM refused some"
    );
}

/// The disk under the buffer fills up (a 2 MiB tmpfs) while the SIEM is
/// down: the nozzle says so, counts every record it could not keep, fails
/// `/health` while its disk refuses, keeps running, and delivers the rest
/// once the SIEM is back. Then the buffer's space is free again, and every
/// record after the recovery is delivered, in the same process and after a
/// restart (issue 17: 123,200 of the next 126,000 records were dropped, and
/// after a restart 60,000 of 60,000). Needs root for the mount
/// (`scripts/test` runs as root in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_buffer_is_counted_and_recovered_from() {
    // About 19,500 records (of ~107 bytes) fill the disk; the rest is
    // refused, enough for /health to call the sink failing.
    const N: u64 = 40_000;
    // Each fits the small disk on its own (about 0.5 MiB), not with a full one.
    const MORE: u64 = 5_000;
    let s = Setup::start(N, EmulatorConfig::default()).await;
    let rx = &s.rx;
    let mnt = s.tmp.path().join("small-disk");
    std::fs::create_dir(&mnt).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .output()
        .expect("mount(8) runs");
    assert!(
        mount.status.success(),
        "this test mounts a 2 MiB tmpfs and needs root: {}",
        String::from_utf8_lossy(&mount.stderr)
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let run = |health| {
        let mut cmd = s.nozzle(health, &["--queue-capacity", "1000"]);
        cmd.arg("--buffer-dir").arg(&mnt);
        cmd
    };
    let health = free_addr();
    let child = spawn(&mut run(health));
    // Every record offered, and each one's fate counted: `received` is
    // counted before the disk refuses a chunk, so a scrape in between sees a
    // chunk received and not yet dropped.
    let m = wait_metrics(health, "all records offered and accounted for", |m| {
        let accounted: f64 = [
            "delivered_total",
            "queued",
            "buffered",
            "in_flight",
            "dead_lettered_total",
            "dropped_total{buffer_error}",
            "dropped_total{buffer_full}",
            "dropped_total{queue_full}",
            "dropped_total{write_error}",
        ]
        .iter()
        .map(|k| m.get(*k).copied().unwrap_or(f64::NAN))
        .sum();
        m.get("received_total") == Some(&(N as f64)) && accounted == N as f64
    })
    .await;
    let lost = m["dropped_total{buffer_error}"];
    assert!(lost > 0.0, "the disk filled up: {m:?}");
    assert_eq!(m["buffer_refusing"], 1.0, "{m:?}");
    let (code, body) = health_of(health).await;
    assert_eq!(code, 503, "{body}");
    let problem = body["problems"][0].as_str().unwrap();
    assert!(
        problem.starts_with(
            "sink http is dropping the records it is given: the disk under --buffer-dir refuses"
        ),
        "{body}"
    );

    rx.up.store(true, Ordering::SeqCst);
    let m = wait_metrics(health, "the rest delivered and its space free", |m| {
        m["delivered_total"] + m["dropped_total{buffer_error}"] == N as f64
            && m["buffer_bytes"] == 0.0
    })
    .await;
    let delivered = m["delivered_total"];
    assert_eq!(m["dropped_total{buffer_error}"], lost, "{m:?}");
    let (code, body) = health_of(health).await;
    assert_eq!((code, &body["status"]), (200, &"ok".into()), "{body}");
    let (distinct, dups, _) = rx.tally(N);
    assert_eq!((distinct, dups), (delivered as u64, 0));

    // New records after the recovery: every one is delivered, none dropped.
    s.emu.extend(&envelopes(N..N + MORE));
    let m = wait_metrics(health, "the new records delivered", |m| {
        m["received_total"] == (N + MORE) as f64
            && m["delivered_total"] + m["dropped_total{buffer_error}"] == (N + MORE) as f64
    })
    .await;
    assert_eq!(m["dropped_total{buffer_error}"], lost, "{m:?}");
    assert_eq!(m["delivered_total"], delivered + MORE as f64, "{m:?}");
    assert_eq!(rx.counts(N..N + MORE), vec![1; MORE as usize]);
    let (status, err) = status_text(&child.stop().await);
    assert!(status.success(), "{err}");
    assert!(err.contains("cannot write the disk buffer"), "{err}");

    // After a restart on the same disk: nothing to replay, nothing held,
    // and every new record is delivered.
    s.emu.extend(&envelopes(N + MORE..N + 2 * MORE));
    let health = free_addr();
    let child = spawn(&mut run(health));
    let m = wait_metrics(health, "the records after the restart delivered", |m| {
        m["received_total"] == MORE as f64
            && m["delivered_total"] + m["dropped_total{buffer_error}"] == MORE as f64
    })
    .await;
    assert_eq!(m["dropped_total{buffer_error}"], 0.0, "{m:?}");
    let (status, err) = status_text(&child.stop().await);
    assert!(status.success(), "{err}");
    assert_eq!(rx.counts(N + MORE..N + 2 * MORE), vec![1; MORE as usize]);
    assert_eq!(rx.tally(N + 2 * MORE).1, 0, "nothing arrived twice");
}

/// The buffer fills past `--buffer-warn-fill` while the SIEM is down: one
/// `buffer_filling` alert (log line and count), and the fill on `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_buffer_raises_buffer_filling_once() {
    const N: u64 = 6_000;
    let s = Setup::start(N, EmulatorConfig::default()).await;
    let health = free_addr();
    let mut cmd = s.buffered(
        health,
        &[
            "--buffer-max-bytes",
            "1048576",
            "--buffer-warn-fill",
            "0.25",
            "--queue-capacity",
            "100",
            "--shutdown-timeout",
            "1",
        ],
    );
    let child = spawn(&mut cmd);
    let m = wait_metrics(health, "all records buffered and the alert", |m| {
        m.get("received_total") == Some(&(N as f64))
            && m.get("alerts{buffer_filling}") == Some(&1.0)
    })
    .await;
    assert_eq!(m["buffer_capacity_bytes"], 1_048_576.0, "{m:?}");
    let fill = m["buffer_bytes"] / m["buffer_capacity_bytes"];
    assert!((0.25..1.0).contains(&fill), "{m:?}");
    assert_eq!(m["dropped_total{buffer_full}"], 0.0, "{m:?}");
    for reason in ["sink_dropped", "sink_stalled", "loggregator_dropped"] {
        assert_eq!(m[&format!("alerts{{{reason}}}")], 0.0, "{m:?}");
    }
    let (code, body) = health_of(health).await;
    assert_eq!(code, 200, "a filling buffer is not a failure: {body}");
    let (status, out) = status_text(&child.stop().await);
    assert!(status.success(), "{out}");
    let alerts: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("buffer_filling"))
        .collect();
    assert_eq!(alerts.len(), 1, "{out}");
    assert!(
        alerts[0].contains("sink http's disk buffer is ")
            && alerts[0].contains("--buffer-warn-fill 25 %"),
        "{}",
        alerts[0]
    );
}

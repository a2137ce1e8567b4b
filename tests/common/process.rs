//! Starting and stopping the nozzle binary (and the other processes the
//! tests run): one way to build its command line, to signal it, to read what
//! it prints and to wait for its exit, so a test says only what it runs and
//! what it expects.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

/// The binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_cf-audit-nozzle");

/// How long [`Running::stop`] and [`Running::finish`] wait for the exit.
pub const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// The binary, with nothing of the test's environment that the nozzle would
/// take for configuration: cargo's `OUT_DIR` (the file sink's folder to the
/// nozzle), Cloud Foundry's `PORT` and `VCAP_*`, and the developer's proxy
/// and `RUST_LOG` (the default, `info`, is set). `/health` is on a port of
/// its own, as tests run in parallel. A test sets what it needs on top.
pub fn nozzle() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("RUST_LOG", "info");
    for var in ["OUT_DIR", "PORT", "VCAP_SERVICES", "VCAP_APPLICATION"] {
        cmd.env_remove(var);
    }
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"] {
        cmd.env_remove(var).env_remove(var.to_lowercase());
    }
    cmd.env("HEALTH_ADDR", "127.0.0.1:0");
    cmd
}

/// An address on 127.0.0.1 that was free a moment ago.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Everything `out` printed, stdout then stderr.
pub fn printed(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The exit status of `out`, and everything it printed ([`printed`]).
pub fn status_text(out: &Output) -> (ExitStatus, String) {
    (out.status, printed(out))
}

/// Polls `cond` (every 10 ms of tokio's clock, so paused clocks work) until
/// it holds; panics after `within`.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A started process; killed (and reaped) if a failing test leaves it
/// behind.
pub struct Running {
    child: Option<Child>,
    /// Stdout once [`Running::lines`] has taken it from the child.
    stdout: Option<BufReader<ChildStdout>>,
}

/// Starts `cmd` (its stdio as the caller set it).
pub fn spawn(cmd: &mut Command) -> Running {
    Running {
        child: Some(cmd.spawn().expect("start the process")),
        stdout: None,
    }
}

impl Running {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.id() as i32), sig)
            .expect("signal the process");
    }

    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// The next `n` lines of its (piped) stdout; panics unless they come
    /// within `within`.
    pub async fn lines(&mut self, n: usize, within: Duration) -> Vec<String> {
        let mut reader = match self.stdout.take() {
            Some(r) => r,
            None => BufReader::new(self.child().stdout.take().expect("stdout piped")),
        };
        let read = tokio::task::spawn_blocking(move || {
            let lines: Vec<String> = (&mut reader)
                .lines()
                .take(n)
                .collect::<Result<_, _>>()
                .unwrap();
            (lines, reader)
        });
        let (lines, reader) = tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("{n} lines within {within:?}"))
            .unwrap();
        self.stdout = Some(reader);
        lines
    }

    /// SIGTERM, then [`Running::finish`].
    pub async fn stop(self) -> Output {
        self.terminate();
        self.finish().await
    }

    /// Waits for the exit (panics after [`EXIT_WITHIN`]); its status and
    /// what it printed on the piped streams, stdout from where
    /// [`Running::lines`] stopped.
    pub async fn finish(self) -> Output {
        self.finish_within(EXIT_WITHIN).await
    }

    /// [`Running::finish`], with the process killed and the test failed
    /// unless it exits within `within`.
    pub async fn finish_within(mut self, within: Duration) -> Output {
        let id = self.id();
        let child = self.child.take().expect("running");
        let stdout = self.stdout.take();
        let wait = tokio::task::spawn_blocking(move || {
            // The rest of a stdout already taken, read beside the wait so
            // that neither pipe can fill up and stall the process.
            let rest = stdout.map(|mut r| {
                std::thread::spawn(move || {
                    let mut rest = Vec::new();
                    r.read_to_end(&mut rest).unwrap();
                    rest
                })
            });
            let mut out = child.wait_with_output().unwrap();
            if let Some(rest) = rest {
                out.stdout = rest.join().unwrap();
            }
            out
        });
        match tokio::time::timeout(within, wait).await {
            Ok(out) => out.unwrap(),
            Err(_) => {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(id as i32), Signal::SIGKILL);
                panic!("the process did not exit within {within:?}");
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A started process whose stdout and stderr lines are collected as they
/// come, for a test to look at while it runs.
pub struct Collected {
    running: Running,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// Starts `cmd` with stdout and stderr piped and collected.
pub fn spawn_collected(cmd: &mut Command) -> Collected {
    let mut running = spawn(
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    let collect = |r: Box<dyn Read + Send>| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        lines
    };
    let stdout = collect(Box::new(running.child().stdout.take().unwrap()));
    let stderr = collect(Box::new(running.child().stderr.take().unwrap()));
    Collected {
        running,
        stdout,
        stderr,
    }
}

impl Collected {
    /// SIGTERM, and the exit status within `within`.
    pub async fn stop(self, within: Duration) -> ExitStatus {
        self.running.terminate();
        self.running.finish_within(within).await.status
    }
}

/// The text `/metrics` of the nozzle serving it on `health` answers with,
/// or `None` while it does not answer.
pub async fn metrics_text(health: SocketAddr) -> Option<String> {
    cf_audit_nozzle::http_client::http_client(None, false)
        .unwrap()
        .get(format!("http://{health}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// `cf_nozzle_ingress_envelopes_total` of the nozzle serving `/metrics` on
/// `health`, or `None` while it does not answer.
pub async fn ingress_envelopes(health: SocketAddr) -> Option<u64> {
    metrics_text(health)
        .await?
        .lines()
        .find_map(|l| l.strip_prefix("cf_nozzle_ingress_envelopes_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// A YAML file as JSON, read by Ruby's YAML (the BOSH director's parser
/// family; scripts/test installs Debian's ruby).
pub fn yaml(path: &str) -> serde_json::Value {
    let out = Command::new("ruby")
        .args([
            "-ryaml",
            "-rjson",
            "-e",
            "puts JSON.generate(YAML.safe_load(File.read(ARGV[0])))",
            path,
        ])
        .output()
        .expect("ruby (scripts/test installs Debian's ruby)");
    assert!(out.status.success(), "{path}: {}", printed(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

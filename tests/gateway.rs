//! The RLP Gateway source against a test gateway and a test UAA
//! (`common/gateway.rs`): token renewal, routine `closing` reconnects,
//! stalls, malformed frames, refused tokens, multi-megabyte frames, and the
//! UAA client itself. Time-based cases run on tokio's paused clock.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cf_audit_nozzle::backoff::Backoff;
use cf_audit_nozzle::http_client::http_client;
use cf_audit_nozzle::proto::Envelope;
use cf_audit_nozzle::record::Kind;
use cf_audit_nozzle::route::Router;
use cf_audit_nozzle::sink::{Batch, BatchConfig, Sink, SinkFailure, SinkQueue, run_sink};
use cf_audit_nozzle::source::emulator::gateway::{SSE_CLOSING, SSE_HEAD, sse_batch_frame};
use cf_audit_nozzle::source::gateway::{self, GatewayConfig, GatewayEndpoints, IDLE_TIMEOUT};
use cf_audit_nozzle::source::uaa::{TokenProvider, UaaConfig};
use cf_audit_nozzle::source::{SourceStatus, Streams};
use common::gateway::{Peers, Step, stream_of};
use common::{json_lines, log_envelope, nozzle, spawn, unnumbered};
use tokio_util::sync::CancellationToken;

/// A sink that keeps every envelope it is given, in order.
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Envelope>>>);

impl Sink for Collect {
    fn name(&self) -> &str {
        "collect"
    }
    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        let mut got = self.0.lock().unwrap();
        got.extend(batch.records.iter().map(|r| r.envelope.to_prost()));
        Ok(batch.records.len() as u64)
    }
    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        Ok(0)
    }
}

impl Collect {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn envelopes(&self) -> Vec<Envelope> {
        self.0.lock().unwrap().clone()
    }
}

/// The gateway source running against `peers` into a [`Collect`] sink.
struct Running {
    collect: Collect,
    status: Arc<SourceStatus>,
    tokens: TokenProvider,
    stop: CancellationToken,
    source: tokio::task::JoinHandle<()>,
    sink: tokio::task::JoinHandle<cf_audit_nozzle::sink::SinkReport>,
}

fn uaa_tokens(peers: &Peers) -> TokenProvider {
    TokenProvider::new(
        UaaConfig {
            token_url: UaaConfig::token_url_of(&peers.url()),
            client_id: peers.client_id.clone(),
            client_secret: peers.client_secret.clone().into(),
        },
        http_client(None, false).unwrap(),
    )
}

fn config(peers: &Peers, tokens: TokenProvider) -> GatewayConfig {
    GatewayConfig {
        endpoints: GatewayEndpoints::Given {
            url: peers.url(),
            tokens,
        },
        http: http_client(None, false).unwrap(),
        streams: Streams {
            shard_id: "audit".into(),
            ..Streams::default()
        },
        backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        idle_timeout: IDLE_TIMEOUT,
        max_frame_bytes: gateway::DEFAULT_MAX_FRAME_BYTES,
        handover: gateway::HANDOVER_LEAD,
        max_response_bytes: cf_audit_nozzle::source::cf_api::DEFAULT_MAX_RESPONSE_BYTES,
    }
}

fn start(cfg: GatewayConfig) -> Running {
    let tokens = match &cfg.endpoints {
        GatewayEndpoints::Given { tokens, .. } => tokens.clone(),
        GatewayEndpoints::Discover { .. } => unreachable!(),
    };
    let collect = Collect::default();
    let (queue, rx) = SinkQueue::new("collect", 1_000_000);
    let batch = BatchConfig {
        max_age: Duration::from_millis(10),
        ..BatchConfig::default()
    };
    let sink = tokio::spawn(run_sink(
        collect.clone(),
        rx,
        Arc::clone(queue.stats()),
        batch,
    ));
    let router = Arc::new(Router::new(
        vec![(queue, Kind::ALL.to_vec())],
        Default::default(),
        None,
        false,
    ));
    let status = Arc::new(SourceStatus::default());
    let stop = CancellationToken::new();
    let source = tokio::spawn(gateway::run(cfg, router, Arc::clone(&status), stop.clone()));
    Running {
        collect,
        status,
        tokens,
        stop,
        source,
        sink,
    }
}

impl Running {
    /// Waits (on whichever clock runs) until the sink holds `n` envelopes.
    async fn wait_for(&self, n: usize, within: Duration) {
        let until = tokio::time::Instant::now() + within;
        while self.collect.len() < n {
            assert!(
                tokio::time::Instant::now() < until,
                "got {} of {n} envelopes; status {:?}",
                self.collect.len(),
                self.status.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the source, drains the sink, returns every envelope received.
    async fn finish(self) -> (Vec<Envelope>, Arc<SourceStatus>, TokenProvider) {
        self.stop.cancel();
        self.source.await.unwrap();
        let report = self.sink.await.unwrap();
        assert_eq!(report.stats.dropped(), 0);
        (self.collect.envelopes(), self.status, self.tokens)
    }
}

/// `n` log envelopes numbered by timestamp from `first`.
fn numbered(first: usize, n: usize) -> Vec<Envelope> {
    (first..first + n)
        .map(|i| {
            log_envelope(
                i as i64,
                "app-guid",
                format!("line {i}"),
                &[("source_type", "APP/PROC/WEB")],
            )
        })
        .collect()
}

fn timestamps(envs: &[Envelope]) -> Vec<i64> {
    envs.iter().map(|e| e.timestamp).collect()
}

#[tokio::test(start_paused = true)]
async fn the_token_is_renewed_before_it_expires_over_ten_minutes_with_no_request_refused() {
    // Tokens live 2 s; every stream lasts 0.7 s (two batches, then closing),
    // so each token serves a few connections and is renewed 0.4 s early.
    let peers = Peers::start(Duration::from_secs(2), |n, _| {
        vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(sse_batch_frame(&numbered(10 * n, 5))),
            Step::Sleep(Duration::from_millis(350)),
            Step::Write(sse_batch_frame(&numbered(10 * n + 5, 5))),
            Step::Sleep(Duration::from_millis(350)),
            Step::Write(SSE_CLOSING.to_vec()),
        ]
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    tokio::time::sleep(Duration::from_secs(600)).await;
    let (envs, status, tokens) = run.finish().await;

    let requests = peers.gateway_requests();
    assert_eq!(peers.refused(), 0, "no request carried an expired token");
    let s = status.snapshot();
    assert_eq!((s.failures, s.last_error), (0, None));
    assert!(
        requests.len() >= 800,
        "{} streams in 10 minutes",
        requests.len()
    );
    // Tokens are renewed when used and older than 1.6 s (2 s less a fifth):
    // no stream ever starts with a token older than that.
    let uaa = peers.uaa_requests();
    assert!(uaa.len() >= 250, "{} tokens", uaa.len());
    assert_eq!(tokens.renewals(), uaa.len() as u64);
    for r in &requests {
        let auth = r.request.header("authorization").unwrap();
        let n: usize = auth.strip_prefix("bearer token-").unwrap().parse().unwrap();
        let age = r.at - uaa[n - 1].at;
        assert!(
            age < Duration::from_millis(1600),
            "token-{n} used at age {age:?}"
        );
    }
    // Every envelope of every stream, once, in order.
    let n = envs.len();
    assert!(n >= 10 * (requests.len() - 1), "{n} envelopes");
    assert_eq!(timestamps(&envs), (0..n as i64).collect::<Vec<_>>());
    assert_eq!(s.disconnects["closing"] as usize, requests.len() - 1);
}

#[tokio::test]
async fn a_hundred_closing_reconnects_lose_and_duplicate_nothing() {
    let peers = Peers::start(Duration::from_secs(3600), |n, _| {
        stream_of(&[numbered(10 * n, 4), numbered(10 * n + 4, 6)])
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    run.wait_for(1010, Duration::from_secs(60)).await;
    let (envs, status, tokens) = run.finish().await;

    assert_eq!(
        &envs[..1010],
        &numbered(0, 1010)[..],
        "exact envelopes, in order"
    );
    let s = status.snapshot();
    assert!(s.disconnects["closing"] >= 101, "{s:?}");
    assert_eq!(s.failures, 0, "a closing is not an error: {s:?}");
    assert_eq!(s.connects, s.attempts.min(s.connects), "{s:?}");
    assert_eq!(tokens.renewals(), 1, "one token serves every stream");
    assert_eq!(peers.refused(), 0);
    // Each request asked for the same selection.
    for r in peers.gateway_requests() {
        assert_eq!(
            r.request.target,
            "/v2/read?log&counter&gauge&timer&event&shard_id=audit"
        );
        assert_eq!(r.request.header("accept"), Some("text/event-stream"));
        assert!(
            r.request
                .header("authorization")
                .unwrap()
                .starts_with("bearer token-")
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_stream_is_detected_and_reconnected_within_twenty_seconds() {
    let peers = Peers::start(Duration::from_secs(3600), |n, _| match n {
        // No byte at all, not even the response head.
        0 => vec![Step::Stall],
        // The head, then silence: no data, no heartbeat.
        1 => vec![Step::Write(SSE_HEAD.to_vec()), Step::Stall],
        2 => vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(sse_batch_frame(&numbered(0, 3))),
            Step::Stall,
        ],
        // On a paused clock a stream must take time, or reconnects never let it advance.
        _ => {
            let mut steps = stream_of(&[numbered(3 + 2 * (n - 3), 2)]);
            steps.insert(2, Step::Sleep(Duration::from_secs(1)));
            steps
        }
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    run.wait_for(5, Duration::from_secs(120)).await;
    let (envs, status, _) = run.finish().await;

    assert_eq!(&envs[..5], &numbered(0, 5)[..]);
    let at: Vec<_> = peers.gateway_requests().iter().map(|s| s.at).collect();
    for (i, pair) in at.windows(2).take(3).enumerate() {
        let gap = pair[1] - pair[0];
        assert!(
            gap <= Duration::from_secs(20),
            "stall {i} noticed after {gap:?}"
        );
        assert!(gap >= IDLE_TIMEOUT, "not before the idle timeout: {gap:?}");
    }
    let s = status.snapshot();
    assert_eq!(s.disconnects["connect"], 1, "no response head: {s:?}");
    assert_eq!(s.disconnects["idle"], 2, "{s:?}");
    assert_eq!(s.last_error, None, "recovered: {s:?}");
    assert!(
        s.previous_error
            .as_deref()
            .unwrap()
            .contains("no data or heartbeat"),
        "{s:?}"
    );
}

#[tokio::test]
async fn a_malformed_frame_mid_stream_is_counted_and_skipped_and_the_stream_goes_on() {
    let peers = Peers::start(Duration::from_secs(3600), |n, _| {
        if n > 0 {
            return vec![Step::Write(SSE_HEAD.to_vec()), Step::Stall];
        }
        vec![
            Step::Write(SSE_HEAD.to_vec()),
            Step::Write(sse_batch_frame(&numbered(0, 3))),
            Step::Write(b"data: {\"batch\":[{\"timestamp\":\"yesterday\"}]}\n\n".to_vec()),
            Step::Write(b"data: {\"batch\":[{\"log\":{\"payload\":\"%%%\"}}]}\n\n".to_vec()),
            Step::Write(b"data: not json at all\n\n".to_vec()),
            Step::Write(b"event: heartbeat\ndata: 1541438163\n\n".to_vec()),
            Step::Write(sse_batch_frame(&numbered(3, 3))),
            Step::Write(SSE_CLOSING.to_vec()),
        ]
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    run.wait_for(6, Duration::from_secs(30)).await;
    let (envs, status, _) = run.finish().await;

    assert_eq!(envs, numbered(0, 6), "the frames around the bad ones");
    let s = status.snapshot();
    assert_eq!(s.malformed_frames, 3);
    assert_eq!(s.failures, 0, "{s:?}");
    assert_eq!(
        s.disconnects["closing"], 1,
        "the first stream ran to its end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_token_is_renewed_once_then_an_error_with_one_attempt_per_backoff_step() {
    let peers = Peers::start(Duration::from_secs(3600), |n, _| {
        let mut steps = stream_of(&[numbered(n, 1)]);
        // On a paused clock a stream must take time, or reconnects never let it advance.
        steps.insert(2, Step::Sleep(Duration::from_secs(1)));
        steps
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    run.wait_for(1, Duration::from_secs(10)).await;
    // The client's authority is revoked: every token is refused from now on.
    peers.deny.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (_, status, tokens) = run.finish().await;

    let requests = peers.gateway_requests();
    let token = |i: usize| {
        requests[i]
            .request
            .header("authorization")
            .unwrap()
            .to_string()
    };
    let first_refused = requests.iter().position(|r| !r.accepted).unwrap();
    let refused = &requests[first_refused..];
    assert!(refused.iter().all(|r| !r.accepted));
    // The cached token is refused, then at once one fresh token, refused too.
    assert_eq!(refused[1].at, refused[0].at, "the renewal retries at once");
    assert_eq!(
        token(first_refused),
        token(first_refused - 1),
        "cached token first"
    );
    assert_ne!(
        token(first_refused + 1),
        token(first_refused),
        "then a fresh one"
    );
    // Then one attempt per backoff step (100 ms doubling, jittered to 50-100 %),
    // each with a fresh token.
    let mut step = Duration::from_millis(100);
    for (k, pair) in refused[1..].windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= step / 2 && gap <= step,
            "attempt {k}: gap {gap:?}, step {step:?}"
        );
        assert_ne!(
            pair[1].request.header("authorization"),
            pair[0].request.header("authorization")
        );
        step = (step * 2).min(Duration::from_secs(30));
    }
    // 60 s of steps of 100 ms .. 25.6 s: 9 to 10 attempts after the first two.
    assert!(
        (10..=13).contains(&refused.len()),
        "{} refused requests",
        refused.len()
    );
    assert_eq!(tokens.renewals() as usize, 1 + refused.len() - 1);
    let s = status.snapshot();
    let last = s.last_error.unwrap();
    assert!(
        last.contains(
            "refused a fresh token (HTTP 404): the token lacks doppler.firehose or logs.admin"
        ),
        "{last}"
    );
    assert!(!last.contains("token-"), "no token in errors: {last}");
    assert_eq!(s.disconnects["refused"] as usize, refused.len() - 1);
}

#[tokio::test]
async fn a_five_megabyte_batch_line_split_across_many_reads_arrives_whole() {
    // 80 envelopes of 64 KiB payload: a data line of about 7 MB once in base64 JSON.
    let big: Vec<Envelope> = (0..80)
        .map(|i| {
            let payload: Vec<u8> = (0..65_536u32)
                .map(|b| (b.wrapping_mul(31) + i) as u8)
                .collect();
            log_envelope(
                i as i64,
                "app-guid",
                payload,
                &[("source_type", "APP/PROC/WEB")],
            )
        })
        .collect();
    let frame = sse_batch_frame(&big);
    assert!(frame.len() > 5_000_000, "{} bytes", frame.len());
    let script_big = big.clone();
    let peers = Peers::start(Duration::from_secs(3600), move |n, _| {
        if n > 0 {
            return vec![Step::Write(SSE_HEAD.to_vec()), Step::Stall];
        }
        vec![
            Step::Write(SSE_HEAD.to_vec()),
            // A small frame cut inside "data:" and inside the JSON, byte by byte.
            Step::Trickle(sse_batch_frame(&numbered(1000, 1)), 1),
            Step::Trickle(sse_batch_frame(&script_big), 7919),
            Step::Write(SSE_CLOSING.to_vec()),
        ]
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    run.wait_for(81, Duration::from_secs(60)).await;
    let (envs, status, _) = run.finish().await;

    assert_eq!(envs[0], numbered(1000, 1)[0]);
    assert!(envs[1..] == big[..], "every payload byte intact");
    assert_eq!(status.snapshot().malformed_frames, 0);
}

#[tokio::test]
async fn uaa_gets_a_secret_with_special_characters_form_encoded_and_one_token_for_concurrent_callers()
 {
    let peers = Peers::start(Duration::from_secs(3600), |_, _| vec![]).await;
    let tokens = uaa_tokens(&peers);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let t = tokens.clone();
            tokio::spawn(async move { t.authorization().await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), "bearer token-1");
    }
    assert_eq!(
        peers.uaa_requests().len(),
        1,
        "concurrent callers share one fetch"
    );
    assert_eq!(tokens.renewals(), 1);
    let body = String::from_utf8(peers.uaa_requests()[0].request.body.clone()).unwrap();
    assert_eq!(
        body,
        "grant_type=client_credentials&client_id=audit-nozzle&client_secret=p%40ss+w%26rd%3D%2B%25%2F%C3%A9%3B"
    );

    // Invalidating an old token does nothing; the current one renews.
    tokens.invalidate("bearer token-0");
    assert_eq!(tokens.authorization().await.unwrap(), "bearer token-1");
    tokens.invalidate("bearer token-1");
    assert_eq!(tokens.authorization().await.unwrap(), "bearer token-2");

    let wrong = TokenProvider::new(
        UaaConfig {
            token_url: UaaConfig::token_url_of(&peers.url()),
            client_id: peers.client_id.clone(),
            client_secret: "wrong-secret".into(),
        },
        http_client(None, false).unwrap(),
    );
    let err = wrong.authorization().await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "UAA at {}oauth/token refused the client credentials of \"audit-nozzle\": HTTP 401 unauthorized: Bad credentials",
            peers.url()
        )
    );
}

/// `cf-audit-nozzle run --source gateway` as an operator runs it: only the
/// CF API URL and UAA credentials given, everything else discovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_the_gateway_found_through_the_cf_api() {
    use cf_audit_nozzle::source::emulator::Feed;
    use cf_audit_nozzle::source::emulator::gateway::{GatewayEmulator, GatewayEmulatorConfig};
    use std::process::Stdio;

    let envelopes = numbered(1_700_000_000_000_000_000, 250);
    let gw = GatewayEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        GatewayEmulatorConfig {
            feed: Feed::Fixed(envelopes.clone()),
            // Streams end every second: the run spans routine reconnects.
            stream_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let summary_file = tmp.path().join("summary.json");
    let mut cmd = nozzle();
    cmd.args(["run", "--source", "gateway", "--cf-api", &gw.url()])
        .args([
            "--uaa-client-id",
            "nozzle",
            "--uaa-client-secret",
            "s3cret&=%",
        ])
        .args([
            "--source-ids",
            "app-guid,other-guid",
            "--envelope-types",
            "log,event",
        ])
        .args(["--shard-id", "audit", "--deterministic-name", "det"])
        .args(["--sink", "stdout", "--batch-max-age-ms", "10"])
        .arg("--summary-file")
        .arg(&summary_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn(&mut cmd);
    let lines = child.lines(250, Duration::from_secs(30)).await;
    // Let at least one routine reconnect happen before stopping.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while gw.streams_opened() < 2 {
        assert!(
            std::time::Instant::now() < until,
            "no reconnect after closing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = child.stop().await.status;
    assert!(status.success(), "exit status {status}");

    let expected = json_lines(envelopes, "cf");
    // Numbered 0.. in one boot (all app logs), else the records exactly.
    let numbered: Vec<(String, String)> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| unnumbered(l, 0, i as u64))
        .collect();
    assert!(numbered.iter().all(|(_, boot)| *boot == numbered[0].1));
    let lines: Vec<String> = numbered.into_iter().map(|(l, _)| l).collect();
    assert_eq!(lines, expected, "exact records, in order");
    assert_eq!(
        gw.reads()[0],
        "/v2/read?log&event&source_id=app-guid&source_id=other-guid&shard_id=audit&deterministic_name=det"
    );
    assert_eq!(gw.refused(), 0);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_file).unwrap()).unwrap();
    assert_eq!(summary["ingress"]["envelopes"], 250);
    let source = &summary["rlp"];
    assert_eq!(source["failures"], 0, "{source}");
    assert_eq!(source["token_renewals"], 1, "{source}");
    assert!(
        source["disconnects"]["closing"].as_u64().unwrap() >= 1,
        "{source}"
    );
}

#[test]
fn gateway_options_are_checked_together_and_rlp_options_are_not_required() {
    use cf_audit_nozzle::config::{Cli, Command};
    use clap::Parser;
    let validate = |args: &[&str]| {
        let cli = Cli::try_parse_from(["cf-audit-nozzle", "run"].iter().chain(args)).unwrap();
        let Command::Run(run) = cli.command else {
            unreachable!()
        };
        run.validate().map(|_| ()).map_err(|e| e.0)
    };
    assert_eq!(
        validate(&["--source", "gateway"]).unwrap_err(),
        [
            "--source gateway needs --gateway-url (GATEWAY_URL) or --cf-api (CF_API) to discover it",
            "--source gateway needs --uaa-url (UAA_URL) or --cf-api (CF_API) to discover it",
            "--uaa-client-id (UAA_CLIENT_ID) is required to get a UAA token (a client with the authority doppler.firehose or logs.admin)",
            "--uaa-client-secret (UAA_CLIENT_SECRET) is required to get a UAA token (a client with the authority doppler.firehose or logs.admin)",
        ]
    );
    let creds = ["--uaa-client-id", "n", "--uaa-client-secret", "s"];
    let with = |more: &[&str]| {
        let mut args: Vec<&str> = vec!["--source", "gateway"];
        args.extend(creds);
        args.extend(more);
        validate(&args)
    };
    assert!(with(&["--cf-api", "https://api.sys.example.com"]).is_ok());
    assert!(
        with(&[
            "--gateway-url",
            "https://log-stream.x",
            "--uaa-url",
            "https://uaa.x"
        ])
        .is_ok()
    );
    assert_eq!(
        with(&["--cf-api", "api.sys.example.com", "--shard-id", ""]).unwrap_err(),
        [
            "--shard-id (SHARD_ID) must not be empty",
            "--cf-api (CF_API) is not a URL (relative URL without a base): \"api.sys.example.com\"",
        ]
    );
}

/// Behind a corporate proxy: every request (CF API, UAA, gateway) goes
/// through `HTTP_PROXY`. The emulator plays the proxy (and the origin
/// behind it); `cf-api.invalid` resolves nowhere, so nothing arrives unless
/// the proxy is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_goes_through_the_proxy_from_the_environment() {
    use cf_audit_nozzle::source::emulator::Feed;
    use cf_audit_nozzle::source::emulator::gateway::{GatewayEmulator, GatewayEmulatorConfig};
    use std::process::Stdio;

    let gw = GatewayEmulator::start(
        "127.0.0.1:0".parse().unwrap(),
        GatewayEmulatorConfig {
            feed: Feed::Fixed(numbered(0, 10)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut cmd = nozzle();
    cmd.env("HTTP_PROXY", gw.url())
        .args([
            "run",
            "--source",
            "gateway",
            "--cf-api",
            "http://cf-api.invalid",
        ])
        .args(["--uaa-client-id", "nozzle", "--uaa-client-secret", "s"])
        .args(["--sink", "stdout", "--batch-max-age-ms", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn(&mut cmd);
    let lines = child.lines(10, Duration::from_secs(30)).await.len();
    assert_eq!(lines, 10);
    assert!(child.stop().await.status.success());
    let targets = gw.targets();
    let origin = gw.url();
    assert_eq!(targets[0], "http://cf-api.invalid/");
    assert_eq!(targets[1], format!("{origin}/oauth/token"));
    assert!(
        targets[2].starts_with(&format!("{origin}/v2/read?log&counter")),
        "{targets:?}"
    );
}

/// HTTPS to the platform: a CA from `--ca-file` is trusted besides the
/// Mozilla roots, an unknown CA is refused, and only `--skip-tls-verify`
/// accepts it anyway.
#[tokio::test]
async fn https_endpoints_are_verified_against_the_extra_ca_unless_told_not_to() {
    use cf_audit_nozzle::source::cf_api::discover;
    use cf_audit_nozzle::source::emulator::gateway::{http_response, read_request};
    use cf_audit_nozzle::tls::Pki;
    use tokio::io::{AsyncWriteExt, BufReader};

    let pki = Pki::generate("platformCA", &["127.0.0.1"]).unwrap();
    let server = pki.server_config().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = reqwest::Url::parse(&format!("https://{}", listener.local_addr().unwrap())).unwrap();
    let root =
        format!(r#"{{"links":{{"uaa":{{"href":"{url}"}},"log_stream":{{"href":"{url}"}}}}}}"#);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, root) = (acceptor.clone(), root.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(tls);
                if read_request(&mut BufReader::new(read)).await.is_some() {
                    let reply = http_response(200, "application/json", root.as_bytes());
                    let _ = write.write_all(&reply).await;
                    let _ = write.shutdown().await;
                }
            });
        }
    });

    let with_ca = http_client(Some(pki.ca_pem.as_bytes()), false).unwrap();
    let found = discover(&with_ca, &url).await.unwrap();
    assert_eq!(found.log_stream, Some(url.clone()));

    let without = http_client(None, false).unwrap();
    let err = discover(&without, &url).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot reach the Cloud Foundry API at {url}"))
            && err.contains("UnknownIssuer"),
        "{err}"
    );

    let unverified = http_client(None, true).unwrap();
    assert_eq!(discover(&unverified, &url).await.unwrap().uaa, url);
}

/// Heartbeats every 15 s for `d`, as the gateway sends when it has no data.
fn quiet(d: Duration) -> Vec<Step> {
    let beat = b"event: heartbeat\ndata: 1541438163\n\n".to_vec();
    let mut steps = Vec::new();
    let mut left = d;
    while left > Duration::ZERO {
        let step = left.min(Duration::from_secs(15));
        steps.push(Step::Sleep(step));
        steps.push(Step::Write(beat.clone()));
        left -= step;
    }
    steps
}

#[tokio::test(start_paused = true)]
async fn the_next_stream_opens_before_the_old_one_closes_and_nothing_is_lost_or_doubled() {
    // Stream 0 lives 14 minutes, as the gateway's do, with data near its end.
    let peers = Peers::start(Duration::from_secs(3600), |n, _| {
        let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
        match n {
            0 => {
                steps.push(Step::Write(sse_batch_frame(&numbered(0, 2))));
                steps.extend(quiet(Duration::from_secs(13 * 60 + 45)));
                steps.push(Step::Write(sse_batch_frame(&numbered(2, 2))));
                steps.extend(quiet(Duration::from_secs(15)));
                steps.push(Step::Write(SSE_CLOSING.to_vec()));
            }
            1 => {
                steps.push(Step::Write(sse_batch_frame(&numbered(4, 2))));
                steps.extend(quiet(Duration::from_secs(60)));
                steps.push(Step::Write(sse_batch_frame(&numbered(6, 2))));
                steps.extend(quiet(Duration::from_secs(15 * 60)));
            }
            _ => steps.push(Step::Stall),
        }
        steps
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    run.wait_for(8, Duration::from_secs(16 * 60)).await;
    let (envs, status, _) = run.finish().await;

    let requests = peers.gateway_requests();
    let opened_after = requests[1].at - requests[0].at;
    assert_eq!(
        opened_after.as_secs(),
        13 * 60 + 30,
        "the next stream opens 30 s before the old one's 14 minutes"
    );
    // Both streams were read: stream 0's last batch came after the handover.
    let mut got = timestamps(&envs);
    assert_eq!(got, [0, 1, 4, 5, 2, 3, 6, 7], "in arrival order");
    got.sort();
    assert_eq!(got, (0..8).collect::<Vec<_>>(), "each once");
    let s = status.snapshot();
    assert_eq!((s.failures, s.connects), (0, 2), "{s:?}");
    assert_eq!(s.disconnects["closing"], 1, "the handover: {s:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_without_any_event_is_a_failure_with_backoff() {
    // The real gateway, while its RLP is down: 200 and an empty body.
    let peers = Peers::start(Duration::from_secs(3600), |n, _| {
        if n < 3 {
            return vec![Step::Write(SSE_HEAD.to_vec())];
        }
        let mut steps = stream_of(&[numbered(0, 2)]);
        steps.insert(2, Step::Sleep(Duration::from_secs(1)));
        steps
    })
    .await;
    let run = start(config(&peers, uaa_tokens(&peers)));
    run.wait_for(2, Duration::from_secs(30)).await;
    let (envs, status, _) = run.finish().await;

    assert_eq!(envs, numbered(0, 2));
    let s = status.snapshot();
    assert_eq!((s.failures, s.disconnects["ended"]), (3, 3), "{s:?}");
    assert_eq!(
        s.previous_error.unwrap(),
        format!(
            "the RLP Gateway at {}v2/read?log&counter&gauge&timer&event&shard_id=*** answered 200 but ended the stream without any event (the RLP behind it is likely down); retrying",
            peers.url()
        )
    );
    // One backoff step after each (100 ms doubling, jittered to 50-100 %).
    let at: Vec<_> = peers.gateway_requests().iter().map(|r| r.at).collect();
    for (k, pair) in at.windows(2).take(3).enumerate() {
        let step = Duration::from_millis(100 << k);
        let gap = pair[1] - pair[0];
        assert!(gap >= step / 2 && gap <= step, "gap {k}: {gap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_line_over_the_frame_limit_is_skipped_and_counted_and_one_that_never_ends_is_cut() {
    // One envelope of 100 KiB: a valid batch, but over a 64 KiB limit.
    let big = vec![log_envelope(
        500,
        "app-guid",
        vec![b'x'; 100 * 1024],
        &[("source_type", "APP/PROC/WEB")],
    )];
    let peers = Peers::start(Duration::from_secs(3600), move |n, _| {
        let mut steps = vec![Step::Write(SSE_HEAD.to_vec())];
        match n {
            0 => {
                steps.push(Step::Write(sse_batch_frame(&numbered(0, 2))));
                steps.push(Step::Trickle(sse_batch_frame(&big), 4096));
                steps.push(Step::Write(sse_batch_frame(&numbered(2, 2))));
                steps.push(Step::Sleep(Duration::from_secs(1)));
                steps.push(Step::Write(SSE_CLOSING.to_vec()));
            }
            1 => {
                // 8 MB of a line that never ends, then silence.
                steps.push(Step::Write(sse_batch_frame(&numbered(4, 2))));
                steps.push(Step::Write(b"data: {\"batch\":[".to_vec()));
                steps.push(Step::Trickle(vec![b' '; 8_000_000], 64 * 1024));
                steps.push(Step::Stall);
            }
            _ => {
                steps.push(Step::Write(sse_batch_frame(&numbered(6, 2))));
                steps.push(Step::Stall);
            }
        }
        steps
    })
    .await;
    let mut cfg = config(&peers, uaa_tokens(&peers));
    cfg.max_frame_bytes = 64 * 1024;
    let run = start(cfg);
    run.wait_for(8, Duration::from_secs(60)).await;
    let (envs, status, _) = run.finish().await;

    assert_eq!(envs, numbered(0, 8), "the frames around the skipped ones");
    let s = status.snapshot();
    assert_eq!(
        s.malformed_frames, 2,
        "the long line and the endless one: {s:?}"
    );
    assert_eq!(
        s.disconnects["closing"], 1,
        "the first stream went on: {s:?}"
    );
    assert_eq!(s.disconnects["idle"], 1, "the endless line is cut: {s:?}");
}

/// A CF API root linking to itself as UAA and log stream, whose UAA answers
/// a valid token response of about 70 KB (a token carrying many scopes).
async fn cf_with_a_large_token_response() -> reqwest::Url {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let root = serde_json::json!({"links": {
        "uaa": {"href": base},
        "log_stream": {"href": base},
    }})
    .to_string();
    let token = serde_json::json!({
        "access_token": "t".repeat(70_000),
        "token_type": "bearer",
        "expires_in": 600,
    })
    .to_string();
    let app = axum::Router::new()
        .route("/", get(move || async move { root }))
        .route("/oauth/token", post(move || async move { token }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    reqwest::Url::parse(&base).unwrap()
}

/// The gateway source's configuration from `run` arguments.
fn gateway_config(args: &[&str]) -> GatewayConfig {
    use cf_audit_nozzle::config::{Cli, Command};
    use cf_audit_nozzle::source::SourceConfig;
    use clap::Parser;
    let argv = ["cf-audit-nozzle", "run", "--source", "gateway"];
    let creds = ["--uaa-client-id", "n", "--uaa-client-secret", "s"];
    let cli = Cli::try_parse_from(argv.iter().chain(&creds).chain(args)).unwrap();
    let Command::Run(run) = cli.command else {
        unreachable!()
    };
    match cf_audit_nozzle::config::build(&run.validate().unwrap())
        .unwrap()
        .source
    {
        SourceConfig::Gateway(g) => *g,
        SourceConfig::Rlp(_) => unreachable!("--source gateway"),
    }
}

/// `--cf-max-response-bytes` caps the gateway's UAA token response as it
/// does the audit-events poller's: given endpoints (the token provider the
/// configuration builds) and discovered ones (the provider built after
/// discovery). They used the fixed 16 MiB default.
#[tokio::test]
async fn the_gateways_uaa_token_response_is_capped_by_cf_max_response_bytes() {
    let base = cf_with_a_large_token_response().await;
    let cap = ["--cf-max-response-bytes", "65536"];
    let given = ["--gateway-url", base.as_str(), "--uaa-url", base.as_str()];
    let tokens = |cfg: GatewayConfig| match cfg.endpoints {
        GatewayEndpoints::Given { tokens, .. } => tokens,
        GatewayEndpoints::Discover { .. } => unreachable!("both URLs given"),
    };
    // The same answer is a good token under the default cap.
    let token = tokens(gateway_config(&given))
        .authorization()
        .await
        .unwrap();
    assert!(
        token == format!("bearer {}", "t".repeat(70_000)),
        "{} bytes",
        token.len()
    );
    let capped = gateway_config(&[&given[..], &cap[..]].concat());
    assert_eq!(capped.max_response_bytes, 65536);
    let err = match tokens(capped).authorization().await {
        Ok(t) => panic!("a token of {} bytes was accepted", t.len()),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("the answer is larger than 65536 bytes (--cf-max-response-bytes)"),
        "{err}"
    );

    // Discovered from --cf-api: the source reports the same refusal.
    let cfg = gateway_config(&["--cf-api", base.as_str(), cap[0], cap[1]]);
    assert!(matches!(cfg.endpoints, GatewayEndpoints::Discover { .. }));
    assert_eq!(cfg.max_response_bytes, 65536);
    let status = Arc::new(SourceStatus::default());
    let stop = CancellationToken::new();
    let router = Arc::new(Router::new(Vec::new(), Default::default(), None, false));
    let source = tokio::spawn(gateway::run(cfg, router, Arc::clone(&status), stop.clone()));
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    let err = loop {
        if let Some(e) = status.snapshot().last_error {
            break e;
        }
        assert!(tokio::time::Instant::now() < until, "no error reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.cancel();
    source.await.unwrap();
    assert!(
        err.contains("the answer is larger than 65536 bytes (--cf-max-response-bytes)"),
        "{err}"
    );
    assert!(err.contains("UAA"), "{err}");
}

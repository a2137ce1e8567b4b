//! The RLP source against a test RLP speaking `loggregator.v2.Egress` over
//! mutual TLS: subscription, exact counts, reconnects, sharding, TLS refusals.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::selector::Message as Sel;
use cf_audit_nozzle::proto::{EgressBatchRequest, egress_client::EgressClient};
use cf_audit_nozzle::source::emulator::{EmulatorConfig, Feed, Traffic};
use cf_audit_nozzle::source::rlp::{self, RlpError};
use cf_audit_nozzle::source::{SourceSnapshot, SourceStatus};
use common::*;

#[tokio::test]
async fn subscribes_with_preferred_tags_shard_id_and_every_envelope_type() {
    let pki = pki();
    let envelopes: Vec<_> = (0..5)
        .map(|i| {
            log_envelope(
                i,
                "app",
                format!("line {i}"),
                &[("source_type", "APP/PROC/WEB")],
            )
        })
        .collect();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(envelopes),
            ..Default::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    run_until(
        &file_pipeline(dir.path()),
        vec![rlp_config(&emu, &pki, "audit-shard")],
        |s| s.envelopes == 5,
    )
    .await;

    let req: EgressBatchRequest = emu.requests().remove(0);
    assert_eq!(req.shard_id, "audit-shard");
    assert!(req.use_preferred_tags);
    assert_eq!(req.deterministic_name, "");
    assert!(req.legacy_selector.is_none());
    let kinds: Vec<&str> = req
        .selectors
        .iter()
        .map(|s| {
            assert_eq!(s.source_id, "", "all sources");
            match s.message.as_ref().expect("selector has a message") {
                Sel::Log(_) => "log",
                Sel::Counter(c) => {
                    assert_eq!(c.name, "", "every counter");
                    "counter"
                }
                Sel::Gauge(g) => {
                    assert!(g.names.is_empty(), "every gauge");
                    "gauge"
                }
                Sel::Timer(_) => "timer",
                Sel::Event(_) => "event",
            }
        })
        .collect();
    assert_eq!(kinds, ["log", "counter", "gauge", "timer", "event"]);
}

#[tokio::test]
async fn exact_record_counts_per_kind_for_the_generated_mix() {
    const N: usize = 10_000;
    let mut traffic = Traffic::new(42);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for env in traffic.batch(N) {
        *expected.entry(classify(env).kind.to_string()).or_default() += 1;
    }
    assert_eq!(expected.len(), 4, "the mix has every kind: {expected:?}");

    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Generated { seed: 42 },
            // Fresh generation (not pre-encoded) yields the sequence of `Traffic::batch`.
            rate: Some(1_000_000),
            count: Some(N as u64),
            ..Default::default()
        },
    )
    .await;
    let (summary, _dir) = receive(&emu, &pki, N as u64).await;

    let i = &summary.ingress;
    let got: BTreeMap<String, u64> = [
        ("api", i.api),
        ("app_log", i.app_log),
        ("event", i.event),
        ("metric", i.metric),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, expected);
    let sink = summary.total();
    // And each kind's file sink took the declaration of its last number at shutdown.
    let declarations = expected.values().filter(|&&n| n > 0).count() as u64;
    assert_eq!(declarations, 4);
    assert_eq!(
        (
            sink.received,
            sink.delivered,
            sink.pending(),
            sink.dropped()
        ),
        (N as u64 + declarations, N as u64 + declarations, 0, 0)
    );
    let files: BTreeMap<String, u64> = records_by_kind(&summary)
        .into_iter()
        .map(|(k, v)| (k, v.len() as u64))
        .collect();
    assert_eq!(files, expected);
}

/// Payloads `line-0 ..` of every app_log record in the files, in order.
fn payload_lines(summary: &cf_audit_nozzle::pipeline::Summary) -> Vec<String> {
    records_by_kind(summary)["app_log"]
        .iter()
        .map(|r| r["message"].as_str().unwrap().to_string())
        .collect()
}

async fn reconnect_case(with_error: bool) {
    const N: usize = 1050;
    let envelopes: Vec<_> = (0..N)
        .map(|i| {
            log_envelope(
                i as i64,
                "app",
                format!("line-{i}"),
                &[("source_type", "APP/PROC/WEB")],
            )
        })
        .collect();
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(envelopes),
            batch_size: 100,
            end_stream_after: Some(3),
            end_stream_with_error: with_error,
            ..Default::default()
        },
    )
    .await;
    let (summary, _dir) = receive(&emu, &pki, N as u64).await;
    // 11 batches, 3 per stream: four streams carried data.
    assert!(
        emu.streams_opened() >= 4,
        "streams: {}",
        emu.streams_opened()
    );
    let expected: Vec<String> = (0..N).map(|i| format!("line-{i}")).collect();
    assert_eq!(payload_lines(&summary), expected);
    assert_eq!(summary.ingress.envelopes, N as u64);
}

#[tokio::test]
async fn reconnects_after_clean_stream_end_without_loss_or_duplicates() {
    reconnect_case(false).await;
}

#[tokio::test]
async fn reconnects_after_stream_error_without_loss_or_duplicates() {
    reconnect_case(true).await;
}

#[tokio::test]
async fn connections_sharing_a_shard_id_split_the_stream() {
    use cf_audit_nozzle::pipeline::Pipeline;
    use std::sync::Arc;
    const N: u64 = 4000;
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Generated { seed: 7 },
            // Slow enough that both shard-mates are connected while it flows.
            rate: Some(5000),
            count: Some(N),
            ..Default::default()
        },
    )
    .await;
    // Two instances of one nozzle (shard "nozzle") and another consumer ("other").
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut pipelines = Vec::new();
    let mut tasks = Vec::new();
    for (dir, shard) in dirs.iter().zip(["nozzle", "nozzle", "other"]) {
        let p = Pipeline::start(&file_pipeline(dir.path())).unwrap();
        tasks.push(tokio::spawn(rlp::run(
            rlp_config(&emu, &pki, shard),
            p.router(),
            Arc::new(SourceStatus::default()),
            stop.clone(),
        )));
        pipelines.push(p);
    }
    let received = |i: usize| pipelines[i].ingress_stats().snapshot().envelopes;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while received(0) + received(1) < N || received(2) < N {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    let mut summaries = Vec::new();
    for p in pipelines {
        summaries.push(p.finish(Duration::from_secs(10)).await);
    }
    let (a, b, other) = (
        &summaries[0].ingress,
        &summaries[1].ingress,
        &summaries[2].ingress,
    );
    assert_eq!(
        a.envelopes + b.envelopes,
        N,
        "shard-mates split the stream exactly"
    );
    assert!(
        a.envelopes > 0 && b.envelopes > 0,
        "both got a share: {} + {}",
        a.envelopes,
        b.envelopes
    );
    assert_eq!(other.envelopes, N, "another shard id gets the whole stream");
    // No envelope went to both shard-mates: the app output lines (each with a
    // unique seq, no timestamp) of the two together are those of the whole stream.
    let lines = |s: &cf_audit_nozzle::pipeline::Summary| -> Vec<String> {
        records_by_kind(s)
            .get("app_log")
            .map(|r| {
                r.iter()
                    .map(|r| r["message"].as_str().unwrap().to_string())
                    .filter(|m| m.starts_with("{\"level\"") || m.starts_with("ERROR"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut split: Vec<String> = lines(&summaries[0]);
    split.extend(lines(&summaries[1]));
    let mut whole = lines(&summaries[2]);
    split.sort();
    whole.sort();
    assert!(whole.len() > 1000, "{} lines", whole.len());
    assert!(
        split == whole,
        "{} lines split vs {} in the whole stream",
        split.len(),
        whole.len()
    );
}

async fn refuses_server_certificate_of_other_ca(other_ca_name: &str) {
    let server_pki = pki();
    let emu = emulator(&server_pki, EmulatorConfig::default()).await;
    let other_pki =
        cf_audit_nozzle::tls::Pki::generate(other_ca_name, &["reverselogproxy"]).unwrap();
    let mut cfg = rlp_config(&emu, &other_pki, "s");
    cfg.tls.ca_origin = "/etc/nozzle/other-ca.pem".to_string();
    let err = rlp::subscribe(&cfg).await.expect_err("must refuse");
    let text = err.to_string();
    assert!(matches!(err, RlpError::Connect { .. }), "{text}");
    assert!(
        text.contains(&format!("cannot connect to the RLP at {}", emu.addr))
            && text.contains(
                "the server certificate is not signed by the CA in /etc/nozzle/other-ca.pem"
            ),
        "{text}"
    );
    assert_eq!(emu.streams_opened(), 0);
}

#[tokio::test]
async fn refuses_a_server_certificate_from_a_ca_of_another_name() {
    refuses_server_certificate_of_other_ca("someoneElsesCA").await;
}

#[tokio::test]
async fn refuses_a_server_certificate_from_another_ca_of_the_same_name() {
    // Every cf-deployment calls its CA "loggregatorCA": same name, other key.
    refuses_server_certificate_of_other_ca("loggregatorCA").await;
}

#[tokio::test]
async fn refuses_a_server_certificate_for_another_name() {
    let pki = pki();
    let emu = emulator(&pki, EmulatorConfig::default()).await;
    let mut cfg = rlp_config(&emu, &pki, "s");
    cfg.server_name = "doppler".to_string();
    let text = rlp::subscribe(&cfg)
        .await
        .expect_err("must refuse")
        .to_string();
    assert!(
        text.contains("the server certificate is not valid for the TLS server name \"doppler\""),
        "{text}"
    );
    assert_eq!(emu.streams_opened(), 0);
}

#[tokio::test]
async fn a_refused_source_keeps_retrying_with_backoff_and_stops_on_shutdown() {
    let server_pki = pki();
    let emu = emulator(&server_pki, EmulatorConfig::default()).await;
    let cfg = rlp_config(&emu, &pki(), "s");
    let dir = tempfile::tempdir().unwrap();
    let pipeline = cf_audit_nozzle::pipeline::Pipeline::start(&file_pipeline(dir.path())).unwrap();
    let status = std::sync::Arc::new(SourceStatus::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(rlp::run(
        cfg,
        pipeline.router(),
        status.clone(),
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while status.failures.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "source gave up or hung"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = status.last_error.lock().unwrap().clone().unwrap();
    assert!(last.contains("not signed by the CA"), "{last}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .unwrap();
    let summary = pipeline.finish(Duration::from_secs(5)).await;
    assert_eq!(summary.ingress.envelopes, 0);
    assert!(
        summary.sinks.iter().all(|s| s.outputs.is_empty()),
        "no empty files are written"
    );
}

#[tokio::test]
async fn the_test_rlp_rejects_subscriptions_without_selectors_as_the_rlp_does() {
    let pki = pki();
    let emu = emulator(&pki, EmulatorConfig::default()).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &pki.client_cert_pem,
            &pki.client_key_pem,
        ))
        .domain_name("reverselogproxy");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", emu.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = EgressClient::new(channel)
        .batched_receiver(EgressBatchRequest::default())
        .await
        .expect_err("rejected");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "Selectors cannot be empty");
}

/// The RLP source into a file pipeline, with its status at hand; stops when
/// `done` holds (or panics after 60 s).
async fn run_watching(
    cfg: rlp::RlpConfig,
    done: impl Fn(&cf_audit_nozzle::route::IngressSnapshot, &SourceSnapshot) -> bool,
) -> (
    cf_audit_nozzle::pipeline::Summary,
    SourceSnapshot,
    tempfile::TempDir,
) {
    use cf_audit_nozzle::pipeline::Pipeline;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::start(&file_pipeline(dir.path())).unwrap();
    let stats = pipeline.ingress_stats();
    let status = Arc::new(SourceStatus::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(rlp::run(
        cfg,
        pipeline.router(),
        Arc::clone(&status),
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done(&stats.snapshot(), &status.snapshot()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; ingress {:?}, source {:?}",
            stats.snapshot(),
            status.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let snapshot = status.snapshot();
    stop.cancel();
    task.await.unwrap();
    let summary = pipeline.finish(Duration::from_secs(30)).await;
    assert!(summary.complete, "sinks drained: {summary:?}");
    (summary, snapshot, dir)
}

fn numbered_logs(range: std::ops::Range<usize>) -> Vec<cf_audit_nozzle::proto::Envelope> {
    range
        .map(|i| {
            log_envelope(
                i as i64,
                "app",
                format!("line-{i}"),
                &[("source_type", "APP/PROC/WEB")],
            )
        })
        .collect()
}

/// One `batch` field (key, length, envelope bytes) of an `EnvelopeBatch`.
fn batch_field(envelope: &[u8]) -> Vec<u8> {
    let mut out = vec![0x0a];
    prost::encoding::encode_varint(envelope.len() as u64, &mut out);
    out.extend_from_slice(envelope);
    out
}

#[tokio::test]
async fn an_envelope_that_does_not_decode_is_skipped_and_counted_and_its_batch_and_stream_go_on() {
    use cf_audit_nozzle::proto::EnvelopeBatch;
    use cf_audit_nozzle::source::emulator::EncodedBatch;
    use prost::Message as _;

    let good = |i: usize| numbered_logs(i..i + 1).remove(0).encode_to_vec();
    // A tag value that is not UTF-8 (prost's decode refuses it as well).
    let mut bad_utf8 = log_envelope(99, "app", "bad", &[("k", "SENTINEL")]).encode_to_vec();
    let at = bad_utf8.windows(8).position(|w| w == b"SENTINEL").unwrap();
    bad_utf8[at] = 0xff;
    // An unknown field of groups nested 120 deep: past the recursion limit.
    let mut too_deep = good(98);
    too_deep.extend(std::iter::repeat_n(0x7b, 120)); // start group, field 15
    too_deep.extend(std::iter::repeat_n(0x7c, 120)); // end group, field 15
    let mut mixed = Vec::new();
    mixed.extend(batch_field(&good(3)));
    mixed.extend(batch_field(&bad_utf8));
    mixed.extend(batch_field(&good(4)));
    mixed.extend(batch_field(&too_deep));
    mixed.extend(batch_field(&good(5)));
    for bad in [&bad_utf8, &too_deep] {
        assert!(
            EnvelopeBatch::decode(&batch_field(bad)[..]).is_err(),
            "prost refuses it too"
        );
    }
    let batches = vec![
        (3, EncodedBatch::encode(&numbered_logs(0..3)).0),
        (5, bytes::Bytes::from(mixed)),
        (3, EncodedBatch::encode(&numbered_logs(6..9)).0),
    ];
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Encoded(batches),
            // The stream stays open after the feed: it must not end over the bad envelopes.
            silent_after: Some(3),
            ..Default::default()
        },
    )
    .await;
    let (summary, s, _dir) =
        run_watching(rlp_config(&emu, &pki, "s"), |i, _| i.envelopes == 9).await;

    let expected: Vec<String> = (0..9).map(|i| format!("line-{i}")).collect();
    assert_eq!(
        payload_lines(&summary),
        expected,
        "every good envelope, in order"
    );
    assert_eq!(s.malformed_frames, 2, "{s:?}");
    assert_eq!((s.failures, s.last_error.clone()), (0, None));
    assert_eq!(s.disconnects.values().sum::<u64>(), 0, "{s:?}");
    assert_eq!(s.connects, 1, "counted while the one stream is open");
    assert_eq!(emu.streams_opened(), 1);
}

#[test]
fn a_batch_whose_framing_breaks_keeps_the_envelopes_before_the_break() {
    use cf_audit_nozzle::source::emulator::EncodedBatch;
    let mut bytes = EncodedBatch::encode(&numbered_logs(0..2)).0.to_vec();
    let end = bytes.len();
    // A third envelope whose length runs past the end of the batch.
    bytes.extend([0x0a, 0x7f, 0x08]);
    let received = rlp::decode_leniently(&bytes::Bytes::from(bytes));
    assert_eq!(received.envelopes.len(), 2);
    assert_eq!(received.skipped, 1);
    assert_eq!(
        received.reason.as_deref(),
        Some(format!("the batch's framing is broken at byte {end}").as_str())
    );
}

#[tokio::test]
async fn a_batch_of_fifteen_mebibytes_arrives_whole_and_one_past_the_limit_is_refused_by_name() {
    use cf_audit_nozzle::source::emulator::EncodedBatch;
    // tonic's default limit is 4 MiB; the RLP's own is 10 MiB; ours is 16 MiB.
    let big: Vec<_> = (0..100)
        .map(|i| {
            let mut payload = format!("big-{i:03}-").into_bytes();
            payload.resize(155 * 1024, b'x');
            log_envelope(i, "app", payload, &[("source_type", "APP/PROC/WEB")])
        })
        .collect();
    let big = EncodedBatch::encode(&big).0;
    assert!(
        big.len() > 15 * 1024 * 1024 && big.len() < rlp::MAX_MESSAGE_BYTES,
        "{} bytes",
        big.len()
    );
    let mut huge = b"huge-".to_vec();
    huge.resize(rlp::MAX_MESSAGE_BYTES, b'y');
    let huge = EncodedBatch::encode(&[log_envelope(0, "app", huge, &[])]).0;
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Encoded(vec![(100, big), (1, huge)]),
            silent_after: Some(2),
            ..Default::default()
        },
    )
    .await;
    let (summary, s, _dir) = run_watching(rlp_config(&emu, &pki, "s"), |i, s| {
        i.envelopes == 100 && s.failures == 1 && s.connects == 2
    })
    .await;

    let lines = payload_lines(&summary);
    assert_eq!(lines.len(), 100);
    for (i, line) in lines[..100].iter().enumerate() {
        assert!(line.starts_with(&format!("big-{i:03}-xxx")), "{i}");
        assert_eq!(line.len(), 155 * 1024);
    }
    // The batch over the limit fails its stream (the RLP would refuse it
    // too: its own limit is 10 MiB), which is reconnected.
    assert_eq!((s.failures, s.disconnects["error"]), (1, 1), "{s:?}");
    let error = s.previous_error.unwrap();
    assert!(
        error.contains("OutOfRange")
            && error.contains("decoded message length too large")
            && error.contains("16777216"),
        "{error}"
    );
}

#[tokio::test]
async fn a_stream_that_stays_open_but_silent_is_replaced() {
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(numbered_logs(0..10)),
            batch_size: 5,
            // Each stream sends one batch, then nothing while staying open.
            silent_after: Some(1),
            ..Default::default()
        },
    )
    .await;
    let mut cfg = rlp_config(&emu, &pki, "s");
    cfg.idle_timeout = Some(Duration::from_millis(300));
    let (summary, s, _dir) = run_watching(cfg, |i, _| i.envelopes == 10).await;

    let expected: Vec<String> = (0..10).map(|i| format!("line-{i}")).collect();
    assert_eq!(payload_lines(&summary), expected);
    assert!(s.disconnects["idle"] >= 1, "{s:?}");
    assert_eq!(s.disconnects["idle"], s.failures, "{s:?}");
    assert!(emu.streams_opened() >= 2);
    let error = s.previous_error.unwrap();
    assert_eq!(
        error,
        format!(
            "no envelope from the RLP at {} for 300ms; replacing the stream",
            emu.addr
        )
    );
}

/// Log lines written while `f` runs on this thread (the test runtime's).
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_reconnect_after_a_failure_is_logged_and_clears_the_error() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let pki = pki();
    let emu = emulator(
        &pki,
        EmulatorConfig {
            feed: Feed::Fixed(numbered_logs(0..3)),
            batch_size: 1,
            end_stream_after: Some(1),
            end_stream_with_error: true,
            ..Default::default()
        },
    )
    .await;
    // Three streams fail after their batch; the fourth opens after the failure.
    let (_, s, _dir) = run_watching(rlp_config(&emu, &pki, "s"), |i, s| {
        i.envelopes == 3 && s.connects >= 4
    })
    .await;

    assert_eq!(s.last_error, None, "recovered: {s:?}");
    let previous = s.previous_error.unwrap();
    assert!(previous.contains("emulated RLP restart"), "{previous}");
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let reconnected = format!("reconnected to {} after 1 attempt ", emu.addr);
    assert!(
        logs.lines().filter(|l| l.contains(&reconnected)).count() >= 3,
        "{logs}"
    );
    assert!(
        logs.lines()
            .filter(|l| l.contains("reconnected to"))
            .all(|l| l.contains("INFO")),
        "{logs}"
    );
}

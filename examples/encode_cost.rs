//! Where a record's CPU goes, one stage at a time, on one core: protobuf
//! decode (prost's owned decode for reference, then the envelope view the
//! nozzle uses), the RLP Gateway's JSON (to prost, and to the views its
//! source dispatches), classification, the record's JSON, HEC and syslog encoding, gzip.
//! The last line is the work `scripts/bench --mode full` asks of every
//! envelope, done on one thread with no I/O: decode, classify, then api →
//! syslog + S3, app_log and event → S3, metric → HEC, where S3 means the
//! record JSON gzip'd and SHA-256 hashed and HEC the event gzip'd. It is a
//! floor under that mode's CPU per envelope (no TLS, HTTP, queues or threads).
//! For profiling (`valgrind --tool=callgrind` counts are stable on a busy
//! machine); the benchmark proper is `scripts/bench`.
//!
//!   cargo run --release --example encode_cost [ENVELOPES] [SCHEMA]
//!
//! SCHEMA is a `--record-schema` value (`native`, the default, `ocsf`,
//! `ecs`, `cim`): every record is written in it, as `--record-schema SCHEMA`
//! writes them in every sink.

use std::io::Write;
use std::time::Instant;

use cf_audit_nozzle::classify::classify;
use cf_audit_nozzle::proto::EnvelopeBatch;
use cf_audit_nozzle::record::{EncodeContext, Kind, Record, RecordSchema, decode_batch};
use cf_audit_nozzle::sink::http::encode_hec;
use cf_audit_nozzle::sink::syslog::{SyslogFormat, encode as encode_syslog};
use cf_audit_nozzle::source::emulator::gateway::sse_batch_frame;
use cf_audit_nozzle::source::emulator::traffic::Traffic;
use cf_audit_nozzle::source::gateway::json as gateway;
use prost::Message;

/// The nozzle's allocator (src/main.rs), so allocation costs what it does there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let schema: RecordSchema = std::env::args()
        .nth(2)
        .map_or(Ok(RecordSchema::Native), |s| s.parse())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut traffic = Traffic::new(1);
    let batches: Vec<bytes::Bytes> = (0..n / 100)
        .map(|_| {
            EnvelopeBatch {
                batch: traffic.batch(100),
            }
            .encode_to_vec()
            .into()
        })
        .collect();
    let n = batches.len() * 100;
    let ctx = EncodeContext {
        schema,
        ..EncodeContext::new("cf")
    };
    println!("schema {}", schema.as_str());
    let per = |label: &str, t: Instant, bytes: usize| {
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        println!(
            "{label:<22} {ns:>8.0} ns/record  {:>9.0} records/s  {:>6} bytes/record",
            1e9 / ns,
            bytes / n
        );
    };

    let wire_bytes = batches.iter().map(bytes::Bytes::len).sum();
    let t = Instant::now();
    let owned: Vec<EnvelopeBatch> = batches
        .iter()
        .map(|b| EnvelopeBatch::decode(b.as_ref()).unwrap())
        .collect();
    per("prost decode (unused)", t, wire_bytes);
    drop(owned);

    let t = Instant::now();
    let decoded: Vec<_> = batches.iter().map(|b| decode_batch(b).unwrap()).collect();
    per("envelope view decode", t, wire_bytes);

    // The RLP Gateway's JSON of the same envelopes (the `data:` of its SSE
    // frames): to prost envelopes, and to the views its source dispatches.
    let frames: Vec<String> = decoded
        .iter()
        .map(|views| {
            let envelopes: Vec<_> = views.iter().map(|v| v.to_prost()).collect();
            let frame = sse_batch_frame(&envelopes);
            String::from_utf8(frame).unwrap()["data: ".len()..]
                .trim_end()
                .to_owned()
        })
        .collect();
    let json_bytes = frames.iter().map(String::len).sum();
    let t = Instant::now();
    for f in &frames {
        drop(gateway::decode_batch(f).unwrap());
    }
    per("gateway JSON -> prost", t, json_bytes);
    let t = Instant::now();
    for f in &frames {
        drop(gateway::decode_batch_views(f).unwrap());
    }
    per("gateway JSON -> views", t, json_bytes);

    let t = Instant::now();
    let records: Vec<_> = decoded
        .into_iter()
        .flatten()
        .map(|e| std::sync::Arc::new(classify(e)))
        .collect();
    per("classify", t, 0);

    if std::env::var_os("SHOW").is_some() {
        for r in records.iter().take(3) {
            println!("{}", r.to_json(&ctx));
        }
    }
    let mut out = Vec::with_capacity(1 << 20);
    let t = Instant::now();
    let total = write_all_json(records.iter().map(|r| &**r), &ctx, &mut out);
    per("record JSON", t, total);

    // The same, one kind at a time: ns per record of that kind, and its
    // share of all records (API records are few and dear).
    for kind in [Kind::Api, Kind::AppLog, Kind::Metric, Kind::Event] {
        let of_kind: Vec<_> = records.iter().filter(|r| r.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let t = Instant::now();
        let bytes = write_all_json(of_kind.iter().map(|r| &***r), &ctx, &mut out);
        let ns = t.elapsed().as_nanos() as f64 / of_kind.len() as f64;
        println!(
            "  {:<20} {ns:>8.0} ns/record  {:>5.1} % of records  {:>6} bytes/record",
            kind.as_str(),
            100.0 * of_kind.len() as f64 / n as f64,
            bytes / of_kind.len()
        );
    }

    let t = Instant::now();
    let mut hec = Vec::new();
    for r in &records {
        encode_hec(r, &ctx, None, &mut hec);
    }
    per("HEC event", t, hec.len());

    let format = SyslogFormat::default();
    let t = Instant::now();
    let mut total = 0;
    for r in &records {
        encode_syslog(r, &ctx, &format, &mut out);
        total += out.len();
        out.clear();
    }
    per("syslog message", t, total);

    let t = Instant::now();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for chunk in hec.chunks(1 << 20) {
        gz.write_all(chunk).unwrap();
    }
    let z = gz.finish().unwrap();
    per("gzip -1 of HEC", t, z.len());
    drop(records);

    let t = Instant::now();
    let out = full_mode_work(&batches, &ctx, &format);
    per("full mode's work", t, out);
}

/// Writes each record's JSON into `out` (cleared after each); returns the bytes written.
fn write_all_json<'a>(
    records: impl Iterator<Item = &'a Record>,
    ctx: &EncodeContext,
    out: &mut Vec<u8>,
) -> usize {
    let mut bytes = 0;
    for r in records {
        r.write_json(ctx, out);
        bytes += out.len();
        out.clear();
    }
    bytes
}

/// What `--mode full` does with each envelope, minus the I/O (see the module
/// doc); returns the compressed bytes plus the syslog bytes.
fn full_mode_work(batches: &[bytes::Bytes], ctx: &EncodeContext, format: &SyslogFormat) -> usize {
    use sha2::Digest as _;
    let gzip = || flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let (mut s3, mut hec) = (gzip(), gzip());
    let mut sha = sha2::Sha256::new();
    let (mut json, mut event, mut syslog) = (Vec::new(), Vec::new(), Vec::new());
    let mut syslog_bytes = 0;
    let flush = |buf: &mut Vec<u8>, gz: &mut flate2::write::GzEncoder<Vec<u8>>| {
        gz.write_all(buf).unwrap();
        buf.clear();
    };
    for b in batches {
        for r in decode_batch(b).unwrap().into_iter().map(classify) {
            if r.kind == Kind::Metric {
                encode_hec(&r, ctx, None, &mut event);
            } else {
                if r.kind == Kind::Api {
                    encode_syslog(&r, ctx, format, &mut syslog);
                    syslog_bytes += syslog.len();
                    syslog.clear();
                }
                r.write_json(ctx, &mut json);
                json.push(b',');
            }
        }
        sha.update(&json);
        flush(&mut json, &mut s3);
        flush(&mut event, &mut hec);
    }
    let _ = sha.finalize();
    s3.finish().unwrap().len() + hec.finish().unwrap().len() + syslog_bytes
}

//! Request bodies of the `http` sink: Splunk HEC event objects, one JSON
//! record per line or one JSON array, cut into requests of about
//! `max_request_bytes` and gzipped when configured, encoded on every core.

use std::io::Write as _;
use std::sync::Arc;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::{HttpFormat, HttpSink};
use crate::record::{EncodeContext, Kind, Record, put_digits, write_int};
use crate::sink::{SinkError, SinkFailure, write_json_joined};

/// Which Splunk index an event goes to: the value of `app_tag` on the record
/// (e.g. an app label carried as a tag), else the kind's index, else the
/// default; no index at all leaves it to the token's default.
#[derive(Clone, Debug, Default)]
pub struct HecIndex {
    pub default: Option<String>,
    /// Indexed by [`Kind::index`].
    pub per_kind: [Option<String>; 4],
    pub app_tag: Option<String>,
}

impl HecIndex {
    pub(crate) fn for_record<'a>(&'a self, record: &'a Record) -> Option<&'a str> {
        self.app_tag
            .as_deref()
            .and_then(|t| record.tag(t))
            .filter(|v| !v.is_empty())
            .or(self.per_kind[record.kind.index()].as_deref())
            .or(self.default.as_deref())
    }
}

/// The URL requests go to.
pub fn endpoint(url: &str, format: HttpFormat) -> String {
    let trimmed = url.trim_end_matches('/');
    let has_path = trimmed
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    if format == HttpFormat::Hec && !has_path {
        format!("{trimmed}/services/collector/event")
    } else {
        url.to_string()
    }
}

/// Splunk's sourcetype for a kind.
pub fn sourcetype(kind: Kind) -> &'static str {
    match kind {
        Kind::Api => "cf:api",
        Kind::AppLog => "cf:app_log",
        Kind::Metric => "cf:metric",
        Kind::Event => "cf:event",
    }
}

/// Appends one HEC event object for `record` to `out`: `time` (epoch seconds,
/// microseconds), `host`, `source`, `sourcetype`, optional `index`, indexed
/// `fields` and the record as `event`.
pub fn encode_hec(record: &Record, ctx: &EncodeContext, index: Option<&str>, out: &mut Vec<u8>) {
    let env = &record.envelope;
    let micros = env.timestamp().div_euclid(1000);
    let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
    out.extend_from_slice(br#"{"time":"#);
    write_int(out, secs);
    out.push(b'.');
    let mut digits = [0; 6];
    put_digits(&mut digits, frac as u32);
    out.extend_from_slice(&digits);
    out.extend_from_slice(br#","host":"#);
    match record.host_parts() {
        (["", ..], 1) => out.extend_from_slice(br#""-""#),
        (parts, n) => write_json_joined(out, &parts[..n], "."),
    }
    let source = record
        .tag("source_type")
        .or_else(|| record.tag("origin"))
        .unwrap_or(env.source_id());
    out.extend_from_slice(br#","source":"#);
    write_json_joined(out, &[source], "");
    out.extend_from_slice(br#","sourcetype":""#);
    out.extend_from_slice(sourcetype(record.kind).as_bytes());
    out.extend_from_slice(br#"","#);
    if let Some(index) = index {
        out.extend_from_slice(br#""index":"#);
        write_json_joined(out, &[index], "");
        out.push(b',');
    }
    out.extend_from_slice(br#""fields":{"foundation":"#);
    write_json_joined(out, &[&ctx.foundation], "");
    out.extend_from_slice(br#","kind":""#);
    out.extend_from_slice(record.kind.as_str().as_bytes());
    out.push(b'"');
    for (key, tag) in [
        (br#","org":"#.as_slice(), "organization_name"),
        (br#","space":"#, "space_name"),
        (br#","app":"#, "app_name"),
    ] {
        if let Some(v) = record.tag(tag).filter(|v| !v.is_empty()) {
            out.extend_from_slice(key);
            write_json_joined(out, &[v], "");
        }
    }
    out.extend_from_slice(br#"},"event":"#);
    record.write_json(ctx, out);
    out.push(b'}');
}

/// Records per chunk an encoding task takes (see [`HttpSink::encode`]).
const ENCODE_CHUNK: usize = 250;

/// How many encoding tasks a batch gets: one per core. More only adds
/// threads to the blocking pool, each with its own allocator heap and gzip
/// state (16 tasks of 250 records kept ~150 MB more resident in the `full`
/// benchmark).
pub(super) fn encode_tasks() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// What encoding a request body needs, shared with the encoding tasks.
pub(super) struct Encoder {
    pub(super) format: HttpFormat,
    pub(super) ctx: EncodeContext,
    pub(super) hec_index: HecIndex,
    pub(super) max_request_bytes: usize,
    pub(super) gzip: bool,
}

impl Encoder {
    /// `records` as bodies of about `max_request_bytes` (compressed when
    /// configured) with their record counts, and a cleared buffer to reuse.
    #[allow(clippy::type_complexity)]
    fn encode(
        &self,
        records: &[Arc<Record>],
        buffer: Option<Vec<u8>>,
    ) -> std::io::Result<(Vec<(bytes::Bytes, u64)>, Vec<u8>)> {
        // Sized for the chunk (a 1 MB buffer per task for 250 records of
        // ~1.7 kB each kept 2-3x the memory resident).
        let want = records
            .iter()
            .map(|r| r.approx_size())
            .sum::<usize>()
            .min(self.max_request_bytes)
            + (16 << 10);
        let mut body = buffer.unwrap_or_else(|| Vec::with_capacity(want));
        body.clear();
        let mut parts = Vec::new();
        let mut count = 0;
        for (i, r) in records.iter().enumerate() {
            count += 1;
            match self.format {
                HttpFormat::JsonArray => body.push(if body.is_empty() { b'[' } else { b',' }),
                HttpFormat::Hec | HttpFormat::Json => {}
            }
            match self.format {
                HttpFormat::Hec => {
                    encode_hec(r, &self.ctx, self.hec_index.for_record(r), &mut body)
                }
                HttpFormat::Json => {
                    r.write_json(&self.ctx, &mut body);
                    body.push(b'\n');
                }
                HttpFormat::JsonArray => r.write_json(&self.ctx, &mut body),
            }
            if body.len() >= self.max_request_bytes || i + 1 == records.len() {
                if self.format == HttpFormat::JsonArray {
                    body.push(b']');
                }
                parts.push((self.compress(&body)?, count));
                body.clear();
                count = 0;
            }
        }
        Ok((parts, body))
    }

    /// The body as it goes on the wire (gzip when configured).
    fn compress(&self, body: &[u8]) -> std::io::Result<bytes::Bytes> {
        if !self.gzip {
            return Ok(bytes::Bytes::copy_from_slice(body));
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        gz.write_all(body)?;
        gz.finish().map(bytes::Bytes::from)
    }
}

impl HttpSink {
    /// The batch as compressed request bodies of about `max_request_bytes`
    /// each (uncompressed; a record larger than that goes alone), with their
    /// record counts, in batch order. One blocking task per core encodes
    /// and compresses chunks of [`ENCODE_CHUNK`] records, taking the next
    /// chunk as it finishes one: on one task the sink encoded at most ~100k
    /// records/s (callgrind: JSON and gzip are 8 µs a record) while the
    /// other core waited, and a task per chunk started up to 16 threads.
    pub(super) async fn encode(
        &mut self,
        batch: &[Arc<Record>],
    ) -> Result<Vec<(bytes::Bytes, u64)>, SinkFailure> {
        let batch: Arc<[Arc<Record>]> = batch.into();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let chunks = batch.len().div_ceil(ENCODE_CHUNK);
        let tasks: Vec<_> = (0..self.encode_tasks.min(chunks))
            .map(|_| {
                let (batch, next) = (Arc::clone(&batch), Arc::clone(&next));
                let encoder = Arc::clone(&self.encoder);
                let mut buffer = self.buffers.pop();
                tokio::task::spawn_blocking(move || {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let start = i * ENCODE_CHUNK;
                        if start >= batch.len() {
                            return Ok::<_, std::io::Error>((done, buffer));
                        }
                        let chunk = &batch[start..batch.len().min(start + ENCODE_CHUNK)];
                        let (bodies, reuse) = encoder.encode(chunk, buffer.take())?;
                        done.push((i, bodies));
                        buffer = Some(reuse);
                    }
                })
            })
            .collect();
        let mut encoded = Vec::with_capacity(chunks);
        let mut failed = None;
        for task in tasks {
            match task.await {
                Ok(Ok((done, buffer))) => {
                    encoded.extend(done);
                    if let Some(buffer) = buffer
                        && self.buffers.len() < self.cfg.concurrency.max(1) * 2
                    {
                        self.buffers.push(buffer);
                    }
                }
                Ok(Err(e)) => failed = Some(e.to_string()),
                Err(e) => failed = Some(e.to_string()),
            }
        }
        match failed {
            None => {
                encoded.sort_unstable_by_key(|(i, _)| *i);
                Ok(encoded.into_iter().flat_map(|(_, bodies)| bodies).collect())
            }
            Some(reason) => Err(SinkError::Encode { reason }.into()),
        }
    }

    /// Records `start..end` of the batch as request bodies, encoded on a
    /// blocking thread (a range isolating refused records).
    pub(super) async fn encode_range(
        &mut self,
        batch: &[Arc<Record>],
        start: usize,
        end: usize,
    ) -> Result<Vec<(bytes::Bytes, u64)>, SinkFailure> {
        let records = batch[start..end].to_vec();
        let encoder = Arc::clone(&self.encoder);
        let encoded = tokio::task::spawn_blocking(move || encoder.encode(&records, None))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        encoded.map(|(parts, _)| parts).map_err(|e| {
            SinkError::Encode {
                reason: e.to_string(),
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hec_time_is_seconds_with_six_digits_of_microseconds() {
        let ctx = EncodeContext::new("f");
        let time = |nanos: i64| {
            let record = crate::classify::classify(crate::proto::Envelope {
                timestamp: nanos,
                ..Default::default()
            });
            let mut out = Vec::new();
            encode_hec(&record, &ctx, None, &mut out);
            let out = String::from_utf8(out).unwrap();
            let rest = out.strip_prefix(r#"{"time":"#).unwrap();
            rest[..rest.find(',').unwrap()].to_string()
        };
        assert_eq!(time(1_700_000_000_000_042_999), "1700000000.000042");
        assert_eq!(time(1_700_000_000_100_000_000), "1700000000.100000");
        assert_eq!(time(0), "0.000000");
        // Before 1970: the whole seconds round down, the fraction counts up.
        assert_eq!(time(-1_000), "-1.999999");
    }

    #[test]
    fn hec_events_are_exact_and_escape_what_json_requires() {
        use crate::proto::envelope::Message;
        use crate::proto::{Envelope, Log};
        let ctx = EncodeContext::new("prod");
        let tags = |t: &[(&str, &str)]| {
            t.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let log = |tags| {
            crate::classify::classify(Envelope {
                timestamp: 1_700_000_000_123_456_789,
                source_id: "app-guid".into(),
                tags,
                message: Some(Message::Log(Log {
                    payload: "hi".into(),
                    r#type: 0,
                })),
                ..Envelope::default()
            })
        };
        let event = |r: &Record, index| {
            let mut out = Vec::new();
            encode_hec(r, &ctx, index, &mut out);
            let text = String::from_utf8(out).unwrap();
            // The wrapper, without the record JSON (tested elsewhere).
            let (head, _) = text.split_once(r#","event":"#).unwrap();
            head.to_string()
        };
        let plain = log(tags(&[
            ("organization_name", "org"),
            ("space_name", "dev"),
            ("app_name", "web"),
            ("source_type", "APP/PROC/WEB"),
        ]));
        assert_eq!(
            event(&plain, Some("cf_apps")),
            r#"{"time":1700000000.123456,"host":"org.dev.web","source":"APP/PROC/WEB","sourcetype":"cf:app_log","index":"cf_apps","fields":{"foundation":"prod","kind":"app_log","org":"org","space":"dev","app":"web"}"#
        );
        let odd = log(tags(&[
            ("organization_name", "o\"rg"),
            ("app_name", "a\\b\n"),
        ]));
        assert_eq!(
            event(&odd, None),
            r#"{"time":1700000000.123456,"host":"o\"rg.a\\b\n","source":"app-guid","sourcetype":"cf:app_log","fields":{"foundation":"prod","kind":"app_log","org":"o\"rg","app":"a\\b\n"}"#
        );
        assert_eq!(
            event(&log(tags(&[])), None),
            r#"{"time":1700000000.123456,"host":"-","source":"app-guid","sourcetype":"cf:app_log","fields":{"foundation":"prod","kind":"app_log"}"#
        );
    }

    #[test]
    fn hec_base_urls_get_the_event_path() {
        assert_eq!(
            endpoint("https://splunk:8088", HttpFormat::Hec),
            "https://splunk:8088/services/collector/event"
        );
        assert_eq!(
            endpoint("https://splunk:8088/", HttpFormat::Hec),
            "https://splunk:8088/services/collector/event"
        );
        assert_eq!(
            endpoint("https://splunk:8088/services/collector", HttpFormat::Hec),
            "https://splunk:8088/services/collector"
        );
        assert_eq!(
            endpoint("https://siem/ingest", HttpFormat::Json),
            "https://siem/ingest"
        );
    }
}

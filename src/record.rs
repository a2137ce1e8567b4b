//! What the nozzle delivers: one [`Record`] per envelope, and its JSON shape.
//!
//! A record keeps the envelope it came from and renders, on encoding, every
//! fact of it once (issue 19; `schema/*.schema.json` document each field):
//! - `kind`, `time` (the timestamp, RFC 3339 with nanoseconds), `foundation`,
//!   `source_id`, `instance_id`;
//! - `origin`, `source_type`, `deployment`, `job`: those `tags` entries, each
//!   only when the envelope has it (an empty value too);
//! - `app`, `space`, `org` (`{"guid":..,"name":..}`) from the tags `app_id`,
//!   `app_name`, `space_id`, `space_name`, `organization_id`,
//!   `organization_name`, each member only when its tag is there; members no
//!   tag gave that Cloud Controller's names ([`Record::names`]) fill in are
//!   listed in `enriched` (`"app.name"`, ...), so a reader can tell them apart;
//! - `tags`: every other `tags` entry; `deprecated_tags` as protojson writes
//!   them (never read for the fields above); each only when not empty;
//! - the message: a log's `log_type` (`OUT`, `ERR`, or the number of a type
//!   Loggregator does not name) and `message` (or `message_base64` and
//!   `message_invalid_utf8` for bytes that are not UTF-8); a counter's
//!   `name`, `delta`, `total`; a gauge's `metrics`; a timer's `name`,
//!   `start_ns`, `stop_ns`; an event's `title`, `body`;
//! - API invocations: the CloudTrail-style fields of [`ApiCall`];
//! - with `--record-envelope on` only, last: `envelope`, the envelope in the
//!   RLP Gateway's protojson form (snake_case keys, 64-bit integers as
//!   strings, payload base64), which records always carried before.
//!
//! The envelope can be rebuilt from the record alone (`tests/record_mapping.rs`
//! does, for arbitrary envelopes). The writers are in `layout`; they
//! allocate nothing per record but for API invocations.

use crate::proto::Envelope;

pub mod api;
pub mod cef;
pub mod envelope;
mod json;
mod number;
pub mod ruby_hash;
pub mod security;
pub mod uaa;
pub(crate) use json::{put_digits, write_int, write_rfc3339, write_str_contents};
mod layout;
pub(crate) use layout::write_envelope_json;
pub mod schema;
pub use schema::RecordSchema;
mod wire;

pub(crate) use envelope::MessageType;
pub use envelope::{EnvelopeView, MessageRef, ValueRef, decode_batch};
pub use wire::WireError;

pub use api::{ApiCall, ApiResource, ApiSource, audit_event_record};
pub use number::{Number, Position, boot_id};
pub(crate) use number::{declaration, is_declaration};

/// Version of the ApiInvocation record layout: the major changes on
/// incompatible changes, the minor when fields are added (as CloudTrail does).
pub(crate) const API_EVENT_VERSION: &str = "1.1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Cloud Controller log lines (`source_type=API`): API invocations.
    Api,
    /// Every other log envelope: app output, router, staging, cell lifecycle.
    AppLog,
    /// Counters, gauges and timers.
    Metric,
    /// Event envelopes (title and body), and envelopes that carry no message.
    Event,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Api, Kind::AppLog, Kind::Metric, Kind::Event];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Api => "api",
            Kind::AppLog => "app_log",
            Kind::Metric => "metric",
            Kind::Event => "event",
        }
    }

    /// Position in [`Kind::ALL`], for per-kind tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown record kind {s:?} (expected api, app_log, metric or event)")
            })
    }
}

/// One classified envelope.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub kind: Kind,
    /// The envelope, read in place from the bytes it arrived in.
    pub envelope: EnvelopeView,
    /// Set for [`Kind::Api`]: what Cloud Controller did (boxed: most records
    /// are app logs and metrics, which should not carry its size).
    pub api: Option<Box<ApiCall>>,
    /// App, space and org names from Cloud Controller, for envelopes that do
    /// not carry them in tags (see [`crate::enrich`]).
    pub names: Option<std::sync::Arc<AppNames>>,
    /// `boot` and `seq` (or `last_seq`, or `boot` alone), set by the router
    /// ([`crate::route`]); `None` for a record that did not go through it.
    pub number: Option<Number>,
}

/// The names of an app and where it lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppNames {
    pub app_guid: String,
    pub app_name: Option<String>,
    pub space_guid: Option<String>,
    pub space_name: Option<String>,
    pub org_guid: Option<String>,
    pub org_name: Option<String>,
}

/// Per-deployment values every record carries, and how records are written.
#[derive(Clone, Debug)]
pub struct EncodeContext {
    pub foundation: String,
    /// `--record-envelope on`: add the envelope's protojson copy (`envelope`).
    pub record_envelope: bool,
    /// `--record-schema`: the schema records are written in.
    pub schema: RecordSchema,
    /// `--record-schema SINK=SCHEMA`: a sink's own schema, over `schema`.
    pub sink_schemas: std::sync::Arc<[(String, RecordSchema)]>,
}

impl EncodeContext {
    /// The context of `foundation`, without the envelope copy (the default).
    pub fn new(foundation: impl Into<String>) -> Self {
        Self {
            foundation: foundation.into(),
            record_envelope: false,
            schema: RecordSchema::Native,
            sink_schemas: std::sync::Arc::from(Vec::new()),
        }
    }

    /// The context the sink named `sink` (`stdout`, `file`, `syslog`,
    /// `http`, `s3`) writes with: its own schema when one is set for it.
    pub fn for_sink(&self, sink: &str) -> EncodeContext {
        let mut ctx = self.clone();
        if let Some((_, schema)) = self.sink_schemas.iter().find(|(name, _)| name == sink) {
            ctx.schema = *schema;
        }
        ctx
    }
}

impl Record {
    /// Appends the record's JSON (no trailing newline) to `out`.
    pub fn write_json(&self, ctx: &EncodeContext, out: &mut Vec<u8>) {
        if is_declaration(self) {
            return number::write_declaration(self, ctx, out);
        }
        if schema::write(self, ctx, out) {
            return;
        }
        if let Some(api) = self.api.as_deref()
            && matches!(
                api.source,
                ApiSource::AuditEvents(_) | ApiSource::SecurityLog
            )
        {
            // Serialising into a Vec cannot fail: every map key is a string.
            sonic_rs::to_writer(
                &mut *out,
                &api::AuditEventJson {
                    record: self,
                    api,
                    ctx,
                },
            )
            .expect("audit event JSON serialisation is infallible");
            return;
        }
        write_envelope_record(self, ctx, out);
    }

    /// The record's JSON as a string (tests, stdout).
    pub fn to_json(&self, ctx: &EncodeContext) -> String {
        let mut out = Vec::with_capacity(1024);
        self.write_json(ctx, &mut out);
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }

    /// A cheap estimate of the record's encoded size in bytes, for batching
    /// by bytes: the variable-length parts plus a fixed allowance for the
    /// JSON structure. Not exact (escaping, the protojson copy), never zero.
    pub fn approx_size(&self) -> usize {
        let env = &self.envelope;
        let (tags, message) = env.approx_text_len();
        256 + 2 * (tags + message) + env.source_id().len() + env.instance_id().len()
    }

    /// A tag's value, from `tags` or, failing that, a text `deprecated_tags` entry.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.envelope.tag(key)
    }

    /// The envelope's protobuf encoding (shared with the received batch).
    pub fn wire_bytes(&self) -> &bytes::Bytes {
        self.envelope.encoded()
    }

    /// Where the record comes from, as a host name for syslog and HEC:
    /// `org.space.app` for app traffic, else `deployment.job`, else the origin
    /// (empty when none is known).
    pub fn host(&self) -> String {
        let (parts, n) = self.host_parts();
        parts[..n].join(".")
    }

    /// The parts of [`Record::host`], to be joined by `.`, without
    /// allocating (the sinks write them straight into their buffers).
    pub(crate) fn host_parts(&self) -> ([&str; 3], usize) {
        let tag = |k: &str| self.tag(k).filter(|v| !v.is_empty());
        match (tag("organization_name"), tag("space_name"), tag("app_name")) {
            (None, None, None) => match (tag("deployment"), tag("job")) {
                (Some(d), Some(j)) => ([d, j, ""], 2),
                _ => ([tag("origin").unwrap_or(""), "", ""], 1),
            },
            (o, s, a) => {
                let mut parts = ["", "", ""];
                let mut n = 0;
                for p in [o, s, a].into_iter().flatten() {
                    parts[n] = p;
                    n += 1;
                }
                (parts, n)
            }
        }
    }
}

/// The app a record is about: the `app_id` tag, else the source id of app
/// logs and app metrics (which CF sets to the app guid), else an audit
/// event's app target.
pub fn app_guid(rec: &Record) -> Option<&str> {
    if let Some(id) = rec.tag("app_id").filter(|s| !s.is_empty()) {
        return Some(id);
    }
    match rec.kind {
        Kind::AppLog | Kind::Metric if !rec.envelope.source_id().is_empty() => {
            Some(rec.envelope.source_id())
        }
        _ => audit_resource(rec, |a| {
            a.target
                .as_ref()
                .filter(|t| t.kind == "app")
                .and_then(|t| t.guid.as_deref())
        }),
    }
}

pub(crate) fn audit_resource<'a>(
    rec: &'a Record,
    f: impl FnOnce(&'a ApiCall) -> Option<&'a str>,
) -> Option<&'a str> {
    rec.api.as_deref().and_then(f)
}

pub(crate) fn audit_space_org(rec: &Record, space: bool) -> Option<&str> {
    match &rec.api.as_deref()?.source {
        ApiSource::AuditEvents(a) => {
            let r = if space { &a.space } else { &a.org };
            r.as_ref()?.guid.as_deref()
        }
        ApiSource::Firehose | ApiSource::SecurityLog => None,
    }
}

/// `source_id` of the nozzle's own alert records.
pub(crate) const ALERT_SOURCE_ID: &str = "cf-audit-nozzle";

/// Whether a record is one of the nozzle's own alerts.
pub(crate) fn is_alert(record: &Record) -> bool {
    record.envelope.source_id() == ALERT_SOURCE_ID && record.tag("nozzle_alert").is_some()
}

/// RFC 3339 UTC with nanoseconds, from UNIX nanoseconds.
pub(crate) fn rfc3339_nanos(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The record JSON of an envelope (every record but the audit-events poller's).
fn write_envelope_record(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) {
    let env = &rec.envelope;
    let tag = |k: &str| env.tags_value(k);
    out.extend_from_slice(b"{\"kind\":");
    json::write_str(out, rec.kind.as_str());
    number::write_boot_seq(rec, out);
    json::write_key(out, "time");
    json::write_rfc3339_nanos(out, env.timestamp());
    json::write_key(out, "foundation");
    json::write_str(out, &ctx.foundation);
    json::write_key(out, "source_id");
    json::write_str(out, env.source_id());
    json::write_key(out, "instance_id");
    json::write_str(out, env.instance_id());
    for key in layout::PLAIN_TAGS {
        if let Some(v) = tag(key) {
            json::write_key(out, key);
            json::write_str(out, v);
        }
    }
    layout::write_places(rec, out);
    layout::write_other_tags(env, out);
    layout::write_deprecated_tags(env, out);
    layout::write_message(env, out);
    if let Some(api) = &rec.api {
        layout::write_api_fields(out, rec, api);
    }
    if ctx.record_envelope {
        json::write_key(out, "envelope");
        write_envelope_json(env, out);
    }
    out.push(b'}');
}

/// A stable id for an event read from a log line: the same line read twice
/// (for example after a reconnect) gets the same id, so consumers can de-duplicate.
pub fn firehose_event_id<'a>(env: impl Into<EventKey<'a>>) -> String {
    use sha2::{Digest, Sha256};
    let env = env.into();
    let mut h = Sha256::new();
    h.update(env.timestamp.to_be_bytes());
    for part in [env.source_id.as_bytes(), env.instance_id.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    if let Some(payload) = env.log_payload {
        h.update(payload);
    }
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    guid(u128::from_be_bytes(first))
}

/// What [`firehose_event_id`] hashes, from a view or a prost envelope.
pub struct EventKey<'a> {
    timestamp: i64,
    source_id: &'a str,
    instance_id: &'a str,
    log_payload: Option<&'a [u8]>,
}

impl<'a> From<&'a EnvelopeView> for EventKey<'a> {
    fn from(env: &'a EnvelopeView) -> Self {
        EventKey {
            timestamp: env.timestamp(),
            source_id: env.source_id(),
            instance_id: env.instance_id(),
            log_payload: match env.message() {
                Some(MessageRef::Log(l)) => Some(l.payload),
                _ => None,
            },
        }
    }
}

impl<'a> From<&'a Envelope> for EventKey<'a> {
    fn from(env: &'a Envelope) -> Self {
        use crate::proto::envelope::Message;
        EventKey {
            timestamp: env.timestamp,
            source_id: &env.source_id,
            instance_id: &env.instance_id,
            log_payload: match &env.message {
                Some(Message::Log(l)) => Some(&l.payload),
                _ => None,
            },
        }
    }
}

/// 128 bits written as a GUID: `8-4-4-4-12` lower-case hex digits.
pub fn guid(v: u128) -> String {
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

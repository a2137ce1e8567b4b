//! What the nozzle delivers: one [`Record`] per envelope, and its JSON shape.
//!
//! A record keeps the envelope it came from and renders, on encoding, the
//! readable fields (`kind`, `time`, `source_id`, `app`, `message`, ...) next to
//! the envelope in protojson form (`envelope`: snake_case keys, 64-bit
//! integers as strings, payload base64), as DESIGN.md §4 describes. API
//! invocations also carry the CloudTrail-style fields of [`ApiCall`].

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::proto::Envelope;

pub mod api;
pub mod envelope;
mod json;
mod number;
pub mod ruby_hash;
pub(crate) use json::{put_digits, write_int, write_rfc3339, write_str_contents};
mod wire;

pub(crate) use envelope::MessageType;
pub use envelope::{EnvelopeView, MessageRef, ValueRef, decode_batch};
pub use wire::WireError;

pub use api::{ApiCall, ApiResource, ApiSource, audit_event_record};
pub use number::{Number, Position, boot_id};
pub(crate) use number::{declaration, is_declaration};

/// Version of the ApiInvocation record layout: the major changes on
/// incompatible changes, the minor when fields are added (as CloudTrail does).
pub(crate) const API_EVENT_VERSION: &str = "1.0";

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

/// Per-deployment values every record carries.
#[derive(Clone, Debug)]
pub struct EncodeContext {
    pub foundation: String,
}

impl Record {
    /// Appends the record's JSON (no trailing newline) to `out`.
    pub fn write_json(&self, ctx: &EncodeContext, out: &mut Vec<u8>) {
        if is_declaration(self) {
            return number::write_declaration(self, ctx, out);
        }
        if let Some(api) = self.api.as_deref()
            && matches!(api.source, ApiSource::AuditEvents(_))
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
        ApiSource::Firehose => None,
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

struct Named<'a> {
    guid: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> Named<'a> {
    fn from_tags(env: &'a EnvelopeView, guid: &str, name: &str) -> Option<Self> {
        let guid = env.tag(guid).filter(|s| !s.is_empty());
        let name = env.tag(name).filter(|s| !s.is_empty());
        (guid.is_some() || name.is_some()).then_some(Named { guid, name })
    }

    /// `{"guid":..,"name":..}`, each only when known.
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        if let Some(guid) = self.guid {
            out.extend_from_slice(b"\"guid\":");
            json::write_str(out, guid);
        }
        if let Some(name) = self.name {
            if self.guid.is_some() {
                out.push(b',');
            }
            out.extend_from_slice(b"\"name\":");
            json::write_str(out, name);
        }
        out.push(b'}');
    }
}

/// The record JSON of an envelope (every record but the audit-events poller's).
fn write_envelope_record(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) {
    let env = &rec.envelope;
    let tag = |k: &str| env.tag(k);
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
    for key in ["origin", "source_type", "deployment", "job"] {
        if let Some(v) = tag(key) {
            json::write_key(out, key);
            json::write_str(out, v);
        }
    }
    // Log envelopes from apps name the app in source_id when no app_id tag does.
    let mut app = Named::from_tags(env, "app_id", "app_name").or_else(|| {
        let is_app_log = env.message_type() == Some(MessageType::Log)
            && !env.source_id().is_empty()
            && tag("app_id").is_none_or(str::is_empty);
        is_app_log.then_some(Named {
            guid: Some(env.source_id()),
            name: None,
        })
    });
    let mut space = Named::from_tags(env, "space_id", "space_name");
    let mut org = Named::from_tags(env, "organization_id", "organization_name");
    // Names from Cloud Controller fill in what the tags do not say.
    if let Some(n) = rec.names.as_deref() {
        fn named<'n>(guid: Option<&'n str>, name: Option<&'n str>) -> Option<Named<'n>> {
            (guid.is_some() || name.is_some()).then_some(Named { guid, name })
        }
        if app.as_ref().is_none_or(|a| a.name.is_none()) {
            app = named(Some(&n.app_guid), n.app_name.as_deref());
        }
        space = space.or_else(|| named(n.space_guid.as_deref(), n.space_name.as_deref()));
        org = org.or_else(|| named(n.org_guid.as_deref(), n.org_name.as_deref()));
    }
    for (key, named) in [("app", &app), ("space", &space), ("org", &org)] {
        if let Some(named) = named {
            json::write_key(out, key);
            named.write(out);
        }
    }
    match env.message() {
        Some(MessageRef::Log(l)) => {
            json::write_key(out, "log_type");
            json::write_str(out, log_type(&l));
            match std::str::from_utf8(l.payload) {
                Ok(text) => {
                    json::write_key(out, "message");
                    json::write_str(out, text);
                }
                Err(_) => {
                    // Kept losslessly: the bytes as base64, and a flag saying so.
                    json::write_key(out, "message_base64");
                    json::write_base64(out, l.payload);
                    out.extend_from_slice(b",\"message_invalid_utf8\":true");
                }
            }
        }
        Some(MessageRef::Counter(c)) => {
            out.extend_from_slice(b",\"metric_type\":\"counter\"");
            json::write_key(out, "name");
            json::write_str(out, c.name);
            json::write_key(out, "delta");
            json::write_int(out, c.delta);
            json::write_key(out, "total");
            json::write_int(out, c.total);
        }
        Some(MessageRef::Gauge(g)) => {
            out.extend_from_slice(b",\"metric_type\":\"gauge\"");
            json::write_key(out, "metrics");
            write_gauge_metrics(out, &g);
        }
        Some(MessageRef::Timer(t)) => {
            out.extend_from_slice(b",\"metric_type\":\"timer\"");
            json::write_key(out, "name");
            json::write_str(out, t.name);
            json::write_key(out, "duration_ns");
            json::write_int(out, t.stop.saturating_sub(t.start));
        }
        Some(MessageRef::Event(e)) => {
            json::write_key(out, "title");
            json::write_str(out, e.title);
            json::write_key(out, "body");
            json::write_str(out, e.body);
        }
        None => {}
    }
    if let Some(api) = &rec.api {
        write_api_fields(out, rec, api, &space, &org);
    }
    json::write_key(out, "envelope");
    write_envelope_json(env, out);
    out.push(b'}');
}

/// The CloudTrail-style fields of an API invocation (a few percent of the
/// records): serialised by serde as a map, whose entries are spliced into
/// the record's object.
fn write_api_fields(
    out: &mut Vec<u8>,
    rec: &Record,
    api: &ApiCall,
    space: &Option<Named>,
    org: &Option<Named>,
) {
    struct Fields<'a> {
        rec: &'a Record,
        api: &'a ApiCall,
        space: &'a Option<Named<'a>>,
        org: &'a Option<Named<'a>>,
    }
    impl Serialize for Fields<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let resource = |kind: &str, n: &Option<Named>| {
                n.as_ref().map(|n| ApiResource {
                    kind: kind.to_string(),
                    guid: n.guid.map(str::to_string),
                    name: n.name.map(str::to_string),
                })
            };
            let time = rfc3339_nanos(self.rec.envelope.timestamp());
            let mut m = s.serialize_map(None)?;
            api::write_fields(
                &mut m,
                self.rec,
                self.api,
                &time,
                resource("space", self.space),
                resource("org", self.org),
            )?;
            m.end()
        }
    }
    let mut map = Vec::with_capacity(512);
    sonic_rs::to_writer(
        &mut map,
        &Fields {
            rec,
            api,
            space,
            org,
        },
    )
    .expect("API fields serialise: string keys, finite numbers");
    if map.len() > 2 {
        out.push(b',');
        out.extend_from_slice(&map[1..map.len() - 1]);
    }
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

fn write_gauge_metrics(out: &mut Vec<u8>, g: &envelope::GaugeRef<'_>) {
    out.push(b'{');
    for (i, (name, unit, value)) in g.metrics().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, name);
        out.extend_from_slice(b":{\"unit\":");
        json::write_str(out, unit);
        out.extend_from_slice(b",\"value\":");
        json::write_float(out, value);
        out.push(b'}');
    }
    out.push(b'}');
}

/// Appends the envelope as the RLP Gateway's protojson (EmitUnpopulated)
/// writes it: snake_case keys, 64-bit integers as strings, payload base64.
pub(crate) fn write_envelope_json(env: &EnvelopeView, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timestamp\":");
    json::write_int_str(out, env.timestamp());
    json::write_key(out, "source_id");
    json::write_str(out, env.source_id());
    json::write_key(out, "instance_id");
    json::write_str(out, env.instance_id());
    out.extend_from_slice(b",\"deprecated_tags\":{");
    for (i, (k, v)) in env.deprecated_tags().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, k);
        match v {
            Some(ValueRef::Text(t)) => {
                out.extend_from_slice(b":{\"text\":");
                json::write_str(out, t);
            }
            Some(ValueRef::Integer(n)) => {
                out.extend_from_slice(b":{\"integer\":");
                json::write_int_str(out, n);
            }
            Some(ValueRef::Decimal(d)) => {
                out.extend_from_slice(b":{\"decimal\":");
                json::write_float(out, d);
            }
            None => out.extend_from_slice(b":{"),
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"},\"tags\":{");
    for (i, (k, v)) in env.tags().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, k);
        out.push(b':');
        json::write_str(out, v);
    }
    out.push(b'}');
    match env.message() {
        Some(MessageRef::Log(l)) => {
            out.extend_from_slice(b",\"log\":{\"payload\":");
            json::write_base64(out, l.payload);
            out.extend_from_slice(b",\"type\":\"");
            out.extend_from_slice(log_type(&l).as_bytes());
            out.extend_from_slice(b"\"}");
        }
        Some(MessageRef::Counter(c)) => {
            out.extend_from_slice(b",\"counter\":{\"name\":");
            json::write_str(out, c.name);
            out.extend_from_slice(b",\"delta\":");
            json::write_int_str(out, c.delta);
            out.extend_from_slice(b",\"total\":");
            json::write_int_str(out, c.total);
            out.push(b'}');
        }
        Some(MessageRef::Gauge(g)) => {
            out.extend_from_slice(b",\"gauge\":{\"metrics\":");
            write_gauge_metrics(out, &g);
            out.push(b'}');
        }
        Some(MessageRef::Timer(t)) => {
            out.extend_from_slice(b",\"timer\":{\"name\":");
            json::write_str(out, t.name);
            out.extend_from_slice(b",\"start\":");
            json::write_int_str(out, t.start);
            out.extend_from_slice(b",\"stop\":");
            json::write_int_str(out, t.stop);
            out.push(b'}');
        }
        Some(MessageRef::Event(e)) => {
            out.extend_from_slice(b",\"event\":{\"title\":");
            json::write_str(out, e.title);
            out.extend_from_slice(b",\"body\":");
            json::write_str(out, e.body);
            out.push(b'}');
        }
        None => {}
    }
    out.push(b'}');
}

fn log_type(l: &envelope::LogRef<'_>) -> &'static str {
    if l.is_err() { "ERR" } else { "OUT" }
}

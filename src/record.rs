//! What the nozzle delivers: one [`Record`] per envelope, and its JSON shape.
//!
//! A record keeps the envelope it came from and renders, on encoding, the
//! readable fields (`kind`, `time`, `source_id`, `app`, `message`, ...) next to
//! the envelope in protojson form (`envelope`: snake_case keys, 64-bit
//! integers as strings, payload base64), as DESIGN.md §4 describes. API
//! invocations also carry the CloudTrail-style fields of [`ApiCall`].

use base64::Engine as _;
use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::proto::Envelope;

pub mod api;
pub mod envelope;
pub mod ruby_hash;
mod wire;

pub use envelope::{EnvelopeView, MessageRef, MessageType, ValueRef, decode_batch};
pub use wire::WireError;

pub use api::{ApiCall, ApiResource, ApiSource, audit_event_record};

/// Version of the ApiInvocation record layout: the major changes on
/// incompatible changes, the minor when fields are added (as CloudTrail does).
pub const API_EVENT_VERSION: &str = "1.0";

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
    pub names: Option<std::sync::Arc<crate::enrich::AppNames>>,
}

/// Per-deployment values every record carries.
#[derive(Clone, Debug)]
pub struct EncodeContext {
    pub foundation: String,
}

impl Record {
    /// Appends the record's JSON (no trailing newline) to `out`.
    pub fn write_json(&self, ctx: &EncodeContext, out: &mut Vec<u8>) {
        // Serialising into a Vec cannot fail: every map key is a string and
        // every float goes through `Float`, which writes non-finite values as strings.
        sonic_rs::to_writer(&mut *out, &RecordJson { record: self, ctx })
            .expect("record JSON serialisation is infallible");
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
    pub fn host_parts(&self) -> ([&str; 3], usize) {
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

/// RFC 3339 UTC with nanoseconds, from UNIX nanoseconds.
pub fn rfc3339_nanos(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

struct RecordJson<'a> {
    record: &'a Record,
    ctx: &'a EncodeContext,
}

#[derive(Serialize)]
struct Named<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    guid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
}

impl<'a> Named<'a> {
    fn from_tags(env: &'a EnvelopeView, guid: &str, name: &str) -> Option<Self> {
        let guid = env.tag(guid).filter(|s| !s.is_empty());
        let name = env.tag(name).filter(|s| !s.is_empty());
        (guid.is_some() || name.is_some()).then_some(Named { guid, name })
    }
}

/// A double as protojson writes it: a number, or "NaN" / "Infinity" / "-Infinity".
struct Float(f64);

impl Serialize for Float {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v = self.0;
        if v.is_finite() {
            s.serialize_f64(v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if v > 0.0 {
            s.serialize_str("Infinity")
        } else {
            s.serialize_str("-Infinity")
        }
    }
}

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rec = self.record;
        if let Some(api) = rec.api.as_deref()
            && matches!(api.source, ApiSource::AuditEvents(_))
        {
            return api::serialize_audit_event(s, rec, api, &self.ctx.foundation);
        }
        let env = &rec.envelope;
        let tag = |k: &str| env.tag(k);
        let time = rfc3339_nanos(env.timestamp());
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", rec.kind.as_str())?;
        m.serialize_entry("time", &time)?;
        m.serialize_entry("foundation", &self.ctx.foundation)?;
        m.serialize_entry("source_id", env.source_id())?;
        m.serialize_entry("instance_id", env.instance_id())?;
        for key in ["origin", "source_type", "deployment", "job"] {
            if let Some(v) = tag(key) {
                m.serialize_entry(key, v)?;
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
        if let Some(app) = &app {
            m.serialize_entry("app", app)?;
        }
        if let Some(space) = &space {
            m.serialize_entry("space", space)?;
        }
        if let Some(org) = &org {
            m.serialize_entry("org", org)?;
        }
        match env.message() {
            Some(MessageRef::Log(l)) => {
                m.serialize_entry("log_type", log_type(&l))?;
                match std::str::from_utf8(l.payload) {
                    Ok(text) => m.serialize_entry("message", text)?,
                    Err(_) => {
                        // Kept losslessly: the bytes as base64, and a flag saying so.
                        m.serialize_entry("message_base64", &BASE64.encode(l.payload))?;
                        m.serialize_entry("message_invalid_utf8", &true)?;
                    }
                }
            }
            Some(MessageRef::Counter(c)) => {
                m.serialize_entry("metric_type", "counter")?;
                m.serialize_entry("name", c.name)?;
                m.serialize_entry("delta", &c.delta)?;
                m.serialize_entry("total", &c.total)?;
            }
            Some(MessageRef::Gauge(g)) => {
                m.serialize_entry("metric_type", "gauge")?;
                m.serialize_entry("metrics", &GaugeJson(g))?;
            }
            Some(MessageRef::Timer(t)) => {
                m.serialize_entry("metric_type", "timer")?;
                m.serialize_entry("name", t.name)?;
                m.serialize_entry("duration_ns", &t.stop.saturating_sub(t.start))?;
            }
            Some(MessageRef::Event(e)) => {
                m.serialize_entry("title", e.title)?;
                m.serialize_entry("body", e.body)?;
            }
            None => {}
        }
        if let Some(api) = &rec.api {
            let resource = |kind: &str, n: &Option<Named>| {
                n.as_ref().map(|n| ApiResource {
                    kind: kind.to_string(),
                    guid: n.guid.map(str::to_string),
                    name: n.name.map(str::to_string),
                })
            };
            api::write_fields(
                &mut m,
                rec,
                api,
                &time,
                resource("space", &space),
                resource("org", &org),
            )?;
        }
        m.serialize_entry("envelope", &EnvelopeJson(env))?;
        m.end()
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

struct GaugeJson<'a>(envelope::GaugeRef<'a>);

impl Serialize for GaugeJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, unit, value) in self.0.metrics() {
            m.serialize_entry(name, &GaugeValueJson(unit, value))?;
        }
        m.end()
    }
}

struct GaugeValueJson<'a>(&'a str, f64);

impl Serialize for GaugeValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("unit", self.0)?;
        m.serialize_entry("value", &Float(self.1))?;
        m.end()
    }
}

/// The envelope as the RLP Gateway's protojson (EmitUnpopulated) writes it.
pub struct EnvelopeJson<'a>(pub &'a EnvelopeView);

/// A 64-bit integer as protojson writes it: a decimal string. Formatted
/// with `itoa` on the stack: `collect_str` went through `core::fmt`, ~1,000
/// instructions per integer (callgrind, examples/encode_cost).
struct Int64<T>(T);

impl<T: itoa::Integer + Copy> Serialize for Int64<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(itoa::Buffer::new().format(self.0))
    }
}

impl Serialize for EnvelopeJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let env = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("timestamp", &Int64(env.timestamp()))?;
        m.serialize_entry("source_id", env.source_id())?;
        m.serialize_entry("instance_id", env.instance_id())?;
        m.serialize_entry("deprecated_tags", &DeprecatedTags(env))?;
        m.serialize_entry("tags", &Tags(env))?;
        match env.message() {
            Some(MessageRef::Log(l)) => m.serialize_entry(
                "log",
                &LogJson {
                    payload: Base64Display::new(l.payload, &BASE64),
                    ty: log_type(&l),
                },
            )?,
            Some(MessageRef::Counter(c)) => m.serialize_entry(
                "counter",
                &CounterJson {
                    name: c.name,
                    delta: Int64(c.delta),
                    total: Int64(c.total),
                },
            )?,
            Some(MessageRef::Gauge(g)) => m.serialize_entry(
                "gauge",
                &GaugeEnvelopeJson {
                    metrics: GaugeJson(g),
                },
            )?,
            Some(MessageRef::Timer(t)) => m.serialize_entry(
                "timer",
                &TimerJson {
                    name: t.name,
                    start: Int64(t.start),
                    stop: Int64(t.stop),
                },
            )?,
            Some(MessageRef::Event(e)) => m.serialize_entry(
                "event",
                &EventJson {
                    title: e.title,
                    body: e.body,
                },
            )?,
            None => {}
        }
        m.end()
    }
}

#[derive(Serialize)]
struct LogJson<'a> {
    #[serde(serialize_with = "display_str")]
    payload: Base64Display<'a, 'static, base64::engine::GeneralPurpose>,
    #[serde(rename = "type")]
    ty: &'static str,
}

#[derive(Serialize)]
struct CounterJson<'a> {
    name: &'a str,
    delta: Int64<u64>,
    total: Int64<u64>,
}

#[derive(Serialize)]
struct GaugeEnvelopeJson<'a> {
    metrics: GaugeJson<'a>,
}

#[derive(Serialize)]
struct TimerJson<'a> {
    name: &'a str,
    start: Int64<i64>,
    stop: Int64<i64>,
}

#[derive(Serialize)]
struct EventJson<'a> {
    title: &'a str,
    body: &'a str,
}

fn display_str<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn log_type(l: &envelope::LogRef<'_>) -> &'static str {
    if l.is_err() { "ERR" } else { "OUT" }
}

struct Tags<'a>(&'a EnvelopeView);

impl Serialize for Tags<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tags = self.0.tags();
        let mut m = s.serialize_map(Some(tags.len()))?;
        for (k, v) in tags {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

struct DeprecatedTags<'a>(&'a EnvelopeView);

impl Serialize for DeprecatedTags<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tags = self.0.deprecated_tags();
        let mut m = s.serialize_map(Some(tags.len()))?;
        for (k, v) in tags {
            match v {
                Some(ValueRef::Text(t)) => m.serialize_entry(k, &OneField("text", t))?,
                Some(ValueRef::Integer(i)) => {
                    m.serialize_entry(k, &OneField("integer", Int64(i)))?
                }
                Some(ValueRef::Decimal(d)) => {
                    m.serialize_entry(k, &OneField("decimal", Float(d)))?
                }
                None => m.serialize_entry(k, &NoFields)?,
            }
        }
        m.end()
    }
}

/// `{"<name>": value}`
struct OneField<T>(&'static str, T);

impl<T: Serialize> Serialize for OneField<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.0, &self.1)?;
        m.end()
    }
}

/// `{}`
struct NoFields;

impl Serialize for NoFields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_map(Some(0))?.end()
    }
}

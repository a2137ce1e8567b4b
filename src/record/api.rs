//! The ApiInvocation record (DESIGN.md §4): a Cloud Controller action in
//! CloudTrail's record shape, from either source.
//!
//! - `sourceEvent: "firehose"`: a CC `API` log line, in real time. It does not
//!   say who acted (`userIdentity.type` is `unknown`); its target is the app
//!   (or build) the text names, and space and org come from the envelope tags.
//! - `sourceEvent: "audit_events"`: an event from `/v3/audit_events`, with
//!   the actor, the target of any resource type, and `data.request`.
//!
//! The layout is published as a JSON Schema in `schema/api-invocation.schema.json`.

use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

use super::security::SecurityEvent;
use super::{API_EVENT_VERSION, Record, rfc3339_nanos};
use crate::proto::Envelope;

/// A Cloud Controller action, read from a log line or an audit event.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiCall {
    /// CC audit event type, e.g. `audit.app.update`; `unknown` when a log
    /// line's text is not recognised.
    pub(crate) event_name: String,
    /// The resource acted on. Log lines name an `app` or a `build`.
    pub target: Option<ApiResource>,
    /// The request attributes: CC's `data.request`, or a log line's Ruby hash
    /// as JSON, or (when that does not parse) the text as CC wrote it.
    pub request_parameters: Option<Value>,
    pub source: ApiSource,
    /// The CC security event or UAA audit line about the same action: the
    /// record's source when `source` is [`ApiSource::SecurityLog`], else
    /// merged in by the correlator.
    pub security: Option<Box<SecurityEvent>>,
    /// The `eventID` of a firehose line the correlator merged into a record
    /// built from another source.
    pub merged_firehose: Option<String>,
}

/// A resource of a record's `resources` list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiResource {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Where an [`ApiCall`] was read.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiSource {
    /// A CC `API` log line from the firehose; the rest is in the envelope.
    Firehose,
    /// `/v3/audit_events`.
    AuditEvents(Box<AuditEventFields>),
    /// A CC security event or a UAA audit line from the syslog ingress
    /// (in [`ApiCall::security`]).
    SecurityLog,
}

impl ApiSource {
    /// The record's `sourceEvent` for this source alone.
    pub(crate) fn as_str(&self, security: Option<&SecurityEvent>) -> &'static str {
        match (self, security) {
            (ApiSource::Firehose, _) => "firehose",
            (ApiSource::AuditEvents(_), _) => "audit_events",
            (ApiSource::SecurityLog, Some(s)) => s.from.as_str(),
            (ApiSource::SecurityLog, None) => "cc_security_event",
        }
    }
}

/// What an audit event adds to a log line: who, where, and the event itself.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEventFields {
    /// The event's `guid`, which is the record's `eventID`.
    pub guid: String,
    pub actor: ApiResource,
    pub space: Option<ApiResource>,
    pub org: Option<ApiResource>,
    /// The event as Cloud Controller sent it (kept like a firehose record keeps its envelope).
    pub original: Value,
}

/// `userIdentity.type` values: CC's actor types, and `unknown` for anything else.
pub(crate) const USER_TYPES: [&str; 6] = [
    "user",
    "system",
    "app",
    "process",
    "service_broker",
    "unknown",
];

/// Whether an event only read something, where the name says so: `*.show`
/// and `*.download` events read; every other `audit.*` event changes
/// something. Other events (`app.crash`, `blob.remove_orphan`, unknown log
/// lines) are not API calls one can call read-only or not.
pub fn read_only(event_name: &str) -> Option<bool> {
    if !event_name.starts_with("audit.") {
        return None;
    }
    Some(event_name.ends_with(".show") || event_name.ends_with(".download"))
}

impl ApiCall {
    /// The event name (`audit.app.update`, `uaa.UserAuthenticationFailure`).
    pub fn event_name(&self) -> &str {
        &self.event_name
    }

    /// The record's `readOnly`: the HTTP method when a security event says
    /// it, else what the event name says ([`read_only`]).
    pub fn read_only(&self) -> Option<bool> {
        self.security
            .as_deref()
            .and_then(|s| s.read_only)
            .or_else(|| read_only(&self.event_name))
    }

    /// The record's `eventSource`: `uaa` for UAA's events, else `cloud_controller`.
    pub fn event_source(&self) -> &'static str {
        self.security
            .as_deref()
            .map_or("cloud_controller", |s| s.from.event_source())
    }

    /// The record's `outcome`: the security event's, `success` for an
    /// audit event alone (CC records no failed changes), `None` for a log
    /// line alone (it does not say).
    pub fn outcome(&self) -> Option<&'static str> {
        match (&self.security, &self.source) {
            (Some(s), _) => Some(s.outcome.as_str()),
            (None, ApiSource::AuditEvents(_)) => Some("success"),
            (None, _) => None,
        }
    }
}

/// The source id of audit-events records (what syslog's APP-NAME and HEC's
/// `source` show; `--include source_id=cloud_controller` matches them).
pub(crate) const AUDIT_EVENTS_SOURCE_ID: &str = "cloud_controller";

/// Why an audit event could not become a record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditEventError {
    #[error("audit event has no string `{0}`")]
    Missing(&'static str),
    #[error("audit event {guid}: created_at {value:?} is not an RFC 3339 time")]
    BadTime { guid: String, value: String },
}

/// Reads one `/v3/audit_events` resource into an `api` record.
///
/// The record's envelope is empty but for its timestamp (the event's
/// `created_at`) and source id (`cloud_controller`): sinks take a record's
/// time and, for syslog and HEC, its app-name and source from there. The
/// envelope of an audit-events record is never rendered.
pub fn audit_event_record(event: Value) -> Result<Record, AuditEventError> {
    let text = |v: &Value, key: &'static str| -> Option<String> {
        v.get(key).and_then(Value::as_str).map(str::to_string)
    };
    let guid = text(&event, "guid").ok_or(AuditEventError::Missing("guid"))?;
    let event_name = text(&event, "type").ok_or(AuditEventError::Missing("type"))?;
    let created = text(&event, "created_at").ok_or(AuditEventError::Missing("created_at"))?;
    let timestamp = chrono::DateTime::parse_from_rfc3339(&created)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| AuditEventError::BadTime {
            guid: guid.clone(),
            value: created.clone(),
        })?;
    let resource = |v: Option<&Value>, default_kind: &str| -> Option<ApiResource> {
        let v = v.filter(|v| v.is_object())?;
        Some(ApiResource {
            kind: text(v, "type").unwrap_or_else(|| default_kind.to_string()),
            guid: text(v, "guid").filter(|s| !s.is_empty()),
            name: text(v, "name").filter(|s| !s.is_empty()),
        })
    };
    let mut actor = resource(event.get("actor"), "unknown").unwrap_or(ApiResource {
        kind: "unknown".into(),
        guid: None,
        name: None,
    });
    if !USER_TYPES.contains(&actor.kind.as_str()) {
        actor.kind = "unknown".into();
    }
    let fields = AuditEventFields {
        guid,
        actor,
        space: resource(event.get("space"), "space").map(|r| ApiResource {
            kind: "space".into(),
            ..r
        }),
        org: resource(event.get("organization"), "org").map(|r| ApiResource {
            kind: "org".into(),
            ..r
        }),
        original: Value::Null,
    };
    let call = ApiCall {
        target: resource(event.get("target"), "unknown"),
        request_parameters: event.get("data").and_then(|d| d.get("request")).cloned(),
        event_name,
        source: ApiSource::AuditEvents(Box::new(AuditEventFields {
            original: event,
            ..fields
        })),
        security: None,
        merged_firehose: None,
    };
    Ok(Record {
        kind: super::Kind::Api,
        envelope: super::EnvelopeView::from_prost(&Envelope {
            timestamp,
            source_id: AUDIT_EVENTS_SOURCE_ID.to_string(),
            ..Envelope::default()
        }),
        api: Some(Box::new(call)),
        names: None,
        number: None,
    })
}

/// The CloudTrail-style fields, written into the record's JSON object.
/// `space` and `org` are what the envelope's tags say (log lines only).
pub(super) fn write_fields<M: SerializeMap>(
    m: &mut M,
    rec: &Record,
    api: &ApiCall,
    time: &str,
    space: Option<ApiResource>,
    org: Option<ApiResource>,
) -> Result<(), M::Error> {
    let env = &rec.envelope;
    let sec = api.security.as_deref();
    m.serialize_entry("eventVersion", API_EVENT_VERSION)?;
    m.serialize_entry("eventTime", time)?;
    m.serialize_entry("eventID", &api.event_id(env))?;
    m.serialize_entry("eventSource", api.event_source())?;
    m.serialize_entry("eventName", &api.event_name)?;
    m.serialize_entry("eventType", "CfApiCall")?;
    m.serialize_entry("userIdentity", &api.user_identity())?;
    m.serialize_entry("resources", &resources(rec, api, space, org))?;
    m.serialize_entry("requestParameters", &api.request_parameters)?;
    // The HTTP method, when a security event says it, decides.
    if let Some(ro) = api.read_only() {
        m.serialize_entry("readOnly", &ro)?;
    }
    write_outcome(m, api, sec)?;
    m.serialize_entry("sources", &Sources(api))?;
    m.serialize_entry("sourceEvent", api.source.as_str(sec))?;
    if let Some(s) = sec {
        m.serialize_entry(
            "security_event",
            &SecurityJson {
                source: s.from.as_str(),
                event_id: &s.event_id,
                host: &s.host,
                line: &s.line,
            },
        )?;
    }
    match &api.source {
        ApiSource::AuditEvents(a) => m.serialize_entry("audit_event", &a.original),
        _ => Ok(()),
    }
}

/// The record's `resources`: the target (its name from the envelope's
/// tags or Cloud Controller's names when the source did not give one),
/// then the space and the org: an audit event's own, else `space` and
/// `org` (what a log line's tags say).
pub(crate) fn resources(
    rec: &Record,
    api: &ApiCall,
    space: Option<ApiResource>,
    org: Option<ApiResource>,
) -> Vec<ApiResource> {
    let env = &rec.envelope;
    let (space, org) = match &api.source {
        ApiSource::AuditEvents(a) => (a.space.clone(), a.org.clone()),
        ApiSource::Firehose | ApiSource::SecurityLog => (space, org),
    };
    let mut resources = Vec::with_capacity(3);
    if let Some(target) = &api.target {
        let mut target = target.clone();
        // A log line's app is named in the tags when CC still knew it.
        if matches!(api.source, ApiSource::Firehose)
            && target.kind == "app"
            && target.name.is_none()
            && env.tag("app_id") == target.guid.as_deref()
        {
            target.name = env
                .tag("app_name")
                .filter(|s| !s.is_empty())
                .map(str::to_string);
        }
        if target.name.is_none()
            && let Some(n) = rec.names.as_deref()
            && target.guid.as_deref() == Some(n.app_guid.as_str())
        {
            target.name = n.app_name.clone();
        }
        resources.push(target);
    }
    resources.extend(space);
    resources.extend(org);
    resources
}

/// Where, how and with what outcome: `outcome`, `sourceIPAddress`,
/// `forwardedFor`, `userAgent`, `requestID`, `httpStatusCode`, `errorCode`,
/// `errorMessage`, each when known. An audit event alone says the change
/// succeeded (CC records no failed ones); a log line alone says nothing.
fn write_outcome<M: SerializeMap>(
    m: &mut M,
    api: &ApiCall,
    sec: Option<&SecurityEvent>,
) -> Result<(), M::Error> {
    if let Some(outcome) = api.outcome() {
        m.serialize_entry("outcome", outcome)?;
    }
    let Some(s) = sec else {
        return Ok(());
    };
    let text = [
        ("sourceIPAddress", &s.source_ip),
        ("userAgent", &s.user_agent),
        ("requestID", &s.request_id),
    ];
    for (key, value) in text {
        if let Some(v) = value {
            m.serialize_entry(key, v)?;
        }
    }
    if !s.forwarded_for.is_empty() {
        m.serialize_entry("forwardedFor", &s.forwarded_for)?;
    }
    if let Some(status) = s.http_status {
        m.serialize_entry("httpStatusCode", &status)?;
    }
    if let Some(v) = &s.error_code {
        m.serialize_entry("errorCode", v)?;
    }
    if let Some(v) = &s.error_message {
        m.serialize_entry("errorMessage", v)?;
    }
    Ok(())
}

/// `sources`: every source a record was built from, in the order
/// `firehose`, `audit_events`, `cc_security_event`, `uaa_audit`.
struct Sources<'a>(&'a ApiCall);

impl Serialize for Sources<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        for source in self.0.sources() {
            seq.serialize_element(source)?;
        }
        seq.end()
    }
}

/// `security_event`: the line a record's security facts were read from.
#[derive(Serialize)]
struct SecurityJson<'a> {
    source: &'static str,
    #[serde(rename = "eventID")]
    event_id: &'a str,
    host: &'a str,
    line: &'a str,
}

/// `userIdentity`: the audit event's actor when there is one, else the
/// security event's caller, else `{"type":"unknown"}`; the security event
/// adds `authMechanism` and `clientId`, and the name or guid the actor lacks.
pub(crate) struct UserIdentity<'a> {
    /// `type`: a `USER_TYPES` value, or the caller's `client`.
    pub kind: &'a str,
    pub guid: Option<&'a str>,
    pub name: Option<&'a str>,
    pub auth_mechanism: Option<&'a str>,
    pub client_id: Option<&'a str>,
}

impl ApiCall {
    /// The record's `eventID`: the audit event's guid, the security
    /// event's id, else the firehose line's ([`super::firehose_event_id`]).
    pub(crate) fn event_id(&self, env: &super::EnvelopeView) -> std::borrow::Cow<'_, str> {
        match (&self.source, self.security.as_deref()) {
            (ApiSource::AuditEvents(a), _) => a.guid.as_str().into(),
            (ApiSource::SecurityLog, Some(s)) => s.event_id.as_str().into(),
            _ => super::firehose_event_id(env).into(),
        }
    }

    /// The record's `userIdentity`. Log lines do not say who acted;
    /// /v3/audit_events and security events do.
    pub(crate) fn user_identity(&self) -> UserIdentity<'_> {
        let actor = match &self.source {
            ApiSource::AuditEvents(a) => Some(&a.actor),
            ApiSource::Firehose | ApiSource::SecurityLog => None,
        };
        let caller = self.security.as_deref().map(|s| &s.caller);
        let kind = match (actor, caller) {
            (Some(a), _) => a.kind.as_str(),
            (None, Some(c)) => c.kind,
            (None, None) => "unknown",
        };
        let guid =
            (actor.and_then(|a| a.guid.as_deref())).or(caller.and_then(|c| c.guid.as_deref()));
        let name =
            (actor.and_then(|a| a.name.as_deref())).or(caller.and_then(|c| c.name.as_deref()));
        UserIdentity {
            kind,
            guid,
            name,
            auth_mechanism: caller.and_then(|c| c.auth_mechanism.as_deref()),
            client_id: caller.and_then(|c| c.client_id.as_deref()),
        }
    }

    /// The record's `sources`: every source it was built from, in the
    /// order `firehose`, `audit_events`, `cc_security_event`, `uaa_audit`.
    pub(crate) fn sources(&self) -> impl Iterator<Item = &'static str> {
        let firehose = matches!(self.source, ApiSource::Firehose) || self.merged_firehose.is_some();
        let audit = matches!(self.source, ApiSource::AuditEvents(_));
        [
            firehose.then_some("firehose"),
            audit.then_some("audit_events"),
            self.security.as_deref().map(|s| s.from.as_str()),
        ]
        .into_iter()
        .flatten()
    }
}

impl Serialize for UserIdentity<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", self.kind)?;
        if let Some(g) = self.guid {
            m.serialize_entry("guid", g)?;
        }
        if let Some(n) = self.name {
            m.serialize_entry("name", n)?;
        }
        if let Some(v) = self.auth_mechanism {
            m.serialize_entry("authMechanism", v)?;
        }
        if let Some(v) = self.client_id {
            m.serialize_entry("clientId", v)?;
        }
        m.end()
    }
}

/// The JSON of an audit-events record: the readable `kind`, `time` and
/// `foundation`, the CloudTrail fields, and the event as CC sent it.
pub(super) struct AuditEventJson<'a> {
    pub record: &'a Record,
    pub api: &'a ApiCall,
    pub ctx: &'a super::EncodeContext,
}

impl Serialize for AuditEventJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rec = self.record;
        let time = rfc3339_nanos(rec.envelope.timestamp());
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("kind", rec.kind.as_str())?;
        if let Some(n) = &rec.number {
            m.serialize_entry("boot", &*n.boot)?;
            if let super::Position::Seq(seq) = n.position {
                m.serialize_entry("seq", &seq)?;
            }
        }
        m.serialize_entry("time", &time)?;
        m.serialize_entry("foundation", &self.ctx.foundation)?;
        write_fields(&mut m, rec, self.api, &time, None, None)?;
        m.end()
    }
}

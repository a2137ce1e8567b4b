//! Security events from component logs (issue 22): Cloud Controller's CEF
//! security events ([`cef`](super::cef)) and UAA's audit lines
//! ([`uaa`](super::uaa)), read into what an API-invocation record says about
//! who called, from where, and with what outcome.
//!
//! A [`SecurityEvent`] keeps the line it was read from, so a record can be
//! rebuilt from it (the disk buffer does) and readers can check the source.

use super::{ApiCall, ApiResource, ApiSource, Envelope, EnvelopeView, Kind, Record, cef, uaa};

/// Which component log an event was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecuritySource {
    /// Cloud Controller's security event log (CEF).
    CcSecurityEvent,
    /// UAA's audit log.
    UaaAudit,
}

impl SecuritySource {
    /// The name in a record's `sources` list.
    pub fn as_str(self) -> &'static str {
        match self {
            SecuritySource::CcSecurityEvent => "cc_security_event",
            SecuritySource::UaaAudit => "uaa_audit",
        }
    }

    /// The record's `eventSource` and the synthetic envelope's source id.
    pub fn event_source(self) -> &'static str {
        match self {
            SecuritySource::CcSecurityEvent => "cloud_controller",
            SecuritySource::UaaAudit => "uaa",
        }
    }
}

/// The outcome of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Refused: HTTP 401 or 403, a failed authentication.
    Denied,
    /// Any other failure: other 4xx and 5xx, UAA's other `*Failure` events.
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// Who made a request, as the security event names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// `user`, `client` or `unknown`.
    pub kind: &'static str,
    pub name: Option<String>,
    pub guid: Option<String>,
    /// CC's `cs1` (`oauth-access-token`, `basic-auth`, `no-auth`) or UAA's
    /// authentication type.
    pub auth_mechanism: Option<String>,
    /// UAA's OAuth client id (`origin.clientId`).
    pub client_id: Option<String>,
}

/// One security event, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityEvent {
    pub from: SecuritySource,
    /// A stable id: the same line from the same host at the same time gets the same one.
    pub event_id: String,
    /// UNIX nanoseconds: CC's `rt`, else the syslog timestamp.
    pub time_ns: i64,
    /// The syslog HOSTNAME it came from.
    pub host: String,
    /// The syslog MSG as received.
    pub line: String,
    /// `audit.app.update` (CC, from method and path) or `uaa.<EventType>`.
    pub event_name: String,
    pub caller: Caller,
    pub target: Option<ApiResource>,
    /// The caller's address: the first X-Forwarded-For entry, else CC's `src`
    /// (UAA: `origin.remoteAddress`).
    pub source_ip: Option<String>,
    /// CC's `cs5`, X-Forwarded-For as a list, in header order.
    pub forwarded_for: Vec<String>,
    /// CC's `src`: the peer the request came from (usually the router).
    pub peer_ip: Option<String>,
    pub user_agent: Option<String>,
    /// CC's `cs2`, the `X-Vcap-Request-Id`.
    pub request_id: Option<String>,
    pub method: Option<String>,
    pub request: Option<String>,
    pub http_status: Option<u16>,
    pub outcome: Outcome,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub read_only: Option<bool>,
}

/// Why a line that claims to be a security event could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityEventError {
    #[error(transparent)]
    Cef(#[from] cef::CefError),
    #[error(transparent)]
    Uaa(#[from] uaa::UaaError),
    #[error("CEF event has no usable time (`rt` {0:?}) and the syslog header none either")]
    NoTime(Option<String>),
}

/// Reads a syslog MSG: `Ok(None)` when it is neither a Cloud Controller CEF
/// event nor a UAA audit line (ignored), an error when it is one but cannot
/// be read. `time_ns` is the syslog header's time (None: `-`).
pub fn read_line(
    line: &str,
    host: &str,
    time_ns: Option<i64>,
) -> Result<Option<SecurityEvent>, SecurityEventError> {
    if line.contains("CEF:") {
        let c = cef::parse(line)?;
        if c.product != "cloud_controller_ng" {
            return Ok(None);
        }
        return cc_event(&c, line, host, time_ns).map(Some);
    }
    if line.contains("Audit: ") {
        let a = match uaa::parse(line) {
            Ok(a) => a,
            // "Audit: " in an ordinary line, not at a word start.
            Err(uaa::UaaError::NoMarker) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        // UAA's own time (its log layout starts with it) is when the event
        // happened; the syslog header's is when the forwarder read the line.
        let time = line_time(line).or(time_ns).unwrap_or(0);
        return Ok(Some(uaa_event(&a, line, host, time)));
    }
    Ok(None)
}

/// The RFC 3339 time a line starts with, in brackets (`[2024-05-01T10:00:00.123Z] ...`).
fn line_time(line: &str) -> Option<i64> {
    let inner = line.strip_prefix('[')?.split_once(']')?.0;
    chrono::DateTime::parse_from_rfc3339(inner)
        .ok()?
        .timestamp_nanos_opt()
}

fn opt(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|s| !s.is_empty() && *s != "-")
        .map(str::to_string)
}

fn cc_event(
    c: &cef::Cef<'_>,
    line: &str,
    host: &str,
    time_ns: Option<i64>,
) -> Result<SecurityEvent, SecurityEventError> {
    let rt = c.get("rt");
    let time_ns = match rt.and_then(|t| t.trim().parse::<i64>().ok()) {
        Some(ms) => ms.saturating_mul(1_000_000),
        None => time_ns.ok_or_else(|| SecurityEventError::NoTime(rt.map(str::to_string)))?,
    };
    let method = opt(c.get("requestMethod"))
        .or_else(|| c.signature_id.split_once(' ').map(|(m, _)| m.to_string()));
    let request = opt(c.get("request"))
        .or_else(|| c.signature_id.split_once(' ').map(|(_, p)| p.to_string()));
    let (event_name, target, read_only) = cc_action(
        method.as_deref().unwrap_or(""),
        request.as_deref().unwrap_or(""),
    );
    let http_status = c
        .labelled("httpStatusCode", "cs4")
        .and_then(|s| s.trim().parse::<u16>().ok());
    let result = opt(c.labelled("result", "cs3"));
    let outcome = match (http_status, result.as_deref()) {
        (Some(401 | 403), _) => Outcome::Denied,
        (Some(s), _) if s >= 400 => Outcome::Failure,
        (_, Some(r)) if r != "success" => Outcome::Failure,
        _ => Outcome::Success,
    };
    let forwarded_for: Vec<String> = c
        .labelled("xForwardedFor", "cs5")
        .map(|x| {
            x.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let peer_ip = opt(c.get("src"));
    let (suser, suid) = (opt(c.get("suser")), opt(c.get("suid")));
    let failed = outcome != Outcome::Success;
    Ok(SecurityEvent {
        from: SecuritySource::CcSecurityEvent,
        event_id: event_id(host, time_ns, line),
        time_ns,
        host: host.to_string(),
        line: line.to_string(),
        event_name,
        caller: Caller {
            kind: if suser.is_some() || suid.is_some() {
                "user"
            } else {
                "unknown"
            },
            name: suser,
            guid: suid,
            auth_mechanism: opt(c.labelled("userAuthenticationMechanism", "cs1")),
            client_id: None,
        },
        target,
        source_ip: forwarded_for.first().cloned().or_else(|| peer_ip.clone()),
        forwarded_for,
        peer_ip,
        user_agent: opt(c.get("requestClientApplication")),
        request_id: opt(c.labelled("vcapRequestId", "cs2")),
        method,
        request,
        http_status,
        outcome,
        error_code: if failed { result.clone() } else { None },
        error_message: failed
            .then(|| http_status.map(|s| format!("HTTP {s} {}", reason(s)).trim().to_string()))
            .flatten(),
        read_only,
    })
}

/// The reason phrase of common HTTP statuses, else empty.
fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The singular of a CC collection name (`apps` → `app`, `processes` → `process`).
fn singular(collection: &str) -> &str {
    if collection.ends_with("sses") || collection.ends_with("ches") {
        &collection[..collection.len() - 2]
    } else {
        collection.strip_suffix('s').unwrap_or(collection)
    }
}

/// The event name, target and read-only flag of a CC request, from its
/// method and path as CC's audit event types name actions:
/// `audit.<resource>.<action>`, where the resource is the singular of the
/// path's first collection (after `/v2` or `/v3`), a sub-collection is
/// added after it (`audit.app.route.list`), `POST .../actions/<x>` is
/// action `<x>`, and otherwise the method says it: `POST` create, `PUT` and
/// `PATCH` update, `DELETE` delete, `GET` show (with a guid) or list.
pub fn cc_action(method: &str, request: &str) -> (String, Option<ApiResource>, Option<bool>) {
    let path = request.split(['?', '#']).next().unwrap_or("");
    let mut segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if matches!(segs.first(), Some(&("v2" | "v3"))) {
        segs.remove(0);
    }
    let read_only = match method {
        "GET" | "HEAD" | "OPTIONS" => Some(true),
        "POST" | "PUT" | "PATCH" | "DELETE" => Some(false),
        _ => None,
    };
    let Some(collection) = segs.first() else {
        return ("audit.root.show".to_string(), None, read_only);
    };
    let resource = singular(collection);
    let target = segs.get(1).map(|g| ApiResource {
        kind: resource.to_string(),
        guid: Some((*g).to_string()),
        name: None,
    });
    let verb = |with_id: bool| match method {
        "POST" => "create",
        "PUT" | "PATCH" => "update",
        "DELETE" => "delete",
        "GET" | "HEAD" if with_id => "show",
        "GET" | "HEAD" => "list",
        _ => "request",
    };
    let name = match segs.as_slice() {
        [_] => format!("audit.{resource}.{}", verb(false)),
        [_, _] => format!("audit.{resource}.{}", verb(true)),
        [_, _, "actions", action, ..] => format!("audit.{resource}.{action}"),
        [_, _, sub] => format!("audit.{resource}.{}.{}", singular(sub), verb(false)),
        [_, _, sub, ..] => format!("audit.{resource}.{}.{}", singular(sub), verb(true)),
        [] => unreachable!("collection checked above"),
    };
    (name, target, read_only)
}

fn uaa_event(a: &uaa::UaaAudit<'_>, line: &str, host: &str, time_ns: i64) -> SecurityEvent {
    let t = a.event_type;
    let failed = t.contains("Failure") || t.ends_with("NotFound");
    let outcome = match () {
        _ if !failed => Outcome::Success,
        _ if t.contains("Authentication") || t.ends_with("NotFound") => Outcome::Denied,
        _ => Outcome::Failure,
    };
    let data = opt(Some(a.data));
    let principal = opt(Some(a.principal)).filter(|p| Some(p) != data.as_ref() && p != "null");
    SecurityEvent {
        from: SecuritySource::UaaAudit,
        event_id: event_id(host, time_ns, line),
        time_ns,
        host: host.to_string(),
        line: line.to_string(),
        event_name: format!("uaa.{t}"),
        caller: Caller {
            kind: if t.starts_with("Client") {
                "client"
            } else {
                "user"
            },
            name: data.clone(),
            guid: principal,
            auth_mechanism: opt(a.authentication_type),
            client_id: opt(a.origin("clientId")),
        },
        target: None,
        source_ip: opt(a.origin("remoteAddress")),
        forwarded_for: Vec::new(),
        peer_ip: None,
        user_agent: None,
        request_id: None,
        method: None,
        request: None,
        http_status: None,
        outcome,
        error_code: failed.then(|| t.to_string()),
        error_message: failed.then(|| match &data {
            Some(d) => format!("{t} for '{d}' in zone {}", a.zone),
            None => format!("{t} in zone {}", a.zone),
        }),
        read_only: None,
    }
}

/// A GUID from the SHA-256 of the host, time and line.
fn event_id(host: &str, time_ns: i64, line: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(time_ns.to_be_bytes());
    h.update((host.len() as u64).to_be_bytes());
    h.update(host.as_bytes());
    h.update(line.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    super::guid(u128::from_be_bytes(first))
}

/// The `api` record of a security event alone. Its envelope is empty but
/// for the time and the source id (`cloud_controller` or `uaa`), as an
/// audit-events record's is; the envelope is never rendered.
pub fn security_record(ev: SecurityEvent) -> Record {
    let call = ApiCall {
        event_name: ev.event_name.clone(),
        target: ev.target.clone(),
        request_parameters: request_parameters(&ev),
        source: ApiSource::SecurityLog,
        security: None,
        merged_firehose: None,
    };
    let envelope = EnvelopeView::from_prost(&Envelope {
        timestamp: ev.time_ns,
        source_id: ev.from.event_source().to_string(),
        ..Envelope::default()
    });
    Record {
        kind: Kind::Api,
        envelope,
        api: Some(Box::new(ApiCall {
            security: Some(Box::new(ev)),
            ..call
        })),
        names: None,
        number: None,
    }
}

/// `{"requestMethod":..,"request":..}` of a CC event; none for UAA.
fn request_parameters(ev: &SecurityEvent) -> Option<serde_json::Value> {
    let mut m = serde_json::Map::new();
    if let Some(method) = &ev.method {
        m.insert("requestMethod".into(), method.clone().into());
    }
    if let Some(request) = &ev.request {
        m.insert("request".into(), request.clone().into());
    }
    (!m.is_empty()).then_some(serde_json::Value::Object(m))
}

/// What a record holds besides its base source, for the disk buffer: the
/// security event's line (with its host and time) and a merged firehose
/// line's event id, as JSON; `None` for a record with neither.
pub fn buffer_parts(api: &ApiCall) -> Option<serde_json::Value> {
    if api.security.is_none() && api.merged_firehose.is_none() {
        return None;
    }
    let mut m = serde_json::Map::new();
    if let Some(s) = &api.security {
        m.insert("host".into(), s.host.clone().into());
        m.insert("line".into(), s.line.clone().into());
        m.insert("time_ns".into(), s.time_ns.into());
    }
    if let Some(id) = &api.merged_firehose {
        m.insert("merged_firehose".into(), id.clone().into());
    }
    Some(serde_json::Value::Object(m))
}

/// Rebuilds what [`buffer_parts`] wrote onto `base` (a record of another
/// source), or, without a base, the security event's own record.
pub fn restore_parts(base: Option<Record>, parts: &serde_json::Value) -> Result<Record, String> {
    let text = |k: &str| parts.get(k).and_then(serde_json::Value::as_str);
    let security = match (text("line"), text("host")) {
        (Some(line), Some(host)) => {
            let time = parts.get("time_ns").and_then(serde_json::Value::as_i64);
            let ev = read_line(line, host, time)
                .map_err(|e| format!("security event: {e}"))?
                .ok_or("security event: the line is no longer one")?;
            Some(ev)
        }
        _ => None,
    };
    let mut record = match (base, security) {
        (None, Some(ev)) => return Ok(security_record(ev)),
        (None, None) => return Err("security record without its line".into()),
        (Some(mut base), ev) => {
            if let Some(api) = base.api.as_deref_mut() {
                api.security = ev.map(Box::new);
            }
            base
        }
    };
    if let Some(api) = record.api.as_deref_mut() {
        api.merged_firehose = text("merged_firehose").map(str::to_string);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEF_403: &str = "CEF:0|cloud_foundry|cloud_controller_ng|3.180.0|PATCH /v3/apps/a1b2|PATCH /v3/apps/a1b2|0|rt=1700000000123 suser=dev@example.com suid=u-1 cs1Label=userAuthenticationMechanism cs1=oauth-access-token cs2Label=vcapRequestId cs2=req-7::abc request=/v3/apps/a1b2?x\\=1 requestMethod=PATCH cs3Label=result cs3=clientError cs4Label=httpStatusCode cs4=403 src=10.0.1.5 dst=10.0.2.9 cs5Label=xForwardedFor cs5=198.51.100.7, 10.0.0.2";

    #[test]
    fn a_denied_cc_request_names_caller_origin_and_outcome() {
        let ev = read_line(CEF_403, "api/0", Some(5)).unwrap().unwrap();
        assert_eq!(ev.from, SecuritySource::CcSecurityEvent);
        assert_eq!(ev.time_ns, 1_700_000_000_123_000_000);
        assert_eq!(ev.event_name, "audit.app.update");
        assert_eq!(ev.target.as_ref().unwrap().guid.as_deref(), Some("a1b2"));
        assert_eq!(ev.caller.name.as_deref(), Some("dev@example.com"));
        assert_eq!(ev.caller.guid.as_deref(), Some("u-1"));
        assert_eq!(
            ev.caller.auth_mechanism.as_deref(),
            Some("oauth-access-token")
        );
        assert_eq!(ev.request_id.as_deref(), Some("req-7::abc"));
        assert_eq!(ev.request.as_deref(), Some("/v3/apps/a1b2?x=1"));
        assert_eq!(ev.source_ip.as_deref(), Some("198.51.100.7"));
        assert_eq!(ev.forwarded_for, ["198.51.100.7", "10.0.0.2"]);
        assert_eq!(ev.peer_ip.as_deref(), Some("10.0.1.5"));
        assert_eq!(ev.http_status, Some(403));
        assert_eq!(ev.outcome, Outcome::Denied);
        assert_eq!(ev.error_code.as_deref(), Some("clientError"));
        assert_eq!(ev.error_message.as_deref(), Some("HTTP 403 Forbidden"));
        assert_eq!(ev.read_only, Some(false));
    }

    #[test]
    fn actions_are_named_from_method_and_path() {
        let name = |m, p| cc_action(m, p).0;
        assert_eq!(name("GET", "/v3/apps"), "audit.app.list");
        assert_eq!(name("GET", "/v3/apps/g"), "audit.app.show");
        assert_eq!(name("POST", "/v3/apps"), "audit.app.create");
        assert_eq!(name("DELETE", "/v2/apps/g"), "audit.app.delete");
        assert_eq!(name("POST", "/v3/apps/g/actions/start"), "audit.app.start");
        assert_eq!(name("GET", "/v3/apps/g/routes"), "audit.app.route.list");
        assert_eq!(
            name("PATCH", "/v3/processes/g/sidecars/s"),
            "audit.process.sidecar.update"
        );
        assert_eq!(
            name("POST", "/v3/service_instances?x=1"),
            "audit.service_instance.create"
        );
        assert_eq!(name("GET", "/"), "audit.root.show");
    }

    #[test]
    fn uaa_failures_are_denials_with_their_reason() {
        let line = "Audit: UserAuthenticationFailure ('marissa'): principal=u-9, origin=[remoteAddress=203.0.113.9, clientId=cf], identityZoneId=[uaa]";
        let ev = read_line(line, "uaa/0", Some(42)).unwrap().unwrap();
        assert_eq!(ev.event_name, "uaa.UserAuthenticationFailure");
        assert_eq!(ev.time_ns, 42);
        assert_eq!(ev.outcome, Outcome::Denied);
        assert_eq!(ev.caller.kind, "user");
        assert_eq!(ev.caller.name.as_deref(), Some("marissa"));
        assert_eq!(ev.caller.guid.as_deref(), Some("u-9"));
        assert_eq!(ev.caller.client_id.as_deref(), Some("cf"));
        assert_eq!(ev.source_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(ev.error_code.as_deref(), Some("UserAuthenticationFailure"));
        assert_eq!(
            ev.error_message.as_deref(),
            Some("UserAuthenticationFailure for 'marissa' in zone uaa")
        );
        let dated = format!("[2024-05-01T10:00:00.5Z] uaa - 1 [t] .... INFO --- {line}");
        let ev = read_line(&dated, "uaa/0", Some(42)).unwrap().unwrap();
        assert_eq!(
            ev.time_ns, 1_714_557_600_500_000_000,
            "the line's own time wins"
        );
        let ok = "Audit: TokenIssuedEvent ('cf'): principal=cf, origin=[remoteAddress=10.0.0.1], identityZoneId=[uaa]";
        let ev = read_line(ok, "uaa/0", Some(1)).unwrap().unwrap();
        assert_eq!((ev.outcome, ev.error_code), (Outcome::Success, None));
        assert_eq!(
            ev.caller.guid, None,
            "principal equal to the data is not repeated"
        );
    }

    #[test]
    fn other_lines_are_ignored_and_broken_ones_are_errors() {
        assert_eq!(read_line("GET /v2/info 200", "h", None), Ok(None));
        assert_eq!(
            read_line("CEF:0|other|firewall|1|x|y|1|a=b", "h", None),
            Ok(None)
        );
        assert_eq!(
            read_line("CEF:0|cloud_foundry|cloud_controller_ng|1|x", "h", None),
            Err(SecurityEventError::Cef(cef::CefError::ShortHeader(4)))
        );
        assert_eq!(
            read_line(
                "CEF:0|cloud_foundry|cloud_controller_ng|1|x|y|0|suser=a",
                "h",
                None
            ),
            Err(SecurityEventError::NoTime(None))
        );
        assert!(matches!(
            read_line("Audit: Foo bar", "h", None),
            Err(SecurityEventError::Uaa(_))
        ));
    }
}

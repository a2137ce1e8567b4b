//! The emulator's component logs (issue 22): for the Cloud Controller
//! actions its traffic puts on the firehose, the CC security event (CEF)
//! each request leaves in CC's security event log, a refused attempt now
//! and then, and UAA's audit lines for the sign-ins behind them. The lines
//! are collected in a [`SecurityLog`] that the demo forwards to the syslog
//! ingress as BOSH's syslog forwarding would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Users acting in the emulated foundation: (name, guid).
const USERS: [(&str, &str); 3] = [
    ("dev@example.com", "1d7c9f4e-aaaa-4bbb-8ccc-0123456789ab"),
    ("ops@example.com", "2e8d0a5f-bbbb-4ccc-9ddd-123456789abc"),
    ("ci-bot", "3f9e1b6a-cccc-4ddd-aeee-23456789abcd"),
];

/// Lines waiting to be forwarded, at most `capacity` (the oldest go first
/// when it is full: the emulator never waits on a reader).
#[derive(Clone, Debug)]
pub struct SecurityLog {
    lines: Arc<Mutex<VecDeque<String>>>,
    capacity: usize,
}

impl SecurityLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            lines: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Every line written since the last call, oldest first.
    pub fn drain(&self) -> Vec<String> {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines.drain(..).collect()
    }
}

/// The request behind one of the traffic's Cloud Controller lines:
/// `variant` is the line's (see `Traffic::api_log`), `seq` numbers it.
pub(super) fn request(variant: u32, app: &str, seq: u64) -> (&'static str, String) {
    match variant {
        0 => ("PATCH", format!("/v3/apps/{app}")),
        1 => ("POST", format!("/v3/apps/{app}/actions/start")),
        2 => ("POST", format!("/v3/apps/{app}/actions/stop")),
        3 => ("POST", "/v3/builds".to_string()),
        4 => (
            "POST",
            format!(
                "/v3/packages/{}/upload",
                crate::record::guid(u128::from(seq))
            ),
        ),
        _ => ("POST", "/v3/apps".to_string()),
    }
}

/// Writes the lines of one Cloud Controller action at `timestamp` (UNIX
/// nanoseconds): its security event; one in five actions is preceded by a
/// refused attempt of another user (403), one in four by its user's UAA
/// sign-in, and one in seven by a failed sign-in.
pub(super) fn write_action(log: &SecurityLog, variant: u32, app: &str, seq: u64, timestamp: i64) {
    let (user, user_guid) = USERS[(seq % USERS.len() as u64) as usize];
    let (method, path) = request(variant, app, seq);
    let ms = timestamp / 1_000_000;
    if seq.is_multiple_of(4) {
        log.push(uaa_line(
            ms - 40,
            "UserAuthenticationSuccess",
            user,
            user_guid,
            &format!("10.0.16.{}", seq % 200 + 10),
        ));
    }
    if seq.is_multiple_of(7) {
        log.push(uaa_line(
            ms - 30,
            "UserAuthenticationFailure",
            "mallory",
            "9a9a9a9a-dddd-4eee-8fff-3456789abcde",
            "203.0.113.66",
        ));
    }
    if seq.is_multiple_of(5) {
        let (other, other_guid) = USERS[((seq + 1) % USERS.len() as u64) as usize];
        log.push(cef_line(
            ms - 20,
            &Request {
                user: other,
                user_guid: other_guid,
                method: "PATCH",
                path: &format!("/v3/apps/{app}"),
                request_id: &request_id(seq, 1),
                status: 403,
            },
        ));
    }
    log.push(cef_line(
        ms,
        &Request {
            user,
            user_guid,
            method,
            path: &path,
            request_id: &request_id(seq, 0),
            status: if method == "POST" && path == "/v3/apps" {
                201
            } else {
                200
            },
        },
    ));
}

fn request_id(seq: u64, attempt: u64) -> String {
    let g = crate::record::guid(u128::from(seq) << 8 | u128::from(attempt));
    format!("{g}::{}", crate::record::guid(u128::from(seq) + 1))
}

struct Request<'a> {
    user: &'a str,
    user_guid: &'a str,
    method: &'a str,
    path: &'a str,
    request_id: &'a str,
    status: u16,
}

/// A Cloud Controller security event as CC 3.x writes it (the CEF layout
/// of the Cloud Foundry documentation's "Security event logging").
fn cef_line(rt_ms: i64, r: &Request<'_>) -> String {
    let result = match r.status {
        s if s < 400 => "success",
        s if s < 500 => "clientError",
        _ => "serverError",
    };
    format!(
        "CEF:0|cloud_foundry|cloud_controller_ng|3.181.0|{m} {p}|{m} {p}|0|rt={rt_ms} suser={u} suid={g} request={p} requestMethod={m} src=10.0.1.20 dst=10.0.2.9 cs1Label=userAuthenticationMechanism cs1=oauth-access-token cs2Label=vcapRequestId cs2={id} cs3Label=result cs3={result} cs4Label=httpStatusCode cs4={s} cs5Label=xForwardedFor cs5=198.51.100.{last}, 10.0.0.2",
        m = r.method,
        p = r.path,
        u = r.user,
        g = r.user_guid,
        id = r.request_id,
        s = r.status,
        last = rt_ms.rem_euclid(200) + 10,
    )
}

/// A UAA audit line in UAA's log layout.
fn uaa_line(ms: i64, event: &str, user: &str, guid: &str, remote: &str) -> String {
    let time = chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ");
    format!(
        "[{time}] uaa - 4711 [http-nio-8080-exec-3] .... INFO --- Audit: {event} ('{user}'): principal={guid}, origin=[remoteAddress={remote}, clientId=cf], identityZoneId=[uaa], authenticationType=[uaa]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::security::{Outcome, read_line};

    #[test]
    fn each_action_leaves_lines_the_parsers_read_as_that_action() {
        let log = SecurityLog::new(100);
        let app = "cdabc600-0b73-48e1-b7d2-26af2c63f933";
        write_action(&log, 1, app, 140, 1_700_000_000_000_000_000);
        let lines = log.drain();
        // seq 140: a sign-in (140 % 4), a failed one (140 % 7), a refusal (140 % 5), the action.
        assert_eq!(lines.len(), 4);
        let events: Vec<_> = lines
            .iter()
            .map(|l| read_line(l, "api/0", None).unwrap().unwrap())
            .collect();
        let names: Vec<&str> = events.iter().map(|e| e.event_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "uaa.UserAuthenticationSuccess",
                "uaa.UserAuthenticationFailure",
                "audit.app.update",
                "audit.app.start"
            ]
        );
        assert_eq!(events[2].outcome, Outcome::Denied);
        let start = &events[3];
        assert_eq!(start.outcome, Outcome::Success);
        assert_eq!(start.time_ns, 1_700_000_000_000_000_000);
        assert_eq!(start.target.as_ref().unwrap().guid.as_deref(), Some(app));
        assert_eq!(start.caller.name.as_deref(), Some(USERS[2].0));
        assert_eq!(start.http_status, Some(200));
        assert!(log.drain().is_empty());
    }

    #[test]
    fn the_log_keeps_the_newest_lines_when_full() {
        let log = SecurityLog::new(2);
        for l in ["a", "b", "c"] {
            log.push(l.to_string());
        }
        assert_eq!(log.drain(), ["b", "c"]);
    }
}

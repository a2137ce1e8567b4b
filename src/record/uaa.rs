//! UAA's audit log lines ("UAA audit requirements"): UAA's logging audit
//! service writes each audit event as one line,
//!
//! ```text
//! [prefix] Audit: TYPE ('DATA'): principal=PRINCIPAL, origin=[ORIGIN], identityZoneId=[ZONE][, authenticationType=[AUTH]]
//! ```
//!
//! where `TYPE` is the event (`UserAuthenticationSuccess`,
//! `ClientAuthenticationFailure`, ...), `DATA` what identifies it (a user
//! name, a client id), `PRINCIPAL` the authenticated principal's id, and
//! `ORIGIN` comma-separated `key=value` pairs (`remoteAddress`, `clientId`,
//! `sessionId`, ...). The prefix is whatever the log layout put before
//! (time, thread, level); the line is read from the `Audit: ` marker on.

/// One UAA audit event, read in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UaaAudit<'a> {
    pub event_type: &'a str,
    pub data: &'a str,
    pub principal: &'a str,
    /// The origin's `key=value` pairs, in the order written.
    pub origin: Vec<(&'a str, &'a str)>,
    pub zone: &'a str,
    pub authentication_type: Option<&'a str>,
}

/// Why a line is not a UAA audit event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UaaError {
    #[error("no `Audit: ` marker")]
    NoMarker,
    #[error("UAA audit line: expected {0} after the event type")]
    Expected(&'static str),
}

impl UaaAudit<'_> {
    /// The origin's value of `key`.
    pub fn origin(&self, key: &str) -> Option<&str> {
        self.origin.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// Reads the UAA audit event in `line`.
pub fn parse(line: &str) -> Result<UaaAudit<'_>, UaaError> {
    let at = marker(line).ok_or(UaaError::NoMarker)?;
    let rest = &line[at..];
    let type_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    if type_len == 0 {
        return Err(UaaError::Expected("an event type"));
    }
    let (event_type, rest) = rest.split_at(type_len);
    let rest = rest
        .strip_prefix(" ('")
        .ok_or(UaaError::Expected("` ('DATA')`"))?;
    let (data, rest) = rest
        .split_once("'): principal=")
        .ok_or(UaaError::Expected("`'): principal=`"))?;
    let (principal, rest) = rest
        .split_once(", origin=[")
        .ok_or(UaaError::Expected("`, origin=[`"))?;
    let (origin, rest) = rest
        .split_once("], identityZoneId=[")
        .ok_or(UaaError::Expected("`], identityZoneId=[`"))?;
    let (zone, rest) = rest
        .split_once(']')
        .ok_or(UaaError::Expected("`]` after the zone"))?;
    let authentication_type = rest
        .strip_prefix(", authenticationType=[")
        .and_then(|r| r.split_once(']'))
        .map(|(t, _)| t);
    Ok(UaaAudit {
        event_type,
        data,
        principal,
        origin: origin
            .split(", ")
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect(),
        zone,
        authentication_type,
    })
}

/// Where the event type starts: after `Audit: ` at the start of the line or
/// after a space.
fn marker(line: &str) -> Option<usize> {
    const M: &str = "Audit: ";
    let mut from = 0;
    while let Some(i) = line[from..].find(M) {
        let at = from + i;
        if at == 0 || line.as_bytes()[at - 1] == b' ' {
            return Some(at + M.len());
        }
        from = at + M.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_part_of_an_audit_line() {
        let line = "[2024-05-01T10:00:00.123Z] uaa - 4711 [http-nio-8080-exec-3] .... INFO --- Audit: \
                    UserAuthenticationFailure ('marissa'): principal=7f1e-guid, origin=[remoteAddress=203.0.113.9, \
                    clientId=cf, sessionId=<SESSION>], identityZoneId=[uaa], authenticationType=[uaa]";
        let a = parse(line).unwrap();
        assert_eq!(a.event_type, "UserAuthenticationFailure");
        assert_eq!(a.data, "marissa");
        assert_eq!(a.principal, "7f1e-guid");
        assert_eq!(
            a.origin,
            [
                ("remoteAddress", "203.0.113.9"),
                ("clientId", "cf"),
                ("sessionId", "<SESSION>")
            ]
        );
        assert_eq!(a.origin("clientId"), Some("cf"));
        assert_eq!(a.zone, "uaa");
        assert_eq!(a.authentication_type, Some("uaa"));
    }

    #[test]
    fn data_may_hold_quotes_and_authentication_type_is_optional() {
        let a = parse("Audit: ClientAuthenticationSuccess ('o'brien'): principal=cf, origin=[remoteAddress=10.0.0.1], identityZoneId=[uaa]").unwrap();
        assert_eq!((a.data, a.principal), ("o'brien", "cf"));
        assert_eq!(a.authentication_type, None);
    }

    #[test]
    fn malformed_lines_say_what_is_missing() {
        assert_eq!(parse("an ordinary log line"), Err(UaaError::NoMarker));
        assert_eq!(
            parse("xAudit: Foo ('a'): principal=p"),
            Err(UaaError::NoMarker)
        );
        assert_eq!(
            parse("Audit: ('a')"),
            Err(UaaError::Expected("an event type"))
        );
        assert_eq!(
            parse("Audit: Foo ('a'): principal=p, origin=[x=1"),
            Err(UaaError::Expected("`], identityZoneId=[`"))
        );
    }
}

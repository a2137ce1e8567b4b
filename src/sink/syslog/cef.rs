//! `--syslog-msg cef`: the record as an ArcSight Common Event Format line,
//! the format AlienVault USM, ArcSight and QRadar parse natively:
//!
//! ```text
//! CEF:0|Cloud Foundry|cf-audit-nozzle|<version>|<signature id>|<name>|<severity>|<extension>
//! ```
//!
//! Header fields escape `\` and `|` with a backslash; extension values
//! escape `\` and `=` and write line breaks as `\n` and `\r`, as the CEF
//! specification says. The extension uses CEF's standard keys where they
//! fit (`rt`, `cat` (the kind), `suser`, `suid`, `src`, `act`, `outcome`, `msg`, `externalId`,
//! `requestClientApplication`, `reason`, `dvchost`, `deviceProcessName`,
//! `deviceFacility`, `deviceExternalId`, `start`, `end`) and labelled custom
//! fields for the rest: `cs1` app guid, `cs2` app name, `cs3` space, `cs4`
//! org, `cs5` foundation, `cs6` boot, `cn1` seq, `cn2` counter delta, `cn3`
//! counter total. `docs/schemas.md` has the table.
//!
//! CEF is a projection, not the whole record: read from the record's native
//! JSON (parsed once per record; a CEF receiver takes far fewer records a
//! second than the JSON sinks, so the parse is not on a path we size for).

use serde_json::Value;

use crate::record::{EncodeContext, Record};

const VENDOR: &str = "Cloud Foundry";
const PRODUCT: &str = "cf-audit-nozzle";

/// Appends the CEF line of `record` to `out`.
pub(super) fn write(record: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) {
    let n = Value::Object(crate::record::schema::native_map(record, ctx));
    let s = |k: &str| n.get(k).and_then(Value::as_str);
    let kind = s("kind").unwrap_or("record");
    let declaration = n.get("last_seq").is_some();
    let (signature, name, severity): (String, String, u8) = match kind {
        _ if declaration => (
            "declaration".into(),
            format!("last number of {kind} records"),
            0,
        ),
        "api" => {
            let event = s("eventName").unwrap_or("unknown").to_string();
            let severity = match s("outcome") {
                Some("denied") => 7,
                Some("failure") => 5,
                _ => 3,
            };
            let name = s("message")
                .map(str::to_string)
                .unwrap_or_else(|| event.clone());
            (event, name, severity)
        }
        "app_log" => {
            let severity = if s("log_type") == Some("ERR") { 3 } else { 1 };
            let name = format!("{} log", s("source_type").unwrap_or("app"));
            ("app_log".into(), name, severity)
        }
        "metric" => {
            let ty = s("metric_type").unwrap_or("metric");
            let name = s("name").unwrap_or(ty).to_string();
            (format!("metric:{ty}"), name, 0)
        }
        _ => {
            let alert = n.pointer("/tags/nozzle_alert").is_some();
            let name = s("title").unwrap_or("event").to_string();
            ("event".into(), name, if alert { 8 } else { 3 })
        }
    };
    out.extend_from_slice(b"CEF:0|");
    for field in [
        VENDOR,
        PRODUCT,
        env!("CARGO_PKG_VERSION"),
        &signature,
        &name,
        &severity.to_string(),
    ] {
        header(out, field);
        out.push(b'|');
    }
    // A space before the first pair: the CEF specification allows it, and
    // liblognorm (rsyslog's mmnormalize, in front of many SIEMs) reads the
    // extension from the character after the one following the last `|`.
    out.push(b' ');
    let mut ext = Extension { out, first: true };
    if let Some(t) = s("time").and_then(crate::record::schema::ocsf::rfc3339_millis) {
        ext.put("rt", &t.to_string());
    }
    ext.put("cat", kind);
    if declaration {
        ext.labelled("cs5", "foundation", s("foundation"));
        ext.labelled("cs6", "boot", s("boot"));
        let last = n
            .get("last_seq")
            .and_then(Value::as_u64)
            .map(|v| v.to_string());
        ext.labelled("cn1", "lastSeq", last.as_deref());
        return;
    }
    ext.put_opt("dvchost", Some(&record.host()));
    ext.put_opt("deviceProcessName", s("origin"));
    ext.put_opt("deviceFacility", s("source_type"));
    ext.put_opt("deviceExternalId", s("source_id"));
    if kind == "api" {
        ext.put_opt("act", s("eventName"));
        ext.put_opt("externalId", s("eventID"));
        ext.put_opt(
            "suser",
            n.pointer("/userIdentity/name").and_then(Value::as_str),
        );
        ext.put_opt(
            "suid",
            n.pointer("/userIdentity/guid").and_then(Value::as_str),
        );
        ext.put_opt("src", s("sourceIPAddress"));
        ext.put_opt("requestClientApplication", s("userAgent"));
        ext.put_opt("outcome", s("outcome"));
        ext.put_opt("reason", s("errorMessage"));
    }
    let place = |p: &str, m: &str| n.pointer(&format!("/{p}/{m}")).and_then(Value::as_str);
    ext.labelled("cs1", "appGuid", place("app", "guid"));
    ext.labelled("cs2", "appName", place("app", "name"));
    ext.labelled(
        "cs3",
        "space",
        place("space", "name").or(place("space", "guid")),
    );
    ext.labelled("cs4", "org", place("org", "name").or(place("org", "guid")));
    ext.labelled("cs5", "foundation", s("foundation"));
    ext.labelled("cs6", "boot", s("boot"));
    let seq = n.get("seq").and_then(Value::as_u64).map(|v| v.to_string());
    ext.labelled("cn1", "seq", seq.as_deref());
    match kind {
        "metric" => {
            let num = |k: &str| n.get(k).filter(|v| v.is_number()).map(Value::to_string);
            ext.labelled("cn2", "delta", num("delta").as_deref());
            ext.labelled("cn3", "total", num("total").as_deref());
            let ms = |k: &str| {
                n.get(k)
                    .and_then(Value::as_i64)
                    .map(|v| (v / 1_000_000).to_string())
            };
            ext.put_opt("start", ms("start_ns").as_deref());
            ext.put_opt("end", ms("stop_ns").as_deref());
            if let Some(m) = n.get("metrics") {
                ext.put("msg", &m.to_string());
            }
        }
        "event" => ext.put_opt("msg", s("body")),
        _ => ext.put_opt("msg", s("message").or(s("message_base64"))),
    }
}

/// A header field with `\` and `|` escaped (line breaks, which a header
/// cannot hold, become spaces).
fn header(out: &mut Vec<u8>, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.extend_from_slice(b"\\\\"),
            '|' => out.extend_from_slice(b"\\|"),
            '\r' | '\n' => out.push(b' '),
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

/// The `key=value` pairs after the header, space separated.
struct Extension<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Extension<'_> {
    fn put(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push(b' ');
        }
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'=');
        for c in value.chars() {
            match c {
                '\\' => self.out.extend_from_slice(b"\\\\"),
                '=' => self.out.extend_from_slice(b"\\="),
                '\n' => self.out.extend_from_slice(b"\\n"),
                '\r' => self.out.extend_from_slice(b"\\r"),
                c => {
                    let mut b = [0u8; 4];
                    self.out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
    }

    fn put_opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.put(key, v);
        }
    }

    /// A custom field and its label (`cs1Label=appGuid cs1=...`).
    fn labelled(&mut self, key: &str, label: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.put(&format!("{key}Label"), label);
            self.put(key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_the_cef_specification_says() {
        let mut out = Vec::new();
        header(&mut out, r"a|b\c");
        assert_eq!(out, br"a\|b\\c");
        let mut out = Vec::new();
        let mut ext = Extension {
            out: &mut out,
            first: true,
        };
        ext.put("msg", "x=1\\2\nthree\r|");
        ext.put("act", "a");
        assert_eq!(out, br"msg=x\=1\\2\nthree\r| act=a");
    }
}

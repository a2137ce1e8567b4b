//! ArcSight's Common Event Format (CEF), as Cloud Controller writes its
//! security events (`cc.security_event_logging.enabled`): a header of seven
//! `|`-separated fields after `CEF:`, then the extension, `key=value` pairs
//! separated by spaces.
//!
//! Escaping, from the CEF specification:
//! - header fields: `\|` is a pipe and `\\` a backslash; any other
//!   backslash is kept as written;
//! - extension values: `\=` is an equals sign, `\\` a backslash, `\n` and
//!   `\r` a line feed and a carriage return (`\|`, which needs no escape
//!   there, is read as a pipe too); values may hold spaces: a value ends
//!   at the space before the next key, which is a run of letters, digits,
//!   `_`, `.`, `[` or `]` followed by an unescaped `=`. An unescaped `=`
//!   not preceded by such a key is part of the value.
//!
//! The parser borrows from the line and allocates only for values that
//! carry escapes.

use std::borrow::Cow;

/// One CEF event, read in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cef<'a> {
    pub version: Cow<'a, str>,
    pub vendor: Cow<'a, str>,
    pub product: Cow<'a, str>,
    pub device_version: Cow<'a, str>,
    pub signature_id: Cow<'a, str>,
    pub name: Cow<'a, str>,
    pub severity: Cow<'a, str>,
    /// The extension's pairs, in the order written.
    pub extension: Vec<(&'a str, Cow<'a, str>)>,
}

/// Why a text is not a CEF event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CefError {
    #[error("no `CEF:` prefix")]
    NoPrefix,
    #[error("CEF header has {0} of its 7 `|`-separated fields")]
    ShortHeader(usize),
    #[error("CEF extension: {0:?} is not a key=value pair")]
    BadPair(String),
}

impl<'a> Cef<'a> {
    /// The first value of `key` in the extension.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extension
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The value of the custom string (`cs1`..`cs6`) whose label is
    /// `label`, else the value of `fallback` (the slot the label usually has).
    pub fn labelled(&self, label: &str, fallback: &str) -> Option<&str> {
        for n in 1..=6 {
            let label_key = [
                "cs1Label", "cs2Label", "cs3Label", "cs4Label", "cs5Label", "cs6Label",
            ][n - 1];
            if self.get(label_key) == Some(label) {
                return self.get(&label_key[..3]);
            }
        }
        self.get(fallback)
    }
}

/// Reads the CEF event in `text`, which may have a prefix (a syslog header
/// written as text) before `CEF:`.
pub fn parse(text: &str) -> Result<Cef<'_>, CefError> {
    parse_in(text)
}

fn parse_in<'a>(text: &'a str) -> Result<Cef<'a>, CefError> {
    let start = text.find("CEF:").ok_or(CefError::NoPrefix)?;
    let rest = &text[start + 4..];
    let mut fields: [&str; 7] = [""; 7];
    let bytes = rest.as_bytes();
    let (mut n, mut from, mut i) = (0, 0, 0);
    while i < bytes.len() && n < 7 {
        match bytes[i] {
            b'\\' => i += 2,
            b'|' => {
                fields[n] = &rest[from..i];
                n += 1;
                i += 1;
                from = i;
            }
            _ => i += 1,
        }
    }
    if n < 7 {
        return Err(CefError::ShortHeader(n));
    }
    let h = |s: &'a str| unescape(s, false);
    Ok(Cef {
        version: h(fields[0]),
        vendor: h(fields[1]),
        product: h(fields[2]),
        device_version: h(fields[3]),
        signature_id: h(fields[4]),
        name: h(fields[5]),
        severity: h(fields[6]),
        extension: extension(&rest[from.min(rest.len())..])?,
    })
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'[' | b']')
}

/// The start of the key that ends just before `eq` (an unescaped `=`) when
/// it is one: key bytes back to the start of the text or a space.
fn key_start(s: &[u8], eq: usize) -> Option<usize> {
    let mut k = eq;
    while k > 0 && is_key_byte(s[k - 1]) {
        k -= 1;
    }
    (k < eq && (k == 0 || s[k - 1] == b' ')).then_some(k)
}

/// The extension's `key=value` pairs.
fn extension(text: &str) -> Result<Vec<(&str, Cow<'_, str>)>, CefError> {
    let s = text.as_bytes();
    // (key start, '=' position) of every key, in order.
    let mut keys: Vec<(usize, usize)> = Vec::with_capacity(16);
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'=' => {
                if let Some(k) = key_start(s, i) {
                    keys.push((k, i));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    let leading = text[..keys.first().map_or(text.len(), |k| k.0)].trim();
    if !leading.is_empty() {
        return Err(CefError::BadPair(leading.to_string()));
    }
    let mut out = Vec::with_capacity(keys.len());
    for (n, &(k, eq)) in keys.iter().enumerate() {
        let end = keys.get(n + 1).map_or(s.len(), |next| next.0);
        let value = text[eq + 1..end].trim_end_matches([' ', '\r', '\n', '\t']);
        out.push((&text[k..eq], unescape(value, true)));
    }
    Ok(out)
}

/// `text` with its escapes read: `\|` and `\\` everywhere, and in extension
/// values also `\=`, `\n` and `\r`. Any other backslash stays.
fn unescape(text: &str, value: bool) -> Cow<'_, str> {
    if !text.contains('\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('|') => out.push('|'),
            Some('=') if value => out.push('='),
            Some('n') if value => out.push('\n'),
            Some('r') if value => out.push('\r'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs<'a>(c: &'a Cef<'a>) -> Vec<(&'a str, &'a str)> {
        c.extension.iter().map(|(k, v)| (*k, v.as_ref())).collect()
    }

    #[test]
    fn header_fields_with_escaped_pipes_and_backslashes() {
        let c =
            parse(r"CEF:0|cloud_foundry|cloud_controller_ng|3.1\|x|GET /v3/apps|a\\b|0|").unwrap();
        assert_eq!(c.version, "0");
        assert_eq!(c.vendor, "cloud_foundry");
        assert_eq!(c.product, "cloud_controller_ng");
        assert_eq!(c.device_version, "3.1|x");
        assert_eq!(c.signature_id, "GET /v3/apps");
        assert_eq!(c.name, r"a\b");
        assert_eq!(c.severity, "0");
        assert!(c.extension.is_empty());
    }

    #[test]
    fn extension_values_keep_spaces_and_read_every_escape() {
        let c = parse(
            r"<14>1 host CEF:0|v|p|1|s|n|5|msg=a b\=c  d\\e\nf\rg cs1Label=x y=z=w request=/v3/apps?q\=1 last=t ",
        )
        .unwrap();
        assert_eq!(
            pairs(&c),
            [
                ("msg", "a b=c  d\\e\nf\rg"),
                ("cs1Label", "x"),
                ("y", "z=w"),
                ("request", "/v3/apps?q=1"),
                ("last", "t"),
            ]
        );
        assert_eq!(c.labelled("x", "cs2"), None, "cs1 itself is absent");
        // An unknown escape in a value stays as written.
        let c = parse(r"CEF:0|v|p|1|s|n|5|a=x\ty").unwrap();
        assert_eq!(pairs(&c), [("a", r"x\ty")]);
    }

    #[test]
    fn custom_strings_are_found_by_label() {
        let c = parse("CEF:0|v|p|1|s|n|5|cs3Label=vcapRequestId cs3=r-1 cs2=other").unwrap();
        assert_eq!(c.labelled("vcapRequestId", "cs2"), Some("r-1"));
        assert_eq!(c.labelled("xForwardedFor", "cs2"), Some("other"));
    }

    #[test]
    fn malformed_lines_say_what_is_wrong() {
        assert_eq!(parse("hello"), Err(CefError::NoPrefix));
        assert_eq!(parse("CEF:0|a|b|c"), Err(CefError::ShortHeader(3)));
        assert_eq!(parse(r"CEF:0|a|b|c|d|e\|"), Err(CefError::ShortHeader(5)));
        assert_eq!(
            parse("CEF:0|a|b|c|d|e|f|junk a=1"),
            Err(CefError::BadPair("junk".into()))
        );
        // A trailing lone backslash is kept.
        assert_eq!(
            pairs(&parse("CEF:0|a|b|c|d|e|f|a=1\\").unwrap()),
            [("a", "1\\")]
        );
    }
}

//! URLs as they may be shown: in errors, log lines, `/health`, the summary
//! and `config check`. An operator may put credentials in a URL
//! (`https://user:password@host`, `?token=...`); what is shown keeps the
//! scheme, host, port and path and replaces the user information and every
//! query value with [`HIDDEN`]. Every place that prints a URL goes through
//! [`url`] (one URL) or [`urls_in`] (free text, such as an error chain that
//! a library wrote a URL into).

/// What hidden parts of a URL are shown as.
pub const HIDDEN: &str = "***";

/// `text` (a URL, or what was given as one) with its user information and
/// query values hidden: `https://***@host/path?token=***`.
pub fn url(text: &str) -> String {
    match reqwest::Url::parse(text) {
        // Nothing to hide: the text as given (no trailing `/` added).
        Ok(parsed)
            if parsed.has_host()
                && parsed.username().is_empty()
                && parsed.password().is_none()
                && parsed.query().is_none()
                && parsed.fragment().is_none() =>
        {
            text.to_string()
        }
        Ok(parsed) if parsed.has_host() => parsed_url(&parsed),
        _ => by_text(text),
    }
}

/// A parsed URL, shown as [`url`] does.
pub fn parsed_url(parsed: &reqwest::Url) -> String {
    let mut u = parsed.clone();
    if !u.username().is_empty() || u.password().is_some() {
        let _ = u.set_password(None);
        let _ = u.set_username(HIDDEN);
    }
    if let Some(query) = u.query().map(hide_query_values) {
        u.set_query(Some(&query));
    }
    if u.fragment().is_some_and(|f| !f.is_empty()) {
        u.set_fragment(Some(HIDDEN));
    }
    u.to_string()
}

/// Every URL in `text` (`scheme://...`) shown as [`url`] does; the rest
/// of the text as it is.
pub fn urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    while let Some(found) = text[rest..].find("://") {
        let sep = rest + found;
        let start = text[rest..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(rest, |i| rest + i + 1);
        let len = text[start..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')'))
            .unwrap_or(text.len() - start);
        out.push_str(&text[rest..start]);
        // A URL at the end of a sentence keeps its full stop or comma outside.
        let candidate = &text[start..start + len];
        let trimmed = candidate.trim_end_matches(['.', ',', ';', ':']);
        if start == sep {
            // "://" without a scheme: not a URL.
            out.push_str(candidate);
        } else {
            out.push_str(&url(trimmed));
            out.push_str(&candidate[trimmed.len()..]);
        }
        rest = start + len.max(3);
    }
    out.push_str(&text[rest..]);
    out
}

/// `a=1&b&c=2` → `a=***&b&c=***`.
fn hide_query_values(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) => format!("{key}={HIDDEN}"),
            None => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// For what does not parse as a URL: user information (before an `@` in
/// the authority) and query values hidden by position.
fn by_text(text: &str) -> String {
    let (scheme, rest) = match text.find("://") {
        Some(i) => text.split_at(i + 3),
        None => ("", text),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("{HIDDEN}{}", &authority[at..]),
        None => authority.to_string(),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => {
            let query = query.split('#').next().unwrap_or_default();
            (path, Some(hide_query_values(query)))
        }
        None => (tail.split('#').next().unwrap_or_default(), None),
    };
    let mut out = format!("{scheme}{authority}{path}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(&q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_and_query_values_are_hidden() {
        assert_eq!(
            url("https://admin:pa55@siem.example.com:8088/services?token=t0k&x&y=2#frag"),
            "https://***@siem.example.com:8088/services?token=***&x&y=***#***"
        );
        assert_eq!(
            url("https://user@host/p"),
            "https://***@host/p",
            "a user name alone can be a token"
        );
        assert_eq!(url("https://api.example.com"), "https://api.example.com");
        assert_eq!(url("http://h:1/a/b"), "http://h:1/a/b");
    }

    #[test]
    fn what_does_not_parse_is_hidden_by_position() {
        assert_eq!(
            url("https://us er:pw@ho st/x?k=v"),
            "https://***@ho st/x?k=***"
        );
        assert_eq!(url("user:pw@host"), "***@host");
        assert_eq!(url("host:8080"), "host:8080");
    }

    #[test]
    fn urls_in_text_are_hidden_and_the_text_kept() {
        assert_eq!(
            urls_in(
                "error sending request for url (https://u:p@h/x?token=s): connection refused. See HTTPS://a:b@c."
            ),
            "error sending request for url (https://***@h/x?token=***): connection refused. See https://***@c/."
        );
        assert_eq!(urls_in("no url here"), "no url here");
        assert_eq!(
            urls_in("ftp://u:p@siem?token=t,s3://k@b/x s3://k@b/y ://x"),
            "ftp://***@siem/?token=*** s3://***@b/y ://x"
        );
    }
}

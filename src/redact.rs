//! Secrets and URLs as they may be shown: in errors, log lines, `/health`,
//! the summary and `config check`. A [`Secret`] is never shown. An operator
//! may put credentials in a URL (`https://user:password@host`,
//! `?token=...`); what is shown keeps the scheme, host, port and path and
//! replaces the user information and every query value with [`HIDDEN`].
//! Every place that prints a URL goes through [`url`] (one URL), [`urls_in`]
//! (free text, such as an error chain that a library wrote a URL into) or
//! holds it as a [`SecretUrl`], which shows itself that way.

/// What hidden parts of a URL are shown as.
pub const HIDDEN: &str = "***";

/// What a [`Secret`] (and a secret option's value in `config check`) is
/// shown as.
pub(crate) const MASK: &str = "********";

/// A value that must never be shown: a client secret, a token, a password,
/// a header value, private-key material. `Debug` prints `Secret(********)`
/// and `Display` prints `********`, so a struct holding one can derive
/// `Debug` and still never put the value in a log line; the value is used
/// through [`Secret::expose`], a name that stands out where it is read.
/// There is no `Serialize`: nothing writes a secret out by accident.
///
/// As a clap option's type (`Option<Secret>`), the value is taken as given
/// (`From<String>`, no parse error that could echo it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret<T = String>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
}

impl Secret {
    /// The value itself, for the one place that sends or checks it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Secret<Vec<u8>> {
    /// The bytes themselves (e.g. a private key's PEM), for the TLS setup.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({MASK})")
    }
}

impl<T> std::fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(MASK)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

impl From<Vec<u8>> for Secret<Vec<u8>> {
    fn from(value: Vec<u8>) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(s.into())
    }
}

/// A URL that may carry credentials: a sink's endpoint, a webhook, an API
/// root. `Debug` (as a quoted string) and `Display` show it as [`url`] and
/// [`parsed_url`] do, so a configuration struct holding one can derive
/// `Debug`; the URL itself is read through [`SecretUrl::expose`] where it
/// is connected to. It holds the text as given (`SecretUrl<String>`) or a
/// parsed URL (`SecretUrl<reqwest::Url>`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl<U = String>(U);

impl<U> SecretUrl<U> {
    pub fn new(url: U) -> Self {
        Self(url)
    }
}

impl SecretUrl {
    /// The URL as given, credentials and all, for the one place that uses it.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl SecretUrl<reqwest::Url> {
    /// The URL, credentials and all, for the one place that uses it.
    pub fn expose(&self) -> &reqwest::Url {
        &self.0
    }
}

/// What a [`SecretUrl`] can hold, and how it is shown.
pub(crate) trait ShownUrl {
    /// The URL with its user information and query values hidden.
    fn shown(&self) -> String;
}

impl ShownUrl for String {
    fn shown(&self) -> String {
        url(self)
    }
}

impl ShownUrl for reqwest::Url {
    fn shown(&self) -> String {
        parsed_url(self)
    }
}

impl<U: ShownUrl> std::fmt::Debug for SecretUrl<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0.shown(), f)
    }
}

impl<U: ShownUrl> std::fmt::Display for SecretUrl<U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.shown())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self(url.to_string())
    }
}

impl From<reqwest::Url> for SecretUrl<reqwest::Url> {
    fn from(url: reqwest::Url) -> Self {
        Self(url)
    }
}

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
pub(crate) fn parsed_url(parsed: &reqwest::Url) -> String {
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
pub(crate) fn urls_in(text: &str) -> String {
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

    #[test]
    fn a_secret_shows_only_its_mask_and_is_used_through_expose() {
        let s = Secret::from("hunter2-SECRET");
        assert_eq!(format!("{s:?}"), "Secret(********)");
        assert_eq!(format!("{s:#?}"), "Secret(********)");
        assert_eq!(format!("{s}"), "********");
        assert_eq!(s.expose(), "hunter2-SECRET");
        assert_eq!("hunter2-SECRET".parse::<Secret>().unwrap(), s);
        let key = Secret::from(b"-----BEGIN PRIVATE KEY-----".to_vec());
        assert_eq!(format!("{key:?} {key}"), "Secret(********) ********");
        assert_eq!(key.expose(), b"-----BEGIN PRIVATE KEY-----");
    }

    /// Every configuration struct that holds a secret, built the way `run`
    /// builds it where it can be (from parsed options), in `Debug`: no
    /// secret's text, no password of a URL, and each secret as the mask.
    #[test]
    fn no_configuration_struct_shows_a_secret_in_debug() {
        use crate::config::{Cli, Command};
        use clap::Parser;
        const SECRETS: [&str; 9] = [
            "uaa-S1",
            "hec-S2",
            "hdr-S3",
            "s3key-S4",
            "s3tok-S5",
            "pemkey-S6",
            "metrics-S7",
            "urlpw-S8",
            "vcap-S9",
        ];
        let cli = Cli::try_parse_from([
            "cf-audit-nozzle",
            "run",
            "--source",
            "gateway",
            "--cf-api",
            "https://admin:urlpw-S8@api.example.com",
            "--uaa-client-id",
            "nozzle",
            "--uaa-client-secret",
            "uaa-S1",
            "--http-url",
            "https://siem.example.com",
            "--hec-token",
            "hec-S2",
            "--http-header",
            "Authorization: Bearer hdr-S3",
            "--s3-bucket",
            "b",
            "--s3-access-key-id",
            "AKID",
            "--s3-secret-access-key",
            "s3key-S4",
            "--s3-session-token",
            "s3tok-S5",
            "--signing-key",
            "-----BEGIN PRIVATE KEY-----\npemkey-S6\n-----END PRIVATE KEY-----",
            "--metrics-auth",
            "prom:metrics-S7",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        let mut errors = Vec::new();
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        let uaa = run
            .cf
            .uaa_config(&mut errors, &url("https://u:urlpw-S8@uaa.example.com"))
            .unwrap();
        let streams = run.input.streams(&mut errors, "shard");
        let gateway = run.input.gateway(&mut errors, &run.cf, streams).unwrap();
        let s3 = run
            .output
            .s3
            .s3_config_with(None, None, &mut errors)
            .unwrap();
        let vcap = crate::config::vcap_s3(
            r#"{"s3":[{"credentials":{"bucket":"b","access_key_id":"AK","secret_access_key":"vcap-S9","session_token":"vcap-S9"}}]}"#,
        )
        .unwrap();
        let (telemetry, _) = run.telemetry.config(None, &mut errors);
        assert_eq!(errors, Vec::<String>::new());
        let cc = crate::source::cloud_controller::CcAccess {
            cf_api: url("https://api.example.com"),
            uaa: None,
            client_id: "nozzle".into(),
            client_secret: "uaa-S1".into(),
            http: gateway.http.client().unwrap(),
            max_body: 1,
        };
        let http = crate::sink::http::HttpSinkConfig {
            url: "https://u:urlpw-S8@siem.example.com/?token=urlpw-S8".into(),
            format: crate::sink::http::HttpFormat::Hec,
            hec_token: Some("hec-S2".into()),
            hec_index: Default::default(),
            headers: vec![("Authorization".into(), "Bearer hdr-S3".into())],
            gzip: true,
            tls: crate::tls::rustls_client_config("t", None, None)
                .unwrap()
                .into(),
            tls_verify: true,
            timeout: std::time::Duration::from_secs(1),
            concurrency: 1,
            max_request_bytes: 1,
            acks: None,
        };
        let syslog = crate::sink::syslog::SyslogConfig {
            addr: "siem.example.com:6514".into(),
            transport: crate::sink::syslog::Transport::Tls,
            framing: crate::sink::syslog::Framing::OctetCounting,
            server_name: "siem.example.com".into(),
            tls: Some(
                crate::tls::rustls_client_config("t", None, None)
                    .unwrap()
                    .into(),
            ),
            format: Default::default(),
            write_timeout: std::time::Duration::from_secs(1),
        };
        let object = object_sink_config(
            crate::sink::archive::Target::S3(s3.clone()),
            "https://hook:urlpw-S8@hook.example.com/x?token=urlpw-S8",
        );
        let client_tls = crate::tls::ClientTls {
            ca_pem: Default::default(),
            cert_pem: Default::default(),
            key_pem: b"pemkey-S6".to_vec().into(),
            ca_origin: "ca.pem".into(),
        };
        // (struct, its Debug, secrets masked in it, URL passwords hidden
        // too: the options keep URLs as given, the validated structs hide
        // their user information).
        let cases: Vec<(&str, String, usize, bool)> = vec![
            ("RunArgs", format!("{run:?}"), 7, false),
            ("UaaConfig", format!("{uaa:?}"), 1, true),
            ("GatewayConfig", format!("{gateway:?}"), 1, true),
            ("CcAccess", format!("{cc:?}"), 1, true),
            ("HttpSinkConfig", format!("{http:?}"), 2, true),
            ("SyslogConfig", format!("{syslog:?}"), 0, true),
            ("ObjectSinkConfig", format!("{object:?}"), 2, true),
            ("S3Config", format!("{s3:?}"), 2, true),
            ("VcapS3", format!("{vcap:?}"), 2, true),
            ("TelemetryConfig", format!("{telemetry:?}"), 1, true),
            ("ClientTls", format!("{client_tls:?}"), 1, true),
        ];
        for (name, text, masked, urls_hidden) in cases {
            for secret in SECRETS {
                if secret == "urlpw-S8" && !urls_hidden {
                    continue;
                }
                assert!(!text.contains(secret), "{name} shows {secret}: {text}");
            }
            assert_eq!(
                text.matches("Secret(********)").count(),
                masked,
                "{name}: {text}"
            );
        }
    }

    fn object_sink_config(
        target: crate::sink::archive::Target,
        notify_url: &str,
    ) -> crate::sink::archive::ObjectSinkConfig {
        crate::sink::archive::ObjectSinkConfig {
            target,
            roll: crate::sink::archive::RollConfig {
                roll_interval: std::time::Duration::from_secs(60),
                roll_bytes: 1,
                instance_index: 0,
                gzip_level: 6,
            },
            digest: None,
            notify_url: Some(notify_url.into()),
        }
    }

    #[test]
    fn an_object_sinks_webhook_shows_no_credentials() {
        let cfg = object_sink_config(
            crate::sink::archive::Target::Dir("/var/archive".into()),
            "https://user:pw@hook.example/x?token=s3cr3t",
        );
        let text = format!("{cfg:?}");
        assert!(!text.contains(":pw@") && !text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains(r#"notify_url: Some("https://***@hook.example/x?token=***")"#),
            "{text}"
        );
    }

    #[test]
    fn a_secret_url_shows_itself_redacted_and_is_used_through_expose() {
        let text = SecretUrl::from("https://user:pw@hook.example/x?token=s3cr3t");
        assert_eq!(format!("{text}"), "https://***@hook.example/x?token=***");
        assert_eq!(
            format!("{text:?}"),
            r#""https://***@hook.example/x?token=***""#
        );
        assert_eq!(text.expose(), "https://user:pw@hook.example/x?token=s3cr3t");
        let parsed =
            SecretUrl::new(reqwest::Url::parse("https://u:p@uaa.example.com/t?a=1").unwrap());
        assert_eq!(format!("{parsed}"), "https://***@uaa.example.com/t?a=***");
        assert_eq!(
            format!("{parsed:?}"),
            r#""https://***@uaa.example.com/t?a=***""#
        );
        assert_eq!(parsed.expose().password(), Some("p"));
    }
}

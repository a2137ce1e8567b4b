//! The network sinks' options (syslog, HTTP) and how they become sink
//! configurations; part of [`crate::config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::sink_files::TlsFiles;
use super::valid_host_port;
use crate::redact::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum HttpFormatArg {
    /// Splunk HTTP Event Collector events.
    Hec,
    /// One record JSON per line.
    Json,
    /// One JSON array of records per request.
    JsonArray,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SyslogTransportArg {
    Tcp,
    Tls,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SyslogFramingArg {
    /// Octet counting (RFC 6587; required by RFC 5425 for TLS).
    Octet,
    /// One message per line (line breaks inside a message become spaces).
    Newline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SyslogMsgArg {
    /// The record's JSON.
    Json,
    /// Log lines as they are (other kinds as JSON).
    Message,
    /// Every record as an ArcSight CEF line (AlienVault USM, ArcSight, QRadar); docs/schemas.md.
    Cef,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// SIEM URL; for hec a base URL such as https://splunk:8088 gets /services/collector/event.
    #[arg(long, env = "HTTP_URL")]
    pub(crate) http_url: Option<String>,
    /// Body format of the HTTP sink.
    #[arg(long, env = "HTTP_FORMAT", value_enum, default_value_t = HttpFormatArg::Hec)]
    pub(crate) http_format: HttpFormatArg,
    /// Splunk HEC token (sent as "Authorization: Splunk <token>").
    #[arg(long, env = "HEC_TOKEN", hide_env_values = true)]
    pub hec_token: Option<Secret>,
    /// Splunk index for every event (must be allowed for the token); the token's default without it.
    #[arg(long, env = "HEC_INDEX")]
    pub hec_index: Option<String>,
    /// Splunk index for API invocations (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_API")]
    pub(crate) hec_index_api: Option<String>,
    /// Splunk index for app logs (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_APP_LOG")]
    pub(crate) hec_index_app_log: Option<String>,
    /// Splunk index for metrics (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_METRIC")]
    pub(crate) hec_index_metric: Option<String>,
    /// Splunk index for events (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_EVENT")]
    pub(crate) hec_index_event: Option<String>,
    /// Envelope tag whose value, when a record has it, names the record's index (e.g. an app label).
    #[arg(long, env = "HEC_INDEX_TAG")]
    pub(crate) hec_index_tag: Option<String>,
    /// CA bundle (PEM) the SIEM's certificate must chain to; without it, the Mozilla roots.
    #[arg(long, env = "HTTP_CA")]
    pub(crate) http_ca: Option<PathBuf>,
    /// Client certificate (PEM) for SIEMs that require one.
    #[arg(long, env = "HTTP_CERT")]
    pub(crate) http_cert: Option<PathBuf>,
    /// Client key (PEM) for --http-cert.
    #[arg(long, env = "HTTP_KEY")]
    pub(crate) http_key: Option<PathBuf>,
    /// Verify the SIEM's certificate; false trusts anyone (a warning says so at start).
    #[arg(long, env = "HTTP_TLS_VERIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) http_tls_verify: bool,
    /// Extra request header, 'Name: value' (repeatable), e.g. 'Authorization: Bearer ...'.
    #[arg(long, env = "HTTP_HEADER", hide_env_values = true)]
    pub(crate) http_header: Vec<Secret>,
    /// gzip request bodies.
    #[arg(long, env = "HTTP_GZIP", default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) http_gzip: bool,
    /// Seconds to wait for the SIEM's reply before retrying.
    #[arg(long, env = "HTTP_TIMEOUT", default_value_t = 30)]
    pub(crate) http_timeout: u64,
    /// Follow Splunk HEC indexer acknowledgement: a record counts as delivered once Splunk says it is indexed.
    #[arg(long, env = "HEC_ACKS", default_value_t = false, action = clap::ArgAction::Set)]
    pub(crate) hec_acks: bool,
    /// Seconds between HEC acknowledgement queries.
    #[arg(long, env = "HEC_ACK_INTERVAL", default_value_t = 10)]
    pub(crate) hec_ack_interval: u64,
    /// Seconds after which a request Splunk has not acknowledged is sent again.
    #[arg(long, env = "HEC_ACK_TIMEOUT", default_value_t = 300)]
    pub(crate) hec_ack_timeout: u64,
    /// Requests to the SIEM in flight at once.
    #[arg(long, env = "HTTP_CONCURRENCY", default_value_t = 4)]
    pub(crate) http_concurrency: usize,
    /// Uncompressed size of one request; a batch is split into requests of about this size.
    #[arg(long, env = "HTTP_MAX_REQUEST_BYTES", default_value_t = 1_000_000)]
    pub(crate) http_max_request_bytes: usize,
}

impl HttpArgs {
    /// `--http-header` values as (name, value) pairs; a value is never shown in
    /// an error (it may be a credential).
    fn headers(&self, errors: &mut Vec<String>) -> Vec<(String, Secret)> {
        let valid_value = |v: &str| reqwest::header::HeaderValue::from_str(v).is_ok();
        let mut headers = Vec::new();
        for h in &self.http_header {
            match h.expose().split_once(':') {
                Some((name, value))
                    if reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                        && valid_value(value.trim()) =>
                {
                    headers.push((name.trim().to_string(), value.trim().into()))
                }
                // The value may be a credential: name only the header's
                // name, and only when there is one (without a colon, the
                // whole text may be the credential).
                Some((name, _))
                    if reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                        .is_ok() =>
                {
                    errors.push(format!(
                        "--http-header (HTTP_HEADER) {:?}: the value holds characters an HTTP header cannot carry (value not shown)",
                        name.trim()
                    ))
                }
                _ => errors.push(
                    "--http-header (HTTP_HEADER) must look like 'Name: value' (not shown: it may hold a credential)"
                        .to_string(),
                ),
            }
        }
        headers
    }

    /// The files the HTTP sink reads at build.
    pub(super) fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            what: "--http-ca/--http-cert/--http-key",
            ca: ("--http-ca (HTTP_CA)", self.http_ca.clone()),
            cert: ("--http-cert (HTTP_CERT)", self.http_cert.clone()),
            key: ("--http-key (HTTP_KEY)", self.http_key.clone()),
        }
    }

    /// The HTTP sink these options describe (its TLS files not read: see
    /// [`tls_files`](Self::tls_files)), plus any problems in them.
    pub(super) fn config(
        &self,
        errors: &mut Vec<String>,
    ) -> Option<crate::sink::http::HttpSinkConfig> {
        use crate::sink::http::{HttpFormat, HttpSinkConfig};
        let before = errors.len();
        let url = match &self.http_url {
            None => {
                errors.push("--http-url (HTTP_URL) is required with --sink http".into());
                String::new()
            }
            Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) || u.len() < 10 => {
                errors.push(format!(
                    "--http-url (HTTP_URL) must be an http:// or https:// URL, not {:?}",
                    crate::redact::url(u)
                ));
                String::new()
            }
            Some(u) => u.clone(),
        };
        let format = match self.http_format {
            HttpFormatArg::Hec => HttpFormat::Hec,
            HttpFormatArg::Json => HttpFormat::Json,
            HttpFormatArg::JsonArray => HttpFormat::JsonArray,
        };
        if format == HttpFormat::Hec && self.hec_token.as_ref().is_none_or(Secret::is_empty) {
            errors.push("--hec-token (HEC_TOKEN) is required with --http-format hec".into());
        }
        let valid_value = |v: &str| reqwest::header::HeaderValue::from_str(v).is_ok();
        if let Some(token) = &self.hec_token
            && !valid_value(token.expose())
        {
            // Never echo the token.
            errors.push(
                "--hec-token (HEC_TOKEN) holds characters an HTTP header cannot carry (a newline?)"
                    .into(),
            );
        }
        for (value, flag) in [
            (self.http_timeout, "--http-timeout (HTTP_TIMEOUT)"),
            (
                self.hec_ack_interval,
                "--hec-ack-interval (HEC_ACK_INTERVAL)",
            ),
            (self.hec_ack_timeout, "--hec-ack-timeout (HEC_ACK_TIMEOUT)"),
        ] {
            if value == 0 {
                errors.push(format!("{flag} must be at least 1 second"));
            }
        }
        if self.http_concurrency == 0 {
            errors.push("--http-concurrency (HTTP_CONCURRENCY) must be at least 1".into());
        }
        let headers = self.headers(errors);
        if errors.len() > before {
            return None;
        }
        // The files are read at build; until then, no CA and no client
        // certificate.
        let tls = crate::tls::rustls_client_config(self.tls_files().what, None, None)
            .map_err(|e| errors.push(e.to_string()))
            .ok()?;
        Some(HttpSinkConfig {
            url: url.into(),
            format,
            hec_token: self.hec_token.clone(),
            hec_index: crate::sink::http::HecIndex {
                default: self.hec_index.clone(),
                per_kind: [
                    self.hec_index_api.clone(),
                    self.hec_index_app_log.clone(),
                    self.hec_index_metric.clone(),
                    self.hec_index_event.clone(),
                ],
                app_tag: self.hec_index_tag.clone(),
            },
            headers,
            gzip: self.http_gzip,
            tls: tls.into(),
            tls_verify: self.http_tls_verify,
            timeout: Duration::from_secs(self.http_timeout.max(1)),
            concurrency: self.http_concurrency,
            max_request_bytes: self.http_max_request_bytes,
            acks: (self.hec_acks && format == HttpFormat::Hec).then(|| {
                crate::sink::http::AckConfig {
                    interval: Duration::from_secs(self.hec_ack_interval.max(1)),
                    timeout: Duration::from_secs(self.hec_ack_timeout.max(1)),
                    max_pending: 10_000,
                }
            }),
        })
    }
}

#[derive(Debug, Args)]
pub struct SyslogArgs {
    /// Syslog receiver, host:port (6514 is RFC 5425's TLS port; AlienVault USM takes RFC 5424 over TLS on 6515).
    #[arg(long, env = "SYSLOG_ADDR")]
    pub(crate) syslog_addr: Option<String>,
    /// Syslog transport.
    #[arg(long, env = "SYSLOG_TRANSPORT", value_enum, default_value_t = SyslogTransportArg::Tls)]
    pub(crate) syslog_transport: SyslogTransportArg,
    /// CA bundle (PEM) the syslog receiver's certificate must chain to; without it, the Mozilla roots.
    #[arg(long, env = "SYSLOG_CA")]
    pub(crate) syslog_ca: Option<PathBuf>,
    /// Name the syslog receiver's certificate must carry; the host of --syslog-addr by default.
    #[arg(long, env = "SYSLOG_SERVER_NAME")]
    pub(crate) syslog_server_name: Option<String>,
    /// Client certificate (PEM) for receivers that require one.
    #[arg(long, env = "SYSLOG_CERT")]
    pub(crate) syslog_cert: Option<PathBuf>,
    /// Client key (PEM) for --syslog-cert.
    #[arg(long, env = "SYSLOG_KEY")]
    pub(crate) syslog_key: Option<PathBuf>,
    /// Syslog framing.
    #[arg(long, env = "SYSLOG_FRAMING", value_enum, default_value_t = SyslogFramingArg::Octet)]
    pub(crate) syslog_framing: SyslogFramingArg,
    /// Syslog facility: a name (kern, user, daemon, auth, local0 ... local7) or a number 0-23.
    #[arg(long, env = "SYSLOG_FACILITY", default_value = "local0")]
    pub(crate) syslog_facility: String,
    /// Severity of API invocations (emerg, alert, crit, err, warning, notice, info, debug).
    #[arg(long, env = "SYSLOG_SEVERITY_API", default_value = "notice")]
    pub(crate) syslog_severity_api: String,
    /// Severity of app log lines written to stdout.
    #[arg(long, env = "SYSLOG_SEVERITY_APP_LOG", default_value = "info")]
    pub(crate) syslog_severity_app_log: String,
    /// Severity of app log lines written to stderr.
    #[arg(
        long,
        env = "SYSLOG_SEVERITY_APP_LOG_STDERR",
        default_value = "warning"
    )]
    pub(crate) syslog_severity_app_log_stderr: String,
    /// Severity of metrics.
    #[arg(long, env = "SYSLOG_SEVERITY_METRIC", default_value = "info")]
    pub(crate) syslog_severity_metric: String,
    /// Severity of events.
    #[arg(long, env = "SYSLOG_SEVERITY_EVENT", default_value = "notice")]
    pub(crate) syslog_severity_event: String,
    /// What a syslog message carries after the structured data.
    #[arg(long, env = "SYSLOG_MSG", value_enum, default_value_t = SyslogMsgArg::Json)]
    pub(crate) syslog_msg: SyslogMsgArg,
    /// Longest syslog message in bytes; longer ones are cut with a "[truncated]" marker.
    #[arg(long, env = "SYSLOG_MAX_MESSAGE_BYTES", default_value_t = crate::sink::syslog::DEFAULT_MAX_MESSAGE_BYTES)]
    pub(crate) syslog_max_message_bytes: usize,
    /// Private enterprise number of the structured-data ID (tags@<number>); 32473 is the documentation number.
    #[arg(long, env = "SYSLOG_ENTERPRISE_NUMBER", default_value_t = crate::sink::syslog::DEFAULT_ENTERPRISE_NUMBER)]
    pub(crate) syslog_enterprise_number: u32,
    /// Seconds the syslog receiver may take no data (a write, the TLS handshake) before the connection is replaced and the batch retried.
    #[arg(long, env = "SYSLOG_WRITE_TIMEOUT", default_value_t = crate::sink::syslog::DEFAULT_WRITE_TIMEOUT.as_secs())]
    pub(crate) syslog_write_timeout: u64,
}

/// Syslog facility names (RFC 5424 §6.2.1).
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl SyslogArgs {
    /// The files the syslog sink reads at build (over TLS only).
    pub(super) fn tls_files(&self) -> Option<TlsFiles> {
        (self.syslog_transport == SyslogTransportArg::Tls).then(|| TlsFiles {
            what: "--syslog-ca/--syslog-cert/--syslog-key",
            ca: ("--syslog-ca (SYSLOG_CA)", self.syslog_ca.clone()),
            cert: ("--syslog-cert (SYSLOG_CERT)", self.syslog_cert.clone()),
            key: ("--syslog-key (SYSLOG_KEY)", self.syslog_key.clone()),
        })
    }

    /// Each kind's severity (`--syslog-severity-*`); a name that is not one
    /// is listed and stands as `info` meanwhile.
    fn severities(&self, errors: &mut Vec<String>) -> crate::sink::syslog::Severities {
        let mut severity = |flag: &str, env: &str, value: &str| {
            crate::sink::syslog::SEVERITIES
                .iter()
                .position(|s| *s == value)
                .map(|i| i as u8)
                .unwrap_or_else(|| {
                    errors.push(format!(
                        "--{flag} ({env}) must be one of emerg, alert, crit, err, warning, notice, info, debug, not {value:?}"
                    ));
                    6
                })
        };
        crate::sink::syslog::Severities {
            api: severity(
                "syslog-severity-api",
                "SYSLOG_SEVERITY_API",
                &self.syslog_severity_api,
            ),
            app_log: severity(
                "syslog-severity-app-log",
                "SYSLOG_SEVERITY_APP_LOG",
                &self.syslog_severity_app_log,
            ),
            app_log_stderr: severity(
                "syslog-severity-app-log-stderr",
                "SYSLOG_SEVERITY_APP_LOG_STDERR",
                &self.syslog_severity_app_log_stderr,
            ),
            metric: severity(
                "syslog-severity-metric",
                "SYSLOG_SEVERITY_METRIC",
                &self.syslog_severity_metric,
            ),
            event: severity(
                "syslog-severity-event",
                "SYSLOG_SEVERITY_EVENT",
                &self.syslog_severity_event,
            ),
        }
    }

    /// The syslog sink these options describe (its TLS files not read: see
    /// [`tls_files`](Self::tls_files)), plus any problems in them.
    pub(super) fn config(
        &self,
        errors: &mut Vec<String>,
    ) -> Option<crate::sink::syslog::SyslogConfig> {
        use crate::sink::syslog::{Framing, MsgFormat, SyslogConfig, SyslogFormat, Transport};
        let before = errors.len();
        let addr = match &self.syslog_addr {
            None => {
                errors.push("--syslog-addr (SYSLOG_ADDR) is required with --sink syslog".into());
                String::new()
            }
            Some(a) if !valid_host_port(a) => {
                errors.push(format!(
                    "--syslog-addr (SYSLOG_ADDR) must be host:port, not {a:?}"
                ));
                String::new()
            }
            Some(a) => a.clone(),
        };
        let facility = match self.syslog_facility.parse::<u8>() {
            Ok(n) if n <= 23 => Some(n),
            _ => FACILITIES
                .iter()
                .position(|f| *f == self.syslog_facility)
                .map(|i| i as u8),
        };
        if facility.is_none() {
            errors.push(format!(
                "--syslog-facility (SYSLOG_FACILITY) must be a facility name (local0 ... local7, user, ...) or 0-23, not {:?}",
                self.syslog_facility
            ));
        }
        let severities = self.severities(errors);
        if self.syslog_max_message_bytes < 480 {
            errors.push(format!(
                "--syslog-max-message-bytes (SYSLOG_MAX_MESSAGE_BYTES) must be at least 480 (RFC 5424's minimum), not {}",
                self.syslog_max_message_bytes
            ));
        }
        if self.syslog_write_timeout == 0 {
            errors.push(
                "--syslog-write-timeout (SYSLOG_WRITE_TIMEOUT) must be at least 1 second".into(),
            );
        }
        let transport = match self.syslog_transport {
            SyslogTransportArg::Tcp => Transport::Tcp,
            SyslogTransportArg::Tls => Transport::Tls,
            SyslogTransportArg::Udp => Transport::Udp,
        };
        if errors.len() > before {
            return None;
        }
        let server_name = self.syslog_server_name.clone().unwrap_or_else(|| {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string()
        });
        Some(SyslogConfig {
            addr,
            transport,
            framing: match self.syslog_framing {
                SyslogFramingArg::Octet => Framing::OctetCounting,
                SyslogFramingArg::Newline => Framing::Newline,
            },
            server_name,
            // Read at build (`tls_files`).
            tls: None,
            format: SyslogFormat {
                facility: facility.unwrap_or(16),
                severities,
                enterprise_number: self.syslog_enterprise_number,
                msg: match self.syslog_msg {
                    SyslogMsgArg::Json => MsgFormat::Json,
                    SyslogMsgArg::Message => MsgFormat::Message,
                    SyslogMsgArg::Cef => MsgFormat::Cef,
                },
                max_message_bytes: self.syslog_max_message_bytes,
            },
            write_timeout: Duration::from_secs(self.syslog_write_timeout),
        })
    }
}

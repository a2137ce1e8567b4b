//! Configuration: the command line (every option also an environment
//! variable named like the flag: `--rlp-addr` ⇔ `RLP_ADDR`), validated in one
//! pass that reports every problem at once, each naming its option.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::pipeline::{PipelineConfig, RunConfig, SinkConfig};
use crate::record::{EncodeContext, Kind};
use crate::sink::BatchConfig;
use crate::sink::file::FileSinkConfig;
use crate::source::Backoff;
use crate::source::rlp::RlpConfig;
use crate::tls::ClientTls;

#[derive(Debug, Parser)]
#[command(
    name = "cf-audit-nozzle",
    version,
    about = "Cloud Foundry firehose nozzle: API invocations, app logs and metrics as an audit trail",
    long_about = "Cloud Foundry firehose nozzle: reads Loggregator's V2 firehose from the Reverse Log Proxy \
                  over mutual TLS, separates API invocations, app logs, metrics and events, and delivers \
                  them to sinks. Without a command, `run` is assumed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the firehose and deliver records (the default command).
    Run(Box<RunArgs>),
    /// Run a built-in Loggregator emulator and the real pipeline over loopback mTLS; write files to ./nozzle-demo.
    Demo(DemoArgs),
    /// Run the Loggregator emulator alone (for benchmarks and trying a nozzle out).
    Emulator(EmulatorArgs),
}

/// The command names, for making `run` the default.
pub const COMMANDS: [&str; 4] = ["run", "demo", "emulator", "help"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SinkKind {
    /// JSON lines on standard output.
    Stdout,
    /// CloudTrail-style gzip files in --out-dir.
    File,
    /// RFC 5424 syslog over TLS, TCP or UDP to --syslog-addr.
    Syslog,
    /// A SIEM over HTTP(S): Splunk HEC or JSON, to --http-url.
    Http,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HttpFormatArg {
    /// Splunk HTTP Event Collector events.
    Hec,
    /// One record JSON per line.
    Json,
    /// One JSON array of records per request.
    JsonArray,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyslogTransportArg {
    Tcp,
    Tls,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyslogFramingArg {
    /// Octet counting (RFC 6587; required by RFC 5425 for TLS).
    Octet,
    /// One message per line (line breaks inside a message become spaces).
    Newline,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyslogMsgArg {
    /// The record's JSON.
    Json,
    /// Log lines as they are (other kinds as JSON).
    Message,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Reverse Log Proxy address, host:port (e.g. reverse-log-proxy.service.cf.internal:8082).
    #[arg(long, env = "RLP_ADDR")]
    pub rlp_addr: Option<String>,
    /// CA certificate (PEM) that signed the RLP's certificate (Loggregator's CA).
    #[arg(long, env = "RLP_CA")]
    pub rlp_ca: Option<PathBuf>,
    /// Client certificate (PEM) signed by Loggregator's CA.
    #[arg(long, env = "RLP_CERT")]
    pub rlp_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "RLP_KEY")]
    pub rlp_key: Option<PathBuf>,
    /// Name the RLP's certificate must carry.
    #[arg(long, env = "RLP_SERVER_NAME", default_value = "reverselogproxy")]
    pub rlp_server_name: String,
    /// Subscription id shared by every instance of this nozzle: Loggregator splits the firehose between them.
    #[arg(long, env = "SHARD_ID", default_value = "cf-audit-nozzle")]
    pub shard_id: String,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Seconds to drain queues and complete files after SIGTERM/Ctrl-C before exiting anyway.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 8)]
    pub shutdown_timeout: u64,
    /// Write the final account (records per kind, delivered, dropped, files) as JSON to this file at exit.
    #[arg(long, env = "SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,
    /// Benchmark only: receive and decode, deliver nothing.
    #[arg(long, env = "DECODE_ONLY", hide = true)]
    pub decode_only: bool,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Where records go, a comma list; every kind goes to every sink listed.
    #[arg(
        long,
        env = "SINK",
        value_enum,
        value_delimiter = ',',
        default_value = "stdout"
    )]
    pub sink: Vec<SinkKind>,
    /// Folder of the file sink.
    #[arg(long, env = "OUT_DIR", default_value = "nozzle-out")]
    pub out_dir: PathBuf,
    /// Seconds after which the file sink completes its files and starts new ones.
    #[arg(long, env = "ROLL_INTERVAL", default_value_t = 300)]
    pub roll_interval: u64,
    /// Name of this Cloud Foundry foundation, in every record and file name.
    #[arg(long, env = "FOUNDATION", default_value = "cf")]
    pub foundation: String,
    /// This instance's index, in file names so instances never overwrite each other.
    #[arg(long, env = "INSTANCE_INDEX", default_value_t = 0)]
    pub instance_index: u32,
    /// Records each sink's queue holds; beyond it the newest are dropped and counted.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 100_000)]
    pub queue_capacity: usize,
    /// Records per batch a sink writes at once.
    #[arg(long, env = "BATCH_MAX_RECORDS", default_value_t = 1000)]
    pub batch_max_records: usize,
    /// Milliseconds a record waits at most for its batch to fill.
    #[arg(long, env = "BATCH_MAX_AGE_MS", default_value_t = 500)]
    pub batch_max_age_ms: u64,
    /// gzip level of the file sink, 0 (none) to 9 (smallest).
    #[arg(long, env = "GZIP_LEVEL", default_value_t = DEFAULT_GZIP_LEVEL)]
    pub gzip_level: u32,
    /// Folder for batches a receiver rejected (e.g. HEC "invalid data format"), kept with the reason.
    #[arg(long, env = "DEAD_LETTER_DIR", default_value = "dead-letter")]
    pub dead_letter_dir: PathBuf,
    #[command(flatten)]
    pub syslog: SyslogArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// SIEM URL; for hec a base URL such as https://splunk:8088 gets /services/collector/event.
    #[arg(long, env = "HTTP_URL")]
    pub http_url: Option<String>,
    /// Body format of the HTTP sink.
    #[arg(long, env = "HTTP_FORMAT", value_enum, default_value_t = HttpFormatArg::Hec)]
    pub http_format: HttpFormatArg,
    /// Splunk HEC token (sent as "Authorization: Splunk <token>").
    #[arg(long, env = "HEC_TOKEN", hide_env_values = true)]
    pub hec_token: Option<String>,
    /// Splunk index for every event (must be allowed for the token); the token's default without it.
    #[arg(long, env = "HEC_INDEX")]
    pub hec_index: Option<String>,
    /// Splunk index for API invocations (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_API")]
    pub hec_index_api: Option<String>,
    /// Splunk index for app logs (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_APP_LOG")]
    pub hec_index_app_log: Option<String>,
    /// Splunk index for metrics (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_METRIC")]
    pub hec_index_metric: Option<String>,
    /// Splunk index for events (overrides --hec-index).
    #[arg(long, env = "HEC_INDEX_EVENT")]
    pub hec_index_event: Option<String>,
    /// Envelope tag whose value, when a record has it, names the record's index (e.g. an app label).
    #[arg(long, env = "HEC_INDEX_TAG")]
    pub hec_index_tag: Option<String>,
    /// CA bundle (PEM) the SIEM's certificate must chain to; without it, the Mozilla roots.
    #[arg(long, env = "HTTP_CA")]
    pub http_ca: Option<PathBuf>,
    /// Client certificate (PEM) for SIEMs that require one.
    #[arg(long, env = "HTTP_CERT")]
    pub http_cert: Option<PathBuf>,
    /// Client key (PEM) for --http-cert.
    #[arg(long, env = "HTTP_KEY")]
    pub http_key: Option<PathBuf>,
    /// Verify the SIEM's certificate; false trusts anyone (a warning says so at start).
    #[arg(long, env = "HTTP_TLS_VERIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub http_tls_verify: bool,
    /// Extra request header, 'Name: value' (repeatable), e.g. 'Authorization: Bearer ...'.
    #[arg(long, env = "HTTP_HEADER", hide_env_values = true)]
    pub http_header: Vec<String>,
    /// gzip request bodies.
    #[arg(long, env = "HTTP_GZIP", default_value_t = true, action = clap::ArgAction::Set)]
    pub http_gzip: bool,
    /// Seconds to wait for the SIEM's reply before retrying.
    #[arg(long, env = "HTTP_TIMEOUT", default_value_t = 30)]
    pub http_timeout: u64,
    /// Requests to the SIEM in flight at once.
    #[arg(long, env = "HTTP_CONCURRENCY", default_value_t = 4)]
    pub http_concurrency: usize,
    /// Uncompressed size of one request; a batch is split into requests of about this size.
    #[arg(long, env = "HTTP_MAX_REQUEST_BYTES", default_value_t = 1_000_000)]
    pub http_max_request_bytes: usize,
}

impl HttpArgs {
    /// The HTTP sink these options describe, plus any problems in them.
    fn config(&self, errors: &mut Vec<String>) -> Option<crate::sink::http::HttpSinkConfig> {
        use crate::sink::http::{HttpFormat, HttpSinkConfig};
        let before = errors.len();
        let url = match &self.http_url {
            None => {
                errors.push("--http-url (HTTP_URL) is required with --sink http".into());
                String::new()
            }
            Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) || u.len() < 10 => {
                errors.push(format!(
                    "--http-url (HTTP_URL) must be an http:// or https:// URL, not {u:?}"
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
        if format == HttpFormat::Hec && self.hec_token.as_deref().is_none_or(str::is_empty) {
            errors.push("--hec-token (HEC_TOKEN) is required with --http-format hec".into());
        }
        if self.http_concurrency == 0 {
            errors.push("--http-concurrency (HTTP_CONCURRENCY) must be at least 1".into());
        }
        let mut headers = Vec::new();
        for h in &self.http_header {
            match h.split_once(':') {
                Some((name, value)) if !name.trim().is_empty() && !name.contains(' ') => {
                    headers.push((name.trim().to_string(), value.trim().to_string()))
                }
                // The value may be a credential: name only the header's name.
                _ => errors.push(format!(
                    "--http-header (HTTP_HEADER) must look like 'Name: value', not {:?}",
                    h.split(':').next().unwrap_or_default()
                )),
            }
        }
        let mut read = |what, path: &Option<PathBuf>, expected| {
            path.as_deref().and_then(|p| {
                crate::tls::read_pem_file(what, p, expected)
                    .map_err(|e| errors.push(e.to_string()))
                    .ok()
            })
        };
        let ca = read("--http-ca (HTTP_CA)", &self.http_ca, "CERTIFICATE");
        let cert = read("--http-cert (HTTP_CERT)", &self.http_cert, "CERTIFICATE");
        let key = read("--http-key (HTTP_KEY)", &self.http_key, "PRIVATE KEY");
        if self.http_cert.is_some() != self.http_key.is_some() {
            errors.push("--http-cert (HTTP_CERT) and --http-key (HTTP_KEY) go together".into());
        }
        if errors.len() > before {
            return None;
        }
        let identity = cert.as_deref().zip(key.as_deref());
        let mut tls = crate::tls::rustls_client_config(
            "--http-ca/--http-cert/--http-key",
            ca.as_deref(),
            identity,
        )
        .map_err(|e| errors.push(e.to_string()))
        .ok()?;
        if !self.http_tls_verify {
            crate::tls::disable_verification(&mut tls);
        }
        Some(HttpSinkConfig {
            url,
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
            tls: std::sync::Arc::new(tls),
            tls_verify: self.http_tls_verify,
            timeout: Duration::from_secs(self.http_timeout.max(1)),
            concurrency: self.http_concurrency,
            max_request_bytes: self.http_max_request_bytes,
        })
    }
}

#[derive(Debug, Args)]
pub struct SyslogArgs {
    /// Syslog receiver, host:port (6514 is RFC 5425's TLS port; AlienVault USM takes RFC 5424 over TLS on 6515).
    #[arg(long, env = "SYSLOG_ADDR")]
    pub syslog_addr: Option<String>,
    /// Syslog transport.
    #[arg(long, env = "SYSLOG_TRANSPORT", value_enum, default_value_t = SyslogTransportArg::Tls)]
    pub syslog_transport: SyslogTransportArg,
    /// CA bundle (PEM) the syslog receiver's certificate must chain to; without it, the Mozilla roots.
    #[arg(long, env = "SYSLOG_CA")]
    pub syslog_ca: Option<PathBuf>,
    /// Name the syslog receiver's certificate must carry; the host of --syslog-addr by default.
    #[arg(long, env = "SYSLOG_SERVER_NAME")]
    pub syslog_server_name: Option<String>,
    /// Client certificate (PEM) for receivers that require one.
    #[arg(long, env = "SYSLOG_CERT")]
    pub syslog_cert: Option<PathBuf>,
    /// Client key (PEM) for --syslog-cert.
    #[arg(long, env = "SYSLOG_KEY")]
    pub syslog_key: Option<PathBuf>,
    /// Syslog framing.
    #[arg(long, env = "SYSLOG_FRAMING", value_enum, default_value_t = SyslogFramingArg::Octet)]
    pub syslog_framing: SyslogFramingArg,
    /// Syslog facility: a name (kern, user, daemon, auth, local0 ... local7) or a number 0-23.
    #[arg(long, env = "SYSLOG_FACILITY", default_value = "local0")]
    pub syslog_facility: String,
    /// Severity of API invocations (emerg, alert, crit, err, warning, notice, info, debug).
    #[arg(long, env = "SYSLOG_SEVERITY_API", default_value = "notice")]
    pub syslog_severity_api: String,
    /// Severity of app log lines written to stdout.
    #[arg(long, env = "SYSLOG_SEVERITY_APP_LOG", default_value = "info")]
    pub syslog_severity_app_log: String,
    /// Severity of app log lines written to stderr.
    #[arg(
        long,
        env = "SYSLOG_SEVERITY_APP_LOG_STDERR",
        default_value = "warning"
    )]
    pub syslog_severity_app_log_stderr: String,
    /// Severity of metrics.
    #[arg(long, env = "SYSLOG_SEVERITY_METRIC", default_value = "info")]
    pub syslog_severity_metric: String,
    /// Severity of events.
    #[arg(long, env = "SYSLOG_SEVERITY_EVENT", default_value = "notice")]
    pub syslog_severity_event: String,
    /// What a syslog message carries after the structured data.
    #[arg(long, env = "SYSLOG_MSG", value_enum, default_value_t = SyslogMsgArg::Json)]
    pub syslog_msg: SyslogMsgArg,
    /// Longest syslog message in bytes; longer ones are cut with a "[truncated]" marker.
    #[arg(long, env = "SYSLOG_MAX_MESSAGE_BYTES", default_value_t = crate::sink::syslog::DEFAULT_MAX_MESSAGE_BYTES)]
    pub syslog_max_message_bytes: usize,
    /// Private enterprise number of the structured-data ID (tags@<number>); 32473 is the documentation number.
    #[arg(long, env = "SYSLOG_ENTERPRISE_NUMBER", default_value_t = crate::sink::syslog::DEFAULT_ENTERPRISE_NUMBER)]
    pub syslog_enterprise_number: u32,
}

/// Syslog facility names (RFC 5424 §6.2.1).
const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

impl SyslogArgs {
    /// The TLS client settings of the syslog sink, plus any problems in them.
    fn tls_config(&self, errors: &mut Vec<String>) -> Option<std::sync::Arc<rustls::ClientConfig>> {
        let read = |what, path: &std::path::Path, expected| {
            crate::tls::read_pem_file(what, path, expected).map_err(|e| e.to_string())
        };
        let ca = self
            .syslog_ca
            .as_deref()
            .map(|p| read("--syslog-ca (SYSLOG_CA)", p, "CERTIFICATE"))
            .transpose();
        let identity = match (&self.syslog_cert, &self.syslog_key) {
            (Some(c), Some(k)) => {
                read("--syslog-cert (SYSLOG_CERT)", c, "CERTIFICATE").and_then(|c| {
                    read("--syslog-key (SYSLOG_KEY)", k, "PRIVATE KEY").map(|k| Some((c, k)))
                })
            }
            (None, None) => Ok(None),
            _ => Err(
                "--syslog-cert (SYSLOG_CERT) and --syslog-key (SYSLOG_KEY) go together".to_string(),
            ),
        };
        let (ca, identity) = match (ca, identity) {
            (Ok(ca), Ok(identity)) => (ca, identity),
            (ca, identity) => {
                errors.extend(ca.err());
                errors.extend(identity.err());
                return None;
            }
        };
        crate::tls::rustls_client_config(
            "--syslog-ca/--syslog-cert/--syslog-key",
            ca.as_deref(),
            identity.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
        )
        .map(std::sync::Arc::new)
        .map_err(|e| errors.push(e.to_string()))
        .ok()
    }

    /// The syslog sink these options describe, plus any problems in them.
    fn config(&self, errors: &mut Vec<String>) -> Option<crate::sink::syslog::SyslogConfig> {
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
        let severities = crate::sink::syslog::Severities {
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
        };
        if self.syslog_max_message_bytes < 480 {
            errors.push(format!(
                "--syslog-max-message-bytes (SYSLOG_MAX_MESSAGE_BYTES) must be at least 480 (RFC 5424's minimum), not {}",
                self.syslog_max_message_bytes
            ));
        }
        let transport = match self.syslog_transport {
            SyslogTransportArg::Tcp => Transport::Tcp,
            SyslogTransportArg::Tls => Transport::Tls,
            SyslogTransportArg::Udp => Transport::Udp,
        };
        let tls = if transport == Transport::Tls {
            self.tls_config(errors)
        } else {
            None
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
            tls,
            format: SyslogFormat {
                facility: facility.unwrap_or(16),
                severities,
                enterprise_number: self.syslog_enterprise_number,
                msg: match self.syslog_msg {
                    SyslogMsgArg::Json => MsgFormat::Json,
                    SyslogMsgArg::Message => MsgFormat::Message,
                },
                max_message_bytes: self.syslog_max_message_bytes,
            },
        })
    }
}

/// zlib-rs level 1 compresses JSON records about 6:1 at several times the
/// speed of level 6 (see the closing notes of issue 2 for the measurement).
pub const DEFAULT_GZIP_LEVEL: u32 = 1;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds to run before printing the summary.
    #[arg(long, env = "DEMO_DURATION", default_value_t = 10)]
    pub duration: u64,
    /// Envelopes per second the emulator sends.
    #[arg(long, env = "DEMO_RATE", default_value_t = 2000)]
    pub rate: u64,
    /// Folder the demo writes its files to.
    #[arg(long, env = "DEMO_OUT_DIR", default_value = "nozzle-demo")]
    pub out_dir: PathBuf,
    /// Seconds after which files are completed and new ones started.
    #[arg(long, env = "DEMO_ROLL_INTERVAL", default_value_t = 60)]
    pub roll_interval: u64,
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: std::net::SocketAddr,
    /// Folder to write ca.pem, client.pem and client-key.pem into, for the nozzle.
    #[arg(long, env = "EMULATOR_TLS_DIR", default_value = "emulator-tls")]
    pub tls_dir: PathBuf,
    /// Envelopes per second per shard; 0 is as fast as the client reads.
    #[arg(long, env = "EMULATOR_RATE", default_value_t = 0)]
    pub rate: u64,
    /// Envelopes per shard before the streams end; 0 is endless.
    #[arg(long, env = "EMULATOR_COUNT", default_value_t = 0)]
    pub count: u64,
    /// Seed of the generated traffic.
    #[arg(long, env = "EMULATOR_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Generate every batch fresh, with current timestamps, instead of cycling
    /// through batches encoded at start (which costs next to no CPU).
    #[arg(long, env = "EMULATOR_FRESH")]
    pub fresh: bool,
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl OutputArgs {
    /// The pipeline these options describe, plus any problems in them.
    pub fn pipeline(&self, errors: &mut Vec<String>, decode_only: bool) -> PipelineConfig {
        if self.roll_interval == 0 {
            errors.push("--roll-interval (ROLL_INTERVAL) must be at least 1 second".into());
        }
        if self.gzip_level > 9 {
            errors.push(format!(
                "--gzip-level (GZIP_LEVEL) must be 0 to 9, not {}",
                self.gzip_level
            ));
        }
        if self.queue_capacity == 0 {
            errors.push("--queue-capacity (QUEUE_CAPACITY) must be at least 1".into());
        }
        if self.batch_max_records == 0 {
            errors.push("--batch-max-records (BATCH_MAX_RECORDS) must be at least 1".into());
        }
        if self.foundation.is_empty() || self.foundation.contains(['/', '\\']) {
            errors.push(format!(
                "--foundation (FOUNDATION) must be a non-empty name without slashes, not {:?}",
                self.foundation
            ));
        }
        let mut kinds = self.sink.clone();
        kinds.dedup();
        if kinds.is_empty() {
            errors.push(
                "--sink (SINK) must name at least one sink: stdout, file, syslog or http".into(),
            );
        }
        let mut sinks = Vec::new();
        for kind in kinds {
            let sink = match kind {
                SinkKind::Stdout => SinkConfig::Stdout,
                SinkKind::File => SinkConfig::File(FileSinkConfig {
                    dir: self.out_dir.clone(),
                    instance_index: self.instance_index,
                    roll_interval: Duration::from_secs(self.roll_interval),
                    gzip_level: self.gzip_level,
                }),
                SinkKind::Syslog => match self.syslog.config(errors) {
                    Some(cfg) => SinkConfig::Syslog(cfg),
                    None => continue,
                },
                SinkKind::Http => match self.http.config(errors) {
                    Some(cfg) => SinkConfig::Http(cfg),
                    None => continue,
                },
            };
            sinks.push((sink, Kind::ALL.to_vec()));
        }
        PipelineConfig {
            sinks,
            queue_capacity: self.queue_capacity,
            batch: BatchConfig {
                max_records: self.batch_max_records,
                max_age: Duration::from_millis(self.batch_max_age_ms),
                dead_letter: Some(crate::sink::DeadLetter {
                    dir: self.dead_letter_dir.clone(),
                    encode: EncodeContext {
                        foundation: self.foundation.clone(),
                    },
                }),
                ..BatchConfig::default()
            },
            encode: EncodeContext {
                foundation: self.foundation.clone(),
            },
            decode_only,
        }
    }
}

impl RunArgs {
    /// Validates every option (reading the TLS files) and reports all problems together.
    pub fn validate(&self) -> Result<RunConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let mut required = |value: Option<&PathBuf>, flag: &str, env: &str, what: &str| {
            if value.is_none() {
                errors.push(format!("--{flag} ({env}) is required: {what}"));
            }
        };
        required(
            self.rlp_ca.as_ref(),
            "rlp-ca",
            "RLP_CA",
            "the CA certificate file that signed the RLP's certificate",
        );
        required(
            self.rlp_cert.as_ref(),
            "rlp-cert",
            "RLP_CERT",
            "the client certificate file",
        );
        required(
            self.rlp_key.as_ref(),
            "rlp-key",
            "RLP_KEY",
            "the client key file",
        );
        match &self.rlp_addr {
            None => errors.push(
                "--rlp-addr (RLP_ADDR) is required: the Reverse Log Proxy's host:port".into(),
            ),
            Some(a) if !valid_host_port(a) => errors.push(format!(
                "--rlp-addr (RLP_ADDR) must be host:port, not {a:?}"
            )),
            Some(_) => {}
        }
        if self.rlp_server_name.is_empty() {
            errors.push("--rlp-server-name (RLP_SERVER_NAME) must not be empty".into());
        }
        let tls = match (&self.rlp_ca, &self.rlp_cert, &self.rlp_key) {
            (Some(ca), Some(cert), Some(key)) => ClientTls::from_files(ca, cert, key)
                .map_err(|e| errors.push(format!("--rlp-ca/--rlp-cert/--rlp-key: {e}")))
                .ok(),
            _ => None,
        };
        let pipeline = self.output.pipeline(&mut errors, self.decode_only);
        match (errors.is_empty(), tls) {
            (true, Some(tls)) => Ok(RunConfig {
                rlp: RlpConfig {
                    addr: self.rlp_addr.clone().unwrap_or_default(),
                    server_name: self.rlp_server_name.clone(),
                    tls,
                    shard_id: self.shard_id.clone(),
                    backoff: Backoff::default(),
                },
                pipeline,
                shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            }),
            _ => Err(ConfigErrors(errors)),
        }
    }
}

fn valid_host_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// Inserts `run` when the first argument is not a command, so `run` is the default.
pub fn with_default_command(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let first = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    let is_command = COMMANDS.contains(&first);
    let is_top_level_flag = matches!(first, "-h" | "--help" | "-V" | "--version");
    if !is_command && !is_top_level_flag {
        args.insert(1.min(args.len()), "run".into());
    }
    args
}

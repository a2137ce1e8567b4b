//! The validated forms `run`, `tail` and `demo` are built from (what the
//! options say once every value is checked) and [`validate`], which makes
//! them from `run`'s options and the environment. Part of [`crate::config`].

use std::path::PathBuf;
use std::time::Duration;

use super::source::{RlpSettings, RlpTlsFiles};
use super::{
    ConfigErrors, Env, ProcessEnv, RunArgs, SinkKind, SourceKind, SseArg, valid_host_port, vcap_s3,
};
use crate::backoff::Backoff;
use crate::record::{EncodeContext, Kind};
use crate::sink::BatchConfig;
use crate::sink::file::FileSinkConfig;

#[derive(Clone, Debug)]
pub enum SinkConfig {
    Stdout,
    File(FileSinkConfig),
    Syslog(crate::sink::syslog::SyslogConfig),
    Http(Box<crate::sink::http::HttpSinkConfig>),
    /// S3, or a local folder with a signed digest chain (`sink::archive`).
    Object(Box<crate::sink::archive::ObjectSinkConfig>),
}

/// The pipeline: at run time with [`SinkConfig`]s; as validated with
/// [`SinkSettings`](super::SinkSettings) (each sink's files not read yet).
#[derive(Clone, Debug)]
pub struct PipelineConfig<S = SinkConfig> {
    /// Each sink with the kinds routed to it.
    pub sinks: Vec<(S, Vec<Kind>)>,
    /// Records each sink's queue holds before it drops the newest.
    pub queue_capacity: usize,
    /// Estimated bytes ([`Record::approx_size`](crate::record::Record::approx_size))
    /// all sink queues hold together, shared evenly (`--queue-max-bytes`);
    /// `u64::MAX` for no bound but the record count.
    pub queue_max_bytes: u64,
    pub batch: BatchConfig,
    pub encode: EncodeContext,
    /// Benchmark mode: receive and decode only.
    pub decode_only: bool,
    /// The disk buffer shared by every sink (`--buffer-dir`), if any.
    pub buffer: Option<crate::sink::buffer::BufferConfig>,
    /// This instance's index (`--instance-index`), named in the records' `boot`.
    pub instance_index: u32,
}

/// Everything `run` needs, validated: values and the paths of the files
/// the source, the audit settings and the sinks read ([`super::build`]
/// reads them and makes the clients).
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub source: super::SourceSettings,
    pub pipeline: PipelineConfig<super::SinkSettings>,
    pub shutdown_timeout: Duration,
    /// `/health` and `/metrics`; `None` when turned off.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    pub alerts: crate::alert::AlertConfig,
    /// Shown in `/health` (they were logged at start).
    pub warnings: Vec<String>,
    /// Rules, the audit-events poller and enrichment.
    pub audit: super::AuditSettings,
    /// The syslog ingress, when on.
    pub syslog_in: Option<super::syslog_in::SyslogInSettings>,
    /// The correlator's bounds (a zero hold: off).
    pub correlate: crate::route::CorrelateConfig,
}

impl RunArgs {
    /// [`validate`] against the process environment.
    pub fn validate(&self) -> Result<RunConfig, ConfigErrors> {
        validate(self, &ProcessEnv)
    }

    /// The RLP source's options (the TLS files are read at build), with
    /// problems added to `errors`.
    fn rlp(
        &self,
        errors: &mut Vec<String>,
        streams: crate::source::Streams,
    ) -> Option<RlpSettings> {
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
        Some(RlpSettings {
            addr: self.rlp_addr.clone()?,
            server_name: self.rlp_server_name.clone(),
            tls: self.rlp_tls_files()?,
            streams,
            backoff: Backoff::default(),
            idle_timeout: (self.rlp_idle_timeout > 0)
                .then(|| Duration::from_secs(self.rlp_idle_timeout)),
        })
    }
}

impl RunArgs {
    /// `--rlp-ca`, `--rlp-cert` and `--rlp-key`, when all three are given.
    pub(crate) fn rlp_tls_files(&self) -> Option<RlpTlsFiles> {
        Some(RlpTlsFiles {
            ca: self.rlp_ca.clone()?,
            cert: self.rlp_cert.clone()?,
            key: self.rlp_key.clone()?,
        })
    }

    /// Settings an operator must not forget, for the start-up log and /health.
    pub fn warnings(&self, env: &dyn Env) -> Vec<String> {
        let mut w = Vec::new();
        if self.output.sink.contains(&SinkKind::Http) && !self.output.http.http_tls_verify {
            w.push("TLS certificate verification of the HTTP sink is off (--http-tls-verify false): anyone on the path can read and alter the audit trail".to_string());
        }
        if self.cf.skip_tls_verify {
            w.push("TLS certificate verification of the CF API, UAA and RLP Gateway is off (--skip-tls-verify): anyone on the path can read the token and alter the firehose".to_string());
        }
        const PLATFORM: &str =
            "the UAA client secret, the tokens and the data cross the network unencrypted";
        let sinks = &self.output.sink;
        let s3 = &self.output.s3;
        // The S3 endpoint as the sink uses it: the flag, else a binding's.
        let s3_endpoint = s3.s3_endpoint.clone().or_else(|| {
            let vcap = env.var("VCAP_SERVICES")?;
            vcap_s3(&vcap)?.endpoint
        });
        // Notifications go out from the object writer: the s3 sink, or
        // the file sink with a signing key.
        let object_sink = sinks.contains(&SinkKind::S3)
            || (sinks.contains(&SinkKind::File) && s3.signing_key.is_some());
        let gateway = self.input.source == SourceKind::Gateway;
        for (used, flag, url, what) in [
            (true, "--cf-api (CF_API)", &self.cf.cf_api, PLATFORM),
            (true, "--uaa-url (UAA_URL)", &self.cf.uaa_url, PLATFORM),
            (
                gateway,
                "--gateway-url (GATEWAY_URL)",
                &self.input.gateway_url,
                PLATFORM,
            ),
            (
                sinks.contains(&SinkKind::Http),
                "--http-url (HTTP_URL)",
                &self.output.http.http_url,
                "the records, the HEC token and the --http-header values cross the network unencrypted",
            ),
            (
                sinks.contains(&SinkKind::S3),
                "--s3-endpoint (S3_ENDPOINT)",
                &s3_endpoint,
                "the log files, the digests and any session token cross the network unencrypted",
            ),
            (
                object_sink,
                "--notify-url (NOTIFY_URL)",
                &s3.notify_url,
                "the delivery notifications (bucket and object keys) cross the network unencrypted",
            ),
        ] {
            if used
                && url
                    .as_deref()
                    .is_some_and(|u| u.trim().to_ascii_lowercase().starts_with("http://"))
            {
                w.push(format!("{flag} is plain http://: {what} (use https://)"));
            }
        }
        if !self.output.sink.contains(&SinkKind::S3)
            && (s3.s3_object_lock_mode.is_some() || s3.s3_object_lock_days.is_some())
        {
            // The file sink's folder has no retention to set: nothing is locked.
            w.push("--s3-object-lock-mode/--s3-object-lock-days have no effect without --sink s3: nothing is written with retention".to_string());
        }
        if self.output.sink.contains(&SinkKind::S3) && self.output.s3.s3_sse == SseArg::None {
            w.push(
                "--s3-sse none: log files are written WITHOUT server-side encryption".to_string(),
            );
        }
        w
    }
}

/// Validates every option of `args`, with `env` for the variables a
/// platform sets, and reports all problems together. No file is read (the
/// RLP's and the sinks' TLS files, `--ca-file`, `--s3-ca`, `--signing-key`)
/// and no client is made: that is [`super::build`]'s.
pub fn validate(args: &RunArgs, env: &dyn Env) -> Result<RunConfig, ConfigErrors> {
    let mut errors = Vec::new();
    if args.shutdown_timeout == 0 {
        // 0 s would drain nothing: every unbuffered record in a queue lost at each stop.
        errors.push("--shutdown-timeout (SHUTDOWN_TIMEOUT) must be at least 1 second".into());
    }
    // 0 would answer 503 for every passing reconnect. (--alert-after is
    // checked with the telemetry options.)
    if args.telemetry.health_disconnect_threshold == 0 {
        errors.push(
            "--health-disconnect-threshold (HEALTH_DISCONNECT_THRESHOLD) must be at least 1 second"
                .into(),
        );
    }
    let streams = args.input.streams(&mut errors, &args.shard_id);
    let source = match args.input.source {
        SourceKind::Rlp => args
            .rlp(&mut errors, streams)
            .map(|r| super::SourceSettings::Rlp(Box::new(r))),
        SourceKind::Gateway => args
            .input
            .gateway(&mut errors, &args.cf, streams)
            .map(|g| super::SourceSettings::Gateway(Box::new(g))),
    };
    let mut pipeline = args
        .output
        .pipeline_settings(&mut errors, args.decode_only, env);
    let audit = args.audit.setup(
        &mut errors,
        &args.cf,
        args.output.instance_index,
        Duration::from_secs(args.shutdown_timeout),
        &mut pipeline,
        env,
    );
    let (telemetry, alerts) = args.telemetry.config(env.var("PORT"), &mut errors);
    let mut warnings = args.warnings(env);
    let syslog_in = args.syslog_in.settings(&mut errors, &mut warnings);
    let correlate = args.correlate.settings(&mut errors);
    match (errors.is_empty(), source) {
        (true, Some(source)) => Ok(RunConfig {
            source,
            pipeline,
            shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
            telemetry,
            alerts,
            warnings,
            audit,
            syslog_in,
            correlate,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

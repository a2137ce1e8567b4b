//! The build step: what `run`, `tail` and `config check` run after
//! [`validate`](super::validate). It reads the files the options name (the
//! RLP's TLS files, `--ca-file`, the sinks' TLS files, `--s3-ca`,
//! `--signing-key`) and makes the clients the validated settings describe
//! (the platform HTTP client for UAA, Cloud Controller and the RLP Gateway;
//! the audit cursor's bucket client), every problem listed at once, each
//! naming its option. Part of [`crate::config`].

use std::time::Duration;

use super::cf::PlatformHttp;
use super::{AuditSetup, ConfigErrors, OnOff, PipelineConfig, RunArgs, RunConfig, SourceKind};
use crate::source::SourceConfig;

/// A [`RunConfig`] with its clients made: what `run` and `tail` start from.
#[derive(Clone, Debug)]
pub struct Built {
    pub source: SourceConfig,
    pub pipeline: PipelineConfig,
    pub shutdown_timeout: Duration,
    /// `/health` and `/metrics`; `None` when turned off.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    pub alerts: crate::alert::AlertConfig,
    /// Shown in `/health` (they were logged at start).
    pub warnings: Vec<String>,
    /// Rules, the audit-events poller and enrichment.
    pub audit: AuditSetup,
    /// The syslog ingress, when on.
    pub syslog_in: Option<crate::source::syslog_in::SyslogInConfig>,
    /// The correlator's bounds (a zero hold: off).
    pub correlate: crate::route::CorrelateConfig,
}

/// Makes the clients `cfg` describes (reading the files it names), with
/// every problem listed.
pub fn build(cfg: &RunConfig) -> Result<Built, ConfigErrors> {
    let mut errors = Vec::new();
    // One platform client, shared by the gateway and Cloud Controller (a
    // bad --ca-file is named once).
    let mut made: Option<(PlatformHttp, Option<reqwest::Client>)> = None;
    let mut platform = |settings: &PlatformHttp, errors: &mut Vec<String>| {
        if let Some((s, client)) = &made
            && s == settings
        {
            return client.clone();
        }
        let client = settings.client().map_err(|e| errors.push(e)).ok();
        made = Some((settings.clone(), client.clone()));
        client
    };
    let mut source_errors = Vec::new();
    let source = cfg
        .source
        .build(&mut errors, |s| platform(s, &mut source_errors));
    errors.append(&mut source_errors);
    let pipeline = super::build_pipeline(&cfg.pipeline, &mut errors);
    let mut audit_errors = Vec::new();
    let audit = cfg.audit.build(
        &mut errors,
        |s| platform(s, &mut audit_errors),
        s3_ca(&pipeline),
    );
    errors.append(&mut audit_errors);
    let syslog_in = cfg
        .syslog_in
        .as_ref()
        .and_then(|s| super::syslog_in::build(s, &mut errors));
    match (errors.is_empty(), source) {
        (true, Some(source)) => Ok(Built {
            source,
            pipeline,
            shutdown_timeout: cfg.shutdown_timeout,
            telemetry: cfg.telemetry.clone(),
            alerts: cfg.alerts.clone(),
            warnings: cfg.warnings.clone(),
            audit,
            syslog_in,
            correlate: cfg.correlate,
        }),
        _ => Err(ConfigErrors(errors)),
    }
}

/// The `--s3-ca` certificate the S3 sink trusts, for the audit cursor in
/// the same bucket.
fn s3_ca(pipeline: &PipelineConfig) -> Option<&[u8]> {
    pipeline.sinks.iter().find_map(|(s, _)| match s {
        super::SinkConfig::Object(o) => match &o.target {
            crate::sink::archive::Target::S3(s3) => s3.ca_pem.as_deref(),
            crate::sink::archive::Target::Dir(_) => None,
        },
        _ => None,
    })
}

/// The build step's problems that the options show alone, for when
/// validation failed and [`build`] cannot run: the RLP's TLS files, the
/// platform client's `--ca-file` when something uses them, and the files
/// of the sinks `--sink` names.
pub(crate) fn unbuilt_problems(args: &RunArgs) -> Vec<String> {
    let mut errors = Vec::new();
    if args.input.source == SourceKind::Rlp
        && let Some(Err(e)) = args.rlp_tls_files().map(|f| f.read())
    {
        errors.push(e);
    }
    let platform = args.input.source == SourceKind::Gateway
        || args.audit.audit_events == OnOff::On
        || args.audit.enrich == OnOff::On;
    if platform && let Err(e) = args.cf.platform_http().client() {
        errors.push(e);
    }
    for files in args.output.sink_files() {
        files.check(&mut errors);
    }
    errors
}

//! The validated forms `run`, `tail` and `demo` are built from: what the
//! options say once every value is checked. Part of [`crate::config`].

use std::time::Duration;

use crate::record::{EncodeContext, Kind};
use crate::sink::BatchConfig;
use crate::sink::file::FileSinkConfig;
use crate::source::SourceConfig;

#[derive(Clone, Debug)]
pub enum SinkConfig {
    Stdout,
    File(FileSinkConfig),
    Syslog(crate::sink::syslog::SyslogConfig),
    Http(Box<crate::sink::http::HttpSinkConfig>),
    /// S3, or a local folder with a signed digest chain (`sink::archive`).
    Object(Box<crate::sink::archive::ObjectSinkConfig>),
}

#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Each sink with the kinds routed to it.
    pub sinks: Vec<(SinkConfig, Vec<Kind>)>,
    /// Records each sink's queue holds before it drops the newest.
    pub queue_capacity: usize,
    pub batch: BatchConfig,
    pub encode: EncodeContext,
    /// Benchmark mode: receive and decode only.
    pub decode_only: bool,
    /// The disk buffer shared by every sink (`--buffer-dir`), if any.
    pub buffer: Option<crate::sink::buffer::BufferConfig>,
}

/// Everything `run` needs, validated.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub source: SourceConfig,
    pub pipeline: PipelineConfig,
    pub shutdown_timeout: Duration,
    /// `/health` and `/metrics`; `None` when turned off.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    pub alerts: crate::alert::AlertConfig,
    /// Shown in `/health` (they were logged at start).
    pub warnings: Vec<String>,
    /// Rules, the audit-events poller and enrichment.
    pub audit: super::AuditSetup,
}

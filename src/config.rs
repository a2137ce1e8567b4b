//! Configuration: the command line (every option also an environment
//! variable named like the flag: `--rlp-addr` ⇔ `RLP_ADDR`), validated in one
//! pass that reports every problem at once, each naming its option.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::record::{EncodeContext, Kind};
use crate::sink::BatchConfig;
use crate::sink::file::FileSinkConfig;

mod audit;
pub mod bosh;
mod buffer;
mod build;
mod cf;
pub mod check;
pub mod correlate;
pub mod env;
mod gaps;
pub mod layers;
pub mod reference;
mod run;
mod s3;
mod sink_files;
mod sinks;
mod source;
pub mod syslog_in;
mod tail;
mod telemetry;
pub use audit::{
    AuditArgs, AuditSettings, AuditSetup, CcSettings, CursorSettings, OnOff, PollerSettings,
    apply_routes,
};
pub use build::{Built, build};
pub use cf::{CfArgs, PlatformHttp};
pub use env::{Env, MapEnv, ProcessEnv};
pub use gaps::GapsArgs;
pub use layers::{LayerArgs, Loaded, Origin};
pub use run::{PipelineConfig, RunConfig, SinkConfig, validate};
pub use s3::{KeyAlgorithmArg, KeygenArgs, S3Args, ValidateArgs};
pub(crate) use s3::{SseArg, vcap_s3};
pub use sink_files::{SinkFiles, SinkSettings, TlsFiles, build_pipeline};
pub use sinks::{HttpArgs, SyslogArgs};
pub use source::{
    EndpointSettings, GatewaySettings, RlpSettings, RlpTlsFiles, SourceArgs, SourceKind,
    SourceSettings,
};
pub use tail::TailArgs;
pub use telemetry::TelemetryArgs;

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
    /// Write a new digest signing key pair: DIR/signing-key.pem and DIR/public-key.pem.
    Keygen(KeygenArgs),
    /// Check an archive's digest chain and log files (S3 bucket or --dir); exit 1 if anything is invalid.
    Validate(Box<ValidateArgs>),
    /// Find missing and duplicate records by their numbers (boot, kind, seq) in an archive (--dir or S3 bucket) or a SIEM's JSON-lines export (--jsonl); exit 1 if any is missing.
    Gaps(Box<GapsArgs>),
    /// Check the configuration: `config check` takes run's flags and environment.
    Config(ConfigArgs),
    /// Show the firehose live, filtered, as human lines or JSON (run's source options; a shard id of its own).
    Tail(Box<TailArgs>),
}

/// The command names, for making `run` the default.
/// 64 MiB of estimated record bytes in all sink queues together: under an
/// overload that fills every queue, the nozzle stays within about 200 MB
/// (docs/sizing.md), a fifth of the manifest's `memory`.
pub(crate) const DEFAULT_QUEUE_MAX_BYTES: u64 = 64 * 1024 * 1024;

pub(crate) const COMMANDS: [&str; 9] = [
    "run", "demo", "emulator", "keygen", "validate", "gaps", "config", "tail", "help",
];

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (each option, its value and where it came from; secrets masked) and check it like `run` does; exit 2 listing every problem.
    Check(Box<RunArgs>),
    /// Print docs/configuration.md, generated from the option definitions.
    #[command(hide = true)]
    Docs,
    /// Write the BOSH job's generated files (spec, config template, PEM templates) into DIR.
    #[command(hide = true)]
    BoshJob { dir: std::path::PathBuf },
}

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
    /// CloudTrail-style gzip objects in an S3 bucket (--s3-bucket), signed digests with --signing-key.
    S3,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Reverse Log Proxy address, host:port (e.g. reverse-log-proxy.service.cf.internal:8082).
    #[arg(long, env = "RLP_ADDR")]
    pub rlp_addr: Option<String>,
    /// CA certificate (PEM) that signed the RLP's certificate (Loggregator's CA).
    #[arg(long, env = "RLP_CA")]
    pub(crate) rlp_ca: Option<PathBuf>,
    /// Client certificate (PEM) signed by Loggregator's CA.
    #[arg(long, env = "RLP_CERT")]
    pub(crate) rlp_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "RLP_KEY")]
    pub(crate) rlp_key: Option<PathBuf>,
    /// Name the RLP's certificate must carry.
    #[arg(long, env = "RLP_SERVER_NAME", default_value = "reverselogproxy")]
    pub(crate) rlp_server_name: String,
    /// Seconds without any envelope after which an open RLP stream is replaced (the firehose is never silent that long); 0 never. Raise it for a narrow --source-ids selection.
    #[arg(long, env = "RLP_IDLE_TIMEOUT", default_value_t = 30)]
    pub(crate) rlp_idle_timeout: u64,
    /// Subscription id shared by every instance of this nozzle: Loggregator splits the stream between them (another id gets its own full copy).
    #[arg(long, env = "SHARD_ID", default_value = "cf-audit-nozzle")]
    pub shard_id: String,
    #[command(flatten)]
    pub input: SourceArgs,
    #[command(flatten)]
    pub cf: CfArgs,
    #[command(flatten)]
    pub audit: AuditArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub syslog_in: syslog_in::SyslogInArgs,
    #[command(flatten)]
    pub correlate: correlate::CorrelateArgs,
    /// Seconds to drain queues and complete files after SIGTERM/Ctrl-C before exiting anyway.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value_t = 8)]
    pub shutdown_timeout: u64,
    /// Write the final account (records per kind, delivered, dropped, files) as JSON to this file at exit.
    #[arg(long, env = "SUMMARY_FILE")]
    pub summary_file: Option<PathBuf>,
    /// Benchmark only: receive and decode, deliver nothing.
    #[arg(long, env = "DECODE_ONLY", hide = true)]
    pub decode_only: bool,
    #[command(flatten)]
    pub layers: LayerArgs,
    #[command(flatten)]
    pub log: crate::logging::LogArgs,
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
    /// Add to every envelope record a protojson copy of its envelope (`envelope`, Loggregator's exact form), as records had before; off, every fact of the envelope appears once, as a readable field or under `tags`.
    #[arg(long, env = "RECORD_ENVELOPE", value_enum, default_value = "off")]
    pub record_envelope: OnOff,
    /// Schema of the records: native (ours), ocsf (OCSF 1.3.0), ecs (Elastic Common Schema 9.4.0) or cim (Splunk CIM: API records as Change/Authentication); SINK=SCHEMA sets one sink's (stdout, file, syslog, http, s3), e.g. `ocsf,http=cim` (docs/schemas.md).
    #[arg(long, env = "RECORD_SCHEMA", value_delimiter = ',', value_parser = parse_record_schema, default_value = "native")]
    pub record_schema: Vec<(Option<String>, crate::record::RecordSchema)>,
    /// This instance's index, in file names so instances never overwrite each other.
    #[arg(long, env = "INSTANCE_INDEX", default_value_t = 0)]
    pub instance_index: u32,
    /// Records each sink's queue holds; beyond it the newest are dropped and counted.
    #[arg(long, env = "QUEUE_CAPACITY", default_value_t = 100_000)]
    pub queue_capacity: usize,
    /// Estimated bytes of records all sink queues hold together, shared
    /// evenly by the sinks (each queue is bounded by this share and by
    /// --queue-capacity, whichever is reached first; beyond it the newest are
    /// dropped and counted as queue_full). Bounds memory under overload: the
    /// default keeps the nozzle within about 200 MB.
    #[arg(long, env = "QUEUE_MAX_BYTES", default_value_t = DEFAULT_QUEUE_MAX_BYTES)]
    pub queue_max_bytes: u64,
    /// Records per batch a sink writes at once (default 1000, and 4000 for the http sink, which encodes a batch in parallel and sends it as several requests).
    #[arg(long, env = "BATCH_MAX_RECORDS")]
    pub(crate) batch_max_records: Option<usize>,
    /// Estimated bytes of records a sink writes at once (the batch closes at
    /// whichever of count, bytes and age comes first).
    #[arg(long, env = "BATCH_MAX_BYTES", default_value_t = crate::sink::DEFAULT_BATCH_MAX_BYTES)]
    pub(crate) batch_max_bytes: usize,
    /// Milliseconds a record waits at most for its batch to fill.
    #[arg(long, env = "BATCH_MAX_AGE_MS", default_value_t = 500)]
    pub(crate) batch_max_age_ms: u64,
    /// gzip level of the file sink, 0 (none) to 9 (smallest).
    #[arg(long, env = "GZIP_LEVEL", default_value_t = DEFAULT_GZIP_LEVEL)]
    pub gzip_level: u32,
    /// Folder for batches a receiver rejected (e.g. HEC "invalid data format"), kept with the reason.
    #[arg(long, env = "DEAD_LETTER_DIR", default_value = "dead-letter")]
    pub(crate) dead_letter_dir: PathBuf,
    #[command(flatten)]
    pub syslog: SyslogArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub buffer: buffer::BufferArgs,
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
    /// Add the protojson copy of each envelope to its record, as `run --record-envelope on` does.
    #[arg(long, env = "RECORD_ENVELOPE", value_enum, default_value = "off")]
    pub record_envelope: OnOff,
}

#[derive(Debug, Args)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: std::net::SocketAddr,
    /// Folder to write ca.pem, client.pem and client-key.pem into, for the nozzle.
    #[arg(long, env = "EMULATOR_TLS_DIR", default_value = "emulator-tls")]
    pub(crate) tls_dir: PathBuf,
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
    /// Also serve an RLP Gateway (SSE over plain HTTP, with a UAA token endpoint and a CF API root) on this address.
    #[arg(long, env = "EMULATOR_GATEWAY_LISTEN")]
    pub(crate) gateway_listen: Option<std::net::SocketAddr>,
    /// Seconds after which the emulated gateway ends each stream with `event: closing` (14 minutes on a real one).
    #[arg(long, env = "EMULATOR_GATEWAY_STREAM_TIMEOUT", default_value_t = 840)]
    pub(crate) gateway_stream_timeout: u64,
}

impl EmulatorArgs {
    /// What the emulator serves.
    pub fn serve_config(&self) -> crate::source::emulator::serve::ServeConfig {
        crate::source::emulator::serve::ServeConfig {
            listen: self.listen,
            tls_dir: self.tls_dir.clone(),
            rate: (self.rate > 0).then_some(self.rate),
            count: (self.count > 0).then_some(self.count),
            seed: self.seed,
            fresh: self.fresh,
            gateway_listen: self.gateway_listen,
            gateway_stream_timeout: Duration::from_secs(self.gateway_stream_timeout.max(1)),
        }
    }
}

/// Every problem found in a configuration, one per line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<String>);

impl OutputArgs {
    /// How every sink writes records.
    fn encode_context(&self) -> EncodeContext {
        let mut ctx = EncodeContext::new(self.foundation.clone());
        ctx.record_envelope = self.record_envelope == OnOff::On;
        let mut per_sink = Vec::new();
        for (sink, schema) in &self.record_schema {
            match sink {
                Some(name) => per_sink.push((name.clone(), *schema)),
                None => ctx.schema = *schema,
            }
        }
        ctx.sink_schemas = per_sink.into();
        ctx
    }

    /// The pipeline these options describe, its files read, plus any
    /// problems in them (`env` for an S3 binding in `VCAP_SERVICES`).
    pub fn pipeline(
        &self,
        errors: &mut Vec<String>,
        decode_only: bool,
        env: &dyn Env,
    ) -> PipelineConfig {
        let validated = self.pipeline_settings(errors, decode_only, env);
        sink_files::build_pipeline(&validated, errors)
    }

    /// The sinks `--sink` names, each once; naming one twice, or none, is a
    /// problem.
    fn sink_kinds(&self, errors: &mut Vec<String>) -> Vec<SinkKind> {
        let mut kinds: Vec<SinkKind> = Vec::new();
        for kind in &self.sink {
            if kinds.contains(kind) {
                // Two sinks of one kind would write every record twice to
                // the same place (and race for the same file names).
                let name = kind.to_possible_value().map(|v| v.get_name().to_string());
                let message = format!(
                    "--sink (SINK) names {} more than once: list each sink once",
                    name.unwrap_or_default()
                );
                if !errors.contains(&message) {
                    errors.push(message);
                }
            } else {
                kinds.push(*kind);
            }
        }
        if kinds.is_empty() {
            errors.push(
                "--sink (SINK) must name at least one sink: stdout, file, syslog, http or s3"
                    .into(),
            );
        }
        kinds
    }

    /// The pipeline as validated: each sink with the files it reads at
    /// build ([`sink_files::build_pipeline`]), plus any problems.
    pub(crate) fn pipeline_settings(
        &self,
        errors: &mut Vec<String>,
        decode_only: bool,
        env: &dyn Env,
    ) -> PipelineConfig<SinkSettings> {
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
        if self.queue_max_bytes < 1024 * 1024 {
            errors.push(format!(
                "--queue-max-bytes (QUEUE_MAX_BYTES) must be at least 1 MiB (1048576), not {}",
                self.queue_max_bytes
            ));
        }
        if self.batch_max_records == Some(0) {
            errors.push("--batch-max-records (BATCH_MAX_RECORDS) must be at least 1".into());
        }
        if self.batch_max_bytes < 1024 {
            errors.push(format!(
                "--batch-max-bytes (BATCH_MAX_BYTES) must be at least 1024, not {}",
                self.batch_max_bytes
            ));
        }
        if self.foundation.is_empty() || self.foundation.contains(['/', '\\']) {
            errors.push(format!(
                "--foundation (FOUNDATION) must be a non-empty name without slashes, not {:?}",
                self.foundation
            ));
        }
        let kinds = self.sink_kinds(errors);
        let mut sinks = Vec::new();
        for kind in kinds {
            let (config, files) = match kind {
                SinkKind::Stdout => (SinkConfig::Stdout, SinkFiles::None),
                // With a signing key, the file sink is the object writer's
                // local-folder backend, which feeds the digest chain.
                SinkKind::File if self.s3.signing_key.is_some() => self.object_sink(
                    crate::sink::archive::Target::Dir(self.out_dir.clone()),
                    errors,
                ),
                SinkKind::S3 => match self.s3.s3_settings(
                    env.var("VCAP_SERVICES").as_deref(),
                    env.var("AWS_SESSION_TOKEN").as_deref(),
                    errors,
                ) {
                    Some(s3) => self.object_sink(crate::sink::archive::Target::S3(s3), errors),
                    None => continue,
                },
                SinkKind::File => (
                    SinkConfig::File(FileSinkConfig {
                        dir: self.out_dir.clone(),
                        instance_index: self.instance_index,
                        roll_interval: Duration::from_secs(self.roll_interval),
                        gzip_level: self.gzip_level,
                    }),
                    SinkFiles::None,
                ),
                SinkKind::Syslog => match self.syslog.config(errors) {
                    Some(cfg) => (
                        SinkConfig::Syslog(cfg),
                        self.syslog
                            .tls_files()
                            .map_or(SinkFiles::None, SinkFiles::Tls),
                    ),
                    None => continue,
                },
                SinkKind::Http => match self.http.config(errors) {
                    Some(cfg) => (
                        SinkConfig::Http(Box::new(cfg)),
                        SinkFiles::Tls(self.http.tls_files()),
                    ),
                    None => continue,
                },
            };
            sinks.push((SinkSettings { config, files }, Kind::ALL.to_vec()));
        }
        PipelineConfig {
            sinks,
            queue_capacity: self.queue_capacity,
            queue_max_bytes: self.queue_max_bytes,
            batch: BatchConfig {
                max_records: self.batch_max_records,
                max_bytes: self.batch_max_bytes,
                max_age: Duration::from_millis(self.batch_max_age_ms),
                dead_letter: Some(crate::sink::DeadLetter {
                    dir: self.dead_letter_dir.clone(),
                    encode: self.encode_context(),
                }),
                ..BatchConfig::default()
            },
            encode: self.encode_context(),
            decode_only,
            buffer: self.buffer.config(errors),
            instance_index: self.instance_index,
        }
    }
}

impl OutputArgs {
    /// An object sink (S3, or the signed local folder) writing to `target`,
    /// and the files it reads at build.
    fn object_sink(
        &self,
        target: crate::sink::archive::Target,
        errors: &mut Vec<String>,
    ) -> (SinkConfig, SinkFiles) {
        let s3 = matches!(target, crate::sink::archive::Target::S3(_));
        let roll = self.s3.roll(
            self.roll_interval,
            self.instance_index,
            self.gzip_level,
            errors,
        );
        let files = self.s3.files(s3, errors);
        let config = SinkConfig::Object(Box::new(crate::sink::archive::ObjectSinkConfig {
            target,
            roll,
            // Made at build, from `--signing-key`.
            digest: None,
            notify_url: self.s3.notify_url(errors).map(Into::into),
        }));
        (config, files)
    }

    /// The files the sinks `--sink` names read at build, for
    /// `config check` when the values are invalid.
    pub(crate) fn sink_files(&self) -> Vec<SinkFiles> {
        let mut kinds: Vec<SinkKind> = Vec::new();
        for kind in &self.sink {
            if !kinds.contains(kind) {
                kinds.push(*kind);
            }
        }
        kinds
            .into_iter()
            .map(|kind| match kind {
                SinkKind::Stdout => SinkFiles::None,
                SinkKind::File if self.s3.signing_key.is_none() => SinkFiles::None,
                SinkKind::File | SinkKind::S3 => {
                    self.s3.files(kind == SinkKind::S3, &mut Vec::new())
                }
                SinkKind::Syslog => self
                    .syslog
                    .tls_files()
                    .map_or(SinkFiles::None, SinkFiles::Tls),
                SinkKind::Http => SinkFiles::Tls(self.http.tls_files()),
            })
            .collect()
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

/// `--record-schema`'s values: `SCHEMA` for every sink, `SINK=SCHEMA` for one.
fn parse_record_schema(
    text: &str,
) -> Result<(Option<String>, crate::record::RecordSchema), String> {
    let (sink, schema) = match text.split_once('=') {
        Some((sink, schema)) => (Some(sink.trim()), schema.trim()),
        None => (None, text.trim()),
    };
    if let Some(name) = sink {
        let known = ["stdout", "file", "syslog", "http", "s3"];
        if !known.contains(&name) {
            return Err(format!(
                "unknown sink {name:?} in {text:?} (expected one of {})",
                known.join(", ")
            ));
        }
    }
    let schema = schema.parse::<crate::record::RecordSchema>()?;
    Ok((sink.map(str::to_string), schema))
}

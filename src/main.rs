//! The `cf-audit-nozzle` command: parses the command line and dispatches.

// `deny`, not `forbid`: `tune_allocator` alone allows it, with its proof.
#![deny(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use std::io::Write;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use cf_audit_nozzle::config::{
    Cli, Command, ConfigCommand, DEFAULT_GZIP_LEVEL, Env, Loaded, ProcessEnv, SinkKind, check,
    reference, with_default_command,
};
use cf_audit_nozzle::gaps::gaps_args;
use cf_audit_nozzle::logging::{self, LogFormat};
use cf_audit_nozzle::source::emulator::serve::serve;
use cf_audit_nozzle::validate::validate_args;
use cf_audit_nozzle::{demo, run};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `purge_delay` option (its index in mimalloc 3's `mi_option_t`).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc 3's default for it, in milliseconds.
const MIMALLOC3_PURGE_DELAY_MS: std::ffi::c_long = 1000;
/// Ours.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

/// Returns memory mimalloc has freed to the OS after 100 ms instead of 1 s.
///
/// Every batch received lives in buffers allocated on the source's thread
/// (tonic's receive buffer, the batch's strings, each envelope's tags) and
/// freed on the sinks' threads once every sink has written it: well over
/// 100 MB/s at 200,000 envelopes/s. mimalloc 3 keeps freed pages for a
/// second before it purges them, and in that second the source takes fresh
/// ones, so RSS climbed by 40-70 MB every second and fell back. Copying
/// batches into a pool of reused buffers did not change that (the other
/// allocations churn too); purging sooner did.
///
/// The `full` benchmark at a fixed 190,000/s, four alternating runs each:
///
/// | purge delay | peak RSS (MB)       | CPU-s per million envelopes |
/// |-------------|---------------------|-----------------------------|
/// | 1 s         | 165, 168, 171, 204  | 7.25, 7.62, 7.81, 8.91      |
/// | 100 ms      | 115, 121, 127, 141  | 7.84, 7.96, 8.03, 9.27      |
/// | 10 ms       | 110, 114, 120, 124  | 8.26, 8.37, 8.77, 8.98      |
///
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: both functions take an option index and read or write that
    // option's entry in mimalloc's table (an index out of its range is
    // ignored, and reads as 0). The setter writes the entry without
    // synchronisation, so it must not race the allocator reading it on
    // another thread: this is the first thing `main` does, before this
    // program starts any thread (neither it nor its libraries run code
    // before `main`). The index is checked by its value: mimalloc 3's
    // default purge_delay is 1000, so index 15 meaning another option (in
    // another mimalloc) leaves it alone.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == MIMALLOC3_PURGE_DELAY_MS {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

/// Writes to standard output; a closed pipe (`config check | head -1`) is
/// an error like any other (exit 2), not a panic.
macro_rules! out {
    ($($arg:tt)*) => {
        write_stdout(&format!($($arg)*))?
    };
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_stdout(&format!("{}\n", format!($($arg)*)))?
    };
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to standard output")
}

fn main() -> ExitCode {
    tune_allocator();
    match start() {
        Ok(code) => code,
        Err(e) => {
            // The chain in one message, without a backtrace: these are operator errors.
            // Not eprintln!: with `2>&1 | head`, stderr is a closed pipe too.
            let _ = writeln!(std::io::stderr(), "cf-audit-nozzle: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn start() -> anyhow::Result<ExitCode> {
    let (loaded, out_dir_from_cargo) = parse_cli();
    // `run` logs to stdout (as --log-format says) unless stdout carries the
    // records; the other commands print for a person, so they log text to stderr.
    let (format, to_stdout) = match &loaded.cli.command {
        Command::Run(args) => (
            args.log.log_format,
            !args.output.sink.contains(&SinkKind::Stdout),
        ),
        _ => (LogFormat::Text, false),
    };
    logging::init(format, to_stdout);
    if out_dir_from_cargo {
        tracing::warn!(
            "OUT_DIR was set by `cargo run`, not by you: ignoring it; the file sink writes to ./nozzle-out (use --out-dir)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(dispatch(loaded))
}

/// Parses the command line with the configuration layers (platform,
/// VCAP_SERVICES, --config file; see `config::layers`). `cargo run` exports
/// its own `OUT_DIR` (the build script's folder) to the program, which would
/// silently redirect the file sink's `OUT_DIR`; when `OUT_DIR` came from the
/// environment under cargo, the default is used instead (and the bool says
/// so, for a warning).
fn parse_cli() -> (Loaded, bool) {
    use clap::CommandFactory;
    use clap::parser::ValueSource;
    let cmd = with_every_option_in_help(Cli::command());
    let argv = with_default_command(std::env::args_os().collect());
    let mut loaded =
        cf_audit_nozzle::config::layers::load(cmd.clone(), argv.clone(), &|k| ProcessEnv.var(k))
            .unwrap_or_else(|e| {
                if !e.use_stderr() {
                    // --help, --version: clap prints them (a closed pipe is not an error).
                    e.exit();
                }
                // A pasted key or a token must not come back in the message.
                let text = cf_audit_nozzle::config::layers::masked_clap_error(&e, &cmd, &argv);
                let _ = std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes());
                std::process::exit(2);
            });
    let mut out_dir_from_cargo = false;
    if let (Command::Run(args), Some(("run", sub))) =
        (&mut loaded.cli.command, loaded.matches.subcommand())
        && sub.value_source("out_dir") == Some(ValueSource::EnvVariable)
        && std::env::var_os("CARGO_MANIFEST_DIR").is_some()
    {
        args.output.out_dir = "nozzle-out".into();
        out_dir_from_cargo = true;
    }
    (loaded, out_dir_from_cargo)
}

/// The top-level `--help` lists every command's options (with their
/// environment variables), not only the command names.
fn with_every_option_in_help(cmd: clap::Command) -> clap::Command {
    let mut text = String::new();
    for sub in ["run", "demo", "emulator"] {
        // Rendered from a copy: rendering builds a command, and the
        // configuration layers must still be able to change the defaults of
        // an unbuilt one (a built command's argument index goes stale).
        if let Some(mut sub) = cmd.find_subcommand(sub).cloned() {
            let name = sub.get_name().to_string();
            text.push_str(&format!("\n`{name}` options:\n"));
            let help = sub.render_help().to_string();
            let options = help
                .split_once("Options:")
                .map_or(help.as_str(), |(_, o)| o);
            text.push_str(options.trim_end());
            text.push('\n');
        }
    }
    cmd.after_help(text)
}

async fn dispatch(loaded: Loaded) -> anyhow::Result<ExitCode> {
    if let Command::Config(config) = &loaded.cli.command {
        return config_command(&config.command, &loaded)
            .await
            .map(|()| ExitCode::SUCCESS);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match loaded.cli.command {
        Command::Config(_) => unreachable!("handled above"),
        Command::Tail(args) => {
            let mut errors = loaded.errors.clone();
            let filter = cf_audit_nozzle::tail::TailFilter::from_args(&args, &mut errors);
            let cfg = check::validated(&args.run, &ProcessEnv, &errors)?;
            let shown =
                cf_audit_nozzle::tail::run(cfg, filter, args.json, std::io::stdout(), shutdown)
                    .await;
            let _ = writeln!(std::io::stderr(), "tail: {shown} records shown");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let cfg = check::validated(&args, &ProcessEnv, &loaded.errors)?;
            let summary = run::run(cfg, shutdown).await?;
            let json = serde_json::to_string(&summary)?;
            tracing::info!(summary = %json, "stopped");
            if let Some(path) = &args.summary_file {
                std::fs::write(path, &json)
                    .with_context(|| format!("writing --summary-file {}", path.display()))?;
            }
            if !summary.complete {
                // Invariant 4: records lost with the process make the exit
                // status 1 (2 stays for errors that stopped the run).
                let sinks: Vec<String> = summary
                    .sinks
                    .iter()
                    .filter_map(|s| {
                        let n = s.not_delivered.as_ref()?;
                        Some(format!("{} {} ({})", s.stats.name, n.records, n.reason))
                    })
                    .collect();
                let _ = writeln!(
                    std::io::stderr(),
                    "cf-audit-nozzle: {} records not delivered: {}",
                    summary.not_delivered,
                    sinks.join("; ")
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            let report = demo::run(
                demo::DemoConfig {
                    duration: Duration::from_secs(args.duration),
                    rate: args.rate,
                    out_dir: args.out_dir,
                    roll_interval: Duration::from_secs(args.roll_interval.max(1)),
                    gzip_level: DEFAULT_GZIP_LEVEL,
                    record_envelope: args.record_envelope == cf_audit_nozzle::config::OnOff::On,
                },
                shutdown,
            )
            .await?;
            outln!("{}", demo::render(&report));
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen(args) => {
            let public = cf_audit_nozzle::integrity::keygen(&args.out, args.algorithm())?;
            outln!(
                "wrote {dir}/signing-key.pem ({alg}, readable by you only) and {dir}/public-key.pem; fingerprint {fp}",
                dir = args.out.display(),
                alg = public.algorithm().as_str(),
                fp = public.fingerprint()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate(args) => {
            let report = validate_args(&args, &ProcessEnv).await?;
            if args.json {
                outln!("{}", report.to_json());
            } else {
                out!("{}", report.render());
            }
            if !report.ok() {
                // validate-logs' convention: 1 when anything is invalid (2 is an error).
                std::process::exit(1);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gaps(args) => {
            let report = gaps_args(&args, &ProcessEnv).await?;
            if args.json {
                out!("{}", report.to_json());
            } else {
                out!("{}", report.render());
            }
            if report.groups.is_empty() {
                tracing::warn!(source = %report.source, "no records found");
            }
            if !report.complete() {
                // Like validate: 1 when a record is missing (2 is an error).
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Emulator(args) => {
            let mut stdout = std::io::stdout();
            serve(args.serve_config(), &mut stdout, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `config check`, `config docs` and `config bosh-job`.
async fn config_command(command: &ConfigCommand, loaded: &Loaded) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Docs => {
            use clap::CommandFactory;
            out!("{}", reference::configuration_md(&Cli::command()));
            Ok(())
        }
        ConfigCommand::BoshJob { dir } => {
            use clap::CommandFactory;
            for (path, text) in cf_audit_nozzle::config::bosh::job_files(&Cli::command()) {
                let path = dir.join(path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, text)?;
            }
            Ok(())
        }
        ConfigCommand::Check(args) => {
            out!("{}", check::render_effective(loaded));
            let cfg = check::validated(args, &ProcessEnv, &loaded.errors)?;
            // What the S3 bucket says about Object Lock, when it is asked for.
            let buckets = check::bucket_checks(&cfg).await;
            for note in &buckets.notes {
                outln!("{note}");
            }
            for w in cfg.warnings.iter().chain(&buckets.warnings) {
                outln!("warning: {w}");
            }
            if !buckets.errors.is_empty() {
                return Err(cf_audit_nozzle::config::ConfigErrors(buckets.errors).into());
            }
            outln!("configuration is valid");
            Ok(())
        }
    }
}

/// Cancels `shutdown` on SIGTERM (how Cloud Foundry stops an app) or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the nozzle cleanly");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}

//! Where option values come from besides the command line and the
//! environment: the platform (`VCAP_APPLICATION`, `CF_INSTANCE_INDEX`,
//! `PORT`), a user-provided service in `VCAP_SERVICES`, and an optional TOML
//! file. Part of [`crate::config`].
//!
//! clap stays the one definition of every option. The layers only supply
//! *default values*: each value found is checked with the option's own value
//! parser and set as the option's default, so clap's order (flag, then
//! environment variable, then default) gives the precedence
//!
//! ```text
//! flags > environment > platform > VCAP_SERVICES service > --config file > built-in defaults
//! ```
//!
//! A key in the file or the service is an option's long flag (`shard-id`),
//! the same with underscores (`shard_id`), or its environment variable
//! (`SHARD_ID`); any other key is an error naming it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgMatches, Args, FromArgMatches};

use super::Cli;

mod parse_errors;
mod sources;

pub use parse_errors::masked_clap_error;
use parse_errors::set_aside_parser_errors;
use sources::{file_layer, platform_layer, service_layer};

/// The user-provided service whose credentials are read as options, unless
/// `--config-service` names another.
pub(crate) const DEFAULT_SERVICE: &str = "cf-audit-nozzle-secrets";

/// The commands that take `run`'s options, as clap subcommand paths.
const RUN_LIKE: [&[&str]; 3] = [&["run"], &["config", "check"], &["tail"]];

#[derive(Debug, Args)]
pub struct LayerArgs {
    /// TOML file of options (keys: the long flags or environment variables
    /// listed here); flags, environment variables and VCAP_SERVICES override it.
    #[arg(long, env = "CONFIG")]
    pub config: Option<PathBuf>,
    /// Name of the user-provided service in VCAP_SERVICES whose credentials
    /// are options (secrets: UAA client secret, HEC token, S3 keys, signing key).
    #[arg(long, env = "CONFIG_SERVICE", default_value = DEFAULT_SERVICE)]
    pub(crate) config_service: String,
}

/// Where an option's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env(String),
    /// Set by Cloud Foundry in the container (`VCAP_APPLICATION`, `CF_INSTANCE_INDEX`, `PORT`).
    Platform(&'static str),
    /// A user-provided service's credentials in `VCAP_SERVICES`.
    Service(String),
    File(PathBuf),
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag => f.write_str("flag"),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Platform(name) => write!(f, "platform {name}"),
            Origin::Service(name) => write!(f, "VCAP_SERVICES service {name}"),
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// The parsed command line with the layers applied.
#[derive(Debug)]
pub struct Loaded {
    pub cli: Cli,
    /// The matches of the whole command line (the subcommand's are inside).
    pub matches: ArgMatches,
    /// The clap command the matches came from (with the layered defaults).
    pub command: clap::Command,
    /// The subcommand path when it takes `run`'s options (`["config", "check"]`).
    pub path: Vec<&'static str>,
    /// The run-like subcommand's option ids in definition order (setting a
    /// default moves an option to the end of clap's list).
    pub order: Vec<String>,
    /// Options whose default came from a layer, by clap id.
    pub(crate) layered: BTreeMap<String, Origin>,
    /// Problems in the layers (unknown keys, unreadable file, bad values),
    /// each naming where it was; reported with the validation errors.
    pub errors: Vec<String>,
}

impl Loaded {
    /// The matches of the run-like subcommand, if that is what was given.
    pub(crate) fn sub_matches(&self) -> Option<&ArgMatches> {
        let mut m = &self.matches;
        if self.path.is_empty() {
            return None;
        }
        for name in &self.path {
            m = m.subcommand_matches(name)?;
        }
        Some(m)
    }

    /// The run-like subcommand's definition.
    pub(crate) fn sub_command(&self) -> Option<&clap::Command> {
        if self.path.is_empty() {
            return None;
        }
        let mut c = &self.command;
        for name in &self.path {
            c = c.find_subcommand(name)?;
        }
        Some(c)
    }

    /// Where the option `id` of the run-like subcommand got its value;
    /// `None` when it has none.
    pub fn origin(&self, id: &str) -> Option<Origin> {
        use clap::parser::ValueSource;
        let m = self.sub_matches()?;
        match m.value_source(id)? {
            ValueSource::CommandLine => Some(Origin::Flag),
            ValueSource::EnvVariable => {
                let env = self
                    .sub_command()?
                    .get_arguments()
                    .find(|a| a.get_id() == id)?
                    .get_env()?
                    .to_string_lossy()
                    .into_owned();
                Some(Origin::Env(env))
            }
            _ => Some(self.layered.get(id).cloned().unwrap_or(Origin::Default)),
        }
    }
}

/// One value found in a layer, before it is checked.
struct Found {
    key: String,
    values: Vec<String>,
    origin: Origin,
}

/// Parses `argv` with `cmd` (clap's `Cli` command), reading the layers from
/// `env` (the process environment in `main`; a map in tests) and the file
/// `--config` names. A clap error (unknown flag, bad flag value) is
/// returned as it is; problems in the layers are in [`Loaded::errors`].
pub fn load(
    cmd: clap::Command,
    argv: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, clap::Error> {
    // A run-like command's parser errors are collected like every other
    // problem (the offending argument set aside, parsing tried again), so
    // `config check` lists them all at once.
    let (cmd, argv, parse_errors) = match run_like_argv_path(&argv) {
        Some(path) => set_aside_parser_errors(cmd, path, argv)?,
        None => (cmd, argv, Vec::new()),
    };
    let first = cmd.clone().try_get_matches_from(&argv)?;
    let Some(path) = run_like_path(&first) else {
        let cli = Cli::from_arg_matches(&first)?;
        return Ok(Loaded {
            cli,
            matches: first,
            command: cmd,
            path: Vec::new(),
            order: Vec::new(),
            layered: BTreeMap::new(),
            errors: Vec::new(),
        });
    };
    let mut sub = &first;
    for name in path {
        sub = sub.subcommand_matches(name).expect("path of the matches");
    }
    let mut errors = parse_errors;
    // Lowest priority first: a later layer's value replaces an earlier one's.
    let mut found = Vec::new();
    if let Some(file) = sub.get_one::<PathBuf>("config") {
        found.extend(file_layer(file, &mut errors));
    }
    let service = sub
        .get_one::<String>("config_service")
        .cloned()
        .unwrap_or_else(|| DEFAULT_SERVICE.to_string());
    let service_named = !matches!(
        sub.value_source("config_service"),
        Some(clap::parser::ValueSource::DefaultValue)
    );
    found.extend(service_layer(
        env("VCAP_SERVICES").as_deref(),
        &service,
        service_named,
        &mut errors,
    ));
    found.extend(platform_layer(env, &mut errors));

    let sub_cmd = find_path(&cmd, path);
    let mut defaults: BTreeMap<String, (Vec<String>, Origin)> = BTreeMap::new();
    for f in found {
        let Some(arg) = option_for_key(sub_cmd, &f.key) else {
            errors.push(format!(
                "{}: unknown option {:?} (keys are the long flags or environment variables of `cf-audit-nozzle run --help`)",
                f.origin, f.key
            ));
            continue;
        };
        let id = arg.get_id().as_str().to_string();
        if id == "config" || id == "config_service" {
            errors.push(format!(
                "{}: {:?} cannot be set here, only as a flag or environment variable",
                f.origin, f.key
            ));
            continue;
        }
        match checked_values(arg, &f) {
            Ok(values) => {
                defaults.insert(id, (values, f.origin));
            }
            Err(e) => errors.push(e),
        }
    }

    let order = sub_cmd
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    let cmd = with_defaults(cmd, path, &defaults);
    let matches = cmd.clone().try_get_matches_from(&argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Loaded {
        cli,
        matches,
        command: cmd,
        path: path.to_vec(),
        order,
        layered: defaults.into_iter().map(|(id, (_, o))| (id, o)).collect(),
        errors,
    })
}

/// The run-like path `argv` names (after `with_default_command`), read
/// from the words themselves because the parse may fail.
fn run_like_argv_path(argv: &[OsString]) -> Option<&'static [&'static str]> {
    RUN_LIKE.into_iter().find(|path| {
        path.iter()
            .enumerate()
            .all(|(i, name)| argv.get(i + 1).and_then(|a| a.to_str()) == Some(*name))
    })
}

fn run_like_path(m: &ArgMatches) -> Option<&'static [&'static str]> {
    RUN_LIKE.into_iter().find(|path| {
        let mut m = m;
        for name in path.iter() {
            match m.subcommand() {
                Some((n, sub)) if n == *name => m = sub,
                _ => return false,
            }
        }
        true
    })
}

fn find_path<'a>(cmd: &'a clap::Command, path: &[&str]) -> &'a clap::Command {
    path.iter().fold(cmd, |c, name| {
        c.find_subcommand(name).expect("run-like path exists")
    })
}

/// Sets the layered values as the defaults of the options on `path`.
/// Secrets get `hide_default_value`, so `--help` never shows them.
fn with_defaults(
    cmd: clap::Command,
    path: &[&str],
    defaults: &BTreeMap<String, (Vec<String>, Origin)>,
) -> clap::Command {
    match path.split_first() {
        None => {
            let mut cmd = cmd;
            for (id, (values, _)) in defaults {
                let values = values.clone();
                cmd = cmd.mut_arg(id.as_str(), move |a| {
                    let secret = is_secret(&a);
                    a.default_values(values).hide_default_value(secret)
                });
            }
            cmd
        }
        Some((name, rest)) => cmd.mut_subcommand(*name, |sub| with_defaults(sub, rest, defaults)),
    }
}

/// Options whose values are secrets: those whose environment values clap
/// hides. Shown masked by `config check`, never echoed in an error.
pub fn is_secret(arg: &clap::Arg) -> bool {
    arg.is_hide_env_values_set()
}

/// The option a layer key names, if any.
pub fn option_for_key<'a>(cmd: &'a clap::Command, key: &str) -> Option<&'a clap::Arg> {
    let flag = key.to_ascii_lowercase().replace('_', "-");
    cmd.get_arguments().find(|a| {
        a.get_long() == Some(flag.as_str()) || a.get_env().is_some_and(|e| e.to_str() == Some(key))
    })
}

/// The values of `f` for `arg`, each checked with the option's parser.
fn checked_values(arg: &clap::Arg, f: &Found) -> Result<Vec<String>, String> {
    let multiple = matches!(arg.get_action(), clap::ArgAction::Append);
    let delimiter = arg.get_value_delimiter();
    let values: Vec<String> = match (f.values.as_slice(), delimiter) {
        // A string in a list option is split the way its environment variable is.
        ([one], Some(d)) => one.split(d).map(str::to_string).collect(),
        _ => f.values.clone(),
    };
    let name = format!("{}: {:?}", f.origin, f.key);
    if values.len() != 1 && !multiple && delimiter.is_none() {
        return Err(format!("{name} takes one value, not a list"));
    }
    for v in &values {
        if let Err(e) = check_value(arg, v) {
            let why = if is_secret(arg) {
                "invalid value (not shown: it is a secret)".to_string()
            } else {
                clap_error_text(&e)
            };
            return Err(format!("{name}: {why}"));
        }
    }
    Ok(values)
}

/// Parses `value` with the option's own parser, in a command of its own
/// (so no other option and no environment variable takes part).
fn check_value(arg: &clap::Arg, value: &str) -> Result<(), clap::Error> {
    if matches!(
        arg.get_action(),
        clap::ArgAction::SetTrue | clap::ArgAction::SetFalse
    ) {
        return match value {
            "true" | "false" => Ok(()),
            _ => Err(clap::Error::raw(
                clap::error::ErrorKind::InvalidValue,
                format!("invalid value {value:?}: expected true or false\n"),
            )),
        };
    }
    let long = arg.get_long().unwrap_or("value");
    let one = arg
        .clone()
        .env(None::<&str>)
        .default_values(Vec::<&str>::new())
        .required(false);
    clap::Command::new("check")
        .no_binary_name(true)
        .arg(one)
        .try_get_matches_from([format!("--{long}={value}")])
        .map(|_| ())
}

/// clap's error message without its "error: " prefix and usage tail.
pub(super) fn clap_error_text(e: &clap::Error) -> String {
    let text = e.kind().as_str().map(str::to_string);
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    let mut text = if first.is_empty() {
        text.unwrap_or_else(|| "invalid value".into())
    } else {
        first
    };
    // The same words wherever the value came from (flag, variable, file,
    // service, BOSH property): the values that would have been accepted.
    if let Some(clap::error::ContextValue::Strings(valid)) =
        e.get(clap::error::ContextKind::ValidValue)
    {
        text.push_str(&format!(" (possible values: {})", valid.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn load_with(args: &[&str], vars: &[(&str, &str)]) -> Loaded {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let argv = std::iter::once("cf-audit-nozzle")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        load(Cli::command(), argv, &|k| vars.get(k).cloned()).expect("parses")
    }

    #[test]
    fn keys_name_options_by_flag_underscores_or_environment_variable() {
        let cmd = Cli::command();
        let run = cmd.find_subcommand("run").unwrap();
        for key in ["shard-id", "shard_id", "SHARD_ID"] {
            assert_eq!(option_for_key(run, key).unwrap().get_id(), "shard_id");
        }
        assert!(option_for_key(run, "shard").is_none());
    }

    #[test]
    fn the_service_fills_what_flags_and_environment_leave_open() {
        let vcap = r#"{"user-provided":[{"name":"cf-audit-nozzle-secrets","credentials":{"UAA_CLIENT_SECRET":"s","shard_id":"from-service","sink":["stdout","file"]}}]}"#;
        let l = load_with(&["run", "--shard-id", "flag"], &[("VCAP_SERVICES", vcap)]);
        assert_eq!(l.errors, Vec::<String>::new());
        let super::super::Command::Run(run) = &l.cli.command else {
            panic!()
        };
        assert_eq!(run.shard_id, "flag");
        assert_eq!(run.cf.uaa_client_secret, Some("s".into()));
        assert_eq!(run.output.sink.len(), 2);
        assert_eq!(l.origin("shard_id"), Some(Origin::Flag));
        assert_eq!(
            l.origin("uaa_client_secret"),
            Some(Origin::Service("cf-audit-nozzle-secrets".into()))
        );
        assert_eq!(l.origin("foundation"), Some(Origin::Default));
        assert_eq!(l.origin("rlp_addr"), None);
    }

    #[test]
    fn platform_values_are_read_and_bad_ones_named() {
        let l = load_with(
            &["run"],
            &[
                (
                    "VCAP_APPLICATION",
                    r#"{"cf_api":"https://api.x","instance_index":1}"#,
                ),
                ("CF_INSTANCE_INDEX", "1"),
                ("PORT", "8080"),
            ],
        );
        let super::super::Command::Run(run) = &l.cli.command else {
            panic!()
        };
        assert_eq!(run.cf.cf_api.as_deref(), Some("https://api.x"));
        assert_eq!(run.output.instance_index, 1);
        assert_eq!(run.telemetry.health_addr.as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(
            l.origin("instance_index"),
            Some(Origin::Platform("CF_INSTANCE_INDEX"))
        );
        let l = load_with(
            &["run"],
            &[("CF_INSTANCE_INDEX", "x"), ("VCAP_APPLICATION", "{")],
        );
        assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
    }

    #[test]
    fn an_absent_default_service_is_fine_an_absent_named_one_is_not() {
        let vcap = r#"{"s3":[{"name":"bucket","credentials":{"bucket":"b"}}]}"#;
        assert!(
            load_with(&["run"], &[("VCAP_SERVICES", vcap)])
                .errors
                .is_empty()
        );
        let l = load_with(
            &["run", "--config-service", "mine"],
            &[("VCAP_SERVICES", vcap)],
        );
        assert_eq!(
            l.errors,
            [
                "--config-service (CONFIG_SERVICE): no service named \"mine\" is bound (VCAP_SERVICES)"
            ]
        );
    }

    #[test]
    fn a_bad_secret_is_not_echoed() {
        let vcap = r#"{"user-provided":[{"name":"cf-audit-nozzle-secrets","credentials":{"HEC_TOKEN":["a","b"],"hec_acks":"maybe"}}]}"#;
        let l = load_with(&["run"], &[("VCAP_SERVICES", vcap)]);
        assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
        assert!(
            l.errors.iter().all(|e| !e.contains("\"a\"")),
            "{:?}",
            l.errors
        );
    }
}

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

/// The user-provided service whose credentials are read as options, unless
/// `--config-service` names another.
pub const DEFAULT_SERVICE: &str = "cf-audit-nozzle-secrets";

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
    pub config_service: String,
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
    pub layered: BTreeMap<String, Origin>,
    /// Problems in the layers (unknown keys, unreadable file, bad values),
    /// each naming where it was; reported with the validation errors.
    pub errors: Vec<String>,
}

impl Loaded {
    /// The matches of the run-like subcommand, if that is what was given.
    pub fn sub_matches(&self) -> Option<&ArgMatches> {
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
    pub fn sub_command(&self) -> Option<&clap::Command> {
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

/// How many parser errors are set aside before giving up (each one removes
/// an argument or an environment variable, so this is never reached by a
/// real command line).
const MAX_PARSER_ERRORS: usize = 64;

/// Parses `argv` with `cmd`; each value or argument the parser rejects is
/// described (secrets not shown) and set aside: removed from `argv`, or,
/// when it came from an environment variable, that variable no longer read.
/// Returns the command and arguments that parse, and the descriptions.
/// Help, version and errors outside the run-like command are returned as
/// clap's error.
fn set_aside_parser_errors(
    mut cmd: clap::Command,
    path: &[&str],
    mut argv: Vec<OsString>,
) -> Result<(clap::Command, Vec<OsString>, Vec<String>), clap::Error> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let mut errors = Vec::new();
    let start = path.len() + 1;
    loop {
        let e = match cmd.clone().try_get_matches_from(&argv) {
            Ok(_) => return Ok((cmd, argv, errors)),
            Err(e) => e,
        };
        let recoverable = matches!(
            e.kind(),
            ErrorKind::InvalidValue
                | ErrorKind::UnknownArgument
                | ErrorKind::NoEquals
                | ErrorKind::ValueValidation
                | ErrorKind::TooManyValues
                | ErrorKind::TooFewValues
                | ErrorKind::WrongNumberOfValues
                | ErrorKind::ArgumentConflict
                | ErrorKind::InvalidUtf8
        );
        if !recoverable || errors.len() >= MAX_PARSER_ERRORS {
            return Err(e);
        }
        let invalid_arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.clone(),
            _ => return Err(e),
        };
        let sub = find_path(&cmd, path);
        if e.kind() == ErrorKind::UnknownArgument {
            // The word as typed: an option name is shown, anything else
            // (a stray value, a pasted key) is not.
            let Some(at) = argv[start.min(argv.len())..]
                .iter()
                .position(|a| {
                    // clap names `--name=value` by its part before `=`.
                    a.to_str().is_some_and(|a| {
                        a == invalid_arg
                            || a.strip_prefix(invalid_arg.as_str())
                                .is_some_and(|rest| rest.starts_with('='))
                            // `-abc` is named by its first short flag, `-a`.
                            || (invalid_arg.len() == 2
                                && !a.starts_with("--")
                                && a.starts_with(invalid_arg.as_str()))
                    })
                })
                .map(|i| i + start)
            else {
                return Err(e);
            };
            argv.remove(at);
            // A secret option's value that the parser took for an option
            // (`--uaa-client-secret -x...`) is not shown either.
            let after_secret = argv[..at]
                .last()
                .and_then(|a| a.to_str())
                .and_then(|prev| prev.strip_prefix("--"))
                .filter(|long| {
                    find_path(&cmd, path)
                        .get_arguments()
                        .any(|a| is_secret(a) && a.get_long() == Some(*long))
                })
                .map(str::to_string);
            if let Some(long) = after_secret {
                // The option goes too: it has no value now.
                argv.remove(at - 1);
                errors.push(format!(
                    "--{long}: a value beginning with '-' (not shown: it is a secret); write it as --{long}=VALUE"
                ));
                continue;
            }
            let shown = flag_name(&invalid_arg);
            match shown {
                Some(flag) => {
                    // Its value, if one follows, goes with it.
                    if invalid_arg == flag
                        && argv
                            .get(at)
                            .and_then(|a| a.to_str())
                            .is_some_and(|a| !a.starts_with('-'))
                    {
                        argv.remove(at);
                    }
                    let hint = match e.get(ContextKind::SuggestedArg) {
                        Some(ContextValue::String(s)) => format!(" (did you mean {s}?)"),
                        _ => String::new(),
                    };
                    errors.push(format!("unknown option {flag}{hint}"));
                }
                // The first word: most likely a mistyped command.
                None if at == start
                    && invalid_arg.len() <= 32
                    && invalid_arg
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
                {
                    errors.push(format!(
                        "unknown command or argument {invalid_arg:?} (commands: {})",
                        super::COMMANDS.join(", ")
                    ))
                }
                None => errors.push(
                    "an argument that is not an option (not shown: it may be a secret, e.g. a key pasted where its file's path goes)"
                        .to_string(),
                ),
            }
            continue;
        }
        // "--sink <SINK>": the option whose value was refused.
        let long = invalid_arg
            .trim_start_matches('-')
            .split([' ', '=', '<'])
            .next()
            .unwrap_or_default()
            .to_string();
        let Some(arg) = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
        else {
            return Err(e);
        };
        let id = arg.get_id().as_str().to_string();
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let secret = is_secret(arg);
        let takes_value = arg.get_action().takes_values();
        let flag = format!("--{long}");
        let before = argv.len();
        let mut i = start;
        while i < argv.len() {
            let word = argv[i].to_str().unwrap_or_default();
            if word == flag {
                argv.remove(i);
                if takes_value
                    && argv
                        .get(i)
                        .and_then(|a| a.to_str())
                        .is_some_and(|a| !a.starts_with("--"))
                {
                    argv.remove(i);
                }
            } else if word.starts_with(&format!("{flag}=")) {
                argv.remove(i);
            } else {
                i += 1;
            }
        }
        let place = if argv.len() < before {
            flag.clone()
        } else if let Some(env) = &env {
            // From the environment: the variable is no longer read.
            cmd = without_env(cmd, path, &id);
            format!("{flag} ({env}, from the environment)")
        } else {
            return Err(e);
        };
        let why = if secret {
            "invalid value (not shown: it is a secret)".to_string()
        } else {
            let mut text = clap_error_text(&e);
            if let Some(ContextValue::Strings(valid)) = e.get(ContextKind::ValidValue) {
                text.push_str(&format!(" (possible values: {})", valid.join(", ")));
            }
            text
        };
        errors.push(format!("{place}: {why}"));
    }
}

/// `--name` of a word that looks like an option (`--name` or
/// `--name=value`), for showing it without its value.
fn flag_name(word: &str) -> Option<&str> {
    let name = word.split('=').next()?;
    let body = name.strip_prefix("--").or_else(|| name.strip_prefix('-'))?;
    let plausible = !body.is_empty()
        && body.len() <= 64
        && body.starts_with(|c: char| c.is_ascii_alphanumeric())
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    plausible.then_some(name)
}

/// `cmd` with the option `id` on `path` no longer read from its environment variable.
fn without_env(cmd: clap::Command, path: &[&str], id: &str) -> clap::Command {
    match path.split_first() {
        None => cmd.mut_arg(id, |a| a.env(None::<&str>)),
        Some((name, rest)) => cmd.mut_subcommand(*name, |sub| without_env(sub, rest, id)),
    }
}

/// clap's error for a command line that is not run-like (or help), with
/// every word that may be a secret masked: values of secret options, and
/// any word that does not look like an option name or a plain value (a
/// pasted key, a multi-line text).
pub fn masked_clap_error(e: &clap::Error, cmd: &clap::Command, argv: &[OsString]) -> String {
    let mut text = e.render().to_string();
    let mut secrets: Vec<String> = Vec::new();
    let mut all_args: Vec<&clap::Arg> = Vec::new();
    let mut stack = vec![cmd];
    while let Some(c) = stack.pop() {
        all_args.extend(c.get_arguments());
        stack.extend(c.get_subcommands());
    }
    let secret_flag = |word: &str| {
        all_args.iter().any(|a| {
            is_secret(a)
                && a.get_long()
                    .is_some_and(|l| word.strip_prefix("--") == Some(l))
        })
    };
    let words: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    for (i, word) in words.iter().enumerate() {
        if let Some((flag, value)) = word.split_once('=')
            && secret_flag(flag)
        {
            secrets.push(value.to_string());
        }
        if i > 0 && secret_flag(&words[i - 1]) {
            secrets.push(word.clone());
        }
        if word.contains('\n') || word.contains("-----BEGIN") || word.contains("PRIVATE KEY") {
            secrets.push(word.clone());
        }
    }
    // clap may quote a part of the word (before an `=`), over several lines.
    let parts: Vec<String> = secrets
        .iter()
        .flat_map(|s| {
            let mut parts: Vec<String> = s.lines().map(str::to_string).collect();
            parts.extend(s.split('=').map(str::to_string));
            parts
        })
        .filter(|p| p.trim_matches('-').len() >= 8)
        .collect();
    secrets.extend(parts);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        text = text.replace(s.as_str(), super::check::MASK);
    }
    text
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
fn clap_error_text(e: &clap::Error) -> String {
    let text = e.kind().as_str().map(str::to_string);
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    if first.is_empty() {
        text.unwrap_or_else(|| "invalid value".into())
    } else {
        first
    }
}

/// The values of a TOML or JSON scalar or list, as strings.
fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Keys and values of a JSON object (a TOML table is converted to one).
fn object_layer(
    object: &serde_json::Map<String, serde_json::Value>,
    origin: &Origin,
    errors: &mut Vec<String>,
) -> Vec<Found> {
    let mut found = Vec::new();
    for (key, value) in object {
        let values = match value {
            serde_json::Value::Array(items) => items.iter().map(scalar_text).collect(),
            v => scalar_text(v).map(|s| vec![s]),
        };
        match values {
            Some(values) => found.push(Found {
                key: key.clone(),
                values,
                origin: origin.clone(),
            }),
            None => errors.push(format!(
                "{origin}: {key:?} must be a string, number, boolean or a list of them"
            )),
        }
    }
    found
}

/// The options in the TOML file `path`.
fn file_layer(path: &PathBuf, errors: &mut Vec<String>) -> Vec<Found> {
    let origin = Origin::File(path.clone());
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(format!(
                "--config (CONFIG): cannot read {}: {e}",
                path.display()
            ));
            return Vec::new();
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            let why = e.message().to_string();
            let at = e
                .span()
                .map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            errors.push(format!("{origin}: not valid TOML{at}: {why}"));
            return Vec::new();
        }
    };
    match serde_json::to_value(&table) {
        Ok(serde_json::Value::Object(object)) => object_layer(&object, &origin, errors),
        _ => {
            errors.push(format!("{origin}: cannot be read as a table of options"));
            Vec::new()
        }
    }
}

/// The credentials of the service named `name` in `VCAP_SERVICES`. An
/// absent service is an error only when its name was asked for.
fn service_layer(
    vcap_services: Option<&str>,
    name: &str,
    named: bool,
    errors: &mut Vec<String>,
) -> Vec<Found> {
    let origin = Origin::Service(name.to_string());
    let Some(text) = vcap_services.filter(|t| !t.trim().is_empty()) else {
        if named {
            errors.push(format!(
                "--config-service (CONFIG_SERVICE) {name:?}: VCAP_SERVICES is not set (bind the service to the app)"
            ));
        }
        return Vec::new();
    };
    let services: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errors.push(format!("VCAP_SERVICES is not JSON: {e}"));
            return Vec::new();
        }
    };
    let instance = services
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .filter_map(|list| list.as_array())
        .flatten()
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(name));
    let Some(instance) = instance else {
        if named {
            errors.push(format!(
                "--config-service (CONFIG_SERVICE): no service named {name:?} is bound (VCAP_SERVICES)"
            ));
        }
        return Vec::new();
    };
    match instance.get("credentials") {
        Some(serde_json::Value::Object(c)) => object_layer(c, &origin, errors),
        None => Vec::new(),
        Some(_) => {
            errors.push(format!("{origin}: credentials must be a JSON object"));
            Vec::new()
        }
    }
}

/// What Cloud Foundry says about this container: the CF API (for
/// `--cf-api`), this instance's index and the port the platform routes to.
fn platform_layer(env: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<String>) -> Vec<Found> {
    let mut found = Vec::new();
    let mut add = |key: &str, value: String, origin: &'static str| {
        found.push(Found {
            key: key.to_string(),
            values: vec![value],
            origin: Origin::Platform(origin),
        })
    };
    if let Some(text) = env("VCAP_APPLICATION") {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(app) => {
                if let Some(api) = app.get("cf_api").and_then(|v| v.as_str()) {
                    add("cf-api", api.to_string(), "VCAP_APPLICATION");
                }
                if let Some(i) = app.get("instance_index").and_then(|v| v.as_u64()) {
                    add("instance-index", i.to_string(), "VCAP_APPLICATION");
                }
            }
            Err(e) => errors.push(format!("VCAP_APPLICATION is not JSON: {e}")),
        }
    }
    if let Some(i) = env("CF_INSTANCE_INDEX") {
        match i.parse::<u32>() {
            Ok(i) => add("instance-index", i.to_string(), "CF_INSTANCE_INDEX"),
            Err(_) => errors.push(format!(
                "CF_INSTANCE_INDEX must be an instance number, not {i:?}"
            )),
        }
    }
    // An invalid PORT is reported by the telemetry options (config::telemetry).
    if let Some(port) = env("PORT").and_then(|p| p.parse::<u16>().ok()) {
        add("health-addr", format!("0.0.0.0:{port}"), "PORT");
    }
    found
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

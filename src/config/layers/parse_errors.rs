//! The run-like commands' parser errors, collected rather than fatal
//! (`config check` lists every problem at once), and clap's error for the
//! other commands with every word that may be a secret masked.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};

use super::{clap_error_text, find_path, is_secret};

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
pub(super) fn set_aside_parser_errors(
    mut cmd: clap::Command,
    path: &[&str],
    mut argv: Vec<OsString>,
) -> Result<(clap::Command, Vec<OsString>, Vec<String>), clap::Error> {
    let mut errors = Vec::new();
    loop {
        let e = match cmd.clone().try_get_matches_from(&argv) {
            Ok(_) => return Ok((cmd, argv, errors)),
            Err(e) => e,
        };
        if !recoverable(&e) || errors.len() >= MAX_PARSER_ERRORS {
            return Err(e);
        }
        let invalid_arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.clone(),
            _ => return Err(e),
        };
        let described = if e.kind() == ErrorKind::UnknownArgument {
            set_aside_unknown(&cmd, path, &mut argv, &e, &invalid_arg)
        } else {
            set_aside_refused(&mut cmd, path, &mut argv, &e, &invalid_arg)
        };
        match described {
            Some(text) => errors.push(text),
            None => return Err(e),
        }
    }
}

/// The parser errors [`set_aside_parser_errors`] can set aside.
fn recoverable(e: &clap::Error) -> bool {
    matches!(
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
    )
}

/// An argument the parser does not know, `invalid_arg` as clap names it:
/// removed from `argv` (with its value, when one follows) and described;
/// `None` when it cannot be found in `argv`.
fn set_aside_unknown(
    cmd: &clap::Command,
    path: &[&str],
    argv: &mut Vec<OsString>,
    e: &clap::Error,
    invalid_arg: &str,
) -> Option<String> {
    let start = path.len() + 1;
    // The word as typed: an option name is shown, anything else
    // (a stray value, a pasted key) is not.
    let at = argv[start.min(argv.len())..]
        .iter()
        .position(|a| {
            // clap names `--name=value` by its part before `=`.
            a.to_str().is_some_and(|a| {
                a == invalid_arg
                    || a.strip_prefix(invalid_arg)
                        .is_some_and(|rest| rest.starts_with('='))
                    // `-abc` is named by its first short flag, `-a`.
                    || (invalid_arg.len() == 2
                        && !a.starts_with("--")
                        && a.starts_with(invalid_arg))
            })
        })
        .map(|i| i + start)?;
    argv.remove(at);
    // A secret option's value that the parser took for an option
    // (`--uaa-client-secret -x...`) is not shown either.
    let after_secret = argv[..at]
        .last()
        .and_then(|a| a.to_str())
        .and_then(|prev| prev.strip_prefix("--"))
        .filter(|long| {
            find_path(cmd, path)
                .get_arguments()
                .any(|a| is_secret(a) && a.get_long() == Some(*long))
        })
        .map(str::to_string);
    if let Some(long) = after_secret {
        // The option goes too: it has no value now.
        argv.remove(at - 1);
        return Some(format!(
            "--{long}: a value beginning with '-' (not shown: it is a secret); write it as --{long}=VALUE"
        ));
    }
    let shown = flag_name(invalid_arg);
    Some(match shown {
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
            format!("unknown option {flag}{hint}")
        }
        // The first word: most likely a mistyped command.
        None if at == start
            && invalid_arg.len() <= 32
            && invalid_arg
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
        {
            format!(
                "unknown command or argument {invalid_arg:?} (commands: {})",
                super::super::COMMANDS.join(", ")
            )
        }
        None => "an argument that is not an option (not shown: it may be a secret, e.g. a key pasted where its file's path goes)"
            .to_string(),
    })
}

/// An option whose value the parser refused, `invalid_arg` as clap names
/// it (`--sink <SINK>`): removed from `argv` with its value, or, when the
/// value came from the environment, its variable no longer read by `cmd`;
/// then described. `None` when it is neither.
fn set_aside_refused(
    cmd: &mut clap::Command,
    path: &[&str],
    argv: &mut Vec<OsString>,
    e: &clap::Error,
    invalid_arg: &str,
) -> Option<String> {
    let start = path.len() + 1;
    // "--sink <SINK>": the option whose value was refused.
    let long = invalid_arg
        .trim_start_matches('-')
        .split([' ', '=', '<'])
        .next()
        .unwrap_or_default()
        .to_string();
    let arg = find_path(cmd, path)
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))?;
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
        *cmd = without_env(std::mem::take(cmd), path, &id);
        format!("{flag} ({env}, from the environment)")
    } else {
        return None;
    };
    let why = if secret {
        "invalid value (not shown: it is a secret)".to_string()
    } else {
        clap_error_text(e)
    };
    Some(format!("{place}: {why}"))
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
        text = text.replace(s.as_str(), crate::config::check::MASK);
    }
    text
}

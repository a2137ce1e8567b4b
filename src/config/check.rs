//! `cf-audit-nozzle config check`: the effective configuration (every
//! option, its value and where the value came from, secrets masked) and the
//! same validation `run` does, every problem listed at once; then what the
//! S3 bucket says about Object Lock when the trail asks for it. Part of
//! [`crate::config`].

use super::layers::{Loaded, Origin, is_secret};
use super::{Built, ConfigErrors, Env, RunArgs};

/// What a secret's value is shown as.
pub(crate) const MASK: &str = crate::redact::MASK;

/// Validates `args` like `run` does and builds what they describe (reading
/// the files they name), with the layers' problems first, then the values',
/// then the files'.
pub fn validated(
    args: &RunArgs,
    env: &dyn Env,
    layer_errors: &[String],
) -> Result<Built, ConfigErrors> {
    let mut errors = layer_errors.to_vec();
    let built = match super::validate(args, env) {
        Ok(cfg) => super::build(&cfg),
        Err(mut e) => {
            // The files the values did not stop us from reading.
            e.0.extend(super::build::unbuilt_problems(args));
            Err(e)
        }
    };
    match built {
        Ok(built) if errors.is_empty() => Ok(built),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(ConfigErrors(errors))
        }
    }
}

/// What `config check` reports after validation, from the buckets it asks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BucketChecks {
    /// What was found (printed as is).
    pub notes: Vec<String>,
    /// A question that could not be answered (printed after `warning: `).
    pub warnings: Vec<String>,
    /// What makes the configuration fail: a locked PUT would be refused.
    pub errors: Vec<String>,
}

/// For each S3 sink with `--s3-object-lock-mode`, asks the bucket
/// (`GET ?object-lock`) whether it has Object Lock: without it every PUT
/// with retention is refused. A bucket that cannot be asked is a warning
/// (the check runs where S3 may be out of reach); nothing secret is shown.
pub async fn bucket_checks(built: &Built) -> BucketChecks {
    use crate::sink::archive::{Target, s3};
    let mut out = BucketChecks::default();
    for (sink, _) in &built.pipeline.sinks {
        let super::SinkConfig::Object(object) = sink else {
            continue;
        };
        let Target::S3(cfg) = &object.target else {
            continue;
        };
        let Some(lock) = cfg.object_lock else {
            continue;
        };
        let bucket = &cfg.bucket;
        let answer = match s3::http_client(cfg.ca_pem.as_deref()) {
            Ok(client) => s3::object_lock_status(cfg, &client).await,
            Err(e) => Err(e.to_string()),
        };
        match answer {
            Ok(s3::LockCheck::Enabled { default_retention }) => {
                let default = default_retention
                    .map(|d| format!(" (bucket default retention: {d})"))
                    .unwrap_or_default();
                out.notes.push(format!(
                    "s3 bucket {bucket}: Object Lock is enabled{default}; each log file, digest and public key is written {} for {} days",
                    lock.mode.as_str(),
                    lock.days
                ));
            }
            Ok(s3::LockCheck::NotEnabled) => out.errors.push(format!(
                "--s3-object-lock-mode (S3_OBJECT_LOCK_MODE): bucket {bucket} has no Object Lock, so S3 would refuse every PUT with retention; use a bucket with Object Lock enabled, or drop --s3-object-lock-mode and --s3-object-lock-days"
            )),
            Err(reason) => out.warnings.push(format!(
                "cannot ask bucket {bucket} whether it has Object Lock ({}); if it has none, S3 refuses every PUT with retention",
                crate::redact::urls_in(&reason)
            )),
        }
    }
    out
}

/// One line per option of the run-like command `loaded` parsed:
/// `--flag  value  origin`, aligned; secrets masked; unset options as `-`.
pub fn render_effective(loaded: &Loaded) -> String {
    let (Some(cmd), Some(m)) = (loaded.sub_command(), loaded.sub_matches()) else {
        return String::new();
    };
    let mut rows = Vec::new();
    let position = |a: &clap::Arg| {
        let id = a.get_id().as_str();
        loaded.order.iter().position(|o| o == id)
    };
    let mut args: Vec<&clap::Arg> = cmd.get_arguments().collect();
    args.sort_by_key(|a| position(a));
    for arg in args {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if arg.is_hide_set() || matches!(id, "help" | "version") {
            continue;
        }
        let values: Vec<String> = m
            .get_raw(id)
            .map(|raw| raw.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let (value, origin) = match loaded.origin(id) {
            None => ("-".to_string(), "unset".to_string()),
            Some(origin) => {
                let value = if is_secret(arg) {
                    MASK.to_string()
                } else if values.iter().all(String::is_empty) {
                    "\"\"".to_string()
                } else {
                    // Credentials in a URL (user:password@, ?token=) are hidden.
                    crate::redact::urls_in(&values.join(","))
                };
                (value, origin_text(&origin))
            }
        };
        rows.push((format!("--{long}"), value, origin));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .min(48);
    let mut out = String::from(
        "Effective configuration (precedence: flag > env > platform > VCAP_SERVICES > config file > default)\n",
    );
    for (flag, value, origin) in rows {
        let line = format!("{flag:w0$}  {value:w1$}  {origin}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn origin_text(origin: &Origin) -> String {
    origin.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cli;
    use clap::CommandFactory;

    #[test]
    fn every_value_has_an_origin_and_secrets_are_masked() {
        let argv = ["cf-audit-nozzle", "config", "check", "--shard-id", "s1"]
            .map(std::ffi::OsString::from)
            .to_vec();
        let env = |k: &str| {
            (k == "VCAP_SERVICES").then(|| {
                r#"{"user-provided":[{"name":"cf-audit-nozzle-secrets","credentials":{"hec-token":"tok-SECRET"}}]}"#.to_string()
            })
        };
        let loaded = super::super::layers::load(Cli::command(), argv, &env).unwrap();
        let text = render_effective(&loaded);
        assert!(!text.contains("tok-SECRET"), "{text}");
        let line = |flag: &str| {
            text.lines()
                .find(|l| l.split_whitespace().next() == Some(flag))
                .unwrap_or_else(|| panic!("{flag} in {text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("--shard-id"), "--shard-id s1 flag");
        assert_eq!(
            line("--hec-token"),
            "--hec-token ******** VCAP_SERVICES service cf-audit-nozzle-secrets"
        );
        assert_eq!(line("--foundation"), "--foundation cf default");
        assert_eq!(line("--rlp-addr"), "--rlp-addr - unset");
        assert!(
            !text.contains("--decode-only"),
            "hidden options stay hidden"
        );
    }
}

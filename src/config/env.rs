//! The environment as configuration reads it: every variable validation
//! looks at (`VCAP_SERVICES`, `VCAP_APPLICATION`, `CF_INSTANCE_INDEX`,
//! `PORT`, `AWS_SESSION_TOKEN`) goes through [`Env`], so validation is a
//! function of its arguments: [`ProcessEnv`] in the binary, [`MapEnv`] in
//! tests. Part of [`crate::config`]. (clap reads the options' own variables,
//! `--rlp-addr` ⇔ `RLP_ADDR`, before validation sees them.)

use std::collections::BTreeMap;

/// Where configuration reads environment variables from.
pub trait Env {
    /// The variable's value, if set (and valid Unicode).
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// A fixed set of variables (tests; a process with nothing set).
#[derive(Clone, Debug, Default)]
pub struct MapEnv(pub BTreeMap<String, String>);

impl Env for MapEnv {
    fn var(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(vars: I) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, Command, validate};
    use clap::Parser;

    /// Validation reads the platform's variables from the `Env` it is given,
    /// never from the process: `CF_INSTANCE_INDEX` picks the polling instance.
    #[test]
    fn validation_reads_the_environment_it_is_given() {
        let cli = Cli::try_parse_from([
            "cf-audit-nozzle",
            "run",
            "--source",
            "gateway",
            "--gateway-url",
            "https://gateway.example.com",
            "--uaa-url",
            "https://uaa.example.com",
            "--cf-api",
            "https://api.example.com",
            "--uaa-client-id",
            "nozzle",
            "--uaa-client-secret",
            "secret",
            "--audit-events",
            "on",
            "--audit-cursor-file",
            "cursor.json",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            unreachable!("run")
        };
        let polls = |env: &MapEnv| validate(&args, env).unwrap().audit.audit_events.is_some();
        assert!(polls(&MapEnv::default()));
        assert!(polls(&MapEnv::from_iter([("CF_INSTANCE_INDEX", "0")])));
        assert!(!polls(&MapEnv::from_iter([("CF_INSTANCE_INDEX", "1")])));
    }
}

//! Any command line for `run`: parsing and validation must report problems,
//! never panic.
#![no_main]

use clap::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args = std::iter::once("cf-audit-nozzle")
        .chain(std::iter::once("run"))
        .chain(text.split('\0'));
    if let Ok(cli) = cf_audit_nozzle::config::Cli::try_parse_from(args)
        && let cf_audit_nozzle::config::Command::Run(run) = cli.command
    {
        let _ = run.validate();
    }
});

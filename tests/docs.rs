//! The docs say what the code does: the configuration reference is the one
//! generated from the option definitions, and every variable the README's
//! `cf push` quick start and the manifest use is an option (or one the
//! platform sets).

use cf_audit_nozzle::config::Cli;
use cf_audit_nozzle::config::layers::option_for_key;
use cf_audit_nozzle::config::reference::configuration_md;
use clap::CommandFactory;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_configuration_reference_is_generated_from_the_option_definitions() {
    let committed = read("docs/configuration.md");
    let generated = configuration_md(&Cli::command());
    if committed != generated {
        let first = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "docs/configuration.md is stale (first difference at line {}); regenerate it:\n  cargo run -- config docs > docs/configuration.md",
            first + 1
        );
    }
    // Every option of run is in it, with its variable.
    let cli = Cli::command();
    let run = cli.find_subcommand("run").unwrap();
    for arg in run.get_arguments().filter(|a| !a.is_hide_set()) {
        if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
            let row = format!("| `--{long}` | `{}` |", env.to_string_lossy());
            assert!(committed.contains(&row), "{row} missing");
        }
    }
}

/// Variables the platform sets, or a library reads (`RUST_LOG`: tracing's
/// filter; `MIMALLOC_PURGE_DELAY`: the allocator's, which `main` honours
/// over its own default), which the docs may name besides options.
const PLATFORM: [&str; 6] = [
    "VCAP_SERVICES",
    "VCAP_APPLICATION",
    "CF_INSTANCE_INDEX",
    "PORT",
    "RUST_LOG",
    "MIMALLOC_PURGE_DELAY",
];

/// `NAME`s the text uses as variables: in backticks (`FOO_BAR`, `SINK: http`,
/// `SINK=http`) or as JSON keys (`"S3_BUCKET":`, `\"S3_BUCKET\":`), and not
/// shell variables (`$NOZZLE_SECRET`).
fn variables(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_uppercase() && (i == 0 || !is_word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && is_word(bytes[i]) {
                i += 1;
            }
            let word = &text[start..i];
            let before = text[..start].trim_end_matches('\\');
            let after = text[i..].trim_start_matches('\\');
            let quoted_key = before.ends_with('"') && after.starts_with("\":");
            let ticked = before.ends_with('`')
                && (after.starts_with('`') || after.starts_with(':') || after.starts_with('='));
            let shell = before.ends_with('$');
            if (quoted_key || ticked)
                && !shell
                && (word.contains('_') || word.len() > 2)
                && word
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                found.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    found
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[test]
fn every_variable_of_the_quick_start_is_an_option_or_the_platforms() {
    let readme = read("README.md");
    let start = readme
        .find("## Quick start")
        .expect("README has a quick start");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let cli = Cli::command();
    let run = cli.find_subcommand("run").unwrap();
    let vars = variables(section);
    for must in [
        "UAA_CLIENT_ID",
        "UAA_CLIENT_SECRET",
        "S3_BUCKET",
        "FOUNDATION",
    ] {
        assert!(
            vars.iter().any(|v| v == must),
            "{must} not found in {vars:?}"
        );
    }
    for v in &vars {
        assert!(
            PLATFORM.contains(&v.as_str())
                || option_for_key(run, v).is_some_and(|a| a.get_env().unwrap() == v.as_str()),
            "the quick start names {v}, which is no option's variable"
        );
    }
    for doc in ["docs/vm-operators.md", "docs/sizing.md", "docs/failures.md"] {
        for v in variables(&read(doc)) {
            assert!(
                PLATFORM.contains(&v.as_str()) || option_for_key(run, &v).is_some(),
                "{doc} names {v}, which is no option's variable"
            );
        }
    }
}

#[test]
fn variables_are_found_in_ticks_and_json_keys_but_not_shell_variables() {
    assert_eq!(
        variables(
            r#"`SINK: http` and `HEC_TOKEN` in "{\"S3_BUCKET\":\"b\",\"X\":\"$NOZZLE_SECRET\"}" $PORT `$AWS_KEY`"#
        ),
        ["SINK", "HEC_TOKEN", "S3_BUCKET"]
    );
}

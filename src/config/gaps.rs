//! The `gaps` command's options: where the records come from (an archive
//! folder, an S3 bucket through the options `validate` takes, or a JSON-lines
//! export) and how the report is printed. Part of [`crate::config`].

use std::path::PathBuf;

use clap::Args;

use super::S3Args;

#[derive(Debug, Args)]
pub struct GapsArgs {
    /// A local folder archive (the file sink's --out-dir): reads every CFLogs/**/*.json.gz under it (and --s3-prefix).
    #[arg(long, env = "GAPS_DIR", conflicts_with_all = ["s3_bucket", "jsonl"])]
    pub dir: Option<PathBuf>,
    /// A JSON-lines export from a SIEM, one record per line (blank lines skipped); `-` reads standard input.
    #[arg(
        long,
        env = "GAPS_JSONL",
        conflicts_with = "s3_bucket",
        allow_hyphen_values = true
    )]
    pub jsonl: Option<PathBuf>,
    /// Print the report as JSON (per group: records, last_seq, missing and duplicate ranges) instead of text.
    #[arg(long, env = "GAPS_JSON")]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

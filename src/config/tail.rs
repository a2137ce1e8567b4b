//! `tail`'s options: run's source options plus what to show. Part of
//! [`crate::config`]; the filter they describe is `tail::TailFilter`.

use clap::Args;

use super::RunArgs;

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only these record kinds, comma separated: api, app_log, metric, event.
    #[arg(long = "kind", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Only these source types (API, APP/PROC/WEB, RTR, STG, CELL, ...), comma
    /// separated; a value ending in `*` matches a prefix (`APP*`).
    #[arg(long = "source-type", value_delimiter = ',')]
    pub(crate) source_types: Vec<String>,
    /// Only this app, by name or guid.
    #[arg(long)]
    pub app: Option<String>,
    /// Only this org, by name or guid.
    #[arg(long)]
    pub org: Option<String>,
    /// Print each record's JSON instead of a human line.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

//! Options of the disk buffer (`crate::sink::buffer`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::sink::buffer::{BufferConfig, Fsync, WhenFull};

/// 1 GiB: Cloud Foundry's default disk quota. Raise `disk_quota` in the
/// manifest with it.
pub(crate) const DEFAULT_BUFFER_MAX_BYTES: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct BufferArgs {
    /// Folder of the disk buffer; turns it on. Every record a sink accepts is
    /// written there first, survives a restart and waits there while the
    /// sink is down. Off by default.
    #[arg(long, env = "BUFFER_DIR")]
    pub(crate) buffer_dir: Option<PathBuf>,
    /// Bytes the disk buffer may hold in all, shared evenly by the sinks.
    /// Keep it below the app's disk quota.
    #[arg(long, env = "BUFFER_MAX_BYTES", default_value_t = DEFAULT_BUFFER_MAX_BYTES)]
    pub(crate) buffer_max_bytes: u64,
    /// What a sink's full buffer does: drop the newest records (counted), or
    /// `block`: the audit-events poller waits for room (the firehose cannot
    /// wait, so its records are still dropped and counted).
    #[arg(
        long,
        env = "BUFFER_WHEN_FULL",
        value_enum,
        default_value = "drop_newest"
    )]
    pub(crate) buffer_when_full: WhenFull,
    /// When the buffer is forced to disk: `batch` (after every append) or a
    /// number of milliseconds (a machine crash loses at most that much).
    #[arg(long, env = "BUFFER_FSYNC", default_value = "100")]
    pub(crate) buffer_fsync: String,
    /// Fill of a sink's share of `--buffer-max-bytes` (a fraction, 0.8 is
    /// 80 %) at which a `buffer_filling` alert is raised; raised again only
    /// after the fill went below 90 % of it. 0 turns it off.
    #[arg(long, env = "BUFFER_WARN_FILL", default_value_t = 0.8)]
    pub(crate) buffer_warn_fill: f64,
}

impl BufferArgs {
    pub fn config(&self, errors: &mut Vec<String>) -> Option<BufferConfig> {
        let dir = self.buffer_dir.clone()?;
        let fsync = match self.buffer_fsync.as_str() {
            "batch" => Fsync::Batch,
            ms => match ms.parse::<u64>() {
                Ok(ms) if ms > 0 => Fsync::Every(Duration::from_millis(ms)),
                _ => {
                    errors.push(format!(
                        "--buffer-fsync (BUFFER_FSYNC) must be `batch` or milliseconds above 0, not {ms:?}"
                    ));
                    return None;
                }
            },
        };
        if self.buffer_max_bytes < 1024 * 1024 {
            errors.push(format!(
                "--buffer-max-bytes (BUFFER_MAX_BYTES) must be at least 1 MiB (1048576), not {}",
                self.buffer_max_bytes
            ));
            return None;
        }
        if !(0.0..=1.0).contains(&self.buffer_warn_fill) {
            errors.push(format!(
                "--buffer-warn-fill (BUFFER_WARN_FILL) must be a fraction from 0 (off) to 1, e.g. 0.8 for 80 %, not {}",
                self.buffer_warn_fill
            ));
            return None;
        }
        Some(BufferConfig {
            dir,
            max_bytes: self.buffer_max_bytes,
            segment_bytes: 64 * 1024 * 1024,
            when_full: self.buffer_when_full,
            fsync,
            warn_fill: self.buffer_warn_fill,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(warn_fill: f64) -> BufferArgs {
        BufferArgs {
            buffer_dir: Some("/tmp/b".into()),
            buffer_max_bytes: DEFAULT_BUFFER_MAX_BYTES,
            buffer_when_full: WhenFull::DropNewest,
            buffer_fsync: "100".into(),
            buffer_warn_fill: warn_fill,
        }
    }

    #[test]
    fn the_warn_fill_is_a_fraction_or_off() {
        for ok in [0.0, 0.8, 1.0] {
            let mut errors = Vec::new();
            let cfg = args(ok).config(&mut errors).expect("valid");
            assert_eq!((cfg.warn_fill, errors.len()), (ok, 0));
        }
        for bad in [80.0, -0.1, f64::NAN] {
            let mut errors = Vec::new();
            assert!(args(bad).config(&mut errors).is_none());
            assert_eq!(
                errors,
                [format!(
                    "--buffer-warn-fill (BUFFER_WARN_FILL) must be a fraction from 0 (off) to 1, e.g. 0.8 for 80 %, not {bad}"
                )]
            );
        }
    }
}

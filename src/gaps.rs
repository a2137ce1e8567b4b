//! `cf-audit-nozzle gaps`: proves a delivered stream complete, or names what
//! is missing. Every record carries `boot` (one process start) and `seq`
//! (0, 1, 2, ... per boot and kind); declarations (`last_seq`, no `seq`)
//! say how far each kind's numbering went, so a lost tail shows too. Per
//! (boot, kind), the numbers `0..=max(last_seq, largest seq)` that were not
//! seen are missing; a number seen more than once is a duplicate (a replay
//! after a restart: not a loss).
//!
//! Reads an archive (`CFLogs/**/*.json.gz` in a local folder or an S3
//! bucket, opened as [`validate`](crate::validate) opens it), one file at a
//! time and each file one record at a time, or a SIEM's JSON-lines export.
//! Only `kind`, `boot`, `seq` and `last_seq` are read. Per group, the seen
//! numbers are kept as ranges ([`ranges`]), so a long stream with few holes
//! takes little memory.
//!
//! An input that cannot be opened, listed or fetched is an error (exit 2);
//! a line, record or file that cannot be read as a record is counted and the
//! first few are named, and the rest is still checked.

mod decode;
mod ranges;
mod report;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde_json::Value;

use crate::sink::archive::{Archive, ArchiveError};
use crate::validate::{OpenError, open_archive};
use decode::{Element, Fields};
use ranges::Counted;
pub use report::{GroupReport, Repeated, Report, Span};

/// How many malformed inputs the report names (all are counted).
const NAMED_MALFORMED: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum GapsError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("--dir {0}: not a folder")]
    NotAFolder(String),
    #[error("cannot read {what}: {reason}")]
    Read {
        what: String,
        reason: std::io::Error,
    },
    #[error("no record could be read from {source_name} ({count} malformed, e.g. {first})")]
    NothingRead {
        source_name: String,
        count: u64,
        first: String,
    },
}

/// What one (boot, kind) group has shown so far.
#[derive(Debug, Default)]
struct Group {
    /// Records (declarations not included), numbered or not.
    records: u64,
    unnumbered: u64,
    declarations: u64,
    last_seq: Option<u64>,
    seqs: Counted,
}

/// Every group, and what could not be read.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// By (boot, kind); records without `boot` under `None`.
    groups: BTreeMap<(Option<String>, String), Group>,
    malformed: u64,
    named: Vec<String>,
}

/// A record read: numbered or not, or a declaration.
enum Entry {
    Record {
        boot: Option<String>,
        kind: String,
        seq: Option<u64>,
    },
    Declaration {
        boot: String,
        kind: String,
        last_seq: u64,
    },
}

/// A value as an error shows it: its JSON, cut short.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text,
    }
}

fn number(name: &str, v: Option<Value>) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("\"{name}\" is not a non-negative integer: {}", shown(&v))),
    }
}

/// What a record's members say, or what is wrong with them.
fn entry(fields: Fields) -> Result<Entry, String> {
    let kind = match fields.kind {
        Some(Value::String(k)) => k,
        Some(other) => return Err(format!("\"kind\" is not a string: {}", shown(&other))),
        None => return Err("no \"kind\"".into()),
    };
    let boot = match fields.boot {
        Some(Value::String(b)) => Some(b),
        Some(other) => return Err(format!("\"boot\" is not a string: {}", shown(&other))),
        None => None,
    };
    let seq = number("seq", fields.seq)?;
    let last_seq = number("last_seq", fields.last_seq)?;
    match (boot, seq, last_seq) {
        (_, Some(_), Some(_)) => Err("has both \"seq\" and \"last_seq\"".into()),
        (None, Some(_), None) => Err("has \"seq\" but no \"boot\"".into()),
        (None, None, Some(_)) => Err("has \"last_seq\" but no \"boot\"".into()),
        (Some(boot), None, Some(last_seq)) => Ok(Entry::Declaration {
            boot,
            kind,
            last_seq,
        }),
        (boot, seq, None) => Ok(Entry::Record { boot, kind, seq }),
    }
}

impl Tally {
    /// Counts one decoded element; `at` names it for an error.
    fn element(&mut self, element: Element, at: &dyn Fn() -> String) {
        let fields = match element {
            Element::Object(fields) => fields,
            Element::Other(what) => {
                return self.malformed(format!("{}: {what}, not a record (a JSON object)", at()));
            }
        };
        match entry(fields) {
            Err(problem) => self.malformed(format!("{}: {problem}", at())),
            Ok(Entry::Record { boot, kind, seq }) => {
                let group = self.groups.entry((boot, kind)).or_default();
                group.records += 1;
                match seq {
                    Some(n) => group.seqs.insert(n),
                    None => group.unnumbered += 1,
                }
            }
            Ok(Entry::Declaration {
                boot,
                kind,
                last_seq,
            }) => {
                let group = self.groups.entry((Some(boot), kind)).or_default();
                group.declarations += 1;
                group.last_seq = group.last_seq.max(Some(last_seq));
            }
        }
    }

    fn malformed(&mut self, problem: String) {
        self.malformed += 1;
        if self.named.len() < NAMED_MALFORMED {
            self.named.push(problem);
        }
    }

    /// Reads a JSON-lines export (`name` for errors); blank lines are skipped.
    pub(crate) fn read_lines(
        &mut self,
        mut input: impl BufRead,
        name: &str,
    ) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut number = 0u64;
        loop {
            buf.clear();
            if input.read_until(b'\n', &mut buf)? == 0 {
                return Ok(());
            }
            number += 1;
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = || format!("{name} line {number}");
            // Without its line end, an error's position is on its own line.
            let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            match decode::line(text) {
                Ok(element) => self.element(element, &at),
                Err(e) => self.malformed(format!("{}: not JSON ({e})", at())),
            }
        }
    }

    /// Reads one gzip archive file (`location` for errors).
    pub(crate) fn read_archive_file(&mut self, body: &[u8], location: &str) {
        let result = decode::archive_file(body, &mut |i, element| {
            self.element(element, &|| format!("{location} Records[{i}]"));
        });
        if let Err(e) = result {
            let after = match e.read {
                0 => String::new(),
                1 => " after 1 record".to_string(),
                n => format!(" after {n} records"),
            };
            self.malformed(format!("{location}: {}{after}", e.reason));
        }
    }

    /// The report: every group in (boot, kind) order.
    pub(crate) fn report(self, source: String) -> Report {
        let groups = self
            .groups
            .into_iter()
            .map(|((boot, kind), g)| report::group(boot, kind, g))
            .collect();
        Report {
            source,
            groups,
            malformed: self.malformed,
            malformed_named: self.named,
        }
    }
}

/// The records of every `CFLogs/**/*.json.gz` of `archive`, in key order.
pub async fn read_archive(archive: &Archive) -> Result<Report, GapsError> {
    let mut tally = Tally::default();
    let keys = archive.list(&archive.logs, "CFLogs/").await?;
    for key in keys.iter().filter(|k| k.ends_with(".json.gz")) {
        let fetched = archive.get(&archive.logs, key).await?;
        tally.read_archive_file(&fetched.body, &archive.location(key));
    }
    let root = archive.location(&crate::sink::archive::join_prefix(
        &archive.prefix,
        "CFLogs/",
    ));
    Ok(tally.report(root))
}

/// The records of a JSON-lines file, `-` for standard input.
pub fn read_jsonl(path: &Path) -> Result<Report, GapsError> {
    let mut tally = Tally::default();
    let stdin = path == Path::new("-");
    let name = match stdin {
        true => "standard input".to_string(),
        false => path.display().to_string(),
    };
    let read_error = |reason| GapsError::Read {
        what: name.clone(),
        reason,
    };
    if stdin {
        tally
            .read_lines(std::io::stdin().lock(), "stdin")
            .map_err(read_error)?;
    } else {
        let file = std::fs::File::open(path).map_err(read_error)?;
        tally
            .read_lines(std::io::BufReader::new(file), &name)
            .map_err(read_error)?;
    }
    Ok(tally.report(name))
}

/// `cf-audit-nozzle gaps`: the records `args` name (`--jsonl`, else
/// `--dir`, else the S3 bucket from the flags and an S3 binding in `env`).
/// An input where nothing at all could be read as a record is an error.
pub async fn gaps_args(
    args: &crate::config::GapsArgs,
    env: &dyn crate::config::Env,
) -> Result<Report, GapsError> {
    let report = match (&args.jsonl, &args.dir) {
        (Some(path), _) => read_jsonl(path)?,
        (None, dir) => {
            if let Some(dir) = dir
                && !dir.is_dir()
            {
                // Opening would create it: an empty folder proves nothing.
                return Err(GapsError::NotAFolder(dir.display().to_string()));
            }
            let archive = open_archive(
                "gaps needs --jsonl, --dir or --s3-bucket",
                dir.as_deref(),
                &args.s3,
                env,
            )?;
            read_archive(&archive).await?
        }
    };
    if report.groups.is_empty() && report.malformed > 0 {
        return Err(GapsError::NothingRead {
            source_name: report.source,
            count: report.malformed,
            first: report.malformed_named.first().cloned().unwrap_or_default(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(text: &str) -> Vec<u8> {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        w.write_all(text.as_bytes()).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn a_file_cut_short_keeps_the_records_before_the_cut() {
        let mut tally = Tally::default();
        let cut = r#"{"Records":[{"kind":"api","boot":"b","seq":0},"x",{"kind":"api","boot":"b","seq":2},{"kind":"#;
        tally.read_archive_file(&gzip(cut), "dir/CFLogs/f.json.gz");
        let report = tally.report("dir/CFLogs/".into());
        assert_eq!(report.groups.len(), 1);
        assert_eq!(report.groups[0].records, 2);
        assert_eq!(report.groups[0].missing_count, 1);
        assert_eq!(
            report.malformed_named,
            [
                "dir/CFLogs/f.json.gz Records[1]: a string, not a record (a JSON object)",
                "dir/CFLogs/f.json.gz: not JSON (EOF while parsing a value at line 1 column 92) after 3 records",
            ]
        );
    }
}

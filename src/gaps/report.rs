//! The `gaps` report: per (boot, kind) what was seen, what is missing and
//! what came more than once, as text for a person or JSON for automation.

use std::fmt::Write;

use serde::Serialize;

use super::Group;

/// Numbers `from..=to`, `count` of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Span {
    pub from: u64,
    pub to: u64,
    pub count: u64,
}

/// Numbers `from..=to`, each seen `times` times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Repeated {
    pub from: u64,
    pub to: u64,
    pub times: u64,
}

/// One (boot, kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupReport {
    /// `None` for records without `boot` (from before numbering).
    pub boot: Option<String>,
    pub kind: String,
    /// Records seen (declarations not included).
    pub records: u64,
    /// Records without `seq`.
    pub unnumbered: u64,
    pub declarations: u64,
    /// The largest `last_seq` declared.
    pub last_seq: Option<u64>,
    /// The largest `seq` seen.
    pub max_seq: Option<u64>,
    /// The numbers expected: `0..=max(last_seq, max_seq)`, when either is known.
    pub expected: Option<Span>,
    pub missing: Vec<Span>,
    pub missing_count: u64,
    pub duplicates: Vec<Repeated>,
    /// Copies beyond the first, over every number.
    pub duplicate_count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// What was read: the archive's CFLogs/ folder, or the JSON-lines file.
    pub source: String,
    pub groups: Vec<GroupReport>,
    /// Lines, records or files that could not be read as records.
    pub malformed: u64,
    /// The first of them, each naming the input and what was wrong.
    pub malformed_named: Vec<String>,
}

pub(super) fn group(boot: Option<String>, kind: String, g: Group) -> GroupReport {
    let seen = g.seqs.seen();
    let max_seq = seen.and_then(|s| s.max());
    let top = max_seq.max(g.last_seq);
    let missing: Vec<Span> = match (top, seen) {
        (None, _) => Vec::new(),
        (Some(top), Some(seen)) => seen.absent(0, top).into_iter().map(span).collect(),
        (Some(top), None) => vec![span((0, top))],
    };
    let duplicates = g
        .seqs
        .duplicates()
        .into_iter()
        .map(|(from, to, times)| Repeated { from, to, times })
        .collect();
    GroupReport {
        boot,
        kind,
        records: g.records,
        unnumbered: g.unnumbered,
        declarations: g.declarations,
        last_seq: g.last_seq,
        max_seq,
        expected: top.map(|t| span((0, t))),
        missing_count: missing.iter().map(|s| s.count).sum(),
        missing,
        duplicates,
        duplicate_count: g.seqs.extra(),
    }
}

fn span((from, to): (u64, u64)) -> Span {
    Span {
        from,
        to,
        // 0..=u64::MAX does not fit; saturating is as good as exact there.
        count: (to - from).saturating_add(1),
    }
}

fn range(from: u64, to: u64) -> String {
    if from == to {
        from.to_string()
    } else {
        format!("{from}-{to}")
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl GroupReport {
    fn render(&self, out: &mut String) {
        let boot = self.boot.as_deref().unwrap_or("-");
        let _ = write!(
            out,
            "boot {boot} kind {}: {}",
            self.kind,
            plural(self.records, "record", "records")
        );
        if self.unnumbered > 0 {
            let _ = write!(out, ", {} unnumbered", self.unnumbered);
        }
        match self.last_seq {
            Some(l) => {
                let d = plural(self.declarations, "declaration", "declarations");
                let _ = writeln!(out, ", last_seq {l} declared ({d})");
            }
            None => out.push_str(", no declaration\n"),
        }
        if let Some(expected) = &self.expected {
            let all = range(expected.from, expected.to);
            if self.missing.is_empty() {
                let _ = writeln!(out, "  complete: seq {all}");
            } else {
                let list: Vec<String> = self
                    .missing
                    .iter()
                    .map(|s| format!("{} ({})", range(s.from, s.to), s.count))
                    .collect();
                let _ = writeln!(
                    out,
                    "  missing {} of seq {all}: {}",
                    self.missing_count,
                    list.join(", ")
                );
            }
        }
        if !self.duplicates.is_empty() {
            let list: Vec<String> = self
                .duplicates
                .iter()
                .map(|d| format!("{} ×{}", range(d.from, d.to), d.times))
                .collect();
            let _ = writeln!(
                out,
                "  duplicates {}: {}",
                self.duplicate_count,
                list.join(", ")
            );
        }
    }
}

impl Report {
    /// Nothing missing in any group (duplicates and unnumbered records allowed).
    pub fn complete(&self) -> bool {
        self.groups.iter().all(|g| g.missing.is_empty())
    }

    /// A paragraph per group, the malformed inputs, then the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for g in &self.groups {
            g.render(&mut out);
        }
        if self.malformed > 0 {
            let _ = writeln!(out, "malformed {}:", self.malformed);
            for m in &self.malformed_named {
                let _ = writeln!(out, "  {m}");
            }
            let more = self.malformed - self.malformed_named.len() as u64;
            if more > 0 {
                let _ = writeln!(out, "  ... and {more} more");
            }
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    pub fn summary(&self) -> String {
        let sum = |f: fn(&GroupReport) -> u64| self.groups.iter().map(f).sum::<u64>();
        let incomplete = self.groups.iter().filter(|g| !g.missing.is_empty()).count() as u64;
        format!(
            "Results: {}, {} ({} unnumbered), {} missing in {}, {}, {} malformed: {}",
            plural(self.groups.len() as u64, "group", "groups"),
            plural(sum(|g| g.records), "record", "records"),
            sum(|g| g.unnumbered),
            sum(|g| g.missing_count),
            plural(incomplete, "group", "groups"),
            plural(sum(|g| g.duplicate_count), "duplicate", "duplicates"),
            self.malformed,
            if self.complete() {
                "complete"
            } else {
                "INCOMPLETE"
            }
        )
    }

    /// The report as one JSON object (`complete` first), with a newline.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            complete: bool,
            #[serde(flatten)]
            report: &'a Report,
        }
        let mut text = serde_json::to_string_pretty(&Out {
            complete: self.complete(),
            report: self,
        })
        .unwrap_or_default();
        text.push('\n');
        text
    }
}

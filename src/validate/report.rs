//! What `validate` found: one finding per file, the gaps between a chain's
//! digests, and the two ways of printing them (human lines, `--json`).

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Digest,
    Log,
}

/// One line of the report: a file and what is wrong with it. `problem`
/// set: invalid. `unverified` set: a log file no digest covers (after the
/// newest digest of a running nozzle, outside the time range, or written
/// while a crashed nozzle was not writing digests): reported, not a failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub kind: FileKind,
    pub location: String,
    pub problem: Option<String>,
    pub unverified: Option<String>,
}

impl Finding {
    pub(crate) fn new(kind: FileKind, location: String, problem: Option<String>) -> Self {
        Self {
            kind,
            location,
            problem,
            unverified: None,
        }
    }
}

/// Time between two linked digests of a chain that no digest covers.
/// Declared: the later digest says the nozzle was not writing (it was
/// stopped); undeclared: nothing says why (digests missing), a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    pub foundation: String,
    pub instance_index: u32,
    pub from: String,
    pub until: String,
    pub declared: bool,
    /// The digests before and after it.
    pub after: String,
    pub before: String,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub gaps: Vec<Gap>,
}

/// Counts by kind: (valid, invalid, unverified).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub valid: usize,
    pub invalid: usize,
    pub unverified: usize,
}

impl Report {
    /// Nothing invalid and no undeclared gap (`validate`'s exit 0).
    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.problem.is_none()) && self.gaps.iter().all(|g| g.declared)
    }

    pub fn counts(&self, kind: FileKind) -> Counts {
        let mut c = Counts::default();
        for f in self.findings.iter().filter(|f| f.kind == kind) {
            match (&f.problem, &f.unverified) {
                (Some(_), _) => c.invalid += 1,
                (None, Some(_)) => c.unverified += 1,
                (None, None) => c.valid += 1,
            }
        }
        c
    }

    /// One line per file and per gap, then the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let what = match f.kind {
                FileKind::Digest => "Digest file",
                FileKind::Log => "Log file",
            };
            let line = match (&f.problem, &f.unverified) {
                (Some(p), _) => format!("{what} {} INVALID: {p}\n", f.location),
                (None, Some(u)) => format!("{what} {} unverified: {u}\n", f.location),
                (None, None) => format!("{what} {} valid\n", f.location),
            };
            out.push_str(&line);
        }
        for g in &self.gaps {
            let (foundation, instance) = (&g.foundation, g.instance_index);
            let line = if g.declared {
                format!(
                    "Declared gap in the chain of {foundation} instance {instance} from {} until {}: the nozzle was not writing (declared by {})\n",
                    g.from, g.until, g.before
                )
            } else {
                format!(
                    "Gap in the chain of {foundation} instance {instance} from {} until {} INVALID: undeclared (between {} and {}: digests missing?)\n",
                    g.from, g.until, g.after, g.before
                )
            };
            out.push_str(&line);
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// `Results: ...`; unverified files and gaps are named only when there are any.
    pub fn summary(&self) -> String {
        let d = self.counts(FileKind::Digest);
        let l = self.counts(FileKind::Log);
        let (dn, ln) = (d.valid + d.invalid, l.valid + l.invalid);
        let mut s = format!(
            "Results: {}/{dn} digest files valid, {}/{dn} digest files INVALID; {}/{ln} log files valid, {}/{ln} log files INVALID",
            d.valid, d.invalid, l.valid, l.invalid
        );
        if l.unverified > 0 {
            s.push_str(&format!(
                "; {} log files unverified (in no covered period)",
                l.unverified
            ));
        }
        let declared = self.gaps.iter().filter(|g| g.declared).count();
        let undeclared = self.gaps.len() - declared;
        if declared > 0 {
            s.push_str(&format!("; {declared} declared gaps"));
        }
        if undeclared > 0 {
            s.push_str(&format!("; {undeclared} undeclared gaps INVALID"));
        }
        s
    }

    /// `validate --json`: one document with every file, every gap and the
    /// summary (the same facts as [`render`](Self::render)).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct File<'a> {
            #[serde(rename = "type")]
            kind: FileKind,
            location: &'a str,
            status: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            problem: Option<&'a str>,
        }
        let files: Vec<File> = self
            .findings
            .iter()
            .map(|f| {
                let (status, problem) = match (&f.problem, &f.unverified) {
                    (Some(p), _) => ("invalid", Some(p.as_str())),
                    (None, Some(u)) => ("unverified", Some(u.as_str())),
                    (None, None) => ("valid", None),
                };
                File {
                    kind: f.kind,
                    location: &f.location,
                    status,
                    problem,
                }
            })
            .collect();
        let declared: Vec<&Gap> = self.gaps.iter().filter(|g| g.declared).collect();
        let undeclared: Vec<&Gap> = self.gaps.iter().filter(|g| !g.declared).collect();
        let doc = serde_json::json!({
            "valid": self.ok(),
            "files": files,
            "declaredGaps": declared,
            "undeclaredGaps": undeclared,
            "summary": {
                "digestFiles": self.counts(FileKind::Digest),
                "logFiles": self.counts(FileKind::Log),
                "declaredGaps": declared.len(),
                "undeclaredGaps": undeclared.len(),
            },
        });
        serde_json::to_string_pretty(&doc).expect("a report serialises")
    }
}

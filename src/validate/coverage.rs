//! Which times a chain's digests vouch for, and what that makes of a log
//! file no digest lists: invalid when its name dates it in a covered period
//! (it was added, copied or moved there), unverified when no digest could
//! have listed it yet or ever (after the newest digest of a running nozzle,
//! outside the time range, while a crashed nozzle wrote no digest).
//!
//! Log file names carry their delivery minute, digests second-precise times,
//! so the minute a period starts or ends in is covered only when every file
//! of that minute must be listed: a period's first minute when the chain
//! starts there or runs on from the digest before it (or that digest was
//! its run's final one); its last minute when the period is a run's final
//! digest or the next digest continues from it. A clean stop's declared
//! gap is covered whole: nothing of the nozzle's is dated in it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDateTime, Utc};

use super::parse_time;
use super::report::Gap;

/// A digest's name read back: chain (foundation, instance) and end time.
pub(super) fn parse_digest_name(key: &str) -> Option<(String, u32, DateTime<Utc>)> {
    let name = key.rsplit('/').next()?.strip_suffix(".json.gz")?;
    let (foundation, rest) = name.split_once("_CFLogs-Digest_")?;
    let (instance, time) = rest.split_once('_')?;
    let t = NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ").ok()?;
    Some((foundation.to_string(), instance.parse().ok()?, t.and_utc()))
}

/// A log file's key read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LogName {
    pub foundation: String,
    pub minute: DateTime<Utc>,
    pub instance: u32,
}

/// A log file's key read back: `.../CFLogs/<foundation>/<kind>/<YYYY>/<MM>/<DD>/<foundation>_<kind>_<YYYYMMDDTHHmmZ>_<instance>_<unique>.json.gz`.
/// `Err` says what does not fit: a name the nozzle never writes, or a file
/// whose name says another foundation, kind or day than its folder (copied
/// or moved in from elsewhere).
pub(super) fn parse_log_name(key: &str) -> Result<LogName, String> {
    let parts: Vec<&str> = key.split('/').collect();
    let at = parts
        .iter()
        .rposition(|p| *p == "CFLogs")
        .filter(|at| parts.len() == at + 7)
        .ok_or("not where the nozzle puts log files (CFLogs/<foundation>/<kind>/<YYYY>/<MM>/<DD>/<name>)")?;
    let [foundation, kind, y, m, d, name] = [1, 2, 3, 4, 5, 6].map(|i| parts[at + i]);
    let bad_name = || "not a log file name the nozzle writes (added, or renamed)".to_string();
    let stem = name.strip_suffix(".json.gz").ok_or_else(bad_name)?;
    let mut fields = stem.rsplitn(4, '_');
    let (_unique, instance, time, head) = (
        fields.next().ok_or_else(bad_name)?,
        fields.next().ok_or_else(bad_name)?,
        fields.next().ok_or_else(bad_name)?,
        fields.next().ok_or_else(bad_name)?,
    );
    let instance: u32 = instance.parse().map_err(|_| bad_name())?;
    let minute = NaiveDateTime::parse_from_str(&format!("{time}00"), "%Y%m%dT%H%MZ%S")
        .map_err(|_| bad_name())?
        .and_utc();
    if head != format!("{foundation}_{kind}") {
        return Err(format!(
            "its name is of {head:?}, not of the folder it is in ({foundation}/{kind}): copied or moved in from another kind or foundation"
        ));
    }
    if minute.format("%Y/%m/%d").to_string() != format!("{y}/{m}/{d}") {
        return Err(format!(
            "its name dates it {}, not in the folder it is in ({y}/{m}/{d}): moved",
            minute.format("%Y-%m-%d")
        ));
    }
    Ok(LogName {
        foundation: foundation.to_string(),
        minute,
        instance,
    })
}

/// What the walk read from one valid-format digest.
#[derive(Clone, Debug)]
pub(super) struct Walked {
    pub key: String,
    pub location: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub start_text: String,
    pub end_text: String,
    pub previous: Option<String>,
    pub declared_gap: Option<(String, String)>,
    pub final_digest: bool,
}

/// One chain as walked: its digests by key and the log files they list.
#[derive(Default)]
pub(super) struct ChainCoverage {
    pub walked: BTreeMap<String, Walked>,
}

/// Why a chain does not cover a minute; `None` when it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cover {
    Covered,
    /// Dated while the nozzle had stopped cleanly.
    Stopped,
}

fn minute(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(60)
}

impl ChainCoverage {
    /// The newer digest that links to `key` and continues its period
    /// without a gap.
    fn contiguous_successor(&self, w: &Walked) -> bool {
        self.walked
            .values()
            .any(|s| s.previous.as_deref() == Some(w.key.as_str()) && s.start == w.end)
    }

    /// The gaps between linked digests: declared when the later digest
    /// declares exactly this time, otherwise undeclared.
    pub fn gaps(&self, foundation: &str, instance: u32) -> Vec<Gap> {
        let mut gaps = Vec::new();
        for later in self.walked.values() {
            let Some(earlier) = later.previous.as_ref().and_then(|p| self.walked.get(p)) else {
                continue;
            };
            if later.start == earlier.end && later.declared_gap.is_none() {
                continue;
            }
            let declared = later.declared_gap.as_ref().is_some_and(|(from, until)| {
                parse_time("declaredGap.from", from).ok() == Some(earlier.end)
                    && parse_time("declaredGap.until", until).ok() == Some(later.start)
            });
            gaps.push(Gap {
                foundation: foundation.to_string(),
                instance_index: instance,
                from: earlier.end_text.clone(),
                until: later.start_text.clone(),
                declared,
                after: earlier.location.clone(),
                before: later.location.clone(),
            });
        }
        gaps
    }

    /// Whether a log file dated `at` (its delivery minute) must be listed
    /// by one of this chain's walked digests.
    fn cover(&self, at: DateTime<Utc>) -> Option<Cover> {
        let m = minute(at);
        for w in self.walked.values() {
            let previous = w.previous.as_ref().and_then(|p| self.walked.get(p));
            let first_in = match (&w.previous, previous) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(_), Some(p)) => p.end == w.start || p.final_digest,
            };
            let last_in = w.final_digest || self.contiguous_successor(w);
            let (from, to) = (minute(w.start), minute(w.end));
            let after_start = m > from || (m == from && first_in);
            let before_end = m < to || (m == to && last_in);
            if after_start && before_end {
                return Some(Cover::Covered);
            }
            // A clean stop: nothing of the nozzle's between its final digest
            // and the next run's declared start.
            if let Some(p) = previous
                && p.final_digest
                && w.declared_gap.is_some()
                && m >= minute(p.end)
                && m <= from
            {
                return Some(Cover::Stopped);
            }
        }
        None
    }

    /// The problem of an unlisted log file dated `at`, or why it is only unverified.
    pub fn unlisted(&self, at: DateTime<Utc>) -> Result<String, String> {
        match self.cover(at) {
            Some(Cover::Covered) => {
                Err("not listed in any digest, but dated in a period the digests cover (added, copied or moved here)".into())
            }
            Some(Cover::Stopped) => Err(
                "not listed in any digest, and dated while the nozzle was stopped (after its final digest): not written by the nozzle".into(),
            ),
            None => Ok("not listed in any digest; dated outside every period the digests cover (not yet digested, written before the chain, or while the nozzle was not writing digests)".into()),
        }
    }
}

/// Every log key under `CFLogs/` that no digest lists, with its verdict:
/// `Err(problem)` invalid, `Ok(reason)` unverified. `chains` by
/// (foundation, instance); `listed` what every walked digest lists; only
/// files dated in `[start, end]` (when the name gives a date).
pub(super) fn unlisted_logs<'a>(
    log_keys: &'a [String],
    listed: &'a BTreeSet<String>,
    chains: &'a BTreeMap<(String, u32), ChainCoverage>,
    (start, end): (Option<DateTime<Utc>>, DateTime<Utc>),
) -> impl Iterator<Item = (&'a String, Result<String, String>)> + 'a {
    log_keys
        .iter()
        .filter(|k| !listed.contains(*k))
        .filter_map(move |key| match parse_log_name(key) {
            Err(problem) => Some((key, Err(problem))),
            Ok(name) => {
                let in_range = start.is_none_or(|s| minute(name.minute) >= minute(s))
                    && minute(name.minute) <= minute(end);
                if !in_range {
                    return None;
                }
                let verdict = match chains.get(&(name.foundation, name.instance)) {
                    Some(chain) => chain.unlisted(name.minute),
                    None => Ok("not listed in any digest; no digest chain of its foundation and instance in the time range".into()),
                };
                Some((key, verdict))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        parse_time("t", s).unwrap()
    }

    #[test]
    fn names_are_read_back_and_checked_against_their_folder() {
        assert_eq!(
            parse_digest_name(
                "p/CFLogs-Digest/cf_1/2026/11/27/cf_1_CFLogs-Digest_3_20261127T150102Z.json.gz"
            ),
            Some(("cf_1".to_string(), 3, t("2026-11-27T15:01:02Z")))
        );
        assert_eq!(parse_digest_name("p/CFLogs-Digest/x/y.json.gz"), None);
        assert_eq!(
            parse_log_name(
                "p/CFLogs/cf_1/app_log/2026/11/27/cf_1_app_log_20261127T1501Z_12_AbCdEfGhIjKlMnOp.json.gz"
            ),
            Ok(LogName {
                foundation: "cf_1".into(),
                minute: t("2026-11-27T15:01:00Z"),
                instance: 12
            })
        );
        assert_eq!(
            parse_log_name("p/CFLogs/cf/api/x.json.gz").unwrap_err(),
            "not where the nozzle puts log files (CFLogs/<foundation>/<kind>/<YYYY>/<MM>/<DD>/<name>)"
        );
        assert_eq!(
            parse_log_name("CFLogs/cf/api/2026/11/27/elsewhere.json.gz").unwrap_err(),
            "not a log file name the nozzle writes (added, or renamed)"
        );
        assert_eq!(
            parse_log_name("CFLogs/cf/api/2026/11/27/cf_app_log_20261127T1501Z_1_x.json.gz")
                .unwrap_err(),
            "its name is of \"cf_app_log\", not of the folder it is in (cf/api): copied or moved in from another kind or foundation"
        );
        assert_eq!(
            parse_log_name("CFLogs/cf/api/2026/11/28/cf_api_20261127T1501Z_1_x.json.gz")
                .unwrap_err(),
            "its name dates it 2026-11-27, not in the folder it is in (2026/11/28): moved"
        );
    }

    fn walked(key: &str, start: &str, end: &str, previous: Option<&str>) -> Walked {
        Walked {
            key: key.into(),
            location: key.into(),
            start: t(start),
            end: t(end),
            start_text: start.into(),
            end_text: end.into(),
            previous: previous.map(str::to_string),
            declared_gap: None,
            final_digest: false,
        }
    }

    #[test]
    fn boundary_minutes_are_covered_only_when_every_file_of_them_must_be_listed() {
        let mut chain = ChainCoverage::default();
        let a = walked("a", "2026-11-27T10:00:30Z", "2026-11-27T11:00:30Z", None);
        let b = walked(
            "b",
            "2026-11-27T11:00:30Z",
            "2026-11-27T12:00:30Z",
            Some("a"),
        );
        chain.walked.insert("a".into(), a);
        chain.walked.insert("b".into(), b);
        let covered = |chain: &ChainCoverage, at: &str| chain.unlisted(t(at)).is_err();
        // The chain's first minute, the minute between two digests, the middle.
        assert!(covered(&chain, "2026-11-27T10:00:00Z"));
        assert!(covered(&chain, "2026-11-27T11:00:00Z"));
        assert!(covered(&chain, "2026-11-27T11:30:00Z"));
        assert!(!covered(&chain, "2026-11-27T09:59:00Z"));
        // The newest digest of a running nozzle: its last minute may hold
        // files the next digest will list.
        assert!(!covered(&chain, "2026-11-27T12:00:00Z"));
        chain.walked.get_mut("b").unwrap().final_digest = true;
        assert!(covered(&chain, "2026-11-27T12:00:00Z"));
        assert!(!covered(&chain, "2026-11-27T12:01:00Z"));
        // A clean stop, then a run that declares the gap: covered whole.
        let mut c = walked(
            "c",
            "2026-11-27T14:00:10Z",
            "2026-11-27T15:00:10Z",
            Some("b"),
        );
        c.declared_gap = Some(("2026-11-27T12:00:30Z".into(), "2026-11-27T14:00:10Z".into()));
        chain.walked.insert("c".into(), c);
        assert_eq!(
            chain.unlisted(t("2026-11-27T13:00:00Z")).unwrap_err(),
            "not listed in any digest, and dated while the nozzle was stopped (after its final digest): not written by the nozzle"
        );
        assert!(covered(&chain, "2026-11-27T14:00:00Z"));
        assert_eq!(chain.gaps("cf", 0).len(), 1);
        assert!(chain.gaps("cf", 0)[0].declared);
        // After a crash (b not final), the gap's files are unverified.
        chain.walked.get_mut("b").unwrap().final_digest = false;
        assert!(!covered(&chain, "2026-11-27T13:00:00Z"));
        assert!(!covered(&chain, "2026-11-27T14:00:00Z"));
        assert!(covered(&chain, "2026-11-27T14:01:00Z"));
        // Undeclared: the same gap without its declaration.
        chain.walked.get_mut("c").unwrap().declared_gap = None;
        assert!(!chain.gaps("cf", 0)[0].declared);
    }
}

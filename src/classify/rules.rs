//! Include/exclude rules: which records the nozzle delivers.
//!
//! A rule is one or more conditions joined by `,`, all of which must hold:
//! `FIELD=VALUE[|VALUE...]`. A value ending in `*` matches by prefix. Fields:
//!
//! | field | matches |
//! |---|---|
//! | `kind` | `api`, `app_log`, `metric`, `event` |
//! | `source_type` | the `source_type` tag (`APP/PROC/WEB`, `RTR`, `API`, ...) |
//! | `origin`, `deployment`, `job` | those tags |
//! | `source_id` | the envelope's source id |
//! | `app`, `space`, `org` | the guid or the name (tags, or the audit event's resources) |
//! | `metric` | a counter's or timer's name, or any of a gauge's metric names |
//! | `source_event` | `firehose`, `audit_events`, `cc_security_event` or `uaa_audit` (`api` records only) |
//! | `eventName` | an `api` record's event name (`audit.app.*` by prefix) |
//! | `readOnly` | `true` or `false` (`api` records whose event reads or writes) |
//! | `eventSource` | `cloud_controller` or `uaa` (`api` records only) |
//! | `outcome` | `success`, `denied`, `failure`, or `unknown` for a firehose line no security event was merged into (`api` records only) |
//! | `tag.NAME` | any tag |
//!
//! A record is delivered when it matches at least one `--include` rule (or
//! there are none) and no `--exclude` rule. Two rules are always applied
//! besides (they never remove `api` records, which are the audit trail):
//! the nozzle's own app (from `VCAP_APPLICATION`) is left out so it never
//! forwards its own logs in a loop, and so is an app that opted out with the
//! app label [`OPT_OUT_TAG`]`=true`.
//!
//! Matching reads the record in place: no allocation, no lock.

use crate::record::envelope::OPT_OUT_TAG;
use crate::record::{Kind, MessageRef, Record, app_guid, audit_resource, audit_space_org};

/// One `--include` or `--exclude` rule: all its conditions hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Condition {
    field: Field,
    /// Any one of these.
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Field {
    Kind,
    Tag(String),
    SourceId,
    App,
    Space,
    Org,
    Metric,
    SourceEvent,
    EventName,
    ReadOnly,
    EventSource,
    Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Exact(p) => v == p,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
        }
    }
}

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut conditions = Vec::new();
        for part in text.split(',') {
            let (name, values) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not FIELD=VALUE"))?;
            let name = name.trim();
            let field = match name {
                "kind" => Field::Kind,
                "source_type" | "origin" | "deployment" | "job" => Field::Tag(name.to_string()),
                "source_id" => Field::SourceId,
                "app" => Field::App,
                "space" => Field::Space,
                "org" => Field::Org,
                "metric" => Field::Metric,
                "source_event" => Field::SourceEvent,
                "eventName" => Field::EventName,
                "readOnly" => Field::ReadOnly,
                "eventSource" => Field::EventSource,
                "outcome" => Field::Outcome,
                _ => match name.strip_prefix("tag.") {
                    Some(tag) if !tag.is_empty() => Field::Tag(tag.to_string()),
                    _ => {
                        return Err(format!(
                            "unknown field {name:?} (expected kind, source_type, origin, source_id, app, space, org, deployment, job, metric, source_event, eventName, readOnly, eventSource, outcome or tag.NAME)"
                        ));
                    }
                },
            };
            let mut patterns = Vec::new();
            for v in values.split('|') {
                let v = v.trim();
                if v.is_empty() {
                    return Err(format!("{part:?} has an empty value"));
                }
                let allowed: &[&str] = match field {
                    Field::ReadOnly => &["true", "false"],
                    Field::Outcome => &["success", "denied", "failure", "unknown"],
                    _ => &[],
                };
                if !allowed.is_empty() && !allowed.contains(&v) {
                    return Err(format!("{name}={v:?}: expected {}", allowed.join(" or ")));
                }
                if field == Field::Kind {
                    v.parse::<Kind>()?;
                }
                patterns.push(match v.strip_suffix('*') {
                    Some(prefix) => Pattern::Prefix(prefix.to_string()),
                    None => Pattern::Exact(v.to_string()),
                });
            }
            conditions.push(Condition { field, patterns });
        }
        Ok(Rule { conditions })
    }
}

impl Rule {
    pub fn matches(&self, rec: &Record) -> bool {
        self.conditions.iter().all(|c| c.matches(rec))
    }
}

impl Condition {
    fn matches(&self, rec: &Record) -> bool {
        let any = |v: Option<&str>| v.is_some_and(|v| self.patterns.iter().any(|p| p.matches(v)));
        let env = &rec.envelope;
        match &self.field {
            Field::Kind => any(Some(rec.kind.as_str())),
            Field::Tag(t) => any(rec.tag(t)),
            Field::SourceId => any(Some(env.source_id())),
            Field::App => {
                any(app_guid(rec))
                    || any(rec.tag("app_name"))
                    || audit_resource(rec, |a| {
                        a.target
                            .as_ref()
                            .filter(|t| t.kind == "app")
                            .and_then(|t| t.name.as_deref())
                    })
                    .is_some_and(|v| any(Some(v)))
            }
            Field::Space => {
                any(rec.tag("space_id"))
                    || any(rec.tag("space_name"))
                    || audit_space_org(rec, true).is_some_and(|v| any(Some(v)))
            }
            Field::Org => {
                any(rec.tag("organization_id"))
                    || any(rec.tag("organization_name"))
                    || audit_space_org(rec, false).is_some_and(|v| any(Some(v)))
            }
            Field::SourceEvent => any(rec
                .api
                .as_deref()
                .map(|a| a.source.as_str(a.security.as_deref()))),
            Field::EventName => any(rec.api.as_deref().map(|a| a.event_name())),
            Field::ReadOnly => any(rec
                .api
                .as_deref()
                .and_then(|a| a.read_only())
                .map(|ro| if ro { "true" } else { "false" })),
            Field::EventSource => any(rec.api.as_deref().map(|a| a.event_source())),
            Field::Outcome => any(rec.api.as_deref().map(|a| a.outcome().unwrap_or("unknown"))),
            Field::Metric => match env.message() {
                Some(MessageRef::Counter(c)) => any(Some(c.name)),
                Some(MessageRef::Timer(t)) => any(Some(t.name)),
                Some(MessageRef::Gauge(g)) => g.metrics().any(|(k, _, _)| any(Some(k))),
                _ => false,
            },
        }
    }
}

/// Every rule the router applies. [`Filters::default`] keeps everything.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub include: Vec<Rule>,
    pub exclude: Vec<Rule>,
    /// The nozzle's own app guid (`VCAP_APPLICATION.application_id`).
    pub own_app: Option<String>,
}

impl Filters {
    /// Whether `rec` is delivered.
    pub fn keeps(&self, rec: &Record) -> bool {
        if rec.kind != Kind::Api {
            if rec.tag(OPT_OUT_TAG) == Some("true") {
                return false;
            }
            if let Some(own) = &self.own_app
                && app_guid(rec) == Some(own.as_str())
            {
                return false;
            }
        }
        (self.include.is_empty() || self.include.iter().any(|r| r.matches(rec)))
            && !self.exclude.iter().any(|r| r.matches(rec))
    }
}

/// The nozzle's own app guid from the `VCAP_APPLICATION` JSON Cloud Foundry
/// sets, or `None` outside CF or when it cannot be read.
pub fn own_app_guid(vcap_application: Option<&str>) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(vcap_application?).ok()?;
    v.get("application_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

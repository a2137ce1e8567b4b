//! The audit options: the `/v3/audit_events` poller, enrichment,
//! include/exclude rules and per-kind routing; part of [`crate::config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::cf::PlatformHttp;
use super::{CfArgs, PipelineConfig, SinkConfig, SinkKind, SinkSettings};
use crate::classify::rules::{Filters, Rule, own_app_guid};
use crate::enrich::EnrichConfig;
use crate::record::Kind;
use crate::source::audit_events::{AuditEventsConfig, CursorStore, MAX_LOOKBACK, MAX_PER_PAGE};
use crate::source::cloud_controller::CcAccess;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Poll Cloud Controller's /v3/audit_events for API invocations with the actor (needs --cf-api and a UAA client with cloud_controller.admin_read_only or cloud_controller.global_auditor).
    #[arg(long, env = "AUDIT_EVENTS", value_enum, default_value = "off")]
    pub audit_events: OnOff,
    /// On the first start (no cursor yet), read audit events this far back: e.g. 90m, 1h, 7d (at most 31d, CC's retention).
    #[arg(long, env = "AUDIT_LOOKBACK", default_value = "1h")]
    pub(crate) audit_lookback: String,
    /// File keeping the audit-events cursor (last created_at and the event
    /// guids of that second). Default: an object in the S3 sink's bucket
    /// (`<prefix>/CFLogs-State/<foundation>/audit-events.cursor.json`) when
    /// --sink has s3, so a pushed instance with ephemeral disk resumes where
    /// it stopped; else audit-events.cursor.json.
    #[arg(long, env = "AUDIT_CURSOR_FILE")]
    pub(crate) audit_cursor_file: Option<PathBuf>,
    /// Pause between polls of /v3/audit_events once caught up, e.g. 30s, 1m.
    #[arg(long, env = "AUDIT_POLL_INTERVAL", default_value = "60s")]
    pub(crate) audit_poll_interval: String,
    /// Audit events per page, 1 to 5000.
    #[arg(long, env = "AUDIT_PER_PAGE", default_value_t = MAX_PER_PAGE)]
    pub(crate) audit_per_page: u32,
    /// The instance index that polls (CF_INSTANCE_INDEX, else --instance-index, says which this is); the others do not.
    #[arg(long, env = "AUDIT_POLLER_INDEX", default_value_t = 0)]
    pub(crate) audit_poller_index: u32,
    /// Add app, space and org names from Cloud Controller to records whose envelope lacks them (needs --cf-api and a UAA client that can read apps).
    #[arg(long, env = "ENRICH", value_enum, default_value = "off")]
    pub enrich: OnOff,
    /// Deliver only records matching one of these rules (repeatable; in the environment, separate rules with ';'). Rule: FIELD=VALUE[|VALUE...][,FIELD=VALUE...], VALUE* matches a prefix; fields kind, source_type, origin, source_id, app, space, org, deployment, job, metric, source_event, eventName, readOnly, eventSource, outcome, tag.NAME.
    #[arg(long, env = "INCLUDE", value_delimiter = ';')]
    pub include: Vec<String>,
    /// Do not deliver records matching any of these rules (same syntax as --include).
    #[arg(long, env = "EXCLUDE", value_delimiter = ';')]
    pub exclude: Vec<String>,
    /// Send a kind to these sinks only: KIND=SINK[,SINK] or KIND=none (repeatable; ';' between routes in the environment). Kinds api, app_log, metric, event; sinks as in --sink. Kinds without a route go to every sink.
    #[arg(long, env = "ROUTE", value_delimiter = ';')]
    pub route: Vec<String>,
}

/// The audit settings as `run` uses them (made by [`AuditSettings::build`]).
#[derive(Clone, Debug, Default)]
pub struct AuditSetup {
    pub filters: Filters,
    /// How to reach Cloud Controller, when something needs it.
    pub cc: Option<CcAccess>,
    /// Set when this instance polls.
    pub audit_events: Option<AuditEventsConfig>,
    pub enrich: Option<EnrichConfig>,
}

/// The validated audit settings: values and paths; the platform HTTP client
/// and the cursor's bucket client are made by [`build`](Self::build).
#[derive(Clone, Debug, Default)]
pub struct AuditSettings {
    pub filters: Filters,
    /// How to reach Cloud Controller, when something needs it.
    pub cc: Option<CcSettings>,
    /// Set when this instance polls.
    pub audit_events: Option<PollerSettings>,
    pub enrich: Option<EnrichConfig>,
}

/// How to reach Cloud Controller: [`CcAccess`] without its client.
#[derive(Clone, Debug)]
pub struct CcSettings {
    pub cf_api: reqwest::Url,
    pub uaa: Option<reqwest::Url>,
    pub client_id: String,
    pub client_secret: crate::redact::Secret,
    pub http: PlatformHttp,
    pub max_body: usize,
}

/// The poller's validated options.
#[derive(Clone, Debug)]
pub struct PollerSettings {
    pub per_page: u32,
    pub lookback: Duration,
    pub cursor: CursorSettings,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
}

/// Where the audit cursor is kept.
#[derive(Clone, Debug)]
pub enum CursorSettings {
    File(PathBuf),
    /// An object in the S3 sink's bucket, under the foundation's state prefix.
    Bucket {
        s3: Box<crate::sink::archive::s3::S3Config>,
        foundation: String,
    },
}

impl AuditSettings {
    /// The audit setup `run` uses, with `http` making the platform client;
    /// problems (each naming its option) added to `errors`.
    pub fn build(
        &self,
        errors: &mut Vec<String>,
        http: impl FnOnce(&PlatformHttp) -> Option<reqwest::Client>,
        s3_ca: Option<&[u8]>,
    ) -> AuditSetup {
        let cc = self.cc.as_ref().and_then(|cc| {
            Some(CcAccess {
                cf_api: cc.cf_api.clone(),
                uaa: cc.uaa.clone(),
                client_id: cc.client_id.clone(),
                client_secret: cc.client_secret.clone(),
                http: http(&cc.http)?,
                max_body: cc.max_body,
            })
        });
        let audit_events = self.audit_events.as_ref().and_then(|p| {
            let cursor = p.cursor.build(s3_ca).map_err(|e| errors.push(e)).ok()?;
            Some(AuditEventsConfig {
                per_page: p.per_page,
                lookback: p.lookback,
                cursor,
                poll_interval: p.poll_interval,
                shutdown_timeout: p.shutdown_timeout,
                ..AuditEventsConfig::default()
            })
        });
        AuditSetup {
            filters: self.filters.clone(),
            cc,
            audit_events,
            enrich: self.enrich.clone(),
        }
    }
}

/// `90s`, `30m`, `1h`, `7d`, or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().ok()?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(secs)?))
}

impl AuditArgs {
    /// Validates the audit options, reporting problems in `errors`, and
    /// applies `--route` to the pipeline's sinks. `env` gives
    /// `VCAP_APPLICATION` and `CF_INSTANCE_INDEX`.
    pub(crate) fn setup(
        &self,
        errors: &mut Vec<String>,
        cf: &CfArgs,
        instance_index: u32,
        shutdown_timeout: Duration,
        pipeline: &mut PipelineConfig<SinkSettings>,
        env: &dyn super::Env,
    ) -> AuditSettings {
        let rules = |flag: &str, env_name: &str, texts: &[String], errors: &mut Vec<String>| {
            texts
                .iter()
                .filter_map(|t| {
                    t.parse::<Rule>()
                        .map_err(|e| errors.push(format!("--{flag} ({env_name}) {t:?}: {e}")))
                        .ok()
                })
                .collect::<Vec<_>>()
        };
        let filters = Filters {
            include: rules("include", "INCLUDE", &self.include, errors),
            exclude: rules("exclude", "EXCLUDE", &self.exclude, errors),
            own_app: own_app_guid(env.var("VCAP_APPLICATION").as_deref()),
        };
        apply_routes(&self.route, pipeline, errors);

        let lookback = parse_duration(&self.audit_lookback);
        match lookback {
            None => errors.push(format!(
                "--audit-lookback (AUDIT_LOOKBACK) must be a duration like 90m, 1h or 7d, not {:?}",
                self.audit_lookback
            )),
            Some(d) if d > MAX_LOOKBACK => errors.push(format!(
                "--audit-lookback (AUDIT_LOOKBACK) must be at most 31d (Cloud Controller keeps audit events 31 days), not {:?}",
                self.audit_lookback
            )),
            Some(_) => {}
        }
        let poll_interval = parse_duration(&self.audit_poll_interval).filter(|d| !d.is_zero());
        if poll_interval.is_none() {
            errors.push(format!(
                "--audit-poll-interval (AUDIT_POLL_INTERVAL) must be a duration of at least 1s, like 30s or 1m, not {:?}",
                self.audit_poll_interval
            ));
        }
        if !(1..=MAX_PER_PAGE).contains(&self.audit_per_page) {
            errors.push(format!(
                "--audit-per-page (AUDIT_PER_PAGE) must be 1 to 5000, not {}",
                self.audit_per_page
            ));
        }

        let wants_cc = self.audit_events == OnOff::On || self.enrich == OnOff::On;
        let cc = if wants_cc {
            cc_settings(errors, cf)
        } else {
            None
        };
        let this_instance = env
            .var("CF_INSTANCE_INDEX")
            .and_then(|i| i.parse().ok())
            .unwrap_or(instance_index);
        let audit_events = (self.audit_events == OnOff::On
            && this_instance == self.audit_poller_index)
            .then(|| PollerSettings {
                per_page: self.audit_per_page,
                lookback: lookback.unwrap_or_default(),
                cursor: cursor_settings(self.audit_cursor_file.as_ref(), pipeline),
                poll_interval: poll_interval.unwrap_or_default(),
                shutdown_timeout,
            });
        AuditSettings {
            filters,
            cc,
            audit_events,
            enrich: (self.enrich == OnOff::On).then(EnrichConfig::default),
        }
    }
}

const CURSOR_NAME: &str = "audit-events.cursor.json";

/// Where the audit cursor is kept: the file asked for; else the S3 sink's
/// bucket when there is one; else `audit-events.cursor.json`.
fn cursor_settings(
    file: Option<&PathBuf>,
    pipeline: &PipelineConfig<SinkSettings>,
) -> CursorSettings {
    if let Some(path) = file {
        return CursorSettings::File(path.clone());
    }
    let s3 = pipeline.sinks.iter().find_map(|(s, _)| match &s.config {
        SinkConfig::Object(o) => match &o.target {
            crate::sink::archive::Target::S3(s3) => Some(s3),
            crate::sink::archive::Target::Dir(_) => None,
        },
        _ => None,
    });
    match s3 {
        Some(s3) => CursorSettings::Bucket {
            s3: Box::new(s3.clone()),
            foundation: pipeline.encode.foundation.clone(),
        },
        None => CursorSettings::File(PathBuf::from(CURSOR_NAME)),
    }
}

impl CursorSettings {
    /// The cursor store: a file, or get and put functions on the bucket
    /// (its client made here, trusting `s3_ca`, the `--s3-ca` read at
    /// build); the error names the option.
    pub fn build(&self, s3_ca: Option<&[u8]>) -> Result<CursorStore, String> {
        use std::sync::Arc;
        let (s3, foundation) = match self {
            CursorSettings::File(path) => return Ok(CursorStore::File(path.clone())),
            CursorSettings::Bucket { s3, foundation } => (s3, foundation.clone()),
        };
        let archive = crate::sink::archive::s3::http_client(s3_ca)
            .and_then(|client| crate::sink::archive::s3::s3_archive(s3, &client))
            .map_err(|e| format!("the audit cursor's bucket (--s3-bucket {}): {e}", s3.bucket))?;
        let archive = Arc::new(archive);
        let name = archive.location(&archive.cursor_key(&foundation, CURSOR_NAME));
        let (get_archive, get_foundation) = (Arc::clone(&archive), foundation.clone());
        Ok(CursorStore::Object {
            name,
            get: Arc::new(move || {
                let (archive, foundation) = (Arc::clone(&get_archive), get_foundation.clone());
                Box::pin(async move {
                    archive
                        .get_cursor(&foundation, CURSOR_NAME)
                        .await
                        .map_err(|e| e.to_string())
                })
            }),
            put: Arc::new(move |bytes| {
                let (archive, foundation) = (Arc::clone(&archive), foundation.clone());
                Box::pin(async move {
                    archive
                        .put_cursor(&foundation, CURSOR_NAME, bytes)
                        .await
                        .map_err(|e| e.to_string())
                })
            }),
        })
    }
}

fn cc_settings(errors: &mut Vec<String>, cf: &CfArgs) -> Option<CcSettings> {
    let what = "needed by --audit-events on and --enrich on";
    let cf_api = if cf.cf_api.is_none() {
        errors.push(format!(
            "--cf-api (CF_API) is required: the Cloud Foundry API URL, {what}"
        ));
        None
    } else {
        cf.cf_api_url(errors)
    };
    let uaa = cf.uaa_url.as_ref().and_then(|_| cf.uaa_url(errors));
    let mut need = |v: Option<&str>, flag: &str| match v {
        Some(s) if !s.is_empty() => Some(s.to_string()),
        _ => {
            errors.push(format!(
                "{flag} is required: a UAA client with cloud_controller.admin_read_only or cloud_controller.global_auditor, {what}"
            ));
            None
        }
    };
    let client_id = need(
        cf.uaa_client_id.as_deref(),
        "--uaa-client-id (UAA_CLIENT_ID)",
    );
    let client_secret = need(
        cf.uaa_client_secret.as_ref().map(|s| s.expose()),
        "--uaa-client-secret (UAA_CLIENT_SECRET)",
    );
    let max_body = cf.max_response_bytes(errors);
    Some(CcSettings {
        cf_api: cf_api?,
        uaa,
        client_id: client_id?,
        client_secret: client_secret?.into(),
        http: cf.platform_http(),
        max_body,
    })
}

/// The `--sink` name of a configured sink (`None`: a sink `--route` cannot name yet).
fn sink_name(s: &SinkConfig) -> Option<SinkKind> {
    use crate::sink::archive::Target;
    match s {
        SinkConfig::Stdout => Some(SinkKind::Stdout),
        SinkConfig::File(_) => Some(SinkKind::File),
        SinkConfig::Syslog(_) => Some(SinkKind::Syslog),
        SinkConfig::Http(_) => Some(SinkKind::Http),
        SinkConfig::Object(o) => Some(match o.target {
            Target::S3(_) => SinkKind::S3,
            // A signed local folder is what `--sink file` asked for.
            Target::Dir(_) => SinkKind::File,
        }),
    }
}

/// Applies `--route KIND=SINK[,SINK]` (or `KIND=none`): each routed kind
/// goes only to the sinks named; other kinds go to every sink.
pub fn apply_routes<S: AsRef<SinkConfig>>(
    routes: &[String],
    pipeline: &mut PipelineConfig<S>,
    errors: &mut Vec<String>,
) {
    let configured: Vec<SinkKind> = pipeline
        .sinks
        .iter()
        .filter_map(|(s, _)| sink_name(s.as_ref()))
        .collect();
    let mut routed: [Option<Vec<SinkKind>>; 4] = Default::default();
    for route in routes {
        let bad = |why: String| format!("--route (ROUTE) {route:?}: {why}");
        let Some((kind, sinks)) = route.split_once('=') else {
            errors.push(bad("expected KIND=SINK[,SINK] or KIND=none".into()));
            continue;
        };
        let kind = match kind.trim().parse::<Kind>() {
            Ok(k) => k,
            Err(e) => {
                errors.push(bad(e));
                continue;
            }
        };
        let mut names = Vec::new();
        if sinks.trim() != "none" {
            for s in sinks.split(',') {
                match SinkKind::from_str(s.trim(), true) {
                    Ok(k) if configured.contains(&k) => names.push(k),
                    Ok(_) => errors.push(bad(format!(
                        "sink {:?} is not in --sink (SINK); add it there",
                        s.trim()
                    ))),
                    Err(_) => errors.push(bad(format!(
                        "unknown sink {:?} (expected stdout, file, syslog, http or s3)",
                        s.trim()
                    ))),
                }
            }
        }
        if routed[kind.index()].replace(names).is_some() {
            errors.push(bad(format!("{kind} is routed twice")));
        }
    }
    for (sink, kinds) in &mut pipeline.sinks {
        let Some(name) = sink_name(sink.as_ref()) else {
            continue;
        };
        kinds.retain(|k| {
            routed[k.index()]
                .as_ref()
                .is_none_or(|sinks| sinks.contains(&name))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("31d"), Some(MAX_LOOKBACK));
        assert_eq!(parse_duration("1w"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("-1h"), None);
    }
}

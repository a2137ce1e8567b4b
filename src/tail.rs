//! `cf-audit-nozzle tail`: an operator's live view of the firehose through
//! the same source configuration as `run`, filtered by kind, source type,
//! app and org, printed as one human line per record
//! (`[API/0] audit.app.update app=spring-music by admin@example.com`) or as
//! the record's JSON. It subscribes with a shard id of its own, so it gets a
//! full copy and never takes envelopes away from the running nozzle.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Built, TailArgs};
use crate::record::{EncodeContext, Kind};
use crate::route::Router;
use crate::sink::{Batch, BatchConfig, Sink, SinkFailure, SinkQueue, run_sink};
use crate::source::SourceConfig;
use crate::source::SourceStatus;

/// What `tail` keeps of the record.
#[derive(Clone, Debug, Default)]
pub struct TailFilter {
    pub kinds: Vec<Kind>,
    pub(crate) source_types: Vec<String>,
    pub app: Option<String>,
    pub org: Option<String>,
}

impl TailFilter {
    /// The filter `args` ask for, with unknown kinds added to `errors`.
    pub fn from_args(args: &TailArgs, errors: &mut Vec<String>) -> TailFilter {
        let kinds = args
            .kinds
            .iter()
            .filter(|k| !k.trim().is_empty())
            .filter_map(|k| {
                k.trim()
                    .parse::<Kind>()
                    .map_err(|e| errors.push(format!("--kind {k:?}: {e}")))
                    .ok()
            })
            .collect();
        TailFilter {
            kinds,
            source_types: args
                .source_types
                .iter()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            app: args.app.clone(),
            org: args.org.clone(),
        }
    }

    /// Whether the record (as its JSON) passes.
    pub fn keeps(&self, json: &Value) -> bool {
        let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
        if !self.kinds.is_empty()
            && !self
                .kinds
                .iter()
                .any(|k| text(json, "kind").as_deref() == Some(k.as_str()))
        {
            return false;
        }
        if !self.source_types.is_empty() {
            let st = text(json, "source_type").unwrap_or_default();
            let hit = self
                .source_types
                .iter()
                .any(|want| match want.strip_suffix('*') {
                    Some(prefix) => st.starts_with(prefix),
                    None => st.eq_ignore_ascii_case(want),
                });
            if !hit {
                return false;
            }
        }
        let named = |key: &str, want: &Option<String>| match want {
            None => true,
            Some(want) => json.get(key).is_some_and(|o| {
                text(o, "name").as_deref() == Some(want) || text(o, "guid").as_deref() == Some(want)
            }),
        };
        named("app", &self.app) && named("org", &self.org)
    }
}

/// The human line of a record (as its JSON).
pub(crate) fn human_line(json: &Value) -> String {
    let s = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_string();
    let who = |v: &Value| {
        let name = s(v, "name");
        if name.is_empty() { s(v, "guid") } else { name }
    };
    let kind = s(json, "kind");
    // A declaration of the last record number: no envelope behind it.
    if let Some(last) = json.get("last_seq") {
        return format!(
            "[cf-audit-nozzle] {kind} last_seq={last} boot={}",
            s(json, "boot")
        );
    }
    let instance = s(json, "instance_id");
    let source_type = s(json, "source_type");
    let place = if source_type.is_empty() {
        format!("[{}/{instance}]", s(json, "origin"))
    } else {
        format!("[{source_type}/{instance}]")
    };
    match kind.as_str() {
        "api" => {
            let mut line = format!("{place} {}", s(json, "eventName"));
            if let Some(target) = json
                .get("resources")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
            {
                line.push_str(&format!(" {}={}", s(target, "type"), who(target)));
            }
            let actor = json.get("userIdentity").map(|u| {
                let w = who(u);
                if w.is_empty() { s(u, "type") } else { w }
            });
            line.push_str(&format!(
                " by {}",
                actor.unwrap_or_else(|| "unknown".into())
            ));
            line
        }
        "app_log" => {
            let app = json.get("app").map(who).unwrap_or_default();
            format!("{place} {app} {}", s(json, "message"))
        }
        "metric" => {
            let mut line = format!("{place} {} {}", s(json, "metric_type"), s(json, "name"));
            for key in ["delta", "total"] {
                if let Some(v) = json.get(key) {
                    line.push_str(&format!(" {key}={v}"));
                }
            }
            let ns = |key| json.get(key).and_then(Value::as_i64);
            if let (Some(start), Some(stop)) = (ns("start_ns"), ns("stop_ns")) {
                line.push_str(&format!(" duration_ns={}", stop.saturating_sub(start)));
            }
            if let Some(metrics) = json.get("metrics").and_then(Value::as_object) {
                for (name, m) in metrics {
                    let value = m.get("value").map(Value::to_string).unwrap_or_default();
                    let unit = s(m, "unit");
                    line.push_str(&format!(" {name}={value}{unit}"));
                }
            }
            line
        }
        _ => format!("{place} {} {}", s(json, "title"), s(json, "body")),
    }
}

/// Whether a terminal could act on `c` instead of showing it: C0 controls
/// (ESC, CR, BS, NUL, newline, ...), DEL, C1 controls (U+0080 to U+009F;
/// U+009B is a one-character CSI), the line and paragraph separators and the
/// bidirectional overrides that reorder what is shown.
fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Appends `line` with every character a terminal would act on written as
/// a visible escape (`\n`, `\r`, `\t`, `\x1b`, `\u{9b}`), so no record can
/// move the cursor, clear the screen, set the title or forge another line.
pub(crate) fn push_escaped(out: &mut String, line: &str) {
    use std::fmt::Write as _;
    for c in line.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && is_terminal_control(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_terminal_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Appends a record's JSON with the characters JSON may carry raw but a
/// terminal would act on (DEL, C1 controls, separators, bidi overrides)
/// written as `\uXXXX`: the same JSON value, safe on a terminal. (JSON
/// escapes C0 controls itself; outside strings JSON is ASCII.)
pub(crate) fn push_json_for_terminal(out: &mut String, json: &str) {
    use std::fmt::Write as _;
    for c in json.chars() {
        if is_terminal_control(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
}

/// The sink of `tail`: prints what the filter keeps, counts the rest as
/// delivered (they were looked at).
struct Printer<W> {
    filter: TailFilter,
    json: bool,
    ctx: EncodeContext,
    out: W,
    shown: Arc<std::sync::atomic::AtomicU64>,
}

impl<W: Write + Send + 'static> Sink for Printer<W> {
    fn name(&self) -> &str {
        "tail"
    }

    async fn write(&mut self, batch: Batch<'_>) -> Result<u64, SinkFailure> {
        let mut text = String::new();
        for record in batch.records {
            let line = record.to_json(&self.ctx);
            let Ok(json) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if !self.filter.keeps(&json) {
                continue;
            }
            if self.json {
                push_json_for_terminal(&mut text, &line);
            } else {
                push_escaped(&mut text, &human_line(&json));
            }
            text.push('\n');
            self.shown
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // A closed stdout (`tail | head`) ends nothing upstream: the lines are dropped.
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
        Ok(batch.records.len() as u64)
    }

    async fn roll(&mut self) -> Result<u64, SinkFailure> {
        Ok(0)
    }
}

/// A shard id of its own for this `tail`, so it receives a full copy of
/// what it subscribes to instead of a share of the nozzle's.
pub(crate) fn own_shard_id(shard_id: &str) -> String {
    format!("{shard_id}-tail-{:08x}", rand::random::<u32>())
}

/// Runs the source of `cfg` into a printer writing to `out` until
/// `shutdown`; returns the number of records printed.
pub async fn run<W: Write + Send + 'static>(
    mut cfg: Built,
    filter: TailFilter,
    json: bool,
    out: W,
    shutdown: CancellationToken,
) -> u64 {
    match &mut cfg.source {
        SourceConfig::Rlp(r) => r.streams.shard_id = own_shard_id(&r.streams.shard_id),
        SourceConfig::Gateway(g) => g.streams.shard_id = own_shard_id(&g.streams.shard_id),
    }
    let shown = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let printer = Printer {
        filter,
        json,
        ctx: cfg.pipeline.encode.clone(),
        out,
        shown: Arc::clone(&shown),
    };
    let (queue, rx) = SinkQueue::new("tail", cfg.pipeline.queue_capacity);
    let batch = BatchConfig {
        max_age: Duration::from_millis(100),
        ..BatchConfig::default()
    };
    let sink = tokio::spawn(run_sink(printer, rx, Arc::clone(queue.stats()), batch));
    let router = Arc::new(
        Router::new(
            vec![(queue, Kind::ALL.to_vec())],
            cfg.audit.filters.clone(),
            None,
            false,
        )
        .with_boot(crate::record::boot_id(cfg.pipeline.instance_index)),
    );
    let status = Arc::new(SourceStatus::default());
    let source = crate::source::spawn(cfg.source, router, status, shutdown);
    // The source drops its router when it stops, which closes the queue and
    // lets the printer drain.
    let _ = source.await;
    let _ = sink.await;
    shown.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_lines_per_kind() {
        let api = json!({"kind": "api", "source_type": "API", "instance_id": "0",
            "eventName": "audit.app.update",
            "resources": [{"type": "app", "guid": "g", "name": "spring-music"}],
            "userIdentity": {"type": "user", "guid": "u", "name": "admin@example.com"}});
        assert_eq!(
            human_line(&api),
            "[API/0] audit.app.update app=spring-music by admin@example.com"
        );
        let anonymous = json!({"kind": "api", "source_type": "API", "instance_id": "1",
            "eventName": "audit.app.delete-request", "resources": [{"type": "app", "guid": "g"}],
            "userIdentity": {"type": "unknown"}});
        assert_eq!(
            human_line(&anonymous),
            "[API/1] audit.app.delete-request app=g by unknown"
        );
        let log = json!({"kind": "app_log", "source_type": "APP/PROC/WEB", "instance_id": "2",
            "app": {"guid": "g", "name": "shop"}, "message": "started"});
        assert_eq!(human_line(&log), "[APP/PROC/WEB/2] shop started");
        let counter = json!({"kind": "metric", "origin": "gorouter", "instance_id": "0",
            "metric_type": "counter", "name": "requests", "delta": 1, "total": 10});
        assert_eq!(
            human_line(&counter),
            "[gorouter/0] counter requests delta=1 total=10"
        );
        let declaration = json!({"kind": "app_log", "boot": "0-20261202T193322Z-9f3a2c1b",
            "last_seq": 41, "time": "2026-12-02T19:34:22Z", "foundation": "f"});
        assert_eq!(
            human_line(&declaration),
            "[cf-audit-nozzle] app_log last_seq=41 boot=0-20261202T193322Z-9f3a2c1b"
        );
    }

    #[test]
    fn filters_by_kind_source_type_app_and_org() {
        let r = json!({"kind": "app_log", "source_type": "APP/PROC/WEB",
            "app": {"guid": "g1", "name": "shop"}, "org": {"guid": "o1", "name": "acme"}});
        let f = |kinds: &[Kind], st: &[&str], app: Option<&str>, org: Option<&str>| TailFilter {
            kinds: kinds.to_vec(),
            source_types: st.iter().map(|s| s.to_string()).collect(),
            app: app.map(str::to_string),
            org: org.map(str::to_string),
        };
        assert!(f(&[], &[], None, None).keeps(&r));
        assert!(f(&[Kind::AppLog], &["APP*"], Some("shop"), Some("o1")).keeps(&r));
        assert!(!f(&[Kind::Api], &[], None, None).keeps(&r));
        assert!(!f(&[], &["RTR"], None, None).keeps(&r));
        assert!(!f(&[], &[], Some("other"), None).keeps(&r));
        assert!(!f(&[], &[], None, Some("globex")).keeps(&r));
    }
}

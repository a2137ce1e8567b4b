//! Records in a SIEM's common schema instead of ours (`--record-schema`):
//! OCSF 1.3.0 ([`ocsf`]), Elastic ECS ([`ecs`]) and Splunk CIM (`cim`). Each writer renders a
//! record straight from its envelope and API fields, once, like the native
//! writer; nothing is converted from a native copy but ECS's and CIM's API
//! fields (a few percent of the records), which are rebuilt from their
//! native JSON ([`native_map`]). OCSF writes its API records straight from
//! the record too: the round trip made one cost five times a native one,
//! and the full setup writes each API record twice (syslog and S3).
//!
//! Every fact of the native record appears exactly once: in the schema's
//! own field where it has one, else under the schema's place for the rest
//! (OCSF's `unmapped`, ECS's custom `cloudfoundry` field set, tags as ECS
//! `labels`). `docs/schemas.md` has the mapping tables; `tests/schemas.rs`
//! validates the golden records with the schemas' published definitions.

use super::{EncodeContext, Kind, Record, json, layout, number};

mod cim;
pub mod ecs;
pub mod ocsf;

/// The schema records are written in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordSchema {
    /// Our own fields (`schema/*.schema.json`).
    #[default]
    Native,
    /// OCSF 1.3.0: API Activity (6003) for API invocations, Base Event (0)
    /// for app logs and events; metrics stay native (OCSF has no metric class).
    Ocsf,
    /// Elastic Common Schema, with `cloudfoundry.*` for what ECS has no field for.
    Ecs,
    /// Splunk CIM: API invocations with the Change data model's fields, UAA
    /// sign-ins with Authentication's; other kinds stay native.
    Cim,
}

impl RecordSchema {
    pub const ALL: [RecordSchema; 4] = [Self::Native, Self::Ocsf, Self::Ecs, Self::Cim];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Ocsf => "ocsf",
            Self::Ecs => "ecs",
            Self::Cim => "cim",
        }
    }
}

impl std::str::FromStr for RecordSchema {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!("unknown record schema {s:?} (expected native, ocsf, ecs or cim)")
            })
    }
}

/// Writes `rec` in `ctx.schema` when that is not the native one and the
/// schema has a form for the record; `false` leaves it to the native writer.
pub(super) fn write(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) -> bool {
    match ctx.schema {
        RecordSchema::Native => false,
        RecordSchema::Ocsf => ocsf::write(rec, ctx, out),
        RecordSchema::Ecs => {
            ecs::write(rec, ctx, out);
            true
        }
        RecordSchema::Cim => cim::write(rec, ctx, out),
    }
}

/// The native fields that say where a record comes from, as the members of
/// an object that `out` has just opened: `kind`, `boot`, `foundation`,
/// `source_id`, `instance_id`, `origin`, `source_type`, `deployment`,
/// `job`, `app`/`space`/`org` (and `enriched`), then `deprecated_tags`;
/// `tags` too unless `with_tags` is false (ECS writes them as `labels`).
fn write_provenance(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>, with_tags: bool) {
    let env = &rec.envelope;
    write_kind_boot_foundation(rec, ctx, out);
    json::write_key(out, "source_id");
    json::write_str(out, env.source_id());
    json::write_key(out, "instance_id");
    json::write_str(out, env.instance_id());
    for key in layout::PLAIN_TAGS {
        if let Some(v) = env.tags_value(key) {
            json::write_key(out, key);
            json::write_str(out, v);
        }
    }
    layout::write_places(rec, out);
    if with_tags {
        layout::write_other_tags(env, out);
    }
    layout::write_deprecated_tags(env, out);
}

/// The record's `seq`, when the router numbered it.
fn seq(rec: &Record) -> Option<u64> {
    match rec.number.as_ref()?.position {
        number::Position::Seq(s) => Some(s),
        _ => None,
    }
}

/// The native JSON of an API record as a map (the API fields are built
/// with serde already; rebuilding them costs what they cost).
pub(crate) fn native_map(
    rec: &Record,
    ctx: &EncodeContext,
) -> serde_json::Map<String, serde_json::Value> {
    let native = EncodeContext {
        schema: RecordSchema::Native,
        record_envelope: false,
        ..ctx.clone()
    };
    let mut buf = Vec::with_capacity(1024);
    rec.write_json(&native, &mut buf);
    match serde_json::from_slice(&buf) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

/// `kind`, `boot` (when numbered) and `foundation`, as the first members
/// of an object `out` has just opened.
fn write_kind_boot_foundation(rec: &Record, ctx: &EncodeContext, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"kind\":");
    json::write_str(out, rec.kind.as_str());
    if let Some(n) = &rec.number {
        json::write_key(out, "boot");
        json::write_str(out, &n.boot);
    }
    json::write_key(out, "foundation");
    json::write_str(out, &ctx.foundation);
}

/// Whether a record is an API invocation (from either source).
fn is_api(rec: &Record) -> bool {
    rec.kind == Kind::Api && rec.api.is_some()
}

/// What an API action did, from its event name's verb, as each schema's
/// own word (OCSF activity, ECS event.type, CIM action) is chosen from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Create,
    Read,
    Update,
    Delete,
    /// Not an API call one can call a change or a read (`app.crash`, ...).
    Other,
}

fn verb(event_name: &str, read_only: Option<bool>) -> Verb {
    match event_name.rsplit('.').next().unwrap_or_default() {
        "create" | "map_route" | "bind" => Verb::Create,
        "delete" | "delete-request" | "destroy" | "unmap_route" | "unbind" => Verb::Delete,
        _ if read_only == Some(true) => Verb::Read,
        _ if event_name.starts_with("audit.") => Verb::Update,
        _ => Verb::Other,
    }
}

/// Whether the action failed, from the native record's `outcome`
/// (`failure` and `denied` did); `None` when it does not say (a firehose
/// line alone). Every record that has an HTTP status or an error code has
/// an outcome too (`ApiCall::outcome`), so this is the one place to read.
fn failed(n: &serde_json::Map<String, serde_json::Value>) -> Option<bool> {
    match n.get("outcome").and_then(serde_json::Value::as_str) {
        Some("success") => Some(false),
        Some("failure" | "denied") => Some(true),
        _ => None,
    }
}

/// Milliseconds since the epoch of a timestamp in nanoseconds.
fn millis(ns: i64) -> i64 {
    ns.div_euclid(1_000_000)
}

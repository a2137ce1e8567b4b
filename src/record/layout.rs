//! The parts of an envelope record's JSON after its header (see the module
//! doc of [`crate::record`] for the layout): the readable tag fields, the
//! places (`app`, `space`, `org`) and what Cloud Controller filled in,
//! the other tags, the deprecated tags, the message, the API fields, and
//! the protojson copy of the envelope (`--record-envelope on`). Every
//! writer here appends to the record's buffer and allocates nothing but
//! the API fields (a few percent of the records).

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::envelope::{self, EnvelopeView, MessageRef, ValueRef};
use super::{ApiCall, ApiResource, AppNames, Record, api, json, rfc3339_nanos};
use crate::proto;

/// The tags written as top-level fields of the same name, in this order.
pub(super) const PLAIN_TAGS: [&str; 4] = ["origin", "source_type", "deployment", "job"];

/// The places a record is about: its field, and the tags of its `guid` and
/// `name` members, in the order they are written (and listed in `enriched`).
const PLACES: [(&str, &str, &str); 3] = [
    ("app", "app_id", "app_name"),
    ("space", "space_id", "space_name"),
    ("org", "organization_id", "organization_name"),
];

/// Whether a `tags` key is written as a readable field (and so not under `tags`).
fn is_promoted(key: &str) -> bool {
    matches!(
        key,
        "origin"
            | "source_type"
            | "deployment"
            | "job"
            | "app_id"
            | "app_name"
            | "space_id"
            | "space_name"
            | "organization_id"
            | "organization_name"
    )
}

/// Cloud Controller's guid and name of place `i` of [`PLACES`].
fn cc_names(n: &AppNames, i: usize) -> [Option<&str>; 2] {
    match i {
        0 => [Some(n.app_guid.as_str()), n.app_name.as_deref()],
        1 => [n.space_guid.as_deref(), n.space_name.as_deref()],
        _ => [n.org_guid.as_deref(), n.org_name.as_deref()],
    }
}

/// `"app":{..},"space":{..},"org":{..}` from the `tags` entries (members
/// present even when empty), with members no tag gave filled from Cloud
/// Controller's names and listed in `"enriched":[..]`.
pub(super) fn write_places(rec: &Record, out: &mut Vec<u8>) {
    let env = &rec.envelope;
    let names = rec.names.as_deref();
    // Bit 2*place + member: that member came from Cloud Controller.
    let mut enriched = 0u8;
    for (i, (field, guid_tag, name_tag)) in PLACES.into_iter().enumerate() {
        let from_cc = names.map_or([None, None], |n| cc_names(n, i));
        let mut opened = false;
        for (m, (member, tag)) in [("guid", guid_tag), ("name", name_tag)]
            .into_iter()
            .enumerate()
        {
            let value = match env.tags_value(tag) {
                Some(v) => v,
                None => match from_cc[m] {
                    Some(v) => {
                        enriched |= 1 << (2 * i + m);
                        v
                    }
                    None => continue,
                },
            };
            if opened {
                out.push(b',');
            } else {
                json::write_key(out, field);
                out.push(b'{');
                opened = true;
            }
            out.push(b'"');
            out.extend_from_slice(member.as_bytes());
            out.extend_from_slice(b"\":");
            json::write_str(out, value);
        }
        if opened {
            out.push(b'}');
        }
    }
    if enriched != 0 {
        const MEMBERS: [&str; 6] = [
            "\"app.guid\"",
            "\"app.name\"",
            "\"space.guid\"",
            "\"space.name\"",
            "\"org.guid\"",
            "\"org.name\"",
        ];
        json::write_key(out, "enriched");
        out.push(b'[');
        let listed = MEMBERS
            .iter()
            .enumerate()
            .filter(|(b, _)| enriched & (1 << b) != 0);
        for (n, (_, member)) in listed.enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(member.as_bytes());
        }
        out.push(b']');
    }
}

/// `"tags":{..}` with every `tags` entry not written as a readable field,
/// only when there is one.
pub(super) fn write_other_tags(env: &EnvelopeView, out: &mut Vec<u8>) {
    let mut opened = false;
    for (k, v) in env.tags().filter(|(k, _)| !is_promoted(k)) {
        if opened {
            out.push(b',');
        } else {
            json::write_key(out, "tags");
            out.push(b'{');
            opened = true;
        }
        json::write_str(out, k);
        out.push(b':');
        json::write_str(out, v);
    }
    if opened {
        out.push(b'}');
    }
}

/// `"deprecated_tags":{..}` as protojson writes it, only when there is one.
pub(super) fn write_deprecated_tags(env: &EnvelopeView, out: &mut Vec<u8>) {
    if env.deprecated_tags().len() > 0 {
        json::write_key(out, "deprecated_tags");
        write_deprecated_map(env, out);
    }
}

/// The `deprecated_tags` map: `{"k":{"text":"v"}|{"integer":"N"}|{"decimal":x}|{}}`.
fn write_deprecated_map(env: &EnvelopeView, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (k, v)) in env.deprecated_tags().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, k);
        match v {
            Some(ValueRef::Text(t)) => {
                out.extend_from_slice(b":{\"text\":");
                json::write_str(out, t);
            }
            Some(ValueRef::Integer(n)) => {
                out.extend_from_slice(b":{\"integer\":");
                json::write_int_str(out, n);
            }
            Some(ValueRef::Decimal(d)) => {
                out.extend_from_slice(b":{\"decimal\":");
                json::write_float(out, d);
            }
            None => out.extend_from_slice(b":{"),
        }
        out.push(b'}');
    }
    out.push(b'}');
}

/// The message's fields: a log's type and text (or base64 and a flag), a
/// counter's, gauge's or timer's values, an event's title and body; nothing
/// for an envelope without a message.
pub(super) fn write_message(env: &EnvelopeView, out: &mut Vec<u8>) {
    match env.message() {
        Some(MessageRef::Log(l)) => {
            json::write_key(out, "log_type");
            match l.r#type {
                t if t == proto::log::Type::Out as i32 => out.extend_from_slice(b"\"OUT\""),
                t if t == proto::log::Type::Err as i32 => out.extend_from_slice(b"\"ERR\""),
                // A type this Loggregator version does not know: its number.
                t => json::write_int(out, t),
            }
            match std::str::from_utf8(l.payload) {
                Ok(text) => {
                    json::write_key(out, "message");
                    json::write_str(out, text);
                }
                Err(_) => {
                    // Kept losslessly: the bytes as base64, and a flag saying so.
                    json::write_key(out, "message_base64");
                    json::write_base64(out, l.payload);
                    out.extend_from_slice(b",\"message_invalid_utf8\":true");
                }
            }
        }
        Some(MessageRef::Counter(c)) => {
            out.extend_from_slice(b",\"metric_type\":\"counter\"");
            json::write_key(out, "name");
            json::write_str(out, c.name);
            json::write_key(out, "delta");
            json::write_int(out, c.delta);
            json::write_key(out, "total");
            json::write_int(out, c.total);
        }
        Some(MessageRef::Gauge(g)) => {
            out.extend_from_slice(b",\"metric_type\":\"gauge\"");
            json::write_key(out, "metrics");
            write_gauge_metrics(out, &g);
        }
        Some(MessageRef::Timer(t)) => {
            out.extend_from_slice(b",\"metric_type\":\"timer\"");
            json::write_key(out, "name");
            json::write_str(out, t.name);
            json::write_key(out, "start_ns");
            json::write_int(out, t.start);
            json::write_key(out, "stop_ns");
            json::write_int(out, t.stop);
        }
        Some(MessageRef::Event(e)) => {
            json::write_key(out, "title");
            json::write_str(out, e.title);
            json::write_key(out, "body");
            json::write_str(out, e.body);
        }
        None => {}
    }
}

/// A place as the API fields name it (before the record format of issue 19,
/// unchanged): from `tags` or text `deprecated_tags`, empty values left
/// out, Cloud Controller's names when the tags name nothing.
struct Named<'a> {
    guid: Option<&'a str>,
    name: Option<&'a str>,
}

impl<'a> Named<'a> {
    fn of(rec: &'a Record, place: usize) -> Option<Self> {
        let (_, guid_tag, name_tag) = PLACES[place];
        let tag = |k| rec.envelope.tag(k).filter(|s| !s.is_empty());
        let (guid, name) = (tag(guid_tag), tag(name_tag));
        if guid.is_some() || name.is_some() {
            return Some(Named { guid, name });
        }
        let [guid, name] = cc_names(rec.names.as_deref()?, place);
        (guid.is_some() || name.is_some()).then_some(Named { guid, name })
    }

    fn resource(&self, kind: &str) -> ApiResource {
        ApiResource {
            kind: kind.to_string(),
            guid: self.guid.map(str::to_string),
            name: self.name.map(str::to_string),
        }
    }
}

/// The space and org an envelope record's API fields name (`resources`).
pub(super) fn api_places(rec: &Record) -> [Option<ApiResource>; 2] {
    let resource = |kind, place| Named::of(rec, place).map(|n| n.resource(kind));
    [resource("space", 1), resource("org", 2)]
}

/// The CloudTrail-style fields of an API invocation (a few percent of the
/// records): serialised by serde as a map, whose entries are spliced into
/// the record's object.
pub(super) fn write_api_fields(out: &mut Vec<u8>, rec: &Record, api: &ApiCall) {
    struct Fields<'a> {
        rec: &'a Record,
        api: &'a ApiCall,
    }
    impl Serialize for Fields<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let time = rfc3339_nanos(self.rec.envelope.timestamp());
            let mut m = s.serialize_map(None)?;
            let [space, org] = api_places(self.rec);
            api::write_fields(&mut m, self.rec, self.api, &time, space, org)?;
            m.end()
        }
    }
    let mut map = Vec::with_capacity(512);
    sonic_rs::to_writer(&mut map, &Fields { rec, api })
        .expect("API fields serialise: string keys, finite numbers");
    if map.len() > 2 {
        out.push(b',');
        out.extend_from_slice(&map[1..map.len() - 1]);
    }
}

fn write_gauge_metrics(out: &mut Vec<u8>, g: &envelope::GaugeRef<'_>) {
    out.push(b'{');
    for (i, (name, unit, value)) in g.metrics().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, name);
        out.extend_from_slice(b":{\"unit\":");
        json::write_str(out, unit);
        out.extend_from_slice(b",\"value\":");
        json::write_float(out, value);
        out.push(b'}');
    }
    out.push(b'}');
}

/// Appends the envelope as the RLP Gateway's protojson (EmitUnpopulated)
/// writes it: snake_case keys, 64-bit integers as strings, payload base64.
/// (A log type other than `ERR` is written `OUT`, as it always was.)
pub(crate) fn write_envelope_json(env: &EnvelopeView, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timestamp\":");
    json::write_int_str(out, env.timestamp());
    json::write_key(out, "source_id");
    json::write_str(out, env.source_id());
    json::write_key(out, "instance_id");
    json::write_str(out, env.instance_id());
    json::write_key(out, "deprecated_tags");
    write_deprecated_map(env, out);
    out.extend_from_slice(b",\"tags\":{");
    for (i, (k, v)) in env.tags().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, k);
        out.push(b':');
        json::write_str(out, v);
    }
    out.push(b'}');
    match env.message() {
        Some(MessageRef::Log(l)) => {
            out.extend_from_slice(b",\"log\":{\"payload\":");
            json::write_base64(out, l.payload);
            out.extend_from_slice(if l.is_err() {
                b",\"type\":\"ERR\"}"
            } else {
                b",\"type\":\"OUT\"}"
            });
        }
        Some(MessageRef::Counter(c)) => {
            out.extend_from_slice(b",\"counter\":{\"name\":");
            json::write_str(out, c.name);
            out.extend_from_slice(b",\"delta\":");
            json::write_int_str(out, c.delta);
            out.extend_from_slice(b",\"total\":");
            json::write_int_str(out, c.total);
            out.push(b'}');
        }
        Some(MessageRef::Gauge(g)) => {
            out.extend_from_slice(b",\"gauge\":{\"metrics\":");
            write_gauge_metrics(out, &g);
            out.push(b'}');
        }
        Some(MessageRef::Timer(t)) => {
            out.extend_from_slice(b",\"timer\":{\"name\":");
            json::write_str(out, t.name);
            out.extend_from_slice(b",\"start\":");
            json::write_int_str(out, t.start);
            out.extend_from_slice(b",\"stop\":");
            json::write_int_str(out, t.stop);
            out.push(b'}');
        }
        Some(MessageRef::Event(e)) => {
            out.extend_from_slice(b",\"event\":{\"title\":");
            json::write_str(out, e.title);
            out.extend_from_slice(b",\"body\":");
            json::write_str(out, e.body);
            out.push(b'}');
        }
        None => {}
    }
    out.push(b'}');
}

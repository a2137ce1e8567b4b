//! [`EnvelopeView`]: an envelope read in place from the received bytes.
//!
//! Why not prost: decoding a realistic envelope (540 bytes, 13 tags) into
//! prost's owned structs cost ~28,000 instructions (callgrind,
//! `examples/encode_cost`): a `String` per tag key and value, a map node per
//! tag, a `String` per name. The nozzle only reads those strings and writes
//! them out again, so this view keeps the batch's [`Bytes`] and the byte
//! ranges of each field instead, no copy of the payload until an encoder
//! writes it. Strings are validated once, when walked, and appended to one
//! `str` per batch that every view of the batch shares: the crate forbids
//! `unsafe`, so a string read from the wire bytes would have to be validated
//! again on every read, and that (~100 instructions per tag, three times per
//! record for JSON, HEC and syslog) cost more than prost's decode saved.
//! Per envelope: one `Vec` of tag ranges, no allocation per tag. The commits
//! that built it have the before/after numbers.
//!
//! The view is built by walking the protobuf wire format by hand
//! ([`super::wire`]) with prost's rules, so it accepts and rejects exactly
//! what prost does and yields the same fields: the last value of a repeated
//! scalar wins, a message field seen twice is merged, a oneof switched to
//! another case starts afresh, a map entry whose key repeats replaces the
//! earlier one, missing keys and values are their defaults, unknown fields
//! (groups too) are skipped, and a string field that is not UTF-8 makes the
//! whole batch invalid. `tests/envelope_view.rs` (property tests) and the
//! `envelope_batch` fuzz target check that against prost's own decode.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;

use super::wire::Span;
use crate::proto::{self, Envelope};

mod decode;
pub use decode::decode_batch;

/// One envelope, read in place. Cheap to clone (the bytes are shared).
#[derive(Clone)]
pub struct EnvelopeView {
    /// The envelope's protobuf encoding (a slice of the received batch).
    wire: Bytes,
    /// The strings of the batch the envelope came in, validated once, one
    /// after the other: every string span points here, so reading a string
    /// is slicing a `str` (validating on each read cost more than prost's
    /// decode saved; see the module doc). A `String` behind the `Arc`, not
    /// an `Arc<str>`: that conversion copied every batch's strings once more
    /// (3 % of the nozzle's CPU, `--mode gateway`).
    text: Arc<String>,
    timestamp: i64,
    source_id: Span,
    instance_id: Span,
    /// Sorted by key, keys unique (the last entry of a key wins).
    tags: Vec<(Span, Span)>,
    /// Where each of [`KNOWN_TAGS`] is in `tags` ([`ABSENT`], or
    /// [`UNINDEXED`] past what a `u16` holds).
    known: [u16; KNOWN_TAGS.len()],
    /// Sorted by key, keys unique.
    deprecated_tags: Vec<(Span, ValueSpan)>,
    message: Option<MessageSpan>,
}

/// The app label (seen as an envelope tag of the same name when Cloud
/// Controller forwards app labels as metric tags) by which an app opts out
/// of having its logs and metrics forwarded.
pub(crate) const OPT_OUT_TAG: &str = "cf-audit-nozzle/opt-out";

/// The tags the encoders and rules read for nearly every record, located
/// once when the view is made: scanning the tags on each lookup was ~2.7k
/// of the record JSON's ~15k instructions (callgrind, `examples/encode_cost`).
pub const KNOWN_TAGS: [&str; 11] = [
    "app_id",
    "app_name",
    "deployment",
    "job",
    "organization_id",
    "organization_name",
    "origin",
    "source_type",
    "space_id",
    "space_name",
    OPT_OUT_TAG,
];
/// In [`EnvelopeView::known`]: the tag is not in `tags`.
const ABSENT: u16 = u16::MAX;
/// In [`EnvelopeView::known`]: the tag's index does not fit; scan for it.
const UNINDEXED: u16 = u16::MAX - 1;

/// The slot of `key` in [`KNOWN_TAGS`] (a search of the list measured
/// fewer instructions than a switch on the key's length).
#[inline]
fn known_slot(key: &str) -> Option<usize> {
    KNOWN_TAGS.iter().position(|k| *k == key)
}

/// Spans of strings point into the view's `text`; the log payload's into `wire`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum ValueSpan {
    #[default]
    None,
    Text(Span),
    Integer(i64),
    Decimal(f64),
}

#[derive(Clone, Debug)]
enum MessageSpan {
    Log { payload: Span, ty: i32 },
    Counter { name: Span, delta: u64, total: u64 },
    Gauge { metrics: Vec<(Span, Span, f64)> },
    Timer { name: Span, start: i64, stop: i64 },
    Event { title: Span, body: Span },
}

/// A deprecated tag's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Text(&'a str),
    Integer(i64),
    Decimal(f64),
}

/// The envelope's message.
#[derive(Clone, Copy, Debug)]
pub enum MessageRef<'a> {
    Log(LogRef<'a>),
    Counter(CounterRef<'a>),
    Gauge(GaugeRef<'a>),
    Timer(TimerRef<'a>),
    Event(EventRef<'a>),
}

/// Which message an envelope carries, without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageType {
    Log,
    Counter,
    Gauge,
    Timer,
    Event,
}

#[derive(Clone, Copy, Debug)]
pub struct LogRef<'a> {
    pub payload: &'a [u8],
    /// `loggregator.v2.Log.Type` as sent: 1 is `ERR`, anything else `OUT`.
    pub r#type: i32,
}

impl LogRef<'_> {
    pub fn is_err(&self) -> bool {
        self.r#type == proto::log::Type::Err as i32
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CounterRef<'a> {
    pub name: &'a str,
    pub delta: u64,
    pub total: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct GaugeRef<'a> {
    view: &'a EnvelopeView,
    metrics: &'a [(Span, Span, f64)],
}

impl<'a> GaugeRef<'a> {
    /// `(name, unit, value)`, sorted by name, names unique.
    pub fn metrics(&self) -> impl ExactSizeIterator<Item = (&'a str, &'a str, f64)> + 'a {
        let view = self.view;
        self.metrics
            .iter()
            .map(move |&(name, unit, value)| (view.str(name), view.str(unit), value))
    }

    pub fn len(&self) -> usize {
        self.metrics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct TimerRef<'a> {
    pub name: &'a str,
    pub start: i64,
    pub stop: i64,
}

#[derive(Clone, Copy, Debug)]
pub struct EventRef<'a> {
    pub title: &'a str,
    pub body: &'a str,
}

impl EnvelopeView {
    /// A view of an envelope made in this process (gateway source, audit
    /// events, alerts, tests): encoded once, then read like a received one.
    pub fn from_prost(envelope: &Envelope) -> Self {
        Self::from_wire(envelope.encode_to_vec().into())
            .expect("prost's encoding of an envelope is a valid envelope")
    }

    /// The envelope's protobuf encoding, shared, not copied.
    pub fn encoded(&self) -> &Bytes {
        &self.wire
    }

    /// The bytes of strings the view keeps alive: all its batch's, or only
    /// its own when it was read alone ([`Self::from_wire`]).
    pub fn retained_text_len(&self) -> usize {
        self.text.len()
    }

    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    pub fn source_id(&self) -> &str {
        self.str(self.source_id)
    }

    pub fn instance_id(&self) -> &str {
        self.str(self.instance_id)
    }

    /// The `tags` map, sorted by key.
    pub fn tags(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.tags.iter().map(|&(k, v)| (self.str(k), self.str(v)))
    }

    /// Whether `tags` (not `deprecated_tags`) has `key`.
    pub fn has_tag(&self, key: &str) -> bool {
        self.find_tag(key).is_some()
    }

    /// A `tags` entry's value (never `deprecated_tags`): what the record's
    /// readable fields are made of.
    pub fn tags_value(&self, key: &str) -> Option<&str> {
        self.find_tag(key).map(|v| self.str(v))
    }

    /// A tag's value, from `tags` or, failing that, a text `deprecated_tags`
    /// entry (what an RLP sends a subscriber that did not ask for preferred tags).
    pub fn tag(&self, key: &str) -> Option<&str> {
        if let Some(v) = self.find_tag(key) {
            return Some(self.str(v));
        }
        let i = self
            .deprecated_tags
            .binary_search_by(|(k, _)| self.str(*k).cmp(key))
            .ok()?;
        match self.deprecated_tags[i].1 {
            ValueSpan::Text(t) => Some(self.str(t)),
            _ => None,
        }
    }

    /// The `deprecated_tags` map, sorted by key; `None` for a value without data.
    pub fn deprecated_tags(&self) -> impl ExactSizeIterator<Item = (&str, Option<ValueRef<'_>>)> {
        self.deprecated_tags.iter().map(|&(k, v)| {
            let v = match v {
                ValueSpan::None => None,
                ValueSpan::Text(t) => Some(ValueRef::Text(self.str(t))),
                ValueSpan::Integer(i) => Some(ValueRef::Integer(i)),
                ValueSpan::Decimal(d) => Some(ValueRef::Decimal(d)),
            };
            (self.str(k), v)
        })
    }

    pub(crate) fn message_type(&self) -> Option<MessageType> {
        Some(match self.message.as_ref()? {
            MessageSpan::Log { .. } => MessageType::Log,
            MessageSpan::Counter { .. } => MessageType::Counter,
            MessageSpan::Gauge { .. } => MessageType::Gauge,
            MessageSpan::Timer { .. } => MessageType::Timer,
            MessageSpan::Event { .. } => MessageType::Event,
        })
    }

    pub fn message(&self) -> Option<MessageRef<'_>> {
        Some(match self.message.as_ref()? {
            &MessageSpan::Log { payload, ty } => MessageRef::Log(LogRef {
                payload: self.bytes(payload),
                r#type: ty,
            }),
            &MessageSpan::Counter { name, delta, total } => MessageRef::Counter(CounterRef {
                name: self.str(name),
                delta,
                total,
            }),
            MessageSpan::Gauge { metrics } => MessageRef::Gauge(GaugeRef {
                view: self,
                metrics,
            }),
            &MessageSpan::Timer { name, start, stop } => MessageRef::Timer(TimerRef {
                name: self.str(name),
                start,
                stop,
            }),
            &MessageSpan::Event { title, body } => MessageRef::Event(EventRef {
                title: self.str(title),
                body: self.str(body),
            }),
        })
    }

    /// A log message's payload, sharing the received bytes.
    pub(crate) fn log_payload(&self) -> Option<Bytes> {
        match self.message {
            Some(MessageSpan::Log { payload, .. }) => Some(self.wire.slice(payload.range())),
            _ => None,
        }
    }

    /// A cheap estimate of the bytes the envelope's strings take.
    pub(crate) fn approx_text_len(&self) -> (usize, usize) {
        let tags = self.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
        let message = match &self.message {
            Some(MessageSpan::Log { payload, .. }) => payload.len(),
            Some(MessageSpan::Event { title, body }) => title.len() + body.len(),
            Some(MessageSpan::Gauge { metrics }) => metrics.iter().map(|m| m.0.len() + 24).sum(),
            _ => 32,
        };
        (tags, message)
    }

    /// The envelope as prost's owned struct (tests, conversions).
    pub fn to_prost(&self) -> Envelope {
        use proto::envelope::Message;
        let s = |v: &str| v.to_string();
        Envelope {
            timestamp: self.timestamp,
            source_id: s(self.source_id()),
            instance_id: s(self.instance_id()),
            deprecated_tags: self
                .deprecated_tags()
                .map(|(k, v)| {
                    let data = v.map(|v| match v {
                        ValueRef::Text(t) => proto::value::Data::Text(s(t)),
                        ValueRef::Integer(i) => proto::value::Data::Integer(i),
                        ValueRef::Decimal(d) => proto::value::Data::Decimal(d),
                    });
                    (s(k), proto::Value { data })
                })
                .collect(),
            tags: self.tags().map(|(k, v)| (s(k), s(v))).collect(),
            message: self.message().map(|m| match m {
                MessageRef::Log(l) => Message::Log(proto::Log {
                    payload: self.log_payload().unwrap_or_default(),
                    r#type: l.r#type,
                }),
                MessageRef::Counter(c) => Message::Counter(proto::Counter {
                    name: s(c.name),
                    delta: c.delta,
                    total: c.total,
                }),
                MessageRef::Gauge(g) => Message::Gauge(proto::Gauge {
                    metrics: g
                        .metrics()
                        .map(|(name, unit, value)| {
                            (
                                s(name),
                                proto::GaugeValue {
                                    unit: s(unit),
                                    value,
                                },
                            )
                        })
                        .collect::<BTreeMap<_, _>>(),
                }),
                MessageRef::Timer(t) => Message::Timer(proto::Timer {
                    name: s(t.name),
                    start: t.start,
                    stop: t.stop,
                }),
                MessageRef::Event(e) => Message::Event(proto::Event {
                    title: s(e.title),
                    body: s(e.body),
                }),
            }),
        }
    }

    #[inline]
    fn find_tag(&self, key: &str) -> Option<Span> {
        if let Some(slot) = known_slot(key) {
            match self.known[slot] {
                ABSENT => return None,
                UNINDEXED => {}
                i => return Some(self.tags[usize::from(i)].1),
            }
        }
        self.scan_tags(key)
    }

    fn scan_tags(&self, key: &str) -> Option<Span> {
        // A dozen tags: a scan comparing lengths first beats a binary
        // search's string comparisons.
        let text = self.text.as_bytes();
        self.tags
            .iter()
            .find(|(k, _)| k.len() == key.len() && &text[k.range()] == key.as_bytes())
            .map(|&(_, v)| v)
    }

    fn bytes(&self, span: Span) -> &[u8] {
        &self.wire[span.range()]
    }

    fn str(&self, span: Span) -> &str {
        // Spans are whole strings pushed to `text`; this cannot fail.
        self.text.get(span.range()).unwrap_or_default()
    }
}

impl From<Envelope> for EnvelopeView {
    fn from(envelope: Envelope) -> Self {
        Self::from_prost(&envelope)
    }
}

impl From<&Envelope> for EnvelopeView {
    fn from(envelope: &Envelope) -> Self {
        Self::from_prost(envelope)
    }
}

/// Equal when the envelopes say the same, however they were encoded.
impl PartialEq for EnvelopeView {
    fn eq(&self, other: &Self) -> bool {
        self.to_prost() == other.to_prost()
    }
}

impl std::fmt::Debug for EnvelopeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_prost().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_located_tag_has_its_own_slot_and_near_misses_none() {
        for (slot, key) in KNOWN_TAGS.iter().enumerate() {
            assert_eq!(known_slot(key), Some(slot), "{key}");
        }
        for key in [
            "",
            "jo",
            "joB",
            "app_ids",
            "origin ",
            "space_nam",
            "index",
            "ip",
        ] {
            assert_eq!(known_slot(key), None, "{key}");
        }
    }
}

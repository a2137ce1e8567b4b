//! The RLP Gateway's JSON envelopes, decoded leniently into the same prost
//! types the gRPC source produces (so classification and records do not
//! care where an envelope came from).
//!
//! Lenient as the gateway's history requires: 64-bit integers as strings or
//! numbers, snake_case or lowerCamel keys (`source_id`/`sourceId`), missing
//! and `null` fields as their defaults, unknown fields ignored, payloads in
//! standard base64 with or without padding, log types by name or number,
//! gauge values as numbers or `"NaN"`/`"Infinity"`/`"-Infinity"`.

use base64::Engine as _;
use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::proto::{self, envelope};
use crate::record::Kind;
use crate::record::envelope::EnvelopeView;

/// Why a frame could not be decoded: its kind and place, never its content
/// (serde_json's messages can quote the input).
#[derive(Debug, thiserror::Error)]
#[error("{category} error at line {line} column {column}")]
pub struct DecodeError {
    category: &'static str,
    line: usize,
    column: usize,
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        Self {
            category: match e.classify() {
                Category::Io => "I/O",
                Category::Syntax => "JSON syntax",
                Category::Data => "envelope field",
                Category::Eof => "truncated JSON",
            },
            line: e.line(),
            column: e.column(),
        }
    }
}

/// Decodes one `data:` frame, `{"batch":[...]}`.
pub fn decode_batch(data: &str) -> Result<Vec<proto::Envelope>, DecodeError> {
    let batch: Batch = serde_json::from_str(data)?;
    Ok(batch.batch.into_iter().map(Into::into).collect())
}

/// Decodes one `data:` frame into envelope views read in place, as the
/// RLP source's batches are: the envelopes [`decode_batch`] makes, written
/// as one `EnvelopeBatch`'s protobuf wire ([`super::to_wire`]) without
/// making them.
pub fn decode_batch_views(data: &str) -> Result<Vec<EnvelopeView>, DecodeError> {
    let batch: Batch = serde_json::from_str(data)?;
    let mut wire = Vec::with_capacity(data.len());
    super::to_wire::write_batch(batch.batch, &mut wire);
    crate::record::envelope::decode_batch(&wire.into()).map_err(|_| DecodeError {
        // Not expected: the wire is ours. Counted as a malformed frame.
        category: "protobuf re-encoding",
        line: 0,
        column: 0,
    })
}

/// How many envelopes of each kind (indexed by [`Kind::index`]) one
/// `data:` frame holds, read without decoding them: what a saturated router
/// sheds ([`crate::route::Router::saturated`]). Only what decides the kind
/// is read (which message is present, `source_type` in `tags` or else in
/// `deprecated_tags`, as [`crate::classify::kind_of`] reads it); the rest is
/// skipped, so the frame's JSON is checked but not each envelope's fields.
/// No string, map or envelope is made: several times cheaper than decoding.
pub fn count_batch_kinds(data: &str) -> Result<[u64; 4], DecodeError> {
    #[derive(Deserialize)]
    struct Frame {
        #[serde(default, deserialize_with = "or_default")]
        batch: Vec<KindOnly>,
    }
    let frame: Frame = serde_json::from_str(data)?;
    let mut kinds = [0; 4];
    for e in frame.batch {
        let kind = if e.log.is_some() {
            match e.tags.0.or(e.deprecated_tags.0) {
                Some(true) => Kind::Api,
                _ => Kind::AppLog,
            }
        } else if e.counter.is_some() || e.gauge.is_some() || e.timer.is_some() {
            Kind::Metric
        } else {
            Kind::Event
        };
        kinds[kind.index()] += 1;
    }
    Ok(kinds)
}

/// An envelope read for its kind alone ([`count_batch_kinds`]).
#[derive(Deserialize, Default)]
#[serde(default)]
struct KindOnly {
    log: Option<de::IgnoredAny>,
    counter: Option<de::IgnoredAny>,
    gauge: Option<de::IgnoredAny>,
    timer: Option<de::IgnoredAny>,
    #[serde(deserialize_with = "or_default")]
    tags: SourceTypeTag<Option<IsApi>>,
    #[serde(alias = "deprecatedTags", deserialize_with = "or_default")]
    deprecated_tags: SourceTypeTag<DeprecatedText>,
}

/// A tags map read for `source_type` alone: whether it is `"API"`, `None`
/// without it (the last of repeated keys wins, as in decoding).
struct SourceTypeTag<V>(Option<bool>, std::marker::PhantomData<V>);

impl<V> Default for SourceTypeTag<V> {
    fn default() -> Self {
        Self(None, std::marker::PhantomData)
    }
}

/// A tag value that may be the text `"API"`.
trait ApiText {
    fn is_api(&self) -> bool;
}

/// A JSON string, compared with `"API"` in place.
struct IsApi(bool);

impl ApiText for Option<IsApi> {
    fn is_api(&self) -> bool {
        matches!(self, Some(IsApi(true)))
    }
}

/// A `deprecated_tags` value: only its `text` can say `"API"`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct DeprecatedText {
    text: Option<IsApi>,
}

impl ApiText for DeprecatedText {
    fn is_api(&self) -> bool {
        self.text.is_api()
    }
}

/// Whether a JSON string equals the one given, without copying it.
struct StrIs(&'static str);

impl de::Visitor<'_> for StrIs {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

impl<'de> Deserialize<'de> for IsApi {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrIs("API")).map(IsApi)
    }
}

impl<'de, V: Deserialize<'de> + ApiText> Deserialize<'de> for SourceTypeTag<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A key, `true` when it is `source_type`.
        struct IsSourceType(bool);
        impl<'de> Deserialize<'de> for IsSourceType {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(StrIs("source_type")).map(IsSourceType)
            }
        }
        struct Tags<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de> + ApiText> de::Visitor<'de> for Tags<V> {
            type Value = SourceTypeTag<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of tags")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut api = None;
                while let Some(IsSourceType(wanted)) = map.next_key()? {
                    if wanted {
                        api = Some(map.next_value::<V>()?.is_api());
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                Ok(SourceTypeTag(api, std::marker::PhantomData))
            }
        }
        d.deserialize_map(Tags(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow, default, deserialize_with = "or_default")]
    batch: Vec<Envelope<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Envelope<'a> {
    #[serde(deserialize_with = "int64")]
    pub(super) timestamp: i64,
    #[serde(borrow, alias = "sourceId", deserialize_with = "or_default")]
    pub(super) source_id: Str<'a>,
    #[serde(borrow, alias = "instanceId", deserialize_with = "or_default")]
    pub(super) instance_id: Str<'a>,
    #[serde(borrow, alias = "deprecatedTags", deserialize_with = "or_default")]
    pub(super) deprecated_tags: Pairs<'a, Value<'a>>,
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) tags: Pairs<'a, Str<'a>>,
    pub(super) log: Option<Log>,
    #[serde(borrow)]
    pub(super) counter: Option<Counter<'a>>,
    #[serde(borrow)]
    pub(super) gauge: Option<Gauge<'a>>,
    #[serde(borrow)]
    pub(super) timer: Option<Timer<'a>>,
    #[serde(borrow)]
    pub(super) event: Option<Event<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Value<'a> {
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) text: Option<Str<'a>>,
    #[serde(deserialize_with = "int64_opt")]
    pub(super) integer: Option<i64>,
    #[serde(deserialize_with = "double_opt")]
    pub(super) decimal: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Log {
    #[serde(deserialize_with = "base64_bytes")]
    pub(super) payload: bytes::Bytes,
    #[serde(rename = "type", deserialize_with = "log_type")]
    pub(super) kind: i32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Counter<'a> {
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) name: Str<'a>,
    #[serde(deserialize_with = "uint64")]
    pub(super) delta: u64,
    #[serde(deserialize_with = "uint64")]
    pub(super) total: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Gauge<'a> {
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) metrics: Pairs<'a, GaugeValue<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct GaugeValue<'a> {
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) unit: Str<'a>,
    #[serde(deserialize_with = "double")]
    pub(super) value: f64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Timer<'a> {
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) name: Str<'a>,
    #[serde(deserialize_with = "int64")]
    pub(super) start: i64,
    #[serde(deserialize_with = "int64")]
    pub(super) stop: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Event<'a> {
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) title: Str<'a>,
    #[serde(borrow, deserialize_with = "or_default")]
    pub(super) body: Str<'a>,
}

/// An envelope's message, taken out of it ([`Envelope::take_message`]).
pub(super) enum Message<'a> {
    Log(Log),
    Counter(Counter<'a>),
    Gauge(Gauge<'a>),
    Timer(Timer<'a>),
    Event(Event<'a>),
}

impl<'a> Envelope<'a> {
    /// The first message present, in the order log, counter, gauge, timer,
    /// event: protojson sets at most one oneof member, and this is the one
    /// both the prost envelope and the wire ([`super::to_wire`]) carry.
    pub(super) fn take_message(&mut self) -> Option<Message<'a>> {
        if let Some(l) = self.log.take() {
            Some(Message::Log(l))
        } else if let Some(c) = self.counter.take() {
            Some(Message::Counter(c))
        } else if let Some(g) = self.gauge.take() {
            Some(Message::Gauge(g))
        } else if let Some(t) = self.timer.take() {
            Some(Message::Timer(t))
        } else {
            self.event.take().map(Message::Event)
        }
    }
}

impl From<Envelope<'_>> for proto::Envelope {
    fn from(mut e: Envelope<'_>) -> Self {
        use envelope::Message as M;
        let message = e.take_message().map(|m| match m {
            Message::Log(l) => M::Log(proto::Log {
                payload: l.payload,
                r#type: l.kind,
            }),
            Message::Counter(c) => M::Counter(proto::Counter {
                name: c.name.into(),
                delta: c.delta,
                total: c.total,
            }),
            Message::Gauge(g) => M::Gauge(proto::Gauge {
                metrics: g
                    .metrics
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            k.into(),
                            proto::GaugeValue {
                                unit: v.unit.into(),
                                value: v.value,
                            },
                        )
                    })
                    .collect(),
            }),
            Message::Timer(t) => M::Timer(proto::Timer {
                name: t.name.into(),
                start: t.start,
                stop: t.stop,
            }),
            Message::Event(v) => M::Event(proto::Event {
                title: v.title.into(),
                body: v.body.into(),
            }),
        });
        proto::Envelope {
            timestamp: e.timestamp,
            source_id: e.source_id.into(),
            instance_id: e.instance_id.into(),
            deprecated_tags: e
                .deprecated_tags
                .into_iter()
                .map(|(k, v)| {
                    use proto::value::Data;
                    let data = match (v.text, v.integer, v.decimal) {
                        (Some(t), _, _) => Some(Data::Text(t.into())),
                        (None, Some(i), _) => Some(Data::Integer(i)),
                        (None, None, Some(d)) => Some(Data::Decimal(d)),
                        (None, None, None) => None,
                    };
                    (k.into(), proto::Value { data })
                })
                .collect(),
            tags: e
                .tags
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            message,
        }
    }
}

/// A JSON string borrowed from the frame when it has no escapes (most
/// do), so decoding allocates no string per tag: the frame's envelopes are
/// written as protobuf wire at once ([`super::to_wire`]).
#[derive(Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Str<'a>(std::borrow::Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<Str<'_>> for String {
    fn from(s: Str<'_>) -> Self {
        s.0.into_owned()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = std::borrow::Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(std::borrow::Cow::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(std::borrow::Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(std::borrow::Cow::Owned(v))
            }
        }
        d.deserialize_str(Visitor).map(Str)
    }
}

/// A JSON object's members in key order, a repeated key's last value kept
/// (what a map made by inserting them holds, as protobuf map fields merge),
/// without a tree: a sort of a few dozen members is cheaper than inserting
/// them one by one.
pub(super) struct Pairs<'a, V>(Vec<(Str<'a>, V)>);

impl<V> Default for Pairs<'_, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<'a, V> std::ops::Deref for Pairs<'a, V> {
    type Target = [(Str<'a>, V)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a, V> IntoIterator for Pairs<'a, V> {
    type Item = (Str<'a>, V);
    type IntoIter = std::vec::IntoIter<(Str<'a>, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de: 'a, 'a, V: Deserialize<'de>> Deserialize<'de> for Pairs<'a, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> de::Visitor<'de> for Visitor<V> {
            type Value = Vec<(Str<'de>, V)>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                // Written in key order (as the gateway writes maps): sorted,
                // and no key repeated. One look, where reversing such a map
                // for the sort below made the insertion sort quadratic
                // (`--mode gateway`: 5 % of the nozzle's CPU in compares).
                if pairs.windows(2).all(|w| w[0].0 < w[1].0) {
                    return Ok(pairs);
                }
                // Reversed, a stable sort puts a repeated key's last value
                // first among its equals, and dedup keeps the first.
                pairs.reverse();
                pairs.sort_by(|a: &(Str<'de>, V), b| a.0.cmp(&b.0));
                pairs.dedup_by(|a, b| a.0 == b.0);
                Ok(pairs)
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
            .map(Pairs)
    }
}

/// `null` as the type's default.
fn or_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A JSON number or a string holding one (protojson writes 64-bit integers as strings).
enum Num<'a> {
    I(i64),
    U(u64),
    F(f64),
    S(std::borrow::Cow<'a, str>),
}

/// Reads a [`Num`] or `null` straight from the parser (an untagged enum
/// would buffer every value first; these are on every envelope).
struct NumVisitor;

impl<'de> de::Visitor<'de> for NumVisitor {
    type Value = Option<Num<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, a string holding one, or null")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Num::I(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Num::U(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Num::F(v)))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Num::S(v.into())))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Num::S(v.to_owned().into())))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

fn num_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Num<'de>>, D::Error> {
    d.deserialize_any(NumVisitor)
}

fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(int64_opt(d)?.unwrap_or(0))
}

fn int64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match num_opt(d)? {
        None => Ok(None),
        Some(Num::I(i)) => Ok(Some(i)),
        Some(Num::U(u)) => i64::try_from(u)
            .map(Some)
            .map_err(|_| de::Error::custom("int64 out of range")),
        Some(Num::F(f)) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(f as i64)),
        Some(Num::F(_)) => Err(de::Error::custom("int64 is not an integer")),
        Some(Num::S(s)) if s.is_empty() => Ok(Some(0)),
        Some(Num::S(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom("int64 string is not an integer")),
    }
}

fn uint64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match num_opt(d)? {
        None => Ok(0),
        Some(Num::U(u)) => Ok(u),
        Some(Num::I(i)) => u64::try_from(i).map_err(|_| de::Error::custom("uint64 is negative")),
        Some(Num::F(f)) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => Ok(f as u64),
        Some(Num::F(_)) => Err(de::Error::custom("uint64 is not an integer")),
        Some(Num::S(s)) if s.is_empty() => Ok(0),
        Some(Num::S(s)) => s
            .parse()
            .map_err(|_| de::Error::custom("uint64 string is not an integer")),
    }
}

fn double<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(double_opt(d)?.unwrap_or(0.0))
}

fn double_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match num_opt(d)? {
        None => Ok(None),
        Some(Num::I(i)) => Ok(Some(i as f64)),
        Some(Num::U(u)) => Ok(Some(u as f64)),
        Some(Num::F(f)) => Ok(Some(f)),
        Some(Num::S(s)) => match s.as_ref() {
            "NaN" => Ok(Some(f64::NAN)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            other => other
                .parse()
                .map(Some)
                .map_err(|_| de::Error::custom("double string is not a number")),
        },
    }
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<bytes::Bytes, D::Error> {
    d.deserialize_any(Base64Visitor)
}

/// Decodes the payload straight from the parser's string (no copy of the
/// base64 text first): payloads are most of a log envelope's bytes.
struct Base64Visitor;

impl<'de> de::Visitor<'de> for Base64Visitor {
    type Value = bytes::Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("base64 text or null")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        const LENIENT: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        LENIENT
            .decode(v.as_bytes())
            .map(Into::into)
            .map_err(|_| E::custom("payload is not base64"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(bytes::Bytes::new())
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(bytes::Bytes::new())
    }
}

fn log_type<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    match num_opt(d)? {
        None => Ok(0),
        Some(Num::I(i)) if (0..=1).contains(&i) => Ok(i as i32),
        Some(Num::U(u)) if u <= 1 => Ok(u as i32),
        Some(Num::S(s)) if s == "OUT" => Ok(proto::log::Type::Out as i32),
        Some(Num::S(s)) if s == "ERR" => Ok(proto::log::Type::Err as i32),
        Some(_) => Err(de::Error::custom("log type is not OUT or ERR")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`super::decode_batch`], checking on the way that the views the
    /// gateway source dispatches ([`decode_batch_views`], the wire written
    /// without prost) say exactly what the prost envelopes say: every test
    /// below, the 20,000-case property tests included, checks both.
    fn decode_batch(data: &str) -> Result<Vec<proto::Envelope>, DecodeError> {
        let envelopes = super::decode_batch(data);
        let views = decode_batch_views(data);
        match (&envelopes, views) {
            (Ok(envelopes), Ok(views)) => {
                assert_eq!(envelopes.len(), views.len(), "{data}");
                for (e, v) in envelopes.iter().zip(views) {
                    assert_eq!(as_record(e.into()), as_record(v), "{data}");
                }
            }
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            (a, b) => panic!("{data}: {:?} but views {:?}", a.is_ok(), b.is_ok()),
        }
        envelopes
    }

    /// Every fact of the envelope (the record with its protojson copy), as
    /// a JSON value: maps compare whatever their order, NaN as its text.
    fn as_record(view: EnvelopeView) -> serde_json::Value {
        let mut ctx = crate::record::EncodeContext::new("f");
        ctx.record_envelope = true;
        let mut out = Vec::new();
        crate::classify::classify(view).write_json(&ctx, &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    /// Counting kinds unread agrees with decoding and classifying, where
    /// `source_type` is (tags first, then deprecated tags, the last of a
    /// repeated key, escaped keys), where it is not, and with nulls.
    #[test]
    fn kinds_counted_unread_agree_with_decoding() {
        let frame = r#"{"batch":[
            {"log":{"payload":"YQ=="},"tags":{"source_type":"API"}},
            {"log":{"payload":"YQ=="},"tags":{"source_type":"APP/PROC/WEB","x":"API"}},
            {"log":{"payload":"YQ=="},"deprecated_tags":{"source_type":{"text":"API"}}},
            {"log":{"payload":"YQ=="},"deprecatedTags":{"source_type":{"integer":"1"}}},
            {"log":{"payload":"YQ=="},"tags":{"source_type":"RTR"},"deprecated_tags":{"source_type":{"text":"API"}}},
            {"log":{"payload":"YQ=="},"tags":{"source_type":"API","source_type":"CELL"}},
            {"log":{"payload":"YQ=="},"tags":{"source\u005ftype":"A\u0050I"}},
            {"log":null,"counter":{"name":"c","delta":"1"},"tags":null},
            {"gauge":{"metrics":{}},"deprecated_tags":null},
            {"timer":{"name":"t"}},
            {"event":{"title":"t","body":"b"}},
            {}
        ]}"#;
        let decoded: Vec<Kind> = decode_batch(frame)
            .unwrap()
            .into_iter()
            .map(|e| crate::classify::kind_of(&e.into()))
            .collect();
        let mut expected = [0u64; 4];
        for k in &decoded {
            expected[k.index()] += 1;
        }
        assert_eq!(count_batch_kinds(frame).unwrap(), expected);
        // api: the first, third and seventh; app logs: four; metrics: three; events: two.
        let mut by_hand = [0u64; 4];
        by_hand[Kind::Api.index()] = 3;
        by_hand[Kind::AppLog.index()] = 4;
        by_hand[Kind::Metric.index()] = 3;
        by_hand[Kind::Event.index()] = 2;
        assert_eq!(expected, by_hand);

        assert_eq!(count_batch_kinds(r#"{"batch":null}"#).unwrap(), [0; 4]);
        assert_eq!(count_batch_kinds("{}").unwrap(), [0; 4]);
        // Broken JSON is refused like a frame that does not decode.
        let e = count_batch_kinds(r#"{"batch":[{"log":{}"#).unwrap_err();
        assert_eq!(e.to_string(), "truncated JSON error at line 1 column 19");
        assert!(count_batch_kinds(r#"{"batch":[{"tags":{"source_type":7}}]}"#).is_err());
    }

    #[test]
    fn protojson_as_the_gateway_writes_it() {
        let data = r#"{"batch":[{"timestamp":"1532030745755909241","source_id":"app-guid","instance_id":"0",
            "deprecated_tags":{},"tags":{"source_type":"APP/PROC/WEB","app_name":"web"},
            "log":{"payload":"bG9nIGJvZHk=","type":"ERR"}},
            {"timestamp":"0","source_id":"doppler","instance_id":"","deprecated_tags":{},"tags":{},
            "counter":{"name":"egress","delta":"9","total":"1462"}},
            {"timestamp":"5","source_id":"rep","instance_id":"","deprecated_tags":{},"tags":{},
            "gauge":{"metrics":{"cpu":{"unit":"percentage","value":0.5},"bad":{"unit":"","value":"NaN"}}}},
            {"timestamp":"6","source_id":"gorouter","instance_id":"","deprecated_tags":{},"tags":{},
            "timer":{"name":"http","start":"10","stop":"20"}},
            {"timestamp":"7","source_id":"cc","instance_id":"","deprecated_tags":{},"tags":{},
            "event":{"title":"t","body":"b"}},
            {"timestamp":"0","source_id":"","instance_id":"","deprecated_tags":{},"tags":{}}]}"#;
        let envs = decode_batch(data).unwrap();
        assert_eq!(envs.len(), 6);
        assert_eq!(envs[0].timestamp, 1_532_030_745_755_909_241);
        assert_eq!(envs[0].tags["app_name"], "web");
        match &envs[0].message {
            Some(envelope::Message::Log(l)) => {
                assert_eq!(&l.payload[..], b"log body");
                assert_eq!(l.r#type, proto::log::Type::Err as i32);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&envs[1].message, Some(envelope::Message::Counter(c)) if c.delta == 9 && c.total == 1462 && c.name == "egress")
        );
        match &envs[2].message {
            Some(envelope::Message::Gauge(g)) => {
                assert_eq!(g.metrics["cpu"].value, 0.5);
                assert!(g.metrics["bad"].value.is_nan());
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&envs[3].message, Some(envelope::Message::Timer(t)) if t.start == 10 && t.stop == 20)
        );
        assert!(
            matches!(&envs[4].message, Some(envelope::Message::Event(e)) if e.title == "t" && e.body == "b")
        );
        assert_eq!(envs[5].message, None);
    }

    /// A repeated key keeps its last value, in every map, as a map made by
    /// inserting the members in order (and protobuf's merge) would.
    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let data = r#"{"batch":[{"tags":{"a":"1","b":"x","a":"2","\u0061":"3"},
            "deprecated_tags":{"k":{"text":"1"},"j":{"text":"j"},"k":{"integer":"2"}},
            "gauge":{"metrics":{"m":{"unit":"a","value":1},"n":{"unit":"n","value":3},"m":{"unit":"b","value":2}}}}]}"#;
        let envs = decode_batch(data).unwrap();
        let e = &envs[0];
        assert_eq!(e.tags.len(), 2);
        assert_eq!((e.tags["a"].as_str(), e.tags["b"].as_str()), ("3", "x"));
        assert_eq!(e.deprecated_tags.len(), 2);
        assert_eq!(
            e.deprecated_tags["k"].data,
            Some(proto::value::Data::Integer(2))
        );
        let Some(envelope::Message::Gauge(g)) = &e.message else {
            panic!("{e:?}")
        };
        assert_eq!(g.metrics.len(), 2);
        assert_eq!(
            (g.metrics["m"].unit.as_str(), g.metrics["m"].value),
            ("b", 2.0)
        );
        // In key order, with a key repeated next to itself, and without.
        let data =
            r#"{"batch":[{"tags":{"a":"1","a":"2","b":"x"}},{"tags":{"a":"1","b":"x","c":"y"}}]}"#;
        let envs = decode_batch(data).unwrap();
        assert_eq!(envs[0].tags.len(), 2);
        assert_eq!(
            (envs[0].tags["a"].as_str(), envs[0].tags["b"].as_str()),
            ("2", "x")
        );
        let tags = [("a", "1"), ("b", "x"), ("c", "y")].map(|(k, v)| (k.into(), v.into()));
        assert_eq!(envs[1].tags, tags.into());
    }

    #[test]
    fn camel_case_numbers_nulls_missing_fields_and_unpadded_base64() {
        let data = r#"{"batch":[{"timestamp":1541438163000000000,"sourceId":"s","instanceId":"3",
            "deprecatedTags":{"job":{"text":"diego-cell"},"n":{"integer":"4"}},"tags":null,
            "log":{"payload":"eA","type":1},"unknown":[1,2]},
            {"counter":{"name":"dropped","total":99}}]}"#;
        let envs = decode_batch(data).unwrap();
        assert_eq!(envs[0].timestamp, 1_541_438_163_000_000_000);
        assert_eq!(envs[0].source_id, "s");
        assert_eq!(envs[0].instance_id, "3");
        assert_eq!(
            envs[0].deprecated_tags["job"].data,
            Some(proto::value::Data::Text("diego-cell".into()))
        );
        assert_eq!(
            envs[0].deprecated_tags["n"].data,
            Some(proto::value::Data::Integer(4))
        );
        assert!(
            matches!(&envs[0].message, Some(envelope::Message::Log(l)) if &l.payload[..] == b"x" && l.r#type == 1)
        );
        assert!(
            matches!(&envs[1].message, Some(envelope::Message::Counter(c)) if c.delta == 0 && c.total == 99)
        );
        assert_eq!(decode_batch("{}").unwrap().len(), 0);
    }

    /// The gauge value (and the decimal tag) a frame carrying `text` as the
    /// number decodes to.
    fn decoded_double(text: &str) -> (f64, f64) {
        let data = format!(
            r#"{{"batch":[{{"deprecated_tags":{{"d":{{"decimal":{text}}}}},"gauge":{{"metrics":{{"m":{{"unit":"u","value":{text}}}}}}}}}]}}"#
        );
        let envs = decode_batch(&data).unwrap();
        let Some(envelope::Message::Gauge(g)) = &envs[0].message else {
            panic!("{data}")
        };
        let Some(proto::value::Data::Decimal(d)) = envs[0].deprecated_tags["d"].data else {
            panic!("{data}")
        };
        (g.metrics["m"].value, d)
    }

    /// The ways a double reaches us as text: the shortest form (what the
    /// gateway's protojson and our emulator write), Go's exponent form with
    /// a sign, Rust's exponent form, and a string.
    fn texts(v: f64) -> Vec<String> {
        let shortest = zmij::Buffer::new().format_finite(v).to_string();
        let exp = format!("{v:e}");
        let go_exp = match exp.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => exp.clone(),
        };
        let quoted = format!("\"{shortest}\"");
        vec![shortest, exp, go_exp, quoted, format!("{v:?}")]
    }

    fn assert_round_trip(v: f64) {
        for text in texts(v) {
            let (value, decimal) = decoded_double(&text);
            assert_eq!(value.to_bits(), v.to_bits(), "{text} became {value:?}");
            assert_eq!(decimal.to_bits(), v.to_bits(), "{text} became {decimal:?}");
        }
    }

    #[test]
    fn every_double_reads_back_to_the_same_bits() {
        for v in [
            92.28571428571429,
            -0.0,
            0.0,
            5e-324,
            -5e-324,
            2.225073858507201e-308,
            2.2250738585072014e-308,
            1e308,
            f64::MAX,
            f64::MIN,
            0.1,
            1.0 / 3.0,
            9007199254740993.0,
            123456789012345680000.0,
        ] {
            assert_round_trip(v);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]
        #[test]
        fn any_finite_double_reads_back_to_the_same_bits(bits in proptest::prelude::any::<u64>()) {
            let v = f64::from_bits(bits);
            if v.is_finite() {
                assert_round_trip(v);
            }
        }

        #[test]
        fn any_int64_and_uint64_reads_back_exactly(i in proptest::prelude::any::<i64>(), u in proptest::prelude::any::<u64>()) {
            for (ts, total) in [(format!("\"{i}\""), format!("\"{u}\"")), (i.to_string(), u.to_string())] {
                let data = format!(r#"{{"batch":[{{"timestamp":{ts},"counter":{{"name":"c","delta":{total},"total":{total}}}}}]}}"#);
                let envs = decode_batch(&data).unwrap();
                proptest::prop_assert_eq!(envs[0].timestamp, i);
                let Some(envelope::Message::Counter(c)) = &envs[0].message else { panic!() };
                proptest::prop_assert_eq!((c.delta, c.total), (u, u));
            }
        }
    }

    #[test]
    fn the_extremes_of_int64_and_uint64_as_strings_and_numbers() {
        for (ts, want) in [
            ("\"-9223372036854775808\"", i64::MIN),
            ("\"9223372036854775807\"", i64::MAX),
            ("-9223372036854775808", i64::MIN),
            ("9223372036854775807", i64::MAX),
        ] {
            let envs = decode_batch(&format!(r#"{{"batch":[{{"timestamp":{ts}}}]}}"#)).unwrap();
            assert_eq!(envs[0].timestamp, want, "{ts}");
        }
        let data = r#"{"batch":[{"counter":{"delta":"18446744073709551615","total":18446744073709551615}}]}"#;
        let envs = decode_batch(data).unwrap();
        let Some(envelope::Message::Counter(c)) = &envs[0].message else {
            panic!()
        };
        assert_eq!((c.delta, c.total), (u64::MAX, u64::MAX));
    }

    #[test]
    fn errors_name_the_place_not_the_content() {
        let err = decode_batch(r#"{"batch":[{"timestamp":"secret-value"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("envelope field error at line 1"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = decode_batch(r#"{"batch":[{"log":{"payload":"!!"}}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("envelope field error"), "{err}");
        let err = decode_batch(r#"{"batch":[{"#).unwrap_err().to_string();
        assert!(err.starts_with("truncated JSON"), "{err}");
    }
}

//! The envelope view decodes what prost decodes: the same verdict on any
//! bytes, the same fields when both accept. Random envelopes encoded by
//! prost, and random protobuf-shaped bytes (unknown fields, groups, repeated
//! fields and messages, duplicate map keys, wrong wire types, invalid UTF-8,
//! truncations) are decoded both ways and compared.
//!
//! The envelope schema has no repeated scalar fields, so there is nothing
//! packed to decode; a scalar sent length-delimited (as a packed field would
//! be) must be rejected as prost rejects it, and the random bytes do that.

use std::collections::BTreeMap;

use bytes::Bytes;
use cf_audit_nozzle::proto::{
    Counter, Envelope, EnvelopeBatch, Event, Gauge, GaugeValue, Log, Timer, Value, envelope, value,
};
use cf_audit_nozzle::record::{EnvelopeView, WireError, decode_batch};
use proptest::prelude::*;
use prost::Message;

/// prost's decode and the view's, as re-encoded bytes (prost's encoding is
/// deterministic for our ordered maps, and compares floats bit for bit).
fn both(bytes: &[u8]) -> (Result<Vec<u8>, String>, Result<Vec<u8>, WireError>) {
    let prost = EnvelopeBatch::decode(bytes)
        .map(|b| b.encode_to_vec())
        .map_err(|e| e.to_string());
    let view = decode_batch(&Bytes::copy_from_slice(bytes)).map(|views| {
        EnvelopeBatch {
            batch: views.iter().map(EnvelopeView::to_prost).collect(),
        }
        .encode_to_vec()
    });
    (prost, view)
}

fn check_batch(bytes: &[u8]) {
    match both(bytes) {
        (Ok(p), Ok(v)) => assert_eq!(p, v, "fields differ for {bytes:?}"),
        (Err(_), Err(_)) => {}
        (p, v) => panic!("verdicts differ for {bytes:?}: prost {p:?}, view {v:?}"),
    }
    // The same bytes as one envelope (a top-level message, one level less deep).
    let prost = Envelope::decode(bytes).map(|e| e.encode_to_vec());
    let view = EnvelopeView::from_wire(Bytes::copy_from_slice(bytes)).map(|v| v.to_prost());
    match (prost, view) {
        (Ok(p), Ok(v)) => assert_eq!(p, v.encode_to_vec(), "fields differ for {bytes:?}"),
        (Err(_), Err(_)) => {}
        (p, v) => panic!("envelope verdicts differ for {bytes:?}: prost {p:?}, view {v:?}"),
    }
}

// ---- random envelopes, encoded by prost ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-c]{1,2}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value { data: None }),
        text().prop_map(|t| Value {
            data: Some(value::Data::Text(t))
        }),
        any::<i64>().prop_map(|i| Value {
            data: Some(value::Data::Integer(i))
        }),
        any::<f64>().prop_map(|d| Value {
            data: Some(value::Data::Decimal(d))
        }),
    ]
}

fn message() -> impl Strategy<Value = Option<envelope::Message>> {
    use envelope::Message as M;
    prop_oneof![
        Just(None),
        (any::<Vec<u8>>(), any::<i32>()).prop_map(|(p, t)| Some(M::Log(Log {
            payload: p.into(),
            r#type: t
        }))),
        (text(), any::<u64>(), any::<u64>())
            .prop_map(|(name, delta, total)| Some(M::Counter(Counter { name, delta, total }))),
        proptest::collection::btree_map(text(), (text(), any::<f64>()), 0..4).prop_map(|m| {
            Some(M::Gauge(Gauge {
                metrics: m
                    .into_iter()
                    .map(|(k, (unit, value))| (k, GaugeValue { unit, value }))
                    .collect(),
            }))
        }),
        (text(), any::<i64>(), any::<i64>())
            .prop_map(|(name, start, stop)| Some(M::Timer(Timer { name, start, stop }))),
        (text(), text()).prop_map(|(title, body)| Some(M::Event(Event { title, body }))),
    ]
}

fn prost_envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<i64>(),
        text(),
        text(),
        proptest::collection::btree_map(text(), value(), 0..4),
        proptest::collection::btree_map(text(), text(), 0..14),
        message(),
    )
        .prop_map(
            |(timestamp, source_id, instance_id, deprecated_tags, tags, message)| Envelope {
                timestamp,
                source_id,
                instance_id,
                deprecated_tags,
                tags,
                message,
            },
        )
}

// ---- random protobuf-shaped bytes ----

/// A field as it goes on the wire.
#[derive(Clone, Debug)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, u64),
    Fixed32(u32, u32),
    Bytes(u32, Vec<u8>),
    Message(u32, Vec<Field>),
    Group(u32, Vec<Field>),
}

fn key(out: &mut Vec<u8>, tag: u32, wire_type: u32) {
    prost::encoding::encode_varint(u64::from(tag) << 3 | u64::from(wire_type), out);
}

fn encode(fields: &[Field], out: &mut Vec<u8>) {
    use prost::encoding::encode_varint;
    for f in fields {
        match f {
            Field::Varint(t, v) => {
                key(out, *t, 0);
                encode_varint(*v, out);
            }
            Field::Fixed64(t, v) => {
                key(out, *t, 1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Fixed32(t, v) => {
                key(out, *t, 5);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Field::Bytes(t, b) => {
                key(out, *t, 2);
                encode_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            Field::Message(t, inner) => {
                let mut body = Vec::new();
                encode(inner, &mut body);
                key(out, *t, 2);
                encode_varint(body.len() as u64, out);
                out.extend_from_slice(&body);
            }
            Field::Group(t, inner) => {
                key(out, *t, 3);
                encode(inner, out);
                key(out, *t, 4);
            }
        }
    }
}

/// Mostly the field numbers the schema uses (1-10), some unknown ones.
fn tag() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1u32..=10, 1 => 11u32..40, 1 => Just((1 << 29) - 1)]
}

/// Mostly valid UTF-8 (from a few values, so map keys repeat), sometimes not.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let valid = proptest::sample::select(vec![
        b"a".to_vec(),
        b"b".to_vec(),
        b"API".to_vec(),
        Vec::new(),
        "\u{e9}t\u{e9}".as_bytes().to_vec(),
    ]);
    prop_oneof![
        12 => valid,
        1 => proptest::sample::select(vec![vec![0xff], vec![0xc3]]),
        1 => proptest::collection::vec(any::<u8>(), 0..6),
    ]
}

fn fields() -> impl Strategy<Value = Vec<Field>> {
    let leaf = prop_oneof![
        (tag(), prop_oneof![any::<u64>(), 0u64..3]).prop_map(|(t, v)| Field::Varint(t, v)),
        (tag(), any::<u64>()).prop_map(|(t, v)| Field::Fixed64(t, v)),
        (tag(), any::<u32>()).prop_map(|(t, v)| Field::Fixed32(t, v)),
        (tag(), payload()).prop_map(|(t, b)| Field::Bytes(t, b)),
    ];
    let field = leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            4 => (tag(), proptest::collection::vec(inner.clone(), 0..6))
                .prop_map(|(t, f)| Field::Message(t, f)),
            1 => (tag(), proptest::collection::vec(inner, 0..3))
                .prop_map(|(t, f)| Field::Group(t, f)),
        ]
    });
    proptest::collection::vec(field, 0..10)
}

/// A field of small tag numbers whose leaves are sometimes the right type.
fn small_field() -> impl Strategy<Value = Field> {
    let t = 1u32..=3;
    prop_oneof![
        4 => (t.clone(), payload()).prop_map(|(t, b)| Field::Bytes(t, b)),
        2 => (t.clone(), prop_oneof![any::<u64>(), 0u64..3]).prop_map(|(t, v)| Field::Varint(t, v)),
        1 => (t.clone(), any::<u64>()).prop_map(|(t, v)| Field::Fixed64(t, v)),
        1 => (t, any::<u32>()).prop_map(|(t, v)| Field::Fixed32(t, v)),
    ]
}

/// A field of a message whose fields 1-3 have these wire types (0 varint,
/// 1 fixed64, 2 length-delimited; `None`: no such field): mostly right,
/// sometimes an unknown field, sometimes anything.
fn typed(types: [Option<u8>; 3]) -> impl Strategy<Value = Field> {
    let known: Vec<(u32, u8)> = (1..=3)
        .zip(types)
        .filter_map(|(t, w)| w.map(|w| (t, w)))
        .collect();
    let right = (
        proptest::sample::select(known),
        payload(),
        any::<u64>(),
        0u64..3,
    )
        .prop_map(|((t, w), b, v, small)| match w {
            0 => Field::Varint(t, if small > 1 { v } else { small }),
            1 => Field::Fixed64(t, v),
            _ => Field::Bytes(t, b),
        });
    let unknown = (4u32..20, any::<u64>()).prop_map(|(t, v)| Field::Varint(t, v));
    prop_oneof![8 => right, 1 => unknown, 1 => small_field()]
}

fn typed_message(tag: u32, types: [Option<u8>; 3]) -> impl Strategy<Value = Field> {
    proptest::collection::vec(typed(types), 0..4).prop_map(move |f| Field::Message(tag, f))
}

/// Envelope fields shaped like the schema (tag entries, deprecated tags,
/// each message kind, gauge entries), mixed with arbitrary ones.
fn envelope_field() -> impl Strategy<Value = Field> {
    const STR: Option<u8> = Some(2);
    const INT: Option<u8> = Some(0);
    const F64: Option<u8> = Some(1);
    let gauge_entry = (
        payload(),
        proptest::collection::vec(typed([STR, F64, None]), 0..3),
    )
        .prop_map(|(k, v)| Field::Message(1, vec![Field::Bytes(1, k), Field::Message(2, v)]));
    prop_oneof![
        1 => fields().prop_flat_map(|f| proptest::sample::select(if f.is_empty() { vec![Field::Varint(1, 0)] } else { f })),
        2 => typed([INT, STR, None]),
        4 => proptest::collection::vec(typed([STR, STR, None]), 0..3).prop_map(|f| Field::Message(9, f)),
        1 => (payload(), proptest::collection::vec(typed([STR, INT, F64]), 0..3))
            .prop_map(|(k, value)| Field::Message(3, vec![Field::Bytes(1, k), Field::Message(2, value)])),
        1 => typed_message(4, [STR, INT, None]),
        1 => typed_message(5, [STR, INT, INT]),
        1 => typed_message(7, [STR, INT, INT]),
        1 => typed_message(10, [STR, STR, None]),
        1 => proptest::collection::vec(gauge_entry, 0..3).prop_map(|entries| Field::Message(6, entries)),
    ]
}

/// A batch of envelopes made of random fields, sometimes with an unknown
/// top-level field, and sometimes cut short or with one byte changed.
fn raw_batch() -> impl Strategy<Value = Vec<u8>> {
    let envelopes = proptest::collection::vec(
        prop_oneof![
            6 => proptest::collection::vec(envelope_field(), 0..6).prop_map(|f| Field::Message(1, f)),
            1 => fields().prop_map(|f| Field::Message(1, f)),
            1 => (tag(), payload()).prop_map(|(t, b)| Field::Bytes(t, b)),
            1 => (tag(), any::<u64>()).prop_map(|(t, v)| Field::Varint(t, v)),
        ],
        0..4,
    );
    let damage = prop_oneof![
        6 => Just(None),
        1 => (any::<prop::sample::Index>(), Just(None)).prop_map(Some),
        1 => (any::<prop::sample::Index>(), any::<u8>().prop_map(Some)).prop_map(Some),
    ];
    (envelopes, damage).prop_map(|(fields, damage)| {
        let mut out = Vec::new();
        encode(&fields, &mut out);
        match damage {
            Some((at, None)) if !out.is_empty() => out.truncate(at.index(out.len())),
            Some((at, Some(b))) if !out.is_empty() => {
                let i = at.index(out.len());
                out[i] = b;
            }
            _ => {}
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn envelopes_prost_encodes_are_viewed_field_for_field(envs in proptest::collection::vec(prost_envelope(), 0..4)) {
        let bytes = EnvelopeBatch { batch: envs.clone() }.encode_to_vec();
        let views = decode_batch(&Bytes::from(bytes)).expect("prost's encoding decodes");
        prop_assert_eq!(views.len(), envs.len());
        for (view, env) in views.iter().zip(&envs) {
            let encoded = env.encode_to_vec();
            prop_assert_eq!(view.to_prost().encode_to_vec(), encoded.clone());
            prop_assert_eq!(view.encoded().as_ref(), encoded.as_slice());
        }
    }

    #[test]
    fn random_protobuf_bytes_get_prosts_verdict_and_fields(bytes in raw_batch()) {
        check_batch(&bytes);
    }

    #[test]
    fn arbitrary_bytes_get_prosts_verdict(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_batch(&bytes);
    }
}

fn batch_of(envelope_fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&[Field::Message(1, envelope_fields.to_vec())], &mut out);
    out
}

fn tag_entry(k: &str, v: &str) -> Field {
    Field::Message(
        9,
        vec![
            Field::Bytes(1, k.as_bytes().to_vec()),
            Field::Bytes(2, v.as_bytes().to_vec()),
        ],
    )
}

#[test]
fn a_repeated_tag_key_keeps_its_last_value_and_tags_come_out_sorted() {
    let bytes = batch_of(&[
        tag_entry("zone", "z1"),
        tag_entry("app", "first"),
        tag_entry("app", "second"),
        Field::Bytes(2, b"source-1".to_vec()),
        Field::Bytes(2, b"source-2".to_vec()),
    ]);
    check_batch(&bytes);
    let views = decode_batch(&Bytes::from(bytes)).unwrap();
    let tags: Vec<_> = views[0].tags().collect();
    assert_eq!(tags, [("app", "second"), ("zone", "z1")]);
    assert_eq!(views[0].source_id(), "source-2");
}

#[test]
fn a_message_sent_twice_is_merged_and_a_switched_oneof_starts_afresh() {
    let merged = batch_of(&[
        Field::Message(
            4,
            vec![Field::Bytes(1, b"one".to_vec()), Field::Varint(2, 1)],
        ),
        Field::Message(4, vec![Field::Bytes(1, b"two".to_vec())]),
    ]);
    check_batch(&merged);
    let view = &decode_batch(&Bytes::from(merged)).unwrap()[0];
    let log = view.to_prost();
    assert_eq!(
        log.message,
        Some(envelope::Message::Log(Log {
            payload: Bytes::from_static(b"two"),
            r#type: 1
        }))
    );

    let switched = batch_of(&[
        Field::Message(4, vec![Field::Varint(2, 1)]),
        Field::Message(5, vec![Field::Varint(2, 7)]),
        Field::Message(4, vec![Field::Bytes(1, b"x".to_vec())]),
    ]);
    check_batch(&switched);
    let view = &decode_batch(&Bytes::from(switched)).unwrap()[0];
    assert_eq!(
        view.to_prost().message,
        Some(envelope::Message::Log(Log {
            payload: Bytes::from_static(b"x"),
            r#type: 0
        }))
    );
}

#[test]
fn invalid_utf8_in_any_string_field_rejects_the_batch_as_prost_does() {
    let bad = vec![0xc3, 0x28];
    for fields in [
        vec![Field::Bytes(2, bad.clone())],
        vec![Field::Bytes(8, bad.clone())],
        vec![Field::Message(9, vec![Field::Bytes(1, bad.clone())])],
        vec![Field::Message(9, vec![Field::Bytes(2, bad.clone())])],
        vec![Field::Message(
            3,
            vec![Field::Message(2, vec![Field::Bytes(1, bad.clone())])],
        )],
        vec![Field::Message(5, vec![Field::Bytes(1, bad.clone())])],
        vec![Field::Message(10, vec![Field::Bytes(2, bad.clone())])],
        vec![Field::Message(
            6,
            vec![Field::Message(
                1,
                vec![Field::Message(2, vec![Field::Bytes(1, bad.clone())])],
            )],
        )],
    ] {
        let bytes = batch_of(&fields);
        assert!(EnvelopeBatch::decode(bytes.as_slice()).is_err());
        let err = decode_batch(&Bytes::from(bytes)).unwrap_err();
        assert!(matches!(err, WireError::Utf8 { .. }), "{err}");
    }
    // Halves of one character in two strings: each string is invalid, though
    // together they would spell "é".
    for fields in [
        vec![Field::Message(
            9,
            vec![Field::Bytes(1, vec![0xc3]), Field::Bytes(2, vec![0xa9])],
        )],
        vec![
            Field::Bytes(2, vec![b'a', 0xc3]),
            Field::Bytes(8, vec![0xa9]),
        ],
    ] {
        let bytes = batch_of(&fields);
        assert!(EnvelopeBatch::decode(bytes.as_slice()).is_err());
        let err = decode_batch(&Bytes::from(bytes)).unwrap_err();
        assert!(matches!(err, WireError::Utf8 { .. }), "{err}");
    }
    // A log payload is bytes, not a string: any bytes are accepted.
    check_batch(&batch_of(&[Field::Message(4, vec![Field::Bytes(1, bad)])]));
}

#[test]
fn a_map_field_with_another_wire_type_is_rejected_as_prost_does() {
    // Field 9 (tags) with wire type varint, followed by what would be an entry.
    let mut env = Vec::new();
    key(&mut env, 9, 0);
    let mut entry = Vec::new();
    encode(
        &[
            Field::Bytes(1, b"k".to_vec()),
            Field::Bytes(2, b"v".to_vec()),
        ],
        &mut entry,
    );
    env.push(entry.len() as u8);
    env.extend_from_slice(&entry);
    let mut bytes = Vec::new();
    key(&mut bytes, 1, 2);
    bytes.push(env.len() as u8);
    bytes.extend_from_slice(&env);
    check_batch(&bytes);
    let err = decode_batch(&Bytes::from(bytes)).unwrap_err();
    assert!(matches!(err, WireError::WireType { .. }), "{err}");
}

#[test]
fn groups_nested_up_to_the_recursion_limit_are_skipped_as_prost_does() {
    for depth in 95..=101 {
        let mut group = vec![Field::Varint(1, 1)];
        for _ in 0..depth {
            group = vec![Field::Group(15, group)];
        }
        check_batch(&batch_of(&group));
        let mut top = Vec::new();
        encode(&group, &mut top);
        check_batch(&top);
    }
}

#[test]
fn deprecated_text_tags_answer_when_tags_do_not() {
    let env = Envelope {
        deprecated_tags: BTreeMap::from([
            (
                "origin".to_string(),
                Value {
                    data: Some(value::Data::Text("rep".into())),
                },
            ),
            (
                "job".to_string(),
                Value {
                    data: Some(value::Data::Integer(3)),
                },
            ),
        ]),
        tags: BTreeMap::from([("job".to_string(), "router".to_string())]),
        ..Envelope::default()
    };
    let view = EnvelopeView::from_prost(&env);
    assert_eq!(view.tag("origin"), Some("rep"));
    assert_eq!(view.tag("job"), Some("router"));
    assert_eq!(view.tag("nothing"), None);
    assert!(!view.has_tag("origin"));
}

/// Tag keys: the ones the view locates at decode, near misses, and any.
fn tag_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(
            cf_audit_nozzle::record::envelope::KNOWN_TAGS
                .into_iter()
                .chain(["app_ids", "jo", "index"])
                .collect::<Vec<_>>(),
        )
        .prop_map(String::from),
        1 => text(),
    ]
}

/// What prost's maps say `key` is: `tags`, else a text `deprecated_tags` entry.
fn prost_tag<'a>(env: &'a Envelope, key: &str) -> Option<&'a str> {
    env.tags.get(key).map(String::as_str).or_else(|| {
        match env.deprecated_tags.get(key).and_then(|v| v.data.as_ref()) {
            Some(value::Data::Text(t)) => Some(t.as_str()),
            _ => None,
        }
    })
}

proptest! {
    /// Every tag lookup answers as prost's maps do, for the tags the view
    /// locates once at decode as for the rest, with keys repeated on the
    /// wire (merged messages: the last entry wins) and deprecated tags behind.
    #[test]
    fn tag_lookups_answer_as_prosts_maps(
        parts in proptest::collection::vec(
            (
                proptest::collection::btree_map(tag_key(), text(), 0..8),
                proptest::collection::btree_map(tag_key(), text(), 0..3),
            ),
            1..4,
        )
    ) {
        let mut wire = Vec::new();
        for (tags, deprecated) in &parts {
            let deprecated_tags = deprecated
                .iter()
                .map(|(k, v)| (k.clone(), Value { data: Some(value::Data::Text(v.clone())) }))
                .collect();
            Envelope { tags: tags.clone(), deprecated_tags, ..Envelope::default() }
                .encode(&mut wire)
                .unwrap();
        }
        let prost = Envelope::decode(wire.as_slice()).unwrap();
        let view = EnvelopeView::from_wire(Bytes::from(wire)).unwrap();
        let mut keys: Vec<String> = parts.iter().flat_map(|(t, d)| t.keys().chain(d.keys())).cloned().collect();
        keys.extend(["app_id", "space_name", "origin", "nothing"].map(String::from));
        for key in &keys {
            prop_assert_eq!(view.tag(key), prost_tag(&prost, key), "key {:?}", key);
            prop_assert_eq!(view.has_tag(key), prost.tags.contains_key(key));
        }
    }
}

#[test]
fn a_located_tag_past_what_its_index_holds_is_still_found() {
    // 70,000 tags sort before "space_name", whose index does not fit a u16.
    let mut tags: BTreeMap<String, String> = (0..70_000)
        .map(|i| (format!("a{i:05}"), String::new()))
        .collect();
    tags.insert("space_name".into(), "prod".into());
    tags.insert("app_id".into(), "guid".into());
    let env = Envelope {
        tags,
        ..Envelope::default()
    };
    let view = EnvelopeView::from_prost(&env);
    assert_eq!(view.tag("space_name"), Some("prod"));
    assert_eq!(view.tag("app_id"), Some("guid"));
    assert_eq!(view.tag("a69999"), Some(""));
    assert_eq!(view.tag("origin"), None);
}

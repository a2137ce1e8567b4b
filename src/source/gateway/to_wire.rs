//! The gateway's JSON envelopes written straight as one `EnvelopeBatch`'s
//! protobuf wire, then read in place as the RLP source's batches are
//! ([`crate::record::envelope::decode_batch`]).
//!
//! The other way, each envelope became a prost `Envelope` (a hash map per
//! tag map, a `String` per key), was encoded alone and read alone: three
//! more passes and allocations per envelope than the gRPC source pays, and
//! none of them in the decode-only ceiling. The bytes written are what prost
//! writes for the envelope [`super::json::decode_batch`] makes (defaults
//! left out, a oneof member always written), with map entries in key order
//! (a repeated key once, its last value).
//! That both ways say the same is checked by every decode in `json.rs`'s
//! tests (each decodes both ways) and by the `gateway_json` fuzz target.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::json::{Envelope, Message, Value};

/// The envelopes as the wire of an `EnvelopeBatch` (field 1, repeated).
pub(super) fn write_batch(envelopes: Vec<Envelope>, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(1024);
    let mut message = Vec::with_capacity(256);
    for mut e in envelopes {
        body.clear();
        write_envelope(&mut e, &mut body, &mut message);
        bytes_field(1, &body, out);
    }
}

fn write_envelope(e: &mut Envelope, out: &mut Vec<u8>, message: &mut Vec<u8>) {
    if e.timestamp != 0 {
        int_field(1, e.timestamp as u64, out);
    }
    str_field(2, &e.source_id, out);
    for (k, v) in e.deprecated_tags.iter() {
        message_entry(3, k, value_len(v), out, |out| write_value(v, out));
    }
    message.clear();
    let field = write_message(e, message);
    if let Some(field) = field {
        bytes_field(field, message, out);
    }
    str_field(8, &e.instance_id, out);
    for (k, v) in e.tags.iter() {
        encode_key(9, WireType::LengthDelimited, out);
        encode_varint((str_len(k) + str_len(v)) as u64, out);
        str_field(1, k, out);
        str_field(2, v, out);
    }
}

/// The envelope's message ([`Envelope::take_message`]); returns its field.
fn write_message(e: &mut Envelope, out: &mut Vec<u8>) -> Option<u32> {
    Some(match e.take_message()? {
        Message::Log(l) => {
            bytes_or_empty(1, &l.payload, out);
            if l.kind != 0 {
                int_field(2, l.kind as i64 as u64, out);
            }
            4
        }
        Message::Counter(c) => {
            str_field(1, &c.name, out);
            if c.delta != 0 {
                int_field(2, c.delta, out);
            }
            if c.total != 0 {
                int_field(3, c.total, out);
            }
            5
        }
        Message::Gauge(g) => {
            for (name, v) in g.metrics.iter() {
                let len = str_len(&v.unit) + if v.value != 0.0 { 9 } else { 0 };
                message_entry(1, name, len, out, |out| {
                    str_field(1, &v.unit, out);
                    if v.value != 0.0 {
                        double_field(2, v.value, out);
                    }
                });
            }
            6
        }
        Message::Timer(t) => {
            str_field(1, &t.name, out);
            if t.start != 0 {
                int_field(2, t.start as u64, out);
            }
            if t.stop != 0 {
                int_field(3, t.stop as u64, out);
            }
            7
        }
        Message::Event(v) => {
            str_field(1, &v.title, out);
            str_field(2, &v.body, out);
            10
        }
    })
}

/// An entry of a `map<string, M>` field: its key, and its value (of
/// `value_len` bytes, which `write` writes) unless that is empty, the
/// message's default, which prost leaves out.
fn message_entry(
    field: u32,
    key: &str,
    value_len: usize,
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>),
) {
    let value_part = if value_len == 0 {
        0
    } else {
        1 + encoded_len_varint(value_len as u64) + value_len
    };
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint((str_len(key) + value_part) as u64, out);
    str_field(1, key, out);
    if value_len > 0 {
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(value_len as u64, out);
        write(out);
    }
}

/// A `Value`'s encoded length: its oneof member, written even when it
/// holds its type's default (as prost writes a set oneof).
fn value_len(v: &Value) -> usize {
    match (&v.text, v.integer, v.decimal) {
        (Some(t), _, _) => 1 + encoded_len_varint(t.len() as u64) + t.len(),
        (None, Some(i), _) => 1 + encoded_len_varint(i as u64),
        (None, None, Some(_)) => 9,
        (None, None, None) => 0,
    }
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match (&v.text, v.integer, v.decimal) {
        (Some(t), _, _) => bytes_field(1, t.as_bytes(), out),
        (None, Some(i), _) => int_field(2, i as u64, out),
        (None, None, Some(d)) => double_field(3, d, out),
        (None, None, None) => {}
    }
}

/// A string field's encoded length, 0 when it is empty (left out).
fn str_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn str_field(field: u32, s: &str, out: &mut Vec<u8>) {
    bytes_or_empty(field, s.as_bytes(), out);
}

/// A length-delimited field, left out when empty (a proto3 default).
fn bytes_or_empty(field: u32, b: &[u8], out: &mut Vec<u8>) {
    if !b.is_empty() {
        bytes_field(field, b, out);
    }
}

/// A length-delimited field, written even when empty (a message).
fn bytes_field(field: u32, b: &[u8], out: &mut Vec<u8>) {
    encode_key(field, WireType::LengthDelimited, out);
    encode_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

fn int_field(field: u32, v: u64, out: &mut Vec<u8>) {
    encode_key(field, WireType::Varint, out);
    encode_varint(v, out);
}

fn double_field(field: u32, v: f64, out: &mut Vec<u8>) {
    encode_key(field, WireType::SixtyFourBit, out);
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

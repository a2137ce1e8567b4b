//! Walking an `EnvelopeBatch` (or one envelope) into [`EnvelopeView`]s:
//! the hand-written protobuf decoder the module doc of [`super`] explains,
//! with prost's rules for repeated, merged and unknown fields.

use std::sync::Arc;

use bytes::Bytes;

use super::{ABSENT, EnvelopeView, KNOWN_TAGS, MessageSpan, UNINDEXED, ValueSpan, known_slot};
use crate::record::wire::{RECURSION_LIMIT, Reader, Span, WireError, WireType, expect};

/// Reads an `EnvelopeBatch`'s envelopes in place. Any malformed envelope
/// (or a string field that is not UTF-8) rejects the whole batch, as
/// prost's decode does.
pub fn decode_batch(batch: &Bytes) -> Result<Vec<EnvelopeView>, WireError> {
    let (parts, tags, text) = walk_batch(batch, false)?;
    let Some(text) = text.into_str() else {
        // Some string is not UTF-8: walk again checking each, to say which.
        return Err(not_utf8(walk_batch(batch, true).err()));
    };
    Ok(parts
        .into_iter()
        .map(|p| p.into_view(batch, &text, &tags))
        .collect())
}

type Walked = (Vec<Parts>, Vec<(Span, Span)>, Text);

fn walk_batch(batch: &[u8], check_each: bool) -> Result<Walked, WireError> {
    let mut r = Reader::new(batch);
    let mut parts = Vec::with_capacity(100);
    // The batch's tags and strings are collected once for the batch; each
    // envelope then copies its tag spans out at their exact size (one
    // allocation) and shares the strings.
    let mut tags = Vec::with_capacity(1024);
    let mut text = Text::new(batch.len() / 2, check_each);
    while r.has_more() {
        let at = r.pos;
        let (tag, wire_type) = r.key()?;
        if tag == 1 {
            expect("EnvelopeBatch.batch", at, wire_type, WireType::Len)?;
            let mut env = r.sub()?;
            let start = env.pos;
            parts.push(walk_envelope(
                &mut env,
                start,
                RECURSION_LIMIT - 1,
                &mut tags,
                &mut text,
            )?);
        } else {
            r.skip(wire_type, tag, RECURSION_LIMIT)?;
        }
    }
    Ok((parts, tags, text))
}

/// The string fields walked, one after the other, each followed by a NUL
/// byte. Validating the whole at once is much cheaper than string by string
/// (std's check has a fast path for long ASCII runs, not for 20 bytes), and
/// equivalent: a NUL is a character of its own, so no character can span
/// two strings, and the whole is UTF-8 exactly when every string is.
struct Text {
    bytes: Vec<u8>,
    /// Check each string as it is added (to name the one that is not UTF-8).
    check_each: bool,
}

impl Text {
    fn new(capacity: usize, check_each: bool) -> Self {
        Text {
            bytes: Vec::with_capacity(capacity),
            check_each,
        }
    }

    /// The strings, or `None` if one of them is not UTF-8.
    fn into_str(self) -> Option<Arc<String>> {
        String::from_utf8(self.bytes).ok().map(Arc::new)
    }
}

/// The error of a walk that checked each string (it cannot succeed when the
/// strings together are not UTF-8).
fn not_utf8(checked: Option<WireError>) -> WireError {
    checked.unwrap_or(WireError::Utf8 {
        field: "a string field",
        at: 0,
    })
}

impl EnvelopeView {
    /// Reads one envelope's protobuf encoding (what [`Self::encoded`] returns).
    pub fn from_wire(wire: Bytes) -> Result<Self, WireError> {
        let walk = |check_each| {
            let mut r = Reader::new(&wire);
            let mut tags = Vec::new();
            let mut text = Text::new(wire.len() / 2, check_each);
            walk_envelope(&mut r, 0, RECURSION_LIMIT, &mut tags, &mut text)
                .map(|parts| (parts, tags, text))
        };
        let (parts, tags, text) = walk(false)?;
        let Some(text) = text.into_str() else {
            return Err(not_utf8(walk(true).err()));
        };
        Ok(parts.into_view(&wire, &text, &tags))
    }
}

/// An envelope's fields as walked: the payload relative to the envelope's
/// first byte, strings in the batch's text, tags in the batch's tag list.
#[derive(Default)]
struct Parts {
    /// The envelope's bytes in the buffer walked.
    wire: (usize, usize),
    timestamp: i64,
    source_id: Span,
    instance_id: Span,
    tags: std::ops::Range<usize>,
    deprecated_tags: Vec<(Span, ValueSpan)>,
    message: Option<MessageSpan>,
}

impl Parts {
    fn into_view(mut self, buf: &Bytes, text: &Arc<String>, tags: &[(Span, Span)]) -> EnvelopeView {
        let mut own_tags = tags[self.tags].to_vec();
        last_wins(text, &mut own_tags, |t| t.0);
        let mut known = [ABSENT; KNOWN_TAGS.len()];
        for (i, (key, _)) in own_tags.iter().enumerate() {
            if let Some(slot) = known_slot(&text[key.range()]) {
                known[slot] = u16::try_from(i).unwrap_or(UNINDEXED).min(UNINDEXED);
            }
        }
        last_wins(text, &mut self.deprecated_tags, |t| t.0);
        if let Some(MessageSpan::Gauge { metrics }) = &mut self.message {
            last_wins(text, metrics, |m| m.0);
        }
        EnvelopeView {
            wire: buf.slice(self.wire.0..self.wire.1),
            text: Arc::clone(text),
            timestamp: self.timestamp,
            source_id: self.source_id,
            instance_id: self.instance_id,
            tags: own_tags,
            known,
            deprecated_tags: self.deprecated_tags,
            message: self.message,
        }
    }
}

/// Sorts map entries (kept in wire order) by key and keeps the last entry
/// of each key, as inserting them one by one into a map does.
fn last_wins<T: Copy>(text: &str, entries: &mut Vec<T>, key: impl Fn(&T) -> Span) {
    let key = |t: &T| &text.as_bytes()[key(t).range()];
    if entries.is_sorted_by(|a, b| key(a) < key(b)) {
        return;
    }
    // Stable, so equal keys stay in wire order.
    entries.sort_by(|a, b| key(a).cmp(key(b)));
    entries.dedup_by(|later, earlier| {
        if key(later) == key(earlier) {
            *earlier = *later;
            true
        } else {
            false
        }
    });
}

/// Walks one envelope's fields. `depth` is prost's recursion budget for the
/// envelope's own fields (99 inside a batch); `base` is its first byte.
///
/// Each field's reading is a function of its own below, called from one
/// place and inlined, so the walk is still one loop over the fields with
/// nothing added per field (`scripts/bench --mode grpc-decode` before and
/// after the split: the same within the noise).
fn walk_envelope(
    r: &mut Reader<'_>,
    base: usize,
    depth: u32,
    tags: &mut Vec<(Span, Span)>,
    text: &mut Text,
) -> Result<Parts, WireError> {
    let mut p = Parts {
        wire: (base, r.end),
        tags: tags.len()..tags.len(),
        ..Parts::default()
    };
    while r.has_more() {
        let at = r.pos;
        let (tag, wt) = r.key()?;
        match tag {
            1 => {
                expect("Envelope.timestamp", at, wt, WireType::Varint)?;
                p.timestamp = r.varint()? as i64;
            }
            2 => p.source_id = string(r, wt, at, "Envelope.source_id", text)?,
            8 => p.instance_id = string(r, wt, at, "Envelope.instance_id", text)?,
            9 => {
                tags.push(tag_entry(r, wt, at, depth, text)?);
                p.tags.end = tags.len();
            }
            3 => {
                let entry = deprecated_tag_entry(r, wt, at, depth, text)?;
                p.deprecated_tags.push(entry);
            }
            4 => p.message = Some(log(r, wt, at, depth, base, p.message.take())?),
            5 => p.message = Some(counter(r, wt, at, depth, text, p.message.take())?),
            6 => p.message = Some(gauge(r, wt, at, depth, text, p.message.take())?),
            7 => p.message = Some(timer(r, wt, at, depth, text, p.message.take())?),
            10 => p.message = Some(event(r, wt, at, depth, text, p.message.take())?),
            _ => r.skip(wt, tag, depth)?,
        }
    }
    Ok(p)
}

/// An `Envelope.tags` map entry: its key and value.
#[inline]
fn tag_entry(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
) -> Result<(Span, Span), WireError> {
    let mut key = Span::default();
    let mut value = Span::default();
    message(r, wt, at, "Envelope.tags", depth, |e, tag, wt, at| {
        match tag {
            1 => key = string(e, wt, at, "Envelope.tags key", text)?,
            2 => value = string(e, wt, at, "Envelope.tags value", text)?,
            _ => e.skip(wt, tag, depth - 1)?,
        }
        Ok(())
    })?;
    Ok((key, value))
}

/// An `Envelope.deprecated_tags` map entry: its key and `Value`.
#[inline]
fn deprecated_tag_entry(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
) -> Result<(Span, ValueSpan), WireError> {
    let mut key = Span::default();
    let mut value = ValueSpan::None;
    message(
        r,
        wt,
        at,
        "Envelope.deprecated_tags",
        depth,
        |e, tag, wt, at| {
            match tag {
                1 => key = string(e, wt, at, "Envelope.deprecated_tags key", text)?,
                2 => deprecated_value(e, wt, at, depth - 1, text, &mut value)?,
                _ => e.skip(wt, tag, depth - 1)?,
            }
            Ok(())
        },
    )?;
    Ok((key, value))
}

/// A deprecated tag's `Value`, merged into `value` (a value field seen
/// twice in one entry is merged, as prost does).
#[inline]
fn deprecated_value(
    e: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
    value: &mut ValueSpan,
) -> Result<(), WireError> {
    message(
        e,
        wt,
        at,
        "Envelope.deprecated_tags value",
        depth,
        |v, tag, wt, at| {
            match tag {
                1 => *value = ValueSpan::Text(string(v, wt, at, "Value.text", text)?),
                2 => {
                    expect("Value.integer", at, wt, WireType::Varint)?;
                    *value = ValueSpan::Integer(v.varint()? as i64);
                }
                3 => {
                    expect("Value.decimal", at, wt, WireType::Fixed64)?;
                    *value = ValueSpan::Decimal(f64::from_bits(v.fixed64()?));
                }
                _ => v.skip(wt, tag, depth - 1)?,
            }
            Ok(())
        },
    )
}

/// `Envelope.log`, merged into the message so far if that is a log too.
/// The payload's span is relative to the envelope's first byte, `base`.
#[inline]
fn log(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    base: usize,
    previous: Option<MessageSpan>,
) -> Result<MessageSpan, WireError> {
    let (mut payload, mut ty) = match previous {
        Some(MessageSpan::Log { payload, ty }) => (payload, ty),
        _ => (Span::default(), 0),
    };
    message(r, wt, at, "Envelope.log", depth, |m, tag, wt, at| {
        match tag {
            1 => {
                expect("Log.payload", at, wt, WireType::Len)?;
                let (start, end) = m.len_delimited()?;
                payload = Span {
                    start: (start - base) as u32,
                    end: (end - base) as u32,
                };
            }
            2 => {
                expect("Log.type", at, wt, WireType::Varint)?;
                ty = m.varint()? as i32;
            }
            _ => m.skip(wt, tag, depth - 1)?,
        }
        Ok(())
    })?;
    Ok(MessageSpan::Log { payload, ty })
}

/// `Envelope.counter`, merged into the message so far if that is a counter too.
#[inline]
fn counter(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
    previous: Option<MessageSpan>,
) -> Result<MessageSpan, WireError> {
    let (mut name, mut delta, mut total) = match previous {
        Some(MessageSpan::Counter { name, delta, total }) => (name, delta, total),
        _ => (Span::default(), 0, 0),
    };
    message(r, wt, at, "Envelope.counter", depth, |m, tag, wt, at| {
        match tag {
            1 => name = string(m, wt, at, "Counter.name", text)?,
            2 => {
                expect("Counter.delta", at, wt, WireType::Varint)?;
                delta = m.varint()?;
            }
            3 => {
                expect("Counter.total", at, wt, WireType::Varint)?;
                total = m.varint()?;
            }
            _ => m.skip(wt, tag, depth - 1)?,
        }
        Ok(())
    })?;
    Ok(MessageSpan::Counter { name, delta, total })
}

/// `Envelope.gauge`, its metrics added to the message so far's if that is
/// a gauge too.
#[inline]
fn gauge(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
    previous: Option<MessageSpan>,
) -> Result<MessageSpan, WireError> {
    let mut metrics = match previous {
        Some(MessageSpan::Gauge { metrics }) => metrics,
        _ => Vec::new(),
    };
    message(r, wt, at, "Envelope.gauge", depth, |m, tag, wt, at| {
        if tag != 1 {
            return m.skip(wt, tag, depth - 1);
        }
        metrics.push(gauge_metric(m, wt, at, depth - 1, text)?);
        Ok(())
    })?;
    Ok(MessageSpan::Gauge { metrics })
}

/// A `Gauge.metrics` map entry: name, unit and value.
#[inline]
fn gauge_metric(
    m: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
) -> Result<(Span, Span, f64), WireError> {
    let mut name = Span::default();
    let mut unit = Span::default();
    let mut value = 0.0;
    message(m, wt, at, "Gauge.metrics", depth, |e, tag, wt, at| {
        match tag {
            1 => name = string(e, wt, at, "Gauge.metrics key", text)?,
            2 => message(
                e,
                wt,
                at,
                "Gauge.metrics value",
                depth - 1,
                |g, tag, wt, at| {
                    match tag {
                        1 => unit = string(g, wt, at, "GaugeValue.unit", text)?,
                        2 => {
                            expect("GaugeValue.value", at, wt, WireType::Fixed64)?;
                            value = f64::from_bits(g.fixed64()?);
                        }
                        _ => g.skip(wt, tag, depth - 2)?,
                    }
                    Ok(())
                },
            )?,
            _ => e.skip(wt, tag, depth - 1)?,
        }
        Ok(())
    })?;
    Ok((name, unit, value))
}

/// `Envelope.timer`, merged into the message so far if that is a timer too.
#[inline]
fn timer(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
    previous: Option<MessageSpan>,
) -> Result<MessageSpan, WireError> {
    let (mut name, mut start, mut stop) = match previous {
        Some(MessageSpan::Timer { name, start, stop }) => (name, start, stop),
        _ => (Span::default(), 0, 0),
    };
    message(r, wt, at, "Envelope.timer", depth, |m, tag, wt, at| {
        match tag {
            1 => name = string(m, wt, at, "Timer.name", text)?,
            2 => {
                expect("Timer.start", at, wt, WireType::Varint)?;
                start = m.varint()? as i64;
            }
            3 => {
                expect("Timer.stop", at, wt, WireType::Varint)?;
                stop = m.varint()? as i64;
            }
            _ => m.skip(wt, tag, depth - 1)?,
        }
        Ok(())
    })?;
    Ok(MessageSpan::Timer { name, start, stop })
}

/// `Envelope.event`, merged into the message so far if that is an event too.
#[inline]
fn event(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    depth: u32,
    text: &mut Text,
    previous: Option<MessageSpan>,
) -> Result<MessageSpan, WireError> {
    let (mut title, mut body) = match previous {
        Some(MessageSpan::Event { title, body }) => (title, body),
        _ => (Span::default(), Span::default()),
    };
    message(r, wt, at, "Envelope.event", depth, |m, tag, wt, at| {
        match tag {
            1 => title = string(m, wt, at, "Event.title", text)?,
            2 => body = string(m, wt, at, "Event.body", text)?,
            _ => m.skip(wt, tag, depth - 1)?,
        }
        Ok(())
    })?;
    Ok(MessageSpan::Event { title, body })
}

/// A string field: length-delimited, appended to `text` (where the returned
/// span points), which checks it is UTF-8.
fn string(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    field: &'static str,
    text: &mut Text,
) -> Result<Span, WireError> {
    expect(field, at, wt, WireType::Len)?;
    let (start, end) = r.len_delimited()?;
    let s = &r.buf[start..end];
    if text.check_each && std::str::from_utf8(s).is_err() {
        return Err(WireError::Utf8 { field, at });
    }
    let span = Span {
        start: text.bytes.len() as u32,
        end: (text.bytes.len() + s.len()) as u32,
    };
    text.bytes.extend_from_slice(s);
    text.bytes.push(0);
    Ok(span)
}

/// A nested message field read at `depth` (a map entry is one too: a
/// message of key 1 and value 2): its fields go to `field` one level deeper.
fn message(
    r: &mut Reader<'_>,
    wt: WireType,
    at: usize,
    name: &'static str,
    depth: u32,
    field: impl FnMut(&mut Reader<'_>, u32, WireType, usize) -> Result<(), WireError>,
) -> Result<(), WireError> {
    expect(name, at, wt, WireType::Len)?;
    if depth == 0 {
        return Err(WireError::TooDeep { at });
    }
    fields(r, field)
}

fn fields(
    r: &mut Reader<'_>,
    mut field: impl FnMut(&mut Reader<'_>, u32, WireType, usize) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut m = r.sub()?;
    while m.has_more() {
        let at = m.pos;
        let (tag, wt) = m.key()?;
        field(&mut m, tag, wt, at)?;
    }
    Ok(())
}

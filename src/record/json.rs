//! The pieces of record JSON, written straight into the output buffer.
//!
//! Records were serialised through serde (sonic-rs): ~19,700 instructions
//! per record (callgrind, `examples/encode_cost`: 60,000 `write_json` calls
//! took 1,180.6M instructions), most of it per-entry dispatch and string
//! setup for a few dozen short strings. Writing the known shape directly,
//! with the same escaping and number formats, takes ~15,400 (924.7M); what
//! remains is mostly copying ~46 strings a record. The output is byte for
//! byte what serde_json and sonic-rs write: strings escape `"`, `\` and
//! control characters only (short forms `\b \t \n \f \r`, else `\u00xx`),
//! and doubles are the shortest text that reads back to the same value
//! (`zmij`, which sonic-rs uses).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// For each byte: 0 when it is written as it is, else the character after
/// the backslash (`u` for `\u00xx`).
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// A mask whose lowest set bit is the high bit of the first of the 8 bytes
/// in `x` (little-endian) that needs escaping: below 0x20, `"` or `\`; 0 when
/// none does. (The has-zero-byte and has-less-than word tricks: bits above
/// the first hit may be wrong, the lowest one is exact.)
fn escape_mask(x: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
    below_space | has_zero(x ^ (ONES * b'"' as u64)) | has_zero(x ^ (ONES * b'\\' as u64))
}

/// Whether any byte of `bytes` needs escaping, eight at a time (the last
/// word overlaps the one before it rather than copying a padded tail).
fn needs_escape(bytes: &[u8]) -> bool {
    let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
    if bytes.len() < 8 {
        return bytes.iter().any(|&b| ESCAPE[b as usize] != 0);
    }
    let mut any = escape_mask(word(&bytes[bytes.len() - 8..]));
    for w in bytes.chunks_exact(8) {
        any |= escape_mask(word(w));
    }
    any != 0
}

/// Appends `s` escaped as the inside of a JSON string (no quotes). Most
/// strings need no escaping and are copied whole; the rest are copied in
/// runs between the bytes that need it.
#[inline]
pub(crate) fn write_str_contents(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        return;
    }
    // Bytes before `copied` are in `out`; `at` is where the next word starts.
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        let Some(w) = bytes.get(at..at + 8) else {
            // The last few bytes, one at a time.
            for (i, &b) in bytes[at..].iter().enumerate() {
                if ESCAPE[b as usize] != 0 {
                    out.extend_from_slice(&bytes[copied..at + i]);
                    write_escape(out, b);
                    copied = at + i + 1;
                }
            }
            break;
        };
        let mask = escape_mask(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        if mask == 0 {
            at += 8;
            continue;
        }
        let hit = at + (mask.trailing_zeros() / 8) as usize;
        out.extend_from_slice(&bytes[copied..hit]);
        write_escape(out, bytes[hit]);
        copied = hit + 1;
        at = hit + 1;
    }
    out.extend_from_slice(&bytes[copied..]);
}

fn write_escape(out: &mut Vec<u8>, b: u8) {
    let e = ESCAPE[b as usize];
    if e == b'u' {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(b >> 4) as usize],
            HEX[(b & 0xf) as usize],
        ]);
    } else {
        out.extend_from_slice(&[b'\\', e]);
    }
}

/// Appends `s` as a JSON string.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    write_str_contents(out, s);
    out.push(b'"');
}

/// Appends `,"key":` (`key` is one of ours: nothing in it needs escaping).
#[inline]
pub(crate) fn write_key(out: &mut Vec<u8>, key: &str) {
    debug_assert!(!key.bytes().any(|b| ESCAPE[b as usize] != 0));
    out.reserve(key.len() + 4);
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Appends an integer as a JSON number.
pub(crate) fn write_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends an integer as protojson writes 64-bit integers: a decimal string.
pub(crate) fn write_int_str(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.push(b'"');
    write_int(out, v);
    out.push(b'"');
}

/// Appends a double as protojson writes it: the shortest number that reads
/// back the same, or the string `"NaN"`, `"Infinity"`, `"-Infinity"`.
pub(crate) fn write_float(out: &mut Vec<u8>, v: f64) {
    if v.is_finite() {
        out.extend_from_slice(zmij::Buffer::new().format_finite(v).as_bytes());
    } else if v.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if v > 0.0 {
        out.extend_from_slice(b"\"Infinity\"");
    } else {
        out.extend_from_slice(b"\"-Infinity\"");
    }
}

/// Appends `bytes` as a standard base64 JSON string.
pub(crate) fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = base64::encoded_len(bytes.len(), true).expect("a payload's base64 fits in usize");
    out.push(b'"');
    let start = out.len();
    out.resize(start + len, 0);
    BASE64
        .encode_slice(bytes, &mut out[start..])
        .expect("the buffer has the encoded length");
    out.push(b'"');
}

/// Appends UNIX nanoseconds as an RFC 3339 UTC string with nine fractional
/// digits (`"2026-11-27T21:36:58.452653478Z"`), as chrono's
/// `to_rfc3339_opts(Nanos, true)` writes it.
pub(crate) fn write_rfc3339_nanos(out: &mut Vec<u8>, ns: i64) {
    out.push(b'"');
    write_rfc3339(out, ns, 9);
    out.push(b'"');
}

/// Appends UNIX nanoseconds as RFC 3339 UTC with `digits` (1 to 9)
/// fractional digits, truncated (`2023-11-14T22:13:20.123456Z` for 6), as
/// chrono's `to_rfc3339_opts` writes it, without its formatter (which
/// allocated a String per record) or its field accessors (the date from
/// chrono's fields cost 825 instructions a time, civil-from-days 340; callgrind,
/// `examples/encode_cost`). Every i64 is a date between 1677 and 2262, so
/// the year always has four digits.
pub(crate) fn write_rfc3339(out: &mut Vec<u8>, ns: i64, digits: usize) {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400) as u32);
    let (year, month, day) = civil_from_days(days);
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    let mut put = |at: usize, width: usize, v: u32| put_digits(&mut b[at..at + width], v);
    put(0, 4, year as u32);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, day_secs / 3600);
    put(14, 2, day_secs / 60 % 60);
    put(17, 2, day_secs % 60);
    put(20, digits, nanos / 10u32.pow(9 - digits as u32));
    out.extend_from_slice(&b[..20 + digits]);
    out.push(b'Z');
}

/// Fills `digits` with the last `digits.len()` decimal digits of `v`,
/// zero-padded (`123` in four is `0123`).
pub(crate) fn put_digits(digits: &mut [u8], mut v: u32) {
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Year, month (1-12) and day (1-31) of a day counted from 1970-01-01, in
/// the proleptic Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_exactly_what_json_requires() {
        assert_eq!(
            written(|o| write_str(o, "a\"b\\c\nd\te\u{1}f\u{7f}ü/]")),
            "\"a\\\"b\\\\c\\nd\\te\\u0001f\u{7f}ü/]\""
        );
        for b in 0u8..0x80 {
            let s = (b as char).to_string().repeat(11);
            assert_eq!(
                written(|o| write_str(o, &s)),
                serde_json::to_string(&s).unwrap()
            );
        }
    }

    #[test]
    fn times_and_special_floats_are_written_as_protojson_does() {
        assert_eq!(
            written(|o| write_rfc3339_nanos(o, 1_795_815_418_452_653_478)),
            "\"2026-11-27T21:36:58.452653478Z\""
        );
        assert_eq!(
            written(|o| write_rfc3339_nanos(o, -1)),
            "\"1969-12-31T23:59:59.999999999Z\""
        );
        assert_eq!(written(|o| write_float(o, f64::NAN)), "\"NaN\"");
        assert_eq!(
            written(|o| write_float(o, f64::NEG_INFINITY)),
            "\"-Infinity\""
        );
        assert_eq!(written(|o| write_float(o, 1.0)), "1.0");
        assert_eq!(written(|o| write_base64(o, b"ab")), "\"YWI=\"");
    }

    proptest! {
        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(s in any::<String>(), ascii in "[\\x00-\\x7f]{0,40}") {
            prop_assert_eq!(written(|o| write_str(o, &s)), serde_json::to_string(&s).unwrap());
            prop_assert_eq!(written(|o| write_str(o, &ascii)), serde_json::to_string(&ascii).unwrap());
        }

        #[test]
        fn any_time_is_written_as_chrono_writes_it(ns in any::<i64>()) {
            let chrono = chrono::DateTime::from_timestamp_nanos(ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
            prop_assert_eq!(written(|o| write_rfc3339_nanos(o, ns)), format!("\"{chrono}\""));
            let micros = chrono::DateTime::from_timestamp_nanos(ns)
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            prop_assert_eq!(written(|o| write_rfc3339(o, ns, 6)), micros);
        }

        #[test]
        fn any_finite_double_is_written_as_sonic_rs_writes_it(v in any::<f64>().prop_filter("finite", |v| v.is_finite())) {
            prop_assert_eq!(written(|o| write_float(o, v)), sonic_rs::to_string(&v).unwrap());
        }

        #[test]
        fn any_payload_is_standard_base64(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(written(|o| write_base64(o, &bytes)), format!("\"{}\"", BASE64.encode(&bytes)));
        }
    }
}

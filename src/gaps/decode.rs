//! Decoding what `gaps` reads: of each record only `kind`, `boot`, `seq`
//! and `last_seq` are kept (every other member is skipped unread, so a
//! record's other fields may change freely), and an archive file's
//! `{"Records":[...]}` is read one record at a time from the gzip stream,
//! never as a whole.

use std::fmt;
use std::io::Read;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The members `gaps` reads from a record (JSON `null` reads as absent).
#[derive(Debug, Default)]
pub(crate) struct Fields {
    pub kind: Option<Value>,
    pub boot: Option<Value>,
    pub seq: Option<Value>,
    pub last_seq: Option<Value>,
}

/// One element of `Records`, or one line: an object's members, or what
/// else it was ("a string", "an array", ...).
#[derive(Debug)]
pub(crate) enum Element {
    Object(Fields),
    Other(&'static str),
}

impl<'de> serde::Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ElementVisitor)
    }
}

/// A member name: one of the four, or any other (not kept). Records
/// written with `--record-schema` keep the number elsewhere: `kind` and
/// `boot` under OCSF's `unmapped` or ECS's and CIM's `cloudfoundry`, `seq`
/// as OCSF's `metadata.sequence`, ECS's `event.sequence` or CIM's
/// `cloudfoundry.seq`.
enum Member {
    Kind,
    Boot,
    Seq,
    LastSeq,
    /// `unmapped` (OCSF) or `cloudfoundry` (ECS): `kind` and `boot` inside.
    Provenance,
    /// `metadata` (OCSF) or `event` (ECS): `sequence` inside is the `seq`.
    Sequenced,
    Other,
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Member, E> {
                Ok(match v {
                    "kind" => Member::Kind,
                    "boot" => Member::Boot,
                    "seq" => Member::Seq,
                    "last_seq" => Member::LastSeq,
                    "unmapped" | "cloudfoundry" => Member::Provenance,
                    "metadata" | "event" => Member::Sequenced,
                    "sequence" => Member::Seq,
                    _ => Member::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

struct ElementVisitor;

impl<'de> Visitor<'de> for ElementVisitor {
    type Value = Element;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a record (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Element, A::Error> {
        let mut fields = Fields::default();
        let (mut provenance, mut sequenced) = (None, None);
        while let Some(member) = map.next_key::<Member>()? {
            let slot = match member {
                Member::Kind => &mut fields.kind,
                Member::Boot => &mut fields.boot,
                Member::Seq => &mut fields.seq,
                Member::LastSeq => &mut fields.last_seq,
                Member::Provenance => {
                    provenance = Some(map.next_value::<Element>()?);
                    continue;
                }
                Member::Sequenced => {
                    sequenced = Some(map.next_value::<Element>()?);
                    continue;
                }
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            let value: Value = map.next_value()?;
            *slot = (!value.is_null()).then_some(value);
        }
        // A native record's own members win; the schemas' places fill in.
        if let Some(Element::Object(s)) = sequenced {
            fields.seq = fields.seq.or(s.seq);
        }
        if let Some(Element::Object(p)) = provenance {
            fields.kind = fields.kind.or(p.kind);
            fields.boot = fields.boot.or(p.boot);
            // Splunk CIM's records keep `seq` there too, by its own name.
            fields.seq = fields.seq.or(p.seq);
        }
        Ok(Element::Object(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Element::Other("an array"))
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Element, E> {
        Ok(Element::Other("a string"))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Element, E> {
        Ok(Element::Other("a boolean"))
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Element, E> {
        Ok(Element::Other("a number"))
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Element, E> {
        Ok(Element::Other("a number"))
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Element, E> {
        Ok(Element::Other("a number"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Element, E> {
        Ok(Element::Other("null"))
    }
}

/// One line of a JSON-lines export.
pub(crate) fn line(bytes: &[u8]) -> Result<Element, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// Why an archive file could not be read to its end.
#[derive(Debug)]
pub(crate) struct FileError {
    /// Records read (and handed on) before the failure.
    pub read: u64,
    pub reason: String,
}

/// Reads a gzip `{"Records":[...]}` file, handing each record to `each`
/// with its index, as it is decoded.
pub(crate) fn archive_file(
    gzip: impl Read,
    each: &mut dyn FnMut(u64, Element),
) -> Result<(), FileError> {
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(gzip));
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut read = 0;
    let result = de
        .deserialize_map(FileVisitor {
            each,
            read: &mut read,
        })
        .and_then(|found| {
            de.end()?;
            Ok(found)
        });
    let reason = match result {
        Ok(true) => return Ok(()),
        Ok(false) => "no \"Records\" array".to_string(),
        Err(e) if e.is_io() => format!("not gzip ({e})"),
        Err(e) => format!("not JSON ({e})"),
    };
    Err(FileError { read, reason })
}

/// The file's top-level object: `Records` is read element by element, any
/// other member skipped. Says whether `Records` was there.
struct FileVisitor<'a> {
    each: &'a mut dyn FnMut(u64, Element),
    read: &'a mut u64,
}

impl<'de> Visitor<'de> for FileVisitor<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(r#"{"Records":[...]}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "Records" && !found {
                found = true;
                map.next_value_seed(RecordsSeed {
                    each: &mut *self.each,
                    read: &mut *self.read,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

struct RecordsSeed<'a> {
    each: &'a mut dyn FnMut(u64, Element),
    read: &'a mut u64,
}

impl<'de> DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(element) = seq.next_element::<Element>()? {
            (self.each)(*self.read, element);
            *self.read += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(text: &[u8]) -> Vec<u8> {
        let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        w.write_all(text).unwrap();
        w.finish().unwrap()
    }

    fn read(body: &[u8]) -> (Vec<String>, Result<(), FileError>) {
        let mut seen = Vec::new();
        let result = archive_file(body, &mut |i, e| seen.push(format!("{i}:{e:?}")));
        (seen, result)
    }

    #[test]
    fn only_the_four_members_are_kept() {
        let Element::Object(f) = line(
            br#"{"kind":"api","time":"t","boot":"b","nested":{"seq":9},"seq":3,"last_seq":null}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(f.kind, Some(Value::from("api")));
        assert_eq!(f.boot, Some(Value::from("b")));
        assert_eq!(f.seq, Some(Value::from(3)));
        assert_eq!(f.last_seq, None);
        assert!(matches!(
            line(b"[1,2]").unwrap(),
            Element::Other("an array")
        ));
        assert!(matches!(
            line(b"\"x\"").unwrap(),
            Element::Other("a string")
        ));
        assert!(line(b"{\"kind\":").is_err());
    }

    #[test]
    fn an_archive_file_is_read_record_by_record() {
        let (seen, result) = read(&gzip(
            br#"{"Other":[1],"Records":[{"kind":"api","seq":0},7,{"seq":1}]}"#,
        ));
        assert!(result.is_ok());
        assert_eq!(seen.len(), 3);
        assert!(seen[1].starts_with("1:Other(\"a number\")"), "{seen:?}");

        let (seen, result) = read(&gzip(br#"{"Records":[{"kind":"api"},{"kind":"#));
        assert_eq!(seen.len(), 1);
        let e = result.unwrap_err();
        assert_eq!(e.read, 1);
        assert!(
            e.reason.starts_with("not JSON (EOF while parsing"),
            "{}",
            e.reason
        );

        let (_, result) = read(&gzip(br#"{"records":[]}"#));
        assert_eq!(result.unwrap_err().reason, "no \"Records\" array");
        let (_, result) = read(&gzip(br#"[{"kind":"api"}]"#));
        assert!(
            result
                .unwrap_err()
                .reason
                .starts_with("not JSON (invalid type: sequence")
        );
        let (_, result) = read(b"plain text, not gzip");
        assert!(result.unwrap_err().reason.starts_with("not gzip ("));
        let mut truncated = gzip(br#"{"Records":[{"kind":"api","seq":0},{"kind":"api","seq":1}]}"#);
        truncated.truncate(truncated.len() - 12);
        let (_, result) = read(&truncated);
        assert!(result.unwrap_err().reason.starts_with("not gzip ("));
    }
}

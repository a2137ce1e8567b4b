//! Protobuf wire-format reading for [`super::envelope`]: varints, field
//! keys, length-delimited spans and skipping unknown fields, with the same
//! verdicts as prost (the property tests and the `envelope_batch` fuzz
//! target compare the two).
//!
//! Every read is bounded by the end of the message being read, so a field
//! that runs past its message is an error here; prost reads on and then
//! rejects the message for exceeding its length, the same verdict.

/// A byte range in the envelope's wire bytes (relative to its start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }
}

/// Protobuf's wire types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    StartGroup,
    EndGroup,
    Fixed32,
}

/// Why bytes are not an `EnvelopeBatch` (or an `Envelope`). Offsets count
/// from the start of the bytes given to the decoder.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed varint at byte {at}")]
    Varint { at: usize },
    #[error("invalid field key {key} at byte {at}")]
    Key { key: u64, at: usize },
    #[error("field at byte {at} runs past the end of its message")]
    Truncated { at: usize },
    #[error("{field} at byte {at} has wire type {got:?}, expected {expected:?}")]
    WireType {
        field: &'static str,
        at: usize,
        got: WireType,
        expected: WireType,
    },
    #[error("{field} at byte {at} is not valid UTF-8")]
    Utf8 { field: &'static str, at: usize },
    #[error("unexpected end-group tag at byte {at}")]
    EndGroup { at: usize },
    #[error("messages nested deeper than protobuf's recursion limit (100) at byte {at}")]
    TooDeep { at: usize },
}

/// prost's recursion limit: a top-level message is read at this depth, and
/// each nested message, map entry or group one lower; reading anything at
/// depth 0 that needs a level is an error.
pub(super) const RECURSION_LIMIT: u32 = 100;

/// A cursor over `buf[pos..end]`.
pub(super) struct Reader<'a> {
    pub buf: &'a [u8],
    pub(crate) pos: usize,
    pub end: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            end: buf.len(),
        }
    }

    pub(crate) fn has_more(&self) -> bool {
        self.pos < self.end
    }

    /// A reader over the length-delimited field at the cursor (whose key
    /// has been read), which the cursor then moves past.
    pub fn sub(&mut self) -> Result<Reader<'a>, WireError> {
        let (start, end) = self.len_delimited()?;
        Ok(Reader {
            buf: self.buf,
            pos: start,
            end,
        })
    }

    pub fn varint(&mut self) -> Result<u64, WireError> {
        let at = self.pos;
        let bytes = &self.buf[self.pos..self.end];
        if let Some(&b) = bytes.first()
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let mut value = 0u64;
        for (i, &b) in bytes.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                // The tenth byte may only carry the 64th bit.
                if i == 9 && b > 1 {
                    return Err(WireError::Varint { at });
                }
                self.pos += i + 1;
                return Ok(value);
            }
        }
        Err(WireError::Varint { at })
    }

    pub fn key(&mut self) -> Result<(u32, WireType), WireError> {
        let at = self.pos;
        let key = self.varint()?;
        let wire_type = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::Fixed64,
            2 => WireType::Len,
            3 => WireType::StartGroup,
            4 => WireType::EndGroup,
            5 => WireType::Fixed32,
            _ => return Err(WireError::Key { key, at }),
        };
        if key > u64::from(u32::MAX) || key >> 3 == 0 {
            return Err(WireError::Key { key, at });
        }
        Ok(((key >> 3) as u32, wire_type))
    }

    /// Reads a length prefix and returns the absolute range it covers.
    pub(crate) fn len_delimited(&mut self) -> Result<(usize, usize), WireError> {
        let at = self.pos;
        let len = self.varint()?;
        if len > (self.end - self.pos) as u64 {
            return Err(WireError::Truncated { at });
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok((start, self.pos))
    }

    pub fn fixed64(&mut self) -> Result<u64, WireError> {
        let at = self.pos;
        let bytes = self.buf[..self.end]
            .get(self.pos..self.pos + 8)
            .ok_or(WireError::Truncated { at })?;
        self.pos += 8;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    /// Skips a field this decoder does not read, as prost does: a group
    /// up to its matching end, each level of it one level deeper.
    pub fn skip(&mut self, wire_type: WireType, tag: u32, depth: u32) -> Result<(), WireError> {
        let at = self.pos;
        if depth == 0 {
            return Err(WireError::TooDeep { at });
        }
        let len = match wire_type {
            WireType::Varint => {
                self.varint()?;
                0
            }
            WireType::Fixed64 => 8,
            WireType::Fixed32 => 4,
            WireType::Len => self.varint()?,
            WireType::StartGroup => loop {
                let key_at = self.pos;
                let (inner_tag, inner_type) = self.key()?;
                if inner_type == WireType::EndGroup {
                    if inner_tag != tag {
                        return Err(WireError::EndGroup { at: key_at });
                    }
                    break 0;
                }
                self.skip(inner_type, inner_tag, depth - 1)?;
            },
            WireType::EndGroup => return Err(WireError::EndGroup { at }),
        };
        if len > (self.end - self.pos) as u64 {
            return Err(WireError::Truncated { at });
        }
        self.pos += len as usize;
        Ok(())
    }
}

/// Checks a field's wire type.
pub(super) fn expect(
    field: &'static str,
    at: usize,
    got: WireType,
    expected: WireType,
) -> Result<(), WireError> {
    if got == expected {
        Ok(())
    } else {
        Err(WireError::WireType {
            field,
            at,
            got,
            expected,
        })
    }
}

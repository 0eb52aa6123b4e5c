//! The protobuf wire primitives of the aggregate format: wire types and the field keys of its
//! schema, varint encoding and sizes, and a bounds-checked reader that skips unknown fields.

use super::decode::KplError;

/// Nesting depth of unknown proto2 groups beyond which decoding gives up (guards the recursion).
pub(super) const MAX_GROUP_DEPTH: u32 = 32;

/// Protobuf wire type of varint fields.
pub(super) const WIRE_VARINT: u8 = 0;
/// Protobuf wire type of 64-bit fixed fields.
const WIRE_I64: u8 = 1;
/// Protobuf wire type of length-delimited fields (strings, bytes, messages).
pub(super) const WIRE_LEN: u8 = 2;
/// Protobuf wire type starting a (deprecated) group.
const WIRE_SGROUP: u8 = 3;
/// Protobuf wire type ending a (deprecated) group.
const WIRE_EGROUP: u8 = 4;
/// Protobuf wire type of 32-bit fixed fields.
const WIRE_I32: u8 = 5;

/// Key (field number << 3 | wire type) of `AggregatedRecord.partition_key_table`.
pub(super) const KEY_PARTITION_KEY_TABLE: u8 = 1 << 3 | WIRE_LEN;
/// Key of `AggregatedRecord.explicit_hash_key_table`.
pub(super) const KEY_EXPLICIT_HASH_KEY_TABLE: u8 = 2 << 3 | WIRE_LEN;
/// Key of `AggregatedRecord.records`.
pub(super) const KEY_RECORDS: u8 = 3 << 3 | WIRE_LEN;
/// Key of `Record.partition_key_index`.
pub(super) const KEY_PARTITION_KEY_INDEX: u8 = 1 << 3 | WIRE_VARINT;
/// Key of `Record.explicit_hash_key_index`.
pub(super) const KEY_EXPLICIT_HASH_KEY_INDEX: u8 = 2 << 3 | WIRE_VARINT;
/// Key of `Record.data`.
pub(super) const KEY_DATA: u8 = 3 << 3 | WIRE_LEN;

/// A decoded field key.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key {
    /// The field number (never 0).
    pub(super) field: u64,
    /// The wire type (0..=5).
    wire_type: u8,
    /// Where the key starts in the Kinesis record's data.
    offset: usize,
}

impl Key {
    /// Fails unless this known field has the wire type of the schema.
    pub(super) fn expect(self, message: &'static str, field: &'static str, expected: u8) -> Result<(), KplError> {
        if self.wire_type == expected {
            Ok(())
        } else {
            Err(KplError::WrongWireType { message, field, found: self.wire_type, expected, offset: self.offset })
        }
    }
}

/// A cursor over one protobuf message.
pub(super) struct Reader<'a> {
    /// The message's bytes.
    buf: &'a [u8],
    /// The next byte to read.
    pos: usize,
    /// Offset of `buf[0]` in the Kinesis record's data, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, a message that starts at byte `base` of the Kinesis record's data.
    pub(super) fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    /// Offset of the next byte in the Kinesis record's data.
    pub(super) fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Reads a base-128 varint.
    pub(super) fn varint(&mut self) -> Result<u64, KplError> {
        let offset = self.offset();
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(KplError::TruncatedVarint { offset });
            };
            self.pos += 1;
            // The 10th byte holds only bit 63.
            if i == 9 && byte > 1 {
                return Err(KplError::OverlongVarint { offset });
            }
            value |= u64::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(KplError::OverlongVarint { offset })
    }

    /// Reads the next field key, or `None` at the end of the message.
    pub(super) fn key(&mut self) -> Result<Option<Key>, KplError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let offset = self.offset();
        let raw = self.varint()?;
        let field = raw >> 3;
        // The mask keeps the value below 8, so the cast is lossless.
        let wire_type = (raw & 7) as u8;
        if field == 0 {
            return Err(KplError::ZeroFieldNumber { offset });
        }
        if wire_type > WIRE_I32 {
            return Err(KplError::InvalidWireType { wire_type, offset });
        }
        Ok(Some(Key { field, wire_type, offset }))
    }

    /// Takes the next `len` bytes and their offset in the Kinesis record's data.
    fn take(&mut self, len: u64) -> Result<(&'a [u8], usize), KplError> {
        let offset = self.offset();
        let remaining = self.buf.len() - self.pos;
        let end = usize::try_from(len)
            .ok()
            .filter(|&len| len <= remaining)
            .map(|len| self.pos + len)
            .ok_or(KplError::TruncatedField { offset, needed: len, remaining })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok((bytes, offset))
    }

    /// Reads a length-delimited payload and its offset in the Kinesis record's data.
    pub(super) fn len_delimited(&mut self) -> Result<(&'a [u8], usize), KplError> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Skips the payload of an unknown field whose key was just read.
    pub(super) fn skip(&mut self, key: Key, depth: u32) -> Result<(), KplError> {
        match key.wire_type {
            WIRE_VARINT => self.varint().map(drop),
            WIRE_I64 => self.take(8).map(drop),
            WIRE_LEN => self.len_delimited().map(drop),
            WIRE_I32 => self.take(4).map(drop),
            WIRE_SGROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(KplError::GroupTooDeep { offset: key.offset });
                }
                loop {
                    let Some(inner) = self.key()? else {
                        return Err(KplError::UnterminatedGroup { field: key.field, offset: key.offset });
                    };
                    if inner.wire_type == WIRE_EGROUP {
                        return if inner.field == key.field {
                            Ok(())
                        } else {
                            Err(KplError::UnexpectedEndGroup { field: inner.field, offset: inner.offset })
                        };
                    }
                    self.skip(inner, depth + 1)?;
                }
            }
            // WIRE_EGROUP: an end-group outside any open group (`key` rejects wire types 6 and 7).
            _ => Err(KplError::UnexpectedEndGroup { field: key.field, offset: key.offset }),
        }
    }
}

/// `usize` to `u64`, lossless on every platform Rust supports.
pub(super) fn usize_to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Encoded length of a varint.
pub(super) fn varint_len(value: u64) -> usize {
    // Significant bits (at least 1), 7 per byte, rounded up; at most 10.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Encoded length of a length-delimited field with a one-byte key and a `len`-byte payload.
pub(super) fn len_delimited_field_len(len: usize) -> usize {
    1 + varint_len(usize_to_u64(len)) + len
}

/// Appends a varint.
pub(super) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Truncation to the low 7 bits (plus the continuation bit) is the encoding.
        buf.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    // `value` < 0x80 here.
    buf.push(value as u8);
}

/// Appends a length-delimited field with a one-byte key.
pub(super) fn put_len_delimited(buf: &mut Vec<u8>, key: u8, payload: &[u8]) {
    buf.push(key);
    put_varint(buf, usize_to_u64(payload.len()));
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths() {
        for (value, len) in [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (u64::MAX >> 1, 9), (u64::MAX, 10)] {
            assert_eq!(varint_len(value), len, "{value}");
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), len);
            assert_eq!(Reader { buf: &buf, pos: 0, base: 0 }.varint(), Ok(value));
        }
    }
}

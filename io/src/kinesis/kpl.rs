//! The Kinesis Producer Library (KPL) aggregated record format: encoding ([`Aggregator`]) and decoding
//! ([`deaggregate`]), hand-written without a protobuf dependency.
//!
//! An aggregated Kinesis record's data blob is
//!
//! ```text
//! MAGIC (F3 89 9A C2) ++ protobuf AggregatedRecord ++ MD5(protobuf AggregatedRecord) (16 bytes)
//! ```
//!
//! with the proto2 schema
//!
//! ```text
//! message AggregatedRecord { repeated string partition_key_table = 1; repeated string explicit_hash_key_table = 2;
//!                            repeated Record records = 3; }
//! message Tag { required string key = 1; optional string value = 2; }
//! message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
//!                  required bytes data = 3; repeated Tag tags = 4; }
//! ```
//!
//! # Decoding semantics
//!
//! [`deaggregate`] follows the official KCL deaggregator (`AggregatorUtil.deaggregate`) in deciding *whether* a
//! Kinesis record is an aggregate: it is one only when it starts with [`MAGIC`], has at least one byte between the
//! magic and the 16-byte MD5 trailer, and the trailer is the MD5 of those bytes. Anything else (including a record
//! with the magic but a wrong MD5) is returned as [`Deaggregated::Plain`], exactly as the KCL passes it through.
//!
//! Where we deliberately differ: when the MD5 matches but the protobuf is corrupt (truncated or over-long varint,
//! truncated field, invalid wire type, wrong wire type for a known field, missing required field, a key table entry
//! that is not UTF-8, a key index outside its table), the KCL either passes the record through as plain (protobuf
//! parse errors) or logs and drops its user records (index errors). A matching MD5 means a producer really wrote an
//! aggregate, so both outcomes would silently corrupt the stream; we return a [`KplError`] instead and let the caller
//! decide. Unknown fields (at any level, any valid wire type including proto2 groups) are skipped, as protobuf does.
//! Tags are validated for structure but not returned. An aggregate with zero user records decodes to an empty
//! [`Deaggregated::Aggregated`] (the KCL emits nothing for it either). The KCL's hash-key-range filtering after a
//! reshard is the caller's concern (a user record's routing key is its explicit hash key, else the MD5 of its
//! partition key).
//!
//! Decoding borrows: [`UserRecord`] keys and data are slices of the input, nothing is copied.

use std::collections::HashMap;

use md5::{Digest, Md5};

/// The 4 magic bytes that start every KPL aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 trailer of an aggregated record.
const DIGEST_LEN: usize = 16;

/// Bytes an aggregate adds around its protobuf message: [`MAGIC`] plus the MD5 trailer.
const FRAMING_LEN: usize = MAGIC.len() + DIGEST_LEN;

/// Kinesis' per-record size limit (1 MiB), which counts the data blob and the partition key together.
const KINESIS_MAX_RECORD_BYTES: usize = 1_048_576;

/// Headroom kept for the aggregate's own partition key: Kinesis allows 256 characters, at most 1024 UTF-8 bytes.
const PARTITION_KEY_HEADROOM: usize = 1024;

/// Default (and largest sensible) limit on an aggregate's data blob: 1 MiB minus room for its partition key, so
/// that a full aggregate is always accepted by `PutRecord(s)`.
pub const MAX_AGGREGATED_BYTES: usize = KINESIS_MAX_RECORD_BYTES - PARTITION_KEY_HEADROOM;

/// Nesting depth of unknown proto2 groups beyond which decoding gives up (guards the recursion).
const MAX_GROUP_DEPTH: u32 = 32;

/// Protobuf wire type of varint fields.
const WIRE_VARINT: u8 = 0;
/// Protobuf wire type of 64-bit fixed fields.
const WIRE_I64: u8 = 1;
/// Protobuf wire type of length-delimited fields (strings, bytes, messages).
const WIRE_LEN: u8 = 2;
/// Protobuf wire type starting a (deprecated) group.
const WIRE_SGROUP: u8 = 3;
/// Protobuf wire type ending a (deprecated) group.
const WIRE_EGROUP: u8 = 4;
/// Protobuf wire type of 32-bit fixed fields.
const WIRE_I32: u8 = 5;

/// Key (field number << 3 | wire type) of `AggregatedRecord.partition_key_table`.
const KEY_PARTITION_KEY_TABLE: u8 = 1 << 3 | WIRE_LEN;
/// Key of `AggregatedRecord.explicit_hash_key_table`.
const KEY_EXPLICIT_HASH_KEY_TABLE: u8 = 2 << 3 | WIRE_LEN;
/// Key of `AggregatedRecord.records`.
const KEY_RECORDS: u8 = 3 << 3 | WIRE_LEN;
/// Key of `Record.partition_key_index`.
const KEY_PARTITION_KEY_INDEX: u8 = 1 << 3 | WIRE_VARINT;
/// Key of `Record.explicit_hash_key_index`.
const KEY_EXPLICIT_HASH_KEY_INDEX: u8 = 2 << 3 | WIRE_VARINT;
/// Key of `Record.data`.
const KEY_DATA: u8 = 3 << 3 | WIRE_LEN;

/// Why a Kinesis record that carries the KPL magic and a matching MD5 could not be decoded.
///
/// Byte offsets are counted from the start of the Kinesis record's data (the magic is bytes 0..4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    /// The input ended inside a varint.
    #[error("aggregated record: truncated varint at byte {offset}")]
    TruncatedVarint {
        /// Where the varint starts.
        offset: usize,
    },
    /// A varint is longer than 10 bytes or overflows 64 bits.
    #[error("aggregated record: varint at byte {offset} overflows 64 bits")]
    OverlongVarint {
        /// Where the varint starts.
        offset: usize,
    },
    /// A field's payload runs past the end of its enclosing message.
    #[error("aggregated record: field payload at byte {offset} needs {needed} bytes but only {remaining} remain")]
    TruncatedField {
        /// Where the payload starts.
        offset: usize,
        /// Bytes the field declares.
        needed: u64,
        /// Bytes left in the enclosing message.
        remaining: usize,
    },
    /// A field key uses field number 0, which protobuf forbids.
    #[error("aggregated record: field number 0 at byte {offset}")]
    ZeroFieldNumber {
        /// Where the key starts.
        offset: usize,
    },
    /// A field key uses wire type 6 or 7, which do not exist.
    #[error("aggregated record: invalid wire type {wire_type} at byte {offset}")]
    InvalidWireType {
        /// The wire type found.
        wire_type: u8,
        /// Where the key starts.
        offset: usize,
    },
    /// A known field is encoded with the wrong wire type.
    #[error("aggregated record: {message}.{field} at byte {offset} has wire type {found}, expected {expected}")]
    WrongWireType {
        /// The protobuf message being decoded.
        message: &'static str,
        /// The field's schema name.
        field: &'static str,
        /// The wire type found.
        found: u8,
        /// The wire type of the schema.
        expected: u8,
        /// Where the key starts.
        offset: usize,
    },
    /// An end-group key does not close the group that is open (or no group is open).
    #[error("aggregated record: unexpected end-group for field {field} at byte {offset}")]
    UnexpectedEndGroup {
        /// The field number of the end-group key.
        field: u64,
        /// Where the key starts.
        offset: usize,
    },
    /// A group is still open at the end of its enclosing message.
    #[error("aggregated record: group for field {field} started at byte {offset} is never closed")]
    UnterminatedGroup {
        /// The group's field number.
        field: u64,
        /// Where the group's start key is.
        offset: usize,
    },
    /// Unknown groups are nested deeper than this decoder follows.
    #[error("aggregated record: groups nested deeper than {MAX_GROUP_DEPTH} at byte {offset}")]
    GroupTooDeep {
        /// Where the too-deep group starts.
        offset: usize,
    },
    /// A proto2 `required` field is absent.
    #[error("aggregated record: {message} at byte {offset} is missing required field {field}")]
    MissingField {
        /// The protobuf message being decoded.
        message: &'static str,
        /// The missing field's schema name.
        field: &'static str,
        /// Where the message's payload starts.
        offset: usize,
    },
    /// A key table entry is not valid UTF-8.
    #[error("aggregated record: {table} entry {index} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// `partition_key_table` or `explicit_hash_key_table`.
        table: &'static str,
        /// The entry's position in its table.
        index: usize,
        /// Where the entry's bytes start.
        offset: usize,
    },
    /// A user record's partition key index is outside the partition key table.
    #[error("aggregated record: record {record}: partition key index {index} out of range (table has {table_len})")]
    PartitionKeyIndexOutOfRange {
        /// Position of the user record in the aggregate.
        record: usize,
        /// The index found.
        index: u64,
        /// Entries in the partition key table.
        table_len: usize,
    },
    /// A user record's explicit hash key index is outside the explicit hash key table.
    #[error("aggregated record: record {record}: explicit hash key index {index} out of range (table has {table_len})")]
    ExplicitHashKeyIndexOutOfRange {
        /// Position of the user record in the aggregate.
        record: usize,
        /// The index found.
        index: u64,
        /// Entries in the explicit hash key table.
        table_len: usize,
    },
}

/// One user record decoded from an aggregate, borrowing its keys and data from the Kinesis record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserRecord<'a> {
    /// The partition key the producer gave this user record.
    pub partition_key: &'a str,
    /// The explicit hash key the producer gave this user record, if any.
    pub explicit_hash_key: Option<&'a str>,
    /// The user record's payload.
    pub data: &'a [u8],
}

/// What a Kinesis record's data turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deaggregated<'a> {
    /// Not a KPL aggregate (no magic, too short, or MD5 mismatch): the whole data is one user record, whose keys
    /// are the Kinesis record's own.
    Plain(&'a [u8]),
    /// A KPL aggregate: its user records, in order (possibly none).
    Aggregated(Vec<UserRecord<'a>>),
}

/// Whether `data` is a KPL aggregate: it starts with [`MAGIC`], has a non-empty protobuf body (as the KCL
/// requires), and ends with the MD5 of that body. The body itself is not parsed.
#[must_use]
pub fn is_aggregated(data: &[u8]) -> bool {
    aggregate_body(data).is_some()
}

/// Splits a KPL aggregate into its user records, without copying; see the [module docs](self) for exactly when a
/// record counts as an aggregate and when decoding fails.
///
/// # Errors
///
/// A [`KplError`] when `data` has the magic and a matching MD5 but its protobuf body is corrupt.
pub fn deaggregate(data: &[u8]) -> Result<Deaggregated<'_>, KplError> {
    match aggregate_body(data) {
        None => Ok(Deaggregated::Plain(data)),
        Some(body) => decode_body(body).map(Deaggregated::Aggregated),
    }
}

/// The protobuf body of `data` when it is framed as a KPL aggregate with a matching MD5.
fn aggregate_body(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(&MAGIC)?;
    if rest.len() <= DIGEST_LEN {
        return None;
    }
    let (body, digest) = rest.split_at(rest.len() - DIGEST_LEN);
    (Md5::digest(body).as_slice() == digest).then_some(body)
}

/// A user record as it appears in the protobuf, before its key indices are resolved.
struct RawRecord<'a> {
    /// `Record.partition_key_index`.
    partition_key_index: u64,
    /// `Record.explicit_hash_key_index`.
    explicit_hash_key_index: Option<u64>,
    /// `Record.data`.
    data: &'a [u8],
}

/// Decodes an `AggregatedRecord` message (the bytes between the magic and the MD5).
fn decode_body(body: &[u8]) -> Result<Vec<UserRecord<'_>>, KplError> {
    const MESSAGE: &str = "AggregatedRecord";
    let mut reader = Reader { buf: body, pos: 0, base: MAGIC.len() };
    let mut partition_keys: Vec<&str> = Vec::new();
    let mut explicit_hash_keys: Vec<&str> = Vec::new();
    let mut raw_records: Vec<RawRecord<'_>> = Vec::new();
    // Fields may come in any order (the tables need not precede the records), so indices are resolved at the end.
    while let Some(key) = reader.key()? {
        match key.field {
            1 => {
                key.expect(MESSAGE, "partition_key_table", WIRE_LEN)?;
                let (bytes, offset) = reader.len_delimited()?;
                let index = partition_keys.len();
                let table = "partition_key_table";
                partition_keys.push(std::str::from_utf8(bytes).map_err(|_| KplError::InvalidUtf8 {
                    table,
                    index,
                    offset,
                })?);
            }
            2 => {
                key.expect(MESSAGE, "explicit_hash_key_table", WIRE_LEN)?;
                let (bytes, offset) = reader.len_delimited()?;
                let index = explicit_hash_keys.len();
                let table = "explicit_hash_key_table";
                explicit_hash_keys.push(std::str::from_utf8(bytes).map_err(|_| KplError::InvalidUtf8 {
                    table,
                    index,
                    offset,
                })?);
            }
            3 => {
                key.expect(MESSAGE, "records", WIRE_LEN)?;
                let (bytes, offset) = reader.len_delimited()?;
                raw_records.push(decode_record(Reader { buf: bytes, pos: 0, base: offset })?);
            }
            _ => reader.skip(key, 0)?,
        }
    }
    raw_records
        .into_iter()
        .enumerate()
        .map(|(record, raw)| {
            let partition_key =
                usize::try_from(raw.partition_key_index).ok().and_then(|i| partition_keys.get(i)).copied().ok_or(
                    KplError::PartitionKeyIndexOutOfRange {
                        record,
                        index: raw.partition_key_index,
                        table_len: partition_keys.len(),
                    },
                )?;
            let explicit_hash_key = match raw.explicit_hash_key_index {
                None => None,
                Some(index) => {
                    Some(usize::try_from(index).ok().and_then(|i| explicit_hash_keys.get(i)).copied().ok_or(
                        KplError::ExplicitHashKeyIndexOutOfRange { record, index, table_len: explicit_hash_keys.len() },
                    )?)
                }
            };
            Ok(UserRecord { partition_key, explicit_hash_key, data: raw.data })
        })
        .collect()
}

/// Decodes one `Record` message. Repeated occurrences of a singular field follow protobuf: the last one wins.
fn decode_record(mut reader: Reader<'_>) -> Result<RawRecord<'_>, KplError> {
    const MESSAGE: &str = "Record";
    let start = reader.offset();
    let mut partition_key_index = None;
    let mut explicit_hash_key_index = None;
    let mut data = None;
    while let Some(key) = reader.key()? {
        match key.field {
            1 => {
                key.expect(MESSAGE, "partition_key_index", WIRE_VARINT)?;
                partition_key_index = Some(reader.varint()?);
            }
            2 => {
                key.expect(MESSAGE, "explicit_hash_key_index", WIRE_VARINT)?;
                explicit_hash_key_index = Some(reader.varint()?);
            }
            3 => {
                key.expect(MESSAGE, "data", WIRE_LEN)?;
                data = Some(reader.len_delimited()?.0);
            }
            4 => {
                key.expect(MESSAGE, "tags", WIRE_LEN)?;
                let (bytes, offset) = reader.len_delimited()?;
                validate_tag(Reader { buf: bytes, pos: 0, base: offset })?;
            }
            _ => reader.skip(key, 0)?,
        }
    }
    let missing = |field| KplError::MissingField { message: MESSAGE, field, offset: start };
    Ok(RawRecord {
        partition_key_index: partition_key_index.ok_or_else(|| missing("partition_key_index"))?,
        explicit_hash_key_index,
        data: data.ok_or_else(|| missing("data"))?,
    })
}

/// Checks that a `Tag` message is well formed and has its required key; tags are not returned.
fn validate_tag(mut reader: Reader<'_>) -> Result<(), KplError> {
    const MESSAGE: &str = "Tag";
    let start = reader.offset();
    let mut has_key = false;
    while let Some(key) = reader.key()? {
        match key.field {
            1 => {
                key.expect(MESSAGE, "key", WIRE_LEN)?;
                reader.len_delimited()?;
                has_key = true;
            }
            2 => {
                key.expect(MESSAGE, "value", WIRE_LEN)?;
                reader.len_delimited()?;
            }
            _ => reader.skip(key, 0)?,
        }
    }
    if has_key { Ok(()) } else { Err(KplError::MissingField { message: MESSAGE, field: "key", offset: start }) }
}

/// A decoded field key.
#[derive(Debug, Clone, Copy)]
struct Key {
    /// The field number (never 0).
    field: u64,
    /// The wire type (0..=5).
    wire_type: u8,
    /// Where the key starts in the Kinesis record's data.
    offset: usize,
}

impl Key {
    /// Fails unless this known field has the wire type of the schema.
    fn expect(self, message: &'static str, field: &'static str, expected: u8) -> Result<(), KplError> {
        if self.wire_type == expected {
            Ok(())
        } else {
            Err(KplError::WrongWireType { message, field, found: self.wire_type, expected, offset: self.offset })
        }
    }
}

/// A cursor over one protobuf message.
struct Reader<'a> {
    /// The message's bytes.
    buf: &'a [u8],
    /// The next byte to read.
    pos: usize,
    /// Offset of `buf[0]` in the Kinesis record's data, for error messages.
    base: usize,
}

impl<'a> Reader<'a> {
    /// Offset of the next byte in the Kinesis record's data.
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Reads a base-128 varint.
    fn varint(&mut self) -> Result<u64, KplError> {
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
    fn key(&mut self) -> Result<Option<Key>, KplError> {
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
    fn len_delimited(&mut self) -> Result<(&'a [u8], usize), KplError> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Skips the payload of an unknown field whose key was just read.
    fn skip(&mut self, key: Key, depth: u32) -> Result<(), KplError> {
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

/// A finished KPL aggregate, ready for `PutRecord(s)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatedRecord {
    /// The partition key to put the aggregate with: its first user record's key, since Kinesis routes the whole
    /// aggregate by it.
    pub partition_key: String,
    /// The explicit hash key to put the aggregate with: its first user record's, if that had one.
    pub explicit_hash_key: Option<String>,
    /// The Kinesis record's data: [`MAGIC`], the protobuf `AggregatedRecord`, its MD5.
    pub data: Vec<u8>,
    /// How many user records the aggregate holds (at least one).
    pub user_records: usize,
}

/// Packs user records into KPL aggregates of at most a given size, in order, deduplicating keys as the KPL does.
///
/// Kinesis routes an aggregate by its first user record's keys, so user records that must land on a particular
/// shard should be pushed into an aggregator per shard. Keys are not validated (Kinesis requires partition keys of
/// 1 to 256 characters and explicit hash keys that are decimal integers below 2^128).
///
/// The aggregate under construction is kept encoded, so [`Aggregator::size_bytes`] is exact and `push` costs one
/// copy of the data (plus one more at [`Aggregator::flush`]).
#[derive(Debug, Clone)]
pub struct Aggregator {
    /// Largest aggregate data blob to emit, unless a single user record alone is larger.
    max_bytes: usize,
    /// Index of each partition key in the table.
    partition_key_indices: HashMap<String, u64>,
    /// Encoded `partition_key_table` fields, in table order.
    partition_key_table: Vec<u8>,
    /// Index of each explicit hash key in the table.
    explicit_hash_key_indices: HashMap<String, u64>,
    /// Encoded `explicit_hash_key_table` fields, in table order.
    explicit_hash_key_table: Vec<u8>,
    /// Encoded `records` fields, in push order.
    records: Vec<u8>,
    /// User records in the aggregate under construction.
    user_records: usize,
    /// The first user record's partition key (empty while the aggregate is empty).
    first_partition_key: String,
    /// The first user record's explicit hash key.
    first_explicit_hash_key: Option<String>,
}

impl Default for Aggregator {
    /// An aggregator with the [`MAX_AGGREGATED_BYTES`] limit.
    fn default() -> Self {
        Self::new(MAX_AGGREGATED_BYTES)
    }
}

/// Where a user record would go in the aggregate under construction, and what it would add to its size.
struct Placement {
    /// Its partition key's table index, and whether that entry is new.
    partition_key: (u64, bool),
    /// Its explicit hash key's table index, and whether that entry is new.
    explicit_hash_key: Option<(u64, bool)>,
    /// Length of the encoded `Record` message.
    record_len: usize,
    /// Bytes the aggregate would grow by (table entries and the `records` field).
    added_bytes: usize,
}

impl Aggregator {
    /// An empty aggregator emitting aggregates whose data is at most `max_bytes` long (see [`Aggregator::push`]);
    /// [`MAX_AGGREGATED_BYTES`] is the usual choice.
    #[must_use]
    pub fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            partition_key_indices: HashMap::new(),
            partition_key_table: Vec::new(),
            explicit_hash_key_indices: HashMap::new(),
            explicit_hash_key_table: Vec::new(),
            records: Vec::new(),
            user_records: 0,
            first_partition_key: String::new(),
            first_explicit_hash_key: None,
        }
    }

    /// The size limit this aggregator was created with.
    #[must_use]
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// User records in the aggregate under construction.
    #[must_use]
    pub fn len(&self) -> usize {
        self.user_records
    }

    /// Whether the aggregate under construction holds no user records.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.user_records == 0
    }

    /// Exact length of the data [`Aggregator::flush`] would return now (0 when empty).
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            FRAMING_LEN + self.partition_key_table.len() + self.explicit_hash_key_table.len() + self.records.len()
        }
    }

    /// Adds a user record. When it would take the aggregate under construction past the size limit, that aggregate
    /// is finished and returned, and the record starts the next one. A record too big for the limit on its own is
    /// still accepted; it then makes up an aggregate alone (returned by the next `push` or `flush`), which Kinesis
    /// rejects if it exceeds 1 MiB.
    #[must_use = "a returned aggregate holds user records that must be sent"]
    pub fn push(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: &[u8],
    ) -> Option<AggregatedRecord> {
        let mut placement = self.place(partition_key, explicit_hash_key, data);
        let mut full = None;
        if !self.is_empty() && self.size_bytes() + placement.added_bytes > self.max_bytes {
            full = self.flush();
            placement = self.place(partition_key, explicit_hash_key, data);
        }
        self.append(&placement, partition_key, explicit_hash_key, data);
        full
    }

    /// Finishes and returns the aggregate under construction, or `None` when it is empty.
    #[must_use = "a returned aggregate holds user records that must be sent"]
    pub fn flush(&mut self) -> Option<AggregatedRecord> {
        if self.is_empty() {
            return None;
        }
        let mut data = Vec::with_capacity(self.size_bytes());
        data.extend_from_slice(&MAGIC);
        data.extend_from_slice(&self.partition_key_table);
        data.extend_from_slice(&self.explicit_hash_key_table);
        data.extend_from_slice(&self.records);
        let digest = Md5::digest(&data[MAGIC.len()..]);
        data.extend_from_slice(&digest);
        let record = AggregatedRecord {
            partition_key: std::mem::take(&mut self.first_partition_key),
            explicit_hash_key: self.first_explicit_hash_key.take(),
            data,
            user_records: std::mem::take(&mut self.user_records),
        };
        self.partition_key_indices.clear();
        self.partition_key_table.clear();
        self.explicit_hash_key_indices.clear();
        self.explicit_hash_key_table.clear();
        self.records.clear();
        // Keep the buffers for the next aggregate, but not one inflated by an oversized user record.
        self.records.shrink_to(self.max_bytes);
        Some(record)
    }

    /// Works out where a user record would go, without changing anything.
    fn place(&self, partition_key: &str, explicit_hash_key: Option<&str>, data: &[u8]) -> Placement {
        let partition_key_entry = table_entry(&self.partition_key_indices, partition_key);
        let explicit_hash_key_entry = explicit_hash_key.map(|key| table_entry(&self.explicit_hash_key_indices, key));
        let mut added_bytes = 0;
        if partition_key_entry.1 {
            added_bytes += len_delimited_field_len(partition_key.len());
        }
        let mut record_len = 1 + varint_len(partition_key_entry.0) + len_delimited_field_len(data.len());
        if let (Some(key), Some((index, new))) = (explicit_hash_key, explicit_hash_key_entry) {
            if new {
                added_bytes += len_delimited_field_len(key.len());
            }
            record_len += 1 + varint_len(index);
        }
        added_bytes += len_delimited_field_len(record_len);
        Placement {
            partition_key: partition_key_entry,
            explicit_hash_key: explicit_hash_key_entry,
            record_len,
            added_bytes,
        }
    }

    /// Encodes a user record into the aggregate under construction, as `placement` (made just before) says.
    fn append(&mut self, placement: &Placement, partition_key: &str, explicit_hash_key: Option<&str>, data: &[u8]) {
        let (partition_key_index, new_partition_key) = placement.partition_key;
        if new_partition_key {
            put_len_delimited(&mut self.partition_key_table, KEY_PARTITION_KEY_TABLE, partition_key.as_bytes());
            self.partition_key_indices.insert(partition_key.to_owned(), partition_key_index);
        }
        self.records.push(KEY_RECORDS);
        put_varint(&mut self.records, usize_to_u64(placement.record_len));
        self.records.push(KEY_PARTITION_KEY_INDEX);
        put_varint(&mut self.records, partition_key_index);
        if let (Some(key), Some((index, new))) = (explicit_hash_key, placement.explicit_hash_key) {
            if new {
                put_len_delimited(&mut self.explicit_hash_key_table, KEY_EXPLICIT_HASH_KEY_TABLE, key.as_bytes());
                self.explicit_hash_key_indices.insert(key.to_owned(), index);
            }
            self.records.push(KEY_EXPLICIT_HASH_KEY_INDEX);
            put_varint(&mut self.records, index);
        }
        put_len_delimited(&mut self.records, KEY_DATA, data);
        if self.user_records == 0 {
            partition_key.clone_into(&mut self.first_partition_key);
            self.first_explicit_hash_key = explicit_hash_key.map(str::to_owned);
        }
        self.user_records += 1;
    }
}

/// A key's index in a table, and whether it would be a new entry.
fn table_entry(indices: &HashMap<String, u64>, key: &str) -> (u64, bool) {
    match indices.get(key) {
        Some(&index) => (index, false),
        None => (usize_to_u64(indices.len()), true),
    }
}

/// `usize` to `u64`, lossless on every platform Rust supports.
fn usize_to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Encoded length of a varint.
fn varint_len(value: u64) -> usize {
    // Significant bits (at least 1), 7 per byte, rounded up; at most 10.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Encoded length of a length-delimited field with a one-byte key and a `len`-byte payload.
fn len_delimited_field_len(len: usize) -> usize {
    1 + varint_len(usize_to_u64(len)) + len
}

/// Appends a varint.
fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // Truncation to the low 7 bits (plus the continuation bit) is the encoding.
        buf.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    // `value` < 0x80 here.
    buf.push(value as u8);
}

/// Appends a length-delimited field with a one-byte key.
fn put_len_delimited(buf: &mut Vec<u8>, key: u8, payload: &[u8]) {
    buf.push(key);
    put_varint(buf, usize_to_u64(payload.len()));
    buf.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Frames a protobuf body as an aggregate with a correct MD5.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(body);
        data.extend_from_slice(&Md5::digest(body));
        data
    }

    /// Owned copy of a user record, for comparisons.
    type Owned = (String, Option<String>, Vec<u8>);

    /// Owned copies of decoded user records.
    fn owned(records: &[UserRecord<'_>]) -> Vec<Owned> {
        records
            .iter()
            .map(|r| (r.partition_key.to_owned(), r.explicit_hash_key.map(str::to_owned), r.data.to_vec()))
            .collect()
    }

    /// Decodes an aggregate that must decode.
    fn aggregated(data: &[u8]) -> Vec<UserRecord<'_>> {
        match deaggregate(data) {
            Ok(Deaggregated::Aggregated(records)) => records,
            other => panic!("expected an aggregate, got {other:?}"),
        }
    }

    /// Pushes everything through an aggregator; returns the aggregates and checks the size invariants.
    fn aggregate_all(max_bytes: usize, records: &[Owned]) -> Vec<AggregatedRecord> {
        let mut aggregator = Aggregator::new(max_bytes);
        let mut out = Vec::new();
        for (pk, ehk, data) in records {
            out.extend(aggregator.push(pk, ehk.as_deref(), data));
            assert_eq!(aggregator.flush_size_for_test(), aggregator.size_bytes());
        }
        let expected_last = aggregator.size_bytes();
        if let Some(last) = aggregator.flush() {
            assert_eq!(last.data.len(), expected_last);
            out.push(last);
        }
        assert!(aggregator.is_empty());
        assert_eq!(aggregator.size_bytes(), 0);
        for agg in &out {
            assert!(agg.user_records >= 1);
            assert!(agg.data.len() <= max_bytes || agg.user_records == 1, "{} > {max_bytes}", agg.data.len());
        }
        out
    }

    impl Aggregator {
        /// The size a flush would produce, computed by actually encoding a clone.
        fn flush_size_for_test(&self) -> usize {
            self.clone().flush().map_or(0, |r| r.data.len())
        }
    }

    #[test]
    fn golden_vector_encodes_and_decodes() {
        #[rustfmt::skip]
        let body: &[u8] = &[
            0x0A, 0x01, b'a',                  // partition_key_table[0] = "a"
            0x0A, 0x02, b'b', b'c',            // partition_key_table[1] = "bc"
            0x12, 0x02, b'4', b'2',            // explicit_hash_key_table[0] = "42"
            0x1A, 0x06,                        // records[0], 6 bytes:
            0x08, 0x00,                        //   partition_key_index = 0
            0x1A, 0x02, b'h', b'i',            //   data = "hi"
            0x1A, 0x08,                        // records[1], 8 bytes:
            0x08, 0x01,                        //   partition_key_index = 1
            0x10, 0x00,                        //   explicit_hash_key_index = 0
            0x1A, 0x02, 0x00, 0xFF,            //   data = 00 FF
            0x1A, 0x06,                        // records[2], 6 bytes (keys deduplicated):
            0x08, 0x00,                        //   partition_key_index = 0
            0x10, 0x00,                        //   explicit_hash_key_index = 0
            0x1A, 0x00,                        //   data = ""
        ];
        let mut expected = vec![0xF3, 0x89, 0x9A, 0xC2];
        expected.extend_from_slice(body);
        // md5sum of `body`, computed outside Rust.
        expected.extend_from_slice(&[
            0x71, 0xda, 0x83, 0x41, 0x0b, 0x5c, 0x56, 0x38, 0x90, 0x81, 0x39, 0x56, 0x79, 0xc9, 0xaf, 0x4e,
        ]);

        let mut aggregator = Aggregator::default();
        assert!(aggregator.push("a", None, b"hi").is_none());
        assert!(aggregator.push("bc", Some("42"), &[0x00, 0xFF]).is_none());
        assert!(aggregator.push("a", Some("42"), b"").is_none());
        assert_eq!(aggregator.len(), 3);
        assert_eq!(aggregator.size_bytes(), expected.len());
        let agg = aggregator.flush().expect("non-empty");
        assert_eq!(agg.data, expected);
        assert_eq!(agg.partition_key, "a");
        assert_eq!(agg.explicit_hash_key, None);
        assert_eq!(agg.user_records, 3);
        assert!(aggregator.flush().is_none());

        assert!(is_aggregated(&expected));
        assert_eq!(
            aggregated(&expected),
            vec![
                UserRecord { partition_key: "a", explicit_hash_key: None, data: b"hi" },
                UserRecord { partition_key: "bc", explicit_hash_key: Some("42"), data: &[0x00, 0xFF] },
                UserRecord { partition_key: "a", explicit_hash_key: Some("42"), data: b"" },
            ]
        );
    }

    #[test]
    fn decoded_records_borrow_from_the_input() {
        let mut aggregator = Aggregator::default();
        let _ = aggregator.push("k", None, b"payload");
        let agg = aggregator.flush().expect("non-empty");
        let records = aggregated(&agg.data);
        let range = agg.data.as_ptr_range();
        assert!(range.contains(&records[0].data.as_ptr()));
        assert!(range.contains(&records[0].partition_key.as_ptr()));
    }

    #[test]
    fn round_trip_with_repeated_and_distinct_keys() {
        // 300 distinct partition keys push table indices past one varint byte.
        let records: Vec<Owned> = (0..1000)
            .map(|i| {
                let pk = format!("pk-{}", i % 300);
                let ehk = (i % 3 == 0).then(|| format!("{}", (i % 7) * 1_000_000_007));
                (pk, ehk, format!("payload {i}").repeat(i % 5).into_bytes())
            })
            .collect();
        let aggs = aggregate_all(MAX_AGGREGATED_BYTES, &records);
        assert_eq!(aggs.len(), 1);
        assert_eq!(aggs[0].partition_key, "pk-0");
        assert_eq!(aggs[0].explicit_hash_key.as_deref(), Some("0"));
        assert_eq!(aggs[0].user_records, records.len());
        assert_eq!(owned(&aggregated(&aggs[0].data)), records);

        // Split across many aggregates, concatenating the decoded records gives back the input in order.
        let aggs = aggregate_all(2_000, &records);
        assert!(aggs.len() > 10);
        let decoded: Vec<Owned> = aggs.iter().flat_map(|a| owned(&aggregated(&a.data))).collect();
        assert_eq!(decoded, records);
        for agg in &aggs {
            let first = &aggregated(&agg.data)[0];
            assert_eq!(agg.partition_key, first.partition_key);
            assert_eq!(agg.explicit_hash_key.as_deref(), first.explicit_hash_key);
        }
    }

    #[test]
    fn push_fills_exactly_to_the_limit() {
        let mut probe = Aggregator::default();
        let _ = probe.push("a", None, &[1; 40]);
        let _ = probe.push("b", Some("7"), &[2; 40]);
        let limit = probe.size_bytes();

        let mut aggregator = Aggregator::new(limit);
        assert!(aggregator.push("a", None, &[1; 40]).is_none());
        assert!(aggregator.push("b", Some("7"), &[2; 40]).is_none());
        assert_eq!(aggregator.size_bytes(), limit);
        let full = aggregator.push("a", None, &[3; 1]).expect("limit reached");
        assert_eq!(full.data.len(), limit);
        assert_eq!(full.user_records, 2);
        assert_eq!(aggregator.len(), 1);
        assert_eq!(
            owned(&aggregated(&aggregator.flush().expect("non-empty").data)),
            vec![("a".to_owned(), None, vec![3])]
        );
    }

    #[test]
    fn oversized_record_is_emitted_alone() {
        let mut aggregator = Aggregator::new(100);
        assert!(aggregator.push("small", None, &[0; 10]).is_none());
        let first = aggregator.push("big", None, &[1; 500]).expect("big record does not fit");
        assert_eq!(first.user_records, 1);
        assert!(first.data.len() <= 100);
        let big = aggregator.push("small", None, &[2; 10]).expect("nothing fits after the big record");
        assert_eq!(big.user_records, 1);
        assert!(big.data.len() > 100);
        assert_eq!(owned(&aggregated(&big.data)), vec![("big".to_owned(), None, vec![1; 500])]);
        assert_eq!(aggregator.len(), 1);

        // An oversized first record is also alone.
        let mut aggregator = Aggregator::new(50);
        assert!(aggregator.push("big", None, &[1; 500]).is_none());
        assert_eq!(aggregator.push("x", None, b"").map(|a| a.user_records), Some(1));
    }

    #[test]
    fn plain_records() {
        // No magic.
        assert_eq!(deaggregate(b"{\"trip\":1}"), Ok(Deaggregated::Plain(b"{\"trip\":1}")));
        assert_eq!(deaggregate(b""), Ok(Deaggregated::Plain(b"")));
        // Magic but too short for a body and a digest.
        assert_eq!(deaggregate(&MAGIC), Ok(Deaggregated::Plain(&MAGIC[..])));
        // Magic and the MD5 of an empty body: the KCL requires a non-empty body.
        let empty = frame(b"");
        assert_eq!(empty.len(), 20);
        assert!(!is_aggregated(&empty));
        assert_eq!(deaggregate(&empty), Ok(Deaggregated::Plain(&empty[..])));

        // MD5 mismatch: a flipped bit anywhere after the magic makes it plain.
        let mut aggregator = Aggregator::default();
        let _ = aggregator.push("k", None, b"data");
        let good = aggregator.flush().expect("non-empty").data;
        assert!(is_aggregated(&good));
        for i in MAGIC.len()..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            assert!(!is_aggregated(&bad));
            assert_eq!(deaggregate(&bad), Ok(Deaggregated::Plain(&bad[..])));
        }
    }

    #[test]
    fn corrupt_protobuf_with_valid_md5_is_an_error() {
        let cases: &[(&[u8], KplError)] = &[
            (
                &[0x0A, 0x01, b'a', 0x1A, 0x04, 0x08, 0x07, 0x1A, 0x00],
                KplError::PartitionKeyIndexOutOfRange { record: 0, index: 7, table_len: 1 },
            ),
            (
                &[0x0A, 0x01, b'a', 0x1A, 0x06, 0x08, 0x00, 0x10, 0x00, 0x1A, 0x00],
                KplError::ExplicitHashKeyIndexOutOfRange { record: 0, index: 0, table_len: 0 },
            ),
            (&[0x0A, 0x01, b'a', 0x1A, 0x02, 0x08, 0x80], KplError::TruncatedVarint { offset: 10 }),
            (&[0x0A, 0x05, b'a'], KplError::TruncatedField { offset: 6, needed: 5, remaining: 1 }),
            (
                &[0x08, 0x01],
                KplError::WrongWireType {
                    message: "AggregatedRecord",
                    field: "partition_key_table",
                    found: 0,
                    expected: 2,
                    offset: 4,
                },
            ),
            (
                &[0x0A, 0x01, b'a', 0x1A, 0x03, 0x0A, 0x01, 0x00],
                KplError::WrongWireType {
                    message: "Record",
                    field: "partition_key_index",
                    found: 2,
                    expected: 0,
                    offset: 9,
                },
            ),
            (
                &[0x0A, 0x01, b'a', 0x1A, 0x02, 0x08, 0x00],
                KplError::MissingField { message: "Record", field: "data", offset: 9 },
            ),
            (&[0x0A, 0x01, 0xFF], KplError::InvalidUtf8 { table: "partition_key_table", index: 0, offset: 6 }),
            (&[0x0F], KplError::InvalidWireType { wire_type: 7, offset: 4 }),
            (&[0x02, 0x00], KplError::ZeroFieldNumber { offset: 4 }),
            (&[0x2C], KplError::UnexpectedEndGroup { field: 5, offset: 4 }),
            (&[0x2B, 0x08, 0x01], KplError::UnterminatedGroup { field: 5, offset: 4 }),
            (&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], KplError::OverlongVarint { offset: 4 }),
        ];
        for (body, expected) in cases {
            let data = frame(body);
            assert!(is_aggregated(&data));
            assert_eq!(deaggregate(&data).as_ref(), Err(expected), "body {body:02X?}");
        }
        let message = KplError::PartitionKeyIndexOutOfRange { record: 2, index: 7, table_len: 3 }.to_string();
        assert_eq!(message, "aggregated record: record 2: partition key index 7 out of range (table has 3)");
        let nested = [0x2B].repeat(40);
        assert!(matches!(deaggregate(&frame(&nested)), Err(KplError::GroupTooDeep { .. })));
    }

    #[test]
    fn unknown_fields_and_tags_are_skipped() {
        #[rustfmt::skip]
        let body: &[u8] = &[
            0x78, 0x96, 0x01,                         // field 15, varint 150
            0x0A, 0x01, b'a',                         // partition_key_table[0] = "a"
            0x21, 1, 2, 3, 4, 5, 6, 7, 8,             // field 4, fixed64
            0x2D, 1, 2, 3, 4,                         // field 5, fixed32
            0x32, 0x03, 0xFF, 0xFE, 0xFD,             // field 6, length-delimited
            0x3B, 0x08, 0x01, 0x13, 0x14, 0x3C,       // field 7, group holding a varint and an empty group
            0x1A, 0x19,                               // records[0], 25 bytes:
            0x1A, 0x01, b'x',                         //   data = "x" (before the index)
            0x22, 0x06, 0x0A, 0x01, b't',             //   tags[0] = { key: "t", value: "v" }
            0x12, 0x01, b'v',
            0x28, 0x05,                               //   field 5, varint
            0x22, 0x03, 0x0A, 0x01, b'u',             //   tags[1] = { key: "u" }
            0x08, 0x00,                               //   partition_key_index = 0
            0x32, 0x00,                               //   field 6, empty length-delimited
            0x1A, 0x01, b'y',                         //   data = "y" (the last occurrence wins)
            0x0A, 0x01, b'b',                         // partition_key_table[1] = "b" (after the record)
        ];
        let data = frame(body);
        assert_eq!(aggregated(&data), vec![UserRecord { partition_key: "a", explicit_hash_key: None, data: b"y" }]);
        // A tag without its required key is corrupt.
        let data = frame(&[0x0A, 0x01, b'a', 0x1A, 0x08, 0x08, 0x00, 0x1A, 0x00, 0x22, 0x02, 0x12, 0x00]);
        assert_eq!(deaggregate(&data), Err(KplError::MissingField { message: "Tag", field: "key", offset: 15 }));
        // An aggregate without records decodes to no user records.
        assert_eq!(deaggregate(&frame(&[0x0A, 0x01, b'a'])), Ok(Deaggregated::Aggregated(Vec::new())));
    }

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

    /// A protobuf-ish field: valid structure with random numbers, or raw junk.
    #[derive(Debug, Clone)]
    enum Token {
        /// A varint field.
        Varint(u8, u64),
        /// A length-delimited field holding nested tokens.
        Nested(u8, Vec<Token>),
        /// A length-delimited field holding raw bytes.
        Bytes(u8, Vec<u8>),
        /// A fixed-width field.
        Fixed(u8, bool),
        /// A group holding nested tokens.
        Group(u8, Vec<Token>),
        /// Raw bytes.
        Raw(Vec<u8>),
    }

    /// Encodes tokens; the field number is taken mod 8 so known fields are common.
    fn encode(tokens: &[Token], buf: &mut Vec<u8>) {
        for token in tokens {
            match token {
                Token::Varint(f, v) => {
                    put_varint(buf, u64::from(f % 8) << 3);
                    put_varint(buf, *v);
                }
                Token::Nested(f, inner) => {
                    let mut nested = Vec::new();
                    encode(inner, &mut nested);
                    put_varint(buf, u64::from(f % 8) << 3 | 2);
                    put_varint(buf, usize_to_u64(nested.len()));
                    buf.extend_from_slice(&nested);
                }
                Token::Bytes(f, bytes) => {
                    put_varint(buf, u64::from(f % 8) << 3 | 2);
                    put_varint(buf, usize_to_u64(bytes.len()));
                    buf.extend_from_slice(bytes);
                }
                Token::Fixed(f, wide) => {
                    put_varint(buf, u64::from(f % 8) << 3 | if *wide { 1 } else { 5 });
                    buf.extend_from_slice(if *wide { &[7; 8] } else { &[7; 4] });
                }
                Token::Group(f, inner) => {
                    put_varint(buf, u64::from(f % 8) << 3 | 3);
                    encode(inner, buf);
                    put_varint(buf, u64::from(f % 8) << 3 | 4);
                }
                Token::Raw(bytes) => buf.extend_from_slice(bytes),
            }
        }
    }

    fn tokens() -> impl Strategy<Value = Vec<Token>> {
        let leaf = prop_oneof![
            1 => (any::<u8>(), prop_oneof![0..4u64, any::<u64>()]).prop_map(|(f, v)| Token::Varint(f, v)),
            1 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(f, b)| Token::Bytes(f, b)),
            1 => (any::<u8>(), any::<bool>()).prop_map(|(f, w)| Token::Fixed(f, w)),
            1 => proptest::collection::vec(any::<u8>(), 0..4).prop_map(Token::Raw),
            // A key table entry, and a well-formed record, so that decoding often gets far or succeeds.
            8 => ("[a-c]{0,2}", 1..3u8).prop_map(|(key, f)| Token::Bytes(f, key.into_bytes())),
            8 => (0..3u64, proptest::option::of(0..2u64), proptest::collection::vec(any::<u8>(), 0..4)).prop_map(
                |(pk, ehk, data)| {
                    let mut fields = vec![Token::Varint(1, pk)];
                    fields.extend(ehk.map(|ehk| Token::Varint(2, ehk)));
                    fields.push(Token::Bytes(3, data));
                    Token::Nested(3, fields)
                }
            ),
        ];
        let nested = leaf.clone().prop_recursive(3, 64, 8, |inner| {
            prop_oneof![
                (any::<u8>(), proptest::collection::vec(inner.clone(), 0..8)).prop_map(|(f, t)| Token::Nested(f, t)),
                (any::<u8>(), proptest::collection::vec(inner, 0..4)).prop_map(|(f, t)| Token::Group(f, t)),
            ]
        });
        let token = prop_oneof![4 => leaf, 1 => nested];
        proptest::collection::vec(token, 0..10)
    }

    fn user_records() -> impl Strategy<Value = Vec<Owned>> {
        let key = prop_oneof!["[a-c]{1,2}", "\\PC{0,40}"];
        let record = (key.clone(), proptest::option::of(key), proptest::collection::vec(any::<u8>(), 0..300));
        proptest::collection::vec(record, 0..40)
    }

    proptest! {
        #[test]
        fn arbitrary_user_records_round_trip(records in user_records(), max_bytes in 0usize..3_000) {
            let aggs = aggregate_all(max_bytes, &records);
            let decoded: Vec<Owned> = aggs.iter().flat_map(|a| owned(&aggregated(&a.data))).collect();
            prop_assert_eq!(decoded, records);
        }

        #[test]
        fn deaggregate_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = deaggregate(&bytes);
            let _ = deaggregate(&frame(&bytes));
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = deaggregate(&with_magic);
        }

        #[test]
        fn deaggregate_never_panics_on_protobuf_ish_bodies(tokens in tokens()) {
            let mut body = Vec::new();
            encode(&tokens, &mut body);
            let data = frame(&body);
            // Whatever decodes re-encodes to an aggregate that decodes to the same user records.
            if let Ok(Deaggregated::Aggregated(records)) = deaggregate(&data) {
                let records = owned(&records);
                let aggs = aggregate_all(MAX_AGGREGATED_BYTES, &records);
                let decoded: Vec<Owned> = aggs.iter().flat_map(|a| owned(&aggregated(&a.data))).collect();
                prop_assert_eq!(decoded, records);
            }
        }

        #[test]
        fn deaggregate_never_panics_on_mutated_aggregates(
            records in user_records(),
            mutations in proptest::collection::vec((any::<usize>(), any::<u8>(), 0..3u8), 1..4),
        ) {
            let Some(agg) = aggregate_all(MAX_AGGREGATED_BYTES, &records).pop() else { return Ok(()) };
            let mut body = agg.data[MAGIC.len()..agg.data.len() - DIGEST_LEN].to_vec();
            for (at, byte, kind) in mutations {
                let at = at % (body.len() + 1);
                match kind {
                    0 if at < body.len() => body[at] = byte,
                    1 => body.insert(at, byte),
                    _ => body.truncate(at),
                }
            }
            let data = frame(&body);
            if let Ok(Deaggregated::Aggregated(decoded)) = deaggregate(&data) {
                // Decoded keys and data are slices of the input.
                let range = data.as_ptr_range();
                for record in decoded.iter().filter(|r| !r.data.is_empty()) {
                    prop_assert!(range.contains(&record.data.as_ptr()));
                }
            }
        }
    }
}

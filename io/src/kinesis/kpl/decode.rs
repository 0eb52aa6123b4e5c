//! Decoding: whether a Kinesis record is an aggregate, and splitting one into its user records
//! without copying, or saying exactly why its protobuf is corrupt.

use md5::{Digest, Md5};

use super::protobuf::{MAX_GROUP_DEPTH, Reader, WIRE_LEN, WIRE_VARINT};
use super::{DIGEST_LEN, MAGIC};

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

/// Splits a KPL aggregate into its user records, without copying; see the [module docs](super) for exactly when a
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
    let mut reader = Reader::new(body, MAGIC.len());
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
                raw_records.push(decode_record(Reader::new(bytes, offset))?);
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
                validate_tag(Reader::new(bytes, offset))?;
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::MAX_AGGREGATED_BYTES;
    use super::super::encode::Aggregator;
    use super::super::protobuf::{put_varint, usize_to_u64};
    use super::super::test_support::{Owned, aggregate_all, aggregated, frame, owned, user_records};
    use super::*;

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

    proptest! {
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

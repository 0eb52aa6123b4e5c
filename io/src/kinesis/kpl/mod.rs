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
//!
//! The codec is split by direction: `encode` packs user records into aggregates, `decode` splits them
//! again, and `protobuf` holds the wire primitives both share.

mod decode;
mod encode;
mod protobuf;
#[cfg(test)]
mod test_support;

pub use decode::{Deaggregated, KplError, UserRecord, deaggregate, is_aggregated};
pub use encode::{AggregatedRecord, Aggregator};

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

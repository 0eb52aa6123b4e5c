//! Encoding: the [`Aggregator`] packs user records into KPL aggregates of a bounded size,
//! deduplicating their keys into the tables as the KPL does.

use std::collections::HashMap;

use md5::{Digest, Md5};

use super::protobuf::{
    KEY_DATA, KEY_EXPLICIT_HASH_KEY_INDEX, KEY_EXPLICIT_HASH_KEY_TABLE, KEY_PARTITION_KEY_INDEX,
    KEY_PARTITION_KEY_TABLE, KEY_RECORDS, len_delimited_field_len, put_len_delimited, put_varint, usize_to_u64,
    varint_len,
};
use super::{FRAMING_LEN, MAGIC, MAX_AGGREGATED_BYTES};

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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::decode::{UserRecord, is_aggregated};
    use super::super::test_support::{Owned, aggregate_all, aggregated, owned, user_records};
    use super::*;

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

    proptest! {
        #[test]
        fn arbitrary_user_records_round_trip(records in user_records(), max_bytes in 0usize..3_000) {
            let aggs = aggregate_all(max_bytes, &records);
            let decoded: Vec<Owned> = aggs.iter().flat_map(|a| owned(&aggregated(&a.data))).collect();
            prop_assert_eq!(decoded, records);
        }
    }
}

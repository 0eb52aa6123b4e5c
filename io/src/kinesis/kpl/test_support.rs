//! What the codec's tests share: framing a body by hand, pushing records through an aggregator
//! with its size invariants checked, decoding what must decode, and arbitrary user records.

use md5::{Digest, Md5};
use proptest::prelude::*;

use super::{AggregatedRecord, Aggregator, Deaggregated, MAGIC, UserRecord, deaggregate};

/// Frames a protobuf body as an aggregate with a correct MD5.
pub(super) fn frame(body: &[u8]) -> Vec<u8> {
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(body);
    data.extend_from_slice(&Md5::digest(body));
    data
}

/// Owned copy of a user record, for comparisons.
pub(super) type Owned = (String, Option<String>, Vec<u8>);

/// Owned copies of decoded user records.
pub(super) fn owned(records: &[UserRecord<'_>]) -> Vec<Owned> {
    records
        .iter()
        .map(|r| (r.partition_key.to_owned(), r.explicit_hash_key.map(str::to_owned), r.data.to_vec()))
        .collect()
}

/// Decodes an aggregate that must decode.
pub(super) fn aggregated(data: &[u8]) -> Vec<UserRecord<'_>> {
    match deaggregate(data) {
        Ok(Deaggregated::Aggregated(records)) => records,
        other => panic!("expected an aggregate, got {other:?}"),
    }
}

/// Pushes everything through an aggregator; returns the aggregates and checks the size invariants.
pub(super) fn aggregate_all(max_bytes: usize, records: &[Owned]) -> Vec<AggregatedRecord> {
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

pub(super) fn user_records() -> impl Strategy<Value = Vec<Owned>> {
    let key = prop_oneof!["[a-c]{1,2}", "\\PC{0,40}"];
    let record = (key.clone(), proptest::option::of(key), proptest::collection::vec(any::<u8>(), 0..300));
    proptest::collection::vec(record, 0..40)
}

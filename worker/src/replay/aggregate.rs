//! KPL aggregation, one aggregator per open shard: the aggregate under construction for a shard,
//! with the event times and invalid lines it carries, so that once Kinesis stores it every user
//! record in it is acknowledged.

use bytes::Bytes;
use tokio::time::Instant;

use super::LINGER;
use super::lane::{Item, Payload};
use taxi_core::event::Millis;
use taxi_io::kinesis::api::PutEntry;
use taxi_io::kinesis::kpl::{AggregatedRecord, Aggregator, MAX_AGGREGATED_BYTES};

/// A user record larger than this is sent plain rather than aggregated.
pub(super) const MAX_AGGREGATED_USER_RECORD: usize = MAX_AGGREGATED_BYTES / 2;

/// The aggregate under construction for one shard.
#[derive(Debug, Default)]
pub(super) struct ShardAggregator {
    aggregator: Aggregator,
    /// Event times of its trips.
    event_times: Vec<Millis>,
    /// Its invalid lines.
    invalid: u64,
    /// When its first user record was added.
    since: Option<Instant>,
}

impl ShardAggregator {
    /// Adds a trip or an invalid line (`payload` says which); returns the aggregate it closed when the
    /// record did not fit in (the record then starts the next one).
    pub(super) fn add(&mut self, partition_key: &str, data: &[u8], payload: Payload, now: Instant) -> Option<Item> {
        let full = self.aggregator.push(partition_key, None, data).map(|record| self.close(record));
        match payload {
            Payload::Trip(t) => self.event_times.push(t),
            _ => self.invalid += 1,
        }
        self.since.get_or_insert(now);
        full
    }

    /// Closes the aggregate once it has waited [`LINGER`] (whatever its age with `all`); `None` when it
    /// is not due or holds nothing.
    pub(super) fn flush(&mut self, now: Instant, all: bool) -> Option<Item> {
        if !all && self.since.is_none_or(|since| since + LINGER > now) {
            return None;
        }
        self.since = None;
        let record = self.aggregator.flush()?;
        Some(self.close(record))
    }

    /// Holds no user record.
    pub(super) fn is_empty(&self) -> bool {
        self.aggregator.is_empty()
    }

    /// When it is to be flushed, if it holds anything: [`LINGER`] after its first user record.
    pub(super) fn due_at(&self) -> Option<Instant> {
        self.since.map(|since| since + LINGER)
    }

    /// The entry that sends `record`, carrying the bookkeeping of its user records; starts over empty.
    fn close(&mut self, record: AggregatedRecord) -> Item {
        self.since = None;
        let payload = Payload::Aggregate {
            event_times: std::mem::take(&mut self.event_times),
            invalid: std::mem::take(&mut self.invalid),
        };
        let entry = PutEntry {
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            data: Bytes::from(record.data),
        };
        Item::new(entry, payload)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::replay::fake::{Fault, MemoryKinesis, even_shards, generated, options, stored_contents, user_records};
    use crate::replay::{ReplayProgress, WATERMARK_PARTITION_KEY, replay};
    use taxi_core::generate::GeneratorConfig;
    use taxi_core::partition::hash_key;

    #[tokio::test]
    async fn aggregated_records_deaggregate_to_the_input_trips() {
        let config = GeneratorConfig { trips: 3000, seed: 11, invalid_ratio: 0.03, ..GeneratorConfig::default() };
        let (file, stats) = generated(&config);
        let fake = Arc::new(MemoryKinesis::new(even_shards(4, 0)).with_put_faults(|call| match call % 5 {
            1 => Fault::Entries { from: 0, count: 1 },
            3 => Fault::Call { throttled: false },
            _ => Fault::None,
        }));
        let mut opts = options(&file, 0.0);
        opts.aggregate = true;
        let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
        let (trips, invalid, _) = stored_contents(&fake);
        assert_eq!(trips, (1..=3000).collect::<Vec<u64>>());
        assert_eq!(invalid, stats.invalid);
        assert_eq!((summary.trips, summary.invalid), (3000, stats.invalid));
        assert!(summary.aggregated_records > 0 && summary.aggregated_records < 100, "{summary:?}");
        // Every user record is on the shard its own partition key maps to.
        let st = fake.stream();
        for record in &st.records {
            let shard = &st.shards[record.shard];
            for (key, _) in user_records(&record.partition_key, &record.data) {
                let hash = match &record.explicit_hash_key {
                    Some(k) if key == WATERMARK_PARTITION_KEY => k.parse().expect("key"),
                    _ => hash_key(key.as_bytes()),
                };
                assert!(shard.starting_hash_key <= hash && hash <= shard.ending_hash_key, "{key} misrouted");
            }
        }
    }
}

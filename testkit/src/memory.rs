//! [`MemoryKinesis`]: a Kinesis stream held in memory behind [`KinesisApi`], for unit tests that
//! need no emulator. It stores what PutRecords sends on the open shard each entry's hash key maps
//! to, serves the records back through shard iterators (polling only: no enhanced fan-out), and
//! records what a producer's test checks: every call's size, the calls in flight at once (in all
//! and per shard), and broken rules (an entry mapped to no open shard, a watermark ahead of a trip
//! not stored yet). Knobs fail PutRecords calls or some of their entries, slow them down, and
//! replace the shard list after some calls; [`crate::fake::FaultyKinesis`] wraps it for faults
//! of the other calls.
//!
//! ```
//! # use taxi_testkit::memory::{MemoryKinesis, PutFault, even_shards};
//! // Every third PutRecords call rejects its first two entries; the others store everything.
//! let api = MemoryKinesis::new(even_shards(2))
//!     .with_put_faults(|call| if call % 3 == 2 { PutFault::RejectEntries(0..2) } else { PutFault::None });
//! api.append("shardId-000000000000", "k", "data");
//! assert_eq!(api.stream().records.len(), 1);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use taxi_core::event::{Event, Millis};
use taxi_core::input::parse_json_record;
use taxi_core::partition::{even_ranges, hash_key, shard_id};
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{
    KinesisApi, KinesisError, KinesisRecord, PutEntry, PutOutcome, RecordsPage, StartingPosition, StreamState,
    Subscription, SubscriptionEvent,
};
use taxi_io::kinesis::kpl::{Deaggregated, deaggregate};

/// What one PutRecords call does, as [`MemoryKinesis::with_put_faults`] decides per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutFault {
    /// Store every entry.
    None,
    /// Reject the entries at these indexes of the call with ProvisionedThroughputExceededException,
    /// as a throttled shard does, and store the others.
    RejectEntries(Range<usize>),
    /// Fail the whole call with this error, storing nothing.
    Fail(KinesisError),
}

/// One record the stream holds.
#[derive(Clone, Debug)]
pub struct StoredRecord {
    /// Index in the shard list, when it was stored, of the shard it went to.
    pub shard: usize,
    /// The id of that shard.
    pub shard_id: String,
    /// Its sequence number: `00001`, `00002`… within its shard.
    pub sequence_number: String,
    /// Its partition key, as put.
    pub partition_key: String,
    /// Its explicit hash key, as put.
    pub explicit_hash_key: Option<String>,
    /// Its data, as put.
    pub data: Bytes,
    /// When it was stored.
    pub at: Instant,
}

/// What the stream holds and what it saw of the calls, read (or changed) through
/// [`MemoryKinesis::stream`].
#[derive(Debug)]
pub struct MemoryStream {
    /// The shard list, closed shards included.
    pub shards: Vec<ShardInfo>,
    /// Every record, in the order stored.
    pub records: Vec<StoredRecord>,
    /// (entries, bytes of keys and data) of every PutRecords call, failed ones included.
    pub put_calls: Vec<(usize, usize)>,
    /// Broken rules seen: an entry that maps to no open shard, a watermark ahead of a trip not
    /// stored yet (of those [`MemoryKinesis::expect_trips`] registered).
    pub violations: Vec<String>,
    /// The most PutRecords calls in flight at once.
    pub max_puts_in_flight: usize,
    /// PutRecords calls in flight per open shard (index) their entries map to.
    pub puts_in_flight_per_shard: BTreeMap<usize, usize>,
    /// The most PutRecords calls in flight at once on one shard.
    pub max_puts_in_flight_per_shard: usize,
    /// PutRecords calls whose entries map to more than one open shard.
    pub mixed_puts: usize,
    /// Whether the stream exists; an active stream counts its open shards when asked.
    state: StreamState,
    /// Polls a stream being created answers busy before it is active.
    polls_until_active: u32,
    /// After this many PutRecords calls, the shard list is replaced by this one.
    reshard: Option<(usize, Vec<ShardInfo>)>,
    /// PutRecords calls in flight.
    puts_in_flight: usize,
    /// Event times of the expected trips not stored yet.
    unstored: BTreeMap<Millis, u32>,
}

impl MemoryStream {
    /// Index of the open shard an entry maps to (by its explicit hash key, else the MD5 of its
    /// partition key).
    pub fn open_shard_of(&self, entry: &PutEntry) -> Option<usize> {
        let hash = match &entry.explicit_hash_key {
            Some(key) => key.parse::<u128>().expect("decimal explicit hash key"),
            None => hash_key(entry.partition_key.as_bytes()),
        };
        self.shards.iter().position(|s| s.is_open() && s.starting_hash_key <= hash && hash <= s.ending_hash_key)
    }

    /// The records of one shard, in order.
    fn shard_records(&self, shard_id: &str) -> Vec<&StoredRecord> {
        self.records.iter().filter(|r| r.shard_id == shard_id).collect()
    }

    /// Stores a record on shard `index`, numbered on from the shard's last one.
    fn store(&mut self, index: usize, partition_key: String, explicit_hash_key: Option<String>, data: Bytes) -> String {
        let shard_id = self.shards[index].shard_id.clone();
        let sequence_number = format!("{:05}", self.records.iter().filter(|r| r.shard_id == shard_id).count() + 1);
        self.records.push(StoredRecord {
            shard: index,
            shard_id,
            sequence_number: sequence_number.clone(),
            partition_key,
            explicit_hash_key,
            data,
            at: Instant::now(),
        });
        sequence_number
    }

    /// Records the watermarks of a call that pass an expected trip not stored before it.
    fn check_watermarks(&mut self, entries: &[PutEntry]) {
        for entry in entries {
            if let Ok(Event::Watermark(w)) = parse_json_record(&entry.data)
                && let Some((&oldest, _)) = self.unstored.first_key_value()
                && w > oldest
            {
                self.violations.push(format!("watermark {w} passes unstored trip at {oldest}"));
            }
        }
    }

    /// Crosses the trips of a stored record off the expected ones.
    fn trips_stored(&mut self, entry: &PutEntry) {
        for (_, data) in user_records(&entry.partition_key, &entry.data) {
            if let Ok(Event::Trip(trip)) = parse_json_record(&data)
                && let Some(count) = self.unstored.get_mut(&trip.event_time())
            {
                *count -= 1;
                if *count == 0 {
                    self.unstored.remove(&trip.event_time());
                }
            }
        }
    }
}

/// A Kinesis stream in memory. An iterator is `shard#index`; reading a closed shard past its
/// last record ends it and names its children.
pub struct MemoryKinesis {
    stream: Mutex<MemoryStream>,
    put_faults: Box<dyn Fn(usize) -> PutFault + Send + Sync>,
    put_latency: Duration,
    /// Up to this much more latency, at random: calls complete out of order.
    put_jitter: Duration,
    put_count: AtomicUsize,
}

impl Default for MemoryKinesis {
    /// An active stream with no shard.
    fn default() -> MemoryKinesis {
        MemoryKinesis::new(Vec::new())
    }
}

impl std::fmt::Debug for MemoryKinesis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKinesis").field("stream", &self.stream).finish_non_exhaustive()
    }
}

/// Shard `index` (named as Kinesis names it) over the hash keys `start..=end`, open or closed.
pub fn shard(index: usize, start: u128, end: u128, open: bool) -> ShardInfo {
    ShardInfo {
        shard_id: shard_id(index),
        parent: None,
        adjacent_parent: None,
        starting_hash_key: start,
        ending_hash_key: end,
        ending_sequence_number: (!open).then(|| "49".to_owned()),
    }
}

/// `count` open shards splitting the hash-key space evenly, as CreateStream makes them.
pub fn even_shards(count: u32) -> Vec<ShardInfo> {
    even_ranges(count).iter().enumerate().map(|(i, r)| shard(i, r.start, r.end, true)).collect()
}

/// The user records of a Kinesis record, deaggregated: (partition key, data).
pub fn user_records(partition_key: &str, data: &[u8]) -> Vec<(String, Vec<u8>)> {
    match deaggregate(data).expect("valid aggregate") {
        Deaggregated::Plain(d) => vec![(partition_key.to_owned(), d.to_vec())],
        Deaggregated::Aggregated(records) => {
            records.iter().map(|r| (r.partition_key.to_owned(), r.data.to_vec())).collect()
        }
    }
}

impl MemoryKinesis {
    /// An active stream of `shards`, holding no record, that stores every entry at once.
    pub fn new(shards: Vec<ShardInfo>) -> MemoryKinesis {
        MemoryKinesis {
            stream: Mutex::new(MemoryStream {
                shards,
                records: Vec::new(),
                put_calls: Vec::new(),
                violations: Vec::new(),
                max_puts_in_flight: 0,
                puts_in_flight_per_shard: BTreeMap::new(),
                max_puts_in_flight_per_shard: 0,
                mixed_puts: 0,
                state: StreamState::Active { open_shards: 0 },
                polls_until_active: 0,
                reshard: None,
                puts_in_flight: 0,
                unstored: BTreeMap::new(),
            }),
            put_faults: Box::new(|_| PutFault::None),
            put_latency: Duration::ZERO,
            put_jitter: Duration::ZERO,
            put_count: AtomicUsize::new(0),
        }
    }

    /// A stream that does not exist yet: CreateStream makes it, busy for two polls.
    pub fn missing() -> MemoryKinesis {
        let api = MemoryKinesis::new(Vec::new());
        api.stream().state = StreamState::Missing;
        api
    }

    /// Fails PutRecords calls, or some of their entries, as `faults` says for each call number
    /// (from 0, in the order calls reach the stream).
    pub fn with_put_faults<F: Into<PutFault>>(mut self, faults: impl Fn(usize) -> F + Send + Sync + 'static) -> Self {
        self.put_faults = Box::new(move |call| faults(call).into());
        self
    }

    /// Every PutRecords call takes this long.
    pub fn with_put_latency(mut self, latency: Duration) -> Self {
        self.put_latency = latency;
        self
    }

    /// Every PutRecords call takes up to this much longer, at random.
    pub fn with_put_jitter(mut self, jitter: Duration) -> Self {
        self.put_jitter = jitter;
        self
    }

    /// Replaces the shard list by `shards` from PutRecords call number `calls` on, as a reshard
    /// in the middle of a replay does.
    pub fn resharding_after(self, calls: usize, shards: Vec<ShardInfo>) -> Self {
        self.stream().reshard = Some((calls, shards));
        self
    }

    /// Registers the event times of the trips a producer will put, so that every watermark put
    /// is checked against those not stored yet.
    pub fn expect_trips(&self, event_times: impl IntoIterator<Item = Millis>) {
        let mut stream = self.stream();
        for t in event_times {
            *stream.unstored.entry(t).or_insert(0) += 1;
        }
    }

    /// What the stream holds and saw, locked.
    pub fn stream(&self) -> MutexGuard<'_, MemoryStream> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends a record to `shard_id` (which must be listed) and returns its sequence number.
    pub fn append(&self, shard_id: &str, partition_key: &str, data: impl Into<Bytes>) -> String {
        let mut stream = self.stream();
        let index = stream.shards.iter().position(|s| s.shard_id == shard_id).expect("a listed shard");
        stream.store(index, partition_key.to_owned(), None, data.into())
    }

    /// Counts a call as in flight on the open shards its entries map to; returns those shards.
    fn put_started(&self, entries: &[PutEntry]) -> BTreeSet<usize> {
        let mut stream = self.stream();
        let shards: BTreeSet<usize> = entries.iter().filter_map(|entry| stream.open_shard_of(entry)).collect();
        stream.mixed_puts += usize::from(shards.len() > 1);
        stream.puts_in_flight += 1;
        stream.max_puts_in_flight = stream.max_puts_in_flight.max(stream.puts_in_flight);
        for &shard in &shards {
            let in_flight = stream.puts_in_flight_per_shard.entry(shard).or_insert(0);
            *in_flight += 1;
            let in_flight = *in_flight;
            stream.max_puts_in_flight_per_shard = stream.max_puts_in_flight_per_shard.max(in_flight);
        }
        shards
    }

    fn put_ended(&self, shards: &BTreeSet<usize>) {
        let mut stream = self.stream();
        stream.puts_in_flight -= 1;
        for shard in shards {
            if let Some(in_flight) = stream.puts_in_flight_per_shard.get_mut(shard) {
                *in_flight -= 1;
            }
        }
    }

    /// Stores the entries of one PutRecords call, or fails them as the faults say.
    fn put(&self, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        let call = self.put_count.fetch_add(1, Ordering::SeqCst);
        let fault = (self.put_faults)(call);
        let mut stream = self.stream();
        let bytes = entries
            .iter()
            .map(|e| e.partition_key.len() + e.explicit_hash_key.as_ref().map_or(0, String::len) + e.data.len())
            .sum();
        stream.put_calls.push((entries.len(), bytes));
        if stream.reshard.as_ref().is_some_and(|(after, _)| call >= *after)
            && let Some((_, shards)) = stream.reshard.take()
        {
            stream.shards = shards;
        }
        let rejected = match fault {
            PutFault::Fail(error) => return Err(error),
            PutFault::RejectEntries(range) => range,
            PutFault::None => 0..0,
        };
        // Watermarks must not pass a trip that has not been stored before this call.
        stream.check_watermarks(&entries);
        let mut outcomes = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            if rejected.contains(&i) {
                outcomes.push(PutOutcome::Failed { code: "ProvisionedThroughputExceededException".to_owned() });
                continue;
            }
            let Some(index) = stream.open_shard_of(&entry) else {
                stream.violations.push(format!("entry with key {} is in no open shard", entry.partition_key));
                outcomes.push(PutOutcome::Failed { code: "InternalFailure".to_owned() });
                continue;
            };
            stream.trips_stored(&entry);
            let shard_id = stream.shards[index].shard_id.clone();
            let sequence_number = stream.store(index, entry.partition_key, entry.explicit_hash_key, entry.data);
            outcomes.push(PutOutcome::Stored { shard_id, sequence_number });
        }
        Ok(outcomes)
    }

    fn unsupported(operation: &'static str) -> KinesisError {
        KinesisError::Permanent { operation, message: "not supported by the in-memory stream".to_owned() }
    }
}

/// The in-memory stream has no enhanced fan-out: no subscription ever opens.
#[derive(Debug)]
pub struct NoSubscription;

impl Subscription for NoSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
        Ok(None)
    }
}

impl KinesisApi for MemoryKinesis {
    type Subscription = NoSubscription;

    async fn list_shards(&self, _stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        Ok(self.stream().shards.clone())
    }

    async fn get_shard_iterator(
        &self,
        _stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, KinesisError> {
        let stream = self.stream();
        let records = stream.shard_records(shard_id);
        let index_of = |seq: &str| records.iter().position(|r| r.sequence_number == seq).unwrap_or(records.len());
        let index = match position {
            StartingPosition::TrimHorizon | StartingPosition::AtTimestamp(_) => 0,
            StartingPosition::Latest => records.len(),
            StartingPosition::AfterSequenceNumber(seq) => index_of(seq) + 1,
            StartingPosition::AtSequenceNumber(seq) => index_of(seq),
        };
        Ok(format!("{shard_id}#{index}"))
    }

    async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, KinesisError> {
        let (shard_id, index) = iterator.rsplit_once('#').ok_or_else(|| Self::unsupported("GetRecords"))?;
        let index: usize = index.parse().map_err(|_| Self::unsupported("GetRecords"))?;
        let stream = self.stream();
        let records = stream.shard_records(shard_id);
        let end = records.len().min(index + usize::try_from(limit).unwrap_or(usize::MAX));
        let page = records.get(index..end).unwrap_or_default().iter().map(|r| KinesisRecord {
            sequence_number: r.sequence_number.clone(),
            partition_key: r.partition_key.clone(),
            data: r.data.clone(),
            arrival: None,
        });
        let closed = stream.shards.iter().any(|s| s.shard_id == shard_id && !s.is_open());
        let children = stream.shards.iter().filter(|s| s.parents().any(|p| p == shard_id));
        Ok(RecordsPage {
            records: page.collect(),
            next_iterator: (!closed || end < records.len()).then(|| format!("{shard_id}#{end}")),
            millis_behind_latest: Some(if end < records.len() { 1000 } else { 0 }),
            child_shards: if closed { children.map(|s| s.shard_id.clone()).collect() } else { Vec::new() },
        })
    }

    async fn put_records(&self, _stream: &str, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        let shards = self.put_started(&entries);
        tokio::time::sleep(self.put_latency + self.put_jitter.mul_f64(fastrand::f64())).await;
        let result = self.put(entries);
        self.put_ended(&shards);
        result
    }

    async fn stream_state(&self, _stream: &str) -> Result<StreamState, KinesisError> {
        let mut stream = self.stream();
        if stream.state == StreamState::Busy {
            if stream.polls_until_active == 0 {
                stream.state = StreamState::Active { open_shards: 0 };
            } else {
                stream.polls_until_active -= 1;
            }
        }
        Ok(match stream.state {
            StreamState::Active { .. } => {
                let open_shards = stream.shards.iter().filter(|s| s.is_open()).count();
                StreamState::Active { open_shards: u32::try_from(open_shards).unwrap_or(u32::MAX) }
            }
            other => other,
        })
    }

    async fn create_stream(&self, _stream: &str, shards: u32) -> Result<(), KinesisError> {
        let mut stream = self.stream();
        stream.shards = even_shards(shards);
        stream.state = StreamState::Busy;
        stream.polls_until_active = 2;
        Ok(())
    }

    async fn update_shard_count(&self, _stream: &str, _target_open_shards: u32) -> Result<(), KinesisError> {
        Err(Self::unsupported("UpdateShardCount"))
    }

    async fn register_consumer(&self, _stream: &str, _name: &str) -> Result<String, KinesisError> {
        Err(Self::unsupported("RegisterStreamConsumer"))
    }

    /// No consumer is ever registered here, so there is none to deregister: success, as Kinesis
    /// answers for a consumer that does not exist.
    async fn deregister_consumer(&self, _stream: &str, _name: &str) -> Result<(), KinesisError> {
        Ok(())
    }

    async fn subscribe_to_shard(
        &self,
        _consumer_arn: &str,
        _shard_id: &str,
        _position: &StartingPosition,
    ) -> Result<NoSubscription, KinesisError> {
        Err(Self::unsupported("SubscribeToShard"))
    }
}

#[cfg(test)]
mod tests {
    use taxi_core::partition::shard_id;

    use super::*;
    use crate::fake::{FaultyKinesis, KinesisCall};

    /// An entry routed by an explicit hash key.
    fn entry(key: &str, hash: u128, data: &str) -> PutEntry {
        PutEntry {
            partition_key: key.to_owned(),
            explicit_hash_key: Some(hash.to_string()),
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    /// The partition keys of a page.
    fn keys(page: &RecordsPage) -> Vec<&str> {
        page.records.iter().map(|r| r.partition_key.as_str()).collect()
    }

    #[tokio::test]
    async fn put_records_land_on_the_shard_of_their_hash_key_and_are_read_back_in_order() {
        let api = MemoryKinesis::new(even_shards(2));
        let outcomes = api
            .put_records("s", vec![entry("a", 1, "1"), entry("b", u128::MAX, "2"), entry("c", 2, "3")])
            .await
            .expect("put");
        let stored =
            |shard: usize, seq: &str| PutOutcome::Stored { shard_id: shard_id(shard), sequence_number: seq.to_owned() };
        assert_eq!(outcomes, [stored(0, "00001"), stored(1, "00001"), stored(0, "00002")]);
        // Keys, explicit hash keys (u128::MAX has 39 digits) and data.
        assert_eq!(api.stream().put_calls, [(3, 3 + (1 + 39 + 1) + 3)]);

        let first = shard_id(0);
        let iterator = api.get_shard_iterator("s", &first, &StartingPosition::TrimHorizon).await.expect("iterator");
        let page = api.get_records(&iterator, 1).await.expect("page");
        assert_eq!((keys(&page), page.millis_behind_latest), (vec!["a"], Some(1000)));
        let page = api.get_records(page.next_iterator.as_deref().expect("open"), 10).await.expect("page");
        assert_eq!((keys(&page), page.millis_behind_latest), (vec!["c"], Some(0)));
        assert!(page.next_iterator.is_some() && page.child_shards.is_empty(), "an open shard never ends");

        let after = StartingPosition::AfterSequenceNumber("00001".to_owned());
        let iterator = api.get_shard_iterator("s", &first, &after).await.expect("iterator");
        assert_eq!(keys(&api.get_records(&iterator, 10).await.expect("page")), ["c"]);
        let iterator = api.get_shard_iterator("s", &first, &StartingPosition::Latest).await.expect("iterator");
        assert!(api.get_records(&iterator, 10).await.expect("page").records.is_empty());
    }

    #[tokio::test]
    async fn a_closed_shard_read_to_its_end_names_its_children() {
        let mut parent = shard(0, 0, u128::MAX, false);
        parent.shard_id = "p".to_owned();
        let child = ShardInfo { parent: Some("p".to_owned()), ..shard(1, 0, u128::MAX, true) };
        let api = MemoryKinesis::new(vec![parent, child]);
        assert_eq!(api.append("p", "k", "x"), "00001");
        assert_eq!(api.stream_state("s").await, Ok(StreamState::Active { open_shards: 1 }));
        let iterator = api.get_shard_iterator("s", "p", &StartingPosition::TrimHorizon).await.expect("iterator");
        let page = api.get_records(&iterator, 10).await.expect("page");
        assert_eq!(keys(&page), ["k"]);
        assert_eq!((page.next_iterator, page.child_shards), (None, vec![shard_id(1)]));
    }

    #[tokio::test]
    async fn put_faults_reject_entries_or_whole_calls_and_entries_of_no_open_shard_are_violations() {
        let throttled =
            KinesisError::Throttled { operation: "PutRecords", code: "ProvisionedThroughputExceededException".into() };
        let error = throttled.clone();
        let api =
            MemoryKinesis::new(vec![shard(0, 0, 100, true), shard(1, 101, 200, false)]).with_put_faults(move |call| {
                match call {
                    0 => PutFault::RejectEntries(1..2),
                    1 => PutFault::Fail(error.clone()),
                    _ => PutFault::None,
                }
            });
        let entries = || vec![entry("a", 1, "1"), entry("b", 2, "2"), entry("c", 150, "3")];
        let outcomes = api.put_records("s", entries()).await.expect("put");
        let failed = |code: &str| PutOutcome::Failed { code: code.to_owned() };
        let stored = PutOutcome::Stored { shard_id: shard_id(0), sequence_number: "00001".to_owned() };
        assert_eq!(outcomes, [stored, failed("ProvisionedThroughputExceededException"), failed("InternalFailure")]);
        assert_eq!(api.put_records("s", entries()).await, Err(throttled));
        let stream = api.stream();
        assert_eq!(stream.records.len(), 1, "a failed call stores nothing");
        assert_eq!(stream.put_calls.len(), 2, "failed calls are logged too");
        assert_eq!(stream.violations, ["entry with key c is in no open shard"]);
    }

    #[tokio::test]
    async fn a_watermark_ahead_of_an_expected_trip_not_stored_yet_is_a_violation() {
        let trip = r#"{"type":"trip","trip_id":1,"pickup_datetime":"2016-01-01T00:00:00Z","dropoff_datetime":"2016-01-01T00:10:00Z","pickup_latitude":40.75,"pickup_longitude":-73.99,"dropoff_latitude":40.64,"dropoff_longitude":-73.78}"#;
        let watermark = |at: &str| format!(r#"{{"type":"watermark","watermark":"{at}"}}"#);
        let api = MemoryKinesis::new(even_shards(1));
        api.expect_trips([1_451_607_000_000]);
        // At the trip's own time: allowed; past it: not, until the trip is stored.
        let early = entry("w", 0, &watermark("2016-01-01T00:10:00Z"));
        api.put_records("s", vec![early]).await.expect("put");
        let late = entry("w", 0, &watermark("2016-01-01T00:20:00Z"));
        api.put_records("s", vec![late.clone()]).await.expect("put");
        assert_eq!(api.stream().violations.len(), 1, "{:?}", api.stream().violations);
        api.put_records("s", vec![entry("1", 0, trip)]).await.expect("put");
        api.put_records("s", vec![late]).await.expect("put");
        assert_eq!(api.stream().violations.len(), 1, "the trip is stored now");
    }

    #[tokio::test]
    async fn a_missing_stream_is_created_busy_then_active_and_reshards_after_some_calls() {
        let api = MemoryKinesis::missing().resharding_after(1, even_shards(3));
        assert_eq!(api.stream_state("s").await, Ok(StreamState::Missing));
        api.create_stream("s", 2).await.expect("create");
        for _ in 0..2 {
            assert_eq!(api.stream_state("s").await, Ok(StreamState::Busy));
        }
        assert_eq!(api.stream_state("s").await, Ok(StreamState::Active { open_shards: 2 }));
        api.put_records("s", vec![entry("a", 0, "1")]).await.expect("put");
        assert_eq!(api.list_shards("s").await.expect("list").len(), 2);
        api.put_records("s", vec![entry("b", 0, "2")]).await.expect("put");
        assert_eq!(api.list_shards("s").await.expect("list").len(), 3, "resharded from the second call on");
    }

    #[tokio::test(start_paused = true)]
    async fn puts_in_flight_are_counted_in_all_and_per_shard() {
        let api = MemoryKinesis::new(even_shards(2)).with_put_latency(Duration::from_millis(10));
        let a = api.put_records("s", vec![entry("a", 0, "1")]);
        let b = api.put_records("s", vec![entry("b", 0, "2")]);
        let c = api.put_records("s", vec![entry("c", u128::MAX, "3"), entry("d", 0, "4")]);
        let (a, b, c) = tokio::join!(a, b, c);
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        let stream = api.stream();
        assert_eq!((stream.max_puts_in_flight, stream.max_puts_in_flight_per_shard), (3, 3));
        assert_eq!(stream.mixed_puts, 1);
        assert!(stream.puts_in_flight_per_shard.values().all(|&n| n == 0));
    }

    #[tokio::test]
    async fn faulty_kinesis_wraps_it_for_the_faults_of_reads_and_listings() {
        let api = MemoryKinesis::new(even_shards(2));
        api.append(&shard_id(1), "k", "x");
        let expired = KinesisError::ExpiredIterator { operation: "GetRecords" };
        let api = FaultyKinesis::new(api)
            .failing(KinesisCall::GetRecords, 0..1, expired.clone())
            .vanishing_shard(&shard_id(0), 0);
        assert_eq!(api.list_shards("s").await.expect("list").len(), 1);
        let iterator = api.get_shard_iterator("s", &shard_id(1), &StartingPosition::TrimHorizon).await.expect("it");
        assert_eq!(api.get_records(&iterator, 10).await, Err(expired));
        assert_eq!(keys(&api.get_records(&iterator, 10).await.expect("page")), ["k"]);
        assert!(api.get_shard_iterator("s", &shard_id(0), &StartingPosition::TrimHorizon).await.is_err());
    }
}

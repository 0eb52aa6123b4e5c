//! What the replay's tests run against: an in-memory Kinesis stream ([`Fake`]) that fails calls or
//! entries on demand, reshards, and checks every watermark against the trips it has not stored yet;
//! and builders of inputs and options.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use super::ReplayOptions;
use super::lane::entry_bytes;
use taxi_core::event::{Event, Millis};
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::input::parse_json_record;
use taxi_core::partition::{even_ranges, hash_key, shard_id};
use taxi_core::time::format_timestamp;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{
    KinesisApi, KinesisError, PutEntry, PutOutcome, RecordsPage, StartingPosition, StreamState, Subscription,
    SubscriptionEvent,
};
use taxi_io::kinesis::kpl::{Deaggregated, deaggregate};

/// What the fake does to one PutRecords call.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
    /// Store everything.
    None,
    /// Reject entries `from..from + count` with ProvisionedThroughputExceededException.
    Entries { from: usize, count: usize },
    /// Fail the whole call with a retryable error (throttled or transient).
    Call { throttled: bool },
    /// Fail the whole call with a permanent error.
    Permanent,
}

/// One stored Kinesis record.
#[derive(Debug)]
pub(super) struct Stored {
    /// Index in the shard list of the open shard it went to.
    pub(super) shard: usize,
    /// Its keys and data, as put.
    pub(super) partition_key: String,
    pub(super) explicit_hash_key: Option<String>,
    pub(super) data: Bytes,
    /// When it was stored.
    pub(super) at: std::time::Instant,
}

/// What the fake stream holds, and what it saw of the calls.
pub(super) struct FakeState {
    /// The shard list, closed shards included.
    pub(super) shards: Vec<ShardInfo>,
    /// Every record stored, in the order stored.
    pub(super) stored: Vec<Stored>,
    /// (entries, bytes) of every PutRecords call.
    pub(super) calls: Vec<(usize, usize)>,
    /// Event times of the input's trips not stored yet, to check watermark values.
    unstored: BTreeMap<Millis, u32>,
    /// Broken rules seen: a watermark ahead of an unstored trip, an entry that maps to no open shard.
    pub(super) violations: Vec<String>,
    /// What DescribeStreamSummary answers.
    pub(super) state: StreamState,
    /// Polls a stream being created answers busy before it is active.
    polls_until_active: u32,
    /// After this many calls, replace the shard list.
    pub(super) reshard: Option<(usize, Vec<ShardInfo>)>,
    /// Calls in flight, and the most at once.
    active_calls: usize,
    pub(super) max_active_calls: usize,
    /// Calls in flight per open shard their entries map to, and the most on one shard at once.
    pub(super) active_per_shard: BTreeMap<usize, usize>,
    pub(super) max_active_per_shard: usize,
    /// Calls whose entries map to more than one open shard.
    pub(super) mixed_calls: usize,
}

impl FakeState {
    /// Index of the open shard an entry maps to.
    pub(super) fn open_shard_of(&self, entry: &PutEntry) -> Option<usize> {
        let hash = match &entry.explicit_hash_key {
            Some(key) => key.parse::<u128>().expect("decimal explicit hash key"),
            None => hash_key(entry.partition_key.as_bytes()),
        };
        self.shards.iter().position(|s| s.is_open() && s.starting_hash_key <= hash && hash <= s.ending_hash_key)
    }
}

/// An in-memory Kinesis stream.
pub(super) struct Fake {
    state: Mutex<FakeState>,
    fault: Box<dyn Fn(usize) -> Fault + Send + Sync>,
    latency: Duration,
    /// Up to this much more latency, at random: calls complete out of order.
    jitter: Duration,
    calls: AtomicUsize,
}

/// Shard `index` over `start..=end`, open or closed.
pub(super) fn shard(index: usize, start: u128, end: u128, open: bool) -> ShardInfo {
    ShardInfo {
        shard_id: shard_id(index),
        parent: None,
        adjacent_parent: None,
        starting_hash_key: start,
        ending_hash_key: end,
        ending_sequence_number: (!open).then(|| "49".to_owned()),
    }
}

/// `n` open shards splitting the hash-key space evenly, numbered from `first_index`.
pub(super) fn even_shards(n: u32, first_index: usize) -> Vec<ShardInfo> {
    even_ranges(n).iter().enumerate().map(|(i, r)| shard(first_index + i, r.start, r.end, true)).collect()
}

impl Fake {
    /// A stream of `shards` that stores everything at once.
    pub(super) fn new(shards: Vec<ShardInfo>) -> Fake {
        Fake {
            state: Mutex::new(FakeState {
                shards,
                stored: Vec::new(),
                calls: Vec::new(),
                unstored: BTreeMap::new(),
                violations: Vec::new(),
                state: StreamState::Active { open_shards: 0 },
                polls_until_active: 0,
                reshard: None,
                active_calls: 0,
                max_active_calls: 0,
                active_per_shard: BTreeMap::new(),
                max_active_per_shard: 0,
                mixed_calls: 0,
            }),
            fault: Box::new(|_| Fault::None),
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            calls: AtomicUsize::new(0),
        }
    }

    /// Fails calls or entries as `fault` says for each call number.
    pub(super) fn with_fault(mut self, fault: impl Fn(usize) -> Fault + Send + Sync + 'static) -> Fake {
        self.fault = Box::new(fault);
        self
    }

    /// Every call takes this long.
    pub(super) fn with_latency(mut self, latency: Duration) -> Fake {
        self.latency = latency;
        self
    }

    /// Registers the input's trips, so watermarks are checked against those not stored yet.
    pub(super) fn expect_trips(&self, event_times: impl IntoIterator<Item = Millis>) {
        let mut st = self.state.lock().expect("lock");
        for t in event_times {
            *st.unstored.entry(t).or_insert(0) += 1;
        }
    }

    /// Its state, locked.
    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("lock")
    }

    /// Every call takes up to this much longer, at random.
    pub(super) fn with_jitter(mut self, jitter: Duration) -> Fake {
        self.jitter = jitter;
        self
    }

    /// Counts a call as in flight on the open shards its entries map to; returns those shards.
    fn call_started(&self, entries: &[PutEntry]) -> BTreeSet<usize> {
        let mut st = self.state();
        let shards: BTreeSet<usize> = entries.iter().filter_map(|entry| st.open_shard_of(entry)).collect();
        st.mixed_calls += usize::from(shards.len() > 1);
        st.active_calls += 1;
        st.max_active_calls = st.max_active_calls.max(st.active_calls);
        for &shard in &shards {
            let active = st.active_per_shard.entry(shard).or_insert(0);
            *active += 1;
            let active = *active;
            st.max_active_per_shard = st.max_active_per_shard.max(active);
        }
        shards
    }

    fn call_ended(&self, shards: &BTreeSet<usize>) {
        let mut st = self.state();
        st.active_calls -= 1;
        for shard in shards {
            if let Some(active) = st.active_per_shard.get_mut(shard) {
                *active -= 1;
            }
        }
    }

    /// Stores the entries of one PutRecords call (or fails them, as `fault` says).
    fn store(&self, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let fault = (self.fault)(call);
        let mut st = self.state();
        let st = &mut *st;
        st.calls.push((entries.len(), entries.iter().map(entry_bytes).sum()));
        if let Some((after, _)) = &st.reshard
            && call >= *after
            && let Some((_, shards)) = st.reshard.take()
        {
            st.shards = shards;
        }
        match fault {
            Fault::Call { throttled: true } => {
                return Err(KinesisError::Throttled {
                    operation: "PutRecords",
                    code: "ProvisionedThroughputExceededException".to_owned(),
                });
            }
            Fault::Call { throttled: false } => {
                return Err(KinesisError::Transient { operation: "PutRecords", message: "503".to_owned() });
            }
            Fault::Permanent => return Err(permanent("PutRecords")),
            Fault::None | Fault::Entries { .. } => {}
        }
        // Watermarks must not pass a trip that has not been stored before this call.
        for entry in &entries {
            if let Ok(Event::Watermark(w)) = parse_json_record(&entry.data)
                && let Some((&oldest, _)) = st.unstored.first_key_value()
                && w > oldest
            {
                st.violations.push(format!("watermark {w} passes unstored trip at {oldest}"));
            }
        }
        let mut outcomes = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            if let Fault::Entries { from, count } = fault
                && (from..from + count).contains(&i)
            {
                outcomes.push(PutOutcome::Failed { code: "ProvisionedThroughputExceededException".to_owned() });
                continue;
            }
            let Some(index) = st.open_shard_of(&entry) else {
                st.violations.push(format!("entry with key {} is in no open shard", entry.partition_key));
                outcomes.push(PutOutcome::Failed { code: "InternalFailure".to_owned() });
                continue;
            };
            for (_, data) in user_records(&entry.partition_key, &entry.data) {
                if let Ok(Event::Trip(trip)) = parse_json_record(&data)
                    && let Some(count) = st.unstored.get_mut(&trip.event_time())
                {
                    *count -= 1;
                    if *count == 0 {
                        st.unstored.remove(&trip.event_time());
                    }
                }
            }
            outcomes.push(PutOutcome::Stored {
                shard_id: st.shards[index].shard_id.clone(),
                sequence_number: st.stored.len().to_string(),
            });
            st.stored.push(Stored {
                shard: index,
                partition_key: entry.partition_key,
                explicit_hash_key: entry.explicit_hash_key,
                data: entry.data,
                at: std::time::Instant::now(),
            });
        }
        Ok(outcomes)
    }
}

/// The user records of a Kinesis record: (partition key, data).
pub(super) fn user_records(partition_key: &str, data: &[u8]) -> Vec<(String, Vec<u8>)> {
    match deaggregate(data).expect("valid aggregate") {
        Deaggregated::Plain(d) => vec![(partition_key.to_owned(), d.to_vec())],
        Deaggregated::Aggregated(records) => {
            records.iter().map(|r| (r.partition_key.to_owned(), r.data.to_vec())).collect()
        }
    }
}

fn permanent(operation: &'static str) -> KinesisError {
    KinesisError::Permanent { operation, message: "not supported by the fake".to_owned() }
}

/// The fake has no enhanced fan-out.
pub(super) struct NoSubscription;

impl Subscription for NoSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
        Ok(None)
    }
}

impl KinesisApi for Fake {
    type Subscription = NoSubscription;

    async fn list_shards(&self, _stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        Ok(self.state().shards.clone())
    }

    async fn get_shard_iterator(
        &self,
        _stream: &str,
        _shard_id: &str,
        _position: &StartingPosition,
    ) -> Result<String, KinesisError> {
        Err(permanent("GetShardIterator"))
    }

    async fn get_records(&self, _iterator: &str, _limit: i32) -> Result<RecordsPage, KinesisError> {
        Err(permanent("GetRecords"))
    }

    async fn put_records(&self, _stream: &str, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        let shards = self.call_started(&entries);
        tokio::time::sleep(self.latency + self.jitter.mul_f64(fastrand::f64())).await;
        let result = self.store(entries);
        self.call_ended(&shards);
        result
    }

    async fn register_consumer(&self, _stream: &str, _name: &str) -> Result<String, KinesisError> {
        Err(permanent("RegisterStreamConsumer"))
    }

    async fn subscribe_to_shard(
        &self,
        _consumer_arn: &str,
        _shard_id: &str,
        _position: &StartingPosition,
    ) -> Result<NoSubscription, KinesisError> {
        Err(permanent("SubscribeToShard"))
    }

    async fn stream_state(&self, _stream: &str) -> Result<StreamState, KinesisError> {
        let mut st = self.state();
        if st.state == StreamState::Busy {
            if st.polls_until_active == 0 {
                st.state = StreamState::Active { open_shards: 0 };
            } else {
                st.polls_until_active -= 1;
            }
        }
        Ok(st.state)
    }

    async fn create_stream(&self, _stream: &str, shards: u32) -> Result<(), KinesisError> {
        let mut st = self.state();
        st.shards = even_shards(shards, 0);
        st.state = StreamState::Busy;
        st.polls_until_active = 2;
        Ok(())
    }

    async fn update_shard_count(&self, _stream: &str, _target_open_shards: u32) -> Result<(), KinesisError> {
        Err(permanent("UpdateShardCount"))
    }
}

/// 2016-01-01T00:00:00Z.
pub(super) const T0: Millis = 1_451_606_400_000;

/// A seed-format trip line dropped off at `dropoff`, padded with `pad` bytes.
pub(super) fn trip_line(id: u64, dropoff: Millis, pad: usize) -> String {
    let pad = if pad > 0 { format!(",\"pad\":\"{}\"", "x".repeat(pad)) } else { String::new() };
    format!(
        "{{\"type\":\"trip\",\"trip_id\":{id},\"pickup_datetime\":\"{}\",\"dropoff_datetime\":\"{}\",\
         \"pickup_latitude\":40.75,\"pickup_longitude\":-73.99,\"dropoff_latitude\":40.64,\
         \"dropoff_longitude\":-73.78{pad}}}",
        format_timestamp(dropoff - 600_000),
        format_timestamp(dropoff),
    )
}

/// A temporary file holding `content`.
pub(super) fn write_file(content: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(content).expect("write");
    file.flush().expect("flush");
    file
}

/// A temporary file of these lines.
pub(super) fn write_lines(lines: &[String]) -> tempfile::NamedTempFile {
    write_file(lines.join("\n").as_bytes())
}

/// A temporary file of generated JSON lines, and what the generator wrote.
pub(super) fn generated(config: &GeneratorConfig) -> (tempfile::NamedTempFile, taxi_core::generate::GenerateStats) {
    let mut buf = Vec::new();
    let stats = write_json_lines(config, &mut buf).expect("generate");
    (write_file(&buf), stats)
}

/// Options for `input` into `taxi-test`, with fast watermarks and shard refreshes.
pub(super) fn options(input: &tempfile::NamedTempFile, speedup: f64) -> ReplayOptions {
    ReplayOptions {
        watermark_interval: Duration::from_millis(10),
        shard_refresh_interval: Duration::from_millis(30),
        max_in_flight: 4,
        speedup,
        ..ReplayOptions::new(input.path(), "taxi-test")
    }
}

/// Every user record stored, parsed: (trip ids, invalid count, watermark count).
pub(super) fn stored_contents(fake: &Fake) -> (Vec<u64>, u64, u64) {
    let st = fake.state();
    let (mut trips, mut invalid, mut watermarks) = (Vec::new(), 0, 0);
    for record in &st.stored {
        for (_, data) in user_records(&record.partition_key, &record.data) {
            match parse_json_record(&data) {
                Ok(Event::Trip(t)) => trips.push(t.trip_id),
                Ok(Event::Watermark(_)) => watermarks += 1,
                Err(_) => invalid += 1,
            }
        }
    }
    trips.sort_unstable();
    (trips, invalid, watermarks)
}

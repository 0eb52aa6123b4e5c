//! Test doubles for the unit tests of the run: a stream held in memory behind [`KinesisApi`]
//! (polling only), run options over a temporary directory, and the context a run shares with its
//! shard tasks, built the way `run_worker` builds it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;

use super::idle::CaughtUp;
use super::{RunOptions, Shared, WorkerState};
use taxi_core::checkpoint::Owner;
use taxi_core::shard::Counters;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{
    KinesisApi, KinesisError, KinesisRecord, PutEntry, PutOutcome, RecordsPage, StartingPosition, StreamState,
    Subscription, SubscriptionEvent,
};
use taxi_io::kinesis::reader::PollingConfig;
use taxi_io::sink::Sink;
use taxi_io::sink::dead_letter::DeadLetterStore;
use taxi_io::store::CheckpointStore;

/// A shard as ListShards lists it: `parents` (one, or two for a merge), closed or open.
pub(super) fn shard(id: &str, parents: &[&str], closed: bool) -> ShardInfo {
    ShardInfo {
        shard_id: id.to_owned(),
        parent: parents.first().map(|p| (*p).to_owned()),
        adjacent_parent: parents.get(1).map(|p| (*p).to_owned()),
        starting_hash_key: 0,
        ending_hash_key: u128::MAX,
        ending_sequence_number: closed.then(|| "99999".to_owned()),
    }
}

/// One watermark event, a valid record every processor counts.
pub(super) const WATERMARK: &str = r#"{"type":"watermark","watermark":"2016-01-01T00:00:00Z"}"#;

/// A stream in memory: its shards and their records. An iterator is `shard#index`; reading a
/// closed shard past its last record ends it.
#[derive(Default)]
pub(super) struct FakeKinesis {
    stream: Mutex<Stream>,
}

#[derive(Default)]
struct Stream {
    shards: Vec<ShardInfo>,
    records: HashMap<String, Vec<KinesisRecord>>,
}

impl FakeKinesis {
    /// A stream of `shards`, holding no record yet.
    pub(super) fn new(shards: Vec<ShardInfo>) -> FakeKinesis {
        FakeKinesis { stream: Mutex::new(Stream { shards, records: HashMap::new() }) }
    }

    fn stream(&self) -> MutexGuard<'_, Stream> {
        self.stream.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `count` watermark records to `shard`, numbered on from its last one.
    pub(super) fn add_records(&self, shard: &str, count: usize) {
        let mut stream = self.stream();
        let records = stream.records.entry(shard.to_owned()).or_default();
        for _ in 0..count {
            let sequence_number = format!("{:05}", records.len() + 1);
            let data = Bytes::from_static(WATERMARK.as_bytes());
            records.push(KinesisRecord { sequence_number, partition_key: "k".to_owned(), data, arrival: None });
        }
    }

    fn unsupported(operation: &'static str) -> KinesisError {
        KinesisError::Permanent { operation, message: "not supported by the fake stream".to_owned() }
    }
}

/// The fake stream has no enhanced fan-out.
pub(super) struct NoSubscription;

impl Subscription for NoSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
        Ok(None)
    }
}

impl KinesisApi for FakeKinesis {
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
        let records = stream.records.get(shard_id).map_or(&[][..], Vec::as_slice);
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
        let records = stream.records.get(shard_id).map_or(&[][..], Vec::as_slice);
        let end = records.len().min(index + usize::try_from(limit).unwrap_or(usize::MAX));
        let page = records.get(index..end).unwrap_or_default().to_vec();
        let closed = stream.shards.iter().any(|s| s.shard_id == shard_id && !s.is_open());
        let children = stream.shards.iter().filter(|s| s.parents().any(|p| p == shard_id));
        Ok(RecordsPage {
            records: page,
            next_iterator: (!closed || end < records.len()).then(|| format!("{shard_id}#{end}")),
            millis_behind_latest: Some(if end < records.len() { 1000 } else { 0 }),
            child_shards: if closed { children.map(|s| s.shard_id.clone()).collect() } else { Vec::new() },
        })
    }

    async fn put_records(&self, _stream: &str, _entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        Err(Self::unsupported("PutRecords"))
    }

    async fn stream_state(&self, _stream: &str) -> Result<StreamState, KinesisError> {
        let open_shards = self.stream().shards.iter().filter(|s| s.is_open()).count();
        Ok(StreamState::Active { open_shards: u32::try_from(open_shards).unwrap_or(u32::MAX) })
    }

    async fn create_stream(&self, _stream: &str, _shards: u32) -> Result<(), KinesisError> {
        Err(Self::unsupported("CreateStream"))
    }

    async fn update_shard_count(&self, _stream: &str, _target_open_shards: u32) -> Result<(), KinesisError> {
        Err(Self::unsupported("UpdateShardCount"))
    }

    async fn register_consumer(&self, _stream: &str, _name: &str) -> Result<String, KinesisError> {
        Err(Self::unsupported("RegisterStreamConsumer"))
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

/// Options of a run of pipeline `nyc` over `dir` (checkpoints and a file sink), with short
/// intervals, reading every shard from its beginning.
pub(super) fn options(dir: &Path) -> RunOptions {
    RunOptions {
        checkpoint_retain: 2,
        checkpoint_interval: Duration::from_millis(200),
        shard_discovery_interval: Duration::from_millis(100),
        stop_when_idle: Some(Duration::from_millis(300)),
        polling: PollingConfig {
            min_call_interval: Duration::from_millis(10),
            max_idle_delay: Duration::from_millis(50),
            ..PollingConfig::default()
        },
        ..RunOptions::new(
            "nyc",
            "trips",
            format!("file://{}", dir.join("checkpoints").display()),
            format!("file://{}", dir.join("partials.jsonl").display()),
        )
    }
}

/// The context of a run over `options`, keyed by the pipeline name, as this process with the
/// epoch and ordinal of `options`.
pub(super) async fn shared<K>(api: Arc<K>, options: RunOptions) -> Shared<K> {
    let store = CheckpointStore::from_uri(&options.checkpoint_uri, &options.s3, options.checkpoint_retain)
        .await
        .expect("a checkpoint directory");
    let state = Arc::new(WorkerState::default());
    let identity = options.pipeline.clone();
    let dead_letters = DeadLetterStore::new(store.clone(), &identity, state.metrics.sink_dead_letters.clone());
    let sink = Sink::open(&options.sink_uri, &options.opensearch, state.metrics.registry(), dead_letters)
        .await
        .expect("a file sink");
    Shared {
        api,
        identity,
        config: Arc::new(options.engine.clone()),
        owner: Owner { ordinal: options.ordinal, ..Owner::this_process(options.owner_epoch) },
        options,
        store,
        sink: Arc::new(sink),
        state,
        caught_up: CaughtUp::default(),
        totals: Mutex::new(Counters::default()),
        closed_shards: Mutex::new(HashSet::new()),
        consumer_arn: None,
    }
}

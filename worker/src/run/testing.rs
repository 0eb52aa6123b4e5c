//! Test doubles for the unit tests of the run: shards and records for the kit's in-memory stream
//! ([`MemoryKinesis`]), run options over a temporary directory, and the context a run shares with
//! its shard tasks, built the way `run_worker` builds it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::idle::CaughtUp;
use super::{RunOptions, Shared, WorkerState};
use taxi_core::checkpoint::Owner;
use taxi_core::shard::Counters;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::reader::PollingConfig;
use taxi_io::sink::Sink;
use taxi_io::sink::dead_letter::DeadLetterStore;
use taxi_io::store::CheckpointStore;
pub(super) use taxi_testkit::memory::MemoryKinesis;

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

/// Appends `count` watermark records to `shard` of `api`, numbered on from its last one.
pub(super) fn add_watermarks(api: &MemoryKinesis, shard: &str, count: usize) {
    for _ in 0..count {
        api.append(shard, "k", WATERMARK);
    }
}

/// Appends `count` trips to `shard` of `api`, trip ids from `first_id`, one a minute from
/// 2016-01-01T00:00Z (so they span event hours).
pub(super) fn add_trips(api: &MemoryKinesis, shard: &str, first_id: u64, count: u64) {
    for id in first_id..first_id + count {
        let minute = id % (24 * 60);
        let line = format!(
            r#"{{"type":"trip","trip_id":{id},"pickup_datetime":"2016-01-01T{:02}:{:02}:00Z","dropoff_datetime":"2016-01-01T{:02}:{:02}:30Z","pickup_lat":40.75,"pickup_lon":-73.99,"dropoff_lat":40.64,"dropoff_lon":-73.78}}"#,
            minute / 60,
            minute % 60,
            minute / 60,
            minute % 60
        );
        api.append(shard, &id.to_string(), line);
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
    let archive = match &options.archive {
        Some(settings) => {
            Some(super::archive::ArchiveTarget::open(settings, &options.s3).await.expect("an archive directory"))
        }
        None => None,
    };
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
        archive,
    }
}

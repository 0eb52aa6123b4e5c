//! `taxi-worker run` against the Kinesis emulator: the merged partials equal `local` and the
//! batch oracle, across restarts, resharding, throttling and expired iterators.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use common::kinesis::{client, emulator, fresh_stream, put_file, run_options, run_to_idle, wait_active};
use common::{as_lines, batch_oracle};
use taxi_core::config::EngineConfig;
use taxi_core::document::merge_documents;
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::settings::ConsumerKind;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{
    KinesisApi, KinesisError, PutEntry, PutOutcome, RecordsPage, SdkKinesis, SdkSubscription, StartingPosition,
    StreamState,
};
use taxi_io::sink::file::read_documents;
use taxi_worker::local::{LocalInput, LocalOptions, Progress, run_local};
use taxi_worker::run::{WorkerState, run_worker};

fn generated(dir: &Path, trips: u64, seed: u64) -> PathBuf {
    let path = dir.join("trips.jsonl");
    let config = GeneratorConfig { trips, seed, invalid_ratio: 0.002, ..GeneratorConfig::default() };
    write_json_lines(&config, std::fs::File::create(&path).expect("create")).expect("generate");
    path
}

async fn local_results(input: &Path, shards: u32) -> Vec<String> {
    let options = LocalOptions {
        input: LocalInput::File(input.to_path_buf()),
        shards,
        engine: EngineConfig::default(),
        checkpoint: None,
        stop_after_records: None,
        parse_threads: 2,
        speedup: None,
    };
    let run = run_local(options, Arc::new(AtomicBool::new(false)), Arc::new(Progress::default())).await.expect("local");
    as_lines(&run.results)
}

fn merged(dir: &Path) -> Vec<String> {
    as_lines(&merge_documents(&EngineConfig::default(), read_documents(&dir.join("partials.jsonl")).expect("partials")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_over_a_replayed_stream_equals_local_and_the_oracle() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated(dir.path(), 3_000, 21);
    let stream = fresh_stream(&api, 4).await;
    put_file(&api, &stream, &input).await;

    let (summary, state) = run_to_idle(api.clone(), run_options(&stream, dir.path(), "nyc")).await;
    assert_eq!(summary.counters.records, common::kinesis::count_records(&input));
    assert!(summary.counters.invalid_total() > 0, "invalid records are counted, not fatal");
    let expected = as_lines(&batch_oracle(&EngineConfig::default(), &input));
    assert!(!expected.is_empty());
    assert_eq!(merged(dir.path()), expected, "merged partials equal the batch oracle");
    assert_eq!(local_results(&input, 4).await, expected, "and local over the same file");
    let metrics = state.metrics.render();
    assert!(metrics.contains("taxi_kinesis_records_read_total{shard=\"shardId-000000000003\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_resumes_from_its_checkpoints_without_double_counting() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated(dir.path(), 3_000, 22);
    let stream = fresh_stream(&api, 2).await;
    put_file(&api, &stream, &input).await;

    // First worker: small pages so it is stopped mid-stream.
    let mut first = run_options(&stream, dir.path(), "nyc");
    first.stop_when_idle = None;
    first.polling.max_records = 100;
    first.polling.min_call_interval = Duration::from_millis(100);
    let state = Arc::new(WorkerState::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(api.clone(), first, state.clone(), stopped));
    loop {
        let records: u64 = state.shards.lock().expect("status").values().map(|s| s.records).sum();
        if records >= 600 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).expect("stop");
    let first_summary = worker.await.expect("join").expect("first run");
    assert!(first_summary.counters.records < 3_000, "stopped mid-stream ({} records)", first_summary.counters.records);

    let (second, _) = run_to_idle(api.clone(), run_options(&stream, dir.path(), "nyc")).await;
    assert_eq!(
        first_summary.counters.records + second.counters.records,
        common::kinesis::count_records(&input),
        "every record processed exactly once into the final state"
    );
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_while_reading_lose_nothing_and_children_wait_for_parents() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated(dir.path(), 2_400, 23);
    let (a, b) = common::split_in_halves(&input, dir.path(), ["a.jsonl", "b.jsonl"]);
    let stream = fresh_stream(&api, 4).await;
    put_file(&api, &stream, &a).await;

    let mut options = run_options(&stream, dir.path(), "nyc");
    options.stop_when_idle = Some(Duration::from_secs(3));
    let state = Arc::new(WorkerState::default());
    let (_keep, never) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(api.clone(), options, state.clone(), never));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Split shard 0 in the middle of its range, and merge shards 2 and 3.
    let shards = api.list_shards(&stream).await.expect("list");
    let s0 = &shards[0];
    let middle = s0.starting_hash_key + (s0.ending_hash_key - s0.starting_hash_key) / 2;
    let sdk = api.client();
    sdk.split_shard()
        .stream_name(&stream)
        .shard_to_split(&s0.shard_id)
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .expect("split");
    wait_active(&api, &stream).await;
    sdk.merge_shards()
        .stream_name(&stream)
        .shard_to_merge(&shards[2].shard_id)
        .adjacent_shard_to_merge(&shards[3].shard_id)
        .send()
        .await
        .expect("merge");
    wait_active(&api, &stream).await;
    put_file(&api, &stream, &b).await;

    let summary =
        tokio::time::timeout(Duration::from_secs(120), worker).await.expect("stops").expect("join").expect("run");
    assert_eq!(summary.counters.records, common::kinesis::count_records(&input));
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));

    // Parent before child, from the worker's own status.
    let status = state.shards.lock().expect("status").clone();
    let all = api.list_shards(&stream).await.expect("list");
    let mut children = 0;
    for shard in all.iter().filter(|s| s.parent.is_some()) {
        let child = &status[&shard.shard_id];
        for parent in shard.parents() {
            let finished = status[parent].finished_at_ms.expect("parent finished");
            assert!(
                child.started_at_ms.expect("child started") >= finished,
                "{} started before {parent} finished",
                shard.shard_id
            );
        }
        children += 1;
    }
    assert_eq!(children, 3, "two children of the split, one of the merge");
    assert!(summary.finished_shards.len() >= 3, "the three closed parents were read to their end");
}

/// Wraps the real client and fails the first GetRecords calls with throttling, then expires
/// the iterator once.
struct Faulty {
    inner: SdkKinesis,
    throttles_left: AtomicU32,
    expiries_left: AtomicU32,
    calls: AtomicU32,
}

impl KinesisApi for Faulty {
    type Subscription = SdkSubscription;

    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        self.inner.list_shards(stream).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        position: &StartingPosition,
    ) -> Result<String, KinesisError> {
        self.inner.get_shard_iterator(stream, shard, position).await
    }
    async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, KinesisError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.throttles_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(KinesisError::Throttled {
                operation: "GetRecords",
                code: "ProvisionedThroughputExceededException".into(),
            });
        }
        // Once records are flowing, expire an iterator mid-stream.
        if call > 12
            && self.expiries_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
        {
            return Err(KinesisError::ExpiredIterator { operation: "GetRecords" });
        }
        self.inner.get_records(iterator, limit).await
    }
    async fn put_records(&self, stream: &str, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        self.inner.put_records(stream, entries).await
    }
    async fn stream_state(&self, stream: &str) -> Result<StreamState, KinesisError> {
        self.inner.stream_state(stream).await
    }
    async fn create_stream(&self, stream: &str, shards: u32) -> Result<(), KinesisError> {
        self.inner.create_stream(stream, shards).await
    }
    async fn update_shard_count(&self, stream: &str, target_open_shards: u32) -> Result<(), KinesisError> {
        self.inner.update_shard_count(stream, target_open_shards).await
    }
    async fn register_consumer(&self, stream: &str, name: &str) -> Result<String, KinesisError> {
        self.inner.register_consumer(stream, name).await
    }
    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard: &str,
        position: &StartingPosition,
    ) -> Result<SdkSubscription, KinesisError> {
        self.inner.subscribe_to_shard(consumer_arn, shard, position).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_expired_iterators_are_retried_without_loss() {
    let Some(endpoint) = emulator() else { return };
    let real = client(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated(dir.path(), 2_000, 24);
    let stream = fresh_stream(&real, 2).await;
    put_file(&real, &stream, &input).await;

    let faulty = Arc::new(Faulty {
        inner: real,
        throttles_left: AtomicU32::new(6),
        expiries_left: AtomicU32::new(2),
        calls: AtomicU32::new(0),
    });
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.polling.max_records = 150;
    let (summary, state) = run_to_idle(faulty.clone(), options).await;
    assert_eq!(faulty.throttles_left.load(Ordering::SeqCst), 0, "the throttles happened");
    assert_eq!(faulty.expiries_left.load(Ordering::SeqCst), 0, "the expiries happened");
    assert_eq!(summary.counters.records, common::kinesis::count_records(&input), "nothing lost, nothing twice");
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
    assert!(state.metrics.render().contains("taxi_kinesis_get_records_seconds"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_gives_the_same_results_across_a_split() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated(dir.path(), 2_000, 25);
    let stream = fresh_stream(&api, 2).await;
    put_file(&api, &stream, &input).await;
    // Split a shard before reading: its children must wait for it, and the closed parent must be
    // drained to its end.
    let shards = api.list_shards(&stream).await.expect("list");
    let middle = shards[1].starting_hash_key + (shards[1].ending_hash_key - shards[1].starting_hash_key) / 2;
    api.client()
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&shards[1].shard_id)
        .new_starting_hash_key(middle.to_string())
        .send()
        .await
        .expect("split");
    wait_active(&api, &stream).await;

    let mut options = run_options(&stream, dir.path(), "nyc");
    options.consumer = ConsumerKind::EnhancedFanOut { consumer_name: "taxi-test".to_owned() };
    options.stop_when_idle = Some(Duration::from_secs(3));
    let (summary, state) = run_to_idle(api.clone(), options).await;
    assert_eq!(summary.counters.records, common::kinesis::count_records(&input));
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
    assert!(summary.finished_shards.contains(&shards[1].shard_id), "the split parent was read to its end");
    assert!(state.metrics.render().contains("taxi_kinesis_records_read_total"));
}

/// Puts the file's lines as KPL aggregates of up to `per_record` user records each.
async fn put_aggregated(api: &SdkKinesis, stream: &str, input: &Path, per_record: usize) -> usize {
    use taxi_io::kinesis::kpl::Aggregator;
    let text = std::fs::read_to_string(input).expect("read");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut entries = Vec::new();
    for (n, group) in lines.chunks(per_record).enumerate() {
        let mut aggregator = Aggregator::default();
        for (i, line) in group.iter().enumerate() {
            let key = format!("{n}-{i}");
            assert!(aggregator.push(&key, None, line.as_bytes()).is_none(), "a group fits one aggregate");
        }
        let record = aggregator.flush().expect("an aggregate");
        entries.push(PutEntry {
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            data: bytes::Bytes::from(record.data),
        });
    }
    let count = entries.len();
    common::kinesis::put_entries(api, stream, entries).await;
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_deaggregate_and_a_checkpoint_inside_one_resumes_after_the_right_record() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated(dir.path(), 2_000, 26);
    let stream = fresh_stream(&api, 1).await;
    let aggregates = put_aggregated(&api, &stream, &input, 50).await;
    assert!(aggregates >= 40);

    // Stop after 137 user records: inside the third aggregate.
    let mut first = run_options(&stream, dir.path(), "nyc");
    first.stop_when_idle = None;
    first.stop_after_records = Some(137);
    let (summary, _) = run_to_idle(api.clone(), first).await;
    assert_eq!(summary.counters.records, 137);
    let checkpoint = std::fs::read_to_string(dir.path().join("checkpoints/nyc/shards/shardId-000000000000.json"))
        .expect("checkpoint");
    let checkpoint: serde_json::Value = serde_json::from_str(&checkpoint).expect("json");
    assert_eq!(
        checkpoint["position"]["sub_sequence"], 36,
        "user records 0..=36 of the third aggregate done: {checkpoint}"
    );

    let (rest, _) = run_to_idle(api.clone(), run_options(&stream, dir.path(), "nyc")).await;
    assert_eq!(137 + rest.counters.records, common::kinesis::count_records(&input), "no user record lost or repeated");
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

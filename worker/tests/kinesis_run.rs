//! `taxi-worker run` against the Kinesis emulator: the merged partials equal `local` and the
//! batch oracle, across restarts, resharding, throttling and expired iterators.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::{local_options, merged, run_options, run_to_idle};
use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_io::kinesis::api::{KinesisApi, KinesisError, PutEntry, SdkKinesis};
use taxi_testkit::fake::{FaultyKinesis, KinesisCall};
use taxi_testkit::input::{count_records, split_in_halves, write_generated};
use taxi_testkit::kinesis::{
    client, emulator, fresh_stream, merge_shards, put_entries, put_file, split_shard, wait_active,
};
use taxi_testkit::oracle::{as_lines, batch_oracle};
use taxi_worker::local::{Progress, run_local};
use taxi_worker::run::{WorkerState, run_worker};

/// `dir/trips.jsonl`: `trips` trips of `seed`, with a few invalid lines.
fn generated(dir: &Path, trips: u64, seed: u64) -> PathBuf {
    let path = dir.join("trips.jsonl");
    write_generated(&path, &GeneratorConfig { trips, seed, invalid_ratio: 0.002, ..GeneratorConfig::default() });
    path
}

async fn local_results(input: &Path, shards: u32) -> Vec<String> {
    let options = local_options(input, shards, EngineConfig::default());
    let run = run_local(options, Arc::new(AtomicBool::new(false)), Arc::new(Progress::default())).await.expect("local");
    as_lines(&run.results)
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
    assert_eq!(summary.counters.records, count_records(&input));
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
        count_records(&input),
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
    let (a, b) = split_in_halves(&input, dir.path(), ["a.jsonl", "b.jsonl"]);
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
    split_shard(&api, &stream, &shards[0]).await.expect("split");
    wait_active(&api, &stream).await;
    merge_shards(&api, &stream, &shards[2].shard_id, &shards[3].shard_id).await.expect("merge");
    wait_active(&api, &stream).await;
    put_file(&api, &stream, &b).await;

    let summary =
        tokio::time::timeout(Duration::from_secs(120), worker).await.expect("stops").expect("join").expect("run");
    assert_eq!(summary.counters.records, count_records(&input));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_expired_iterators_are_retried_without_loss() {
    let Some(endpoint) = emulator() else { return };
    let real = client(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated(dir.path(), 2_000, 24);
    let stream = fresh_stream(&real, 2).await;
    put_file(&real, &stream, &input).await;

    // The first six GetRecords calls are throttled; once records are flowing, two iterators
    // expire mid-stream.
    let throttled =
        KinesisError::Throttled { operation: "GetRecords", code: "ProvisionedThroughputExceededException".into() };
    let expired = KinesisError::ExpiredIterator { operation: "GetRecords" };
    let faulty = Arc::new(FaultyKinesis::new(real).failing(KinesisCall::GetRecords, 0..6, throttled).failing(
        KinesisCall::GetRecords,
        13..15,
        expired,
    ));
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.polling.max_records = 150;
    let (summary, state) = run_to_idle(faulty.clone(), options).await;
    assert_eq!(faulty.injected("throttled"), 6, "the throttles happened");
    assert_eq!(faulty.injected("expired_iterator"), 2, "the expiries happened");
    assert_eq!(summary.counters.records, count_records(&input), "nothing lost, nothing twice");
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
    split_shard(&api, &stream, &shards[1]).await.expect("split");
    wait_active(&api, &stream).await;

    let mut options = run_options(&stream, dir.path(), "nyc");
    options.efo_consumer = Some("taxi-test".to_owned());
    options.stop_when_idle = Some(Duration::from_secs(3));
    let (summary, state) = run_to_idle(api.clone(), options).await;
    assert_eq!(summary.counters.records, count_records(&input));
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
    put_entries(api, stream, entries).await;
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
    assert_eq!(137 + rest.counters.records, count_records(&input), "no user record lost or repeated");
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

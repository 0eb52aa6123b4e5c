//! Faults stay local to one shard: a corrupt checkpoint falls back to the newest readable history
//! copy, and a shard that cannot be restored (its checkpoint unreadable, or written under other
//! analysis settings) or that vanished from the stream fails alone, with the reason in `/status`
//! and metrics, while the worker and its other shards go on.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{merged, run_options, run_to_idle};
use taxi_core::config::EngineConfig;
use taxi_io::kinesis::api::KinesisApi;
use taxi_testkit::fake::FaultyKinesis;
use taxi_testkit::input::{generated_input, split_in_halves};
use taxi_testkit::kinesis::{client, emulator, fresh_stream, put_file};
use taxi_testkit::oracle::{as_lines, batch_oracle};
use taxi_worker::run::{RunError, RunOptions, WorkerState, run_worker};

fn checkpoint(dir: &Path, shard: &str) -> PathBuf {
    dir.join(format!("checkpoints/nyc/shards/{shard}.json"))
}

/// History copies of a shard's checkpoint, newest first.
fn history(dir: &Path, shard: &str) -> Vec<PathBuf> {
    let folder = dir.join(format!("checkpoints/history/nyc/shards/{shard}.json"));
    let mut copies: Vec<PathBuf> =
        std::fs::read_dir(folder).expect("history").map(|e| e.expect("entry").path()).collect();
    copies.sort();
    copies.reverse();
    copies
}

/// Runs to idle and returns how the run ended, with the worker's state.
async fn run_until_idle<K: KinesisApi>(api: Arc<K>, options: RunOptions) -> (Result<(), RunError>, Arc<WorkerState>) {
    let state = Arc::new(WorkerState::default());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let ended = tokio::time::timeout(Duration::from_secs(120), run_worker(api, options, state.clone(), rx))
        .await
        .expect("the worker stops when idle");
    (ended.map(|_| ()), state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_latest_checkpoint_falls_back_to_the_newest_readable_history_copy() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 600, 5);
    let (a, b) = split_in_halves(&input, dir.path(), ["a.jsonl", "b.jsonl"]);
    let stream = fresh_stream(&api, 2).await;
    let options = run_options(&stream, dir.path(), "nyc");
    put_file(&api, &stream, &a).await;
    run_to_idle(api.clone(), options.clone()).await;

    // The latest checkpoint and its newest history copy are torn (as by a disk or a tool): the
    // claim must use the older copy and read the records after it again.
    let shard = "shardId-000000000000";
    std::fs::write(checkpoint(dir.path(), shard), b"{\"format_version\":").expect("tear the checkpoint");
    let copies = history(dir.path(), shard);
    assert!(copies.len() >= 2, "the store keeps two history copies");
    std::fs::write(&copies[0], b"not json").expect("tear the newest copy");

    put_file(&api, &stream, &b).await;
    let (ended, state) = run_until_idle(api.clone(), options).await;
    ended.expect("the shard restored from history and the run ended well");
    let corrupt = state.metrics.checkpoint_failures.with_label_values(&["corrupt"]).get();
    assert_eq!(corrupt, 1, "the corrupt checkpoint was noticed once");
    assert_eq!(
        merged(dir.path()),
        as_lines(&batch_oracle(&EngineConfig::default(), &input)),
        "records read again after the older copy are not counted twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_cannot_be_restored_fails_alone_with_its_reason() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 600, 5);
    let (a, b) = split_in_halves(&input, dir.path(), ["a.jsonl", "b.jsonl"]);
    let stream = fresh_stream(&api, 3).await;
    let options = run_options(&stream, dir.path(), "nyc");
    put_file(&api, &stream, &a).await;
    run_to_idle(api.clone(), options.clone()).await;

    // Shard 0 was checkpointed under other settings; shard 1's checkpoint and history are torn.
    let other_settings = checkpoint(dir.path(), "shardId-000000000000");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&other_settings).expect("read")).expect("a checkpoint");
    doc["settings_fingerprint"] = "0123456789abcdef".into();
    std::fs::write(&other_settings, serde_json::to_vec(&doc).expect("json")).expect("write");
    let torn = "shardId-000000000001";
    std::fs::write(checkpoint(dir.path(), torn), b"{").expect("tear");
    for copy in history(dir.path(), torn) {
        std::fs::write(copy, b"{").expect("tear");
    }

    put_file(&api, &stream, &b).await;
    let (ended, state) = run_until_idle(api.clone(), options).await;
    let Err(RunError::ShardsFailed(failed)) = ended else { panic!("expected failed shards, got {ended:?}") };
    let failed: Vec<(&str, &str)> = failed.iter().map(|(id, e)| (id.as_str(), e.as_str())).collect();
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, "shardId-000000000000");
    assert!(failed[0].1.contains("other analysis settings"), "{}", failed[0].1);
    assert_eq!(failed[1].0, torn);
    assert!(failed[1].1.contains("is corrupt and no history copy"), "{}", failed[1].1);

    let status = serde_json::to_value(state.status()).expect("status");
    for (id, _) in &failed {
        assert_eq!(status["shards"][id]["state"], "failed", "{status}");
        assert!(status["shards"][id]["error"].is_string(), "{status}");
    }
    let shard2 = &status["shards"]["shardId-000000000002"];
    assert_eq!(shard2["state"], "stopped", "the healthy shard read on and stopped when idle: {status}");
    assert!(shard2["records"].as_u64().is_some_and(|n| n > 0), "{status}");
    let failures = |reason: &str| state.metrics.shard_failures.with_label_values(&[reason]).get();
    assert!(failures("settings_changed") >= 1 && failures("corrupt_checkpoint") >= 1);
    assert_eq!(state.metrics.failed_shards.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_shard_fails_alone_and_is_not_retried_once_it_is_no_longer_listed() {
    let Some(endpoint) = emulator() else { return };
    let sdk = client(&endpoint);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 300, 5);
    let stream = fresh_stream(&sdk, 2).await;
    put_file(&sdk, &stream, &input).await;
    let gone = "shardId-000000000000";
    // The shard vanishes as an expired shard does: listed once, then no more, and never readable.
    let api = Arc::new(FaultyKinesis::new(sdk).vanishing_shard(gone, 1));
    let (ended, state) = run_until_idle(api, run_options(&stream, dir.path(), "nyc")).await;
    ended.expect("the worker went on with its other shard and stopped when idle");
    let status = serde_json::to_value(state.status()).expect("status");
    assert_eq!(status["shards"][gone]["state"], "failed", "{status}");
    assert!(status["shards"][gone]["error"].as_str().is_some_and(|e| e.contains("does not exist")), "{status}");
    let other = &status["shards"]["shardId-000000000001"];
    assert!(other["records"].as_u64().is_some_and(|n| n > 0), "{status}");
    assert_eq!(state.metrics.shard_failures.with_label_values(&["kinesis"]).get(), 1, "not retried");
    assert_eq!(state.metrics.failed_shards.get(), 0);
}

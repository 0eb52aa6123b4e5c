//! `--start-position latest` against the Kinesis emulator: the start is resolved once, at a
//! shard's first claim, and checkpointed, so neither a restart before the first record nor a
//! reshard skips a record that arrived after the worker first claimed the shard.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{merged, run_options, run_to_idle};
use taxi_core::checkpoint::{Position, ShardCheckpoint};
use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_core::start_position::InitialPosition;
use taxi_core::status::ShardState;
use taxi_io::kinesis::api::KinesisApi;
use taxi_testkit::input::{count_records, split_in_halves, write_generated};
use taxi_testkit::kinesis::{client, emulator, fresh_stream, put_file, wait_active};
use taxi_testkit::oracle::{as_lines, batch_oracle};
use taxi_worker::run::{WorkerState, run_worker};

/// `trips` generated trips in `dir/name`.
fn generated(dir: &Path, name: &str, trips: u64, seed: u64) -> PathBuf {
    let path = dir.join(name);
    write_generated(&path, &GeneratorConfig { trips, seed, ..GeneratorConfig::default() });
    path
}

fn checkpoint(dir: &Path, pipeline: &str, shard: &str) -> ShardCheckpoint {
    let path = dir.join(format!("checkpoints/{pipeline}/shards/{shard}.json"));
    ShardCheckpoint::from_bytes(&std::fs::read(&path).expect("checkpoint")).expect("decode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_resolved_at_the_first_claim_so_a_restart_before_the_first_record_loses_nothing() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = fresh_stream(&api, 1).await;

    // A worker starts on the empty stream with `latest` and stops before any record arrives.
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.start = InitialPosition::Latest;
    let (first, _) = run_to_idle(api.clone(), options.clone()).await;
    assert_eq!(first.counters.records, 0);
    let shard = api.list_shards(&stream).await.expect("list")[0].shard_id.clone();
    let resolved = checkpoint(dir.path(), "nyc", &shard).position;
    assert!(matches!(resolved, Position::ArrivedFrom { .. }), "the claim checkpointed a concrete start: {resolved:?}");

    // Trips arrive while no worker runs; the restarted worker reads them all.
    let input = generated(dir.path(), "trips.jsonl", 600, 31);
    put_file(&api, &stream, &input).await;
    let (second, _) = run_to_idle(api.clone(), options).await;
    assert_eq!(second.counters.records, count_records(&input), "nothing after the first claim is skipped");
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_latest_the_children_of_a_reshard_start_at_their_beginning() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let all = generated(dir.path(), "all.jsonl", 1_200, 32);
    let (before, after) = split_in_halves(&all, dir.path(), ["before.jsonl", "after.jsonl"]);
    let stream = fresh_stream(&api, 2).await;

    // A first worker claims both shards (resolving `latest`), reads the first half, and stops.
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.start = InitialPosition::Latest;
    let state = Arc::new(WorkerState::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut first = options.clone();
    first.stop_when_idle = None;
    let worker = tokio::spawn(run_worker(api.clone(), first, state.clone(), stopped));
    let progress = |shards_reading: usize, records: u64| {
        let shards = state.shards.lock().expect("status");
        shards.values().filter(|s| s.state == ShardState::Reading).count() == shards_reading
            && shards.values().map(|s| s.records).sum::<u64>() == records
    };
    wait_for("the worker claims both shards", || progress(2, 0)).await;
    put_file(&api, &stream, &before).await;
    let half = count_records(&before);
    wait_for("the worker reads the first half", || progress(2, half)).await;
    stop.send(true).expect("stop");
    tokio::time::timeout(Duration::from_secs(30), worker).await.expect("stops").expect("join").expect("first run");

    // The stream is resharded and the second half goes to the children, which have no checkpoint.
    api.update_shard_count(&stream, 4).await.expect("reshard");
    wait_active(&api, &stream).await;
    put_file(&api, &stream, &after).await;

    // The next worker reads the parents to their end, then the children from their beginning.
    let (summary, _) = run_to_idle(api.clone(), options).await;
    assert_eq!(summary.counters.records, count_records(&after), "the children's records were all read");
    assert_eq!(summary.finished_shards.len(), 2, "the two parents were read to their end");
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &all)));
}

/// Polls `done` every 50 ms for up to 30 s.
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    for _ in 0..600 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

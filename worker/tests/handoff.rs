//! Shard handoff in one `run_worker` against the Kinesis emulator: a new owner waits
//! for a previous owner that never releases, can be moved away while it waits, and takes the
//! shard over once the takeover timeout has passed — reading from the checkpointed position. A
//! shard fenced by another owner of its epoch is looked at again, not parked for the epoch.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{merged, run_options};
use taxi_core::assignment::Assignment;
use taxi_core::checkpoint::{Owner, Position, ShardCheckpoint};
use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_core::shard::ShardProcessor;
use taxi_core::status::ShardState;
use taxi_io::store::{DirStore, Precondition};
use taxi_testkit::input::{count_records, generated_input, write_generated};
use taxi_testkit::kinesis::{client, emulator, fresh_stream, put_file};
use taxi_testkit::oracle::{as_lines, batch_oracle};
use taxi_testkit::process::publish_assignment;
use taxi_worker::handoff::AssignmentSource;
use taxi_worker::run::{WorkerState, run_worker};

const SHARD: &str = "shardId-000000000000";

/// Publishes an assignment of epoch `epoch` giving the shard to `owner`, of two replicas.
fn publish(path: &Path, epoch: u64, owner: u32) {
    publish_assignment(path, &Assignment { epoch, replicas: 2, owners: [(SHARD.to_owned(), owner)].into() });
}

fn state_of(state: &WorkerState) -> Option<ShardState> {
    state.shards.lock().expect("status").get(SHARD).map(|s| s.state)
}

async fn wait_for_state(state: &WorkerState, expected: ShardState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while state_of(state) != Some(expected) {
        assert!(Instant::now() < deadline, "shard never {expected:?}: {:?}", state_of(state));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_waits_for_a_release_that_never_comes_then_takes_the_shard_over() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("trips.jsonl");
    write_generated(
        &input,
        &GeneratorConfig { trips: 1_500, seed: 31, invalid_ratio: 0.002, ..GeneratorConfig::default() },
    );
    let stream = fresh_stream(&api, 1).await;
    put_file(&api, &stream, &input).await;

    // A previous owner (ordinal 0) claimed the shard and vanished without releasing it.
    let engine = Arc::new(EngineConfig::default());
    let gone = Owner { epoch: 1, id: "worker-0-gone".to_owned(), ordinal: Some(0) };
    let checkpoint =
        ShardCheckpoint::capture(SHARD, Position::Start, &gone, &ShardProcessor::new(engine.clone()), &engine);
    let store = DirStore::new(dir.path().join("checkpoints"));
    let key = format!("nyc/shards/{SHARD}.json");
    store.put(&key, &checkpoint.to_bytes().expect("encode"), &Precondition::Absent).expect("put");

    let assignment = dir.path().join("assignment.json");
    let takeover_timeout = Duration::from_secs(2);
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.assignment = AssignmentSource::File(assignment.clone());
    options.ordinal = Some(1);
    options.takeover_timeout = takeover_timeout;
    let state = Arc::new(WorkerState::default());
    let (_keep, never) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(api.clone(), options, state.clone(), never));

    // No assignment yet: the worker owns nothing and says so.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let not_ready = state.readiness().expect_err("not ready before the first assignment");
    assert!(not_ready.contains("assignment"), "{not_ready}");
    assert_eq!(state_of(&state), None, "nothing is started without an assignment");

    // Epoch 2 gives the shard to ordinal 1: it waits for ordinal 0's release.
    publish(&assignment, 2, 1);
    wait_for_state(&state, ShardState::WaitingForRelease).await;
    assert!(state.readiness().is_ok());

    // Epoch 3 moves it back to ordinal 0 before the timeout: the wait ends, nothing is claimed.
    publish(&assignment, 3, 0);
    wait_for_state(&state, ShardState::Released).await;
    let (bytes, _) = store.get(&key).expect("get").expect("present");
    assert_eq!(ShardCheckpoint::from_bytes(&bytes).expect("decode").owner_id, "worker-0-gone", "not claimed");

    // Epoch 4 gives it to ordinal 1 again; ordinal 0 never releases it: taken over after the timeout.
    let granted = Instant::now();
    publish(&assignment, 4, 1);
    wait_for_state(&state, ShardState::Reading).await;
    assert!(granted.elapsed() >= takeover_timeout, "waited for the timeout: {:?}", granted.elapsed());
    let summary = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("stops when idle")
        .expect("join")
        .expect("run");

    let metrics = state.metrics.render();
    assert!(metrics.contains("taxi_shard_handoffs_total{outcome=\"taken_over_after_timeout\"} 1"), "{metrics}");
    assert!(metrics.contains("taxi_shard_handoffs_total{outcome=\"claimed_after_release\"} 0"), "{metrics}");
    assert!(metrics.contains("taxi_assignment_epoch 4"), "{metrics}");
    let pause = state.shards.lock().expect("status")[SHARD].handoff_pause_ms.expect("pause");
    assert!(pause >= 2_000, "the pause includes the wait: {pause} ms");
    let status = serde_json::to_value(state.status()).expect("status");
    assert_eq!((status["ordinal"].as_u64(), status["assignment_epoch"].as_u64()), (Some(1), Some(4)), "{status}");

    let (bytes, _) = store.get(&key).expect("get").expect("present");
    let last = ShardCheckpoint::from_bytes(&bytes).expect("decode");
    assert_eq!((last.owner_epoch, last.owner_ordinal), (4, Some(1)), "claimed at epoch 4 by ordinal 1");
    assert_eq!(summary.counters.records, count_records(&input), "read from the checkpoint");
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&engine, &input)));
}

/// A shard fenced for real (another owner of the same epoch wrote its checkpoint) is looked at
/// again at the next discovery, not parked for the rest of the epoch: the other owner never
/// releases it, so this worker takes it back after the takeover timeout and reads on from the
/// other owner's checkpoint, losing and double-counting nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_fenced_for_real_is_looked_at_again_and_taken_back_after_the_timeout() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 1_200, 37);
    let stream = fresh_stream(&api, 1).await;

    let assignment = dir.path().join("assignment.json");
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.assignment = AssignmentSource::File(assignment.clone());
    options.ordinal = Some(1);
    options.takeover_timeout = Duration::from_secs(2);
    let state = Arc::new(WorkerState::default());
    let (_keep, never) = tokio::sync::watch::channel(false);
    publish(&assignment, 2, 1);
    let worker = tokio::spawn(run_worker(api.clone(), options, state.clone(), never));
    wait_for_state(&state, ShardState::Reading).await;

    // Records arrive while another owner of epoch 2 writes the checkpoint as its own.
    let producer = {
        let (api, stream, input) = (api.clone(), stream.clone(), input.clone());
        tokio::spawn(async move { put_file(&api, &stream, &input).await })
    };
    let checkpoint = dir.path().join(format!("checkpoints/nyc/shards/{SHARD}.json"));
    // Only a bound on waiting: on a loaded machine the emulator takes a while to store the first
    // records and the worker to checkpoint them.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let current = ShardCheckpoint::from_bytes(&std::fs::read(&checkpoint).expect("read")).expect("decode");
        if current.counters.records > 0 {
            let other = ShardCheckpoint { owner_id: "worker-0-other".to_owned(), owner_ordinal: Some(0), ..current };
            std::fs::write(&checkpoint, other.to_bytes().expect("encode")).expect("write");
            break;
        }
        assert!(Instant::now() < deadline, "no record was checkpointed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_state(&state, ShardState::Fenced).await;
    wait_for_state(&state, ShardState::Reading).await;
    producer.await.expect("producer");
    tokio::time::timeout(Duration::from_secs(60), worker).await.expect("stops when idle").expect("join").expect("run");

    let metrics = state.metrics.render();
    assert!(metrics.contains("taxi_shard_handoffs_total{outcome=\"taken_over_after_timeout\"} 1"), "{metrics}");
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

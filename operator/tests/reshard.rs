//! Stream scaling against kinesis-mock (a real Kinesis API, started by `.ci/services.sh`):
//! `manage_stream` driven every 200 ms, as the reconcile loop would, creates a fresh stream with
//! `spec.stream.shards` 4, then reshards it 4 → 8 → 3 while a producer replays a day of trips in
//! three phases and an in-process worker (every shard, file checkpoints, file sink) reads across
//! every reshard. The stream is resharded between the producer's phases (as in the worker's
//! `tests/rescale.rs`): the producer's parallel lanes could otherwise put a closed parent's last
//! records behind its children's first ones, and the paced day moves event time ~30 minutes per
//! wall second. A wide max-out-of-orderness keeps every trip on time across the phase changes.
//!
//! Checked: the UpdateShardCount calls are 4 → 8, 8 → 4, 4 → 3 (each within ×2 / ÷2, one per
//! ACTIVE stream), the stream ends with 3 open shards, `status.reshardCalls` holds the three calls,
//! the worker processed every trip once and none late, and the merged results equal local mode
//! over the same file.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use taxi_core::config::EngineConfig;
use taxi_core::generate::GeneratorConfig;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisEndpoint, KinesisError, SdkKinesis, StreamState};
use taxi_io::kinesis::reader::PollingConfig;
use taxi_operator::observe::{SdkStreams, StreamRef, Streams};
use taxi_operator::reshard::{Plan, StreamStep, manage_stream};
use taxi_worker::local::{LocalInput, LocalOptions, Progress, run_local};
use taxi_worker::replay::{ReplayOptions, ReplayProgress, ReplaySummary, replay};
use taxi_worker::run::{RunOptions, WorkerState, run_worker};

use taxi_testkit::input::{split_in_phases, write_generated};
use taxi_testkit::kinesis::{client, emulator};
use taxi_testkit::oracle::{as_lines, assert_same_lines, merged_partials};

/// Trips of the replayed day.
const TRIPS: u64 = 9_000;
/// Wall time the producer's pacing gives the whole day (over its three phases).
const DAY: Duration = Duration::from_secs(15);
/// Time between two passes of the control loop.
const PASS: Duration = Duration::from_millis(200);
/// Longest wait for the loop to bring the stream to a shard count.
const RESHARD_TIMEOUT: Duration = Duration::from_secs(20);
/// The worker stops once every shard has been caught up and quiet this long. It must outlast the
/// gaps between the producer's phases, which are a reshard each: well under a second on an idle
/// kinesis-mock, but over 4 s on a loaded 2-core CI machine, where the worker then stopped after
/// the first phase.
const IDLE: Duration = Duration::from_secs(15);

/// [`SdkStreams`] recording the calls that change the stream.
struct Recorded {
    inner: SdkStreams,
    changes: Mutex<Vec<String>>,
}

impl Recorded {
    fn changes(&self) -> Vec<String> {
        self.changes.lock().expect("changes").clone()
    }
}

impl Streams for Recorded {
    async fn list_shards(&self, stream: &StreamRef) -> Result<Vec<ShardInfo>, KinesisError> {
        self.inner.list_shards(stream).await
    }
    async fn stream_state(&self, stream: &StreamRef) -> Result<StreamState, KinesisError> {
        self.inner.stream_state(stream).await
    }
    async fn create_stream(&self, stream: &StreamRef, shards: u32) -> Result<(), KinesisError> {
        self.changes.lock().expect("changes").push(format!("CreateStream {shards}"));
        self.inner.create_stream(stream, shards).await
    }
    async fn update_shard_count(&self, stream: &StreamRef, target: u32) -> Result<(), KinesisError> {
        let open = match self.inner.stream_state(stream).await? {
            StreamState::Active { open_shards } => open_shards.to_string(),
            other => format!("{other:?}"),
        };
        self.changes.lock().expect("changes").push(format!("UpdateShardCount {open} → {target}"));
        self.inner.update_shard_count(stream, target).await
    }
    async fn deregister_consumer(&self, stream: &StreamRef, consumer: &str) -> Result<(), KinesisError> {
        self.changes.lock().expect("changes").push(format!("DeregisterStreamConsumer {consumer}"));
        self.inner.deregister_consumer(stream, consumer).await
    }
}

/// What the control loop saw: each pass's desired count and step, and `status.reshardCalls`.
#[derive(Default)]
struct Status {
    passes: Vec<(u32, StreamStep)>,
    reshard_calls: Vec<Timestamp>,
    errors: Vec<String>,
}

/// The reconcile loop's use of [`manage_stream`]: every [`PASS`], with the desired count the
/// test sets, storing the returned call list as the status would.
fn control_loop(
    streams: Arc<Recorded>,
    stream: StreamRef,
    desired: tokio::sync::watch::Receiver<u32>,
    status: Arc<Mutex<Status>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let want = *desired.borrow();
            let calls = status.lock().expect("status").reshard_calls.clone();
            let result = manage_stream(streams.as_ref(), &stream, true, want, &calls, Timestamp::now()).await;
            {
                let mut status = status.lock().expect("status");
                match result {
                    Ok(step) => {
                        status.reshard_calls = step.reshard_calls.clone();
                        status.passes.push((want, step));
                    }
                    Err(e) => status.errors.push(e.to_string()),
                }
            }
            tokio::time::sleep(PASS).await;
        }
    })
}

/// Sets `spec.stream.shards` and waits until a pass finds the stream stable at that count.
async fn reshard_to(desired: &tokio::sync::watch::Sender<u32>, status: &Mutex<Status>, shards: u32) -> Duration {
    let started = Instant::now();
    desired.send(shards).expect("the loop runs");
    loop {
        if status
            .lock()
            .expect("status")
            .passes
            .last()
            .is_some_and(|(want, step)| *want == shards && step.plan == Plan::Stable)
        {
            return started.elapsed();
        }
        let status = status.lock().expect("status");
        assert!(
            started.elapsed() < RESHARD_TIMEOUT,
            "the stream did not become stable at {shards} shards; last pass: {:?}; errors: {:?}",
            status.passes.last(),
            status.errors
        );
        drop(status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replays one phase, paced so the whole day would take [`DAY`].
async fn produce(kinesis: Arc<SdkKinesis>, stream: &str, phase: PathBuf) -> ReplaySummary {
    let mut options = ReplayOptions::new(phase, stream);
    options.speedup = 86_400.0 / DAY.as_secs_f64();
    options.watermark_interval = Duration::from_millis(500);
    options.shard_refresh_interval = Duration::from_millis(500);
    replay(kinesis, &options, &ReplayProgress::new()).await.expect("replay")
}

/// Analyses with a wide disorder bound: no trip is late across the phase changes.
fn engine() -> EngineConfig {
    let mut engine = EngineConfig::default();
    engine.event_time.max_out_of_orderness_ms = 10 * 60_000;
    engine
}

fn worker_options(stream: &str, dir: &Path) -> RunOptions {
    RunOptions {
        checkpoint_retain: 2,
        checkpoint_interval: Duration::from_millis(500),
        shard_discovery_interval: Duration::from_millis(300),
        stop_when_idle: Some(IDLE),
        polling: PollingConfig {
            min_call_interval: Duration::from_millis(50),
            max_idle_delay: Duration::from_millis(200),
            ..PollingConfig::default()
        },
        engine: engine(),
        ..RunOptions::new(
            "nyc",
            stream,
            format!("file://{}", dir.join("checkpoints").display()),
            format!("file://{}", dir.join("partials.jsonl").display()),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn managed_stream_is_created_and_resharded_4_8_3_in_steps_while_workers_lose_nothing() {
    let Some(endpoint) = emulator() else { return };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("trips.jsonl");
    write_generated(
        &input,
        &GeneratorConfig { trips: TRIPS, seed: 606, invalid_ratio: 0.002, ..GeneratorConfig::default() },
    );
    let phases = split_in_phases(&input, 3);

    let name = format!("taxi-reshard-{:016x}", fastrand::u64(..));
    let stream = StreamRef { name: name.clone(), region: None, endpoint_url: Some(endpoint.clone()) };
    let at_emulator = KinesisEndpoint { region: None, endpoint_url: Some(endpoint.clone()) };
    let streams = Arc::new(Recorded {
        inner: SdkStreams::new(KinesisEndpoint::default()).with_client(&at_emulator, client(&endpoint)),
        changes: Mutex::default(),
    });
    let kinesis = Arc::new(client(&endpoint));

    // A fresh stream: the first passes create it with spec.stream.shards = 4.
    let status = Arc::new(Mutex::new(Status::default()));
    let (desired, watched) = tokio::sync::watch::channel(4);
    let controller = control_loop(streams.clone(), stream.clone(), watched, status.clone());
    let created = reshard_to(&desired, &status, 4).await;

    // The worker reads every shard from now on, across the reshards.
    let state = Arc::new(WorkerState::default());
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(kinesis.clone(), worker_options(&name, dir.path()), state, stopped));

    // Phase 1 at 4 shards, phase 2 at 8, phase 3 at 3 (8 → 4 → 3: two calls).
    let mut sent = vec![produce(kinesis.clone(), &name, phases[0].clone()).await];
    let up = reshard_to(&desired, &status, 8).await;
    sent.push(produce(kinesis.clone(), &name, phases[1].clone()).await);
    let down = reshard_to(&desired, &status, 3).await;
    sent.push(produce(kinesis.clone(), &name, phases[2].clone()).await);
    let summary = tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .expect("the worker stops once idle")
        .expect("join")
        .expect("run");
    controller.abort();

    // The calls: one create, then one UpdateShardCount per step, each from an ACTIVE stream.
    assert_eq!(
        streams.changes(),
        ["CreateStream 4", "UpdateShardCount 4 → 8", "UpdateShardCount 8 → 4", "UpdateShardCount 4 → 3"]
    );
    let shards = kinesis_open_shards(&streams, &stream).await;
    assert_eq!(shards, 3, "the stream ends with spec.stream.shards open shards");
    let status = std::mem::take(&mut *status.lock().expect("status"));
    assert_eq!(status.reshard_calls.len(), 3, "status.reshardCalls holds the three calls of the last 24 h");
    let messages: Vec<&str> = status
        .passes
        .iter()
        .filter(|(_, step)| matches!(step.plan, Plan::Update { .. }))
        .map(|(_, step)| step.condition.message.as_str())
        .collect();
    assert_eq!(
        messages,
        [
            "4 → 8: step 4 → 8 requested, waiting for ACTIVE",
            "8 → 3: step 8 → 4 requested, waiting for ACTIVE",
            "4 → 3: step 4 → 3 requested, waiting for ACTIVE",
        ]
    );
    let notes: Vec<&str> = status.passes.iter().filter_map(|(_, step)| step.event.as_ref()).map(|e| e.reason).collect();
    assert_eq!(notes, ["CreatingStream", "Resharding", "Resharding", "Resharding"], "one Event per call");

    // Every trip the producer stored was processed once, none late, and the merged results equal
    // local mode over the same file.
    let trips: u64 = sent.iter().map(|s| s.trips).sum();
    assert_eq!((summary.counters.trips, summary.counters.late), (trips, 0), "{:?}", summary.counters);
    let merged = merged_partials(&engine(), &dir.path().join("partials.jsonl"));
    let local = LocalOptions {
        input: LocalInput::file(input.clone()),
        shards: 3,
        engine: engine(),
        checkpoint: None,
        stop_after_records: None,
        parse_threads: 2,
        speedup: None,
    };
    let local = run_local(local, Arc::new(AtomicBool::new(false)), Arc::new(Progress::default())).await.expect("local");
    let expected = as_lines(&local.results);
    assert!(!expected.is_empty());
    assert_same_lines(&merged, &expected, "merged results differ from local");
    eprintln!(
        "created in {:.1} s, 4 → 8 in {:.1} s, 8 → 3 in {:.1} s; test took {:.1} s",
        created.as_secs_f64(),
        up.as_secs_f64(),
        down.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

async fn kinesis_open_shards(streams: &Recorded, stream: &StreamRef) -> usize {
    streams.list_shards(stream).await.expect("list shards").iter().filter(|s| s.is_open()).count()
}

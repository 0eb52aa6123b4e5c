//! Helpers for tests against the Kinesis emulator (kinesis-mock, started by `.ci/services.sh`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::config::{Credentials, Region};
use bytes::Bytes;
use taxi_core::config::EngineConfig;
use taxi_core::event::Event;
use taxi_core::input::{parse_json_record, read_records};
use taxi_core::settings::ConsumerKind;
use taxi_core::start_position::InitialPosition;
use taxi_io::kinesis::api::{KinesisApi, PutEntry, PutOutcome, SdkKinesis, StreamState};
use taxi_io::kinesis::reader::PollingConfig;
use taxi_io::sink::opensearch::OpenSearchSettings;
use taxi_io::store::S3Settings;
use taxi_worker::handoff::AssignmentSource;
use taxi_worker::run::{RunOptions, RunSummary, WorkerState, run_worker};

/// The emulator's endpoint, or `None` (with a message) outside CI when it is not running.
pub fn emulator() -> Option<String> {
    super::services::service_endpoint("TAXI_TEST_KINESIS_ENDPOINT")
}

/// A client for the emulator (any credentials are accepted there).
pub fn client(endpoint: &str) -> SdkKinesis {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .build();
    SdkKinesis::from_client(aws_sdk_kinesis::Client::from_conf(config))
}

/// A fresh, randomly named stream with `shards` shards, active.
pub async fn fresh_stream(api: &SdkKinesis, shards: u32) -> String {
    let name = format!("taxi-test-{:016x}", fastrand::u64(..));
    api.create_stream(&name, shards).await.expect("create stream");
    wait_active(api, &name).await;
    name
}

/// Waits until the stream is ACTIVE again (after a create or a reshard).
pub async fn wait_active(api: &SdkKinesis, stream: &str) {
    for _ in 0..200 {
        if matches!(api.stream_state(stream).await.expect("describe"), StreamState::Active { .. }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {stream} did not become active");
}

/// Puts every line of a JSON-lines file, keyed by trip id (other lines by record number), in
/// batches of 500, retrying failed entries.
pub async fn put_file(api: &SdkKinesis, stream: &str, path: &Path) {
    let lines: Vec<String> = std::fs::read_to_string(path).expect("read input").lines().map(str::to_owned).collect();
    let entries: Vec<PutEntry> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let key = match parse_json_record(line.as_bytes()) {
                Ok(Event::Trip(t)) => t.trip_id.to_string(),
                _ => format!("record-{i}"),
            };
            PutEntry { partition_key: key, explicit_hash_key: None, data: Bytes::from(line.clone().into_bytes()) }
        })
        .collect();
    put_entries(api, stream, entries).await;
}

/// Puts entries in batches of 500, retrying the failed ones.
pub async fn put_entries(api: &SdkKinesis, stream: &str, entries: Vec<PutEntry>) {
    for batch in entries.chunks(500) {
        let mut pending = batch.to_vec();
        for _ in 0..20 {
            let outcomes = api.put_records(stream, pending.clone()).await.expect("put records");
            pending = pending
                .into_iter()
                .zip(outcomes)
                .filter(|(_, o)| matches!(o, PutOutcome::Failed { .. }))
                .map(|(e, _)| e)
                .collect();
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(pending.is_empty(), "entries kept failing");
    }
}

/// Options for a test run: fast checkpoints, discovery and idle detection.
pub fn run_options(stream: &str, dir: &Path, pipeline: &str) -> RunOptions {
    RunOptions {
        pipeline: pipeline.to_owned(),
        namespace: None,
        stream: stream.to_owned(),
        start: InitialPosition::TrimHorizon,
        checkpoint_uri: format!("file://{}", dir.join("checkpoints").display()),
        s3: S3Settings::default(),
        checkpoint_retain: 2,
        opensearch: OpenSearchSettings::default(),
        checkpoint_interval: Duration::from_millis(300),
        sink_uri: format!("file://{}", dir.join("partials.jsonl").display()),
        shard_discovery_interval: Duration::from_millis(300),
        stop_when_idle: Some(Duration::from_millis(1500)),
        polling: PollingConfig {
            min_call_interval: Duration::from_millis(50),
            max_idle_delay: Duration::from_millis(200),
            ..PollingConfig::default()
        },
        engine: EngineConfig::default(),
        owner_epoch: 0,
        assignment: AssignmentSource::All,
        ordinal: None,
        takeover_timeout: Duration::from_secs(30),
        consumer: ConsumerKind::Polling,
        stop_after_records: None,
    }
}

/// Runs a worker in-process until it stops by itself.
pub async fn run_to_idle<K: KinesisApi>(api: Arc<K>, options: RunOptions) -> (RunSummary, Arc<WorkerState>) {
    let state = Arc::new(WorkerState::default());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = tokio::time::timeout(Duration::from_secs(120), run_worker(api, options, state.clone(), rx))
        .await
        .expect("the worker stops when idle")
        .expect("run");
    (summary, state)
}

/// The trips of a file, for the oracle.
pub fn count_records(path: &Path) -> u64 {
    read_records(path).expect("open").count() as u64
}

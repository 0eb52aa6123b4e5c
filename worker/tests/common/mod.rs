//! The worker's own helpers for its integration tests, those that need `taxi_worker` types: run
//! and local options tuned for tests, and runs to their end. Everything else (emulators, input,
//! oracle, fakes, processes) is in `taxi_testkit`.

#![allow(dead_code, reason = "each test binary uses a different subset of the helpers")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use taxi_core::config::EngineConfig;
use taxi_io::kinesis::api::KinesisApi;
use taxi_io::kinesis::reader::PollingConfig;
use taxi_worker::local::{LocalError, LocalInput, LocalOptions, LocalRun, Progress, run_local};
use taxi_worker::run::{RunOptions, RunSummary, WorkerState, run_worker};

/// Options for a test run: fast checkpoints, discovery and idle detection; checkpoints in
/// `dir/checkpoints`, documents in the file sink [`partials`].
pub fn run_options(stream: &str, dir: &Path, pipeline: &str) -> RunOptions {
    RunOptions {
        checkpoint_retain: 2,
        checkpoint_interval: Duration::from_millis(300),
        shard_discovery_interval: Duration::from_millis(300),
        stop_when_idle: Some(Duration::from_millis(1500)),
        polling: PollingConfig {
            min_call_interval: Duration::from_millis(50),
            max_idle_delay: Duration::from_millis(200),
            ..PollingConfig::default()
        },
        ..RunOptions::new(
            pipeline,
            stream,
            format!("file://{}", dir.join("checkpoints").display()),
            format!("file://{}", partials(dir).display()),
        )
    }
}

/// The file sink of [`run_options`].
pub fn partials(dir: &Path) -> PathBuf {
    dir.join("partials.jsonl")
}

/// The merged results of the documents the runs of [`run_options`] wrote, as JSON lines.
pub fn merged(dir: &Path) -> Vec<String> {
    taxi_testkit::oracle::merged_partials(&EngineConfig::default(), &partials(dir))
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

/// Options for `local` over a file: no checkpoints, no record limit, two parse threads, full speed.
pub fn local_options(input: &Path, shards: u32, engine: EngineConfig) -> LocalOptions {
    LocalOptions {
        input: LocalInput::file(input),
        shards,
        engine,
        checkpoint: None,
        stop_after_records: None,
        parse_threads: 2,
        speedup: None,
    }
}

/// Runs `local` to its end on a runtime of its own (two worker threads), with default progress.
pub fn run_local_blocking(options: LocalOptions) -> Result<LocalRun, LocalError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(run_local(options, Arc::new(AtomicBool::new(false)), Arc::new(Progress::default())))
}

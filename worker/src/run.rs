//! `taxi-worker run`: read the shards of a Kinesis stream, process them with the engine, write
//! per-shard partial documents to the sink and checkpoint each shard (DESIGN §4–§6).
//!
//! A coordinator discovers shards (ListShards every `shard_discovery_interval`, and at once when a
//! shard ends), starts one task per shard whose parents are finished, and stops them on shutdown
//! or once every shard stayed caught up for `stop_when_idle`. Each shard task owns its reader, its
//! [`ShardProcessor`] and its checkpoint; the order per shard is: process records → write the
//! documents of closed windows → flush the sink → write the checkpoint (fenced by ETag).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::checkpoint::{CheckpointError, ETag, Owner, Position, Precondition, ShardCheckpoint};
use crate::config::EngineConfig;
use crate::event::{Event, InvalidReason, Millis};
use crate::input::parse_json_record;
use crate::kinesis::api::{KinesisApi, KinesisError, ShardInfo, StartingPosition};
use crate::kinesis::efo::EfoReader;
use crate::kinesis::kpl::{self, Deaggregated};
use crate::kinesis::reader::{Backoff, PollingConfig, PollingReader, ReadOutcome, ReaderStats, resume_position};
use crate::metrics::WorkerMetrics;
use crate::opensearch::OpenSearchSettings;
use crate::shard::{Counters, ShardProcessor};
use crate::sink::{Sink, SinkError, documents_for};
use crate::store::{CheckpointStore, S3Settings};

/// Everything `taxi-worker run` needs besides the Kinesis client.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Pipeline name, used in document ids and checkpoint keys.
    pub pipeline: String,
    /// The stream.
    pub stream: String,
    /// Where to start shards that have no checkpoint.
    pub start: StartingPosition,
    /// Checkpoint store URI (`s3://bucket/prefix`, `file:///dir` or a directory).
    pub checkpoint_uri: String,
    /// How to reach S3 (endpoint and addressing style for S3-compatible servers).
    pub s3: S3Settings,
    /// Previous checkpoints kept per shard for inspection.
    pub checkpoint_retain: usize,
    /// Time between checkpoints of a shard.
    pub checkpoint_interval: Duration,
    /// Sink URI (`file:///path.jsonl` or an OpenSearch `http(s)://` URL).
    pub sink_uri: String,
    /// OpenSearch authentication, TLS, index prefix and batching (for `http(s)://` sinks).
    pub opensearch: OpenSearchSettings,
    /// Time between ListShards calls.
    pub shard_discovery_interval: Duration,
    /// Exit once every shard has been caught up and quiet this long, closing open windows.
    pub stop_when_idle: Option<Duration>,
    /// Polling settings.
    pub polling: PollingConfig,
    /// Analyses and event time.
    pub engine: EngineConfig,
    /// Assignment epoch written into checkpoints (DESIGN §7).
    pub owner_epoch: u64,
    /// How shards are consumed.
    pub consumer: ConsumerKind,
    /// Stop each shard (with a checkpoint) after processing this many user records in this run,
    /// even inside a KPL aggregate: for tests and bounded batch runs.
    pub stop_after_records: Option<u64>,
}

/// How shards are consumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsumerKind {
    /// GetRecords polling.
    Polling,
    /// Enhanced fan-out through the registered consumer of this name.
    EnhancedFanOut {
        /// Consumer name (registered once per stream).
        consumer_name: String,
    },
}

/// The reader of one shard, by consumer kind.
enum ShardSource<K: KinesisApi> {
    Polling(Box<PollingReader<K>>),
    Efo(Box<EfoReader<K>>),
}

impl<K: KinesisApi> ShardSource<K> {
    async fn next(&mut self) -> Result<ReadOutcome, KinesisError> {
        match self {
            ShardSource::Polling(r) => r.next().await,
            ShardSource::Efo(r) => r.next().await,
        }
    }

    fn stats(&self) -> ReaderStats {
        match self {
            ShardSource::Polling(r) => r.stats().clone(),
            ShardSource::Efo(r) => r.stats(),
        }
    }

    fn mark_closed(&mut self) {
        if let ShardSource::Efo(r) = self {
            r.mark_closed();
        }
    }
}

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The checkpoint store failed in a way retrying cannot fix.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Kinesis failed in a way retrying cannot fix.
    #[error(transparent)]
    Kinesis(#[from] KinesisError),
}

/// The life of a shard in a worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Known, not started yet.
    #[default]
    Discovered,
    /// A parent has not been read to its end yet (DESIGN §4).
    WaitingForParents,
    /// Being read.
    Reading,
    /// Read to its end and checkpointed as finished.
    Finished,
    /// Another owner took it (checkpoint conflict); not read here any more.
    Fenced,
    /// Stopped with a final checkpoint (shutdown, idle, or record budget).
    Stopped,
}

/// What a shard is doing, for `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ShardStatus {
    /// What the shard is doing.
    pub state: ShardState,
    /// Last processed sequence number.
    pub position: Option<String>,
    /// MillisBehindLatest of the last page.
    pub millis_behind_latest: Option<i64>,
    /// The shard's watermark.
    pub watermark: Option<String>,
    /// Wall-clock time of the last successful checkpoint.
    pub last_checkpoint: Option<String>,
    /// The last checkpoint failure, until a checkpoint succeeds again.
    pub checkpoint_error: Option<String>,
    /// Records processed.
    pub records: u64,
    /// When the shard started (since the process started, in ms), for ordering assertions.
    pub started_at_ms: Option<u64>,
    /// When it finished (since the process started, in ms).
    pub finished_at_ms: Option<u64>,
}

/// State shared between the worker, its HTTP endpoints and tests.
#[derive(Debug)]
pub struct WorkerState {
    /// Metrics.
    pub metrics: WorkerMetrics,
    /// Per-shard status.
    pub shards: Mutex<BTreeMap<String, ShardStatus>>,
    /// When the worker started.
    pub started: Instant,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState { metrics: WorkerMetrics::new(), shards: Mutex::new(BTreeMap::new()), started: Instant::now() }
    }
}

impl WorkerState {
    fn update(&self, shard: &str, f: impl FnOnce(&mut ShardStatus)) {
        if let Ok(mut shards) = self.shards.lock() {
            f(shards.entry(shard.to_owned()).or_default());
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Ready unless a shard's checkpoints are failing.
    pub fn readiness(&self) -> Result<(), String> {
        let shards = self.shards.lock().map_err(|_| "status lock poisoned".to_owned())?;
        match shards.iter().find(|(_, s)| s.checkpoint_error.is_some()) {
            Some((id, s)) => {
                Err(format!("checkpoints of {id} are failing: {}", s.checkpoint_error.as_deref().unwrap_or("")))
            }
            None => Ok(()),
        }
    }

    /// The `/status` document.
    pub fn status_json(&self) -> serde_json::Value {
        let shards = self.shards.lock().map(|s| s.clone()).unwrap_or_default();
        let owned = shards.values().filter(|s| s.state == ShardState::Reading).count();
        serde_json::json!({ "owned_shards": owned, "shards": shards })
    }
}

impl crate::http::Endpoints for WorkerState {
    fn readiness(&self) -> Result<(), String> {
        WorkerState::readiness(self)
    }
    fn metrics(&self) -> String {
        self.metrics.render()
    }
    fn status(&self) -> serde_json::Value {
        self.status_json()
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// Shards read to their end.
    pub finished_shards: Vec<String>,
    /// Shards another owner took (checkpoint conflict).
    pub fenced_shards: Vec<String>,
    /// Record counts over all shards this run processed.
    pub counters: Counters,
}

/// How the coordinator tells shard tasks to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Run,
    /// Stop after a final checkpoint; with `close_windows`, emit every open window first.
    Stop {
        close_windows: bool,
    },
}

/// How a shard task ended.
#[derive(Debug)]
enum ShardExit {
    Finished,
    Fenced,
    Stopped,
}

struct Shared<K> {
    api: Arc<K>,
    options: RunOptions,
    config: Arc<EngineConfig>,
    store: CheckpointStore,
    sink: Sink,
    state: Arc<WorkerState>,
    /// Shards caught up (empty page, nothing behind) since this instant; cleared by records.
    caught_up_since: Mutex<HashMap<String, Instant>>,
    /// Record counts of this run over all shards.
    totals: Mutex<Counters>,
    /// Shards ListShards reported closed (an enhanced fan-out reader then drains them by polling).
    closed_shards: Mutex<HashSet<String>>,
    /// The enhanced fan-out consumer, when used.
    consumer_arn: Option<String>,
    /// Who this worker is, in its checkpoints.
    owner: Owner,
}

fn checkpoint_key(pipeline: &str, shard_id: &str) -> String {
    format!("{pipeline}/shards/{shard_id}.json")
}

fn wall_clock_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX))
}

/// Runs the worker until `shutdown` turns true (SIGTERM) or, with `stop_when_idle`, until every
/// shard has been caught up and quiet for that long.
pub async fn run_worker<K: KinesisApi>(
    api: Arc<K>,
    options: RunOptions,
    state: Arc<WorkerState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunSummary, RunError> {
    options.engine.validate().map_err(|e| RunError::Config(e.to_string()))?;
    if options.pipeline.is_empty() || options.pipeline.contains('/') {
        return Err(RunError::Config(format!(
            "pipeline name {:?} must be non-empty and without '/'",
            options.pipeline
        )));
    }
    let store = CheckpointStore::from_uri(&options.checkpoint_uri, &options.s3, options.checkpoint_retain).await?;
    let sink = Sink::open(&options.sink_uri, &options.opensearch, state.metrics.registry()).await?;
    let options_epoch = options.owner_epoch;
    let consumer_arn = match &options.consumer {
        ConsumerKind::Polling => None,
        ConsumerKind::EnhancedFanOut { consumer_name } => {
            Some(register_with_retry(api.as_ref(), &options.stream, consumer_name, &mut shutdown).await?)
        }
    };
    let shared = Arc::new(Shared {
        api,
        config: Arc::new(options.engine.clone()),
        options,
        store,
        sink,
        state,
        caught_up_since: Mutex::new(HashMap::new()),
        totals: Mutex::new(Counters::default()),
        closed_shards: Mutex::new(HashSet::new()),
        consumer_arn,
        owner: Owner::this_process(options_epoch),
    });
    let (control_tx, control_rx) = watch::channel(Control::Run);
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Result<ShardExit, RunError>)>();
    let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    // Shards not to start again in this run: fenced by another owner, or out of record budget.
    let mut parked: HashSet<String> = HashSet::new();
    let mut summary = RunSummary::default();
    let mut waiting = 0_usize;
    let mut discovery_backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut next_discovery = Instant::now();
    let mut stopping: Option<Control> = None;

    loop {
        if stopping.is_none() && Instant::now() >= next_discovery {
            match discover(&shared, &mut finished, &running, &parked).await {
                Ok((startable, blocked)) => {
                    if startable.is_empty() && running.is_empty() && shared.options.stop_after_records.is_some() {
                        tracing::info!("every shard spent its record budget or finished: stopping");
                        break;
                    }
                    discovery_backoff.reset();
                    waiting = blocked;
                    for shard in startable {
                        let task = ShardTask::start(shared.clone(), shard.clone(), control_rx.clone());
                        let exit = exit_tx.clone();
                        let id = shard.shard_id.clone();
                        running.insert(
                            id.clone(),
                            tokio::spawn(async move {
                                let result = task.await;
                                let _ = exit.send((id, result));
                            }),
                        );
                    }
                    shared.state.metrics.owned_shards.set(i64::try_from(running.len()).unwrap_or(i64::MAX));
                    next_discovery = Instant::now() + shared.options.shard_discovery_interval;
                }
                Err(e) => {
                    shared.state.metrics.kinesis_errors.with_label_values(&["ListShards", e.category()]).inc();
                    // Discovery always retries (the stream may not exist yet); permanent causes,
                    // such as missing permissions, are logged louder.
                    if e.is_retryable() {
                        tracing::warn!(error = %e, "shard discovery failed; retrying");
                    } else {
                        tracing::error!(error = %e, "shard discovery failed; retrying with back-off");
                    }
                    next_discovery = Instant::now() + discovery_backoff.next_delay().max(Duration::from_millis(100));
                }
            }
        }

        if let (None, Some(idle)) = (stopping, shared.options.stop_when_idle)
            && waiting == 0
            && !running.is_empty()
            && all_caught_up_for(&shared, &running, idle)
        {
            tracing::info!(?idle, "every shard caught up and quiet: closing windows and stopping");
            stopping = Some(Control::Stop { close_windows: true });
        }
        if let Some(control) = stopping {
            let _ = control_tx.send(control);
            if running.is_empty() {
                break;
            }
        }

        let tick = tokio::time::sleep(Duration::from_millis(100));
        tokio::select! {
            Some((id, result)) = exit_rx.recv() => {
                running.remove(&id);
                shared.state.metrics.owned_shards.set(i64::try_from(running.len()).unwrap_or(i64::MAX));
                match result {
                    Ok(ShardExit::Finished) => {
                        finished.insert(id.clone());
                        summary.finished_shards.push(id);
                        // Its children may start now.
                        next_discovery = Instant::now();
                    }
                    Ok(ShardExit::Fenced) => {
                        // Another owner has it: never restart it here.
                        parked.insert(id.clone());
                        summary.fenced_shards.push(id);
                    }
                    Ok(ShardExit::Stopped) => {
                        if stopping.is_none() {
                            // Its record budget is spent (`stop_after_records`).
                            parked.insert(id);
                        }
                    }
                    Err(e) => {
                        let _ = control_tx.send(Control::Stop { close_windows: false });
                        for (_, task) in running.drain() {
                            let _ = task.await;
                        }
                        return Err(e);
                    }
                }
            }
            changed = shutdown.changed(), if stopping.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    tracing::info!("shutting down: final checkpoints");
                    stopping = Some(Control::Stop { close_windows: false });
                }
            }
            _ = tick => {}
        }
    }
    summary.counters = shared.totals.lock().map(|c| c.clone()).unwrap_or_default();
    Ok(summary)
}

/// Registers the enhanced fan-out consumer, retrying transient failures until shutdown.
async fn register_with_retry<K: KinesisApi>(
    api: &K,
    stream: &str,
    name: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<String, RunError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match api.register_consumer(stream, name).await {
            Ok(arn) => return Ok(arn),
            Err(e) if e.is_retryable() && !*shutdown.borrow() => {
                tracing::warn!(error = %e, "registering the enhanced fan-out consumer failed; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn all_caught_up_for<K>(
    shared: &Shared<K>,
    running: &HashMap<String, tokio::task::JoinHandle<()>>,
    idle: Duration,
) -> bool {
    let Ok(caught_up) = shared.caught_up_since.lock() else { return false };
    running.keys().all(|id| caught_up.get(id).is_some_and(|since| since.elapsed() >= idle))
}

/// Lists shards and returns those that can start now, and how many wait for their parents.
async fn discover<K: KinesisApi>(
    shared: &Shared<K>,
    finished: &mut HashSet<String>,
    running: &HashMap<String, tokio::task::JoinHandle<()>>,
    parked: &HashSet<String>,
) -> Result<(Vec<ShardInfo>, usize), KinesisError> {
    let shards = shared.api.list_shards(&shared.options.stream).await?;
    let listed: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    if let Ok(mut closed) = shared.closed_shards.lock() {
        closed.extend(shards.iter().filter(|s| !s.is_open()).map(|s| s.shard_id.clone()));
    }
    // A shard is finished when this run finished it or its checkpoint says so (read once here,
    // so a parent finished by an earlier run or another worker is seen too).
    for shard in &shards {
        let id = shard.shard_id.as_str();
        if finished.contains(id) || running.contains_key(id) {
            continue;
        }
        if checkpoint_finished(shared, id).await {
            finished.insert(id.to_owned());
            shared.state.update(id, |s| s.state = ShardState::Finished);
        }
    }
    let mut startable = Vec::new();
    let mut waiting = 0;
    for shard in &shards {
        let id = shard.shard_id.as_str();
        if running.contains_key(id) || finished.contains(id) || parked.contains(id) {
            continue;
        }
        // Parent before child (DESIGN §4): a parent no longer listed has expired from the stream.
        let parents_done = shard.parents().all(|p| !listed.contains(p) || finished.contains(p));
        if parents_done {
            startable.push(shard.clone());
        } else {
            waiting += 1;
            shared.state.update(id, |s| s.state = ShardState::WaitingForParents);
        }
    }
    Ok((startable, waiting))
}

/// Attempts to claim a shard whose checkpoint keeps changing under us before giving up.
const CLAIM_ATTEMPTS: u32 = 5;

/// A shard's checkpointed processor, position and version, or a fresh start.
async fn load_checkpoint<K>(
    shared: &Shared<K>,
    shard_id: &str,
) -> Result<(ShardProcessor, Position, Option<ETag>), RunError> {
    match shared.store.get(&checkpoint_key(&shared.options.pipeline, shard_id)).await? {
        Some((bytes, etag)) => {
            let checkpoint = ShardCheckpoint::from_bytes(&bytes)?;
            Ok((checkpoint.restore(shared.config.clone())?, checkpoint.position, Some(etag)))
        }
        None => Ok((ShardProcessor::new(shared.config.clone()), Position::Start, None)),
    }
}

/// Whether the shard's checkpoint marks it finished. A store failure counts as "not yet": the
/// next discovery asks again.
async fn checkpoint_finished<K>(shared: &Shared<K>, shard_id: &str) -> bool {
    match shared.store.get(&checkpoint_key(&shared.options.pipeline, shard_id)).await {
        Ok(Some((bytes, _))) => ShardCheckpoint::from_bytes(&bytes).is_ok_and(|c| c.position == Position::Finished),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(shard = shard_id, error = %e, "failed to read a checkpoint during discovery");
            false
        }
    }
}

/// One shard's reading loop.
struct ShardTask<K> {
    shared: Arc<Shared<K>>,
    shard_id: String,
    processor: ShardProcessor,
    position: Position,
    etag: Option<ETag>,
    /// Inside a KPL aggregate read again after a restart: user records up to this index of
    /// this sequence number were already processed.
    skip: Option<(String, u64)>,
    /// User records this task may still process (`RunOptions::stop_after_records`).
    budget: Option<u64>,
    reported: Counters,
}

impl<K: KinesisApi> ShardTask<K> {
    async fn start(
        shared: Arc<Shared<K>>,
        shard: ShardInfo,
        control: watch::Receiver<Control>,
    ) -> Result<ShardExit, RunError> {
        // Claim the shard (DESIGN §6–§7): write its checkpoint back, conditional on the version just
        // read. From then on a previous owner still running is fenced at its next checkpoint.
        let mut attempt = 0;
        let (processor, position, etag) = loop {
            let (processor, position, etag) = load_checkpoint(&shared, &shard.shard_id).await?;
            if position == Position::Finished {
                return Ok(ShardExit::Finished);
            }
            let checkpoint =
                ShardCheckpoint::capture(&shard.shard_id, position.clone(), &shared.owner, &processor, &shared.config);
            let key = checkpoint_key(&shared.options.pipeline, &shard.shard_id);
            let precondition = etag.map_or(Precondition::Absent, Precondition::Matches);
            match shared.store.put(&key, &checkpoint.to_bytes()?, &precondition).await {
                Ok(claimed) => break (processor, position, Some(claimed)),
                Err(CheckpointError::Conflict { .. }) if attempt < CLAIM_ATTEMPTS => {
                    // The previous owner wrote in between: read its newer state and claim that.
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(..100))).await;
                }
                Err(CheckpointError::Conflict { .. }) => {
                    tracing::warn!(shard = %shard.shard_id, "could not claim the shard: another owner keeps writing it");
                    shared.state.update(&shard.shard_id, |s| s.state = ShardState::Fenced);
                    return Ok(ShardExit::Fenced);
                }
                Err(e) => return Err(e.into()),
            }
        };
        let Some((start, skip_upto)) = resume_position(&position, &shared.options.start) else {
            return Ok(ShardExit::Finished);
        };
        let skip = match (&position, skip_upto) {
            (Position::Sequence { sequence_number, .. }, Some(done)) => Some((sequence_number.clone(), done)),
            _ => None,
        };
        tracing::info!(shard = %shard.shard_id, ?start, "starting shard");
        let reported = processor.counters().clone();
        let budget = shared.options.stop_after_records;
        let mut task =
            ShardTask { shared, shard_id: shard.shard_id.clone(), processor, position, etag, skip, reported, budget };
        let elapsed = task.shared.state.elapsed_ms();
        task.shared.state.update(&task.shard_id, |s| {
            s.state = ShardState::Reading;
            s.started_at_ms = Some(elapsed);
        });
        let (api, options) = (task.shared.api.clone(), &task.shared.options);
        let reader = match &task.shared.consumer_arn {
            None => ShardSource::Polling(Box::new(PollingReader::new(
                api,
                &options.stream,
                &shard.shard_id,
                start,
                options.polling.clone(),
            ))),
            Some(arn) => ShardSource::Efo(Box::new(EfoReader::new(
                api,
                &options.stream,
                &shard.shard_id,
                arn,
                start,
                options.polling.clone(),
            ))),
        };
        task.read(reader, control).await
    }

    async fn read(
        &mut self,
        mut reader: ShardSource<K>,
        mut control: watch::Receiver<Control>,
    ) -> Result<ShardExit, RunError> {
        let interval = self.shared.options.checkpoint_interval;
        let mut next_checkpoint = Instant::now() + interval;
        let mut seen = ReaderStats::default();
        loop {
            if self.shared.closed_shards.lock().is_ok_and(|closed| closed.contains(&self.shard_id)) {
                reader.mark_closed();
            }
            let requested = *control.borrow_and_update();
            if let Control::Stop { close_windows } = requested {
                if close_windows {
                    let closed = self.processor.take_all();
                    self.emit(&closed).await?;
                }
                return match self.checkpoint().await? {
                    true => {
                        self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Stopped);
                        Ok(ShardExit::Stopped)
                    }
                    false => Ok(ShardExit::Fenced),
                };
            }
            if Instant::now() >= next_checkpoint {
                if !self.checkpoint().await? {
                    return Ok(ShardExit::Fenced);
                }
                next_checkpoint = Instant::now() + interval;
            }
            let outcome = tokio::select! {
                outcome = reader.next() => outcome,
                // A stop request interrupts an idle wait (the read is retried from the same place).
                _ = control.changed() => continue,
            };
            self.publish_reader_stats(&reader.stats(), &mut seen);
            match outcome {
                Ok(ReadOutcome::Records { records, millis_behind_latest }) => {
                    self.note_progress(records.is_empty(), millis_behind_latest);
                    let metrics = &self.shared.state.metrics;
                    metrics.records_read.with_label_values(&[&self.shard_id]).inc_by(records.len() as u64);
                    let bytes: usize = records.iter().map(|r| r.data.len()).sum();
                    metrics.bytes_read.with_label_values(&[&self.shard_id]).inc_by(bytes as u64);
                    let mut within_budget = true;
                    for record in &records {
                        within_budget = self.process_record(&record.sequence_number, &record.data, record.arrival);
                        if !within_budget {
                            break;
                        }
                    }
                    let closed = self.processor.take_closed();
                    self.emit(&closed).await?;
                    self.report();
                    if !within_budget {
                        tracing::info!(shard = %self.shard_id, position = ?self.position, "record budget spent: stopping the shard");
                        return match self.checkpoint().await? {
                            true => Ok(ShardExit::Stopped),
                            false => Ok(ShardExit::Fenced),
                        };
                    }
                }
                Ok(ReadOutcome::End { children }) => {
                    tracing::info!(shard = %self.shard_id, ?children, "shard read to its end");
                    let closed = self.processor.take_all();
                    self.emit(&closed).await?;
                    self.position = Position::Finished;
                    self.report();
                    if !self.checkpoint().await? {
                        return Ok(ShardExit::Fenced);
                    }
                    let elapsed = self.shared.state.elapsed_ms();
                    self.shared.state.update(&self.shard_id, |s| {
                        s.state = ShardState::Finished;
                        s.finished_at_ms = Some(elapsed);
                    });
                    if let Ok(mut caught_up) = self.shared.caught_up_since.lock() {
                        caught_up.remove(&self.shard_id);
                    }
                    return Ok(ShardExit::Finished);
                }
                Err(e) => {
                    // Not retryable by the reader (e.g. access denied): surface it and keep trying
                    // at the reader's back-off pace; the operator sees it in metrics and status.
                    self.shared.state.metrics.kinesis_errors.with_label_values(&["GetRecords", e.category()]).inc();
                    tracing::warn!(shard = %self.shard_id, error = %e, "reading the shard failed");
                    if matches!(e, KinesisError::NotFound { .. }) {
                        return Err(e.into());
                    }
                }
            }
        }
    }

    /// Publishes what the reader counted since the last look.
    fn publish_reader_stats(&self, now: &ReaderStats, seen: &mut ReaderStats) {
        let metrics = &self.shared.state.metrics;
        let operation = if self.shared.consumer_arn.is_some() { "SubscribeToShard" } else { "GetRecords" };
        if now.calls > seen.calls {
            metrics.get_records_seconds.with_label_values(&[&self.shard_id]).observe(now.last_call.as_secs_f64());
        }
        for (category, n) in [
            ("throttled", now.throttles.saturating_sub(seen.throttles)),
            ("transient", now.transient_errors.saturating_sub(seen.transient_errors)),
            ("expired_iterator", now.expired_iterators.saturating_sub(seen.expired_iterators)),
        ] {
            if n > 0 {
                metrics.kinesis_errors.with_label_values(&[operation, category]).inc_by(n);
            }
        }
        *seen = now.clone();
    }

    fn note_progress(&self, empty: bool, millis_behind_latest: Option<i64>) {
        let caught_up = empty && millis_behind_latest.is_none_or(|m| m == 0);
        if let Ok(mut map) = self.shared.caught_up_since.lock() {
            if caught_up {
                map.entry(self.shard_id.clone()).or_insert_with(Instant::now);
            } else {
                map.remove(&self.shard_id);
            }
        }
        if let Some(m) = millis_behind_latest {
            self.shared.state.metrics.millis_behind_latest.with_label_values(&[&self.shard_id]).set(m);
        }
        self.shared.state.update(&self.shard_id, |s| s.millis_behind_latest = millis_behind_latest);
    }

    /// Processes one Kinesis record: a plain event or a KPL aggregate of events.
    /// Processes one Kinesis record: a plain event or a KPL aggregate of events. Returns `false`
    /// when the record budget ran out inside it (the position then points into the aggregate).
    fn process_record(&mut self, sequence_number: &str, data: &[u8], arrival: Option<Millis>) -> bool {
        let at = |sub_sequence| Position::Sequence { sequence_number: sequence_number.to_owned(), sub_sequence };
        match kpl::deaggregate(data) {
            Ok(Deaggregated::Plain(payload)) => {
                self.process_payload(payload, arrival);
            }
            Ok(Deaggregated::Aggregated(users)) => {
                let skip_upto = match &self.skip {
                    Some((seq, done)) if seq == sequence_number => Some(*done),
                    _ => None,
                };
                let last = users.len().saturating_sub(1) as u64;
                for (index, user) in users.iter().enumerate() {
                    let index = index as u64;
                    if skip_upto.is_some_and(|done| index <= done) {
                        continue;
                    }
                    self.process_payload(user.data, arrival);
                    if index < last && self.budget_exhausted() {
                        self.position = at(Some(index));
                        return false;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(shard = %self.shard_id, sequence_number, error = %e, "corrupt KPL aggregate skipped");
                self.processor.process_invalid(InvalidReason::NotJson);
            }
        }
        self.skip = None;
        self.position = at(None);
        !self.budget_exhausted()
    }

    /// Counts one user record against `stop_after_records`; true once the budget is spent.
    fn budget_exhausted(&mut self) -> bool {
        match &mut self.budget {
            Some(0) => true,
            Some(left) => {
                *left -= 1;
                *left == 0
            }
            None => false,
        }
    }

    fn process_payload(&mut self, payload: &[u8], arrival: Option<Millis>) {
        match parse_json_record(payload) {
            Ok(event) => {
                self.processor.process(&event, arrival);
                if let Event::Watermark(_) = event {
                    tracing::trace!(shard = %self.shard_id, "watermark event");
                }
            }
            Err(reason) => self.processor.process_invalid(reason),
        }
    }

    /// Writes the documents of closed windows to the sink.
    async fn emit(&self, closed: &crate::analysis::ClosedWindows) -> Result<(), RunError> {
        if closed.is_empty() {
            return Ok(());
        }
        let docs = documents_for(&self.shared.options.pipeline, &self.shard_id, &self.shared.config, closed, true);
        let count = docs.len() as u64;
        self.shared.sink.write(docs).await?;
        self.shared.state.metrics.sink_documents.with_label_values(&[self.shared.sink.kind()]).inc_by(count);
        Ok(())
    }

    /// Flushes the sink, then writes the checkpoint. `Ok(false)`: fenced by another owner.
    async fn checkpoint(&mut self) -> Result<bool, RunError> {
        let started = Instant::now();
        self.shared.sink.flush().await?;
        let checkpoint = ShardCheckpoint::capture(
            &self.shard_id,
            self.position.clone(),
            &self.shared.owner,
            &self.processor,
            &self.shared.config,
        );
        let bytes = checkpoint.to_bytes()?;
        let key = checkpoint_key(&self.shared.options.pipeline, &self.shard_id);
        let precondition = self.etag.clone().map_or(Precondition::Absent, Precondition::Matches);
        let metrics = &self.shared.state.metrics;
        match self.shared.store.put(&key, &bytes, &precondition).await {
            Ok(etag) => {
                self.etag = Some(etag);
                metrics
                    .checkpoint_seconds
                    .with_label_values(&[self.shared.store.kind()])
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .checkpoint_bytes
                    .with_label_values(&[&self.shard_id])
                    .set(i64::try_from(bytes.len()).unwrap_or(0));
                let now = crate::time::format_timestamp(wall_clock_millis());
                let position = match &self.position {
                    Position::Sequence { sequence_number, .. } => Some(sequence_number.clone()),
                    _ => None,
                };
                self.shared.state.update(&self.shard_id, |s| {
                    s.last_checkpoint = Some(now);
                    s.checkpoint_error = None;
                    s.position = position;
                });
                Ok(true)
            }
            Err(CheckpointError::Conflict { .. }) => {
                metrics.checkpoint_failures.with_label_values(&["conflict"]).inc();
                tracing::warn!(shard = %self.shard_id, "checkpoint fenced: another worker owns the shard; stopping it");
                self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Fenced);
                Ok(false)
            }
            Err(e) => {
                // Keep the in-memory state and try again at the next interval.
                metrics.checkpoint_failures.with_label_values(&["io"]).inc();
                tracing::warn!(shard = %self.shard_id, error = %e, "checkpoint failed; will retry");
                let message = e.to_string();
                self.shared.state.update(&self.shard_id, |s| s.checkpoint_error = Some(message));
                Ok(true)
            }
        }
    }

    /// Publishes counter deltas and the watermark.
    fn report(&mut self) {
        let now = self.processor.counters().clone();
        let delta = now.since(&std::mem::replace(&mut self.reported, now.clone()));
        if let Ok(mut totals) = self.shared.totals.lock() {
            totals.add(&delta);
        }
        let metrics = &self.shared.state.metrics;
        let aggregated = delta.trips.saturating_sub(delta.outside_region + delta.late);
        metrics.records.with_label_values(&["aggregated"]).inc_by(aggregated);
        metrics.records.with_label_values(&["outside_region"]).inc_by(delta.outside_region);
        metrics.records.with_label_values(&["late"]).inc_by(delta.late);
        metrics.records.with_label_values(&["watermark"]).inc_by(delta.watermarks);
        for reason in InvalidReason::ALL {
            let n = delta.invalid[reason.index()];
            if n > 0 {
                metrics.records.with_label_values(&["invalid"]).inc_by(n);
                metrics.invalid.with_label_values(&[reason.as_str()]).inc_by(n);
            }
        }
        let watermark = self.processor.watermark();
        if let Some(w) = watermark {
            metrics.watermark_lag_seconds.with_label_values(&[&self.shard_id]).set((wall_clock_millis() - w) / 1000);
        }
        let records = now.records;
        self.shared.state.update(&self.shard_id, |s| {
            s.records = records;
            s.watermark = watermark.map(crate::time::format_timestamp);
        });
    }
}

//! `taxi-worker run`: read the shards of a Kinesis stream, process them with the engine, write
//! per-shard partial documents to the sink and checkpoint each shard.
//!
//! A coordinator discovers shards (ListShards every `shard_discovery_interval`, and at once when a
//! shard ends), starts one task per owned shard whose parents are finished, and stops them on
//! shutdown or once every shard stayed caught up for `stop_when_idle`. Each shard task owns its
//! reader, its [`ShardProcessor`] and its checkpoint; the order per shard is: process records →
//! write the documents of closed windows → flush the sink → write the checkpoint (fenced by ETag).
//!
//! # Ownership and handoff
//!
//! With [`AssignmentSource::All`] the worker owns every shard. Otherwise it owns the shards an
//! assignment gives its ordinal, and owns nothing until it has seen one. Each running shard has
//! its own control channel; on a new epoch E the coordinator sends [`Control::Release`] to every
//! running shard it no longer owns: the task flushes the sink, writes a final checkpoint marked
//! released at E (open windows stay in its partials) and exits. Newly owned shards start through
//! the usual parent-before-child gating; their task claims the checkpoint at once when nobody
//! holds it (or it is released), and otherwise re-reads it every [`RELEASE_POLL_INTERVAL`] until it
//! is released or the takeover timeout has passed ([`decide_claim`]). Shards that keep their owner
//! are not touched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::handoff::{
    AssignmentSource, ClaimDecision, Claimant, EpochPlan, HandoffOutcome, Holder, RELEASE_POLL_INTERVAL, SourceError,
    decide_claim, plan_epoch,
};
use crate::metrics::WorkerMetrics;
use taxi_core::assignment::{Assignment, startable};
use taxi_core::checkpoint::{CheckpointError, Owner, Position, ShardCheckpoint, child_of};
use taxi_core::config::EngineConfig;
use taxi_core::document::documents_for;
use taxi_core::event::{Event, InvalidReason, Millis};
use taxi_core::identity::PipelineId;
use taxi_core::input::parse_json_record;
use taxi_core::settings::ConsumerKind;
use taxi_core::shard::{Counters, ShardProcessor};
use taxi_core::start_position::{InitialPosition, initial_position};
use taxi_core::status::{ShardState, ShardStatus, WorkerStatus};
use taxi_core::time::wall_clock_millis;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, KinesisError};
use taxi_io::kinesis::efo::EfoReader;
use taxi_io::kinesis::kpl::{self, Deaggregated};
use taxi_io::kinesis::reader::{PollingConfig, PollingReader, ReadOutcome, ReaderStats, resume_position};
use taxi_io::retry::{Backoff, BackoffPolicy, Jitter};
use taxi_io::sink::dead_letter::DeadLetterStore;
use taxi_io::sink::opensearch::OpenSearchSettings;
use taxi_io::sink::redrive::redrive_periodically;
use taxi_io::sink::{Sink, SinkError};
use taxi_io::store::{CheckpointStore, ETag, Precondition, S3Settings};

/// Everything `taxi-worker run` needs besides the Kinesis client.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Pipeline name: with `namespace`, its identity in document ids and checkpoint keys.
    pub pipeline: String,
    /// The pipeline's Kubernetes namespace (`None` outside Kubernetes); see [`PipelineId`].
    pub namespace: Option<String>,
    /// The stream.
    pub stream: String,
    /// Where a shard with nothing processed yet starts; resolved once, at its first claim.
    pub start: InitialPosition,
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
    /// Exit once every shard has been caught up and quiet this long, writing open windows as
    /// not-final documents that a later run completes (they stay in the checkpoints).
    pub stop_when_idle: Option<Duration>,
    /// Polling settings.
    pub polling: PollingConfig,
    /// Analyses and event time.
    pub engine: EngineConfig,
    /// Assignment epoch written into checkpoints with [`AssignmentSource::All`]; with an
    /// assignment, a claim writes the epoch of the assignment under which the shard starts.
    pub owner_epoch: u64,
    /// Which shards this worker owns: all of them, or those an assignment gives [`Self::ordinal`].
    pub assignment: AssignmentSource,
    /// This worker's ordinal in the assignment (required unless `assignment` is `All`).
    pub ordinal: Option<u32>,
    /// How long a new owner waits for the previous owner's release before taking a shard over.
    pub takeover_timeout: Duration,
    /// How shards are consumed.
    pub consumer: ConsumerKind,
    /// Stop each shard (with a checkpoint) after processing this many user records in this run,
    /// even inside a KPL aggregate: for tests and bounded batch runs.
    pub stop_after_records: Option<u64>,
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
    /// The assignment source could not be started, or stopped.
    #[error(transparent)]
    Assignment(#[from] SourceError),
    /// A run to idle ended while these shards had failed (shard id, last error); a worker that
    /// runs until stopped retries them instead, however long it takes.
    #[error("{} shard(s) failed: {}", .0.len(), .0.iter().map(|(id, e)| format!("{id}: {e}")).collect::<Vec<_>>().join("; "))]
    ShardsFailed(Vec<(String, String)>),
}

impl RunError {
    /// The bounded reason label of `taxi_shard_failures_total` for a shard that failed with this.
    pub fn failure_reason(&self) -> &'static str {
        match self {
            RunError::Checkpoint(CheckpointError::SettingsChanged { .. }) => "settings_changed",
            RunError::Checkpoint(
                CheckpointError::Corrupt { .. }
                | CheckpointError::Decode(_)
                | CheckpointError::FormatVersion { .. }
                | CheckpointError::UnknownAirport(_),
            ) => "corrupt_checkpoint",
            RunError::Checkpoint(_) => "checkpoint_store",
            RunError::Kinesis(_) => "kinesis",
            RunError::Sink(_) => "sink",
            RunError::Config(_) | RunError::Assignment(_) | RunError::ShardsFailed(_) => "other",
        }
    }
}

/// The assignment a worker follows, for `/status` and `/readyz`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AssignmentStatus {
    /// This worker's ordinal (none with `--assignment all`).
    pub ordinal: Option<u32>,
    /// Epoch of the assignment in effect (none before the first).
    pub epoch: Option<u64>,
    /// Why the worker owns nothing yet: it waits for a first assignment from this source.
    pub awaiting: Option<String>,
}

/// State shared between the worker, its HTTP endpoints and tests.
#[derive(Debug)]
pub struct WorkerState {
    /// Metrics.
    pub metrics: WorkerMetrics,
    /// Per-shard status.
    pub shards: Mutex<BTreeMap<String, ShardStatus>>,
    /// The assignment in effect.
    pub assignment: Mutex<AssignmentStatus>,
    /// When the worker started.
    pub started: Instant,
    /// The pipeline's dead letters, once the run opened its store.
    pub dead_letters: std::sync::OnceLock<DeadLetterStore>,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState {
            metrics: WorkerMetrics::new(),
            shards: Mutex::new(BTreeMap::new()),
            assignment: Mutex::new(AssignmentStatus::default()),
            started: Instant::now(),
            dead_letters: std::sync::OnceLock::new(),
        }
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

    /// Epoch of the assignment in effect, if the worker follows one.
    fn assignment_epoch(&self) -> Option<u64> {
        self.assignment.lock().ok().and_then(|a| a.epoch)
    }

    fn update_assignment(&self, f: impl FnOnce(&mut AssignmentStatus)) {
        if let Ok(mut assignment) = self.assignment.lock() {
            f(&mut assignment);
        }
    }

    /// Ready unless the worker still waits for its first assignment, refused documents cannot be
    /// stored as dead letters, or a shard's checkpoints are failing.
    pub fn readiness(&self) -> Result<(), String> {
        let awaiting = self.assignment.lock().map_err(|_| "status lock poisoned".to_owned())?.awaiting.clone();
        if let Some(source) = awaiting {
            return Err(format!("owns no shard yet: waiting for a first shard assignment from {source}"));
        }
        if let Some(error) = self.dead_letters.get().and_then(DeadLetterStore::store_error) {
            return Err(format!("refused documents cannot be stored as dead letters: {error}"));
        }
        let shards = self.shards.lock().map_err(|_| "status lock poisoned".to_owned())?;
        match shards.iter().find(|(_, s)| s.checkpoint_error.is_some()) {
            Some((id, s)) => {
                Err(format!("checkpoints of {id} are failing: {}", s.checkpoint_error.as_deref().unwrap_or("")))
            }
            None => Ok(()),
        }
    }

    /// The `/status` document.
    pub fn status(&self) -> WorkerStatus {
        let shards = self.shards.lock().map(|s| s.clone()).unwrap_or_default();
        let owned = shards.values().filter(|s| s.state == ShardState::Reading).count();
        let assignment = self.assignment.lock().map(|a| a.clone()).unwrap_or_default();
        WorkerStatus {
            owned_shards: u64::try_from(owned).unwrap_or(u64::MAX),
            dead_letters: self.dead_letters.get().map(|d| u64::try_from(d.count()).unwrap_or(u64::MAX)),
            ordinal: assignment.ordinal,
            assignment_epoch: assignment.epoch,
            shards,
        }
    }
}

impl taxi_io::http::Endpoints for WorkerState {
    fn readiness(&self) -> Result<(), String> {
        WorkerState::readiness(self)
    }
    fn metrics(&self) -> String {
        self.metrics.render()
    }
    fn status(&self) -> serde_json::Value {
        serde_json::to_value(WorkerState::status(self)).unwrap_or_default()
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

/// What the coordinator asks of one shard task (each running shard has its own channel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Run,
    /// Stop after a final checkpoint. With `emit_open_windows`, first write every open window as
    /// a not-final document; the windows stay open in the checkpoint, so a later run completes
    /// them and their final documents replace these.
    Stop {
        emit_open_windows: bool,
    },
    /// The assignment of `epoch` moved the shard away: flush, write a final checkpoint marked
    /// released at `epoch` (open windows stay in it) and exit.
    Release {
        epoch: u64,
    },
}

/// How a shard task ended.
#[derive(Debug)]
enum ShardExit {
    Finished,
    Fenced,
    Stopped,
    /// Given up to its new owner (or never claimed: released while waiting).
    Released,
}

/// Under which assignment a shard task starts.
#[derive(Clone, Copy, Debug)]
struct Grant {
    /// Written into the checkpoint as the owner epoch.
    epoch: u64,
    /// When the assignment granting the shard was seen: the start of a handoff pause and of the
    /// takeover timeout.
    requested_at: Instant,
    /// Wait for the previous owner's release before claiming (assignments); `all` claims at once.
    wait_for_release: bool,
}

/// Which shards this worker may run.
enum Ownership {
    /// Every shard, at a fixed epoch.
    All { epoch: u64 },
    /// The shards an assignment gives `ordinal`.
    Assigned {
        ordinal: u32,
        assignments: watch::Receiver<Option<Assignment>>,
        /// The epoch in effect; `None` until the first assignment.
        plan: Option<EpochPlan>,
        /// When each shard granted by the current epoch (and not started yet) was granted.
        granted_at: HashMap<String, Instant>,
    },
}

impl Ownership {
    fn owns(&self, shard: &str) -> bool {
        match self {
            Ownership::All { .. } => true,
            Ownership::Assigned { plan, .. } => plan.as_ref().is_some_and(|p| p.owned.contains(shard)),
        }
    }

    fn epoch(&self) -> u64 {
        match self {
            Ownership::All { epoch } => *epoch,
            Ownership::Assigned { plan, .. } => plan.as_ref().map_or(0, |p| p.epoch),
        }
    }

    /// Whether the worker knows what it owns (with an assignment: once it has seen one).
    fn settled(&self) -> bool {
        match self {
            Ownership::All { .. } => true,
            Ownership::Assigned { plan, .. } => plan.is_some(),
        }
    }

    /// The grant under which `shard` starts now.
    fn grant(&mut self, shard: &str) -> Grant {
        let now = Instant::now();
        match self {
            Ownership::All { epoch } => Grant { epoch: *epoch, requested_at: now, wait_for_release: false },
            Ownership::Assigned { plan, granted_at, .. } => Grant {
                epoch: plan.as_ref().map_or(0, |p| p.epoch),
                requested_at: granted_at.remove(shard).unwrap_or(now),
                wait_for_release: true,
            },
        }
    }

    /// A new assignment, if one arrived since the last call: the plan for its epoch, diffed against
    /// the shards in `running`. `Err` when the source is gone.
    fn next_plan<'a>(&mut self, running: impl IntoIterator<Item = &'a str>) -> Result<Option<&EpochPlan>, SourceError> {
        let Ownership::Assigned { ordinal, assignments, plan, granted_at } = self else { return Ok(None) };
        // `assignment_changed` marks values seen, so compare epochs rather than ask `has_changed`.
        assignments.has_changed().map_err(|_| SourceError::Ended)?;
        let current = plan.as_ref().map(|p| p.epoch);
        let newer = assignments.borrow_and_update().as_ref().filter(|a| current.is_none_or(|e| a.epoch > e)).cloned();
        let Some(assignment) = newer else { return Ok(None) };
        let previously_owned = plan.take().map(|p| p.owned).unwrap_or_default();
        let next = plan_epoch(&assignment, *ordinal, &previously_owned, running);
        let now = Instant::now();
        granted_at.retain(|shard, _| next.owned.contains(shard));
        for shard in &next.granted {
            granted_at.insert(shard.clone(), now);
        }
        Ok(Some(plan.insert(next)))
    }
}

/// Failed shards, each started again after its own back-off: one shard's fault never stops the
/// worker or its other shards.
#[derive(Default)]
struct Retries {
    shards: HashMap<String, Retry>,
}

struct Retry {
    /// Not started again before this instant.
    at: Instant,
    backoff: Backoff,
    error: String,
}

impl Retries {
    /// First and longest wait before a failed shard is started again.
    const FIRST: Duration = Duration::from_secs(1);
    const LONGEST: Duration = Duration::from_secs(60);

    /// Records a failure of `shard`; returns when it may start again. A shard that ran for longer
    /// than the longest wait since its last failure starts its back-off afresh.
    fn failed(&mut self, shard: &str, error: String) -> Instant {
        let now = Instant::now();
        let retry = self.shards.entry(shard.to_owned()).or_insert_with(|| Retry {
            at: now,
            backoff: Backoff::new(BackoffPolicy::new(Self::FIRST, Self::LONGEST, Jitter::Full)),
            error: String::new(),
        });
        if now.saturating_duration_since(retry.at) > Self::LONGEST {
            retry.backoff.reset();
        }
        retry.at = now + retry.backoff.next_delay();
        retry.error = error;
        retry.at
    }

    /// Whether `shard` is waiting for its retry.
    fn waiting(&self, shard: &str) -> bool {
        self.shards.get(shard).is_some_and(|r| r.at > Instant::now())
    }

    /// Forgets `shard` after it ended well.
    fn succeeded(&mut self, shard: &str) {
        self.shards.remove(shard);
    }

    /// Shards whose last run failed, with the error, by shard id.
    fn failures(&self) -> Vec<(String, String)> {
        let mut failures: Vec<_> = self.shards.iter().map(|(id, r)| (id.clone(), r.error.clone())).collect();
        failures.sort();
        failures
    }
}

/// A running shard task and its control channel.
struct Running {
    task: tokio::task::JoinHandle<()>,
    control: watch::Sender<Control>,
}

struct Shared<K> {
    api: Arc<K>,
    /// The pipeline's key in checkpoints and documents ([`PipelineId::key`], or the legacy one).
    identity: String,
    options: RunOptions,
    config: Arc<EngineConfig>,
    store: CheckpointStore,
    sink: Arc<Sink>,
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

/// Time between two passes that re-deliver dead letters (the first runs at start).
const DEAD_LETTER_REDRIVE_INTERVAL: Duration = Duration::from_secs(60);

/// The wait between attempts of a control call that must eventually succeed: listing the shards,
/// registering the EFO consumer, writing a finished shard's checkpoint.
const CONTROL_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(10), Jitter::Full);

fn checkpoint_key(pipeline: &str, shard_id: &str) -> String {
    format!("{pipeline}/shards/{shard_id}.json")
}

/// The key the pipeline's state lives under: [`PipelineId::key`], except for a pipeline whose
/// checkpoints were all written before namespaces were part of the identity. That one keeps its
/// layout (moving the checkpoints would also change every document id, and the old documents
/// would count twice next to the new ones), and says so.
async fn key_in_use(store: &CheckpointStore, id: &PipelineId) -> Result<String, CheckpointError> {
    let Some(legacy) = id.legacy() else { return Ok(id.key()) };
    if !store.list(&format!("{}/shards", id.key())).await?.is_empty()
        || store.list(&format!("{}/shards", legacy.key())).await?.is_empty()
    {
        return Ok(id.key());
    }
    tracing::warn!(
        pipeline = %id,
        legacy = %legacy,
        "checkpoints of this pipeline exist only under its name without the namespace, as written before \
         namespaces were part of a pipeline's identity: this pipeline goes on using them and its document ids. \
         A pipeline of the same name in another namespace would share them; give one of them another name, \
         or delete the old checkpoints to start this one afresh under its namespace"
    );
    Ok(legacy.key())
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
    let ordinal = match (&options.assignment, options.ordinal) {
        (AssignmentSource::All, _) => None,
        (_, Some(ordinal)) => Some(ordinal),
        (source, None) => {
            return Err(RunError::Config(format!("--assignment {source} needs the worker's ordinal (--ordinal N)")));
        }
    };
    let store = CheckpointStore::from_uri(&options.checkpoint_uri, &options.s3, options.checkpoint_retain).await?;
    let identity = key_in_use(&store, &PipelineId::new(options.namespace.as_deref(), &options.pipeline)).await?;
    let dead_letters = DeadLetterStore::new(store.clone(), &identity, state.metrics.sink_dead_letters.clone());
    let _ = state.dead_letters.set(dead_letters.clone());
    let sink = Arc::new(
        Sink::open(&options.sink_uri, &options.opensearch, state.metrics.registry(), dead_letters.clone()).await?,
    );
    // Re-delivers dead letters at start and then periodically; aborted when the run ends.
    let mut background = tokio::task::JoinSet::new();
    let (passes, redrive_passes) = watch::channel(0);
    background.spawn(redrive_periodically(dead_letters, sink.clone(), DEAD_LETTER_REDRIVE_INTERVAL, passes));
    let mut ownership =
        match (crate::handoff::subscribe(&options.assignment, &options.pipeline, &state.metrics)?, ordinal) {
            (Some(assignments), Some(ordinal)) => {
                let source = options.assignment.to_string();
                state.update_assignment(|a| {
                    a.ordinal = Some(ordinal);
                    a.awaiting = Some(source);
                });
                Ownership::Assigned { ordinal, assignments, plan: None, granted_at: HashMap::new() }
            }
            _ => Ownership::All { epoch: options.owner_epoch },
        };
    let owner = Owner { ordinal, ..Owner::this_process(options.owner_epoch) };
    let consumer_arn = match &options.consumer {
        ConsumerKind::Polling => None,
        ConsumerKind::EnhancedFanOut { consumer_name } => {
            Some(register_with_retry(api.as_ref(), &options.stream, consumer_name, &mut shutdown).await?)
        }
    };
    let shared = Arc::new(Shared {
        api,
        identity,
        config: Arc::new(options.engine.clone()),
        options,
        store,
        sink,
        state,
        caught_up_since: Mutex::new(HashMap::new()),
        totals: Mutex::new(Counters::default()),
        closed_shards: Mutex::new(HashSet::new()),
        consumer_arn,
        owner,
    });
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Result<ShardExit, RunError>)>();
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    // Shards not to start again at this epoch (with `all`: in this run): out of record budget, or
    // (with `all`) fenced by another owner; by the epoch at which they were parked.
    let mut parked: HashMap<String, u64> = HashMap::new();
    let mut retries = Retries::default();
    let mut summary = RunSummary::default();
    let mut waiting = 0_usize;
    let mut discovery_backoff = Backoff::new(CONTROL_RETRY);
    let mut next_discovery = Instant::now();
    let mut stopping: Option<Control> = None;

    loop {
        if stopping.is_none() {
            match ownership.next_plan(running.keys().map(String::as_str)) {
                Ok(Some(plan)) => {
                    apply_plan(&shared, plan, &running);
                    // Start what this epoch grants at once.
                    next_discovery = Instant::now();
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "lost the shard assignment: stopping every shard");
                    stop_all(running, Control::Stop { emit_open_windows: false }).await;
                    return Err(e.into());
                }
            }
        }
        if stopping.is_none() && Instant::now() >= next_discovery {
            match discover(&shared, &ownership, &mut finished, &running, &parked, &mut retries).await {
                Ok((startable, blocked)) => {
                    if startable.is_empty()
                        && running.is_empty()
                        && ownership.settled()
                        && shared.options.stop_after_records.is_some()
                    {
                        tracing::info!("every shard spent its record budget or finished: stopping");
                        break;
                    }
                    discovery_backoff.reset();
                    waiting = blocked;
                    for shard in startable {
                        let id = shard.info.shard_id.clone();
                        let grant = ownership.grant(&id);
                        let (control, control_rx) = watch::channel(Control::Run);
                        let task = ShardTask::start(shared.clone(), shard, control_rx, grant);
                        let exit = exit_tx.clone();
                        let task_id = id.clone();
                        let task = tokio::spawn(async move {
                            let result = task.await;
                            let _ = exit.send((task_id, result));
                        });
                        running.insert(id, Running { task, control });
                    }
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
        let owned_running = running.keys().filter(|id| ownership.owns(id)).count();
        shared.state.metrics.owned_shards.set(i64::try_from(owned_running).unwrap_or(i64::MAX));

        // Idle also means the dead letters found at start were re-delivered (or tried). Failed
        // shards waiting for their retry do not keep a run to idle going: it ends with their errors.
        let failed_now = retries.shards.keys().filter(|id| !running.contains_key(*id)).count();
        shared.state.metrics.failed_shards.set(i64::try_from(failed_now).unwrap_or(i64::MAX));
        if let (None, Some(idle)) = (stopping, shared.options.stop_when_idle)
            && waiting == 0
            && *redrive_passes.borrow() > 0
            && (!running.is_empty() || failed_now > 0)
            && all_caught_up_for(&shared, &running, idle)
        {
            tracing::info!(?idle, "every shard caught up and quiet: writing open windows and stopping");
            stopping = Some(Control::Stop { emit_open_windows: true });
        }
        if let Some(control) = stopping {
            for shard in running.values() {
                request_stop(&shard.control, control);
            }
            if running.is_empty() {
                break;
            }
        }

        let tick = tokio::time::sleep(Duration::from_millis(100));
        tokio::select! {
            Some((id, result)) = exit_rx.recv() => {
                running.remove(&id);
                shared.state.metrics.forget_shard(&id);
                // A shard started again must catch up again before the run counts as idle.
                if let Ok(mut caught_up) = shared.caught_up_since.lock() {
                    caught_up.remove(&id);
                }
                if result.is_ok() {
                    retries.succeeded(&id);
                }
                match result {
                    Ok(ShardExit::Finished) => {
                        finished.insert(id.clone());
                        summary.finished_shards.push(id);
                        // Its children may start now.
                        next_discovery = Instant::now();
                    }
                    Ok(ShardExit::Fenced) => {
                        // Another owner has it. Under an assignment, the next discovery looks again
                        // (a newer epoch's owner is waited for, never taken over); with `all`, two
                        // workers would take it from each other, so it stays parked.
                        if matches!(ownership, Ownership::All { .. }) {
                            parked.insert(id.clone(), ownership.epoch());
                        }
                        summary.fenced_shards.push(id);
                    }
                    Ok(ShardExit::Stopped) => {
                        if stopping.is_none() {
                            // Its record budget is spent (`stop_after_records`).
                            parked.insert(id, ownership.epoch());
                        }
                    }
                    Ok(ShardExit::Released) => {
                        // Granted back while it was being released: start it again.
                        if ownership.owns(&id) {
                            next_discovery = Instant::now();
                        }
                    }
                    Err(e) => {
                        let reason = e.failure_reason();
                        let error = e.to_string();
                        let retry_at = retries.failed(&id, error.clone());
                        tracing::error!(
                            shard = %id,
                            reason,
                            error = %error,
                            retry_in = ?retry_at.saturating_duration_since(Instant::now()),
                            "shard failed; the worker and its other shards go on"
                        );
                        shared.state.metrics.shard_failures.with_label_values(&[reason]).inc();
                        shared.state.update(&id, |s| {
                            s.state = ShardState::Failed;
                            s.error = Some(error);
                        });
                        next_discovery = next_discovery.min(retry_at);
                    }
                }
            }
            changed = shutdown.changed(), if stopping.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    tracing::info!("shutting down: final checkpoints");
                    stopping = Some(Control::Stop { emit_open_windows: false });
                }
            }
            () = assignment_changed(&mut ownership), if stopping.is_none() => {}
            _ = tick => {}
        }
    }
    summary.counters = shared.totals.lock().map(|c| c.clone()).unwrap_or_default();
    let failures = retries.failures();
    if stopping == Some(Control::Stop { emit_open_windows: true }) && !failures.is_empty() {
        return Err(RunError::ShardsFailed(failures));
    }
    Ok(summary)
}

/// Resolves when a new assignment may have arrived (or its source is gone); never with `all`.
async fn assignment_changed(ownership: &mut Ownership) {
    match ownership {
        // An error (the source is gone) is handled at the top of the coordinator loop.
        Ownership::Assigned { assignments, .. } => {
            let _ = assignments.changed().await;
        }
        Ownership::All { .. } => std::future::pending().await,
    }
}

/// Puts a new epoch into effect: releases the running shards it moved away, and shows it.
fn apply_plan<K>(shared: &Shared<K>, plan: &EpochPlan, running: &HashMap<String, Running>) {
    tracing::info!(
        epoch = plan.epoch,
        owned = plan.owned.len(),
        release = ?plan.release,
        granted = ?plan.granted,
        "shard assignment in effect"
    );
    for shard in &plan.release {
        if let Some(running) = running.get(shard) {
            running.control.send_replace(Control::Release { epoch: plan.epoch });
        }
    }
    let metrics = &shared.state.metrics;
    metrics.assignment_epoch.set(i64::try_from(plan.epoch).unwrap_or(i64::MAX));
    shared.state.update_assignment(|a| {
        a.epoch = Some(plan.epoch);
        a.awaiting = None;
    });
}

/// Asks a shard to stop, unless it is already being released (a release writes a final
/// checkpoint too, and tells the new owner it may claim the shard at once).
fn request_stop(control: &watch::Sender<Control>, stop: Control) {
    control.send_if_modified(|current| match current {
        Control::Release { .. } => false,
        _ if *current == stop => false,
        _ => {
            *current = stop;
            true
        }
    });
}

/// Stops every running shard and waits for them.
async fn stop_all(running: HashMap<String, Running>, stop: Control) {
    for shard in running.values() {
        request_stop(&shard.control, stop);
    }
    for (_, shard) in running {
        let _ = shard.task.await;
    }
}

/// Registers the enhanced fan-out consumer, retrying transient failures until shutdown.
async fn register_with_retry<K: KinesisApi>(
    api: &K,
    stream: &str,
    name: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<String, RunError> {
    let mut backoff = Backoff::new(CONTROL_RETRY);
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

fn all_caught_up_for<K>(shared: &Shared<K>, running: &HashMap<String, Running>, idle: Duration) -> bool {
    let Ok(caught_up) = shared.caught_up_since.lock() else { return false };
    running.keys().all(|id| caught_up.get(id).is_some_and(|since| since.elapsed() >= idle))
}

/// A shard that may start now.
struct StartableShard {
    info: ShardInfo,
    /// Its parents still listed, each read to its end and checkpointed first. A shard with any
    /// starts at its beginning whatever the configured start position, from their final state.
    parents: Vec<String>,
}

/// Lists shards and returns the owned ones that can start now, and how many owned ones wait for
/// their parents.
async fn discover<K: KinesisApi>(
    shared: &Shared<K>,
    ownership: &Ownership,
    finished: &mut HashSet<String>,
    running: &HashMap<String, Running>,
    parked: &HashMap<String, u64>,
    retries: &mut Retries,
) -> Result<(Vec<StartableShard>, usize), KinesisError> {
    let shards = shared.api.list_shards(&shared.options.stream).await?;
    // A failed shard that vanished from the stream, or was moved away, is not retried here.
    retries.shards.retain(|id, _| ownership.owns(id) && shards.iter().any(|s| s.shard_id == *id));
    if let Ok(mut closed) = shared.closed_shards.lock() {
        closed.extend(shards.iter().filter(|s| !s.is_open()).map(|s| s.shard_id.clone()));
    }
    // Only owned shards and their parents matter here.
    let owned: Vec<&ShardInfo> = shards.iter().filter(|s| ownership.owns(&s.shard_id)).collect();
    let relevant: HashSet<&str> =
        owned.iter().flat_map(|s| std::iter::once(s.shard_id.as_str()).chain(s.parents())).collect();
    // A shard is finished when this run finished it or its checkpoint says so (read once here,
    // so a parent finished by an earlier run or another worker is seen too).
    for shard in &shards {
        let id = shard.shard_id.as_str();
        if !relevant.contains(id) || finished.contains(id) || running.contains_key(id) {
            continue;
        }
        if checkpoint_finished(shared, id).await {
            finished.insert(id.to_owned());
            shared.state.update(id, |s| s.state = ShardState::Finished);
        }
    }
    // Parent before child: a parent no longer listed has expired from the stream.
    let ready: HashSet<&str> = startable(&shards, finished).into_iter().map(|s| s.shard_id.as_str()).collect();
    let epoch = ownership.epoch();
    let mut start = Vec::new();
    let mut waiting = 0;
    for shard in owned {
        let id = shard.shard_id.as_str();
        if running.contains_key(id)
            || finished.contains(id)
            || parked.get(id).is_some_and(|at| *at >= epoch)
            || retries.waiting(id)
        {
            continue;
        }
        if ready.contains(id) {
            let parents =
                shard.parents().filter(|p| shards.iter().any(|s| s.shard_id == *p)).map(str::to_owned).collect();
            start.push(StartableShard { info: shard.clone(), parents });
        } else {
            waiting += 1;
            shared.state.update(id, |s| s.state = ShardState::WaitingForParents);
        }
    }
    Ok((start, waiting))
}

/// Attempts to claim a shard whose checkpoint keeps changing under us before giving up.
const CLAIM_ATTEMPTS: u32 = 5;

/// A claimed shard: its restored state and the version of the checkpoint the claim wrote.
struct Claimed {
    processor: ShardProcessor,
    position: Position,
    etag: ETag,
    /// Set when the shard came from another owner (or back from a release).
    handoff: Option<HandoffOutcome>,
}

/// How claiming a shard ended.
enum Claim {
    Claimed(Box<Claimed>),
    Finished,
    /// Another owner kept writing the checkpoint.
    Fenced,
    /// Stopped or released before it was claimed.
    Interrupted(Control),
}

/// Claims a shard: reads its checkpoint, waits for the previous owner's release
/// when [`decide_claim`] says so, then writes the checkpoint back conditional on the version read.
/// From then on a previous owner still running is fenced at its next checkpoint.
///
/// The claim is made at the worker's current epoch: a shard granted at E and still owned at a
/// later epoch (the task would have been told to release it otherwise) accepts a release made at
/// that later epoch, and writes it as its owner epoch.
async fn claim<K>(
    shared: &Shared<K>,
    shard_id: &str,
    parents: &[String],
    owner: &mut Owner,
    grant: &Grant,
    control: &mut watch::Receiver<Control>,
) -> Result<Claim, RunError> {
    let key = checkpoint_key(&shared.identity, shard_id);
    let mut conflicts = 0;
    let mut waiting = false;
    loop {
        let requested = *control.borrow_and_update();
        if requested != Control::Run {
            return Ok(Claim::Interrupted(requested));
        }
        owner.epoch = grant.epoch.max(shared.state.assignment_epoch().unwrap_or(0));
        let me = Claimant {
            id: &owner.id,
            ordinal: owner.ordinal,
            epoch: owner.epoch,
            wait_for_release: grant.wait_for_release,
        };
        let stored = match shared.store.get(&key).await {
            Ok(stored) => stored,
            Err(e @ CheckpointError::S3 { retryable: true, .. }) => {
                wait_out_store_failure(shared, shard_id, "read the checkpoint to claim", &e, control).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let (checkpoint, etag) = match stored {
            Some((bytes, etag)) => (Some(readable_checkpoint(shared, &key, &bytes).await?), Some(etag)),
            None => (None, None),
        };
        let holder = checkpoint.as_ref().map(|c| Holder {
            finished: c.position == Position::Finished,
            owner_id: &c.owner_id,
            owner_ordinal: c.owner_ordinal,
            owner_epoch: c.owner_epoch,
            released_epoch: c.released_epoch,
        });
        let handoff =
            match decide_claim(holder.as_ref(), &me, grant.requested_at.elapsed(), shared.options.takeover_timeout) {
                ClaimDecision::Finished => return Ok(Claim::Finished),
                ClaimDecision::Claim(handoff) => handoff,
                ClaimDecision::Wait => {
                    if !waiting {
                        waiting = true;
                        tracing::info!(
                            shard = shard_id,
                            epoch = grant.epoch,
                            "waiting for the previous owner to release the shard"
                        );
                        shared.state.update(shard_id, |s| s.state = ShardState::WaitingForRelease);
                    }
                    wait_or_interrupt(control).await;
                    continue;
                }
            };
        let (processor, position) = match checkpoint {
            Some(checkpoint) => (checkpoint.restore(shared.config.clone())?, checkpoint.position),
            None => match parent_checkpoints(shared, parents).await {
                Ok(parents) => (child_of(&parents, shared.config.clone()), Position::Start),
                Err(RunError::Checkpoint(e @ CheckpointError::S3 { retryable: true, .. })) => {
                    wait_out_store_failure(shared, shard_id, "read a parent's checkpoint", &e, control).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        // Nothing processed yet: resolve the start position now, once; the claim checkpoints it.
        let position = match position {
            Position::Start => initial_position(&shared.options.start, !parents.is_empty(), wall_clock_millis()),
            position => position,
        };
        let claimed = ShardCheckpoint::capture(shard_id, position.clone(), owner, &processor, &shared.config);
        let precondition = etag.map_or(Precondition::Absent, Precondition::Matches);
        match shared.store.put(&key, &claimed.to_bytes()?, &precondition).await {
            Ok(etag) => return Ok(Claim::Claimed(Box::new(Claimed { processor, position, etag, handoff }))),
            Err(CheckpointError::Conflict { .. }) if conflicts < CLAIM_ATTEMPTS => {
                // The previous owner wrote in between: read its newer state and decide again.
                conflicts += 1;
                tokio::time::sleep(Duration::from_millis(50 + fastrand::u64(..100))).await;
            }
            Err(CheckpointError::Conflict { .. }) => {
                tracing::warn!(shard = shard_id, "could not claim the shard: another owner keeps writing it");
                shared.state.update(shard_id, |s| s.state = ShardState::Fenced);
                return Ok(Claim::Fenced);
            }
            Err(e @ CheckpointError::S3 { retryable: true, .. }) => {
                wait_out_store_failure(shared, shard_id, "write the claim", &e, control).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The final checkpoints of a new child shard's parents, which were each read to their end and
/// checkpointed before the child could start. A parent without a checkpoint held no record.
async fn parent_checkpoints<K>(shared: &Shared<K>, parents: &[String]) -> Result<Vec<ShardCheckpoint>, RunError> {
    let mut checkpoints = Vec::with_capacity(parents.len());
    for parent in parents {
        let key = checkpoint_key(&shared.identity, parent);
        if let Some((bytes, _)) = shared.store.get(&key).await? {
            checkpoints.push(readable_checkpoint(shared, &key, &bytes).await?);
        }
    }
    Ok(checkpoints)
}

/// The checkpoint in `bytes`, or, when they cannot be read (corrupted in the store, or cut short),
/// the newest history copy that can. The claim then writes over the corrupt object, and the
/// records after that copy are read again: their documents carry the same versions as before, so
/// nothing is counted twice.
async fn readable_checkpoint<K>(shared: &Shared<K>, key: &str, bytes: &[u8]) -> Result<ShardCheckpoint, RunError> {
    let error = match ShardCheckpoint::from_bytes(bytes) {
        Ok(checkpoint) => return Ok(checkpoint),
        Err(error) => error,
    };
    tracing::error!(key, %error, "the latest checkpoint is corrupt; looking for the newest readable history copy");
    shared.state.metrics.checkpoint_failures.with_label_values(&["corrupt"]).inc();
    let corrupt = |reason: String| CheckpointError::Corrupt { key: key.to_owned(), reason };
    for stamp in shared.store.history(key).await?.iter().rev() {
        let Some(copy) = shared.store.get_history(key, stamp).await? else { continue };
        match ShardCheckpoint::from_bytes(&copy) {
            Ok(checkpoint) => {
                tracing::warn!(key, stamp, position = ?checkpoint.position, "restoring from a history copy");
                return Ok(checkpoint);
            }
            Err(e) => tracing::warn!(key, stamp, error = %e, "history copy is not readable either"),
        }
    }
    Err(corrupt(error.to_string()).into())
}

/// A store that failed while claiming is unavailable for now: the shard waits (as a previous owner
/// must too) while the worker and its other shards go on. The failure is logged, counted and shown
/// in `/status` and `/readyz`; then it sleeps until the next attempt.
async fn wait_out_store_failure<K>(
    shared: &Shared<K>,
    shard_id: &str,
    action: &str,
    error: &CheckpointError,
    control: &mut watch::Receiver<Control>,
) {
    tracing::warn!(shard = shard_id, %error, "failed to {action}; retrying");
    shared.state.metrics.checkpoint_failures.with_label_values(&["io"]).inc();
    let message = error.to_string();
    shared.state.update(shard_id, |s| s.checkpoint_error = Some(message));
    wait_or_interrupt(control).await;
}

/// Sleeps [`RELEASE_POLL_INTERVAL`], or less when the coordinator sends a new request (read at the
/// top of the claim loop).
async fn wait_or_interrupt(control: &mut watch::Receiver<Control>) {
    tokio::select! {
        () = tokio::time::sleep(RELEASE_POLL_INTERVAL) => {}
        Ok(()) = control.changed() => {}
    }
}

/// Whether the shard's checkpoint marks it finished. A store failure counts as "not yet": the
/// next discovery asks again.
async fn checkpoint_finished<K>(shared: &Shared<K>, shard_id: &str) -> bool {
    match shared.store.get(&checkpoint_key(&shared.identity, shard_id)).await {
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
    /// This process, at the epoch under which the shard started.
    owner: Owner,
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

/// How writing a checkpoint went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Yes,
    /// Another owner took the shard (412).
    Fenced,
    /// The store failed; the state is kept for the next attempt.
    Failed,
}

impl<K: KinesisApi> ShardTask<K> {
    async fn start(
        shared: Arc<Shared<K>>,
        shard: StartableShard,
        mut control: watch::Receiver<Control>,
        grant: Grant,
    ) -> Result<ShardExit, RunError> {
        let StartableShard { info: shard, parents } = shard;
        let mut owner = Owner { epoch: grant.epoch, ..shared.owner.clone() };
        let claimed = match claim(&shared, &shard.shard_id, &parents, &mut owner, &grant, &mut control).await? {
            Claim::Claimed(claimed) => *claimed,
            Claim::Finished => {
                shared.state.update(&shard.shard_id, |s| s.state = ShardState::Finished);
                return Ok(ShardExit::Finished);
            }
            Claim::Fenced => return Ok(ShardExit::Fenced),
            Claim::Interrupted(Control::Release { epoch }) => {
                tracing::info!(shard = %shard.shard_id, epoch, "moved away before it was claimed");
                shared.state.update(&shard.shard_id, |s| s.state = ShardState::Released);
                return Ok(ShardExit::Released);
            }
            Claim::Interrupted(_) => {
                shared.state.update(&shard.shard_id, |s| s.state = ShardState::Stopped);
                return Ok(ShardExit::Stopped);
            }
        };
        let Claimed { processor, position, etag, handoff } = claimed;
        let Some((start, skip_upto)) = resume_position(&position) else {
            return Ok(ShardExit::Finished);
        };
        let skip = match (&position, skip_upto) {
            (Position::Sequence { sequence_number, .. }, Some(done)) => Some((sequence_number.clone(), done)),
            _ => None,
        };
        tracing::info!(shard = %shard.shard_id, ?start, epoch = grant.epoch, "starting shard");
        let reported = processor.counters().clone();
        let budget = shared.options.stop_after_records;
        let mut task = ShardTask {
            shared,
            shard_id: shard.shard_id.clone(),
            owner,
            processor,
            position,
            etag: Some(etag),
            skip,
            reported,
            budget,
        };
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
        let elapsed = task.shared.state.elapsed_ms();
        let pause = handoff.map(|outcome| task.note_handoff(outcome, grant.requested_at.elapsed()));
        task.shared.state.update(&task.shard_id, |s| {
            s.state = ShardState::Reading;
            s.error = None;
            s.started_at_ms = Some(elapsed);
            if pause.is_some() {
                s.handoff_pause_ms = pause;
            }
        });
        task.read(reader, control).await
    }

    /// Counts a handoff to this worker and its pause; returns the pause in ms.
    fn note_handoff(&self, outcome: HandoffOutcome, pause: Duration) -> u64 {
        let metrics = &self.shared.state.metrics;
        metrics.shard_handoffs.with_label_values(&[outcome.as_str()]).inc();
        metrics.handoff_pause_seconds.observe(pause.as_secs_f64());
        let pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(shard = %self.shard_id, outcome = outcome.as_str(), pause_ms, epoch = self.owner.epoch, "shard handed over to this worker");
        pause_ms
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
            match requested {
                Control::Run => {}
                Control::Stop { emit_open_windows } => {
                    if emit_open_windows {
                        let open = self.processor.open_windows();
                        self.emit(&open, false).await?;
                    }
                    return match self.checkpoint().await? {
                        true => {
                            self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Stopped);
                            Ok(ShardExit::Stopped)
                        }
                        false => Ok(ShardExit::Fenced),
                    };
                }
                Control::Release { epoch } => return self.release(epoch).await,
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
                    self.emit(&closed, true).await?;
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
                    if let Ok(mut caught_up) = self.shared.caught_up_since.lock() {
                        caught_up.remove(&self.shard_id);
                    }
                    // The shard ended: no record of it can reach its windows any more. Its trip ids
                    // stay in the final checkpoint for its children.
                    let closed = self.processor.end();
                    self.emit(&closed, true).await?;
                    self.position = Position::Finished;
                    self.report();
                    if let Some(exit) = self.write_finished(&mut control).await? {
                        return Ok(exit);
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

    /// Writes the documents of `windows` to the sink, marked final when the shard closed them.
    async fn emit(&self, windows: &taxi_core::analysis::ClosedWindows, is_final: bool) -> Result<(), RunError> {
        if windows.is_empty() {
            return Ok(());
        }
        let records = self.processor.counters().records;
        let (pipeline, config) = (&self.shared.identity, &self.shared.config);
        let docs = documents_for(pipeline, &self.shard_id, config, windows, is_final, records);
        let count = docs.len() as u64;
        self.shared.sink.write(docs).await?;
        self.shared.state.metrics.sink_documents.with_label_values(&[self.shared.sink.kind()]).inc_by(count);
        Ok(())
    }

    /// Writes the checkpoint that marks the shard finished, retrying with back-off until it is
    /// durable: children (on this worker or another) start only once it is. `Some(exit)` when the
    /// shard ends otherwise first: fenced by another owner, stopped, or released (a restart then
    /// reads the end of the shard again from its last durable checkpoint).
    async fn write_finished(&mut self, control: &mut watch::Receiver<Control>) -> Result<Option<ShardExit>, RunError> {
        let mut backoff = Backoff::new(CONTROL_RETRY);
        loop {
            match self.write_checkpoint(None).await? {
                Written::Yes => return Ok(None),
                Written::Fenced => return Ok(Some(ShardExit::Fenced)),
                Written::Failed => {}
            }
            tokio::select! {
                () = tokio::time::sleep(backoff.next_delay()) => {}
                _ = control.changed() => {}
            }
            let requested = *control.borrow_and_update();
            match requested {
                Control::Run => {}
                Control::Stop { .. } => {
                    tracing::warn!(shard = %self.shard_id, "stopped before its finished checkpoint was written; a restart reads its end again");
                    self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Stopped);
                    return Ok(Some(ShardExit::Stopped));
                }
                Control::Release { epoch } => return self.release(epoch).await.map(Some),
            }
        }
    }

    /// Gives the shard up to its new owner: flushes the sink and writes a final
    /// checkpoint marked released at `epoch`. Open windows stay in the checkpoint's partials for
    /// the new owner. A store failure is retried until the takeover timeout, after which the new
    /// owner takes the shard over anyway.
    async fn release(&mut self, epoch: u64) -> Result<ShardExit, RunError> {
        let deadline = Instant::now() + self.shared.options.takeover_timeout;
        loop {
            match self.write_checkpoint(Some(epoch)).await? {
                Written::Yes => {
                    self.shared
                        .state
                        .metrics
                        .shard_handoffs
                        .with_label_values(&[HandoffOutcome::Released.as_str()])
                        .inc();
                    tracing::info!(shard = %self.shard_id, epoch, position = ?self.position, "shard released to its new owner");
                    break;
                }
                Written::Fenced => return Ok(ShardExit::Fenced),
                Written::Failed if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
                Written::Failed => {
                    tracing::warn!(shard = %self.shard_id, epoch, "could not write the release; the new owner takes the shard over after its timeout");
                    break;
                }
            }
        }
        self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Released);
        Ok(ShardExit::Released)
    }

    /// Flushes the sink, then writes the checkpoint. `Ok(false)`: fenced by another owner; a store
    /// failure is retried at the next interval.
    async fn checkpoint(&mut self) -> Result<bool, RunError> {
        Ok(self.write_checkpoint(None).await? != Written::Fenced)
    }

    /// Flushes the sink, then writes the checkpoint, marked released at `released` if given.
    async fn write_checkpoint(&mut self, released: Option<u64>) -> Result<Written, RunError> {
        let started = Instant::now();
        self.shared.sink.flush().await?;
        let mut checkpoint = ShardCheckpoint::capture(
            &self.shard_id,
            self.position.clone(),
            &self.owner,
            &self.processor,
            &self.shared.config,
        );
        checkpoint.released_epoch = released;
        let bytes = checkpoint.to_bytes()?;
        let key = checkpoint_key(&self.shared.identity, &self.shard_id);
        let precondition = self.etag.clone().map_or(Precondition::Absent, Precondition::Matches);
        let mut result = self.shared.store.put(&key, &bytes, &precondition).await;
        if let Err(CheckpointError::Conflict { .. }) = result
            && let Some(tag) = self.own_unacknowledged_write(&key).await
        {
            // An earlier checkpoint of ours was stored but its answer lost: not a fence.
            tracing::info!(shard = %self.shard_id, "the stored checkpoint is an earlier one of ours; writing over it");
            result = self.shared.store.put(&key, &bytes, &Precondition::Matches(tag)).await;
        }
        let metrics = &self.shared.state.metrics;
        match result {
            Ok(etag) => {
                self.etag = Some(etag);
                metrics
                    .checkpoint_seconds
                    .with_label_values(&[self.shared.store.kind()])
                    .observe(started.elapsed().as_secs_f64());
                let written_at = wall_clock_millis();
                metrics.checkpoint_written(&self.shard_id, written_at, bytes.len());
                let now = taxi_core::time::format_timestamp(written_at);
                let position = match &self.position {
                    Position::Sequence { sequence_number, .. } => Some(sequence_number.clone()),
                    _ => None,
                };
                self.shared.state.update(&self.shard_id, |s| {
                    s.last_checkpoint = Some(now);
                    s.checkpoint_error = None;
                    s.position = position;
                });
                Ok(Written::Yes)
            }
            Err(CheckpointError::Conflict { .. }) => {
                metrics.checkpoint_failures.with_label_values(&["conflict"]).inc();
                tracing::warn!(shard = %self.shard_id, "checkpoint fenced: another worker owns the shard; stopping it");
                self.shared.state.update(&self.shard_id, |s| s.state = ShardState::Fenced);
                Ok(Written::Fenced)
            }
            Err(e) => {
                // Keep the in-memory state and try again at the next interval.
                metrics.checkpoint_failures.with_label_values(&["io"]).inc();
                tracing::warn!(shard = %self.shard_id, error = %e, "checkpoint failed; will retry");
                let message = e.to_string();
                self.shared.state.update(&self.shard_id, |s| s.checkpoint_error = Some(message));
                Ok(Written::Failed)
            }
        }
    }

    /// After a conflict: the tag of the stored checkpoint when this very owner (process and
    /// epoch) wrote it, so an earlier write of ours whose answer was lost does not fence us.
    async fn own_unacknowledged_write(&self, key: &str) -> Option<ETag> {
        let (bytes, tag) = self.shared.store.get(key).await.ok().flatten()?;
        let stored = ShardCheckpoint::from_bytes(&bytes).ok()?;
        let ours = stored.owner_id == self.owner.id && stored.owner_epoch == self.owner.epoch;
        (ours && stored.released_epoch.is_none()).then_some(tag)
    }

    /// Publishes counter deltas and the watermark.
    fn report(&mut self) {
        let now = self.processor.counters().clone();
        let delta = now.since(&std::mem::replace(&mut self.reported, now.clone()));
        if let Ok(mut totals) = self.shared.totals.lock() {
            totals.add(&delta);
        }
        let metrics = &self.shared.state.metrics;
        let aggregated = delta.trips.saturating_sub(delta.outside_region + delta.late + delta.duplicates);
        metrics.records.with_label_values(&["aggregated"]).inc_by(aggregated);
        metrics.records.with_label_values(&["outside_region"]).inc_by(delta.outside_region);
        metrics.records.with_label_values(&["late"]).inc_by(delta.late);
        metrics.records.with_label_values(&["duplicate"]).inc_by(delta.duplicates);
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
            s.watermark = watermark.map(taxi_core::time::format_timestamp);
        });
    }
}

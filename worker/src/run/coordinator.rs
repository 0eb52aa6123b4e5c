//! The coordinator of a run: [`run_worker`] opens the checkpoint store and the sink, then loops
//! until it stops: it puts new assignments into effect, discovers shards and starts a task per
//! startable one, handles how each task ended (finished, fenced, stopped, released or failed) and
//! decides when the run stops (shutdown, idle, or every record budget spent).

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::watch;

use super::claim::key_in_use;
use super::control::{Control, ShardExit, request_stop};
use super::discovery::{StartableShard, discover};
use super::idle::CaughtUp;
use super::ownership::Ownership;
use super::retries::Retries;
use super::shard_task::ShardTask;
use super::{CONTROL_RETRY, RunError, RunOptions, RunSummary, Shared, WorkerState};
use crate::handoff::{AssignmentSource, EpochPlan};
use taxi_core::checkpoint::Owner;
use taxi_core::identity::PipelineId;
use taxi_core::shard::Counters;
use taxi_core::status::ShardState;
use taxi_io::kinesis::api::KinesisApi;
use taxi_io::retry::Backoff;
use taxi_io::sink::Sink;
use taxi_io::sink::dead_letter::DeadLetterStore;
use taxi_io::sink::redrive::redrive_periodically;
use taxi_io::store::CheckpointStore;

/// Time between two passes that re-deliver dead letters (the first runs at start).
const DEAD_LETTER_REDRIVE_INTERVAL: Duration = Duration::from_secs(60);

/// How often the coordinator looks around when nothing wakes it earlier.
const TICK: Duration = Duration::from_millis(100);

/// Runs the worker until `shutdown` turns true (SIGTERM) or, with `stop_when_idle`, until every
/// shard has been caught up and quiet for that long.
pub async fn run_worker<K: KinesisApi>(
    api: Arc<K>,
    options: RunOptions,
    state: Arc<WorkerState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunSummary, RunError> {
    let ordinal = validate(&options)?;
    state.metrics.checkpoint_interval_seconds.set(options.checkpoint_interval.as_secs_f64());
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
    let ownership = follow(&options, ordinal, &state)?;
    let owner = Owner { ordinal, ..Owner::this_process(options.owner_epoch) };
    let consumer_arn = match &options.efo_consumer {
        None => None,
        Some(name) => Some(register_with_retry(api.as_ref(), &options.stream, name, &mut shutdown).await?),
    };
    let archive = match &options.archive {
        Some(settings) => Some(super::archive::ArchiveTarget::open(settings, &options.s3).await?),
        None => None,
    };
    let shared = Arc::new(Shared {
        api,
        identity,
        config: Arc::new(options.engine.clone()),
        options,
        store,
        sink,
        state,
        caught_up: CaughtUp::default(),
        totals: Mutex::new(Counters::default()),
        closed_shards: Mutex::new(HashSet::new()),
        consumer_arn,
        owner,
        archive,
    });
    Coordinator::new(shared, ownership, redrive_passes).run(shutdown).await
}

/// Checks the settings a run cannot start without; returns the worker's ordinal when it follows
/// an assignment.
fn validate(options: &RunOptions) -> Result<Option<u32>, RunError> {
    options.engine.validate().map_err(|e| RunError::Config(e.to_string()))?;
    if options.pipeline.is_empty() || options.pipeline.contains('/') {
        return Err(RunError::Config(format!(
            "pipeline name {:?} must be non-empty and without '/'",
            options.pipeline
        )));
    }
    match (&options.assignment, options.ordinal) {
        (AssignmentSource::All, _) => Ok(None),
        (_, Some(ordinal)) => Ok(Some(ordinal)),
        (source, None) => {
            Err(RunError::Config(format!("--assignment {source} needs the worker's ordinal (--ordinal N)")))
        }
    }
}

/// Subscribes to the assignment source, if the run follows one; `/status` then shows what the
/// worker waits for until a first assignment arrives.
fn follow(options: &RunOptions, ordinal: Option<u32>, state: &WorkerState) -> Result<Ownership, RunError> {
    match (crate::handoff::subscribe(&options.assignment, &options.pipeline, &state.metrics)?, ordinal) {
        (Some(assignments), Some(ordinal)) => {
            let source = options.assignment.to_string();
            state.update_assignment(|a| {
                a.ordinal = Some(ordinal);
                a.awaiting = Some(source);
            });
            Ok(Ownership::assigned(ordinal, assignments))
        }
        _ => Ok(Ownership::All { epoch: options.owner_epoch }),
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

/// A running shard task and its control channel.
struct Running {
    task: tokio::task::JoinHandle<()>,
    control: watch::Sender<Control>,
}

/// How a shard task ended, as it reports to the coordinator.
type TaskExit = (String, Result<ShardExit, RunError>);

/// The coordinator's view of the run.
struct Coordinator<K> {
    shared: Arc<Shared<K>>,
    ownership: Ownership,
    /// Shard tasks started and not ended yet, by shard id.
    running: HashMap<String, Running>,
    /// Every shard task reports its end here.
    exit_tx: UnboundedSender<TaskExit>,
    exit_rx: UnboundedReceiver<TaskExit>,
    /// Shards read to their end (by this run, an earlier one or another worker).
    finished: HashSet<String>,
    /// Shards not to start again at this epoch (with `all`: in this run): out of record budget, or
    /// (with `all`) fenced by another owner; by the epoch at which they were parked.
    parked: HashMap<String, u64>,
    retries: Retries,
    summary: RunSummary,
    /// Owned shards waiting for their parents at the last discovery.
    waiting: usize,
    /// Spaces the attempts of a failing ListShards.
    discovery_backoff: Backoff,
    /// When discovery runs next (at once after a shard finished or a new epoch).
    next_discovery: Instant,
    /// Set once the run stops: what every shard task is asked to do.
    stopping: Option<Control>,
    /// Passes of the dead-letter redrive so far (a run is not idle before the first).
    redrive_passes: watch::Receiver<u64>,
}

impl<K: KinesisApi> Coordinator<K> {
    fn new(shared: Arc<Shared<K>>, ownership: Ownership, redrive_passes: watch::Receiver<u64>) -> Self {
        let (exit_tx, exit_rx) = unbounded_channel();
        Coordinator {
            shared,
            ownership,
            running: HashMap::new(),
            exit_tx,
            exit_rx,
            finished: HashSet::new(),
            parked: HashMap::new(),
            retries: Retries::default(),
            summary: RunSummary::default(),
            waiting: 0,
            discovery_backoff: Backoff::new(CONTROL_RETRY),
            next_discovery: Instant::now(),
            stopping: None,
            redrive_passes,
        }
    }

    /// The coordinator loop, until the run stops.
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<RunSummary, RunError> {
        loop {
            if self.stopping.is_none() {
                self.follow_assignment().await?;
            }
            if self.stopping.is_none()
                && Instant::now() >= self.next_discovery
                && self.discover_and_start().await.is_break()
            {
                break;
            }
            let failed_now = self.publish_gauges();
            if self.idle(failed_now) {
                let idle = self.shared.options.stop_when_idle;
                tracing::info!(?idle, "every shard caught up and quiet: writing open windows and stopping");
                self.stopping = Some(Control::Stop { emit_open_windows: true });
            }
            if let Some(control) = self.stopping {
                for shard in self.running.values() {
                    request_stop(&shard.control, control);
                }
                if self.running.is_empty() {
                    break;
                }
            }
            tokio::select! {
                Some((id, result)) = self.exit_rx.recv() => self.on_exit(id, result),
                changed = shutdown.changed(), if self.stopping.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!("shutting down: final checkpoints");
                        self.stopping = Some(Control::Stop { emit_open_windows: false });
                    }
                }
                () = self.ownership.changed(), if self.stopping.is_none() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
        self.into_summary()
    }

    /// Puts a new assignment into effect, if one arrived. When its source is gone, every shard
    /// stops and the run fails.
    async fn follow_assignment(&mut self) -> Result<(), RunError> {
        match self.ownership.next_plan(self.running.keys().map(String::as_str), Instant::now()) {
            Ok(Some(plan)) => {
                apply_plan(&self.shared, plan, &self.running);
                // Start what this epoch grants at once.
                self.next_discovery = Instant::now();
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "lost the shard assignment: stopping every shard");
                stop_all(std::mem::take(&mut self.running), Control::Stop { emit_open_windows: false }).await;
                Err(e.into())
            }
        }
    }

    /// Discovers shards and starts the startable ones. `Break` when a run with record budgets has
    /// nothing left to do.
    async fn discover_and_start(&mut self) -> ControlFlow<()> {
        let (shared, ownership) = (&self.shared, &self.ownership);
        let found =
            discover(shared, ownership, &mut self.finished, &self.running, &self.parked, &mut self.retries).await;
        match found {
            Ok(discovered) => {
                if discovered.start.is_empty()
                    && self.running.is_empty()
                    && self.ownership.settled()
                    && self.shared.options.stop_after_records.is_some()
                {
                    tracing::info!("every shard spent its record budget or finished: stopping");
                    return ControlFlow::Break(());
                }
                self.discovery_backoff.reset();
                self.waiting = discovered.waiting.len();
                for shard in discovered.start {
                    self.start(shard);
                }
                self.next_discovery = Instant::now() + self.shared.options.shard_discovery_interval;
            }
            Err(e) => {
                self.shared.state.metrics.kinesis_errors.with_label_values(&["ListShards", e.category()]).inc();
                // Discovery always retries (the stream may not exist yet); permanent causes,
                // such as missing permissions, are logged louder.
                if e.is_retryable() {
                    tracing::warn!(error = %e, "shard discovery failed; retrying");
                } else {
                    tracing::error!(error = %e, "shard discovery failed; retrying with back-off");
                }
                self.next_discovery =
                    Instant::now() + self.discovery_backoff.next_delay().max(Duration::from_millis(100));
            }
        }
        ControlFlow::Continue(())
    }

    /// Spawns the task of a startable shard, under the grant the ownership gives it now.
    fn start(&mut self, shard: StartableShard) {
        let id = shard.info.shard_id.clone();
        let grant = self.ownership.grant(&id, Instant::now());
        let (control, control_rx) = watch::channel(Control::Run);
        let task = ShardTask::start(self.shared.clone(), shard, control_rx, grant);
        let exit = self.exit_tx.clone();
        let task_id = id.clone();
        let task = tokio::spawn(async move {
            let result = task.await;
            let _ = exit.send((task_id, result));
        });
        self.running.insert(id, Running { task, control });
    }

    /// Publishes the owned and failed shard gauges; returns how many failed shards wait for
    /// their retry.
    fn publish_gauges(&self) -> usize {
        let metrics = &self.shared.state.metrics;
        let owned_running = self.running.keys().filter(|id| self.ownership.owns(id)).count();
        metrics.owned_shards.set(i64::try_from(owned_running).unwrap_or(i64::MAX));
        let failed_now = self.retries.failed_now(|id| self.running.contains_key(id));
        metrics.failed_shards.set(i64::try_from(failed_now).unwrap_or(i64::MAX));
        failed_now
    }

    /// Whether a run to idle may stop now: no shard waits for a parent, the dead letters found at
    /// start were re-delivered (or tried), and every running shard stayed caught up long enough.
    /// Failed shards waiting for their retry do not keep it going: it ends with their errors.
    fn idle(&self, failed_now: usize) -> bool {
        let Some(idle) = self.shared.options.stop_when_idle else { return false };
        self.stopping.is_none()
            && self.waiting == 0
            && *self.redrive_passes.borrow() > 0
            && (!self.running.is_empty() || failed_now > 0)
            && self.shared.caught_up.all_for(self.running.keys().map(String::as_str), idle, Instant::now())
    }

    /// A shard task ended: forget it, and act on how it ended.
    fn on_exit(&mut self, id: String, result: Result<ShardExit, RunError>) {
        self.running.remove(&id);
        self.shared.state.metrics.forget_shard(&id);
        // A shard started again must catch up again before the run counts as idle.
        self.shared.caught_up.forget(&id);
        match result {
            Ok(exit) => {
                self.retries.succeeded(&id);
                self.on_ended(id, exit);
            }
            Err(e) => self.on_failed(id, &e),
        }
    }

    fn on_ended(&mut self, id: String, exit: ShardExit) {
        match exit {
            ShardExit::Finished => {
                self.finished.insert(id.clone());
                self.summary.finished_shards.push(id);
                // Its children may start now.
                self.next_discovery = Instant::now();
            }
            ShardExit::Fenced => {
                // Another owner has it.
                if self.ownership.parks_fenced_shards() {
                    self.parked.insert(id.clone(), self.ownership.epoch());
                }
                self.summary.fenced_shards.push(id);
            }
            ShardExit::Stopped => {
                if self.stopping.is_none() {
                    // Its record budget is spent (`stop_after_records`).
                    self.parked.insert(id, self.ownership.epoch());
                }
            }
            ShardExit::Released => {
                // Granted back while it was being released: start it again.
                if self.ownership.owns(&id) {
                    self.next_discovery = Instant::now();
                }
            }
        }
    }

    /// A shard failed: it starts again after its back-off, while the worker and its other shards
    /// go on.
    fn on_failed(&mut self, id: String, e: &RunError) {
        let reason = e.failure_reason();
        let error = e.to_string();
        let now = Instant::now();
        let retry_at = self.retries.failed(&id, error.clone(), now);
        tracing::error!(
            shard = %id,
            reason,
            error = %error,
            retry_in = ?retry_at.saturating_duration_since(now),
            "shard failed; the worker and its other shards go on"
        );
        self.shared.state.metrics.shard_failures.with_label_values(&[reason]).inc();
        self.shared.state.update(&id, |s| {
            s.state = ShardState::Failed;
            s.error = Some(error);
        });
        self.next_discovery = self.next_discovery.min(retry_at);
    }

    /// How the run ended: a run to idle that leaves failed shards behind fails with their errors.
    fn into_summary(self) -> Result<RunSummary, RunError> {
        let mut summary = self.summary;
        summary.counters = self.shared.totals.lock().map(|c| c.clone()).unwrap_or_default();
        let failures = self.retries.failures();
        if self.stopping == Some(Control::Stop { emit_open_windows: true }) && !failures.is_empty() {
            return Err(RunError::ShardsFailed(failures));
        }
        Ok(summary)
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

/// Stops every running shard and waits for them.
async fn stop_all(running: HashMap<String, Running>, stop: Control) {
    for shard in running.values() {
        request_stop(&shard.control, stop);
    }
    for (_, shard) in running {
        let _ = shard.task.await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::super::claim::checkpoint_key;
    use super::super::testing::{self, MemoryKinesis, shard};
    use super::*;
    use taxi_core::assignment::Assignment;
    use taxi_core::checkpoint::{Position, ShardCheckpoint};
    use taxi_core::status::ShardStatus;
    use taxi_io::kinesis::api::KinesisError;
    use taxi_io::store::S3Settings;

    fn config_error(options: &RunOptions) -> String {
        match validate(options) {
            Err(RunError::Config(message)) => message,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn a_run_needs_a_plain_pipeline_name_and_an_ordinal_to_follow_an_assignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = testing::options(dir.path());
        assert!(matches!(validate(&options), Ok(None)), "every shard, no ordinal");
        options.ordinal = Some(3);
        assert!(matches!(validate(&options), Ok(None)), "an ordinal means nothing with every shard");

        options.assignment = AssignmentSource::ConfigMap;
        assert!(matches!(validate(&options), Ok(Some(3))));
        options.ordinal = None;
        assert!(config_error(&options).contains("needs the worker's ordinal (--ordinal N)"));

        options.assignment = AssignmentSource::All;
        for bad in ["", "team/nyc"] {
            options.pipeline = bad.to_owned();
            assert!(config_error(&options).contains("must be non-empty and without '/'"), "{bad:?}");
        }
    }

    /// The checkpoint of `shard` a run over `dir` left.
    async fn checkpoint(dir: &Path, shard: &str) -> ShardCheckpoint {
        let uri = testing::options(dir).checkpoint_uri;
        let store = CheckpointStore::from_uri(&uri, &S3Settings::default(), 0).await.expect("store");
        let (bytes, _) = store.get(&checkpoint_key("nyc", shard)).await.expect("read").expect("a checkpoint");
        ShardCheckpoint::from_bytes(&bytes).expect("readable")
    }

    async fn run_to_end(api: MemoryKinesis, options: RunOptions) -> (Result<RunSummary, RunError>, Arc<WorkerState>) {
        let state = Arc::new(WorkerState::default());
        let (_shutdown, rx) = watch::channel(false);
        let run = run_worker(Arc::new(api), options, state.clone(), rx);
        let result = tokio::time::timeout(Duration::from_secs(30), run).await.expect("the run stops by itself");
        (result, state)
    }

    fn shard_status(state: &WorkerState, shard: &str) -> ShardStatus {
        state.status().shards.get(shard).cloned().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_run_to_idle_reads_parents_first_then_their_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = MemoryKinesis::new(vec![shard("p", &[], true), shard("a", &["p"], false), shard("b", &["p"], false)]);
        testing::add_watermarks(&api, "p", 2);
        testing::add_watermarks(&api, "a", 1);
        let (result, state) = run_to_end(api, testing::options(dir.path())).await;
        let summary = result.expect("a clean run");
        assert_eq!(summary.finished_shards, ["p"]);
        assert!(summary.fenced_shards.is_empty());
        assert_eq!(summary.counters.records, 3);

        let p = shard_status(&state, "p");
        for child in ["a", "b"] {
            let status = shard_status(&state, child);
            assert_eq!(status.state, ShardState::Stopped, "{child} stopped when the run went idle");
            assert!(status.started_at_ms >= p.finished_at_ms, "{child} started after its parent finished");
        }
        assert_eq!(checkpoint(dir.path(), "p").await.position, Position::Finished);
        let a = checkpoint(dir.path(), "a").await.position;
        assert_eq!(a, Position::Sequence { sequence_number: "00001".to_owned(), sub_sequence: None });
    }

    #[tokio::test]
    async fn metrics_show_the_checkpoint_interval_of_the_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = MemoryKinesis::new(vec![shard("x", &[], false)]);
        testing::add_watermarks(&api, "x", 1);
        let options = RunOptions { checkpoint_interval: Duration::from_millis(1500), ..testing::options(dir.path()) };
        let (result, state) = run_to_end(api, options).await;
        result.expect("a clean run");
        let metrics = taxi_io::http::Endpoints::metrics(state.as_ref());
        assert!(metrics.contains("\ntaxi_checkpoint_interval_seconds 1.5\n"), "{metrics}");
    }

    #[tokio::test]
    async fn a_run_with_a_record_budget_stops_once_every_shard_spent_it_or_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let api = MemoryKinesis::new(vec![shard("x", &[], false), shard("y", &[], true)]);
        testing::add_watermarks(&api, "x", 5);
        testing::add_watermarks(&api, "y", 1);
        let mut options = testing::options(dir.path());
        options.stop_when_idle = None;
        options.stop_after_records = Some(2);
        let (result, state) = run_to_end(api, options).await;
        let summary = result.expect("a clean run");
        assert_eq!(summary.finished_shards, ["y"]);
        assert_eq!(summary.counters.records, 3, "two of x, one of y");
        assert_eq!(shard_status(&state, "x").records, 2);
        let x = checkpoint(dir.path(), "x").await.position;
        assert_eq!(x, Position::Sequence { sequence_number: "00002".to_owned(), sub_sequence: None });
    }

    #[tokio::test]
    async fn an_assigned_worker_reads_only_its_own_shards_at_the_assignment_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("assignment.json");
        let owners = [("x".to_owned(), 0), ("y".to_owned(), 1)].into();
        std::fs::write(&path, Assignment { epoch: 4, replicas: 2, owners }.to_json()).expect("write");
        let api = MemoryKinesis::new(vec![shard("x", &[], false), shard("y", &[], false)]);
        testing::add_watermarks(&api, "x", 1);
        testing::add_watermarks(&api, "y", 1);
        let mut options = testing::options(dir.path());
        options.assignment = AssignmentSource::File(path);
        options.ordinal = Some(0);
        let (result, state) = run_to_end(api, options).await;
        assert_eq!(result.expect("a clean run").counters.records, 1, "x only");
        let status = state.status();
        assert_eq!((status.ordinal, status.assignment_epoch), (Some(0), Some(4)));
        assert!(!status.shards.contains_key("y"), "y belongs to ordinal 1");
        let x = checkpoint(dir.path(), "x").await;
        assert_eq!((x.owner_ordinal, x.owner_epoch), (Some(0), 4));
        assert_eq!(state.readiness(), Ok(()), "no longer waiting for an assignment");
    }

    /// A coordinator over a stream with no shard, as `run_worker` builds it.
    async fn coordinator(dir: &Path, ownership: Ownership) -> Coordinator<MemoryKinesis> {
        let shared = testing::shared(Arc::new(MemoryKinesis::default()), testing::options(dir)).await;
        let (_passes, redrive_passes) = watch::channel(0);
        Coordinator::new(Arc::new(shared), ownership, redrive_passes)
    }

    #[tokio::test]
    async fn how_a_shard_ended_decides_whether_it_starts_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = coordinator(dir.path(), Ownership::All { epoch: 7 }).await;
        let later = Instant::now() + Duration::from_secs(600);

        c.next_discovery = later;
        c.on_exit("done".to_owned(), Ok(ShardExit::Finished));
        assert!(c.finished.contains("done") && c.next_discovery < later, "its children are looked for at once");

        c.on_exit("taken".to_owned(), Ok(ShardExit::Fenced));
        assert_eq!(c.parked.get("taken"), Some(&7), "with every shard owned, a fenced shard is not taken back");

        c.on_exit("spent".to_owned(), Ok(ShardExit::Stopped));
        assert_eq!(c.parked.get("spent"), Some(&7), "its record budget is spent");
        c.stopping = Some(Control::Stop { emit_open_windows: false });
        c.on_exit("stopped".to_owned(), Ok(ShardExit::Stopped));
        assert!(!c.parked.contains_key("stopped"), "stopped by the run itself");

        assert_eq!(c.summary.finished_shards, ["done"]);
        assert_eq!(c.summary.fenced_shards, ["taken"]);
    }

    #[tokio::test]
    async fn an_assigned_worker_looks_again_at_fenced_shards_and_restarts_released_ones_it_owns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let owners = [("mine".to_owned(), 0), ("theirs".to_owned(), 1)].into();
        let (_tx, rx) = watch::channel(Some(Assignment { epoch: 2, replicas: 2, owners }));
        let mut c = coordinator(dir.path(), Ownership::assigned(0, rx)).await;
        c.follow_assignment().await.expect("the source is open");
        assert_eq!(c.shared.state.assignment_epoch(), Some(2));

        c.on_exit("mine".to_owned(), Ok(ShardExit::Fenced));
        assert!(c.parked.is_empty(), "a newer epoch's owner is waited for at the next discovery");

        let later = Instant::now() + Duration::from_secs(600);
        c.next_discovery = later;
        c.on_exit("theirs".to_owned(), Ok(ShardExit::Released));
        assert_eq!(c.next_discovery, later, "released to its new owner");
        c.on_exit("mine".to_owned(), Ok(ShardExit::Released));
        assert!(c.next_discovery < later, "granted back while it was being released: started again");
    }

    #[tokio::test]
    async fn a_failed_shard_waits_for_its_retry_and_a_run_to_idle_ends_with_its_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = coordinator(dir.path(), Ownership::All { epoch: 0 }).await;
        c.next_discovery = Instant::now() + Duration::from_secs(600);
        let gone = KinesisError::NotFound { operation: "GetRecords", message: "no such shard".to_owned() };
        c.on_exit("s".to_owned(), Err(RunError::Kinesis(gone)));
        assert!(c.next_discovery <= Instant::now() + Retries::FIRST, "discovery comes back for it");
        let status = shard_status(&c.shared.state, "s");
        assert_eq!(status.state, ShardState::Failed);
        assert!(status.error.as_deref().is_some_and(|e| e.contains("no such shard")));
        assert_eq!(c.shared.state.metrics.shard_failures.with_label_values(&["kinesis"]).get(), 1);
        assert_eq!(c.publish_gauges(), 1, "one failed shard waits for its retry");

        c.stopping = Some(Control::Stop { emit_open_windows: true });
        match c.into_summary() {
            Err(RunError::ShardsFailed(failures)) => assert_eq!(failures[0].0, "s"),
            other => panic!("expected the failed shard, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_shard_that_ends_well_after_failing_is_forgotten_and_a_stopped_run_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = coordinator(dir.path(), Ownership::All { epoch: 0 }).await;
        c.on_exit("s".to_owned(), Err(RunError::Config("boom".to_owned())));
        c.on_exit("s".to_owned(), Ok(ShardExit::Finished));
        assert_eq!(c.publish_gauges(), 0);
        c.stopping = Some(Control::Stop { emit_open_windows: true });
        assert!(c.into_summary().is_ok());

        let mut c = coordinator(dir.path(), Ownership::All { epoch: 0 }).await;
        c.on_exit("s".to_owned(), Err(RunError::Config("boom".to_owned())));
        c.stopping = Some(Control::Stop { emit_open_windows: false });
        assert!(c.into_summary().is_ok(), "a shutdown does not fail for a shard that would have been retried");
    }

    #[tokio::test]
    async fn a_lost_assignment_source_fails_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = watch::channel(None);
        let mut c = coordinator(dir.path(), Ownership::assigned(0, rx)).await;
        drop(tx);
        assert!(matches!(c.follow_assignment().await, Err(RunError::Assignment(crate::handoff::SourceError::Ended))));
    }
}

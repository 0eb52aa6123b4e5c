//! `taxi-worker local`: the whole pipeline embedded in one process, with no cloud at all.
//!
//! ```text
//!  source thread ──chunks──▶ parse threads (round robin) ──▶ dispatcher ──▶ shard tasks ──▶ merge task
//!  (read, decompress,        (parse, validate, partition    (restores       (watermarks,    (sums partials,
//!   split lines)              by MD5 of trip_id)             input order)    windows)        final results)
//! ```
//!
//! Chunks go to the parse threads round robin and the dispatcher reads their outputs in the same
//! order, so every shard sees its records in input order whatever the parallelism: results are
//! deterministic. Checkpoints are barriers in that stream: when one reaches the dispatcher, every
//! shard and the merge have processed exactly the records before it, and their states are written
//! as one consistent checkpoint (per-shard objects plus the run's own state).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::pace::Pacer;
use taxi_core::analysis::{ClosedWindows, MergedResult};
use taxi_core::checkpoint::{
    CheckpointError, FORMAT_VERSION, Owner, PartialsState, Position, ShardCheckpoint, decode_versioned,
};
use taxi_core::config::{ConfigError, EngineConfig, WatermarkStrategy};
use taxi_core::event::{Event, InvalidReason, Millis};
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::input::{Chunk, ChunkReader, Format, InputError, parse_line};
use taxi_core::merge::Merger;
use taxi_core::partition::{ShardRouter, shard_id};
use taxi_core::shard::{Counters, ShardProcessor};
use taxi_io::store::{DirStore, Precondition};

/// Bytes of input per chunk: large enough to amortize channel hops, small enough to keep memory
/// flat (a few chunks are in flight per stage).
const CHUNK_BYTES: usize = 512 * 1024;
/// Chunks buffered per parse thread, and batches buffered per shard.
const STAGE_DEPTH: usize = 4;
/// Checkpoint directories kept for inspection; older ones are deleted.
const CHECKPOINTS_RETAINED: u64 = 2;
const LATEST_KEY: &str = "LATEST";
const RUN_STATE_FILE: &str = "local-run.json";

/// Where the records come from.
#[derive(Clone, Debug)]
pub enum LocalInput {
    /// A JSON-lines or TLC CSV file, plain, gzip or zstd.
    File(PathBuf),
    /// Synthetic trips from the generator.
    Generate(GeneratorConfig),
}

impl LocalInput {
    /// What a checkpoint remembers of the input, to refuse resuming over a different one.
    fn identity(&self) -> String {
        match self {
            LocalInput::File(path) => {
                let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                format!("file:{}:{len}", path.display())
            }
            LocalInput::Generate(g) => {
                format!("generate:{}:{}:{}:{}:{:?}", g.trips, g.seed, g.start, g.max_disorder_ms, g.watermark_every)
            }
        }
    }
}

/// Checkpointing of a local run.
#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    /// Directory holding the checkpoints.
    pub dir: PathBuf,
    /// Time between checkpoints.
    pub interval: Duration,
    /// Continue from the latest checkpoint in `dir` instead of starting over.
    pub resume: bool,
}

/// Everything a local run needs.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The records.
    pub input: LocalInput,
    /// Number of in-memory shards, partitioned as Kinesis would.
    pub shards: u32,
    /// Analyses and event time.
    pub engine: EngineConfig,
    /// Checkpoints, if any.
    pub checkpoint: Option<CheckpointOptions>,
    /// Stop (with a checkpoint) once this many input records have been processed.
    pub stop_after_records: Option<u64>,
    /// Threads parsing records (at least 1).
    pub parse_threads: usize,
    /// Replay event time at this many times wall-clock speed (the live dashboard's pace);
    /// `None` runs as fast as possible.
    pub speedup: Option<f64>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The input was read to the end and every window closed.
    Completed,
    /// Stopped on request after this many input records; the checkpoint (if any) holds the rest.
    Stopped {
        /// Input records processed.
        records: u64,
    },
}

/// The summary file (`--summary`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Input records (valid or not).
    pub records: u64,
    /// Valid trips.
    pub trips: u64,
    /// Watermark events.
    pub watermarks: u64,
    /// Invalid records.
    pub invalid: u64,
    /// Trips outside the region.
    pub outside_region: u64,
    /// Trips that came after their window closed.
    pub late: u64,
    /// Trips whose id a shard had already counted in the same window.
    #[serde(default)]
    pub duplicates: u64,
    /// Hot-spot results emitted.
    pub hot_spots: u64,
    /// Airport-trip results emitted.
    pub airport_trips: u64,
    /// Wall-clock seconds of this run.
    pub elapsed_s: f64,
    /// Input records per second in this run.
    pub events_per_s: f64,
    /// Invalid records by reason.
    pub invalid_by_reason: std::collections::BTreeMap<String, u64>,
}

/// The result of a local run.
#[derive(Clone, Debug)]
pub struct LocalRun {
    /// Merged final results, in output order.
    pub results: Vec<MergedResult>,
    /// Counters and timing.
    pub summary: Summary,
    /// How it ended.
    pub outcome: Outcome,
}

/// Live figures of a running local run, read by the progress line and the dashboard while the
/// run writes them. The run's [`Summary`] is the exact account once it ends.
#[derive(Debug, Default)]
pub struct Progress {
    /// Input records handed to the shards.
    pub records: AtomicU64,
    /// The merged watermark (ms since epoch), `i64::MIN` before there is one.
    pub watermark: AtomicI64,
    /// Valid trips parsed.
    pub trips: AtomicU64,
    /// Watermark events parsed.
    pub watermarks: AtomicU64,
    /// Invalid records skipped.
    pub invalid: AtomicU64,
    /// Trips outside the region.
    pub outside_region: AtomicU64,
    /// Trips that came after their window closed (in a shard or at the merge).
    pub late: AtomicU64,
    /// Final merged results in the order they became final; kept only when asked for.
    results: Option<Mutex<Vec<MergedResult>>>,
}

impl Progress {
    /// Live figures that also keep every final result as it comes (for the dashboard).
    pub fn keeping_results() -> Progress {
        Progress { results: Some(Mutex::new(Vec::new())), ..Progress::default() }
    }

    /// The final results kept so far whose window starts after `after` (all with `None`); empty
    /// unless made by [`Progress::keeping_results`].
    pub fn results_after(&self, after: Option<Millis>) -> Vec<MergedResult> {
        let Some(results) = &self.results else { return Vec::new() };
        let results = results.lock().unwrap_or_else(PoisonError::into_inner);
        results.iter().filter(|r| after.is_none_or(|a| r.window_start() > a)).cloned().collect()
    }

    /// How many final windows, hot spots and airport results are kept so far (without copying them).
    pub fn kept_counts(&self) -> KeptCounts {
        let Some(results) = &self.results else { return KeptCounts::default() };
        let results = results.lock().unwrap_or_else(PoisonError::into_inner);
        let windows: std::collections::BTreeSet<Millis> = results.iter().map(MergedResult::window_start).collect();
        let hot_spots = results.iter().filter(|r| matches!(r, MergedResult::HotSpot { .. })).count() as u64;
        KeptCounts { windows: windows.len() as u64, hot_spots, airport_trips: results.len() as u64 - hot_spots }
    }

    /// Keeps results that just became final (when keeping results at all).
    pub(crate) fn keep(&self, new: &[MergedResult]) {
        if let (Some(results), false) = (&self.results, new.is_empty()) {
            results.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(new);
        }
    }

    fn add_input(&self, counters: &Counters) {
        self.trips.fetch_add(counters.trips, Ordering::Relaxed);
        self.watermarks.fetch_add(counters.watermarks, Ordering::Relaxed);
        self.invalid.fetch_add(counters.invalid_total(), Ordering::Relaxed);
    }
}

/// Counts of the results a [`Progress`] keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptCounts {
    /// Distinct final windows.
    pub windows: u64,
    /// Hot-spot results.
    pub hot_spots: u64,
    /// Airport-trip results.
    pub airport_trips: u64,
}

/// Why a local run failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// Bad analysis or event-time settings.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// A setting local mode cannot honour.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The input could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint does not belong to this run.
    #[error("cannot resume from {dir}: {reason}")]
    Resume {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A pipeline stage ended unexpectedly (a bug, or a panic in a stage).
    #[error("local pipeline stage {0} stopped unexpectedly")]
    Stage(&'static str),
}

/// The state of a local run at a checkpoint, besides the per-shard objects.
#[derive(Debug, Serialize, Deserialize)]
struct RunCheckpoint {
    format_version: u32,
    checkpoint_id: u64,
    input: String,
    config: EngineConfig,
    shard_ids: Vec<String>,
    /// Input records processed (all shards).
    records: u64,
    /// Counts made while parsing: records, trips, watermarks, invalid.
    input_counters: Counters,
    pending: PartialsState,
    emitted_up_to: Option<Millis>,
    merge_late_trips: u64,
    results: Vec<MergedResult>,
}

/// A restored run: where to continue from.
struct Restored {
    checkpoint_id: u64,
    run: RunCheckpoint,
    shards: Vec<ShardProcessor>,
}

// ---- messages between stages ----

#[derive(Clone, Copy, Debug)]
struct Barrier {
    /// Input records before the barrier.
    records: u64,
    stop: bool,
}

enum Job {
    Chunk { chunk: Chunk, limit: Option<u64> },
    Barrier(Barrier),
    End,
    Failed(InputError),
}

struct ParsedBatch {
    per_shard: Vec<Vec<Event>>,
    counters: Counters,
    last_record: u64,
    /// The latest event time in the batch (for pacing).
    max_event_time: Option<Millis>,
}

enum Parsed {
    Batch(ParsedBatch),
    Barrier(Barrier),
    End,
    Failed(InputError),
}

enum ShardMsg {
    Events(Vec<Event>),
    /// The input moved on by the idle timeout without reaching this shard.
    Idle,
    Snapshot {
        records: u64,
        reply: oneshot::Sender<ShardCheckpoint>,
    },
    Finish,
}

enum MergeMsg {
    Progress { shard: usize, closed: ClosedWindows, watermark: Option<Millis> },
    Idle { shard: usize, idle: bool },
    Finished { shard: usize, closed: ClosedWindows, counters: Counters },
    Stopped { counters: Counters },
    Snapshot { reply: oneshot::Sender<MergeSnapshot> },
}

struct MergeSnapshot {
    pending: PartialsState,
    emitted_up_to: Option<Millis>,
    late_trips: u64,
    results: Vec<MergedResult>,
}

struct MergeOutcome {
    results: Vec<MergedResult>,
    shard_counters: Counters,
    late_trips: u64,
}

/// Runs the local pipeline to the end of the input, or until `stop` is set or the record limit is
/// reached (then it checkpoints, if configured, and returns [`Outcome::Stopped`]).
pub async fn run_local(
    options: LocalOptions,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> Result<LocalRun, LocalError> {
    let started = Instant::now();
    options.engine.validate()?;
    if options.engine.event_time.watermark == WatermarkStrategy::Arrival {
        return Err(LocalError::Unsupported(
            "the arrival watermark needs Kinesis arrival timestamps; use --watermark bounded or punctuated in local mode",
        ));
    }
    if options.shards == 0 {
        return Err(LocalError::Unsupported("--shards must be at least 1"));
    }
    let config = Arc::new(options.engine.clone());
    let shard_ids: Vec<String> = (0..options.shards as usize).map(shard_id).collect();
    let identity = options.input.identity();
    let store = options.checkpoint.as_ref().map(|c| DirStore::new(&c.dir));

    let restored = match (&options.checkpoint, &store) {
        (Some(c), Some(store)) if c.resume => Some(restore(store, &c.dir, &config, &shard_ids, &identity)?),
        _ => None,
    };

    let mut reader = open_input(&options.input)?;
    let resume_from = restored.as_ref().map_or(0, |r| r.run.records);
    if resume_from > 0 {
        let skipped = reader.skip_records(resume_from)?;
        if skipped < resume_from {
            let dir = options.checkpoint.as_ref().map(|c| c.dir.clone()).unwrap_or_default();
            return Err(LocalError::Resume {
                dir,
                reason: format!("the input has only {skipped} records, the checkpoint is at {resume_from}"),
            });
        }
    }
    let format = *reader.format();
    progress.records.store(resume_from, Ordering::Relaxed);
    progress.watermark.store(i64::MIN, Ordering::Relaxed);
    if let Some(r) = &restored {
        progress.add_input(&r.run.input_counters);
        let mut shards = Counters::default();
        r.shards.iter().for_each(|s| shards.add(s.counters()));
        progress.outside_region.store(shards.outside_region, Ordering::Relaxed);
        progress.late.store(shards.late + r.run.merge_late_trips, Ordering::Relaxed);
        progress.keep(&r.run.results);
    }

    // Stage wiring.
    let parse_threads = options.parse_threads.max(1);
    let (job_txs, job_rxs): (Vec<_>, Vec<_>) = (0..parse_threads).map(|_| mpsc::channel::<Job>(STAGE_DEPTH)).unzip();
    let (parsed_txs, parsed_rxs): (Vec<_>, Vec<_>) =
        (0..parse_threads).map(|_| mpsc::channel::<Parsed>(STAGE_DEPTH)).unzip();
    let (merge_tx, merge_rx) = mpsc::channel::<MergeMsg>(64);

    let checkpoint_interval = options.checkpoint.as_ref().map(|c| c.interval);
    let source = {
        let stop = stop.clone();
        let limit = options.stop_after_records;
        tokio::task::spawn_blocking(move || run_source(reader, job_txs, resume_from, limit, checkpoint_interval, &stop))
    };
    let router = Arc::new(ShardRouter::even(options.shards));
    for (jobs, out) in job_rxs.into_iter().zip(parsed_txs) {
        let router = router.clone();
        tokio::task::spawn_blocking(move || run_parser(format, &router, jobs, out));
    }

    let (mut shard_processors, mut merger, mut results, mut input_counters, mut next_checkpoint_id) = match restored {
        Some(r) => {
            let mut merger = Merger::new(config.clone(), shard_ids.len());
            merger.restore(r.run.pending.restore(&config)?, r.run.emitted_up_to, r.run.merge_late_trips);
            (r.shards, merger, r.run.results, r.run.input_counters, r.checkpoint_id + 1)
        }
        None => (
            shard_ids.iter().map(|_| ShardProcessor::new(config.clone())).collect(),
            Merger::new(config.clone(), shard_ids.len()),
            Vec::new(),
            Counters::default(),
            1,
        ),
    };
    // Shards restored at their checkpointed watermarks tell the merge where they are.
    for (i, shard) in shard_processors.iter().enumerate() {
        merger.set_watermark(i, shard.watermark());
    }
    let mut idle_clock = IdleClock::new(config.event_time.idle_timeout_ms, shard_ids.len());
    let mut shard_txs = Vec::with_capacity(shard_ids.len());
    let mut shard_tasks = Vec::with_capacity(shard_ids.len());
    for (index, (processor, id)) in shard_processors.drain(..).zip(&shard_ids).enumerate() {
        let (tx, rx) = mpsc::channel::<ShardMsg>(STAGE_DEPTH);
        shard_txs.push(tx);
        let task = ShardTask {
            index,
            shard_id: id.clone(),
            processor,
            config: config.clone(),
            merge: merge_tx.clone(),
            owner: Owner { epoch: 0, id: "local".to_owned(), ordinal: None },
            progress: progress.clone(),
        };
        shard_tasks.push(tokio::spawn(task.run(rx)));
    }
    let merge_task = {
        let config = config.clone();
        let progress = progress.clone();
        let results = std::mem::take(&mut results);
        tokio::spawn(run_merge(merger, config, merge_rx, results, progress))
    };

    // The dispatcher runs here: it restores input order and drives barriers.
    let mut outcome = Outcome::Completed;
    let mut pacer = options.speedup.filter(|s| *s > 0.0).map(Pacer::new);
    let mut parsed_rxs = parsed_rxs;
    let mut turn = 0;
    loop {
        let msg = parsed_rxs[turn].recv().await.ok_or(LocalError::Stage("parser"))?;
        turn = (turn + 1) % parsed_rxs.len();
        match msg {
            Parsed::Batch(batch) => {
                if let (Some(pacer), Some(t)) = (&mut pacer, batch.max_event_time) {
                    let wait = pacer.wait(t, tokio::time::Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                input_counters.add(&batch.counters);
                progress.add_input(&batch.counters);
                let fed: Vec<bool> = batch.per_shard.iter().map(|events| !events.is_empty()).collect();
                for (tx, events) in shard_txs.iter().zip(batch.per_shard) {
                    if !events.is_empty() {
                        tx.send(ShardMsg::Events(events)).await.map_err(|_| LocalError::Stage("shard"))?;
                    }
                }
                for shard in idle_clock.after_batch(&fed, batch.max_event_time) {
                    shard_txs[shard].send(ShardMsg::Idle).await.map_err(|_| LocalError::Stage("shard"))?;
                }
                if batch.last_record > 0 {
                    progress.records.store(batch.last_record, Ordering::Relaxed);
                }
            }
            Parsed::Barrier(barrier) => {
                if let (Some(store), Some(c)) = (&store, &options.checkpoint) {
                    let state = Snapshot {
                        records: barrier.records,
                        input_counters: &input_counters,
                        identity: &identity,
                        config: &config,
                        shard_ids: &shard_ids,
                    };
                    write_checkpoint(store, &c.dir, next_checkpoint_id, state, &shard_txs, &merge_tx).await?;
                    next_checkpoint_id += 1;
                }
                if barrier.stop {
                    outcome = Outcome::Stopped { records: barrier.records };
                    break;
                }
            }
            Parsed::End => break,
            Parsed::Failed(e) => return Err(e.into()),
        }
    }
    drop(parsed_rxs);

    if outcome == Outcome::Completed {
        for tx in &shard_txs {
            tx.send(ShardMsg::Finish).await.map_err(|_| LocalError::Stage("shard"))?;
        }
    }
    drop(shard_txs);
    drop(merge_tx);
    for task in shard_tasks {
        task.await.map_err(|_| LocalError::Stage("shard"))?;
    }
    let merged = merge_task.await.map_err(|_| LocalError::Stage("merge"))?;
    source.await.map_err(|_| LocalError::Stage("source"))?;

    let mut merged = merged;
    let mut results = std::mem::take(&mut merged.results);
    results.sort_by(MergedResult::output_order);
    let summary = summarize(&input_counters, &merged, &results, started.elapsed(), resume_from);
    Ok(LocalRun { results, summary, outcome })
}

fn open_input(input: &LocalInput) -> Result<ChunkReader, LocalError> {
    match input {
        LocalInput::File(path) => Ok(ChunkReader::open(path)?),
        LocalInput::Generate(config) => {
            // The generator writes JSON lines into a pipe, so generated input takes exactly the
            // path a file does (parsing included).
            let (reader, writer) =
                std::io::pipe().map_err(|source| InputError::Read { origin: "generator pipe".into(), source })?;
            let config = config.clone();
            std::thread::spawn(move || {
                // A closed pipe (the run stopped early) ends the generator; nothing to report.
                let _ = write_json_lines(&config, writer);
            });
            Ok(ChunkReader::from_reader(Box::new(reader))?)
        }
    }
}

/// Reads chunks and hands them to the parse threads round robin, with barriers for checkpoints,
/// stop requests and the record limit.
fn run_source(
    mut reader: ChunkReader,
    jobs: Vec<mpsc::Sender<Job>>,
    mut records: u64,
    limit: Option<u64>,
    checkpoint_interval: Option<Duration>,
    stop: &AtomicBool,
) {
    let mut turn = 0;
    let mut send = |job: Job| {
        let ok = jobs[turn].blocking_send(job).is_ok();
        turn = (turn + 1) % jobs.len();
        ok
    };
    let mut last_checkpoint = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            send(Job::Barrier(Barrier { records, stop: true }));
            return;
        }
        if checkpoint_interval.is_some_and(|i| last_checkpoint.elapsed() >= i) {
            last_checkpoint = Instant::now();
            if !send(Job::Barrier(Barrier { records, stop: false })) {
                return;
            }
        }
        let chunk = match reader.next_chunk(CHUNK_BYTES) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => {
                send(Job::End);
                return;
            }
            Err(e) => {
                // Reported in input order, so the dispatcher fails with the cause.
                send(Job::Failed(e));
                return;
            }
        };
        let chunk_end = chunk.first_record + u64::from(chunk.records).saturating_sub(1);
        match limit {
            Some(l) if chunk_end >= l && chunk.records > 0 => {
                send(Job::Chunk { chunk, limit: Some(l) });
                send(Job::Barrier(Barrier { records: l.max(records), stop: true }));
                return;
            }
            _ => {
                if chunk.records > 0 {
                    records = chunk_end;
                }
                if !send(Job::Chunk { chunk, limit: None }) {
                    return;
                }
            }
        }
    }
}

/// Parses chunks into per-shard batches, preserving the order of records within each shard.
fn run_parser(format: Format, router: &ShardRouter, mut jobs: mpsc::Receiver<Job>, out: mpsc::Sender<Parsed>) {
    while let Some(job) = jobs.blocking_recv() {
        let parsed = match job {
            Job::Chunk { chunk, limit } => Parsed::Batch(parse_chunk(&format, router, &chunk, limit)),
            Job::Barrier(b) => Parsed::Barrier(b),
            Job::End => Parsed::End,
            Job::Failed(e) => Parsed::Failed(e),
        };
        if out.blocking_send(parsed).is_err() {
            return;
        }
    }
}

fn parse_chunk(format: &Format, router: &ShardRouter, chunk: &Chunk, limit: Option<u64>) -> ParsedBatch {
    let mut per_shard: Vec<Vec<Event>> = (0..router.shards()).map(|_| Vec::new()).collect();
    let mut counters = Counters::default();
    let mut last_record = 0;
    let mut max_event_time: Option<Millis> = None;
    for (record_no, line) in chunk.lines() {
        if limit.is_some_and(|l| record_no > l) {
            break;
        }
        last_record = record_no;
        match parse_line(format, line, record_no) {
            Ok(Event::Trip(trip)) => {
                counters.records += 1;
                counters.trips += 1;
                max_event_time = max_event_time.max(Some(trip.event_time()));
                per_shard[router.shard_for_trip(trip.trip_id)].push(Event::Trip(trip));
            }
            Ok(watermark @ Event::Watermark(t)) => {
                // A watermark event reaches every shard, as the producer sends it.
                counters.records += 1;
                max_event_time = max_event_time.max(Some(t));
                counters.watermarks += 1;
                per_shard.iter_mut().for_each(|events| events.push(watermark));
            }
            Err(reason) => counters.count_invalid(reason),
        }
    }
    ParsedBatch { per_shard, counters, last_record, max_event_time }
}

/// Decides when a shard is idle by the input's progress, not the wall clock: a shard is idle once
/// the input's event time has moved on by the idle timeout since it last received anything. A
/// slow or stalled input therefore changes no result, and the shard fed last is never idle, so
/// some shard always holds the merged watermark.
#[derive(Debug)]
struct IdleClock {
    /// The idle timeout in event-time milliseconds; 0 = shards are never idle.
    timeout_ms: Millis,
    /// The input's largest event time so far.
    input_time: Option<Millis>,
    /// Per shard: the input's event time when it was last fed, and whether it was declared idle.
    shards: Vec<(Option<Millis>, bool)>,
}

impl IdleClock {
    fn new(timeout_ms: Millis, shards: usize) -> IdleClock {
        IdleClock { timeout_ms, input_time: None, shards: vec![(None, false); shards] }
    }

    /// Records one dispatched batch (`fed[i]`: shard `i` got events) and returns the shards that
    /// just became idle.
    fn after_batch(&mut self, fed: &[bool], max_event_time: Option<Millis>) -> Vec<usize> {
        self.input_time = self.input_time.max(max_event_time);
        let Some(now) = self.input_time else {
            return Vec::new();
        };
        let mut newly_idle = Vec::new();
        for (i, ((last_fed, idle), fed)) in self.shards.iter_mut().zip(fed).enumerate() {
            if *fed {
                *last_fed = Some(now);
                *idle = false;
                continue;
            }
            // A shard never fed is measured from the input's first event time.
            let since = *last_fed.get_or_insert(now);
            if self.timeout_ms > 0 && !*idle && now.saturating_sub(since) >= self.timeout_ms {
                *idle = true;
                newly_idle.push(i);
            }
        }
        newly_idle
    }
}

/// One shard's processing loop.
struct ShardTask {
    index: usize,
    shard_id: String,
    processor: ShardProcessor,
    config: Arc<EngineConfig>,
    merge: mpsc::Sender<MergeMsg>,
    owner: Owner,
    progress: Arc<Progress>,
}

impl ShardTask {
    /// Sends to the merge; `false` when the merge is gone (the run is ending).
    async fn tell_merge(&self, msg: MergeMsg) -> bool {
        self.merge.send(msg).await.is_ok()
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<ShardMsg>) {
        let mut idle = false;
        loop {
            let Some(msg) = inbox.recv().await else {
                // Stopped before the end of the input: report the counts, keep the windows open
                // (the checkpoint holds them).
                let counters = self.processor.counters().clone();
                self.tell_merge(MergeMsg::Stopped { counters }).await;
                return;
            };
            match msg {
                ShardMsg::Idle => {
                    // Passed over by the input for the idle timeout: stop holding merged windows
                    // open until events arrive again.
                    idle = true;
                    if !self.tell_merge(MergeMsg::Idle { shard: self.index, idle: true }).await {
                        return;
                    }
                }
                ShardMsg::Events(events) => {
                    if std::mem::take(&mut idle)
                        && !self.tell_merge(MergeMsg::Idle { shard: self.index, idle: false }).await
                    {
                        return;
                    }
                    let before = self.processor.watermark();
                    let counted = (self.processor.counters().outside_region, self.processor.counters().late);
                    for event in &events {
                        self.processor.process(event, None);
                    }
                    // The live figures; the run's summary adds up the shards' own counters at the end.
                    let counters = self.processor.counters();
                    self.progress.outside_region.fetch_add(counters.outside_region - counted.0, Ordering::Relaxed);
                    self.progress.late.fetch_add(counters.late - counted.1, Ordering::Relaxed);
                    let closed = self.processor.take_closed();
                    let watermark = self.processor.watermark();
                    if (!closed.is_empty() || watermark != before)
                        && !self.tell_merge(MergeMsg::Progress { shard: self.index, closed, watermark }).await
                    {
                        return;
                    }
                }
                ShardMsg::Snapshot { records, reply } => {
                    let position = Position::InputRecord { record: records };
                    let _ = reply.send(ShardCheckpoint::capture(
                        &self.shard_id,
                        position,
                        &self.owner,
                        &self.processor,
                        &self.config,
                    ));
                }
                ShardMsg::Finish => {
                    let closed = self.processor.take_all();
                    let counters = self.processor.counters().clone();
                    self.tell_merge(MergeMsg::Finished { shard: self.index, closed, counters }).await;
                    return;
                }
            }
        }
    }
}

async fn run_merge(
    mut merger: Merger,
    config: Arc<EngineConfig>,
    mut inbox: mpsc::Receiver<MergeMsg>,
    mut results: Vec<MergedResult>,
    progress: Arc<Progress>,
) -> MergeOutcome {
    let mut shard_counters = Counters::default();
    let mut late_counted = merger.late_trips();
    while let Some(msg) = inbox.recv().await {
        match msg {
            MergeMsg::Progress { shard, closed, watermark } => {
                merger.add(&closed);
                merger.set_watermark(shard, watermark);
            }
            MergeMsg::Idle { shard, idle } => merger.set_idle(shard, idle),
            MergeMsg::Finished { shard, closed, counters } => {
                merger.add(&closed);
                merger.set_finished(shard);
                shard_counters.add(&counters);
            }
            MergeMsg::Stopped { counters } => {
                shard_counters.add(&counters);
                continue;
            }
            MergeMsg::Snapshot { reply } => {
                let _ = reply.send(MergeSnapshot {
                    pending: PartialsState::capture(&config, merger.pending()),
                    emitted_up_to: merger.emitted_up_to(),
                    late_trips: merger.late_trips(),
                    results: results.clone(),
                });
                continue;
            }
        }
        let new = merger.take_final();
        progress.keep(&new);
        results.extend(new);
        progress.late.fetch_add(merger.late_trips() - late_counted, Ordering::Relaxed);
        late_counted = merger.late_trips();
        if let Some(w) = merger.merged_watermark().filter(|w| *w != Millis::MAX) {
            progress.watermark.store(w, Ordering::Relaxed);
        }
    }
    MergeOutcome { results, shard_counters, late_trips: merger.late_trips() }
}

/// What the dispatcher knows at a barrier.
struct Snapshot<'a> {
    records: u64,
    input_counters: &'a Counters,
    identity: &'a str,
    config: &'a EngineConfig,
    shard_ids: &'a [String],
}

fn checkpoint_prefix(id: u64) -> String {
    format!("checkpoint-{id:08}")
}

/// Collects every shard's and the merge's state at a barrier and writes them as checkpoint `id`:
/// per-shard objects and the run state under `checkpoint-<id>/`, then `LATEST` (the commit point).
async fn write_checkpoint(
    store: &DirStore,
    dir: &Path,
    id: u64,
    state: Snapshot<'_>,
    shards: &[mpsc::Sender<ShardMsg>],
    merge: &mpsc::Sender<MergeMsg>,
) -> Result<(), LocalError> {
    let started = Instant::now();
    let mut shard_checkpoints = Vec::with_capacity(shards.len());
    for tx in shards {
        let (reply, rx) = oneshot::channel();
        tx.send(ShardMsg::Snapshot { records: state.records, reply }).await.map_err(|_| LocalError::Stage("shard"))?;
        shard_checkpoints.push(rx.await.map_err(|_| LocalError::Stage("shard"))?);
    }
    // Every shard has answered, so everything it sent before the barrier is queued ahead of this.
    let (reply, rx) = oneshot::channel();
    merge.send(MergeMsg::Snapshot { reply }).await.map_err(|_| LocalError::Stage("merge"))?;
    let merged = rx.await.map_err(|_| LocalError::Stage("merge"))?;
    let run = RunCheckpoint {
        format_version: FORMAT_VERSION,
        checkpoint_id: id,
        input: state.identity.to_owned(),
        config: state.config.clone(),
        shard_ids: state.shard_ids.to_vec(),
        records: state.records,
        input_counters: state.input_counters.clone(),
        pending: merged.pending,
        emitted_up_to: merged.emitted_up_to,
        merge_late_trips: merged.late_trips,
        results: merged.results,
    };
    let store = store.clone();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), LocalError> {
        let prefix = checkpoint_prefix(id);
        for checkpoint in &shard_checkpoints {
            let key = format!("{prefix}/{}.json", checkpoint.shard_id);
            store.put(&key, &checkpoint.to_bytes()?, &Precondition::None)?;
        }
        let bytes = serde_json::to_vec(&run).map_err(CheckpointError::Encode)?;
        store.put(&format!("{prefix}/{RUN_STATE_FILE}"), &bytes, &Precondition::None)?;
        store.put(LATEST_KEY, id.to_string().as_bytes(), &Precondition::None)?;
        if id > CHECKPOINTS_RETAINED {
            store.delete_prefix(&checkpoint_prefix(id - CHECKPOINTS_RETAINED))?;
        }
        tracing::info!(checkpoint = id, records = run.records, dir = %dir.display(), elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint written");
        Ok(())
    })
    .await
    .map_err(|_| LocalError::Stage("checkpoint writer"))?
}

/// Loads the latest checkpoint and checks it belongs to this run.
fn restore(
    store: &DirStore,
    dir: &Path,
    config: &Arc<EngineConfig>,
    shard_ids: &[String],
    identity: &str,
) -> Result<Restored, LocalError> {
    let fail = |reason: String| LocalError::Resume { dir: dir.to_path_buf(), reason };
    let (latest, _) = store.get(LATEST_KEY)?.ok_or_else(|| fail("it holds no checkpoint".to_owned()))?;
    let id: u64 = std::str::from_utf8(&latest)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| fail(format!("{LATEST_KEY} is not a checkpoint number")))?;
    let prefix = checkpoint_prefix(id);
    let (bytes, _) = store
        .get(&format!("{prefix}/{RUN_STATE_FILE}"))?
        .ok_or_else(|| fail(format!("{prefix}/{RUN_STATE_FILE} is missing")))?;
    let run: RunCheckpoint = decode_versioned(&bytes)?;
    if run.input != identity {
        return Err(fail(format!("it was taken over another input ({})", run.input)));
    }
    if run.shard_ids != shard_ids {
        return Err(fail(format!("it was taken with {} shards, not {}", run.shard_ids.len(), shard_ids.len())));
    }
    if run.config != **config {
        return Err(fail("it was taken with different analysis or event-time settings".to_owned()));
    }
    let mut shards = Vec::with_capacity(shard_ids.len());
    for id in shard_ids {
        let (bytes, _) =
            store.get(&format!("{prefix}/{id}.json"))?.ok_or_else(|| fail(format!("{prefix}/{id}.json is missing")))?;
        let checkpoint = ShardCheckpoint::from_bytes(&bytes)?;
        if checkpoint.position != (Position::InputRecord { record: run.records }) {
            return Err(fail(format!("shard {id} is at {:?}, the run at record {}", checkpoint.position, run.records)));
        }
        shards.push(checkpoint.restore(config.clone())?);
    }
    tracing::info!(checkpoint = id, records = run.records, "resuming from checkpoint");
    Ok(Restored { checkpoint_id: id, run, shards })
}

fn summarize(
    input: &Counters,
    merged: &MergeOutcome,
    results: &[MergedResult],
    elapsed: Duration,
    resumed_at: u64,
) -> Summary {
    let hot_spots = results.iter().filter(|r| matches!(r, MergedResult::HotSpot { .. })).count() as u64;
    let elapsed_s = elapsed.as_secs_f64();
    let processed = input.records.saturating_sub(resumed_at);
    // The parsers count what they can judge alone; a trip dated too far past its shard's latest
    // event time is judged by the shard, and reaches no window.
    let implausible_trips = input.trips.saturating_sub(merged.shard_counters.trips);
    let mut invalid = input.invalid;
    invalid[InvalidReason::ImplausibleTime.index()] += implausible_trips;
    Summary {
        records: input.records,
        trips: input.trips - implausible_trips,
        watermarks: input.watermarks,
        invalid: invalid.iter().sum(),
        outside_region: merged.shard_counters.outside_region,
        late: merged.shard_counters.late + merged.late_trips,
        duplicates: merged.shard_counters.duplicates,
        hot_spots,
        airport_trips: results.len() as u64 - hot_spots,
        elapsed_s,
        events_per_s: if elapsed_s > 0.0 { processed as f64 / elapsed_s } else { 0.0 },
        invalid_by_reason: InvalidReason::ALL
            .iter()
            .filter(|r| invalid[r.index()] > 0)
            .map(|r| (r.as_str().to_owned(), invalid[r.index()]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 60_000;

    #[test]
    fn a_shard_is_idle_once_the_input_moved_on_by_the_timeout_without_it() {
        let mut clock = IdleClock::new(MIN, 2);
        assert!(clock.after_batch(&[true, true], Some(0)).is_empty());
        assert!(clock.after_batch(&[true, false], Some(MIN - 1)).is_empty());
        assert_eq!(clock.after_batch(&[true, false], Some(MIN)), vec![1]);
        // Declared once, until it is fed again.
        assert!(clock.after_batch(&[true, false], Some(3 * MIN)).is_empty());
        assert!(clock.after_batch(&[false, true], Some(3 * MIN)).is_empty());
        assert!(clock.after_batch(&[false, true], Some(3 * MIN + MIN / 2)).is_empty(), "shard 0 was fed at 3 min");
        assert_eq!(clock.after_batch(&[false, true], Some(4 * MIN)), vec![0]);
    }

    #[test]
    fn a_stalled_input_or_batches_without_time_make_no_shard_idle() {
        let mut clock = IdleClock::new(MIN, 3);
        assert!(clock.after_batch(&[false, false, false], None).is_empty(), "no event time yet");
        assert!(clock.after_batch(&[true, false, false], Some(10 * MIN)).is_empty());
        // However long the pause between batches, only event time counts.
        assert!(clock.after_batch(&[false, false, false], None).is_empty());
        assert_eq!(clock.after_batch(&[true, false, false], Some(11 * MIN)), vec![1, 2]);
        // An older batch (disorder) does not move the input's time back.
        assert!(clock.after_batch(&[false, true, true], Some(5 * MIN)).is_empty());
    }

    #[test]
    fn a_zero_timeout_never_declares_idleness() {
        let mut clock = IdleClock::new(0, 2);
        clock.after_batch(&[true, false], Some(0));
        assert!(clock.after_batch(&[true, false], Some(1_000 * MIN)).is_empty());
    }
}

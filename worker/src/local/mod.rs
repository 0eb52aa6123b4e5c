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
//!
//! `source` holds the source and parse stages, `shard` the shard tasks, `merge` the merge task,
//! `checkpoint` writing and restoring checkpoints, and `progress` the live figures; the dispatcher
//! that wires them is [`run_local`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::pace::Pacer;
use taxi_core::analysis::MergedResult;
use taxi_core::checkpoint::{FormatError, Owner};
use taxi_core::config::{ConfigError, EngineConfig, WatermarkStrategy};
use taxi_core::event::InvalidReason;
use taxi_core::generate::GeneratorConfig;
use taxi_core::input::{InputError, InputObject, LocalFile, ZoneCentroids};
use taxi_core::merge::Merger;
use taxi_core::partition::{ShardRouter, shard_id};
use taxi_core::shard::{Counters, ShardProcessor};
use taxi_io::store::{DirStore, StoreError};

mod checkpoint;
mod merge;
mod progress;
mod shard;
mod source;

pub use progress::{KeptCounts, Progress};

use checkpoint::{Snapshot, restore, write_checkpoint};
use merge::{MergeMsg, MergeOutcome, run_merge};
use shard::{IdleClock, ShardMsg, ShardTask};
use source::{Job, Parsed, open_input, run_parser, run_source};

/// Chunks buffered per parse thread, and batches buffered per shard.
const STAGE_DEPTH: usize = 4;

/// Where the records come from.
#[derive(Clone, Debug)]
pub enum LocalInput {
    /// Objects read in order, records numbered across them: each JSON lines or TLC CSV (plain,
    /// gzip or zstd) or Parquet.
    Objects {
        /// The objects, in input order.
        objects: Vec<Arc<dyn InputObject>>,
        /// Places trips of CSV and Parquet objects that name taxi zones instead of coordinates.
        zone_centroids: Option<Arc<ZoneCentroids>>,
    },
    /// Synthetic trips from the generator.
    Generate(GeneratorConfig),
}

impl LocalInput {
    /// The local file at `path`, alone.
    pub fn file(path: impl Into<PathBuf>) -> LocalInput {
        LocalInput::files(vec![path.into()], None)
    }

    /// The local files at `paths`, in order, with an optional zone centroid table.
    pub fn files(paths: Vec<PathBuf>, zone_centroids: Option<Arc<ZoneCentroids>>) -> LocalInput {
        let objects = paths.into_iter().map(|p| Arc::new(LocalFile::new(p)) as Arc<dyn InputObject>).collect();
        LocalInput::Objects { objects, zone_centroids }
    }

    /// What a checkpoint remembers of the input, to refuse resuming over a different one.
    fn identity(&self) -> String {
        match self {
            LocalInput::Objects { objects, .. } => {
                objects.iter().map(|o| object_identity(o.as_ref())).collect::<Vec<_>>().join(" + ")
            }
            LocalInput::Generate(g) => {
                format!("generate:{}:{}:{}:{}:{:?}", g.trips, g.seed, g.start, g.max_disorder_ms, g.watermark_every)
            }
        }
    }
}

/// One object's name and size. A local file keeps the `file:PATH:SIZE` form a run over one file
/// has always recorded, so such checkpoints still resume.
fn object_identity(object: &dyn InputObject) -> String {
    let len = object.random_access().map_or(0, |r| r.len());
    match object.origin().strip_prefix("input file ") {
        Some(path) => format!("file:{path}:{len}"),
        None => format!("{}:{len}", object.origin()),
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
    /// A checkpoint could not be encoded, decoded or restored under the current settings.
    #[error(transparent)]
    Checkpoint(#[from] FormatError),
    /// The checkpoint directory could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
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
        tokio::task::spawn_blocking(move || run_parser(&router, jobs, out));
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

/// The run's summary: what the parsers counted, corrected by what the shards and the merge judged.
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

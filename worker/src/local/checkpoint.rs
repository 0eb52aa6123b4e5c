//! The checkpoints of a local run, in a directory: at a barrier every shard and the merge hand over
//! their state, written as per-shard objects plus the run's own state under `checkpoint-<id>/`,
//! committed by `LATEST`; and the restore that checks a checkpoint belongs to this run.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::LocalError;
use super::merge::MergeMsg;
use super::shard::ShardMsg;
use taxi_core::analysis::MergedResult;
use taxi_core::checkpoint::{FORMAT_VERSION, FormatError, PartialsState, Position, ShardCheckpoint, decode_versioned};
use taxi_core::config::EngineConfig;
use taxi_core::event::Millis;
use taxi_core::shard::{Counters, ShardProcessor};
use taxi_io::store::{DirStore, Precondition};

/// Checkpoint directories kept for inspection; older ones are deleted.
const CHECKPOINTS_RETAINED: u64 = 2;
/// The key holding the id of the latest complete checkpoint: writing it commits one.
const LATEST_KEY: &str = "LATEST";
/// The run's own state, beside the per-shard objects of a checkpoint.
const RUN_STATE_FILE: &str = "local-run.json";

/// The state of a local run at a checkpoint, besides the per-shard objects.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RunCheckpoint {
    format_version: u32,
    checkpoint_id: u64,
    input: String,
    config: EngineConfig,
    shard_ids: Vec<String>,
    /// Input records processed (all shards).
    pub(super) records: u64,
    /// Counts made while parsing: records, trips, watermarks, invalid.
    pub(super) input_counters: Counters,
    /// The merge's partial results not final yet, its emission frontier and its late trips.
    pub(super) pending: PartialsState,
    pub(super) emitted_up_to: Option<Millis>,
    pub(super) merge_late_trips: u64,
    /// The final results so far.
    pub(super) results: Vec<MergedResult>,
}

/// A restored run: where to continue from.
pub(super) struct Restored {
    /// The checkpoint it was restored from.
    pub(super) checkpoint_id: u64,
    /// The run's state at that checkpoint.
    pub(super) run: RunCheckpoint,
    /// The shards, restored, in shard order.
    pub(super) shards: Vec<ShardProcessor>,
}

/// What the dispatcher knows at a barrier.
pub(super) struct Snapshot<'a> {
    /// Input records before the barrier.
    pub(super) records: u64,
    /// What the parsers counted up to the barrier.
    pub(super) input_counters: &'a Counters,
    /// The input, as checkpoints remember it.
    pub(super) identity: &'a str,
    pub(super) config: &'a EngineConfig,
    pub(super) shard_ids: &'a [String],
}

/// The key prefix of checkpoint `id`.
fn checkpoint_prefix(id: u64) -> String {
    format!("checkpoint-{id:08}")
}

/// Collects every shard's and the merge's state at a barrier and writes them as checkpoint `id`:
/// per-shard objects and the run state under `checkpoint-<id>/`, then `LATEST` (the commit point).
pub(super) async fn write_checkpoint(
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
        let bytes = serde_json::to_vec(&run).map_err(FormatError::Encode)?;
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
pub(super) fn restore(
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

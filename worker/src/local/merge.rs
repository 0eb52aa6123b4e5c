//! The merge stage: one task sums the shards' partial results into final ones as the merged
//! watermark passes their windows, and hands its state over at checkpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::Progress;
use taxi_core::analysis::{ClosedWindows, MergedResult};
use taxi_core::checkpoint::PartialsState;
use taxi_core::config::EngineConfig;
use taxi_core::event::Millis;
use taxi_core::merge::Merger;
use taxi_core::shard::Counters;

/// What the shards (and the checkpoint writer) tell the merge.
pub(super) enum MergeMsg {
    /// A shard closed windows or moved its watermark.
    Progress { shard: usize, closed: ClosedWindows, watermark: Option<Millis> },
    /// A shard became idle, or busy again.
    Idle { shard: usize, idle: bool },
    /// A shard reached the end of the input: its last windows and its counts.
    Finished { shard: usize, closed: ClosedWindows, counters: Counters },
    /// A shard stopped before the end of the input: its counts.
    Stopped { counters: Counters },
    /// The merge's state for a checkpoint.
    Snapshot { reply: oneshot::Sender<MergeSnapshot> },
}

/// The merge's state at a checkpoint.
pub(super) struct MergeSnapshot {
    /// Partial results not final yet.
    pub(super) pending: PartialsState,
    /// The emission frontier: windows ending at or before it are final.
    pub(super) emitted_up_to: Option<Millis>,
    /// Trips that reached the merge after their window was final.
    pub(super) late_trips: u64,
    /// The final results so far.
    pub(super) results: Vec<MergedResult>,
}

/// What the merge hands back once every shard is done.
pub(super) struct MergeOutcome {
    /// The final results, in the order they became final.
    pub(super) results: Vec<MergedResult>,
    /// The shards' counters, added up.
    pub(super) shard_counters: Counters,
    /// Trips that reached the merge after their window was final.
    pub(super) late_trips: u64,
}

/// The merge task: merges what the shards send until they are all gone, keeping the final results.
pub(super) async fn run_merge(
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

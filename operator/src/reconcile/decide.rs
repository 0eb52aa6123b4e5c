//! The decide step, pure: from the validated pipeline, what the pass [observed](super::observe)
//! and the time, to a [`Decision`]: the replicas ([`crate::scaling`]), how a change of them is
//! staged ([`crate::rollout`]), the shard assignment (`taxi_core::assignment`) and every object to
//! apply or delete ([`crate::resources`]). No client, no clock, no `async`: each case is a unit
//! test below.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use taxi_core::assignment::{Assignment, above_recorded, assign, moved_shards};
use taxi_core::status::WorkerStatus;

use super::observe::Observed;
use crate::crd::{TaxiPipeline, TaxiPipelineSpec};
use crate::resources::{Resources, ValidPipeline, build};
use crate::rollout::{Rollout, WorkersSeen, plan};
use crate::scaling::{self, ScalingDecision, ScalingMemory};
use crate::validate::{InvalidSpec, TAKEOVER_TIMEOUT, desired_replicas};

/// What a pass does about a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The worker replicas this pass aims at, and why.
    pub scaling: ScalingDecision,
    /// What the pipeline's scaling keeps for the next pass.
    pub scaling_memory: ScalingMemory,
    /// Open shards of the stream.
    pub open_shards: usize,
    /// How far this pass goes towards the replicas: the StatefulSet's size, the replicas the shards
    /// are assigned over, and what the rollout still waits for.
    pub rollout: Rollout,
    /// The assignment to write.
    pub assignment: Assignment,
    /// Whether its epoch differs from the one read (a new or first assignment).
    pub assignment_changed: bool,
    /// Shards whose owner changes with it, sorted (they pause while they move).
    pub moved: Vec<String>,
    /// Every object of the pipeline; the optional ones are deleted when `None`. The assignment
    /// ConfigMap carries the resourceVersion it was read at, so it is written only over that one.
    pub resources: Resources,
}

impl Decision {
    /// The worker replicas this pass aims at.
    pub fn desired(&self) -> u32 {
        self.scaling.replicas
    }
}

/// Decides the pass. `Err` only for an autoscaling spec the policy cannot run.
pub fn decide(
    pipeline: &TaxiPipeline,
    valid: &ValidPipeline,
    observed: &Observed,
    now: Timestamp,
) -> Result<Decision, InvalidSpec> {
    let open_shards = observed.shards.iter().filter(|s| s.is_open()).count();
    let (scaling, scaling_memory) = decide_scaling(&pipeline.spec, observed, open_shards, now)?;
    let desired = scaling.replicas;
    let statefulset_replicas = observed.statefulset.replicas;
    let running = statefulset_replicas.unwrap_or(0);
    let previous = observed.assignment.as_ref();
    let seen = WorkersSeen {
        ready_replicas: u32::try_from(observed.statefulset.ready).unwrap_or(0),
        leaving_drained: previous.is_some_and(|p| leaving_drained(&observed.reports, desired, running, p.epoch)),
        assignment_age: observed
            .assigned_at
            .map(|at| Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::MAX),
    };
    let rollout = plan(desired, previous, statefulset_replicas, &seen, TAKEOVER_TIMEOUT);
    // Epochs never go backwards, even when the ConfigMap was deleted or damaged: the status keeps
    // the last one published.
    let recorded = pipeline.status.as_ref().and_then(|s| s.assignment_epoch).and_then(|e| u64::try_from(e).ok());
    let assignment =
        above_recorded(assign(&observed.shards, rollout.assignment_replicas, previous), previous, recorded);
    let moved = previous.map(|p| moved_shards(p, &assignment)).unwrap_or_default();
    let assignment_changed = previous.is_none_or(|p| p.epoch != assignment.epoch);
    let assigned_at = match (assignment_changed, observed.assigned_at) {
        (false, Some(at)) => at.to_string(),
        _ => now.to_string(),
    };
    let mut resources = build(valid, rollout.statefulset_replicas, &assignment, &assigned_at);
    // Written only over the version read: a deposed leader's write fails (see `apply`).
    resources.assignment.metadata.resource_version = observed.assignment_version.clone();
    Ok(Decision { scaling, scaling_memory, open_shards, rollout, assignment, assignment_changed, moved, resources })
}

/// The replicas of this pass ([`scaling::decide`]) from the scaling memory of the previous one.
fn decide_scaling(
    spec: &TaxiPipelineSpec,
    observed: &Observed,
    open_shards: usize,
    now: Timestamp,
) -> Result<(ScalingDecision, ScalingMemory), InvalidSpec> {
    let floor = desired_replicas(spec);
    let current = observed.statefulset.replicas.unwrap_or(floor);
    let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
    let reports: Vec<&WorkerStatus> = observed.reports.values().collect();
    let open = u32::try_from(open_shards).unwrap_or(u32::MAX);
    scaling::decide(spec, &observed.scaling, &reports, open, current, now_ms)
        .map_err(|e| InvalidSpec { field: "spec.autoscaling", reason: e.to_string() })
}

/// Whether every pod at an ordinal `desired..running` acts on `epoch` (or later) and reads nothing.
fn leaving_drained(reports: &BTreeMap<u32, WorkerStatus>, desired: u32, running: u32, epoch: u64) -> bool {
    (desired..running).all(|ordinal| {
        reports.get(&ordinal).is_some_and(|r| r.assignment_epoch.is_some_and(|e| e >= epoch) && r.owned_shards == 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaving_workers_are_drained_only_when_they_act_on_the_epoch_and_read_nothing() {
        let report =
            |epoch, owned| WorkerStatus { assignment_epoch: Some(epoch), owned_shards: owned, ..Default::default() };
        let mut reports = BTreeMap::from([(0, report(5, 4)), (1, report(5, 0)), (2, report(5, 0))]);
        assert!(leaving_drained(&reports, 1, 3, 5));
        reports.insert(2, report(4, 0));
        assert!(!leaving_drained(&reports, 1, 3, 5), "still on the old epoch");
        reports.remove(&2);
        assert!(!leaving_drained(&reports, 1, 3, 5), "did not answer");
        assert!(leaving_drained(&reports, 3, 3, 5), "nobody is leaving");
    }
}

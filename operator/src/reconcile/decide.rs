//! The decide step, pure: from the validated pipeline, what the pass [observed](super::observe)
//! and the time, to a [`Decision`]: the replicas ([`crate::scaling`]), how a change of them is
//! staged ([`crate::rollout`]), the shard assignment (`taxi_core::assignment`), every object to
//! apply or delete ([`crate::resources`]) and what becomes of the enhanced fan-out consumer
//! ([`super::consumer`]). No client, no clock, no `async`: each case is a unit test
//! below.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use taxi_core::assignment::{Assignment, above_recorded, assign, moved_shards};
use taxi_core::status::WorkerStatus;

use super::consumer::{self, ConsumerPlan};
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
    /// What becomes of the enhanced fan-out consumer the operator names for the pipeline.
    pub consumer: ConsumerPlan,
}

impl Decision {
    /// The worker replicas this pass aims at.
    pub fn replicas(&self) -> u32 {
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
    let consumer = consumer::plan(pipeline, valid, &observed.statefulset);
    Ok(Decision {
        scaling,
        scaling_memory,
        open_shards,
        rollout,
        assignment,
        assignment_changed,
        moved,
        resources,
        consumer,
    })
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
    use serde_json::{Value, json};
    use taxi_core::status::{ShardState, ShardStatus};
    use taxi_core::topology::ShardInfo;

    use super::*;
    use crate::reconcile::observe::StatefulSetSeen;
    use crate::resources::ASSIGNED_AT_ANNOTATION;
    use crate::validate::{Defaults, validate};

    const NOW: &str = "2026-11-27T12:00:00Z";
    /// When the assignment of the fixtures was written: long before [`NOW`].
    const AN_HOUR_AGO: &str = "2026-11-27T11:00:00Z";

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn later(seconds: i64) -> Timestamp {
        Timestamp::from_millisecond(at(NOW).as_millisecond() + seconds * 1000).expect("timestamp")
    }

    /// The minimal example's spec with `parallelism` workers, `extra` merged in.
    fn pipeline(parallelism: i32, extra: Value) -> TaxiPipeline {
        let mut object = json!({
            "apiVersion": "taxipipeline.io/v1alpha1",
            "kind": "TaxiPipeline",
            "metadata": {"name": "nyc", "namespace": "taxi", "uid": "0b5e-uid", "generation": 4},
            "spec": {
                "stream": {"name": "taxi-trips", "shards": 4},
                "parallelism": parallelism,
                "checkpoint": {"uri": "s3://taxi-checkpoints/nyc"},
                "sink": {"opensearch": {"endpoint": "https://search.example.com"}}
            }
        });
        merge(&mut object, extra);
        serde_json::from_value(object).expect("a TaxiPipeline")
    }

    fn merge(target: &mut Value, patch: Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    merge(t.entry(k).or_insert(Value::Null), v);
                }
            }
            (t, p) => *t = p,
        }
    }

    fn autoscaled(parallelism: i32) -> TaxiPipeline {
        pipeline(
            parallelism,
            json!({"spec": {"autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 4,
                "maxLag": "1m", "scaleUpStabilization": "1m"}}}),
        )
    }

    /// A shard of an even split of the hash space into `n` parts.
    fn shard(index: u32, n: u32) -> ShardInfo {
        let width = u128::MAX / u128::from(n);
        ShardInfo {
            shard_id: format!("shardId-{index:012}"),
            parent: None,
            adjacent_parent: None,
            starting_hash_key: width * u128::from(index),
            ending_hash_key: width * u128::from(index + 1) - 1,
            ending_sequence_number: None,
        }
    }

    fn four_open_shards() -> Vec<ShardInfo> {
        (0..4).map(|i| shard(i, 4)).collect()
    }

    /// Shard 0 of four split in two: the parent closed, children 4 and 5 open.
    fn shard_zero_split() -> Vec<ShardInfo> {
        let mut shards = four_open_shards();
        shards[0].ending_sequence_number = Some("49".into());
        let (start, end) = (shards[0].starting_hash_key, shards[0].ending_hash_key);
        let half = start + (end - start) / 2;
        let child = |index: u32, starting_hash_key, ending_hash_key| ShardInfo {
            shard_id: format!("shardId-{index:012}"),
            parent: Some("shardId-000000000000".into()),
            adjacent_parent: None,
            starting_hash_key,
            ending_hash_key,
            ending_sequence_number: None,
        };
        shards.push(child(4, start, half));
        shards.push(child(5, half + 1, end));
        shards
    }

    /// What a pass read: `shards`, the assignment ConfigMap (`None`: absent) with its document
    /// and time, and the StatefulSet's `(spec.replicas, readyReplicas)` (`None`: absent).
    fn observed(
        shards: Vec<ShardInfo>,
        assignment: Option<(&Assignment, &str)>,
        statefulset: Option<(u32, i32)>,
    ) -> Observed {
        Observed {
            shards,
            assignment: assignment.map(|(a, _)| a.clone()),
            assignment_version: assignment.map(|_| "1717".to_owned()),
            assigned_at: assignment.map(|(_, time)| at(time)),
            statefulset: statefulset
                .map(|(replicas, ready)| StatefulSetSeen {
                    exists: true,
                    replicas: Some(replicas),
                    pods: i32::try_from(replicas).expect("replicas"),
                    ready,
                    ..StatefulSetSeen::default()
                })
                .unwrap_or_default(),
            ..Observed::default()
        }
    }

    /// A worker's `/status`: acting on `epoch`, owning `owned` shards.
    fn report(epoch: u64, owned: u64) -> WorkerStatus {
        WorkerStatus { assignment_epoch: Some(epoch), owned_shards: owned, ..WorkerStatus::default() }
    }

    /// Worker `ordinal` reading its shards of `assignment`, each `lag_ms` behind with `records` read.
    fn reading(assignment: &Assignment, ordinal: u32, lag_ms: i64, records: u64) -> WorkerStatus {
        let shards: BTreeMap<String, ShardStatus> = assignment
            .shards_of(ordinal)
            .map(|id| {
                let shard = ShardStatus {
                    state: ShardState::Reading,
                    millis_behind_latest: Some(lag_ms),
                    records,
                    ..ShardStatus::default()
                };
                (id.to_owned(), shard)
            })
            .collect();
        WorkerStatus {
            ordinal: Some(ordinal),
            assignment_epoch: Some(assignment.epoch),
            owned_shards: shards.len() as u64,
            shards,
            ..WorkerStatus::default()
        }
    }

    fn decide_at(pipeline: &TaxiPipeline, observed: &Observed, now: Timestamp) -> Result<Decision, InvalidSpec> {
        let valid =
            validate(pipeline, &Defaults::new("ghcr.io/taxipipeline/taxi:test", "taxi-system")).expect("a valid spec");
        decide(pipeline, &valid, observed, now)
    }

    fn assigned_at(decision: &Decision) -> &str {
        decision.resources.assignment.metadata.annotations.as_ref().expect("annotations")[ASSIGNED_AT_ANNOTATION]
            .as_str()
    }

    fn statefulset_replicas(decision: &Decision) -> Option<i32> {
        decision.resources.stateful_set.spec.replicas
    }

    #[test]
    fn a_first_pass_assigns_every_shard_over_the_desired_workers_at_once() {
        let d = decide_at(&pipeline(2, json!({})), &observed(four_open_shards(), None, None), at(NOW)).expect("decide");
        assert_eq!(d.replicas(), 2);
        assert_eq!(d.scaling.reason, "spec.parallelism is 2 (autoscaling is off)");
        assert_eq!(d.scaling.policy_reason, None);
        assert_eq!(d.rollout, Rollout { statefulset_replicas: 2, assignment_replicas: 2, waiting: None });
        assert_eq!((d.assignment.epoch, d.assignment.replicas, d.assignment.owners.len()), (1, 2, 4));
        assert!(d.assignment_changed && d.moved.is_empty());
        assert_eq!(d.open_shards, 4);
        assert_eq!(statefulset_replicas(&d), Some(2));
        assert!(d.resources.pod_disruption_budget.is_some() && d.resources.service_account.is_some());
        assert_eq!(d.resources.assignment.metadata.resource_version, None, "created, not written over a version");
        assert_eq!(assigned_at(&d), at(NOW).to_string());
    }

    #[test]
    fn a_steady_pipeline_moves_nothing_and_keeps_its_epoch_and_time() {
        let two = assign(&four_open_shards(), 2, None);
        let seen = observed(four_open_shards(), Some((&two, AN_HOUR_AGO)), Some((2, 2)));
        let d = decide_at(&pipeline(2, json!({})), &seen, at(NOW)).expect("decide");
        assert_eq!(d.assignment, two);
        assert!(!d.assignment_changed && d.moved.is_empty());
        assert_eq!(d.rollout, Rollout { statefulset_replicas: 2, assignment_replicas: 2, waiting: None });
        assert_eq!(assigned_at(&d), at(AN_HOUR_AGO).to_string(), "the epoch did not change, nor its time");
        assert_eq!(d.resources.assignment.metadata.resource_version.as_deref(), Some("1717"));
    }

    #[test]
    fn more_parallelism_grows_the_statefulset_first_and_moves_shards_once_the_pods_are_ready() {
        let two = assign(&four_open_shards(), 2, None);
        let three = pipeline(3, json!({}));
        let starting = observed(four_open_shards(), Some((&two, AN_HOUR_AGO)), Some((2, 2)));
        let d = decide_at(&three, &starting, at(NOW)).expect("decide");
        assert_eq!((d.rollout.statefulset_replicas, d.rollout.assignment_replicas), (3, 2));
        assert!(d.rollout.waiting.as_deref().is_some_and(|w| w.contains("3 ready workers (2 now)")), "{d:?}");
        assert_eq!(d.assignment, two, "no shard moves to a pod that is not ready");
        assert!(!d.assignment_changed && d.moved.is_empty());
        assert_eq!(statefulset_replicas(&d), Some(3));

        let ready = observed(four_open_shards(), Some((&two, AN_HOUR_AGO)), Some((3, 3)));
        let d = decide_at(&three, &ready, at(NOW)).expect("decide");
        assert_eq!(d.rollout, Rollout { statefulset_replicas: 3, assignment_replicas: 3, waiting: None });
        assert_eq!((d.assignment.epoch, d.assignment.replicas), (2, 3));
        assert!(d.assignment_changed);
        assert_eq!(d.moved.len(), 1, "4 shards over 3 workers: only one shard moves: {:?}", d.moved);
        assert_eq!(d.assignment.owner_of(&d.moved[0]), Some(2), "to the new worker");
        assert_eq!(assigned_at(&d), at(NOW).to_string(), "a new epoch, a new time");
    }

    #[test]
    fn less_parallelism_shrinks_the_assignment_first_and_keeps_the_leaving_workers() {
        let three = assign(&four_open_shards(), 3, None);
        let seen = observed(four_open_shards(), Some((&three, AN_HOUR_AGO)), Some((3, 3)));
        let d = decide_at(&pipeline(1, json!({})), &seen, at(NOW)).expect("decide");
        assert_eq!((d.assignment.epoch, d.assignment.replicas), (three.epoch + 1, 1));
        assert_eq!(d.assignment.shards_of(0).count(), 4);
        let leaving: Vec<String> =
            three.owners.iter().filter(|(_, owner)| **owner > 0).map(|(shard, _)| shard.clone()).collect();
        assert_eq!(d.moved, leaving, "the shards of workers 1 and 2 move");
        assert_eq!((d.rollout.statefulset_replicas, d.rollout.assignment_replicas), (3, 1));
        assert!(d.rollout.waiting.is_some());
        assert_eq!(statefulset_replicas(&d), Some(3), "the leaving pods must release first");
        assert!(d.resources.pod_disruption_budget.is_some());
    }

    #[test]
    fn leaving_workers_hold_the_statefulset_until_they_release_or_the_takeover_timeout_passes() {
        let one = assign(&four_open_shards(), 1, None);
        let just_now = "2026-11-27T11:59:58Z";
        let mut seen = observed(four_open_shards(), Some((&one, just_now)), Some((3, 3)));
        seen.reports = BTreeMap::from([(1, report(one.epoch, 0)), (2, report(one.epoch, 1))]);
        let d = decide_at(&pipeline(1, json!({})), &seen, at(NOW)).expect("decide");
        assert_eq!(d.assignment, one, "the assignment is already right");
        assert!(!d.assignment_changed);
        assert_eq!((d.rollout.statefulset_replicas, d.rollout.assignment_replicas), (3, 1));
        assert_eq!(d.rollout.waiting.as_deref(), Some("waiting for workers 1..3 to release their shards"));

        seen.reports.insert(2, report(one.epoch, 0));
        let d = decide_at(&pipeline(1, json!({})), &seen, at(NOW)).expect("decide");
        assert_eq!(d.rollout, Rollout { statefulset_replicas: 1, assignment_replicas: 1, waiting: None });
        assert_eq!(statefulset_replicas(&d), Some(1));
        assert!(d.resources.pod_disruption_budget.is_none(), "one worker needs no disruption budget");

        // Worker 2 never released, but the assignment is older than the takeover timeout.
        seen.reports.insert(2, report(one.epoch, 1));
        let d = decide_at(&pipeline(1, json!({})), &seen, later(i64::try_from(TAKEOVER_TIMEOUT.as_secs()).expect("s")))
            .expect("decide");
        assert_eq!(d.rollout.statefulset_replicas, 1, "its shards are taken over anyway");
        // Without a time on the assignment, it counts as old.
        seen.assigned_at = None;
        let d = decide_at(&pipeline(1, json!({})), &seen, at(NOW)).expect("decide");
        assert_eq!(d.rollout.statefulset_replicas, 1);
    }

    #[test]
    fn a_reshard_in_progress_gives_the_children_owners_in_a_new_epoch_and_keeps_every_other_owner() {
        let before = assign(&four_open_shards(), 2, None);
        let seen = observed(shard_zero_split(), Some((&before, AN_HOUR_AGO)), Some((2, 2)));
        let d = decide_at(&pipeline(2, json!({})), &seen, at(NOW)).expect("decide");
        assert_eq!(d.open_shards, 5);
        assert_eq!(d.assignment.epoch, before.epoch + 1);
        assert!(d.assignment_changed);
        for (shard, owner) in &before.owners {
            assert_eq!(d.assignment.owner_of(shard), Some(*owner), "{shard} kept its owner");
        }
        assert_eq!(d.moved, ["shardId-000000000004", "shardId-000000000005"], "only the new children");
        assert_eq!(d.rollout, Rollout { statefulset_replicas: 2, assignment_replicas: 2, waiting: None });
    }

    #[test]
    fn a_lost_assignment_continues_above_the_epoch_the_status_recorded() {
        let published = pipeline(2, json!({"status": {"assignmentEpoch": 7}}));
        let deleted = observed(four_open_shards(), None, Some((2, 2)));
        let d = decide_at(&published, &deleted, at(NOW)).expect("decide");
        assert_eq!(d.assignment.epoch, 8, "workers ignore a document older than the one they follow");
        assert!(d.assignment_changed);
        assert_eq!(d.resources.assignment.metadata.resource_version, None);

        // A damaged document counts as none, and is written over the version read.
        let damaged = Observed { assignment_version: Some("1717".into()), ..deleted };
        let d = decide_at(&published, &damaged, at(NOW)).expect("decide");
        assert_eq!(d.assignment.epoch, 8);
        assert_eq!(d.resources.assignment.metadata.resource_version.as_deref(), Some("1717"));
    }

    #[test]
    fn the_autoscaler_waits_out_its_window_with_the_memory_of_the_previous_passes() {
        let two = assign(&four_open_shards(), 2, None);
        let pipeline = autoscaled(1);
        // Both workers report every shard two minutes behind (maxLag is one minute).
        let mut seen = observed(four_open_shards(), Some((&two, AN_HOUR_AGO)), Some((2, 2)));
        seen.reports = BTreeMap::from([(0, reading(&two, 0, 120_000, 1_000)), (1, reading(&two, 1, 120_000, 1_000))]);

        // Pass 1: the lag is new; the workers stay at the shard baseline (4 shards / 2 per replica).
        let first = decide_at(&pipeline, &seen, at(NOW)).expect("decide");
        assert_eq!(first.replicas(), 2);
        assert!(first.scaling.policy_reason.is_some());
        assert_eq!(first.scaling.max_lag_ms, Some(120_000));
        assert_eq!(first.scaling_memory.records.len(), 4, "every reading shard's count is kept");

        // Pass 2, 30 s later: still inside the one-minute window.
        seen.scaling = first.scaling_memory.clone();
        let second = decide_at(&pipeline, &seen, later(30)).expect("decide");
        assert_eq!(second.replicas(), 2, "{:?}", second.scaling);

        // Pass 3, 90 s after the first: lag above maxLag for longer than the window: scale up.
        seen.scaling = second.scaling_memory.clone();
        let third = decide_at(&pipeline, &seen, later(90)).expect("decide");
        assert!(third.replicas() > 2 && third.replicas() <= 4, "within maxReplicas and the open shards: {third:?}");
        assert!(third.scaling.reason.contains("above maxLag"), "{}", third.scaling.reason);
        assert_eq!(third.scaling.desired, third.replicas());
        // The new pods are not ready yet: the StatefulSet grows, the assignment waits.
        assert_eq!(third.rollout.statefulset_replicas, third.replicas());
        assert_eq!(third.rollout.assignment_replicas, 2);

        // The same observation without the memory starts the window afresh.
        seen.scaling = ScalingMemory::default();
        let forgot = decide_at(&pipeline, &seen, later(90)).expect("decide");
        assert_eq!(forgot.replicas(), 2);
    }

    #[test]
    fn parallelism_is_the_autoscalers_floor() {
        let three = assign(&four_open_shards(), 3, None);
        let mut seen = observed(four_open_shards(), Some((&three, AN_HOUR_AGO)), Some((3, 3)));
        seen.reports = (0..3).map(|ordinal| (ordinal, reading(&three, ordinal, 0, 1_000))).collect();
        // The autoscaler would scale down to the shard baseline at once (4 shards / 2 per replica).
        let eager = pipeline(3, json!({"spec": {"autoscaling": {"enabled": true, "scaleDownStabilization": "0s"}}}));
        let d = decide_at(&eager, &seen, at(NOW)).expect("decide");
        assert_eq!(d.replicas(), 3);
        assert!(d.scaling.reason.starts_with("spec.parallelism 3 is the floor"), "{}", d.scaling.reason);
        assert!(d.scaling.reason.contains("the autoscaler alone wants 2"), "{}", d.scaling.reason);
    }

    #[test]
    fn an_autoscaling_spec_the_policy_cannot_run_is_an_invalid_spec() {
        let bad = pipeline(1, json!({"spec": {"autoscaling": {"enabled": true, "minReplicas": 5, "maxReplicas": 2}}}));
        let error = decide_at(&bad, &observed(four_open_shards(), None, None), at(NOW)).expect_err("min above max");
        assert_eq!(error.field, "spec.autoscaling");
    }

    #[test]
    fn leaving_workers_are_drained_only_when_they_act_on_the_epoch_and_read_nothing() {
        let mut reports = BTreeMap::from([(0, report(5, 4)), (1, report(5, 0)), (2, report(5, 0))]);
        assert!(leaving_drained(&reports, 1, 3, 5));
        reports.insert(2, report(4, 0));
        assert!(!leaving_drained(&reports, 1, 3, 5), "still on the old epoch");
        reports.remove(&2);
        assert!(!leaving_drained(&reports, 1, 3, 5), "did not answer");
        assert!(leaving_drained(&reports, 3, 3, 5), "nobody is leaving");
    }
}

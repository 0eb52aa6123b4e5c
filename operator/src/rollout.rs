//! How a change of worker replicas is rolled out without losing a shard's reader for long:
//! shards move only to workers that are ready, and a worker is removed only after it
//! released its shards.
//!
//! - Scaling up: the StatefulSet grows first; the assignment keeps its old replica count until the
//!   new pods are ready, so no shard waits for a pod that is still pulling its image.
//! - Scaling down: the assignment shrinks first; the StatefulSet keeps the leaving pods until they
//!   report the new epoch with no shard left (they released them), or the takeover timeout has
//!   passed (their shards are taken over anyway), and only then shrinks.

use std::time::Duration;

use taxi_core::assignment::Assignment;

/// What the operator saw of the workers on this pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkersSeen {
    /// Ready pods of the StatefulSet.
    pub ready_replicas: u32,
    /// Every pod at an ordinal `>= desired` reports the current epoch and owns no shard.
    pub leaving_drained: bool,
    /// Time since the current assignment was written.
    pub assignment_age: Duration,
}

/// The replica counts to apply on this pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// Replicas of the worker StatefulSet.
    pub statefulset_replicas: u32,
    /// Replicas the shards are assigned over.
    pub assignment_replicas: u32,
    /// Why the rollout is not complete yet (the operator requeues soon while this is set).
    pub waiting: Option<String>,
}

/// Plans one step towards `desired` replicas, given the assignment in force and the StatefulSet's
/// current size.
pub fn plan(
    desired: u32,
    previous: Option<&Assignment>,
    statefulset_replicas: Option<u32>,
    seen: &WorkersSeen,
    takeover_timeout: Duration,
) -> Rollout {
    let steady = Rollout { statefulset_replicas: desired, assignment_replicas: desired, waiting: None };
    let Some(previous) = previous else {
        // First assignment: nothing to hand off.
        return steady;
    };
    let assigned = previous.replicas;
    let running = statefulset_replicas.unwrap_or(desired);
    if desired > assigned {
        if seen.ready_replicas >= desired {
            return steady;
        }
        return Rollout {
            statefulset_replicas: desired,
            assignment_replicas: assigned,
            waiting: Some(format!(
                "waiting for {desired} ready workers ({} now) before moving shards to the new ones",
                seen.ready_replicas
            )),
        };
    }
    if desired < assigned {
        // Shrink the assignment now; the leaving pods stay until they have released.
        return Rollout {
            statefulset_replicas: running.max(assigned),
            assignment_replicas: desired,
            waiting: Some(format!("moving shards off workers {desired}..{assigned} before removing them")),
        };
    }
    if running > desired && !seen.leaving_drained && seen.assignment_age < takeover_timeout {
        return Rollout {
            statefulset_replicas: running,
            assignment_replicas: desired,
            waiting: Some(format!("waiting for workers {desired}..{running} to release their shards")),
        };
    }
    steady
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn assigned(replicas: u32) -> Assignment {
        Assignment { epoch: 3, replicas, owners: Default::default() }
    }

    fn seen(ready: u32, drained: bool, age_s: u64) -> WorkersSeen {
        WorkersSeen { ready_replicas: ready, leaving_drained: drained, assignment_age: Duration::from_secs(age_s) }
    }

    #[test]
    fn the_first_assignment_covers_every_desired_replica_at_once() {
        let r = plan(3, None, None, &seen(0, false, 0), TIMEOUT);
        assert_eq!((r.statefulset_replicas, r.assignment_replicas, r.waiting), (3, 3, None));
    }

    #[test]
    fn scaling_up_moves_shards_only_once_the_new_pods_are_ready() {
        let starting = plan(3, Some(&assigned(2)), Some(2), &seen(2, false, 100), TIMEOUT);
        assert_eq!((starting.statefulset_replicas, starting.assignment_replicas), (3, 2));
        assert!(starting.waiting.as_deref().is_some_and(|w| w.contains("3 ready workers (2 now)")));
        let ready = plan(3, Some(&assigned(2)), Some(3), &seen(3, false, 100), TIMEOUT);
        assert_eq!((ready.statefulset_replicas, ready.assignment_replicas, ready.waiting), (3, 3, None));
    }

    #[test]
    fn scaling_down_shrinks_the_assignment_first_and_keeps_the_leaving_pods() {
        // A drained-looking report cannot count yet: the smaller assignment is not written.
        let r = plan(1, Some(&assigned(3)), Some(3), &seen(3, true, 100), TIMEOUT);
        assert_eq!((r.statefulset_replicas, r.assignment_replicas), (3, 1));
        assert!(r.waiting.is_some());
    }

    #[test]
    fn the_statefulset_shrinks_after_the_release_or_the_takeover_timeout() {
        let waiting = plan(1, Some(&assigned(1)), Some(3), &seen(3, false, 5), TIMEOUT);
        assert_eq!((waiting.statefulset_replicas, waiting.assignment_replicas), (3, 1));
        let released = plan(1, Some(&assigned(1)), Some(3), &seen(3, true, 5), TIMEOUT);
        assert_eq!((released.statefulset_replicas, released.waiting), (1, None));
        let timed_out = plan(1, Some(&assigned(1)), Some(3), &seen(3, false, 30), TIMEOUT);
        assert_eq!(timed_out.statefulset_replicas, 1);
    }

    #[test]
    fn a_steady_pipeline_needs_nothing() {
        let r = plan(2, Some(&assigned(2)), Some(2), &seen(1, false, 0), TIMEOUT);
        assert_eq!((r.statefulset_replicas, r.assignment_replicas, r.waiting), (2, 2, None));
    }

    #[test]
    fn scaling_to_zero_pauses_every_shard() {
        let r = plan(0, Some(&assigned(2)), Some(2), &seen(2, false, 0), TIMEOUT);
        assert_eq!((r.statefulset_replicas, r.assignment_replicas), (2, 0));
        let r = plan(0, Some(&assigned(0)), Some(2), &seen(2, true, 1), TIMEOUT);
        assert_eq!((r.statefulset_replicas, r.waiting), (0, None));
    }
}

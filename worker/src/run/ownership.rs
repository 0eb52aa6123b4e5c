//! Which shards this worker may run, and under which epoch each one starts: every shard at a
//! fixed epoch ([`Ownership::All`]), or the shards the assignment in effect gives this worker's
//! ordinal ([`Ownership::Assigned`]), following each new epoch as it arrives.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::watch;

use crate::handoff::{EpochPlan, SourceError, plan_epoch};
use taxi_core::assignment::Assignment;

/// Under which assignment a shard task starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grant {
    /// Written into the checkpoint as the owner epoch.
    pub(super) epoch: u64,
    /// When the assignment granting the shard was seen: the start of a handoff pause and of the
    /// takeover timeout.
    pub(super) requested_at: Instant,
    /// Wait for the previous owner's release before claiming (assignments); `all` claims at once.
    pub(super) wait_for_release: bool,
}

/// Which shards this worker may run.
pub(super) enum Ownership {
    /// Every shard, at a fixed epoch.
    All {
        /// Written into every checkpoint.
        epoch: u64,
    },
    /// The shards an assignment gives `ordinal`.
    Assigned {
        /// This worker's ordinal.
        ordinal: u32,
        /// The assignment source.
        assignments: watch::Receiver<Option<Assignment>>,
        /// The epoch in effect; `None` until the first assignment.
        plan: Option<EpochPlan>,
        /// When each shard granted by the current epoch (and not started yet) was granted.
        granted_at: HashMap<String, Instant>,
    },
}

impl Ownership {
    /// The shards `assignments` gives `ordinal`; none until a first assignment arrives.
    pub(super) fn assigned(ordinal: u32, assignments: watch::Receiver<Option<Assignment>>) -> Ownership {
        Ownership::Assigned { ordinal, assignments, plan: None, granted_at: HashMap::new() }
    }

    /// Whether the worker owns `shard` now.
    pub(super) fn owns(&self, shard: &str) -> bool {
        match self {
            Ownership::All { .. } => true,
            Ownership::Assigned { plan, .. } => plan.as_ref().is_some_and(|p| p.owned.contains(shard)),
        }
    }

    /// The epoch in effect (0 before a first assignment).
    pub(super) fn epoch(&self) -> u64 {
        match self {
            Ownership::All { epoch } => *epoch,
            Ownership::Assigned { plan, .. } => plan.as_ref().map_or(0, |p| p.epoch),
        }
    }

    /// Whether the worker knows what it owns (with an assignment: once it has seen one).
    pub(super) fn settled(&self) -> bool {
        match self {
            Ownership::All { .. } => true,
            Ownership::Assigned { plan, .. } => plan.is_some(),
        }
    }

    /// Whether a fenced shard stays parked: with `all`, two workers would take it from each other;
    /// under an assignment the next discovery looks again (a newer epoch's owner is waited for,
    /// never taken over).
    pub(super) fn parks_fenced_shards(&self) -> bool {
        matches!(self, Ownership::All { .. })
    }

    /// The grant under which `shard` starts at `now`.
    pub(super) fn grant(&mut self, shard: &str, now: Instant) -> Grant {
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
    /// the shards in `running`; its newly granted shards count as granted at `now`. Older or equal
    /// epochs are ignored. `Err` when the source is gone.
    pub(super) fn next_plan<'a>(
        &mut self,
        running: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Result<Option<&EpochPlan>, SourceError> {
        let Ownership::Assigned { ordinal, assignments, plan, granted_at } = self else { return Ok(None) };
        // `changed` marks values seen, so compare epochs rather than ask `has_changed`.
        assignments.has_changed().map_err(|_| SourceError::Ended)?;
        let current = plan.as_ref().map(|p| p.epoch);
        let newer = assignments.borrow_and_update().as_ref().filter(|a| current.is_none_or(|e| a.epoch > e)).cloned();
        let Some(assignment) = newer else { return Ok(None) };
        let previously_owned = plan.take().map(|p| p.owned).unwrap_or_default();
        let next = plan_epoch(&assignment, *ordinal, &previously_owned, running);
        granted_at.retain(|shard, _| next.owned.contains(shard));
        for shard in &next.granted {
            granted_at.insert(shard.clone(), now);
        }
        Ok(Some(plan.insert(next)))
    }

    /// Resolves when a new assignment may have arrived (or its source is gone); never with `all`.
    pub(super) async fn changed(&mut self) {
        match self {
            // An error (the source is gone) is handled by the next `next_plan`.
            Ownership::Assigned { assignments, .. } => {
                let _ = assignments.changed().await;
            }
            Ownership::All { .. } => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    fn assignment(epoch: u64, owners: &[(&str, u32)]) -> Option<Assignment> {
        let owners = owners.iter().map(|(s, o)| ((*s).to_owned(), *o)).collect();
        Some(Assignment { epoch, replicas: 2, owners })
    }

    fn set(shards: &[&str]) -> BTreeSet<String> {
        shards.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn with_every_shard_owned_nothing_changes_and_nothing_waits() {
        let mut all = Ownership::All { epoch: 4 };
        let now = Instant::now();
        assert!(all.owns("any") && all.settled() && all.parks_fenced_shards());
        assert_eq!(all.epoch(), 4);
        assert!(matches!(all.next_plan(["a"], now), Ok(None)));
        assert_eq!(all.grant("a", now), Grant { epoch: 4, requested_at: now, wait_for_release: false });
    }

    #[test]
    fn an_assigned_worker_owns_nothing_until_its_first_assignment() {
        let (tx, rx) = watch::channel(None);
        let mut ownership = Ownership::assigned(0, rx);
        let t0 = Instant::now();
        assert!(!ownership.settled() && !ownership.owns("a") && !ownership.parks_fenced_shards());
        assert!(matches!(ownership.next_plan([], t0), Ok(None)), "no assignment yet");

        tx.send_replace(assignment(2, &[("a", 0), ("b", 1), ("c", 0)]));
        let plan = ownership.next_plan([], t0).expect("source open").expect("a first plan").clone();
        assert_eq!(plan.epoch, 2);
        assert_eq!(plan.owned, set(&["a", "c"]));
        assert_eq!(plan.granted, set(&["a", "c"]), "everything owned is new at the first epoch");
        assert!(plan.release.is_empty());
        assert!(ownership.settled() && ownership.owns("a") && !ownership.owns("b"));
        assert_eq!(ownership.epoch(), 2);

        let later = t0 + Duration::from_secs(5);
        let grant = ownership.grant("a", later);
        assert_eq!(grant, Grant { epoch: 2, requested_at: t0, wait_for_release: true }, "granted when seen");
        assert_eq!(ownership.grant("a", later).requested_at, later, "a grant is used once");
    }

    #[test]
    fn a_new_epoch_releases_running_shards_moved_away_and_grants_new_ones() {
        let (tx, rx) = watch::channel(assignment(1, &[("a", 0), ("b", 0), ("c", 1)]));
        let mut ownership = Ownership::assigned(0, rx);
        let t0 = Instant::now();
        ownership.next_plan([], t0).expect("open").expect("epoch 1");

        // b moves to 1, c moves here; a keeps running.
        tx.send_replace(assignment(2, &[("a", 0), ("b", 1), ("c", 0)]));
        let t1 = t0 + Duration::from_secs(1);
        let plan = ownership.next_plan(["a", "b"], t1).expect("open").expect("epoch 2").clone();
        assert_eq!((plan.epoch, plan.owned.clone()), (2, set(&["a", "c"])));
        assert_eq!(plan.release, set(&["b"]));
        assert_eq!(plan.granted, set(&["c"]));
        assert!(!ownership.owns("b"));
        assert_eq!(ownership.grant("c", t1 + Duration::from_secs(3)).requested_at, t1);
        // a was granted at epoch 1 and never started: its grant of epoch 1 still counts.
        assert_eq!(ownership.grant("a", t1).requested_at, t0);
        assert_eq!(ownership.grant("a", t1).epoch, 2, "it starts under the epoch in effect");
    }

    #[test]
    fn a_grant_not_started_before_its_shard_moved_away_is_dropped() {
        let (tx, rx) = watch::channel(assignment(1, &[("a", 0)]));
        let mut ownership = Ownership::assigned(0, rx);
        let t0 = Instant::now();
        ownership.next_plan([], t0).expect("open").expect("epoch 1");
        tx.send_replace(assignment(2, &[("a", 1)]));
        ownership.next_plan([], t0).expect("open").expect("epoch 2");
        tx.send_replace(assignment(3, &[("a", 0)]));
        let t3 = t0 + Duration::from_secs(9);
        let plan = ownership.next_plan([], t3).expect("open").expect("epoch 3").clone();
        assert_eq!(plan.granted, set(&["a"]), "granted again");
        assert_eq!(ownership.grant("a", t3).requested_at, t3, "the pause counts from the new grant");
    }

    #[test]
    fn an_older_or_repeated_epoch_is_ignored_and_a_closed_source_is_an_error() {
        let (tx, rx) = watch::channel(assignment(5, &[("a", 0)]));
        let mut ownership = Ownership::assigned(0, rx);
        let now = Instant::now();
        ownership.next_plan([], now).expect("open").expect("epoch 5");
        tx.send_replace(assignment(5, &[("a", 1)]));
        assert!(matches!(ownership.next_plan(["a"], now), Ok(None)));
        tx.send_replace(assignment(4, &[("a", 1)]));
        assert!(matches!(ownership.next_plan(["a"], now), Ok(None)));
        assert!(ownership.owns("a"), "still the plan of epoch 5");

        drop(tx);
        assert!(matches!(ownership.next_plan(["a"], now), Err(SourceError::Ended)));
    }

    #[tokio::test]
    async fn a_new_assignment_wakes_the_coordinator() {
        let (tx, rx) = watch::channel(None);
        let mut ownership = Ownership::assigned(1, rx);
        let waiter = tokio::spawn(async move {
            ownership.changed().await;
            ownership
        });
        tx.send_replace(assignment(1, &[("a", 1)]));
        let mut ownership = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("task");
        assert!(ownership.next_plan([], Instant::now()).expect("open").is_some_and(|p| p.owned.contains("a")));

        let mut all = Ownership::All { epoch: 0 };
        let never = tokio::time::timeout(Duration::from_millis(20), all.changed()).await;
        assert!(never.is_err(), "with every shard owned there is nothing to wait for");
    }
}

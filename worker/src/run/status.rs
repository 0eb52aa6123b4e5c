//! What a running worker shows of itself: [`WorkerState`], shared between the coordinator, its
//! shard tasks, the HTTP endpoints and tests, and the [`taxi_core::status::WorkerStatus`]
//! document `/status` renders from it (the contract the operator reads). Error messages leave
//! through [`taxi_core::redact::url`]: whoever reaches the pod's port never reads a credential
//! that a URL quoted in an error carried.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::Serialize;

use crate::metrics::WorkerMetrics;
use taxi_core::redact;
use taxi_core::status::{ShardState, ShardStatus, WorkerStatus};
use taxi_io::sink::dead_letter::DeadLetterStore;

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
    pub dead_letters: OnceLock<DeadLetterStore>,
}

impl Default for WorkerState {
    fn default() -> Self {
        WorkerState {
            metrics: WorkerMetrics::new(),
            shards: Mutex::new(BTreeMap::new()),
            assignment: Mutex::new(AssignmentStatus::default()),
            started: Instant::now(),
            dead_letters: OnceLock::new(),
        }
    }
}

impl WorkerState {
    /// Changes the status of `shard`, adding it (as discovered) when it is new.
    pub(super) fn update(&self, shard: &str, f: impl FnOnce(&mut ShardStatus)) {
        if let Ok(mut shards) = self.shards.lock() {
            f(shards.entry(shard.to_owned()).or_default());
        }
    }

    /// Time since the worker started, in ms: the clock of `started_at_ms` and `finished_at_ms`.
    pub(super) fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Epoch of the assignment in effect, if the worker follows one.
    pub(super) fn assignment_epoch(&self) -> Option<u64> {
        self.assignment.lock().ok().and_then(|a| a.epoch)
    }

    /// Changes the assignment shown.
    pub(super) fn update_assignment(&self, f: impl FnOnce(&mut AssignmentStatus)) {
        if let Ok(mut assignment) = self.assignment.lock() {
            f(&mut assignment);
        }
    }

    /// Ready unless the worker still waits for its first assignment, refused documents cannot be
    /// stored as dead letters, or a shard's checkpoints are failing.
    pub fn readiness(&self) -> Result<(), String> {
        self.unready_reason().map_err(|reason| redact::url(&reason).into_owned())
    }

    fn unready_reason(&self) -> Result<(), String> {
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
        let mut shards = self.shards.lock().map(|s| s.clone()).unwrap_or_default();
        for shard in shards.values_mut() {
            for message in [&mut shard.error, &mut shard.checkpoint_error] {
                *message = message.as_deref().map(|m| redact::url(m).into_owned());
            }
        }
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

#[cfg(test)]
mod tests {
    use taxi_io::http::Endpoints;

    use super::*;

    #[test]
    fn only_shards_being_read_count_as_owned() {
        let state = WorkerState::default();
        for (shard, shard_state) in [
            ("a", ShardState::Reading),
            ("b", ShardState::Reading),
            ("c", ShardState::WaitingForParents),
            ("d", ShardState::WaitingForRelease),
            ("e", ShardState::Finished),
            ("f", ShardState::Failed),
        ] {
            state.update(shard, |s| s.state = shard_state);
        }
        state.update("a", |s| s.records = 42);
        state.update_assignment(|a| {
            a.ordinal = Some(1);
            a.epoch = Some(3);
        });

        let status = state.status();
        assert_eq!(status.owned_shards, 2);
        assert_eq!((status.ordinal, status.assignment_epoch), (Some(1), Some(3)));
        assert_eq!(status.shards.len(), 6);
        assert_eq!(status.shards["a"].records, 42, "a later update keeps what earlier ones set");
        assert_eq!(status.shards["a"].state, ShardState::Reading);
        assert_eq!(status.dead_letters, None, "no dead letter store opened yet");
        assert_eq!(state.assignment_epoch(), Some(3));
    }

    #[test]
    fn a_shard_is_added_as_discovered_by_its_first_update() {
        let state = WorkerState::default();
        state.update("fresh", |s| s.millis_behind_latest = Some(0));
        let status = state.status();
        assert_eq!(status.shards["fresh"].state, ShardState::Discovered);
        assert_eq!(status.shards["fresh"].millis_behind_latest, Some(0));
    }

    #[test]
    fn the_status_endpoint_renders_the_shared_document() {
        let state = WorkerState::default();
        state.update("shardId-000000000001", |s| {
            s.state = ShardState::WaitingForRelease;
            s.handoff_pause_ms = Some(250);
        });
        let json = Endpoints::status(&state);
        assert_eq!(json["owned_shards"], 0);
        assert_eq!(json["ordinal"], serde_json::Value::Null);
        let shard = &json["shards"]["shardId-000000000001"];
        assert_eq!(shard["state"], "waiting_for_release");
        assert_eq!(shard["handoff_pause_ms"], 250);
        let parsed: WorkerStatus = serde_json::from_value(json).expect("the operator can read it");
        assert_eq!(parsed, state.status());
    }

    #[test]
    fn readiness_waits_for_a_first_assignment_and_fails_on_failing_checkpoints() {
        let state = WorkerState::default();
        assert_eq!(state.readiness(), Ok(()));

        state.update_assignment(|a| a.awaiting = Some("configmap".to_owned()));
        let error = state.readiness().expect_err("no assignment yet");
        assert!(error.contains("waiting for a first shard assignment from configmap"), "{error}");
        assert!(Endpoints::readiness(&state).is_err(), "the endpoint agrees");

        state.update_assignment(|a| {
            a.awaiting = None;
            a.epoch = Some(1);
        });
        state.update("s1", |s| s.state = ShardState::Reading);
        state.update("s2", |s| s.checkpoint_error = Some("store down".to_owned()));
        assert_eq!(state.readiness(), Err("checkpoints of s2 are failing: store down".to_owned()));

        state.update("s2", |s| s.checkpoint_error = None);
        assert_eq!(state.readiness(), Ok(()), "ready again once a checkpoint succeeds");
    }

    #[test]
    fn status_and_readiness_never_show_the_credentials_an_error_quotes() {
        let state = WorkerState::default();
        state.update("s1", |s| {
            s.state = ShardState::Failed;
            s.error = Some("OpenSearch bulk request to https://writer:s3cret@search:9200 failed".to_owned());
        });
        state
            .update("s2", |s| s.checkpoint_error = Some("failed to put via http://key:s3cret@minio:9000/b".to_owned()));

        let status = state.status();
        assert_eq!(
            status.shards["s1"].error.as_deref(),
            Some("OpenSearch bulk request to https://***@search:9200 failed")
        );
        assert_eq!(status.shards["s2"].checkpoint_error.as_deref(), Some("failed to put via http://***@minio:9000/b"));
        let document = Endpoints::status(&state).to_string();
        assert!(!document.contains("s3cret"), "{document}");
        let reason = Endpoints::readiness(&state).expect_err("checkpoints of s2 are failing");
        assert_eq!(reason, "checkpoints of s2 are failing: failed to put via http://***@minio:9000/b");
    }
}

//! The worker's `/status` document, the one contract between a worker and the operator that
//! watches it: the worker serializes [`WorkerStatus`], the operator parses it. Fields are only
//! ever added; a reader fills in what a document lacks and reads a shard state it does not know as
//! [`ShardState::Unknown`], so an operator and its workers may be a version apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A worker's `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    /// Shards it is reading now.
    pub owned_shards: u64,
    /// Refused documents kept as dead letters, once the worker opened their store.
    pub dead_letters: Option<u64>,
    /// The worker's ordinal (none when it reads every shard).
    pub ordinal: Option<u32>,
    /// The assignment epoch the worker acts on (none before its first assignment).
    pub assignment_epoch: Option<u64>,
    /// Every shard the worker knows, by shard id.
    pub shards: BTreeMap<String, ShardStatus>,
}

/// The life of a shard in a worker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Known, not started yet.
    #[default]
    Discovered,
    /// A parent has not been read to its end yet.
    WaitingForParents,
    /// Being read.
    Reading,
    /// Read to its end and checkpointed as finished.
    Finished,
    /// Owned here now, but its previous owner may still read it: waiting for its release (or the
    /// takeover timeout) before claiming it.
    WaitingForRelease,
    /// Another owner took it (checkpoint conflict); not read here any more.
    Fenced,
    /// Stopped with a final checkpoint (shutdown, idle, or record budget).
    Stopped,
    /// Moved to another worker by a new assignment: final checkpoint marked released.
    Released,
    /// Failed (see `error`); started again after a back-off. The worker's other shards go on.
    Failed,
    /// A state this build does not know: written by a newer worker (operator and workers may be
    /// a version apart during an upgrade).
    #[serde(other)]
    Unknown,
}

/// What a shard is doing, for `/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShardStatus {
    /// What the shard is doing.
    pub state: ShardState,
    /// Last processed sequence number.
    pub position: Option<String>,
    /// MillisBehindLatest of the last page.
    pub millis_behind_latest: Option<i64>,
    /// The shard's watermark.
    pub watermark: Option<String>,
    /// Wall-clock time of the last successful checkpoint.
    pub last_checkpoint: Option<String>,
    /// The last checkpoint failure, until a checkpoint succeeds again.
    pub checkpoint_error: Option<String>,
    /// Why the shard failed, while it is [`ShardState::Failed`] or starting again after that.
    pub error: Option<String>,
    /// Records processed.
    pub records: u64,
    /// When the shard started (since the process started, in ms), for ordering assertions.
    pub started_at_ms: Option<u64>,
    /// When it finished (since the process started, in ms).
    pub finished_at_ms: Option<u64>,
    /// Pause of its last handoff to this worker: from seeing the assignment that granted it until
    /// reading it (waiting for the previous owner's release included).
    pub handoff_pause_ms: Option<u64>,
    /// With an archive: how long the oldest trip read and not yet archived has waited (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_lag_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_round_trips_and_unknown_states_and_fields_are_tolerated() {
        let status = WorkerStatus {
            owned_shards: 1,
            ordinal: Some(2),
            shards: [("s".to_owned(), ShardStatus { state: ShardState::WaitingForParents, ..ShardStatus::default() })]
                .into(),
            ..WorkerStatus::default()
        };
        let json = serde_json::to_string(&status).expect("serialize");
        assert!(json.contains(r#""state":"waiting_for_parents""#), "{json}");
        assert_eq!(serde_json::from_str::<WorkerStatus>(&json).expect("parse"), status);

        let newer = r#"{"owned_shards":0,"new_field":1,"shards":{"s":{"state":"hibernating","records":7}}}"#;
        let parsed: WorkerStatus = serde_json::from_str(newer).expect("parse a newer worker's document");
        assert_eq!(parsed.shards["s"].state, ShardState::Unknown);
        assert_eq!(parsed.shards["s"].records, 7);
    }
}

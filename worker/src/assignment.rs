//! Shard assignment (DESIGN §7): which worker ordinal owns which shard, at which epoch.
//!
//! The operator computes it and writes it into ConfigMap `<pipeline>-assignment`, key
//! [`ASSIGNMENT_KEY`]; workers read it from there (or from a file outside Kubernetes). This module is
//! the one definition of that document, used by the operator, the worker and the tests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The ConfigMap key (and file format) holding the assignment document.
pub const ASSIGNMENT_KEY: &str = "assignment.json";

/// Name of the ConfigMap holding a pipeline's assignment.
pub fn config_map_name(pipeline: &str) -> String {
    format!("{pipeline}-assignment")
}

/// Which worker ordinal owns each shard, at an epoch that only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// Grows by one with every change of `owners` or `replicas`.
    pub epoch: u64,
    /// Worker replicas the shards are spread over (ordinals `0..replicas`).
    pub replicas: u32,
    /// Owner ordinal per shard id.
    pub owners: BTreeMap<String, u32>,
}

/// An assignment document that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AssignmentError {
    /// Not the JSON of DESIGN §7.
    #[error("failed to parse the assignment document: {0}")]
    Parse(#[from] serde_json::Error),
    /// A shard owned by an ordinal outside `0..replicas`.
    #[error("shard {shard} is assigned to ordinal {ordinal}, but there are only {replicas} replicas")]
    OrdinalOutOfRange {
        /// The shard.
        shard: String,
        /// Its owner.
        ordinal: u32,
        /// Replicas of the assignment.
        replicas: u32,
    },
}

impl Assignment {
    /// Parses and checks an assignment document.
    pub fn from_json(bytes: &[u8]) -> Result<Assignment, AssignmentError> {
        let assignment: Assignment = serde_json::from_slice(bytes)?;
        if let Some((shard, &ordinal)) = assignment.owners.iter().find(|(_, o)| **o >= assignment.replicas) {
            return Err(AssignmentError::OrdinalOutOfRange {
                shard: shard.clone(),
                ordinal,
                replicas: assignment.replicas,
            });
        }
        Ok(assignment)
    }

    /// The document, as stored (compact JSON with shards in id order).
    pub fn to_json(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The ordinal that owns `shard`, if it is assigned.
    pub fn owner_of(&self, shard: &str) -> Option<u32> {
        self.owners.get(shard).copied()
    }

    /// The shards owned by `ordinal`, in id order.
    pub fn shards_of(&self, ordinal: u32) -> impl Iterator<Item = &str> {
        self.owners.iter().filter(move |(_, o)| **o == ordinal).map(|(s, _)| s.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_document_and_answers_owners() {
        let doc = br#"{"epoch":7,"replicas":2,"owners":{"shardId-000000000000":0,"shardId-000000000001":1}}"#;
        let a = Assignment::from_json(doc).expect("valid");
        assert_eq!(a.epoch, 7);
        assert_eq!(a.owner_of("shardId-000000000001"), Some(1));
        assert_eq!(a.owner_of("shardId-000000000009"), None);
        assert_eq!(a.shards_of(0).collect::<Vec<_>>(), ["shardId-000000000000"]);
        assert_eq!(Assignment::from_json(a.to_json().as_bytes()).expect("round trip"), a);
    }

    #[test]
    fn rejects_an_owner_outside_the_replicas() {
        let doc = br#"{"epoch":1,"replicas":2,"owners":{"shardId-000000000000":2}}"#;
        let err = Assignment::from_json(doc).expect_err("ordinal 2 of 2");
        assert!(err.to_string().contains("only 2 replicas"), "{err}");
    }
}

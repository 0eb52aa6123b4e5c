//! `status`: what the operator observed of a pipeline, and its conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Condition type: the pipeline's workers run, own every open shard and are ready.
pub const READY: &str = "Ready";
/// Condition type: the operator is rolling out a change (spec, image, assignment).
pub const PROGRESSING: &str = "Progressing";
/// Condition type: the pipeline runs but something is wrong (lag, failing checkpoints, sink errors).
pub const DEGRADED: &str = "Degraded";
/// Condition type: the number of worker replicas is being changed.
pub const SCALING: &str = "Scaling";
/// Condition type: the Kinesis stream's shard count is being changed.
pub const STREAM_RESHARDING: &str = "StreamResharding";

/// Observed state of a TaxiPipeline, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaxiPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, Scaling and StreamResharding, one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".to_owned()]))]
    pub conditions: Vec<Condition>,
    /// Worker pods that exist (the StatefulSet's replicas; the scale subresource reads it).
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the worker pods, as a string (the scale subresource reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Open shards of the stream at the last reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_shards: Option<i32>,
    /// Epoch of the current shard assignment (ConfigMap `<name>-assignment`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignment_epoch: Option<i64>,
    /// Largest millisBehindLatest over the open shards, in milliseconds, as the workers last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lag_millis: Option<i64>,
    /// Lowest watermark over the open shards (event time, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// When the oldest of the shards' latest checkpoints was written (RFC 3339): every shard a
    /// worker reads, waits for or has checkpointed has a checkpoint at least this recent, so a
    /// stuck shard holds it back. Shards read to their end (finished) do not count, nor do shards
    /// without a checkpoint yet (just claimed); when a shard's worker does not answer, its last
    /// report is missing too. Kept from the previous pass while no worker reports a checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_time: Option<Time>,
    /// Worker replicas the autoscaler wants, before stabilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Why the autoscaler wants `desiredReplicas`, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_reason: Option<String>,
    /// When the operator last changed the number of worker replicas (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// When the operator called UpdateShardCount on the stream in the last 24 hours (RFC 3339),
    /// oldest first; Kinesis limits how often a stream may be resharded per day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reshard_calls: Vec<Time>,
    /// The enhanced fan-out consumer the operator deregisters when the pipeline is deleted or
    /// stops using it: the one named after the pipeline (`<namespace>.<name>`), set while
    /// `spec.stream.consumer` is `efo` without `efoConsumerName`, and kept after a switch away
    /// until every worker runs the new settings and the consumer is deregistered. Written as
    /// null once none is left (so a status patch clears it).
    #[serde(default)]
    pub efo_consumer: Option<String>,
}

/// Puts `new` into `conditions`, replacing the condition of the same type. When the status value
/// (`True`/`False`/`Unknown`) did not change, the old `lastTransitionTime` is kept: a transition is
/// a change of status, not a change of reason or message.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn condition(type_: &str, status: &str, reason: &str, at: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: format!("{reason} message"),
            observed_generation: Some(1),
            last_transition_time: Time(at.parse().expect("timestamp")),
        }
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut conditions = vec![
            condition(READY, "False", "Starting", "2024-01-01T00:00:00Z"),
            condition(SCALING, "False", "Steady", "2024-01-01T00:00:00Z"),
        ];
        set_condition(&mut conditions, condition(READY, "False", "WaitingForPods", "2024-01-01T00:05:00Z"));
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0].reason, "WaitingForPods");
        assert_eq!(conditions[0].message, "WaitingForPods message");
        assert_eq!(conditions[0].last_transition_time, Time("2024-01-01T00:00:00Z".parse().expect("timestamp")));
        assert_eq!(conditions[1].reason, "Steady", "other types are left alone");
    }

    #[test]
    fn set_condition_moves_transition_time_when_status_changes() {
        let mut conditions = vec![condition(READY, "False", "Starting", "2024-01-01T00:00:00Z")];
        set_condition(&mut conditions, condition(READY, "True", "AllShardsOwned", "2024-01-01T00:05:00Z"));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, "True");
        assert_eq!(conditions[0].last_transition_time, Time("2024-01-01T00:05:00Z".parse().expect("timestamp")));
    }

    #[test]
    fn set_condition_appends_a_new_type() {
        let mut conditions = vec![condition(READY, "True", "AllShardsOwned", "2024-01-01T00:00:00Z")];
        set_condition(&mut conditions, condition(STREAM_RESHARDING, "True", "Splitting", "2024-01-01T00:01:00Z"));
        let types: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [READY, STREAM_RESHARDING]);
    }

    #[test]
    fn condition_type_names() {
        assert_eq!(
            [READY, PROGRESSING, DEGRADED, SCALING, STREAM_RESHARDING],
            ["Ready", "Progressing", "Degraded", "Scaling", "StreamResharding"]
        );
    }
}

//! `spec.autoscaling`: the bounds, target and lag windows of the worker autoscaler.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{DURATION_PATTERN, NON_NEGATIVE_DURATION, POSITIVE_DURATION};

/// Automatic scaling of the worker pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas must not be greater than autoscaling.maxReplicas"))]
pub struct AutoscalingSpec {
    /// Whether the operator sets the number of workers itself. Default false: `parallelism`
    /// decides. When true the operator aims at `ceil(open shards / targetShardsPerReplica)` workers;
    /// when the worst shard lag stays above `maxLag` for `scaleUpStabilization` it scales to the
    /// workers that drain the backlog within `maxLag` (sized from the measured throughput), and it
    /// scales down only after the lag stayed low for `scaleDownStabilization`. Always within
    /// `minReplicas`..`maxReplicas`, at least `parallelism`, at most the open shards.
    #[serde(default)]
    pub enabled: bool,
    /// Fewest worker pods while autoscaling, at least 1. Default 1.
    #[serde(default = "default_min_replicas")]
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.minReplicas must be at least 1"))]
    pub min_replicas: i32,
    /// Most worker pods while autoscaling. Default 10. More workers than open shards sit idle.
    #[serde(default = "default_max_replicas")]
    pub max_replicas: i32,
    /// Open shards one worker should own, at least 1. Default 2.
    #[serde(default = "default_target_shards_per_replica")]
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.targetShardsPerReplica must be at least 1"))]
    pub target_shards_per_replica: i32,
    /// Consumer lag (millisBehindLatest, worst shard) the autoscaler keeps the pipeline under, as a
    /// Go duration. Default `1m`. Lag above it for `scaleUpStabilization` scales up.
    #[serde(default = "default_max_lag")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("autoscaling.maxLag must be a positive duration"))]
    pub max_lag: String,
    /// How long a higher replica count must be wanted continuously before scaling up, as a Go
    /// duration. Default `1m`. `0s` scales up at once.
    #[serde(default = "default_scale_up_stabilization")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("autoscaling.scaleUpStabilization must be a duration of 0s or more"))]
    pub scale_up_stabilization: String,
    /// How long a lower replica count must be wanted continuously before scaling down, as a Go
    /// duration. Default `10m`. Moving shards costs a short pause, so this is longer than the
    /// scale-up window.
    #[serde(default = "default_scale_down_stabilization")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(NON_NEGATIVE_DURATION)
        .message("autoscaling.scaleDownStabilization must be a duration of 0s or more"))]
    pub scale_down_stabilization: String,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        AutoscalingSpec {
            enabled: false,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_shards_per_replica: default_target_shards_per_replica(),
            max_lag: default_max_lag(),
            scale_up_stabilization: default_scale_up_stabilization(),
            scale_down_stabilization: default_scale_down_stabilization(),
        }
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_target_shards_per_replica() -> i32 {
    2
}
fn default_max_lag() -> String {
    "1m".to_owned()
}
fn default_scale_up_stabilization() -> String {
    "1m".to_owned()
}
fn default_scale_down_stabilization() -> String {
    "10m".to_owned()
}

//! The `spec.autoscaling` settings as a checked [`Policy`]: the replica bounds, the shard baseline
//! and the lag thresholds and windows the rules use.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use taxi_core::duration::{self, DurationError};

use crate::crd::AutoscalingSpec;

/// The `spec.autoscaling` settings, parsed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Fewest replicas.
    pub min_replicas: u32,
    /// Most replicas.
    pub max_replicas: u32,
    /// Open shards one replica should own at the baseline.
    pub target_shards_per_replica: u32,
    /// Lag above which the pipeline is behind.
    pub max_lag: Duration,
    /// How long a scale-up must be wanted before it happens.
    pub scale_up_stabilization: Duration,
    /// How long the lag must stay low before a scale-down.
    pub scale_down_stabilization: Duration,
}

impl Default for Policy {
    /// The CRD's defaults: 1..10 replicas, 2 shards per replica, maxLag 1m, up 1m, down 10m.
    fn default() -> Self {
        Policy {
            min_replicas: 1,
            max_replicas: 10,
            target_shards_per_replica: 2,
            max_lag: Duration::from_secs(60),
            scale_up_stabilization: Duration::from_secs(60),
            scale_down_stabilization: Duration::from_secs(600),
        }
    }
}

/// Why `spec.autoscaling` cannot be turned into a [`Policy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A duration field is not a non-negative Go duration.
    #[error("autoscaling.{field} is not a valid duration: {source}")]
    Duration {
        /// The field, in the CRD's spelling.
        field: &'static str,
        /// What is wrong with it.
        source: DurationError,
    },
    /// A count that must be at least 1 is not.
    #[error("autoscaling.{field} must be at least 1, got {value}")]
    NotPositive {
        /// The field, in the CRD's spelling.
        field: &'static str,
        /// Its value.
        value: i32,
    },
    /// `minReplicas > maxReplicas`.
    #[error("autoscaling.minReplicas ({min}) must not be greater than autoscaling.maxReplicas ({max})")]
    MinAboveMax {
        /// minReplicas.
        min: u32,
        /// maxReplicas.
        max: u32,
    },
    /// `maxLag` is zero.
    #[error("autoscaling.maxLag must be a positive duration")]
    ZeroMaxLag,
}

impl Policy {
    /// Parses and checks the CRD's settings (the API server's CEL rules check the same; this is for
    /// objects that bypassed them).
    pub fn from_spec(spec: &AutoscalingSpec) -> Result<Policy, PolicyError> {
        let count = |field: &'static str, value: i32| {
            u32::try_from(value).ok().filter(|v| *v >= 1).ok_or(PolicyError::NotPositive { field, value })
        };
        let duration = |field: &'static str, value: &str| {
            duration::parse(value).map_err(|source| PolicyError::Duration { field, source })
        };
        let policy = Policy {
            min_replicas: count("minReplicas", spec.min_replicas)?,
            max_replicas: count("maxReplicas", spec.max_replicas)?,
            target_shards_per_replica: count("targetShardsPerReplica", spec.target_shards_per_replica)?,
            max_lag: duration("maxLag", &spec.max_lag)?,
            scale_up_stabilization: duration("scaleUpStabilization", &spec.scale_up_stabilization)?,
            scale_down_stabilization: duration("scaleDownStabilization", &spec.scale_down_stabilization)?,
        };
        if policy.min_replicas > policy.max_replicas {
            return Err(PolicyError::MinAboveMax { min: policy.min_replicas, max: policy.max_replicas });
        }
        if policy.max_lag.is_zero() {
            return Err(PolicyError::ZeroMaxLag);
        }
        Ok(policy)
    }

    /// `⌈open_shards / targetShardsPerReplica⌉`, before bounds (0 without open shards).
    pub fn shard_baseline(&self, open_shards: u32) -> u32 {
        open_shards.div_ceil(self.target_shards_per_replica.max(1))
    }

    /// `replicas` within `minReplicas..=maxReplicas`, then at most `max(open_shards, 1)`.
    pub fn bound(&self, replicas: u32, open_shards: u32) -> u32 {
        replicas.max(self.min_replicas).min(self.max_replicas).min(open_shards.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::secs;
    use super::*;

    #[test]
    fn policy_from_the_crd_defaults_and_rejections() {
        assert_eq!(Policy::from_spec(&AutoscalingSpec::default()), Ok(Policy::default()));
        let spec = |edit: fn(&mut AutoscalingSpec)| {
            let mut spec = AutoscalingSpec::default();
            edit(&mut spec);
            Policy::from_spec(&spec)
        };
        assert_eq!(spec(|s| s.min_replicas = 0), Err(PolicyError::NotPositive { field: "minReplicas", value: 0 }));
        assert_eq!(
            spec(|s| s.target_shards_per_replica = -2),
            Err(PolicyError::NotPositive { field: "targetShardsPerReplica", value: -2 })
        );
        assert_eq!(spec(|s| s.min_replicas = 11), Err(PolicyError::MinAboveMax { min: 11, max: 10 }));
        assert_eq!(spec(|s| s.max_lag = "0s".to_owned()), Err(PolicyError::ZeroMaxLag));
        assert!(matches!(
            spec(|s| s.scale_down_stabilization = "10d".to_owned()),
            Err(PolicyError::Duration { field: "scaleDownStabilization", .. })
        ));
        let custom = spec(|s| {
            s.max_lag = "90s".to_owned();
            s.scale_up_stabilization = "0s".to_owned();
            s.scale_down_stabilization = "1h".to_owned();
        });
        assert_eq!(
            custom,
            Ok(Policy {
                max_lag: secs(90),
                scale_up_stabilization: Duration::ZERO,
                scale_down_stabilization: secs(3600),
                ..Policy::default()
            })
        );
    }
}

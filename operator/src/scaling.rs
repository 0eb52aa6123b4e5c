//! How many workers a pipeline gets on this pass: `spec.parallelism` as set (or by `kubectl scale`),
//! or, with `spec.autoscaling.enabled`, the [`autoscale`](crate::autoscale) policy fed from the
//! workers' `/status` — with `spec.parallelism` as the floor.
//!
//! Pure: the reconcile loop keeps a [`ScalingMemory`] per pipeline between passes.

use std::collections::BTreeMap;

use crate::autoscale::{History, Observation, Policy, PolicyError, Reason, ShardSample, recommend};
use crate::crd::TaxiPipelineSpec;
use taxi_core::status::{ShardState, WorkerStatus};

/// What one pipeline's scaling keeps between passes (in the operator's memory: after a restart
/// the policy starts afresh, which only delays its next decision).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScalingMemory {
    /// The policy's history.
    pub history: History,
    /// Per shard: when and how many records its worker had processed, for throughput.
    pub records: BTreeMap<String, (u64, u64)>,
}

/// The replica count of this pass and why.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingDecision {
    /// Worker replicas to run.
    pub replicas: u32,
    /// `status.desiredReplicas`: what this pass alone asks for (the policy's recommendation, at
    /// least the floor), or `spec.parallelism` without autoscaling.
    pub desired: u32,
    /// `status.scalingReason`.
    pub reason: String,
    /// The policy's reason, when the autoscaler decided (for metrics labels).
    pub policy_reason: Option<Reason>,
    /// The largest shard lag seen, ms (an autoscaler input, exported as a metric).
    pub max_lag_ms: Option<u64>,
    /// Records per second over all shards (an autoscaler input, exported as a metric).
    pub consumed_per_s: f64,
}

/// Decides the replicas of this pass. `current` is the replica count the operator aims at now
/// (the StatefulSet's), `now_ms` Unix milliseconds.
pub fn decide(
    spec: &TaxiPipelineSpec,
    memory: &ScalingMemory,
    reports: &[&WorkerStatus],
    open_shards: u32,
    current: u32,
    now_ms: u64,
) -> Result<(ScalingDecision, ScalingMemory), PolicyError> {
    let floor = u32::try_from(spec.parallelism).unwrap_or(0);
    let (samples, records) = samples(reports, &memory.records, now_ms);
    let max_lag_ms = samples.iter().map(|s| s.lag_ms).max();
    let consumed_per_s = samples.iter().map(|s| s.consumed_per_s).sum();
    if !spec.autoscaling.enabled {
        let decision = ScalingDecision {
            replicas: floor,
            desired: floor,
            reason: format!("spec.parallelism is {floor} (autoscaling is off)"),
            policy_reason: None,
            max_lag_ms,
            consumed_per_s,
        };
        return Ok((decision, ScalingMemory { history: History::default(), records }));
    }
    let policy = Policy::from_spec(&spec.autoscaling)?;
    let observation = Observation { at_ms: now_ms, open_shards, current_replicas: current, shards: samples };
    let outcome = recommend(&policy, &observation, &memory.history);
    let decided = outcome.decision;
    let (replicas, reason) = if decided.replicas < floor {
        let wants = decided.replicas;
        (
            floor,
            format!("spec.parallelism {floor} is the floor; the autoscaler alone wants {wants}: {}", decided.reason),
        )
    } else {
        (decided.replicas, decided.reason.to_string())
    };
    let decision = ScalingDecision {
        replicas,
        desired: decided.recommended.max(floor),
        reason,
        policy_reason: Some(decided.reason),
        max_lag_ms,
        consumed_per_s,
    };
    Ok((decision, ScalingMemory { history: outcome.history, records }))
}

/// Per-shard samples of the reading shards, with throughput from the change of their record
/// counts since the previous pass (a restarted shard, whose count went down, counts from zero).
fn samples(
    reports: &[&WorkerStatus],
    previous: &BTreeMap<String, (u64, u64)>,
    now_ms: u64,
) -> (Vec<ShardSample>, BTreeMap<String, (u64, u64)>) {
    let mut samples = Vec::new();
    let mut records = BTreeMap::new();
    for report in reports {
        for (shard_id, shard) in &report.shards {
            if shard.state != ShardState::Reading {
                continue;
            }
            records.insert(shard_id.clone(), (now_ms, shard.records));
            let consumed_per_s = match previous.get(shard_id) {
                Some(&(at, before)) if now_ms > at => {
                    shard.records.saturating_sub(before.min(shard.records)) as f64 * 1000.0 / (now_ms - at) as f64
                }
                _ => 0.0,
            };
            samples.push(ShardSample {
                shard_id: shard_id.clone(),
                owner: report.ordinal,
                lag_ms: u64::try_from(shard.millis_behind_latest.unwrap_or(0)).unwrap_or(0),
                consumed_per_s,
                incoming_per_s: None,
            });
        }
    }
    (samples, records)
}

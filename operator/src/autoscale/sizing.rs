//! Sizing: the per-replica capacity a pass measures, each shard's incoming rate, and the replica
//! count that drains the backlog within maxLag (the sizing in the `autoscale` docs).

use std::collections::BTreeMap;

use super::{Observation, PreviousLags};

/// Utilisation the sized replica count aims at once the backlog is drained.
pub const TARGET_UTILISATION: f64 = 0.8;

/// Largest lag slope (lag seconds per second) believed when estimating an incoming rate: at a
/// slope of 1 nothing is consumed and the input cannot be told from the lag.
const MAX_LAG_SLOPE: f64 = 0.9;

/// A rate as reported, or 0 when it is not a finite non-negative number.
fn rate(r: f64) -> f64 {
    if r.is_finite() && r > 0.0 { r } else { 0.0 }
}

/// Replicas that give every replica at most `⌊capacity / need⌋` shards (see the `autoscale` docs).
pub(super) fn sized(open_shards: u32, capacity: f64, need: f64) -> u32 {
    if need <= 0.0 {
        return 1;
    }
    let per_replica = (capacity / need).floor();
    if per_replica < 1.0 {
        return open_shards;
    }
    // Saturating float-to-int conversion; above `open_shards` the count is 1 either way.
    let per_replica = (per_replica.min(f64::from(u32::MAX)) as u32).max(1);
    open_shards.div_ceil(per_replica).max(1)
}

/// Per-replica consumption: the busiest owner's total when every sample names its owner, else the
/// mean over the replicas that own a reported shard. `None` when nothing was consumed.
pub(super) fn consumption_per_replica(observation: &Observation) -> Option<f64> {
    let shards = &observation.shards;
    let estimate = if shards.iter().all(|s| s.owner.is_some()) {
        let mut per_owner: BTreeMap<Option<u32>, f64> = BTreeMap::new();
        for s in shards {
            *per_owner.entry(s.owner).or_default() += rate(s.consumed_per_s);
        }
        per_owner.into_values().fold(0.0, f64::max)
    } else {
        let total: f64 = shards.iter().map(|s| rate(s.consumed_per_s)).sum();
        let busy = observation.current_replicas.min(u32::try_from(shards.len()).unwrap_or(u32::MAX)).max(1);
        total / f64::from(busy)
    };
    (estimate > 0.0).then_some(estimate)
}

/// Incoming rate per shard (the `autoscale` docs): reported, else from the consumed rate and the lag's slope;
/// a shard with lag but no estimate takes the largest of the others.
pub(super) fn incoming_rates(
    observation: &Observation,
    previous: Option<&PreviousLags>,
    saturated_ms: u64,
) -> Vec<f64> {
    let now = observation.at_ms;
    let mut rates: Vec<f64> = observation
        .shards
        .iter()
        .map(|s| {
            if let Some(r) = s.incoming_per_s.filter(|r| r.is_finite() && *r >= 0.0) {
                return r;
            }
            let slope = previous
                .and_then(|p| {
                    let dt = now.checked_sub(p.at_ms).filter(|dt| *dt > 0)?;
                    let before = *p.shard_lag_ms.get(&s.shard_id)?;
                    Some((s.lag_ms as f64 - before as f64) / dt as f64)
                })
                .unwrap_or(0.0)
                .min(MAX_LAG_SLOPE);
            rate(s.consumed_per_s) / (1.0 - slope)
        })
        .collect();
    let largest = rates.iter().copied().fold(0.0, f64::max);
    for (r, s) in rates.iter_mut().zip(&observation.shards) {
        if *r <= 0.0 && s.lag_ms >= saturated_ms {
            *r = largest;
        }
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{SECOND, observation};
    use super::*;

    #[test]
    fn incoming_rate_comes_from_the_report_or_the_lag_slope() {
        let previous = PreviousLags {
            at_ms: 0,
            max_lag_ms: 60 * SECOND,
            shard_lag_ms: [("shardId-000000000000".to_owned(), 60 * SECOND)].into(),
        };
        // Lag grew 10 s in 30 s: consumption is 2/3 of the input.
        let obs = observation(30, 1, 1, 70, 1000.0, None);
        let rates = incoming_rates(&obs, Some(&previous), 15 * SECOND);
        assert!((rates[0] - 1500.0).abs() < 1e-9, "{rates:?}");
        // Lag fell 30 s in 30 s while consuming 1000/s: the input is 500/s.
        let obs = observation(30, 1, 1, 30, 1000.0, None);
        let rates = incoming_rates(&obs, Some(&previous), 15 * SECOND);
        assert!((rates[0] - 500.0).abs() < 1e-9, "{rates:?}");
        // A reported rate wins; without a previous pass the consumed rate is the estimate.
        assert_eq!(incoming_rates(&observation(30, 1, 1, 70, 1000.0, Some(1200.0)), Some(&previous), 1), [1200.0]);
        assert_eq!(incoming_rates(&observation(30, 1, 1, 70, 1000.0, None), None, 1), [1000.0]);
    }

    #[test]
    fn a_lagging_shard_without_throughput_takes_the_largest_rate_of_the_others() {
        let mut obs = observation(0, 3, 3, 0, 800.0, None);
        obs.shards[1].consumed_per_s = 0.0;
        obs.shards[1].lag_ms = 20 * SECOND;
        obs.shards[2].consumed_per_s = 0.0;
        assert_eq!(incoming_rates(&obs, None, 15 * SECOND), [800.0, 800.0, 0.0]);
    }
}

//! The decision: [`recommend`] applies the rules (baseline, scale up on high or rising lag, scale
//! down after a calm window, then the bounds) and returns the [`History`] for the next pass.

use std::time::Duration;

use serde::Serialize;

use super::sizing::{TARGET_UTILISATION, consumption_per_replica, incoming_rates, sized};
use super::{History, Observation, Policy, PreviousLags, Reason, TimedRecommendation};

/// The policy's answer for one pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Replicas to run now.
    pub replicas: u32,
    /// Replicas this pass alone asks for, before stabilization (bounded): `status.desiredReplicas`.
    pub recommended: u32,
    /// Why `replicas`: `status.scalingReason` is its `Display`.
    pub reason: Reason,
}

/// A decision and the history for the next pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// What to do now.
    pub decision: Decision,
    /// What to pass to the next call for the same pipeline.
    pub history: History,
}

/// A duration in whole milliseconds (saturating).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The autoscaling decision for one reconcile pass (the `autoscale` docs: rules and sizing), and the
/// history for the next. Pure and deterministic.
pub fn recommend(policy: &Policy, observation: &Observation, history: &History) -> Outcome {
    let now = observation.at_ms;
    let open = observation.open_shards;
    let current = observation.current_replicas;
    let max_lag_ms = millis(policy.max_lag);
    let up_window = millis(policy.scale_up_stabilization);
    let down_window = millis(policy.scale_down_stabilization);
    let saturated_ms = max_lag_ms.div_ceil(4);

    let baseline = policy.shard_baseline(open);
    let hold = current.max(baseline);
    let hold_reason = |lag_ms: u64| {
        if hold == baseline {
            Reason::ShardBaseline { open_shards: open, target_shards_per_replica: policy.target_shards_per_replica }
        } else {
            Reason::Steady { lag_ms }
        }
    };

    let known = !observation.shards.is_empty();
    let lag = observation.shards.iter().map(|s| s.lag_ms).max().unwrap_or(0);
    let high = known && lag > max_lag_ms;
    let low = known && lag.saturating_mul(2) < max_lag_ms;
    let saturated = known && lag >= saturated_ms;
    let rising = saturated && history.previous.as_ref().is_some_and(|p| lag > p.max_lag_ms);
    let since = |condition: bool, before: Option<u64>| condition.then(|| before.unwrap_or(now));
    let high_since = since(high, history.lag_high_since_ms);
    let rising_since = since(rising, history.lag_rising_since_ms);
    let low_since = since(low, history.lag_low_since_ms);
    // How long a condition has held, counted from the later of its start and the last scale.
    let held_for =
        |since: Option<u64>| since.map(|s| now.saturating_sub(s.max(history.last_scale_ms.unwrap_or(0)))).unwrap_or(0);

    let observed_capacity = consumption_per_replica(observation);
    // This pass's consumption is a lower bound of the capacity whatever the lag, so sizing with it
    // keeps the decision monotone in lag.
    let capacity = match (history.capacity_per_replica, observed_capacity) {
        (Some(learnt), Some(observed)) => Some(learnt.max(observed)),
        (learnt, observed) => learnt.or(observed),
    };
    let rates = incoming_rates(observation, history.previous.as_ref(), saturated_ms);
    let need = observation
        .shards
        .iter()
        .zip(&rates)
        .map(|(s, r)| r * (1.0 / TARGET_UTILISATION + s.lag_ms as f64 / max_lag_ms.max(1) as f64))
        .fold(0.0, f64::max);
    let size = |c: f64| sized(open, c, need);

    let (candidate, recommended, reason) = if !known {
        (hold, hold, if hold == current { Reason::LagUnknown } else { hold_reason(lag) })
    } else if high || rising {
        let needed = match capacity {
            Some(c) => size(c),
            None => current.saturating_add(1),
        };
        let wanted = needed.max(hold);
        let (high_for, rising_for) = (held_for(high_since), held_for(rising_since));
        let fired = (high && high_for >= up_window) || (rising && rising_for >= up_window);
        if wanted <= hold {
            (hold, hold, if hold > current { hold_reason(lag) } else { Reason::Draining { lag_ms: lag } })
        } else if fired || policy.bound(wanted, open) <= policy.bound(hold, open) {
            // Fired, or the bounds make the window moot (the reason then says which bound holds it).
            let reason = if high && (high_for >= up_window || !rising) {
                Reason::LagHigh { lag_ms: lag, for_ms: high_for, needed }
            } else {
                Reason::LagRising { lag_ms: lag, for_ms: rising_for, needed }
            };
            (wanted, wanted, reason)
        } else {
            let reason = Reason::HeldByStabilization {
                wanted: policy.bound(wanted, open),
                waited_ms: high_for.max(rising_for),
                window_ms: up_window,
            };
            (hold, wanted, reason)
        }
    } else if low {
        let this_pass = baseline.max(capacity.map_or(baseline, size)).min(hold);
        let window_max = history
            .recommendations
            .iter()
            .filter(|r| r.at_ms.saturating_add(down_window) > now)
            .map(|r| r.replicas)
            .fold(this_pass, u32::max);
        let target = policy.bound(window_max, open);
        let low_for = held_for(low_since);
        if target >= policy.bound(current, open) {
            (hold, this_pass, hold_reason(lag))
        } else if low_for >= down_window {
            (window_max, this_pass, Reason::LagLow { lag_ms: lag, for_ms: low_for })
        } else {
            let reason = Reason::HeldByStabilization { wanted: target, waited_ms: low_for, window_ms: down_window };
            (hold, this_pass, reason)
        }
    } else {
        (hold, hold, hold_reason(lag))
    };

    let clamped = candidate.clamp(policy.min_replicas, policy.max_replicas.max(policy.min_replicas));
    let reason = if clamped > candidate {
        Reason::ClampedToMin { wanted: candidate, min: policy.min_replicas, cause: Box::new(reason) }
    } else if clamped < candidate {
        Reason::ClampedToMax { wanted: candidate, max: policy.max_replicas, cause: Box::new(reason) }
    } else {
        reason
    };
    let replicas = clamped.min(open.max(1));
    let reason = if replicas < clamped {
        Reason::CappedAtOpenShards { wanted: clamped, open_shards: open, cause: Box::new(reason) }
    } else {
        reason
    };

    // A measurement replaces the capacity only when the owners were behind for the whole interval
    // (saturated at both ends) and no rescale (with its paused shards) happened within it.
    let whole_interval = history
        .previous
        .as_ref()
        .is_some_and(|p| p.max_lag_ms >= saturated_ms && history.last_scale_ms.is_none_or(|scaled| scaled < p.at_ms));
    let capacity_per_replica = match (saturated && whole_interval, observed_capacity, history.capacity_per_replica) {
        (true, Some(observed), _) => Some(observed),
        (false, Some(observed), Some(learnt)) => Some(learnt.max(observed)),
        (_, observed, learnt) => learnt.or(observed),
    };
    let mut recommendations: Vec<TimedRecommendation> = history
        .recommendations
        .iter()
        .filter(|r| r.at_ms.saturating_add(down_window) > now && r.replicas > recommended)
        .copied()
        .collect();
    recommendations.push(TimedRecommendation { at_ms: now, replicas: recommended });
    let previous = if known {
        Some(PreviousLags {
            at_ms: now,
            max_lag_ms: lag,
            shard_lag_ms: observation.shards.iter().map(|s| (s.shard_id.clone(), s.lag_ms)).collect(),
        })
    } else {
        history.previous.clone()
    };
    let history = History {
        lag_high_since_ms: high_since,
        lag_rising_since_ms: rising_since,
        lag_low_since_ms: low_since,
        last_scale_ms: if replicas != current { Some(now) } else { history.last_scale_ms },
        capacity_per_replica,
        recommendations,
        previous,
    };
    let decision = Decision { replicas, recommended: policy.bound(recommended, open), reason };
    Outcome { decision, history }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::ShardSample;
    use super::super::test_support::{SECOND, baseline_reason, learnt, observation, secs};
    use super::*;

    #[test]
    fn baseline_is_open_shards_over_target_rounded_up_and_applies_at_once() {
        let policy = Policy::default();
        let out = recommend(&policy, &observation(0, 8, 4, 0, 500.0, None), &History::default());
        assert_eq!(out.decision, Decision { replicas: 4, recommended: 4, reason: baseline_reason(8, 2) });
        let out = recommend(&policy, &observation(0, 7, 4, 0, 500.0, None), &History::default());
        assert_eq!(out.decision.replicas, 4);
        // Below the baseline (new shards, or a first pass): raised without waiting.
        let out = recommend(&policy, &observation(0, 16, 3, 0, 500.0, None), &History::default());
        assert_eq!(out.decision, Decision { replicas: 8, recommended: 8, reason: baseline_reason(16, 2) });
        assert_eq!(out.history.last_scale_ms, Some(0));
    }

    #[test]
    fn bounds_clamp_to_min_and_max_then_cap_at_the_open_shards() {
        let at_most_3 = Policy { max_replicas: 3, ..Policy::default() };
        let out = recommend(&at_most_3, &observation(0, 8, 3, 0, 500.0, None), &History::default());
        assert_eq!(out.decision.replicas, 3);
        assert_eq!(
            out.decision.reason,
            Reason::ClampedToMax { wanted: 4, max: 3, cause: Box::new(baseline_reason(8, 2)) }
        );

        let at_least_5 = Policy { min_replicas: 5, target_shards_per_replica: 4, ..Policy::default() };
        let out = recommend(&at_least_5, &observation(0, 8, 2, 0, 500.0, None), &History::default());
        assert_eq!(out.decision.replicas, 5);
        assert_eq!(
            out.decision.reason,
            Reason::ClampedToMin { wanted: 2, min: 5, cause: Box::new(baseline_reason(8, 4)) }
        );

        // minReplicas 6 on 3 open shards: the shard cap wins, and the reason tells both steps.
        let at_least_6 = Policy { min_replicas: 6, ..Policy::default() };
        let out = recommend(&at_least_6, &observation(0, 3, 0, 0, 500.0, None), &History::default());
        assert_eq!(out.decision.replicas, 3);
        let reason = Reason::CappedAtOpenShards {
            wanted: 6,
            open_shards: 3,
            cause: Box::new(Reason::ClampedToMin { wanted: 2, min: 6, cause: Box::new(baseline_reason(3, 2)) }),
        };
        assert_eq!(out.decision.reason, reason);
        // Already above the cap (shards merged): lowered at once.
        let out = recommend(&Policy::default(), &observation(0, 3, 6, 0, 500.0, None), &History::default());
        assert_eq!(out.decision.replicas, 3);
        assert_eq!(
            out.decision.reason,
            Reason::CappedAtOpenShards { wanted: 6, open_shards: 3, cause: Box::new(Reason::Steady { lag_ms: 0 }) }
        );

        // No open shard at all: one worker stays (closed shards may still drain).
        let out = recommend(&Policy::default(), &observation(0, 0, 4, 0, 0.0, None), &History::default());
        assert_eq!(out.decision.replicas, 1);
    }

    #[test]
    fn lag_high_scales_up_only_after_the_up_window_and_then_to_the_drain_size() {
        let policy = Policy::default();
        // 8 shards, 1500 records/s each; 4 replicas of 2500 records/s each keep 1250 per shard.
        let pass = |at_s, lag_s, history: &History| {
            recommend(&policy, &observation(at_s, 8, 4, lag_s, 1250.0, Some(1500.0)), history)
        };
        let first = pass(0, 70, &learnt(2500.0));
        assert_eq!(
            first.decision,
            Decision {
                replicas: 4,
                recommended: 8,
                reason: Reason::HeldByStabilization { wanted: 8, waited_ms: 0, window_ms: 60 * SECOND },
            }
        );
        let second = pass(30, 75, &first.history);
        assert_eq!(second.decision.replicas, 4);
        assert_eq!(
            second.decision.reason,
            Reason::HeldByStabilization { wanted: 8, waited_ms: 30 * SECOND, window_ms: 60 * SECOND }
        );
        let third = pass(60, 80, &second.history);
        // need = 1500 · (1/0.8 + 80/60) = 3875 > 2500: a replica per shard, all 8 at once.
        assert_eq!(
            third.decision,
            Decision {
                replicas: 8,
                recommended: 8,
                reason: Reason::LagHigh { lag_ms: 80 * SECOND, for_ms: 60 * SECOND, needed: 8 },
            }
        );
        assert_eq!(third.history.last_scale_ms, Some(60 * SECOND));
    }

    #[test]
    fn the_drain_size_follows_the_formula_and_grows_with_lag() {
        // 12 shards of 500 records/s, 3000 records/s per replica, no up window.
        let policy = Policy {
            max_replicas: 12,
            target_shards_per_replica: 3,
            scale_up_stabilization: Duration::ZERO,
            ..Policy::default()
        };
        let replicas = |lag_s| {
            let out = recommend(&policy, &observation(0, 12, 4, lag_s, 400.0, Some(500.0)), &learnt(3000.0));
            out.decision.replicas
        };
        // 500 · (1.25 + 70/60) = 1208 → 2 shards per replica → 6 replicas (from 4, not one step).
        assert_eq!(replicas(70), 6);
        // 500 · (1.25 + 100/60) = 1458 → still 2 per replica.
        assert_eq!(replicas(100), 6);
        // 500 · (1.25 + 200/60) = 2292 → 1 per replica → 12.
        assert_eq!(replicas(200), 12);
    }

    #[test]
    fn capacity_is_learnt_from_the_busiest_owner_when_saturated() {
        let policy = Policy::default();
        let mut obs = observation(30, 4, 2, 20, 1000.0, None);
        obs.shards[0].consumed_per_s = 1250.0; // owner 0
        obs.shards[2].consumed_per_s = 1250.0; // owner 0
        // Behind at the previous pass too: owner 0 was busy all along, 2500/s is its capacity.
        let behind = recommend(&policy, &observation(0, 4, 2, 16, 1000.0, None), &learnt(4000.0)).history;
        let out = recommend(&policy, &obs, &behind);
        assert_eq!(out.history.capacity_per_replica, Some(2500.0), "saturated: the estimate replaces");
        // Not behind at the previous pass, or rescaled since: only a lower bound.
        let calm_before = recommend(&policy, &observation(0, 4, 2, 0, 1000.0, None), &learnt(4000.0)).history;
        assert_eq!(recommend(&policy, &obs, &calm_before).history.capacity_per_replica, Some(4000.0));
        let rescaled = History { last_scale_ms: Some(10 * SECOND), ..behind.clone() };
        assert_eq!(recommend(&policy, &obs, &rescaled).history.capacity_per_replica, Some(4000.0));
        // Owners unknown: the mean over the replicas.
        let mut anonymous = obs.clone();
        anonymous.shards.iter_mut().for_each(|s| s.owner = None);
        let out = recommend(&policy, &anonymous, &History { capacity_per_replica: None, ..behind });
        assert_eq!(out.history.capacity_per_replica, Some(2250.0));
        // Not saturated: only a lower bound, kept when larger.
        let mut calm = obs.clone();
        calm.shards.iter_mut().for_each(|s| s.lag_ms = 0);
        assert_eq!(recommend(&policy, &calm, &learnt(3000.0)).history.capacity_per_replica, Some(3000.0));
        assert_eq!(recommend(&policy, &calm, &learnt(2000.0)).history.capacity_per_replica, Some(2500.0));
    }

    #[test]
    fn rising_lag_scales_up_before_it_reaches_max_lag() {
        let policy = Policy::default();
        let mut history = learnt(2500.0);
        let mut decisions = Vec::new();
        for (at_s, lag_s) in [(0, 16), (30, 20), (60, 24), (90, 28)] {
            let out = recommend(&policy, &observation(at_s, 8, 4, lag_s, 1250.0, Some(1500.0)), &history);
            decisions.push(out.decision);
            history = out.history;
        }
        // The first pass has nothing to compare with; rising from 30 s on, for 60 s at 90 s.
        assert_eq!(decisions[0].reason, baseline_reason(8, 2));
        assert_eq!(
            decisions[2].reason,
            Reason::HeldByStabilization { wanted: 8, waited_ms: 30 * SECOND, window_ms: 60 * SECOND }
        );
        assert_eq!(
            decisions[3],
            Decision {
                replicas: 8,
                recommended: 8,
                reason: Reason::LagRising { lag_ms: 28 * SECOND, for_ms: 60 * SECOND, needed: 8 },
            }
        );

        // The same lag without growth, or growth below maxLag/4, never scales.
        for lags in [[20, 20, 20, 20], [2, 5, 8, 11]] {
            let mut history = learnt(2500.0);
            for (i, lag_s) in lags.into_iter().enumerate() {
                let out = recommend(&policy, &observation(i as u64 * 30, 8, 4, lag_s, 1250.0, Some(1500.0)), &history);
                assert_eq!(out.decision.replicas, 4, "{lags:?}");
                history = out.history;
            }
        }
    }

    #[test]
    fn without_throughput_a_scale_up_adds_one_and_the_window_restarts_at_each_scale() {
        let policy = Policy { max_replicas: 8, ..Policy::default() };
        let mut history = History::default();
        let mut replicas = 4;
        let mut seen = Vec::new();
        for at_s in [0, 30, 60, 90, 120] {
            let out = recommend(&policy, &observation(at_s, 8, replicas, 90, 0.0, None), &history);
            replicas = out.decision.replicas;
            seen.push(replicas);
            history = out.history;
            if at_s == 90 {
                assert_eq!(
                    out.decision.reason,
                    Reason::HeldByStabilization { wanted: 6, waited_ms: 30 * SECOND, window_ms: 60 * SECOND }
                );
            }
        }
        assert_eq!(seen, [4, 4, 5, 5, 6]);
    }

    #[test]
    fn high_lag_the_current_replicas_drain_keeps_the_count() {
        let policy = Policy::default();
        // 8 replicas of 2500/s on 8 shards of 1000/s: 1000 · (1.25 + 70/60) = 2417 fits one shard each.
        let history = History { lag_high_since_ms: Some(0), ..learnt(2500.0) };
        let out = recommend(&policy, &observation(120, 8, 8, 70, 2500.0, Some(1000.0)), &history);
        assert_eq!(out.decision.replicas, 8);
        assert_eq!(out.decision.reason, Reason::Draining { lag_ms: 70 * SECOND });
    }

    #[test]
    fn lag_between_the_thresholds_holds() {
        let out = recommend(&Policy::default(), &observation(0, 8, 6, 40, 1000.0, Some(1000.0)), &learnt(2500.0));
        assert_eq!(out.decision.replicas, 6);
        assert_eq!(out.decision.reason, Reason::Steady { lag_ms: 40 * SECOND });
    }

    #[test]
    fn scale_down_waits_for_the_window_then_takes_its_largest_recommendation() {
        let policy = Policy::default();
        let mut history = learnt(2500.0);
        let mut decisions = Vec::new();
        let mut replicas = 8;
        // Per-shard input: 900/s wants 4 replicas (900/0.8 = 1125, 2 shards each), 1100/s wants 8.
        for (at_s, rate) in [(0, 900.0), (300, 1100.0), (600, 900.0), (900, 900.0)] {
            let out = recommend(&policy, &observation(at_s, 8, replicas, 0, rate, Some(rate)), &history);
            replicas = out.decision.replicas;
            decisions.push(out.decision);
            history = out.history;
        }
        assert_eq!(decisions[0].replicas, 8);
        assert_eq!(
            decisions[0].reason,
            Reason::HeldByStabilization { wanted: 4, waited_ms: 0, window_ms: 600 * SECOND }
        );
        assert_eq!(decisions[0].recommended, 4);
        assert_eq!(decisions[1].replicas, 8);
        // Low for the whole window at 600 s, but the window still holds the 8 recommended at 300 s.
        assert_eq!(decisions[2], Decision { replicas: 8, recommended: 4, reason: Reason::Steady { lag_ms: 0 } });
        assert_eq!(
            decisions[3],
            Decision { replicas: 4, recommended: 4, reason: Reason::LagLow { lag_ms: 0, for_ms: 900 * SECOND } }
        );
        // Only recommendations that can still be the window's maximum are kept.
        assert_eq!(history.recommendations, [TimedRecommendation { at_ms: 900 * SECOND, replicas: 4 }]);
    }

    #[test]
    fn scale_down_window_restarts_at_the_last_scale() {
        let history = History { lag_low_since_ms: Some(0), last_scale_ms: Some(500 * SECOND), ..learnt(2500.0) };
        let out = recommend(&Policy::default(), &observation(900, 8, 8, 0, 500.0, Some(500.0)), &history);
        assert_eq!(out.decision.replicas, 8);
        assert_eq!(
            out.decision.reason,
            Reason::HeldByStabilization { wanted: 4, waited_ms: 400 * SECOND, window_ms: 600 * SECOND }
        );
        let out = recommend(&Policy::default(), &observation(1100, 8, 8, 0, 500.0, Some(500.0)), &out.history);
        assert_eq!(out.decision.replicas, 4);
    }

    #[test]
    fn without_a_learnt_capacity_scale_down_goes_to_the_baseline() {
        let history = History { lag_low_since_ms: Some(0), ..History::default() };
        let out = recommend(&Policy::default(), &observation(600, 8, 8, 0, 0.0, None), &history);
        assert_eq!(out.decision.replicas, 4);
    }

    #[test]
    fn unknown_lag_holds_and_restarts_every_window() {
        let history = History {
            lag_high_since_ms: Some(0),
            lag_rising_since_ms: Some(0),
            lag_low_since_ms: Some(0),
            ..learnt(2500.0)
        };
        let obs = Observation { at_ms: 900 * SECOND, open_shards: 8, current_replicas: 6, shards: Vec::new() };
        let out = recommend(&Policy::default(), &obs, &history);
        assert_eq!(out.decision, Decision { replicas: 6, recommended: 6, reason: Reason::LagUnknown });
        assert_eq!(
            (out.history.lag_high_since_ms, out.history.lag_rising_since_ms, out.history.lag_low_since_ms),
            (None, None, None)
        );
        assert_eq!(out.history.capacity_per_replica, Some(2500.0));
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (1u32..5, 0u32..16, 1u32..5, 5u64..180, 0u64..180, 0u64..1200).prop_map(|(min, extra, per, lag, up, down)| {
            Policy {
                min_replicas: min,
                max_replicas: min + extra,
                target_shards_per_replica: per,
                max_lag: secs(lag),
                scale_up_stabilization: secs(up),
                scale_down_stabilization: secs(down),
            }
        })
    }

    /// A pass: seconds since the previous one, and per shard (lag ms, consumed/s, incoming/s).
    type Pass = (u64, Vec<(u64, f64, Option<f64>)>);

    /// Runs of passes around one base rate: calm stretches (lag under maxLag/2) and spikes (up to
    /// 3 × maxLag), each shard a fraction of the pass's lag level; a load of 10–150 % of the base
    /// rate per pass, of which each shard consumes 50–100 % and receives (when reported) 50–250 %.
    fn arb_run() -> impl Strategy<Value = (Policy, u32, u32, bool, Vec<Pass>)> {
        (arb_policy(), 0u32..17, 0u32..20, any::<bool>(), 100.0f64..3000.0).prop_flat_map(
            |(policy, open, start, owners, base)| {
                let max_lag_ms = millis(policy.max_lag) as f64;
                let level = prop_oneof![3 => 0.0f64..0.5, 2 => 0.0f64..3.0];
                let shard = (0.0f64..=1.0, 0.5f64..1.0, prop::option::of(0.5f64..2.5));
                let pass = (1u64..120, level, 0.1f64..1.5, prop::collection::vec(shard, open as usize)).prop_map(
                    move |(dt, level, load, shards)| {
                        let rate = base * load;
                        let sample = |(f, consumed, incoming): (f64, f64, Option<f64>)| {
                            ((level * f * max_lag_ms) as u64, consumed * rate, incoming.map(|i| i * rate))
                        };
                        (dt, shards.into_iter().map(sample).collect())
                    },
                );
                // Each pass repeats 1 to 12 times: long enough calm runs for scale-downs.
                let passes = prop::collection::vec((pass, 1usize..12), 1..16).prop_map(|segments| {
                    segments.into_iter().flat_map(|(pass, times)| std::iter::repeat_n(pass, times)).collect()
                });
                (Just(policy), Just(open), Just(start), Just(owners), passes)
            },
        )
    }

    fn pass_observation(
        at_ms: u64,
        open: u32,
        current: u32,
        owners: bool,
        shards: &[(u64, f64, Option<f64>)],
    ) -> Observation {
        Observation {
            at_ms,
            open_shards: open,
            current_replicas: current,
            shards: shards
                .iter()
                .enumerate()
                .map(|(i, &(lag_ms, consumed, incoming))| ShardSample {
                    shard_id: format!("shardId-{i:012}"),
                    owner: owners.then(|| i as u32 % current.max(1)),
                    lag_ms,
                    consumed_per_s: consumed,
                    incoming_per_s: incoming,
                })
                .collect(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Bounds, the shard cap, monotonicity in lag, no early scale-down and determinism, on runs
        /// where the operator applies every decision.
        #[test]
        fn the_policy_keeps_its_promises(
            (policy, open, start, owners, passes) in arb_run(),
            bump in 1u64..200_000,
            which in any::<prop::sample::Index>(),
        ) {
            let cap = open.max(1);
            let (lowest, highest) = (policy.min_replicas.min(cap), policy.max_replicas.min(cap));
            let max_lag_ms = millis(policy.max_lag);
            let down_ms = millis(policy.scale_down_stabilization);
            let mut history = History::default();
            let mut current = start;
            let mut at_ms = 0;
            let mut low_since: Option<u64> = None;
            for (dt, shards) in &passes {
                at_ms += dt * SECOND;
                let obs = pass_observation(at_ms, open, current, owners, shards);
                let out = recommend(&policy, &obs, &history);
                let replicas = out.decision.replicas;

                prop_assert!(replicas >= 1 && replicas <= cap, "{replicas} outside 1..={cap}");
                prop_assert!((lowest..=highest).contains(&replicas), "{replicas} outside {lowest}..={highest}");
                prop_assert!((lowest..=highest).contains(&out.decision.recommended));

                prop_assert_eq!(&recommend(&policy, &obs, &history), &out, "not deterministic");

                if !shards.is_empty() {
                    let mut more = obs.clone();
                    let i = which.index(shards.len());
                    more.shards[i].lag_ms += bump;
                    let with_more_lag = recommend(&policy, &more, &history).decision.replicas;
                    prop_assert!(with_more_lag >= replicas, "more lag gave {with_more_lag} < {replicas}");
                }

                let lag = shards.iter().map(|s| s.0).max().unwrap_or(0);
                low_since = if !shards.is_empty() && lag * 2 < max_lag_ms { low_since.or(Some(at_ms)) } else { None };
                if replicas < current && (lowest..=highest).contains(&current) {
                    let since = low_since.unwrap_or(at_ms);
                    prop_assert!(
                        at_ms - since >= down_ms,
                        "scaled down {current} → {replicas} after {} ms of low lag (window {down_ms} ms)",
                        at_ms - since
                    );
                }
                current = replicas;
                history = out.history;
            }
        }

        /// Scale-downs, from the most replicas and a learnt capacity well above the load: mostly calm
        /// passes with some blips. A decrease comes only after the lag stayed below maxLag/2 for the whole window (and
        /// since the last change), and never below a recommendation of that window (HPA-style).
        #[test]
        fn scale_down_waits_and_takes_the_window_maximum(
            policy in arb_policy(),
            open in 1u32..17,
            capacity in 1000.0f64..20_000.0,
            passes in prop::collection::vec(
                (1u64..90, 0.05f64..1.0, prop::bool::weighted(0.03), 0.0f64..1.0),
                1..150,
            ),
        ) {
            let cap = open.max(1);
            let mut current = policy.max_replicas.min(cap);
            let max_lag_ms = millis(policy.max_lag);
            let down_ms = millis(policy.scale_down_stabilization);
            let mut history = learnt(capacity);
            let (mut at_ms, mut low_since, mut last_change) = (0u64, None::<u64>, 0u64);
            let mut recommended: Vec<(u64, u32)> = Vec::new();
            for (dt, load, blip, lag) in passes {
                at_ms += dt * SECOND;
                // Calm: lag below maxLag/2; a blip: between maxLag/2 and 2 × maxLag.
                let lag_ms = if blip {
                    max_lag_ms / 2 + (lag * 1.5 * max_lag_ms as f64) as u64
                } else {
                    (lag * (max_lag_ms / 2) as f64) as u64
                };
                let rate = load * capacity / 4.0;
                let shards: Vec<_> = (0..open).map(|i| (if i == 0 { lag_ms } else { 0 }, rate, Some(rate))).collect();
                let out = recommend(&policy, &pass_observation(at_ms, open, current, true, &shards), &history);
                let replicas = out.decision.replicas;
                low_since = if lag_ms * 2 < max_lag_ms { low_since.or(Some(at_ms)) } else { None };
                recommended.push((at_ms, out.decision.recommended));
                if replicas < current {
                    let since = low_since.unwrap_or(at_ms).max(last_change);
                    prop_assert!(at_ms - since >= down_ms, "down after {} ms of {down_ms}", at_ms - since);
                    for &(at, r) in recommended.iter().filter(|(at, _)| at + down_ms > at_ms) {
                        prop_assert!(r <= replicas, "down to {replicas} below {r} recommended at {at}");
                    }
                }
                if replicas != current {
                    last_change = at_ms;
                }
                current = replicas;
                history = out.history;
            }
        }
    }
}

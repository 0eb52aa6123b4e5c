//! The autoscaling policy: how many worker replicas a pipeline wants, as one pure function
//! of the `spec.autoscaling` settings, a fresh [`Observation`] and a small [`History`].
//!
//! The operator calls [`recommend`] once per reconcile pass with what it just saw (open shards from
//! Kinesis; per-shard lag and throughput from the workers' `/status`), applies
//! [`Decision::replicas`], writes [`Decision::reason`] into `status.scalingReason` and
//! [`Decision::recommended`] into `status.desiredReplicas`, and keeps the returned [`History`] in
//! memory for the next pass of the same pipeline. The history is plain data (serde) and small: a few
//! timestamps, one capacity estimate, the previous pass's lags and at most one recommendation per
//! distinct replica count.
//!
//! # Rules
//!
//! Let `N` be the open shards, `R` the current replicas, `L` the largest lag (MillisBehindLatest)
//! over the reported shards and `maxLag`, `up`, `down` the settings.
//!
//! - **Baseline**: `⌈N / targetShardsPerReplica⌉`. Raising `R` to it happens at once (a shard count
//!   is not noisy).
//! - **Scale up** when `L > maxLag` has held at every pass for `up` (*lag high*), or when `L ≥ maxLag/4`
//!   has grown at every pass for `up` (*lag rising*: the workers are saturated and the lag is on its
//!   way to `maxLag`; waiting for it to get there would only add to the backlog). Both windows restart
//!   at the last scale, so the effect of a rescale is seen before the next one. The new count is sized
//!   from the catch-up need, not one step at a time (see *Sizing*); it only replaces `R` when larger.
//! - **Scale down** only when `L < maxLag/2` has held at every pass for `down` (and since the last
//!   scale), and then to the largest recommendation of the last `down` (HPA-style stabilization). A
//!   pass with low lag recommends the sized count for its throughput, never more than `R`; the gap
//!   between the thresholds (`maxLag` up, `maxLag/2` down), the 80 % target utilisation and the
//!   window maximum are the hysteresis.
//! - **Bounds**, applied last and at once: `minReplicas ≤ replicas ≤ maxReplicas`, then never more than
//!   `max(N, 1)` (a worker needs at least one shard; when `minReplicas > N` the shard cap wins, as the
//!   extra workers would own nothing).
//! - Without any shard sample (no worker answered) the lag is unknown: the count is held, and every
//!   lag window starts again.
//!
//! # Sizing
//!
//! Per shard `s` with lag `L_s`, consumed rate `μ_s` and incoming rate `λ_s` (records/s):
//!
//! ```text
//! λ_s    = the reported incoming rate, or else  μ_s / (1 − min(dL_s/dt, 0.9))
//! need_s = λ_s / U  +  L_s · λ_s / maxLag          (U = TARGET_UTILISATION = 0.8)
//! ```
//!
//! A FIFO shard behind by `L_s` holds a backlog of about `L_s · λ_s` records, and its lag grows at
//! `dL/dt = 1 − μ/λ`, which gives the estimate of `λ_s` from the lag's slope between two passes (a
//! shard with lag but no throughput, e.g. paused by a handoff, takes the largest rate of the others).
//! `need_s` is the rate that keeps up with the input at 80 % utilisation and drains the backlog
//! within `maxLag`. Shards are spread evenly, so with `n` replicas the busiest owns
//! `⌈N/n⌉` shards; with a per-replica capacity `c` a replica can serve `k = ⌊c / max_s need_s⌋`
//! shards, hence
//!
//! ```text
//! replicas = ⌈N / k⌉          (N when k = 0: one shard alone needs more than one replica)
//! ```
//!
//! and only counts that lower `⌈N/n⌉` are ever chosen (with 8 shards: 1, 2, 3, 4 or 8).
//! The capacity `c` is learnt: while some shard's lag is at least `maxLag/4` its owner reads as fast
//! as it can, so when that held at this pass and the previous one, with no rescale in between (moved
//! shards pause), the largest per-replica consumed rate (the sum over the shards it owns, or the mean
//! over replicas when owners are unknown) is the capacity; any other measurement is only a lower
//! bound, kept if larger. A pass sizes with the larger of the learnt capacity and its own
//! per-replica consumption, neither of which depends on the lag, so more lag never lowers the
//! capacity used. Without throughput at all, a scale-up adds one replica.
//!
//! The policy is monotone: with the same history and throughput, more lag on any shard never gives
//! fewer replicas (property-tested below).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use taxi_core::duration::{self, DurationError};

use crate::crd::AutoscalingSpec;

/// Utilisation the sized replica count aims at once the backlog is drained.
pub const TARGET_UTILISATION: f64 = 0.8;

/// Largest lag slope (lag seconds per second) believed when estimating an incoming rate: at a
/// slope of 1 nothing is consumed and the input cannot be told from the lag.
const MAX_LAG_SLOPE: f64 = 0.9;

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

/// What the operator saw on one reconcile pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// When, in milliseconds on a clock that never goes back (Unix time in the operator); the
    /// history must come from the same clock.
    pub at_ms: u64,
    /// Open shards of the stream (Kinesis ListShards).
    pub open_shards: u32,
    /// The replicas the operator currently aims at (the last decision applied).
    pub current_replicas: u32,
    /// One sample per shard a worker reported; empty when no worker answered (lag unknown).
    pub shards: Vec<ShardSample>,
}

/// One shard as a worker reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardSample {
    /// `shardId-…`: matches a shard between passes, for the lag's slope.
    pub shard_id: String,
    /// The ordinal of the worker that owns it, when known (better capacity estimates).
    pub owner: Option<u32>,
    /// MillisBehindLatest.
    pub lag_ms: u64,
    /// Records consumed per second, averaged over about one reconcile period.
    pub consumed_per_s: f64,
    /// Records arriving per second, when the worker can tell; else estimated from the lag's slope.
    pub incoming_per_s: Option<f64>,
}

/// What a pass leaves for the next one of the same pipeline. `Default` is the empty history.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// First pass of the current run of passes with lag above maxLag.
    pub lag_high_since_ms: Option<u64>,
    /// First pass of the current run of passes with lag at least maxLag/4 and growing.
    pub lag_rising_since_ms: Option<u64>,
    /// First pass of the current run of passes with lag below maxLag/2.
    pub lag_low_since_ms: Option<u64>,
    /// The last pass whose decision changed the replicas.
    pub last_scale_ms: Option<u64>,
    /// Learnt records per second one replica can consume (see the module docs).
    pub capacity_per_replica: Option<f64>,
    /// Recommendations of the scale-down window that can still be its maximum: times increase and
    /// replicas strictly decrease (a later, larger recommendation makes older ones irrelevant).
    pub recommendations: Vec<TimedRecommendation>,
    /// Lags of the previous pass with samples.
    pub previous: Option<PreviousLags>,
}

/// A pass's recommendation, kept for the scale-down window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimedRecommendation {
    /// When.
    pub at_ms: u64,
    /// Replicas recommended before stabilization.
    pub replicas: u32,
}

/// The lags one pass saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviousLags {
    /// When.
    pub at_ms: u64,
    /// The largest lag.
    pub max_lag_ms: u64,
    /// Lag per shard id.
    pub shard_lag_ms: BTreeMap<String, u64>,
}

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

/// Why the policy chose its replica count. `Display` gives the human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Reason {
    /// At the shard baseline, nothing else applies.
    ShardBaseline {
        /// Open shards.
        open_shards: u32,
        /// Shards per replica wanted.
        target_shards_per_replica: u32,
    },
    /// Above the baseline, lag neither high nor low for long: keep the count.
    Steady {
        /// Largest lag, ms.
        lag_ms: u64,
    },
    /// Lag is high or rising, but the current replicas (by the sizing) drain it within maxLag.
    Draining {
        /// Largest lag, ms.
        lag_ms: u64,
    },
    /// Lag above maxLag for the scale-up window: scaled to drain it.
    LagHigh {
        /// Largest lag, ms.
        lag_ms: u64,
        /// For how long (since the later of its start and the last scale), ms.
        for_ms: u64,
        /// Replicas sized from the catch-up need.
        needed: u32,
    },
    /// Lag of at least maxLag/4 growing for the scale-up window: scaled before it reaches maxLag.
    LagRising {
        /// Largest lag, ms.
        lag_ms: u64,
        /// For how long, ms.
        for_ms: u64,
        /// Replicas sized from the catch-up need.
        needed: u32,
    },
    /// Lag below maxLag/2 for the scale-down window: down to the window's largest recommendation.
    LagLow {
        /// Largest lag, ms.
        lag_ms: u64,
        /// For how long, ms.
        for_ms: u64,
    },
    /// A change is wanted, but its window has not passed yet.
    HeldByStabilization {
        /// Replicas wanted (bounded).
        wanted: u32,
        /// How long the condition has held, ms.
        waited_ms: u64,
        /// The window it must hold for, ms.
        window_ms: u64,
    },
    /// No worker reported a shard: the count is held.
    LagUnknown,
    /// Raised to minReplicas.
    ClampedToMin {
        /// What the rules wanted.
        wanted: u32,
        /// minReplicas.
        min: u32,
        /// The rule that wanted it.
        cause: Box<Reason>,
    },
    /// Lowered to maxReplicas.
    ClampedToMax {
        /// What the rules wanted.
        wanted: u32,
        /// maxReplicas.
        max: u32,
        /// The rule that wanted it.
        cause: Box<Reason>,
    },
    /// Lowered to the open shard count: a worker needs at least one shard.
    CappedAtOpenShards {
        /// What the rules (and min/max) wanted.
        wanted: u32,
        /// Open shards.
        open_shards: u32,
        /// The rule that wanted it.
        cause: Box<Reason>,
    },
}

/// Milliseconds as a short human duration (`90s`, `1m30s`, `250ms`).
fn human(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

impl Reason {
    /// Every value of [`Reason::kind`].
    pub const KINDS: [&'static str; 11] = [
        "shard_baseline",
        "steady",
        "draining",
        "lag_high",
        "lag_rising",
        "lag_low",
        "held_by_stabilization",
        "lag_unknown",
        "clamped_to_min",
        "clamped_to_max",
        "capped_at_open_shards",
    ];

    /// A fixed name of the reason, for metric labels (a bounded set).
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::ShardBaseline { .. } => "shard_baseline",
            Reason::Steady { .. } => "steady",
            Reason::Draining { .. } => "draining",
            Reason::LagHigh { .. } => "lag_high",
            Reason::LagRising { .. } => "lag_rising",
            Reason::LagLow { .. } => "lag_low",
            Reason::HeldByStabilization { .. } => "held_by_stabilization",
            Reason::LagUnknown => "lag_unknown",
            Reason::ClampedToMin { .. } => "clamped_to_min",
            Reason::ClampedToMax { .. } => "clamped_to_max",
            Reason::CappedAtOpenShards { .. } => "capped_at_open_shards",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::ShardBaseline { open_shards, target_shards_per_replica } => {
                write!(f, "shard baseline: {open_shards} open shards at {target_shards_per_replica} per replica")
            }
            Reason::Steady { lag_ms } => write!(f, "lag {} is neither high nor low for long: holding", human(*lag_ms)),
            Reason::Draining { lag_ms } => {
                write!(f, "lag {} is up, but the current replicas drain it within maxLag", human(*lag_ms))
            }
            Reason::LagHigh { lag_ms, for_ms, needed } => write!(
                f,
                "lag {} above maxLag for {}: {needed} replicas drain it within maxLag",
                human(*lag_ms),
                human(*for_ms)
            ),
            Reason::LagRising { lag_ms, for_ms, needed } => write!(
                f,
                "lag {} rising for {}: the workers are saturated; {needed} replicas drain it within maxLag",
                human(*lag_ms),
                human(*for_ms)
            ),
            Reason::LagLow { lag_ms, for_ms } => write!(
                f,
                "lag {} below maxLag/2 for {}: down to the largest recommendation of the window",
                human(*lag_ms),
                human(*for_ms)
            ),
            Reason::HeldByStabilization { wanted, waited_ms, window_ms } => write!(
                f,
                "{wanted} replicas wanted for {} of a {} stabilization window",
                human(*waited_ms),
                human(*window_ms)
            ),
            Reason::LagUnknown => write!(f, "no worker reported its lag: holding"),
            Reason::ClampedToMin { wanted, min, cause } => {
                write!(f, "{cause}; {wanted} replicas raised to minReplicas {min}")
            }
            Reason::ClampedToMax { wanted, max, cause } => {
                write!(f, "{cause}; {wanted} replicas lowered to maxReplicas {max}")
            }
            Reason::CappedAtOpenShards { wanted, open_shards, cause } => {
                write!(f, "{cause}; {wanted} replicas capped at {open_shards} open shards")
            }
        }
    }
}

/// A decision and the history for the next pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// What to do now.
    pub decision: Decision,
    /// What to pass to the next call for the same pipeline.
    pub history: History,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A rate as reported, or 0 when it is not a finite non-negative number.
fn rate(r: f64) -> f64 {
    if r.is_finite() && r > 0.0 { r } else { 0.0 }
}

/// Replicas that give every replica at most `⌊capacity / need⌋` shards (see the module docs).
fn sized(open_shards: u32, capacity: f64, need: f64) -> u32 {
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
fn consumption_per_replica(observation: &Observation) -> Option<f64> {
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

/// Incoming rate per shard (module docs): reported, else from the consumed rate and the lag's slope;
/// a shard with lag but no estimate takes the largest of the others.
fn incoming_rates(observation: &Observation, previous: Option<&PreviousLags>, saturated_ms: u64) -> Vec<f64> {
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

/// The autoscaling decision for one reconcile pass (module docs: rules and sizing), and the history
/// for the next. Pure and deterministic.
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

    use super::*;

    const SECOND: u64 = 1000;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// `open` shards, all with the same lag and rates; shard `i` is owned by `i % current`.
    fn observation(
        at_s: u64,
        open: u32,
        current: u32,
        lag_s: u64,
        consumed: f64,
        incoming: Option<f64>,
    ) -> Observation {
        Observation {
            at_ms: at_s * SECOND,
            open_shards: open,
            current_replicas: current,
            shards: (0..open)
                .map(|i| ShardSample {
                    shard_id: format!("shardId-{i:012}"),
                    owner: Some(i % current.max(1)),
                    lag_ms: lag_s * SECOND,
                    consumed_per_s: consumed,
                    incoming_per_s: incoming,
                })
                .collect(),
        }
    }

    fn learnt(capacity: f64) -> History {
        History { capacity_per_replica: Some(capacity), ..History::default() }
    }

    fn baseline_reason(open: u32, per: u32) -> Reason {
        Reason::ShardBaseline { open_shards: open, target_shards_per_replica: per }
    }

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

    #[test]
    fn reasons_read_as_sentences() {
        let reason = Reason::LagHigh { lag_ms: 80 * SECOND, for_ms: 60 * SECOND, needed: 8 };
        assert_eq!(reason.to_string(), "lag 1m20s above maxLag for 1m: 8 replicas drain it within maxLag");
        let capped = Reason::CappedAtOpenShards {
            wanted: 6,
            open_shards: 3,
            cause: Box::new(Reason::ClampedToMin { wanted: 2, min: 6, cause: Box::new(baseline_reason(3, 2)) }),
        };
        assert_eq!(
            capped.to_string(),
            "shard baseline: 3 open shards at 2 per replica; 2 replicas raised to minReplicas 6; \
             6 replicas capped at 3 open shards"
        );
        assert_eq!(
            Reason::HeldByStabilization { wanted: 4, waited_ms: 90_500, window_ms: 600 * SECOND }.to_string(),
            "4 replicas wanted for 1m30s of a 10m stabilization window"
        );
    }

    #[test]
    fn history_round_trips_through_json() {
        let mut history = learnt(2500.0);
        for (at_s, lag_s) in [(0, 16), (30, 20), (60, 70)] {
            history = recommend(&Policy::default(), &observation(at_s, 4, 2, lag_s, 1000.0, None), &history).history;
        }
        let json = serde_json::to_string(&history).unwrap();
        assert!(json.contains("\"lagHighSinceMs\":60000"), "{json}");
        assert_eq!(serde_json::from_str::<History>(&json).unwrap(), history);
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

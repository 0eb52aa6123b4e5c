//! Why the policy chose its replica count: the [`Reason`] behind a decision, written into
//! `status.scalingReason` as a sentence and into the metrics as a fixed label.

use std::fmt;

use serde::Serialize;

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

#[cfg(test)]
mod tests {
    use super::super::test_support::{SECOND, baseline_reason};
    use super::*;

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
}

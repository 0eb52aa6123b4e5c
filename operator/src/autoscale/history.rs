//! What a pass leaves for the next one of the same pipeline: when each lag condition started, the
//! last scale, the learnt capacity, the scale-down window's recommendations and the last lags.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Learnt records per second one replica can consume (see the `autoscale` docs).
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{learnt, observation};
    use super::super::{Policy, recommend};
    use super::*;

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
}

//! What the autoscaling tests share: a clock unit, uniform observations and a learnt history.

use std::time::Duration;

use super::{History, Observation, Reason, ShardSample};

pub(super) const SECOND: u64 = 1000;

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// `open` shards, all with the same lag and rates; shard `i` is owned by `i % current`.
pub(super) fn observation(
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

pub(super) fn learnt(capacity: f64) -> History {
    History { capacity_per_replica: Some(capacity), ..History::default() }
}

pub(super) fn baseline_reason(open: u32, per: u32) -> Reason {
    Reason::ShardBaseline { open_shards: open, target_shards_per_replica: per }
}

//! What the operator saw on one reconcile pass: the open shards, the replicas it runs and what the
//! workers reported per shard.

use serde::{Deserialize, Serialize};

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

//! Hand-made partial documents, for sink, dead-letter and metrics tests that need a few of a
//! known shape rather than the output of a run.

use taxi_core::document::{AnalysisKind, PartialDocument};

/// One final hot-spot partial of a 10-minute window starting at `window_s` (seconds), with the
/// id `documents_for` would give it and `pickups` as both its count and its version.
pub fn hot_spot(pipeline: &str, shard: &str, window_s: i64, cell: &str, pickups: u64) -> PartialDocument {
    PartialDocument {
        id: format!("{pipeline}/hot_spot/{window_s}/{cell}/{shard}"),
        pipeline: pipeline.to_owned(),
        analysis: AnalysisKind::HotSpot,
        window_start: window_s * 1000,
        window_end: window_s * 1000 + 600_000,
        location: cell.to_owned(),
        geohash: cell.parse().expect("geohash"),
        pickup_count: Some(pickups),
        airport: None,
        trip_count: None,
        sum_duration_min: None,
        sum_duration_ms: None,
        shard: shard.to_owned(),
        is_final: true,
        version: pickups,
    }
}

/// `n` hot-spot partials of one pipeline and shard, in `n` consecutive windows from
/// 2016-01-01T00:00:00Z, all in cell `dr5ru7`.
pub fn hot_spots(pipeline: &str, n: usize, pickups: u64) -> Vec<PartialDocument> {
    (0..n)
        .map(|i| hot_spot(pipeline, "shardId-000000000000", 1_451_606_400 + 600 * i as i64, "dr5ru7", pickups))
        .collect()
}

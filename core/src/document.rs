//! The documents a shard's closed windows become, and the merged view that sums them over shards.
//!
//! Every document has a deterministic id, so re-emitting a window after a restart overwrites the
//! earlier document: results are exactly-once in effect. Every document also has a version that
//! grows with the records its shard had processed ([`document_version`]), and a document only ever
//! replaces one of the same id and a lower version: a zombie's late write, a re-driven old
//! document or a not-final document can never replace content computed from more records.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::analysis::{Aggregates, AirportAgg, AirportKey, ClosedWindows, MergedResult, final_results};
use crate::config::EngineConfig;
use crate::event::Millis;
use crate::geo::Geohash;
use crate::window::Tumbling;

/// Which analysis a document belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisKind {
    /// Pickup hot spots.
    HotSpot,
    /// Trips to an airport.
    AirportTrip,
}

/// One shard's aggregate for one window and key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartialDocument {
    /// `{pipeline}/{analysis}/{window_start_epoch_s}/{key}/{shard}`.
    pub id: String,
    /// The pipeline that produced it.
    pub pipeline: String,
    /// The analysis.
    pub analysis: AnalysisKind,
    /// Window start.
    #[serde(with = "crate::time::serde_timestamp")]
    pub window_start: Millis,
    /// Window end (exclusive).
    #[serde(with = "crate::time::serde_timestamp")]
    pub window_end: Millis,
    /// The pickup cell as a geo_point (a geohash string is a valid geo_point).
    pub location: String,
    /// The pickup cell.
    pub geohash: Geohash,
    /// Pickups (hot spots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pickup_count: Option<u64>,
    /// Airport name (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub airport: Option<String>,
    /// Trips (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trip_count: Option<u64>,
    /// Sum of durations in minutes (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_duration_min: Option<f64>,
    /// Sum of durations in milliseconds, exact, for merging (airport trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum_duration_ms: Option<i64>,
    /// The shard.
    pub shard: String,
    /// Whether the shard closed the window (no more updates from it).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Orders the documents of one id: see [`document_version`]. Absent (0) in older documents.
    #[serde(default)]
    pub version: u64,
}

/// The version of a document computed after its shard processed `records` user records:
/// processing is deterministic, so a higher count means content computed from more records (a
/// restart recomputes the same count and content). A final document outranks a not-final one of
/// the same count.
pub fn document_version(records: u64, is_final: bool) -> u64 {
    records.saturating_mul(2).saturating_add(u64::from(is_final))
}

/// The documents for windows of a shard that had processed `records` user records.
pub fn documents_for(
    pipeline: &str,
    shard: &str,
    config: &EngineConfig,
    closed: &ClosedWindows,
    is_final: bool,
    records: u64,
) -> Vec<PartialDocument> {
    let version = document_version(records, is_final);
    let hot = Tumbling::new(config.hot_spots.window_ms);
    let airports = Tumbling::new(config.airport_trips.window_ms);
    let mut docs = Vec::new();
    for (start, cells) in &closed.hot_spots {
        for (cell, count) in cells {
            docs.push(PartialDocument {
                id: format!("{pipeline}/hot_spot/{}/{cell}/{shard}", start.div_euclid(1000)),
                pipeline: pipeline.to_owned(),
                analysis: AnalysisKind::HotSpot,
                window_start: *start,
                window_end: hot.end_of(*start),
                location: cell.to_string(),
                geohash: *cell,
                pickup_count: Some(*count),
                airport: None,
                trip_count: None,
                sum_duration_min: None,
                sum_duration_ms: None,
                shard: shard.to_owned(),
                is_final,
                version,
            });
        }
    }
    for (start, keys) in &closed.airport_trips {
        for (key, agg) in keys {
            let name = config.airport_trips.airports.get(usize::from(key.airport)).map_or("", |a| a.name.as_str());
            docs.push(PartialDocument {
                id: format!("{pipeline}/airport_trip/{}/{}:{name}/{shard}", start.div_euclid(1000), key.pickup),
                pipeline: pipeline.to_owned(),
                analysis: AnalysisKind::AirportTrip,
                window_start: *start,
                window_end: airports.end_of(*start),
                location: key.pickup.to_string(),
                geohash: key.pickup,
                pickup_count: None,
                airport: Some(name.to_owned()),
                trip_count: Some(agg.trips),
                sum_duration_min: Some(agg.duration_ms as f64 / 60_000.0),
                sum_duration_ms: Some(agg.duration_ms),
                shard: shard.to_owned(),
                is_final,
                version,
            });
        }
    }
    docs.sort_by(|a, b| a.id.cmp(&b.id));
    docs
}

/// The merged view: per id the document of the highest version (the later one of equal versions),
/// summed over shards, thresholds applied, in the output order of `taxi-worker local --output`.
pub fn merge_documents(config: &EngineConfig, docs: impl IntoIterator<Item = PartialDocument>) -> Vec<MergedResult> {
    let mut latest: HashMap<String, PartialDocument> = HashMap::new();
    for doc in docs {
        match latest.get(&doc.id) {
            Some(kept) if kept.version > doc.version => {}
            _ => {
                latest.insert(doc.id.clone(), doc);
            }
        }
    }
    let mut merged = Aggregates::new(config);
    for doc in latest.into_values() {
        match doc.analysis {
            AnalysisKind::HotSpot => {
                *merged.hot_spots.entry(doc.window_start, doc.geohash) += doc.pickup_count.unwrap_or(0);
            }
            AnalysisKind::AirportTrip => {
                let name = doc.airport.as_deref().unwrap_or_default();
                let Some(index) = config.airport_trips.airports.iter().position(|a| a.name == name) else {
                    tracing::warn!(id = %doc.id, airport = name, "document for an airport that is not configured");
                    continue;
                };
                let key = AirportKey { pickup: doc.geohash, airport: u8::try_from(index).unwrap_or(u8::MAX) };
                let duration_ms = doc
                    .sum_duration_ms
                    .unwrap_or_else(|| (doc.sum_duration_min.unwrap_or(0.0) * 60_000.0).round() as i64);
                let agg = merged.airport_trips.entry(doc.window_start, key);
                *agg = AirportAgg {
                    trips: agg.trips + doc.trip_count.unwrap_or(0),
                    duration_ms: agg.duration_ms.saturating_add(duration_ms),
                };
            }
        }
    }
    final_results(config, &merged.take_all())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Event, GeoPoint, Trip};
    use crate::shard::ShardProcessor;

    fn shard_with(config: &Arc<EngineConfig>, trips: &[(u64, i64, GeoPoint)]) -> ClosedWindows {
        let mut shard = ShardProcessor::new(config.clone());
        let midtown = GeoPoint { lat: 40.7580, lon: -73.9855 };
        for &(id, dropoff, to) in trips {
            let trip = Trip {
                trip_id: id,
                pickup_time: dropoff - 1_800_123,
                dropoff_time: dropoff,
                pickup: midtown,
                dropoff: to,
            };
            shard.process(&Event::Trip(trip), None);
        }
        shard.take_all()
    }

    #[test]
    fn documents_have_deterministic_ids_and_merge_to_the_thresholded_sum() {
        let config = Arc::new(EngineConfig::default());
        let jfk = GeoPoint { lat: 40.6413, lon: -73.7781 };
        let t0 = 1_451_606_400_000;
        let a =
            documents_for("nyc", "shardId-000000000000", &config, &shard_with(&config, &[(1, t0 + 1, jfk)]), true, 1);
        let b =
            documents_for("nyc", "shardId-000000000001", &config, &shard_with(&config, &[(2, t0 + 2, jfk)]), true, 1);
        assert_eq!(a[0].id, "nyc/airport_trip/1451606400/dr5ru7:JFK/shardId-000000000000");
        assert_eq!(a[1].id, "nyc/hot_spot/1451606400/dr5ru7/shardId-000000000000");
        // Each shard alone is below the thresholds; merged they pass.
        assert!(merge_documents(&config, a.clone()).is_empty());
        let merged = merge_documents(&config, a.iter().chain(&b).cloned().chain(a.iter().cloned()));
        assert_eq!(merged.len(), 2, "re-emitted documents overwrite, not add");
        match &merged[0] {
            MergedResult::AirportTrip { trip_count, sum_duration_min, .. } => {
                assert_eq!(*trip_count, 2);
                assert_eq!(*sum_duration_min, 60.0041);
            }
            other => panic!("expected the airport result first, got {other:?}"),
        }
    }

    #[test]
    fn a_document_is_never_replaced_by_one_computed_from_fewer_records() {
        let config = Arc::new(EngineConfig::default());
        let midtown = GeoPoint { lat: 40.7580, lon: -73.9855 };
        let t0 = 1_451_606_400_000;
        let two = shard_with(&config, &[(1, t0 + 1, midtown), (2, t0 + 2, midtown)]);
        let one = shard_with(&config, &[(1, t0 + 1, midtown)]);
        let full = documents_for("nyc", "s", &config, &two, true, 2);
        let partial = documents_for("nyc", "s", &config, &one, false, 1);
        assert_eq!(full[0].id, partial[0].id);
        let pickups = |docs: Vec<PartialDocument>| match merge_documents(&config, docs).first() {
            Some(MergedResult::HotSpot { pickup_count, .. }) => *pickup_count,
            other => panic!("expected one hot spot, got {other:?}"),
        };
        // A late (zombie's, re-driven) write of fewer records loses, in either order.
        assert_eq!(pickups(full.iter().chain(&partial).cloned().collect()), 2);
        assert_eq!(pickups(partial.iter().chain(&full).cloned().collect()), 2);
        // At the same count, the final document outranks the not-final one.
        assert!(document_version(2, true) > document_version(2, false));
        assert!(document_version(2, false) > document_version(1, true));
    }
}

//! The two analyses (hot spots, airport trips) as partial aggregates (per shard, mergeable across
//! shards) and the final results the merge emits.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::config::EngineConfig;
use crate::event::Millis;
use crate::geo::Geohash;
use crate::window::{ClosedWindow, Combine, Tumbling, WindowedAggregates};

/// Key of the airport analysis: the pickup cell and the index of the airport in the configured list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AirportKey {
    /// Geohash cell of the pickup.
    pub pickup: Geohash,
    /// Index into [`crate::config::AirportTripsConfig::airports`].
    pub airport: u8,
}

/// Trips to an airport: count and the sum of durations in whole milliseconds. Integer sums are
/// exact, so partials merge to the same total in any order and over any number of shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AirportAgg {
    /// Number of trips.
    pub trips: u64,
    /// Sum of trip durations in milliseconds.
    pub duration_ms: i64,
}

impl Combine for AirportAgg {
    fn combine(&mut self, other: &Self) {
        self.trips += other.trips;
        self.duration_ms = self.duration_ms.saturating_add(other.duration_ms);
    }
}

/// Open-window aggregates of both analyses.
#[derive(Clone, Debug)]
pub struct Aggregates {
    /// Pickups per window and geohash cell.
    pub hot_spots: WindowedAggregates<Geohash, u64>,
    /// Airport trips per window, pickup cell and airport.
    pub airport_trips: WindowedAggregates<AirportKey, AirportAgg>,
}

/// Windows closed in one step, oldest first within each analysis.
#[derive(Clone, Debug, Default)]
pub struct ClosedWindows {
    /// Closed hot-spot windows.
    pub hot_spots: Vec<ClosedWindow<Geohash, u64>>,
    /// Closed airport-trip windows.
    pub airport_trips: Vec<ClosedWindow<AirportKey, AirportAgg>>,
}

impl ClosedWindows {
    /// Whether nothing was closed.
    pub fn is_empty(&self) -> bool {
        self.hot_spots.is_empty() && self.airport_trips.is_empty()
    }
}

impl Aggregates {
    /// Empty aggregates with the windows of `config`.
    pub fn new(config: &EngineConfig) -> Aggregates {
        Aggregates {
            hot_spots: WindowedAggregates::new(Tumbling::new(config.hot_spots.window_ms)),
            airport_trips: WindowedAggregates::new(Tumbling::new(config.airport_trips.window_ms)),
        }
    }

    /// Closes every window whose end is at or before `cutoff`.
    pub fn take_ended_by(&mut self, cutoff: Millis) -> ClosedWindows {
        ClosedWindows {
            hot_spots: self.hot_spots.take_ended_by(cutoff),
            airport_trips: self.airport_trips.take_ended_by(cutoff),
        }
    }

    /// Closes every window.
    pub fn take_all(&mut self) -> ClosedWindows {
        ClosedWindows { hot_spots: self.hot_spots.take_all(), airport_trips: self.airport_trips.take_all() }
    }

    /// A copy of every open window, which stay open: what a run that stops before the windows
    /// close emits as not-final documents.
    pub fn snapshot(&self) -> ClosedWindows {
        ClosedWindows {
            hot_spots: self.hot_spots.iter().map(|(start, cells)| (*start, cells.clone())).collect(),
            airport_trips: self.airport_trips.iter().map(|(start, keys)| (*start, keys.clone())).collect(),
        }
    }

    /// Sums closed windows from elsewhere into these aggregates.
    pub fn combine(&mut self, closed: &ClosedWindows) {
        for (start, values) in &closed.hot_spots {
            self.hot_spots.combine_window(*start, values);
        }
        for (start, values) in &closed.airport_trips {
            self.airport_trips.combine_window(*start, values);
        }
    }
}

/// Rounds to 4 decimals, the precision of the results file (and the dashboard's sums).
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// One merged, final result line of the output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MergedResult {
    /// A pickup hot spot.
    HotSpot {
        /// Window start.
        #[serde(with = "crate::time::serde_timestamp")]
        window_start: Millis,
        /// Window end (exclusive).
        #[serde(with = "crate::time::serde_timestamp")]
        window_end: Millis,
        /// The pickup cell.
        geohash: Geohash,
        /// Pickups in the cell during the window.
        pickup_count: u64,
    },
    /// Trips from a pickup cell to an airport.
    AirportTrip {
        /// Window start.
        #[serde(with = "crate::time::serde_timestamp")]
        window_start: Millis,
        /// Window end (exclusive).
        #[serde(with = "crate::time::serde_timestamp")]
        window_end: Millis,
        /// The pickup cell.
        pickup_geohash: Geohash,
        /// The airport's name.
        airport: String,
        /// Trips in the window.
        trip_count: u64,
        /// Sum of their durations in minutes (4 decimals).
        sum_duration_min: f64,
        /// Average duration in minutes (4 decimals).
        avg_duration_min: f64,
    },
}

impl MergedResult {
    /// The `kind` string of the result.
    pub fn kind(&self) -> &'static str {
        match self {
            MergedResult::HotSpot { .. } => "hot_spot",
            MergedResult::AirportTrip { .. } => "airport_trip",
        }
    }

    /// Start of the result's window.
    pub fn window_start(&self) -> Millis {
        match self {
            MergedResult::HotSpot { window_start, .. } | MergedResult::AirportTrip { window_start, .. } => {
                *window_start
            }
        }
    }

    /// The output order: window start, then kind, then key.
    pub fn output_order(&self, other: &Self) -> Ordering {
        let key = |r: &MergedResult| match r {
            MergedResult::HotSpot { geohash, .. } => (*geohash, String::new()),
            MergedResult::AirportTrip { pickup_geohash, airport, .. } => (*pickup_geohash, airport.clone()),
        };
        (self.window_start(), self.kind())
            .cmp(&(other.window_start(), other.kind()))
            .then_with(|| key(self).cmp(&key(other)))
    }
}

/// Turns merged, final windows into results, applying the thresholds to the merged totals.
pub fn final_results(config: &EngineConfig, closed: &ClosedWindows) -> Vec<MergedResult> {
    let hot_windows = Tumbling::new(config.hot_spots.window_ms);
    let airport_windows = Tumbling::new(config.airport_trips.window_ms);
    let mut out = Vec::new();
    for (start, cells) in &closed.hot_spots {
        for (geohash, &count) in cells {
            if count >= config.hot_spots.min_pickups {
                out.push(MergedResult::HotSpot {
                    window_start: *start,
                    window_end: hot_windows.end_of(*start),
                    geohash: *geohash,
                    pickup_count: count,
                });
            }
        }
    }
    for (start, keys) in &closed.airport_trips {
        for (key, agg) in keys {
            if agg.trips >= config.airport_trips.min_trips && agg.trips > 0 {
                let sum_min = agg.duration_ms as f64 / 60_000.0;
                let airport = config
                    .airport_trips
                    .airports
                    .get(usize::from(key.airport))
                    .map_or_else(|| format!("airport-{}", key.airport), |a| a.name.clone());
                out.push(MergedResult::AirportTrip {
                    window_start: *start,
                    window_end: airport_windows.end_of(*start),
                    pickup_geohash: key.pickup,
                    airport,
                    trip_count: agg.trips,
                    sum_duration_min: round4(sum_min),
                    avg_duration_min: round4(sum_min / agg.trips as f64),
                });
            }
        }
    }
    out.sort_by(MergedResult::output_order);
    out
}

#[cfg(test)]
mod tests {
    use rustc_hash::FxHashMap;

    use super::*;
    use crate::event::GeoPoint;

    fn cell(lat: f64, lon: f64) -> Geohash {
        Geohash::encode(GeoPoint { lat, lon }, 6)
    }

    #[test]
    fn thresholds_apply_to_merged_totals_and_output_is_sorted() {
        let config = EngineConfig::default();
        let (a, b) = (cell(40.75, -73.98), cell(40.71, -74.01));
        let mut hot = FxHashMap::default();
        hot.insert(a, 1_u64); // below min_pickups = 2
        hot.insert(b, 3_u64);
        let mut airport = FxHashMap::default();
        airport.insert(AirportKey { pickup: a, airport: 1 }, AirportAgg { trips: 3, duration_ms: 3 * 1_500_000 + 1 });
        airport.insert(AirportKey { pickup: b, airport: 0 }, AirportAgg { trips: 1, duration_ms: 60_000 });
        let closed = ClosedWindows { hot_spots: vec![(600_000, hot)], airport_trips: vec![(600_000, airport)] };
        let results = final_results(&config, &closed);
        assert_eq!(results.len(), 2);
        // airport_trip sorts before hot_spot within a window.
        match &results[0] {
            MergedResult::AirportTrip {
                airport, trip_count, sum_duration_min, avg_duration_min, window_end, ..
            } => {
                assert_eq!(airport, "LGA");
                assert_eq!(*trip_count, 3);
                assert_eq!(*sum_duration_min, 75.0);
                assert_eq!(*avg_duration_min, 25.0);
                assert_eq!(*window_end, 1_200_000);
            }
            other => panic!("expected an airport trip first, got {other:?}"),
        }
        assert!(matches!(results[1], MergedResult::HotSpot { pickup_count: 3, geohash, .. } if geohash == b));
    }

    #[test]
    fn serializes_exactly_as_the_design_says() {
        let r = MergedResult::HotSpot {
            window_start: 1_451_606_400_000,
            window_end: 1_451_607_000_000,
            geohash: "dr5ru7".parse().expect("geohash"),
            pickup_count: 17,
        };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"kind":"hot_spot","window_start":"2016-01-01T00:00:00Z","window_end":"2016-01-01T00:10:00Z","geohash":"dr5ru7","pickup_count":17}"#
        );
        let a = MergedResult::AirportTrip {
            window_start: 1_451_606_400_000,
            window_end: 1_451_607_000_000,
            pickup_geohash: "dr5ru7".parse().expect("geohash"),
            airport: "JFK".to_owned(),
            trip_count: 3,
            sum_duration_min: 123.5,
            avg_duration_min: round4(123.5 / 3.0),
        };
        let json = serde_json::to_string(&a).expect("json");
        assert_eq!(
            json,
            r#"{"kind":"airport_trip","window_start":"2016-01-01T00:00:00Z","window_end":"2016-01-01T00:10:00Z","pickup_geohash":"dr5ru7","airport":"JFK","trip_count":3,"sum_duration_min":123.5,"avg_duration_min":41.1667}"#
        );
        assert_eq!(serde_json::from_str::<MergedResult>(&json).expect("parse back"), a);
    }
}

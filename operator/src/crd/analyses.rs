//! `spec.analyses`: the hot-spot and airport-trip analyses, their windows and thresholds, the
//! airports and the region.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use taxi_core::config::EngineConfig;
use taxi_core::duration;
use taxi_core::geo::{BoundingBox, Geofence};

use super::{BOX_ORDERED, DIVIDES_DAY, DURATION_PATTERN, POSITIVE_DURATION};

/// The analyses.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysesSpec {
    /// Pickup hot spots: pickups counted per geohash cell and window.
    #[serde(default)]
    pub hot_spots: HotSpotsSpec,
    /// Airport trips: average duration of trips ending at an airport, per pickup cell and window.
    #[serde(default)]
    pub airport_trips: AirportTripsSpec,
    /// Trips whose pickup or dropoff lies outside this box are counted as `outside_region` and
    /// skipped. Default: New York City, latitude 40.4774 to 40.9176, longitude -74.2591 to -73.7004.
    #[serde(default = "default_region")]
    pub region: BoundingBoxSpec,
}

impl Default for AnalysesSpec {
    fn default() -> Self {
        AnalysesSpec {
            hot_spots: HotSpotsSpec::default(),
            airport_trips: AirportTripsSpec::default(),
            region: default_region(),
        }
    }
}

/// The pickup hot-spot analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HotSpotsSpec {
    /// Tumbling window size, as a Go duration: a whole number of seconds that divides 24h
    /// (`1m`, `5m`, `10m`, `1h`, ...). Windows are aligned to the Unix epoch. Default `10m`.
    #[serde(default = "default_hot_spot_window")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(
        validation = Rule::new(POSITIVE_DURATION).message("analyses.hotSpots.window must be a positive duration"),
        validation = Rule::new(DIVIDES_DAY)
            .message("analyses.hotSpots.window must be a whole number of seconds that divides 24h"),
    )]
    pub window: String,
    /// Length of the geohash that defines a cell, 1 to 12. Default 6 (about 1.2 km by 0.6 km).
    /// The airport analysis keys pickups by the same cells.
    #[serde(default = "default_geohash_precision")]
    #[schemars(range(min = 1, max = 12))]
    pub geohash_precision: i32,
    /// A cell is reported as a hot spot when it has at least this many pickups in a window,
    /// summed over all shards. At least 1, default 2.
    #[serde(default = "default_min_pickups")]
    #[schemars(range(min = 1))]
    pub min_pickups: i64,
}

impl Default for HotSpotsSpec {
    fn default() -> Self {
        HotSpotsSpec {
            window: default_hot_spot_window(),
            geohash_precision: default_geohash_precision(),
            min_pickups: default_min_pickups(),
        }
    }
}

/// The airport trip-duration analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AirportTripsSpec {
    /// Tumbling window size, as a Go duration: a whole number of seconds that divides 24h
    /// (`1m`, `5m`, `10m`, `1h`, ...). Windows are aligned to the Unix epoch. Default `10m`.
    #[serde(default = "default_airport_window")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(
        validation = Rule::new(POSITIVE_DURATION).message("analyses.airportTrips.window must be a positive duration"),
        validation = Rule::new(DIVIDES_DAY)
            .message("analyses.airportTrips.window must be a whole number of seconds that divides 24h"),
    )]
    pub window: String,
    /// A (pickup cell, airport) pair is reported when it has at least this many trips in a window,
    /// summed over all shards. At least 1, default 2.
    #[serde(default = "default_min_trips")]
    #[schemars(range(min = 1))]
    pub min_trips: i64,
    /// The airports, matched against each trip's dropoff in list order; the first match wins.
    /// Names must be unique. Default: JFK (latitude 40.632 to 40.654, longitude -73.800 to -73.761)
    /// and LGA (latitude 40.766 to 40.778, longitude -73.881 to -73.859). An empty list disables
    /// the analysis.
    #[serde(default = "default_airports")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.name == a.name))")
        .message("analyses.airportTrips.airports must have unique names"))]
    pub airports: Vec<AirportSpec>,
}

impl Default for AirportTripsSpec {
    fn default() -> Self {
        AirportTripsSpec {
            window: default_airport_window(),
            min_trips: default_min_trips(),
            airports: default_airports(),
        }
    }
}

/// A named airport geofence; all bounds are inclusive, in degrees (WGS 84).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(BOX_ORDERED).message("an airport box needs minLat < maxLat and minLon < maxLon"))]
pub struct AirportSpec {
    /// Airport name as written into the results' `airport` field, like `JFK`. Required, 1 to 63
    /// characters, unique within the list.
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self != ''").message("an airport name must not be empty"))]
    pub name: String,
    /// Southern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub min_lat: f64,
    /// Western edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub min_lon: f64,
    /// Northern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub max_lat: f64,
    /// Eastern edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub max_lon: f64,
}

/// A latitude/longitude box; all bounds are inclusive, in degrees (WGS 84).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(BOX_ORDERED).message("a bounding box needs minLat < maxLat and minLon < maxLon"))]
pub struct BoundingBoxSpec {
    /// Southern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub min_lat: f64,
    /// Western edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub min_lon: f64,
    /// Northern edge, degrees of latitude, -90 to 90.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub max_lat: f64,
    /// Eastern edge, degrees of longitude, -180 to 180.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub max_lon: f64,
}

impl From<BoundingBox> for BoundingBoxSpec {
    fn from(b: BoundingBox) -> BoundingBoxSpec {
        BoundingBoxSpec { min_lat: b.min_lat, min_lon: b.min_lon, max_lat: b.max_lat, max_lon: b.max_lon }
    }
}

impl From<&Geofence> for AirportSpec {
    fn from(g: &Geofence) -> AirportSpec {
        let b = g.bounds;
        AirportSpec {
            name: g.name.clone(),
            min_lat: b.min_lat,
            min_lon: b.min_lon,
            max_lat: b.max_lat,
            max_lon: b.max_lon,
        }
    }
}

fn default_hot_spot_window() -> String {
    duration::format_millis(EngineConfig::default().hot_spots.window_ms)
}
fn default_airport_window() -> String {
    duration::format_millis(EngineConfig::default().airport_trips.window_ms)
}
fn default_geohash_precision() -> i32 {
    i32::from(EngineConfig::default().hot_spots.geohash_precision)
}
fn default_min_pickups() -> i64 {
    i64::try_from(EngineConfig::default().hot_spots.min_pickups).unwrap_or(i64::MAX)
}
fn default_min_trips() -> i64 {
    i64::try_from(EngineConfig::default().airport_trips.min_trips).unwrap_or(i64::MAX)
}
/// The worker's NYC region filter: one definition for both.
fn default_region() -> BoundingBoxSpec {
    BoundingBox::NYC.into()
}
/// The worker's airports, JFK then LGA.
fn default_airports() -> Vec<AirportSpec> {
    Geofence::default_airports().iter().map(AirportSpec::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_geography_is_new_york_with_jfk_and_lga() {
        assert_eq!(
            default_region(),
            BoundingBoxSpec { min_lat: 40.4774, min_lon: -74.2591, max_lat: 40.9176, max_lon: -73.7004 }
        );
        let airports = default_airports();
        assert_eq!(airports[0].name, "JFK");
        assert_eq!((airports[0].min_lat, airports[0].max_lat), (40.632, 40.654));
        assert_eq!((airports[0].min_lon, airports[0].max_lon), (-73.800, -73.761));
        assert_eq!(airports[1].name, "LGA");
        assert_eq!((airports[1].min_lat, airports[1].max_lat), (40.766, 40.778));
        assert_eq!((airports[1].min_lon, airports[1].max_lon), (-73.881, -73.859));
    }
}

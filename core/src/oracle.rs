//! The batch oracle: what the streaming pipeline must compute, computed the simplest way, with no
//! windows closing, no watermarks and no shards. The tests and the chaos suite compare against it.

use std::collections::BTreeMap;
use std::path::Path;

use crate::analysis::MergedResult;
use crate::config::EngineConfig;
use crate::event::{Event, Millis, Trip};
use crate::geo::Geohash;
use crate::input::{InputError, read_records};

/// Merged results computed straight from an input file, with no windows closing,
/// no watermarks and no shards — every valid trip inside the region counts in the window its
/// dropoff falls in. Equal to the streaming results whenever disorder stays within the bound.
pub fn results_of_file(config: &EngineConfig, input: &Path) -> Result<Vec<MergedResult>, InputError> {
    let mut trips = Vec::new();
    for record in read_records(input)? {
        if let (_, Ok(Event::Trip(trip))) = record? {
            trips.push(trip);
        }
    }
    Ok(results(config, &trips))
}

/// The batch oracle over trips already in memory. Trip ids are not de-duplicated: give it each
/// trip once.
pub fn results(config: &EngineConfig, trips: &[Trip]) -> Vec<MergedResult> {
    let hot_size = config.hot_spots.window_ms;
    let airport_size = config.airport_trips.window_ms;
    let floor = |t: Millis, size: Millis| t.div_euclid(size) * size;
    let mut hot: BTreeMap<(Millis, Geohash), u64> = BTreeMap::new();
    let mut airport: BTreeMap<(Millis, Geohash, String), (u64, i64)> = BTreeMap::new();
    for t in trips {
        if !config.region.contains(t.pickup) || !config.region.contains(t.dropoff) {
            continue;
        }
        let cell = Geohash::encode(t.pickup, config.hot_spots.geohash_precision);
        *hot.entry((floor(t.dropoff_time, hot_size), cell)).or_default() += 1;
        if let Some(a) = config.airport_trips.airports.iter().find(|a| a.bounds.contains(t.dropoff)) {
            let e = airport.entry((floor(t.dropoff_time, airport_size), cell, a.name.clone())).or_default();
            e.0 += 1;
            e.1 += t.dropoff_time - t.pickup_time;
        }
    }
    let round4 = |x: f64| (x * 10_000.0).round() / 10_000.0;
    let mut out: Vec<MergedResult> = hot
        .into_iter()
        .filter(|(_, n)| *n >= config.hot_spots.min_pickups)
        .map(|((start, geohash), n)| MergedResult::HotSpot {
            window_start: start,
            window_end: start + hot_size,
            geohash,
            pickup_count: n,
        })
        .collect();
    out.extend(airport.into_iter().filter(|(_, (n, _))| *n >= config.airport_trips.min_trips).map(
        |((start, cell, name), (n, ms))| {
            let minutes = ms as f64 / 60_000.0;
            MergedResult::AirportTrip {
                window_start: start,
                window_end: start + airport_size,
                pickup_geohash: cell,
                airport: name,
                trip_count: n,
                sum_duration_min: round4(minutes),
                avg_duration_min: round4(minutes / n as f64),
            }
        },
    ));
    out.sort_by(MergedResult::output_order);
    out
}

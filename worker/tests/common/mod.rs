//! Shared helpers of the integration tests: the batch oracle and small input builders.

#![allow(dead_code, reason = "each test binary uses a different subset of the helpers")]

pub mod kinesis;
pub mod opensearch;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod services;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use taxi_worker::analysis::MergedResult;
use taxi_worker::config::EngineConfig;
use taxi_worker::event::{Event, Millis, Trip};
use taxi_worker::geo::Geohash;
use taxi_worker::input::read_records;

/// Splits the lines of `input` into two files of `dir`, the first half and the rest.
pub fn split_in_halves(input: &Path, dir: &Path, names: [&str; 2]) -> (PathBuf, PathBuf) {
    let lines: Vec<String> = std::fs::read_to_string(input).expect("read").lines().map(str::to_owned).collect();
    let (first, second) = lines.split_at(lines.len() / 2);
    let write = |name: &str, part: &[String]| {
        let path = dir.join(name);
        std::fs::write(&path, part.join("\n") + "\n").expect("write");
        path
    };
    (write(names[0], first), write(names[1], second))
}

/// The batch oracle: merged results computed straight from the input, with no windows closing,
/// no watermarks and no shards — every valid trip inside the region counts in the window its
/// dropoff falls in. Equal to the streaming results whenever disorder stays within the bound.
pub fn batch_oracle(config: &EngineConfig, input: &Path) -> Vec<MergedResult> {
    let trips: Vec<Trip> = read_records(input)
        .expect("open input")
        .filter_map(|r| match r.expect("read input").1 {
            Ok(Event::Trip(t)) => Some(t),
            _ => None,
        })
        .collect();
    oracle_over(config, &trips)
}

/// The batch oracle over trips already in memory.
pub fn oracle_over(config: &EngineConfig, trips: &[Trip]) -> Vec<MergedResult> {
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

/// One trip as a JSON line in the seed's format.
pub fn trip_line(t: &Trip) -> String {
    format!(
        r#"{{"trip_id":{},"pickup_datetime":"{}","dropoff_datetime":"{}","pickup_latitude":{},"pickup_longitude":{},"dropoff_latitude":{},"dropoff_longitude":{},"total_amount":12.5,"type":"trip"}}"#,
        t.trip_id,
        taxi_worker::time::format_timestamp(t.pickup_time),
        taxi_worker::time::format_timestamp(t.dropoff_time),
        t.pickup.lat,
        t.pickup.lon,
        t.dropoff.lat,
        t.dropoff.lon
    )
}

/// Results as the JSON lines `--output` writes.
pub fn as_lines(results: &[MergedResult]) -> Vec<String> {
    results.iter().map(|r| serde_json::to_string(r).expect("serialize")).collect()
}

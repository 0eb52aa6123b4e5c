//! `taxi-worker local` against the batch oracle: with disorder inside the bound, the streaming
//! results equal the batch results for any number of shards.

mod common;

use std::path::{Path, PathBuf};

use common::{local_options, run_local_blocking};
use proptest::prelude::*;
use taxi_core::analysis::MergedResult;
use taxi_core::config::EngineConfig;
use taxi_core::event::{GeoPoint, Trip};
use taxi_core::generate::GeneratorConfig;
use taxi_testkit::input::{trip_lines, write_generated};
use taxi_testkit::oracle::{as_lines, batch_oracle, oracle_over};
use taxi_worker::local::{LocalRun, Outcome};

fn run(input: &Path, shards: u32, engine: EngineConfig) -> LocalRun {
    run_local_blocking(local_options(input, shards, engine)).expect("local run")
}

fn generated_file(dir: &Path, trips: u64, seed: u64) -> PathBuf {
    let path = dir.join(format!("trips-{seed}.jsonl"));
    let config =
        GeneratorConfig { trips, seed, watermark_every: Some(997), invalid_ratio: 0.002, ..GeneratorConfig::default() };
    write_generated(&path, &config);
    path
}

#[test]
fn local_equals_the_batch_oracle_with_1_3_and_8_shards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 60_000, 7);
    let config = EngineConfig::default();
    let expected = batch_oracle(&config, &input);
    assert!(
        expected.iter().any(|r| matches!(r, MergedResult::AirportTrip { .. })),
        "the fixture must exercise airports"
    );
    assert!(expected.len() > 1_000, "the fixture must produce many hot spots");
    for shards in [1, 3, 8] {
        let run = run(&input, shards, config.clone());
        assert_eq!(run.outcome, Outcome::Completed);
        assert_eq!(run.summary.late, 0, "{shards} shards: disorder is inside the bound");
        assert_eq!(as_lines(&run.results), as_lines(&expected), "{shards} shards");
        assert_eq!(run.summary.records, 60_000 + run.summary.watermarks + run.summary.invalid);
        assert!(run.summary.invalid > 0 && run.summary.outside_region > 0);
    }
}

#[test]
fn windows_of_other_sizes_and_thresholds_match_the_oracle_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 20_000, 11);
    let mut config = EngineConfig::default();
    config.hot_spots.window_ms = 7 * 60_000;
    config.airport_trips.window_ms = 7 * 60_000;
    config.hot_spots.geohash_precision = 5;
    config.hot_spots.min_pickups = 3;
    config.airport_trips.min_trips = 1;
    let expected = batch_oracle(&config, &input);
    assert_eq!(as_lines(&run(&input, 5, config.clone()).results), as_lines(&expected));
}

/// Points in and around NYC, with the airports and the region's edges well represented.
/// Trips with a mistyped year, before 1970, from 2100 on, or a day and more ahead of their shard,
/// are counted `implausible_time` and change no result: without the check, the one from 2061
/// would close every window and make the rest of the input late.
#[test]
fn implausible_event_times_are_counted_and_change_no_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_file(dir.path(), 20_000, 11);
    let config = EngineConfig::default();
    let expected = batch_oracle(&config, &input);
    let mut lines: Vec<String> = std::fs::read_to_string(&input).expect("read").lines().map(str::to_owned).collect();
    let mistyped = |id: u64, year: &str| {
        format!(
            r#"{{"type":"trip","trip_id":{id},"pickup_datetime":"{year}-01-01T10:00:00Z","dropoff_datetime":"{year}-01-01T10:20:00Z","pickup_latitude":40.75,"pickup_longitude":-73.99,"dropoff_latitude":40.64,"dropoff_longitude":-73.78}}"#
        )
    };
    // Fresh trip ids, so the oracle over the clean file is the expected answer.
    let bad = [mistyped(900_001, "2061"), mistyped(900_002, "2999"), mistyped(900_003, "1969")];
    for (i, line) in bad.iter().enumerate() {
        lines.insert(5_000 * (i + 1), line.clone());
    }
    let dirty = dir.path().join("dirty.jsonl");
    std::fs::write(&dirty, lines.join("\n") + "\n").expect("write");
    for shards in [1, 3] {
        let run = run(&dirty, shards, config.clone());
        assert_eq!(run.summary.late, 0, "{shards} shards: nothing became late");
        assert_eq!(run.summary.invalid_by_reason.get("implausible_time"), Some(&3), "{shards} shards");
        assert_eq!(as_lines(&run.results), as_lines(&expected), "{shards} shards");
    }
}

fn point() -> impl Strategy<Value = GeoPoint> {
    prop_oneof![
        (40.70..40.80_f64, -74.02..-73.93_f64),
        (40.632..=40.654_f64, -73.800..=-73.761_f64),
        (40.766..=40.778_f64, -73.881..=-73.859_f64),
        (40.40..41.0_f64, -74.4..-73.6_f64),
    ]
    .prop_map(|(lat, lon)| GeoPoint { lat: (lat * 1e6).round() / 1e6, lon: (lon * 1e6).round() / 1e6 })
}

/// Trips whose dropoff times are at most 59 s behind the latest one before them.
fn trips() -> impl Strategy<Value = Vec<Trip>> {
    prop::collection::vec((0_i64..90_000, 0_i64..59_000, 60_000_i64..3_600_000, point(), point()), 1..400).prop_map(
        |steps| {
            let mut clock = 1_451_606_400_000_i64;
            steps
                .into_iter()
                .enumerate()
                .map(|(i, (advance, behind, duration, pickup, dropoff))| {
                    clock += advance;
                    let dropoff_time = (clock - behind) / 1000 * 1000;
                    Trip { trip_id: i as u64 + 1, pickup_time: dropoff_time - duration, dropoff_time, pickup, dropoff }
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_input_with_bounded_disorder_matches_the_oracle(trips in trips(), shards in prop::sample::select(vec![1_u32, 3, 8])) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("trips.jsonl");
        std::fs::write(&path, trip_lines(&trips)).expect("write");
        let mut config = EngineConfig::default();
        config.hot_spots.window_ms = 120_000;
        config.airport_trips.window_ms = 120_000;
        config.airport_trips.min_trips = 1;
        let expected = oracle_over(&config, &trips);
        let run = run(&path, shards, config);
        prop_assert_eq!(run.summary.late, 0);
        prop_assert_eq!(as_lines(&run.results), as_lines(&expected));
    }
}

/// The same trips as a gzip- or zstd-compressed TLC CSV file (2015 layout, row numbers as trip
/// ids) give the same merged results as the JSON-lines file.
#[test]
fn compressed_tlc_csv_gives_the_same_results_as_json_lines() {
    use std::io::Write;

    use taxi_core::generate::{GeneratedRecord, TripGenerator};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = GeneratorConfig { trips: 15_000, seed: 9, ..GeneratorConfig::default() };
    let trips: Vec<Trip> = TripGenerator::new(&config)
        .filter_map(|r| match r {
            GeneratedRecord::Trip(t) => Some(t),
            _ => None,
        })
        .collect();
    let naive = |t: i64| taxi_core::time::format_timestamp(t).replace('T', " ").replace('Z', "");
    let mut csv = String::from(
        "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,improvement_surcharge,total_amount\n",
    );
    for t in &trips {
        csv += &format!(
            "2,{},{},1,1.5,{},{},1,N,{},{},1,8.5,0.5,0.5,1.0,0,0.3,10.8\n",
            naive(t.pickup_time),
            naive(t.dropoff_time),
            t.pickup.lon,
            t.pickup.lat,
            t.dropoff.lon,
            t.dropoff.lat
        );
    }
    let gz = dir.path().join("yellow.csv.gz");
    let mut encoder =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).expect("create"), flate2::Compression::fast());
    encoder.write_all(csv.as_bytes()).expect("gzip");
    encoder.finish().expect("gzip");
    let zst = dir.path().join("yellow.csv.zst");
    std::fs::write(&zst, zstd::encode_all(csv.as_bytes(), 1).expect("zstd")).expect("write");
    let json = dir.path().join("trips.jsonl");
    std::fs::write(&json, trip_lines(&trips)).expect("write");

    let engine = EngineConfig::default();
    let expected = as_lines(&run(&json, 4, engine.clone()).results);
    assert!(expected.len() > 100);
    assert_eq!(as_lines(&run(&gz, 4, engine.clone()).results), expected, "gzip CSV");
    assert_eq!(as_lines(&run(&zst, 2, engine).results), expected, "zstd CSV");
}

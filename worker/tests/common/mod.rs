//! Shared helpers of the integration tests: the batch oracle and small input builders.

#![allow(dead_code, reason = "each test binary uses a different subset of the helpers")]

pub mod kinesis;
pub mod opensearch;
pub mod process;
pub mod proxy;
pub mod s3;
pub mod services;

use std::path::{Path, PathBuf};

use taxi_core::analysis::MergedResult;
use taxi_core::config::EngineConfig;
use taxi_core::event::Trip;

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

/// The batch oracle over a file (see [`taxi_core::oracle`]).
pub fn batch_oracle(config: &EngineConfig, input: &Path) -> Vec<MergedResult> {
    taxi_core::oracle::results_of_file(config, input).expect("read the input")
}

/// The batch oracle over trips already in memory.
pub fn oracle_over(config: &EngineConfig, trips: &[Trip]) -> Vec<MergedResult> {
    taxi_core::oracle::results(config, trips)
}

/// One trip as a JSON line in the seed's format.
pub fn trip_line(t: &Trip) -> String {
    format!(
        r#"{{"trip_id":{},"pickup_datetime":"{}","dropoff_datetime":"{}","pickup_latitude":{},"pickup_longitude":{},"dropoff_latitude":{},"dropoff_longitude":{},"total_amount":12.5,"type":"trip"}}"#,
        t.trip_id,
        taxi_core::time::format_timestamp(t.pickup_time),
        taxi_core::time::format_timestamp(t.dropoff_time),
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

//! `local` over inputs of several files and of Parquet: two files give the results of their
//! concatenation (and resume across them), and trips in the TLC's Parquet layout of today (zone
//! ids, written by pyarrow) give the results of the same trips as JSON lines at the zones'
//! centroids.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{local_options, run_local_blocking};
use taxi_core::config::EngineConfig;
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::input::ZoneCentroids;
use taxi_testkit::parquet::{TimeUnit, ZoneInput, python, write_centroids, write_tlc_parquet};
use taxi_worker::local::{CheckpointOptions, LocalInput, LocalOptions, LocalRun, Outcome, Summary};

/// What two runs over the same trips must share: every result and every count.
fn same_run(a: &LocalRun, b: &LocalRun, what: &str) {
    assert_eq!(a.outcome, Outcome::Completed, "{what}");
    assert_eq!(b.outcome, Outcome::Completed, "{what}");
    assert!(!a.results.is_empty(), "{what}: the run computed nothing");
    assert_eq!(a.results, b.results, "{what}");
    let counts = |s: &Summary| {
        let Summary {
            records,
            trips,
            watermarks,
            invalid,
            outside_region,
            late,
            duplicates,
            hot_spots,
            airport_trips,
            ..
        } = s.clone();
        (
            records,
            trips,
            watermarks,
            invalid,
            outside_region,
            late,
            duplicates,
            hot_spots,
            airport_trips,
            s.invalid_by_reason.clone(),
        )
    };
    assert_eq!(counts(&a.summary), counts(&b.summary), "{what}");
}

fn over(paths: Vec<PathBuf>, zones: Option<Arc<ZoneCentroids>>) -> LocalOptions {
    LocalOptions {
        input: LocalInput::files(paths, zones),
        ..local_options(Path::new("unused"), 4, EngineConfig::default())
    }
}

/// A generated day (with watermark and invalid lines) as one file, and split in two at a line.
fn split_day(dir: &Path) -> (PathBuf, PathBuf, PathBuf, u64) {
    let config = GeneratorConfig {
        trips: 30_000,
        seed: 5,
        watermark_every: Some(400),
        invalid_ratio: 0.002,
        ..GeneratorConfig::default()
    };
    let mut all = Vec::new();
    write_json_lines(&config, &mut all).expect("generate");
    let cut = all[all.len() / 3..].iter().position(|b| *b == b'\n').expect("a line end") + all.len() / 3 + 1;
    let first_records = all[..cut].split(|b| *b == b'\n').filter(|l| !l.trim_ascii().is_empty()).count() as u64;
    let paths = [dir.join("day.jsonl"), dir.join("part-1.jsonl"), dir.join("part-2.jsonl")];
    std::fs::write(&paths[0], &all).expect("write");
    std::fs::write(&paths[1], &all[..cut]).expect("write");
    std::fs::write(&paths[2], &all[cut..]).expect("write");
    let [whole, first, second] = paths;
    (whole, first, second, first_records)
}

#[test]
fn two_files_give_the_results_of_their_concatenation_and_resume_across_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (whole, first, second, first_records) = split_day(dir.path());
    let concatenated = run_local_blocking(over(vec![whole], None)).expect("one file");
    let split = run_local_blocking(over(vec![first.clone(), second.clone()], None)).expect("two files");
    same_run(&concatenated, &split, "two files");

    // Stopped inside the second file and resumed: the same results again.
    let checkpoints =
        |resume| Some(CheckpointOptions { dir: dir.path().join("ckpt"), interval: Duration::from_secs(3600), resume });
    let stop_at = first_records + 1_234;
    let stopped = run_local_blocking(LocalOptions {
        checkpoint: checkpoints(false),
        stop_after_records: Some(stop_at),
        ..over(vec![first.clone(), second.clone()], None)
    })
    .expect("first part");
    assert_eq!(stopped.outcome, Outcome::Stopped { records: stop_at });
    let resumed = run_local_blocking(LocalOptions { checkpoint: checkpoints(true), ..over(vec![first, second], None) })
        .expect("resumed");
    assert_eq!(resumed.results, concatenated.results);
    assert_eq!(resumed.summary.records, concatenated.summary.records);
}

#[test]
fn tlc_parquet_with_zone_ids_gives_the_results_of_the_same_trips_as_json() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let input = ZoneInput::generate(25_000, 11);
    let json = dir.path().join("trips.jsonl");
    std::fs::write(&json, input.json_lines()).expect("write");
    let table = dir.path().join("zones.csv");
    write_centroids(&input.centroids, &table);
    let zones = Arc::new(ZoneCentroids::load(&table).expect("centroids"));
    let from_json = run_local_blocking(over(vec![json], None)).expect("json");
    assert_eq!(from_json.summary.trips, input.trips.len() as u64);

    for (unit, name) in [(TimeUnit::Micros, "us"), (TimeUnit::Nanos, "ns")] {
        let parquet = dir.path().join(format!("trips-{name}.parquet"));
        // Row groups of 4000 rows: several, and chunks that cross their ends.
        write_tlc_parquet(&python, &input.trips, unit, 4_000, &parquet);
        let from_parquet = run_local_blocking(over(vec![parquet.clone()], Some(zones.clone()))).expect("parquet");
        same_run(&from_json, &from_parquet, name);
        // Without the table, the run says what to pass.
        let err = run_local_blocking(over(vec![parquet], None)).expect_err("zone ids without a table");
        assert!(err.to_string().contains("--zone-centroids FILE"), "{err}");
    }
}

//! Results do not depend on how a stream is cut into runs: a run that stops when idle writes its
//! open windows as not-final documents and keeps them in its checkpoints, and the next run
//! completes them, so `replay a; run; replay b; run` merges to what one run over a+b gives.

mod common;

use std::sync::Arc;

use common::{merged, partials, run_options, run_to_idle};
use taxi_core::config::EngineConfig;
use taxi_core::document::PartialDocument;
use taxi_core::event::{GeoPoint, Trip};
use taxi_io::sink::file::read_documents;
use taxi_testkit::input::trip_lines;
use taxi_testkit::kinesis::{client, emulator, fresh_stream, put_file};
use taxi_testkit::oracle::{as_lines, batch_oracle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_to_idle_over_two_replays_merge_to_one_run_over_both() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    // Eight trips from Midtown, dropped off in the window 00:00–00:10, cut into two replays in the
    // middle of that window; the second replay ends with a trip at 00:30 that closes it.
    let t0 = 1_451_606_400_000; // 2016-01-01T00:00:00Z
    let midtown = GeoPoint { lat: 40.7580, lon: -73.9855 };
    let jfk = GeoPoint { lat: 40.6413, lon: -73.7781 };
    let trip = |id: u64, dropoff_s: i64| Trip {
        trip_id: id,
        pickup_time: t0 + dropoff_s * 1000 - 1_800_000,
        dropoff_time: t0 + dropoff_s * 1000,
        pickup: midtown,
        dropoff: jfk,
    };
    let first: Vec<Trip> = (1..=4).map(|id| trip(id, 120 + id as i64)).collect();
    let second: Vec<Trip> = (5..=8).map(|id| trip(id, 240 + id as i64)).chain([trip(9, 1_800)]).collect();
    let (a, b, all) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"), dir.path().join("all.jsonl"));
    std::fs::write(&a, trip_lines(&first)).expect("write");
    std::fs::write(&b, trip_lines(&second)).expect("write");
    std::fs::write(&all, trip_lines(&first) + &trip_lines(&second)).expect("write");
    let stream = fresh_stream(&api, 2).await;
    let options = run_options(&stream, dir.path(), "nyc");

    put_file(&api, &stream, &a).await;
    run_to_idle(api.clone(), options.clone()).await;
    let first: Vec<PartialDocument> = read_documents(&partials(dir.path())).expect("partials");
    assert!(first.iter().any(|d| !d.is_final), "the first run wrote the windows it left open as not final");

    put_file(&api, &stream, &b).await;
    run_to_idle(api.clone(), options).await;
    assert_eq!(
        merged(dir.path()),
        as_lines(&batch_oracle(&EngineConfig::default(), &all)),
        "two runs merge to the results of one run over both replays"
    );
}

//! Duplicates from the producer count once: a retried `PutRecords` puts a trip into the stream
//! twice, and a shard counts its id once per window, across a restart too (the ids of the open
//! windows are kept in the checkpoint).

mod common;

use std::sync::Arc;

use common::{merged, run_options, run_to_idle};
use taxi_core::config::EngineConfig;
use taxi_io::kinesis::api::KinesisApi;
use taxi_testkit::input::generated_input;
use taxi_testkit::kinesis::{client, emulator, fresh_stream, put_file, wait_active};
use taxi_testkit::oracle::{as_lines, batch_oracle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_put_twice_count_once_within_a_run_and_across_runs() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 500, 41);
    let text = std::fs::read_to_string(&input).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let (first, last) = lines.split_at(lines.len() - 40);

    // Every trip of the first part twice in a row, as a producer retrying each put would send it,
    // then the last part once.
    let doubled = |part: &[&str]| part.iter().flat_map(|l| [*l, *l]).map(|l| format!("{l}\n")).collect::<String>();
    let once = |part: &[&str]| part.iter().map(|l| format!("{l}\n")).collect::<String>();
    let retried = dir.path().join("retried.jsonl");
    std::fs::write(&retried, doubled(first) + &once(last)).expect("write");
    let stream = fresh_stream(&api, 2).await;
    let options = run_options(&stream, dir.path(), "nyc");
    put_file(&api, &stream, &retried).await;
    let (summary, _) = run_to_idle(api.clone(), options.clone()).await;
    let c = &summary.counters;
    assert!(c.duplicates > 0, "{c:?}");
    // Each first copy is aggregated, outside NYC or late, and its copy right behind it is the same,
    // except that an aggregated one's copy is a duplicate.
    let last_trips = last.len() as u64;
    assert_eq!(c.trips - last_trips, 2 * c.duplicates + c.outside_region + c.late, "{c:?}");

    // The retries of the last part arrive after the restart: the ids of the windows the first
    // run left open are in its checkpoints.
    let rest = dir.path().join("rest.jsonl");
    std::fs::write(&rest, once(last)).expect("write");
    put_file(&api, &stream, &rest).await;
    let (summary, _) = run_to_idle(api.clone(), options).await;
    assert!(summary.counters.duplicates > 0, "{:?}", summary.counters);

    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

/// A producer whose answer was lost retries after the stream was resharded: the copy lands in a
/// child shard, not in the shard that counted the original. The child starts from its parent's
/// final state, so the copy still counts once (or is late, as it would have been on the parent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trips_retried_into_a_child_shard_after_a_reshard_count_once() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 400, 43);
    let text = std::fs::read_to_string(&input).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let retried_part = &lines[lines.len() - 150..];

    let stream = fresh_stream(&api, 1).await;
    put_file(&api, &stream, &input).await;
    api.update_shard_count(&stream, 2).await.expect("reshard");
    wait_active(&api, &stream).await;
    let retried = dir.path().join("retried.jsonl");
    std::fs::write(&retried, retried_part.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("write");
    put_file(&api, &stream, &retried).await;

    let (summary, _) = run_to_idle(api.clone(), run_options(&stream, dir.path(), "nyc")).await;
    assert_eq!(summary.finished_shards.len(), 1, "the parent was read to its end: {summary:?}");
    assert!(summary.counters.duplicates > 0, "{:?}", summary.counters);
    assert_eq!(merged(dir.path()), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

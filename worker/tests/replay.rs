//! `taxi-worker replay` against the Kinesis emulator (kinesis-mock, started by `.ci/services.sh`): every trip
//! arrives exactly once and every shard gets watermarks.
//!
//! Needs `TAXI_TEST_KINESIS_ENDPOINT` (`eval "$(bash .ci/services.sh start)"`); without it the test is skipped,
//! except in CI (`CI=true`), where it fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use taxi_core::event::{Event, Millis};
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::input::parse_json_record;
use taxi_io::kinesis::api::{KinesisApi, SdkKinesis, StartingPosition};
use taxi_io::kinesis::kpl::{Deaggregated, deaggregate};
use taxi_testkit::kinesis::{client, emulator};
use taxi_worker::replay::{ReplayOptions, ReplayProgress, replay};

/// What one shard holds, de-aggregated: (trip ids, watermark values, invalid records).
#[derive(Debug, Default)]
struct ShardContents {
    trips: Vec<u64>,
    watermarks: Vec<Millis>,
    invalid: u64,
}

/// Reads every record of every shard from TRIM_HORIZON until a page comes back empty.
async fn read_back(api: &SdkKinesis, stream: &str) -> BTreeMap<String, ShardContents> {
    let mut contents = BTreeMap::new();
    for shard in api.list_shards(stream).await.expect("list shards") {
        let mut shard_contents = ShardContents::default();
        let mut iterator = Some(
            api.get_shard_iterator(stream, &shard.shard_id, &StartingPosition::TrimHorizon)
                .await
                .expect("shard iterator"),
        );
        while let Some(it) = iterator.take() {
            let page = api.get_records(&it, 10_000).await.expect("get records");
            if page.records.is_empty() {
                break;
            }
            for record in &page.records {
                let user_records: Vec<&[u8]> = match deaggregate(&record.data).expect("valid record") {
                    Deaggregated::Plain(data) => vec![data],
                    Deaggregated::Aggregated(records) => records.iter().map(|r| r.data).collect(),
                };
                for data in user_records {
                    match parse_json_record(data) {
                        Ok(Event::Trip(t)) => shard_contents.trips.push(t.trip_id),
                        Ok(Event::Watermark(w)) => shard_contents.watermarks.push(w),
                        Err(_) => shard_contents.invalid += 1,
                    }
                }
            }
            iterator = page.next_iterator;
        }
        contents.insert(shard.shard_id, shard_contents);
    }
    contents
}

async fn replay_generated(aggregate: bool) {
    let Some(endpoint) = emulator() else { return };
    let config = GeneratorConfig { trips: 2000, seed: 3, invalid_ratio: 0.02, ..GeneratorConfig::default() };
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let stats = write_json_lines(&config, file.as_file_mut()).expect("generate");
    let api = Arc::new(client(&endpoint));
    let stream = format!("taxi-replay-{:016x}", fastrand::u64(..));
    let options = ReplayOptions {
        speedup: 0.0,
        aggregate,
        create_stream: Some(4),
        ..ReplayOptions::new(file.path(), stream.clone())
    };
    let summary = replay(Arc::clone(&api), &options, &ReplayProgress::new()).await.expect("replay");
    assert_eq!(summary.trips, 2000);
    assert_eq!(summary.invalid, stats.invalid);

    let contents = read_back(&api, &stream).await;
    assert_eq!(contents.len(), 4, "{contents:?}");
    let mut trips: Vec<u64> = contents.values().flat_map(|c| c.trips.iter().copied()).collect();
    trips.sort_unstable();
    assert_eq!(trips, (1..=2000).collect::<Vec<u64>>(), "every trip exactly once");
    let invalid: u64 = contents.values().map(|c| c.invalid).sum();
    assert_eq!(invalid, stats.invalid, "invalid lines arrive for the worker to count");
    for (shard, c) in &contents {
        assert!(!c.watermarks.is_empty(), "no watermark on {shard}");
        assert_eq!(c.watermarks.last().copied(), summary.last_event_time, "final watermark on {shard}");
    }
    let watermarks: usize = contents.values().map(|c| c.watermarks.len()).sum();
    assert_eq!(watermarks as u64, summary.watermarks_sent);
}

#[tokio::test]
async fn replay_into_the_emulator_delivers_every_trip_once() {
    replay_generated(false).await;
}

#[tokio::test]
async fn aggregated_replay_into_the_emulator_delivers_every_trip_once() {
    replay_generated(true).await;
}

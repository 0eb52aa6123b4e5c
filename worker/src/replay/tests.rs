//! The replay end to end, against the in-memory stream: every record arrives once and in order on
//! its shard despite failures and out-of-order answers, watermarks, pacing, errors, and the options.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::fake::{
    Fault, MemoryKinesis, T0, even_shards, generated, options, shard, stored_contents, trip_line, user_records,
    write_lines,
};
use super::{
    MAX_BATCH_ENTRIES, ReplayError, ReplayOptions, ReplayProgress, ReplaySummary, WATERMARK_PARTITION_KEY, replay,
};
use crate::pace::Pacer;
use taxi_core::event::{Event, Millis};
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::input::parse_json_record;
use taxi_core::partition::even_ranges;
use taxi_io::kinesis::api::PutEntry;

#[tokio::test]
async fn every_trip_arrives_once_despite_failures() {
    let config = GeneratorConfig {
        trips: 3000,
        seed: 7,
        watermark_every: Some(100),
        invalid_ratio: 0.05,
        ..GeneratorConfig::default()
    };
    let (file, stats) = generated(&config);
    let fake = Arc::new(MemoryKinesis::new(even_shards(4, 0)).with_put_faults(|call| match call % 6 {
        1 => Fault::Entries { from: 3, count: 50 },
        2 => Fault::Call { throttled: true },
        4 => Fault::Call { throttled: false },
        _ => Fault::None,
    }));
    let progress = ReplayProgress::new();
    let mut opts = options(&file, 0.0);
    opts.max_in_flight = 3;
    let summary = replay(Arc::clone(&fake), &opts, &progress).await.expect("replay");

    let (trips, invalid, watermarks) = stored_contents(&fake);
    assert_eq!(trips, (1..=3000).collect::<Vec<u64>>(), "every trip exactly once");
    assert!(stats.invalid > 0);
    assert_eq!(invalid, stats.invalid, "invalid lines are forwarded for the worker to count");
    assert_eq!(summary.trips, 3000);
    assert_eq!(summary.invalid, stats.invalid);
    assert_eq!(summary.input_watermarks_skipped, stats.watermarks);
    assert_eq!(summary.watermarks_sent, watermarks);
    assert_eq!(summary.records_sent, 3000 + stats.invalid + watermarks);
    assert!(summary.retried_entries > 0 && summary.throttled_calls > 0, "{summary:?}");
    assert_eq!(summary.aggregated_records, 0);
    let snapshot = progress.snapshot();
    assert_eq!(snapshot.acknowledged, summary.records_sent);
    assert_eq!(snapshot.sent, summary.records_sent);
    assert_eq!(snapshot.retried, summary.retried_entries);
    // Stored records carry the original bytes and the trip id as partition key.
    let st = fake.stream();
    let mut original = Vec::new();
    write_json_lines(&config, &mut original).expect("generate");
    let lines: std::collections::HashSet<&[u8]> = original.split(|&b| b == b'\n').collect();
    for record in st.records.iter().filter(|r| r.explicit_hash_key.is_none()) {
        assert!(lines.contains(&record.data[..]), "data not an input line");
        if let Ok(Event::Trip(t)) = parse_json_record(&record.data) {
            assert_eq!(record.partition_key, t.trip_id.to_string());
        }
    }
}

/// Per shard, the partition keys of the input's trips and invalid lines, in file order.
fn expected_order(fake: &MemoryKinesis, input: &Path) -> BTreeMap<usize, Vec<String>> {
    let st = fake.stream();
    let mut expected: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for record in taxi_core::input::read_records(input).expect("read") {
        let (record_no, parsed) = record.expect("record");
        let partition_key = match parsed {
            Ok(Event::Trip(trip)) => trip.trip_id.to_string(),
            Ok(Event::Watermark(_)) => continue,
            Err(_) => record_no.to_string(),
        };
        let entry = PutEntry { partition_key, explicit_hash_key: None, data: Bytes::new() };
        let shard = st.open_shard_of(&entry).expect("an open shard");
        expected.entry(shard).or_default().push(entry.partition_key);
    }
    expected
}

/// Per shard, the partition keys of the user records it stored (watermarks aside), in the order stored.
fn stored_order(fake: &MemoryKinesis) -> BTreeMap<usize, Vec<String>> {
    let st = fake.stream();
    let mut stored: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for record in &st.records {
        for (key, _) in user_records(&record.partition_key, &record.data) {
            if key != WATERMARK_PARTITION_KEY {
                stored.entry(record.shard).or_default().push(key);
            }
        }
    }
    stored
}

/// Replays a generated file at full speed into a 4-shard fake whose calls take 1–6 ms at random, so that
/// calls complete out of order, with 8 calls in flight; checks every record arrived once, in file order
/// on its shard, and returns the fake.
async fn replay_scrambled(
    aggregate: bool,
    fault: impl Fn(usize) -> Fault + Send + Sync + 'static,
) -> (Arc<MemoryKinesis>, ReplaySummary) {
    let config = GeneratorConfig {
        trips: 4000,
        seed: 5,
        watermark_every: Some(100),
        invalid_ratio: 0.02,
        ..GeneratorConfig::default()
    };
    let (file, stats) = generated(&config);
    let fake = Arc::new(
        MemoryKinesis::new(even_shards(4, 0))
            .with_put_latency(Duration::from_millis(1))
            .with_put_jitter(Duration::from_millis(5))
            .with_put_faults(fault),
    );
    let mut opts = options(&file, 0.0);
    opts.max_in_flight = 8;
    opts.aggregate = aggregate;
    let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
    assert_eq!((summary.trips, summary.invalid), (4000, stats.invalid));

    let expected = expected_order(&fake, file.path());
    assert_eq!(expected.len(), 4);
    let stored = stored_order(&fake);
    for (shard, keys) in &expected {
        let got = stored.get(shard).map_or(&[][..], Vec::as_slice);
        let first_difference = keys.iter().zip(got).position(|(a, b)| a != b);
        assert!(
            got == keys.as_slice(),
            "shard {shard} (aggregate: {aggregate}): {} records stored for {} expected, first difference at {:?}",
            got.len(),
            keys.len(),
            first_difference,
        );
    }
    assert!(fake.stream().violations.is_empty(), "{:?}", fake.stream().violations);
    (fake, summary)
}

#[tokio::test]
async fn each_shard_receives_its_records_in_file_order() {
    for aggregate in [false, true] {
        let (fake, _) = replay_scrambled(aggregate, |_| Fault::None).await;
        let st = fake.stream();
        assert!(st.max_puts_in_flight > 1, "calls never overlapped: nothing was scrambled");
    }
}

#[tokio::test]
async fn retries_keep_the_order_of_each_shard() {
    for aggregate in [false, true] {
        // Kinesis throttles a shard's records from some point of a call on (a suffix), or the whole call. The
        // faults are random: a pattern by call number can lock step with the lanes' rhythm.
        let (_, summary) = replay_scrambled(aggregate, |call| match fastrand::u32(..10) {
            _ if call == 0 => Fault::Call { throttled: true },
            0 | 1 => Fault::Entries { from: 2, count: MAX_BATCH_ENTRIES },
            2 => Fault::Call { throttled: true },
            3 => Fault::Call { throttled: false },
            _ => Fault::None,
        })
        .await;
        assert!(summary.retried_entries > 0 && summary.throttled_calls > 0, "{summary:?}");
    }
}

#[tokio::test]
async fn a_shard_never_has_two_calls_in_flight() {
    let (fake, _) = replay_scrambled(false, |_| match fastrand::u32(..7) {
        0 => Fault::Entries { from: 1, count: MAX_BATCH_ENTRIES },
        1 => Fault::Call { throttled: true },
        _ => Fault::None,
    })
    .await;
    let st = fake.stream();
    assert_eq!(st.max_puts_in_flight_per_shard, 1, "a lane had two calls in flight");
    assert_eq!(st.mixed_puts, 0, "a call mixed the entries of several shards");
    assert!(st.max_puts_in_flight > 1, "lanes must send in parallel: at most {} call at once", st.max_puts_in_flight);
    assert!(st.puts_in_flight_per_shard.values().all(|&n| n == 0));
}

#[tokio::test]
async fn permanent_errors_fail_the_replay() {
    let file = write_lines(&[trip_line(1, T0, 0), trip_line(2, T0 + 1000, 0)]);
    let fake = Arc::new(MemoryKinesis::new(even_shards(2, 0)).with_put_faults(|_| Fault::Permanent));
    let err = replay(fake, &options(&file, 0.0), &ReplayProgress::new()).await.expect_err("must fail");
    assert!(matches!(err, ReplayError::Put { .. }), "{err}");
    assert!(err.to_string().starts_with("failed to put records into stream taxi-test"), "{err}");

    let missing = Arc::new(MemoryKinesis::missing());
    let err = replay(missing, &options(&file, 0.0), &ReplayProgress::new()).await.expect_err("must fail");
    assert!(matches!(err, ReplayError::StreamMissing { .. }), "{err}");
}

#[tokio::test]
async fn watermarks_reach_every_open_shard_and_never_pass_unacknowledged_trips() {
    // Ordered trips over 30 s of event time, replayed in ~0.3 s.
    let times: Vec<Millis> = (0..300).map(|i| T0 + i * 100).collect();
    let lines: Vec<String> = times.iter().zip(1..).map(|(&t, id)| trip_line(id, t, 0)).collect();
    let file = write_lines(&lines);
    let ranges = even_ranges(3);
    // A closed shard (never to get watermarks) and three open ones; after 10 calls the last one splits.
    let mut initial = vec![shard(0, 5, ranges[0].end, false)];
    initial.extend(ranges.iter().enumerate().map(|(i, r)| shard(i + 1, r.start, r.end, true)));
    let mut after = initial.clone();
    after[3].ending_sequence_number = Some("99".to_owned());
    let mid = ranges[2].start + (ranges[2].end - ranges[2].start) / 2;
    after.push(shard(4, ranges[2].start, mid, true));
    after.push(shard(5, mid + 1, ranges[2].end, true));
    let fake = Arc::new(
        MemoryKinesis::new(initial)
            .with_put_latency(Duration::from_millis(5))
            .with_put_faults(|call| if call % 4 == 3 { Fault::Entries { from: 0, count: 2 } } else { Fault::None })
            .resharding_after(10, after.clone()),
    );
    fake.expect_trips(times.iter().copied());
    let summary = replay(Arc::clone(&fake), &options(&file, 100.0), &ReplayProgress::new()).await.expect("replay");

    let st = fake.stream();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    let mut per_shard: BTreeMap<usize, Vec<Millis>> = BTreeMap::new();
    for record in &st.records {
        let Ok(Event::Watermark(w)) = parse_json_record(&record.data) else { continue };
        let key = record.explicit_hash_key.as_deref().expect("watermark has an explicit hash key");
        assert_eq!(key, st.shards[record.shard].starting_hash_key.to_string(), "key of {w}");
        assert_ne!(key, "5", "a closed shard's key");
        assert_eq!(record.partition_key, WATERMARK_PARTITION_KEY);
        per_shard.entry(record.shard).or_default().push(w);
    }
    assert!(per_shard.len() >= 4, "watermarks on {:?}", per_shard.keys());
    assert!(!per_shard.contains_key(&0), "the closed shard got watermarks");
    let last = *times.last().expect("trips");
    for open in [1, 2, 4, 5] {
        let values = per_shard.get(&open).unwrap_or_else(|| panic!("no watermark on shard {open}"));
        assert_eq!(values.last(), Some(&last), "final watermark of shard {open}");
    }
    assert!(per_shard[&1].len() > 5, "periodic watermarks: {:?}", per_shard[&1]);
    let stored_watermarks: usize = per_shard.values().map(Vec::len).sum();
    assert_eq!(summary.watermarks_sent, stored_watermarks as u64);
    assert_eq!(summary.trips, 300);
}

#[tokio::test]
async fn pacing_follows_the_speedup() {
    // 21 trips one event-second apart (T = 20 s) at speedup 40: about 0.5 s.
    let lines: Vec<String> = (0..=20).map(|i| trip_line(i + 1, T0 + i64::try_from(i).expect("i") * 1000, 0)).collect();
    let file = write_lines(&lines);
    let fake = Arc::new(MemoryKinesis::new(even_shards(2, 0)));
    let start = std::time::Instant::now();
    let mut opts = options(&file, 40.0);
    opts.watermark_interval = Duration::from_millis(100);
    let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(480) && elapsed < Duration::from_millis(950), "{elapsed:?}");
    assert_eq!(summary.trips, 21);
    let st = fake.stream();
    for record in &st.records {
        if let Ok(Event::Trip(t)) = parse_json_record(&record.data) {
            let due = Duration::from_secs_f64((t.event_time() - T0) as f64 / 1000.0 / 40.0);
            assert!(record.at.duration_since(start) >= due, "trip {} sent early", t.trip_id);
        }
    }
}

#[tokio::test]
async fn a_gap_in_event_time_costs_at_most_the_longest_wait() {
    // A year between two trips is 0.2 days at this speedup; the pacer compresses it to one wait.
    let year = 366 * 86_400_000;
    let lines = [trip_line(1, T0, 0), trip_line(2, T0 + year, 0), trip_line(3, T0 + year + 1000, 0)];
    let file = write_lines(&lines);
    let fake = Arc::new(MemoryKinesis::new(even_shards(1, 0)));
    let start = std::time::Instant::now();
    let summary = replay(Arc::clone(&fake), &options(&file, 2000.0), &ReplayProgress::new()).await.expect("replay");
    let elapsed = start.elapsed();
    assert_eq!(summary.trips, 3);
    assert!(elapsed >= Pacer::MAX_WAIT && elapsed < Pacer::MAX_WAIT * 3, "{elapsed:?}");
}

#[test]
fn options_are_validated() {
    let ok = ReplayOptions::new("x", "s");
    assert!(ok.validate().is_ok());
    for bad in [
        ReplayOptions { speedup: -1.0, ..ok.clone() },
        ReplayOptions { speedup: f64::NAN, ..ok.clone() },
        ReplayOptions { max_in_flight: 0, ..ok.clone() },
        ReplayOptions { watermark_interval: Duration::ZERO, ..ok.clone() },
        ReplayOptions { create_stream: Some(0), ..ok.clone() },
        ReplayOptions { stream: String::new(), ..ok.clone() },
    ] {
        assert!(matches!(bad.validate(), Err(ReplayError::Options(_))), "{bad:?}");
    }
}

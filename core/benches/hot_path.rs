//! The per-record hot path of a shard: parse → validate → geohash → window update, on the
//! reference architecture's event JSON, plus its parts on their own; and what remembering trip ids against duplicates costs
//! in memory and in each checkpoint; and the archive's cost on top of the hot path. Run with `cargo bench -p taxi-core --bench hot_path`.

#![expect(missing_docs, reason = "criterion_group! generates an undocumented function")]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use taxi_core::archive::{ArchiveRow, RowId, ShardArchive};
use taxi_core::checkpoint::{Owner, Position, ShardCheckpoint};
use taxi_core::config::EngineConfig;
use taxi_core::event::{Event, GeoPoint};
use taxi_core::generate::{GeneratedRecord, GeneratorConfig, TripGenerator, encode_json_line};
use taxi_core::geo::Geohash;
use taxi_core::input::parse_json_record;
use taxi_core::partition::{ShardRouter, trip_hash_key};
use taxi_core::shard::ShardProcessor;

/// Lines of the reference architecture's trip-event format from the generator, as they sit in a Kinesis record.
fn seed_events(n: u64) -> Vec<Vec<u8>> {
    let config = GeneratorConfig { trips: n, ..GeneratorConfig::default() };
    TripGenerator::new(&config)
        .map(|record| {
            let mut line = Vec::new();
            encode_json_line(config.seed, &record, &mut line);
            line
        })
        .collect()
}

fn hot_path(c: &mut Criterion) {
    let lines = seed_events(20_000);
    let bytes: usize = lines.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(lines.len() as u64));
    eprintln!("{} records, {:.0} bytes each on average", lines.len(), bytes as f64 / lines.len() as f64);

    group.bench_function("parse_validate_geohash_window", |b| {
        let config = Arc::new(EngineConfig::default());
        b.iter(|| {
            let mut shard = ShardProcessor::new(config.clone());
            for (i, line) in lines.iter().enumerate() {
                match parse_json_record(line) {
                    Ok(event) => {
                        shard.process(&event, None);
                    }
                    Err(reason) => shard.process_invalid(reason),
                }
                // Close windows as a running shard does, so state stays realistic.
                if i % 1024 == 0 {
                    black_box(shard.take_closed());
                }
            }
            black_box(shard.take_all())
        });
    });

    // The same, with every trip also archived: the row into its event hour's Parquet file, and
    // every file encoded and closed at the end. The difference to the line above is the
    // archive's share of a worker's CPU per record.
    let sequence_numbers: Vec<String> = (0..lines.len() as u128)
        .map(|i| (49_590_338_271_490_256_608_559_692_538_361_571_095u128 + i).to_string())
        .collect();
    group.bench_function("parse_validate_geohash_window_archive", |b| {
        let config = Arc::new(EngineConfig::default());
        b.iter(|| {
            let mut shard = ShardProcessor::new(config.clone());
            let mut archive = ShardArchive::new("shardId-000000000000");
            for (i, line) in lines.iter().enumerate() {
                match parse_json_record(line) {
                    Ok(event) => {
                        shard.process(&event, None);
                        if let Event::Trip(trip) = event {
                            let row =
                                ArchiveRow { trip, id: RowId::new(sequence_numbers[i].as_str(), 0), arrival: Some(0) };
                            archive.push(row, 0).expect("archived");
                        }
                    }
                    Err(reason) => shard.process_invalid(reason),
                }
                if i % 1024 == 0 {
                    black_box(shard.take_closed());
                }
            }
            archive.close_all().expect("closed");
            let files = archive.take_ready();
            black_box((shard.take_all(), files.iter().map(|f| f.bytes.len()).sum::<usize>()))
        });
    });

    group.bench_function("parse_only", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(parse_json_record(black_box(line)).is_ok());
            }
        });
    });

    let events: Vec<Event> = lines.iter().filter_map(|l| parse_json_record(l).ok()).collect();
    group.bench_function("partition_md5", |b| {
        b.iter(|| {
            for event in &events {
                if let Event::Trip(t) = event {
                    black_box(trip_hash_key(t.trip_id));
                }
            }
        });
    });
    group.bench_function("geohash_6", |b| {
        b.iter(|| {
            for event in &events {
                if let Event::Trip(t) = event {
                    black_box(Geohash::encode(black_box(t.pickup), 6));
                }
            }
        });
    });
    group.finish();

    c.bench_function("geohash_12_single", |b| {
        let p = GeoPoint { lat: 40.758896, lon: -73.985130 };
        b.iter(|| Geohash::encode(black_box(p), 12));
    });
}

/// One shard of eight at the evening peak of a generated day: the open windows and trip ids a
/// running shard holds.
fn busy_shard(config: &Arc<EngineConfig>) -> ShardProcessor {
    let router = ShardRouter::even(8);
    let mut shard = ShardProcessor::new(config.clone());
    for record in TripGenerator::new(&GeneratorConfig::default()).take(260_000) {
        if let GeneratedRecord::Trip(trip) = record
            && router.shard_for_trip(trip.trip_id) == 0
        {
            shard.process(&Event::Trip(trip), None);
            shard.take_closed();
        }
    }
    shard
}

fn duplicate_ids(c: &mut Criterion) {
    let config = Arc::new(EngineConfig::default());
    let shard = busy_shard(&config);
    let owner = Owner::this_process(1);
    let position = Position::Sequence { sequence_number: "4959".repeat(14), sub_sequence: None };
    let checkpoint = ShardCheckpoint::capture("shardId-000000000000", position, &owner, &shard, &config);
    let with_ids = checkpoint.to_bytes().expect("encode").len();
    let without_ids =
        ShardCheckpoint { seen_trips: Vec::new(), ..checkpoint.clone() }.to_bytes().expect("encode").len();
    eprintln!(
        "one shard of 8 at the evening peak: {} trip ids in {} open windows, ~{} KiB of memory; \
         checkpoint {with_ids} bytes, {without_ids} without the ids (+{:.0} %)",
        shard.seen().len(),
        shard.aggregates().hot_spots.len(),
        shard.seen().heap_bytes() / 1024,
        (with_ids as f64 / without_ids as f64 - 1.0) * 100.0,
    );
    let mut group = c.benchmark_group("duplicates");
    group.bench_function("checkpoint_capture_and_encode", |b| {
        b.iter(|| {
            let position = Position::Sequence { sequence_number: "4959".repeat(14), sub_sequence: None };
            let checkpoint = ShardCheckpoint::capture("shardId-000000000000", position, &owner, &shard, &config);
            black_box(checkpoint.to_bytes().expect("encode"))
        });
    });
    group.bench_function("checkpoint_decode_and_restore", |b| {
        let bytes = checkpoint.to_bytes().expect("encode");
        b.iter(|| {
            let decoded = ShardCheckpoint::from_bytes(black_box(&bytes)).expect("decode");
            black_box(decoded.restore(config.clone()).expect("restore"))
        });
    });
    group.finish();
}

criterion_group!(benches, hot_path, duplicate_ids);
criterion_main!(benches);

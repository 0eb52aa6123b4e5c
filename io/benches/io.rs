//! I/O benchmarks against the local emulators (`eval "$(bash .ci/services.sh start)"` first):
//! - checkpoint write latency (p50/p99) and size to S3 (moto) for a worker owning 8 shards with
//!   realistic open windows, written the way `run` writes them (conditional puts, shards in
//!   parallel);
//! - OpenSearch sink throughput (documents/s into osmem-server) with the default batching.
//!
//! Run with `cargo bench -p taxi-io --bench io`. Without the services it says so and exits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use taxi_core::checkpoint::{Owner, Position, ShardCheckpoint};
use taxi_core::config::EngineConfig;
use taxi_core::document::documents_for;
use taxi_core::event::Event;
use taxi_core::generate::{GeneratedRecord, GeneratorConfig, TripGenerator};
use taxi_core::partition::ShardRouter;
use taxi_core::shard::ShardProcessor;
use taxi_io::sink::opensearch::{OpenSearchSettings, OpenSearchSink};
use taxi_io::store::Precondition;
use taxi_io::store::{CheckpointStore, S3Settings, S3Store};

const SHARDS: usize = 8;
const ROUNDS: usize = 100;

/// Eight shards fed with the first hours of a generated day (400 000 trips): each holds the open
/// windows a running shard holds (the last 10-minute window or two, a few hundred cells each).
fn realistic_shards(config: &Arc<EngineConfig>) -> Vec<ShardProcessor> {
    let router = ShardRouter::even(SHARDS as u32);
    let mut shards: Vec<ShardProcessor> = (0..SHARDS).map(|_| ShardProcessor::new(config.clone())).collect();
    let day = GeneratorConfig::default();
    // Trips up to 18:00, the evening peak.
    for record in TripGenerator::new(&day).take(260_000) {
        if let GeneratedRecord::Trip(trip) = record {
            let shard = &mut shards[router.shard_for_trip(trip.trip_id)];
            shard.process(&Event::Trip(trip), None);
            shard.take_closed();
        }
    }
    shards
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn checkpoint_latency(endpoint: &str) {
    let config = Arc::new(EngineConfig::default());
    let shards = realistic_shards(&config);
    let sdk = aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "static",
        )))
        .build();
    let settings = S3Settings { endpoint_url: Some(endpoint.to_owned()), force_path_style: true, region: None };
    let bucket = format!("bench-{:016x}", fastrand::u64(..));
    let store = S3Store::new(&sdk, &settings, &bucket, "ckpt").expect("store");
    store.client().create_bucket().bucket(&bucket).send().await.expect("create bucket");
    let store = Arc::new(CheckpointStore::S3 { store, retain: 3 });
    let owner = Owner::this_process(1);
    let bytes: Vec<Vec<u8>> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let position = Position::Sequence { sequence_number: format!("4959{i:052}"), sub_sequence: None };
            ShardCheckpoint::capture(&format!("shardId-{i:012}"), position, &owner, s, &config)
                .to_bytes()
                .expect("encode")
        })
        .collect();
    let windows: usize = shards.iter().map(|s| s.aggregates().hot_spots.len()).sum();
    let sizes: Vec<usize> = bytes.iter().map(Vec::len).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, body) in bytes.into_iter().enumerate() {
        let store = store.clone();
        tasks.spawn(async move {
            let key = format!("nyc/shards/shardId-{i:012}.json");
            let mut etag = None;
            let mut latencies = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let started = Instant::now();
                let precondition = etag.take().map_or(Precondition::Absent, Precondition::Matches);
                etag = Some(store.put(&key, &body, &precondition).await.expect("put"));
                latencies.push(started.elapsed());
            }
            latencies
        });
    }
    let mut all: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    all.sort();
    println!(
        "checkpoint writes to S3 (moto), {SHARDS} shards in parallel × {ROUNDS}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         checkpoint size {}–{} bytes ({} open windows over all shards)",
        percentile(&all, 0.50).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
        windows,
    );
}

async fn sink_throughput(endpoint: &str) {
    let config = Arc::new(EngineConfig::default());
    let mut docs = Vec::new();
    let router = ShardRouter::even(SHARDS as u32);
    let mut shards: Vec<ShardProcessor> = (0..SHARDS).map(|_| ShardProcessor::new(config.clone())).collect();
    for record in TripGenerator::new(&GeneratorConfig::default()) {
        if let GeneratedRecord::Trip(trip) = record {
            shards[router.shard_for_trip(trip.trip_id)].process(&Event::Trip(trip), None);
        }
    }
    for (i, shard) in shards.iter_mut().enumerate() {
        docs.extend(documents_for("bench", &format!("shardId-{i:012}"), &config, &shard.take_all(), true, 1));
    }
    let settings = OpenSearchSettings {
        url: endpoint.to_owned(),
        index_prefix: format!("bench{:08x}", fastrand::u32(..)),
        ..OpenSearchSettings::default()
    };
    let registry = prometheus::Registry::new();
    let sink = OpenSearchSink::connect(settings, &registry, None).await.expect("connect");
    let count = docs.len();
    let started = Instant::now();
    for chunk in docs.chunks(1000) {
        sink.write(chunk.to_vec()).await.expect("write");
    }
    let report = sink.flush().await.expect("flush");
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "OpenSearch sink (osmem-server), default batching (5000 docs / 5 MiB / 1 s, 2 in flight): {count} documents \
         (a generated day over {SHARDS} shards) in {elapsed:.2} s = {:.0} documents/s; acknowledged {}, rejected {}",
        count as f64 / elapsed,
        report.acknowledged,
        report.rejected
    );
}

fn main() {
    let s3 = std::env::var("TAXI_TEST_S3_ENDPOINT").ok();
    let opensearch = std::env::var("TAXI_TEST_OPENSEARCH_ENDPOINT").ok();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    match &s3 {
        Some(endpoint) => runtime.block_on(checkpoint_latency(endpoint)),
        None => {
            println!("skipped the checkpoint benchmark: start the services with eval \"$(bash .ci/services.sh start)\"")
        }
    }
    match &opensearch {
        Some(endpoint) => runtime.block_on(sink_throughput(endpoint)),
        None => println!("skipped the sink benchmark: start the services with eval \"$(bash .ci/services.sh start)\""),
    }
}

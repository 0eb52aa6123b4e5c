//! Helpers for tests against the Kinesis emulator (kinesis-mock, started by `.ci/services.sh`):
//! a client, fresh streams, resharding, and putting files into a stream.

use std::path::Path;
use std::time::Duration;

use aws_sdk_kinesis::config::{Credentials, Region};
use bytes::Bytes;
use taxi_core::event::Event;
use taxi_core::input::parse_json_record;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, PutEntry, PutOutcome, SdkKinesis, StreamState};

/// The emulator's endpoint, or `None` (with a message) outside CI when it is not running.
pub fn emulator() -> Option<String> {
    crate::services::service_endpoint(crate::services::KINESIS_ENDPOINT)
}

/// A client for the emulator (any credentials are accepted there).
pub fn client(endpoint: &str) -> SdkKinesis {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version_latest()
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .build();
    SdkKinesis::from_client(aws_sdk_kinesis::Client::from_conf(config))
}

/// A fresh, randomly named stream with `shards` shards, active.
pub async fn fresh_stream(api: &SdkKinesis, shards: u32) -> String {
    let name = format!("taxi-test-{:016x}", fastrand::u64(..));
    api.create_stream(&name, shards).await.expect("create stream");
    wait_active(api, &name).await;
    name
}

/// Waits until the stream is ACTIVE again (after a create or a reshard), for up to 10 s.
pub async fn wait_active(api: &SdkKinesis, stream: &str) {
    wait_active_within(api, stream, Duration::from_secs(10)).await;
}

/// Waits until the stream is ACTIVE, looking every 50 ms for up to `within`.
pub async fn wait_active_within(api: &SdkKinesis, stream: &str, within: Duration) {
    let looks = within.as_millis() / 50;
    for _ in 0..looks {
        if matches!(api.stream_state(stream).await.expect("describe"), StreamState::Active { .. }) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {stream} did not become active");
}

/// The hash key in the middle of a shard's range: where a split cuts it in halves.
fn middle_hash_key(shard: &ShardInfo) -> u128 {
    shard.starting_hash_key + (shard.ending_hash_key - shard.starting_hash_key) / 2
}

/// Splits `shard` in the middle of its hash range (SplitShard); the stream is UPDATING afterwards.
pub async fn split_shard(api: &SdkKinesis, stream: &str, shard: &ShardInfo) -> Result<(), String> {
    api.client()
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&shard.shard_id)
        .new_starting_hash_key(middle_hash_key(shard).to_string())
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// Merges two adjacent shards (MergeShards); the stream is UPDATING afterwards.
pub async fn merge_shards(api: &SdkKinesis, stream: &str, shard: &str, adjacent: &str) -> Result<(), String> {
    api.client()
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(shard)
        .adjacent_shard_to_merge(adjacent)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// One entry per non-blank line of a JSON-lines text, keyed by trip id (other lines by line
/// number), as `replay` keys them.
pub fn entries_of_lines(text: &str) -> Vec<PutEntry> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let key = match parse_json_record(line.as_bytes()) {
                Ok(Event::Trip(t)) => t.trip_id.to_string(),
                _ => format!("record-{i}"),
            };
            PutEntry { partition_key: key, explicit_hash_key: None, data: Bytes::from(line.to_owned()) }
        })
        .collect()
}

/// Puts every line of a JSON-lines file (see [`entries_of_lines`]) in batches of 500, retrying
/// failed entries.
pub async fn put_file(api: &SdkKinesis, stream: &str, path: &Path) {
    let text = std::fs::read_to_string(path).expect("read input");
    put_entries(api, stream, entries_of_lines(&text)).await;
}

/// Puts entries in batches of 500, retrying the failed ones (20 tries per batch).
pub async fn put_entries(api: &SdkKinesis, stream: &str, entries: Vec<PutEntry>) {
    for batch in entries.chunks(500) {
        let mut pending = batch.to_vec();
        for _ in 0..20 {
            let outcomes = api.put_records(stream, pending.clone()).await.expect("put records");
            pending = failed_entries(pending, outcomes);
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(pending.is_empty(), "entries kept failing");
    }
}

/// The entries whose outcome is a failure, to put again.
pub fn failed_entries(entries: Vec<PutEntry>, outcomes: Vec<PutOutcome>) -> Vec<PutEntry> {
    entries.into_iter().zip(outcomes).filter(|(_, o)| matches!(o, PutOutcome::Failed { .. })).map(|(e, _)| e).collect()
}

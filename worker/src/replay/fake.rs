//! What the replay's tests run against: the kit's in-memory stream ([`MemoryKinesis`]), failing
//! the calls or entries a [`Fault`] names; and builders of shards, inputs and options.

use std::io::Write;
use std::time::Duration;

use super::ReplayOptions;
use taxi_core::event::{Event, Millis};
use taxi_core::generate::{GeneratorConfig, write_json_lines};
use taxi_core::input::parse_json_record;
use taxi_core::partition::even_ranges;
use taxi_core::time::format_timestamp;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::KinesisError;
use taxi_testkit::memory::PutFault;
pub(super) use taxi_testkit::memory::{MemoryKinesis, shard, user_records};

/// What the stream does to one PutRecords call.
#[derive(Clone, Copy, Debug)]
pub(super) enum Fault {
    /// Store everything.
    None,
    /// Reject entries `from..from + count` with ProvisionedThroughputExceededException.
    Entries { from: usize, count: usize },
    /// Fail the whole call with a retryable error (throttled or transient).
    Call { throttled: bool },
    /// Fail the whole call with a permanent error.
    Permanent,
}

impl From<Fault> for PutFault {
    fn from(fault: Fault) -> PutFault {
        let operation = "PutRecords";
        match fault {
            Fault::None => PutFault::None,
            Fault::Entries { from, count } => PutFault::RejectEntries(from..from + count),
            Fault::Call { throttled: true } => PutFault::Fail(KinesisError::Throttled {
                operation,
                code: "ProvisionedThroughputExceededException".to_owned(),
            }),
            Fault::Call { throttled: false } => {
                PutFault::Fail(KinesisError::Transient { operation, message: "503".to_owned() })
            }
            Fault::Permanent => {
                PutFault::Fail(KinesisError::Permanent { operation, message: "rejected by the test".to_owned() })
            }
        }
    }
}

/// `n` open shards splitting the hash-key space evenly, numbered from `first_index`.
pub(super) fn even_shards(n: u32, first_index: usize) -> Vec<ShardInfo> {
    even_ranges(n).iter().enumerate().map(|(i, r)| shard(first_index + i, r.start, r.end, true)).collect()
}

/// 2016-01-01T00:00:00Z.
pub(super) const T0: Millis = 1_451_606_400_000;

/// A trip line in the reference architecture's format dropped off at `dropoff`, padded with `pad` bytes.
pub(super) fn trip_line(id: u64, dropoff: Millis, pad: usize) -> String {
    let pad = if pad > 0 { format!(",\"pad\":\"{}\"", "x".repeat(pad)) } else { String::new() };
    format!(
        "{{\"type\":\"trip\",\"trip_id\":{id},\"pickup_datetime\":\"{}\",\"dropoff_datetime\":\"{}\",\
         \"pickup_latitude\":40.75,\"pickup_longitude\":-73.99,\"dropoff_latitude\":40.64,\
         \"dropoff_longitude\":-73.78{pad}}}",
        format_timestamp(dropoff - 600_000),
        format_timestamp(dropoff),
    )
}

/// A temporary file holding `content`.
pub(super) fn write_file(content: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(content).expect("write");
    file.flush().expect("flush");
    file
}

/// A temporary file of these lines.
pub(super) fn write_lines(lines: &[String]) -> tempfile::NamedTempFile {
    write_file(lines.join("\n").as_bytes())
}

/// A temporary file of generated JSON lines, and what the generator wrote.
pub(super) fn generated(config: &GeneratorConfig) -> (tempfile::NamedTempFile, taxi_core::generate::GenerateStats) {
    let mut buf = Vec::new();
    let stats = write_json_lines(config, &mut buf).expect("generate");
    (write_file(&buf), stats)
}

/// Options for `input` into `taxi-test`, with fast watermarks and shard refreshes.
pub(super) fn options(input: &tempfile::NamedTempFile, speedup: f64) -> ReplayOptions {
    ReplayOptions {
        watermark_interval: Duration::from_millis(10),
        shard_refresh_interval: Duration::from_millis(30),
        max_in_flight: 4,
        speedup,
        ..ReplayOptions::new(input.path(), "taxi-test")
    }
}

/// Every user record stored, parsed: (trip ids, invalid count, watermark count).
pub(super) fn stored_contents(fake: &MemoryKinesis) -> (Vec<u64>, u64, u64) {
    let st = fake.stream();
    let (mut trips, mut invalid, mut watermarks) = (Vec::new(), 0, 0);
    for record in &st.records {
        for (_, data) in user_records(&record.partition_key, &record.data) {
            match parse_json_record(&data) {
                Ok(Event::Trip(t)) => trips.push(t.trip_id),
                Ok(Event::Watermark(_)) => watermarks += 1,
                Err(_) => invalid += 1,
            }
        }
    }
    trips.sort_unstable();
    (trips, invalid, watermarks)
}

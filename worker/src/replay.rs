//! `taxi-worker replay`: the producer that streams an input file into a Kinesis stream.
//!
//! [`replay`] reads the file with the same readers as `taxi-worker local` ([`ChunkReader`], [`parse_line`]) on a
//! blocking thread, paces the records by event time, batches them into `PutRecords` calls (at most
//! [`MAX_BATCH_ENTRIES`] entries and [`MAX_BATCH_BYTES`] bytes, at most `max_in_flight` calls at once), retries
//! what Kinesis rejects and sends watermark events to every open shard.
//!
//! # Lanes: per-shard order
//!
//! Kinesis orders records per shard only, so the producer does too. Every entry is routed when it is queued to
//! the **lane** of the open shard whose hash-key range holds its hash key (a trip's `trip_id`, an invalid line's
//! record number, a watermark's explicit hash key, an aggregate's shard). A lane is a FIFO with **at most one
//! call in flight**; a batch holds entries of one lane only; different lanes send in parallel, up to
//! `max_in_flight` calls. One call per shard is plenty: a shard takes at most 1000 records/s, a call carries up
//! to 500. Lanes are keyed by shard id: after a reshard the new shards get lanes of their own, and what is still
//! queued for a closed shard is sent in order (Kinesis routes it to the child by key; it may interleave there
//! with the child lane's first entries).
//!
//! # What is sent
//!
//! - **Trips**: every valid trip line of a JSON-lines file is sent with its original bytes (without the newline);
//!   a trip of a TLC CSV file is re-encoded as a seed-format JSON line (`"type":"trip"`, `trip_id` = its row
//!   number, ISO-8601 UTC times, `pickup_latitude`-style coordinates). Partition key = `trip_id` in decimal.
//! - **Invalid lines** are sent too, as they are, with the record number (1-based, as `local` numbers records) as
//!   partition key: the worker then counts them `invalid` exactly as `local` does, so a cluster run over the
//!   stream and a local run over the file report the same totals. (A CSV row that is invalid is sent as its raw
//!   CSV bytes; the worker counts it `invalid` with reason `not_json`, so the total matches but the reason may
//!   differ.) An invalid line that alone exceeds Kinesis' 1 MiB record limit cannot be sent and is counted in
//!   [`ReplaySummary::invalid_skipped`] instead; an oversized trip fails the replay.
//! - **Watermark lines of the input are not forwarded** ([`ReplaySummary::input_watermarks_skipped`]): the
//!   producer makes its own.
//!
//! # Pacing
//!
//! With `speedup` S > 0, a trip with event time t is handed to Kinesis no earlier than
//! `start + (t − t0) / S`, where t0 is the first trip's event time and `start` the instant it was read. Trips
//! older than the pace (disorder) go out at once; invalid lines are not paced. S = 0 sends as fast as possible.
//! A gap in event time costs at most [`Pacer::MAX_WAIT`] of wall-clock time, after which the pace continues from
//! the trip after the gap, so one wild timestamp cannot stall a replay.
//! A lane sends a batch when it is full, after [`LINGER`] at the latest, or at once for watermarks and (after
//! their back-off) retries.
//!
//! # Watermarks
//!
//! Every `watermark_interval`, `{"watermark":"<ISO-8601>","type":"watermark"}` goes to every **open** shard (to
//! the front of its lane), with `ExplicitHashKey` = the
//! shard's starting hash key (partition key `watermark`). Its value is the oldest event time
//! of the trips read but not yet acknowledged by Kinesis (buffered, in flight or waiting for a retry), or, when
//! none is outstanding, the largest event time acknowledged so far; nothing is sent before the first trip, nor
//! once the input is read and every trip acknowledged. After
//! the last record is acknowledged, a final watermark (the largest event time acknowledged) goes to every open
//! shard. The shard list is re-read every `shard_refresh_interval`, so watermarks follow resharding.
//!
//! This is the seed's contract: the watermark covers what the producer has sent. Trips later in the file that
//! are older than it (the input's own disorder) arrive behind it; the engine's `bounded` strategy absorbs that,
//! a `punctuated` consumer counts them late.
//!
//! # Retries
//!
//! Entries a `PutRecords` call rejects (`PutOutcome::Failed`) and whole calls that fail with a retryable error
//! ([`KinesisError::is_retryable`]) are retried with exponential back-off and jitter, up to [`MAX_ATTEMPTS`]
//! attempts per entry; nothing is dropped silently: a permanent error, a per-entry KMS error or an entry still
//! rejected after the last attempt fails the replay. Failed entries go back to the head of their lane, in their
//! order, and the lane sends nothing else until they have been sent again after the back-off (which grows with
//! the lane's calls in a row that had failures), so the order per shard is strict across retries too. (One
//! exception Kinesis imposes: when a call fails an entry in its middle, the later entries of that call that
//! were stored are ahead of it; the displacement stays within that one call. Throttling usually rejects a
//! shard's entries from some point of the call on, which keeps the order.)
//!
//! # Aggregation (`aggregate`)
//!
//! User records are packed into KPL aggregates ([`Aggregator`]), one aggregator per open shard: a record goes
//! to the aggregator of the shard whose hash-key range holds the MD5 of its partition key, and the aggregate is
//! put with its first user record's partition key (no explicit hash key). Kinesis routes the aggregate by that
//! key, which by construction lies in the same shard as every other user record in it, so each user record lands
//! on the shard it would have reached unaggregated. When the open-shard set changes, every aggregator is flushed
//! before records are routed by the new ranges. Watermarks are never aggregated. Records too large to share an
//! aggregate are sent plain.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::{Serialize, Serializer};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

use crate::pace::Pacer;
use taxi_core::event::{Event, Millis, Trip};
use taxi_core::input::{Chunk, ChunkReader, Format, InputError, parse_line};
use taxi_core::partition::{hash_key, trip_hash_key};
use taxi_core::time::format_timestamp;
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, KinesisError, PutEntry, PutOutcome, StreamState};
use taxi_io::kinesis::kpl::{AggregatedRecord, Aggregator, MAX_AGGREGATED_BYTES};
use taxi_io::retry::{BackoffPolicy, Jitter};

/// Most entries one `PutRecords` call may carry.
pub const MAX_BATCH_ENTRIES: usize = 500;
/// Most bytes (partition keys, explicit hash keys and data) one `PutRecords` call may carry: 5 MiB.
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Largest Kinesis record (partition key and data): 1 MiB.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Longest a record waits for its batch to fill before the batch is sent anyway.
pub const LINGER: Duration = Duration::from_millis(25);
/// Attempts per entry (the first send included) before the replay gives up.
pub const MAX_ATTEMPTS: u32 = 30;
/// Partition key of watermark events (they are routed by their explicit hash key).
pub const WATERMARK_PARTITION_KEY: &str = "watermark";

/// The wait before retry number `n` (1 = the first): 20 ms doubling up to 2 s, drawn from the
/// upper half.
const RETRY: BackoffPolicy = BackoffPolicy::new(Duration::from_millis(20), Duration::from_secs(2), Jitter::Equal);
/// Bytes of input per chunk read by the reader thread.
const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks the reader thread may read ahead.
const READ_AHEAD: usize = 4;
/// Entries queued for sending, per open shard, before the producer stops reading (backpressure).
const MAX_PENDING: usize = 2 * MAX_BATCH_ENTRIES;
/// A user record larger than this is sent plain rather than aggregated.
const MAX_AGGREGATED_USER_RECORD: usize = MAX_AGGREGATED_BYTES / 2;
/// How often a stream being created is polled.
const STREAM_POLL: Duration = Duration::from_millis(100);
/// How long a stream being created may take to become active.
const STREAM_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of a control-plane call (DescribeStreamSummary, CreateStream, ListShards) on retryable errors.
const CONTROL_ATTEMPTS: u32 = 5;

/// What to replay, where, and how fast.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayOptions {
    /// JSON-lines or TLC CSV file, plain, gzip or zstd.
    pub input: PathBuf,
    /// The Kinesis stream.
    pub stream: String,
    /// Event time runs this many times faster than wall time (6480: a day in ~13 s); 0 = no pacing.
    pub speedup: f64,
    /// Pack records into KPL aggregates, one aggregator per shard.
    pub aggregate: bool,
    /// Time between watermark events.
    pub watermark_interval: Duration,
    /// Time between re-reads of the shard list.
    pub shard_refresh_interval: Duration,
    /// Most `PutRecords` calls in flight at once.
    pub max_in_flight: usize,
    /// Create the stream with this many shards when it does not exist, then wait until it is active.
    pub create_stream: Option<u32>,
}

impl ReplayOptions {
    /// Options with the defaults: speedup 6480, no aggregation, watermarks every 5 s, shard list re-read every
    /// 10 s, 8 calls in flight, stream not created.
    pub fn new(input: impl Into<PathBuf>, stream: impl Into<String>) -> ReplayOptions {
        ReplayOptions {
            input: input.into(),
            stream: stream.into(),
            speedup: 6480.0,
            aggregate: false,
            watermark_interval: Duration::from_secs(5),
            shard_refresh_interval: Duration::from_secs(10),
            max_in_flight: 8,
            create_stream: None,
        }
    }

    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> Result<(), ReplayError> {
        let bad = |reason: String| Err(ReplayError::Options(reason));
        if self.stream.is_empty() {
            return bad("the stream name is empty".to_owned());
        }
        if !self.speedup.is_finite() || self.speedup < 0.0 {
            return bad(format!("speedup must be a finite number ≥ 0, not {}", self.speedup));
        }
        if self.watermark_interval.is_zero() {
            return bad("the watermark interval must be positive".to_owned());
        }
        if self.shard_refresh_interval.is_zero() {
            return bad("the shard refresh interval must be positive".to_owned());
        }
        if self.max_in_flight == 0 {
            return bad("max in-flight requests must be at least 1".to_owned());
        }
        if self.create_stream == Some(0) {
            return bad("a stream needs at least one shard".to_owned());
        }
        Ok(())
    }
}

/// Live counters of a running replay, for a progress line; every field is updated as the replay goes.
#[derive(Debug)]
pub struct ReplayProgress {
    /// User records (trips, invalid lines, watermarks) handed to `PutRecords` for the first time.
    pub sent: AtomicU64,
    /// User records Kinesis has stored.
    pub acknowledged: AtomicU64,
    /// Entries sent again after a failure.
    pub retried: AtomicU64,
    /// `PutRecords` calls that were throttled (as a whole or for some entries).
    pub throttled: AtomicU64,
    /// Largest event time read so far ([`i64::MIN`] before the first trip).
    pub event_time: AtomicI64,
    /// Value of the last watermark sent ([`i64::MIN`] before the first).
    pub watermark: AtomicI64,
}

impl Default for ReplayProgress {
    fn default() -> Self {
        ReplayProgress {
            sent: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            event_time: AtomicI64::new(i64::MIN),
            watermark: AtomicI64::new(i64::MIN),
        }
    }
}

impl ReplayProgress {
    /// Counters at zero.
    pub fn new() -> ReplayProgress {
        ReplayProgress::default()
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        let time = |a: &AtomicI64| Some(a.load(Ordering::Relaxed)).filter(|&t| t != i64::MIN);
        ProgressSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            event_time: time(&self.event_time),
            watermark: time(&self.watermark),
        }
    }
}

/// A copy of [`ReplayProgress`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// See [`ReplayProgress::sent`].
    pub sent: u64,
    /// See [`ReplayProgress::acknowledged`].
    pub acknowledged: u64,
    /// See [`ReplayProgress::retried`].
    pub retried: u64,
    /// See [`ReplayProgress::throttled`].
    pub throttled: u64,
    /// Largest event time read so far.
    pub event_time: Option<Millis>,
    /// Value of the last watermark sent.
    pub watermark: Option<Millis>,
}

/// What a finished replay did. Every user record counted here was acknowledged by Kinesis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplaySummary {
    /// User records stored: trips + invalid lines + watermarks.
    pub records_sent: u64,
    /// Trips stored.
    pub trips: u64,
    /// Invalid input lines stored (sent as they are, for the worker to count).
    pub invalid: u64,
    /// Invalid lines too large for a Kinesis record, not sent.
    pub invalid_skipped: u64,
    /// Watermark lines of the input, not forwarded.
    pub input_watermarks_skipped: u64,
    /// Watermark events stored (one per open shard per tick, plus the final ones).
    pub watermarks_sent: u64,
    /// Entries sent again after a failure.
    pub retried_entries: u64,
    /// `PutRecords` calls throttled as a whole or for some entries.
    pub throttled_calls: u64,
    /// Kinesis records that were KPL aggregates (0 without aggregation).
    pub aggregated_records: u64,
    /// Smallest trip event time.
    #[serde(serialize_with = "serialize_opt_time")]
    pub first_event_time: Option<Millis>,
    /// Largest trip event time.
    #[serde(serialize_with = "serialize_opt_time")]
    pub last_event_time: Option<Millis>,
    /// Wall time of the whole replay (stream creation included), serialized as seconds.
    #[serde(rename = "elapsed_s", serialize_with = "serialize_secs")]
    pub elapsed: Duration,
}

fn serialize_opt_time<S: Serializer>(t: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_timestamp(*t)),
        None => s.serialize_none(),
    }
}

fn serialize_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A bad option.
    #[error("invalid replay options: {0}")]
    Options(String),
    /// The input could not be read.
    #[error("failed to read the replay input: {0}")]
    Input(#[from] InputError),
    /// The reader thread ended without saying why.
    #[error("failed to read the replay input: the reader thread stopped unexpectedly")]
    ReaderGone,
    /// DescribeStreamSummary failed.
    #[error("failed to check stream {stream}: {source}")]
    StreamState {
        /// The stream.
        stream: String,
        /// The cause.
        #[source]
        source: KinesisError,
    },
    /// The stream does not exist and was not to be created.
    #[error("failed to find stream {stream}: it does not exist (create it, or pass --create-stream N)")]
    StreamMissing {
        /// The stream.
        stream: String,
    },
    /// CreateStream failed.
    #[error("failed to create stream {stream} with {shards} shards: {source}")]
    CreateStream {
        /// The stream.
        stream: String,
        /// Shards asked for.
        shards: u32,
        /// The cause.
        #[source]
        source: KinesisError,
    },
    /// The stream did not become active in time.
    #[error("failed to wait for stream {stream} to become active: still not active after {waited:?}")]
    NotActive {
        /// The stream.
        stream: String,
        /// How long we waited.
        waited: Duration,
    },
    /// ListShards failed.
    #[error("failed to list the shards of stream {stream}: {source}")]
    ListShards {
        /// The stream.
        stream: String,
        /// The cause.
        #[source]
        source: KinesisError,
    },
    /// The stream has no open shard to write to.
    #[error("failed to find an open shard in stream {stream}")]
    NoOpenShard {
        /// The stream.
        stream: String,
    },
    /// A trip too large for a Kinesis record.
    #[error("failed to send trip {trip_id}: {bytes} bytes exceed the 1 MiB Kinesis record limit")]
    RecordTooLarge {
        /// The trip.
        trip_id: u64,
        /// Its partition key and data bytes.
        bytes: usize,
    },
    /// PutRecords failed with a non-retryable error.
    #[error("failed to put records into stream {stream}: {source}")]
    Put {
        /// The stream.
        stream: String,
        /// The cause.
        #[source]
        source: KinesisError,
    },
    /// An entry was rejected with an error retrying cannot fix, or too many times.
    #[error("failed to put a record into stream {stream}: rejected with {code} after {attempts} attempt(s)")]
    EntryRejected {
        /// The stream.
        stream: String,
        /// The last error code (or error).
        code: String,
        /// Attempts made.
        attempts: u32,
    },
    /// PutRecords answered with a different number of results than entries.
    #[error("failed to put records into stream {stream}: {results} results for {entries} entries")]
    ResultMismatch {
        /// The stream.
        stream: String,
        /// Entries sent.
        entries: usize,
        /// Results received.
        results: usize,
    },
    /// A PutRecords task panicked or was cancelled.
    #[error("failed to put records: the request task failed: {0}")]
    Task(#[source] JoinError),
}

/// Replays `options.input` into `options.stream` (see the [module docs](self)), updating `progress` as it goes.
///
/// # Errors
/// A [`ReplayError`] for bad options, an unreadable input, a missing stream, a permanent Kinesis error or an
/// entry rejected [`MAX_ATTEMPTS`] times. Invalid input records are never errors.
pub async fn replay<K: KinesisApi>(
    kinesis: Arc<K>,
    options: &ReplayOptions,
    progress: &ReplayProgress,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    options.validate()?;
    prepare_stream(kinesis.as_ref(), options).await?;
    let shards = list_open_shards(kinesis.as_ref(), &options.stream).await?;
    if shards.is_empty() {
        return Err(ReplayError::NoOpenShard { stream: options.stream.clone() });
    }
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let path = options.input.clone();
    let reader = tokio::task::spawn_blocking(move || read_input(&path, &tx));
    let mut producer = Producer::new(kinesis, options, progress, shards);
    let result = producer.run(rx).await;
    // On success the reader has sent its end marker; on failure it stops at its next send.
    drop(reader);
    let mut summary = result?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Checks the stream exists, creating it (and waiting until it is active) when asked to.
async fn prepare_stream<K: KinesisApi>(kinesis: &K, options: &ReplayOptions) -> Result<(), ReplayError> {
    let stream = options.stream.as_str();
    let state_error = |source| ReplayError::StreamState { stream: stream.to_owned(), source };
    let state = with_retries(|| kinesis.stream_state(stream)).await.map_err(state_error)?;
    match (state, options.create_stream) {
        (StreamState::Missing, None) => Err(ReplayError::StreamMissing { stream: stream.to_owned() }),
        (StreamState::Missing, Some(shards)) => {
            if let Err(source) = with_retries(|| kinesis.create_stream(stream, shards)).await {
                // Someone else may have created it meanwhile: only fail if it still does not exist.
                let now = with_retries(|| kinesis.stream_state(stream)).await.map_err(state_error)?;
                if now == StreamState::Missing {
                    return Err(ReplayError::CreateStream { stream: stream.to_owned(), shards, source });
                }
            }
            wait_active(kinesis, stream).await
        }
        (StreamState::Busy, Some(_)) => wait_active(kinesis, stream).await,
        // An UPDATING stream (resharding) accepts records: no need to wait.
        _ => Ok(()),
    }
}

/// Polls the stream until it is active, for at most [`STREAM_ACTIVE_TIMEOUT`].
async fn wait_active<K: KinesisApi>(kinesis: &K, stream: &str) -> Result<(), ReplayError> {
    let start = Instant::now();
    loop {
        let state = with_retries(|| kinesis.stream_state(stream))
            .await
            .map_err(|source| ReplayError::StreamState { stream: stream.to_owned(), source })?;
        if matches!(state, StreamState::Active { .. }) {
            return Ok(());
        }
        if start.elapsed() >= STREAM_ACTIVE_TIMEOUT {
            return Err(ReplayError::NotActive { stream: stream.to_owned(), waited: start.elapsed() });
        }
        tokio::time::sleep(STREAM_POLL).await;
    }
}

/// The open shards of the stream, sorted by starting hash key.
async fn list_open_shards<K: KinesisApi>(kinesis: &K, stream: &str) -> Result<Vec<ShardInfo>, ReplayError> {
    let mut shards = with_retries(|| kinesis.list_shards(stream))
        .await
        .map_err(|source| ReplayError::ListShards { stream: stream.to_owned(), source })?;
    shards.retain(ShardInfo::is_open);
    shards.sort_by_key(|s| s.starting_hash_key);
    Ok(shards)
}

/// Runs a control-plane call, retrying retryable errors a few times with back-off.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, KinesisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KinesisError>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_retryable() && attempt < CONTROL_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "retrying a Kinesis control-plane call");
                tokio::time::sleep(RETRY.delay(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Reading.

/// One record of the input, ready to send.
#[derive(Debug)]
enum InputRecord {
    /// A valid trip.
    Trip {
        /// Its id (the partition key in decimal).
        trip_id: u64,
        /// Its event time.
        event_time: Millis,
        /// The bytes to send.
        data: Bytes,
    },
    /// An invalid line, sent as it is.
    Invalid {
        /// Its record number (the partition key in decimal).
        record_no: u64,
        /// The line.
        data: Bytes,
    },
}

/// What the reader thread sends.
enum ReaderMsg {
    /// The records of one chunk, and how many watermark lines it held.
    Records(Vec<InputRecord>, u64),
    /// The input could not be read.
    Failed(InputError),
    /// The end of the input.
    End,
}

/// The reader thread: reads and parses `path`, sending a message per chunk.
fn read_input(path: &Path, tx: &mpsc::Sender<ReaderMsg>) {
    let mut reader = match ChunkReader::open(path) {
        Ok(reader) => reader,
        Err(e) => {
            let _ = tx.blocking_send(ReaderMsg::Failed(e));
            return;
        }
    };
    let format = *reader.format();
    loop {
        let msg = match reader.next_chunk(CHUNK_BYTES) {
            Ok(Some(chunk)) => convert_chunk(&format, &chunk),
            Ok(None) => ReaderMsg::End,
            Err(e) => ReaderMsg::Failed(e),
        };
        let last = !matches!(msg, ReaderMsg::Records(..));
        // A send fails only when the replay has stopped: then there is nobody to read for.
        if tx.blocking_send(msg).is_err() || last {
            return;
        }
    }
}

/// Parses a chunk into the records to send.
fn convert_chunk(format: &Format, chunk: &Chunk) -> ReaderMsg {
    let mut records = Vec::with_capacity(usize::try_from(chunk.records).unwrap_or(0));
    let mut watermarks = 0;
    for (record_no, line) in chunk.lines() {
        match parse_line(format, line, record_no) {
            Ok(Event::Trip(trip)) => {
                let data = match format {
                    Format::JsonLines => Bytes::copy_from_slice(line),
                    Format::Csv(_) => Bytes::from(trip_json(&trip)),
                };
                records.push(InputRecord::Trip { trip_id: trip.trip_id, event_time: trip.event_time(), data });
            }
            Ok(Event::Watermark(_)) => watermarks += 1,
            Err(_) => records.push(InputRecord::Invalid { record_no, data: Bytes::copy_from_slice(line) }),
        }
    }
    ReaderMsg::Records(records, watermarks)
}

/// A trip as a seed-format JSON line (without newline).
pub fn trip_json(trip: &Trip) -> String {
    format!(
        "{{\"type\":\"trip\",\"trip_id\":{},\"pickup_datetime\":\"{}\",\"dropoff_datetime\":\"{}\",\
         \"pickup_latitude\":{},\"pickup_longitude\":{},\"dropoff_latitude\":{},\"dropoff_longitude\":{}}}",
        trip.trip_id,
        format_timestamp(trip.pickup_time),
        format_timestamp(trip.dropoff_time),
        trip.pickup.lat,
        trip.pickup.lon,
        trip.dropoff.lat,
        trip.dropoff.lon,
    )
}

/// A watermark event's data.
pub fn watermark_json(at: Millis) -> String {
    format!("{{\"watermark\":\"{}\",\"type\":\"watermark\"}}", format_timestamp(at))
}

// ------------------------------------------------------------------------------------------------
// Sending.

/// What an entry carries, for acknowledgement accounting.
#[derive(Debug)]
enum Payload {
    /// A trip with this event time.
    Trip(Millis),
    /// An invalid line.
    Invalid,
    /// A watermark event.
    Watermark,
    /// A KPL aggregate.
    Aggregate {
        /// Event times of its trips.
        event_times: Vec<Millis>,
        /// Its invalid lines.
        invalid: u64,
    },
}

impl Payload {
    /// User records it carries.
    fn user_records(&self) -> u64 {
        match self {
            Payload::Trip(_) | Payload::Invalid | Payload::Watermark => 1,
            Payload::Aggregate { event_times, invalid } => event_times.len() as u64 + invalid,
        }
    }
}

/// One `PutRecords` entry and its bookkeeping.
#[derive(Debug)]
struct Item {
    entry: PutEntry,
    payload: Payload,
    /// Sends so far.
    attempts: u32,
}

impl Item {
    /// Bytes it adds to a batch.
    fn bytes(&self) -> usize {
        entry_bytes(&self.entry)
    }
}

/// Bytes an entry counts against the batch limit (keys and data).
fn entry_bytes(entry: &PutEntry) -> usize {
    entry.partition_key.len() + entry.explicit_hash_key.as_ref().map_or(0, String::len) + entry.data.len()
}

/// The aggregate under construction for one shard.
#[derive(Debug, Default)]
struct ShardAggregator {
    aggregator: Aggregator,
    /// Event times of its trips.
    event_times: Vec<Millis>,
    /// Its invalid lines.
    invalid: u64,
    /// When its first user record was added.
    since: Option<Instant>,
}

/// The result of one `PutRecords` task: the lane (shard id), the entries sent and the answer.
type CallResult = (String, Vec<Item>, Result<Vec<PutOutcome>, KinesisError>);

/// The entries bound for one shard. A lane sends strictly in order, one `PutRecords` call at a time; failed
/// entries go back to its head and block it until their back-off has passed.
#[derive(Debug, Default)]
struct Lane {
    /// Entries to send, in order: the urgent ones (retries, then watermarks) first.
    queue: VecDeque<Item>,
    /// Their bytes, as counted against the batch limit.
    bytes: usize,
    /// When `queue` last went from empty to non-empty.
    since: Option<Instant>,
    /// Entries at the head of `queue` to send without waiting for a full batch.
    urgent: usize,
    /// Whether a call of this lane is in flight.
    in_flight: bool,
    /// The failed entries at the head of `queue` wait for their back-off until then: nothing is sent before.
    retry_at: Option<Instant>,
    /// Calls in a row that had entries to retry: the next back-off grows with it.
    failed_calls: u32,
}

impl Lane {
    /// Appends a fresh entry.
    fn push_back(&mut self, item: Item, now: Instant) {
        self.bytes += item.bytes();
        self.queue.push_back(item);
        self.since.get_or_insert(now);
    }

    /// Queues a watermark ahead of the ordinary entries (behind the retries and watermarks already waiting).
    fn push_urgent(&mut self, item: Item, now: Instant) {
        self.bytes += item.bytes();
        self.queue.insert(self.urgent, item);
        self.urgent += 1;
        self.since.get_or_insert(now);
    }

    /// Puts the failed entries of the last call back at the head, in their order, to be sent after a back-off
    /// that grows with the calls in a row that failed.
    fn requeue(&mut self, items: Vec<Item>, now: Instant) {
        self.failed_calls += 1;
        let retry_at = now + RETRY.delay(self.failed_calls);
        for item in items.into_iter().rev() {
            self.bytes += item.bytes();
            self.queue.push_front(item);
            self.urgent += 1;
        }
        self.since.get_or_insert(now);
        self.retry_at = Some(retry_at);
    }

    /// Nothing queued or in flight.
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.in_flight
    }

    /// Whether the queue holds a full batch (or so much that the next record might not fit).
    fn is_full(&self) -> bool {
        self.queue.len() >= MAX_BATCH_ENTRIES || self.bytes > MAX_BATCH_BYTES - MAX_RECORD_BYTES
    }

    /// Whether the lane may, and should, start a call now.
    fn is_ready(&self, now: Instant, input_finished: bool) -> bool {
        !self.in_flight
            && !self.queue.is_empty()
            && self.retry_at.is_none_or(|at| at <= now)
            && (self.urgent > 0
                || input_finished
                || self.is_full()
                || self.since.is_some_and(|since| since + LINGER <= now))
    }

    /// When the lane becomes ready by itself (back-off over or linger passed), unless it has a call in flight.
    fn wake_at(&self) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        self.retry_at.or_else(|| self.since.map(|since| since + LINGER))
    }

    /// Takes the next batch (≤ [`MAX_BATCH_ENTRIES`] entries, ≤ [`MAX_BATCH_BYTES`]) and marks the lane in flight.
    fn take_batch(&mut self) -> Vec<Item> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(item) = self.queue.front() {
            let size = item.bytes();
            if batch.len() == MAX_BATCH_ENTRIES || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES) {
                break;
            }
            bytes += size;
            if let Some(item) = self.queue.pop_front() {
                batch.push(item);
            }
        }
        self.bytes -= bytes;
        self.urgent = self.urgent.saturating_sub(batch.len());
        if self.queue.is_empty() {
            self.since = None;
        }
        self.retry_at = None;
        self.in_flight = true;
        batch
    }
}

/// The producer's state.
struct Producer<'a, K: KinesisApi> {
    kinesis: Arc<K>,
    stream: Arc<str>,
    options: &'a ReplayOptions,
    progress: &'a ReplayProgress,
    /// Open shards, sorted by starting hash key.
    shards: Vec<ShardInfo>,
    /// One per open shard when aggregating, else empty.
    aggregators: Vec<ShardAggregator>,
    /// The lanes by shard id: one per shard that has been routed to and still has work (or is open).
    lanes: BTreeMap<String, Lane>,
    inflight: JoinSet<CallResult>,
    /// Multiset of the event times of trips read but not yet acknowledged.
    unacked: BTreeMap<Millis, u32>,
    /// Largest event time acknowledged.
    max_acked: Option<Millis>,
    /// Paces trips by event time (`None` when sending as fast as possible).
    pacer: Option<Pacer>,
    summary: ReplaySummary,
}

/// The reader's side of the producer.
struct Input {
    rx: mpsc::Receiver<ReaderMsg>,
    current: VecDeque<InputRecord>,
    done: bool,
}

impl<'a, K: KinesisApi> Producer<'a, K> {
    fn new(
        kinesis: Arc<K>,
        options: &'a ReplayOptions,
        progress: &'a ReplayProgress,
        shards: Vec<ShardInfo>,
    ) -> Producer<'a, K> {
        let mut producer = Producer {
            kinesis,
            stream: Arc::from(options.stream.as_str()),
            options,
            progress,
            shards: Vec::new(),
            aggregators: Vec::new(),
            lanes: BTreeMap::new(),
            inflight: JoinSet::new(),
            unacked: BTreeMap::new(),
            max_acked: None,
            pacer: (options.speedup > 0.0).then(|| Pacer::new(options.speedup)),
            summary: ReplaySummary::default(),
        };
        producer.set_shards(shards);
        producer
    }

    /// Replaces the open-shard list (the aggregators must be empty) and drops the idle lanes of closed shards.
    /// Entries still queued for a closed shard are sent in order: Kinesis routes them to its children by key.
    fn set_shards(&mut self, shards: Vec<ShardInfo>) {
        if self.options.aggregate {
            self.aggregators = shards.iter().map(|_| ShardAggregator::default()).collect();
        }
        self.lanes.retain(|id, lane| !lane.is_idle() || shards.iter().any(|s| s.shard_id == *id));
        self.shards = shards;
    }

    /// Index in `shards` of the open shard whose hash-key range holds `hash`.
    fn shard_index(&self, hash: u128) -> usize {
        self.shards.partition_point(|s| s.starting_hash_key <= hash).saturating_sub(1)
    }

    /// The lane of open shard `index`.
    fn lane(&mut self, index: usize) -> &mut Lane {
        self.lanes.entry(self.shards[index].shard_id.clone()).or_default()
    }

    /// The event loop: read, pace, batch, send, retry, watermark, until everything is acknowledged.
    async fn run(&mut self, rx: mpsc::Receiver<ReaderMsg>) -> Result<ReplaySummary, ReplayError> {
        let mut input = Input { rx, current: VecDeque::new(), done: false };
        let start = Instant::now();
        let mut next_watermark = start + self.options.watermark_interval;
        let mut next_refresh = start + self.options.shard_refresh_interval;
        let mut final_watermark_queued = false;
        loop {
            let now = Instant::now();
            if now >= next_refresh {
                self.refresh_shards(now).await?;
                next_refresh = now + self.options.shard_refresh_interval;
            }
            let now = Instant::now();
            if now >= next_watermark {
                // Once every trip is acknowledged only the final watermark is left to send: more periodic ones
                // (retried, maybe) could keep the producer from ever becoming idle.
                let all_acknowledged = input.done && input.current.is_empty() && self.unacked.is_empty();
                if let Some(value) = self.watermark_value().filter(|_| !all_acknowledged) {
                    self.queue_watermarks(value, now);
                }
                next_watermark = now + self.options.watermark_interval;
            }
            let next_record_due = self.intake(&mut input, now)?;
            let input_finished = input.done && input.current.is_empty();
            self.flush_aggregators(now, input_finished);
            self.dispatch(now, input_finished);

            if input_finished && self.is_idle() {
                if final_watermark_queued || self.max_acked.is_none() {
                    break;
                }
                // Everything is acknowledged: close the event time on every shard open now.
                self.refresh_shards(now).await?;
                if let Some(value) = self.watermark_value() {
                    self.queue_watermarks(value, now);
                }
                final_watermark_queued = true;
                continue;
            }

            let mut deadline = next_watermark.min(next_refresh);
            if let Some(due) = next_record_due {
                deadline = deadline.min(due);
            }
            if self.inflight.len() < self.options.max_in_flight
                && let Some(wake) = self.lanes.values().filter_map(Lane::wake_at).min()
            {
                deadline = deadline.min(wake);
            }
            if let Some(since) = self.aggregators.iter().filter_map(|a| a.since).min() {
                deadline = deadline.min(since + LINGER);
            }
            let wants_input = !input.done && input.current.is_empty();
            tokio::select! {
                biased;
                Some(joined) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    self.complete(joined.map_err(ReplayError::Task)?)?;
                }
                msg = input.rx.recv(), if wants_input => match msg {
                    Some(ReaderMsg::Records(records, watermarks)) => {
                        self.summary.input_watermarks_skipped += watermarks;
                        input.current.extend(records);
                    }
                    Some(ReaderMsg::End) => input.done = true,
                    Some(ReaderMsg::Failed(e)) => return Err(ReplayError::Input(e)),
                    None => return Err(ReplayError::ReaderGone),
                },
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        Ok(std::mem::take(&mut self.summary))
    }

    /// Nothing buffered, waiting or in flight.
    fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.lanes.values().all(Lane::is_idle)
            && self.aggregators.iter().all(|a| a.aggregator.is_empty())
    }

    /// The watermark to send now: the oldest unacknowledged event time, else the largest acknowledged one.
    fn watermark_value(&self) -> Option<Millis> {
        self.unacked.first_key_value().map(|(&t, _)| t).or(self.max_acked)
    }

    /// Queues a watermark event for every open shard, ahead of the records waiting in its lane.
    fn queue_watermarks(&mut self, value: Millis, now: Instant) {
        let data = Bytes::from(watermark_json(value));
        for index in 0..self.shards.len() {
            let entry = PutEntry {
                partition_key: WATERMARK_PARTITION_KEY.to_owned(),
                explicit_hash_key: Some(self.shards[index].starting_hash_key.to_string()),
                data: data.clone(),
            };
            self.lane(index).push_urgent(Item { entry, payload: Payload::Watermark, attempts: 0 }, now);
        }
        self.progress.watermark.store(value, Ordering::Relaxed);
    }

    /// Re-reads the shard list; when the open shards changed, flushes the aggregators and re-routes.
    async fn refresh_shards(&mut self, now: Instant) -> Result<(), ReplayError> {
        let shards = match list_open_shards(self.kinesis.as_ref(), &self.stream).await {
            Ok(shards) => shards,
            Err(ReplayError::ListShards { source, .. }) if source.is_retryable() => {
                tracing::warn!(error = %source, "failed to refresh the shard list; keeping the previous one");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if shards.is_empty() || shards == self.shards {
            return Ok(());
        }
        tracing::info!(open_shards = shards.len(), "the open shards of the stream changed");
        self.flush_aggregators(now, true);
        self.set_shards(shards);
        Ok(())
    }

    /// Entries queued in the lanes.
    fn queued(&self) -> usize {
        self.lanes.values().map(|lane| lane.queue.len()).sum()
    }

    /// Accepts the input records that are due, while there is room; returns when the next one is due, if it is
    /// waiting for its time.
    fn intake(&mut self, input: &mut Input, now: Instant) -> Result<Option<Instant>, ReplayError> {
        let room = MAX_PENDING * self.shards.len();
        while self.queued() < room {
            let Some(record) = input.current.front() else {
                return Ok(None);
            };
            if let InputRecord::Trip { event_time, .. } = record {
                let due = self.due(*event_time, now);
                if due > now {
                    return Ok(Some(due));
                }
            }
            if let Some(record) = input.current.pop_front() {
                self.accept(record, now)?;
            }
        }
        Ok(None)
    }

    /// When a trip with this event time may be sent.
    fn due(&mut self, event_time: Millis, now: Instant) -> Instant {
        self.pacer.as_mut().map_or(now, |pacer| pacer.due(event_time, now))
    }

    /// Takes one input record into the aggregators or the lanes.
    fn accept(&mut self, record: InputRecord, now: Instant) -> Result<(), ReplayError> {
        match record {
            InputRecord::Trip { trip_id, event_time, data } => {
                let partition_key = trip_id.to_string();
                let bytes = partition_key.len() + data.len();
                if bytes > MAX_RECORD_BYTES {
                    return Err(ReplayError::RecordTooLarge { trip_id, bytes });
                }
                *self.unacked.entry(event_time).or_insert(0) += 1;
                self.progress.event_time.fetch_max(event_time, Ordering::Relaxed);
                let hash = trip_hash_key(trip_id);
                self.route(partition_key, hash, data, Payload::Trip(event_time), now);
            }
            InputRecord::Invalid { record_no, data } => {
                let partition_key = record_no.to_string();
                if partition_key.len() + data.len() > MAX_RECORD_BYTES {
                    tracing::warn!(record_no, bytes = data.len(), "invalid record too large for Kinesis; not sent");
                    self.summary.invalid_skipped += 1;
                    return Ok(());
                }
                let hash = hash_key(partition_key.as_bytes());
                self.route(partition_key, hash, data, Payload::Invalid, now);
            }
        }
        Ok(())
    }

    /// Sends a user record plain (into the lane of its shard) or into its shard's aggregator.
    fn route(&mut self, partition_key: String, hash: u128, data: Bytes, payload: Payload, now: Instant) {
        let index = self.shard_index(hash);
        let shard = match self.aggregators.get_mut(index) {
            Some(shard) if partition_key.len() + data.len() <= MAX_AGGREGATED_USER_RECORD => shard,
            _ => {
                let entry = PutEntry { partition_key, explicit_hash_key: None, data };
                self.lane(index).push_back(Item { entry, payload, attempts: 0 }, now);
                return;
            }
        };
        let full = shard.aggregator.push(&partition_key, None, &data);
        let full = full.map(|record| {
            let event_times = std::mem::take(&mut shard.event_times);
            let invalid = std::mem::take(&mut shard.invalid);
            shard.since = None;
            (record, event_times, invalid)
        });
        match payload {
            Payload::Trip(t) => shard.event_times.push(t),
            _ => shard.invalid += 1,
        }
        shard.since.get_or_insert(now);
        if let Some((record, event_times, invalid)) = full {
            self.enqueue_aggregate(index, record, event_times, invalid, now);
        }
    }

    /// Flushes the aggregators that have waited [`LINGER`] (or all of them).
    fn flush_aggregators(&mut self, now: Instant, all: bool) {
        let mut flushed = Vec::new();
        for (index, shard) in self.aggregators.iter_mut().enumerate() {
            if !all && shard.since.is_none_or(|since| since + LINGER > now) {
                continue;
            }
            shard.since = None;
            if let Some(record) = shard.aggregator.flush() {
                let event_times = std::mem::take(&mut shard.event_times);
                flushed.push((index, record, event_times, std::mem::take(&mut shard.invalid)));
            }
        }
        for (index, record, event_times, invalid) in flushed {
            self.enqueue_aggregate(index, record, event_times, invalid, now);
        }
    }

    /// Queues the aggregate of open shard `index` in that shard's lane.
    fn enqueue_aggregate(
        &mut self,
        index: usize,
        record: AggregatedRecord,
        event_times: Vec<Millis>,
        invalid: u64,
        now: Instant,
    ) {
        let entry = PutEntry {
            partition_key: record.partition_key,
            explicit_hash_key: record.explicit_hash_key,
            data: Bytes::from(record.data),
        };
        let item = Item { entry, payload: Payload::Aggregate { event_times, invalid }, attempts: 0 };
        self.lane(index).push_back(item, now);
    }

    /// Starts a call for every lane that is ready, longest-waiting first, while a call slot is free.
    fn dispatch(&mut self, now: Instant, input_finished: bool) {
        let free = self.options.max_in_flight.saturating_sub(self.inflight.len());
        if free == 0 {
            return;
        }
        let mut ready: Vec<(Option<Instant>, String)> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.is_ready(now, input_finished))
            .map(|(id, lane)| (lane.since, id.clone()))
            .collect();
        ready.sort_unstable();
        for (_, id) in ready.into_iter().take(free) {
            if let Some(lane) = self.lanes.get_mut(&id) {
                let batch = lane.take_batch();
                self.send(id, batch);
            }
        }
    }

    /// Starts one `PutRecords` call for `lane`.
    fn send(&mut self, lane: String, mut batch: Vec<Item>) {
        let mut first_sends = 0;
        for item in &mut batch {
            if item.attempts == 0 {
                first_sends += item.payload.user_records();
            }
            item.attempts += 1;
        }
        self.progress.sent.fetch_add(first_sends, Ordering::Relaxed);
        let entries: Vec<PutEntry> = batch.iter().map(|item| item.entry.clone()).collect();
        let kinesis = Arc::clone(&self.kinesis);
        let stream = Arc::clone(&self.stream);
        self.inflight.spawn(async move {
            let result = kinesis.put_records(&stream, entries).await;
            (lane, batch, result)
        });
    }

    /// Handles the result of a `PutRecords` call.
    fn complete(&mut self, (lane, items, result): CallResult) -> Result<(), ReplayError> {
        if let Some(lane) = self.lanes.get_mut(&lane) {
            lane.in_flight = false;
            if matches!(&result, Ok(outcomes) if outcomes.iter().all(|o| matches!(o, PutOutcome::Stored { .. }))) {
                lane.failed_calls = 0;
            }
        }
        match result {
            Ok(outcomes) if outcomes.len() == items.len() => {
                let mut failed = Vec::new();
                let mut throttled = false;
                let mut last_code = String::new();
                for (item, outcome) in items.into_iter().zip(outcomes) {
                    match outcome {
                        PutOutcome::Stored { .. } => self.acknowledge(item),
                        PutOutcome::Failed { code } => {
                            if is_permanent_entry_error(&code) {
                                return Err(self.rejected(code, item.attempts));
                            }
                            throttled |= code == "ProvisionedThroughputExceededException";
                            last_code = code;
                            failed.push(item);
                        }
                    }
                }
                if throttled {
                    self.count_throttled();
                }
                self.schedule_retry(lane, failed, &last_code)
            }
            Ok(outcomes) => Err(ReplayError::ResultMismatch {
                stream: self.stream.to_string(),
                entries: items.len(),
                results: outcomes.len(),
            }),
            Err(e) if e.is_retryable() => {
                if matches!(e, KinesisError::Throttled { .. }) {
                    self.count_throttled();
                }
                tracing::debug!(error = %e, entries = items.len(), "PutRecords failed; retrying");
                self.schedule_retry(lane, items, &e.to_string())
            }
            Err(source) => Err(ReplayError::Put { stream: self.stream.to_string(), source }),
        }
    }

    fn count_throttled(&mut self) {
        self.summary.throttled_calls += 1;
        self.progress.throttled.fetch_add(1, Ordering::Relaxed);
    }

    fn rejected(&self, code: String, attempts: u32) -> ReplayError {
        ReplayError::EntryRejected { stream: self.stream.to_string(), code, attempts }
    }

    /// Puts failed entries back at the head of their lane, which sends nothing until their back-off has passed,
    /// or gives up on an entry out of attempts.
    fn schedule_retry(&mut self, lane: String, items: Vec<Item>, reason: &str) -> Result<(), ReplayError> {
        let Some(attempts) = items.iter().map(|item| item.attempts).max() else {
            return Ok(());
        };
        if attempts >= MAX_ATTEMPTS {
            return Err(self.rejected(reason.to_owned(), attempts));
        }
        let count = items.len() as u64;
        self.summary.retried_entries += count;
        self.progress.retried.fetch_add(count, Ordering::Relaxed);
        self.lanes.entry(lane).or_default().requeue(items, Instant::now());
        Ok(())
    }

    /// Accounts for an entry Kinesis stored.
    fn acknowledge(&mut self, item: Item) {
        let records = item.payload.user_records();
        self.summary.records_sent += records;
        self.progress.acknowledged.fetch_add(records, Ordering::Relaxed);
        match item.payload {
            Payload::Trip(t) => self.acknowledge_trip(t),
            Payload::Invalid => self.summary.invalid += 1,
            Payload::Watermark => self.summary.watermarks_sent += 1,
            Payload::Aggregate { event_times, invalid } => {
                self.summary.aggregated_records += 1;
                self.summary.invalid += invalid;
                for t in event_times {
                    self.acknowledge_trip(t);
                }
            }
        }
    }

    fn acknowledge_trip(&mut self, t: Millis) {
        self.summary.trips += 1;
        if let Some(count) = self.unacked.get_mut(&t) {
            *count -= 1;
            if *count == 0 {
                self.unacked.remove(&t);
            }
        }
        self.max_acked = Some(self.max_acked.map_or(t, |m| m.max(t)));
        self.summary.first_event_time = Some(self.summary.first_event_time.map_or(t, |m| m.min(t)));
        self.summary.last_event_time = Some(self.summary.last_event_time.map_or(t, |m| m.max(t)));
    }
}

/// Per-entry errors that retrying cannot fix (KMS key problems; throttling aside).
fn is_permanent_entry_error(code: &str) -> bool {
    code.starts_with("KMS") && code != "KMSThrottlingException"
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io::Write;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use taxi_core::generate::{GeneratorConfig, write_json_lines};
    use taxi_core::input::parse_json_record;
    use taxi_core::partition::{even_ranges, shard_id};
    use taxi_io::kinesis::api::{RecordsPage, StartingPosition, Subscription, SubscriptionEvent};
    use taxi_io::kinesis::kpl::{Deaggregated, deaggregate};

    /// What the fake does to one PutRecords call.
    #[derive(Clone, Copy, Debug)]
    enum Fault {
        /// Store everything.
        None,
        /// Reject entries `from..from + count` with ProvisionedThroughputExceededException.
        Entries { from: usize, count: usize },
        /// Fail the whole call with a retryable error (throttled or transient).
        Call { throttled: bool },
        /// Fail the whole call with a permanent error.
        Permanent,
    }

    /// One stored Kinesis record.
    #[derive(Debug)]
    struct Stored {
        shard: usize,
        partition_key: String,
        explicit_hash_key: Option<String>,
        data: Bytes,
        at: std::time::Instant,
    }

    struct FakeState {
        shards: Vec<ShardInfo>,
        stored: Vec<Stored>,
        /// (entries, bytes) of every PutRecords call.
        calls: Vec<(usize, usize)>,
        /// Event times of the input's trips not stored yet, to check watermark values.
        unstored: BTreeMap<Millis, u32>,
        violations: Vec<String>,
        state: StreamState,
        polls_until_active: u32,
        /// After this many calls, replace the shard list.
        reshard: Option<(usize, Vec<ShardInfo>)>,
        /// Calls in flight, and the most at once.
        active_calls: usize,
        max_active_calls: usize,
        /// Calls in flight per open shard their entries map to, and the most on one shard at once.
        active_per_shard: BTreeMap<usize, usize>,
        max_active_per_shard: usize,
        /// Calls whose entries map to more than one open shard.
        mixed_calls: usize,
    }

    impl FakeState {
        /// Index of the open shard an entry maps to.
        fn open_shard_of(&self, entry: &PutEntry) -> Option<usize> {
            let hash = match &entry.explicit_hash_key {
                Some(key) => key.parse::<u128>().expect("decimal explicit hash key"),
                None => hash_key(entry.partition_key.as_bytes()),
            };
            self.shards.iter().position(|s| s.is_open() && s.starting_hash_key <= hash && hash <= s.ending_hash_key)
        }
    }

    /// An in-memory Kinesis stream.
    struct Fake {
        state: Mutex<FakeState>,
        fault: Box<dyn Fn(usize) -> Fault + Send + Sync>,
        latency: Duration,
        /// Up to this much more latency, at random: calls complete out of order.
        jitter: Duration,
        calls: AtomicUsize,
    }

    fn shard(index: usize, start: u128, end: u128, open: bool) -> ShardInfo {
        ShardInfo {
            shard_id: shard_id(index),
            parent: None,
            adjacent_parent: None,
            starting_hash_key: start,
            ending_hash_key: end,
            ending_sequence_number: (!open).then(|| "49".to_owned()),
        }
    }

    fn even_shards(n: u32, first_index: usize) -> Vec<ShardInfo> {
        even_ranges(n).iter().enumerate().map(|(i, r)| shard(first_index + i, r.start, r.end, true)).collect()
    }

    impl Fake {
        fn new(shards: Vec<ShardInfo>) -> Fake {
            Fake {
                state: Mutex::new(FakeState {
                    shards,
                    stored: Vec::new(),
                    calls: Vec::new(),
                    unstored: BTreeMap::new(),
                    violations: Vec::new(),
                    state: StreamState::Active { open_shards: 0 },
                    polls_until_active: 0,
                    reshard: None,
                    active_calls: 0,
                    max_active_calls: 0,
                    active_per_shard: BTreeMap::new(),
                    max_active_per_shard: 0,
                    mixed_calls: 0,
                }),
                fault: Box::new(|_| Fault::None),
                latency: Duration::ZERO,
                jitter: Duration::ZERO,
                calls: AtomicUsize::new(0),
            }
        }

        fn with_fault(mut self, fault: impl Fn(usize) -> Fault + Send + Sync + 'static) -> Fake {
            self.fault = Box::new(fault);
            self
        }

        fn with_latency(mut self, latency: Duration) -> Fake {
            self.latency = latency;
            self
        }

        /// Registers the input's trips, so watermarks are checked against those not stored yet.
        fn expect_trips(&self, event_times: impl IntoIterator<Item = Millis>) {
            let mut st = self.state.lock().expect("lock");
            for t in event_times {
                *st.unstored.entry(t).or_insert(0) += 1;
            }
        }

        fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
            self.state.lock().expect("lock")
        }

        fn with_jitter(mut self, jitter: Duration) -> Fake {
            self.jitter = jitter;
            self
        }

        /// Counts a call as in flight on the open shards its entries map to; returns those shards.
        fn call_started(&self, entries: &[PutEntry]) -> BTreeSet<usize> {
            let mut st = self.state();
            let shards: BTreeSet<usize> = entries.iter().filter_map(|entry| st.open_shard_of(entry)).collect();
            st.mixed_calls += usize::from(shards.len() > 1);
            st.active_calls += 1;
            st.max_active_calls = st.max_active_calls.max(st.active_calls);
            for &shard in &shards {
                let active = st.active_per_shard.entry(shard).or_insert(0);
                *active += 1;
                let active = *active;
                st.max_active_per_shard = st.max_active_per_shard.max(active);
            }
            shards
        }

        fn call_ended(&self, shards: &BTreeSet<usize>) {
            let mut st = self.state();
            st.active_calls -= 1;
            for shard in shards {
                if let Some(active) = st.active_per_shard.get_mut(shard) {
                    *active -= 1;
                }
            }
        }

        /// Stores the entries of one PutRecords call (or fails them, as `fault` says).
        fn store(&self, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let fault = (self.fault)(call);
            let mut st = self.state();
            let st = &mut *st;
            st.calls.push((entries.len(), entries.iter().map(entry_bytes).sum()));
            if let Some((after, _)) = &st.reshard
                && call >= *after
                && let Some((_, shards)) = st.reshard.take()
            {
                st.shards = shards;
            }
            match fault {
                Fault::Call { throttled: true } => {
                    return Err(KinesisError::Throttled {
                        operation: "PutRecords",
                        code: "ProvisionedThroughputExceededException".to_owned(),
                    });
                }
                Fault::Call { throttled: false } => {
                    return Err(KinesisError::Transient { operation: "PutRecords", message: "503".to_owned() });
                }
                Fault::Permanent => return Err(permanent("PutRecords")),
                Fault::None | Fault::Entries { .. } => {}
            }
            // Watermarks must not pass a trip that has not been stored before this call.
            for entry in &entries {
                if let Ok(Event::Watermark(w)) = parse_json_record(&entry.data)
                    && let Some((&oldest, _)) = st.unstored.first_key_value()
                    && w > oldest
                {
                    st.violations.push(format!("watermark {w} passes unstored trip at {oldest}"));
                }
            }
            let mut outcomes = Vec::new();
            for (i, entry) in entries.into_iter().enumerate() {
                if let Fault::Entries { from, count } = fault
                    && (from..from + count).contains(&i)
                {
                    outcomes.push(PutOutcome::Failed { code: "ProvisionedThroughputExceededException".to_owned() });
                    continue;
                }
                let Some(index) = st.open_shard_of(&entry) else {
                    st.violations.push(format!("entry with key {} is in no open shard", entry.partition_key));
                    outcomes.push(PutOutcome::Failed { code: "InternalFailure".to_owned() });
                    continue;
                };
                for (_, data) in user_records(&entry.partition_key, &entry.data) {
                    if let Ok(Event::Trip(trip)) = parse_json_record(&data)
                        && let Some(count) = st.unstored.get_mut(&trip.event_time())
                    {
                        *count -= 1;
                        if *count == 0 {
                            st.unstored.remove(&trip.event_time());
                        }
                    }
                }
                outcomes.push(PutOutcome::Stored {
                    shard_id: st.shards[index].shard_id.clone(),
                    sequence_number: st.stored.len().to_string(),
                });
                st.stored.push(Stored {
                    shard: index,
                    partition_key: entry.partition_key,
                    explicit_hash_key: entry.explicit_hash_key,
                    data: entry.data,
                    at: std::time::Instant::now(),
                });
            }
            Ok(outcomes)
        }
    }

    /// The user records of a Kinesis record: (partition key, data).
    fn user_records(partition_key: &str, data: &[u8]) -> Vec<(String, Vec<u8>)> {
        match deaggregate(data).expect("valid aggregate") {
            Deaggregated::Plain(d) => vec![(partition_key.to_owned(), d.to_vec())],
            Deaggregated::Aggregated(records) => {
                records.iter().map(|r| (r.partition_key.to_owned(), r.data.to_vec())).collect()
            }
        }
    }

    fn permanent(operation: &'static str) -> KinesisError {
        KinesisError::Permanent { operation, message: "not supported by the fake".to_owned() }
    }

    /// The fake has no enhanced fan-out.
    struct NoSubscription;

    impl Subscription for NoSubscription {
        async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
            Ok(None)
        }
    }

    impl KinesisApi for Fake {
        type Subscription = NoSubscription;

        async fn list_shards(&self, _stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
            Ok(self.state().shards.clone())
        }

        async fn get_shard_iterator(
            &self,
            _stream: &str,
            _shard_id: &str,
            _position: &StartingPosition,
        ) -> Result<String, KinesisError> {
            Err(permanent("GetShardIterator"))
        }

        async fn get_records(&self, _iterator: &str, _limit: i32) -> Result<RecordsPage, KinesisError> {
            Err(permanent("GetRecords"))
        }

        async fn put_records(&self, _stream: &str, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
            let shards = self.call_started(&entries);
            tokio::time::sleep(self.latency + self.jitter.mul_f64(fastrand::f64())).await;
            let result = self.store(entries);
            self.call_ended(&shards);
            result
        }

        async fn register_consumer(&self, _stream: &str, _name: &str) -> Result<String, KinesisError> {
            Err(permanent("RegisterStreamConsumer"))
        }

        async fn subscribe_to_shard(
            &self,
            _consumer_arn: &str,
            _shard_id: &str,
            _position: &StartingPosition,
        ) -> Result<NoSubscription, KinesisError> {
            Err(permanent("SubscribeToShard"))
        }

        async fn stream_state(&self, _stream: &str) -> Result<StreamState, KinesisError> {
            let mut st = self.state();
            if st.state == StreamState::Busy {
                if st.polls_until_active == 0 {
                    st.state = StreamState::Active { open_shards: 0 };
                } else {
                    st.polls_until_active -= 1;
                }
            }
            Ok(st.state)
        }

        async fn create_stream(&self, _stream: &str, shards: u32) -> Result<(), KinesisError> {
            let mut st = self.state();
            st.shards = even_shards(shards, 0);
            st.state = StreamState::Busy;
            st.polls_until_active = 2;
            Ok(())
        }

        async fn update_shard_count(&self, _stream: &str, _target_open_shards: u32) -> Result<(), KinesisError> {
            Err(permanent("UpdateShardCount"))
        }
    }

    const T0: Millis = 1_451_606_400_000;

    fn trip_line(id: u64, dropoff: Millis, pad: usize) -> String {
        let pad = if pad > 0 { format!(",\"pad\":\"{}\"", "x".repeat(pad)) } else { String::new() };
        format!(
            "{{\"type\":\"trip\",\"trip_id\":{id},\"pickup_datetime\":\"{}\",\"dropoff_datetime\":\"{}\",\
             \"pickup_latitude\":40.75,\"pickup_longitude\":-73.99,\"dropoff_latitude\":40.64,\
             \"dropoff_longitude\":-73.78{pad}}}",
            format_timestamp(dropoff - 600_000),
            format_timestamp(dropoff),
        )
    }

    fn write_file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(content).expect("write");
        file.flush().expect("flush");
        file
    }

    fn write_lines(lines: &[String]) -> tempfile::NamedTempFile {
        write_file(lines.join("\n").as_bytes())
    }

    fn generated(config: &GeneratorConfig) -> (tempfile::NamedTempFile, taxi_core::generate::GenerateStats) {
        let mut buf = Vec::new();
        let stats = write_json_lines(config, &mut buf).expect("generate");
        (write_file(&buf), stats)
    }

    fn options(input: &tempfile::NamedTempFile, speedup: f64) -> ReplayOptions {
        ReplayOptions {
            watermark_interval: Duration::from_millis(10),
            shard_refresh_interval: Duration::from_millis(30),
            max_in_flight: 4,
            speedup,
            ..ReplayOptions::new(input.path(), "taxi-test")
        }
    }

    /// Every user record stored, parsed: (trip ids, invalid count, watermark count).
    fn stored_contents(fake: &Fake) -> (Vec<u64>, u64, u64) {
        let st = fake.state();
        let (mut trips, mut invalid, mut watermarks) = (Vec::new(), 0, 0);
        for record in &st.stored {
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
        let fake = Arc::new(Fake::new(even_shards(4, 0)).with_fault(|call| match call % 6 {
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
        let st = fake.state();
        let mut original = Vec::new();
        write_json_lines(&config, &mut original).expect("generate");
        let lines: std::collections::HashSet<&[u8]> = original.split(|&b| b == b'\n').collect();
        for record in st.stored.iter().filter(|r| r.explicit_hash_key.is_none()) {
            assert!(lines.contains(&record.data[..]), "data not an input line");
            if let Ok(Event::Trip(t)) = parse_json_record(&record.data) {
                assert_eq!(record.partition_key, t.trip_id.to_string());
            }
        }
    }

    /// Per shard, the partition keys of the input's trips and invalid lines, in file order.
    fn expected_order(fake: &Fake, input: &Path) -> BTreeMap<usize, Vec<String>> {
        let st = fake.state();
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
    fn stored_order(fake: &Fake) -> BTreeMap<usize, Vec<String>> {
        let st = fake.state();
        let mut stored: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for record in &st.stored {
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
    ) -> (Arc<Fake>, ReplaySummary) {
        let config = GeneratorConfig {
            trips: 4000,
            seed: 5,
            watermark_every: Some(100),
            invalid_ratio: 0.02,
            ..GeneratorConfig::default()
        };
        let (file, stats) = generated(&config);
        let fake = Arc::new(
            Fake::new(even_shards(4, 0))
                .with_latency(Duration::from_millis(1))
                .with_jitter(Duration::from_millis(5))
                .with_fault(fault),
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
        assert!(fake.state().violations.is_empty(), "{:?}", fake.state().violations);
        (fake, summary)
    }

    #[tokio::test]
    async fn each_shard_receives_its_records_in_file_order() {
        for aggregate in [false, true] {
            let (fake, _) = replay_scrambled(aggregate, |_| Fault::None).await;
            let st = fake.state();
            assert!(st.max_active_calls > 1, "calls never overlapped: nothing was scrambled");
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
        let st = fake.state();
        assert_eq!(st.max_active_per_shard, 1, "a lane had two calls in flight");
        assert_eq!(st.mixed_calls, 0, "a call mixed the entries of several shards");
        assert!(st.max_active_calls > 1, "lanes must send in parallel: at most {} call at once", st.max_active_calls);
        assert!(st.active_per_shard.values().all(|&n| n == 0));
    }

    #[tokio::test]
    async fn permanent_errors_fail_the_replay() {
        let file = write_lines(&[trip_line(1, T0, 0), trip_line(2, T0 + 1000, 0)]);
        let fake = Arc::new(Fake::new(even_shards(2, 0)).with_fault(|_| Fault::Permanent));
        let err = replay(fake, &options(&file, 0.0), &ReplayProgress::new()).await.expect_err("must fail");
        assert!(matches!(err, ReplayError::Put { .. }), "{err}");
        assert!(err.to_string().starts_with("failed to put records into stream taxi-test"), "{err}");

        let missing = Arc::new(Fake::new(Vec::new()));
        missing.state().state = StreamState::Missing;
        let err = replay(missing, &options(&file, 0.0), &ReplayProgress::new()).await.expect_err("must fail");
        assert!(matches!(err, ReplayError::StreamMissing { .. }), "{err}");
    }

    #[tokio::test]
    async fn creates_a_missing_stream_and_waits_for_it() {
        let file = write_lines(&[trip_line(1, T0, 0), "not json".to_owned(), trip_line(2, T0 + 1000, 0)]);
        let fake = Arc::new(Fake::new(Vec::new()));
        fake.state().state = StreamState::Missing;
        let mut opts = options(&file, 0.0);
        opts.create_stream = Some(3);
        // No periodic watermark may fire while the stream is created (a loaded machine takes
        // longer than the helper's 10 ms): only the final one is counted below.
        opts.watermark_interval = Duration::from_secs(3600);
        let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
        assert_eq!(fake.state().shards.len(), 3);
        assert_eq!((summary.trips, summary.invalid), (2, 1));
        // The final watermark reaches the three shards.
        assert_eq!(summary.watermarks_sent, 3);
        assert_eq!(summary.first_event_time, Some(T0));
        assert_eq!(summary.last_event_time, Some(T0 + 1000));
        let json = serde_json::to_value(&summary).expect("serialize");
        assert_eq!(json["last_event_time"], "2016-01-01T00:00:01Z");
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
            Fake::new(initial)
                .with_latency(Duration::from_millis(5))
                .with_fault(|call| if call % 4 == 3 { Fault::Entries { from: 0, count: 2 } } else { Fault::None }),
        );
        fake.state().reshard = Some((10, after.clone()));
        fake.expect_trips(times.iter().copied());
        let summary = replay(Arc::clone(&fake), &options(&file, 100.0), &ReplayProgress::new()).await.expect("replay");

        let st = fake.state();
        assert!(st.violations.is_empty(), "{:?}", st.violations);
        let mut per_shard: BTreeMap<usize, Vec<Millis>> = BTreeMap::new();
        for record in &st.stored {
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
    async fn batches_respect_the_entry_and_byte_limits() {
        let small: Vec<String> = (1..=2100).map(|id| trip_line(id, T0 + i64::try_from(id).expect("id"), 0)).collect();
        let file = write_lines(&small);
        let fake = Arc::new(Fake::new(even_shards(2, 0)));
        replay(Arc::clone(&fake), &options(&file, 0.0), &ReplayProgress::new()).await.expect("replay");
        let max_entries = fake.state().calls.iter().map(|c| c.0).max();
        assert_eq!(max_entries, Some(MAX_BATCH_ENTRIES));

        let big: Vec<String> = (1..=300).map(|id| trip_line(id, T0 + i64::try_from(id).expect("id"), 20_000)).collect();
        let file = write_lines(&big);
        // One shard, so that its lane gets all 6 MiB: more than a batch holds.
        let fake = Arc::new(
            Fake::new(even_shards(1, 0))
                .with_fault(|call| if call % 3 == 1 { Fault::Entries { from: 10, count: 100 } } else { Fault::None }),
        );
        let mut opts = options(&file, 0.0);
        // Watermarks are sent at once, with whatever is waiting: keep them out of the way here.
        opts.watermark_interval = Duration::from_secs(10);
        let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
        assert_eq!(summary.trips, 300);
        let st = fake.state();
        assert!(st.calls.iter().all(|&(n, b)| n <= MAX_BATCH_ENTRIES && b <= MAX_BATCH_BYTES), "{:?}", st.calls);
    }

    /// How full a batch gets is decided by the lane alone, whatever the timing: with 6 MiB
    /// waiting, a batch takes records up to the 5 MiB limit.
    #[test]
    fn a_lane_fills_its_batch_up_to_the_byte_limit() {
        let now = Instant::now();
        let mut lane = Lane::default();
        for id in 0..300_u64 {
            let entry = PutEntry {
                partition_key: id.to_string(),
                explicit_hash_key: None,
                data: Bytes::from(vec![b'x'; 20_000]),
            };
            lane.push_back(Item { entry, payload: Payload::Trip(0), attempts: 0 }, now);
        }
        let batch = lane.take_batch();
        let bytes: usize = batch.iter().map(Item::bytes).sum();
        assert!(bytes <= MAX_BATCH_BYTES && batch.len() <= MAX_BATCH_ENTRIES);
        assert!(bytes > MAX_BATCH_BYTES - 20_100, "the batch stops only when the next record would not fit: {bytes}");
        assert_eq!(lane.queue.len() + batch.len(), 300, "nothing is lost between batch and lane");
        assert!(lane.in_flight);
    }

    #[tokio::test]
    async fn aggregated_records_deaggregate_to_the_input_trips() {
        let config = GeneratorConfig { trips: 3000, seed: 11, invalid_ratio: 0.03, ..GeneratorConfig::default() };
        let (file, stats) = generated(&config);
        let fake = Arc::new(Fake::new(even_shards(4, 0)).with_fault(|call| match call % 5 {
            1 => Fault::Entries { from: 0, count: 1 },
            3 => Fault::Call { throttled: false },
            _ => Fault::None,
        }));
        let mut opts = options(&file, 0.0);
        opts.aggregate = true;
        let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
        let (trips, invalid, _) = stored_contents(&fake);
        assert_eq!(trips, (1..=3000).collect::<Vec<u64>>());
        assert_eq!(invalid, stats.invalid);
        assert_eq!((summary.trips, summary.invalid), (3000, stats.invalid));
        assert!(summary.aggregated_records > 0 && summary.aggregated_records < 100, "{summary:?}");
        // Every user record is on the shard its own partition key maps to.
        let st = fake.state();
        for record in &st.stored {
            let shard = &st.shards[record.shard];
            for (key, _) in user_records(&record.partition_key, &record.data) {
                let hash = match &record.explicit_hash_key {
                    Some(k) if key == WATERMARK_PARTITION_KEY => k.parse().expect("key"),
                    _ => hash_key(key.as_bytes()),
                };
                assert!(shard.starting_hash_key <= hash && hash <= shard.ending_hash_key, "{key} misrouted");
            }
        }
    }

    #[tokio::test]
    async fn pacing_follows_the_speedup() {
        // 21 trips one event-second apart (T = 20 s) at speedup 40: about 0.5 s.
        let lines: Vec<String> =
            (0..=20).map(|i| trip_line(i + 1, T0 + i64::try_from(i).expect("i") * 1000, 0)).collect();
        let file = write_lines(&lines);
        let fake = Arc::new(Fake::new(even_shards(2, 0)));
        let start = std::time::Instant::now();
        let mut opts = options(&file, 40.0);
        opts.watermark_interval = Duration::from_millis(100);
        let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(480) && elapsed < Duration::from_millis(950), "{elapsed:?}");
        assert_eq!(summary.trips, 21);
        let st = fake.state();
        for record in &st.stored {
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
        let fake = Arc::new(Fake::new(even_shards(1, 0)));
        let start = std::time::Instant::now();
        let summary = replay(Arc::clone(&fake), &options(&file, 2000.0), &ReplayProgress::new()).await.expect("replay");
        let elapsed = start.elapsed();
        assert_eq!(summary.trips, 3);
        assert!(elapsed >= Pacer::MAX_WAIT && elapsed < Pacer::MAX_WAIT * 3, "{elapsed:?}");
    }

    #[tokio::test]
    async fn csv_trips_are_re_encoded_as_json() {
        let csv = "VendorID,tpep_pickup_datetime,tpep_dropoff_datetime,passenger_count,trip_distance,\
                   pickup_longitude,pickup_latitude,RateCodeID,store_and_fwd_flag,dropoff_longitude,\
                   dropoff_latitude,payment_type,fare_amount,extra,mta_tax,tip_amount,tolls_amount,\
                   improvement_surcharge,total_amount\n\
                   2,2015-01-15 19:05:39,2015-01-15 19:23:42,1,1.59,-73.993896484375,40.750110626220703,1,N,\
                   -73.974784851074219,40.750617980957031,1,12,1,0.5,3.25,0,0.3,17.05\n\
                   1,2015-01-10 20:33:38,garbage,1,3.30,-74.00164794921875,40.7242431640625,1,N,\
                   -73.994415283203125,40.759109497070313,1,14.5,0.5,0.5,2,0,0.3,17.8\n\
                   1,2015-01-10 20:33:38,2015-01-10 20:53:28,1,3.30,-74.00164794921875,40.7242431640625,1,N,\
                   -73.994415283203125,40.759109497070313,1,14.5,0.5,0.5,2,0,0.3,17.8\n";
        let file = write_file(csv.as_bytes());
        let fake = Arc::new(Fake::new(even_shards(1, 0)));
        let summary = replay(Arc::clone(&fake), &options(&file, 0.0), &ReplayProgress::new()).await.expect("replay");
        assert_eq!((summary.trips, summary.invalid), (2, 1));
        let expected: Vec<(u64, taxi_core::event::ParsedRecord)> =
            taxi_core::input::read_records(file.path()).expect("read").map(|r| r.expect("record")).collect();
        let st = fake.state();
        for (no, parsed) in expected {
            let record = st.stored.iter().find(|r| r.partition_key == no.to_string()).expect("stored");
            match parsed {
                Ok(trip) => assert_eq!(parse_json_record(&record.data), Ok(trip)),
                Err(_) => assert!(parse_json_record(&record.data).is_err()),
            }
        }
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
}

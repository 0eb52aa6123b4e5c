//! `taxi-worker replay`: the producer that streams an input (one or more files) into a Kinesis stream.
//!
//! [`replay`] reads the input with the same reader as `taxi-worker local`
//! ([`InputReader`](taxi_core::input::InputReader): its objects in order, records numbered across them) on a
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
//!   a trip of a TLC CSV or Parquet file is re-encoded as a JSON line in the reference architecture's format
//!   (`"type":"trip"`, `trip_id` = its record number, ISO-8601 UTC times, `pickup_latitude`-style coordinates;
//!   a trip placed by taxi zone carries its zones' centroids). Partition key = `trip_id` in decimal.
//! - **Invalid lines** are sent too, as they are, with the record number (1-based, as `local` numbers records) as
//!   partition key: the worker then counts them `invalid` exactly as `local` does, so a cluster run over the
//!   stream and a local run over the file report the same totals. (A CSV row that is invalid is sent as its raw
//!   CSV bytes; the worker counts it `invalid` with reason `not_json`, so the total matches but the reason may
//!   differ. An invalid Parquet row has no line: it is sent as [`invalid_row_json`], which the worker counts
//!   `unknown_type`.) An invalid line that alone exceeds Kinesis' 1 MiB record limit cannot be sent and is counted in
//!   [`ReplaySummary::invalid_skipped`] instead; an oversized trip fails the replay.
//! - **Watermark lines of the input are not forwarded** ([`ReplaySummary::input_watermarks_skipped`]): the
//!   producer makes its own.
//!
//! # Pacing
//!
//! With `speedup` S > 0, a trip with event time t is handed to Kinesis no earlier than
//! `start + (t − t0) / S`, where t0 is the first trip's event time and `start` the instant it was read. Trips
//! older than the pace (disorder) go out at once; invalid lines are not paced. S = 0 sends as fast as possible.
//! A gap in event time costs at most [`Pacer::MAX_WAIT`](crate::pace::Pacer::MAX_WAIT) of wall-clock time, after which the pace continues from
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
//! This is the reference architecture's contract: the watermark covers what the producer has sent. Trips later in the file that
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
//! User records are packed into KPL aggregates ([`Aggregator`](taxi_io::kinesis::kpl::Aggregator)), one aggregator per open shard: a record goes
//! to the aggregator of the shard whose hash-key range holds the MD5 of its partition key, and the aggregate is
//! put with its first user record's partition key (no explicit hash key). Kinesis routes the aggregate by that
//! key, which by construction lies in the same shard as every other user record in it, so each user record lands
//! on the shard it would have reached unaggregated. When the open-shard set changes, every aggregator is flushed
//! before records are routed by the new ranges. Watermarks are never aggregated. Records too large to share an
//! aggregate are sent plain.
//!
//! # Layout
//!
//! `stream` checks (or creates) the stream and lists its shards, `input` reads and converts the file on
//! its thread, `producer` runs the event loop over the per-shard `lane`s (and, when aggregating, the
//! per-shard aggregators of `aggregate`), and `progress` holds the live counters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};
use tokio::sync::mpsc;
use tokio::task::JoinError;
use tokio::time::Instant;

use taxi_core::event::Millis;
use taxi_core::input::{InputError, InputObject, LocalFile, ZoneCentroids};
use taxi_core::time::format_timestamp;
use taxi_io::kinesis::api::{KinesisApi, KinesisError};
use taxi_io::retry::{BackoffPolicy, Jitter};

mod aggregate;
#[cfg(test)]
mod fake;
mod input;
mod lane;
mod producer;
mod progress;
mod stream;
#[cfg(test)]
mod tests;

pub use input::{invalid_row_json, trip_json, watermark_json};
pub use progress::{ProgressSnapshot, ReplayProgress};

use input::{READ_AHEAD, read_input};
use producer::Producer;
use stream::{list_open_shards, prepare_stream};

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

/// What to replay, where, and how fast.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// The input's objects, read in order: each JSON lines or TLC CSV (plain, gzip or zstd) or Parquet.
    pub input: Vec<Arc<dyn InputObject>>,
    /// Places trips of CSV and Parquet objects that name taxi zones instead of coordinates.
    pub zone_centroids: Option<Arc<ZoneCentroids>>,
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
    /// 10 s, 8 calls in flight, stream not created; the input is the local file at `input`.
    pub fn new(input: impl Into<PathBuf>, stream: impl Into<String>) -> ReplayOptions {
        ReplayOptions::over(vec![Arc::new(LocalFile::new(input.into()))], stream)
    }

    /// Options with the defaults, over the objects of `input` in order.
    pub fn over(input: Vec<Arc<dyn InputObject>>, stream: impl Into<String>) -> ReplayOptions {
        ReplayOptions {
            input,
            zone_centroids: None,
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
    let (objects, zones) = (options.input.clone(), options.zone_centroids.clone());
    let reader = tokio::task::spawn_blocking(move || read_input(objects, zones, &tx));
    let mut producer = Producer::new(kinesis, options, progress, shards);
    let result = producer.run(rx).await;
    // On success the reader has sent its end marker; on failure it stops at its next send.
    drop(reader);
    let mut summary = result?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

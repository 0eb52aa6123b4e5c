//! `taxi-worker run`: read the shards of a Kinesis stream, process them with the engine, write
//! per-shard partial documents to the sink and checkpoint each shard.
//!
//! A coordinator discovers shards (ListShards every `shard_discovery_interval`, and at once when a
//! shard ends), starts one task per owned shard whose parents are finished, and stops them on
//! shutdown or once every shard stayed caught up for `stop_when_idle`. Each shard task owns its
//! reader, its [`ShardProcessor`](taxi_core::shard::ShardProcessor) and its checkpoint; the order
//! per shard is: process records → write the documents of closed windows → flush the sink → write
//! the checkpoint (fenced by ETag).
//!
//! # Ownership and handoff
//!
//! With [`AssignmentSource::All`] the worker owns every shard. Otherwise it owns the shards an
//! assignment gives its ordinal, and owns nothing until it has seen one. Each running shard has
//! its own control channel; on a new epoch E the coordinator asks every running shard it no
//! longer owns to release it: the task flushes the sink, writes a final checkpoint marked
//! released at E (open windows stay in its partials) and exits. Newly owned shards start through
//! the usual parent-before-child gating; their task claims the checkpoint at once when nobody
//! holds it (or it is released), and otherwise re-reads it every
//! [`RELEASE_POLL_INTERVAL`](crate::handoff::RELEASE_POLL_INTERVAL) until it is released or the
//! takeover timeout has passed ([`decide_claim`](crate::handoff::decide_claim)). Shards that keep
//! their owner are not touched.
//!
//! # The modules, in the order a shard meets them
//!
//! Discovery finds a shard startable; the coordinator spawns its task under the grant ownership
//! gives it; the task claims the shard's checkpoint, reads until it is told to stop or release it,
//! or reaches its end, and reports how it ended; the coordinator then marks it finished, parks it,
//! or retries it after a back-off.
//!
//! - `coordinator`: [`run_worker`] opens the store and the sink, then loops: it applies new
//!   assignments, runs discovery, starts shard tasks, handles how they end and decides when to
//!   stop;
//! - `ownership`: which shards this worker owns at the epoch in effect, and the grant (epoch,
//!   time, whether to wait for a release) a shard starts under; `retries`: when a failed shard
//!   may start again;
//! - `discovery`: which owned shards may start now (parents read to their end first);
//! - `claim`: a starting shard's task takes its checkpoint over (waiting for the previous owner's
//!   release when it must) and restores its state, or its parents' for a new child;
//! - `shard_task`: the read → process → sink → checkpoint loop of one claimed shard, down to its
//!   release, stop or end; `records` feeds it the records, `control` carries the coordinator's
//!   requests to it;
//! - `idle` and `status`: what the coordinator and `/status` see of the shards.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::handoff::{AssignmentSource, SourceError};
use taxi_core::archive::ArchiveError;
use taxi_core::checkpoint::{FormatError, Owner};
use taxi_core::config::EngineConfig;
use taxi_core::settings::{
    ArchiveSettings, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_DISCOVERY_INTERVAL, DEFAULT_RETAIN, DEFAULT_TAKEOVER_TIMEOUT,
};
use taxi_core::shard::Counters;
use taxi_core::start_position::InitialPosition;
use taxi_io::kinesis::api::KinesisError;
use taxi_io::kinesis::reader::PollingConfig;
use taxi_io::retry::{BackoffPolicy, Jitter};
use taxi_io::sink::opensearch::OpenSearchSettings;
use taxi_io::sink::{Sink, SinkError};
use taxi_io::store::{CheckpointStore, S3Settings, StoreError};

mod archive;
mod claim;
mod control;
mod coordinator;
mod discovery;
mod idle;
mod ownership;
mod records;
mod retries;
mod shard_task;
mod status;
#[cfg(test)]
mod testing;

pub use coordinator::run_worker;
pub use status::{AssignmentStatus, WorkerState};

/// Everything `taxi-worker run` needs besides the Kinesis client.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Pipeline name: with `namespace`, its identity in document ids and checkpoint keys.
    pub pipeline: String,
    /// The pipeline's Kubernetes namespace (`None` outside Kubernetes); see [`PipelineId`](taxi_core::identity::PipelineId).
    pub namespace: Option<String>,
    /// The stream.
    pub stream: String,
    /// Where a shard with nothing processed yet starts; resolved once, at its first claim.
    pub start: InitialPosition,
    /// Checkpoint store URI (`s3://bucket/prefix`, `file:///dir` or a directory).
    pub checkpoint_uri: String,
    /// How to reach S3 (endpoint and addressing style for S3-compatible servers).
    pub s3: S3Settings,
    /// Previous checkpoints kept per shard for inspection.
    pub checkpoint_retain: usize,
    /// Time between checkpoints of a shard.
    pub checkpoint_interval: Duration,
    /// Sink URI (`file:///path.jsonl` or an OpenSearch `http(s)://` URL).
    pub sink_uri: String,
    /// OpenSearch authentication, TLS, index prefix and batching (for `http(s)://` sinks).
    pub opensearch: OpenSearchSettings,
    /// Time between ListShards calls.
    pub shard_discovery_interval: Duration,
    /// Exit once every shard has been caught up and quiet this long, writing open windows as
    /// not-final documents that a later run completes (they stay in the checkpoints).
    pub stop_when_idle: Option<Duration>,
    /// Polling settings.
    pub polling: PollingConfig,
    /// Analyses and event time.
    pub engine: EngineConfig,
    /// Assignment epoch written into checkpoints with [`AssignmentSource::All`]; with an
    /// assignment, a claim writes the epoch of the assignment under which the shard starts.
    pub owner_epoch: u64,
    /// Which shards this worker owns: all of them, or those an assignment gives [`Self::ordinal`].
    pub assignment: AssignmentSource,
    /// This worker's ordinal in the assignment (required unless `assignment` is `All`).
    pub ordinal: Option<u32>,
    /// How long a new owner waits for the previous owner's release before taking a shard over.
    pub takeover_timeout: Duration,
    /// The enhanced fan-out consumer to read through, by name; `None` polls with GetRecords.
    pub efo_consumer: Option<String>,
    /// Stop each shard (with a checkpoint) after processing this many user records in this run,
    /// even inside a KPL aggregate: for tests and bounded batch runs.
    pub stop_after_records: Option<u64>,
    /// Where the raw trips read are archived as Parquet; `None`: not archived.
    pub archive: Option<ArchiveSettings>,
}

impl RunOptions {
    /// Options for `pipeline` over `stream` with the defaults a pipeline gets from its settings:
    /// every shard, polled from TRIM_HORIZON, checkpointed to `checkpoint_uri` (file or S3) every
    /// 10 s, results to `sink_uri`, no idle stop. Callers change what they need with `..`.
    pub fn new(pipeline: &str, stream: &str, checkpoint_uri: String, sink_uri: String) -> RunOptions {
        RunOptions {
            pipeline: pipeline.to_owned(),
            namespace: None,
            stream: stream.to_owned(),
            start: InitialPosition::TrimHorizon,
            checkpoint_uri,
            s3: S3Settings::default(),
            checkpoint_retain: DEFAULT_RETAIN,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            sink_uri,
            opensearch: OpenSearchSettings::default(),
            shard_discovery_interval: DEFAULT_DISCOVERY_INTERVAL,
            stop_when_idle: None,
            polling: PollingConfig::default(),
            engine: EngineConfig::default(),
            owner_epoch: 0,
            assignment: AssignmentSource::All,
            ordinal: None,
            takeover_timeout: DEFAULT_TAKEOVER_TIMEOUT,
            efo_consumer: None,
            stop_after_records: None,
            archive: None,
        }
    }
}

/// Why `run` failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad settings.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A checkpoint could not be encoded, decoded or restored under the current settings.
    #[error(transparent)]
    Checkpoint(#[from] FormatError),
    /// Neither a shard's checkpoint nor any history copy of it can be read.
    #[error("checkpoint {key} is corrupt and no history copy of it is readable: {reason}")]
    CorruptCheckpoint {
        /// The checkpoint's key.
        key: String,
        /// Why the latest copy could not be read.
        reason: String,
    },
    /// The checkpoint store failed in a way retrying cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// An archive file could not be encoded.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Kinesis failed in a way retrying cannot fix.
    #[error(transparent)]
    Kinesis(#[from] KinesisError),
    /// The assignment source could not be started, or stopped.
    #[error(transparent)]
    Assignment(#[from] SourceError),
    /// A run to idle ended while these shards had failed (shard id, last error); a worker that
    /// runs until stopped retries them instead, however long it takes.
    #[error("{} shard(s) failed: {}", .0.len(), .0.iter().map(|(id, e)| format!("{id}: {e}")).collect::<Vec<_>>().join("; "))]
    ShardsFailed(Vec<(String, String)>),
}

impl RunError {
    /// The bounded reason label of `taxi_shard_failures_total` for a shard that failed with this.
    pub fn failure_reason(&self) -> &'static str {
        match self {
            RunError::Checkpoint(FormatError::SettingsChanged { .. }) => "settings_changed",
            RunError::CorruptCheckpoint { .. }
            | RunError::Checkpoint(
                FormatError::Decode(_) | FormatError::FormatVersion { .. } | FormatError::UnknownAirport(_),
            ) => "corrupt_checkpoint",
            // A checkpoint that cannot be encoded never reaches the store: counted with its failures.
            RunError::Checkpoint(FormatError::Encode(_)) | RunError::Store(_) => "checkpoint_store",
            RunError::Kinesis(_) => "kinesis",
            RunError::Sink(_) => "sink",
            RunError::Archive(_) => "archive",
            RunError::Config(_) | RunError::Assignment(_) | RunError::ShardsFailed(_) => "other",
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunSummary {
    /// Shards read to their end.
    pub finished_shards: Vec<String>,
    /// Shards another owner took (checkpoint conflict).
    pub fenced_shards: Vec<String>,
    /// Record counts over all shards this run processed.
    pub counters: Counters,
}

/// What the coordinator and every shard task of one run share.
struct Shared<K> {
    api: Arc<K>,
    /// The pipeline's key in checkpoints and documents ([`PipelineId::key`](taxi_core::identity::PipelineId::key), or the legacy one).
    identity: String,
    options: RunOptions,
    config: Arc<EngineConfig>,
    store: CheckpointStore,
    sink: Arc<Sink>,
    state: Arc<WorkerState>,
    /// Shards caught up (empty page, nothing behind) since an instant; cleared by records.
    caught_up: idle::CaughtUp,
    /// Record counts of this run over all shards.
    totals: Mutex<Counters>,
    /// Shards ListShards reported closed (an enhanced fan-out reader then drains them by polling).
    closed_shards: Mutex<HashSet<String>>,
    /// The enhanced fan-out consumer, when used.
    consumer_arn: Option<String>,
    /// Who this worker is, in its checkpoints.
    owner: Owner,
    /// Where archive files go, when the run archives.
    archive: Option<archive::ArchiveTarget>,
}

/// The wait between attempts of a control call that must eventually succeed: listing the shards,
/// registering the EFO consumer, writing a finished shard's checkpoint.
const CONTROL_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(200), Duration::from_secs(10), Jitter::Full);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_shard_is_counted_under_a_bounded_reason() {
        let checkpoint = |e: FormatError| RunError::Checkpoint(e);
        let settings = FormatError::SettingsChanged { stored: "a".to_owned(), current: "b".to_owned() };
        assert_eq!(checkpoint(settings).failure_reason(), "settings_changed");
        let corrupt = RunError::CorruptCheckpoint { key: "k".to_owned(), reason: "cut short".to_owned() };
        assert_eq!(corrupt.failure_reason(), "corrupt_checkpoint");
        assert_eq!(checkpoint(FormatError::FormatVersion { found: 99 }).failure_reason(), "corrupt_checkpoint");
        assert_eq!(checkpoint(FormatError::UnknownAirport("XYZ".to_owned())).failure_reason(), "corrupt_checkpoint");
        let not_json = || serde_json::from_str::<u32>("x").expect_err("not JSON");
        assert_eq!(checkpoint(FormatError::Decode(not_json())).failure_reason(), "corrupt_checkpoint");
        assert_eq!(checkpoint(FormatError::Encode(not_json())).failure_reason(), "checkpoint_store");
        assert_eq!(RunError::Store(StoreError::Conflict { key: "k".to_owned() }).failure_reason(), "checkpoint_store");
        let gone = KinesisError::NotFound { operation: "GetRecords", message: "no such shard".to_owned() };
        assert_eq!(RunError::Kinesis(gone).failure_reason(), "kinesis");
        assert_eq!(RunError::Config("bad".to_owned()).failure_reason(), "other");
        assert_eq!(RunError::Assignment(SourceError::Ended).failure_reason(), "other");
        assert_eq!(RunError::ShardsFailed(Vec::new()).failure_reason(), "other");
    }

    #[test]
    fn a_run_to_idle_with_failed_shards_names_each_one() {
        let failed = RunError::ShardsFailed(vec![
            ("shardId-1".to_owned(), "sink down".to_owned()),
            ("shardId-2".to_owned(), "no such shard".to_owned()),
        ]);
        assert_eq!(failed.to_string(), "2 shard(s) failed: shardId-1: sink down; shardId-2: no such shard");
    }
}

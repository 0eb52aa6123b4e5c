//! What the operator reads and changes outside the Kubernetes API: the stream (Kinesis ListShards,
//! for a managed stream its state, creation and resharding, and the deregistration of the
//! enhanced fan-out consumer the operator named) and the workers' `/status` (lag, watermark,
//! checkpoints, and whether they released their shards). Both are traits so reconcile tests run
//! against fakes; the real ones live here too.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use taxi_core::status::{ShardState, WorkerStatus};
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, KinesisEndpoint, KinesisError, SdkKinesis, StreamState};

/// Which stream, and how to reach its Kinesis endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamRef {
    /// Stream name.
    pub name: String,
    /// AWS region; `None`: the operator's default.
    pub region: Option<String>,
    /// Kinesis endpoint (an emulator); `None`: the operator's default, else AWS.
    pub endpoint_url: Option<String>,
}

/// The Kinesis calls the operator makes.
pub trait Streams: Send + Sync + 'static {
    /// Every shard of the stream still listed (open and closed), with lineage; pages followed.
    fn list_shards(&self, stream: &StreamRef) -> impl Future<Output = Result<Vec<ShardInfo>, KinesisError>> + Send;
    /// Whether the stream is missing, busy (creating, updating, deleting) or ACTIVE, and then with
    /// how many open shards.
    fn stream_state(&self, stream: &StreamRef) -> impl Future<Output = Result<StreamState, KinesisError>> + Send;
    /// Creates the stream (provisioned) with `shards` shards; it is busy until ACTIVE.
    fn create_stream(&self, stream: &StreamRef, shards: u32) -> impl Future<Output = Result<(), KinesisError>> + Send;
    /// Starts one reshard step of an ACTIVE stream to `target` open shards (UpdateShardCount,
    /// UNIFORM_SCALING; at most ×2 or ÷2 of the open shards); it is busy until ACTIVE again.
    fn update_shard_count(
        &self,
        stream: &StreamRef,
        target: u32,
    ) -> impl Future<Output = Result<(), KinesisError>> + Send;
    /// Deregisters the enhanced fan-out consumer `consumer` of the stream; one that does not
    /// exist (or a stream that does not) is success, so a retry after a partial failure is too.
    fn deregister_consumer(
        &self,
        stream: &StreamRef,
        consumer: &str,
    ) -> impl Future<Output = Result<(), KinesisError>> + Send;
}

/// (region, endpoint URL) of a Kinesis client.
type EndpointKey = (Option<String>, Option<String>);

/// [`Streams`] over the AWS SDK, one client per (region, endpoint), created on first use.
#[derive(Default)]
pub struct SdkStreams {
    defaults: KinesisEndpoint,
    clients: Mutex<HashMap<EndpointKey, Arc<SdkKinesis>>>,
}

impl SdkStreams {
    /// Uses `defaults` for pipelines that name no region or endpoint of their own.
    pub fn new(defaults: KinesisEndpoint) -> SdkStreams {
        SdkStreams { defaults, clients: Mutex::new(HashMap::new()) }
    }

    /// Uses `client` for the streams whose region and endpoint resolve to `endpoint` (after the
    /// defaults), instead of a client with the default AWS credential chain: for emulators and
    /// tests, with static credentials.
    pub fn with_client(self, endpoint: &KinesisEndpoint, client: SdkKinesis) -> SdkStreams {
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(self.key(endpoint.region.as_deref(), endpoint.endpoint_url.as_deref()), Arc::new(client));
        }
        self
    }

    fn key(&self, region: Option<&str>, endpoint_url: Option<&str>) -> EndpointKey {
        (
            region.or(self.defaults.region.as_deref()).map(str::to_owned),
            endpoint_url.or(self.defaults.endpoint_url.as_deref()).map(str::to_owned),
        )
    }

    async fn client(&self, stream: &StreamRef) -> Arc<SdkKinesis> {
        let key = self.key(stream.region.as_deref(), stream.endpoint_url.as_deref());
        if let Some(client) = self.clients.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return client;
        }
        let client = Arc::new(
            SdkKinesis::connect(&KinesisEndpoint { region: key.0.clone(), endpoint_url: key.1.clone() }).await,
        );
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(key, client.clone());
        }
        client
    }
}

impl Streams for SdkStreams {
    async fn list_shards(&self, stream: &StreamRef) -> Result<Vec<ShardInfo>, KinesisError> {
        self.client(stream).await.list_shards(&stream.name).await
    }

    async fn stream_state(&self, stream: &StreamRef) -> Result<StreamState, KinesisError> {
        self.client(stream).await.stream_state(&stream.name).await
    }

    async fn create_stream(&self, stream: &StreamRef, shards: u32) -> Result<(), KinesisError> {
        self.client(stream).await.create_stream(&stream.name, shards).await
    }

    async fn update_shard_count(&self, stream: &StreamRef, target: u32) -> Result<(), KinesisError> {
        self.client(stream).await.update_shard_count(&stream.name, target).await
    }

    async fn deregister_consumer(&self, stream: &StreamRef, consumer: &str) -> Result<(), KinesisError> {
        self.client(stream).await.deregister_consumer(&stream.name, consumer).await
    }
}

/// Why a worker could not be asked.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the status of worker {url}: {reason}")]
pub struct ProbeError {
    /// The URL asked.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

/// Asks a worker pod for its `/status`.
pub trait WorkerProbe: Send + Sync + 'static {
    /// The status of the pod at `host` (`<pod>.<service>.<namespace>.svc`), port 8080.
    fn status(&self, host: &str) -> impl Future<Output = Result<WorkerStatus, ProbeError>> + Send;
}

// The HTTP client of the workers' `/status`.
mod http_probe;
pub use http_probe::{FetchError, HttpProbe, MAX_STATUS_BYTES};

/// Lag, watermark and checkpoint progress over every worker that answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineProgress {
    /// The largest MillisBehindLatest of any reading shard.
    pub max_lag_millis: Option<i64>,
    /// The smallest watermark of any reading shard (the pipeline's event-time progress).
    pub watermark: Option<String>,
    /// The oldest of the shards' latest checkpoints: the checkpoint of the shard furthest behind.
    /// Only shards a worker holds count ([`holds_checkpoint_progress`]); a shard two workers
    /// report (during a handoff) counts with its latest checkpoint of the two.
    pub last_checkpoint: Option<String>,
    /// Shards a worker reports as failed, as `shard: error`, sorted.
    pub failed_shards: Vec<String>,
}

impl PipelineProgress {
    /// Folds the reports of the workers that answered. RFC 3339 UTC strings of one format
    /// compare in time order.
    pub fn from_reports<'a>(reports: impl IntoIterator<Item = &'a WorkerStatus>) -> PipelineProgress {
        let mut progress = PipelineProgress::default();
        let mut latest_checkpoints: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, shard) in reports.into_iter().flat_map(|r| r.shards.iter()) {
            if shard.state == ShardState::Failed {
                let error = shard.error.as_deref().unwrap_or("no reason given");
                progress.failed_shards.push(format!("{id}: {error}"));
            }
            if shard.state == ShardState::Reading {
                if let Some(lag) = shard.millis_behind_latest {
                    progress.max_lag_millis = Some(progress.max_lag_millis.map_or(lag, |m| m.max(lag)));
                }
                if let Some(w) = &shard.watermark
                    && progress.watermark.as_ref().is_none_or(|m| w < m)
                {
                    progress.watermark = Some(w.clone());
                }
            }
            if let Some(checkpoint) = shard.last_checkpoint.as_deref()
                && holds_checkpoint_progress(shard.state)
            {
                let latest = latest_checkpoints.entry(id.as_str()).or_insert(checkpoint);
                *latest = (*latest).max(checkpoint);
            }
        }
        progress.last_checkpoint = latest_checkpoints.into_values().min().map(str::to_owned);
        progress.failed_shards.sort();
        progress
    }
}

/// Whether a shard in `state` counts for the pipeline's checkpoint progress: it is the worker's and
/// not done. A finished shard's checkpoint stays old for good, a released or fenced one is another
/// worker's now, and a stopped one belongs to a worker that is leaving; none of them is stuck.
pub fn holds_checkpoint_progress(state: ShardState) -> bool {
    match state {
        ShardState::Discovered
        | ShardState::WaitingForParents
        | ShardState::Reading
        | ShardState::WaitingForRelease
        | ShardState::Failed => true,
        ShardState::Finished
        | ShardState::Fenced
        | ShardState::Stopped
        | ShardState::Released
        | ShardState::Unknown => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taxi_core::status::ShardStatus;

    #[test]
    fn progress_takes_the_worst_lag_the_earliest_watermark_and_the_oldest_shard_checkpoint() {
        let shard = |state, lag, watermark: &str, checkpoint: &str| ShardStatus {
            state,
            millis_behind_latest: Some(lag),
            watermark: Some(watermark.into()),
            last_checkpoint: Some(checkpoint.into()),
            ..ShardStatus::default()
        };
        let a = WorkerStatus {
            shards: [("s0".into(), shard(ShardState::Reading, 500, "2016-01-01T00:20:00Z", "2026-01-01T00:00:05Z"))]
                .into(),
            ..WorkerStatus::default()
        };
        let b = WorkerStatus {
            shards: [
                // Stuck: its latest checkpoint is the oldest of the shards being read.
                ("s1".into(), shard(ShardState::Reading, 90, "2016-01-01T00:10:00Z", "2026-01-01T00:00:02Z")),
                // A finished shard's old watermark, lag and checkpoint do not hold the pipeline back.
                ("s2".into(), shard(ShardState::Finished, 9_000, "2016-01-01T00:00:00Z", "2026-01-01T00:00:01Z")),
            ]
            .into(),
            ..WorkerStatus::default()
        };
        let p = PipelineProgress::from_reports([&a, &b]);
        assert_eq!(p.max_lag_millis, Some(500));
        assert_eq!(p.watermark.as_deref(), Some("2016-01-01T00:10:00Z"));
        assert_eq!(p.last_checkpoint.as_deref(), Some("2026-01-01T00:00:02Z"), "the stuck shard shows");
    }

    #[test]
    fn a_handed_off_shard_counts_with_its_new_owners_checkpoint() {
        let checkpointed =
            |state, at: &str| ShardStatus { state, last_checkpoint: Some(at.into()), ..ShardStatus::default() };
        let leaving = WorkerStatus {
            shards: [
                ("s0".into(), checkpointed(ShardState::Released, "2026-01-01T00:00:01Z")),
                ("s1".into(), checkpointed(ShardState::Fenced, "2026-01-01T00:00:01Z")),
            ]
            .into(),
            ..WorkerStatus::default()
        };
        let taking_over = WorkerStatus {
            shards: [
                ("s0".into(), checkpointed(ShardState::Reading, "2026-01-01T00:00:08Z")),
                ("s1".into(), checkpointed(ShardState::Failed, "2026-01-01T00:00:06Z")),
                // Claimed a moment ago: no checkpoint of its own yet.
                ("s2".into(), ShardStatus { state: ShardState::Reading, ..ShardStatus::default() }),
            ]
            .into(),
            ..WorkerStatus::default()
        };
        let p = PipelineProgress::from_reports([&leaving, &taking_over]);
        assert_eq!(p.last_checkpoint.as_deref(), Some("2026-01-01T00:00:06Z"), "the failing shard is the oldest");
        let alone = PipelineProgress::from_reports([&leaving]);
        assert_eq!(alone.last_checkpoint, None, "shards a worker let go of are not its progress");
    }

    #[test]
    fn failed_shards_are_listed_with_their_reasons() {
        let failed = |error: Option<&str>| ShardStatus {
            state: ShardState::Failed,
            error: error.map(str::to_owned),
            ..ShardStatus::default()
        };
        let report = WorkerStatus {
            shards: [
                ("s1".into(), failed(Some("the checkpoint was written under other analysis settings"))),
                ("s0".into(), failed(None)),
                ("s2".into(), ShardStatus { state: ShardState::Reading, ..ShardStatus::default() }),
            ]
            .into(),
            ..WorkerStatus::default()
        };
        let p = PipelineProgress::from_reports([&report]);
        assert_eq!(
            p.failed_shards,
            ["s0: no reason given", "s1: the checkpoint was written under other analysis settings"]
        );
    }
}

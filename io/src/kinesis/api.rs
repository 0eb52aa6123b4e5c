//! The Kinesis calls the worker and the producer make, behind one trait.
//!
//! [`KinesisApi`] speaks in the worker's own types, so the shard reader and the producer are
//! written (and tested) against the trait; [`SdkKinesis`] implements it with `aws-sdk-kinesis`,
//! and tests wrap it to inject throttling and expired iterators.

use std::future::Future;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ScalingType, ShardIteratorType, StreamStatus};
use bytes::Bytes;

use taxi_core::event::Millis;
use taxi_core::topology::ShardInfo;

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest record still retained.
    TrimHorizon,
    /// Only records added from now on.
    Latest,
    /// The first record that arrived at or after this instant.
    AtTimestamp(Millis),
    /// The record right after this sequence number.
    AfterSequenceNumber(String),
    /// This very record (used to re-read an aggregated record partly processed).
    AtSequenceNumber(String),
}

impl StartingPosition {
    /// The iterator type, sequence number and timestamp the SDK's two position shapes (a shard
    /// iterator request and a SubscribeToShard starting position) are built from.
    fn parts(&self) -> (ShardIteratorType, Option<&str>, Option<DateTime>) {
        match self {
            StartingPosition::TrimHorizon => (ShardIteratorType::TrimHorizon, None, None),
            StartingPosition::Latest => (ShardIteratorType::Latest, None, None),
            StartingPosition::AtTimestamp(t) => (ShardIteratorType::AtTimestamp, None, Some(DateTime::from_millis(*t))),
            StartingPosition::AfterSequenceNumber(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq), None),
            StartingPosition::AtSequenceNumber(seq) => (ShardIteratorType::AtSequenceNumber, Some(seq), None),
        }
    }
}

/// One record as GetRecords or SubscribeToShard returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KinesisRecord {
    /// Sequence number, unique and increasing within the shard.
    pub sequence_number: String,
    /// The producer's partition key.
    pub partition_key: String,
    /// The payload (maybe a KPL aggregate).
    pub data: Bytes,
    /// ApproximateArrivalTimestamp.
    pub arrival: Option<Millis>,
}

/// A page of GetRecords.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordsPage {
    /// Records in sequence order.
    pub records: Vec<KinesisRecord>,
    /// Iterator for the next call; `None` once a closed shard has been read to its end.
    pub next_iterator: Option<String>,
    /// How far behind the tip of the shard this page is.
    pub millis_behind_latest: Option<i64>,
    /// The shards that replaced this one, on the last page of a closed shard.
    pub child_shards: Vec<String>,
}

/// One entry of a PutRecords call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutEntry {
    /// Partition key (the trip id in decimal).
    pub partition_key: String,
    /// Overrides the hash of the partition key (watermarks go to a shard's starting key).
    pub explicit_hash_key: Option<String>,
    /// The payload.
    pub data: Bytes,
}

/// What happened to one PutRecords entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored.
    Stored {
        /// The shard it went to.
        shard_id: String,
        /// Its sequence number.
        sequence_number: String,
    },
    /// Rejected; retry it (throttling or an internal failure).
    Failed {
        /// The error code, e.g. `ProvisionedThroughputExceededException`.
        code: String,
    },
}

/// Whether a stream exists and can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// No such stream.
    Missing,
    /// Being created or updated.
    Busy,
    /// Usable, with this many open shards.
    Active {
        /// Open shards.
        open_shards: u32,
    },
}

/// Classified failures of a Kinesis call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KinesisError {
    /// Throttled (ProvisionedThroughputExceeded, LimitExceeded, KMSThrottling): back off and retry.
    #[error("{operation} was throttled: {code}")]
    Throttled {
        /// The call.
        operation: &'static str,
        /// The error code.
        code: String,
    },
    /// The shard iterator expired: get a new one from the last processed position.
    #[error("{operation}: shard iterator expired")]
    ExpiredIterator {
        /// The call.
        operation: &'static str,
    },
    /// The stream or shard does not exist.
    #[error("{operation}: {message}")]
    NotFound {
        /// The call.
        operation: &'static str,
        /// The service's message.
        message: String,
    },
    /// A network failure, a timeout or a 5xx: retry with back-off.
    #[error("{operation} failed transiently: {message}")]
    Transient {
        /// The call.
        operation: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Anything else (bad request, access denied): retrying will not help.
    #[error("{operation} failed: {message}")]
    Permanent {
        /// The call.
        operation: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl KinesisError {
    /// Whether the same call may succeed if repeated after a back-off.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KinesisError::Throttled { .. } | KinesisError::Transient { .. })
    }

    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            KinesisError::Throttled { .. } => "throttled",
            KinesisError::ExpiredIterator { .. } => "expired_iterator",
            KinesisError::NotFound { .. } => "not_found",
            KinesisError::Transient { .. } => "transient",
            KinesisError::Permanent { .. } => "permanent",
        }
    }

    /// Classifies an SDK error by its code, HTTP status and kind.
    pub fn from_sdk<E>(operation: &'static str, err: &SdkError<E, HttpResponse>) -> KinesisError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let message = DisplayErrorContext(err).to_string();
        match err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
                return KinesisError::Transient { operation, message };
            }
            _ => {}
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        classify(operation, err.code(), status, message)
    }
}

/// Classification from an error code and HTTP status, kept separate so it is unit-tested.
pub fn classify(operation: &'static str, code: Option<&str>, status: Option<u16>, message: String) -> KinesisError {
    match code {
        Some("ProvisionedThroughputExceededException" | "LimitExceededException" | "KMSThrottlingException") => {
            KinesisError::Throttled { operation, code: code.unwrap_or_default().to_owned() }
        }
        Some("ExpiredIteratorException") => KinesisError::ExpiredIterator { operation },
        Some("ResourceNotFoundException") => KinesisError::NotFound { operation, message },
        // ResourceInUse: the stream or consumer is busy (updating, another subscription still
        // active); the same call succeeds later.
        Some(
            "InternalFailure"
            | "InternalFailureException"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "ResourceInUseException",
        ) => KinesisError::Transient { operation, message },
        _ if status.is_some_and(|s| s >= 500) => KinesisError::Transient { operation, message },
        _ => KinesisError::Permanent { operation, message },
    }
}

/// One event of an enhanced fan-out subscription.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubscriptionEvent {
    /// Records in order.
    pub records: Vec<KinesisRecord>,
    /// Where to resubscribe from (AFTER_SEQUENCE_NUMBER); `None` once the shard ended.
    pub continuation_sequence_number: Option<String>,
    /// How far behind the tip of the shard the event is.
    pub millis_behind_latest: Option<i64>,
    /// The shards that replaced this one, when it ended.
    pub child_shards: Vec<String>,
}

/// An open SubscribeToShard session.
pub trait Subscription: Send {
    /// The next event; `Ok(None)` when the session ended (after ~5 minutes, as Kinesis ends them).
    fn next_event(&mut self) -> impl Future<Output = Result<Option<SubscriptionEvent>, KinesisError>> + Send;
}

/// The Kinesis operations TaxiPipeline uses.
pub trait KinesisApi: Send + Sync + 'static {
    /// An enhanced fan-out session.
    type Subscription: Subscription;
    /// Every shard of the stream (ListShards, all pages).
    fn list_shards(&self, stream: &str) -> impl Future<Output = Result<Vec<ShardInfo>, KinesisError>> + Send;
    /// A shard iterator at `position`.
    fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> impl Future<Output = Result<String, KinesisError>> + Send;
    /// Up to `limit` records from `iterator`.
    fn get_records(&self, iterator: &str, limit: i32)
    -> impl Future<Output = Result<RecordsPage, KinesisError>> + Send;
    /// Puts a batch (≤ 500 entries, ≤ 5 MiB), returning one outcome per entry in order.
    fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutEntry>,
    ) -> impl Future<Output = Result<Vec<PutOutcome>, KinesisError>> + Send;
    /// Whether the stream exists and is active.
    fn stream_state(&self, stream: &str) -> impl Future<Output = Result<StreamState, KinesisError>> + Send;
    /// Creates a provisioned stream with `shards` shards.
    fn create_stream(&self, stream: &str, shards: u32) -> impl Future<Output = Result<(), KinesisError>> + Send;
    /// Starts resharding an ACTIVE stream to `target_open_shards` open shards (UpdateShardCount,
    /// UNIFORM_SCALING); the stream is UPDATING until it is done. Kinesis allows at most ×2 or ÷2
    /// of the current open shard count per call and a few calls per rolling 24 hours.
    fn update_shard_count(
        &self,
        stream: &str,
        target_open_shards: u32,
    ) -> impl Future<Output = Result<(), KinesisError>> + Send;
    /// Registers (or finds) the enhanced fan-out consumer `name` and waits until it is active,
    /// returning its ARN.
    fn register_consumer(&self, stream: &str, name: &str) -> impl Future<Output = Result<String, KinesisError>> + Send;
    /// Deregisters the enhanced fan-out consumer `name` (DeregisterStreamConsumer); it goes away
    /// in the background. A consumer that does not exist, or whose stream does not, is success.
    fn deregister_consumer(&self, stream: &str, name: &str) -> impl Future<Output = Result<(), KinesisError>> + Send;
    /// Opens a SubscribeToShard session.
    fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> impl Future<Output = Result<Self::Subscription, KinesisError>> + Send;
}

/// [`KinesisApi`] over the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkKinesis {
    client: Client,
}

/// How to reach Kinesis.
#[derive(Clone, Debug, Default)]
pub struct KinesisEndpoint {
    /// AWS region (else the default chain's).
    pub region: Option<String>,
    /// A custom endpoint, e.g. a local emulator.
    pub endpoint_url: Option<String>,
}

impl SdkKinesis {
    /// A client with credentials from the default AWS chain (environment, profile, IRSA web
    /// identity, instance metadata).
    pub async fn connect(endpoint: &KinesisEndpoint) -> SdkKinesis {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &endpoint.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &endpoint.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        SdkKinesis { client: Client::new(&loader.load().await) }
    }

    /// Wraps an existing client.
    pub fn from_client(client: Client) -> SdkKinesis {
        SdkKinesis { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn record_of(r: &aws_sdk_kinesis::types::Record) -> KinesisRecord {
    KinesisRecord {
        sequence_number: r.sequence_number().to_owned(),
        partition_key: r.partition_key().unwrap_or_default().to_owned(),
        data: Bytes::copy_from_slice(r.data().as_ref()),
        arrival: r.approximate_arrival_timestamp().map(millis_of),
    }
}

/// A SubscribeToShard session of the SDK.
#[derive(Debug)]
pub struct SdkSubscription {
    session: aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput,
}

impl Subscription for SdkSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscriptionEvent>, KinesisError> {
        use aws_sdk_kinesis::types::SubscribeToShardEventStream as Stream;
        loop {
            let event = self.session.event_stream.recv().await.map_err(|e| {
                let message = DisplayErrorContext(&e).to_string();
                classify("SubscribeToShard", e.code(), None, message)
            })?;
            match event {
                None => return Ok(None),
                Some(Stream::SubscribeToShardEvent(event)) => {
                    let continuation = Some(event.continuation_sequence_number()).filter(|s| !s.is_empty());
                    return Ok(Some(SubscriptionEvent {
                        records: event.records().iter().map(record_of).collect(),
                        continuation_sequence_number: continuation.map(str::to_owned),
                        millis_behind_latest: Some(event.millis_behind_latest()),
                        child_shards: event.child_shards().iter().map(|c| c.shard_id().to_owned()).collect(),
                    }));
                }
                // Event types added to the API later: skip them.
                Some(_) => continue,
            }
        }
    }
}

fn millis_of(t: &DateTime) -> Millis {
    t.to_millis().unwrap_or(i64::MAX)
}

fn parse_hash(s: &str) -> u128 {
    s.parse().unwrap_or(0)
}

impl KinesisApi for SdkKinesis {
    type Subscription = SdkSubscription;

    async fn list_shards(&self, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            // The stream name and a next token are mutually exclusive in ListShards.
            let request = match &next_token {
                Some(token) => self.client.list_shards().next_token(token),
                None => self.client.list_shards().stream_name(stream),
            };
            let out = request.max_results(1000).send().await.map_err(|e| KinesisError::from_sdk("ListShards", &e))?;
            for s in out.shards() {
                let range = s.hash_key_range();
                shards.push(ShardInfo {
                    shard_id: s.shard_id().to_owned(),
                    parent: s.parent_shard_id().map(str::to_owned),
                    adjacent_parent: s.adjacent_parent_shard_id().map(str::to_owned),
                    starting_hash_key: range.map_or(0, |r| parse_hash(r.starting_hash_key())),
                    ending_hash_key: range.map_or(u128::MAX, |r| parse_hash(r.ending_hash_key())),
                    ending_sequence_number: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_owned),
                });
            }
            match out.next_token() {
                Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
                _ => break,
            }
        }
        shards.sort_by_key(|s| s.starting_hash_key);
        Ok(shards)
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<String, KinesisError> {
        let request = self.client.get_shard_iterator().stream_name(stream).shard_id(shard_id);
        let (kind, sequence_number, timestamp) = position.parts();
        let request = request
            .shard_iterator_type(kind)
            .set_starting_sequence_number(sequence_number.map(str::to_owned))
            .set_timestamp(timestamp);
        let out = request.send().await.map_err(|e| KinesisError::from_sdk("GetShardIterator", &e))?;
        out.shard_iterator().map(str::to_owned).ok_or_else(|| KinesisError::NotFound {
            operation: "GetShardIterator",
            message: format!("no iterator returned for {shard_id}"),
        })
    }

    async fn get_records(&self, iterator: &str, limit: i32) -> Result<RecordsPage, KinesisError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(|e| KinesisError::from_sdk("GetRecords", &e))?;
        let records = out.records().iter().map(record_of).collect();
        Ok(RecordsPage {
            records,
            next_iterator: out.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: out.millis_behind_latest(),
            child_shards: out.child_shards().iter().map(|c| c.shard_id().to_owned()).collect(),
        })
    }

    async fn put_records(&self, stream: &str, entries: Vec<PutEntry>) -> Result<Vec<PutOutcome>, KinesisError> {
        let mut request = self.client.put_records().stream_name(stream);
        for entry in entries {
            let mut builder = PutRecordsRequestEntry::builder()
                .partition_key(entry.partition_key)
                .data(Blob::new(entry.data.to_vec()));
            if let Some(key) = entry.explicit_hash_key {
                builder = builder.explicit_hash_key(key);
            }
            let built = builder.build().map_err(|e| KinesisError::Permanent {
                operation: "PutRecords",
                message: format!("failed to build an entry: {e}"),
            })?;
            request = request.records(built);
        }
        let out = request.send().await.map_err(|e| KinesisError::from_sdk("PutRecords", &e))?;
        Ok(out
            .records()
            .iter()
            .map(|r| match (r.error_code(), r.shard_id(), r.sequence_number()) {
                (None, Some(shard_id), Some(seq)) => {
                    PutOutcome::Stored { shard_id: shard_id.to_owned(), sequence_number: seq.to_owned() }
                }
                (code, _, _) => PutOutcome::Failed { code: code.unwrap_or("UnknownError").to_owned() },
            })
            .collect())
    }

    async fn stream_state(&self, stream: &str) -> Result<StreamState, KinesisError> {
        match self.client.describe_stream_summary().stream_name(stream).send().await {
            Ok(out) => Ok(match out.stream_description_summary() {
                Some(s) if *s.stream_status() == StreamStatus::Active => {
                    StreamState::Active { open_shards: u32::try_from(s.open_shard_count()).unwrap_or(0) }
                }
                Some(_) => StreamState::Busy,
                None => StreamState::Missing,
            }),
            Err(e) => match KinesisError::from_sdk("DescribeStreamSummary", &e) {
                KinesisError::NotFound { .. } => Ok(StreamState::Missing),
                other => Err(other),
            },
        }
    }

    async fn create_stream(&self, stream: &str, shards: u32) -> Result<(), KinesisError> {
        let count = i32::try_from(shards).unwrap_or(i32::MAX);
        self.client
            .create_stream()
            .stream_name(stream)
            .shard_count(count)
            .send()
            .await
            .map_err(|e| KinesisError::from_sdk("CreateStream", &e))?;
        Ok(())
    }

    async fn update_shard_count(&self, stream: &str, target_open_shards: u32) -> Result<(), KinesisError> {
        let target = i32::try_from(target_open_shards).unwrap_or(i32::MAX);
        self.client
            .update_shard_count()
            .stream_name(stream)
            .target_shard_count(target)
            .scaling_type(ScalingType::UniformScaling)
            .send()
            .await
            .map_err(|e| KinesisError::from_sdk("UpdateShardCount", &e))?;
        Ok(())
    }

    async fn register_consumer(&self, stream: &str, name: &str) -> Result<String, KinesisError> {
        use aws_sdk_kinesis::types::ConsumerStatus;
        let summary = self
            .client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| KinesisError::from_sdk("DescribeStreamSummary", &e))?;
        let stream_arn = summary.stream_description_summary().map(|s| s.stream_arn().to_owned()).unwrap_or_default();
        // Registering twice fails with ResourceInUse: then the consumer exists and is described.
        if let Err(e) = self.client.register_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await
        {
            let error = KinesisError::from_sdk("RegisterStreamConsumer", &e);
            if e.code() != Some("ResourceInUseException") {
                return Err(error);
            }
        }
        for _ in 0..600 {
            let out = self
                .client
                .describe_stream_consumer()
                .stream_arn(&stream_arn)
                .consumer_name(name)
                .send()
                .await
                .map_err(|e| KinesisError::from_sdk("DescribeStreamConsumer", &e))?;
            if let Some(c) = out.consumer_description()
                && *c.consumer_status() == ConsumerStatus::Active
            {
                return Ok(c.consumer_arn().to_owned());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(KinesisError::Transient {
            operation: "RegisterStreamConsumer",
            message: format!("consumer {name} did not become active"),
        })
    }

    async fn deregister_consumer(&self, stream: &str, name: &str) -> Result<(), KinesisError> {
        let summary = match self.client.describe_stream_summary().stream_name(stream).send().await {
            Ok(summary) => summary,
            Err(e) => {
                return match KinesisError::from_sdk("DescribeStreamSummary", &e) {
                    // A deleted stream took its consumers with it.
                    KinesisError::NotFound { .. } => Ok(()),
                    other => Err(other),
                };
            }
        };
        let stream_arn = summary.stream_description_summary().map(|s| s.stream_arn().to_owned()).unwrap_or_default();
        match self.client.deregister_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) => match KinesisError::from_sdk("DeregisterStreamConsumer", &e) {
                KinesisError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<SdkSubscription, KinesisError> {
        use aws_sdk_kinesis::types::StartingPosition as SdkPosition;
        let (kind, sequence_number, timestamp) = position.parts();
        let start = SdkPosition::builder()
            .r#type(kind)
            .set_sequence_number(sequence_number.map(str::to_owned))
            .set_timestamp(timestamp)
            .build()
            .map_err(|e| KinesisError::Permanent { operation: "SubscribeToShard", message: e.to_string() })?;
        let out = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(start)
            .send()
            .await
            .map_err(|e| KinesisError::from_sdk("SubscribeToShard", &e))?;
        Ok(SdkSubscription { session: out })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_throttling_expiry_and_server_errors() {
        let c = |code: Option<&str>, status| classify("GetRecords", code, status, "m".to_owned());
        for throttle in ["ProvisionedThroughputExceededException", "LimitExceededException", "KMSThrottlingException"] {
            let e = c(Some(throttle), Some(400));
            assert!(e.is_retryable(), "{throttle}");
            assert_eq!(e.category(), "throttled");
        }
        assert_eq!(
            c(Some("ExpiredIteratorException"), Some(400)),
            KinesisError::ExpiredIterator { operation: "GetRecords" }
        );
        assert_eq!(c(None, Some(503)).category(), "transient");
        assert_eq!(c(Some("InternalFailure"), Some(500)).category(), "transient");
        assert_eq!(c(Some("ResourceNotFoundException"), Some(400)).category(), "not_found");
        assert!(c(Some("ResourceInUseException"), Some(400)).is_retryable());
        let denied = c(Some("AccessDeniedException"), Some(400));
        assert!(!denied.is_retryable());
        assert_eq!(denied.category(), "permanent");
    }

    #[test]
    fn classifies_the_refusals_of_update_shard_count() {
        let c = |code: &str| classify("UpdateShardCount", Some(code), Some(400), "m".to_owned());
        // Beyond ×2 or below ÷2 of the open shards: the same call never succeeds.
        assert_eq!(c("InvalidArgumentException").category(), "permanent");
        // The stream is not ACTIVE (still UPDATING): the same call succeeds later.
        assert!(c("ResourceInUseException").is_retryable());
        // Too many calls in 24 hours, or too many streams updating at once.
        assert_eq!(c("LimitExceededException").category(), "throttled");
    }

    #[test]
    fn shard_parents_list_both_merge_parents() {
        let s = ShardInfo {
            shard_id: "shardId-000000000009".to_owned(),
            parent: Some("shardId-000000000001".to_owned()),
            adjacent_parent: Some("shardId-000000000002".to_owned()),
            starting_hash_key: 0,
            ending_hash_key: 10,
            ending_sequence_number: None,
        };
        assert_eq!(s.parents().collect::<Vec<_>>(), vec!["shardId-000000000001", "shardId-000000000002"]);
        assert!(s.is_open());
    }
}

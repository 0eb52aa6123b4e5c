//! `spec.stream`: the Kinesis data stream a pipeline reads, how it starts and how it is consumed.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use taxi_core::settings::{self, ConsumerType};

/// The Kinesis data stream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// Name of the Kinesis data stream (1 to 128 characters: letters, digits, `_`, `-`, `.`).
    /// Required and immutable: a pipeline's checkpoints only make sense for its own stream.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z0-9_.-]+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("stream.name is immutable"))]
    pub name: String,
    /// AWS region of the stream, like `us-east-1`. Default: the region the pods' AWS SDK
    /// configuration resolves (environment, instance metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Kinesis endpoint URL, for emulators such as kinesis-mock or LocalStack
    /// (`http://kinesis-mock:4567`). Default: the AWS endpoint of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Desired number of open shards, 1 to 10000. Default 4. Only acted on when `manage` is true:
    /// then the operator creates the stream with this many shards and reshards when it changes.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 10000))]
    pub shards: i32,
    /// Whether the operator owns the stream: creates it when missing and reshards it
    /// (UpdateShardCount) when `shards` changes. Default false: the stream must exist and its shard
    /// count is left alone.
    #[serde(default)]
    pub manage: bool,
    /// Where a shard with nothing read yet starts: `trim-horizon` (default, the oldest record
    /// kept), `latest` (records that arrive after a worker first claims the shard) or an RFC 3339
    /// timestamp such as `2016-01-01T00:00:00Z` (records that arrived at or after it). The start
    /// is fixed in the shard's checkpoint at its first claim, so a restart never skips a record;
    /// shards created by a reshard always start at their oldest record.
    #[serde(default = "default_start_position")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(
        "self == 'trim-horizon' || self == 'latest' || \
         (self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$') \
         && timestamp(self) >= timestamp('1970-01-01T00:00:00Z'))"
    ).message("stream.startPosition must be trim-horizon, latest or an RFC 3339 timestamp like 2016-01-01T00:00:00Z"))]
    pub start_position: String,
    /// How records are read: `polling` (default, GetRecords; shares the shard's 2 MB/s read limit
    /// with other consumers) or `efo` (enhanced fan-out, SubscribeToShard; a dedicated 2 MB/s pipe
    /// per shard, billed per consumer-shard hour). The operator deregisters the consumer it names
    /// (see `efoConsumerName`) when the pipeline is deleted or switches to `polling`, once every
    /// worker has restarted with polling.
    #[serde(default)]
    pub consumer: ConsumerType,
    /// Name of the enhanced fan-out consumer registered on the stream when `consumer` is `efo`.
    /// Default: the pipeline's namespace and name, `<namespace>.<name>` (a namespace holds no dot,
    /// so two pipelines never share one); the operator deregisters that one when it is no longer
    /// used. A consumer named here may be shared, so the operator never deregisters it: do so
    /// yourself (DeregisterStreamConsumer) once nothing reads through it. Letters, digits, `_` and
    /// `-` only: names with a dot are the operator's, so that no pipeline can name (and come to
    /// depend on) a consumer the operator deregisters when another pipeline goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new(EFO_CONSUMER_NAME_RULE).message(EFO_CONSUMER_NAME_MESSAGE))]
    pub efo_consumer_name: Option<String>,
}

/// A consumer name of the author's: Kinesis' alphabet without the dot.
const EFO_CONSUMER_NAME_RULE: &str = "self.matches('^[a-zA-Z0-9_-]+$')";
/// Why.
const EFO_CONSUMER_NAME_MESSAGE: &str = "stream.efoConsumerName may hold only letters, digits, '_' and '-': \
    names with a dot are reserved for the consumers the operator names <namespace>.<name>";

/// Why `name` cannot be a `spec.stream.efoConsumerName`, in the CEL rule's words (the operator checks
/// again for pipelines created before the rule), or `None`.
pub fn efo_consumer_name_problem(name: &str) -> Option<&'static str> {
    let ok = (1..=128).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (!ok).then_some(EFO_CONSUMER_NAME_MESSAGE)
}

fn default_shards() -> i32 {
    4
}
fn default_start_position() -> String {
    settings::DEFAULT_START_POSITION.to_owned()
}

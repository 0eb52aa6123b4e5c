//! `spec.checkpoint`: where in S3 the workers checkpoint their shards, how often and how many
//! versions they keep.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use taxi_core::{duration, settings};

use super::{DURATION_PATTERN, POSITIVE_DURATION};

/// Checkpoint storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// S3 location of the pipeline's checkpoints, `s3://bucket` or `s3://bucket/prefix`. Required.
    /// Each shard gets one object below it.
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')")
        .message("checkpoint.uri must be an S3 URI with a bucket, like s3://bucket/prefix"))]
    pub uri: String,
    /// How often each worker checkpoints its shards, as a Go duration. Default `10s`. After a
    /// crash at most this much input is read again (results stay exactly-once in effect).
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION).message("checkpoint.interval must be a positive duration"))]
    pub interval: String,
    /// Older checkpoint versions kept per shard besides the current one, 0 to 100. Default 3.
    #[serde(default = "default_retain")]
    #[schemars(range(min = 0, max = 100))]
    pub retain: i32,
    /// Whether the pipeline's checkpoints are deleted when the TaxiPipeline is deleted. Default
    /// false: they stay, and a pipeline re-created with the same name and URI resumes from them.
    /// When true the operator holds a finalizer on the TaxiPipeline until the objects are gone.
    #[serde(default)]
    pub cleanup_on_delete: bool,
    /// S3 endpoint URL, for S3-compatible stores and emulators (`http://minio:9000`).
    /// Default: the AWS endpoint of the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_endpoint_url: Option<String>,
    /// Whether to address buckets as `endpoint/bucket` instead of `bucket.endpoint`, as most
    /// S3-compatible stores and emulators need. Default false.
    #[serde(default)]
    pub s3_force_path_style: bool,
}

fn default_checkpoint_interval() -> String {
    duration::format(settings::DEFAULT_CHECKPOINT_INTERVAL)
}
fn default_retain() -> i32 {
    i32::try_from(settings::DEFAULT_RETAIN).unwrap_or(i32::MAX)
}

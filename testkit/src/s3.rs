//! Helpers for tests against the S3 emulator (moto, started by `.ci/services.sh`): a client,
//! fresh buckets, and reading objects back.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use bytes::Bytes;

/// The emulator's endpoint, or `None` (with a message) outside CI when it is not running.
pub fn emulator() -> Option<String> {
    crate::services::service_endpoint(crate::services::S3_ENDPOINT)
}

/// A client for the emulator: path-style requests, static credentials (any are accepted there).
pub fn client(endpoint: &str) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "static"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .build(),
    )
}

/// A fresh bucket, randomly named after `prefix`.
pub async fn fresh_bucket(s3: &aws_sdk_s3::Client, prefix: &str) -> String {
    let bucket = format!("{prefix}-{:016x}", fastrand::u64(..));
    s3.create_bucket().bucket(&bucket).send().await.expect("create bucket");
    bucket
}

/// An object's bytes, or `None` when it cannot be read (absent, or S3 unreachable).
pub async fn read_object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Option<Bytes> {
    let object = s3.get_object().bucket(bucket).key(key).send().await.ok()?;
    Some(object.body.collect().await.ok()?.into_bytes())
}

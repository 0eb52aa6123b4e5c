//! Helpers for tests against the S3 emulator (moto, started by `.ci/services.sh`).

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};

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

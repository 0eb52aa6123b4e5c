//! How the adapters reach S3: [`S3Settings`] (endpoint, addressing, region), the client built
//! from them, and a readable, classified description of an SDK error. The checkpoint store and
//! the S3 inputs build their clients here, so both reach the same server the same way.

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use taxi_core::settings::WorkerSettings;

/// How to reach S3 (or an S3-compatible server); credentials come from the default AWS chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Settings {
    /// Endpoint of an S3-compatible server (e.g. `http://127.0.0.1:9000`); `None`: AWS S3.
    pub endpoint_url: Option<String>,
    /// Address buckets as `endpoint/bucket/key` instead of `bucket.endpoint/key` (most S3-compatible servers).
    pub force_path_style: bool,
    /// AWS region; `None`: from the AWS configuration chain, else `us-east-1` when `endpoint_url` is set.
    pub region: Option<String>,
}

/// Neither the settings nor the AWS configuration chain name a region, and no endpoint is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no AWS region is configured: set AWS_REGION or the S3 region setting")]
pub struct NoRegion;

impl S3Settings {
    /// How a pipeline's workers reach S3 (the stream's region signs S3 requests too).
    pub fn for_pipeline(settings: &WorkerSettings) -> S3Settings {
        S3Settings {
            endpoint_url: settings.checkpoint.s3_endpoint_url.clone(),
            force_path_style: settings.checkpoint.s3_force_path_style,
            region: settings.stream.region.clone(),
        }
    }

    /// The default AWS configuration chain (credentials, region), with the region of these
    /// settings when they name one.
    pub async fn load_sdk_config(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &self.region {
            loader = loader.region(Region::new(region.clone()));
        }
        loader.load().await
    }

    /// A client using `sdk` (credentials, region) overridden by these settings, with `timeouts`.
    /// The SDK's own retries are off: every caller retries by its own rules (a fenced write never).
    /// Without a region anywhere, an endpoint override implies `us-east-1`; AWS itself needs one.
    pub fn client(&self, sdk: &aws_config::SdkConfig, timeouts: TimeoutConfig) -> Result<aws_sdk_s3::Client, NoRegion> {
        let mut config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(self.force_path_style)
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(region) = &self.region {
            config = config.region(Region::new(region.clone()));
        } else if sdk.region().is_none() {
            if self.endpoint_url.is_none() {
                return Err(NoRegion);
            }
            config = config.region(Region::new("us-east-1"));
        }
        if let Some(url) = &self.endpoint_url {
            config = config.endpoint_url(url);
        }
        Ok(aws_sdk_s3::Client::from_conf(config.build()))
    }
}

/// What [`is_bucket_name`] accepts, for messages.
pub(crate) const BUCKET_NAMES: &str =
    "bucket names are 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit";

/// True for a valid S3 bucket name (see [`BUCKET_NAMES`]).
pub(crate) fn is_bucket_name(bucket: &str) -> bool {
    (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A readable cause and whether it is transient: 5xx, 429, S3's throttling and timeout codes,
/// timeouts, connection failures and unreadable responses are; client errors are not.
pub(crate) fn describe<E>(error: &SdkError<E>) -> (String, bool)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let err = service.err();
            let code = err.code().unwrap_or("unknown error");
            let retryable =
                status >= 500 || status == 429 || matches!(code, "SlowDown" | "RequestTimeout" | "InternalError");
            let text = err.message().map_or_else(String::new, |m| format!(": {m}"));
            (format!("HTTP {status} {code}{text}"), retryable)
        }
        SdkError::TimeoutError(_) => (format!("timed out: {}", chain(error)), true),
        SdkError::DispatchFailure(failure) => {
            let what = if failure.is_timeout() { "timed out" } else { "could not reach S3" };
            (format!("{what}: {}", chain(error)), !failure.is_user())
        }
        SdkError::ResponseError(_) => (format!("unreadable response: {}", chain(error)), true),
        _ => (chain(error), false),
    }
}

/// An error and its sources, joined by ": " (without the Debug dump `DisplayErrorContext` appends).
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.ends_with(&next) {
            text = format!("{text}: {next}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_client_needs_a_region_without_an_endpoint() {
        let sdk = aws_config::SdkConfig::builder().behavior_version(BehaviorVersion::latest()).build();
        let none = TimeoutConfig::builder().build();
        assert_eq!(S3Settings::default().client(&sdk, none.clone()).err(), Some(NoRegion));
        let local = S3Settings { endpoint_url: Some("http://127.0.0.1:1".into()), ..S3Settings::default() };
        let client = local.client(&sdk, none.clone()).expect("an endpoint implies us-east-1");
        assert_eq!(client.config().region().map(|r| r.as_ref()), Some("us-east-1"));
        let named = S3Settings { region: Some("eu-west-1".into()), ..S3Settings::default() };
        let client = named.client(&sdk, none).expect("a named region");
        assert_eq!(client.config().region().map(|r| r.as_ref()), Some("eu-west-1"));
    }
}

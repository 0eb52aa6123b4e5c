//! Inputs in S3, and the resolution of an input argument into the objects to read.
//!
//! - [`InputResolver`]: turns `s3://bucket/key`, `s3://bucket/prefix/`, `s3://bucket/prefix/*.parquet`
//!   or a local path into a list of [`InputObject`]s; the objects of a prefix or pattern come in
//!   key order;
//! - [`S3Object`]: one object, read as a blocking stream (resumed where it breaks off) or by ranges;
//! - [`InputLocation`], [`KeyGlob`]: the parsed argument and the key pattern;
//! - [`S3InputError`]: every failure, naming the URI and what to check.
//!
//! Listing needs `s3:ListBucket` on the bucket; reading needs `s3:GetObject` on the objects.

mod error;
mod glob;
mod location;
mod object;
mod retry;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use taxi_core::input::{InputObject, LocalFile};
use tokio::runtime::Handle;
use tokio::sync::OnceCell;

pub use error::S3InputError;
pub use glob::KeyGlob;
pub use location::{InputLocation, KeySelection};
pub use object::S3Object;
pub use retry::ReadRetry;

use crate::retry::Backoff;
use crate::s3::{S3Settings, describe};

/// Time allowed to open a connection to S3.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for one attempt of a request until its answer starts (a body streams apart).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a denied HEAD of one key needs: S3 answers a missing key with 403 to whoever may not list.
const HEAD_PERMISSION: &str =
    "s3:GetObject on the object, and s3:ListBucket on the bucket to tell a missing key from a denied one";

/// One object found by a listing or a HEAD.
struct Found {
    key: String,
    size: u64,
    etag: Option<String>,
}

/// Resolves input arguments into objects. The S3 client is built on the first `s3://` argument.
#[derive(Debug)]
pub struct InputResolver {
    settings: S3Settings,
    handle: Handle,
    sdk: Option<aws_config::SdkConfig>,
    retry: ReadRetry,
    client: OnceCell<aws_sdk_s3::Client>,
}

impl InputResolver {
    /// A resolver reaching S3 as `settings` say, with credentials from the default AWS chain.
    /// The objects it returns await their requests on `handle`'s runtime, which must be a
    /// multi-thread runtime; they are read from any thread but those of a current-thread runtime.
    pub fn new(settings: S3Settings, handle: Handle) -> InputResolver {
        InputResolver { settings, handle, sdk: None, retry: ReadRetry::default(), client: OnceCell::new() }
    }

    /// Uses `sdk` (credentials, region) instead of the default AWS chain.
    pub fn with_sdk_config(mut self, sdk: aws_config::SdkConfig) -> InputResolver {
        self.sdk = Some(sdk);
        self
    }

    /// Retries reads by `retry` instead of [`ReadRetry::default`].
    pub fn with_retry(mut self, retry: ReadRetry) -> InputResolver {
        self.retry = retry;
        self
    }

    /// The objects every argument names, in the order of the arguments.
    pub async fn resolve_all<S: AsRef<str>>(&self, args: &[S]) -> Result<Vec<Arc<dyn InputObject>>, S3InputError> {
        let mut objects = Vec::new();
        for arg in args {
            objects.extend(self.resolve(arg.as_ref()).await?);
        }
        Ok(objects)
    }

    /// The objects `arg` names: one local file, one S3 object, or the S3 objects of a prefix or
    /// pattern in key order (at least one, else [`S3InputError::NoMatch`]).
    pub async fn resolve(&self, arg: &str) -> Result<Vec<Arc<dyn InputObject>>, S3InputError> {
        let (bucket, selection) = match InputLocation::parse(arg)? {
            InputLocation::Local(path) => return Ok(vec![Arc::new(LocalFile::new(path))]),
            InputLocation::S3 { bucket, selection } => (bucket, selection),
        };
        let client = self.client(arg).await?;
        let found = match &selection {
            KeySelection::Key(key) => vec![self.head(client, &bucket, key).await?],
            KeySelection::Prefix(prefix) => self.list(client, &bucket, prefix).await?,
            KeySelection::Glob { glob, .. } => {
                let mut found = self.list(client, &bucket, selection.listed_prefix()).await?;
                found.retain(|object| glob.matches(&object.key));
                found
            }
        };
        if found.is_empty() {
            return Err(S3InputError::NoMatch {
                uri: arg.to_owned(),
                listed: format!("s3://{bucket}/{}", selection.listed_prefix()),
            });
        }
        Ok(found
            .into_iter()
            .map(|object| {
                let location = (bucket.clone(), object.key);
                let s3 =
                    S3Object::new(client.clone(), self.handle.clone(), self.retry, location, object.size, object.etag);
                Arc::new(s3) as Arc<dyn InputObject>
            })
            .collect())
    }

    async fn client(&self, uri: &str) -> Result<&aws_sdk_s3::Client, S3InputError> {
        self.client
            .get_or_try_init(|| async {
                let loaded;
                let sdk = match &self.sdk {
                    Some(sdk) => sdk,
                    None => {
                        loaded = self.settings.load_sdk_config().await;
                        &loaded
                    }
                };
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build();
                self.settings.client(sdk, timeouts).map_err(|_| S3InputError::NoRegion { uri: uri.to_owned() })
            })
            .await
    }

    /// The size and version of one object.
    async fn head(&self, client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Found, S3InputError> {
        let uri = format!("s3://{bucket}/{key}");
        let head =
            self.retrying("read", &uri, HEAD_PERMISSION, || client.head_object().bucket(bucket).key(key).send()).await;
        match head {
            Ok(head) => Ok(Found {
                key: key.to_owned(),
                size: head.content_length().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
                etag: head.e_tag().map(str::to_owned),
            }),
            // A HEAD answers a bare 404 whatever is missing: ask the bucket which.
            Err(Missing) => match client.head_bucket().bucket(bucket).send().await {
                Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                    Err(S3InputError::NoSuchBucket { uri, bucket: bucket.to_owned() })
                }
                _ => Err(S3InputError::NoSuchObject { uri }),
            },
            Err(Failed(error)) => Err(error),
        }
    }

    /// Every object under `prefix` but folder markers (keys ending in `/`), sorted by key.
    async fn list(&self, client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Result<Vec<Found>, S3InputError> {
        let uri = format!("s3://{bucket}/{prefix}");
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retrying("list", &uri, "s3:ListBucket on the bucket", || {
                    client.list_objects_v2().bucket(bucket).prefix(prefix).set_continuation_token(token.clone()).send()
                })
                .await
                .map_err(|failure| match failure {
                    Missing => S3InputError::NoSuchBucket { uri: uri.clone(), bucket: bucket.to_owned() },
                    Failed(error) => error,
                })?;
            for object in page.contents() {
                let Some(key) = object.key().filter(|k| !k.ends_with('/')) else { continue };
                let size = object.size().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
                found.push(Found { key: key.to_owned(), size, etag: object.e_tag().map(str::to_owned) });
            }
            token = page.next_continuation_token().map(str::to_owned);
            if !page.is_truncated().unwrap_or(false) || token.is_none() {
                break;
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }

    /// Sends a request until it succeeds, fails for good, or its transient failures run out of
    /// attempts. A 404 is [`Missing`]; a 403 names the `permission` needed.
    async fn retrying<T, E, F, Fut>(
        &self,
        action: &'static str,
        uri: &str,
        permission: &'static str,
        mut send: F,
    ) -> Result<T, Failure>
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, aws_sdk_s3::error::SdkError<E>>>,
    {
        let mut backoff = Backoff::new(self.retry.backoff);
        loop {
            let error = match send().await {
                Ok(output) => return Ok(output),
                Err(error) => error,
            };
            let (message, retryable) = describe(&error);
            match error.raw_response().map(|r| r.status().as_u16()) {
                Some(404) => return Err(Missing),
                Some(403) => {
                    return Err(Failed(S3InputError::AccessDenied {
                        action,
                        uri: uri.to_owned(),
                        permission,
                        message,
                    }));
                }
                _ if retryable && backoff.failures() + 1 < self.retry.attempts => {
                    let delay = backoff.next_delay();
                    tracing::warn!(input = uri, action, ?delay, %message, "an S3 request for an input failed; trying again");
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    let attempts = backoff.failures() + 1;
                    let message =
                        if retryable { format!("{message} (gave up after {attempts} attempts)") } else { message };
                    return Err(Failed(S3InputError::Request { action, uri: uri.to_owned(), message }));
                }
            }
        }
    }
}

/// Why [`InputResolver::retrying`] returned no answer.
enum Failure {
    /// HTTP 404: the bucket or the object is not there.
    Missing,
    /// Any other failure.
    Failed(S3InputError),
}

use Failure::{Failed, Missing};

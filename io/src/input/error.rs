//! [`S3InputError`]: why an input argument could not be resolved into objects, or an S3 object
//! could not be read. Each message names the URI and says what to check.

/// Failures of S3 inputs.
#[derive(Debug, thiserror::Error)]
pub enum S3InputError {
    /// The argument looks like a URI but is not one this resolver reads.
    #[error(
        "invalid input {uri:?}: {reason} (expected s3://bucket/key, s3://bucket/prefix/, s3://bucket/prefix/*.parquet \
         or a local path)"
    )]
    InvalidUri {
        /// The argument as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No region for the S3 client.
    #[error(
        "cannot read {uri}: no AWS region is configured: set AWS_REGION, or --s3-endpoint-url for an S3-compatible server"
    )]
    NoRegion {
        /// The input that needed the client.
        uri: String,
    },
    /// The bucket does not exist.
    #[error(
        "cannot read {uri}: the bucket {bucket} does not exist; check the name, and --s3-endpoint-url when the data is \
         on an S3-compatible server"
    )]
    NoSuchBucket {
        /// The input.
        uri: String,
        /// Its bucket.
        bucket: String,
    },
    /// A single key that names no object.
    #[error("cannot read {uri}: there is no such object; to read every object under a prefix, end the URI with '/'")]
    NoSuchObject {
        /// The input.
        uri: String,
    },
    /// A prefix or pattern that no object matches.
    #[error("no object matches {uri}: list the keys with `aws s3 ls {listed}` and check the prefix or pattern")]
    NoMatch {
        /// The input.
        uri: String,
        /// The URI of the listed prefix.
        listed: String,
    },
    /// S3 refused the request: the credentials lack a permission.
    #[error("cannot {action} {uri}: access denied ({message}); the credentials need {permission}")]
    AccessDenied {
        /// What was attempted, e.g. "list".
        action: &'static str,
        /// The object or prefix.
        uri: String,
        /// The IAM action the request needs, e.g. `s3:ListBucket on the bucket`.
        permission: &'static str,
        /// S3's answer.
        message: String,
    },
    /// Any other failed request, after retries when the failure was transient.
    #[error("failed to {action} {uri}: {message}")]
    Request {
        /// What was attempted, e.g. "read".
        action: &'static str,
        /// The object or prefix.
        uri: String,
        /// The cause, with the SDK's error chain.
        message: String,
    },
    /// Reading an object's body kept failing at the same place.
    #[error(
        "failed to read {uri} at byte {offset} of {size}: {message} (gave up after {attempts} attempts in a row \
         without progress; check the connection to S3)"
    )]
    Interrupted {
        /// The object.
        uri: String,
        /// How far the read had come.
        offset: u64,
        /// The object's size.
        size: u64,
        /// Failed attempts in a row.
        attempts: u32,
        /// The last cause.
        message: String,
    },
    /// The object was replaced while it was being read: its parts would not fit together.
    #[error("{uri} changed while it was being read (its ETag is no longer {etag}); read it again")]
    Changed {
        /// The object.
        uri: String,
        /// The version first seen.
        etag: String,
    },
}

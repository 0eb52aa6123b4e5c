//! [`StoreError`]: how a checkpoint store (a directory or S3) fails to read, write, list or delete
//! its objects. What the objects hold is the caller's business, and so are its decoding errors.

use std::path::PathBuf;

/// Failures of a checkpoint store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URI is not understood.
    #[error("unsupported checkpoint URI {0:?}: expected file:///path or a directory path")]
    UnsupportedUri(String),
    /// A key that would escape the store's root.
    #[error("invalid checkpoint key {0:?}")]
    BadKey(String),
    /// Another writer changed the object since we last read or wrote it (fencing).
    #[error("checkpoint {key} was changed by another writer")]
    Conflict {
        /// The contested key.
        key: String,
    },
    /// A checkpoint URI that cannot be used (see [`CheckpointStore::from_uri`](super::CheckpointStore::from_uri)).
    #[error("invalid checkpoint URI {uri:?}: {reason} (expected s3://bucket/prefix, file:///path or a directory path)")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An S3 request failed (after retries when `retryable`); fencing failures are [`Self::Conflict`].
    #[error(
        "failed to {action} {uri}: {message}{}",
        if *retryable { " (transient: the caller may retry later)" } else { "" }
    )]
    S3 {
        /// What was attempted, e.g. "write checkpoint".
        action: &'static str,
        /// The object or prefix, as `s3://bucket/key`.
        uri: String,
        /// The cause, with the SDK's error chain.
        message: String,
        /// Whether the failure was transient (5xx, timeout, connection error), so a later retry may succeed.
        retryable: bool,
    },
    /// Filesystem failure.
    #[error("failed to {action} checkpoint {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

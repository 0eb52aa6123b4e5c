//! Failures of the OpenSearch sink, with a bounded category for metrics.

use std::path::PathBuf;
use std::time::Duration;

/// Failures of the OpenSearch sink.
#[derive(Debug, thiserror::Error)]
pub enum OpenSearchError {
    /// The URL does not parse.
    #[error("invalid OpenSearch URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        source: ::opensearch::Error,
    },
    /// The CA certificate file cannot be read.
    #[error("cannot read the OpenSearch CA certificate {path}: {source}")]
    CaCertRead {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The CA certificate file is not PEM certificates.
    #[error("invalid OpenSearch CA certificate {path} (expected PEM): {source}")]
    CaCertParse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: ::opensearch::Error,
    },
    /// The HTTP client cannot be built.
    #[error("cannot build the OpenSearch client: {source}")]
    Client {
        /// Why.
        source: ::opensearch::Error,
    },
    /// SigV4 was asked for but the AWS config lacks something.
    #[error("SigV4 for OpenSearch: {reason}")]
    AwsConfig {
        /// What is missing.
        reason: &'static str,
    },
    /// A request did not get an HTTP answer (connection refused, reset, timed out, TLS, signing).
    #[error("OpenSearch {operation} request to {url} failed: {source}")]
    Request {
        /// What was being done (`bulk`, `put template`, `search`, …).
        operation: &'static str,
        /// The cluster URL.
        url: String,
        /// Why.
        source: ::opensearch::Error,
    },
    /// OpenSearch answered with an error status.
    #[error("OpenSearch {operation} answered {status}: {error_type}: {reason}")]
    Status {
        /// What was being done.
        operation: &'static str,
        /// The HTTP status.
        status: u16,
        /// The OpenSearch error type (`index_not_found_exception`, …), or `unknown`.
        error_type: String,
        /// The OpenSearch reason, or the start of the body.
        reason: String,
    },
    /// OpenSearch answered something that does not parse.
    #[error("unexpected OpenSearch {operation} response: {source}")]
    Response {
        /// What was being done.
        operation: &'static str,
        /// Why.
        source: serde_json::Error,
    },
    /// The cluster stayed unreachable for the whole start-up timeout.
    #[error("OpenSearch at {url} still unreachable after {waited:?} ({attempts} attempts); last error: {last}")]
    Unavailable {
        /// The cluster URL.
        url: String,
        /// How long start-up waited.
        waited: Duration,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<OpenSearchError>,
    },
    /// A document cannot be serialized.
    #[error("cannot serialize partial document {id}: {source}")]
    Serialize {
        /// The document id.
        id: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The sink's metrics cannot be registered (e.g. twice in one registry).
    #[error("cannot register the OpenSearch sink metrics: {source}")]
    Metrics {
        /// Why.
        source: prometheus::Error,
    },
    /// The sink's background task is gone.
    #[error("the OpenSearch sink's background task stopped")]
    Closed,
    /// The index prefix cannot start an OpenSearch index name.
    #[error(
        "invalid OpenSearch index prefix {prefix:?}: use lowercase letters, digits, '-', '_' and '.', not starting with '-', '_' or '.'"
    )]
    InvalidIndexPrefix {
        /// The prefix.
        prefix: String,
    },
}

impl OpenSearchError {
    /// A bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            OpenSearchError::InvalidUrl { .. }
            | OpenSearchError::Client { .. }
            | OpenSearchError::InvalidIndexPrefix { .. } => "config",
            OpenSearchError::CaCertRead { .. } | OpenSearchError::CaCertParse { .. } => "tls",
            OpenSearchError::AwsConfig { .. } => "auth",
            OpenSearchError::Request { source, .. } if source.is_timeout() => "timeout",
            OpenSearchError::Request { .. } => "connection",
            OpenSearchError::Status { status: 401 | 403, .. } => "auth",
            OpenSearchError::Status { status: 429, .. } => "throttled",
            OpenSearchError::Status { status, .. } if *status >= 500 => "server",
            OpenSearchError::Status { .. } => "client",
            OpenSearchError::Response { .. } => "response",
            OpenSearchError::Unavailable { .. } => "unavailable",
            OpenSearchError::Serialize { .. } => "serialize",
            OpenSearchError::Metrics { .. } => "metrics",
            OpenSearchError::Closed => "closed",
        }
    }

    /// Whether trying again later may succeed (no answer, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            OpenSearchError::Request { .. } | OpenSearchError::Unavailable { .. } => true,
            OpenSearchError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

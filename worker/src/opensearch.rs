//! The OpenSearch sink: partial documents go to `{prefix}-hot-spots` and
//! `{prefix}-airport-trips` through batched `_bulk` requests, and the merged view reads them back.
//!
//! - **Ids.** The `_id` of a document is [`PartialDocument::id`] (deterministic, so a replay
//!   overwrites); ids longer than [`MAX_ID_BYTES`] are shortened by [`document_id`].
//! - **Versions.** Documents are indexed with external versioning ([`PartialDocument::version`]):
//!   OpenSearch stores a document only over a lower version, so a late write of older content
//!   (a zombie worker, a retried request) cannot replace newer content. Its 409 answer means a
//!   same-or-newer version is stored: the document counts as acknowledged.
//! - **Batching.** [`OpenSearchSink::write`] only enqueues; a background task sends `_bulk`
//!   requests when [`BulkSettings::max_docs`] or [`BulkSettings::max_bytes`] are reached, when the
//!   oldest queued document waited [`BulkSettings::max_delay`], or at once when a flush waits, with
//!   at most [`BulkSettings::max_in_flight`] requests at a time.
//! - **Ordering.** At most one version of an id is in flight: a newer version waits until the
//!   older one is answered, and replaces a version that is still queued, so a retried older
//!   version never overwrites a newer one.
//! - **Back-pressure.** At most [`BulkSettings::max_buffered_docs`] documents are unacknowledged;
//!   `write` waits for room (the time is counted in `taxi_sink_backpressure_wait_seconds_total`).
//! - **Errors.** Items answered 429, 5xx or `es_rejected_execution_exception` are retried with
//!   back-off; any other item error, a whole request answered 400 and a single document answered
//!   413 are refusals: counted (by a bounded `reason`), logged and stored as dead letters
//!   ([`crate::dead_letter`]) without holding up the other documents. A refused document is done
//!   for a flush only once its dead letter is durable. Whole requests that fail (connection refused, 429, 5xx, …)
//!   are retried with exponential back-off and jitter for as long as it takes: documents stay
//!   buffered (bounded by the back-pressure) and [`OpenSearchSink::flush`] waits for them, so a
//!   checkpoint is never written before the documents it covers are acknowledged.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use ::opensearch::OpenSearch;
use ::opensearch::auth::Credentials;
use ::opensearch::cert::{Certificate, CertificateValidation};
use ::opensearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use ::opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use ::opensearch::http::{Method, Url};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use bytes::{BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};
use prometheus::{Counter, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, TryAcquireError, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::dead_letter::{DeadLetter, DeadLetterStore};
use crate::sink::{AnalysisKind, PartialDocument, merge_documents};
use taxi_core::analysis::MergedResult;
use taxi_core::config::EngineConfig;

/// The longest `_id` OpenSearch accepts, in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// How many bytes of a long id [`document_id`] keeps before the hash.
const KEPT_ID_BYTES: usize = 400;

/// Documents per page when reading partials back.
const PAGE_SIZE: usize = 1000;

/// Credentials are refreshed this long before they expire.
const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Item errors logged one by one per bulk response; the rest are only counted.
const LOGGED_ITEM_ERRORS: usize = 5;

/// Where and how to reach OpenSearch, and how to batch.
#[derive(Clone, Debug)]
pub struct OpenSearchSettings {
    /// Base URL of the cluster, e.g. `https://search-taxi.eu-west-1.es.amazonaws.com`.
    pub url: String,
    /// How requests authenticate.
    pub auth: OpenSearchAuth,
    /// Index name prefix: documents go to `{prefix}-hot-spots` and `{prefix}-airport-trips`.
    pub index_prefix: String,
    /// A PEM file of CA certificates to trust (in addition to the system roots).
    pub ca_cert: Option<PathBuf>,
    /// Bulk batching, concurrency, back-pressure and retry.
    pub bulk: BulkSettings,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// How long [`OpenSearchSink::connect`] keeps retrying while the cluster is unreachable.
    pub startup_timeout: Duration,
}

impl Default for OpenSearchSettings {
    fn default() -> Self {
        OpenSearchSettings {
            url: "http://localhost:9200".to_owned(),
            auth: OpenSearchAuth::None,
            index_prefix: "taxi".to_owned(),
            ca_cert: None,
            bulk: BulkSettings::default(),
            request_timeout: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(60),
        }
    }
}

/// How requests to OpenSearch authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum OpenSearchAuth {
    /// No authentication.
    None,
    /// HTTP basic authentication.
    Basic {
        /// User name.
        username: String,
        /// Password (never printed by `Debug`).
        password: String,
    },
    /// AWS SigV4 request signing with the default AWS credential chain (env, profile, web
    /// identity, ECS, IMDS); credentials are cached until 5 minutes before they expire.
    SigV4 {
        /// Amazon OpenSearch Service (`es`) or OpenSearch Serverless (`aoss`).
        service: SigV4Service,
        /// The region; `None` takes it from the AWS config (`AWS_REGION`, profile, IMDS).
        region: Option<String>,
    },
}

impl fmt::Debug for OpenSearchAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenSearchAuth::None => f.write_str("None"),
            OpenSearchAuth::Basic { username, .. } => {
                f.debug_struct("Basic").field("username", username).field("password", &"<redacted>").finish()
            }
            OpenSearchAuth::SigV4 { service, region } => {
                f.debug_struct("SigV4").field("service", service).field("region", region).finish()
            }
        }
    }
}

/// The AWS service a SigV4 signature is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigV4Service {
    /// Amazon OpenSearch Service domains.
    Es,
    /// Amazon OpenSearch Serverless collections.
    Aoss,
}

impl SigV4Service {
    /// The signing name: `es` or `aoss`.
    pub fn signing_name(self) -> &'static str {
        match self {
            SigV4Service::Es => "es",
            SigV4Service::Aoss => "aoss",
        }
    }
}

/// Batching, concurrency, back-pressure and retry of bulk requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkSettings {
    /// Most documents in one `_bulk` request.
    pub max_docs: usize,
    /// Most bytes of one `_bulk` body (a single larger document is still sent, alone).
    pub max_bytes: usize,
    /// Longest a queued document waits for a fuller batch.
    pub max_delay: Duration,
    /// Most `_bulk` requests in flight at once.
    pub max_in_flight: usize,
    /// Most documents written but not yet acknowledged or dropped; `write` waits beyond it.
    pub max_buffered_docs: usize,
    /// First retry back-off (doubled per attempt, with jitter).
    pub initial_backoff: Duration,
    /// Longest retry back-off.
    pub max_backoff: Duration,
}

impl Default for BulkSettings {
    fn default() -> Self {
        BulkSettings {
            max_docs: 5000,
            max_bytes: 5 * 1024 * 1024,
            max_delay: Duration::from_secs(1),
            max_in_flight: 2,
            max_buffered_docs: 20_000,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// What a flush saw: documents answered since the previous flush returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Documents stored by OpenSearch.
    pub acknowledged: u64,
    /// Documents OpenSearch refused for good (e.g. a mapping conflict): counted, logged and, with a
    /// dead-letter store, stored there before the flush returned.
    pub rejected: u64,
}

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

/// The index a document of `analysis` goes to: `{prefix}-hot-spots` or `{prefix}-airport-trips`.
pub fn index_name(prefix: &str, analysis: AnalysisKind) -> String {
    match analysis {
        AnalysisKind::HotSpot => format!("{prefix}-hot-spots"),
        AnalysisKind::AirportTrip => format!("{prefix}-airport-trips"),
    }
}

/// Whether `prefix` can start an index name: non-empty, lowercase ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `-`, `_` or `.`, at most 200 bytes.
pub fn valid_index_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 200
        && !prefix.starts_with(['-', '_', '.'])
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `_id` of a document: its [`PartialDocument::id`] when that fits in [`MAX_ID_BYTES`];
/// otherwise its first 400 bytes (cut at a character boundary), `#md5:` and the lowercase hex
/// MD5 of the whole id — at most 437 bytes, deterministic, and distinct for distinct ids (MD5 is
/// not a security boundary here). The full id stays in the document's `id` field.
pub fn document_id(id: &str) -> Cow<'_, str> {
    if id.len() <= MAX_ID_BYTES {
        return Cow::Borrowed(id);
    }
    let mut cut = KEPT_ID_BYTES;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Md5::digest(id.as_bytes());
    let mut out = String::with_capacity(cut + 5 + 32);
    out.push_str(&id[..cut]);
    out.push_str("#md5:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    Cow::Owned(out)
}

/// The composable index template body for the partial documents of `prefix`.
///
/// Its patterns are `{prefix}-hot-spots*` and `{prefix}-airport-trips*` rather than `{prefix}-*`,
/// so that the templates of two prefixes (`taxi`, `taxi-dev`) never overlap.
pub fn index_template(prefix: &str) -> Value {
    json!({
        "index_patterns": [format!("{prefix}-hot-spots*"), format!("{prefix}-airport-trips*")],
        "priority": 200,
        "template": {
            "mappings": {
                "properties": {
                    "id": { "type": "keyword" },
                    "pipeline": { "type": "keyword" },
                    "analysis": { "type": "keyword" },
                    "window_start": { "type": "date" },
                    "window_end": { "type": "date" },
                    "location": { "type": "geo_point" },
                    "geohash": { "type": "keyword" },
                    "pickup_count": { "type": "long" },
                    "airport": { "type": "keyword" },
                    "trip_count": { "type": "long" },
                    "sum_duration_min": { "type": "double" },
                    "sum_duration_ms": { "type": "long" },
                    "shard": { "type": "keyword" },
                    "final": { "type": "boolean" }
                }
            }
        },
        "_meta": { "managed_by": "taxi-worker" }
    })
}

/// The name of the index template of `prefix`.
pub fn template_name(prefix: &str) -> String {
    format!("{prefix}-partials")
}

// ---- Client ------------------------------------------------------------------------------------

/// A client for the cluster of `settings`: TLS roots, basic auth or SigV4.
async fn build_client(settings: &OpenSearchSettings) -> Result<OpenSearch, OpenSearchError> {
    if !valid_index_prefix(&settings.index_prefix) {
        return Err(OpenSearchError::InvalidIndexPrefix { prefix: settings.index_prefix.clone() });
    }
    let url = Url::parse(&settings.url)
        .map_err(|e| OpenSearchError::InvalidUrl { url: settings.url.clone(), source: e.into() })?;
    let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url)).timeout(settings.request_timeout);
    if let Some(path) = &settings.ca_cert {
        let pem =
            tokio::fs::read(path).await.map_err(|source| OpenSearchError::CaCertRead { path: path.clone(), source })?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|source| OpenSearchError::CaCertParse { path: path.clone(), source })?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }
    match &settings.auth {
        OpenSearchAuth::None => {}
        OpenSearchAuth::Basic { username, password } => {
            builder = builder.auth(Credentials::Basic(username.clone(), password.clone()));
        }
        OpenSearchAuth::SigV4 { service, region } => {
            let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
            if let Some(region) = region {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            let sdk = loader.load().await;
            let provider = sdk
                .credentials_provider()
                .ok_or(OpenSearchError::AwsConfig { reason: "the AWS config has no credentials provider" })?;
            let region = sdk.region().cloned().ok_or(OpenSearchError::AwsConfig {
                reason: "no AWS region: set AWS_REGION or the sink's SigV4 region",
            })?;
            let cached = SharedCredentialsProvider::new(CachedCredentials::new(provider));
            builder = builder.auth(Credentials::AwsSigV4(cached, region)).service_name(service.signing_name());
        }
    }
    let transport = builder.build().map_err(|e| OpenSearchError::Client { source: e.into() })?;
    Ok(OpenSearch::new(transport))
}

/// A credentials provider that asks the inner provider only when its cached credentials are
/// missing or expire within 5 minutes (the opensearch transport asks once per request).
#[derive(Debug)]
struct CachedCredentials {
    inner: SharedCredentialsProvider,
    cached: tokio::sync::Mutex<Option<aws_credential_types::Credentials>>,
}

impl CachedCredentials {
    fn new(inner: SharedCredentialsProvider) -> CachedCredentials {
        CachedCredentials { inner, cached: tokio::sync::Mutex::new(None) }
    }

    async fn get(&self) -> aws_credential_types::provider::Result {
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(creds) = cached.as_ref()
            && creds.expiry().is_none_or(|expiry| expiry > now + CREDENTIALS_REFRESH_MARGIN)
        {
            return Ok(creds.clone());
        }
        match self.inner.provide_credentials().await {
            Ok(fresh) => {
                *cached = Some(fresh.clone());
                Ok(fresh)
            }
            // Still valid, only close to expiry: keep using them and try again next time.
            Err(e) => match cached.as_ref() {
                Some(creds) if creds.expiry().is_none_or(|expiry| expiry > now) => {
                    tracing::warn!(error = %e, "refreshing AWS credentials failed; using the cached ones");
                    Ok(creds.clone())
                }
                _ => Err(e),
            },
        }
    }
}

impl ProvideCredentials for CachedCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::new(self.get())
    }
}

/// An HTTP answer: status and body.
struct Answer {
    status: u16,
    body: Bytes,
}

/// Sends one request; an HTTP answer of any status is `Ok`.
async fn send(
    client: &OpenSearch,
    url: &str,
    operation: &'static str,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    body: Option<(Bytes, &'static str)>,
) -> Result<Answer, OpenSearchError> {
    let request_error = |source| OpenSearchError::Request { operation, url: url.to_owned(), source };
    let mut headers = HeaderMap::new();
    let body = body.map(|(bytes, content_type)| {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        bytes
    });
    let query = (!query.is_empty()).then_some(query);
    let response = client.transport().send(method, path, headers, query, body, None).await.map_err(request_error)?;
    let status = response.status_code().as_u16();
    let body = response.bytes().await.map_err(request_error)?;
    Ok(Answer { status, body })
}

/// Sends a JSON request and turns a non-2xx answer into [`OpenSearchError::Status`].
async fn send_json(
    client: &OpenSearch,
    url: &str,
    operation: &'static str,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&Value>,
) -> Result<Answer, OpenSearchError> {
    let body = body.map(|v| (Bytes::from(v.to_string()), "application/json"));
    let answer = send(client, url, operation, method, path, query, body).await?;
    if (200..300).contains(&answer.status) { Ok(answer) } else { Err(status_error(operation, &answer)) }
}

/// The error of a non-2xx answer, with the OpenSearch error type and reason when present.
fn status_error(operation: &'static str, answer: &Answer) -> OpenSearchError {
    let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let error_type = error.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let reason = match error.and_then(|e| e.get("reason")).and_then(Value::as_str) {
        Some(reason) => reason.to_owned(),
        None => truncate(&String::from_utf8_lossy(&answer.body), 300).into_owned(),
    };
    OpenSearchError::Status { operation, status: answer.status, error_type, reason }
}

fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…", &s[..cut]))
}

/// Exponential back-off with jitter: a random duration in `[d/2, d]`, where
/// `d = min(initial × 2^attempt, max)`.
fn backoff(settings: &BulkSettings, attempt: u32) -> Duration {
    let exp = settings.initial_backoff.saturating_mul(1u32 << attempt.min(20)).min(settings.max_backoff);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

// ---- Metrics -----------------------------------------------------------------------------------

/// The sink's metrics, all named `taxi_sink_*`.
#[derive(Clone, Debug)]
struct SinkMetrics {
    bulk_seconds: HistogramVec,
    request_errors: IntCounterVec,
    documents_sent: IntCounter,
    bytes_sent: IntCounter,
    acknowledged: IntCounter,
    superseded: IntCounter,
    item_errors: IntCounterVec,
    retries: IntCounterVec,
    backpressure_seconds: Counter,
    backpressure_waits: IntCounter,
    buffered: IntGauge,
}

impl SinkMetrics {
    fn register(registry: &Registry) -> Result<SinkMetrics, prometheus::Error> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let buckets = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        Ok(SinkMetrics {
            bulk_seconds: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "taxi_sink_bulk_request_seconds",
                        "OpenSearch _bulk request latency, by outcome (ok, item_errors, failed)",
                    )
                    .buckets(buckets),
                    &["outcome"],
                )?,
            )?,
            request_errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "taxi_sink_bulk_request_errors_total",
                        "OpenSearch _bulk requests that failed as a whole, by category",
                    ),
                    &["category"],
                )?,
            )?,
            documents_sent: reg(
                registry,
                IntCounter::new(
                    "taxi_sink_bulk_documents_sent_total",
                    "Documents sent in _bulk requests (retries too)",
                )?,
            )?,
            bytes_sent: reg(
                registry,
                IntCounter::new("taxi_sink_bulk_bytes_sent_total", "Bytes of _bulk bodies sent")?,
            )?,
            acknowledged: reg(
                registry,
                IntCounter::new("taxi_sink_documents_acknowledged_total", "Documents stored by OpenSearch")?,
            )?,
            superseded: reg(
                registry,
                IntCounter::new(
                    "taxi_sink_documents_superseded_total",
                    "Queued documents replaced by a newer version of the same id before being sent",
                )?,
            )?,
            item_errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "taxi_sink_item_errors_total",
                        "Bulk items OpenSearch refused, by reason and action (retried, dropped, superseded: a same-or-newer version is stored)",
                    ),
                    &["reason", "action"],
                )?,
            )?,
            retries: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("taxi_sink_retries_total", "Documents re-queued for another attempt, by scope"),
                    &["scope"],
                )?,
            )?,
            backpressure_seconds: reg(
                registry,
                Counter::new(
                    "taxi_sink_backpressure_wait_seconds_total",
                    "Time writers waited because the sink's buffer was full",
                )?,
            )?,
            backpressure_waits: reg(
                registry,
                IntCounter::new("taxi_sink_backpressure_waits_total", "Writes that waited for buffer room")?,
            )?,
            buffered: reg(
                registry,
                IntGauge::new("taxi_sink_buffered_documents", "Documents written but not yet acknowledged or dropped")?,
            )?,
        })
    }
}

/// The bounded `reason` label of an item error.
fn item_reason(status: u16, error_type: &str) -> &'static str {
    match error_type {
        "mapper_parsing_exception" | "document_parsing_exception" => "mapper_parsing_exception",
        "illegal_argument_exception" => "illegal_argument_exception",
        "version_conflict_engine_exception" => "version_conflict_engine_exception",
        "es_rejected_execution_exception" | "rejected_execution_exception" => "es_rejected_execution_exception",
        "index_not_found_exception" => "index_not_found_exception",
        "cluster_block_exception" => "cluster_block_exception",
        "strict_dynamic_mapping_exception" => "strict_dynamic_mapping_exception",
        _ if status == 429 => "too_many_requests",
        _ if status >= 500 => "server_error",
        _ => "other",
    }
}

/// Whether an item error may succeed when sent again.
fn item_retryable(status: u16, error_type: &str) -> bool {
    status == 429 || status >= 500 || error_type == "es_rejected_execution_exception"
}

// ---- The sink ----------------------------------------------------------------------------------

/// Sends partial documents to OpenSearch in batches; cheap to clone (one background task).
///
/// Dropping the last clone stops the background task: documents not yet flushed are lost (and
/// were never covered by a checkpoint, so a restart re-emits them).
#[derive(Clone, Debug)]
pub struct OpenSearchSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the writers and the background task share.
#[derive(Debug)]
struct Shared {
    client: OpenSearch,
    url: String,
    prefix: String,
    bulk: BulkSettings,
    metrics: SinkMetrics,
    state: Mutex<State>,
    /// New documents, a flush request, or room for a request.
    wake: Notify,
    /// One permit per document that may still be buffered.
    permits: Semaphore,
    progress: watch::Sender<Progress>,
    /// Where refused documents go; `None` drops them (counted), for tools and tests only.
    dead_letters: Option<DeadLetterStore>,
}

/// Progress seen by flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Every document with a sequence number below this is acknowledged or dropped.
    done_below: u64,
    /// The background task is gone.
    dead: bool,
}

#[derive(Debug)]
struct Doc {
    /// `{index}/{_id}`.
    key: Arc<str>,
    /// [`PartialDocument::version`].
    version: u64,
    /// The action and source lines.
    lines: Bytes,
    enqueued: Instant,
    attempts: u32,
    not_before: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    /// Documents waiting to be sent, by sequence number (retries keep theirs, so they go first).
    queue: BTreeMap<u64, Doc>,
    /// The queued version of each key.
    queued_keys: HashMap<Arc<str>, u64>,
    /// Keys in a request now.
    in_flight_keys: HashSet<Arc<str>>,
    /// Documents not yet acknowledged or dropped.
    outstanding: BTreeSet<u64>,
    /// The highest sequence number a flush waits for.
    flush_target: u64,
    /// No request before this (whole-request back-off).
    paused_until: Option<Instant>,
    consecutive_failures: u32,
    /// Documents per request after a 413 (halved, then grown back).
    batch_cap: usize,
    report: FlushReport,
    /// Refused documents waiting to be stored as dead letters (still outstanding).
    refused: Refused,
    /// No dead-letter write before this (back-off after a failed one).
    dead_letters_paused_until: Option<Instant>,
    dead_letter_failures: u32,
    dead: bool,
}

/// Refused documents on their way to the dead-letter store, by sequence number.
type Refused = Vec<(u64, Doc, Refusal)>;

/// Why OpenSearch refused a document for good.
#[derive(Debug)]
struct Refusal {
    status: u16,
    error_type: String,
    reason: String,
}

/// A batch being sent.
struct Batch {
    docs: Vec<(u64, Doc)>,
    body: Bytes,
}

/// How a `_bulk` request ended.
enum BulkOutcome {
    /// Per-item statuses, in request order.
    Items(Vec<ItemResult>),
    /// No usable answer: retry everything later.
    Failed(OpenSearchError),
    /// 413: the request was too large.
    TooLarge,
    /// 400 for the whole request: the body is refused; retrying cannot help.
    Refused(OpenSearchError),
}

struct ItemResult {
    status: u16,
    error_type: String,
    reason: String,
}

enum Decision {
    Send(Batch),
    Wait(Option<Instant>),
}

impl OpenSearchSink {
    /// Connects: builds the client, waits (with back-off, up to
    /// [`OpenSearchSettings::startup_timeout`]) until the cluster answers, puts the index template,
    /// creates the two indices if missing, registers the metrics on `registry` and starts the
    /// background task. Must be called inside a tokio runtime.
    ///
    /// Refused documents go to `dead_letters`; without one they are dropped (counted and logged):
    /// only for tools and tests that check refusals themselves.
    pub async fn connect(
        settings: OpenSearchSettings,
        registry: &Registry,
        dead_letters: Option<DeadLetterStore>,
    ) -> Result<OpenSearchSink, OpenSearchError> {
        let client = build_client(&settings).await?;
        let url = settings.url.clone();
        let prefix = settings.index_prefix.clone();
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match prepare_cluster(&client, &url, &prefix).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && started.elapsed() < settings.startup_timeout => {
                    let delay = backoff(&settings.bulk, attempts.saturating_sub(1)).max(Duration::from_millis(50));
                    tracing::warn!(url = %url, attempt = attempts, error = %e, "OpenSearch not ready; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                Err(e) if e.is_transient() => {
                    return Err(OpenSearchError::Unavailable {
                        url,
                        waited: started.elapsed(),
                        attempts,
                        last: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let metrics = SinkMetrics::register(registry).map_err(|source| OpenSearchError::Metrics { source })?;
        let max_buffered = settings.bulk.max_buffered_docs.clamp(1, u32::MAX as usize);
        let (progress, _) = watch::channel(Progress::default());
        let state = State { batch_cap: settings.bulk.max_docs.max(1), ..State::default() };
        let shared = Arc::new(Shared {
            client,
            url,
            prefix,
            bulk: settings.bulk,
            metrics,
            state: Mutex::new(state),
            wake: Notify::new(),
            permits: Semaphore::new(max_buffered),
            progress,
            dead_letters,
        });
        let task = tokio::spawn(run(shared.clone()));
        let abort = task.abort_handle();
        let supervised = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("the OpenSearch sink's background task panicked");
                supervised.stop();
            }
        });
        tracing::info!(url = %shared.url, prefix = %shared.prefix, "OpenSearch sink connected");
        Ok(OpenSearchSink { inner: Arc::new(Inner { shared, task: abort }) })
    }

    /// Enqueues documents. Returns once they are buffered; waits while
    /// [`BulkSettings::max_buffered_docs`] documents are unacknowledged (back-pressure).
    pub async fn write(&self, docs: Vec<PartialDocument>) -> Result<(), OpenSearchError> {
        if docs.is_empty() {
            return Ok(());
        }
        let shared = &self.inner.shared;
        let encoded = docs.iter().map(|d| encode(&shared.prefix, d)).collect::<Result<Vec<_>, _>>()?;
        let chunk = shared.bulk.max_buffered_docs.clamp(1, u32::MAX as usize);
        for (originals, part) in docs.chunks(chunk).zip(encoded.chunks(chunk)) {
            let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
            let permit = match shared.permits.try_acquire_many(n) {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return Err(OpenSearchError::Closed),
                Err(TryAcquireError::NoPermits) => {
                    let started = Instant::now();
                    shared.metrics.backpressure_waits.inc();
                    tracing::debug!(docs = n, "OpenSearch sink buffer full; waiting");
                    let permit = shared.permits.acquire_many(n).await.map_err(|_| OpenSearchError::Closed)?;
                    shared.metrics.backpressure_seconds.inc_by(started.elapsed().as_secs_f64());
                    permit
                }
            };
            permit.forget();
            let released = {
                let mut st = shared.lock();
                if st.dead {
                    return Err(OpenSearchError::Closed);
                }
                let now = Instant::now();
                let mut released = 0;
                for (doc, (key, lines)) in originals.iter().zip(part) {
                    // Of two queued versions of one id only the higher is sent (a re-delivered
                    // dead letter may be older than what its shard wrote since).
                    if let Some(&queued) = st.queued_keys.get(key)
                        && st.queue.get(&queued).is_some_and(|q| q.version > doc.version)
                    {
                        released += 1;
                        continue;
                    }
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    if let Some(old) = st.queued_keys.insert(key.clone(), seq) {
                        st.queue.remove(&old);
                        st.outstanding.remove(&old);
                        released += 1;
                    }
                    st.outstanding.insert(seq);
                    let doc = Doc {
                        key: key.clone(),
                        version: doc.version,
                        lines: lines.clone(),
                        enqueued: now,
                        attempts: 0,
                        not_before: None,
                    };
                    st.queue.insert(seq, doc);
                }
                shared.publish(&st);
                released
            };
            if released > 0 {
                shared.metrics.superseded.inc_by(released as u64);
                shared.permits.add_permits(released);
            }
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// Returns once every document written before this call is acknowledged or dropped (sends
    /// what is queued at once). While the cluster is down this waits; wrap it in a timeout to
    /// bound it. The report counts documents answered since the previous flush returned.
    pub async fn flush(&self) -> Result<FlushReport, OpenSearchError> {
        let shared = &self.inner.shared;
        let target = {
            let mut st = shared.lock();
            st.flush_target = st.flush_target.max(st.next_seq);
            st.next_seq
        };
        shared.wake.notify_one();
        let mut rx = shared.progress.subscribe();
        let progress = *rx.wait_for(|p| p.dead || p.done_below >= target).await.map_err(|_| OpenSearchError::Closed)?;
        if progress.dead {
            return Err(OpenSearchError::Closed);
        }
        Ok(std::mem::take(&mut shared.lock().report))
    }

    /// Documents written but not yet acknowledged or dropped.
    pub fn buffered(&self) -> usize {
        self.inner.shared.lock().outstanding.len()
    }

    /// The index prefix.
    pub fn index_prefix(&self) -> &str {
        &self.inner.shared.prefix
    }
}

/// Waits for the cluster, puts the template and creates the indices.
async fn prepare_cluster(client: &OpenSearch, url: &str, prefix: &str) -> Result<(), OpenSearchError> {
    // The template is the first request (no `GET /` ping: OpenSearch Serverless does not serve it).
    let template = index_template(prefix);
    let path = format!("/_index_template/{}", template_name(prefix));
    send_json(client, url, "put index template", Method::Put, &path, &[], Some(&template)).await?;
    for analysis in [AnalysisKind::HotSpot, AnalysisKind::AirportTrip] {
        let index = index_name(prefix, analysis);
        let body = Bytes::from_static(b"{}");
        let answer =
            send(client, url, "create index", Method::Put, &format!("/{index}"), &[], Some((body, "application/json")))
                .await?;
        if !(200..300).contains(&answer.status) {
            let err = status_error("create index", &answer);
            match &err {
                OpenSearchError::Status { error_type, .. } if error_type == "resource_already_exists_exception" => {}
                _ => return Err(err),
            }
        }
    }
    Ok(())
}

/// The key and the two bulk lines of a document.
fn encode(prefix: &str, doc: &PartialDocument) -> Result<(Arc<str>, Bytes), OpenSearchError> {
    let index = index_name(prefix, doc.analysis);
    let id = document_id(&doc.id);
    let action = json!({ "index": { "_index": index, "_id": id, "version": doc.version, "version_type": "external" } });
    let serialize = |source| OpenSearchError::Serialize { id: doc.id.clone(), source };
    let mut out = BytesMut::with_capacity(512).writer();
    serde_json::to_writer(&mut out, &action).map_err(serialize)?;
    out.get_mut().put_u8(b'\n');
    serde_json::to_writer(&mut out, doc).map_err(serialize)?;
    out.get_mut().put_u8(b'\n');
    let key: Arc<str> = Arc::from(format!("{index}/{id}"));
    Ok((key, out.into_inner().freeze()))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere must not wedge the sink.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the sink dead: waiting flushes and every later write or flush fail with
    /// [`OpenSearchError::Closed`] instead of returning as if their documents were stored.
    fn stop(&self) {
        self.lock().dead = true;
        self.progress.send_modify(|p| p.dead = true);
        self.permits.close();
    }

    /// Tells flushes how far documents are done, and updates the gauge.
    fn publish(&self, st: &State) {
        let done_below = st.outstanding.first().copied().unwrap_or(st.next_seq);
        self.progress.send_if_modified(|p| {
            let changed = p.done_below != done_below;
            p.done_below = done_below;
            changed
        });
        self.metrics.buffered.set(i64::try_from(st.outstanding.len()).unwrap_or(i64::MAX));
    }

    /// Picks the next batch, or says until when to wait.
    fn next_batch(&self, requests_in_flight: usize) -> Decision {
        if requests_in_flight >= self.bulk.max_in_flight.max(1) {
            return Decision::Wait(None);
        }
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(until) = st.paused_until {
            if until > now {
                return Decision::Wait(Some(until));
            }
            st.paused_until = None;
        }
        let max_docs = st.batch_cap.clamp(1, self.bulk.max_docs.max(1));
        let mut picked = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        let mut oldest: Option<Instant> = None;
        let mut next_retry: Option<Instant> = None;
        for (&seq, doc) in &st.queue {
            if st.in_flight_keys.contains(&doc.key) {
                continue;
            }
            if let Some(at) = doc.not_before
                && at > now
            {
                next_retry = Some(next_retry.map_or(at, |t| t.min(at)));
                continue;
            }
            if !picked.is_empty() && bytes + doc.lines.len() > self.bulk.max_bytes {
                full = true;
                break;
            }
            picked.push(seq);
            bytes += doc.lines.len();
            oldest = Some(oldest.map_or(doc.enqueued, |t| t.min(doc.enqueued)));
            if picked.len() >= max_docs {
                full = true;
                break;
            }
        }
        let Some(oldest) = oldest else {
            return Decision::Wait(next_retry);
        };
        let done_below = st.outstanding.first().copied().unwrap_or(st.next_seq);
        let flushing = st.flush_target > done_below;
        let due = oldest + self.bulk.max_delay;
        if !(full || flushing || due <= now) {
            return Decision::Wait(Some(next_retry.map_or(due, |t| t.min(due))));
        }
        let mut body = BytesMut::with_capacity(bytes);
        let mut docs = Vec::with_capacity(picked.len());
        for seq in picked {
            if let Some(doc) = st.queue.remove(&seq) {
                st.queued_keys.remove(&doc.key);
                st.in_flight_keys.insert(doc.key.clone());
                body.extend_from_slice(&doc.lines);
                docs.push((seq, doc));
            }
        }
        Decision::Send(Batch { docs, body: body.freeze() })
    }

    /// Applies the answer to a batch.
    fn complete(&self, batch: Vec<(u64, Doc)>, outcome: BulkOutcome) {
        let now = Instant::now();
        let mut released = 0usize;
        let mut logged = 0usize;
        let mut st = self.lock();
        let st = &mut *st;
        match outcome {
            BulkOutcome::Items(items) => {
                st.consecutive_failures = 0;
                st.batch_cap = st.batch_cap.saturating_mul(2).min(self.bulk.max_docs.max(1));
                for ((seq, doc), item) in batch.into_iter().zip(items) {
                    let superseded = item.status == 409 && item.error_type == "version_conflict_engine_exception";
                    if (200..300).contains(&item.status) || superseded {
                        if superseded {
                            // A same-or-newer version is stored: nothing of this one is lost.
                            self.metrics
                                .item_errors
                                .with_label_values(&["version_conflict_engine_exception", "superseded"])
                                .inc();
                        }
                        st.report.acknowledged += 1;
                        self.metrics.acknowledged.inc();
                        released += st.finish(seq, &doc);
                        continue;
                    }
                    let reason = item_reason(item.status, &item.error_type);
                    if item_retryable(item.status, &item.error_type) {
                        self.metrics.item_errors.with_label_values(&[reason, "retried"]).inc();
                        self.metrics.retries.with_label_values(&["item"]).inc();
                        let delay = backoff(&self.bulk, doc.attempts);
                        released += st.requeue(seq, doc, Some(now + delay));
                        continue;
                    }
                    if logged < LOGGED_ITEM_ERRORS {
                        logged += 1;
                        tracing::warn!(
                            key = %doc.key,
                            status = item.status,
                            error_type = %item.error_type,
                            reason = %truncate(&item.reason, 500),
                            "OpenSearch refused a document"
                        );
                    }
                    let refusal = Refusal {
                        status: item.status,
                        error_type: item.error_type,
                        reason: truncate(&item.reason, 500).into_owned(),
                    };
                    released += self.refuse(st, seq, doc, reason, refusal);
                }
            }
            BulkOutcome::TooLarge => {
                self.metrics.request_errors.with_label_values(&["too_large"]).inc();
                if batch.len() > 1 {
                    st.batch_cap = (batch.len() / 2).max(1);
                    tracing::warn!(docs = batch.len(), "OpenSearch answered 413; halving the batch");
                    for (seq, doc) in batch {
                        self.metrics.retries.with_label_values(&["request"]).inc();
                        released += st.requeue(seq, doc, None);
                    }
                } else {
                    for (seq, doc) in batch {
                        tracing::warn!(key = %doc.key, "a single document is too large for OpenSearch");
                        let refusal = Refusal {
                            status: 413,
                            error_type: "request_too_large".to_owned(),
                            reason: "the document alone exceeds the cluster's request size limit".to_owned(),
                        };
                        released += self.refuse(st, seq, doc, "request_too_large", refusal);
                    }
                }
            }
            BulkOutcome::Refused(error) => {
                self.metrics.request_errors.with_label_values(&[error.category()]).inc();
                tracing::error!(docs = batch.len(), error = %error, "OpenSearch refused a bulk request");
                let (error_type, reason) = match &error {
                    OpenSearchError::Status { error_type, reason, .. } => (error_type.clone(), reason.clone()),
                    other => ("bad_request".to_owned(), other.to_string()),
                };
                for (seq, doc) in batch {
                    let refusal = Refusal { status: 400, error_type: error_type.clone(), reason: reason.clone() };
                    released += self.refuse(st, seq, doc, "bad_request", refusal);
                }
            }
            BulkOutcome::Failed(error) => {
                self.metrics.request_errors.with_label_values(&[error.category()]).inc();
                let delay = backoff(&self.bulk, st.consecutive_failures);
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                st.paused_until = Some(st.paused_until.map_or(now + delay, |t| t.max(now + delay)));
                tracing::warn!(
                    docs = batch.len(),
                    failures = st.consecutive_failures,
                    error = %error,
                    "OpenSearch bulk request failed; retrying in {delay:?}"
                );
                for (seq, doc) in batch {
                    self.metrics.retries.with_label_values(&["request"]).inc();
                    released += st.requeue(seq, doc, None);
                }
            }
        }
        self.publish(st);
        if released > 0 {
            self.permits.add_permits(released);
        }
    }
}

impl Shared {
    /// A document refused for good: kept outstanding until its dead letter is stored (the
    /// background task writes it), or done at once without a dead-letter store. Returns the
    /// permits to release.
    fn refuse(&self, st: &mut State, seq: u64, doc: Doc, reason: &'static str, refusal: Refusal) -> usize {
        st.report.rejected += 1;
        if self.dead_letters.is_none() {
            self.metrics.item_errors.with_label_values(&[reason, "dropped"]).inc();
            return st.finish(seq, &doc);
        }
        self.metrics.item_errors.with_label_values(&[reason, "dead_lettered"]).inc();
        st.in_flight_keys.remove(&doc.key);
        st.refused.push((seq, doc, refusal));
        0
    }

    /// The refused documents to store as dead letters now, if any and not backing off.
    fn take_refused(&self) -> Option<Refused> {
        let mut st = self.lock();
        if st.refused.is_empty() || st.dead_letters_paused_until.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        Some(std::mem::take(&mut st.refused))
    }

    /// Applies the outcome of storing dead letters: done, or back to wait for a retry.
    fn dead_lettered(&self, refused: Refused, stored: bool) {
        let mut released = 0;
        let mut st = self.lock();
        if stored {
            st.dead_letter_failures = 0;
            for (seq, doc, _) in &refused {
                released += st.finish(*seq, doc);
            }
        } else {
            let delay = backoff(&self.bulk, st.dead_letter_failures);
            st.dead_letter_failures = st.dead_letter_failures.saturating_add(1);
            st.dead_letters_paused_until = Some(Instant::now() + delay);
            st.refused.extend(refused);
        }
        self.publish(&st);
        drop(st);
        if released > 0 {
            self.permits.add_permits(released);
        }
    }
}

/// Stores refused documents as dead letters; `true` once they are durable.
async fn store_dead_letters(store: &DeadLetterStore, refused: &Refused) -> bool {
    let mut letters = Vec::with_capacity(refused.len());
    for (_, doc, refusal) in refused {
        // The second bulk line is the document's source, as `encode` wrote it.
        let source = doc.lines.splitn(3, |b| *b == b'\n').nth(1).unwrap_or_default();
        match serde_json::from_slice::<PartialDocument>(source) {
            Ok(document) => letters.push(DeadLetter {
                status: refusal.status,
                error_type: refusal.error_type.clone(),
                reason: refusal.reason.clone(),
                document,
            }),
            Err(e) => {
                tracing::error!(key = %doc.key, error = %e, "a refused document does not decode; it cannot be kept")
            }
        }
    }
    match store.put(&letters).await {
        Ok(key) => {
            tracing::warn!(documents = letters.len(), %key, "refused documents stored as dead letters");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, documents = letters.len(), "failed to store dead letters; retrying");
            false
        }
    }
}

impl State {
    /// Marks a sent document done; returns the permits to release.
    fn finish(&mut self, seq: u64, doc: &Doc) -> usize {
        self.in_flight_keys.remove(&doc.key);
        usize::from(self.outstanding.remove(&seq))
    }

    /// Puts a sent document back in the queue, unless a newer version of it is queued (then this
    /// one is done: the newer one carries the state). Returns the permits to release.
    fn requeue(&mut self, seq: u64, mut doc: Doc, not_before: Option<Instant>) -> usize {
        self.in_flight_keys.remove(&doc.key);
        if self.queued_keys.contains_key(&doc.key) {
            return usize::from(self.outstanding.remove(&seq));
        }
        doc.attempts = doc.attempts.saturating_add(1);
        doc.not_before = not_before;
        self.queued_keys.insert(doc.key.clone(), seq);
        self.queue.insert(seq, doc);
        0
    }
}

/// The background task: sends batches and applies their answers.
async fn run(shared: Arc<Shared>) {
    let mut requests: JoinSet<(Vec<(u64, Doc)>, BulkOutcome)> = JoinSet::new();
    // At most one dead-letter write at a time.
    let mut storing: JoinSet<(Refused, bool)> = JoinSet::new();
    loop {
        if storing.is_empty()
            && let Some(store) = shared.dead_letters.clone()
            && let Some(refused) = shared.take_refused()
        {
            storing.spawn(async move {
                let stored = store_dead_letters(&store, &refused).await;
                (refused, stored)
            });
        }
        match shared.next_batch(requests.len()) {
            Decision::Send(batch) => {
                let shared = shared.clone();
                requests.spawn(async move {
                    let outcome = send_bulk(&shared, &batch).await;
                    (batch.docs, outcome)
                });
            }
            Decision::Wait(until) => {
                // Wake for a dead-letter retry too, when one waits.
                let until = {
                    let st = shared.lock();
                    let retry = st.dead_letters_paused_until.filter(|_| !st.refused.is_empty());
                    match (until, retry) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                };
                let sleep = async {
                    match until {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shared.wake.notified() => {}
                    Some(joined) = requests.join_next(), if !requests.is_empty() => match joined {
                        Ok((docs, outcome)) => shared.complete(docs, outcome),
                        Err(e) => {
                            // Without the batch its documents can no longer be tracked: give up
                            // loudly rather than let a flush return too early.
                            tracing::error!(error = %e, "an OpenSearch bulk request task failed; the sink stops");
                            shared.stop();
                            return;
                        }
                    },
                    Some(joined) = storing.join_next(), if !storing.is_empty() => match joined {
                        Ok((refused, stored)) => shared.dead_lettered(refused, stored),
                        Err(e) => {
                            tracing::error!(error = %e, "storing dead letters failed unexpectedly; the sink stops");
                            shared.stop();
                            return;
                        }
                    },
                    () = sleep => {}
                }
            }
        }
    }
}

/// Sends one `_bulk` request and classifies the answer.
async fn send_bulk(shared: &Shared, batch: &Batch) -> BulkOutcome {
    let started = Instant::now();
    shared.metrics.documents_sent.inc_by(batch.docs.len() as u64);
    shared.metrics.bytes_sent.inc_by(batch.body.len() as u64);
    let answer = send(
        &shared.client,
        &shared.url,
        "bulk",
        Method::Post,
        "/_bulk",
        &[],
        Some((batch.body.clone(), "application/x-ndjson")),
    )
    .await;
    let outcome = match answer {
        Err(e) => BulkOutcome::Failed(e),
        Ok(answer) if (200..300).contains(&answer.status) => match parse_bulk(&answer.body, batch.docs.len()) {
            Ok(items) => BulkOutcome::Items(items),
            Err(e) => BulkOutcome::Failed(e),
        },
        Ok(answer) if answer.status == 413 => BulkOutcome::TooLarge,
        Ok(answer) if answer.status == 400 => BulkOutcome::Refused(status_error("bulk", &answer)),
        // 401/403 (credentials may be rotated), 404 (proxy), 429, 5xx: try again later.
        Ok(answer) => BulkOutcome::Failed(status_error("bulk", &answer)),
    };
    let label = match &outcome {
        BulkOutcome::Items(items) if items.iter().all(|i| (200..300).contains(&i.status)) => "ok",
        BulkOutcome::Items(_) => "item_errors",
        _ => "failed",
    };
    shared.metrics.bulk_seconds.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
    outcome
}

/// The per-item results of a `_bulk` answer, checked to match the request.
fn parse_bulk(body: &[u8], expected: usize) -> Result<Vec<ItemResult>, OpenSearchError> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|source| OpenSearchError::Response { operation: "bulk", source })?;
    let items = parsed.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if items.len() != expected {
        return Err(OpenSearchError::Status {
            operation: "bulk",
            status: 200,
            error_type: "item_count_mismatch".to_owned(),
            reason: format!("{} items answered for {expected} sent", items.len()),
        });
    }
    Ok(items
        .iter()
        .map(|item| {
            // `{"index": {...}}`: one action per item.
            let result = item.as_object().and_then(|o| o.values().next()).unwrap_or(&Value::Null);
            let status = result.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok()).unwrap_or(0);
            let error = result.get("error");
            let (error_type, reason) = match error {
                Some(Value::Object(e)) => (
                    e.get("type").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
                    e.get("reason").and_then(Value::as_str).unwrap_or_default().to_owned(),
                ),
                Some(Value::String(s)) => ("unknown".to_owned(), s.clone()),
                _ => (String::new(), String::new()),
            };
            ItemResult { status, error_type, reason }
        })
        .collect())
}

// ---- Reading back ------------------------------------------------------------------------------

/// Every partial document of `pipeline` in both indices (refreshed first, except on OpenSearch
/// Serverless, then read page by page with `search_after` on the `id` keyword). Missing indices
/// count as empty.
pub async fn query_partials(
    settings: &OpenSearchSettings,
    pipeline: &str,
) -> Result<Vec<PartialDocument>, OpenSearchError> {
    let client = build_client(settings).await?;
    let url = settings.url.as_str();
    let indices = format!(
        "{},{}",
        index_name(&settings.index_prefix, AnalysisKind::HotSpot),
        index_name(&settings.index_prefix, AnalysisKind::AirportTrip)
    );
    let lenient = [("ignore_unavailable", "true"), ("allow_no_indices", "true")];
    // OpenSearch Serverless has no `_refresh` (it refreshes on its own, within seconds).
    if !matches!(settings.auth, OpenSearchAuth::SigV4 { service: SigV4Service::Aoss, .. }) {
        send_json(&client, url, "refresh", Method::Post, &format!("/{indices}/_refresh"), &lenient, None).await?;
    }
    let mut docs = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut body = json!({
            "size": PAGE_SIZE,
            "query": { "term": { "pipeline": pipeline } },
            "sort": [ { "id": { "order": "asc", "unmapped_type": "keyword" } } ],
        });
        if let (Some(after), Some(obj)) = (&after, body.as_object_mut()) {
            obj.insert("search_after".to_owned(), after.clone());
        }
        let path = format!("/{indices}/_search");
        let answer = send_json(&client, url, "search", Method::Post, &path, &lenient, Some(&body)).await?;
        let parsed: Value = serde_json::from_slice(&answer.body)
            .map_err(|source| OpenSearchError::Response { operation: "search", source })?;
        let hits = parsed.pointer("/hits/hits").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for hit in hits {
            let source = hit.get("_source").cloned().unwrap_or(Value::Null);
            docs.push(
                serde_json::from_value(source)
                    .map_err(|source| OpenSearchError::Response { operation: "search", source })?,
            );
        }
        match hits.last().and_then(|h| h.get("sort")) {
            Some(sort) if hits.len() >= PAGE_SIZE => after = Some(sort.clone()),
            _ => break,
        }
    }
    Ok(docs)
}

/// The merged view of `pipeline`: [`query_partials`], then [`merge_documents`].
pub async fn merged_results(
    settings: &OpenSearchSettings,
    pipeline: &str,
    config: &EngineConfig,
) -> Result<Vec<MergedResult>, OpenSearchError> {
    Ok(merge_documents(config, query_partials(settings, pipeline).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_stay_and_long_ids_are_hashed_deterministically() {
        assert_eq!(document_id("p/hot_spot/1/dr5ru7/s"), "p/hot_spot/1/dr5ru7/s");
        let long = "é".repeat(300);
        let a = document_id(&long);
        assert!(a.len() <= MAX_ID_BYTES, "{}", a.len());
        assert_eq!(a, document_id(&long));
        assert!(a.contains("#md5:"));
        assert_ne!(a, document_id(&format!("{long}x")));
    }

    #[test]
    fn item_errors_map_to_bounded_reasons() {
        assert_eq!(item_reason(400, "mapper_parsing_exception"), "mapper_parsing_exception");
        assert_eq!(item_reason(429, "whatever"), "too_many_requests");
        assert_eq!(item_reason(503, "unavailable_shards_exception"), "server_error");
        assert_eq!(item_reason(400, "made_up_exception"), "other");
        assert!(item_retryable(429, ""));
        assert!(item_retryable(400, "es_rejected_execution_exception"));
        assert!(!item_retryable(400, "mapper_parsing_exception"));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let s = BulkSettings::default();
        for attempt in 0..40 {
            let d = backoff(&s, attempt);
            let cap = s.initial_backoff.saturating_mul(1 << attempt.min(20)).min(s.max_backoff);
            assert!(d >= cap / 2 && d <= cap, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn bulk_answers_parse_per_item() {
        let body = br#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}}]}"#;
        let items = parse_bulk(body, 2).expect("parse");
        assert_eq!(items[0].status, 201);
        assert_eq!((items[1].status, items[1].error_type.as_str()), (400, "mapper_parsing_exception"));
        assert!(parse_bulk(body, 3).is_err());
    }

    #[test]
    fn index_prefixes_are_checked() {
        assert!(valid_index_prefix("taxi"));
        assert!(valid_index_prefix("taxi-dev_2.x"));
        for bad in ["", "Taxi", "-taxi", "_t", "ta xi", "t*", "t/x", "t,x"] {
            assert!(!valid_index_prefix(bad), "{bad:?}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let auth = OpenSearchAuth::Basic { username: "u".into(), password: "secret".into() };
        assert!(!format!("{auth:?}").contains("secret"));
    }
}

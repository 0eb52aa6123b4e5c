//! The configuration of one pipeline's workers: the one typed definition shared by the operator
//! (which renders it into the worker ConfigMap, key [`SETTINGS_KEY`]) and `taxi-worker run` (which
//! reads it with `--config`, or builds it from its flags). Operator and worker cannot disagree about
//! a field because there is only this struct.
//!
//! Durations are whole milliseconds and every field has a default, so a document written
//! by an older operator still reads. Secrets never appear here: basic-auth credentials come from
//! the environment (`TAXI_SINK_USERNAME`, `TAXI_SINK_PASSWORD`), which the operator fills from a
//! Secret, and [`WorkerSettings::validate`] refuses a URL that carries them (`user:password@`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::EngineConfig;
use crate::identity::PipelineId;
use crate::redact;
use crate::start_position::{self, InitialPosition};

/// The worker ConfigMap key (and `--config` file format) holding [`WorkerSettings`] as JSON.
pub const SETTINGS_KEY: &str = "worker.json";

/// Environment variable holding the basic-auth user name of the sink.
pub const SINK_USERNAME_ENV: &str = "TAXI_SINK_USERNAME";
/// Environment variable holding the basic-auth password of the sink.
pub const SINK_PASSWORD_ENV: &str = "TAXI_SINK_PASSWORD";

/// Where a shard with nothing read yet starts, unless configured otherwise.
pub const DEFAULT_START_POSITION: &str = "trim-horizon";
/// Previous checkpoints kept per shard under `history/`, unless configured otherwise.
pub const DEFAULT_RETAIN: usize = 3;
/// The OpenSearch index prefix, unless configured otherwise.
pub const DEFAULT_INDEX_PREFIX: &str = "taxi";
/// Time between two checkpoints of a shard, unless configured otherwise.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// Time between two listings of the stream's shards, unless configured otherwise.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(10);
/// Most documents in one `_bulk` request, unless configured otherwise.
pub const DEFAULT_BULK_MAX_DOCS: usize = 5000;
/// Most bytes in one `_bulk` request, unless configured otherwise.
pub const DEFAULT_BULK_MAX_BYTES: usize = 5 * 1024 * 1024;
/// Longest a document waits for its `_bulk` request, unless configured otherwise.
pub const DEFAULT_BULK_MAX_DELAY: Duration = Duration::from_secs(1);
/// How long a worker waits for a shard's previous owner to release it before taking it over.
/// The operator waits as long before it shrinks the StatefulSet, so both must use this one value.
pub const DEFAULT_TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Size at which an archive file closes, unless configured otherwise: large enough that Athena,
/// Spark and DuckDB read few files, small enough to hold in a worker's memory while it fills.
pub const DEFAULT_ARCHIVE_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// Age at which an archive file closes, unless configured otherwise: how stale the archive may be.
pub const DEFAULT_ARCHIVE_MAX_FILE_AGE: Duration = Duration::from_secs(5 * 60);
/// The bounds of [`ArchiveSettings::max_file_bytes`].
pub const ARCHIVE_FILE_BYTES_RANGE: std::ops::RangeInclusive<u64> = (64 * 1024)..=(1024 * 1024 * 1024);
/// The bounds of [`ArchiveSettings::max_file_age_ms`], in milliseconds.
pub const ARCHIVE_FILE_AGE_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

/// Everything the workers of one pipeline share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Pipeline name: in the assignment ConfigMap's name, and with the namespace in document ids
    /// and checkpoint keys.
    pub pipeline: String,
    /// The pipeline's Kubernetes namespace: part of its identity (see [`PipelineId`]). Absent
    /// outside Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Kinesis stream and how to read it.
    pub stream: StreamSettings,
    /// Where and how often shards are checkpointed.
    pub checkpoint: CheckpointSettings,
    /// Where results go.
    pub sink: SinkSettings,
    /// Event time and the analyses.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Where the raw trips read are archived as Parquet; `None`: not archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSettings>,
}

/// The archive of raw trips: Parquet files under Hive-style event-hour partitions, written by
/// every worker for the shards it reads. S3 requests use the checkpoint settings' endpoint and
/// addressing style.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSettings {
    /// `s3://bucket/prefix` (or, outside Kubernetes, `file:///dir`): files go to
    /// `<prefix>/dt=YYYY-MM-DD/hour=HH/`.
    pub uri: String,
    /// A file closes once it holds this many bytes.
    #[serde(default = "default_archive_max_file_bytes")]
    pub max_file_bytes: u64,
    /// A file closes once it has been open this long, in milliseconds.
    #[serde(default = "default_archive_max_file_age_ms")]
    pub max_file_age_ms: u64,
}

impl ArchiveSettings {
    /// An archive at `uri` with the default file size and age.
    pub fn at(uri: impl Into<String>) -> ArchiveSettings {
        ArchiveSettings {
            uri: uri.into(),
            max_file_bytes: DEFAULT_ARCHIVE_MAX_FILE_BYTES,
            max_file_age_ms: default_archive_max_file_age_ms(),
        }
    }

    /// The age at which a file closes.
    pub fn max_file_age(&self) -> Duration {
        Duration::from_millis(self.max_file_age_ms)
    }

    /// Checks the URI's form and the bounds of the file size and age.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field, reason: String| Err(SettingsError::Invalid { field, reason });
        if let Some(rest) = self.uri.strip_prefix("s3://") {
            if rest.split('/').next().is_none_or(str::is_empty) {
                return invalid("archive.uri", format!("{:?} names no bucket", self.uri));
            }
        } else if self.uri.strip_prefix("file://").is_none_or(|dir| !dir.starts_with('/')) {
            return invalid("archive.uri", format!("{:?} must be an s3://bucket/prefix or file:///dir URI", self.uri));
        }
        if !ARCHIVE_FILE_BYTES_RANGE.contains(&self.max_file_bytes) {
            let (lo, hi) = (ARCHIVE_FILE_BYTES_RANGE.start(), ARCHIVE_FILE_BYTES_RANGE.end());
            return invalid("archive.max_file_bytes", format!("{} is outside {lo}..={hi}", self.max_file_bytes));
        }
        if !ARCHIVE_FILE_AGE_MS_RANGE.contains(&self.max_file_age_ms) {
            let (lo, hi) = (ARCHIVE_FILE_AGE_MS_RANGE.start(), ARCHIVE_FILE_AGE_MS_RANGE.end());
            return invalid("archive.max_file_age_ms", format!("{} is outside {lo}..={hi}", self.max_file_age_ms));
        }
        Ok(())
    }
}

/// The Kinesis stream and how to read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// AWS region; `None`: from the AWS configuration chain.
    #[serde(default)]
    pub region: Option<String>,
    /// Kinesis endpoint (an emulator); `None`: AWS.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Where a shard with nothing read yet starts: `trim-horizon`, `latest` or an ISO-8601 time
    /// (resolved at its first claim; reshard children start at `trim-horizon`).
    #[serde(default = "default_start_position")]
    pub start_position: String,
    /// How shards are consumed.
    #[serde(default)]
    pub consumer: ConsumerType,
    /// Enhanced fan-out consumer name; `None`: [`PipelineId::default_consumer_name`].
    #[serde(default)]
    pub efo_consumer_name: Option<String>,
    /// Time between ListShards calls, in milliseconds.
    #[serde(default = "default_discovery_interval_ms")]
    pub discovery_interval_ms: u64,
}

/// How shards are consumed: the one definition used by the CRD (`spec.stream.consumer`), the
/// `--consumer` flag and the worker settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum ConsumerType {
    /// GetRecords polling (shared throughput, 5 calls/s per shard).
    #[default]
    Polling,
    /// Enhanced fan-out with SubscribeToShard (dedicated throughput per consumer).
    Efo,
}

/// Where and how often shards are checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSettings {
    /// `s3://bucket/prefix`, `file:///dir` or a directory.
    pub uri: String,
    /// Time between checkpoints of a shard, in milliseconds.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub interval_ms: u64,
    /// Previous checkpoints kept per shard under `history/`.
    #[serde(default = "default_retain")]
    pub retain: usize,
    /// Endpoint of an S3-compatible server; `None`: AWS S3.
    #[serde(default)]
    pub s3_endpoint_url: Option<String>,
    /// Path-style S3 addressing, as most S3-compatible servers need.
    #[serde(default)]
    pub s3_force_path_style: bool,
}

/// Where results go.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSettings {
    /// An OpenSearch URL (`https://host:port`) or `file:///path/partials.jsonl`.
    pub url: String,
    /// Index name prefix: documents go to `<prefix>-hot-spots` and `<prefix>-airport-trips`.
    #[serde(default = "default_index_prefix")]
    pub index_prefix: String,
    /// How requests authenticate.
    #[serde(default)]
    pub auth: SinkAuthSetting,
    /// A PEM file of CA certificates to trust besides the system roots.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Most documents in one `_bulk` request.
    #[serde(default = "default_bulk_max_docs")]
    pub bulk_max_docs: usize,
    /// Most bytes in one `_bulk` request.
    #[serde(default = "default_bulk_max_bytes")]
    pub bulk_max_bytes: usize,
    /// Longest a document waits for its bulk request, in milliseconds.
    #[serde(default = "default_bulk_max_delay_ms")]
    pub bulk_max_delay_ms: u64,
}

/// How sink requests authenticate; credentials are never part of the settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkAuthSetting {
    /// The kind of authentication.
    #[serde(rename = "type", default)]
    pub kind: SinkAuthType,
    /// With `sigv4`: the service signed for; `None`: `es`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<SigV4Service>,
    /// With `sigv4`: the signing region; `None`: from the AWS configuration chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

impl SinkAuthSetting {
    /// Authentication of this kind, without SigV4 details.
    pub fn of(kind: SinkAuthType) -> SinkAuthSetting {
        SinkAuthSetting { kind, service: None, region: None }
    }
}

/// How sink requests authenticate: the one definition used by the CRD
/// (`spec.sink.opensearch.auth.type`), the `--sink-auth` flag and the worker settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SinkAuthType {
    /// No authentication.
    #[default]
    None,
    /// HTTP basic, with the user name and password from the environment (`TAXI_SINK_USERNAME`,
    /// `TAXI_SINK_PASSWORD`).
    Basic,
    /// AWS Signature Version 4 with the default credential chain (IRSA in a cluster).
    Sigv4,
}

/// The AWS service a SigV4 signature is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum SigV4Service {
    /// Amazon OpenSearch Service domains.
    #[default]
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

/// Settings that cannot run, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The document is not valid JSON of [`WorkerSettings`].
    #[error("failed to parse worker settings: {0}")]
    Parse(#[from] serde_json::Error),
    /// A field holds a value outside its domain.
    #[error("invalid worker setting {field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A credential the settings ask for is missing from the environment.
    #[error("the sink uses basic auth, but {0} is not set")]
    MissingCredential(&'static str),
    /// A URL carries credentials, which would be stored with the settings (the worker ConfigMap)
    /// and shown wherever the URL is. The message never repeats the URL.
    #[error("{field} must not carry credentials (user:password@ or user@): {instead}")]
    CredentialsInUrl {
        /// Dotted path of the field.
        field: &'static str,
        /// Where the credentials belong instead.
        instead: &'static str,
    },
}

/// Where the sink's credentials belong instead of its URL.
const SINK_CREDENTIALS_INSTEAD: &str = "use basic auth with the user name and password in the environment \
    variables TAXI_SINK_USERNAME and TAXI_SINK_PASSWORD (in a TaxiPipeline: a Secret named by \
    spec.sink.opensearch.auth.secretRef)";
/// Where AWS credentials come from instead of an endpoint URL.
const AWS_CREDENTIALS_INSTEAD: &str =
    "AWS requests are signed with the credentials of the AWS configuration chain (environment, web identity, profile)";

/// Refuses a sink URL (`--sink`, `--opensearch`, `sink.url`) that carries credentials, with where
/// they belong instead.
pub fn check_sink_url(url: &str) -> Result<(), SettingsError> {
    no_credentials("sink.url", url, SINK_CREDENTIALS_INSTEAD)
}

fn no_credentials(field: &'static str, url: &str, instead: &'static str) -> Result<(), SettingsError> {
    if redact::has_credentials(url) { Err(SettingsError::CredentialsInUrl { field, instead }) } else { Ok(()) }
}

fn default_start_position() -> String {
    DEFAULT_START_POSITION.to_owned()
}
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
fn default_archive_max_file_bytes() -> u64 {
    DEFAULT_ARCHIVE_MAX_FILE_BYTES
}
fn default_archive_max_file_age_ms() -> u64 {
    millis(DEFAULT_ARCHIVE_MAX_FILE_AGE)
}
fn default_discovery_interval_ms() -> u64 {
    millis(DEFAULT_DISCOVERY_INTERVAL)
}
fn default_checkpoint_interval_ms() -> u64 {
    millis(DEFAULT_CHECKPOINT_INTERVAL)
}
fn default_retain() -> usize {
    DEFAULT_RETAIN
}
fn default_index_prefix() -> String {
    DEFAULT_INDEX_PREFIX.to_owned()
}
fn default_bulk_max_docs() -> usize {
    DEFAULT_BULK_MAX_DOCS
}
fn default_bulk_max_bytes() -> usize {
    DEFAULT_BULK_MAX_BYTES
}
fn default_bulk_max_delay_ms() -> u64 {
    millis(DEFAULT_BULK_MAX_DELAY)
}

impl WorkerSettings {
    /// Parses and validates a settings document.
    pub fn from_json(bytes: &[u8]) -> Result<WorkerSettings, SettingsError> {
        let settings: WorkerSettings = serde_json::from_slice(bytes)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The document, pretty-printed (as the operator stores it, so `kubectl get cm -o yaml` reads well).
    pub fn to_json(&self) -> String {
        // Strings, numbers and enums always serialize.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every field a worker would otherwise trip over at start-up.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |field, reason: String| Err(SettingsError::Invalid { field, reason });
        if self.pipeline.is_empty() || self.pipeline.contains('/') {
            return invalid("pipeline", format!("{:?} must be non-empty and without '/'", self.pipeline));
        }
        if let Some(namespace) = &self.namespace
            && (namespace.is_empty() || namespace.contains(['/', '.']))
        {
            return invalid("namespace", format!("{namespace:?} must be non-empty and without '/' or '.'"));
        }
        if self.stream.name.is_empty() {
            return invalid("stream.name", "must not be empty".to_owned());
        }
        if let Err(reason) = start_position::parse(&self.stream.start_position) {
            return invalid("stream.start_position", reason);
        }
        if self.stream.discovery_interval_ms == 0 {
            return invalid("stream.discovery_interval_ms", "must be positive".to_owned());
        }
        if self.checkpoint.uri.is_empty() {
            return invalid("checkpoint.uri", "must not be empty".to_owned());
        }
        if self.checkpoint.interval_ms == 0 {
            return invalid("checkpoint.interval_ms", "must be positive".to_owned());
        }
        if self.sink.url.is_empty() {
            return invalid("sink.url", "must not be empty".to_owned());
        }
        check_sink_url(&self.sink.url)?;
        if let Some(url) = &self.stream.endpoint_url {
            no_credentials("stream.endpoint_url", url, AWS_CREDENTIALS_INSTEAD)?;
        }
        if let Some(url) = &self.checkpoint.s3_endpoint_url {
            no_credentials("checkpoint.s3_endpoint_url", url, AWS_CREDENTIALS_INSTEAD)?;
        }
        if self.sink.bulk_max_docs == 0 || self.sink.bulk_max_bytes == 0 {
            return invalid("sink.bulk_max_docs", "bulk limits must be positive".to_owned());
        }
        let auth = &self.sink.auth;
        if auth.kind != SinkAuthType::Sigv4 && (auth.service.is_some() || auth.region.is_some()) {
            return invalid("sink.auth", "service and region are only allowed with type sigv4".to_owned());
        }
        if let Err(e) = self.engine.validate() {
            return invalid("engine", e.to_string());
        }
        if let Some(archive) = &self.archive {
            archive.validate()?;
        }
        Ok(())
    }

    /// Where shards without a checkpoint start.
    pub fn start_position(&self) -> Result<InitialPosition, SettingsError> {
        start_position::parse(&self.stream.start_position)
            .map_err(|reason| SettingsError::Invalid { field: "stream.start_position", reason })
    }

    /// The enhanced fan-out consumer to read through, by name (the configured one, or the
    /// pipeline's default); `None` when shards are polled.
    pub fn efo_consumer_name(&self) -> Option<String> {
        match self.stream.consumer {
            ConsumerType::Polling => None,
            ConsumerType::Efo => {
                Some(self.stream.efo_consumer_name.clone().unwrap_or_else(|| self.identity().default_consumer_name()))
            }
        }
    }

    /// The pipeline's identity in shared state.
    pub fn identity(&self) -> PipelineId {
        PipelineId::new(self.namespace.as_deref(), &self.pipeline)
    }

    /// Time between checkpoints of a shard.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint.interval_ms)
    }

    /// Time between ListShards calls.
    pub fn discovery_interval(&self) -> Duration {
        Duration::from_millis(self.stream.discovery_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{
        "pipeline": "nyc",
        "stream": {"name": "taxi-trips"},
        "checkpoint": {"uri": "s3://bucket/checkpoints"},
        "sink": {"url": "https://search.example.com"}
    }"#;

    #[test]
    fn a_minimal_document_gets_the_design_defaults() {
        let settings = WorkerSettings::from_json(MINIMAL.as_bytes()).expect("valid");
        assert_eq!(settings.start_position().expect("default"), InitialPosition::TrimHorizon);
        assert_eq!(settings.efo_consumer_name(), None);
        assert_eq!(settings.checkpoint_interval(), Duration::from_secs(10));
        assert_eq!(settings.checkpoint.retain, DEFAULT_RETAIN);
        assert_eq!(settings.engine, EngineConfig::default());
        assert_eq!(
            (settings.sink.index_prefix.as_str(), &settings.sink.auth),
            ("taxi", &SinkAuthSetting::of(SinkAuthType::None))
        );
        let bulk = (settings.sink.bulk_max_docs, settings.sink.bulk_max_bytes, settings.sink.bulk_max_delay_ms);
        assert_eq!(bulk, (DEFAULT_BULK_MAX_DOCS, DEFAULT_BULK_MAX_BYTES, 1000));
    }

    #[test]
    fn enhanced_fan_out_reads_through_the_named_consumer_or_the_pipelines_default() {
        let mut settings = WorkerSettings::from_json(MINIMAL.as_bytes()).expect("valid");
        settings.stream.consumer = ConsumerType::Efo;
        assert_eq!(settings.efo_consumer_name().as_deref(), Some("taxi-nyc"));
        settings.namespace = Some("team-a".into());
        assert_eq!(settings.efo_consumer_name().as_deref(), Some("team-a.nyc"));
        settings.stream.efo_consumer_name = Some("replay-v2".into());
        assert_eq!(settings.efo_consumer_name().as_deref(), Some("replay-v2"));
        settings.stream.consumer = ConsumerType::Polling;
        assert_eq!(settings.efo_consumer_name(), None, "a name alone does not switch polling to fan-out");
    }

    #[test]
    fn round_trips_through_json() {
        let mut settings = WorkerSettings::from_json(MINIMAL.as_bytes()).expect("valid");
        settings.stream.consumer = ConsumerType::Efo;
        settings.sink.auth = SinkAuthSetting {
            kind: SinkAuthType::Sigv4,
            service: Some(SigV4Service::Aoss),
            region: Some("eu-west-1".into()),
        };
        settings.engine.hot_spots.geohash_precision = 7;
        assert_eq!(WorkerSettings::from_json(settings.to_json().as_bytes()).expect("round trip"), settings);
    }

    #[test]
    fn rejects_unknown_fields_and_bad_values_with_the_field_name() {
        let unknown = MINIMAL.replace("\"pipeline\"", "\"pipelin\": 1, \"pipeline\"");
        assert!(WorkerSettings::from_json(unknown.as_bytes()).is_err());
        for (from, to, field) in [
            (
                "\"name\": \"taxi-trips\"",
                "\"name\": \"taxi-trips\", \"start_position\": \"yesterday\"",
                "stream.start_position",
            ),
            (
                "\"uri\": \"s3://bucket/checkpoints\"",
                "\"uri\": \"s3://b\", \"interval_ms\": 0",
                "checkpoint.interval_ms",
            ),
            ("\"pipeline\": \"nyc\"", "\"pipeline\": \"a/b\"", "pipeline"),
        ] {
            let doc = MINIMAL.replace(from, to);
            let err = WorkerSettings::from_json(doc.as_bytes()).expect_err(field);
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn urls_with_credentials_are_refused_without_repeating_them() {
        let cases = [
            (
                r#""url": "https://search.example.com""#,
                r#""url": "https://writer:s3cret@search.example.com""#,
                "sink.url",
            ),
            (r#""url": "https://search.example.com""#, r#""url": "http://s3cret@opensearch:9200""#, "sink.url"),
            (
                r#""name": "taxi-trips""#,
                r#""name": "taxi-trips", "endpoint_url": "http://key:s3cret@kinesis:4567""#,
                "stream.endpoint_url",
            ),
            (
                r#""uri": "s3://bucket/checkpoints""#,
                r#""uri": "s3://bucket/checkpoints", "s3_endpoint_url": "http://key:s3cret@minio:9000""#,
                "checkpoint.s3_endpoint_url",
            ),
        ];
        for (from, to, field) in cases {
            let doc = MINIMAL.replace(from, to);
            let err = WorkerSettings::from_json(doc.as_bytes()).expect_err(to);
            assert!(matches!(err, SettingsError::CredentialsInUrl { field: f, .. } if f == field), "{to}: {err:?}");
            let message = err.to_string();
            assert!(message.starts_with(&format!("{field} must not carry credentials")), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        let sink = check_sink_url("https://writer:s3cret@search.example.com").expect_err("credentials");
        assert!(sink.to_string().contains("TAXI_SINK_USERNAME and TAXI_SINK_PASSWORD"), "{sink}");
        assert!(sink.to_string().contains("spec.sink.opensearch.auth.secretRef"), "{sink}");
        check_sink_url("https://search.example.com/proxy/@team").expect("an @ in the path is no credential");
        check_sink_url("file:///tmp/partials.jsonl").expect("a file sink");
    }

    #[test]
    fn sink_auth_reads_as_it_always_did_and_sigv4_details_need_sigv4() {
        let with_auth = |auth: &str| {
            MINIMAL.replace(
                r#""url": "https://search.example.com""#,
                &format!(r#""url": "https://search.example.com", "auth": {auth}"#),
            )
        };
        let sigv4 = WorkerSettings::from_json(
            with_auth(r#"{"type": "sigv4", "service": "aoss", "region": "eu-west-1"}"#).as_bytes(),
        )
        .expect("sigv4");
        assert_eq!(
            sigv4.sink.auth,
            SinkAuthSetting {
                kind: SinkAuthType::Sigv4,
                service: Some(SigV4Service::Aoss),
                region: Some("eu-west-1".into())
            }
        );
        let none = WorkerSettings::from_json(with_auth(r#"{"type": "none"}"#).as_bytes()).expect("none");
        assert_eq!(none.sink.auth, SinkAuthSetting::of(SinkAuthType::None));
        let err = WorkerSettings::from_json(with_auth(r#"{"type": "basic", "region": "eu-west-1"}"#).as_bytes())
            .expect_err("region without sigv4");
        assert!(err.to_string().contains("sink.auth"), "{err}");
        assert!(WorkerSettings::from_json(with_auth(r#"{"type": "anonymous"}"#).as_bytes()).is_err());
    }
}

//! Where and how to reach OpenSearch, how requests authenticate, and how documents are batched.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::retry::{BackoffPolicy, Jitter};
use taxi_core::settings::{
    DEFAULT_BULK_MAX_BYTES, DEFAULT_BULK_MAX_DELAY, DEFAULT_BULK_MAX_DOCS, DEFAULT_INDEX_PREFIX, SINK_PASSWORD_ENV,
    SINK_USERNAME_ENV, SettingsError, SigV4Service, SinkAuthType, SinkSettings,
};

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
    /// How long [`OpenSearchSink::connect`](super::OpenSearchSink::connect) keeps retrying while the cluster is unreachable.
    pub startup_timeout: Duration,
}

impl OpenSearchSettings {
    /// The settings of a pipeline's sink, with basic-auth credentials looked up through `env`
    /// (they are never part of the pipeline's settings).
    pub fn for_sink(
        sink: &SinkSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<OpenSearchSettings, SettingsError> {
        let auth = match sink.auth.kind {
            SinkAuthType::None => OpenSearchAuth::None,
            SinkAuthType::Basic => OpenSearchAuth::Basic {
                username: env(SINK_USERNAME_ENV).ok_or(SettingsError::MissingCredential(SINK_USERNAME_ENV))?,
                password: env(SINK_PASSWORD_ENV).ok_or(SettingsError::MissingCredential(SINK_PASSWORD_ENV))?,
            },
            SinkAuthType::Sigv4 => OpenSearchAuth::SigV4 {
                service: sink.auth.service.unwrap_or_default(),
                region: sink.auth.region.clone(),
            },
        };
        let defaults = OpenSearchSettings::default();
        Ok(OpenSearchSettings {
            url: sink.url.clone(),
            auth,
            index_prefix: sink.index_prefix.clone(),
            ca_cert: sink.ca_cert.clone(),
            bulk: BulkSettings {
                max_docs: sink.bulk_max_docs,
                max_bytes: sink.bulk_max_bytes,
                max_delay: Duration::from_millis(sink.bulk_max_delay_ms),
                ..defaults.bulk.clone()
            },
            ..defaults
        })
    }
}

impl Default for OpenSearchSettings {
    fn default() -> Self {
        OpenSearchSettings {
            url: "http://localhost:9200".to_owned(),
            auth: OpenSearchAuth::None,
            index_prefix: DEFAULT_INDEX_PREFIX.to_owned(),
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

impl BulkSettings {
    /// The wait before a request or a document is sent again: from [`BulkSettings::initial_backoff`]
    /// doubling up to [`BulkSettings::max_backoff`], drawn from the upper half.
    pub fn retry(&self) -> BackoffPolicy {
        BackoffPolicy::new(self.initial_backoff, self.max_backoff, Jitter::Equal)
    }
}

impl Default for BulkSettings {
    fn default() -> Self {
        BulkSettings {
            max_docs: DEFAULT_BULK_MAX_DOCS,
            max_bytes: DEFAULT_BULK_MAX_BYTES,
            max_delay: DEFAULT_BULK_MAX_DELAY,
            max_in_flight: 2,
            max_buffered_docs: 20_000,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taxi_core::settings::SinkAuthSetting;

    /// A sink that names only its URL: everything else takes the settings' defaults.
    fn minimal_sink() -> SinkSettings {
        serde_json::from_str(r#"{"url": "https://search.example.com"}"#).expect("valid")
    }

    #[test]
    fn a_minimal_sink_gets_the_default_prefix_batching_and_no_auth() {
        let os = OpenSearchSettings::for_sink(&minimal_sink(), |_| None).expect("no credentials needed");
        assert_eq!((os.index_prefix.as_str(), os.auth), ("taxi", OpenSearchAuth::None));
        assert_eq!(os.bulk, BulkSettings::default());
    }

    #[test]
    fn basic_auth_takes_credentials_from_the_environment_only() {
        let sink = SinkSettings { auth: SinkAuthSetting::of(SinkAuthType::Basic), ..minimal_sink() };
        let err = OpenSearchSettings::for_sink(&sink, |_| None).expect_err("no credentials");
        assert!(err.to_string().contains(SINK_USERNAME_ENV), "{err}");
        let env = |name: &str| Some(format!("{name}-value"));
        let os = OpenSearchSettings::for_sink(&sink, env).expect("credentials");
        assert_eq!(
            os.auth,
            OpenSearchAuth::Basic {
                username: "TAXI_SINK_USERNAME-value".into(),
                password: "TAXI_SINK_PASSWORD-value".into()
            }
        );
        let serialized = serde_json::to_string(&sink).expect("serialize");
        assert!(!serialized.contains("value"), "no secret is ever serialized");
    }

    #[test]
    fn debug_hides_the_password() {
        let auth = OpenSearchAuth::Basic { username: "u".into(), password: "secret".into() };
        assert!(!format!("{auth:?}").contains("secret"));
    }
}

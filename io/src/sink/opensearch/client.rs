//! The HTTP client: TLS roots, basic auth or cached SigV4 credentials, one request with its
//! answer, and the cluster set-up (index template and indices).

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use ::opensearch::OpenSearch;
use ::opensearch::auth::Credentials;
use ::opensearch::cert::{Certificate, CertificateValidation};
use ::opensearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use ::opensearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use ::opensearch::http::{Method, Url};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use bytes::Bytes;
use serde_json::Value;

use super::config::{OpenSearchAuth, OpenSearchSettings};
use super::error::OpenSearchError;
use super::index::{index_name, index_template, template_name, valid_index_prefix};
use taxi_core::document::AnalysisKind;
use taxi_core::redact;

/// Credentials are refreshed this long before they expire.
const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A client for the cluster of `settings`: TLS roots, basic auth or SigV4.
pub(super) async fn build_client(settings: &OpenSearchSettings) -> Result<OpenSearch, OpenSearchError> {
    if !valid_index_prefix(&settings.index_prefix) {
        return Err(OpenSearchError::InvalidIndexPrefix { prefix: settings.index_prefix.clone() });
    }
    let url = Url::parse(&settings.url)
        .map_err(|e| OpenSearchError::InvalidUrl { url: redact::url(&settings.url).into_owned(), source: e.into() })?;
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
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Bytes,
}

/// Sends one request; an HTTP answer of any status is `Ok`.
pub(super) async fn send(
    client: &OpenSearch,
    url: &str,
    operation: &'static str,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
    body: Option<(Bytes, &'static str)>,
) -> Result<Answer, OpenSearchError> {
    let request_error = |source| OpenSearchError::Request { operation, url: redact::url(url).into_owned(), source };
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
pub(super) async fn send_json(
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
pub(super) fn status_error(operation: &'static str, answer: &Answer) -> OpenSearchError {
    let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let error_type = error.and_then(|e| e.get("type")).and_then(Value::as_str).unwrap_or("unknown").to_owned();
    let reason = match error.and_then(|e| e.get("reason")).and_then(Value::as_str) {
        Some(reason) => reason.to_owned(),
        None => truncate(&String::from_utf8_lossy(&answer.body), 300).into_owned(),
    };
    OpenSearchError::Status { operation, status: answer.status, error_type, reason }
}

/// `s` cut to at most `max` bytes (at a character boundary), with `…` when cut.
pub(super) fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}…", &s[..cut]))
}

/// Waits for the cluster, puts the template and creates the indices.
pub(super) async fn prepare_cluster(client: &OpenSearch, url: &str, prefix: &str) -> Result<(), OpenSearchError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_url(url: &str) -> OpenSearchSettings {
        OpenSearchSettings { url: url.to_owned(), ..OpenSearchSettings::default() }
    }

    #[tokio::test]
    async fn errors_show_the_cluster_url_without_its_credentials() {
        let invalid = build_client(&with_url("http://writer:s3cret@[::1")).await.expect_err("no closing bracket");
        assert!(matches!(invalid, OpenSearchError::InvalidUrl { .. }), "{invalid:?}");
        assert!(invalid.to_string().contains("\"http://***@[::1\""), "{invalid}");

        // Port 1 refuses connections: the request fails before any answer.
        let url = "http://writer:s3cret@127.0.0.1:1";
        let client = build_client(&with_url(url)).await.expect("a client");
        let Err(failed) = send(&client, url, "bulk", Method::Post, "/_bulk", &[], None).await else {
            panic!("nothing listens on port 1")
        };
        assert!(matches!(failed, OpenSearchError::Request { .. }), "{failed:?}");
        assert!(failed.to_string().starts_with("OpenSearch bulk request to http://***@127.0.0.1:1 failed"), "{failed}");
        for shown in [failed.to_string(), format!("{failed:?}"), invalid.to_string(), format!("{invalid:?}")] {
            assert!(!shown.contains("s3cret") && !shown.contains("writer"), "{shown}");
        }
    }
}

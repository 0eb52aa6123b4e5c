//! `spec.sink`: the OpenSearch cluster the results go to, its authentication, TLS and bulk batching.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use taxi_core::duration;
use taxi_core::settings::{self, SigV4Service, SinkAuthType};

use super::{DURATION_PATTERN, POSITIVE_DURATION};

/// Where the results go.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// An OpenSearch (or Amazon OpenSearch Service / Serverless) cluster.
    pub opensearch: OpenSearchSinkSpec,
}

/// The OpenSearch sink.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenSearchSinkSpec {
    /// Base URL of the cluster, `http://` or `https://`, like
    /// `https://search-taxi-abc123.us-east-1.es.amazonaws.com`. Required. It must not carry
    /// credentials (`user:password@`): it is stored in the worker ConfigMap and shown in logs;
    /// basic-auth credentials go in the Secret named by `auth.secretRef`.
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("self.matches('^https?://[^/?#]+')")
            .message("sink.opensearch.endpoint must be an http:// or https:// URL with a host"),
        validation = Rule::new("!self.matches('^https?://[^/?#]*@')").message(
            "sink.opensearch.endpoint must not carry credentials (user:password@ or user@): put them in a \
             Secret named by sink.opensearch.auth.secretRef, with auth.type basic"
        ),
    )]
    pub endpoint: String,
    /// Prefix of the index names the results are written to (`<prefix>-hot-spots`,
    /// `<prefix>-airport-trips`): lowercase letters, digits and `-`, starting and ending with a
    /// letter or digit, at most 100 characters. Default `taxi`.
    #[serde(default = "default_index_prefix")]
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"))]
    pub index_prefix: String,
    /// How requests are authenticated. Default: no authentication.
    #[serde(default)]
    pub auth: OpenSearchAuth,
    /// How results are batched into `_bulk` requests.
    #[serde(default)]
    pub bulk: BulkSpec,
    /// A Secret key holding the PEM CA bundle that signs the cluster's certificate, for private
    /// CAs. Default: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
}

/// Authentication to OpenSearch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(self.type == 'basic') == has(self.secretRef)")
        .message("sink.opensearch.auth.secretRef is required when auth.type is basic, and only then"),
    validation = Rule::new("!has(self.sigv4) || self.type == 'sigv4'")
        .message("sink.opensearch.auth.sigv4 is only allowed when auth.type is sigv4"),
)]
pub struct OpenSearchAuth {
    /// `none` (default), `basic` (HTTP basic auth from `secretRef`) or `sigv4` (AWS Signature
    /// Version 4 with the pods' AWS credentials, for Amazon OpenSearch Service and Serverless).
    #[serde(rename = "type", default)]
    pub type_: SinkAuthType,
    /// The Secret with the basic-auth user name and password. Required when `type` is `basic`,
    /// not allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<BasicAuthSecretRef>,
    /// SigV4 signing settings, only with `type: sigv4`. Default: service `es`, the stream's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigv4: Option<SigV4Spec>,
}

/// A Secret in the pipeline's namespace holding a user name and a password.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthSecretRef {
    /// Name of the Secret, in the TaxiPipeline's namespace. Required.
    pub name: String,
    /// Key of the user name in the Secret. Default `username`.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password in the Secret. Default `password`.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

/// AWS SigV4 signing of OpenSearch requests.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigV4Spec {
    /// Service name to sign for: `es` (Amazon OpenSearch Service, default) or `aoss` (OpenSearch
    /// Serverless).
    #[serde(default)]
    pub service: SigV4Service,
    /// Region to sign for, like `us-east-1`. Default: the stream's `region`, else the pods' AWS SDK
    /// configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// Batching of `_bulk` requests; a batch is sent when any limit is reached.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BulkSpec {
    /// Most documents in one `_bulk` request, at least 1. Default 5000.
    #[serde(default = "default_bulk_max_docs")]
    #[schemars(range(min = 1))]
    pub max_docs: i32,
    /// Most bytes of request body in one `_bulk` request, at least 1. Default 5242880 (5 MiB).
    #[serde(default = "default_bulk_max_bytes")]
    #[schemars(range(min = 1))]
    pub max_bytes: i64,
    /// Longest a result waits before its batch is sent, as a Go duration. Default `1s`.
    #[serde(default = "default_bulk_max_delay")]
    #[schemars(length(max = 64), regex(pattern = DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(POSITIVE_DURATION)
        .message("sink.opensearch.bulk.maxDelay must be a positive duration"))]
    pub max_delay: String,
}

impl Default for BulkSpec {
    fn default() -> Self {
        BulkSpec {
            max_docs: default_bulk_max_docs(),
            max_bytes: default_bulk_max_bytes(),
            max_delay: default_bulk_max_delay(),
        }
    }
}

/// A key of a Secret holding a PEM CA bundle.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Name of the Secret, in the TaxiPipeline's namespace. Required.
    pub name: String,
    /// Key of the PEM bundle in the Secret. Default `ca.crt`.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_index_prefix() -> String {
    settings::DEFAULT_INDEX_PREFIX.to_owned()
}
fn default_username_key() -> String {
    "username".to_owned()
}
fn default_password_key() -> String {
    "password".to_owned()
}
fn default_bulk_max_docs() -> i32 {
    i32::try_from(settings::DEFAULT_BULK_MAX_DOCS).unwrap_or(i32::MAX)
}
fn default_bulk_max_bytes() -> i64 {
    i64::try_from(settings::DEFAULT_BULK_MAX_BYTES).unwrap_or(i64::MAX)
}
fn default_bulk_max_delay() -> String {
    duration::format(settings::DEFAULT_BULK_MAX_DELAY)
}
fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

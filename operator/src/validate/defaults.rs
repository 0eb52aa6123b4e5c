//! What the operator's flags give every pipeline: [`Defaults`], and the parsing of the flag values
//! that are not plain strings (`key=value` label lists, `name[:key]` Secret keys), so a bad value
//! stops the operator at start instead of failing every reconcile pass.

use std::collections::BTreeMap;

use crate::resources::network_policy::IngressPeers;

/// Key of the CA bundle in a Secret when the flag names none: the same default as
/// `spec.sink.opensearch.caSecretRef.key`.
pub const DEFAULT_CA_KEY: &str = "ca.crt";

/// Operator-wide defaults a spec may leave out, and what every pipeline's pods get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    /// Worker image when `spec.worker.image` is unset (the chart sets it to its own version).
    pub worker_image: String,
    /// Secrets appended to every worker pod's `imagePullSecrets` (`--worker-image-pull-secrets`).
    pub image_pull_secrets: Vec<String>,
    /// The CA bundle of `https://` sinks whose spec names none (`--default-sink-ca-secret`).
    pub sink_ca_secret: Option<SecretKey>,
    /// Whether a pipeline that does not say gets a NetworkPolicy (`--worker-network-policy`).
    pub network_policy: bool,
    /// Who the workers' NetworkPolicies admit.
    pub ingress: IngressPeers,
}

impl Defaults {
    /// The defaults of an operator given only its worker image and its own namespace: no pull
    /// secrets, no CA bundle, and a NetworkPolicy for every pipeline that admits every pod of
    /// the operator's namespace and no metrics scraper.
    pub fn new(worker_image: impl Into<String>, operator_namespace: impl Into<String>) -> Self {
        Defaults {
            worker_image: worker_image.into(),
            image_pull_secrets: Vec::new(),
            sink_ca_secret: None,
            network_policy: true,
            ingress: IngressPeers { operator_namespace: operator_namespace.into(), ..IngressPeers::default() },
        }
    }
}

/// A key of a Secret in the pipeline's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretKey {
    /// Name of the Secret.
    pub name: String,
    /// The key in it.
    pub key: String,
}

/// A flag value the operator cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// An entry of a label list is not `key=value`, or not a valid label.
    #[error(
        "{flag}: `{entry}` is not a label `key=value` (a key like `app.kubernetes.io/name`, a value of at most \
             63 letters, digits, `-`, `_` or `.`)"
    )]
    Label {
        /// The flag.
        flag: &'static str,
        /// The entry.
        entry: String,
    },
    /// A label list names a key twice with different values.
    #[error("{flag}: the label `{key}` is given twice")]
    DuplicateLabel {
        /// The flag.
        flag: &'static str,
        /// The key.
        key: String,
    },
    /// A Secret key is not `name[:key]`.
    #[error("{flag}: `{value}` is not a Secret `name[:key]`")]
    SecretKey {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
    },
}

/// The labels of a `key=value,...` flag, already split at the commas; empty entries are skipped,
/// so an empty flag is no label.
pub fn parse_labels(flag: &'static str, entries: &[String]) -> Result<BTreeMap<String, String>, FlagError> {
    let mut labels = BTreeMap::new();
    for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        let label_error = || FlagError::Label { flag, entry: entry.to_owned() };
        let (key, value) = entry.split_once('=').ok_or_else(label_error)?;
        if !is_label_key(key) || !is_label_value(value) {
            return Err(label_error());
        }
        if labels.insert(key.to_owned(), value.to_owned()).is_some_and(|previous| previous != value) {
            return Err(FlagError::DuplicateLabel { flag, key: key.to_owned() });
        }
    }
    Ok(labels)
}

/// A `name[:key]` flag (key default [`DEFAULT_CA_KEY`]); empty is none.
pub fn parse_ca_secret(flag: &'static str, value: &str) -> Result<Option<SecretKey>, FlagError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let (name, key) = value.split_once(':').unwrap_or((value, DEFAULT_CA_KEY));
    if !is_dns_subdomain(name) || !is_secret_key(key) {
        return Err(FlagError::SecretKey { flag, value: value.to_owned() });
    }
    Ok(Some(SecretKey { name: name.to_owned(), key: key.to_owned() }))
}

/// The names of a comma-separated list flag, trimmed, without empty entries or repeats.
pub fn parse_names(entries: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name (Kubernetes' rule).
fn is_label_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(key),
    }
}

/// A label value: empty, or a name.
fn is_label_value(value: &str) -> bool {
    value.is_empty() || is_label_name(value)
}

/// At most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
fn is_label_name(name: &str) -> bool {
    let alphanumeric_ends =
        name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name.len() <= 63
        && alphanumeric_ends
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// At most 253 lowercase letters, digits, `-` and `.`, starting and ending with one of the first
/// two (Kubernetes' object names, label key prefixes).
fn is_dns_subdomain(name: &str) -> bool {
    let lower_alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.starts_with(lower_alphanumeric)
        && name.ends_with(lower_alphanumeric)
        && name.chars().all(|c| lower_alphanumeric(c) || matches!(c, '-' | '.'))
}

/// A Secret data key: letters, digits, `-`, `_` and `.`, at most 253.
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[&str]) -> Vec<String> {
        list.iter().map(|e| (*e).to_owned()).collect()
    }

    #[test]
    fn label_lists_parse_into_maps_and_skip_empty_entries() {
        let labels = parse_labels(
            "--operator-pod-labels",
            &entries(&["app.kubernetes.io/name=taxi-pipeline", " team=streaming ", "", "empty="]),
        );
        assert_eq!(
            labels,
            Ok(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "taxi-pipeline".to_owned()),
                ("empty".to_owned(), String::new()),
                ("team".to_owned(), "streaming".to_owned()),
            ]))
        );
        assert_eq!(parse_labels("--metrics-pod-labels", &entries(&[""])), Ok(BTreeMap::new()));
    }

    #[test]
    fn label_lists_refuse_what_kubernetes_would_refuse() {
        let too_long = format!("k={}", "v".repeat(64));
        for bad in ["no-equals", "=value", "key=has space", "Example.com/name=x", "key=-dash", too_long.as_str()] {
            assert_eq!(
                parse_labels("--metrics-namespace-labels", &entries(&[bad])),
                Err(FlagError::Label { flag: "--metrics-namespace-labels", entry: bad.to_owned() }),
                "{bad}"
            );
        }
        assert_eq!(
            parse_labels("--operator-pod-labels", &entries(&["a=1", "a=2"])),
            Err(FlagError::DuplicateLabel { flag: "--operator-pod-labels", key: "a".to_owned() })
        );
        assert_eq!(parse_labels("--operator-pod-labels", &entries(&["a=1", "a=1"])).map(|l| l.len()), Ok(1));
    }

    #[test]
    fn ca_secrets_default_their_key_like_the_spec_does() {
        let flag = "--default-sink-ca-secret";
        assert_eq!(
            parse_ca_secret(flag, "platform-ca"),
            Ok(Some(SecretKey { name: "platform-ca".to_owned(), key: DEFAULT_CA_KEY.to_owned() }))
        );
        assert_eq!(
            parse_ca_secret(flag, "platform-ca:bundle.pem"),
            Ok(Some(SecretKey { name: "platform-ca".to_owned(), key: "bundle.pem".to_owned() }))
        );
        assert_eq!(parse_ca_secret(flag, ""), Ok(None));
        for bad in ["Platform-CA", "platform-ca:", ":ca.crt", "platform-ca:a/b"] {
            assert_eq!(parse_ca_secret(flag, bad), Err(FlagError::SecretKey { flag, value: bad.to_owned() }), "{bad}");
        }
        let spec: crate::crd::CaSecretRef = serde_json::from_str(r#"{"name": "x"}"#).expect("a caSecretRef");
        assert_eq!(spec.key, DEFAULT_CA_KEY);
    }

    #[test]
    fn name_lists_are_trimmed_and_each_name_kept_once_in_order() {
        assert_eq!(
            parse_names(&entries(&["registry-b", " registry-a", "", "registry-b"])),
            ["registry-b", "registry-a"]
        );
    }
}

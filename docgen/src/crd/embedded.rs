//! The Kubernetes types the TaxiPipeline schema embeds (ResourceRequirements, Toleration, EnvVar,
//! security contexts, Condition, ...): where they are, what they are called, and their entry in the
//! Kubernetes API reference. The reference names and links them instead of expanding them.
//!
//! The CRD inlines every type, so its schema no longer says which node is a Kubernetes type. The
//! same Rust types are therefore rendered a second time with schemars' definitions kept: there
//! each Kubernetes type is a `$ref` to its OpenAPI name (`io.k8s.api.core.v1.Toleration`), found
//! at the same path as its inlined copy in the CRD.

use std::collections::BTreeMap;

use k8s_openapi::k8s_match;
use schemars::generate::SchemaSettings;
use serde_json::{Map, Value};
use taxi_operator::crd::TaxiPipeline;

/// Prefix of the OpenAPI names of Kubernetes' own types.
const KUBERNETES_PREFIX: &str = "io.k8s.";

/// A Kubernetes type embedded in the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesType {
    /// The OpenAPI name, e.g. `io.k8s.api.core.v1.Toleration`.
    pub openapi_name: String,
}

impl KubernetesType {
    /// The kind, e.g. `Toleration`.
    pub fn kind(&self) -> &str {
        self.openapi_name.rsplit('.').next().unwrap_or(&self.openapi_name)
    }

    /// Group and version as the API reference writes them, e.g. `core/v1` or `meta/v1`.
    pub fn group_version(&self) -> String {
        let mut parts = self.openapi_name.rsplit('.').skip(1);
        let version = parts.next().unwrap_or_default();
        let group = parts.next().unwrap_or_default();
        format!("{group}/{version}")
    }

    /// The type's entry in the Kubernetes API reference of the version k8s-openapi is built for.
    /// Its anchors are `kind-version-group`, where groups other than the legacy ones are written
    /// in full (`networking.k8s.io` becomes `networking-k8s-io`).
    pub fn reference_url(&self) -> String {
        let mut parts = self.openapi_name.rsplit('.');
        let kind = parts.next().unwrap_or_default().to_lowercase();
        let version = parts.next().unwrap_or_default();
        let group = match parts.next().unwrap_or_default() {
            group @ ("core" | "meta" | "apps" | "batch" | "autoscaling" | "policy") => group.to_owned(),
            group => format!("{group}-k8s-io"),
        };
        format!(
            "https://kubernetes.io/docs/reference/generated/kubernetes-api/v1.{}/#{kind}-{version}-{group}",
            kubernetes_minor()
        )
    }
}

/// The Kubernetes minor version whose API k8s-openapi was built for (the workspace enables its
/// `latest` feature), so the links follow the types the operator actually embeds.
pub fn kubernetes_minor() -> u32 {
    k8s_match!((), {
        k8s_if_ge_1_37!(() => 37),
        k8s_if_1_36!(() => 36),
        k8s_if_1_35!(() => 35),
        k8s_if_1_34!(() => 34),
        k8s_if_le_1_33!(() => 33),
    })
}

/// Every Kubernetes type the TaxiPipeline schema embeds, by the path of its node in the CRD
/// (`spec.worker.tolerations[]`, `status.conditions[]`: `[]` is a list's items, `{}` a map's
/// values).
pub fn kubernetes_types() -> BTreeMap<String, KubernetesType> {
    let generator = SchemaSettings::openapi3().with(|s| s.meta_schema = None).into_generator();
    let schema = generator.into_root_schema_for::<TaxiPipeline>().to_value();
    let empty = Map::new();
    let definitions = schema.pointer("/components/schemas").and_then(Value::as_object).unwrap_or(&empty);
    let mut found = BTreeMap::new();
    collect(&schema, String::new(), definitions, &mut found);
    found
}

fn collect(node: &Value, path: String, definitions: &Map<String, Value>, found: &mut BTreeMap<String, KubernetesType>) {
    if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        if name.starts_with(KUBERNETES_PREFIX) {
            found.insert(path, KubernetesType { openapi_name: name.to_owned() });
            return;
        }
        if let Some(definition) = definitions.get(name) {
            collect(definition, path.clone(), definitions, found);
        }
    }
    for combinator in ["allOf", "anyOf", "oneOf"] {
        for sub in node.get(combinator).and_then(Value::as_array).into_iter().flatten() {
            collect(sub, path.clone(), definitions, found);
        }
    }
    for (name, property) in node.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let child = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        collect(property, child, definitions, found);
    }
    if let Some(items) = node.get("items") {
        collect(items, format!("{path}[]"), definitions, found);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        collect(values, format!("{path}{{}}"), definitions, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubernetes(name: &str) -> KubernetesType {
        KubernetesType { openapi_name: name.to_owned() }
    }

    #[test]
    fn the_pod_settings_and_conditions_are_found_at_their_paths() {
        let types = kubernetes_types();
        let at = |path: &str| types.get(path).map(KubernetesType::kind);
        assert_eq!(at("spec.worker.resources"), Some("ResourceRequirements"));
        assert_eq!(at("spec.worker.tolerations[]"), Some("Toleration"));
        assert_eq!(at("spec.worker.podTemplate.affinity"), Some("Affinity"));
        assert_eq!(at("spec.worker.podTemplate.env[]"), Some("EnvVar"));
        assert_eq!(at("spec.worker.podTemplate.podSecurityContext"), Some("PodSecurityContext"));
        assert_eq!(at("spec.worker.podTemplate.containerSecurityContext"), Some("SecurityContext"));
        assert_eq!(at("status.conditions[]"), Some("Condition"));
        assert_eq!(at("spec.stream"), None, "the TaxiPipeline's own types are not Kubernetes'");
    }

    #[test]
    fn links_point_at_the_types_entry_in_the_api_reference() {
        let minor = kubernetes_minor();
        assert!((33..=37).contains(&minor), "{minor}");
        let toleration = kubernetes("io.k8s.api.core.v1.Toleration");
        assert_eq!(toleration.group_version(), "core/v1");
        assert_eq!(
            toleration.reference_url(),
            format!("https://kubernetes.io/docs/reference/generated/kubernetes-api/v1.{minor}/#toleration-v1-core")
        );
        let condition = kubernetes("io.k8s.apimachinery.pkg.apis.meta.v1.Condition");
        assert_eq!(condition.kind(), "Condition");
        assert!(condition.reference_url().ends_with("#condition-v1-meta"));
        let policy = kubernetes("io.k8s.api.networking.v1.NetworkPolicy");
        assert!(policy.reference_url().ends_with("#networkpolicy-v1-networking-k8s-io"));
    }
}

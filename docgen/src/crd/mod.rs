//! The TaxiPipeline API reference (`docs/reference/crd.md`), generated from the CustomResourceDefinition
//! the operator generates (`TaxiPipeline::crd()`, what `taxi-operator crd` prints): every field of
//! `spec` and `status` with its type, default, whether it is required, its description (the Rust
//! doc comment that became the schema's description), allowed values, bounds and the messages of
//! the CEL rules declared on it, grouped by section.
//!
//! Kubernetes types the schema embeds are named and linked to the Kubernetes API reference
//! ([`embedded`]) instead of being expanded; [`field`] turns one schema node into words.

pub mod embedded;
pub mod field;

use std::fmt::Write as _;

use kube::CustomResourceExt;
use serde_json::Value;
use taxi_operator::crd::TaxiPipeline;

use crate::markdown::{anchor, cell, code, generated_notice, prose, row, table_header};
use field::{Default, Field, KubernetesTypes, allowed_values, bounds, default_of, fields, rules, type_text};

/// The sections of the page in reading order, each with the path of its root. A field belongs to
/// the section with the longest root it lies under; `spec` keeps the top-level fields.
pub const SECTIONS: [(&str, &str); 10] = [
    ("spec", "spec"),
    ("stream", "spec.stream"),
    ("autoscaling", "spec.autoscaling"),
    ("eventTime", "spec.eventTime"),
    ("analyses", "spec.analyses"),
    ("checkpoint", "spec.checkpoint"),
    ("sink", "spec.sink"),
    ("worker", "spec.worker"),
    ("worker.podTemplate", "spec.worker.podTemplate"),
    ("status", "status"),
];

/// The page `docs/reference/crd.md`.
pub fn page() -> String {
    let crd = serde_json::to_value(TaxiPipeline::crd()).expect("a CustomResourceDefinition serializes to JSON");
    render(&crd, &embedded::kubernetes_types())
}

/// The section a field at `path` belongs to.
pub fn section_of(path: &str) -> Option<&'static str> {
    SECTIONS
        .iter()
        .filter(|(_, root)| {
            path == *root || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
        .max_by_key(|(_, root)| root.len())
        .map(|(name, _)| *name)
}

/// The page for a CustomResourceDefinition `crd` (as JSON) of one version.
pub fn render(crd: &Value, types: &KubernetesTypes) -> String {
    let version = &crd["spec"]["versions"][0];
    let schema = &version["schema"]["openAPIV3Schema"];
    let group = crd["spec"]["group"].as_str().unwrap_or_default();
    let version_name = version["name"].as_str().unwrap_or_default();
    let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();

    let mut page = generated_notice("the TaxiPipeline CRD the operator generates (operator/src/crd.rs)");
    let _ = writeln!(page, "\n# {kind} API reference\n");
    let _ = writeln!(
        page,
        "API stability: {} is an alpha API, and its fields may change between minor versions.\n",
        code(&format!("{group}/{version_name}"))
    );
    if let Some(description) = schema["description"].as_str() {
        let _ = writeln!(page, "{}\n", prose(description, "\n\n"));
    }
    resource(&mut page, crd, version, schema);

    let mut all = Vec::new();
    fields(schema, "", false, types, &mut all);
    page.push_str("\n## Contents\n\n");
    for (name, _) in SECTIONS {
        let _ = writeln!(page, "- [{name}](#{})", anchor(name));
    }
    for (name, root) in SECTIONS {
        let _ = writeln!(page, "\n## {name}");
        for field in all.iter().filter(|f| section_of(&f.path) == Some(name)) {
            entry(&mut page, field, types);
        }
        if root == "status" {
            page.push_str("\nThe operator writes the status; it is not set by hand.\n");
        }
    }
    page
}

/// Names, scope, the rules on the whole object and the columns of `kubectl get`.
fn resource(page: &mut String, crd: &Value, version: &Value, schema: &Value) {
    let names = &crd["spec"]["names"];
    let short_names: Vec<String> =
        names["shortNames"].as_array().into_iter().flatten().filter_map(Value::as_str).map(code).collect();
    let _ = writeln!(
        page,
        "| | |\n| --- | --- |\n| Kind | {} |\n| apiVersion | {} |\n| Plural, short names | {}, {} |\n| Scope | {} |",
        code(names["kind"].as_str().unwrap_or_default()),
        code(&format!(
            "{}/{}",
            crd["spec"]["group"].as_str().unwrap_or_default(),
            version["name"].as_str().unwrap_or_default()
        )),
        code(names["plural"].as_str().unwrap_or_default()),
        short_names.join(", "),
        crd["spec"]["scope"].as_str().unwrap_or_default(),
    );
    if let Some(scale) = version["subresources"]["scale"].as_object() {
        let path = |key: &str| scale.get(key).and_then(Value::as_str).map(code).unwrap_or_default();
        let _ = writeln!(
            page,
            "| Scale subresource | replicas from {}, status from {} |",
            path("specReplicasPath"),
            path("statusReplicasPath")
        );
    }
    let object_rules = rules(schema);
    if !object_rules.is_empty() {
        page.push_str("\nRules on the whole object:\n\n");
        for rule in object_rules {
            let _ = writeln!(page, "- {rule}");
        }
    }
    if let Some(columns) = version["additionalPrinterColumns"].as_array() {
        let _ = write!(page, "\n`kubectl get` shows:\n\n{}", table_header(&["Column", "Type", "From", "Meaning"]));
        for column in columns {
            let text = |key: &str| column[key].as_str().unwrap_or_default();
            page.push_str(&row(&[
                text("name").to_owned(),
                text("type").to_owned(),
                code(text("jsonPath")),
                cell(text("description")),
            ]));
        }
    }
}

/// One field: heading, facts line, description, bounds and rules.
fn entry(page: &mut String, field: &Field<'_>, types: &KubernetesTypes) {
    let node = field.node;
    let _ = writeln!(page, "\n### {}\n", code(&field.path));
    let mut facts = vec![type_text(node, &field.path, types)];
    if field.path.ends_with("[]") {
        facts.push("each item of the list".to_owned());
    } else {
        facts.push(if field.required { "required" } else { "optional" }.to_owned());
    }
    let default = default_of(node);
    match &default {
        Some(Default::Inline(value)) => facts.push(format!("default {value}")),
        Some(Default::FieldsDefaults) => facts.push("defaults to its fields' defaults".to_owned()),
        Some(Default::Block(_)) | None => {}
    }
    let values = allowed_values(node);
    if !values.is_empty() {
        facts.push(format!("one of {}", values.join(", ")));
    }
    let _ = writeln!(page, "{}", facts.join(" · "));
    if let Some(description) = node["description"].as_str() {
        let _ = writeln!(page, "\n{}", prose(description, "\n\n"));
    }
    if let Some(Default::Block(block)) = &default {
        let _ = writeln!(page, "\nDefault:\n\n{block}");
    }
    let checks: Vec<String> =
        bounds(node).into_iter().chain(rules(node).into_iter().map(|r| format!("Rule: {r}"))).collect();
    if !checks.is_empty() {
        page.push('\n');
        for check in checks {
            let _ = writeln!(page, "- {check}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_fall_into_their_sections() {
        assert_eq!(section_of("spec.parallelism"), Some("spec"));
        assert_eq!(section_of("spec.stream.consumer"), Some("stream"));
        assert_eq!(section_of("spec.streamer"), Some("spec"), "a prefix of a name is not a parent");
        assert_eq!(section_of("spec.worker.image"), Some("worker"));
        assert_eq!(section_of("spec.worker.podTemplate.env[]"), Some("worker.podTemplate"));
        assert_eq!(section_of("status.conditions[]"), Some("status"));
    }

    #[test]
    fn every_section_has_its_root_in_the_schema_and_every_field_a_section() {
        let crd = serde_json::to_value(TaxiPipeline::crd()).expect("JSON");
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut all = Vec::new();
        fields(schema, "", false, &embedded::kubernetes_types(), &mut all);
        for (name, root) in SECTIONS {
            assert!(all.iter().any(|f| f.path == root), "section {name}: no field {root}");
        }
        for field in &all {
            assert!(section_of(&field.path).is_some(), "{} is in no section", field.path);
        }
    }

    #[test]
    fn the_page_documents_fields_with_their_facts() {
        let page = page();
        assert!(page.contains("API stability: `taxipipeline.io/v1alpha1` is an alpha API"), "{page}");
        let consumer = "\n### `spec.stream.consumer`\n\nstring · optional · default `polling` · one of `polling`, `efo`\n\nHow records are read:";
        assert!(page.contains(consumer), "{page}");
        assert!(page.contains("\n### `spec.stream.name`\n\nstring · required\n"), "{page}");
        assert!(page.contains("- Rule: stream.name is immutable (checked on updates)\n"), "{page}");
        assert!(page.contains("- 1 to 12\n"), "geohashPrecision's bounds: {page}");
        assert!(
            page.contains("\n### `spec.analyses.airportTrips.airports[]`\n\nobject · each item of the list\n"),
            "{page}"
        );
        assert!(page.contains("Rules on the whole object:\n\n- metadata.name must be at most 45 characters"), "{page}");
    }

    #[test]
    fn embedded_kubernetes_types_are_linked_not_expanded() {
        let page = page();
        assert!(page.contains("\n### `spec.worker.resources`\n\n[`ResourceRequirements`](https://kubernetes.io/docs/reference/generated/kubernetes-api/v1."), "{page}");
        assert!(page.contains("\n### `spec.worker.tolerations`\n\nlist of [`Toleration`]("), "{page}");
        assert!(!page.contains("spec.worker.resources.limits"), "ResourceRequirements expanded: {page}");
        assert!(!page.contains("`spec.worker.podTemplate.affinity.nodeAffinity`"), "Affinity expanded: {page}");
        assert!(page.contains("\n### `status.lastCheckpointTime`\n\nstring (date-time) · optional"), "{page}");
    }
}

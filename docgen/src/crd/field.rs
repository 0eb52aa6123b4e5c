//! One field of the CRD schema as the reference shows it: its type (a named, linked Kubernetes
//! type where one is embedded), default, allowed values, bounds and CEL rules.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::embedded::KubernetesType;
use crate::markdown::{code, prose};

/// A field: a node of the schema and where it sits.
#[derive(Clone, Debug)]
pub struct Field<'a> {
    /// Its path, e.g. `spec.stream.consumer`; `[]` stands for a list's items.
    pub path: String,
    /// Its schema node.
    pub node: &'a Value,
    /// Whether its parent object lists it as required.
    pub required: bool,
}

/// The Kubernetes types embedded in the schema, by path (see [`super::embedded`]).
pub type KubernetesTypes = BTreeMap<String, KubernetesType>;

/// Every field under `node` (itself included when `path` is not empty), depth first, in the
/// schema's order. A Kubernetes type is one field: its own fields are in the Kubernetes reference.
pub fn fields<'a>(node: &'a Value, path: &str, required: bool, types: &KubernetesTypes, out: &mut Vec<Field<'a>>) {
    if !path.is_empty() {
        out.push(Field { path: path.to_owned(), node, required });
    }
    if kubernetes_type(node, path, types).is_some() {
        return;
    }
    let required_names: Vec<&str> =
        node.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    for (name, child) in properties(node) {
        let child_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
        fields(child, &child_path, required_names.contains(&name.as_str()), types, out);
    }
    // A list of objects documents its items as a field of their own (`airports[]`); the items of
    // a list of strings are described with the list.
    // A list of Kubernetes objects is described by its type alone.
    let items_path = format!("{path}[]");
    if let Some(items) =
        node.get("items").filter(|items| is_object(items) && kubernetes_type(items, &items_path, types).is_none())
    {
        fields(items, &items_path, false, types, out);
    }
}

fn properties(node: &Value) -> impl Iterator<Item = (&String, &Value)> {
    node.get("properties").and_then(Value::as_object).into_iter().flatten()
}

fn is_object(node: &Value) -> bool {
    node.get("type").and_then(Value::as_str) == Some("object")
}

/// The Kubernetes type this node is, if the CRD embeds one here as an object (a `Time` is a
/// plain string and stays one).
pub fn kubernetes_type<'t>(node: &Value, path: &str, types: &'t KubernetesTypes) -> Option<&'t KubernetesType> {
    types.get(path).filter(|_| is_object(node))
}

/// The field's type: `string`, `integer (int32)`, `object`, `list of string`, `map of string`,
/// or a named Kubernetes type linked to its reference.
pub fn type_text(node: &Value, path: &str, types: &KubernetesTypes) -> String {
    if let Some(kubernetes) = kubernetes_type(node, path, types) {
        return format!(
            "[{}]({}) ({})",
            code(kubernetes.kind()),
            kubernetes.reference_url(),
            kubernetes.group_version()
        );
    }
    if node.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        return "integer or string".to_owned();
    }
    let format = node.get("format").and_then(Value::as_str);
    match node.get("type").and_then(Value::as_str) {
        Some("array") => {
            let items = node.get("items").unwrap_or(&Value::Null);
            format!("list of {}", type_text(items, &format!("{path}[]"), types))
        }
        Some("object") => match node.get("additionalProperties").filter(|v| v.is_object()) {
            Some(values) => format!("map of {}", type_text(values, &format!("{path}{{}}"), types)),
            None => "object".to_owned(),
        },
        Some(scalar @ ("integer" | "string")) => match format {
            Some(format) => format!("{scalar} ({format})"),
            None => scalar.to_owned(),
        },
        Some(other) => other.to_owned(),
        None => "any".to_owned(),
    }
}

/// How the reference shows a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Default {
    /// A scalar or short value, as inline code.
    Inline(String),
    /// An object whose default is exactly what its fields' own defaults make of it.
    FieldsDefaults,
    /// A longer value, as a JSON block (a list one item per line).
    Block(String),
}

/// The field's default, if it has one.
pub fn default_of(node: &Value) -> Option<Default> {
    let default = node.get("default")?;
    if is_object(node) && properties(node).next().is_some() && *default == fields_defaults(node) {
        return Some(Default::FieldsDefaults);
    }
    let inline = match default {
        Value::String(s) if s.is_empty() => "\"\"".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if inline.len() <= 80 {
        return Some(Default::Inline(code(&inline)));
    }
    Some(Default::Block(match default {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|i| format!("  {i}")).collect();
            format!("```json\n[\n{}\n]\n```", items.join(",\n"))
        }
        other => format!("```json\n{other}\n```"),
    }))
}

/// The object the API server makes of an absent field from its fields' own defaults.
fn fields_defaults(node: &Value) -> Value {
    let mut object = Map::new();
    for (name, child) in properties(node) {
        if let Some(default) = child.get("default") {
            object.insert(name.clone(), default.clone());
        }
    }
    Value::Object(object)
}

/// The values an enum allows (a `null` in the list only marks the field optional).
pub fn allowed_values(node: &Value) -> Vec<String> {
    node.get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| !v.is_null())
        .map(|v| code(v.as_str().map_or_else(|| v.to_string(), str::to_owned).as_str()))
        .collect()
}

/// The OpenAPI bounds of the field, in words; those of a list's scalar items or a map's values
/// are prefixed "each item" / "each value".
pub fn bounds(node: &Value) -> Vec<String> {
    let mut out = own_bounds(node);
    if let Some(items) = node.get("items").filter(|items| !is_object(items)) {
        out.extend(own_bounds(items).into_iter().map(|b| format!("each item: {b}")));
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object() && !is_object(v)) {
        out.extend(own_bounds(values).into_iter().map(|b| format!("each value: {b}")));
    }
    out
}

fn own_bounds(node: &Value) -> Vec<String> {
    let number = |key: &str| node.get(key).and_then(Value::as_f64).map(number_text);
    let count = |key: &str| node.get(key).and_then(Value::as_u64);
    let mut out = Vec::new();
    match (number("minimum"), number("maximum")) {
        (Some(min), Some(max)) => out.push(format!("{min} to {max}")),
        (Some(min), None) => out.push(format!("at least {min}")),
        (None, Some(max)) => out.push(format!("at most {max}")),
        (None, None) => {}
    }
    for (min, max, unit) in [
        ("minLength", "maxLength", "characters"),
        ("minItems", "maxItems", "items"),
        ("minProperties", "maxProperties", "entries"),
    ] {
        match (count(min), count(max)) {
            (Some(min), Some(max)) => out.push(format!("{min} to {max} {unit}")),
            (Some(min), None) => out.push(format!("at least {min} {unit}")),
            (None, Some(max)) => out.push(format!("at most {max} {unit}")),
            (None, None) => {}
        }
    }
    if let Some(pattern) = node.get("pattern").and_then(Value::as_str) {
        out.push(format!("matches {}", code(pattern)));
    }
    if let Some(keys) = node.get("x-kubernetes-list-map-keys").and_then(Value::as_array) {
        let keys: Vec<String> = keys.iter().filter_map(Value::as_str).map(code).collect();
        out.push(format!("one item per {}", keys.join(", ")));
    }
    out
}

/// `1.0` as `1`, `40.5` as `40.5`.
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { n.to_string() }
}

/// The messages of the CEL rules declared on this node (the rule itself where it has no
/// message); rules comparing with `oldSelf` are marked as checked on updates.
pub fn rules(node: &Value) -> Vec<String> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|validation| {
            let rule = validation.get("rule").and_then(Value::as_str).unwrap_or_default();
            let mut text = match validation.get("message").and_then(Value::as_str) {
                Some(message) => prose(message, " "),
                None => format!("rule {}", code(rule)),
            };
            if rule.contains("oldSelf") {
                text.push_str(" (checked on updates)");
            }
            text
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn types_name_formats_lists_and_maps() {
        let none = KubernetesTypes::new();
        assert_eq!(type_text(&json!({"type": "integer", "format": "int32"}), "a", &none), "integer (int32)");
        assert_eq!(type_text(&json!({"type": "number", "format": "double"}), "a", &none), "number");
        assert_eq!(type_text(&json!({"type": "array", "items": {"type": "string"}}), "a", &none), "list of string");
        let map = json!({"type": "object", "additionalProperties": {"type": "string"}});
        assert_eq!(type_text(&map, "a", &none), "map of string");
        let time = json!({"type": "string", "format": "date-time"});
        assert_eq!(type_text(&time, "a", &none), "string (date-time)");
    }

    #[test]
    fn an_embedded_kubernetes_object_is_named_and_linked_but_a_time_stays_a_string() {
        let mut types = KubernetesTypes::new();
        types.insert("t[]".to_owned(), KubernetesType { openapi_name: "io.k8s.api.core.v1.Toleration".to_owned() });
        types.insert(
            "at".to_owned(),
            KubernetesType { openapi_name: "io.k8s.apimachinery.pkg.apis.meta.v1.Time".to_owned() },
        );
        let list = json!({"type": "array", "items": {"type": "object", "properties": {"key": {"type": "string"}}}});
        let text = type_text(&list, "t", &types);
        assert!(text.starts_with("list of [`Toleration`](https://kubernetes.io/docs/reference/generated/"), "{text}");
        assert!(text.ends_with("#toleration-v1-core) (core/v1)"), "{text}");
        let mut out = Vec::new();
        fields(&list, "t", false, &types, &mut out);
        let paths: Vec<&str> = out.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["t"], "neither the Toleration nor its fields are listed on their own");
        assert_eq!(type_text(&json!({"type": "string", "format": "date-time"}), "at", &types), "string (date-time)");
    }

    #[test]
    fn defaults_are_inline_summarised_or_blocks() {
        let inline = |text: &str| Some(Default::Inline(text.to_owned()));
        assert_eq!(default_of(&json!({"default": "polling"})), inline("`polling`"));
        assert_eq!(default_of(&json!({"default": ""})), inline("`\"\"`"));
        assert_eq!(default_of(&json!({"default": 2})), inline("`2`"));
        assert_eq!(default_of(&json!({"type": "string"})), None);
        let object = json!({"type": "object", "default": {"a": 1},
            "properties": {"a": {"default": 1}, "b": {"type": "string"}}});
        assert_eq!(default_of(&object), Some(Default::FieldsDefaults));
        let boxed = json!({"type": "object", "default": {"a": 1}, "properties": {"a": {"type": "integer"}}});
        assert_eq!(default_of(&boxed), inline("`{\"a\":1}`"));
        let long = json!({"default": [{"name": "a".repeat(50)}, {"name": "b".repeat(50)}]});
        let Some(Default::Block(block)) = default_of(&long) else { panic!("not a block") };
        assert!(block.starts_with("```json\n[\n  {\"name\":\"aaaa"), "{block}");
    }

    #[test]
    fn bounds_and_rules_read_as_words() {
        let node = json!({"minimum": 1.0, "maximum": 12.0, "maxLength": 64, "pattern": "^a$",
            "x-kubernetes-validations": [
                {"rule": "self == oldSelf", "message": "stream.name is immutable"},
                {"rule": "self.minLat < self.maxLat", "message": "needs minLat < maxLat"},
                {"rule": "self != ''"}]});
        assert_eq!(bounds(&node), ["1 to 12", "at most 64 characters", "matches `^a$`"]);
        assert_eq!(
            rules(&node),
            ["stream.name is immutable (checked on updates)", "needs minLat &lt; maxLat", "rule `self != ''`"]
        );
        let list = json!({"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 63}});
        assert_eq!(bounds(&list), ["at most 64 items", "each item: at most 63 characters"]);
        assert_eq!(bounds(&json!({"minimum": 0.5})), ["at least 0.5"]);
    }

    #[test]
    fn enums_list_their_values_without_null() {
        assert_eq!(allowed_values(&json!({"enum": ["polling", "efo", null]})), ["`polling`", "`efo`"]);
    }
}

//! The workers' NetworkPolicy: on by default, off when the pipeline or the operator says so, and
//! admitting only the operator and the configured metrics scrapers, only on the HTTP port.

use taxi_operator::resources::network_policy::IngressPeers;

use super::*;

fn labels(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The operator's defaults with these ingress peers.
fn admitting(peers: IngressPeers) -> Defaults {
    Defaults { ingress: peers, ..defaults() }
}

fn policy_spec(pipeline: &TaxiPipeline, operator: &Defaults) -> Option<Value> {
    let resources = build(&validate(pipeline, operator).expect("valid"), 2, &fixed_assignment(), ASSIGNED_AT);
    resources.network_policy.map(|policy| serde_json::to_value(policy.spec).expect("JSON"))
}

/// The chart's operator pods.
fn operator_peers() -> IngressPeers {
    IngressPeers {
        operator_namespace: OPERATOR_NAMESPACE.to_owned(),
        operator_pod_labels: labels(&[
            ("app.kubernetes.io/instance", "taxi"),
            ("app.kubernetes.io/name", "taxi-pipeline"),
        ]),
        ..IngressPeers::default()
    }
}

fn operator_peer() -> Value {
    json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/instance": "taxi", "app.kubernetes.io/name": "taxi-pipeline"}},
    })
}

#[test]
fn the_policy_admits_only_the_operator_and_only_on_the_http_port() {
    let spec = policy_spec(&minimal(), &admitting(operator_peers())).expect("on by default");
    let selector = serde_json::to_value(selector_labels("nyc-taxi")).expect("labels");
    assert_eq!(
        spec,
        json!({
            "podSelector": {"matchLabels": selector},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [operator_peer()], "ports": [{"port": 8080, "protocol": "TCP"}]}],
        }),
        "ingress only: egress is not restricted"
    );
}

#[test]
fn without_operator_labels_every_pod_of_the_operators_namespace_is_admitted() {
    let spec = policy_spec(&minimal(), &defaults()).expect("on by default");
    assert_eq!(
        spec["ingress"][0]["from"],
        json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}, "podSelector": {}}])
    );
}

#[test]
fn metrics_scrapers_are_admitted_as_the_operator_names_them() {
    let monitoring = labels(&[("kubernetes.io/metadata.name", "monitoring")]);
    let prometheus = labels(&[("app.kubernetes.io/name", "prometheus")]);
    let cases = [
        // Both: the scraper pods in those namespaces.
        (
            monitoring.clone(),
            prometheus.clone(),
            Some(json!({"namespaceSelector": {"matchLabels": monitoring}, "podSelector": {"matchLabels": prometheus}})),
        ),
        // Namespaces alone: every pod in them.
        (monitoring.clone(), BTreeMap::new(), Some(json!({"namespaceSelector": {"matchLabels": monitoring}}))),
        // Pods alone: those pods of the pipeline's own namespace.
        (BTreeMap::new(), prometheus.clone(), Some(json!({"podSelector": {"matchLabels": prometheus}}))),
        // Neither: only the operator.
        (BTreeMap::new(), BTreeMap::new(), None),
    ];
    for (namespace_labels, pod_labels, scraper) in cases {
        let peers = IngressPeers {
            metrics_namespace_labels: namespace_labels,
            metrics_pod_labels: pod_labels,
            ..operator_peers()
        };
        let spec = policy_spec(&minimal(), &admitting(peers)).expect("on by default");
        let expected: Vec<Value> = std::iter::once(operator_peer()).chain(scraper).collect();
        assert_eq!(spec["ingress"][0]["from"], Value::Array(expected));
        assert_eq!(spec["ingress"].as_array().map(Vec::len), Some(1), "one rule: every peer on the one port");
    }
}

#[test]
fn the_policy_selects_exactly_the_worker_pods_and_is_owned_like_the_rest() {
    let all = objects(&built(&full()));
    let policy = object(&all, NETWORK_POLICY);
    let selector = serde_json::to_value(selector_labels("nyc-taxi")).expect("labels");
    assert_eq!(policy["spec"]["podSelector"], json!({"matchLabels": selector}));
    assert_eq!(policy["metadata"]["namespace"], "taxi");
    assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], UID);
}

#[test]
fn the_pipeline_or_the_operator_switches_the_policy_off() {
    let off = patched(&minimal(), "worker: {networkPolicy: {enabled: false}}");
    let on = patched(&minimal(), "worker: {networkPolicy: {enabled: true}}");
    let operator_off = Defaults { network_policy: false, ..defaults() };
    assert!(policy_spec(&off, &defaults()).is_none(), "the pipeline switched it off");
    assert!(policy_spec(&minimal(), &operator_off).is_none(), "the operator's default is off");
    assert!(policy_spec(&on, &operator_off).is_some(), "the pipeline asks for one");
    let before = built(&minimal());
    let after = build(&valid(&off), 2, &fixed_assignment(), ASSIGNED_AT);
    assert_eq!(changed_paths(&before, &after), paths(&[NETWORK_POLICY]), "nothing else changes");
}

//! `spec.worker.podTemplate` and the operator's defaults for every worker pod: each field reaches
//! exactly the pod fields it should, replaces the `spec.worker` field of the same meaning, and
//! never replaces what the operator owns.

use k8s_openapi::api::core::v1::PodSpec;
use taxi_operator::crd::{RESERVED_KEY_PREFIX, RESERVED_LABEL_KEYS};
use taxi_operator::resources::{default_container_security_context, default_pod_security_context, operator_pod_labels};
use taxi_operator::validate::SecretKey;

use super::*;

fn pod_spec(resources: &Resources) -> &PodSpec {
    resources.stateful_set.spec.template.spec.as_ref().expect("pod spec")
}

fn pod_labels(resources: &Resources) -> BTreeMap<String, String> {
    let meta = resources.stateful_set.spec.template.metadata.as_ref().expect("pod metadata");
    meta.labels.clone().unwrap_or_default()
}

fn pod_annotations(resources: &Resources) -> BTreeMap<String, String> {
    let meta = resources.stateful_set.spec.template.metadata.as_ref().expect("pod metadata");
    meta.annotations.clone().unwrap_or_default()
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The StatefulSet's pod field `path` (under `spec.template.spec`) as JSON.
fn pod_field(resources: &Resources, path: &str) -> Value {
    serde_json::to_value(pod_spec(resources)).expect("pod spec JSON")[path].clone()
}

// ---------------------------------------------------------------------------------------------
// Metadata.

#[test]
fn template_labels_are_added_to_the_pods_only() {
    let before = built(&minimal());
    let after = built(&patched(&minimal(), "worker: {podTemplate: {labels: {team: streaming, cost-center: c42}}}"));
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            r#"StatefulSet/nyc-taxi-worker:spec.template.metadata.labels["cost-center"]"#,
            "StatefulSet/nyc-taxi-worker:spec.template.metadata.labels.team",
        ])
    );
    let labels = pod_labels(&after);
    assert_eq!((labels["team"].as_str(), labels["cost-center"].as_str()), ("streaming", "c42"));
}

#[test]
fn the_builder_never_lets_a_label_replace_the_operators_own() {
    // validate refuses such labels; the builder holds even for a ValidPipeline made without it.
    let mut pipeline = valid(&minimal());
    pipeline.pod.pod_labels = map(&[("app.kubernetes.io/instance", "someone-else"), ("team", "streaming")]);
    let labels = pod_labels(&build(&pipeline, 2, &fixed_assignment(), ASSIGNED_AT));
    for (key, value) in operator_pod_labels("nyc-taxi") {
        assert_eq!(labels.get(&key), Some(&value), "{key}");
    }
    assert_eq!(labels["team"], "streaming");
}

#[test]
fn every_label_the_operator_puts_on_a_pod_is_reserved() {
    for key in operator_pod_labels("nyc-taxi").keys() {
        assert!(
            RESERVED_LABEL_KEYS.contains(&key.as_str()) || key.starts_with(RESERVED_KEY_PREFIX),
            "{key} is the operator's but a pod template could set it"
        );
    }
}

#[test]
fn template_annotations_replace_pod_annotations_and_may_override_the_scrape_defaults() {
    let legacy = patched(&minimal(), "worker: {podAnnotations: {legacy: 'yes'}}");
    let both = patched(
        &legacy,
        "worker: {podTemplate: {annotations: {team: streaming, prometheus.io/path: /custom-metrics}}}",
    );
    assert_eq!(pod_annotations(&built(&legacy)).get("legacy").map(String::as_str), Some("yes"));
    let annotations = pod_annotations(&built(&both));
    let hash = annotations.get(CONFIG_HASH_ANNOTATION).cloned().expect("the config hash");
    assert_eq!(
        annotations,
        map(&[
            ("prometheus.io/path", "/custom-metrics"),
            ("prometheus.io/port", "8080"),
            ("prometheus.io/scrape", "true"),
            (CONFIG_HASH_ANNOTATION, hash.as_str()),
            ("team", "streaming"),
        ]),
        "the template's annotations replace spec.worker.podAnnotations as a whole"
    );
}

#[test]
fn the_config_hash_annotation_cannot_be_replaced() {
    let mut pipeline = valid(&minimal());
    pipeline.pod.pod_annotations = map(&[(CONFIG_HASH_ANNOTATION, "pinned")]);
    let resources = build(&pipeline, 2, &fixed_assignment(), ASSIGNED_AT);
    assert_eq!(
        pod_annotations(&resources).get(CONFIG_HASH_ANNOTATION),
        Some(&config_hash(&rendered_settings(&resources)))
    );
}

#[test]
fn names_the_operator_owns_are_refused_naming_the_field() {
    let cases = [
        ("labels: {app.kubernetes.io/instance: other}", "spec.worker.podTemplate.labels"),
        ("labels: {app.kubernetes.io/managed-by: me}", "spec.worker.podTemplate.labels"),
        ("labels: {taxipipeline.io/pipeline: other}", "spec.worker.podTemplate.labels"),
        ("labels: {controller-revision-hash: abc}", "spec.worker.podTemplate.labels"),
        ("annotations: {taxipipeline.io/config-hash: pinned}", "spec.worker.podTemplate.annotations"),
        ("env: [{name: POD_NAME, value: worker-0}]", "spec.worker.podTemplate.env"),
        ("env: [{name: POD_NAMESPACE, value: default}]", "spec.worker.podTemplate.env"),
        (
            "env: [{name: RUST_LOG, value: debug}, {name: TAXI_SINK_PASSWORD, value: hunter2}]",
            "spec.worker.podTemplate.env",
        ),
        ("env: [{name: TAXI_CHECKPOINT, value: 's3://elsewhere'}]", "spec.worker.podTemplate.env"),
    ];
    for (template, field) in cases {
        let pipeline = patched(&minimal(), &format!("worker: {{podTemplate: {{{template}}}}}"));
        let err = validate(&pipeline, &defaults()).expect_err(template);
        assert_eq!(err.field, field, "{template}: {err}");
    }
    let err = validate(
        &patched(&minimal(), "worker: {podTemplate: {env: [{name: TAXI_SINK_PASSWORD, value: x}]}}"),
        &defaults(),
    )
    .expect_err("a shadowed credential");
    assert!(err.reason.contains("TAXI_SINK_PASSWORD") && err.reason.contains("secretRef"), "{err}");
    let allowed = "worker: {podTemplate: {labels: {app.kubernetes.io/part-of: taxi}, env: [{name: AWS_STS_REGIONAL_ENDPOINTS, value: regional}]}}";
    validate(&patched(&minimal(), allowed), &defaults()).expect("other names are the user's");
}

// ---------------------------------------------------------------------------------------------
// Scheduling.

#[test]
fn template_node_selector_and_tolerations_replace_the_workers_own() {
    let own = patched(
        &minimal(),
        "worker: {nodeSelector: {kubernetes.io/arch: amd64}, tolerations: [{key: workload, operator: Exists}]}",
    );
    let before = built(&own);
    let after = built(&patched(
        &own,
        "worker: {podTemplate: {nodeSelector: {node-pool: streaming}, tolerations: [{key: dedicated, operator: Exists}]}}",
    ));
    assert_eq!(pod_field(&before, "nodeSelector"), json!({"kubernetes.io/arch": "amd64"}));
    assert_eq!(pod_field(&after, "nodeSelector"), json!({"node-pool": "streaming"}));
    assert_eq!(pod_field(&after, "tolerations"), json!([{"key": "dedicated", "operator": "Exists"}]));
    let changed = changed_paths(&before, &after);
    assert!(
        changed.iter().all(|p| p.starts_with("StatefulSet/nyc-taxi-worker:spec.template.spec.nodeSelector")
            || p.starts_with("StatefulSet/nyc-taxi-worker:spec.template.spec.tolerations")),
        "{changed:?}"
    );
}

#[test]
fn affinity_spread_and_priority_reach_only_the_pod_spec() {
    let before = built(&minimal());
    let after = built(&patched(
        &minimal(),
        "worker: {podTemplate: {
            affinity: {podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 50,
                podAffinityTerm: {topologyKey: kubernetes.io/hostname,
                    labelSelector: {matchLabels: {app.kubernetes.io/instance: nyc-taxi}}}}]}},
            topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone,
                whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app.kubernetes.io/instance: nyc-taxi}}}],
            priorityClassName: streaming-high}}",
    ));
    let changed = changed_paths(&before, &after);
    let fields: BTreeSet<&str> = changed
        .iter()
        .map(|p| p.strip_prefix("StatefulSet/nyc-taxi-worker:spec.template.spec.").unwrap_or(p))
        .map(|p| p.split(['.', '[']).next().unwrap_or(p))
        .collect();
    assert_eq!(fields, BTreeSet::from(["affinity", "priorityClassName", "topologySpreadConstraints"]));
    assert_eq!(pod_field(&after, "priorityClassName"), "streaming-high");
    assert_eq!(
        pod_field(&after, "affinity")["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        50
    );
    assert_eq!(pod_field(&after, "topologySpreadConstraints")[0]["topologyKey"], "topology.kubernetes.io/zone");
}

// ---------------------------------------------------------------------------------------------
// The container.

#[test]
fn template_env_follows_the_operators_own_variables() {
    let pipeline = patched(
        &minimal(),
        "sink: {opensearch: {auth: {type: basic, secretRef: {name: os-writer}}}}
worker: {podTemplate: {env: [{name: RUST_LOG, value: 'info,taxi=debug'},
    {name: PROXY_TOKEN, valueFrom: {secretKeyRef: {name: egress-proxy, key: token}}}]}}",
    );
    let env = serde_json::to_value(&container(&built(&pipeline)).env).expect("env");
    let names: Vec<&str> = env.as_array().expect("env list").iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["POD_NAME", "POD_NAMESPACE", SINK_USERNAME_ENV, SINK_PASSWORD_ENV, "RUST_LOG", "PROXY_TOKEN"]);
    assert_eq!(env[4], json!({"name": "RUST_LOG", "value": "info,taxi=debug"}));
    assert_eq!(env[5]["valueFrom"], json!({"secretKeyRef": {"name": "egress-proxy", "key": "token"}}));
}

#[test]
fn template_resources_win_over_the_workers_own() {
    let own = patched(&minimal(), "worker: {resources: {requests: {cpu: 500m, memory: 512Mi}, limits: {memory: 1Gi}}}");
    let template = "worker: {podTemplate: {resources: {requests: {cpu: '2', memory: 3Gi}, limits: {memory: 4Gi}}}}";
    let resources = serde_json::to_value(&container(&built(&patched(&own, template))).resources).expect("JSON");
    assert_eq!(resources, json!({"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"memory": "4Gi"}}));
    let unset = serde_json::to_value(&container(&built(&own)).resources).expect("JSON");
    assert_eq!(unset["requests"]["cpu"], "500m", "without a template the worker's resources stay");
}

#[test]
fn security_contexts_default_to_a_restricted_non_root_user() {
    let resources = built(&minimal());
    let pod = pod_field(&resources, "securityContext");
    assert_eq!(
        pod,
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(pod, serde_json::to_value(default_pod_security_context()).expect("JSON"));
    let container_context = serde_json::to_value(&container(&resources).security_context).expect("JSON");
    assert_eq!(
        container_context,
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true,
               "privileged": false, "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(container_context, serde_json::to_value(default_container_security_context()).expect("JSON"));
}

#[test]
fn a_template_security_context_replaces_the_default_as_a_whole() {
    // OpenShift's restricted SCC assigns the user: no fixed runAsUser, runAsGroup or fsGroup.
    let openshift =
        "worker: {podTemplate: {podSecurityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}}}";
    let before = built(&minimal());
    let after = built(&patched(&minimal(), openshift));
    assert_eq!(
        pod_field(&after, "securityContext"),
        json!({"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            "StatefulSet/nyc-taxi-worker:spec.template.spec.securityContext.fsGroup",
            "StatefulSet/nyc-taxi-worker:spec.template.spec.securityContext.runAsGroup",
            "StatefulSet/nyc-taxi-worker:spec.template.spec.securityContext.runAsUser",
        ]),
        "the container's context keeps its default"
    );
    let container_only = "worker: {podTemplate: {containerSecurityContext: {readOnlyRootFilesystem: false}}}";
    let after = built(&patched(&minimal(), container_only));
    assert_eq!(
        serde_json::to_value(&container(&after).security_context).expect("JSON"),
        json!({"readOnlyRootFilesystem": false})
    );
    assert_eq!(pod_field(&after, "securityContext"), pod_field(&before, "securityContext"));
}

// ---------------------------------------------------------------------------------------------
// What the operator gives every pipeline.

#[test]
fn image_pull_secrets_of_the_template_and_the_operator_are_listed_once_each() {
    let operator =
        Defaults { image_pull_secrets: vec!["shared-registry".into(), "platform-registry".into()], ..defaults() };
    let none = build(&validate(&minimal(), &defaults()).expect("valid"), 2, &fixed_assignment(), ASSIGNED_AT);
    assert_eq!(pod_field(&none, "imagePullSecrets"), Value::Null, "no secret, no field");
    let only_operator = build(&validate(&minimal(), &operator).expect("valid"), 2, &fixed_assignment(), ASSIGNED_AT);
    assert_eq!(
        pod_field(&only_operator, "imagePullSecrets"),
        json!([{"name": "shared-registry"}, {"name": "platform-registry"}])
    );
    let pipeline = patched(
        &minimal(),
        "worker: {podTemplate: {imagePullSecrets: [{name: team-registry}, {name: shared-registry}]}}",
    );
    let both = build(&validate(&pipeline, &operator).expect("valid"), 2, &fixed_assignment(), ASSIGNED_AT);
    assert_eq!(
        pod_field(&both, "imagePullSecrets"),
        json!([{"name": "team-registry"}, {"name": "shared-registry"}, {"name": "platform-registry"}])
    );
}

#[test]
fn the_default_sink_ca_secret_serves_https_sinks_that_name_none() {
    let operator = Defaults {
        sink_ca_secret: Some(SecretKey { name: "platform-ca".into(), key: "bundle.pem".into() }),
        ..defaults()
    };
    let with = |pipeline: &TaxiPipeline| {
        let resources = build(&validate(pipeline, &operator).expect("valid"), 2, &fixed_assignment(), ASSIGNED_AT);
        let settings = WorkerSettings::from_json(rendered_settings(&resources).as_bytes()).expect("worker.json");
        let secret = pod_spec(&resources)
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        (secret, settings.sink.ca_cert)
    };
    // The minimal example's sink is plain HTTP: nothing to verify, no Secret to wait for.
    assert_eq!(with(&minimal()), (None, None));
    let https = patched(&minimal(), "sink: {opensearch: {endpoint: 'https://search.example.com'}}");
    assert_eq!(with(&https), (Some("platform-ca".to_owned()), Some(PathBuf::from("/etc/taxi-ca/bundle.pem"))));
    let own = patched(&https, "sink: {opensearch: {caSecretRef: {name: team-ca, key: team.pem}}}");
    assert_eq!(with(&own), (Some("team-ca".to_owned()), Some(PathBuf::from("/etc/taxi-ca/team.pem"))));
}

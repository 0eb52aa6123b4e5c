//! The pure builders and validation, driven from YAML: `validate` then `build` over the two
//! examples in `examples/`, with a fixed assignment and a fixed `assigned_at`.
//!
//! - Snapshots: every object built from the minimal and the full example is compared with
//!   `operator/tests/fixtures/minimal.yaml` and `operator/tests/fixtures/full.yaml`. After an
//!   intended change of the builders, regenerate them and review the diff like code:
//!
//!   ```text
//!   UPDATE_SNAPSHOTS=1 cargo test -p taxi-operator --test builders
//!   ```
//!
//! - Behaviour: a spec change (written as a YAML merge patch of `spec`) changes exactly the object
//!   fields it should; every built object is compared as JSON and the set of changed paths asserted.
//! - Validation: the defaults the minimal example renders into `worker.json`, the field each invalid
//!   spec is rejected for, and `worker.json` read back by the worker's own parser.
//!
//! Fixture values differ from each other and from the defaults (secret keys, namespace, image), so
//! that a swapped field changes a snapshot or fails an assertion.
//!
//! The pod template and the operator's defaults for every pod are tested in
//! `builders/pod_template.rs`, the workers' NetworkPolicy in `builders/network_policy.rs` and the
//! raw-trip archive in `builders/archive.rs`; they use the fixtures and helpers here.

#[path = "builders/archive.rs"]
mod archive;
#[path = "builders/network_policy.rs"]
mod network_policy;
#[path = "builders/pod_template.rs"]
mod pod_template;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Container;
use serde::Serialize;
use serde_json::{Value, json};
use taxi_core::assignment::{ASSIGNMENT_KEY, Assignment, assign};
use taxi_core::config::WatermarkStrategy;
use taxi_core::geo::{BoundingBox, Geofence};
use taxi_core::settings::{
    ConsumerType, SETTINGS_KEY, SINK_PASSWORD_ENV, SINK_USERNAME_ENV, SinkAuthSetting, SinkAuthType, WorkerSettings,
};
use taxi_core::topology::ShardInfo;
use taxi_io::sink::opensearch::{OpenSearchAuth, OpenSearchSettings};
use taxi_operator::crd::TaxiPipeline;
use taxi_operator::resources::{
    ASSIGNED_AT_ANNOTATION, CONFIG_HASH_ANNOTATION, IRSA_ANNOTATION, Resources, ValidPipeline, build, config_hash,
    selector_labels,
};
use taxi_operator::validate::{Defaults, desired_replicas, validate};

const MINIMAL_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/taxipipeline-minimal.yaml");
const FULL_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/taxipipeline.yaml");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Namespace given to the minimal example, which has none (the full example says `taxi`).
const MINIMAL_NAMESPACE: &str = "streaming";
const UID: &str = "0b5d6a3e-7c41-4f0e-9a2b-5e8c1d7f3a90";
/// The operator's `--worker-image`, distinct from the full example's image.
const DEFAULT_IMAGE: &str = "registry.example.com/taxi/taxi-worker:operator-default";
/// The operator's own namespace, distinct from the pipelines'.
const OPERATOR_NAMESPACE: &str = "taxi-system";
const ASSIGNED_AT: &str = "2026-03-14T15:09:26Z";

/// Objects of the examples (pipeline `nyc-taxi`).
const WORKERS: &str = "nyc-taxi-worker";
const STATEFUL_SET: &str = "StatefulSet/nyc-taxi-worker";
const SERVICE_ACCOUNT: &str = "ServiceAccount/nyc-taxi-worker";
const ROLE_BINDING: &str = "RoleBinding/nyc-taxi-worker";
const PDB: &str = "PodDisruptionBudget/nyc-taxi-worker";
const NETWORK_POLICY: &str = "NetworkPolicy/nyc-taxi-worker";

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// An example TaxiPipeline as the API server would hand it over: with a namespace and a uid.
fn example(path: &str) -> TaxiPipeline {
    let mut pipeline: TaxiPipeline =
        serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} is not a TaxiPipeline: {e}"));
    pipeline.metadata.namespace.get_or_insert_with(|| MINIMAL_NAMESPACE.to_owned());
    pipeline.metadata.uid = Some(UID.to_owned());
    pipeline
}

fn minimal() -> TaxiPipeline {
    example(MINIMAL_EXAMPLE)
}

fn full() -> TaxiPipeline {
    example(FULL_EXAMPLE)
}

/// `pipeline` with a JSON merge patch (RFC 7386, written as YAML) applied to its `spec`, read back
/// through the CRD types so that field names and defaults are the user's.
fn patched(pipeline: &TaxiPipeline, spec_patch: &str) -> TaxiPipeline {
    let mut object = serde_json::to_value(pipeline).expect("TaxiPipeline to JSON");
    let patch: Value = serde_norway::from_str(spec_patch).expect("patch is YAML");
    merge(&mut object["spec"], patch);
    serde_json::from_value(object).expect("patched TaxiPipeline")
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(&key);
                } else {
                    merge(target.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

/// The operator's defaults with every flag but the image and its namespace at its default.
fn defaults() -> Defaults {
    Defaults::new(DEFAULT_IMAGE, OPERATOR_NAMESPACE)
}

fn valid(pipeline: &TaxiPipeline) -> ValidPipeline {
    validate(pipeline, &defaults()).unwrap_or_else(|e| panic!("the fixture must be valid: {e}"))
}

/// `n` open shards splitting the hash space evenly, as Kinesis creates them.
fn even_shards(n: u32) -> Vec<ShardInfo> {
    let width = u128::MAX / u128::from(n);
    (0..n)
        .map(|i| ShardInfo {
            shard_id: format!("shardId-{i:012}"),
            parent: None,
            adjacent_parent: None,
            starting_hash_key: width * u128::from(i),
            ending_hash_key: if i + 1 == n { u128::MAX } else { width * u128::from(i + 1) - 1 },
            ending_sequence_number: None,
        })
        .collect()
}

/// Four shards over two workers, epoch 1.
fn fixed_assignment() -> Assignment {
    assign(&even_shards(4), 2, None)
}

/// What the operator builds for `pipeline` with two replicas and [`fixed_assignment`].
fn built(pipeline: &TaxiPipeline) -> Resources {
    build(&valid(pipeline), 2, &fixed_assignment(), ASSIGNED_AT)
}

// ---------------------------------------------------------------------------------------------
// Objects as JSON, and the paths where two builds differ.

/// Every built object in a fixed order, keyed `Kind/name`, as JSON. The destructuring has no `..`:
/// a new object in [`Resources`] does not compile here until the tests cover it.
fn objects(resources: &Resources) -> Vec<(String, Value)> {
    let Resources {
        service_account,
        role,
        role_binding,
        service,
        worker_config,
        assignment,
        pod_disruption_budget,
        network_policy,
        stateful_set,
    } = resources;
    let mut out = Vec::new();
    if let Some(sa) = service_account {
        out.push(entry(sa));
    }
    out.push(entry(role));
    out.push(entry(role_binding));
    out.push(entry(service));
    out.push(entry(worker_config));
    out.push(entry(assignment));
    if let Some(pdb) = pod_disruption_budget {
        out.push(entry(pdb));
    }
    if let Some(policy) = network_policy {
        out.push(entry(policy));
    }
    out.push(entry(stateful_set));
    out
}

fn entry(object: &impl Serialize) -> (String, Value) {
    let value = serde_json::to_value(object).expect("a built object serializes");
    let kind = value["kind"].as_str().expect("kind");
    let name = value["metadata"]["name"].as_str().expect("metadata.name");
    (format!("{kind}/{name}"), value)
}

fn object<'a>(objects: &'a [(String, Value)], key: &str) -> &'a Value {
    objects.iter().find(|(k, _)| k == key).map(|(_, v)| v).unwrap_or_else(|| panic!("no {key} was built"))
}

/// Paths that differ between two builds: `Kind/name` for an object only one build has, else
/// `Kind/name:path.to["field"][index]` for each differing leaf (or a key/element only one side has).
fn changed_paths(before: &Resources, after: &Resources) -> BTreeSet<String> {
    let before: BTreeMap<String, Value> = objects(before).into_iter().collect();
    let after: BTreeMap<String, Value> = objects(after).into_iter().collect();
    let mut changed = BTreeSet::new();
    for key in before.keys().chain(after.keys()) {
        match (before.get(key), after.get(key)) {
            (Some(a), Some(b)) => diff(a, b, &format!("{key}:"), &mut changed),
            _ => {
                changed.insert(key.clone());
            }
        }
    }
    changed
}

fn diff(a: &Value, b: &Value, path: &str, out: &mut BTreeSet<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for key in a.keys().chain(b.keys()) {
                let child = field_path(path, key);
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff(x, y, &child, out),
                    _ => {
                        out.insert(child);
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                let child = format!("{path}[{i}]");
                match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) => diff(x, y, &child, out),
                    _ => {
                        out.insert(child);
                    }
                }
            }
        }
        _ if a != b => {
            out.insert(path.to_owned());
        }
        _ => {}
    }
}

fn field_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (plain, path.ends_with(':') || path.is_empty()) {
        (true, true) => format!("{path}{key}"),
        (true, false) => format!("{path}.{key}"),
        (false, _) => format!("{path}[{key:?}]"),
    }
}

fn paths(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|p| (*p).to_owned()).collect()
}

/// The `worker.json` the operator rendered, as JSON.
fn worker_json(resources: &Resources) -> Value {
    serde_json::from_str(&rendered_settings(resources)).expect("worker.json is JSON")
}

fn rendered_settings(resources: &Resources) -> String {
    resources.worker_config.data.as_ref().and_then(|d| d.get(SETTINGS_KEY)).expect("worker.json").clone()
}

/// Paths inside two `worker.json` documents that differ (`engine.hot_spots.window_ms`, ...).
fn settings_changes(before: &Resources, after: &Resources) -> BTreeSet<String> {
    let mut changed = BTreeSet::new();
    diff(&worker_json(before), &worker_json(after), "", &mut changed);
    changed
}

fn container(resources: &Resources) -> &Container {
    let pod = resources.stateful_set.spec.template.spec.as_ref().expect("pod spec");
    pod.containers.iter().find(|c| c.name == "worker").expect("worker container")
}

// ---------------------------------------------------------------------------------------------
// Snapshots.

/// Every object of a build as one multi-document YAML file, in [`objects`] order.
fn snapshot(resources: &Resources) -> String {
    let Resources {
        service_account,
        role,
        role_binding,
        service,
        worker_config,
        assignment,
        pod_disruption_budget,
        network_policy,
        stateful_set,
    } = resources;
    let mut docs = Vec::new();
    if let Some(sa) = service_account {
        docs.push(yaml(sa));
    }
    docs.push(yaml(role));
    docs.push(yaml(role_binding));
    docs.push(yaml(service));
    docs.push(yaml(worker_config));
    docs.push(yaml(assignment));
    if let Some(pdb) = pod_disruption_budget {
        docs.push(yaml(pdb));
    }
    if let Some(policy) = network_policy {
        docs.push(yaml(policy));
    }
    docs.push(yaml(stateful_set));
    let mut text = String::from(
        "# Generated by operator/tests/builders.rs; do not edit.\n\
         # Regenerate: UPDATE_SNAPSHOTS=1 cargo test -p taxi-operator --test builders\n",
    );
    for doc in docs {
        text.push_str("---\n");
        text.push_str(&doc);
    }
    text
}

fn yaml(object: &impl Serialize) -> String {
    serde_norway::to_string(object).expect("a built object serializes to YAML")
}

/// Compares `actual` with the snapshot file `name`, or rewrites the file when `UPDATE_SNAPSHOTS=1`.
fn assert_snapshot(name: &str, actual: &str) {
    let path = format!("{FIXTURES}/{name}");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(FIXTURES).expect("create the fixtures directory");
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("write {path}: {e}"));
        return;
    }
    let hint = "if the change is intended, run `UPDATE_SNAPSHOTS=1 cargo test -p taxi-operator --test builders` \
                and review the diff of the snapshot";
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}; {hint}"));
    if expected == actual {
        return;
    }
    let first_difference = expected
        .lines()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(actual.lines().map(Some).chain(std::iter::repeat(None)))
        .take_while(|pair| *pair != (None, None))
        .enumerate()
        .find(|(_, (want, got))| want != got);
    match first_difference {
        Some((i, (want, got))) => panic!(
            "the built objects differ from {path} at line {}:\n  snapshot: {}\n  built:    {}\n{hint}",
            i + 1,
            want.unwrap_or("<end of file>"),
            got.unwrap_or("<end of file>"),
        ),
        None => panic!("the built objects differ from {path} only in line endings or the final newline; {hint}"),
    }
}

#[test]
fn minimal_example_builds_the_snapshot_objects() {
    assert_snapshot("minimal.yaml", &snapshot(&built(&minimal())));
}

#[test]
fn full_example_builds_the_snapshot_objects() {
    assert_snapshot("full.yaml", &snapshot(&built(&full())));
}

// ---------------------------------------------------------------------------------------------
// Properties every build has.

#[test]
fn every_object_is_owned_by_the_pipeline_in_its_namespace_and_labelled_alike() {
    for (pipeline, namespace) in [(minimal(), MINIMAL_NAMESPACE), (full(), "taxi")] {
        let selector = serde_json::to_value(selector_labels("nyc-taxi")).expect("labels");
        for (key, object) in objects(&built(&pipeline)) {
            let meta = &object["metadata"];
            assert_eq!(meta["namespace"], namespace, "{key}");
            assert_eq!(
                meta["ownerReferences"],
                json!([{
                    "apiVersion": "taxipipeline.io/v1alpha1",
                    "kind": "TaxiPipeline",
                    "name": "nyc-taxi",
                    "uid": UID,
                    "controller": true,
                    "blockOwnerDeletion": true,
                }]),
                "{key}"
            );
            for (label, value) in selector.as_object().expect("map") {
                assert_eq!(&meta["labels"][label], value, "{key} carries the selector labels");
            }
        }
    }
}

#[test]
fn service_pdb_and_statefulset_select_exactly_the_worker_pods() {
    let resources = built(&full());
    let all = objects(&resources);
    let selector = serde_json::to_value(selector_labels("nyc-taxi")).expect("labels");
    let sts = object(&all, STATEFUL_SET);
    assert_eq!(sts["spec"]["selector"], json!({"matchLabels": selector}));
    assert_eq!(object(&all, PDB)["spec"]["selector"], json!({"matchLabels": selector}));
    assert_eq!(object(&all, "Service/nyc-taxi-worker")["spec"]["selector"], selector);
    assert_eq!(sts["spec"]["serviceName"], WORKERS, "the headless Service names the pods");
    let pod_labels = sts["spec"]["template"]["metadata"]["labels"].as_object().expect("pod labels");
    for (label, value) in selector.as_object().expect("map") {
        assert_eq!(pod_labels.get(label), Some(value), "pod template matches the selector on {label}");
    }
}

#[test]
fn workers_may_only_read_their_own_assignment_config_map() {
    let all = objects(&built(&minimal()));
    assert_eq!(
        object(&all, "Role/nyc-taxi-worker")["rules"],
        json!([{
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["nyc-taxi-assignment"],
            "verbs": ["get", "list", "watch"],
        }])
    );
    let binding = object(&all, ROLE_BINDING);
    assert_eq!(binding["roleRef"], json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": WORKERS}));
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": WORKERS, "namespace": MINIMAL_NAMESPACE}])
    );
}

#[test]
fn config_hash_annotation_is_the_hash_of_the_rendered_worker_json() {
    let resources = built(&full());
    let template = resources.stateful_set.spec.template.metadata.as_ref().expect("meta");
    let annotations = template.annotations.as_ref().expect("pod annotations");
    assert_eq!(annotations.get(CONFIG_HASH_ANNOTATION), Some(&config_hash(&rendered_settings(&resources))));
}

// ---------------------------------------------------------------------------------------------
// A changed field changes exactly what it should.

#[test]
fn hot_spot_window_changes_only_worker_json_and_the_config_hash() {
    let before = built(&minimal());
    let after = built(&patched(&minimal(), "analyses: {hotSpots: {window: 5m}}"));
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            r#"ConfigMap/nyc-taxi-worker-config:data["worker.json"]"#,
            r#"StatefulSet/nyc-taxi-worker:spec.template.metadata.annotations["taxipipeline.io/config-hash"]"#,
        ])
    );
    assert_eq!(settings_changes(&before, &after), paths(&["engine.hot_spots.window_ms"]));
    assert_eq!(worker_json(&after)["engine"]["hot_spots"]["window_ms"], 300_000);
}

#[test]
fn worker_image_changes_only_the_container_image() {
    let image = "registry.example.com/taxi/taxi-worker:9.9.9";
    let before = built(&minimal());
    let after = built(&patched(&minimal(), &format!("worker: {{image: '{image}'}}")));
    assert_eq!(
        changed_paths(&before, &after),
        paths(&["StatefulSet/nyc-taxi-worker:spec.template.spec.containers[0].image"])
    );
    assert_eq!(container(&before).image.as_deref(), Some(DEFAULT_IMAGE), "unset: the operator's image");
    assert_eq!(container(&after).image.as_deref(), Some(image));
}

#[test]
fn more_than_one_replica_adds_only_the_pdb_and_spec_replicas() {
    let pipeline = valid(&minimal());
    let one = build(&pipeline, 1, &fixed_assignment(), ASSIGNED_AT);
    let two = build(&pipeline, 2, &fixed_assignment(), ASSIGNED_AT);
    assert_eq!(changed_paths(&one, &two), paths(&[PDB, "StatefulSet/nyc-taxi-worker:spec.replicas"]));
    assert_eq!(one.stateful_set.spec.replicas, Some(1));
    assert_eq!(two.stateful_set.spec.replicas, Some(2));
    let pdb = two.pod_disruption_budget.as_ref().and_then(|p| p.spec.as_ref()).expect("PDB with two replicas");
    assert_eq!(serde_json::to_value(&pdb.max_unavailable).expect("json"), json!(1));
    assert!(pdb.min_available.is_none());
    let paused = build(&pipeline, 0, &fixed_assignment(), ASSIGNED_AT);
    assert!(paused.pod_disruption_budget.is_none() && one.pod_disruption_budget.is_none());
    assert_eq!(paused.stateful_set.spec.replicas, Some(0));
}

#[test]
fn parallelism_reaches_the_objects_only_through_the_rollout_plan() {
    // The StatefulSet's replicas come from the rollout plan (`statefulset_replicas`), which stages
    // a change of `parallelism`; the spec field itself changes none of the built objects.
    let before = minimal();
    let after = patched(&before, "parallelism: 3");
    assert_eq!((desired_replicas(&before.spec), desired_replicas(&after.spec)), (1, 3));
    assert_eq!(changed_paths(&built(&before), &built(&after)), BTreeSet::new());
}

#[test]
fn a_named_service_account_replaces_the_operators_own() {
    let before = built(&minimal());
    let after = built(&patched(&minimal(), "worker: {serviceAccountName: team-streaming}"));
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            SERVICE_ACCOUNT,
            "RoleBinding/nyc-taxi-worker:subjects[0].name",
            "StatefulSet/nyc-taxi-worker:spec.template.spec.serviceAccountName",
        ])
    );
    assert!(after.service_account.is_none());
    let all = objects(&after);
    assert_eq!(object(&all, ROLE_BINDING)["subjects"][0]["name"], "team-streaming");
    assert_eq!(object(&all, STATEFUL_SET)["spec"]["template"]["spec"]["serviceAccountName"], "team-streaming");
    assert_eq!(object(&objects(&before), STATEFUL_SET)["spec"]["template"]["spec"]["serviceAccountName"], WORKERS);
}

#[test]
fn iam_role_arn_annotates_only_the_service_account() {
    let arn = "arn:aws:iam::210987654321:role/fixture-worker";
    let before = built(&minimal());
    let after = built(&patched(&minimal(), &format!("worker: {{iamRoleArn: '{arn}'}}")));
    assert_eq!(changed_paths(&before, &after), paths(&["ServiceAccount/nyc-taxi-worker:metadata.annotations"]));
    let annotations = after.service_account.as_ref().and_then(|sa| sa.metadata.annotations.clone());
    assert_eq!(annotations, Some(BTreeMap::from([(IRSA_ANNOTATION.to_owned(), arn.to_owned())])));
}

#[test]
fn iam_role_arn_is_ignored_with_a_named_service_account() {
    let arn = "arn:aws:iam::210987654321:role/fixture-worker";
    let resources =
        built(&patched(&minimal(), &format!("worker: {{iamRoleArn: '{arn}', serviceAccountName: team-streaming}}")));
    assert!(resources.service_account.is_none());
    for (key, object) in objects(&resources) {
        assert!(!object.to_string().contains(arn), "{key} must not carry the ARN of a ServiceAccount it does not own");
    }
}

#[test]
fn basic_auth_takes_credentials_from_the_secret_keys_and_keeps_them_out_of_worker_json() {
    let before = built(&minimal());
    let after = built(&patched(
        &minimal(),
        "sink: {opensearch: {auth: {type: basic, secretRef: {name: os-writer, usernameKey: user-key, \
         passwordKey: pass-key}}}}",
    ));
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            r#"ConfigMap/nyc-taxi-worker-config:data["worker.json"]"#,
            "StatefulSet/nyc-taxi-worker:spec.template.spec.containers[0].env[2]",
            "StatefulSet/nyc-taxi-worker:spec.template.spec.containers[0].env[3]",
            r#"StatefulSet/nyc-taxi-worker:spec.template.metadata.annotations["taxipipeline.io/config-hash"]"#,
        ])
    );
    let env = serde_json::to_value(&container(&after).env).expect("env");
    assert_eq!(
        env.as_array().expect("env list")[2..],
        [
            json!({
                "name": SINK_USERNAME_ENV,
                "valueFrom": {"secretKeyRef": {"name": "os-writer", "key": "user-key", "optional": false}},
            }),
            json!({
                "name": SINK_PASSWORD_ENV,
                "valueFrom": {"secretKeyRef": {"name": "os-writer", "key": "pass-key", "optional": false}},
            }),
        ]
    );
    assert_eq!(settings_changes(&before, &after), paths(&["sink.auth.type"]));
    assert_eq!(worker_json(&after)["sink"]["auth"], json!({"type": "basic"}));
    let rendered = rendered_settings(&after);
    for name in ["os-writer", "user-key", "pass-key"] {
        assert!(!rendered.contains(name), "worker.json mentions {name}");
    }

    // What the kubelet would put into the environment from that Secret is what the worker sends.
    let secret = HashMap::from([("user-key", "alice"), ("pass-key", "correct horse")]);
    let environment: HashMap<String, String> = container(&after)
        .env
        .iter()
        .flatten()
        .filter_map(|var| {
            let key = var.value_from.as_ref()?.secret_key_ref.as_ref()?;
            assert_eq!(key.name, "os-writer");
            Some((var.name.clone(), secret[key.key.as_str()].to_owned()))
        })
        .collect();
    let settings = WorkerSettings::from_json(rendered.as_bytes()).expect("the worker reads worker.json");
    let opensearch = OpenSearchSettings::for_sink(&settings.sink, |name| environment.get(name).cloned())
        .expect("credentials are set");
    assert_eq!(
        opensearch.auth,
        OpenSearchAuth::Basic { username: "alice".to_owned(), password: "correct horse".to_owned() }
    );
}

#[test]
fn ca_secret_is_mounted_read_only_where_worker_json_points() {
    let before = built(&minimal());
    let after = built(&patched(&minimal(), "sink: {opensearch: {caSecretRef: {name: private-ca, key: bundle.pem}}}"));
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            r#"ConfigMap/nyc-taxi-worker-config:data["worker.json"]"#,
            "StatefulSet/nyc-taxi-worker:spec.template.spec.containers[0].volumeMounts[2]",
            "StatefulSet/nyc-taxi-worker:spec.template.spec.volumes[2]",
            r#"StatefulSet/nyc-taxi-worker:spec.template.metadata.annotations["taxipipeline.io/config-hash"]"#,
        ])
    );
    assert_eq!(settings_changes(&before, &after), paths(&["sink.ca_cert"]));

    let pod = after.stateful_set.spec.template.spec.as_ref().expect("pod spec");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("private-ca"))
        .expect("a volume of the CA Secret");
    let mount = container(&after)
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("the CA volume is mounted");
    assert_eq!(mount.read_only, Some(true));
    let settings = WorkerSettings::from_json(rendered_settings(&after).as_bytes()).expect("worker.json");
    assert_eq!(settings.sink.ca_cert, Some(PathBuf::from(&mount.mount_path).join("bundle.pem")));
}

#[test]
fn a_new_assignment_epoch_changes_only_the_assignment_config_map() {
    let pipeline = valid(&minimal());
    let first = fixed_assignment();
    let second = assign(&even_shards(4), 3, Some(&first));
    assert_eq!((first.epoch, second.epoch), (1, 2));
    let before = build(&pipeline, 2, &first, ASSIGNED_AT);
    let after = build(&pipeline, 2, &second, "2026-03-14T15:10:00Z");
    assert_eq!(
        changed_paths(&before, &after),
        paths(&[
            r#"ConfigMap/nyc-taxi-assignment:data["assignment.json"]"#,
            r#"ConfigMap/nyc-taxi-assignment:metadata.annotations["taxipipeline.io/assigned-at"]"#,
        ])
    );
    let data = after.assignment.data.as_ref().and_then(|d| d.get(ASSIGNMENT_KEY)).expect("assignment.json");
    assert_eq!(Assignment::from_json(data.as_bytes()).expect("the worker reads it"), second);
    let annotations = after.assignment.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations.get(ASSIGNED_AT_ANNOTATION).map(String::as_str), Some("2026-03-14T15:10:00Z"));
}

// ---------------------------------------------------------------------------------------------
// Validation.

#[test]
fn minimal_example_renders_the_design_defaults_into_worker_json() {
    let settings = WorkerSettings::from_json(rendered_settings(&built(&minimal())).as_bytes()).expect("worker.json");
    assert_eq!(settings.pipeline, "nyc-taxi");
    assert_eq!(settings.stream.name, "taxi-trips");
    assert_eq!(settings.stream.start_position, "trim-horizon");
    assert_eq!(settings.stream.consumer, ConsumerType::Polling);
    assert_eq!(settings.checkpoint.uri, "s3://taxi-checkpoints/nyc-taxi");
    assert_eq!(settings.checkpoint.interval_ms, 10_000);
    assert_eq!(settings.checkpoint.retain, 3);
    assert_eq!(settings.sink.url, "http://opensearch.opensearch.svc:9200");
    assert_eq!(settings.sink.index_prefix, "taxi");
    assert_eq!(settings.sink.auth, SinkAuthSetting::of(SinkAuthType::None));
    assert_eq!(settings.sink.ca_cert, None);
    let engine = &settings.engine;
    assert_eq!(engine.region, BoundingBox { min_lat: 40.4774, max_lat: 40.9176, min_lon: -74.2591, max_lon: -73.7004 });
    assert_eq!(engine.event_time.watermark, WatermarkStrategy::Bounded);
    assert_eq!(engine.event_time.max_out_of_orderness_ms, 60_000);
    assert_eq!(engine.event_time.allowed_lateness_ms, 0);
    assert_eq!(engine.event_time.idle_timeout_ms, 60_000);
    assert_eq!(engine.hot_spots.window_ms, 600_000);
    assert_eq!(engine.hot_spots.geohash_precision, 6);
    assert_eq!(engine.hot_spots.min_pickups, 2);
    assert_eq!(engine.airport_trips.window_ms, 600_000);
    assert_eq!(engine.airport_trips.min_trips, 2);
    assert_eq!(
        engine.airport_trips.airports,
        [
            Geofence {
                name: "JFK".to_owned(),
                bounds: BoundingBox { min_lat: 40.632, max_lat: 40.654, min_lon: -73.800, max_lon: -73.761 }
            },
            Geofence {
                name: "LGA".to_owned(),
                bounds: BoundingBox { min_lat: 40.766, max_lat: 40.778, min_lon: -73.881, max_lon: -73.859 }
            },
        ]
    );
    // The CRD's defaults and the worker's own defaults are the same numbers.
    assert_eq!(engine, &taxi_core::config::EngineConfig::default());
}

#[test]
fn invalid_specs_are_rejected_naming_the_field() {
    let cases = [
        ("checkpoint: {interval: 0s}", "spec.checkpoint.interval"),
        ("analyses: {hotSpots: {window: 0s}}", "spec.analyses.hotSpots.window"),
        ("sink: {opensearch: {auth: {type: basic}}}", "spec.sink.opensearch.auth.secretRef"),
        ("parallelism: -1", "spec.parallelism"),
        (
            "analyses: {region: {minLat: 40.9176, minLon: -74.2591, maxLat: 40.4774, maxLon: -73.7004}}",
            "spec.analyses.region",
        ),
        (
            "analyses: {region: {minLat: 40.4774, minLon: -73.7004, maxLat: 40.9176, maxLon: -74.2591}}",
            "spec.analyses.region",
        ),
        ("analyses: {hotSpots: {geohashPrecision: -1}}", "spec.analyses.hotSpots.geohashPrecision"),
        ("sink: {opensearch: {bulk: {maxDocs: 0}}}", "spec.sink.opensearch.bulk.maxDocs"),
        ("stream: {startPosition: yesterday}", "spec.stream.startPosition"),
        ("analyses: {hotSpots: {geohashPrecision: 13}}", "spec.analyses.hotSpots.geohashPrecision"),
        (
            "analyses: {airportTrips: {airports: [{name: JFK, minLat: 40.654, minLon: -73.800, \
             maxLat: 40.632, maxLon: -73.761}]}}",
            "spec.analyses.airportTrips.airports",
        ),
    ];
    for (patch, field) in cases {
        let err = validate(&patched(&minimal(), patch), &defaults()).expect_err(patch);
        assert_eq!(err.field, field, "{patch}: {err}");
    }
}

#[test]
fn a_sink_endpoint_with_credentials_is_refused_without_repeating_them() {
    // An API server without the CRD's rules, or an object older than them, gets here.
    for endpoint in ["https://writer:s3cret@search.example.com", "http://s3cret@opensearch:9200"] {
        let patch = format!("sink: {{opensearch: {{endpoint: '{endpoint}'}}}}");
        let err = validate(&patched(&minimal(), &patch), &defaults()).expect_err(endpoint);
        assert_eq!(err.field, "spec.sink.opensearch.endpoint", "{err}");
        assert!(err.reason.contains("spec.sink.opensearch.auth.secretRef"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}

#[test]
fn a_pipeline_without_namespace_or_uid_is_rejected() {
    let mut no_namespace = minimal();
    no_namespace.metadata.namespace = None;
    assert_eq!(validate(&no_namespace, &defaults()).expect_err("no namespace").field, "metadata.namespace");
    let mut no_uid = minimal();
    no_uid.metadata.uid = None;
    assert_eq!(validate(&no_uid, &defaults()).expect_err("no uid").field, "metadata.uid");
}

#[test]
fn a_name_created_before_the_cel_rules_is_rejected_before_anything_is_built() {
    for (name, says) in [
        ("n".repeat(46), "must be at most 45 characters"),
        ("nyc.trips".to_owned(), "must start with a lower-case letter and hold only lower-case letters"),
    ] {
        let mut old = minimal();
        old.metadata.name = Some(name.clone());
        let err = validate(&old, &defaults()).expect_err(&name);
        assert_eq!(err.field, "metadata.name");
        assert!(err.reason.starts_with(says), "{err}");
    }
}

#[test]
fn a_consumer_name_in_the_operators_own_form_is_rejected() {
    let dotted = patched(&minimal(), r#"{"stream": {"consumer": "efo", "efoConsumerName": "team-b.nyc"}}"#);
    let err = validate(&dotted, &defaults()).expect_err("a dotted consumer name");
    assert_eq!(err.field, "spec.stream.efoConsumerName");
    assert!(err.reason.contains("names with a dot are reserved"), "{err}");
    let own = patched(&minimal(), r#"{"stream": {"consumer": "efo", "efoConsumerName": "shared-reader"}}"#);
    assert_eq!(valid(&own).settings.stream.efo_consumer_name.as_deref(), Some("shared-reader"));
}

#[test]
fn rendered_worker_json_is_read_back_by_the_worker_unchanged() {
    for pipeline in [minimal(), full()] {
        let valid = valid(&pipeline);
        let rendered = rendered_settings(&build(&valid, 2, &fixed_assignment(), ASSIGNED_AT));
        let read = WorkerSettings::from_json(rendered.as_bytes()).expect("the worker accepts worker.json");
        assert_eq!(read, valid.settings);
    }
}

#[test]
fn full_example_renders_every_spec_field_into_worker_json() {
    let settings = WorkerSettings::from_json(rendered_settings(&built(&full())).as_bytes()).expect("worker.json");
    assert_eq!(settings.stream.region.as_deref(), Some("us-east-1"));
    assert_eq!(settings.stream.consumer, ConsumerType::Efo);
    assert_eq!(settings.stream.efo_consumer_name.as_deref(), Some("nyc-taxi-prod"));
    assert_eq!(settings.checkpoint.uri, "s3://example-taxi-checkpoints/prod/nyc-taxi");
    assert_eq!(settings.sink.url, "https://opensearch-cluster-master.opensearch.svc:9200");
    assert_eq!(settings.sink.index_prefix, "nyc-taxi");
    assert_eq!(settings.sink.auth, SinkAuthSetting::of(SinkAuthType::Basic));
    assert_eq!(settings.sink.ca_cert, Some(PathBuf::from("/etc/taxi-ca/ca.crt")));
    assert_eq!(settings.engine.event_time.allowed_lateness_ms, 30_000);
    assert_eq!(settings.engine.event_time.idle_timeout_ms, 120_000);
    assert_eq!(settings.engine.hot_spots.min_pickups, 3);
    let airports: Vec<&str> = settings.engine.airport_trips.airports.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(airports, ["JFK", "LGA", "EWR"]);
}

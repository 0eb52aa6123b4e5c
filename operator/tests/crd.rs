//! The generated TaxiPipeline CRD: `crds/` is current, the API surface is what `kubectl` users
//! see, and the schema accepts and rejects objects the way the API server will.
//!
//! Validation is done by a small stand-in for the API server ([`ApiServer`]) driven only by the
//! generated CRD: it applies the schema's defaults, checks the OpenAPI keywords the schema uses
//! (type, required, enum, minimum/maximum, length, pattern, maxItems, maxProperties, unknown
//! fields) and evaluates
//! every `x-kubernetes-validations` CEL rule at the schema node it is declared on, with `oldSelf`
//! bound on updates. The rules therefore run exactly as written in the CRD, not as Rust re-states
//! them.
//!
//! The file stays whole: it is one table of accepted and rejected objects read against that one
//! stand-in, and split it would scatter the cases away from the schema walk they exercise.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use cel_interpreter::extractors::This;
use cel_interpreter::{Context, ExecutionError, FunctionContext, Program, Value as Cel};
use chrono::Timelike;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use taxi_core::duration;
use taxi_core::settings::{ArchiveSettings, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_INDEX_PREFIX, WorkerSettings};
use taxi_operator::crd::{
    RESERVED_ENV_NAMES, RESERVED_ENV_PREFIX, RESERVED_KEY_PREFIX, RESERVED_LABEL_KEYS, TaxiPipeline, TaxiPipelineSpec,
    crd_yaml,
};
use taxi_operator::validate::{Defaults, validate};

const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/taxipipelines.yaml");
const FULL_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/taxipipeline.yaml");
const MINIMAL_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/taxipipeline-minimal.yaml");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
const CHART_VALUES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/taxi-pipeline/values.yaml");

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).expect("valid YAML")
}

/// The generated CRD as JSON.
fn crd() -> Value {
    yaml(&crd_yaml())
}

fn version(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]
}

fn schema_at<'a>(crd: &'a Value, path: &[&str]) -> &'a Value {
    let mut node = &version(crd)["schema"]["openAPIV3Schema"];
    for part in path {
        node = if *part == "[]" { &node["items"] } else { &node["properties"][*part] };
        assert!(!node.is_null(), "no schema at {path:?}");
    }
    node
}

// ---------------------------------------------------------------------------------------------
// The file in crds/ and the API surface.

#[test]
fn crd_file_matches_the_rust_types() {
    let generated = crd_yaml();
    let on_disk = read(CRD_FILE);
    if on_disk != generated {
        let line = on_disk
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or_else(|| "the files differ in length".to_owned(), |i| format!("first difference at line {}", i + 1));
        panic!(
            "crds/taxipipelines.yaml is stale ({line}); regenerate it with\n    \
             cargo run -p taxi-operator -- crd > crds/taxipipelines.yaml"
        );
    }
}

#[test]
fn crd_names_group_version_and_scope() {
    let crd = crd();
    assert_eq!(crd["metadata"]["name"], "taxipipelines.taxipipeline.io");
    assert_eq!(crd["spec"]["group"], "taxipipeline.io");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let names = &crd["spec"]["names"];
    assert_eq!(names["kind"], "TaxiPipeline");
    assert_eq!(names["plural"], "taxipipelines");
    assert_eq!(names["singular"], "taxipipeline");
    assert_eq!(names["shortNames"], json!(["tp"]));
    assert_eq!(crd["spec"]["versions"].as_array().map(Vec::len), Some(1));
    let v = version(&crd);
    assert_eq!((&v["name"], &v["served"], &v["storage"]), (&json!("v1alpha1"), &json!(true), &json!(true)));
}

#[test]
fn crd_has_status_and_scale_subresources() {
    let crd = crd();
    let sub = &version(&crd)["subresources"];
    assert_eq!(sub["status"], json!({}));
    assert_eq!(
        sub["scale"],
        json!({
            "specReplicasPath": ".spec.parallelism",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        })
    );
    // The paths point at integer / string fields that exist.
    assert_eq!(schema_at(&crd, &["spec", "parallelism"])["type"], "integer");
    assert_eq!(schema_at(&crd, &["status", "replicas"])["type"], "integer");
    assert_eq!(schema_at(&crd, &["status", "selector"])["type"], "string");
}

#[test]
fn crd_printer_columns() {
    let crd = crd();
    let columns: Vec<(String, String, String)> = version(&crd)["additionalPrinterColumns"]
        .as_array()
        .expect("printer columns")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
            (s("name"), s("type"), s("jsonPath"))
        })
        .collect();
    let expected = [
        ("Shards", "integer", ".status.openShards"),
        ("Replicas", "integer", ".status.replicas"),
        ("Ready-Replicas", "integer", ".status.readyReplicas"),
        ("Max-Lag-ms", "integer", ".status.maxLagMillis"),
        ("Watermark", "string", ".status.watermark"),
        ("Last-Checkpoint", "date", ".status.lastCheckpointTime"),
        ("Ready", "string", r#".status.conditions[?(@.type=="Ready")].status"#),
        ("Age", "date", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<(String, String, String)> =
        expected.iter().map(|(n, t, p)| (n.to_string(), t.to_string(), p.to_string())).collect();
    assert_eq!(columns, expected);
}

#[test]
fn status_conditions_are_a_list_map_keyed_by_type() {
    let crd = crd();
    let conditions = schema_at(&crd, &["status", "conditions"]);
    assert_eq!(conditions["x-kubernetes-list-type"], "map");
    assert_eq!(conditions["x-kubernetes-list-map-keys"], json!(["type"]));
    assert!(
        conditions["items"]["required"].as_array().is_some_and(|r| r.contains(&json!("type"))),
        "a list-map key must be required"
    );
}

/// Spec fields whose type is one of Kubernetes' own (`k8s_openapi`), documented by Kubernetes.
const KUBERNETES_TYPES: [&str; 10] = [
    ".spec.worker.resources",
    ".spec.worker.tolerations",
    ".spec.worker.podTemplate.imagePullSecrets",
    ".spec.worker.podTemplate.affinity",
    ".spec.worker.podTemplate.tolerations",
    ".spec.worker.podTemplate.topologySpreadConstraints",
    ".spec.worker.podTemplate.env",
    ".spec.worker.podTemplate.resources",
    ".spec.worker.podTemplate.podSecurityContext",
    ".spec.worker.podTemplate.containerSecurityContext",
];

#[test]
fn every_field_of_ours_is_documented_for_kubectl_explain() {
    fn walk(schema: &Value, path: &str, missing: &mut Vec<String>) {
        let Some(properties) = schema["properties"].as_object() else { return };
        for (name, sub) in properties {
            let here = format!("{path}.{name}");
            if sub["description"].as_str().is_none_or(|d| d.trim().is_empty()) {
                missing.push(here.clone());
            }
            // Kubernetes' own types document themselves.
            if KUBERNETES_TYPES.contains(&here.as_str()) || here == ".status.conditions" {
                continue;
            }
            walk(sub, &here, missing);
            if sub["items"].is_object() {
                walk(&sub["items"], &format!("{here}[]"), missing);
            }
        }
    }
    let crd = crd();
    let mut missing = Vec::new();
    walk(&version(&crd)["schema"]["openAPIV3Schema"], "", &mut missing);
    assert!(missing.is_empty(), "fields without a description: {missing:?}");
}

#[test]
fn geohash_precision_range_is_in_the_schema() {
    let crd = crd();
    let precision = schema_at(&crd, &["spec", "analyses", "hotSpots", "geohashPrecision"]);
    assert_eq!(precision["minimum"].as_f64(), Some(1.0));
    assert_eq!(precision["maximum"].as_f64(), Some(12.0));
    let shards = schema_at(&crd, &["spec", "stream", "shards"]);
    assert_eq!((shards["minimum"].as_f64(), shards["maximum"].as_f64()), (Some(1.0), Some(10000.0)));
    let lat = schema_at(&crd, &["spec", "analyses", "region", "minLat"]);
    assert_eq!((lat["minimum"].as_f64(), lat["maximum"].as_f64()), (Some(-90.0), Some(90.0)));
    let lon = schema_at(&crd, &["spec", "analyses", "airportTrips", "airports", "[]", "maxLon"]);
    assert_eq!((lon["minimum"].as_f64(), lon["maximum"].as_f64()), (Some(-180.0), Some(180.0)));

    let api = ApiServer::new();
    let too_fine = set(minimal(), "spec.analyses.hotSpots.geohashPrecision", json!(13));
    assert_eq!(
        api.create(&too_fine),
        [Violation::new("spec.analyses.hotSpots.geohashPrecision", "must be less than or equal to 12")]
    );
    let too_coarse = set(minimal(), "spec.analyses.hotSpots.geohashPrecision", json!(0));
    assert_eq!(
        api.create(&too_coarse),
        [Violation::new("spec.analyses.hotSpots.geohashPrecision", "must be greater than or equal to 1")]
    );
}

// ---------------------------------------------------------------------------------------------
// Examples and defaults.

fn minimal() -> Value {
    yaml(&read(MINIMAL_EXAMPLE))
}

#[test]
fn examples_deserialize_into_the_type() {
    for path in [MINIMAL_EXAMPLE, FULL_EXAMPLE] {
        let pipeline: TaxiPipeline =
            serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path} does not deserialize: {e}"));
        assert_eq!(pipeline.metadata.name.as_deref(), Some("nyc-taxi"), "{path}");
    }
    let full: TaxiPipeline = serde_norway::from_str(&read(FULL_EXAMPLE)).expect("full example");
    assert_eq!(full.spec.stream.shards, 8);
    assert_eq!(full.spec.analyses.airport_trips.airports.len(), 3);
    assert_eq!(full.spec.worker.iam_role_arn.as_deref(), Some("arn:aws:iam::123456789012:role/taxi-pipeline-worker"));
}

/// Every TaxiPipeline of `examples/*.yaml` with the name of its file; a file may hold several
/// documents, and objects of other kinds, which are skipped.
fn example_pipelines() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(EXAMPLES)
        .unwrap_or_else(|e| panic!("read {EXAMPLES}: {e}"))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "yaml"))
        .collect();
    files.sort();
    let mut pipelines = Vec::new();
    for path in files {
        let file = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        for document in serde_norway::Deserializer::from_str(&read(&path.to_string_lossy())) {
            let object = Value::deserialize(document).unwrap_or_else(|e| panic!("examples/{file}: {e}"));
            if object["kind"] == "TaxiPipeline" {
                pipelines.push((file.clone(), object));
            }
        }
    }
    pipelines
}

/// The API server accepts every example pipeline, schema and CEL rules alike, and what it stores
/// reads into the type.
#[test]
fn examples_pass_validation() {
    let api = ApiServer::new();
    let pipelines = example_pipelines();
    let files: BTreeSet<&str> = pipelines.iter().map(|(file, _)| file.as_str()).collect();
    for known in ["taxipipeline-minimal.yaml", "taxipipeline.yaml"] {
        assert!(files.contains(known), "no TaxiPipeline found in examples/{known}: {files:?}");
    }
    for (file, object) in &pipelines {
        let name = &object["metadata"]["name"];
        assert_eq!(api.create(object), [], "examples/{file}: {name}");
        serde_json::from_value::<TaxiPipeline>(api.defaulted(object))
            .unwrap_or_else(|e| panic!("examples/{file}: {name} does not read into the type: {e}"));
    }
}

#[test]
fn full_example_sets_every_field_but_the_commented_alternatives() {
    // Alternatives the example shows in comments because they contradict its choices, or name a
    // cluster object (a PriorityClass) it cannot assume.
    const ALTERNATIVES: [&str; 5] = [
        ".spec.checkpoint.s3EndpointUrl",
        ".spec.sink.opensearch.auth.sigv4",
        ".spec.stream.endpointUrl",
        ".spec.worker.podTemplate.priorityClassName",
        ".spec.worker.serviceAccountName",
    ];
    // The older spec.worker fields the pod template replaces; the example uses the template.
    const REPLACED_BY_THE_POD_TEMPLATE: [&str; 2] = [".spec.worker.nodeSelector", ".spec.worker.podAnnotations"];
    fn walk(schema: &Value, value: &Value, path: &str, missing: &mut Vec<String>) {
        let Some(properties) = schema["properties"].as_object() else { return };
        for (name, sub) in properties {
            let here = format!("{path}.{name}");
            if KUBERNETES_TYPES.contains(&here.as_str()) || REPLACED_BY_THE_POD_TEMPLATE.contains(&here.as_str()) {
                continue;
            }
            match value.get(name) {
                Some(v) => walk(sub, v, &here, missing),
                None => missing.push(here),
            }
        }
    }
    let crd = crd();
    let spec_schema = schema_at(&crd, &["spec"]);
    let example = yaml(&read(FULL_EXAMPLE));
    let mut missing = Vec::new();
    walk(spec_schema, &example["spec"], ".spec", &mut missing);
    missing.sort();
    assert_eq!(missing, ALTERNATIVES);
}

#[test]
fn minimal_spec_is_filled_with_the_documented_defaults() {
    let pipeline: TaxiPipeline = serde_norway::from_str(&read(MINIMAL_EXAMPLE)).expect("minimal example");
    let spec = serde_json::to_value(&pipeline.spec).expect("spec serializes");
    let expected = json!({
        "stream": {
            "name": "taxi-trips",
            "shards": 4,
            "manage": false,
            "startPosition": "trim-horizon",
            "consumer": "polling",
        },
        "parallelism": 1,
        "autoscaling": {
            "enabled": false,
            "minReplicas": 1,
            "maxReplicas": 10,
            "targetShardsPerReplica": 2,
            "maxLag": "1m",
            "scaleUpStabilization": "1m",
            "scaleDownStabilization": "10m",
        },
        "eventTime": {
            "watermark": "bounded",
            "maxOutOfOrderness": "1m",
            "allowedLateness": "0s",
            "idleTimeout": "1m",
            "maxTimeJump": "24h",
        },
        "analyses": {
            "hotSpots": { "window": "10m", "geohashPrecision": 6, "minPickups": 2 },
            "airportTrips": {
                "window": "10m",
                "minTrips": 2,
                "airports": [
                    { "name": "JFK", "minLat": 40.632, "minLon": -73.800, "maxLat": 40.654, "maxLon": -73.761 },
                    { "name": "LGA", "minLat": 40.766, "minLon": -73.881, "maxLat": 40.778, "maxLon": -73.859 },
                ],
            },
            "region": { "minLat": 40.4774, "minLon": -74.2591, "maxLat": 40.9176, "maxLon": -73.7004 },
        },
        "checkpoint": {
            "uri": "s3://taxi-checkpoints/nyc-taxi",
            "interval": "10s",
            "retain": 3,
            "cleanupOnDelete": false,
            "s3ForcePathStyle": false,
        },
        "sink": {
            "opensearch": {
                "endpoint": "http://opensearch.opensearch.svc:9200",
                "indexPrefix": "taxi",
                "auth": { "type": "none" },
                "bulk": { "maxDocs": 5000, "maxBytes": 5_242_880, "maxDelay": "1s" },
            },
        },
        "worker": { "terminationGracePeriodSeconds": 60 },
    });
    assert_eq!(spec, expected);

    // The API server fills in the same values from the schema's defaults.
    let api = ApiServer::new();
    let defaulted = api.defaulted(&minimal());
    assert_eq!(defaulted["spec"], expected);
}

/// Every default the CRD, the chart and the worker share has one definition, in
/// `taxi_core::settings` and `EngineConfig::default()`: the published schema's defaults, applied
/// as the API server applies them, render exactly what a worker assumes for a document that
/// leaves every field out.
#[test]
fn the_published_defaults_render_the_workers_own_settings() {
    let mut object = ApiServer::new().defaulted(&yaml(&read(MINIMAL_EXAMPLE)));
    object["metadata"]["namespace"] = json!("streaming");
    object["metadata"]["uid"] = json!("0b5d6a3e-7c41-4f0e-9a2b-5e8c1d7f3a90");
    // Every field is present now, so the Rust-side serde defaults play no part.
    let pipeline: TaxiPipeline = serde_json::from_value(object).expect("a defaulted TaxiPipeline");
    let defaults = Defaults::new("registry.example.com/taxi:test", "taxi-system");
    let rendered = validate(&pipeline, &defaults).expect("valid").settings;

    let workers_own = json!({
        "pipeline": "nyc-taxi",
        "namespace": "streaming",
        "stream": {"name": "taxi-trips", "efo_consumer_name": "streaming.nyc-taxi"},
        "checkpoint": {"uri": "s3://taxi-checkpoints/nyc-taxi"},
        "sink": {"url": "http://opensearch.opensearch.svc:9200"},
    });
    let workers_own = WorkerSettings::from_json(workers_own.to_string().as_bytes()).expect("minimal settings");
    assert_eq!(rendered, workers_own);
}

/// The chart restates two pipeline defaults (the checkpoint alert's fallback interval and the
/// saved objects' index prefix): they must be the same values.
#[test]
fn the_chart_values_restate_the_pipeline_defaults_unchanged() {
    let values = yaml(&read(CHART_VALUES));
    assert_eq!(
        values["metrics"]["prometheusRule"]["checkpointIntervalSeconds"],
        json!(DEFAULT_CHECKPOINT_INTERVAL.as_secs()),
        "the checkpoint alert falls back to the default spec.checkpoint.interval"
    );
    assert_eq!(
        values["opensearchDashboards"]["savedObjects"]["indexPrefix"],
        json!(DEFAULT_INDEX_PREFIX),
        "the saved objects point at the default spec.sink.opensearch.indexPrefix"
    );
}

#[test]
fn nested_defaults_fill_partial_objects() {
    let pipeline: TaxiPipeline = serde_norway::from_str(&read(MINIMAL_EXAMPLE)).expect("minimal example");
    let mut object = serde_json::to_value(&pipeline).expect("serializes");
    object["spec"]["sink"]["opensearch"]["auth"] =
        json!({ "type": "basic", "secretRef": { "name": "opensearch-writer" } });
    let api = ApiServer::new();
    let defaulted = api.defaulted(&object);
    assert_eq!(
        defaulted["spec"]["sink"]["opensearch"]["auth"]["secretRef"],
        json!({ "name": "opensearch-writer", "usernameKey": "username", "passwordKey": "password" })
    );
    let spec: TaxiPipelineSpec = serde_json::from_value(object["spec"].clone()).expect("deserializes");
    let secret = spec.sink.opensearch.auth.secret_ref.expect("secretRef");
    assert_eq!((secret.username_key.as_str(), secret.password_key.as_str()), ("username", "password"));
}

// ---------------------------------------------------------------------------------------------
// Validation: accepted and rejected objects.

/// `object` with the value at the dotted `path` replaced (objects on the way are created).
fn set(mut object: Value, path: &str, value: Value) -> Value {
    let mut node = &mut object;
    let parts: Vec<&str> = path.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        if !node[*part].is_object() {
            node[*part] = json!({});
        }
        node = &mut node[*part];
    }
    node[parts[parts.len() - 1]] = value;
    object
}

#[test]
fn valid_specs_are_accepted() {
    let api = ApiServer::new();
    let cases: Vec<(&str, Value)> = vec![
        ("paused", set(minimal(), "spec.parallelism", json!(0))),
        ("efo consumer", set(minimal(), "spec.stream.consumer", json!("efo"))),
        ("start at latest", set(minimal(), "spec.stream.startPosition", json!("latest"))),
        ("start at a UTC time", set(minimal(), "spec.stream.startPosition", json!("2016-01-01T00:00:00Z"))),
        (
            "start at a time with offset and fraction",
            set(minimal(), "spec.stream.startPosition", json!("2016-01-01T05:30:00.250+05:30")),
        ),
        ("one-minute windows", set(minimal(), "spec.analyses.hotSpots.window", json!("1m"))),
        ("one-hour windows", set(minimal(), "spec.analyses.airportTrips.window", json!("1h"))),
        ("day windows", set(minimal(), "spec.analyses.hotSpots.window", json!("24h"))),
        ("windows as a sum", set(minimal(), "spec.analyses.hotSpots.window", json!("1h30m"))),
        ("45-second windows", set(minimal(), "spec.analyses.hotSpots.window", json!("45s"))),
        ("windows in milliseconds", set(minimal(), "spec.analyses.hotSpots.window", json!("600000ms"))),
        ("coarse cells", set(minimal(), "spec.analyses.hotSpots.geohashPrecision", json!(1))),
        ("fine cells", set(minimal(), "spec.analyses.hotSpots.geohashPrecision", json!(12))),
        ("no airports", set(minimal(), "spec.analyses.airportTrips.airports", json!([]))),
        (
            "integer coordinates",
            set(minimal(), "spec.analyses.region", json!({ "minLat": 40, "minLon": -75, "maxLat": 41, "maxLon": -73 })),
        ),
        (
            "fixed scale",
            set(
                minimal(),
                "spec.autoscaling",
                json!({ "enabled": true, "minReplicas": 3, "maxReplicas": 3, "scaleUpStabilization": "0s" }),
            ),
        ),
        ("bucket only", set(minimal(), "spec.checkpoint.uri", json!("s3://taxi-checkpoints"))),
        ("dotted bucket", set(minimal(), "spec.checkpoint.uri", json!("s3://taxi.checkpoints.example/a/b/"))),
        ("sub-second checkpoints", set(minimal(), "spec.checkpoint.interval", json!("500ms"))),
        ("keep no old checkpoints", set(minimal(), "spec.checkpoint.retain", json!(0))),
        ("https sink", set(minimal(), "spec.sink.opensearch.endpoint", json!("https://search.example.com"))),
        (
            "sink behind a path with an @",
            set(minimal(), "spec.sink.opensearch.endpoint", json!("https://proxy.example.com/@search?user=a@b")),
        ),
        (
            "basic auth",
            set(
                minimal(),
                "spec.sink.opensearch.auth",
                json!({ "type": "basic", "secretRef": { "name": "opensearch-writer" } }),
            ),
        ),
        ("sigv4 defaults", set(minimal(), "spec.sink.opensearch.auth", json!({ "type": "sigv4" }))),
        (
            "sigv4 serverless",
            set(
                minimal(),
                "spec.sink.opensearch.auth",
                json!({ "type": "sigv4", "sigv4": { "service": "aoss", "region": "eu-west-1" } }),
            ),
        ),
        ("late trips allowed", set(minimal(), "spec.eventTime.allowedLateness", json!("2m30s"))),
        ("no disorder", set(minimal(), "spec.eventTime.maxOutOfOrderness", json!("0"))),
        ("punctuated", set(minimal(), "spec.eventTime.watermark", json!("punctuated"))),
        ("the longest name", set(minimal(), "metadata.name", json!(format!("nyc-{}", "x".repeat(41))))),
        ("a one-letter name", set(minimal(), "metadata.name", json!("n"))),
        (
            "a consumer name of the author's",
            set(
                minimal(),
                "spec.stream",
                json!({"name": "taxi-trips", "consumer": "efo", "efoConsumerName": "Shared_reader-2"}),
            ),
        ),
        ("an archive with its defaults", set(minimal(), "spec.archive", json!({"uri": "s3://taxi-archive/trips"}))),
        (
            "the smallest and youngest archive files, at a bucket's root",
            set(
                minimal(),
                "spec.archive",
                json!({"uri": "s3://taxi-archive", "maxFileBytes": 65536, "maxFileAge": "1s"}),
            ),
        ),
        (
            "the largest and oldest archive files",
            set(
                minimal(),
                "spec.archive",
                json!({"uri": "s3://taxi.archive/a/b/", "maxFileBytes": 1_073_741_824, "maxFileAge": "1h"}),
            ),
        ),
    ];
    for (name, object) in cases {
        assert_eq!(api.create(&object), [], "{name} must be accepted");
        // What the API server accepts, the operator can read.
        let defaulted = api.defaulted(&object);
        serde_json::from_value::<TaxiPipeline>(defaulted).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// What the API server answers an archive URI that is no S3 URI with a bucket.
const ARCHIVE_URI: &str = "archive.uri must be an S3 URI with a bucket, like s3://bucket/prefix";
/// What it answers an archive file size beyond the bounds.
const ARCHIVE_FILE_BYTES: &str = "archive.maxFileBytes must be between 65536 (64 KiB) and 1073741824 (1 GiB)";
/// What it answers an archive file age beyond the bounds.
const ARCHIVE_FILE_AGE: &str = "archive.maxFileAge must be a duration between 1s and 1h";

/// The minimal example with an archive of the default file size and age.
fn archive() -> Value {
    set(minimal(), "spec.archive", json!({"uri": "s3://taxi-archive/trips"}))
}

/// What the API server answers a sink endpoint with credentials.
const ENDPOINT_CREDENTIALS: &str = "sink.opensearch.endpoint must not carry credentials (user:password@ or user@): \
    put them in a Secret named by sink.opensearch.auth.secretRef, with auth.type basic";

#[test]
fn invalid_specs_are_rejected_with_their_message() {
    let api = ApiServer::new();
    let cases: Vec<(&str, Value, Violation)> = vec![
        (
            "min replicas above max",
            set(minimal(), "spec.autoscaling", json!({ "minReplicas": 5, "maxReplicas": 3 })),
            Violation::new(
                "spec.autoscaling",
                "autoscaling.minReplicas must not be greater than autoscaling.maxReplicas",
            ),
        ),
        (
            "zero min replicas",
            set(minimal(), "spec.autoscaling.minReplicas", json!(0)),
            Violation::new("spec.autoscaling.minReplicas", "autoscaling.minReplicas must be at least 1"),
        ),
        (
            "zero shards per replica",
            set(minimal(), "spec.autoscaling.targetShardsPerReplica", json!(0)),
            Violation::new(
                "spec.autoscaling.targetShardsPerReplica",
                "autoscaling.targetShardsPerReplica must be at least 1",
            ),
        ),
        (
            "zero max lag",
            set(minimal(), "spec.autoscaling.maxLag", json!("0s")),
            Violation::new("spec.autoscaling.maxLag", "autoscaling.maxLag must be a positive duration"),
        ),
        (
            "window that does not divide a day",
            set(minimal(), "spec.analyses.hotSpots.window", json!("7m")),
            Violation::new(
                "spec.analyses.hotSpots.window",
                "analyses.hotSpots.window must be a whole number of seconds that divides 24h",
            ),
        ),
        (
            "window of a fractional second",
            set(minimal(), "spec.analyses.airportTrips.window", json!("1.5s")),
            Violation::new(
                "spec.analyses.airportTrips.window",
                "analyses.airportTrips.window must be a whole number of seconds that divides 24h",
            ),
        ),
        (
            "window longer than a day",
            set(minimal(), "spec.analyses.airportTrips.window", json!("48h")),
            Violation::new(
                "spec.analyses.airportTrips.window",
                "analyses.airportTrips.window must be a whole number of seconds that divides 24h",
            ),
        ),
        (
            "zero window",
            set(minimal(), "spec.analyses.hotSpots.window", json!("0s")),
            Violation::new("spec.analyses.hotSpots.window", "analyses.hotSpots.window must be a positive duration"),
        ),
        (
            "zero idle timeout",
            set(minimal(), "spec.eventTime.idleTimeout", json!("0s")),
            Violation::new("spec.eventTime.idleTimeout", "eventTime.idleTimeout must be a positive duration"),
        ),
        (
            "checkpoints outside S3",
            set(minimal(), "spec.checkpoint.uri", json!("gs://taxi-checkpoints/nyc-taxi")),
            Violation::new(
                "spec.checkpoint.uri",
                "checkpoint.uri must be an S3 URI with a bucket, like s3://bucket/prefix",
            ),
        ),
        (
            "checkpoint URI without a bucket",
            set(minimal(), "spec.checkpoint.uri", json!("s3:///nyc-taxi")),
            Violation::new(
                "spec.checkpoint.uri",
                "checkpoint.uri must be an S3 URI with a bucket, like s3://bucket/prefix",
            ),
        ),
        (
            "checkpoint to a local path",
            set(minimal(), "spec.checkpoint.uri", json!("/var/lib/checkpoints")),
            Violation::new(
                "spec.checkpoint.uri",
                "checkpoint.uri must be an S3 URI with a bucket, like s3://bucket/prefix",
            ),
        ),
        (
            "zero checkpoint interval",
            set(minimal(), "spec.checkpoint.interval", json!("0s")),
            Violation::new("spec.checkpoint.interval", "checkpoint.interval must be a positive duration"),
        ),
        (
            "basic auth without a secret",
            set(minimal(), "spec.sink.opensearch.auth", json!({ "type": "basic" })),
            Violation::new(
                "spec.sink.opensearch.auth",
                "sink.opensearch.auth.secretRef is required when auth.type is basic, and only then",
            ),
        ),
        (
            "a secret without basic auth",
            set(minimal(), "spec.sink.opensearch.auth", json!({ "secretRef": { "name": "opensearch-writer" } })),
            Violation::new(
                "spec.sink.opensearch.auth",
                "sink.opensearch.auth.secretRef is required when auth.type is basic, and only then",
            ),
        ),
        (
            "sigv4 settings with another auth type",
            set(
                minimal(),
                "spec.sink.opensearch.auth",
                json!({ "type": "basic", "secretRef": { "name": "w" }, "sigv4": { "service": "es" } }),
            ),
            Violation::new(
                "spec.sink.opensearch.auth",
                "sink.opensearch.auth.sigv4 is only allowed when auth.type is sigv4",
            ),
        ),
        (
            "sink endpoint without a scheme",
            set(minimal(), "spec.sink.opensearch.endpoint", json!("opensearch:9200")),
            Violation::new(
                "spec.sink.opensearch.endpoint",
                "sink.opensearch.endpoint must be an http:// or https:// URL with a host",
            ),
        ),
        (
            "sink endpoint with a user and password",
            set(minimal(), "spec.sink.opensearch.endpoint", json!("https://writer:s3cret@search.example.com:9200")),
            Violation::new("spec.sink.opensearch.endpoint", ENDPOINT_CREDENTIALS),
        ),
        (
            "a consumer name with a dot, the operator's own form",
            set(minimal(), "spec.stream.efoConsumerName", json!("other-team.their-pipeline")),
            Violation::new(
                "spec.stream.efoConsumerName",
                "stream.efoConsumerName may hold only letters, digits, '_' and '-': names with a dot are reserved \
                 for the consumers the operator names <namespace>.<name>",
            ),
        ),
        (
            "sink endpoint with a user only",
            set(minimal(), "spec.sink.opensearch.endpoint", json!("http://writer@opensearch.opensearch.svc:9200")),
            Violation::new("spec.sink.opensearch.endpoint", ENDPOINT_CREDENTIALS),
        ),
        (
            "sink endpoint with a password holding an @",
            set(minimal(), "spec.sink.opensearch.endpoint", json!("https://writer:p@ss@search.example.com/")),
            Violation::new("spec.sink.opensearch.endpoint", ENDPOINT_CREDENTIALS),
        ),
        (
            "zero bulk delay",
            set(minimal(), "spec.sink.opensearch.bulk.maxDelay", json!("0ms")),
            Violation::new(
                "spec.sink.opensearch.bulk.maxDelay",
                "sink.opensearch.bulk.maxDelay must be a positive duration",
            ),
        ),
        (
            "start position in words",
            set(minimal(), "spec.stream.startPosition", json!("yesterday")),
            Violation::new(
                "spec.stream.startPosition",
                "stream.startPosition must be trim-horizon, latest or an RFC 3339 timestamp like 2016-01-01T00:00:00Z",
            ),
        ),
        (
            "start position as a date",
            set(minimal(), "spec.stream.startPosition", json!("2016-01-01")),
            Violation::new(
                "spec.stream.startPosition",
                "stream.startPosition must be trim-horizon, latest or an RFC 3339 timestamp like 2016-01-01T00:00:00Z",
            ),
        ),
        (
            "start position in Kinesis spelling",
            set(minimal(), "spec.stream.startPosition", json!("TRIM_HORIZON")),
            Violation::new(
                "spec.stream.startPosition",
                "stream.startPosition must be trim-horizon, latest or an RFC 3339 timestamp like 2016-01-01T00:00:00Z",
            ),
        ),
        (
            "start position before the epoch",
            set(minimal(), "spec.stream.startPosition", json!("1969-12-31T23:59:59Z")),
            Violation::new(
                "spec.stream.startPosition",
                "stream.startPosition must be trim-horizon, latest or an RFC 3339 timestamp like 2016-01-01T00:00:00Z",
            ),
        ),
        (
            "inverted region",
            set(
                minimal(),
                "spec.analyses.region",
                json!({ "minLat": 40.9176, "minLon": -74.2591, "maxLat": 40.4774, "maxLon": -73.7004 }),
            ),
            Violation::new("spec.analyses.region", "a bounding box needs minLat < maxLat and minLon < maxLon"),
        ),
        (
            "empty region",
            set(
                minimal(),
                "spec.analyses.region",
                json!({ "minLat": 40.5, "minLon": -74.0, "maxLat": 40.9, "maxLon": -74.0 }),
            ),
            Violation::new("spec.analyses.region", "a bounding box needs minLat < maxLat and minLon < maxLon"),
        ),
        (
            "inverted airport",
            set(
                minimal(),
                "spec.analyses.airportTrips.airports",
                json!([{ "name": "JFK", "minLat": 40.632, "minLon": -73.761, "maxLat": 40.654, "maxLon": -73.800 }]),
            ),
            Violation::new(
                "spec.analyses.airportTrips.airports[0]",
                "an airport box needs minLat < maxLat and minLon < maxLon",
            ),
        ),
        (
            "latitude beyond the pole",
            set(
                minimal(),
                "spec.analyses.region",
                json!({ "minLat": 40.4774, "minLon": -74.2591, "maxLat": 91.0, "maxLon": -73.7004 }),
            ),
            Violation::new("spec.analyses.region.maxLat", "must be less than or equal to 90"),
        ),
        (
            "longitude beyond the date line",
            set(
                minimal(),
                "spec.analyses.region",
                json!({ "minLat": 40.4774, "minLon": -180.5, "maxLat": 40.9176, "maxLon": -73.7004 }),
            ),
            Violation::new("spec.analyses.region.minLon", "must be greater than or equal to -180"),
        ),
        (
            "two airports of one name",
            set(
                minimal(),
                "spec.analyses.airportTrips.airports",
                json!([
                    { "name": "JFK", "minLat": 40.632, "minLon": -73.800, "maxLat": 40.654, "maxLon": -73.761 },
                    { "name": "JFK", "minLat": 40.766, "minLon": -73.881, "maxLat": 40.778, "maxLon": -73.859 },
                ]),
            ),
            Violation::new(
                "spec.analyses.airportTrips.airports",
                "analyses.airportTrips.airports must have unique names",
            ),
        ),
        (
            "airport without a name",
            set(
                minimal(),
                "spec.analyses.airportTrips.airports",
                json!([{ "name": "", "minLat": 40.632, "minLon": -73.800, "maxLat": 40.654, "maxLon": -73.761 }]),
            ),
            Violation::new("spec.analyses.airportTrips.airports[0].name", "an airport name must not be empty"),
        ),
        (
            "negative parallelism",
            set(minimal(), "spec.parallelism", json!(-1)),
            Violation::new("spec.parallelism", "must be greater than or equal to 0"),
        ),
        (
            "too many shards",
            set(minimal(), "spec.stream.shards", json!(10001)),
            Violation::new("spec.stream.shards", "must be less than or equal to 10000"),
        ),
        (
            "unknown consumer",
            set(minimal(), "spec.stream.consumer", json!("kcl")),
            Violation::new("spec.stream.consumer", "must be one of [\"polling\",\"efo\"]"),
        ),
        (
            "upper-case index prefix",
            set(minimal(), "spec.sink.opensearch.indexPrefix", json!("Taxi")),
            Violation::new("spec.sink.opensearch.indexPrefix", "must match ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"),
        ),
        (
            "misspelt field",
            set(minimal(), "spec.checkpoint.intervall", json!("5s")),
            Violation::new("spec.checkpoint.intervall", "unknown field"),
        ),
        (
            "a name too long for the revision label of the worker pods",
            set(minimal(), "metadata.name", json!(format!("nyc-{}", "x".repeat(42)))),
            Violation::new(
                "",
                "metadata.name must be at most 45 characters: the worker StatefulSet <name>-worker labels its pods \
                 with controller-revision-hash <name>-worker-<10-character hash>, and a label value holds at most 63",
            ),
        ),
        (
            "an archive outside S3",
            set(minimal(), "spec.archive.uri", json!("gs://taxi-archive/trips")),
            Violation::new("spec.archive.uri", ARCHIVE_URI),
        ),
        (
            "an archive without a bucket",
            set(minimal(), "spec.archive.uri", json!("s3:///trips")),
            Violation::new("spec.archive.uri", ARCHIVE_URI),
        ),
        (
            "an archive bucket in capitals",
            set(minimal(), "spec.archive.uri", json!("s3://Taxi-Archive/trips")),
            Violation::new("spec.archive.uri", ARCHIVE_URI),
        ),
        (
            "an archive without a URI",
            set(minimal(), "spec.archive", json!({"maxFileAge": "1m"})),
            Violation::new("spec.archive.uri", "Required value"),
        ),
        (
            "archive files below 64 KiB",
            set(archive(), "spec.archive.maxFileBytes", json!(65535)),
            Violation::new("spec.archive.maxFileBytes", ARCHIVE_FILE_BYTES),
        ),
        (
            "archive files above 1 GiB",
            set(archive(), "spec.archive.maxFileBytes", json!(1_073_741_825)),
            Violation::new("spec.archive.maxFileBytes", ARCHIVE_FILE_BYTES),
        ),
        (
            "archive files younger than a second",
            set(archive(), "spec.archive.maxFileAge", json!("999ms")),
            Violation::new("spec.archive.maxFileAge", ARCHIVE_FILE_AGE),
        ),
        (
            "archive files older than an hour",
            set(archive(), "spec.archive.maxFileAge", json!("1h0m0.001s")),
            Violation::new("spec.archive.maxFileAge", ARCHIVE_FILE_AGE),
        ),
        (
            "a dotted name",
            set(minimal(), "metadata.name", json!("nyc.taxi")),
            Violation::new(
                "",
                "metadata.name must start with a lower-case letter and hold only lower-case letters, digits and \
                 '-': it names the workers' Service <name>-worker, which must be a DNS label",
            ),
        ),
        (
            "a name starting with a digit",
            set(minimal(), "metadata.name", json!("5th-avenue")),
            Violation::new(
                "",
                "metadata.name must start with a lower-case letter and hold only lower-case letters, digits and \
                 '-': it names the workers' Service <name>-worker, which must be a DNS label",
            ),
        ),
    ];
    for (name, object, expected) in cases {
        assert_eq!(api.create(&object), [expected], "{name}");
    }
}

/// The operator refuses an archive the API server refuses, in the same words, for pipelines
/// created before the rules; what both accept renders into the workers' archive settings.
#[test]
fn the_operator_refuses_the_archives_the_api_server_refuses_in_its_words() {
    let api = ApiServer::new();
    let operator = |object: &Value| {
        let mut object = api.defaulted(object);
        object["metadata"]["namespace"] = json!("streaming");
        object["metadata"]["uid"] = json!("0b5d6a3e-7c41-4f0e-9a2b-5e8c1d7f3a90");
        let pipeline: TaxiPipeline = serde_json::from_value(object).expect("a TaxiPipeline");
        validate(&pipeline, &Defaults::new("registry.example.com/taxi:test", "taxi-system"))
    };
    for (path, value) in [
        ("spec.archive.uri", json!("gs://taxi-archive/trips")),
        ("spec.archive.uri", json!("s3://ab/trips")),
        ("spec.archive.uri", json!("s3://taxi_archive")),
        ("spec.archive.maxFileBytes", json!(0)),
        ("spec.archive.maxFileBytes", json!(2_147_483_648_i64)),
        ("spec.archive.maxFileAge", json!("500ms")),
        ("spec.archive.maxFileAge", json!("90m")),
    ] {
        let object = set(archive(), path, value.clone());
        let [violation] = api.create(&object).try_into().unwrap_or_else(|v| panic!("{path} = {value}: {v:?}"));
        let refused = operator(&object).expect_err("the operator refuses it too");
        assert_eq!(refused.field, violation.path, "{path} = {value}");
        assert_eq!(format!("{} {}", &refused.field["spec.".len()..], refused.reason), violation.message);
    }
    let object = set(archive(), "spec.archive.maxFileAge", json!("90s"));
    assert_eq!(api.create(&object), []);
    let rendered = operator(&object).expect("valid").settings.archive;
    assert_eq!(
        rendered,
        Some(ArchiveSettings { max_file_age_ms: 90_000, ..ArchiveSettings::at("s3://taxi-archive/trips") })
    );
}

#[test]
fn the_archive_may_be_added_changed_and_removed() {
    let api = ApiServer::new();
    let changed = set(archive(), "spec.archive", json!({"uri": "s3://other-archive", "maxFileAge": "1m"}));
    for (new, old) in [(archive(), minimal()), (changed, archive()), (minimal(), archive())] {
        assert_eq!(api.update(&new, &old), [], "{} after {}", new["spec"]["archive"], old["spec"]["archive"]);
    }
}

#[test]
fn durations_outside_go_syntax_are_rejected() {
    let api = ApiServer::new();
    for bad in ["10", "10 minutes", "1d", "-1m", "1e3s"] {
        let object = set(minimal(), "spec.eventTime.maxOutOfOrderness", json!(bad));
        let violations = api.create(&object);
        assert!(!violations.is_empty(), "{bad:?} must be rejected");
        assert!(violations.iter().all(|v| v.path == "spec.eventTime.maxOutOfOrderness"), "{bad:?}: {violations:?}");
    }
    // A date that only looks like RFC 3339: the CEL timestamp() call fails, which rejects it too.
    let object = set(minimal(), "spec.stream.startPosition", json!("2016-13-01T00:00:00Z"));
    assert!(!api.create(&object).is_empty());
}

#[test]
fn stream_name_cannot_change() {
    let api = ApiServer::new();
    let old = minimal();
    let renamed = set(minimal(), "spec.stream.name", json!("other-trips"));
    assert_eq!(api.create(&renamed), [], "a new pipeline may use any stream");
    assert_eq!(api.update(&renamed, &old), [Violation::new("spec.stream.name", "stream.name is immutable")]);
    assert_eq!(api.update(&old, &old), []);
    let resharded = set(set(minimal(), "spec.stream.shards", json!(16)), "spec.stream.manage", json!(true));
    assert_eq!(api.update(&resharded, &old), [], "other stream fields may change");
}

#[test]
fn analyses_and_the_event_time_that_shapes_windows_cannot_change() {
    let api = ApiServer::new();
    let old = minimal();
    let immutable = "analyses and eventTime (watermark, maxOutOfOrderness, allowedLateness) are immutable";
    for (path, value) in [
        ("spec.analyses.hotSpots.window", json!("5m")),
        ("spec.analyses.airportTrips.minTrips", json!(3)),
        ("spec.analyses.region", json!({"minLat": 40.5, "maxLat": 41.0, "minLon": -74.3, "maxLon": -73.7})),
        ("spec.eventTime.watermark", json!("punctuated")),
        ("spec.eventTime.maxOutOfOrderness", json!("2m")),
        ("spec.eventTime.allowedLateness", json!("30s")),
    ] {
        let changed = set(minimal(), path, value);
        assert_eq!(api.create(&changed), [], "{path}: a new pipeline may use any settings");
        let violations = api.update(&changed, &old);
        assert_eq!(violations.len(), 1, "{path}: {violations:?}");
        assert!(violations[0].message.starts_with(immutable), "{path}: {violations:?}");
        assert!(violations[0].message.contains("create a new TaxiPipeline"), "{path}: {violations:?}");
    }
    for (path, value) in [("spec.eventTime.idleTimeout", json!("5m")), ("spec.eventTime.maxTimeJump", json!("48h"))] {
        assert_eq!(api.update(&set(minimal(), path, value), &old), [], "{path} may change");
    }
}

#[test]
fn the_cel_harness_has_kubernetes_semantics() {
    let eval = |expr: &str| ApiServer::new().eval(expr);
    // duration() is Go's time.ParseDuration, getSeconds() truncates like Go's Duration.Seconds().
    assert_eq!(eval("duration('1h30m').getSeconds()"), Ok(Cel::Int(5400)));
    assert_eq!(eval("duration('1.5s').getSeconds()"), Ok(Cel::Int(1)));
    assert_eq!(eval("duration('-1.5s').getSeconds()"), Ok(Cel::Int(-1)));
    assert_eq!(eval("duration('90µs') == duration('90us')"), Ok(Cel::Bool(true)));
    assert_eq!(eval("duration('.5s') == duration('500ms')"), Ok(Cel::Bool(true)));
    assert!(eval("duration('1d')").is_err());
    assert!(eval("duration('1e3s')").is_err());
    assert_eq!(eval("string(duration('10m').getSeconds()) + 's'"), Ok(Cel::String(Arc::new("600s".to_owned()))));
    assert_eq!(eval("timestamp('2016-01-01T00:00:07Z').getSeconds()"), Ok(Cel::Int(7)));
    assert_eq!(eval("'s3://b'.startsWith('s3://') && 'abc'.matches('^a.c$')"), Ok(Cel::Bool(true)));
    assert_eq!(eval("[1, 2, 1].all(a, [1, 2, 1].exists_one(b, b == a))"), Ok(Cel::Bool(false)));
    assert_eq!(eval("86400 % 600"), Ok(Cel::Int(0)));
}

// ---------------------------------------------------------------------------------------------
// The worker pod template and the NetworkPolicy switch.

/// The minimal example with `spec.worker.podTemplate` set to `template`.
fn with_pod_template(template: Value) -> Value {
    set(minimal(), "spec.worker.podTemplate", template)
}

#[test]
fn a_pod_template_of_every_field_is_accepted_and_read_back() {
    let template = json!({
        "labels": {"team": "streaming", "app.kubernetes.io/part-of": "taxi"},
        "annotations": {"prometheus.io/scrape": "false", "example.com/owner": "streaming"},
        "imagePullSecrets": [{"name": "team-registry"}],
        "nodeSelector": {"node-pool": "streaming"},
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 50,
            "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "nyc-taxi"}}},
        }]}},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "streaming", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway"}],
        "priorityClassName": "streaming-high",
        "env": [
            {"name": "RUST_LOG", "value": "info"},
            {"name": "PROXY_TOKEN", "valueFrom": {"secretKeyRef": {"name": "egress-proxy", "key": "token"}}},
        ],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "podSecurityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containerSecurityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true},
    });
    let api = ApiServer::new();
    let object = set(with_pod_template(template.clone()), "spec.worker.networkPolicy", json!({"enabled": false}));
    assert_eq!(api.create(&object), []);
    let pipeline: TaxiPipeline = serde_json::from_value(api.defaulted(&object)).expect("the operator reads it");
    let read = serde_json::to_value(pipeline.spec.worker.pod_template).expect("JSON");
    assert_eq!(read, template, "every field survives the round trip");
    assert_eq!(pipeline.spec.worker.network_policy.and_then(|p| p.enabled), Some(false));
}

#[test]
fn a_pod_template_may_not_set_what_the_operator_owns() {
    let api = ApiServer::new();
    let labels = "worker.podTemplate.labels must not set the operator's labels (app.kubernetes.io/name, instance, \
                  component, managed-by, taxipipeline.io/*) or the StatefulSet controller's";
    let annotations =
        "worker.podTemplate.annotations must not set taxipipeline.io/ annotations: they are the operator's";
    let env = "worker.podTemplate.env must not set POD_NAME, POD_NAMESPACE or TAXI_* variables: the operator sets them \
               (sink credentials come from sink.opensearch.auth.secretRef)";
    let cases = [
        (json!({"labels": {"app.kubernetes.io/instance": "other"}}), "spec.worker.podTemplate.labels", labels),
        (json!({"labels": {"taxipipeline.io/pipeline": "other"}}), "spec.worker.podTemplate.labels", labels),
        (
            json!({"annotations": {"taxipipeline.io/config-hash": "0"}}),
            "spec.worker.podTemplate.annotations",
            annotations,
        ),
        (json!({"env": [{"name": "TAXI_SINK_PASSWORD", "value": "hunter2"}]}), "spec.worker.podTemplate.env", env),
        (
            json!({"env": [{"name": "RUST_LOG", "value": "debug"}, {"name": "POD_NAME", "value": "x"}]}),
            "spec.worker.podTemplate.env",
            env,
        ),
    ];
    for (template, path, message) in cases {
        assert_eq!(api.create(&with_pod_template(template.clone())), [Violation::new(path, message)], "{template}");
    }
}

/// The CEL rules restate the reserved names as literals: they refuse every name the operator's
/// validation refuses, and a name next to them is the user's.
#[test]
fn the_api_server_refuses_exactly_the_reserved_names_the_operator_refuses() {
    let api = ApiServer::new();
    let refused = |template: Value| !api.create(&with_pod_template(template)).is_empty();
    let prefixed_label = format!("{RESERVED_KEY_PREFIX}anything");
    for key in RESERVED_LABEL_KEYS.iter().copied().chain([prefixed_label.as_str()]) {
        assert!(refused(json!({"labels": {key: "x"}})), "label {key}");
    }
    assert!(refused(json!({"annotations": {prefixed_label.clone(): "x"}})));
    let prefixed_env = format!("{RESERVED_ENV_PREFIX}ANYTHING");
    for name in RESERVED_ENV_NAMES.iter().copied().chain([prefixed_env.as_str()]) {
        assert!(refused(json!({"env": [{"name": name, "value": "x"}]})), "env {name}");
    }
    for label in ["app.kubernetes.io/version", "example.com/taxipipeline.io", "pipeline"] {
        assert!(!refused(json!({"labels": {label: "x"}})), "label {label}");
    }
    for name in ["POD_IP", "MY_TAXI_TOKEN", "taxi_lowercase"] {
        assert!(!refused(json!({"env": [{"name": name, "value": "x"}]})), "env {name}");
    }
}

#[test]
fn pod_template_maps_and_lists_are_bounded_for_the_cel_cost_estimate() {
    let crd = crd();
    let template = schema_at(&crd, &["spec", "worker", "podTemplate"]);
    for map in ["labels", "annotations", "nodeSelector"] {
        assert_eq!(template["properties"][map]["maxProperties"], 64, "{map}");
    }
    for list in ["imagePullSecrets", "tolerations", "topologySpreadConstraints"] {
        assert_eq!(template["properties"][list]["maxItems"], 64, "{list}");
    }
    assert_eq!(template["properties"]["env"]["maxItems"], 128);
    let many: Map<String, Value> = (0..65).map(|i| (format!("label-{i}"), json!("x"))).collect();
    assert_eq!(
        ApiServer::new().create(&with_pod_template(json!({"labels": many}))),
        [Violation::new("spec.worker.podTemplate.labels", "must have at most 64 properties")]
    );
}

// ---------------------------------------------------------------------------------------------
// A stand-in for the API server's validation of TaxiPipeline objects, driven by the generated CRD.

/// One failed check: the field path (`spec.checkpoint.uri`) and the message.
#[derive(Debug, Clone, PartialEq)]
struct Violation {
    path: String,
    message: String,
}

impl Violation {
    fn new(path: &str, message: &str) -> Self {
        Violation { path: path.to_owned(), message: message.to_owned() }
    }
}

struct ApiServer {
    schema: Value,
}

impl ApiServer {
    fn new() -> Self {
        let crd = crd();
        ApiServer { schema: version(&crd)["schema"]["openAPIV3Schema"].clone() }
    }

    /// `object` after the schema's defaults are applied, as the API server stores it.
    fn defaulted(&self, object: &Value) -> Value {
        let mut object = object.clone();
        apply_defaults(&self.schema, &mut object);
        object
    }

    /// What creating `object` violates.
    fn create(&self, object: &Value) -> Vec<Violation> {
        self.validate(object, None)
    }

    /// What updating `old` to `new` violates (transition rules see `oldSelf`).
    fn update(&self, new: &Value, old: &Value) -> Vec<Violation> {
        self.validate(new, Some(&self.defaulted(old)))
    }

    fn validate(&self, object: &Value, old: Option<&Value>) -> Vec<Violation> {
        let object = self.defaulted(object);
        let mut violations = Vec::new();
        check_openapi(&self.schema, &object, "", true, &mut violations);
        check_cel(&self.schema, &object, old, "", &mut violations);
        violations
    }

    /// Evaluates a bare expression with the harness's functions.
    fn eval(&self, expression: &str) -> Result<Cel, ExecutionError> {
        let program = Program::compile(expression).expect("expression compiles");
        program.execute(&cel_context())
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() { name.to_owned() } else { format!("{path}.{name}") }
}

/// Structural defaulting: a missing property with a `default` gets it, recursively, also inside
/// defaults just inserted (as the API server does).
fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(properties) = schema["properties"].as_object() {
                for (name, sub) in properties {
                    if !map.contains_key(name)
                        && let Some(default) = sub.get("default")
                    {
                        map.insert(name.clone(), default.clone());
                    }
                    if let Some(child) = map.get_mut(name) {
                        apply_defaults(sub, child);
                    }
                }
            } else if schema["additionalProperties"].is_object() {
                for child in map.values_mut() {
                    apply_defaults(&schema["additionalProperties"], child);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                apply_defaults(&schema["items"], item);
            }
        }
        _ => {}
    }
}

/// The OpenAPI v3 keywords the generated schema uses, with the API server's messages.
fn check_openapi(schema: &Value, value: &Value, path: &str, root: bool, out: &mut Vec<Violation>) {
    let mut fail = |message: String| out.push(Violation { path: path.to_owned(), message });
    if value.is_null() {
        if !schema["nullable"].as_bool().unwrap_or(false) {
            fail("must not be null".to_owned());
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"].as_bool().unwrap_or(false);
    let type_ok = match schema["type"].as_str() {
        _ if int_or_string => value.is_string() || value.is_i64() || value.is_u64(),
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_ok {
        fail(format!("must be of type {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        fail(format!("must be one of {}", Value::Array(allowed.clone())));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && n < min
        {
            fail(format!("must be greater than or equal to {min}"));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && n > max
        {
            fail(format!("must be less than or equal to {max}"));
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(min) = schema["minLength"].as_u64()
            && chars < min
        {
            fail(format!("must be at least {min} characters long"));
        }
        if let Some(max) = schema["maxLength"].as_u64()
            && chars > max
        {
            fail(format!("may not be more than {max} characters long"));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            let re = regex::Regex::new(pattern).unwrap_or_else(|e| panic!("pattern {pattern} at {path}: {e}"));
            if !re.is_match(s) {
                fail(format!("must match {pattern}"));
            }
        }
    }
    match value {
        Value::Object(map) => {
            if let Some(max) = schema["maxProperties"].as_u64()
                && map.len() as u64 > max
            {
                out.push(Violation::new(path, &format!("must have at most {max} properties")));
            }
            for required in schema["required"].as_array().into_iter().flatten() {
                if let Some(name) = required.as_str()
                    && !map.contains_key(name)
                {
                    out.push(Violation::new(&join(path, name), "Required value"));
                }
            }
            let properties = schema["properties"].as_object();
            let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool().unwrap_or(false);
            for (name, child) in map {
                let here = join(path, name);
                if root && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(sub) = properties.and_then(|p| p.get(name)) {
                    check_openapi(sub, child, &here, false, out);
                } else if schema["additionalProperties"].is_object() {
                    check_openapi(&schema["additionalProperties"], child, &here, false, out);
                } else if !preserve {
                    out.push(Violation::new(&here, "unknown field"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                out.push(Violation::new(path, &format!("must have at most {max} items")));
            }
            for (i, item) in items.iter().enumerate() {
                check_openapi(&schema["items"], item, &format!("{path}[{i}]"), false, out);
            }
        }
        _ => {}
    }
}

/// Evaluates every `x-kubernetes-validations` rule at the node it is declared on. Transition
/// rules (those using `oldSelf`) run only when the old object has a value there, as on the API
/// server; object properties and list-map items (by key) are correlated with the old object,
/// other list items are not.
fn check_cel(schema: &Value, value: &Value, old: Option<&Value>, path: &str, out: &mut Vec<Violation>) {
    if value.is_null() {
        return;
    }
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        let text = rule["rule"].as_str().expect("a rule has a rule");
        let message = rule["message"].as_str().map_or_else(|| format!("failed rule: {text}"), str::to_owned);
        let transition = text.contains("oldSelf");
        let old_here = old.filter(|o| !o.is_null());
        if transition && old_here.is_none() {
            continue;
        }
        let program = Program::compile(text).unwrap_or_else(|e| panic!("rule {text:?} at {path} does not parse: {e}"));
        let mut context = cel_context();
        context.add_variable_from_value("self", to_cel(value, schema));
        if let Some(old_value) = old_here {
            context.add_variable_from_value("oldSelf", to_cel(old_value, schema));
        }
        match program.execute(&context) {
            Ok(Cel::Bool(true)) => {}
            Ok(Cel::Bool(false)) => out.push(Violation { path: path.to_owned(), message }),
            Ok(other) => panic!("rule {text:?} at {path} gave {other:?}, not a bool"),
            Err(e) => out.push(Violation { path: path.to_owned(), message: format!("evaluation error: {e}") }),
        }
    }
    match value {
        Value::Object(map) => {
            let subs: Vec<(&String, &Value)> = match schema["properties"].as_object() {
                Some(properties) => properties.iter().collect(),
                None => Vec::new(),
            };
            for (name, sub) in subs {
                if let Some(child) = map.get(name) {
                    let old_child = old.and_then(|o| o.get(name));
                    check_cel(sub, child, old_child, &join(path, name), out);
                }
            }
            if schema["additionalProperties"].is_object() {
                for (name, child) in map {
                    let old_child = old.and_then(|o| o.get(name));
                    check_cel(&schema["additionalProperties"], child, old_child, &join(path, name), out);
                }
            }
        }
        Value::Array(items) => {
            let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                .as_array()
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let is_map = schema["x-kubernetes-list-type"] == "map";
            for (i, item) in items.iter().enumerate() {
                let old_item = if is_map {
                    old.and_then(Value::as_array)
                        .and_then(|olds| olds.iter().find(|o| keys.iter().all(|k| o.get(*k) == item.get(*k))))
                } else {
                    None
                };
                check_cel(&schema["items"], item, old_item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A JSON value as the API server hands it to CEL: by the schema's type, so a `number` field
/// written as `40` is the double `40.0` and an `integer` is an int.
fn to_cel(value: &Value, schema: &Value) -> Cel {
    match value {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match (schema["type"].as_str(), n.as_i64()) {
            (Some("number"), _) | (_, None) => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
            (_, Some(i)) => Cel::Int(i),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(items) => Cel::List(Arc::new(items.iter().map(|i| to_cel(i, &schema["items"])).collect())),
        Value::Object(map) => Cel::from(object_to_cel(map, schema)),
    }
}

fn object_to_cel(map: &Map<String, Value>, schema: &Value) -> HashMap<String, Cel> {
    map.iter()
        .map(|(name, child)| {
            let sub = schema["properties"].get(name).unwrap_or(&schema["additionalProperties"]);
            (name.clone(), to_cel(child, sub))
        })
        .collect()
}

/// cel-interpreter's standard functions plus what Kubernetes' CEL environment has and it lacks
/// or does differently:
/// - `duration(string)`: cel-interpreter parses its own grammar (no `µs`, accepts `1e3s`); the
///   API server uses Go's `time.ParseDuration`, which `taxi_core::duration::parse_nanos` implements exactly.
/// - `<duration>.getSeconds()`: cel-interpreter only has it on timestamps. Kubernetes (cel-go)
///   returns the whole seconds of a duration, truncated toward zero; on a timestamp, the seconds
///   of the minute in UTC.
fn cel_context() -> Context<'static> {
    let mut context = Context::default();
    context.add_function("duration", go_duration);
    context.add_function("getSeconds", get_seconds);
    context
}

fn go_duration(ftx: &FunctionContext, text: Arc<String>) -> Result<Cel, ExecutionError> {
    let nanos = duration::parse_nanos(&text).map_err(|e| ftx.error(e))?;
    Ok(Cel::Duration(chrono::Duration::nanoseconds(nanos)))
}

fn get_seconds(ftx: &FunctionContext, This(this): This<Cel>) -> Result<Cel, ExecutionError> {
    match this {
        Cel::Duration(d) => Ok(Cel::Int(d.num_seconds())),
        Cel::Timestamp(t) => Ok(Cel::Int(i64::from(t.naive_utc().second()))),
        other => Err(ftx.error(format!("getSeconds() is not defined on {other:?}"))),
    }
}

//! Reconcile I/O against a mocked Kubernetes API server (`taxi_testkit::apiserver`): each test
//! lists the calls it expects, in order, with the answer the server gives, and checks the bodies
//! the operator sent. The fakes and call sequences are here; the tests of what the operator
//! refuses to run or to touch, and of the enhanced fan-out consumer, are in `reconcile/`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use taxi_core::assignment::Assignment;
use taxi_core::status::{ShardState, ShardStatus, WorkerStatus};
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisError, StreamState};
use taxi_operator::crd::TaxiPipeline;
use taxi_operator::metrics::{OperatorMetrics, OperatorState};
use taxi_operator::observe::{ProbeError, StreamRef, Streams, WorkerProbe};
use taxi_operator::policy::{ServiceAccountPolicy, WorkerPolicy};
use taxi_operator::reconcile::{Context, reconcile};
use taxi_operator::validate::Defaults;
use taxi_testkit::apiserver::{ApiHandle, Call, Sent, call, conflict, find, mock_client, not_found, serve};

// `#[path]`: a plain `mod` here would look in tests/, where every file is a test of its own.
#[path = "reconcile/consumer.rs"]
mod consumer;
#[path = "reconcile/trust.rs"]
mod trust;

/// A shard of an even split of the hash space into `n` parts.
fn shard(index: u32, n: u32, parent: Option<&str>, closed: bool) -> ShardInfo {
    let width = u128::MAX / u128::from(n);
    ShardInfo {
        shard_id: format!("shardId-{index:012}"),
        parent: parent.map(str::to_owned),
        adjacent_parent: None,
        starting_hash_key: width * u128::from(index % n),
        ending_hash_key: width * u128::from(index % n + 1) - 1,
        ending_sequence_number: closed.then(|| "49".to_owned()),
    }
}

/// ListShards answers `shards` (or fails); DescribeStreamSummary finds the stream ACTIVE with the
/// open shards of that list; CreateStream, UpdateShardCount and DeregisterStreamConsumer calls are
/// recorded in `calls`. DeregisterStreamConsumer is refused (and still recorded) while
/// `refuse_deregister` is set.
struct FakeStreams {
    shards: Mutex<Result<Vec<ShardInfo>, ()>>,
    calls: Mutex<Vec<String>>,
    refuse_deregister: std::sync::atomic::AtomicBool,
}

impl Streams for FakeStreams {
    async fn list_shards(&self, stream: &StreamRef) -> Result<Vec<ShardInfo>, KinesisError> {
        assert_eq!(stream.name, "taxi-trips");
        self.shards
            .lock()
            .expect("lock")
            .clone()
            .map_err(|()| KinesisError::Transient { operation: "ListShards", message: "connection refused".into() })
    }

    async fn stream_state(&self, stream: &StreamRef) -> Result<StreamState, KinesisError> {
        let shards = self.list_shards(stream).await?;
        let open_shards = u32::try_from(shards.iter().filter(|s| s.is_open()).count()).expect("open shards");
        Ok(StreamState::Active { open_shards })
    }

    async fn create_stream(&self, stream: &StreamRef, shards: u32) -> Result<(), KinesisError> {
        self.calls.lock().expect("lock").push(format!("CreateStream {} {shards}", stream.name));
        Ok(())
    }

    async fn update_shard_count(&self, stream: &StreamRef, target: u32) -> Result<(), KinesisError> {
        self.calls.lock().expect("lock").push(format!("UpdateShardCount {} {target}", stream.name));
        Ok(())
    }

    async fn deregister_consumer(&self, stream: &StreamRef, consumer: &str) -> Result<(), KinesisError> {
        self.calls.lock().expect("lock").push(format!("DeregisterStreamConsumer {} {consumer}", stream.name));
        if self.refuse_deregister.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(KinesisError::Permanent {
                operation: "DeregisterStreamConsumer",
                message: "AccessDeniedException: not authorized to perform kinesis:DeregisterStreamConsumer".into(),
            });
        }
        Ok(())
    }
}

#[derive(Default)]
struct FakeProbe(HashMap<String, WorkerStatus>);

impl WorkerProbe for FakeProbe {
    async fn status(&self, host: &str) -> Result<WorkerStatus, ProbeError> {
        self.0.get(host).cloned().ok_or(ProbeError { url: host.to_owned(), reason: "no such pod".into() })
    }
}

/// The `/status` of worker `ordinal` reading its shards of `assignment`, each as `shard` says.
fn worker_report(assignment: &Assignment, ordinal: u32, shard: impl Fn(&str) -> ShardStatus) -> WorkerStatus {
    let shards: std::collections::BTreeMap<String, ShardStatus> =
        assignment.shards_of(ordinal).map(|id| (id.to_owned(), shard(id))).collect();
    WorkerStatus {
        ordinal: Some(ordinal),
        assignment_epoch: Some(assignment.epoch),
        owned_shards: shards.len() as u64,
        shards,
        ..WorkerStatus::default()
    }
}

/// The operator's `--worker-image`: the only repository pipelines may name by default.
const WORKER_IMAGE: &str = "ghcr.io/taxipipeline/taxi:test";

fn fixed_now() -> Timestamp {
    "2026-11-27T12:00:00Z".parse().expect("timestamp")
}

fn context(shards: Result<Vec<ShardInfo>, ()>, probe: FakeProbe) -> (Arc<Context<FakeStreams, FakeProbe>>, ApiHandle) {
    let (client, handle) = mock_client("default");
    let reporter = Reporter { controller: "taxi-operator".into(), instance: Some("test".into()) };
    let ctx = Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        streams: FakeStreams {
            shards: Mutex::new(shards),
            calls: Mutex::default(),
            refuse_deregister: std::sync::atomic::AtomicBool::new(false),
        },
        probe,
        state: Arc::new(OperatorState::new(
            OperatorMetrics::new().expect("metrics"),
            tokio::sync::watch::channel(true).1,
        )),
        defaults: Defaults::new(WORKER_IMAGE, "taxi-system"),
        policy: WorkerPolicy::new(&[], ServiceAccountPolicy::Labeled, WORKER_IMAGE).expect("policy"),
        now: fixed_now,
        failures: Mutex::new(HashMap::new()),
        scaling: Mutex::new(HashMap::new()),
    };
    (Arc::new(ctx), handle)
}

/// The minimal example's spec with `parallelism` workers.
fn pipeline(parallelism: i32, extra: Value) -> TaxiPipeline {
    let mut object = json!({
        "apiVersion": "taxipipeline.io/v1alpha1",
        "kind": "TaxiPipeline",
        "metadata": {"name": "nyc", "namespace": "taxi", "uid": "0b5e-uid", "generation": 4, "resourceVersion": "7"},
        "spec": {
            "stream": {"name": "taxi-trips", "shards": 4},
            "parallelism": parallelism,
            "checkpoint": {"uri": "s3://taxi-checkpoints/nyc"},
            "sink": {"opensearch": {"endpoint": "https://search.example.com"}}
        }
    });
    merge(&mut object, extra);
    serde_json::from_value(object).expect("a TaxiPipeline")
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p,
    }
}

fn guard(pipeline: TaxiPipeline) -> Arc<DeserializeGuard<TaxiPipeline>> {
    Arc::new(DeserializeGuard(Ok(pipeline)))
}

/// The metadata of an object called `name` that the pipeline controls.
fn owned_metadata(name: &str) -> Value {
    json!({
        "name": name, "namespace": "taxi", "uid": format!("{name}-uid"),
        "ownerReferences": [{"apiVersion": "taxipipeline.io/v1alpha1", "kind": "TaxiPipeline", "name": "nyc",
            "uid": "0b5e-uid", "controller": true, "blockOwnerDeletion": true}]
    })
}

fn stateful_set(replicas: i32, ready: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": owned_metadata("nyc-worker"),
        "spec": {"replicas": replicas, "serviceName": "nyc-worker", "selector": {}, "template": {}},
        "status": {"replicas": replicas, "readyReplicas": ready}
    })
}

fn assignment_map(assignment: &Assignment, assigned_at: &str) -> Value {
    let mut metadata = owned_metadata("nyc-assignment");
    metadata["resourceVersion"] = json!(ASSIGNMENT_VERSION);
    metadata["annotations"] = json!({"taxipipeline.io/assigned-at": assigned_at});
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata,
        "data": {"assignment.json": assignment.to_json()}
    })
}

/// The resourceVersion of the assignment ConfigMap the fake API server hands out.
const ASSIGNMENT_VERSION: &str = "1717";
const NS: &str = "/api/v1/namespaces/taxi";
const APPS: &str = "/apis/apps/v1/namespaces/taxi";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/taxi";
const POLICY: &str = "/apis/policy/v1/namespaces/taxi";
const NETWORKING: &str = "/apis/networking.k8s.io/v1/namespaces/taxi";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/taxi/events";
const TP: &str = "/apis/taxipipeline.io/v1alpha1/namespaces/taxi/taxipipelines/nyc";

/// The pipeline's objects the observe step asks about by metadata only, after the assignment
/// ConfigMap and the StatefulSet, in order: (path, name).
fn held_objects() -> [(String, &'static str); 7] {
    [
        (format!("{NS}/serviceaccounts/nyc-worker"), "nyc-worker"),
        (format!("{RBAC}/roles/nyc-worker"), "nyc-worker"),
        (format!("{RBAC}/rolebindings/nyc-worker"), "nyc-worker"),
        (format!("{NS}/services/nyc-worker"), "nyc-worker"),
        (format!("{NS}/configmaps/nyc-worker-config"), "nyc-worker-config"),
        (format!("{POLICY}/poddisruptionbudgets/nyc-worker"), "nyc-worker"),
        (format!("{NETWORKING}/networkpolicies/nyc-worker"), "nyc-worker"),
    ]
}

/// The metadata reads of [`held_objects`]: each the pipeline's own when `existing`, else absent.
fn holders(existing: bool) -> Vec<Call> {
    held_objects()
        .into_iter()
        .map(|(path, name)| {
            if existing {
                call(Method::GET, &path, 200, json!({"metadata": owned_metadata(name)}))
            } else {
                call(Method::GET, &path, 404, not_found())
            }
        })
        .collect()
}

/// The applies of one pass, in order; `pdb` when the StatefulSet has more than one replica;
/// `assignment_existed` when the pass read an assignment ConfigMap (written over its version,
/// otherwise created); `existing` when the pipeline's other objects exist (and are its own): an
/// unwanted PDB is then deleted, and otherwise there is nothing to delete. The workers'
/// NetworkPolicy is on by default.
fn applies(pdb: bool, assignment_existed: bool, existing: bool) -> Vec<Call> {
    let ok = json!({});
    let mut calls = vec![
        call(Method::PATCH, &format!("{NS}/serviceaccounts/nyc-worker"), 200, ok.clone()),
        call(Method::PATCH, &format!("{RBAC}/roles/nyc-worker"), 200, ok.clone()),
        call(Method::PATCH, &format!("{RBAC}/rolebindings/nyc-worker"), 200, ok.clone()),
        call(Method::PATCH, &format!("{NS}/services/nyc-worker"), 200, ok.clone()),
        call(Method::PATCH, &format!("{NS}/configmaps/nyc-worker-config"), 200, ok.clone()),
        if assignment_existed {
            call(Method::PATCH, &format!("{NS}/configmaps/nyc-assignment"), 200, ok.clone())
        } else {
            call(Method::POST, &format!("{NS}/configmaps"), 201, assignment_map(&Assignment::default(), "-"))
        },
    ];
    match (pdb, existing) {
        (true, _) => {
            calls.push(call(Method::PATCH, &format!("{POLICY}/poddisruptionbudgets/nyc-worker"), 200, ok.clone()))
        }
        (false, true) => {
            calls.push(call(Method::DELETE, &format!("{POLICY}/poddisruptionbudgets/nyc-worker"), 200, ok.clone()))
        }
        (false, false) => {}
    }
    calls.push(call(Method::PATCH, &format!("{NETWORKING}/networkpolicies/nyc-worker"), 200, ok.clone()));
    calls.push(call(Method::PATCH, &format!("{APPS}/statefulsets/nyc-worker"), 200, ok));
    calls
}

/// The reads of a pass over an existing pipeline: the assignment and the StatefulSet (`None`:
/// absent), then who holds the other objects (the pipeline when its StatefulSet exists).
fn reads(assignment: Option<(&Assignment, &str)>, statefulset: Option<(i32, i32)>) -> Vec<Call> {
    let mut calls = vec![
        match assignment {
            Some((a, at)) => call(Method::GET, &format!("{NS}/configmaps/nyc-assignment"), 200, assignment_map(a, at)),
            None => call(Method::GET, &format!("{NS}/configmaps/nyc-assignment"), 404, not_found()),
        },
        match statefulset {
            Some((replicas, ready)) => {
                call(Method::GET, &format!("{APPS}/statefulsets/nyc-worker"), 200, stateful_set(replicas, ready))
            }
            None => call(Method::GET, &format!("{APPS}/statefulsets/nyc-worker"), 404, not_found()),
        },
    ];
    calls.extend(holders(statefulset.is_some()));
    calls
}

/// A whole pass over an existing pipeline: read the assignment, the StatefulSet (`None`: absent)
/// and who holds the rest, apply everything, publish one Event, patch the status.
fn pass(assignment: Option<(&Assignment, &str)>, statefulset: Option<(i32, i32)>, pdb: bool) -> Vec<Call> {
    pass_with_events(assignment, statefulset, pdb, 1)
}

/// [`pass`] with `events` Events published.
fn pass_with_events(
    assignment: Option<(&Assignment, &str)>,
    statefulset: Option<(i32, i32)>,
    pdb: bool,
    events: usize,
) -> Vec<Call> {
    let mut calls = reads(assignment, statefulset);
    calls.extend(applies(pdb, assignment.is_some(), statefulset.is_some()));
    calls.extend((0..events).map(|_| event()));
    calls.push(status_patch());
    calls
}

fn event() -> Call {
    call(Method::POST, EVENTS, 201, json!({}))
}

/// The API server answers a TaxiPipeline write with the object.
fn pipeline_json() -> Value {
    serde_json::to_value(pipeline(1, json!({}))).expect("JSON")
}

fn status_patch() -> Call {
    call(Method::PATCH, &format!("{TP}/status"), 200, pipeline_json())
}

fn sent_assignment(sent: &[Sent]) -> Assignment {
    let cm = sent
        .iter()
        .find(|s| {
            (s.method == Method::PATCH && s.uri.starts_with(&format!("{NS}/configmaps/nyc-assignment?")))
                || (s.method == Method::POST && s.uri.starts_with(&format!("{NS}/configmaps?")))
        })
        .map(|s| &s.body)
        .expect("the assignment was written");
    Assignment::from_json(cm["data"]["assignment.json"].as_str().expect("assignment.json").as_bytes()).expect("valid")
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

fn four_open_shards() -> Vec<ShardInfo> {
    (0..4).map(|i| shard(i, 4, None, false)).collect()
}

#[tokio::test]
async fn a_new_pipeline_gets_its_workers_an_assignment_and_a_status() {
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(None, None, true)));
    let action = reconcile(guard(pipeline(2, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));

    // Every apply is a forced server-side apply by our one field manager.
    for s in sent.iter().filter(|s| s.method == Method::PATCH && !s.uri.contains("/status")) {
        assert!(s.uri.contains("fieldManager=taxi-operator") && s.uri.contains("force=true"), "{}", s.uri);
        assert_eq!(s.body["metadata"]["ownerReferences"][0]["uid"], "0b5e-uid", "{}", s.uri);
    }
    let assignment = sent_assignment(&sent);
    assert_eq!((assignment.epoch, assignment.replicas, assignment.owners.len()), (1, 2, 4));
    assert_eq!(assignment.shards_of(0).count(), 2);
    let sts = &find(&sent, Method::PATCH, &format!("{APPS}/statefulsets/nyc-worker")).body;
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/taxipipeline/taxi:test");
    let rebalanced = &find(&sent, Method::POST, EVENTS).body;
    assert_eq!(rebalanced["reason"], "Rebalanced");
    let status = &find(&sent, Method::PATCH, &format!("{TP}/status")).body;
    assert_eq!(status["status"]["observedGeneration"], 4);
    assert_eq!(status["status"]["openShards"], 4);
    assert_eq!(status["status"]["assignmentEpoch"], 1);
    assert_eq!(status["status"]["selector"], "app.kubernetes.io/instance=nyc,app.kubernetes.io/name=taxi-worker");
    assert_eq!(condition(status, "Ready")["status"], "False", "no worker is ready yet");
}

#[tokio::test]
async fn a_deleted_assignment_config_map_continues_from_the_recorded_epoch() {
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(None, Some((2, 2)), true)));
    let published = pipeline(2, json!({"status": {"assignmentEpoch": 7}}));
    reconcile(guard(published), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert_eq!(sent_assignment(&sent).epoch, 8, "workers ignore a document older than the one they follow");
    let status = &find(&sent, Method::PATCH, &format!("{TP}/status")).body;
    assert_eq!(status["status"]["assignmentEpoch"], 8);
}

#[tokio::test]
async fn scaling_up_grows_the_statefulset_first_and_moves_shards_once_the_pods_are_ready() {
    let before = Assignment {
        epoch: 1,
        replicas: 2,
        owners: four_open_shards().iter().enumerate().map(|(i, s)| (s.shard_id.clone(), (i / 2) as u32)).collect(),
    };
    // Pass 1: parallelism 2 → 3 (an edit or `kubectl scale`), two pods ready.
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(Some((&before, "2026-11-27T11:00:00Z")), Some((2, 2)), true)));
    let action = reconcile(guard(pipeline(3, json!({}))), ctx.clone()).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::requeue(Duration::from_secs(3)), "a rescale under way is watched closely");
    assert_eq!(sent_assignment(&sent), before, "no shard moves to a pod that is not ready");
    let sts = &find(&sent, Method::PATCH, &format!("{APPS}/statefulsets/nyc-worker")).body;
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(find(&sent, Method::POST, EVENTS).body["reason"], "Scaled");
    let status = &find(&sent, Method::PATCH, &format!("{TP}/status")).body;
    assert_eq!(condition(status, "Progressing")["status"], "True");
    assert_eq!(status["status"]["desiredReplicas"], 3);
    // What the "fewer ready workers than desired" alert compares.
    let metrics = ctx.state.metrics.render();
    assert!(metrics.contains("taxi_operator_desired_replicas{pipeline=\"taxi/nyc\"} 3"), "{metrics}");
    assert!(metrics.contains("taxi_operator_ready_replicas{pipeline=\"taxi/nyc\"} 2"), "{metrics}");

    // Pass 2: the third pod is ready: the assignment moves the fewest shards to it.
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(Some((&before, "2026-11-27T11:00:00Z")), Some((3, 3)), true)));
    reconcile(guard(pipeline(3, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let after = sent_assignment(&sent);
    assert_eq!((after.epoch, after.replicas), (2, 3));
    let moved = before.owners.iter().filter(|(s, o)| after.owner_of(s) != Some(**o)).count();
    assert_eq!(moved, 1, "4 shards over 3 workers: only one shard moves");
    let ready = condition(&find(&sent, Method::PATCH, &format!("{TP}/status")).body, "Ready").clone();
    assert_eq!(ready["status"], "True", "{ready}");
}

#[tokio::test]
async fn scaling_down_removes_pods_only_after_they_released_their_shards() {
    let shards = four_open_shards();
    let three = taxi_core::assignment::assign(&shards, 3, None);
    // Pass 1: `kubectl scale tp/nyc --replicas=1`: the assignment shrinks, the pods stay.
    let (ctx, handle) = context(Ok(shards.clone()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(Some((&three, "2026-11-27T11:00:00Z")), Some((3, 3)), true)));
    reconcile(guard(pipeline(1, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let one = sent_assignment(&sent);
    assert_eq!((one.epoch, one.replicas, one.shards_of(0).count()), (three.epoch + 1, 1, 4));
    let sts = &find(&sent, Method::PATCH, &format!("{APPS}/statefulsets/nyc-worker")).body;
    assert_eq!(sts["spec"]["replicas"], 3, "the leaving pods must release first");

    // Pass 2: workers 1 and 2 report the new epoch and no shard: the StatefulSet shrinks, and the
    // PodDisruptionBudget of a multi-pod StatefulSet is removed.
    let drained = WorkerStatus { assignment_epoch: Some(one.epoch), owned_shards: 0, ..WorkerStatus::default() };
    let probe = FakeProbe(HashMap::from([
        ("nyc-worker-1.nyc-worker.taxi.svc".to_owned(), drained.clone()),
        ("nyc-worker-2.nyc-worker.taxi.svc".to_owned(), drained),
    ]));
    let (ctx, handle) = context(Ok(shards), probe);
    let server = tokio::spawn(serve(handle, pass(Some((&one, "2026-11-27T11:59:58Z")), Some((3, 3)), false)));
    reconcile(guard(pipeline(1, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert_eq!(sent_assignment(&sent), one, "the assignment is already right");
    let sts = &find(&sent, Method::PATCH, &format!("{APPS}/statefulsets/nyc-worker")).body;
    assert_eq!(sts["spec"]["replicas"], 1);
    let pdb = &find(&sent, Method::DELETE, &format!("{POLICY}/poddisruptionbudgets/nyc-worker")).body;
    assert_eq!(pdb["preconditions"]["uid"], "nyc-worker-uid", "only the budget that was read is deleted");
    let note = find(&sent, Method::POST, EVENTS).body["note"].as_str().unwrap_or_default().to_owned();
    assert!(note.contains("3 → 1"), "{note}");
}

#[tokio::test]
async fn new_child_shards_after_a_reshard_get_owners_in_a_new_epoch() {
    let before = taxi_core::assignment::assign(&four_open_shards(), 2, None);
    // Shard 0 split into 4 and 5: the parent is closed, the children open.
    let mut shards: Vec<ShardInfo> = four_open_shards();
    shards[0].ending_sequence_number = Some("49".into());
    let half = shards[0].starting_hash_key + (shards[0].ending_hash_key - shards[0].starting_hash_key) / 2;
    let child = |index: u32, start: u128, end: u128| ShardInfo {
        shard_id: format!("shardId-{index:012}"),
        parent: Some("shardId-000000000000".into()),
        adjacent_parent: None,
        starting_hash_key: start,
        ending_hash_key: end,
        ending_sequence_number: None,
    };
    shards.push(child(4, shards[0].starting_hash_key, half));
    shards.push(child(5, half + 1, shards[0].ending_hash_key));
    let (ctx, handle) = context(Ok(shards), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(Some((&before, "2026-11-27T11:00:00Z")), Some((2, 2)), true)));
    reconcile(guard(pipeline(2, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let after = sent_assignment(&sent);
    assert_eq!(after.epoch, before.epoch + 1);
    assert!(after.owner_of("shardId-000000000004").is_some() && after.owner_of("shardId-000000000005").is_some());
    for (shard, owner) in &before.owners {
        assert_eq!(after.owner_of(shard), Some(*owner), "{shard} kept its owner");
    }
    let status = &find(&sent, Method::PATCH, &format!("{TP}/status")).body;
    assert_eq!(status["status"]["openShards"], 5);
}

#[tokio::test]
async fn a_failed_shard_reported_by_a_worker_makes_the_pipeline_not_ready_with_its_reason() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    let report = |ordinal: u32, failed: Option<&str>| {
        worker_report(&two, ordinal, |shard| match Some(shard) == failed {
            true => ShardStatus {
                state: ShardState::Failed,
                error: Some("the checkpoint was written under other analysis settings".into()),
                ..ShardStatus::default()
            },
            false => ShardStatus { state: ShardState::Reading, ..ShardStatus::default() },
        })
    };
    let failing = two.shards_of(1).next().expect("a shard of worker 1").to_owned();
    let probe = FakeProbe(HashMap::from([
        ("nyc-worker-0.nyc-worker.taxi.svc".to_owned(), report(0, None)),
        ("nyc-worker-1.nyc-worker.taxi.svc".to_owned(), report(1, Some(&failing))),
    ]));
    let (ctx, handle) = context(Ok(shards), probe);
    let server =
        tokio::spawn(serve(handle, pass_with_events(Some((&two, "2026-11-27T11:00:00Z")), Some((2, 2)), true, 0)));
    reconcile(guard(pipeline(2, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let status = &find(&sent, Method::PATCH, &format!("{TP}/status")).body;
    let ready = condition(status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ShardsFailing")));
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{failing}: the checkpoint was written under other analysis settings")),
        "{message}"
    );
}

#[tokio::test]
async fn the_assignment_is_written_only_over_the_version_read_so_a_deposed_leaders_write_fails() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    // Another leader wrote the ConfigMap after this pass read it: the apply is refused.
    let mut calls = pass(Some((&two, "2026-11-27T11:00:00Z")), Some((2, 2)), true);
    let write = calls.iter().position(|c| c.path.ends_with("/configmaps/nyc-assignment") && c.method == Method::PATCH);
    let write = write.expect("the assignment is written");
    calls[write] = call(Method::PATCH, &format!("{NS}/configmaps/nyc-assignment"), 409, conflict());
    calls.truncate(write + 1);
    let (ctx, handle) = context(Ok(shards.clone()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    let error = reconcile(guard(pipeline(2, json!({}))), ctx).await.expect_err("a stale write fails the pass");
    let sent = server.await.expect("server");
    let body = &sent.last().expect("the write").body;
    assert_eq!(body["metadata"]["resourceVersion"], ASSIGNMENT_VERSION, "the write names the version it read");
    assert!(error.to_string().contains("nyc-assignment"), "{error}");

    // Absent when read, created meanwhile by another leader: the create is refused.
    let mut calls = pass(None, Some((2, 2)), true);
    let write = calls.iter().position(|c| c.method == Method::POST && c.path.ends_with("/configmaps"));
    let write = write.expect("the assignment is created");
    calls[write] = call(Method::POST, &format!("{NS}/configmaps"), 409, conflict());
    calls.truncate(write + 1);
    let (ctx, handle) = context(Ok(shards), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    reconcile(guard(pipeline(2, json!({}))), ctx).await.expect_err("a create over an existing one fails the pass");
    server.await.expect("server");
}

#[tokio::test]
async fn an_invalid_spec_is_reported_in_status_and_not_retried() {
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, vec![event(), status_patch()]));
    let bad = pipeline(2, json!({"spec": {"checkpoint": {"interval": "0s"}}}));
    let action = reconcile(guard(bad), ctx).await.expect("an invalid spec is not an error to retry");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::await_change());
    assert_eq!(sent[0].body["type"], "Warning");
    assert_eq!(sent[0].body["reason"], "InvalidSpec");
    let ready = condition(&sent[1].body, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.checkpoint.interval"), "{message}");
}

#[tokio::test]
async fn an_unreachable_stream_degrades_the_pipeline_and_is_retried() {
    let (ctx, handle) = context(Err(()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, vec![event(), status_patch()]));
    let error = reconcile(guard(pipeline(2, json!({}))), ctx).await.expect_err("Kinesis is down");
    let sent = server.await.expect("server");
    assert_eq!(error.category(), "kinesis");
    let degraded = condition(&sent[1].body, "Degraded");
    assert_eq!((degraded["status"].as_str(), degraded["reason"].as_str()), (Some("True"), Some("StreamUnavailable")));
}

#[tokio::test]
async fn deleting_a_pipeline_with_cleanup_deletes_its_checkpoints_and_then_the_finalizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Its own checkpoints are keyed by namespace and name; a pipeline of the same name in another
    // namespace, and anything under the bare name, are not its to delete.
    let checkpoints = dir.path().join("taxi/nyc/shards");
    let others = [dir.path().join("other/nyc/shards"), dir.path().join("nyc/shards")];
    for folder in others.iter().chain([&checkpoints]) {
        std::fs::create_dir_all(folder).expect("mkdir");
        std::fs::write(folder.join("shardId-000000000000.json"), "{}").expect("write");
    }
    let uri = format!("file://{}", dir.path().display());
    let deleting = pipeline(
        2,
        json!({
            "metadata": {"deletionTimestamp": "2026-11-27T11:59:00Z", "finalizers": ["taxipipeline.io/checkpoint-cleanup"]},
            "spec": {"checkpoint": {"uri": uri, "cleanupOnDelete": true}}
        }),
    );
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, vec![event(), call(Method::PATCH, TP, 200, pipeline_json())]));
    let action = reconcile(guard(deleting), ctx).await.expect("cleanup");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::await_change());
    assert_eq!(sent[0].body["reason"], "CheckpointsDeleted");
    assert!(!checkpoints.join("shardId-000000000000.json").exists(), "the checkpoints are gone");
    for folder in &others {
        assert!(folder.join("shardId-000000000000.json").exists(), "{} was left alone", folder.display());
    }
    // The finalizer is removed with a JSON patch guarded by a test of its position.
    let patch = sent[1].body.to_string();
    assert!(patch.contains("remove") && patch.contains("/metadata/finalizers"), "{patch}");
}

#[tokio::test]
async fn an_object_that_does_not_deserialize_gets_a_warning_and_no_retry() {
    let mut object = serde_json::to_value(pipeline(2, json!({}))).expect("JSON");
    object["spec"]["parallelism"] = json!("three");
    let guard: DeserializeGuard<TaxiPipeline> = serde_json::from_value(object).expect("the guard keeps the metadata");
    assert!(guard.0.is_err());
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, vec![event()]));
    let action = reconcile(Arc::new(guard), ctx).await.expect("not an error to retry");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::await_change());
    assert_eq!(sent[0].body["type"], "Warning");
    assert_eq!(sent[0].body["regarding"]["name"], "nyc");
    let note = sent[0].body["note"].as_str().unwrap_or_default();
    assert!(note.contains("\"three\""), "{note}");
}

/// The wall clock of the autoscaling test, moved by the test (milliseconds since the epoch).
static AUTOSCALE_CLOCK_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_795_000_000_000);

fn autoscale_now() -> Timestamp {
    Timestamp::from_millisecond(AUTOSCALE_CLOCK_MS.load(std::sync::atomic::Ordering::SeqCst)).expect("timestamp")
}

#[tokio::test]
async fn lag_above_max_lag_for_the_stabilization_window_scales_the_workers_up() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    // Both workers report every shard two minutes behind (maxLag is one minute).
    let report = |ordinal: u32| {
        worker_report(&two, ordinal, |_| ShardStatus {
            state: ShardState::Reading,
            millis_behind_latest: Some(120_000),
            records: 1_000,
            ..ShardStatus::default()
        })
    };
    let probe = FakeProbe(HashMap::from([
        ("nyc-worker-0.nyc-worker.taxi.svc".to_owned(), report(0)),
        ("nyc-worker-1.nyc-worker.taxi.svc".to_owned(), report(1)),
    ]));
    let (ctx, handle) = context(Ok(shards), probe);
    let mut ctx = Arc::into_inner(ctx).expect("one owner");
    ctx.now = autoscale_now;
    let ctx = Arc::new(ctx);
    let autoscaled = pipeline(
        1,
        json!({"spec": {"autoscaling": {"enabled": true, "minReplicas": 1, "maxReplicas": 4,
            "maxLag": "1m", "scaleUpStabilization": "1m"}}}),
    );
    let assigned = "2026-11-27T11:00:00Z";
    // Pass 1: the lag is new; the workers stay at the shard baseline (4 shards / 2 per replica).
    let mut calls = pass_with_events(Some((&two, assigned)), Some((2, 2)), true, 0);
    // Pass 2, 90 s later: lag above maxLag for longer than the window: scale up, say why.
    calls.extend(pass_with_events(Some((&two, assigned)), Some((2, 2)), true, 2));
    let server = tokio::spawn(serve(handle, calls));
    reconcile(guard(autoscaled.clone()), ctx.clone()).await.expect("pass 1");
    AUTOSCALE_CLOCK_MS.fetch_add(90_000, std::sync::atomic::Ordering::SeqCst);
    reconcile(guard(autoscaled), ctx.clone()).await.expect("pass 2");
    let sent = server.await.expect("server");
    let statefulsets: Vec<&Sent> =
        sent.iter().filter(|s| s.uri.starts_with(&format!("{APPS}/statefulsets/nyc-worker?"))).collect();
    assert_eq!(statefulsets[0].body["spec"]["replicas"], 2, "first pass: the shard baseline");
    let scaled = statefulsets[1].body["spec"]["replicas"].as_i64().expect("replicas");
    assert!(scaled > 2 && scaled <= 4, "scaled up within maxReplicas and the open shards: {scaled}");
    let statuses: Vec<&Sent> = sent.iter().filter(|s| s.uri.starts_with(&format!("{TP}/status"))).collect();
    let reason = statuses[1].body["status"]["scalingReason"].as_str().unwrap_or_default();
    assert!(reason.contains("above maxLag"), "{reason}");
    assert_eq!(statuses[1].body["status"]["desiredReplicas"], scaled);
    let events: Vec<&str> =
        sent.iter().filter(|s| s.uri.starts_with(EVENTS)).filter_map(|s| s.body["reason"].as_str()).collect();
    assert_eq!(events, ["Autoscaled", "Scaled"]);
    let metrics = ctx.state.metrics.render();
    assert!(
        metrics.contains("taxi_operator_autoscale_decisions_total{pipeline=\"taxi/nyc\",reason=\"lag_high\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("taxi_operator_autoscale_max_lag_ms{pipeline=\"taxi/nyc\"} 120000"), "{metrics}");
}

#[tokio::test]
async fn a_shard_count_edit_reshards_in_steps_of_at_most_double_and_records_each_call() {
    let managed = |calls: &Value| {
        pipeline(2, json!({"spec": {"stream": {"shards": 16, "manage": true}}, "status": {"reshardCalls": calls}}))
    };
    let even = |n: u32| -> Vec<ShardInfo> { (0..n).map(|i| shard(i, n, None, false)).collect() };
    let mut calls = json!([]);
    let mut previous: Option<Assignment> = None;
    // Each pass finds the stream ACTIVE with the open shards of the previous step: 4 → 8 → 16.
    for (open, expected_call) in [(4, Some(8)), (8, Some(16)), (16, None)] {
        let (ctx, handle) = context(Ok(even(open)), FakeProbe::default());
        let events = if expected_call.is_some() { 2 } else { 1 };
        let assigned = previous.as_ref().map(|a| (a, "2026-11-27T11:00:00Z"));
        let server = tokio::spawn(serve(handle, pass_with_events(assigned, Some((2, 2)), true, events)));
        let action = reconcile(guard(managed(&calls)), ctx.clone()).await.expect("reconcile");
        let sent = server.await.expect("server");
        let recorded = ctx.streams.calls.lock().expect("lock").clone();
        let status = &find(&sent, Method::PATCH, &format!("{TP}/status")).body;
        let resharding = condition(status, "StreamResharding");
        let events: Vec<&str> =
            sent.iter().filter(|s| s.uri.starts_with(EVENTS)).filter_map(|s| s.body["reason"].as_str()).collect();
        match expected_call {
            Some(to) => {
                assert_eq!(recorded, [format!("UpdateShardCount taxi-trips {to}")], "at most ×2 from {open}");
                assert_eq!(resharding["reason"], "Resharding");
                assert_eq!(events, ["Rebalanced", "Resharding"]);
                assert_eq!(action, Action::requeue(Duration::from_secs(5)), "a reshard is watched closely");
            }
            None => {
                assert!(recorded.is_empty(), "16 open shards: nothing to do, got {recorded:?}");
                assert_eq!(
                    (resharding["status"].as_str(), resharding["reason"].as_str()),
                    (Some("False"), Some("Stable"))
                );
            }
        }
        calls = status["status"]["reshardCalls"].clone();
        previous = Some(sent_assignment(&sent));
    }
    assert_eq!(calls.as_array().map(Vec::len), Some(2), "both calls are counted against the 24 h budget: {calls}");
}

#[tokio::test]
async fn the_workers_network_policy_is_applied_and_deleted_once_switched_off() {
    let two = taxi_core::assignment::assign(&four_open_shards(), 2, None);
    let policy_path = format!("{NETWORKING}/networkpolicies/nyc-worker");
    // On (the operator's default): applied before the StatefulSet, owned by the pipeline.
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server =
        tokio::spawn(serve(handle, pass_with_events(Some((&two, "2026-11-27T11:00:00Z")), Some((2, 2)), true, 0)));
    reconcile(guard(pipeline(2, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let applied = sent.iter().position(|s| s.method == Method::PATCH && s.uri.starts_with(&format!("{policy_path}?")));
    let statefulset = sent.iter().position(|s| s.uri.starts_with(&format!("{APPS}/statefulsets/nyc-worker?")));
    assert!(applied.expect("the policy is applied") < statefulset.expect("the StatefulSet is applied"));
    let policy = &find(&sent, Method::PATCH, &policy_path).body;
    assert_eq!(policy["kind"], "NetworkPolicy");
    assert_eq!(policy["metadata"]["ownerReferences"][0]["uid"], "0b5e-uid");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"],
        json!({"matchLabels": {"kubernetes.io/metadata.name": "taxi-system"}}),
        "the operator's namespace"
    );

    // Switched off in the spec: the same pass deletes it instead.
    let mut calls = pass_with_events(Some((&two, "2026-11-27T11:00:00Z")), Some((2, 2)), true, 0);
    let apply = calls.iter().position(|c| c.method == Method::PATCH && c.path == policy_path).expect("the apply");
    let deleted = json!({"apiVersion": "v1", "kind": "Status", "status": "Success", "metadata": {}});
    calls[apply] = call(Method::DELETE, &policy_path, 200, deleted);
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    let off = pipeline(2, json!({"spec": {"worker": {"networkPolicy": {"enabled": false}}}}));
    reconcile(guard(off), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let delete = find(&sent, Method::DELETE, &policy_path);
    assert_eq!(delete.body["preconditions"]["uid"], "nyc-worker-uid", "only the policy the pass saw as its own");
    assert!(!sent.iter().any(|s| s.method == Method::PATCH && s.uri.starts_with(&policy_path)), "not applied");
}

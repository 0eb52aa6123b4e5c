//! What the operator refuses on a shared cluster: a worker image or a ServiceAccount outside its
//! policy (nothing is written, `PolicyViolation`), and an object of the pipeline's name that
//! someone else made (never patched nor deleted, `ObjectNotOwned`).

use super::*;

const ACCOUNTS: &str = "/api/v1/namespaces/taxi/serviceaccounts";

/// The metadata of an object called `name` that someone else made: no owner reference.
fn foreign_metadata(name: &str) -> Value {
    json!({"name": name, "namespace": "taxi", "uid": format!("{name}-foreign-uid"), "labels": {"team": "billing"}})
}

/// [`holders`] with the object at `path` someone else's.
fn holders_with_foreign(existing: bool, path: &str) -> Vec<Call> {
    let mut calls = holders(existing);
    let foreign = calls.iter_mut().find(|c| c.path == path).expect("a held object");
    let name = path.rsplit('/').next().expect("a name");
    *foreign = call(Method::GET, path, 200, json!({"metadata": foreign_metadata(name)}));
    calls
}

/// The admit step's read of the ServiceAccount `name`, answered with `labels` (`None`: absent).
fn account_read(name: &str, labels: Option<Value>) -> Call {
    match labels {
        Some(labels) => call(
            Method::GET,
            &format!("{ACCOUNTS}/{name}"),
            200,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": "taxi", "labels": labels}}),
        ),
        None => call(Method::GET, &format!("{ACCOUNTS}/{name}"), 404, not_found()),
    }
}

fn workers_allowed() -> Option<Value> {
    Some(json!({"taxipipeline.io/workers-allowed": "true"}))
}

/// [`applies`] for a pipeline that names its own ServiceAccount: the operator's is not applied.
fn applies_without_service_account(pdb: bool, assignment_existed: bool, existing: bool) -> Vec<Call> {
    let mut calls = applies(pdb, assignment_existed, existing);
    calls.retain(|c| !(c.method == Method::PATCH && c.path.starts_with(ACCOUNTS)));
    calls
}

/// Only GETs, the Event and the status patch: nothing of the pipeline's was written.
fn assert_nothing_written(sent: &[Sent]) {
    let writes: Vec<String> = sent
        .iter()
        .filter(|s| {
            s.method != Method::GET && !s.uri.starts_with(EVENTS) && !s.uri.starts_with(&format!("{TP}/status"))
        })
        .map(|s| format!("{} {}", s.method, s.uri))
        .collect();
    assert!(writes.is_empty(), "written: {writes:?}");
}

/// The Warning Event and the Ready condition of a pass that stopped, which must say the same.
fn stopped_with(sent: &[Sent], reason: &str) -> String {
    let event = &find(sent, Method::POST, EVENTS).body;
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some(reason)));
    let ready = condition(&find(sent, Method::PATCH, &format!("{TP}/status")).body, "Ready").clone();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some(reason)));
    assert_eq!(ready["message"], event["note"], "the Event says what the condition says");
    ready["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn an_image_outside_the_allowed_repositories_is_refused_and_nothing_is_written() {
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, vec![event(), status_patch()]));
    let miner = pipeline(2, json!({"spec": {"worker": {"image": "docker.io/attacker/miner:1"}}}));
    let action = reconcile(guard(miner), ctx.clone()).await.expect("a refusal is not an error to retry");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::await_change());
    let message = stopped_with(&sent, "PolicyViolation");
    assert_eq!(
        message,
        "spec.worker.image docker.io/attacker/miner:1 is not allowed: this operator runs worker images from \
         ghcr.io/taxipipeline/taxi only"
    );
    assert_nothing_written(&sent);
    assert!(ctx.streams.calls.lock().expect("lock").is_empty(), "not even the stream is touched");
}

#[tokio::test]
async fn another_tag_of_the_operators_own_repository_runs() {
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(None, None, true)));
    let newer = pipeline(2, json!({"spec": {"worker": {"image": "ghcr.io/taxipipeline/taxi:0.5.0"}}}));
    reconcile(guard(newer), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let sts = &find(&sent, Method::PATCH, &format!("{APPS}/statefulsets/nyc-worker")).body;
    assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/taxipipeline/taxi:0.5.0");
}

#[tokio::test]
async fn a_named_service_account_must_carry_the_workers_allowed_label() {
    let reader = || pipeline(2, json!({"spec": {"worker": {"serviceAccountName": "reader"}}}));
    for (found, expected) in [
        (
            Some(json!({"team": "billing"})),
            "spec.worker.serviceAccountName taxi/reader is not labeled taxipipeline.io/workers-allowed: \"true\"; \
             the platform team sets that label on the ServiceAccounts workers may run as",
        ),
        (
            Some(json!({"taxipipeline.io/workers-allowed": "false"})),
            "spec.worker.serviceAccountName taxi/reader is not labeled taxipipeline.io/workers-allowed: \"true\"; \
             the platform team sets that label on the ServiceAccounts workers may run as",
        ),
        (
            None,
            "spec.worker.serviceAccountName taxi/reader does not exist; the workers may run only as a \
             ServiceAccount labeled taxipipeline.io/workers-allowed: \"true\"",
        ),
    ] {
        let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
        let server = tokio::spawn(serve(handle, vec![account_read("reader", found), event(), status_patch()]));
        let action = reconcile(guard(reader()), ctx).await.expect("a refusal is not an error to retry");
        let sent = server.await.expect("server");
        assert_eq!(action, Action::requeue(Duration::from_secs(30)), "labeling the account edits no pipeline");
        assert_eq!(stopped_with(&sent, "PolicyViolation"), expected);
        assert_nothing_written(&sent);
    }

    // Labeled: the workers run as it, bound to their Role; the operator creates no account.
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let mut calls = vec![account_read("reader", workers_allowed())];
    calls.extend(reads(None, None));
    calls.extend(applies_without_service_account(true, false, false));
    calls.extend([event(), status_patch()]);
    let server = tokio::spawn(serve(handle, calls));
    reconcile(guard(reader()), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let binding = &find(&sent, Method::PATCH, &format!("{RBAC}/rolebindings/nyc-worker")).body;
    assert_eq!(binding["subjects"][0]["name"], "reader");
    let sts = &find(&sent, Method::PATCH, &format!("{APPS}/statefulsets/nyc-worker")).body;
    assert_eq!(sts["spec"]["template"]["spec"]["serviceAccountName"], "reader");
}

#[tokio::test]
async fn the_forbid_policy_refuses_any_named_service_account_without_reading_it() {
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let mut ctx = Arc::into_inner(ctx).expect("one owner");
    ctx.policy = WorkerPolicy::new(&[], ServiceAccountPolicy::Forbid, WORKER_IMAGE).expect("policy");
    let server = tokio::spawn(serve(handle, vec![event(), status_patch()]));
    let reader = pipeline(2, json!({"spec": {"worker": {"serviceAccountName": "reader"}}}));
    let action = reconcile(guard(reader), Arc::new(ctx)).await.expect("a refusal is not an error to retry");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::await_change(), "only an edit of the pipeline lifts it");
    let message = stopped_with(&sent, "PolicyViolation");
    assert!(message.contains("runs workers only as the ServiceAccount it creates"), "{message}");
}

#[tokio::test]
async fn a_named_service_account_leaves_the_operators_old_one_unless_the_pipeline_controls_it() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    let assigned = "2026-11-27T11:00:00Z";
    let reader = || pipeline(2, json!({"spec": {"worker": {"serviceAccountName": "reader"}}}));
    let own_account = format!("{ACCOUNTS}/nyc-worker");
    let existing_reads = |held: Vec<Call>| {
        let mut calls = vec![account_read("reader", workers_allowed())];
        calls.extend(reads(Some((&two, assigned)), Some((2, 2))).into_iter().take(2));
        calls.extend(held);
        calls
    };

    // `<name>-worker` is someone else's account: it is neither deleted nor in the way.
    let mut calls = existing_reads(holders_with_foreign(true, &own_account));
    calls.extend(applies_without_service_account(true, true, true));
    calls.push(status_patch());
    let (ctx, handle) = context(Ok(shards.clone()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    reconcile(guard(reader()), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    let touched = sent.iter().any(|s| s.method != Method::GET && s.uri.starts_with(&own_account));
    assert!(!touched, "the foreign account was left alone");
    let ready = condition(&find(&sent, Method::PATCH, &format!("{TP}/status")).body, "Ready").clone();
    assert_eq!(ready["reason"], "Running");

    // The operator's own account from before the spec named one: deleted, as the object read.
    let mut calls = existing_reads(holders(true));
    let mut writes = applies_without_service_account(true, true, true);
    writes.insert(0, call(Method::DELETE, &own_account, 200, json!({})));
    calls.extend(writes);
    calls.push(status_patch());
    let (ctx, handle) = context(Ok(shards.clone()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    reconcile(guard(reader()), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert_eq!(find(&sent, Method::DELETE, &own_account).body["preconditions"]["uid"], "nyc-worker-uid");

    // The spec names `<name>-worker` itself, the platform's labeled account: it stays.
    let mut calls = vec![account_read("nyc-worker", workers_allowed())];
    calls.extend(reads(Some((&two, assigned)), Some((2, 2))).into_iter().take(2));
    calls.extend(holders_with_foreign(true, &own_account));
    calls.extend(applies_without_service_account(true, true, true));
    calls.push(status_patch());
    let (ctx, handle) = context(Ok(shards), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    let same_name = pipeline(2, json!({"spec": {"worker": {"serviceAccountName": "nyc-worker"}}}));
    reconcile(guard(same_name), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert!(sent.iter().all(|s| s.method == Method::GET || !s.uri.starts_with(&own_account)));
}

#[tokio::test]
async fn a_foreign_object_in_the_way_is_neither_patched_nor_deleted_and_the_status_says_why() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    let assigned = "2026-11-27T11:00:00Z";
    let foreign_reads = |path: &str| {
        let mut calls: Vec<Call> = reads(Some((&two, assigned)), Some((2, 2))).into_iter().take(2).collect();
        calls.extend(holders_with_foreign(true, path));
        calls
    };
    let statefulset_path = format!("{APPS}/statefulsets/nyc-worker");
    let mut foreign_statefulset = reads(Some((&two, assigned)), Some((2, 2)));
    foreign_statefulset[1] = call(
        Method::GET,
        &statefulset_path,
        200,
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": foreign_metadata("nyc-worker"),
            "spec": {"replicas": 5, "serviceName": "nyc-worker", "selector": {}, "template": {}}}),
    );
    for (kind, mut calls) in [
        ("ServiceAccount", foreign_reads(&format!("{ACCOUNTS}/nyc-worker"))),
        ("PodDisruptionBudget", foreign_reads(&format!("{POLICY}/poddisruptionbudgets/nyc-worker"))),
        ("NetworkPolicy", foreign_reads(&format!("{NETWORKING}/networkpolicies/nyc-worker"))),
        ("ConfigMap", foreign_reads(&format!("{NS}/configmaps/nyc-worker-config"))),
        ("StatefulSet", foreign_statefulset),
    ] {
        calls.extend([event(), status_patch()]);
        let (ctx, handle) = context(Ok(shards.clone()), FakeProbe::default());
        let server = tokio::spawn(serve(handle, calls));
        let action = reconcile(guard(pipeline(2, json!({}))), ctx).await.expect("not an error to retry hot");
        let sent = server.await.expect("server");
        assert_eq!(action, Action::requeue(Duration::from_secs(30)), "{kind}: looked at again later");
        let name = if kind == "ConfigMap" { "nyc-worker-config" } else { "nyc-worker" };
        assert_eq!(
            stopped_with(&sent, "ObjectNotOwned"),
            format!("{kind} taxi/{name} exists and is not managed by this pipeline")
        );
        assert_nothing_written(&sent);
    }
}

#[tokio::test]
async fn a_foreign_budget_a_single_worker_does_not_need_is_left_alone_and_the_pass_goes_on() {
    let shards = four_open_shards();
    let one = taxi_core::assignment::assign(&shards, 1, None);
    let mut calls: Vec<Call> = reads(Some((&one, "2026-11-27T11:00:00Z")), Some((1, 1))).into_iter().take(2).collect();
    calls.extend(holders_with_foreign(true, &format!("{POLICY}/poddisruptionbudgets/nyc-worker")));
    // One worker: no budget to apply, and this one is not the pipeline's to delete.
    calls.extend(applies(false, true, false));
    calls.push(status_patch());
    let (ctx, handle) = context(Ok(shards), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    reconcile(guard(pipeline(1, json!({}))), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert!(sent.iter().all(|s| s.method == Method::GET || !s.uri.contains("/poddisruptionbudgets/")));
    let ready = condition(&find(&sent, Method::PATCH, &format!("{TP}/status")).body, "Ready").clone();
    assert_eq!(ready["status"], "True", "{ready}");
}

#[tokio::test]
async fn a_foreign_network_policy_is_left_alone_when_the_pipeline_switched_its_own_off() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    let policy_path = format!("{NETWORKING}/networkpolicies/nyc-worker");
    let mut calls: Vec<Call> = reads(Some((&two, "2026-11-27T11:00:00Z")), Some((2, 2))).into_iter().take(2).collect();
    calls.extend(holders_with_foreign(true, &policy_path));
    // Switched off: none to apply, and this one is not the pipeline's to delete.
    calls.extend(applies(true, true, true).into_iter().filter(|c| c.path != policy_path));
    calls.push(status_patch());
    let (ctx, handle) = context(Ok(shards), FakeProbe::default());
    let server = tokio::spawn(serve(handle, calls));
    let off = pipeline(2, json!({"spec": {"worker": {"networkPolicy": {"enabled": false}}}}));
    reconcile(guard(off), ctx).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert!(sent.iter().all(|s| s.method == Method::GET || !s.uri.contains("/networkpolicies/")));
    let ready = condition(&find(&sent, Method::PATCH, &format!("{TP}/status")).body, "Ready").clone();
    assert_eq!(ready["status"], "True", "{ready}");
}

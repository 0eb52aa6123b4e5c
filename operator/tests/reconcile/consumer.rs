//! The enhanced fan-out consumer the operator names for a pipeline (`taxi.nyc` here): recorded
//! while used, held by the finalizer, deregistered after a switch to polling once every worker
//! runs polling, and on deletion; a consumer the author named is never deregistered.

use taxi_operator::reconcile::FINALIZER;
use taxi_operator::resources::config_hash;
use taxi_operator::validate::validate;

use super::*;

/// The worker settings hash the operator puts on the pod template of `pipeline`.
fn settings_hash(pipeline: &TaxiPipeline) -> String {
    let valid = validate(pipeline, &Defaults::new(WORKER_IMAGE, "taxi-system")).expect("a valid spec");
    config_hash(&valid.settings.to_json())
}

/// Two ready workers whose template carries `hash`; `rolled_out` when every pod runs it.
fn workers_on(hash: &str, rolled_out: bool) -> Value {
    let mut metadata = owned_metadata("nyc-worker");
    metadata["generation"] = json!(3);
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata,
        "spec": {"replicas": 2, "serviceName": "nyc-worker", "selector": {},
            "template": {"metadata": {"annotations": {"taxipipeline.io/config-hash": hash}}}},
        "status": {"replicas": 2, "readyReplicas": 2, "observedGeneration": 3,
            "currentRevision": "nyc-worker-5d8f7c9b6a",
            "updateRevision": if rolled_out { "nyc-worker-5d8f7c9b6a" } else { "nyc-worker-7f6e5d4c3b" }}
    })
}

/// A steady pass over two workers in the StatefulSet `workers`, with `events` Events.
fn steady_pass(assignment: &Assignment, workers: Value, events: usize) -> Vec<Call> {
    let mut calls = reads(Some((assignment, "2026-11-27T11:00:00Z")), Some((2, 2)));
    calls[1] = call(Method::GET, &format!("{APPS}/statefulsets/nyc-worker"), 200, workers);
    calls.extend(applies(true, true, true));
    calls.extend((0..events).map(|_| event()));
    calls.push(status_patch());
    calls
}

fn recorded_consumer(sent: &[Sent]) -> Value {
    let status = &find(sent, Method::PATCH, &format!("{TP}/status")).body["status"];
    assert!(status.as_object().is_some_and(|s| s.contains_key("efoConsumer")), "always written: {status}");
    status["efoConsumer"].clone()
}

#[tokio::test]
async fn a_pipeline_reading_with_fan_out_takes_the_finalizer_and_records_its_consumer() {
    let efo = |extra: Value| {
        let mut object = json!({"spec": {"stream": {"consumer": "efo"}}});
        merge(&mut object, extra);
        pipeline(2, object)
    };
    // First the finalizer, so a deletion cannot skip the deregistration.
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, vec![call(Method::PATCH, TP, 200, pipeline_json())]));
    let action = reconcile(guard(efo(json!({}))), ctx).await.expect("finalizer");
    let sent = server.await.expect("server");
    assert_eq!(action, Action::await_change(), "the finalizer's change brings the next pass");
    assert!(sent[0].body.to_string().contains(FINALIZER), "{}", sent[0].body);

    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, pass(None, None, true)));
    reconcile(guard(efo(json!({"metadata": {"finalizers": [FINALIZER]}}))), ctx.clone()).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert_eq!(recorded_consumer(&sent), "taxi.nyc");
    assert!(ctx.streams.calls.lock().expect("lock").is_empty(), "in use: not deregistered");
}

#[tokio::test]
async fn a_switch_to_polling_deregisters_the_consumer_only_once_every_worker_runs_polling() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    let recorded = json!({"metadata": {"finalizers": [FINALIZER]}, "status": {"efoConsumer": "taxi.nyc"}});
    let mut before = recorded.clone();
    merge(&mut before, json!({"spec": {"stream": {"consumer": "efo"}}}));
    let polling = pipeline(2, recorded);
    let (efo_hash, polling_hash) = (settings_hash(&pipeline(2, before)), settings_hash(&polling));
    assert_ne!(efo_hash, polling_hash, "the consumer type is part of the worker settings");

    // The pass of the edit: the pods still read with fan-out. Then the rollout, not through yet.
    for workers in [workers_on(&efo_hash, true), workers_on(&polling_hash, false)] {
        let (ctx, handle) = context(Ok(shards.clone()), FakeProbe::default());
        let server = tokio::spawn(serve(handle, steady_pass(&two, workers, 0)));
        reconcile(guard(polling.clone()), ctx.clone()).await.expect("reconcile");
        let sent = server.await.expect("server");
        assert!(ctx.streams.calls.lock().expect("lock").is_empty(), "a worker may still read through it");
        assert_eq!(recorded_consumer(&sent), "taxi.nyc", "kept until it is deregistered");
    }

    // Every pod runs polling: deregistered after the apply, said in an Event, forgotten.
    let (ctx, handle) = context(Ok(shards), FakeProbe::default());
    let server = tokio::spawn(serve(handle, steady_pass(&two, workers_on(&polling_hash, true), 1)));
    reconcile(guard(polling), ctx.clone()).await.expect("reconcile");
    let sent = server.await.expect("server");
    assert_eq!(*ctx.streams.calls.lock().expect("lock"), ["DeregisterStreamConsumer taxi-trips taxi.nyc"]);
    let event = &find(&sent, Method::POST, EVENTS).body;
    assert_eq!(event["reason"], "ConsumerDeregistered");
    let applied = sent.iter().position(|s| s.method == Method::PATCH && s.uri.contains("/statefulsets/nyc-worker"));
    let deregistered = sent.iter().position(|s| s.uri.starts_with(EVENTS));
    assert!(applied.is_some() && applied < deregistered, "after the apply");
    assert_eq!(recorded_consumer(&sent), Value::Null);
}

#[tokio::test]
async fn a_refused_deregistration_keeps_the_consumer_recorded_and_warns() {
    let shards = four_open_shards();
    let two = taxi_core::assignment::assign(&shards, 2, None);
    let polling = pipeline(2, json!({"metadata": {"finalizers": [FINALIZER]}, "status": {"efoConsumer": "taxi.nyc"}}));
    let (ctx, handle) = context(Ok(shards), FakeProbe::default());
    ctx.streams.refuse_deregister.store(true, std::sync::atomic::Ordering::SeqCst);
    let server = tokio::spawn(serve(handle, steady_pass(&two, workers_on(&settings_hash(&polling), true), 1)));
    reconcile(guard(polling), ctx.clone()).await.expect("the pipeline runs on without it");
    let sent = server.await.expect("server");
    assert_eq!(*ctx.streams.calls.lock().expect("lock"), ["DeregisterStreamConsumer taxi-trips taxi.nyc"]);
    let event = &find(&sent, Method::POST, EVENTS).body;
    assert_eq!((&event["type"], &event["reason"]), (&json!("Warning"), &json!("ConsumerNotDeregistered")));
    assert_eq!(recorded_consumer(&sent), "taxi.nyc", "kept, so the next pass and a deletion try again");
}

#[tokio::test]
async fn deleting_a_pipeline_deregisters_the_consumer_the_operator_named_and_no_other() {
    let deleting = |stream: Value, status: Value| {
        pipeline(
            2,
            json!({
                "metadata": {"deletionTimestamp": "2026-11-27T11:59:00Z", "finalizers": [FINALIZER]},
                "spec": {"stream": stream},
                "status": status
            }),
        )
    };
    let remove_finalizer = || call(Method::PATCH, TP, 200, pipeline_json());
    for gone in [
        deleting(json!({"consumer": "efo"}), json!({})),
        // Switched to polling a moment ago, the workers still rolling.
        deleting(json!({"consumer": "polling"}), json!({"efoConsumer": "taxi.nyc"})),
    ] {
        let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
        let server = tokio::spawn(serve(handle, vec![event(), remove_finalizer()]));
        let action = reconcile(guard(gone), ctx.clone()).await.expect("cleanup");
        let sent = server.await.expect("server");
        assert_eq!(action, Action::await_change());
        assert_eq!(*ctx.streams.calls.lock().expect("lock"), ["DeregisterStreamConsumer taxi-trips taxi.nyc"]);
        assert_eq!(sent[0].body["reason"], "ConsumerDeregistered");
        assert!(sent[1].body.to_string().contains("remove"), "then the finalizer goes: {}", sent[1].body);
    }

    // Refused (the operator's role lacks kinesis:DeregisterStreamConsumer): the finalizer stays,
    // a Warning Event says why the deletion waits, and the pass fails to be retried.
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    ctx.streams.refuse_deregister.store(true, std::sync::atomic::Ordering::SeqCst);
    let server = tokio::spawn(serve(handle, vec![event()]));
    let error = reconcile(guard(deleting(json!({"consumer": "efo"}), json!({}))), ctx.clone())
        .await
        .expect_err("the cleanup failed");
    let sent = server.await.expect("server");
    assert_eq!(error.category(), "kinesis");
    assert_eq!(sent.len(), 1, "no finalizer removal: {sent:?}");
    assert_eq!((&sent[0].body["type"], &sent[0].body["reason"]), (&json!("Warning"), &json!("CleanupFailed")));
    let note = sent[0].body["note"].as_str().unwrap_or_default();
    assert!(note.contains("deletion waits") && note.contains("DeregisterStreamConsumer"), "{note}");

    // The author's consumer may be shared with another reader: left alone.
    let (ctx, handle) = context(Ok(four_open_shards()), FakeProbe::default());
    let server = tokio::spawn(serve(handle, vec![remove_finalizer()]));
    let shared = deleting(json!({"consumer": "efo", "efoConsumerName": "shared-reader"}), json!({}));
    reconcile(guard(shared), ctx.clone()).await.expect("cleanup");
    server.await.expect("server");
    assert!(ctx.streams.calls.lock().expect("lock").is_empty());
}

//! The status step: what a pass reports on the TaxiPipeline — its `status` (one merge patch of
//! the status subresource: conditions, replicas, shards, epoch, lag, watermark), Kubernetes Events
//! for what changed, and the per-pipeline gauges. Also the passes that end early: an invalid spec,
//! a spec outside the operator's policy, an object in the way that is someone else's, a stream
//! being created, Kinesis unavailable.
//!
//! [`running_status`] is pure; the rest writes.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::decide::Decision;
use super::observe::Observed;
use super::ownership::ForeignObject;
use super::stream::StreamError;
use super::{Context, Error, key_of};
use crate::crd::{
    DEGRADED, PROGRESSING, READY, SCALING, STREAM_RESHARDING, TaxiPipeline, TaxiPipelineStatus, set_condition,
};
use crate::metrics::pipeline_label;
use crate::observe::PipelineProgress;
use crate::policy::Violation;
use crate::reshard::StreamStep;
use crate::resources::{ValidPipeline, selector_string};
use crate::validate::InvalidSpec;

/// Writing the TaxiPipeline's status failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to update the TaxiPipeline status: {source}")]
pub struct StatusError {
    /// The API error.
    #[source]
    pub source: kube::Error,
}

/// Reports a pass that ran to the end: Events for what it changed, the gauges, and the status.
pub(super) async fn report<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    valid: &ValidPipeline,
    observed: &Observed,
    decision: &Decision,
    stream_step: Option<&StreamStep>,
    now: Timestamp,
) -> Result<(), StatusError> {
    publish_decisions(pipeline, ctx, observed, decision).await;
    if let Some(event) = stream_step.and_then(|step| step.event.clone()) {
        publish(ctx, pipeline, event.type_, event.reason, event.action, event.note).await;
    }
    let label = pipeline_label(&valid.namespace, &valid.name);
    ctx.state.metrics.set_desired_replicas(&label, i32::try_from(decision.replicas()).unwrap_or(i32::MAX));
    ctx.state.metrics.set_ready_replicas(&label, observed.statefulset.ready);
    ctx.state.metrics.set_assignment_epoch(&label, decision.assignment.epoch);
    ctx.state.metrics.set_open_shards(&label, decision.open_shards);
    patch_status(pipeline, ctx, running_status(pipeline, valid, observed, decision, stream_step, now)).await
}

/// An invalid spec: `Ready=False` with the reason and a Warning Event. Nothing is retried until
/// the spec changes.
pub(super) async fn reject<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    invalid: &InvalidSpec,
) -> Result<(), StatusError> {
    tracing::warn!(pipeline = %key_of(pipeline), reason = %invalid, "invalid spec");
    ctx.state.metrics.reconcile_error("invalid_spec");
    stopped(pipeline, ctx, "InvalidSpec", "Validate", invalid.to_string()).await
}

/// A spec outside the operator's policy: `Ready=False` (`PolicyViolation`) and a Warning Event
/// with the same message. Nothing was written; nothing is retried until the pipeline changes.
pub(super) async fn refuse<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    violation: &Violation,
) -> Result<(), StatusError> {
    tracing::warn!(pipeline = %key_of(pipeline), reason = %violation, "spec outside the policy");
    ctx.state.metrics.reconcile_error("policy_violation");
    stopped(pipeline, ctx, "PolicyViolation", "Admit", violation.to_string()).await
}

/// An object the pass would write belongs to someone else: `Ready=False` (`ObjectNotOwned`) and a
/// Warning Event with the same message. Nothing was written.
pub(super) async fn not_owned<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    foreign: &ForeignObject,
) -> Result<(), StatusError> {
    tracing::warn!(pipeline = %key_of(pipeline), object = %foreign, "an object in the way is not the pipeline's");
    ctx.state.metrics.reconcile_error("object_not_owned");
    stopped(pipeline, ctx, "ObjectNotOwned", "Apply", foreign.to_string()).await
}

/// A pass that stopped before writing anything: a Warning Event and `Ready=False` with `reason`
/// and the same message; the rest of the status is left as it was.
async fn stopped<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    reason: &str,
    action: &str,
    message: String,
) -> Result<(), StatusError> {
    publish(ctx, pipeline, EventType::Warning, reason, action, message.clone()).await;
    let now = (ctx.now)();
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    set_condition(&mut status.conditions, condition(READY, false, reason, &message, pipeline, now));
    patch_status(pipeline, ctx, status).await
}

/// The stream was just created: say so (`Ready=False`, `CreatingStream`).
pub(super) async fn creating<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    step: &StreamStep,
) -> Result<(), StatusError> {
    if let Some(event) = step.event.clone() {
        publish(ctx, pipeline, event.type_, event.reason, event.action, event.note).await;
    }
    let now = (ctx.now)();
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    status.reshard_calls = step.reshard_calls.iter().map(|t| Time(*t)).collect();
    let c = &step.condition;
    set_condition(&mut status.conditions, condition(STREAM_RESHARDING, c.status, c.reason, &c.message, pipeline, now));
    set_condition(&mut status.conditions, condition(READY, false, "CreatingStream", &c.message, pipeline, now));
    patch_status(pipeline, ctx, status).await
}

/// Kinesis failed during `action`: a Warning Event, `Degraded=True` and `Ready=False`
/// (`StreamUnavailable`), and the error the pass returns so that it is retried with back-off (or
/// the status write's own error, when that failed too).
pub(super) async fn stream_unavailable<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    action: &str,
    error: StreamError,
) -> Error {
    const REASON: &str = "StreamUnavailable";
    let message = error.to_string();
    publish(ctx, pipeline, EventType::Warning, REASON, action, message.clone()).await;
    let now = (ctx.now)();
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    set_condition(&mut status.conditions, condition(DEGRADED, true, REASON, &message, pipeline, now));
    set_condition(&mut status.conditions, condition(READY, false, REASON, &message, pipeline, now));
    match patch_status(pipeline, ctx, status).await {
        Ok(()) => error.into(),
        Err(status_error) => status_error.into(),
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    pipeline: &TaxiPipeline,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        observed_generation: pipeline.metadata.generation,
        last_transition_time: Time(now),
    }
}

/// The status of a pipeline that passed validation, after this pass: the previous status with
/// this pass's fields and conditions set (`set_condition` keeps a transition time while unchanged).
pub fn running_status(
    pipeline: &TaxiPipeline,
    valid: &ValidPipeline,
    observed: &Observed,
    decision: &Decision,
    stream_step: Option<&StreamStep>,
    now: Timestamp,
) -> TaxiPipelineStatus {
    let mut status = pipeline.status.clone().unwrap_or_default();
    let ready = observed.statefulset.ready;
    let desired = i32::try_from(decision.replicas()).unwrap_or(i32::MAX);
    let previous_replicas = observed.statefulset.replicas;
    let progress = PipelineProgress::from_reports(observed.reports.values());
    status.observed_generation = pipeline.metadata.generation;
    status.replicas = observed.statefulset.pods;
    status.ready_replicas = ready;
    status.selector = Some(selector_string(&valid.name));
    status.open_shards = Some(i32::try_from(decision.open_shards).unwrap_or(i32::MAX));
    status.assignment_epoch = Some(i64::try_from(decision.assignment.epoch).unwrap_or(i64::MAX));
    status.desired_replicas = Some(i32::try_from(decision.scaling.desired).unwrap_or(i32::MAX));
    status.scaling_reason = Some(decision.scaling.reason.clone());
    if previous_replicas.is_some_and(|r| r != decision.rollout.statefulset_replicas) {
        status.last_scale_time = Some(Time(now));
    }
    status.max_lag_millis = progress.max_lag_millis.or(status.max_lag_millis);
    status.watermark = progress.watermark.clone().or(status.watermark);
    if let Some(at) = progress.last_checkpoint.as_deref().and_then(|t| t.parse::<Timestamp>().ok()) {
        status.last_checkpoint_time = Some(Time(at));
    }
    status.efo_consumer = decision.consumer.recorded();
    let conditions = &mut status.conditions;
    let cond = |type_, ok, reason, message: &str| condition(type_, ok, reason, message, pipeline, now);
    match &decision.rollout.waiting {
        Some(waiting) => {
            set_condition(conditions, cond(PROGRESSING, true, "Rescaling", waiting));
            set_condition(conditions, cond(SCALING, true, "Rescaling", waiting));
        }
        None => {
            set_condition(conditions, cond(PROGRESSING, false, "Stable", "every shard is assigned to a worker"));
            set_condition(conditions, cond(SCALING, false, "Stable", &format!("{desired} workers")));
        }
    }
    set_condition(conditions, cond(DEGRADED, false, "Healthy", "Kinesis and the Kubernetes API answer"));
    let spec_shards = pipeline.spec.stream.shards;
    let open_shards = decision.open_shards;
    let resharding = if let Some(step) = stream_step {
        status.reshard_calls = step.reshard_calls.iter().map(|t| Time(*t)).collect();
        let c = &step.condition;
        cond(STREAM_RESHARDING, c.status, c.reason, &c.message)
    } else if usize::try_from(spec_shards).ok() == Some(open_shards) {
        cond(STREAM_RESHARDING, false, "Stable", &format!("{open_shards} open shards"))
    } else {
        cond(
            STREAM_RESHARDING,
            false,
            "NotManaged",
            &format!(
                "the stream has {open_shards} open shards and spec.stream.shards is {spec_shards}; \
                 set spec.stream.manage to reshard"
            ),
        )
    };
    set_condition(conditions, resharding);
    let all_ready = ready >= desired && decision.rollout.waiting.is_none();
    let failed = &progress.failed_shards;
    let ready_condition = if !failed.is_empty() {
        // Workers retry a failed shard by themselves; most reasons (other settings, a corrupt
        // checkpoint) need a person, so the first ones are shown as they are.
        let mut message = format!("{} shard(s) failing, retried with back-off: ", failed.len());
        message.push_str(&failed.iter().take(3).cloned().collect::<Vec<_>>().join("; "));
        cond(READY, false, "ShardsFailing", &message)
    } else if all_ready {
        cond(READY, true, "Running", &format!("{ready}/{desired} workers ready, {open_shards} open shards"))
    } else {
        cond(READY, false, "WorkersNotReady", &format!("{ready}/{desired} workers ready"))
    };
    set_condition(conditions, ready_condition);
    status
}

/// Events for what this pass changed: a new assignment, an autoscaler decision, a resized
/// StatefulSet.
async fn publish_decisions<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    observed: &Observed,
    decision: &Decision,
) {
    let assignment = &decision.assignment;
    if decision.assignment_changed {
        let moved = &decision.moved;
        let note = format!(
            "assignment epoch {}: {} shards over {} workers; moved: {}",
            assignment.epoch,
            assignment.owners.len(),
            assignment.replicas,
            if moved.is_empty() { "none".to_owned() } else { moved.join(", ") }
        );
        publish(ctx, pipeline, EventType::Normal, "Rebalanced", "Assign", note).await;
    }
    let previous_replicas = observed.statefulset.replicas;
    let desired = decision.replicas();
    if decision.scaling.policy_reason.is_some() && previous_replicas.is_some_and(|r| r != desired) {
        let from = previous_replicas.unwrap_or(0);
        let note = format!("autoscaler: {from} → {desired} workers: {}", decision.scaling.reason);
        publish(ctx, pipeline, EventType::Normal, "Autoscaled", "Autoscale", note).await;
    }
    let target = decision.rollout.statefulset_replicas;
    if previous_replicas.is_some_and(|r| r != target) {
        let from = previous_replicas.unwrap_or(0);
        publish(ctx, pipeline, EventType::Normal, "Scaled", "Scale", format!("workers {from} → {target}")).await;
    }
}

/// Publishes an Event about the pipeline; a failure is logged, never fails the pass.
pub(super) async fn publish<S, P>(
    ctx: &Context<S, P>,
    pipeline: &TaxiPipeline,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_to(ctx, &pipeline.object_ref(&()), type_, reason, action, note).await;
}

/// Publishes an Event about `reference` (also an object that did not deserialize).
pub(super) async fn publish_to<S, P>(
    ctx: &Context<S, P>,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event =
        Event { type_, reason: reason.to_owned(), note: Some(note), action: action.to_owned(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason, "failed to publish an Event");
    }
}

/// One merge patch of the status subresource.
async fn patch_status<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    status: TaxiPipelineStatus,
) -> Result<(), StatusError> {
    let api: Api<TaxiPipeline> = Api::namespaced(ctx.client.clone(), &pipeline.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    match api.patch_status(&pipeline.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(source) => Err(StatusError { source }),
    }
}

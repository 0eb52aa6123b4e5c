//! The reconcile pass of a TaxiPipeline: a short driver over one module per step.
//!
//! ```text
//!  TaxiPipeline ─▶ validate ─────▶ admit ──────────▶ stream ───────▶ observe ────────▶ decide ───────────┐
//!  (crate::crd)    (spec →         (the policy:      (managed only:  (ListShards, the  (pure: replicas,  │
//!                  ValidPipeline,  image and         create it, or   assignment, the   rollout, shard    │
//!                  or the reason)  ServiceAccount)   one reshard     StatefulSet, who  assignment, every │
//!                      │               │             step)           holds each        object, the EFO   │
//!                      ▼               ▼                 │           object, /status)  consumer)         │
//!                  invalid spec:   outside the           ▼                 │                 │           │
//!                  Ready=False,    policy:           creating: report      ▼                 ▼           │
//!                  no retry        Ready=False,      and come back;    ListShards failed: invalid        │
//!                                  no retry          Kinesis failed:   Degraded=True,     autoscaling:   │
//!                                                    Degraded=True,    retried            Ready=False,   │
//!                                                    retried                              no retry       │
//!  ┌─────────────────────────────────────────────────────────────────────────────────────────────────────┘
//!  └▶ ownership ─────────▶ apply ──────────▶ consumer ────────▶ status
//!     (pure: an object     (server-side      (deregister the    (conditions,
//!     to write that is     apply, the        EFO consumer the   status patch,
//!     someone else's?)     assignment        workers left)      Events, gauges)
//!          │               write, deletes
//!          ▼               of owned objects)
//!     ObjectNotOwned:
//!     Ready=False,
//!     nothing written
//! ```
//!
//! - [`validate`](crate::validate) checks the spec and turns it into the builders' input;
//! - [`admit`] holds the spec to the operator's [`WorkerPolicy`] before anything is written;
//! - [`stream`] creates or reshards a stream the pipeline manages ([`crate::reshard`] plans it);
//! - [`observe`] reads everything the pass needs, once, into an [`observe::Observed`];
//! - [`decide`] is pure: from the spec, the observation and the time to a [`decide::Decision`];
//! - [`ownership`] says whether an object the decision writes is someone else's: then the pass
//!   stops, having written nothing;
//! - [`apply`] writes the decided objects to the API server;
//! - [`consumer`] deregisters the enhanced fan-out consumer the operator named once no worker can
//!   use it any more;
//! - [`status`] reports the pass: the status subresource, Events and the per-pipeline gauges; it
//!   also reports the passes that end early (under the arrows above).
//!
//! Each step that can fail has its own error type; [`Error`] wraps them, and its
//! [`category`](Error::category) labels the failure in metrics and logs. A deleted pipeline whose
//! checkpoints are to be removed, or whose consumer the operator named, goes through the
//! finalizer to [`cleanup`] instead.

pub mod admit;
pub mod apply;
pub mod cleanup;
pub mod consumer;
pub mod decide;
pub mod observe;
pub mod ownership;
pub mod status;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use taxi_io::retry::{BackoffPolicy, Jitter};

use crate::crd::TaxiPipeline;
use crate::metrics::{OperatorState, ReconcileOutcome, pipeline_label};
use crate::observe::{Streams, WorkerProbe};
use crate::policy::WorkerPolicy;
use crate::reshard::StreamStep;
use crate::scaling::ScalingMemory;
use crate::validate::{Defaults, stream_ref, validate};

use self::admit::AdmitError;
use self::apply::ApplyError;
use self::cleanup::CleanupError;
use self::decide::Decision;
use self::observe::ObserveError;
use self::status::StatusError;
use self::stream::{ManagedStream, StreamError};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "taxi-operator";
/// Held on a TaxiPipeline while something outside Kubernetes must be cleaned up before it goes:
/// its checkpoints (`spec.checkpoint.cleanupOnDelete`) or the enhanced fan-out consumer the
/// operator named for it. The name predates the consumer; existing pipelines hold it, so it stays.
pub const FINALIZER: &str = "taxipipeline.io/checkpoint-cleanup";
/// Time between passes over a steady pipeline (refreshes lag and watermark in status).
const STEADY_REQUEUE: Duration = Duration::from_secs(30);
/// Time between passes while a rescale is under way.
const ROLLOUT_REQUEUE: Duration = Duration::from_secs(3);

/// Everything a reconcile pass needs.
pub struct Context<S, P> {
    /// The Kubernetes client.
    pub client: Client,
    /// Kinesis.
    pub streams: S,
    /// The workers' `/status`.
    pub probe: P,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics and what `/status` and `/readyz` report.
    pub state: Arc<OperatorState>,
    /// Operator-wide defaults.
    pub defaults: Defaults,
    /// What the platform team lets pipelines ask for (worker images, ServiceAccounts).
    pub policy: WorkerPolicy,
    /// The wall clock (fixed in tests).
    pub now: fn() -> Timestamp,
    /// Consecutive failures per pipeline, for the back-off of [`error_policy`].
    pub failures: Mutex<HashMap<String, u32>>,
    /// What each pipeline's scaling keeps between passes.
    pub scaling: Mutex<HashMap<String, ScalingMemory>>,
}

/// Why a reconcile pass failed, by step; every case is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the ServiceAccount the spec names failed.
    #[error(transparent)]
    Admit(#[from] AdmitError),
    /// A Kinesis call about the pipeline's managed stream failed (describing, creating, resharding).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Reading the stream's shards or the pipeline's objects failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// Writing the pipeline's objects failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Writing the TaxiPipeline's status failed.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// Cleaning up after a deleted pipeline (consumer, checkpoints) failed.
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A fixed label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Stream(_) => "kinesis",
            Error::Observe(e) => e.category(),
            Error::Admit(_) | Error::Apply(_) | Error::Status(_) => "kubernetes",
            Error::Cleanup(e) => e.category(),
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "kubernetes",
            },
        }
    }
}

/// `namespace/name`: the key of a pipeline in the context's maps and in logs.
fn key_of(pipeline: &TaxiPipeline) -> String {
    format!("{}/{}", pipeline.namespace().unwrap_or_default(), pipeline.name_any())
}

/// One reconcile pass. Objects that fail to deserialize arrive as `Err` in the guard and are
/// reported, never retried hot: only a change can fix them.
pub async fn reconcile<S: Streams, P: WorkerProbe>(
    guard: Arc<DeserializeGuard<TaxiPipeline>>,
    ctx: Arc<Context<S, P>>,
) -> Result<Action, Error> {
    let pipeline = match &guard.0 {
        Ok(pipeline) => Arc::new(pipeline.clone()),
        Err(invalid) => {
            // Only an edit can fix it: say why on the object, and do not retry.
            let meta = &invalid.metadata;
            tracing::warn!(name = ?meta.name, namespace = ?meta.namespace, error = %invalid.error,
                "a TaxiPipeline does not match the schema; waiting for a change");
            let reference = ObjectReference {
                api_version: Some(TaxiPipeline::api_version(&()).into_owned()),
                kind: Some(TaxiPipeline::kind(&()).into_owned()),
                name: meta.name.clone(),
                namespace: meta.namespace.clone(),
                uid: meta.uid.clone(),
                ..ObjectReference::default()
            };
            let note = format!("the object does not match the TaxiPipeline schema: {}", invalid.error);
            status::publish_to(&ctx, &reference, EventType::Warning, "InvalidSpec", "Deserialize", note).await;
            ctx.state.metrics.observe_reconcile(ReconcileOutcome::InvalidSpec, Duration::ZERO);
            return Ok(Action::await_change());
        }
    };
    let started = Instant::now();
    let key = key_of(&pipeline);
    if pipeline.meta().deletion_timestamp.is_some() {
        ctx.state.metrics.forget(&pipeline_label(&pipeline.namespace().unwrap_or_default(), &pipeline.name_any()));
    }
    let api: Api<TaxiPipeline> = Api::namespaced(ctx.client.clone(), &pipeline.namespace().unwrap_or_default());
    // Once held, the finalizer stays until the pipeline is deleted (a consumer may be left).
    let wants_finalizer = pipeline.spec.checkpoint.cleanup_on_delete
        || consumer::held_consumer(&pipeline).is_some()
        || pipeline.finalizers().iter().any(|f| f == FINALIZER);
    let result = if wants_finalizer {
        finalizer(&api, FINALIZER, pipeline, |event| async {
            match event {
                finalizer::Event::Apply(pipeline) => run_pass(&pipeline, &ctx).await,
                finalizer::Event::Cleanup(pipeline) => {
                    cleanup::cleanup(&pipeline, &ctx).await?;
                    Ok(Action::await_change())
                }
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    } else if pipeline.meta().deletion_timestamp.is_some() {
        // Owner references let Kubernetes delete the rest; nothing outside it to clean up.
        Ok(Action::await_change())
    } else {
        run_pass(&pipeline, &ctx).await
    };
    match &result {
        Ok(_) => {
            if let Ok(mut failures) = ctx.failures.lock() {
                failures.remove(&key);
            }
            ctx.state.metrics.observe_reconcile(ReconcileOutcome::Success, started.elapsed());
        }
        Err(e) => {
            ctx.state.metrics.observe_reconcile(ReconcileOutcome::Error, started.elapsed());
            ctx.state.record_reconcile_error(&key, e.category(), e);
        }
    }
    result
}

/// Requeue after a failed pass: exponential back-off per pipeline, 1 s doubling up to 5 min.
pub fn error_policy<S: Streams, P: WorkerProbe>(
    guard: Arc<DeserializeGuard<TaxiPipeline>>,
    error: &Error,
    ctx: Arc<Context<S, P>>,
) -> Action {
    let key = guard.0.as_ref().map(key_of).unwrap_or_default();
    let failures = ctx.failures.lock().map_or(1, |mut f| {
        let n = f.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    });
    let delay = RECONCILE_RETRY.delay(failures);
    tracing::warn!(pipeline = %key, error = %error, category = error.category(), ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The requeue after failed passes in a row: 1 s, 2 s, 4 s, … capped at 5 minutes. No jitter: the
/// controller's queue already spreads the pipelines.
pub const RECONCILE_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(300), Jitter::None);

/// The steps of a pass over a live pipeline, in order (see the module docs for the diagram).
async fn run_pass<S: Streams, P: WorkerProbe>(pipeline: &TaxiPipeline, ctx: &Context<S, P>) -> Result<Action, Error> {
    let valid = match validate(pipeline, &ctx.defaults) {
        Ok(valid) => valid,
        Err(invalid) => {
            status::reject(pipeline, ctx, &invalid).await?;
            return Ok(Action::await_change());
        }
    };
    if let Some(violation) = admit::admit(pipeline, ctx, &valid).await? {
        status::refuse(pipeline, ctx, &violation).await?;
        // Labeling the ServiceAccount touches no TaxiPipeline: look again, without hurry, rather
        // than watch every ServiceAccount of the cluster.
        let action =
            if violation.may_lift_without_an_edit() { Action::requeue(STEADY_REQUEUE) } else { Action::await_change() };
        return Ok(action);
    }
    let stream = stream_ref(&pipeline.spec);
    let stream_step = match stream::manage(pipeline, ctx, &stream).await {
        Ok(ManagedStream::Step(step)) => step,
        // A stream being created has no shards to assign yet: report and come back.
        Ok(ManagedStream::Creating(step)) => {
            status::creating(pipeline, ctx, &step).await?;
            return Ok(Action::requeue(step.requeue_after.unwrap_or(ROLLOUT_REQUEUE)));
        }
        Err(error) => return Err(status::stream_unavailable(pipeline, ctx, "ManageStream", error).await),
    };
    let observed = match observe::observe(pipeline, ctx, &valid, &stream).await {
        Ok(observed) => observed,
        Err(ObserveError::Stream(error)) => {
            return Err(status::stream_unavailable(pipeline, ctx, "ListShards", error).await);
        }
        Err(error) => return Err(error.into()),
    };
    let now = (ctx.now)();
    let mut decision = match decide::decide(pipeline, &valid, &observed, now) {
        Ok(decision) => decision,
        Err(invalid) => {
            status::reject(pipeline, ctx, &invalid).await?;
            return Ok(Action::await_change());
        }
    };
    if let Some(foreign) = ownership::in_the_way(&valid, &decision.resources, &observed.ownership) {
        status::not_owned(pipeline, ctx, &foreign).await?;
        // Its owner may remove it without touching the pipeline: look again, without hurry.
        return Ok(Action::requeue(STEADY_REQUEUE));
    }
    remember_scaling(pipeline, ctx, &decision);
    apply::apply(&ctx.client, &valid, &decision.resources, &observed.ownership).await?;
    // After the apply: the plan deregisters only a consumer no pod can use, judged from the
    // StatefulSet as it was before this apply, which wrote the same worker settings again.
    decision.consumer = consumer::settle(pipeline, ctx, &stream, decision.consumer).await;
    status::report(pipeline, ctx, &valid, &observed, &decision, stream_step.as_ref(), now).await?;
    Ok(Action::requeue(next_pass(&decision, stream_step.as_ref())))
}

/// Keeps the pipeline's scaling memory for the next pass, and exports the autoscaler's inputs and
/// decision when it decided.
fn remember_scaling<S, P>(pipeline: &TaxiPipeline, ctx: &Context<S, P>, decision: &Decision) {
    if let Ok(mut all) = ctx.scaling.lock() {
        all.insert(key_of(pipeline), decision.scaling_memory.clone());
    }
    let scaling = &decision.scaling;
    if let Some(reason) = &scaling.policy_reason {
        let label = pipeline_label(&pipeline.namespace().unwrap_or_default(), &pipeline.name_any());
        ctx.state.metrics.observe_autoscale(
            &label,
            scaling.max_lag_ms,
            scaling.consumed_per_s,
            scaling.desired,
            reason.kind(),
        );
    }
}

/// When to come back to a pipeline that passed: soon while a rescale is under way, or sooner still
/// when the stream step asks to (a reshard is watched closely). Workers rolling away from an
/// enhanced fan-out consumer need no hurry: each change of their StatefulSet triggers a pass.
fn next_pass(decision: &Decision, stream_step: Option<&StreamStep>) -> Duration {
    let requeue = if decision.rollout.waiting.is_some() { ROLLOUT_REQUEUE } else { STEADY_REQUEUE };
    let stream_requeue = stream_step.and_then(|step| step.requeue_after).unwrap_or(requeue);
    requeue.min(stream_requeue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_one_second_to_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 50].map(|n| RECONCILE_RETRY.delay(n).as_secs()).to_vec();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300]);
    }
}

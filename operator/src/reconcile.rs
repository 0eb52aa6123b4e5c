//! The reconcile loop of a TaxiPipeline: fetch → validate → observe → plan → build → apply →
//! status. Only this module talks to the Kubernetes API; what it decides comes from the pure
//! [`validate`](crate::validate), [`rollout`](crate::rollout), `taxi_core::assignment` and
//! [`resources`](crate::resources) modules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::error_boundary::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{self, finalizer};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use taxi_core::assignment::{ASSIGNMENT_KEY, Assignment, above_recorded, assign, config_map_name, moved_shards};
use taxi_core::checkpoint::CheckpointError;
use taxi_core::identity::PipelineId;
use taxi_core::status::WorkerStatus;
use taxi_io::kinesis::api::KinesisError;
use taxi_io::retry::{BackoffPolicy, Jitter};
use taxi_io::store::CheckpointStore;

use crate::crd::{
    DEGRADED, PROGRESSING, READY, SCALING, STREAM_RESHARDING, TaxiPipeline, TaxiPipelineStatus, set_condition,
};
use crate::metrics::{OperatorState, ReconcileOutcome, pipeline_label};
use crate::observe::{PipelineProgress, StreamRef, Streams, WorkerProbe};
use crate::reshard::{Plan, StreamStep, manage_stream};
use crate::resources::{ASSIGNED_AT_ANNOTATION, Resources, ValidPipeline, build, names, selector_string};
use crate::rollout::{Rollout, WorkersSeen, plan};
use crate::scaling::{self, ScalingDecision, ScalingMemory};
use crate::validate::{Defaults, InvalidSpec, TAKEOVER_TIMEOUT, desired_replicas, stream_ref, validate};

/// The one field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "taxi-operator";
/// Held on a TaxiPipeline while its checkpoints must be deleted before it goes.
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
    /// The wall clock (fixed in tests).
    pub now: fn() -> Timestamp,
    /// Consecutive failures per pipeline, for the back-off of [`error_policy`].
    pub failures: Mutex<HashMap<String, u32>>,
    /// What each pipeline's scaling keeps between passes.
    pub scaling: Mutex<HashMap<String, ScalingMemory>>,
}

/// Why a reconcile pass failed; every case is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("failed to {action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Kinesis call about the pipeline's stream failed (listing, describing, creating, resharding).
    #[error("Kinesis failed for stream {stream}: {source}")]
    Kinesis {
        /// The stream.
        stream: String,
        /// The Kinesis error.
        #[source]
        source: KinesisError,
    },
    /// Deleting the pipeline's checkpoints failed.
    #[error("failed to delete the checkpoints under {uri}: {source}")]
    Cleanup {
        /// The checkpoint URI.
        uri: String,
        /// The store error.
        #[source]
        source: CheckpointError,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// A fixed label for metrics and Events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kubernetes",
            Error::Kinesis { .. } => "kinesis",
            Error::Cleanup { .. } => "checkpoint_cleanup",
            Error::Finalizer(inner) => match inner.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "kubernetes",
            },
        }
    }
}

fn kube_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

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
            publish_to(&ctx, &reference, EventType::Warning, "InvalidSpec", "Deserialize", note).await;
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
    let wants_finalizer =
        pipeline.spec.checkpoint.cleanup_on_delete || pipeline.finalizers().iter().any(|f| f == FINALIZER);
    let result = if wants_finalizer {
        finalizer(&api, FINALIZER, pipeline, |event| async {
            match event {
                finalizer::Event::Apply(pipeline) => apply(&pipeline, &ctx).await,
                finalizer::Event::Cleanup(pipeline) => cleanup(&pipeline, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    } else if pipeline.meta().deletion_timestamp.is_some() {
        // Owner references let Kubernetes delete the rest; nothing external to clean up.
        Ok(Action::await_change())
    } else {
        apply(&pipeline, &ctx).await
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

/// What the apply step saw and decided, for status and Events.
struct Pass {
    stream: Option<StreamStep>,
    desired: u32,
    scaling: ScalingDecision,
    open_shards: usize,
    rollout: Rollout,
    assignment: Assignment,
    moved: Vec<String>,
    previous_statefulset_replicas: Option<u32>,
    statefulset: Option<StatefulSet>,
    progress: PipelineProgress,
}

async fn apply<S: Streams, P: WorkerProbe>(pipeline: &TaxiPipeline, ctx: &Context<S, P>) -> Result<Action, Error> {
    let valid = match validate(pipeline, &ctx.defaults) {
        Ok(valid) => valid,
        Err(invalid) => return reject(pipeline, ctx, &invalid).await,
    };
    let stream = stream_ref(&pipeline.spec);
    let stream_step = match manage(pipeline, ctx, &stream).await? {
        // A stream being created has no shards to assign yet: report and come back.
        ManagedStream::Creating(step) => return creating(pipeline, ctx, step).await,
        ManagedStream::Step(step) => step,
    };
    let shards = match ctx.streams.list_shards(&stream).await {
        Ok(shards) => shards,
        Err(source) => return Err(stream_unavailable(pipeline, ctx, &stream.name, "ListShards", source).await),
    };
    let ns = valid.namespace.clone();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
    let assignment_name = config_map_name(&valid.name);
    let current_cm =
        config_maps.get_opt(&assignment_name).await.map_err(kube_error("read the assignment ConfigMap"))?;
    let previous = current_cm.as_ref().and_then(read_assignment);
    let statefulset =
        stateful_sets.get_opt(&names::workers(&valid.name)).await.map_err(kube_error("read the worker StatefulSet"))?;
    let previous_statefulset_replicas =
        statefulset.as_ref().and_then(|s| s.spec.replicas).and_then(|r| u32::try_from(r).ok());
    let ready = statefulset.as_ref().and_then(|s| s.status.as_ref()).and_then(|s| s.ready_replicas).unwrap_or(0);

    let running = previous_statefulset_replicas.unwrap_or(0);
    let reports = probe_workers(ctx, &valid, running).await;
    let now = (ctx.now)();
    let open_shards = shards.iter().filter(|s| s.is_open()).count();
    let scaling = match decide_scaling(pipeline, ctx, &reports, open_shards, previous_statefulset_replicas, now) {
        Ok(scaling) => scaling,
        Err(invalid) => return reject(pipeline, ctx, &invalid).await,
    };
    let desired = scaling.replicas;
    let assigned_at = current_cm.as_ref().and_then(assigned_at);
    let seen = WorkersSeen {
        ready_replicas: u32::try_from(ready).unwrap_or(0),
        leaving_drained: previous.as_ref().is_some_and(|p| leaving_drained(&reports, desired, running, p.epoch)),
        assignment_age: assigned_at
            .map(|at| Duration::try_from(now.duration_since(at)).unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::MAX),
    };
    let rollout = plan(desired, previous.as_ref(), previous_statefulset_replicas, &seen, TAKEOVER_TIMEOUT);
    // Epochs never go backwards, even when the ConfigMap was deleted or damaged: the status keeps
    // the last one published.
    let recorded = pipeline.status.as_ref().and_then(|s| s.assignment_epoch).and_then(|e| u64::try_from(e).ok());
    let assignment =
        above_recorded(assign(&shards, rollout.assignment_replicas, previous.as_ref()), previous.as_ref(), recorded);
    let moved = previous.as_ref().map(|p| moved_shards(p, &assignment)).unwrap_or_default();
    let changed = previous.as_ref().is_none_or(|p| p.epoch != assignment.epoch);
    let assigned_at_text = match (changed, assigned_at) {
        (false, Some(at)) => at.to_string(),
        _ => now.to_string(),
    };
    let mut resources = build(&valid, rollout.statefulset_replicas, &assignment, &assigned_at_text);
    // Written only over the version read above: a deposed leader's write fails (see `apply_resources`).
    resources.assignment.metadata.resource_version =
        current_cm.as_ref().and_then(|cm| cm.metadata.resource_version.clone());
    apply_resources(ctx, &valid, resources).await?;

    let pass = Pass {
        stream: stream_step,
        desired,
        scaling,
        open_shards,
        rollout,
        assignment,
        moved,
        previous_statefulset_replicas,
        statefulset,
        progress: PipelineProgress::from_reports(reports.values()),
    };
    publish_decisions(pipeline, ctx, &pass, changed).await;
    if let Some(event) = pass.stream.as_ref().and_then(|step| step.event.clone()) {
        publish(ctx, pipeline, event.type_, event.reason, event.action, event.note).await;
    }
    let label = pipeline_label(&valid.namespace, &valid.name);
    ctx.state.metrics.set_desired_replicas(&label, i32::try_from(pass.desired).unwrap_or(i32::MAX));
    ctx.state.metrics.set_ready_replicas(&label, ready);
    ctx.state.metrics.set_assignment_epoch(&label, pass.assignment.epoch);
    ctx.state.metrics.set_open_shards(&label, pass.open_shards);
    patch_status(pipeline, ctx, running_status(pipeline, &valid, &pass, now)).await?;
    let requeue = if pass.rollout.waiting.is_some() { ROLLOUT_REQUEUE } else { STEADY_REQUEUE };
    let stream_requeue = pass.stream.as_ref().and_then(|step| step.requeue_after).unwrap_or(requeue);
    Ok(Action::requeue(requeue.min(stream_requeue)))
}

/// What [`manage`] found: a stream being created, or the step of a stream that exists.
enum ManagedStream {
    Creating(StreamStep),
    Step(Option<StreamStep>),
}

/// With `spec.stream.manage`, creates the stream or takes the next reshard step (within the Kinesis
/// limits: ×2/÷2 per call, 10 calls per rolling 24 h); without it, only reads.
async fn manage<S: Streams, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    stream: &StreamRef,
) -> Result<ManagedStream, Error> {
    if !pipeline.spec.stream.manage {
        return Ok(ManagedStream::Step(None));
    }
    let calls: Vec<Timestamp> =
        pipeline.status.as_ref().map(|s| s.reshard_calls.iter().map(|t| t.0).collect()).unwrap_or_default();
    let desired = u32::try_from(pipeline.spec.stream.shards).unwrap_or(1);
    match manage_stream(&ctx.streams, stream, true, desired, &calls, (ctx.now)()).await {
        Ok(step) if matches!(step.plan, Plan::Create { .. }) => Ok(ManagedStream::Creating(step)),
        Ok(step) => Ok(ManagedStream::Step(Some(step))),
        Err(source) => Err(stream_unavailable(pipeline, ctx, &stream.name, "ManageStream", source).await),
    }
}

/// The stream was just created: say so and come back when it may be ACTIVE.
async fn creating<S, P>(pipeline: &TaxiPipeline, ctx: &Context<S, P>, step: StreamStep) -> Result<Action, Error> {
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
    patch_status(pipeline, ctx, status).await?;
    Ok(Action::requeue(step.requeue_after.unwrap_or(ROLLOUT_REQUEUE)))
}

/// The replicas of this pass ([`scaling::decide`]), with the pipeline's scaling memory kept in the
/// context between passes and the autoscaler's inputs and decision exported as metrics.
fn decide_scaling<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    reports: &BTreeMap<u32, WorkerStatus>,
    open_shards: usize,
    statefulset_replicas: Option<u32>,
    now: Timestamp,
) -> Result<ScalingDecision, InvalidSpec> {
    let key = key_of(pipeline);
    let memory = ctx.scaling.lock().ok().and_then(|m| m.get(&key).cloned()).unwrap_or_default();
    let floor = desired_replicas(&pipeline.spec);
    let current = statefulset_replicas.unwrap_or(floor);
    let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
    let reports: Vec<&WorkerStatus> = reports.values().collect();
    let open = u32::try_from(open_shards).unwrap_or(u32::MAX);
    let (decision, memory) = scaling::decide(&pipeline.spec, &memory, &reports, open, current, now_ms)
        .map_err(|e| InvalidSpec { field: "spec.autoscaling", reason: e.to_string() })?;
    if let Ok(mut all) = ctx.scaling.lock() {
        all.insert(key, memory);
    }
    if let Some(reason) = &decision.policy_reason {
        let label = pipeline_label(&pipeline.namespace().unwrap_or_default(), &pipeline.name_any());
        ctx.state.metrics.observe_autoscale(
            &label,
            decision.max_lag_ms,
            decision.consumed_per_s,
            decision.desired,
            reason.kind(),
        );
    }
    Ok(decision)
}

fn read_assignment(cm: &ConfigMap) -> Option<Assignment> {
    let doc = cm.data.as_ref()?.get(ASSIGNMENT_KEY)?;
    match Assignment::from_json(doc.as_bytes()) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(error = %e, "the assignment ConfigMap holds a bad document; computing a new one");
            None
        }
    }
}

fn assigned_at(cm: &ConfigMap) -> Option<Timestamp> {
    cm.annotations().get(ASSIGNED_AT_ANNOTATION)?.parse().ok()
}

/// Asks every running worker for its `/status`, all at once (a pod that does not answer costs one
/// probe timeout per pass, not one per pod); those that do not answer are left out.
async fn probe_workers<S, P: WorkerProbe>(
    ctx: &Context<S, P>,
    valid: &ValidPipeline,
    running: u32,
) -> BTreeMap<u32, WorkerStatus> {
    let probes = (0..running).map(|ordinal| async move {
        let host = names::pod_host(&valid.name, &valid.namespace, ordinal);
        match ctx.probe.status(&host).await {
            Ok(report) => Some((ordinal, report)),
            Err(e) => {
                tracing::debug!(error = %e, "worker did not answer");
                None
            }
        }
    });
    futures::future::join_all(probes).await.into_iter().flatten().collect()
}

/// Whether every pod at an ordinal `desired..running` acts on `epoch` (or later) and reads nothing.
fn leaving_drained(reports: &BTreeMap<u32, WorkerStatus>, desired: u32, running: u32, epoch: u64) -> bool {
    (desired..running).all(|ordinal| {
        reports.get(&ordinal).is_some_and(|r| r.assignment_epoch.is_some_and(|e| e >= epoch) && r.owned_shards == 0)
    })
}

/// Server-side applies every built object and removes the ones no longer wanted.
async fn apply_resources<S, P>(ctx: &Context<S, P>, valid: &ValidPipeline, resources: Resources) -> Result<(), Error> {
    // Without `..`: a new object in `Resources` must be handled here.
    let Resources {
        service_account,
        role,
        role_binding,
        service,
        worker_config,
        assignment,
        pod_disruption_budget,
        stateful_set,
    } = resources;
    let ns = valid.namespace.as_str();
    let workers = names::workers(&valid.name);
    match service_account {
        Some(sa) => server_side_apply(ctx, ns, &sa).await?,
        None => delete_if_present::<ServiceAccount, _, _>(ctx, ns, &workers).await?,
    }
    server_side_apply::<Role, _, _>(ctx, ns, &role).await?;
    server_side_apply::<RoleBinding, _, _>(ctx, ns, &role_binding).await?;
    server_side_apply::<Service, _, _>(ctx, ns, &service).await?;
    server_side_apply::<ConfigMap, _, _>(ctx, ns, &worker_config).await?;
    write_assignment(ctx, ns, &assignment).await?;
    match pod_disruption_budget {
        Some(pdb) => server_side_apply(ctx, ns, &pdb).await?,
        None => delete_if_present::<PodDisruptionBudget, _, _>(ctx, ns, &workers).await?,
    }
    server_side_apply::<StatefulSet, _, _>(ctx, ns, &stateful_set).await
}

async fn server_side_apply<K, S, P>(ctx: &Context<S, P>, ns: &str, object: &K) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = object.name_any();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(kube_error(format!("apply {} {ns}/{name}", K::kind(&K::DynamicType::default()))))?;
    Ok(())
}

/// Writes the assignment ConfigMap on a precondition: over the resourceVersion it was read at
/// (an apply that carries a resourceVersion is refused with 409 when the object changed), or, when
/// it was absent, as a create (409 when it exists by now). So a leader that lost its lease after
/// reading can never put an older assignment over a newer one; the next pass reads again.
async fn write_assignment<S, P>(ctx: &Context<S, P>, ns: &str, assignment: &ConfigMap) -> Result<(), Error> {
    if assignment.metadata.resource_version.is_some() {
        return server_side_apply(ctx, ns, assignment).await;
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    api.create(&params, assignment)
        .await
        .map_err(kube_error(format!("create the assignment ConfigMap {ns}/{}", assignment.name_any())))?;
    Ok(())
}

async fn delete_if_present<K, S, P>(ctx: &Context<S, P>, ns: &str, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: format!("delete the unneeded {} {ns}/{name}", K::kind(&K::DynamicType::default())),
            source,
        }),
    }
}

/// Deletes the pipeline's checkpoints (only with `spec.checkpoint.cleanupOnDelete`). The stream is
/// never deleted.
async fn cleanup<S, P>(pipeline: &TaxiPipeline, ctx: &Context<S, P>) -> Result<Action, Error> {
    if !pipeline.spec.checkpoint.cleanup_on_delete {
        return Ok(Action::await_change());
    }
    let uri = pipeline.spec.checkpoint.uri.clone();
    let s3 = taxi_io::store::S3Settings {
        endpoint_url: pipeline.spec.checkpoint.s3_endpoint_url.clone(),
        force_path_style: pipeline.spec.checkpoint.s3_force_path_style,
        region: pipeline.spec.stream.region.clone(),
    };
    let cleanup_error = |source| Error::Cleanup { uri: uri.clone(), source };
    let store = CheckpointStore::from_uri(&uri, &s3, 0).await.map_err(cleanup_error)?;
    // Only this namespace's pipeline: checkpoints a same-named pipeline elsewhere wrote without a
    // namespace (before namespaces were part of the identity) may not be this one's to delete.
    let identity = PipelineId::new(pipeline.namespace().as_deref(), &pipeline.name_any());
    store.delete_prefix(&identity.key()).await.map_err(cleanup_error)?;
    publish(
        ctx,
        pipeline,
        EventType::Normal,
        "CheckpointsDeleted",
        "Cleanup",
        format!("deleted the checkpoints under {uri}"),
    )
    .await;
    Ok(Action::await_change())
}

/// An invalid spec: `Ready=False` with the reason, a Warning Event, and no requeue.
async fn reject<S, P>(pipeline: &TaxiPipeline, ctx: &Context<S, P>, invalid: &InvalidSpec) -> Result<Action, Error> {
    tracing::warn!(pipeline = %key_of(pipeline), reason = %invalid, "invalid spec");
    ctx.state.metrics.reconcile_error("invalid_spec");
    publish(ctx, pipeline, EventType::Warning, "InvalidSpec", "Validate", invalid.to_string()).await;
    let now = (ctx.now)();
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    set_condition(&mut status.conditions, condition(READY, false, "InvalidSpec", &invalid.to_string(), pipeline, now));
    patch_status(pipeline, ctx, status).await?;
    Ok(Action::await_change())
}

/// Kinesis failed during `action`: a Warning Event, `Degraded=True` and `Ready=False`
/// (`StreamUnavailable`), and the error the pass returns so that it is retried with back-off (or
/// the status write's own error, when that failed too).
async fn stream_unavailable<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    stream: &str,
    action: &str,
    source: KinesisError,
) -> Error {
    const REASON: &str = "StreamUnavailable";
    let error = Error::Kinesis { stream: stream.to_owned(), source };
    let message = error.to_string();
    publish(ctx, pipeline, EventType::Warning, REASON, action, message.clone()).await;
    let now = (ctx.now)();
    let mut status = pipeline.status.clone().unwrap_or_default();
    status.observed_generation = pipeline.metadata.generation;
    set_condition(&mut status.conditions, condition(DEGRADED, true, REASON, &message, pipeline, now));
    set_condition(&mut status.conditions, condition(READY, false, REASON, &message, pipeline, now));
    match patch_status(pipeline, ctx, status).await {
        Ok(()) => error,
        Err(status_error) => status_error,
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

/// The status of a pipeline that passed validation.
fn running_status(pipeline: &TaxiPipeline, valid: &ValidPipeline, pass: &Pass, now: Timestamp) -> TaxiPipelineStatus {
    let mut status = pipeline.status.clone().unwrap_or_default();
    let sts_status = pass.statefulset.as_ref().and_then(|s| s.status.as_ref());
    let replicas = sts_status.map_or(0, |s| s.replicas);
    let ready = sts_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let desired = i32::try_from(pass.desired).unwrap_or(i32::MAX);
    status.observed_generation = pipeline.metadata.generation;
    status.replicas = replicas;
    status.ready_replicas = ready;
    status.selector = Some(selector_string(&valid.name));
    status.open_shards = Some(i32::try_from(pass.open_shards).unwrap_or(i32::MAX));
    status.assignment_epoch = Some(i64::try_from(pass.assignment.epoch).unwrap_or(i64::MAX));
    status.desired_replicas = Some(i32::try_from(pass.scaling.desired).unwrap_or(i32::MAX));
    status.scaling_reason = Some(pass.scaling.reason.clone());
    if pass.previous_statefulset_replicas.is_some_and(|r| r != pass.rollout.statefulset_replicas) {
        status.last_scale_time = Some(Time(now));
    }
    status.max_lag_millis = pass.progress.max_lag_millis.or(status.max_lag_millis);
    status.watermark = pass.progress.watermark.clone().or(status.watermark);
    if let Some(at) = pass.progress.last_checkpoint.as_deref().and_then(|t| t.parse::<Timestamp>().ok()) {
        status.last_checkpoint_time = Some(Time(at));
    }
    let conditions = &mut status.conditions;
    let cond = |type_, ok, reason, message: &str| condition(type_, ok, reason, message, pipeline, now);
    match &pass.rollout.waiting {
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
    let resharding = if let Some(step) = &pass.stream {
        status.reshard_calls = step.reshard_calls.iter().map(|t| Time(*t)).collect();
        let c = &step.condition;
        cond(STREAM_RESHARDING, c.status, c.reason, &c.message)
    } else if usize::try_from(spec_shards).ok() == Some(pass.open_shards) {
        cond(STREAM_RESHARDING, false, "Stable", &format!("{} open shards", pass.open_shards))
    } else {
        cond(
            STREAM_RESHARDING,
            false,
            "NotManaged",
            &format!(
                "the stream has {} open shards and spec.stream.shards is {spec_shards}; set spec.stream.manage to reshard",
                pass.open_shards
            ),
        )
    };
    set_condition(conditions, resharding);
    let all_ready = ready >= desired && pass.rollout.waiting.is_none();
    let failed = &pass.progress.failed_shards;
    let ready_condition = if !failed.is_empty() {
        // Workers retry a failed shard by themselves; most reasons (other settings, a corrupt
        // checkpoint) need a person, so the first ones are shown as they are.
        let mut message = format!("{} shard(s) failing, retried with back-off: ", failed.len());
        message.push_str(&failed.iter().take(3).cloned().collect::<Vec<_>>().join("; "));
        cond(READY, false, "ShardsFailing", &message)
    } else if all_ready {
        cond(READY, true, "Running", &format!("{ready}/{desired} workers ready, {} open shards", pass.open_shards))
    } else {
        cond(READY, false, "WorkersNotReady", &format!("{ready}/{desired} workers ready"))
    };
    set_condition(conditions, ready_condition);
    status
}

/// Events for what this pass changed: a new assignment, a resized StatefulSet.
async fn publish_decisions<S, P>(pipeline: &TaxiPipeline, ctx: &Context<S, P>, pass: &Pass, assignment_changed: bool) {
    if assignment_changed {
        let note = format!(
            "assignment epoch {}: {} shards over {} workers; moved: {}",
            pass.assignment.epoch,
            pass.assignment.owners.len(),
            pass.assignment.replicas,
            if pass.moved.is_empty() { "none".to_owned() } else { pass.moved.join(", ") }
        );
        publish(ctx, pipeline, EventType::Normal, "Rebalanced", "Assign", note).await;
    }
    if pass.scaling.policy_reason.is_some() && pass.previous_statefulset_replicas.is_some_and(|r| r != pass.desired) {
        let from = pass.previous_statefulset_replicas.unwrap_or(0);
        let note = format!("autoscaler: {from} → {} workers: {}", pass.desired, pass.scaling.reason);
        publish(ctx, pipeline, EventType::Normal, "Autoscaled", "Autoscale", note).await;
    }
    let target = pass.rollout.statefulset_replicas;
    if pass.previous_statefulset_replicas.is_some_and(|r| r != target) {
        let from = pass.previous_statefulset_replicas.unwrap_or(0);
        publish(ctx, pipeline, EventType::Normal, "Scaled", "Scale", format!("workers {from} → {target}")).await;
    }
}

async fn publish<S, P>(
    ctx: &Context<S, P>,
    pipeline: &TaxiPipeline,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_to(ctx, &pipeline.object_ref(&()), type_, reason, action, note).await;
}

async fn publish_to<S, P>(
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

async fn patch_status<S, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    status: TaxiPipelineStatus,
) -> Result<(), Error> {
    let api: Api<TaxiPipeline> = Api::namespaced(ctx.client.clone(), &pipeline.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&pipeline.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_error("update the TaxiPipeline status"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_from_one_second_to_five_minutes() {
        let delays: Vec<u64> = [1, 2, 3, 4, 9, 10, 50].map(|n| RECONCILE_RETRY.delay(n).as_secs()).to_vec();
        assert_eq!(delays, [1, 2, 4, 8, 256, 300, 300]);
    }

    #[test]
    fn leaving_workers_are_drained_only_when_they_act_on_the_epoch_and_read_nothing() {
        let report =
            |epoch, owned| WorkerStatus { assignment_epoch: Some(epoch), owned_shards: owned, ..Default::default() };
        let mut reports = BTreeMap::from([(0, report(5, 4)), (1, report(5, 0)), (2, report(5, 0))]);
        assert!(leaving_drained(&reports, 1, 3, 5));
        reports.insert(2, report(4, 0));
        assert!(!leaving_drained(&reports, 1, 3, 5), "still on the old epoch");
        reports.remove(&2);
        assert!(!leaving_drained(&reports, 1, 3, 5), "did not answer");
        assert!(leaving_drained(&reports, 3, 3, 5), "nobody is leaving");
    }
}

//! The observe step: everything a pass reads, gathered once into an [`Observed`] for the pure
//! [`decide`](super::decide) step: the stream's shards (Kinesis ListShards), the assignment
//! ConfigMap and the worker StatefulSet (two GETs), who holds each of the pipeline's other objects
//! (metadata GETs, see [`ownership`](super::ownership)), each running worker's `/status`, and what
//! the pipeline's scaling kept from the previous pass. Nothing is written here.
//!
//! The Kinesis and probe clients behind it are the traits of [`crate::observe`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt};
use taxi_core::assignment::{ASSIGNMENT_KEY, Assignment, config_map_name};
use taxi_core::status::WorkerStatus;
use taxi_core::topology::ShardInfo;

use super::ownership::{self, Holder, Ownership, ReadError};
use super::stream::StreamError;
use super::{Context, key_of};
use crate::crd::TaxiPipeline;
use crate::observe::{StreamRef, Streams, WorkerProbe};
use crate::resources::{ASSIGNED_AT_ANNOTATION, CONFIG_HASH_ANNOTATION, ValidPipeline, names};
use crate::scaling::ScalingMemory;

/// Why the world could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// Listing the stream's shards failed (the pass reports the stream as unavailable).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Reading the assignment ConfigMap failed.
    #[error("failed to read the assignment ConfigMap: {0}")]
    ReadAssignment(#[source] kube::Error),
    /// Reading the worker StatefulSet failed.
    #[error("failed to read the worker StatefulSet: {0}")]
    ReadStatefulSet(#[source] kube::Error),
    /// Reading who holds one of the pipeline's other objects failed.
    #[error(transparent)]
    ReadObject(#[from] ReadError),
}

impl ObserveError {
    /// A fixed label for metrics: which service failed.
    pub fn category(&self) -> &'static str {
        match self {
            ObserveError::Stream(_) => "kinesis",
            ObserveError::ReadAssignment(_) | ObserveError::ReadStatefulSet(_) | ObserveError::ReadObject(_) => {
                "kubernetes"
            }
        }
    }
}

/// What one pass saw of a pipeline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Every shard of the stream still listed (open and closed), with lineage.
    pub shards: Vec<ShardInfo>,
    /// The assignment in force: the ConfigMap's document, `None` when the ConfigMap is absent or
    /// its document unreadable.
    pub assignment: Option<Assignment>,
    /// The assignment ConfigMap's resourceVersion, when it exists: the next write goes over it.
    pub assignment_version: Option<String>,
    /// When the assignment's epoch last changed (the ConfigMap's annotation).
    pub assigned_at: Option<Timestamp>,
    /// The worker StatefulSet.
    pub statefulset: StatefulSetSeen,
    /// Who holds each of the pipeline's objects: only its own are written.
    pub ownership: Ownership,
    /// `/status` of each running worker that answered, by ordinal (none when the StatefulSet is
    /// someone else's: its pods are not asked).
    pub reports: BTreeMap<u32, WorkerStatus>,
    /// What the pipeline's scaling kept from the previous pass (empty after an operator restart).
    pub scaling: ScalingMemory,
}

/// The worker StatefulSet as read; all empty when it does not exist yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatefulSetSeen {
    /// Whether it exists.
    pub exists: bool,
    /// `spec.replicas`: the size the last pass applied.
    pub replicas: Option<u32>,
    /// `status.replicas`: worker pods that exist.
    pub pods: i32,
    /// `status.readyReplicas`: worker pods that are ready.
    pub ready: i32,
    /// The worker settings hash on its pod template ([`CONFIG_HASH_ANNOTATION`]).
    pub config_hash: Option<String>,
    /// Whether every pod runs the current template: the controller has seen the latest spec
    /// (`observedGeneration`) and finished rolling it out (`currentRevision` is the
    /// `updateRevision`, which Kubernetes sets once every pod is updated and ready).
    pub rolled_out: bool,
}

impl StatefulSetSeen {
    /// What a pass uses of the StatefulSet read (`None`: absent).
    pub fn of(statefulset: Option<&StatefulSet>) -> StatefulSetSeen {
        let Some(statefulset) = statefulset else { return StatefulSetSeen::default() };
        let status = statefulset.status.as_ref();
        let template = statefulset.spec.template.metadata.as_ref();
        let generation = statefulset.metadata.generation;
        StatefulSetSeen {
            exists: true,
            replicas: statefulset.spec.replicas.and_then(|r| u32::try_from(r).ok()),
            pods: status.map_or(0, |s| s.replicas),
            ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            config_hash: template.and_then(|m| m.annotations.as_ref()?.get(CONFIG_HASH_ANNOTATION).cloned()),
            rolled_out: status.is_some_and(|s| {
                s.observed_generation >= generation
                    && s.current_revision.is_some()
                    && s.current_revision == s.update_revision
            }),
        }
    }

    /// Whether no worker pod can run settings other than those hashed to `config_hash`: there is
    /// no StatefulSet, or its template carries that hash and is rolled out to every pod.
    pub fn runs_only(&self, config_hash: &str) -> bool {
        !self.exists || (self.rolled_out && self.config_hash.as_deref() == Some(config_hash))
    }
}

/// Reads the stream's shards, the assignment ConfigMap, the worker StatefulSet, who holds the
/// other objects and the workers' `/status`, in that order.
pub(super) async fn observe<S: Streams, P: WorkerProbe>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    valid: &ValidPipeline,
    stream: &StreamRef,
) -> Result<Observed, ObserveError> {
    let shards =
        ctx.streams.list_shards(stream).await.map_err(|source| StreamError { stream: stream.name.clone(), source })?;
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &valid.namespace);
    let assignment_map =
        config_maps.get_opt(&config_map_name(&valid.name)).await.map_err(ObserveError::ReadAssignment)?;
    let assignment = assignment_map.as_ref().and_then(read_assignment);
    let workers = stateful_sets.get_opt(&names::workers(&valid.name)).await.map_err(ObserveError::ReadStatefulSet)?;
    let ownership = ownership::read(
        &ctx.client,
        valid,
        Holder::of(assignment_map.as_ref().map(|cm| &cm.metadata), &valid.uid),
        Holder::of(workers.as_ref().map(|sts| &sts.metadata), &valid.uid),
    )
    .await?;
    let statefulset = StatefulSetSeen::of(workers.as_ref());
    // Someone else's pods are not ours to ask (the pass stops before writing anything anyway).
    let running = if ownership.stateful_set.is_foreign() { 0 } else { statefulset.replicas.unwrap_or(0) };
    let reports = probe_workers(ctx, valid, running).await;
    let scaling = ctx.scaling.lock().ok().and_then(|m| m.get(&key_of(pipeline)).cloned()).unwrap_or_default();
    Ok(Observed {
        shards,
        assignment,
        assignment_version: assignment_map.as_ref().and_then(|cm| cm.metadata.resource_version.clone()),
        assigned_at: assignment_map.as_ref().and_then(assigned_at),
        statefulset,
        ownership,
        reports,
        scaling,
    })
}

/// The assignment document of the ConfigMap; a damaged one counts as none (a new one is computed).
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

//! The observe step: everything a pass reads, gathered once into an [`Observed`] for the pure
//! [`decide`](super::decide) step: the stream's shards (Kinesis ListShards), the assignment
//! ConfigMap and the worker StatefulSet (two GETs), each running worker's `/status`, and what the
//! pipeline's scaling kept from the previous pass. Nothing is written here.
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

use super::stream::StreamError;
use super::{Context, key_of};
use crate::crd::TaxiPipeline;
use crate::observe::{StreamRef, Streams, WorkerProbe};
use crate::resources::{ASSIGNED_AT_ANNOTATION, ValidPipeline, names};
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
}

impl ObserveError {
    /// A fixed label for metrics: which service failed.
    pub fn category(&self) -> &'static str {
        match self {
            ObserveError::Stream(_) => "kinesis",
            ObserveError::ReadAssignment(_) | ObserveError::ReadStatefulSet(_) => "kubernetes",
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
    /// `/status` of each running worker that answered, by ordinal.
    pub reports: BTreeMap<u32, WorkerStatus>,
    /// What the pipeline's scaling kept from the previous pass (empty after an operator restart).
    pub scaling: ScalingMemory,
}

/// The worker StatefulSet as read; all empty when it does not exist yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatefulSetSeen {
    /// `spec.replicas`: the size the last pass applied.
    pub replicas: Option<u32>,
    /// `status.replicas`: worker pods that exist.
    pub pods: i32,
    /// `status.readyReplicas`: worker pods that are ready.
    pub ready: i32,
}

impl StatefulSetSeen {
    /// What a pass uses of the StatefulSet read (`None`: absent).
    pub fn of(statefulset: Option<&StatefulSet>) -> StatefulSetSeen {
        let status = statefulset.and_then(|s| s.status.as_ref());
        StatefulSetSeen {
            replicas: statefulset.and_then(|s| s.spec.replicas).and_then(|r| u32::try_from(r).ok()),
            pods: status.map_or(0, |s| s.replicas),
            ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        }
    }
}

/// Reads the stream's shards, the assignment ConfigMap, the worker StatefulSet and the workers'
/// `/status`, in that order.
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
    let statefulset =
        stateful_sets.get_opt(&names::workers(&valid.name)).await.map_err(ObserveError::ReadStatefulSet)?;
    let statefulset = StatefulSetSeen::of(statefulset.as_ref());
    let reports = probe_workers(ctx, valid, statefulset.replicas.unwrap_or(0)).await;
    let scaling = ctx.scaling.lock().ok().and_then(|m| m.get(&key_of(pipeline)).cloned()).unwrap_or_default();
    Ok(Observed {
        shards,
        assignment,
        assignment_version: assignment_map.as_ref().and_then(|cm| cm.metadata.resource_version.clone()),
        assigned_at: assignment_map.as_ref().and_then(assigned_at),
        statefulset,
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

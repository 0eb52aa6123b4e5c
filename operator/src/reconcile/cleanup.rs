//! The cleanup step of a deleted pipeline, run by the finalizer before it lets the TaxiPipeline
//! go: with `spec.checkpoint.cleanupOnDelete`, delete its checkpoints. The stream is never
//! deleted; owner references let Kubernetes delete the rest.

use kube::ResourceExt;
use kube::runtime::events::EventType;
use taxi_core::identity::PipelineId;
use taxi_io::store::{CheckpointStore, S3Settings, StoreError};

use super::{Context, status};
use crate::crd::TaxiPipeline;

/// Deleting the pipeline's checkpoints failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to delete the checkpoints under {uri}: {source}")]
pub struct CleanupError {
    /// The checkpoint URI.
    pub uri: String,
    /// The store error.
    #[source]
    pub source: StoreError,
}

/// Deletes the pipeline's checkpoints (only with `spec.checkpoint.cleanupOnDelete`) and says so in
/// an Event.
pub(super) async fn cleanup<S, P>(pipeline: &TaxiPipeline, ctx: &Context<S, P>) -> Result<(), CleanupError> {
    if !pipeline.spec.checkpoint.cleanup_on_delete {
        return Ok(());
    }
    let uri = pipeline.spec.checkpoint.uri.clone();
    let s3 = S3Settings {
        endpoint_url: pipeline.spec.checkpoint.s3_endpoint_url.clone(),
        force_path_style: pipeline.spec.checkpoint.s3_force_path_style,
        region: pipeline.spec.stream.region.clone(),
    };
    let cleanup_error = |source| CleanupError { uri: uri.clone(), source };
    let store = CheckpointStore::from_uri(&uri, &s3, 0).await.map_err(cleanup_error)?;
    // Only this namespace's pipeline: checkpoints a same-named pipeline elsewhere wrote without a
    // namespace (before namespaces were part of the identity) may not be this one's to delete.
    let identity = PipelineId::new(pipeline.namespace().as_deref(), &pipeline.name_any());
    store.delete_prefix(&identity.key()).await.map_err(cleanup_error)?;
    let note = format!("deleted the checkpoints under {uri}");
    status::publish(ctx, pipeline, EventType::Normal, "CheckpointsDeleted", "Cleanup", note).await;
    Ok(())
}

//! The cleanup step of a deleted pipeline, run by the finalizer before it lets the TaxiPipeline
//! go: deregister the enhanced fan-out consumer the operator named for it, when one may exist
//! ([`consumer::held_consumer`]), and with `spec.checkpoint.cleanupOnDelete` delete its
//! checkpoints. The stream is never deleted; owner references let Kubernetes delete the rest.
//!
//! The workers are still running while this runs (Kubernetes removes them once the TaxiPipeline
//! is gone). They register their consumer only when they start, so the one deregistered here
//! stays gone unless a worker restarts in the seconds before it is stopped.

use kube::ResourceExt;
use kube::runtime::events::EventType;
use taxi_core::identity::PipelineId;
use taxi_io::kinesis::api::KinesisError;
use taxi_io::store::{CheckpointStore, S3Settings, StoreError};

use super::{Context, consumer, status};
use crate::crd::TaxiPipeline;
use crate::observe::Streams;
use crate::validate::stream_ref;

/// What a deleted pipeline's cleanup could not do (the finalizer stays, the cleanup is retried).
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// Deleting the pipeline's checkpoints failed.
    #[error("failed to delete the checkpoints under {uri}: {source}")]
    Checkpoints {
        /// The checkpoint URI.
        uri: String,
        /// The store error.
        #[source]
        source: StoreError,
    },
    /// Deregistering the pipeline's enhanced fan-out consumer failed.
    #[error("failed to deregister the enhanced fan-out consumer {consumer} of stream {stream}: {source}")]
    Consumer {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// The Kinesis error.
        #[source]
        source: KinesisError,
    },
}

impl CleanupError {
    /// A fixed label for metrics: which service failed.
    pub fn category(&self) -> &'static str {
        match self {
            CleanupError::Checkpoints { .. } => "checkpoint_cleanup",
            CleanupError::Consumer { .. } => "kinesis",
        }
    }
}

/// Deregisters the consumer the operator named, when one may exist, and deletes the pipeline's
/// checkpoints (only with `spec.checkpoint.cleanupOnDelete`); an Event says what was done. When
/// either fails, a Warning Event says why the deletion waits (`kubectl describe` shows it next to
/// the deletion timestamp) and the finalizer stays, to be tried again with back-off.
pub(super) async fn cleanup<S: Streams, P>(pipeline: &TaxiPipeline, ctx: &Context<S, P>) -> Result<(), CleanupError> {
    let result = deregister_and_delete(pipeline, ctx).await;
    if let Err(error) = &result {
        let note = format!("the deletion waits until this succeeds (retried with back-off): {error}");
        status::publish(ctx, pipeline, EventType::Warning, "CleanupFailed", "Cleanup", note).await;
    }
    result
}

async fn deregister_and_delete<S: Streams, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
) -> Result<(), CleanupError> {
    if let Some(name) = consumer::held_consumer(pipeline) {
        let stream = stream_ref(&pipeline.spec);
        ctx.streams.deregister_consumer(&stream, &name).await.map_err(|source| CleanupError::Consumer {
            stream: stream.name.clone(),
            consumer: name.clone(),
            source,
        })?;
        let note = format!("deregistered the enhanced fan-out consumer {name} of stream {}", stream.name);
        status::publish(ctx, pipeline, EventType::Normal, "ConsumerDeregistered", "Cleanup", note).await;
    }
    if !pipeline.spec.checkpoint.cleanup_on_delete {
        return Ok(());
    }
    let uri = pipeline.spec.checkpoint.uri.clone();
    let s3 = S3Settings {
        endpoint_url: pipeline.spec.checkpoint.s3_endpoint_url.clone(),
        force_path_style: pipeline.spec.checkpoint.s3_force_path_style,
        region: pipeline.spec.stream.region.clone(),
    };
    let cleanup_error = |source| CleanupError::Checkpoints { uri: uri.clone(), source };
    let store = CheckpointStore::from_uri(&uri, &s3, 0).await.map_err(cleanup_error)?;
    // Only this namespace's pipeline: checkpoints a same-named pipeline elsewhere wrote without a
    // namespace (before namespaces were part of the identity) may not be this one's to delete.
    let identity = PipelineId::new(pipeline.namespace().as_deref(), &pipeline.name_any());
    store.delete_prefix(&identity.key()).await.map_err(cleanup_error)?;
    let note = format!("deleted the checkpoints under {uri}");
    status::publish(ctx, pipeline, EventType::Normal, "CheckpointsDeleted", "Cleanup", note).await;
    Ok(())
}

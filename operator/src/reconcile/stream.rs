//! The stream step, before anything reads the stream's shards: with `spec.stream.manage`, create
//! the stream when it is missing or take the next reshard step towards `spec.stream.shards`
//! (within the Kinesis limits: ×2/÷2 per call, 10 calls per rolling 24 h; planned by
//! [`crate::reshard`]); without it, nothing.

use k8s_openapi::jiff::Timestamp;
use taxi_io::kinesis::api::KinesisError;

use super::Context;
use crate::crd::TaxiPipeline;
use crate::observe::{StreamRef, Streams};
use crate::reshard::{Plan, StreamStep, manage_stream};

/// A Kinesis call about the pipeline's stream failed (listing, describing, creating, resharding).
#[derive(Debug, thiserror::Error)]
#[error("Kinesis failed for stream {stream}: {source}")]
pub struct StreamError {
    /// The stream.
    pub stream: String,
    /// The Kinesis error.
    #[source]
    pub source: KinesisError,
}

/// What the stream step found: a stream being created, or the step of a stream that exists.
#[derive(Debug)]
pub enum ManagedStream {
    /// The stream was just created: it has no shards to assign yet.
    Creating(StreamStep),
    /// The stream exists; the step taken when the pipeline manages it (`None`: it does not).
    Step(Option<StreamStep>),
}

/// With `spec.stream.manage`, creates the stream or takes the next reshard step; without it,
/// does nothing.
pub(super) async fn manage<S: Streams, P>(
    pipeline: &TaxiPipeline,
    ctx: &Context<S, P>,
    stream: &StreamRef,
) -> Result<ManagedStream, StreamError> {
    if !pipeline.spec.stream.manage {
        return Ok(ManagedStream::Step(None));
    }
    let calls: Vec<Timestamp> =
        pipeline.status.as_ref().map(|s| s.reshard_calls.iter().map(|t| t.0).collect()).unwrap_or_default();
    let desired = u32::try_from(pipeline.spec.stream.shards).unwrap_or(1);
    match manage_stream(&ctx.streams, stream, true, desired, &calls, (ctx.now)()).await {
        Ok(step) if matches!(step.plan, Plan::Create { .. }) => Ok(ManagedStream::Creating(step)),
        Ok(step) => Ok(ManagedStream::Step(Some(step))),
        Err(source) => Err(StreamError { stream: stream.name.clone(), source }),
    }
}

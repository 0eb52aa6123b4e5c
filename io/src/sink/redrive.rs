//! Re-delivery of dead letters: each stored object is written to the sink again, flushed, and
//! only then deleted (see [`super::dead_letter`] for the invariant this keeps).

use std::sync::Arc;
use std::time::Duration;

use super::dead_letter::{DeadLetterError, DeadLetterStore};
use super::{Sink, SinkError};
use taxi_core::document::PartialDocument;

/// What one re-delivery pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Objects written to the sink again and deleted.
    pub objects: usize,
    /// Documents in them.
    pub documents: usize,
}

/// Writes every stored dead letter to `sink` again; an object is deleted only once the sink's
/// flush returned (the sink stored its documents, or stored the ones it refused again as new dead
/// letters).
pub async fn redrive(store: &DeadLetterStore, sink: &Sink) -> Result<RedriveReport, RedriveError> {
    let mut report = RedriveReport::default();
    for (key, letters) in store.scan().await? {
        if letters.is_empty() {
            store.delete(&key).await?;
            continue;
        }
        let documents: Vec<PartialDocument> = letters.into_iter().map(|l| l.document).collect();
        let n = documents.len();
        sink.write(documents).await?;
        sink.flush().await?;
        store.delete(&key).await?;
        report.objects += 1;
        report.documents += n;
    }
    Ok(report)
}

/// Why a re-delivery pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// The dead-letter store failed.
    #[error(transparent)]
    Store(#[from] DeadLetterError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Re-delivers dead letters at once and then every `interval`, for as long as the sink lives
/// (run it as a task; it ends when aborted). Failures are logged and retried at the next pass.
/// `passes` counts the passes done, so a run can wait for the first before it stops.
pub async fn redrive_periodically(
    store: DeadLetterStore,
    sink: Arc<Sink>,
    interval: Duration,
    passes: tokio::sync::watch::Sender<u64>,
) {
    loop {
        match redrive(&store, &sink).await {
            Ok(report) if report.objects > 0 => {
                tracing::info!(objects = report.objects, documents = report.documents, "dead letters re-delivered");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "re-delivering dead letters failed; retrying later"),
        }
        passes.send_modify(|n| *n += 1);
        tokio::time::sleep(interval).await;
    }
}

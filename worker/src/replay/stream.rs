//! The stream the replay writes to, on the control plane: checking it exists (creating it when
//! asked to, and waiting until it is active) and listing its open shards, each call retried a few
//! times on retryable errors.

use std::time::Duration;

use tokio::time::Instant;

use super::{RETRY, ReplayError, ReplayOptions};
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, KinesisError, StreamState};
use taxi_io::retry::Backoff;

/// How often a stream being created is polled.
const STREAM_POLL: Duration = Duration::from_millis(100);
/// How long a stream being created may take to become active.
const STREAM_ACTIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of a control-plane call (DescribeStreamSummary, CreateStream, ListShards) on retryable errors.
const CONTROL_ATTEMPTS: u32 = 5;

/// Checks the stream exists, creating it (and waiting until it is active) when asked to.
pub(super) async fn prepare_stream<K: KinesisApi>(kinesis: &K, options: &ReplayOptions) -> Result<(), ReplayError> {
    let stream = options.stream.as_str();
    let state_error = |source| ReplayError::StreamState { stream: stream.to_owned(), source };
    let state = with_retries(|| kinesis.stream_state(stream)).await.map_err(state_error)?;
    match (state, options.create_stream) {
        (StreamState::Missing, None) => Err(ReplayError::StreamMissing { stream: stream.to_owned() }),
        (StreamState::Missing, Some(shards)) => {
            if let Err(source) = with_retries(|| kinesis.create_stream(stream, shards)).await {
                // Someone else may have created it meanwhile: only fail if it still does not exist.
                let now = with_retries(|| kinesis.stream_state(stream)).await.map_err(state_error)?;
                if now == StreamState::Missing {
                    return Err(ReplayError::CreateStream { stream: stream.to_owned(), shards, source });
                }
            }
            wait_active(kinesis, stream).await
        }
        (StreamState::Busy, Some(_)) => wait_active(kinesis, stream).await,
        // An UPDATING stream (resharding) accepts records: no need to wait.
        _ => Ok(()),
    }
}

/// Polls the stream until it is active, for at most [`STREAM_ACTIVE_TIMEOUT`].
async fn wait_active<K: KinesisApi>(kinesis: &K, stream: &str) -> Result<(), ReplayError> {
    let start = Instant::now();
    loop {
        let state = with_retries(|| kinesis.stream_state(stream))
            .await
            .map_err(|source| ReplayError::StreamState { stream: stream.to_owned(), source })?;
        if matches!(state, StreamState::Active { .. }) {
            return Ok(());
        }
        if start.elapsed() >= STREAM_ACTIVE_TIMEOUT {
            return Err(ReplayError::NotActive { stream: stream.to_owned(), waited: start.elapsed() });
        }
        tokio::time::sleep(STREAM_POLL).await;
    }
}

/// The open shards of the stream, sorted by starting hash key.
pub(super) async fn list_open_shards<K: KinesisApi>(kinesis: &K, stream: &str) -> Result<Vec<ShardInfo>, ReplayError> {
    let mut shards = with_retries(|| kinesis.list_shards(stream))
        .await
        .map_err(|source| ReplayError::ListShards { stream: stream.to_owned(), source })?;
    shards.retain(ShardInfo::is_open);
    shards.sort_by_key(|s| s.starting_hash_key);
    Ok(shards)
}

/// Runs a control-plane call, retrying retryable errors a few times with back-off.
async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, KinesisError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, KinesisError>>,
{
    let mut backoff = Backoff::new(RETRY);
    loop {
        match call().await {
            // The attempt just made is number `failures + 1`.
            Err(e) if e.is_retryable() && backoff.failures() + 1 < CONTROL_ATTEMPTS => {
                let wait = backoff.next_delay();
                tracing::debug!(error = %e, attempt = backoff.failures(), "retrying a Kinesis control-plane call");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::replay::fake::{MemoryKinesis, T0, options, trip_line, write_lines};
    use crate::replay::{ReplayProgress, replay};

    #[tokio::test]
    async fn creates_a_missing_stream_and_waits_for_it() {
        let file = write_lines(&[trip_line(1, T0, 0), "not json".to_owned(), trip_line(2, T0 + 1000, 0)]);
        let fake = Arc::new(MemoryKinesis::missing());
        let mut opts = options(&file, 0.0);
        opts.create_stream = Some(3);
        // No periodic watermark may fire while the stream is created (a loaded machine takes
        // longer than the 10 ms `options` sets): only the final one is counted below.
        opts.watermark_interval = Duration::from_secs(3600);
        let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
        assert_eq!(fake.stream().shards.len(), 3);
        assert_eq!((summary.trips, summary.invalid), (2, 1));
        // The final watermark reaches the three shards.
        assert_eq!(summary.watermarks_sent, 3);
        assert_eq!(summary.first_event_time, Some(T0));
        assert_eq!(summary.last_event_time, Some(T0 + 1000));
        let json = serde_json::to_value(&summary).expect("serialize");
        assert_eq!(json["last_event_time"], "2016-01-01T00:00:01Z");
    }
}

//! The enhanced fan-out shard reader: SubscribeToShard sessions, renewed before Kinesis ends them
//! (every 5 minutes), resubscribed from the last sequence number after any break.
//!
//! A closed shard is drained with GetRecords once the subscription has caught up: that call
//! reports the end of the shard and its children reliably everywhere (the emulator used in tests
//! never ends a subscription on a closed shard).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kinesis::api::{KinesisApi, KinesisError, StartingPosition, Subscription};
use crate::kinesis::reader::{PollingConfig, PollingReader, ReadOutcome, ReaderStats};
use crate::retry::Backoff;

/// Kinesis ends a subscription after 5 minutes; renewing a little earlier avoids the gap.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(290);

/// Reads one shard through an enhanced fan-out consumer.
pub struct EfoReader<K: KinesisApi> {
    api: Arc<K>,
    stream: String,
    shard_id: String,
    consumer_arn: String,
    /// Where the next subscription starts.
    position: StartingPosition,
    session: Option<(K::Subscription, Instant)>,
    session_lifetime: Duration,
    backoff: Backoff,
    polling: PollingConfig,
    /// Set once discovery saw the shard closed.
    closed: bool,
    /// GetRecords reader finishing a closed shard.
    drain: Option<PollingReader<K>>,
    stats: ReaderStats,
    sessions: u64,
    /// The last event of a closed shard carried records: they were handed out, the end comes next.
    end: Option<Vec<String>>,
}

impl<K: KinesisApi> std::fmt::Debug for EfoReader<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EfoReader")
            .field("shard_id", &self.shard_id)
            .field("position", &self.position)
            .field("sessions", &self.sessions)
            .finish_non_exhaustive()
    }
}

impl<K: KinesisApi> EfoReader<K> {
    /// A reader for `shard_id` through the consumer `consumer_arn`, starting at `position`.
    pub fn new(
        api: Arc<K>,
        stream: &str,
        shard_id: &str,
        consumer_arn: &str,
        position: StartingPosition,
        polling: PollingConfig,
    ) -> Self {
        EfoReader {
            api,
            stream: stream.to_owned(),
            shard_id: shard_id.to_owned(),
            consumer_arn: consumer_arn.to_owned(),
            position,
            session: None,
            session_lifetime: SESSION_LIFETIME,
            backoff: Backoff::new(polling.backoff),
            polling,
            closed: false,
            drain: None,
            stats: ReaderStats::default(),
            sessions: 0,
            end: None,
        }
    }

    /// Renews sessions after `lifetime` instead of [`SESSION_LIFETIME`] (tests).
    pub fn with_session_lifetime(mut self, lifetime: Duration) -> Self {
        self.session_lifetime = lifetime;
        self
    }

    /// Tells the reader the shard is closed (from ListShards).
    pub fn mark_closed(&mut self) {
        self.closed = true;
    }

    /// Subscriptions opened so far.
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// Errors and calls so far (of the drain reader too).
    pub fn stats(&self) -> ReaderStats {
        match &self.drain {
            Some(d) => d.stats().clone(),
            None => self.stats.clone(),
        }
    }

    /// The next batch of records, or the end of the shard.
    pub async fn next(&mut self) -> Result<ReadOutcome, KinesisError> {
        if let Some(children) = self.end.take() {
            return Ok(ReadOutcome::End { children });
        }
        loop {
            if let Some(drain) = &mut self.drain {
                return drain.next().await;
            }
            let expired = self.session.as_ref().is_some_and(|(_, opened)| opened.elapsed() >= self.session_lifetime);
            if expired {
                self.session = None;
            }
            if self.session.is_none() {
                match self.api.subscribe_to_shard(&self.consumer_arn, &self.shard_id, &self.position).await {
                    Ok(s) => {
                        self.sessions += 1;
                        self.session = Some((s, Instant::now()));
                    }
                    Err(e) => {
                        self.wait_after(&e).await?;
                        continue;
                    }
                }
            }
            let Some((session, _)) = &mut self.session else { continue };
            let started = Instant::now();
            match session.next_event().await {
                Ok(Some(event)) => {
                    self.backoff.reset();
                    self.stats.calls += 1;
                    self.stats.last_call = started.elapsed();
                    if let Some(last) = event.records.last() {
                        self.position = StartingPosition::AfterSequenceNumber(last.sequence_number.clone());
                    }
                    let Some(continuation) = event.continuation_sequence_number else {
                        if event.records.is_empty() {
                            return Ok(ReadOutcome::End { children: event.child_shards });
                        }
                        // The last event of a closed shard may carry its last records: hand them
                        // out first, the end comes next.
                        self.end = Some(event.child_shards);
                        return Ok(ReadOutcome::Records {
                            records: event.records,
                            millis_behind_latest: event.millis_behind_latest,
                        });
                    };
                    self.position = StartingPosition::AfterSequenceNumber(continuation);
                    let caught_up = event.records.is_empty() && event.millis_behind_latest.is_none_or(|m| m == 0);
                    if caught_up && self.closed {
                        tracing::info!(shard = %self.shard_id, "closed shard caught up: draining with GetRecords");
                        self.session = None;
                        self.drain = Some(PollingReader::new(
                            self.api.clone(),
                            &self.stream,
                            &self.shard_id,
                            self.position.clone(),
                            self.polling.clone(),
                        ));
                        continue;
                    }
                    return Ok(ReadOutcome::Records {
                        records: event.records,
                        millis_behind_latest: event.millis_behind_latest,
                    });
                }
                // The session ended (Kinesis closes them after 5 minutes): resubscribe.
                Ok(None) => self.session = None,
                Err(e) => {
                    self.session = None;
                    self.wait_after(&e).await?;
                }
            }
        }
    }

    /// Backs off after a failure; permanent errors are returned.
    async fn wait_after(&mut self, error: &KinesisError) -> Result<(), KinesisError> {
        match error {
            KinesisError::Throttled { .. } => self.stats.throttles += 1,
            _ => self.stats.transient_errors += 1,
        }
        let delay = self.backoff.next_delay().max(self.polling.min_call_interval);
        tracing::debug!(shard = %self.shard_id, %error, ?delay, "subscription failed; resubscribing");
        tokio::time::sleep(delay).await;
        // Throttling, server errors and "another subscription is active" (a previous session not
        // yet released, classified transient) are retried; the rest is returned.
        match error {
            KinesisError::Permanent { .. } | KinesisError::NotFound { .. } => Err(error.clone()),
            _ => Ok(()),
        }
    }
}

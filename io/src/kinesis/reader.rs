//! The polling shard reader: GetRecords at no more than the per-shard rate, adaptive idle
//! back-off, exponential back-off with jitter on throttling and server errors, and re-acquiring an
//! expired iterator from the last record handed out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kinesis::api::{KinesisApi, KinesisError, KinesisRecord, StartingPosition};
use crate::retry::{Backoff, BackoffPolicy, Jitter};

/// Settings of a polling reader.
#[derive(Clone, Debug)]
pub struct PollingConfig {
    /// Records per GetRecords call (at most 10 000).
    pub max_records: i32,
    /// Minimum time between two GetRecords calls on a shard: Kinesis allows 5 per second per
    /// shard across all its readers.
    pub min_call_interval: Duration,
    /// Longest wait between polls of an empty shard.
    pub max_idle_delay: Duration,
    /// The wait after a throttle or server error (full jitter: a stream's many shard readers
    /// spread out).
    pub backoff: BackoffPolicy,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            max_records: 10_000,
            min_call_interval: Duration::from_millis(200),
            max_idle_delay: Duration::from_secs(1),
            backoff: BackoffPolicy::new(Duration::from_millis(100), Duration::from_secs(10), Jitter::Full),
        }
    }
}

/// What one read produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Records (possibly none), and how far behind the tip they are.
    Records {
        /// Records in order.
        records: Vec<KinesisRecord>,
        /// MillisBehindLatest of the page.
        millis_behind_latest: Option<i64>,
    },
    /// The shard is closed and fully read; these shards replaced it.
    End {
        /// Child shard ids.
        children: Vec<String>,
    },
}

/// Counters a reader keeps for metrics and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// GetRecords calls made.
    pub calls: u64,
    /// Calls throttled.
    pub throttles: u64,
    /// Calls that failed with a retryable server or network error.
    pub transient_errors: u64,
    /// Iterators re-acquired after expiring.
    pub expired_iterators: u64,
    /// Duration of the last successful GetRecords call.
    pub last_call: Duration,
}

/// Reads one shard by polling GetRecords.
#[derive(Debug)]
pub struct PollingReader<K> {
    api: Arc<K>,
    stream: String,
    shard_id: String,
    config: PollingConfig,
    /// Where to (re)start when there is no iterator.
    position: StartingPosition,
    iterator: Option<String>,
    next_call_at: Instant,
    idle_delay: Duration,
    backoff: Backoff,
    stats: ReaderStats,
    /// The last page of a closed shard carried records: they were handed out, the end comes next.
    end: Option<Vec<String>>,
}

impl<K: KinesisApi> PollingReader<K> {
    /// A reader starting at `position`.
    pub fn new(api: Arc<K>, stream: &str, shard_id: &str, position: StartingPosition, config: PollingConfig) -> Self {
        let backoff = Backoff::new(config.backoff);
        PollingReader {
            api,
            stream: stream.to_owned(),
            shard_id: shard_id.to_owned(),
            idle_delay: config.min_call_interval,
            config,
            position,
            iterator: None,
            next_call_at: Instant::now(),
            backoff,
            stats: ReaderStats::default(),
            end: None,
        }
    }

    /// The shard read.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// Calls, throttles and errors so far.
    pub fn stats(&self) -> &ReaderStats {
        &self.stats
    }

    /// The next page of records. Throttling, server errors and expired iterators are handled
    /// here (waiting as needed); other errors are returned, and the reader can be called again.
    pub async fn next(&mut self) -> Result<ReadOutcome, KinesisError> {
        if let Some(children) = self.end.take() {
            return Ok(ReadOutcome::End { children });
        }
        loop {
            tokio::time::sleep_until(self.next_call_at.into()).await;
            match self.try_once().await {
                Ok(outcome) => {
                    self.backoff.reset();
                    return Ok(outcome);
                }
                Err(KinesisError::ExpiredIterator { .. }) => {
                    // Re-acquire from the last record handed out (kept in `position`).
                    self.stats.expired_iterators += 1;
                    self.iterator = None;
                    tracing::info!(shard = %self.shard_id, "shard iterator expired; re-acquiring");
                }
                Err(e) if e.is_retryable() => {
                    match e {
                        KinesisError::Throttled { .. } => self.stats.throttles += 1,
                        _ => self.stats.transient_errors += 1,
                    }
                    let delay = self.backoff.next_delay();
                    tracing::debug!(shard = %self.shard_id, error = %e, ?delay, "backing off");
                    self.next_call_at = Instant::now() + delay.max(self.config.min_call_interval);
                }
                Err(e) => {
                    self.next_call_at = Instant::now() + self.backoff.next_delay().max(self.config.min_call_interval);
                    return Err(e);
                }
            }
        }
    }

    async fn try_once(&mut self) -> Result<ReadOutcome, KinesisError> {
        let iterator = match &self.iterator {
            Some(it) => it.clone(),
            None => {
                let it = self.api.get_shard_iterator(&self.stream, &self.shard_id, &self.position).await?;
                self.iterator = Some(it.clone());
                it
            }
        };
        let started = Instant::now();
        self.stats.calls += 1;
        let page = self.api.get_records(&iterator, self.config.max_records).await?;
        self.stats.last_call = started.elapsed();
        if let Some(last) = page.records.last() {
            self.position = StartingPosition::AfterSequenceNumber(last.sequence_number.clone());
        }
        self.iterator = page.next_iterator.clone();
        // A full page means more is waiting: poll again at the rate limit. An empty or short page
        // means we caught up: slow down gradually, up to the idle ceiling.
        let caught_up = page.millis_behind_latest.is_none_or(|m| m == 0) && page.records.is_empty();
        self.idle_delay = if caught_up {
            (self.idle_delay * 2).min(self.config.max_idle_delay).max(self.config.min_call_interval)
        } else {
            self.config.min_call_interval
        };
        self.next_call_at = started + self.idle_delay;
        match page.next_iterator {
            None if page.records.is_empty() => Ok(ReadOutcome::End { children: page.child_shards }),
            // The last page of a closed shard may carry its last records: hand them out first.
            None => {
                self.end = Some(page.child_shards);
                Ok(ReadOutcome::Records { records: page.records, millis_behind_latest: page.millis_behind_latest })
            }
            Some(_) => {
                Ok(ReadOutcome::Records { records: page.records, millis_behind_latest: page.millis_behind_latest })
            }
        }
    }
}

/// Turns a checkpointed position into where the reader starts; `None` for a finished shard.
/// Inside a KPL aggregate the reader starts at that record again: the shard's processor skips the
/// user records the position says were processed.
pub fn resume_position(position: &taxi_core::checkpoint::Position) -> Option<StartingPosition> {
    use taxi_core::checkpoint::Position;
    match position {
        Position::Start | Position::InputRecord { .. } => Some(StartingPosition::TrimHorizon),
        Position::ArrivedFrom { timestamp } => Some(StartingPosition::AtTimestamp(*timestamp)),
        Position::Sequence { sequence_number, sub_sequence: None } => {
            Some(StartingPosition::AfterSequenceNumber(sequence_number.clone()))
        }
        Position::Sequence { sequence_number, sub_sequence: Some(_) } => {
            Some(StartingPosition::AtSequenceNumber(sequence_number.clone()))
        }
        Position::Finished => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A closed shard whose single page carries its last two records and no next iterator.
    struct LastPage;

    struct NoSubscription;

    impl crate::kinesis::api::Subscription for NoSubscription {
        async fn next_event(&mut self) -> Result<Option<crate::kinesis::api::SubscriptionEvent>, KinesisError> {
            Ok(None)
        }
    }

    impl KinesisApi for LastPage {
        type Subscription = NoSubscription;

        async fn list_shards(&self, _: &str) -> Result<Vec<taxi_core::topology::ShardInfo>, KinesisError> {
            Ok(Vec::new())
        }
        async fn get_shard_iterator(&self, _: &str, _: &str, _: &StartingPosition) -> Result<String, KinesisError> {
            Ok("it".to_owned())
        }
        async fn get_records(&self, _: &str, _: i32) -> Result<crate::kinesis::api::RecordsPage, KinesisError> {
            let record = |seq: &str| crate::kinesis::api::KinesisRecord {
                sequence_number: seq.to_owned(),
                partition_key: "1".to_owned(),
                data: bytes::Bytes::from_static(b"{}"),
                arrival: None,
            };
            Ok(crate::kinesis::api::RecordsPage {
                records: vec![record("1"), record("2")],
                next_iterator: None,
                millis_behind_latest: Some(0),
                child_shards: vec!["shardId-000000000004".to_owned()],
            })
        }
        async fn put_records(
            &self,
            _: &str,
            _: Vec<crate::kinesis::api::PutEntry>,
        ) -> Result<Vec<crate::kinesis::api::PutOutcome>, KinesisError> {
            Ok(Vec::new())
        }
        async fn stream_state(&self, _: &str) -> Result<crate::kinesis::api::StreamState, KinesisError> {
            Ok(crate::kinesis::api::StreamState::Missing)
        }
        async fn create_stream(&self, _: &str, _: u32) -> Result<(), KinesisError> {
            Ok(())
        }
        async fn update_shard_count(&self, _: &str, _: u32) -> Result<(), KinesisError> {
            Ok(())
        }
        async fn register_consumer(&self, _: &str, _: &str) -> Result<String, KinesisError> {
            Ok(String::new())
        }
        async fn deregister_consumer(&self, _: &str, _: &str) -> Result<(), KinesisError> {
            Ok(())
        }
        async fn subscribe_to_shard(
            &self,
            _: &str,
            _: &str,
            _: &StartingPosition,
        ) -> Result<NoSubscription, KinesisError> {
            Ok(NoSubscription)
        }
    }

    #[tokio::test]
    async fn the_last_records_of_a_closed_shard_come_before_its_end() {
        let mut reader = PollingReader::new(
            Arc::new(LastPage),
            "s",
            "shardId-000000000000",
            StartingPosition::TrimHorizon,
            PollingConfig::default(),
        );
        match reader.next().await.expect("page") {
            ReadOutcome::Records { records, .. } => {
                assert_eq!(records.iter().map(|r| r.sequence_number.as_str()).collect::<Vec<_>>(), ["1", "2"]);
            }
            ReadOutcome::End { .. } => panic!("the last page's records were dropped"),
        }
        match reader.next().await.expect("end") {
            ReadOutcome::End { children } => assert_eq!(children, ["shardId-000000000004"]),
            ReadOutcome::Records { .. } => panic!("the end follows the last records"),
        }
    }

    #[test]
    fn checkpointed_positions_map_to_iterator_positions() {
        use taxi_core::checkpoint::Position;
        let seq = || "4962".to_owned();
        assert_eq!(
            resume_position(&Position::Sequence { sequence_number: seq(), sub_sequence: None }),
            Some(StartingPosition::AfterSequenceNumber(seq()))
        );
        assert_eq!(
            resume_position(&Position::Sequence { sequence_number: seq(), sub_sequence: Some(3) }),
            Some(StartingPosition::AtSequenceNumber(seq()))
        );
        assert_eq!(resume_position(&Position::Start), Some(StartingPosition::TrimHorizon));
        assert_eq!(
            resume_position(&Position::ArrivedFrom { timestamp: 1_700 }),
            Some(StartingPosition::AtTimestamp(1_700))
        );
        assert_eq!(resume_position(&Position::Finished), None);
    }
}

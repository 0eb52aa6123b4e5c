//! The producer's event loop ([`Producer`]): takes the input records as their pace allows, routes
//! each to its shard's lane (or aggregator), starts the `PutRecords` calls of the ready lanes, settles
//! their answers (acknowledging what was stored, retrying what was not) and sends the watermarks.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::aggregate::{MAX_AGGREGATED_USER_RECORD, ShardAggregator};
use super::input::{InputRecord, ReaderMsg, watermark_json};
use super::lane::{Item, Lane, Payload};
use super::stream::list_open_shards;
use super::{
    MAX_ATTEMPTS, MAX_BATCH_ENTRIES, MAX_RECORD_BYTES, ReplayError, ReplayOptions, ReplayProgress, ReplaySummary,
    WATERMARK_PARTITION_KEY,
};
use crate::pace::Pacer;
use taxi_core::event::Millis;
use taxi_core::partition::{hash_key, trip_hash_key};
use taxi_core::topology::ShardInfo;
use taxi_io::kinesis::api::{KinesisApi, KinesisError, PutEntry, PutOutcome};

/// Entries queued for sending, per open shard, before the producer stops reading (backpressure).
const MAX_PENDING: usize = 2 * MAX_BATCH_ENTRIES;

/// The result of one `PutRecords` task: the lane (shard id), the entries sent and the answer.
type CallResult = (String, Vec<Item>, Result<Vec<PutOutcome>, KinesisError>);

/// The producer's state.
pub(super) struct Producer<'a, K: KinesisApi> {
    kinesis: Arc<K>,
    stream: Arc<str>,
    options: &'a ReplayOptions,
    progress: &'a ReplayProgress,
    /// Open shards, sorted by starting hash key.
    shards: Vec<ShardInfo>,
    /// One per open shard when aggregating, else empty.
    aggregators: Vec<ShardAggregator>,
    /// The lanes by shard id: one per shard that has been routed to and still has work (or is open).
    lanes: BTreeMap<String, Lane>,
    inflight: JoinSet<CallResult>,
    /// Multiset of the event times of trips read but not yet acknowledged.
    unacked: BTreeMap<Millis, u32>,
    /// Largest event time acknowledged.
    max_acked: Option<Millis>,
    /// Paces trips by event time (`None` when sending as fast as possible).
    pacer: Option<Pacer>,
    summary: ReplaySummary,
}

/// The reader's side of the producer.
struct Input {
    rx: mpsc::Receiver<ReaderMsg>,
    current: VecDeque<InputRecord>,
    done: bool,
}

impl<'a, K: KinesisApi> Producer<'a, K> {
    /// A producer for `options.stream`, whose open shards are `shards`.
    pub(super) fn new(
        kinesis: Arc<K>,
        options: &'a ReplayOptions,
        progress: &'a ReplayProgress,
        shards: Vec<ShardInfo>,
    ) -> Producer<'a, K> {
        let mut producer = Producer {
            kinesis,
            stream: Arc::from(options.stream.as_str()),
            options,
            progress,
            shards: Vec::new(),
            aggregators: Vec::new(),
            lanes: BTreeMap::new(),
            inflight: JoinSet::new(),
            unacked: BTreeMap::new(),
            max_acked: None,
            pacer: (options.speedup > 0.0).then(|| Pacer::new(options.speedup)),
            summary: ReplaySummary::default(),
        };
        producer.set_shards(shards);
        producer
    }

    /// Replaces the open-shard list (the aggregators must be empty) and drops the idle lanes of closed shards.
    /// Entries still queued for a closed shard are sent in order: Kinesis routes them to its children by key.
    fn set_shards(&mut self, shards: Vec<ShardInfo>) {
        if self.options.aggregate {
            self.aggregators = shards.iter().map(|_| ShardAggregator::default()).collect();
        }
        self.lanes.retain(|id, lane| !lane.is_idle() || shards.iter().any(|s| s.shard_id == *id));
        self.shards = shards;
    }

    /// Index in `shards` of the open shard whose hash-key range holds `hash`.
    fn shard_index(&self, hash: u128) -> usize {
        self.shards.partition_point(|s| s.starting_hash_key <= hash).saturating_sub(1)
    }

    /// The lane of open shard `index`.
    fn lane(&mut self, index: usize) -> &mut Lane {
        self.lanes.entry(self.shards[index].shard_id.clone()).or_default()
    }

    /// The event loop: read, pace, batch, send, retry, watermark, until everything is acknowledged.
    pub(super) async fn run(&mut self, rx: mpsc::Receiver<ReaderMsg>) -> Result<ReplaySummary, ReplayError> {
        let mut input = Input { rx, current: VecDeque::new(), done: false };
        let start = Instant::now();
        let mut next_watermark = start + self.options.watermark_interval;
        let mut next_refresh = start + self.options.shard_refresh_interval;
        let mut final_watermark_queued = false;
        loop {
            let now = Instant::now();
            if now >= next_refresh {
                self.refresh_shards(now).await?;
                next_refresh = now + self.options.shard_refresh_interval;
            }
            let now = Instant::now();
            if now >= next_watermark {
                // Once every trip is acknowledged only the final watermark is left to send: more periodic ones
                // (retried, maybe) could keep the producer from ever becoming idle.
                let all_acknowledged = input.done && input.current.is_empty() && self.unacked.is_empty();
                if let Some(value) = self.watermark_value().filter(|_| !all_acknowledged) {
                    self.queue_watermarks(value, now);
                }
                next_watermark = now + self.options.watermark_interval;
            }
            let next_record_due = self.intake(&mut input, now)?;
            let input_finished = input.done && input.current.is_empty();
            self.flush_aggregators(now, input_finished);
            self.dispatch(now, input_finished);

            if input_finished && self.is_idle() {
                if final_watermark_queued || self.max_acked.is_none() {
                    break;
                }
                // Everything is acknowledged: close the event time on every shard open now.
                self.refresh_shards(now).await?;
                if let Some(value) = self.watermark_value() {
                    self.queue_watermarks(value, now);
                }
                final_watermark_queued = true;
                continue;
            }

            let mut deadline = next_watermark.min(next_refresh);
            if let Some(due) = next_record_due {
                deadline = deadline.min(due);
            }
            if self.inflight.len() < self.options.max_in_flight
                && let Some(wake) = self.lanes.values().filter_map(Lane::wake_at).min()
            {
                deadline = deadline.min(wake);
            }
            if let Some(due) = self.aggregators.iter().filter_map(ShardAggregator::due_at).min() {
                deadline = deadline.min(due);
            }
            let wants_input = !input.done && input.current.is_empty();
            tokio::select! {
                biased;
                Some(joined) = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    self.complete(joined.map_err(ReplayError::Task)?)?;
                }
                msg = input.rx.recv(), if wants_input => match msg {
                    Some(ReaderMsg::Records(records, watermarks)) => {
                        self.summary.input_watermarks_skipped += watermarks;
                        input.current.extend(records);
                    }
                    Some(ReaderMsg::End) => input.done = true,
                    Some(ReaderMsg::Failed(e)) => return Err(ReplayError::Input(e)),
                    None => return Err(ReplayError::ReaderGone),
                },
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
        Ok(std::mem::take(&mut self.summary))
    }

    /// Nothing buffered, waiting or in flight.
    fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.lanes.values().all(Lane::is_idle)
            && self.aggregators.iter().all(ShardAggregator::is_empty)
    }

    /// The watermark to send now: the oldest unacknowledged event time, else the largest acknowledged one.
    fn watermark_value(&self) -> Option<Millis> {
        self.unacked.first_key_value().map(|(&t, _)| t).or(self.max_acked)
    }

    /// Queues a watermark event for every open shard, ahead of the records waiting in its lane.
    fn queue_watermarks(&mut self, value: Millis, now: Instant) {
        let data = Bytes::from(watermark_json(value));
        for index in 0..self.shards.len() {
            let entry = PutEntry {
                partition_key: WATERMARK_PARTITION_KEY.to_owned(),
                explicit_hash_key: Some(self.shards[index].starting_hash_key.to_string()),
                data: data.clone(),
            };
            self.lane(index).push_urgent(Item::new(entry, Payload::Watermark), now);
        }
        self.progress.watermark.store(value, Ordering::Relaxed);
    }

    /// Re-reads the shard list; when the open shards changed, flushes the aggregators and re-routes.
    async fn refresh_shards(&mut self, now: Instant) -> Result<(), ReplayError> {
        let shards = match list_open_shards(self.kinesis.as_ref(), &self.stream).await {
            Ok(shards) => shards,
            Err(ReplayError::ListShards { source, .. }) if source.is_retryable() => {
                tracing::warn!(error = %source, "failed to refresh the shard list; keeping the previous one");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if shards.is_empty() || shards == self.shards {
            return Ok(());
        }
        tracing::info!(open_shards = shards.len(), "the open shards of the stream changed");
        self.flush_aggregators(now, true);
        self.set_shards(shards);
        Ok(())
    }

    /// Entries queued in the lanes.
    fn queued(&self) -> usize {
        self.lanes.values().map(Lane::queued).sum()
    }

    /// Accepts the input records that are due, while there is room; returns when the next one is due, if it is
    /// waiting for its time.
    fn intake(&mut self, input: &mut Input, now: Instant) -> Result<Option<Instant>, ReplayError> {
        let room = MAX_PENDING * self.shards.len();
        while self.queued() < room {
            let Some(record) = input.current.front() else {
                return Ok(None);
            };
            if let InputRecord::Trip { event_time, .. } = record {
                let due = self.due(*event_time, now);
                if due > now {
                    return Ok(Some(due));
                }
            }
            if let Some(record) = input.current.pop_front() {
                self.accept(record, now)?;
            }
        }
        Ok(None)
    }

    /// When a trip with this event time may be sent.
    fn due(&mut self, event_time: Millis, now: Instant) -> Instant {
        self.pacer.as_mut().map_or(now, |pacer| pacer.due(event_time, now))
    }

    /// Takes one input record into the aggregators or the lanes.
    fn accept(&mut self, record: InputRecord, now: Instant) -> Result<(), ReplayError> {
        match record {
            InputRecord::Trip { trip_id, event_time, data } => {
                let partition_key = trip_id.to_string();
                let bytes = partition_key.len() + data.len();
                if bytes > MAX_RECORD_BYTES {
                    return Err(ReplayError::RecordTooLarge { trip_id, bytes });
                }
                *self.unacked.entry(event_time).or_insert(0) += 1;
                self.progress.event_time.fetch_max(event_time, Ordering::Relaxed);
                let hash = trip_hash_key(trip_id);
                self.route(partition_key, hash, data, Payload::Trip(event_time), now);
            }
            InputRecord::Invalid { record_no, data } => {
                let partition_key = record_no.to_string();
                if partition_key.len() + data.len() > MAX_RECORD_BYTES {
                    tracing::warn!(record_no, bytes = data.len(), "invalid record too large for Kinesis; not sent");
                    self.summary.invalid_skipped += 1;
                    return Ok(());
                }
                let hash = hash_key(partition_key.as_bytes());
                self.route(partition_key, hash, data, Payload::Invalid, now);
            }
        }
        Ok(())
    }

    /// Sends a user record plain (into the lane of its shard) or into its shard's aggregator.
    fn route(&mut self, partition_key: String, hash: u128, data: Bytes, payload: Payload, now: Instant) {
        let index = self.shard_index(hash);
        let shard = match self.aggregators.get_mut(index) {
            Some(shard) if partition_key.len() + data.len() <= MAX_AGGREGATED_USER_RECORD => shard,
            _ => {
                let entry = PutEntry { partition_key, explicit_hash_key: None, data };
                self.lane(index).push_back(Item::new(entry, payload), now);
                return;
            }
        };
        if let Some(full) = shard.add(&partition_key, &data, payload, now) {
            self.lane(index).push_back(full, now);
        }
    }

    /// Moves the aggregates that have waited [`LINGER`](super::LINGER) (or all of them) into their shards' lanes.
    fn flush_aggregators(&mut self, now: Instant, all: bool) {
        let mut flushed = Vec::new();
        for (index, shard) in self.aggregators.iter_mut().enumerate() {
            if let Some(item) = shard.flush(now, all) {
                flushed.push((index, item));
            }
        }
        for (index, item) in flushed {
            self.lane(index).push_back(item, now);
        }
    }

    /// Starts a call for every lane that is ready, longest-waiting first, while a call slot is free.
    fn dispatch(&mut self, now: Instant, input_finished: bool) {
        let free = self.options.max_in_flight.saturating_sub(self.inflight.len());
        if free == 0 {
            return;
        }
        let mut ready: Vec<(Option<Instant>, String)> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.is_ready(now, input_finished))
            .map(|(id, lane)| (lane.waiting_since(), id.clone()))
            .collect();
        ready.sort_unstable();
        for (_, id) in ready.into_iter().take(free) {
            if let Some(lane) = self.lanes.get_mut(&id) {
                let batch = lane.take_batch();
                self.send(id, batch);
            }
        }
    }

    /// Starts one `PutRecords` call for `lane`.
    fn send(&mut self, lane: String, mut batch: Vec<Item>) {
        let mut first_sends = 0;
        for item in &mut batch {
            if item.attempts == 0 {
                first_sends += item.payload.user_records();
            }
            item.attempts += 1;
        }
        self.progress.sent.fetch_add(first_sends, Ordering::Relaxed);
        let entries: Vec<PutEntry> = batch.iter().map(|item| item.entry.clone()).collect();
        let kinesis = Arc::clone(&self.kinesis);
        let stream = Arc::clone(&self.stream);
        self.inflight.spawn(async move {
            let result = kinesis.put_records(&stream, entries).await;
            (lane, batch, result)
        });
    }

    /// Handles the result of a `PutRecords` call.
    fn complete(&mut self, (lane, items, result): CallResult) -> Result<(), ReplayError> {
        if let Some(lane) = self.lanes.get_mut(&lane) {
            let all_stored =
                matches!(&result, Ok(outcomes) if outcomes.iter().all(|o| matches!(o, PutOutcome::Stored { .. })));
            lane.call_answered(all_stored);
        }
        match result {
            Ok(outcomes) if outcomes.len() == items.len() => {
                let mut failed = Vec::new();
                let mut throttled = false;
                let mut last_code = String::new();
                for (item, outcome) in items.into_iter().zip(outcomes) {
                    match outcome {
                        PutOutcome::Stored { .. } => self.acknowledge(item),
                        PutOutcome::Failed { code } => {
                            if is_permanent_entry_error(&code) {
                                return Err(self.rejected(code, item.attempts));
                            }
                            throttled |= code == "ProvisionedThroughputExceededException";
                            last_code = code;
                            failed.push(item);
                        }
                    }
                }
                if throttled {
                    self.count_throttled();
                }
                self.schedule_retry(lane, failed, &last_code)
            }
            Ok(outcomes) => Err(ReplayError::ResultMismatch {
                stream: self.stream.to_string(),
                entries: items.len(),
                results: outcomes.len(),
            }),
            Err(e) if e.is_retryable() => {
                if matches!(e, KinesisError::Throttled { .. }) {
                    self.count_throttled();
                }
                tracing::debug!(error = %e, entries = items.len(), "PutRecords failed; retrying");
                self.schedule_retry(lane, items, &e.to_string())
            }
            Err(source) => Err(ReplayError::Put { stream: self.stream.to_string(), source }),
        }
    }

    fn count_throttled(&mut self) {
        self.summary.throttled_calls += 1;
        self.progress.throttled.fetch_add(1, Ordering::Relaxed);
    }

    fn rejected(&self, code: String, attempts: u32) -> ReplayError {
        ReplayError::EntryRejected { stream: self.stream.to_string(), code, attempts }
    }

    /// Puts failed entries back at the head of their lane, which sends nothing until their back-off has passed,
    /// or gives up on an entry out of attempts.
    fn schedule_retry(&mut self, lane: String, items: Vec<Item>, reason: &str) -> Result<(), ReplayError> {
        let Some(attempts) = items.iter().map(|item| item.attempts).max() else {
            return Ok(());
        };
        if attempts >= MAX_ATTEMPTS {
            return Err(self.rejected(reason.to_owned(), attempts));
        }
        let count = items.len() as u64;
        self.summary.retried_entries += count;
        self.progress.retried.fetch_add(count, Ordering::Relaxed);
        self.lanes.entry(lane).or_default().requeue(items, Instant::now());
        Ok(())
    }

    /// Accounts for an entry Kinesis stored.
    fn acknowledge(&mut self, item: Item) {
        let records = item.payload.user_records();
        self.summary.records_sent += records;
        self.progress.acknowledged.fetch_add(records, Ordering::Relaxed);
        match item.payload {
            Payload::Trip(t) => self.acknowledge_trip(t),
            Payload::Invalid => self.summary.invalid += 1,
            Payload::Watermark => self.summary.watermarks_sent += 1,
            Payload::Aggregate { event_times, invalid } => {
                self.summary.aggregated_records += 1;
                self.summary.invalid += invalid;
                for t in event_times {
                    self.acknowledge_trip(t);
                }
            }
        }
    }

    fn acknowledge_trip(&mut self, t: Millis) {
        self.summary.trips += 1;
        if let Some(count) = self.unacked.get_mut(&t) {
            *count -= 1;
            if *count == 0 {
                self.unacked.remove(&t);
            }
        }
        self.max_acked = Some(self.max_acked.map_or(t, |m| m.max(t)));
        self.summary.first_event_time = Some(self.summary.first_event_time.map_or(t, |m| m.min(t)));
        self.summary.last_event_time = Some(self.summary.last_event_time.map_or(t, |m| m.max(t)));
    }
}

/// Per-entry errors that retrying cannot fix (KMS key problems; throttling aside).
fn is_permanent_entry_error(code: &str) -> bool {
    code.starts_with("KMS") && code != "KMSThrottlingException"
}

//! The lanes: the entries bound for one shard, sent in order, one `PutRecords` call at a time,
//! in batches within Kinesis' limits, with failed entries retried at the head of their lane
//! after a back-off. Also what an entry carries ([`Item`], [`Payload`]).

use std::collections::VecDeque;

use tokio::time::Instant;

use super::{LINGER, MAX_BATCH_BYTES, MAX_BATCH_ENTRIES, MAX_RECORD_BYTES, RETRY};
use taxi_core::event::Millis;
use taxi_io::kinesis::api::PutEntry;
use taxi_io::retry::Backoff;

/// What an entry carries, for acknowledgement accounting.
#[derive(Debug)]
pub(super) enum Payload {
    /// A trip with this event time.
    Trip(Millis),
    /// An invalid line.
    Invalid,
    /// A watermark event.
    Watermark,
    /// A KPL aggregate.
    Aggregate {
        /// Event times of its trips.
        event_times: Vec<Millis>,
        /// Its invalid lines.
        invalid: u64,
    },
}

impl Payload {
    /// User records it carries.
    pub(super) fn user_records(&self) -> u64 {
        match self {
            Payload::Trip(_) | Payload::Invalid | Payload::Watermark => 1,
            Payload::Aggregate { event_times, invalid } => event_times.len() as u64 + invalid,
        }
    }
}

/// One `PutRecords` entry and its bookkeeping.
#[derive(Debug)]
pub(super) struct Item {
    /// What is sent.
    pub(super) entry: PutEntry,
    /// What it carries.
    pub(super) payload: Payload,
    /// Sends so far.
    pub(super) attempts: u32,
}

impl Item {
    /// An entry not sent yet.
    pub(super) fn new(entry: PutEntry, payload: Payload) -> Item {
        Item { entry, payload, attempts: 0 }
    }

    /// Bytes it adds to a batch.
    pub(super) fn bytes(&self) -> usize {
        entry_bytes(&self.entry)
    }
}

/// Bytes an entry counts against the batch limit (keys and data).
pub(super) fn entry_bytes(entry: &PutEntry) -> usize {
    entry.partition_key.len() + entry.explicit_hash_key.as_ref().map_or(0, String::len) + entry.data.len()
}

#[derive(Debug)]
pub(super) struct Lane {
    /// Entries to send, in order: the urgent ones (retries, then watermarks) first.
    queue: VecDeque<Item>,
    /// Their bytes, as counted against the batch limit.
    bytes: usize,
    /// When `queue` last went from empty to non-empty.
    since: Option<Instant>,
    /// Entries at the head of `queue` to send without waiting for a full batch.
    urgent: usize,
    /// Whether a call of this lane is in flight.
    in_flight: bool,
    /// The failed entries at the head of `queue` wait for their back-off until then: nothing is sent before.
    retry_at: Option<Instant>,
    /// Counts the calls in a row that had entries to retry: the next back-off grows with them.
    backoff: Backoff,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            queue: VecDeque::new(),
            bytes: 0,
            since: None,
            urgent: 0,
            in_flight: false,
            retry_at: None,
            backoff: Backoff::new(RETRY),
        }
    }
}

impl Lane {
    /// Appends a fresh entry.
    pub(super) fn push_back(&mut self, item: Item, now: Instant) {
        self.bytes += item.bytes();
        self.queue.push_back(item);
        self.since.get_or_insert(now);
    }

    /// Queues a watermark ahead of the ordinary entries (behind the retries and watermarks already waiting).
    pub(super) fn push_urgent(&mut self, item: Item, now: Instant) {
        self.bytes += item.bytes();
        self.queue.insert(self.urgent, item);
        self.urgent += 1;
        self.since.get_or_insert(now);
    }

    /// Puts the failed entries of the last call back at the head, in their order, to be sent after a back-off
    /// that grows with the calls in a row that failed.
    pub(super) fn requeue(&mut self, items: Vec<Item>, now: Instant) {
        let retry_at = now + self.backoff.next_delay();
        for item in items.into_iter().rev() {
            self.bytes += item.bytes();
            self.queue.push_front(item);
            self.urgent += 1;
        }
        self.since.get_or_insert(now);
        self.retry_at = Some(retry_at);
    }

    /// Nothing queued or in flight.
    pub(super) fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.in_flight
    }

    /// Whether the queue holds a full batch (or so much that the next record might not fit).
    fn is_full(&self) -> bool {
        self.queue.len() >= MAX_BATCH_ENTRIES || self.bytes > MAX_BATCH_BYTES - MAX_RECORD_BYTES
    }

    /// Whether the lane may, and should, start a call now.
    pub(super) fn is_ready(&self, now: Instant, input_finished: bool) -> bool {
        !self.in_flight
            && !self.queue.is_empty()
            && self.retry_at.is_none_or(|at| at <= now)
            && (self.urgent > 0
                || input_finished
                || self.is_full()
                || self.since.is_some_and(|since| since + LINGER <= now))
    }

    /// When the lane becomes ready by itself (back-off over or linger passed), unless it has a call in flight.
    pub(super) fn wake_at(&self) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        self.retry_at.or_else(|| self.since.map(|since| since + LINGER))
    }

    /// Entries queued.
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// When the queue last went from empty to non-empty (`None` when empty): the longest-waiting lane
    /// sends first.
    pub(super) fn waiting_since(&self) -> Option<Instant> {
        self.since
    }

    /// The lane's call has been answered; `all_stored` when Kinesis stored every entry of it, which
    /// ends a run of failed calls.
    pub(super) fn call_answered(&mut self, all_stored: bool) {
        self.in_flight = false;
        if all_stored {
            self.backoff.reset();
        }
    }

    /// Takes the next batch (≤ [`MAX_BATCH_ENTRIES`] entries, ≤ [`MAX_BATCH_BYTES`]) and marks the lane in flight.
    pub(super) fn take_batch(&mut self) -> Vec<Item> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(item) = self.queue.front() {
            let size = item.bytes();
            if batch.len() == MAX_BATCH_ENTRIES || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES) {
                break;
            }
            bytes += size;
            if let Some(item) = self.queue.pop_front() {
                batch.push(item);
            }
        }
        self.bytes -= bytes;
        self.urgent = self.urgent.saturating_sub(batch.len());
        if self.queue.is_empty() {
            self.since = None;
        }
        self.retry_at = None;
        self.in_flight = true;
        batch
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::replay::fake::{Fault, MemoryKinesis, T0, even_shards, options, trip_line, write_lines};
    use crate::replay::{ReplayProgress, replay};

    /// How full a batch gets is decided by the lane alone, whatever the timing: with 6 MiB
    /// waiting, a batch takes records up to the 5 MiB limit.
    #[test]
    fn a_lane_fills_its_batch_up_to_the_byte_limit() {
        let now = Instant::now();
        let mut lane = Lane::default();
        for id in 0..300_u64 {
            let entry = PutEntry {
                partition_key: id.to_string(),
                explicit_hash_key: None,
                data: Bytes::from(vec![b'x'; 20_000]),
            };
            lane.push_back(Item { entry, payload: Payload::Trip(0), attempts: 0 }, now);
        }
        let batch = lane.take_batch();
        let bytes: usize = batch.iter().map(Item::bytes).sum();
        assert!(bytes <= MAX_BATCH_BYTES && batch.len() <= MAX_BATCH_ENTRIES);
        assert!(bytes > MAX_BATCH_BYTES - 20_100, "the batch stops only when the next record would not fit: {bytes}");
        assert_eq!(lane.queue.len() + batch.len(), 300, "nothing is lost between batch and lane");
        assert!(lane.in_flight);
    }

    #[tokio::test]
    async fn batches_respect_the_entry_and_byte_limits() {
        let small: Vec<String> = (1..=2100).map(|id| trip_line(id, T0 + i64::try_from(id).expect("id"), 0)).collect();
        let file = write_lines(&small);
        let fake = Arc::new(MemoryKinesis::new(even_shards(2, 0)));
        replay(Arc::clone(&fake), &options(&file, 0.0), &ReplayProgress::new()).await.expect("replay");
        let max_entries = fake.stream().put_calls.iter().map(|c| c.0).max();
        assert_eq!(max_entries, Some(MAX_BATCH_ENTRIES));

        let big: Vec<String> = (1..=300).map(|id| trip_line(id, T0 + i64::try_from(id).expect("id"), 20_000)).collect();
        let file = write_lines(&big);
        // One shard, so that its lane gets all 6 MiB: more than a batch holds.
        let fake =
            Arc::new(MemoryKinesis::new(even_shards(1, 0)).with_put_faults(|call| {
                if call % 3 == 1 { Fault::Entries { from: 10, count: 100 } } else { Fault::None }
            }));
        let mut opts = options(&file, 0.0);
        // Watermarks are sent at once, with whatever is waiting: keep them out of the way here.
        opts.watermark_interval = Duration::from_secs(10);
        let summary = replay(Arc::clone(&fake), &opts, &ReplayProgress::new()).await.expect("replay");
        assert_eq!(summary.trips, 300);
        let st = fake.stream();
        assert!(
            st.put_calls.iter().all(|&(n, b)| n <= MAX_BATCH_ENTRIES && b <= MAX_BATCH_BYTES),
            "{:?}",
            st.put_calls
        );
    }
}

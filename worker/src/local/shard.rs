//! The shard stage: one task per shard runs its events through a [`ShardProcessor`] and tells the
//! merge what closed, and an [`IdleClock`] decides, by the input's event time, when a shard the input
//! passes over counts as idle.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::Progress;
use super::merge::MergeMsg;
use taxi_core::checkpoint::{Owner, Position, ShardCheckpoint};
use taxi_core::config::EngineConfig;
use taxi_core::event::{Event, Millis};
use taxi_core::shard::ShardProcessor;

/// What the dispatcher (and the checkpoint writer) tell a shard task.
pub(super) enum ShardMsg {
    /// Its next events, in input order.
    Events(Vec<Event>),
    /// The input moved on by the idle timeout without reaching this shard.
    Idle,
    /// Its checkpoint at the barrier after `records` input records.
    Snapshot { records: u64, reply: oneshot::Sender<ShardCheckpoint> },
    /// The input ended: close every window.
    Finish,
}

/// Decides when a shard is idle by the input's progress, not the wall clock: a shard is idle once
/// the input's event time has moved on by the idle timeout since it last received anything. A
/// slow or stalled input therefore changes no result, and the shard fed last is never idle, so
/// some shard always holds the merged watermark.
#[derive(Debug)]
pub(super) struct IdleClock {
    /// The idle timeout in event-time milliseconds; 0 = shards are never idle.
    timeout_ms: Millis,
    /// The input's largest event time so far.
    input_time: Option<Millis>,
    /// Per shard: the input's event time when it was last fed, and whether it was declared idle.
    shards: Vec<(Option<Millis>, bool)>,
}

impl IdleClock {
    /// A clock for `shards` shards, none fed yet.
    pub(super) fn new(timeout_ms: Millis, shards: usize) -> IdleClock {
        IdleClock { timeout_ms, input_time: None, shards: vec![(None, false); shards] }
    }

    /// Records one dispatched batch (`fed[i]`: shard `i` got events) and returns the shards that
    /// just became idle.
    pub(super) fn after_batch(&mut self, fed: &[bool], max_event_time: Option<Millis>) -> Vec<usize> {
        self.input_time = self.input_time.max(max_event_time);
        let Some(now) = self.input_time else {
            return Vec::new();
        };
        let mut newly_idle = Vec::new();
        for (i, ((last_fed, idle), fed)) in self.shards.iter_mut().zip(fed).enumerate() {
            if *fed {
                *last_fed = Some(now);
                *idle = false;
                continue;
            }
            // A shard never fed is measured from the input's first event time.
            let since = *last_fed.get_or_insert(now);
            if self.timeout_ms > 0 && !*idle && now.saturating_sub(since) >= self.timeout_ms {
                *idle = true;
                newly_idle.push(i);
            }
        }
        newly_idle
    }
}

/// One shard's processing loop.
pub(super) struct ShardTask {
    /// Its position among the shards.
    pub(super) index: usize,
    pub(super) shard_id: String,
    pub(super) processor: ShardProcessor,
    pub(super) config: Arc<EngineConfig>,
    pub(super) merge: mpsc::Sender<MergeMsg>,
    /// Who its checkpoints say owns the shard.
    pub(super) owner: Owner,
    pub(super) progress: Arc<Progress>,
}

impl ShardTask {
    /// Sends to the merge; `false` when the merge is gone (the run is ending).
    async fn tell_merge(&self, msg: MergeMsg) -> bool {
        self.merge.send(msg).await.is_ok()
    }

    /// Processes what `inbox` brings until the input ends or the run stops.
    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<ShardMsg>) {
        let mut idle = false;
        loop {
            let Some(msg) = inbox.recv().await else {
                // Stopped before the end of the input: report the counts, keep the windows open
                // (the checkpoint holds them).
                let counters = self.processor.counters().clone();
                self.tell_merge(MergeMsg::Stopped { counters }).await;
                return;
            };
            match msg {
                ShardMsg::Idle => {
                    // Passed over by the input for the idle timeout: stop holding merged windows
                    // open until events arrive again.
                    idle = true;
                    if !self.tell_merge(MergeMsg::Idle { shard: self.index, idle: true }).await {
                        return;
                    }
                }
                ShardMsg::Events(events) => {
                    if std::mem::take(&mut idle)
                        && !self.tell_merge(MergeMsg::Idle { shard: self.index, idle: false }).await
                    {
                        return;
                    }
                    let before = self.processor.watermark();
                    let counted = (self.processor.counters().outside_region, self.processor.counters().late);
                    for event in &events {
                        self.processor.process(event, None);
                    }
                    // The live figures; the run's summary adds up the shards' own counters at the end.
                    let counters = self.processor.counters();
                    self.progress.outside_region.fetch_add(counters.outside_region - counted.0, Ordering::Relaxed);
                    self.progress.late.fetch_add(counters.late - counted.1, Ordering::Relaxed);
                    let closed = self.processor.take_closed();
                    let watermark = self.processor.watermark();
                    if (!closed.is_empty() || watermark != before)
                        && !self.tell_merge(MergeMsg::Progress { shard: self.index, closed, watermark }).await
                    {
                        return;
                    }
                }
                ShardMsg::Snapshot { records, reply } => {
                    let position = Position::InputRecord { record: records };
                    let _ = reply.send(ShardCheckpoint::capture(
                        &self.shard_id,
                        position,
                        &self.owner,
                        &self.processor,
                        &self.config,
                    ));
                }
                ShardMsg::Finish => {
                    let closed = self.processor.take_all();
                    let counters = self.processor.counters().clone();
                    self.tell_merge(MergeMsg::Finished { shard: self.index, closed, counters }).await;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Millis = 60_000;

    #[test]
    fn a_shard_is_idle_once_the_input_moved_on_by_the_timeout_without_it() {
        let mut clock = IdleClock::new(MIN, 2);
        assert!(clock.after_batch(&[true, true], Some(0)).is_empty());
        assert!(clock.after_batch(&[true, false], Some(MIN - 1)).is_empty());
        assert_eq!(clock.after_batch(&[true, false], Some(MIN)), vec![1]);
        // Declared once, until it is fed again.
        assert!(clock.after_batch(&[true, false], Some(3 * MIN)).is_empty());
        assert!(clock.after_batch(&[false, true], Some(3 * MIN)).is_empty());
        assert!(clock.after_batch(&[false, true], Some(3 * MIN + MIN / 2)).is_empty(), "shard 0 was fed at 3 min");
        assert_eq!(clock.after_batch(&[false, true], Some(4 * MIN)), vec![0]);
    }

    #[test]
    fn a_stalled_input_or_batches_without_time_make_no_shard_idle() {
        let mut clock = IdleClock::new(MIN, 3);
        assert!(clock.after_batch(&[false, false, false], None).is_empty(), "no event time yet");
        assert!(clock.after_batch(&[true, false, false], Some(10 * MIN)).is_empty());
        // However long the pause between batches, only event time counts.
        assert!(clock.after_batch(&[false, false, false], None).is_empty());
        assert_eq!(clock.after_batch(&[true, false, false], Some(11 * MIN)), vec![1, 2]);
        // An older batch (disorder) does not move the input's time back.
        assert!(clock.after_batch(&[false, true, true], Some(5 * MIN)).is_empty());
    }

    #[test]
    fn a_zero_timeout_never_declares_idleness() {
        let mut clock = IdleClock::new(0, 2);
        clock.after_batch(&[true, false], Some(0));
        assert!(clock.after_batch(&[true, false], Some(1_000 * MIN)).is_empty());
    }
}

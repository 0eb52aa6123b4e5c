//! The merge: sums per-shard partials into merged windows and declares a merged
//! window final when every shard that can contribute has closed it.

use std::sync::Arc;

use crate::analysis::{Aggregates, ClosedWindows, MergedResult, final_results};
use crate::config::EngineConfig;
use crate::event::Millis;

/// Progress of one shard as the merge sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardProgress {
    /// The shard's watermark, `None` before its first observation.
    pub watermark: Option<Millis>,
    /// Idle for the idle timeout: it does not hold merged windows open.
    pub idle: bool,
    /// Read to the end: it will send nothing more.
    pub finished: bool,
}

/// Sums partial windows from all shards and emits final merged results.
#[derive(Debug)]
pub struct Merger {
    config: Arc<EngineConfig>,
    shards: Vec<ShardProgress>,
    pending: Aggregates,
    /// Windows ending at or before this instant (plus allowed lateness) have been emitted.
    emitted_up_to: Option<Millis>,
    /// Trips in partials that arrived after their merged window was already final.
    late_trips: u64,
}

impl Merger {
    /// A merge over `shards` shards.
    pub fn new(config: Arc<EngineConfig>, shards: usize) -> Merger {
        let pending = Aggregates::new(&config);
        Merger { config, shards: vec![ShardProgress::default(); shards], pending, emitted_up_to: None, late_trips: 0 }
    }

    /// Trips dropped because their partial came after the merged window was final (only possible
    /// when a shard was idle and woke up).
    pub fn late_trips(&self) -> u64 {
        self.late_trips
    }

    /// Progress of every shard.
    pub fn progress(&self) -> &[ShardProgress] {
        &self.shards
    }

    /// Adds windows a shard closed. Partials for windows already emitted count as late.
    pub fn add(&mut self, closed: &ClosedWindows) {
        match self.emitted_up_to {
            None => self.pending.combine(closed),
            Some(cutoff) => {
                let mut accepted = ClosedWindows::default();
                let hot = self.pending.hot_spots.windows();
                for (start, cells) in &closed.hot_spots {
                    if hot.end_of(*start) <= cutoff {
                        self.late_trips += cells.values().sum::<u64>();
                    } else {
                        accepted.hot_spots.push((*start, cells.clone()));
                    }
                }
                let airport = self.pending.airport_trips.windows();
                for (start, keys) in &closed.airport_trips {
                    if airport.end_of(*start) <= cutoff {
                        self.late_trips += keys.values().map(|a| a.trips).sum::<u64>();
                    } else {
                        accepted.airport_trips.push((*start, keys.clone()));
                    }
                }
                self.pending.combine(&accepted);
            }
        }
    }

    /// Records a shard's new watermark.
    pub fn set_watermark(&mut self, shard: usize, watermark: Option<Millis>) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.watermark = watermark.max(s.watermark);
        }
    }

    /// Marks a shard idle or active again.
    pub fn set_idle(&mut self, shard: usize, idle: bool) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.idle = idle;
        }
    }

    /// Marks a shard finished: it no longer holds windows open.
    pub fn set_finished(&mut self, shard: usize) {
        if let Some(s) = self.shards.get_mut(shard) {
            s.finished = true;
        }
    }

    /// The merged watermark: the minimum over shards that can still contribute. Idle shards do
    /// not count unless every unfinished shard is idle (then the most advanced one leads).
    /// `Some(Millis::MAX)` once every shard finished.
    pub fn merged_watermark(&self) -> Option<Millis> {
        let live: Vec<&ShardProgress> = self.shards.iter().filter(|s| !s.finished).collect();
        if live.is_empty() {
            return Some(Millis::MAX);
        }
        let active: Vec<&ShardProgress> = live.iter().copied().filter(|s| !s.idle).collect();
        if active.is_empty() {
            return live.iter().filter_map(|s| s.watermark).max();
        }
        // A shard without a watermark yet holds everything open.
        active.iter().map(|s| s.watermark).collect::<Option<Vec<_>>>()?.into_iter().min()
    }

    /// Emits the merged windows that became final, sorted in output order.
    pub fn take_final(&mut self) -> Vec<MergedResult> {
        let Some(watermark) = self.merged_watermark() else {
            return Vec::new();
        };
        let cutoff = watermark.saturating_sub(self.config.event_time.allowed_lateness_ms);
        let closed = self.pending.take_ended_by(cutoff);
        if self.emitted_up_to.is_none_or(|e| cutoff > e) {
            self.emitted_up_to = Some(cutoff);
        }
        final_results(&self.config, &closed)
    }

    /// The merged windows not yet final, for checkpoints.
    pub fn pending(&self) -> &Aggregates {
        &self.pending
    }

    /// Restores pending windows and the late count from a checkpoint.
    pub fn restore(&mut self, pending: Aggregates, emitted_up_to: Option<Millis>, late_trips: u64) {
        self.pending = pending;
        self.emitted_up_to = emitted_up_to;
        self.late_trips = late_trips;
    }

    /// The emission frontier, for checkpoints.
    pub fn emitted_up_to(&self) -> Option<Millis> {
        self.emitted_up_to
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, GeoPoint, Trip};
    use crate::shard::ShardProcessor;

    const MIN: Millis = 60_000;

    fn trip(id: u64, dropoff: Millis) -> Event {
        let p = GeoPoint { lat: 40.7580, lon: -73.9855 };
        Event::Trip(Trip { trip_id: id, pickup_time: dropoff - MIN, dropoff_time: dropoff, pickup: p, dropoff: p })
    }

    fn setup(shards: usize) -> (Arc<EngineConfig>, Vec<ShardProcessor>, Merger) {
        let config = Arc::new(EngineConfig::default());
        let processors = (0..shards).map(|_| ShardProcessor::new(config.clone())).collect();
        (config.clone(), processors, Merger::new(config, shards))
    }

    fn feed(merger: &mut Merger, index: usize, shard: &mut ShardProcessor, event: Event) {
        shard.process(&event, None);
        merger.add(&shard.take_closed());
        merger.set_watermark(index, shard.watermark());
    }

    fn counts(results: &[MergedResult]) -> Vec<u64> {
        results
            .iter()
            .map(|r| match r {
                MergedResult::HotSpot { pickup_count, .. } => *pickup_count,
                MergedResult::AirportTrip { trip_count, .. } => *trip_count,
            })
            .collect()
    }

    #[test]
    fn a_window_is_final_only_when_every_shard_closed_it() {
        let (_, mut shards, mut merger) = setup(2);
        let (a, b) = shards.split_at_mut(1);
        feed(&mut merger, 0, &mut a[0], trip(1, 5 * MIN));
        feed(&mut merger, 1, &mut b[0], trip(2, 6 * MIN));
        // Shard 0 moves past the window; shard 1 has not yet.
        feed(&mut merger, 0, &mut a[0], trip(3, 20 * MIN));
        assert!(merger.take_final().is_empty());
        feed(&mut merger, 1, &mut b[0], trip(4, 20 * MIN));
        // The threshold (2) applies to the merged total: 1 pickup on each shard.
        assert_eq!(counts(&merger.take_final()), vec![2]);
    }

    #[test]
    fn idle_shards_do_not_hold_windows_open_and_their_stale_partials_count_as_late() {
        let (_, mut shards, mut merger) = setup(2);
        let (a, b) = shards.split_at_mut(1);
        feed(&mut merger, 1, &mut b[0], trip(1, 5 * MIN));
        feed(&mut merger, 0, &mut a[0], trip(2, 5 * MIN));
        feed(&mut merger, 0, &mut a[0], trip(3, 5 * MIN));
        feed(&mut merger, 0, &mut a[0], trip(4, 30 * MIN));
        assert!(merger.take_final().is_empty(), "shard 1 holds the window");
        merger.set_idle(1, true);
        assert_eq!(counts(&merger.take_final()), vec![2]);
        // Shard 1 wakes up and closes its window: its pickup arrives after the merged window was final.
        merger.set_idle(1, false);
        feed(&mut merger, 1, &mut b[0], trip(5, 40 * MIN));
        assert_eq!(merger.late_trips(), 1);
        assert!(merger.take_final().iter().all(|r| r.window_start() >= 30 * MIN));
    }

    #[test]
    fn finished_shards_release_everything() {
        let (_, mut shards, mut merger) = setup(2);
        shards[0].process(&trip(1, 5 * MIN), None);
        shards[0].process(&trip(2, 5 * MIN), None);
        merger.add(&shards[0].take_all());
        merger.set_finished(0);
        assert!(merger.take_final().is_empty(), "shard 1 has not reported");
        merger.set_finished(1);
        assert_eq!(merger.merged_watermark(), Some(Millis::MAX));
        assert_eq!(counts(&merger.take_final()), vec![2]);
    }
}

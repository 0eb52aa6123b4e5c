//! Per-shard event-time processing: one [`ShardProcessor`] owns a shard's watermark,
//! its open windows and its counters. It is pure: the caller feeds it records and decides when to
//! emit what it closed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::analysis::{Aggregates, AirportKey, ClosedWindows};
use crate::config::{EngineConfig, WatermarkStrategy};
use crate::dedupe::SeenTrips;
use crate::event::{Event, InvalidReason, Millis, Trip};
use crate::geo::{Geohash, first_match};

/// Record counts of one shard (or, summed, of a run).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Records seen, valid or not.
    pub records: u64,
    /// Valid trips.
    pub trips: u64,
    /// Watermark events.
    pub watermarks: u64,
    /// Invalid records, by [`InvalidReason::index`]. Checkpoints written before a reason was added
    /// hold a shorter list; the missing counts read as zero.
    #[serde(deserialize_with = "invalid_counts")]
    pub invalid: [u64; InvalidReason::ALL.len()],
    /// Trips with pickup or dropoff outside the region.
    pub outside_region: u64,
    /// Trips that arrived after their window closed.
    pub late: u64,
    /// Trips whose id this shard had already counted in the same window (a retried put).
    #[serde(default)]
    pub duplicates: u64,
}

impl Counters {
    /// All invalid records.
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().sum()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Counters) {
        self.records += other.records;
        self.trips += other.trips;
        self.watermarks += other.watermarks;
        for (a, b) in self.invalid.iter_mut().zip(other.invalid) {
            *a += b;
        }
        self.outside_region += other.outside_region;
        self.late += other.late;
        self.duplicates += other.duplicates;
    }

    /// What was counted since `earlier` (a previous copy of these counters).
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut invalid = self.invalid;
        for (n, before) in invalid.iter_mut().zip(earlier.invalid) {
            *n = n.saturating_sub(before);
        }
        Counters {
            records: self.records.saturating_sub(earlier.records),
            trips: self.trips.saturating_sub(earlier.trips),
            watermarks: self.watermarks.saturating_sub(earlier.watermarks),
            invalid,
            outside_region: self.outside_region.saturating_sub(earlier.outside_region),
            late: self.late.saturating_sub(earlier.late),
            duplicates: self.duplicates.saturating_sub(earlier.duplicates),
        }
    }

    /// Counts one invalid record.
    pub fn count_invalid(&mut self, reason: InvalidReason) {
        self.records += 1;
        self.invalid[reason.index()] += 1;
    }
}

/// Reads the per-reason invalid counts, accepting the shorter lists of older checkpoints.
fn invalid_counts<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<[u64; InvalidReason::ALL.len()], D::Error> {
    let listed = Vec::<u64>::deserialize(deserializer)?;
    let mut counts = [0; InvalidReason::ALL.len()];
    if listed.len() > counts.len() {
        return Err(serde::de::Error::invalid_length(listed.len(), &"at most one count per invalid reason"));
    }
    counts[..listed.len()].copy_from_slice(&listed);
    Ok(counts)
}

/// What happened to a trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripOutcome {
    /// Added to the open windows.
    Aggregated,
    /// Pickup or dropoff outside the region.
    OutsideRegion,
    /// Its window had already closed on this shard.
    Late,
    /// Its id was already counted in its window on this shard.
    Duplicate,
}

/// The watermark of one shard: never decreasing, `None` until the first observation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkState {
    /// Current watermark.
    pub watermark: Option<Millis>,
    /// Largest event time seen.
    pub max_event_time: Option<Millis>,
}

impl WatermarkState {
    fn advance_to(&mut self, candidate: Millis) {
        self.watermark = Some(self.watermark.map_or(candidate, |w| w.max(candidate)));
    }
}

/// Event-time processing of one shard.
#[derive(Clone, Debug)]
pub struct ShardProcessor {
    config: Arc<EngineConfig>,
    clock: WatermarkState,
    aggregates: Aggregates,
    counters: Counters,
    seen: SeenTrips,
}

impl ShardProcessor {
    /// A shard with no history.
    pub fn new(config: Arc<EngineConfig>) -> ShardProcessor {
        let aggregates = Aggregates::new(&config);
        ShardProcessor {
            config,
            clock: WatermarkState::default(),
            aggregates,
            counters: Counters::default(),
            seen: SeenTrips::default(),
        }
    }

    /// A shard resumed from checkpointed state.
    pub fn restore(
        config: Arc<EngineConfig>,
        clock: WatermarkState,
        aggregates: Aggregates,
        counters: Counters,
        seen: SeenTrips,
    ) -> Self {
        ShardProcessor { config, clock, aggregates, counters, seen }
    }

    /// The current watermark (`None` before the first observation).
    pub fn watermark(&self) -> Option<Millis> {
        self.clock.watermark
    }

    /// The watermark and max event time, for checkpoints.
    pub fn clock(&self) -> WatermarkState {
        self.clock
    }

    /// The shard's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The open windows, for checkpoints.
    pub fn aggregates(&self) -> &Aggregates {
        &self.aggregates
    }

    /// The trip ids counted in the open windows, for checkpoints.
    pub fn seen(&self) -> &SeenTrips {
        &self.seen
    }

    /// Processes one valid record. `arrival` is the Kinesis arrival time, used by the `arrival`
    /// strategy only.
    #[inline]
    pub fn process(&mut self, event: &Event, arrival: Option<Millis>) -> Option<TripOutcome> {
        let time = match event {
            Event::Trip(trip) => trip.event_time(),
            Event::Watermark(t) => *t,
        };
        if self.jumps_too_far(time, arrival) {
            self.counters.count_invalid(InvalidReason::ImplausibleTime);
            return None;
        }
        self.counters.records += 1;
        match event {
            Event::Trip(trip) => Some(self.process_trip(trip, arrival)),
            Event::Watermark(t) => {
                self.counters.watermarks += 1;
                if self.config.event_time.watermark == WatermarkStrategy::Punctuated {
                    self.clock.advance_to(*t);
                }
                None
            }
        }
    }

    /// Whether an event time lies more than the configured jump past what this shard has seen
    /// (its latest event time or watermark) or past the record's own arrival: such a record is
    /// implausible, and must not drag the watermark into the future.
    #[inline]
    fn jumps_too_far(&self, time: Millis, arrival: Option<Millis>) -> bool {
        let jump = self.config.event_time.max_time_jump_ms;
        if jump <= 0 {
            return false;
        }
        let seen = self.clock.max_event_time.max(self.clock.watermark);
        [seen, arrival].into_iter().flatten().any(|reference| time > reference.saturating_add(jump))
    }

    /// Counts an invalid record.
    pub fn process_invalid(&mut self, reason: InvalidReason) {
        self.counters.count_invalid(reason);
    }

    fn process_trip(&mut self, trip: &Trip, arrival: Option<Millis>) -> TripOutcome {
        self.counters.trips += 1;
        let et = &self.config.event_time;
        let t = trip.event_time();
        self.clock.max_event_time = Some(self.clock.max_event_time.map_or(t, |m| m.max(t)));
        // The trip advances the watermark before the lateness check: under `bounded` the trip
        // that moves the maximum is never late itself, and under `arrival` the check is against
        // the watermark its own arrival implies.
        match et.watermark {
            WatermarkStrategy::Bounded => self.clock.advance_to(t - et.max_out_of_orderness_ms),
            WatermarkStrategy::Arrival => {
                if let Some(arrived) = arrival {
                    self.clock.advance_to(arrived - et.max_out_of_orderness_ms);
                }
            }
            WatermarkStrategy::Punctuated => {}
        }

        let region = &self.config.region;
        if !region.contains(trip.pickup) || !region.contains(trip.dropoff) {
            self.counters.outside_region += 1;
            return TripOutcome::OutsideRegion;
        }

        // A trip is late when its window's end + allowed lateness ≤ the watermark.
        let cutoff = self.clock.watermark.map_or(Millis::MIN, |w| w - et.allowed_lateness_ms);
        let hot_windows = self.aggregates.hot_spots.windows();
        let hot_start = hot_windows.start_of(t);
        let hot_late = hot_windows.end_of(hot_start) <= cutoff;
        let airport = first_match(&self.config.airport_trips.airports, trip.dropoff);
        let airport_windows = self.aggregates.airport_trips.windows();
        let airport_start = airport_windows.start_of(t);
        let airport_end = airport_windows.end_of(airport_start);
        let airport_late = airport.is_some() && airport_end <= cutoff;
        let aggregated_somewhere = !hot_late || (airport.is_some() && !airport_late);
        if aggregated_somewhere
            && !self.seen.first_sighting(trip.trip_id, hot_windows.end_of(hot_start).max(airport_end))
        {
            self.counters.duplicates += 1;
            return TripOutcome::Duplicate;
        }

        let cell = Geohash::encode(trip.pickup, self.config.hot_spots.geohash_precision);
        if !hot_late {
            *self.aggregates.hot_spots.entry(hot_start, cell) += 1;
        }
        if let (Some(index), false) = (airport, airport_late) {
            // `EngineConfig::validate` caps the airport list at 255 entries.
            let key = AirportKey { pickup: cell, airport: u8::try_from(index).unwrap_or(u8::MAX) };
            let agg = self.aggregates.airport_trips.entry(airport_start, key);
            agg.trips += 1;
            agg.duration_ms = agg.duration_ms.saturating_add(trip.duration_ms());
        }
        if hot_late || airport_late {
            self.counters.late += 1;
            TripOutcome::Late
        } else {
            TripOutcome::Aggregated
        }
    }

    /// Closes the windows the watermark has passed (end + allowed lateness ≤ watermark).
    pub fn take_closed(&mut self) -> ClosedWindows {
        match self.clock.watermark {
            Some(w) => {
                let cutoff = w - self.config.event_time.allowed_lateness_ms;
                self.seen.forget_ended_by(cutoff);
                self.aggregates.take_ended_by(cutoff)
            }
            None => ClosedWindows::default(),
        }
    }

    /// A copy of every open window; they stay open (and in the next checkpoint).
    pub fn open_windows(&self) -> ClosedWindows {
        self.aggregates.snapshot()
    }

    /// Closes every window (end of input, or a released shard's final flush).
    pub fn take_all(&mut self) -> ClosedWindows {
        self.seen.clear();
        self.aggregates.take_all()
    }

    /// The shard ended (it was split or merged): closes every window, as no record of this shard
    /// can reach them any more, but keeps the trip ids of those windows. The shard's children
    /// start from them (see [`crate::checkpoint::child_of`]), so a trip that a producer retried
    /// into a child after the reshard still counts once.
    pub fn end(&mut self) -> ClosedWindows {
        self.aggregates.take_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EventTimeConfig;
    use crate::event::GeoPoint;

    const MIN: Millis = 60_000;
    const MIDTOWN: GeoPoint = GeoPoint { lat: 40.7580, lon: -73.9855 };
    const JFK: GeoPoint = GeoPoint { lat: 40.6413, lon: -73.7781 };

    fn trip(id: u64, dropoff: Millis, to: GeoPoint) -> Event {
        Event::Trip(Trip {
            trip_id: id,
            pickup_time: dropoff - 30 * MIN,
            dropoff_time: dropoff,
            pickup: MIDTOWN,
            dropoff: to,
        })
    }

    fn processor(event_time: EventTimeConfig) -> ShardProcessor {
        ShardProcessor::new(Arc::new(EngineConfig { event_time, ..EngineConfig::default() }))
    }

    fn pickups(closed: &ClosedWindows) -> Vec<(Millis, u64)> {
        closed.hot_spots.iter().map(|(s, cells)| (*s, cells.values().sum())).collect()
    }

    #[test]
    fn duration_sums_saturate_instead_of_overflowing() {
        let jfk = GeoPoint { lat: 40.6413, lon: -73.7781 };
        let mut p = processor(EventTimeConfig::default());
        let dropoff = 100 * MIN;
        for id in 1..=3 {
            let trip =
                Trip { trip_id: id, pickup_time: i64::MIN / 2, dropoff_time: dropoff, pickup: MIDTOWN, dropoff: jfk };
            p.process(&Event::Trip(trip), None);
        }
        let closed = p.take_all();
        let sums: Vec<i64> =
            closed.airport_trips.iter().flat_map(|(_, keys)| keys.values().map(|a| a.duration_ms)).collect();
        assert_eq!(sums, [i64::MAX]);
    }

    #[test]
    fn disorder_within_the_bound_is_aggregated_and_beyond_it_is_late() {
        let mut p = processor(EventTimeConfig::default());
        assert_eq!(p.process(&trip(1, 100 * MIN, MIDTOWN), None), Some(TripOutcome::Aggregated));
        // 59 s behind the max: the bound is 60 s, and its window [90, 100) min is still open.
        assert_eq!(p.process(&trip(2, 100 * MIN - 59_000, MIDTOWN), None), Some(TripOutcome::Aggregated));
        // Move the watermark to 101 min: window [90, 100) closes.
        assert_eq!(p.process(&trip(3, 102 * MIN, MIDTOWN), None), Some(TripOutcome::Aggregated));
        assert_eq!(p.watermark(), Some(101 * MIN));
        assert_eq!(p.process(&trip(4, 99 * MIN, MIDTOWN), None), Some(TripOutcome::Late));
        assert_eq!(p.counters().late, 1);
        // Trip 2 is in [90, 100) min; trips 1 and 3 are in the still-open [100, 110).
        let closed = p.take_closed();
        assert_eq!(pickups(&closed), vec![(90 * MIN, 1)]);
    }

    #[test]
    fn allowed_lateness_keeps_windows_open_longer() {
        let mut p = processor(EventTimeConfig { allowed_lateness_ms: 5 * MIN, ..EventTimeConfig::default() });
        p.process(&trip(1, 105 * MIN, MIDTOWN), None); // watermark 104 min
        // Window [90, 100) ends at 100; 100 + 5 > 104, so it still accepts trips.
        assert_eq!(p.process(&trip(2, 95 * MIN, MIDTOWN), None), Some(TripOutcome::Aggregated));
        assert!(p.take_closed().is_empty());
        p.process(&trip(3, 106 * MIN, MIDTOWN), None); // watermark 105 min: 100 + 5 ≤ 105
        assert_eq!(p.process(&trip(4, 95 * MIN, MIDTOWN), None), Some(TripOutcome::Late));
        assert_eq!(pickups(&p.take_closed()), vec![(90 * MIN, 1)]);
    }

    #[test]
    fn an_event_exactly_at_a_window_end_opens_the_next_window() {
        let mut p = processor(EventTimeConfig::default());
        p.process(&trip(1, 10 * MIN, MIDTOWN), None);
        p.process(&trip(2, 10 * MIN - 1, MIDTOWN), None);
        let closed = p.take_all();
        assert_eq!(pickups(&closed), vec![(0, 1), (10 * MIN, 1)]);
    }

    #[test]
    fn punctuated_watermarks_move_only_on_watermark_events() {
        let config = EventTimeConfig { watermark: WatermarkStrategy::Punctuated, ..EventTimeConfig::default() };
        let mut p = processor(config);
        p.process(&trip(1, 100 * MIN, MIDTOWN), None);
        assert_eq!(p.watermark(), None);
        p.process(&Event::Watermark(110 * MIN), None);
        assert_eq!(p.watermark(), Some(110 * MIN));
        // Never decreasing.
        p.process(&Event::Watermark(105 * MIN), None);
        assert_eq!(p.watermark(), Some(110 * MIN));
        assert_eq!(p.process(&trip(2, 100 * MIN, MIDTOWN), None), Some(TripOutcome::Late));
        assert_eq!(p.counters().watermarks, 2);
        assert_eq!(pickups(&p.take_closed()), vec![(100 * MIN, 1)]);
    }

    #[test]
    fn bounded_watermarks_ignore_watermark_events() {
        let mut p = processor(EventTimeConfig::default());
        p.process(&Event::Watermark(500 * MIN), None);
        assert_eq!(p.watermark(), None);
    }

    #[test]
    fn arrival_watermarks_follow_the_arrival_time() {
        let config = EventTimeConfig { watermark: WatermarkStrategy::Arrival, ..EventTimeConfig::default() };
        let mut p = processor(config);
        // Arrived long after its window closed: late against its own arrival.
        assert_eq!(p.process(&trip(1, 100 * MIN, MIDTOWN), Some(200 * MIN)), Some(TripOutcome::Late));
        assert_eq!(p.watermark(), Some(199 * MIN));
        assert_eq!(p.process(&trip(2, 200 * MIN, MIDTOWN), Some(200 * MIN + 5_000)), Some(TripOutcome::Aggregated));
    }

    #[test]
    fn outside_region_trips_are_counted_not_aggregated_but_move_the_watermark() {
        let mut p = processor(EventTimeConfig::default());
        let newark = GeoPoint { lat: 40.6895, lon: -74.1745 + -0.2 };
        assert_eq!(p.process(&trip(1, 100 * MIN, newark), None), Some(TripOutcome::OutsideRegion));
        assert_eq!(p.counters().outside_region, 1);
        assert_eq!(p.watermark(), Some(99 * MIN));
        assert!(p.take_all().is_empty());
    }

    #[test]
    fn airport_trips_sum_durations_per_cell_and_airport() {
        let mut p = processor(EventTimeConfig::default());
        p.process(&trip(1, 100 * MIN, JFK), None);
        p.process(&trip(2, 101 * MIN, JFK), None);
        let closed = p.take_all();
        let (start, keys) = &closed.airport_trips[0];
        assert_eq!(*start, 100 * MIN);
        let (key, agg) = keys.iter().next().expect("one key");
        assert_eq!(key.airport, 0);
        assert_eq!(key.pickup.to_string(), "dr5ru7");
        assert_eq!(*agg, crate::analysis::AirportAgg { trips: 2, duration_ms: 2 * 30 * MIN });
    }

    #[test]
    fn invalid_records_are_counted_by_reason() {
        let mut p = processor(EventTimeConfig::default());
        p.process_invalid(InvalidReason::BadField);
        p.process_invalid(InvalidReason::BadField);
        p.process_invalid(InvalidReason::NotJson);
        assert_eq!(p.counters().invalid[InvalidReason::BadField.index()], 2);
        assert_eq!(p.counters().invalid_total(), 3);
        assert_eq!(p.counters().records, 3);
    }

    const DAY: Millis = 24 * 60 * MIN;

    #[test]
    fn a_trip_dated_far_past_the_shards_latest_is_implausible_and_moves_nothing() {
        let mut p = processor(EventTimeConfig::default());
        p.process(&trip(1, 100 * MIN, MIDTOWN), None);
        let watermark = p.watermark();
        // A trip two days ahead of everything else is a typo, not progress …
        assert_eq!(p.process(&trip(2, 100 * MIN + 2 * DAY, MIDTOWN), None), None);
        assert_eq!(p.watermark(), watermark);
        assert_eq!(p.clock().max_event_time, Some(100 * MIN));
        assert_eq!(p.counters().invalid[InvalidReason::ImplausibleTime.index()], 1);
        assert_eq!((p.counters().records, p.counters().trips), (2, 1));
        // … so the trips that follow are still on time, and one within the jump moves time on.
        assert_eq!(p.process(&trip(3, 101 * MIN, MIDTOWN), None), Some(TripOutcome::Aggregated));
        assert_eq!(p.process(&trip(4, 100 * MIN + DAY, MIDTOWN), None), Some(TripOutcome::Aggregated));
    }

    #[test]
    fn an_event_time_far_past_its_own_arrival_is_implausible_even_on_a_fresh_shard() {
        let mut p = processor(EventTimeConfig::default());
        assert_eq!(p.process(&trip(1, 100 * MIN + 2 * DAY, MIDTOWN), Some(100 * MIN)), None);
        assert_eq!(p.watermark(), None);
        assert_eq!(p.process(&Event::Watermark(3 * DAY), Some(0)), None);
        assert_eq!(p.counters().invalid[InvalidReason::ImplausibleTime.index()], 2);
        assert_eq!(p.counters().watermarks, 0);
    }

    #[test]
    fn a_punctuated_watermark_cannot_jump_either() {
        let config = EventTimeConfig { watermark: WatermarkStrategy::Punctuated, ..EventTimeConfig::default() };
        let mut p = processor(config);
        p.process(&Event::Watermark(100 * MIN), None);
        p.process(&Event::Watermark(100 * MIN + 2 * DAY), None);
        assert_eq!(p.watermark(), Some(100 * MIN));
        assert_eq!(p.counters().invalid[InvalidReason::ImplausibleTime.index()], 1);
    }

    #[test]
    fn a_zero_jump_turns_the_check_off() {
        let mut p = processor(EventTimeConfig { max_time_jump_ms: 0, ..EventTimeConfig::default() });
        p.process(&trip(1, 100 * MIN, MIDTOWN), None);
        assert_eq!(p.process(&trip(2, 100 * DAY, MIDTOWN), None), Some(TripOutcome::Aggregated));
    }

    #[test]
    fn counters_of_older_checkpoints_with_fewer_reasons_still_read() {
        let older = r#"{"records":9,"trips":1,"watermarks":0,"invalid":[1,2,3,0,0,0,0,2],"outside_region":0,"late":0}"#;
        let counters: Counters = serde_json::from_str(older).expect("older counters");
        assert_eq!(counters.invalid_total(), 8);
        assert_eq!(counters.invalid[InvalidReason::ImplausibleTime.index()], 0);
        let too_many = older.replace("[1,2,3,0,0,0,0,2]", &format!("{:?}", [0; InvalidReason::ALL.len() + 1]));
        assert!(serde_json::from_str::<Counters>(&too_many).is_err());
    }

    #[test]
    fn a_trip_put_twice_counts_once_in_its_window_even_after_a_restart() {
        let mut p = processor(EventTimeConfig::default());
        assert_eq!(p.process(&trip(1, 100 * MIN, JFK), None), Some(TripOutcome::Aggregated));
        assert_eq!(p.process(&trip(1, 100 * MIN, JFK), None), Some(TripOutcome::Duplicate));
        assert_eq!(p.counters().duplicates, 1);
        // A restart from a checkpoint keeps the ids of the open windows.
        let config = Arc::new(EngineConfig::default());
        let checkpoint = crate::checkpoint::ShardCheckpoint::capture(
            "s",
            crate::checkpoint::Position::Start,
            &crate::checkpoint::Owner::this_process(0),
            &p,
            &config,
        );
        let bytes = checkpoint.to_bytes().expect("encode");
        let mut p =
            crate::checkpoint::ShardCheckpoint::from_bytes(&bytes).expect("decode").restore(config).expect("restore");
        assert_eq!(p.process(&trip(1, 100 * MIN, JFK), None), Some(TripOutcome::Duplicate));
        assert_eq!(p.process(&trip(2, 100 * MIN, JFK), None), Some(TripOutcome::Aggregated));
        let closed = p.take_all();
        assert_eq!(closed.hot_spots[0].1.values().sum::<u64>(), 2, "trips 1 and 2, once each");
        assert_eq!(closed.airport_trips[0].1.values().map(|a| a.trips).sum::<u64>(), 2);
    }

    #[test]
    fn a_child_shard_knows_its_parents_trips_and_event_time() {
        use crate::checkpoint::{Owner, Position, ShardCheckpoint, child_of};
        let config = Arc::new(EngineConfig::default());
        let final_checkpoint = |p: &ShardProcessor| {
            ShardCheckpoint::capture("parent", Position::Finished, &Owner::this_process(0), p, &config)
        };
        // A parent with one window closed (trip 1) and one still open when it ended (trip 2).
        let mut parent = processor(EventTimeConfig::default());
        parent.process(&trip(1, 100 * MIN, MIDTOWN), None);
        parent.process(&trip(2, 125 * MIN, MIDTOWN), None);
        parent.take_closed();
        let ended = parent.end();
        assert_eq!(ended.hot_spots.len(), 1, "the open window is emitted at the shard's end");
        assert_eq!(parent.seen().len(), 1, "and its trip ids are kept for the children");
        // A second parent (a merge) that is behind in event time.
        let mut slow = processor(EventTimeConfig::default());
        slow.process(&trip(3, 110 * MIN, MIDTOWN), None);
        slow.end();

        let mut child = child_of(&[final_checkpoint(&parent), final_checkpoint(&slow)], config.clone());
        assert_eq!(child.clock(), slow.clock(), "the slowest parent's event time");
        // Copies retried into the child after the reshard: counted once (or late, as on the parent).
        assert_eq!(child.process(&trip(3, 110 * MIN, MIDTOWN), None), Some(TripOutcome::Duplicate));
        assert_eq!(child.process(&trip(2, 125 * MIN, MIDTOWN), None), Some(TripOutcome::Duplicate));
        assert_eq!(child.process(&trip(4, 125 * MIN, MIDTOWN), None), Some(TripOutcome::Aggregated));
        let alone = child_of(&[final_checkpoint(&parent)], config.clone());
        assert_eq!(alone.clock(), parent.clock());
        let mut alone = alone;
        assert_eq!(alone.process(&trip(1, 100 * MIN, MIDTOWN), None), Some(TripOutcome::Late));
        assert_eq!(child_of(&[], config).clock(), WatermarkState::default());
    }

    #[test]
    fn ids_are_forgotten_once_their_windows_closed_and_a_late_copy_is_late() {
        let mut p = processor(EventTimeConfig::default());
        p.process(&trip(1, 100 * MIN, MIDTOWN), None);
        p.process(&trip(2, 125 * MIN, MIDTOWN), None);
        let closed = p.take_closed();
        assert_eq!(closed.hot_spots.len(), 1, "the window at 100 min closed");
        assert_eq!(p.seen().len(), 1, "only trip 2's window is open");
        assert_eq!(p.process(&trip(1, 100 * MIN, MIDTOWN), None), Some(TripOutcome::Late));
    }

    #[test]
    fn trips_that_reach_no_window_are_not_remembered() {
        let mut p = processor(EventTimeConfig::default());
        let newark = GeoPoint { lat: 40.6895, lon: -74.3745 };
        p.process(&trip(1, 100 * MIN, newark), None);
        assert!(p.seen().is_empty());
    }
}

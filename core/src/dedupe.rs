//! Duplicate trips: Kinesis producers (the KPL among them) retry a `PutRecords` whose answer was
//! lost, and the stream then holds the trip twice. A shard counts each trip id once per window.
//!
//! The trip ids a shard aggregated are kept until every window the trip counts in has closed;
//! after that a copy would be late anyway. Ids are grouped by that instant (the latest end of the
//! trip's windows), so forgetting them is dropping whole groups, and a duplicate, which carries
//! the same event time, always meets its original in the same group.

use std::collections::BTreeMap;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

use crate::event::Millis;

/// Trip ids one shard aggregated, per instant after which no window they count in is open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeenTrips {
    groups: BTreeMap<Millis, FxHashSet<u64>>,
}

/// The trip ids of one group, as a checkpoint holds them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenGroup {
    /// The end of the last window these trips count in.
    pub until: Millis,
    /// The trip ids, ascending.
    pub trip_ids: Vec<u64>,
}

impl SeenTrips {
    /// Records `trip_id` for windows open until `until`; `false` when it was already there (a
    /// duplicate, not to be counted again).
    #[inline]
    pub fn first_sighting(&mut self, trip_id: u64, until: Millis) -> bool {
        self.groups.entry(until).or_default().insert(trip_id)
    }

    /// Forgets the trips whose windows have all ended by `cutoff` (end ≤ cutoff).
    pub fn forget_ended_by(&mut self, cutoff: Millis) {
        let kept = self.groups.split_off(&cutoff.saturating_add(1));
        self.groups = kept;
    }

    /// Forgets everything (every window closed).
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// How many trip ids are kept.
    pub fn len(&self) -> usize {
        self.groups.values().map(FxHashSet::len).sum()
    }

    /// An estimate of the heap this set holds: each group's hash table (an id and a control byte
    /// per slot) and its map entry.
    pub fn heap_bytes(&self) -> usize {
        const ENTRY: usize = 64;
        self.groups.values().map(|ids| ids.capacity() * (size_of::<u64>() + 1) + ENTRY).sum()
    }

    /// Whether no trip id is kept.
    pub fn is_empty(&self) -> bool {
        self.groups.values().all(FxHashSet::is_empty)
    }

    /// The groups for a checkpoint, ids sorted so equal sets give equal bytes.
    pub fn capture(&self) -> Vec<SeenGroup> {
        self.groups
            .iter()
            .map(|(until, ids)| {
                let mut trip_ids: Vec<u64> = ids.iter().copied().collect();
                trip_ids.sort_unstable();
                SeenGroup { until: *until, trip_ids }
            })
            .collect()
    }

    /// The trips of a checkpoint.
    pub fn restore(groups: &[SeenGroup]) -> SeenTrips {
        let mut seen = SeenTrips::default();
        seen.absorb(groups);
        seen
    }

    /// Adds the trips of another shard's checkpoint (a parent's, for its child).
    pub fn absorb(&mut self, groups: &[SeenGroup]) {
        for group in groups {
            self.groups.entry(group.until).or_default().extend(group.trip_ids.iter().copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trip_id_counts_once_until_its_windows_end() {
        let mut seen = SeenTrips::default();
        assert!(seen.first_sighting(7, 600));
        assert!(!seen.first_sighting(7, 600), "a retried put");
        assert!(seen.first_sighting(8, 600));
        assert!(seen.first_sighting(7, 1_200), "the same id in a later window is another trip");
        seen.forget_ended_by(599);
        assert_eq!(seen.len(), 3);
        seen.forget_ended_by(600);
        assert_eq!(seen.len(), 1);
        assert!(!seen.first_sighting(7, 1_200));
        seen.clear();
        assert!(seen.is_empty());
    }

    #[test]
    fn checkpoints_round_trip_with_sorted_ids() {
        let mut seen = SeenTrips::default();
        for id in [9, 3, 5] {
            seen.first_sighting(id, 600);
        }
        seen.first_sighting(1, 1_200);
        let groups = seen.capture();
        assert_eq!(groups[0], SeenGroup { until: 600, trip_ids: vec![3, 5, 9] });
        assert_eq!(SeenTrips::restore(&groups), seen);
    }
}

//! The live figures of a running local run ([`Progress`]), which the progress line and the
//! dashboard read while the run writes them, and the final results it keeps for the dashboard.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use taxi_core::analysis::MergedResult;
use taxi_core::event::Millis;
use taxi_core::shard::Counters;

/// Live figures of a running local run, read by the progress line and the dashboard while the
/// run writes them. The run's [`Summary`](super::Summary) is the exact account once it ends.
#[derive(Debug, Default)]
pub struct Progress {
    /// Input records handed to the shards.
    pub records: AtomicU64,
    /// The merged watermark (ms since epoch), `i64::MIN` before there is one.
    pub watermark: AtomicI64,
    /// Valid trips parsed.
    pub trips: AtomicU64,
    /// Watermark events parsed.
    pub watermarks: AtomicU64,
    /// Invalid records skipped.
    pub invalid: AtomicU64,
    /// Trips outside the region.
    pub outside_region: AtomicU64,
    /// Trips that came after their window closed (in a shard or at the merge).
    pub late: AtomicU64,
    /// Final merged results in the order they became final; kept only when asked for.
    results: Option<Mutex<Vec<MergedResult>>>,
}

impl Progress {
    /// Live figures that also keep every final result as it comes (for the dashboard).
    pub fn keeping_results() -> Progress {
        Progress { results: Some(Mutex::new(Vec::new())), ..Progress::default() }
    }

    /// The final results kept so far whose window starts after `after` (all with `None`); empty
    /// unless made by [`Progress::keeping_results`].
    pub fn results_after(&self, after: Option<Millis>) -> Vec<MergedResult> {
        let Some(results) = &self.results else { return Vec::new() };
        let results = results.lock().unwrap_or_else(PoisonError::into_inner);
        results.iter().filter(|r| after.is_none_or(|a| r.window_start() > a)).cloned().collect()
    }

    /// How many final windows, hot spots and airport results are kept so far (without copying them).
    pub fn kept_counts(&self) -> KeptCounts {
        let Some(results) = &self.results else { return KeptCounts::default() };
        let results = results.lock().unwrap_or_else(PoisonError::into_inner);
        let windows: std::collections::BTreeSet<Millis> = results.iter().map(MergedResult::window_start).collect();
        let hot_spots = results.iter().filter(|r| matches!(r, MergedResult::HotSpot { .. })).count() as u64;
        KeptCounts { windows: windows.len() as u64, hot_spots, airport_trips: results.len() as u64 - hot_spots }
    }

    /// Keeps results that just became final (when keeping results at all).
    pub(crate) fn keep(&self, new: &[MergedResult]) {
        if let (Some(results), false) = (&self.results, new.is_empty()) {
            results.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(new);
        }
    }

    /// Adds what the parsers counted.
    pub(super) fn add_input(&self, counters: &Counters) {
        self.trips.fetch_add(counters.trips, Ordering::Relaxed);
        self.watermarks.fetch_add(counters.watermarks, Ordering::Relaxed);
        self.invalid.fetch_add(counters.invalid_total(), Ordering::Relaxed);
    }
}

/// Counts of the results a [`Progress`] keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptCounts {
    /// Distinct final windows.
    pub windows: u64,
    /// Hot-spot results.
    pub hot_spots: u64,
    /// Airport-trip results.
    pub airport_trips: u64,
}

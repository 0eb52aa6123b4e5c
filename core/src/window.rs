//! Tumbling event-time windows aligned to the Unix epoch, and keyed aggregates per window.

use std::collections::BTreeMap;
use std::hash::Hash;

use rustc_hash::FxHashMap;

use crate::event::Millis;

/// Tumbling windows of a fixed size, aligned to the epoch: `[k·size, (k+1)·size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tumbling {
    size: Millis,
}

impl Tumbling {
    /// Windows of `size` milliseconds; sizes below 1 ms are raised to 1 ms.
    pub fn new(size: Millis) -> Tumbling {
        Tumbling { size: size.max(1) }
    }

    /// Window length in milliseconds.
    pub fn size(self) -> Millis {
        self.size
    }

    /// Start of the window holding `t` (an instant exactly at a window end opens the next one).
    #[inline]
    pub fn start_of(self, t: Millis) -> Millis {
        t - t.rem_euclid(self.size)
    }

    /// End (exclusive) of the window starting at `start`.
    #[inline]
    pub fn end_of(self, start: Millis) -> Millis {
        start.saturating_add(self.size)
    }
}

/// A value that partial aggregates of the same key can be summed into.
pub trait Combine: Default {
    /// Adds `other` into `self`.
    fn combine(&mut self, other: &Self);
}

impl Combine for u64 {
    fn combine(&mut self, other: &Self) {
        *self += other;
    }
}

/// Aggregates of one analysis, per window and key: the open windows of a shard, or the pending
/// windows of the merge.
#[derive(Clone, Debug)]
pub struct WindowedAggregates<K, V> {
    windows: Tumbling,
    open: BTreeMap<Millis, FxHashMap<K, V>>,
}

/// The aggregates of one window that was closed.
pub type ClosedWindow<K, V> = (Millis, FxHashMap<K, V>);

impl<K: Eq + Hash + Copy, V: Combine> WindowedAggregates<K, V> {
    /// No windows yet.
    pub fn new(windows: Tumbling) -> Self {
        WindowedAggregates { windows, open: BTreeMap::new() }
    }

    /// The window definition.
    pub fn windows(&self) -> Tumbling {
        self.windows
    }

    /// The value for `key` in the window starting at `window_start`, created empty if new.
    #[inline]
    pub fn entry(&mut self, window_start: Millis, key: K) -> &mut V {
        self.open.entry(window_start).or_default().entry(key).or_default()
    }

    /// Sums a closed window from elsewhere (another shard, a checkpoint) into this one.
    pub fn combine_window(&mut self, window_start: Millis, values: &FxHashMap<K, V>) {
        let window = self.open.entry(window_start).or_default();
        for (key, value) in values {
            window.entry(*key).or_default().combine(value);
        }
    }

    /// Removes and returns, oldest first, every window whose end is at or before `cutoff`.
    pub fn take_ended_by(&mut self, cutoff: Millis) -> Vec<ClosedWindow<K, V>> {
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if self.windows.end_of(*entry.key()) > cutoff {
                break;
            }
            closed.push(entry.remove_entry());
        }
        closed
    }

    /// Removes and returns every window, oldest first.
    pub fn take_all(&mut self) -> Vec<ClosedWindow<K, V>> {
        std::mem::take(&mut self.open).into_iter().collect()
    }

    /// Start of the oldest open window.
    pub fn oldest_start(&self) -> Option<Millis> {
        self.open.keys().next().copied()
    }

    /// Iterates over the open windows, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&Millis, &FxHashMap<K, V>)> {
        self.open.iter()
    }

    /// Number of open windows.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no window is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch_and_half_open() {
        let w = Tumbling::new(600_000);
        assert_eq!(w.start_of(0), 0);
        assert_eq!(w.start_of(599_999), 0);
        // An event exactly at a window end belongs to the next window.
        assert_eq!(w.start_of(600_000), 600_000);
        assert_eq!(w.end_of(600_000), 1_200_000);
        // Before the epoch too.
        assert_eq!(w.start_of(-1), -600_000);
        // Any size, not only divisors of a day.
        let odd = Tumbling::new(7_000);
        assert_eq!(odd.start_of(20_000), 14_000);
    }

    #[test]
    fn closes_windows_whose_end_is_at_or_before_the_cutoff() {
        let mut agg: WindowedAggregates<u8, u64> = WindowedAggregates::new(Tumbling::new(10));
        *agg.entry(0, 1) += 1;
        *agg.entry(10, 1) += 2;
        *agg.entry(20, 2) += 3;
        assert!(agg.take_ended_by(9).is_empty());
        let closed = agg.take_ended_by(20);
        assert_eq!(closed.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![0, 10]);
        assert_eq!(closed[1].1.get(&1), Some(&2));
        assert_eq!(agg.oldest_start(), Some(20));
        assert_eq!(agg.take_all().len(), 1);
        assert!(agg.is_empty());
    }

    #[test]
    fn combining_sums_per_key() {
        let mut a: WindowedAggregates<u8, u64> = WindowedAggregates::new(Tumbling::new(10));
        *a.entry(0, 1) += 1;
        let mut other = FxHashMap::default();
        other.insert(1, 4);
        other.insert(2, 5);
        a.combine_window(0, &other);
        let (_, w) = a.take_all().remove(0);
        assert_eq!((w[&1], w[&2]), (5, 5));
    }
}

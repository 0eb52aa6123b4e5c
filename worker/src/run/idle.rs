//! Which shards are caught up, and since when: a run with `stop_when_idle` ends once every
//! running shard has been caught up (an empty page, nothing behind the tip) for that long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards caught up since an instant; a page with records, or nothing known of the tip, clears a
/// shard. Written by the shard tasks, read by the coordinator.
#[derive(Debug, Default)]
pub(super) struct CaughtUp {
    since: Mutex<HashMap<String, Instant>>,
}

impl CaughtUp {
    /// Notes one page of `shard` read at `now`: caught up when it was empty and nothing is behind
    /// it. A shard that stays caught up keeps its first instant.
    pub(super) fn note_page(&self, shard: &str, empty: bool, millis_behind_latest: Option<i64>, now: Instant) {
        let caught_up = empty && millis_behind_latest.is_none_or(|m| m == 0);
        if let Ok(mut since) = self.since.lock() {
            if caught_up {
                since.entry(shard.to_owned()).or_insert(now);
            } else {
                since.remove(shard);
            }
        }
    }

    /// Forgets `shard`: it ended, or was read to its end; started again, it must catch up again.
    pub(super) fn forget(&self, shard: &str) {
        if let Ok(mut since) = self.since.lock() {
            since.remove(shard);
        }
    }

    /// Whether every one of `shards` has been caught up for at least `idle` at `now` (true for
    /// none at all; false if a shard task panicked holding the lock).
    pub(super) fn all_for<'a>(&self, mut shards: impl Iterator<Item = &'a str>, idle: Duration, now: Instant) -> bool {
        let Ok(since) = self.since.lock() else { return false };
        shards.all(|id| since.get(id).is_some_and(|at| now.saturating_duration_since(*at) >= idle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(2);

    #[test]
    fn every_shard_must_stay_caught_up_for_the_idle_time() {
        let caught_up = CaughtUp::default();
        let t0 = Instant::now();
        caught_up.note_page("a", true, Some(0), t0);
        caught_up.note_page("b", true, None, t0 + Duration::from_secs(1));
        // A later empty page does not move the instant forward.
        caught_up.note_page("a", true, Some(0), t0 + Duration::from_secs(1));

        let both = || ["a", "b"].into_iter();
        assert!(!caught_up.all_for(both(), IDLE, t0 + IDLE), "b only caught up a second ago");
        assert!(caught_up.all_for(["a"].into_iter(), IDLE, t0 + IDLE));
        assert!(caught_up.all_for(both(), IDLE, t0 + Duration::from_secs(3)));
        assert!(!caught_up.all_for(["a", "c"].into_iter(), IDLE, t0 + IDLE * 10), "c never caught up");
        assert!(caught_up.all_for(std::iter::empty(), IDLE, t0), "nothing running is nothing to wait for");
    }

    #[test]
    fn records_or_lag_clear_a_shard_and_so_does_forgetting_it() {
        let caught_up = CaughtUp::default();
        let t0 = Instant::now();
        let later = t0 + IDLE * 5;
        caught_up.note_page("a", true, Some(0), t0);
        caught_up.note_page("a", false, Some(0), t0 + Duration::from_secs(1));
        assert!(!caught_up.all_for(["a"].into_iter(), IDLE, later), "a page with records clears it");

        caught_up.note_page("a", true, Some(0), t0);
        caught_up.note_page("a", true, Some(1500), t0 + Duration::from_secs(1));
        assert!(!caught_up.all_for(["a"].into_iter(), IDLE, later), "an empty page behind the tip clears it");

        caught_up.note_page("a", true, Some(0), t0);
        caught_up.forget("a");
        assert!(!caught_up.all_for(["a"].into_iter(), IDLE, later));
    }
}

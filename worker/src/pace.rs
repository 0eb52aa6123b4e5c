//! Replaying event time at a multiple of wall-clock time, shared by `local` and `replay`.

use std::time::Duration;

use tokio::time::Instant;

use taxi_core::event::Millis;

/// Replays event time at a fixed multiple of wall-clock time: records of event time `t` are handed
/// on no earlier than `(t - first) / speedup` after the first. A gap in the data is compressed to
/// at most [`Pacer::MAX_WAIT`], so one far-off timestamp cannot stall the run. Records older than
/// the pace (disorder) are never held.
#[derive(Debug)]
pub struct Pacer {
    speedup: f64,
    /// Wall-clock instant and event time the pace is measured from.
    origin: Option<(Instant, Millis)>,
}

impl Pacer {
    /// The longest single wait.
    pub const MAX_WAIT: Duration = Duration::from_secs(1);

    /// A pacer at `speedup` × wall-clock time (must be positive).
    pub fn new(speedup: f64) -> Pacer {
        Pacer { speedup, origin: None }
    }

    /// The instant from which records up to `event_time` may be handed on, seen at `now`. Asking
    /// again for the same event time before it is due gives the same instant.
    pub fn due(&mut self, event_time: Millis, now: Instant) -> Instant {
        let (start, first) = *self.origin.get_or_insert((now, event_time));
        // Event-time milliseconds are far below 2^53, so the float conversion is exact enough.
        let due_secs = (event_time.saturating_sub(first)) as f64 / self.speedup / 1000.0;
        let delay = Duration::try_from_secs_f64(due_secs.max(0.0)).unwrap_or(Duration::MAX);
        let due = start.checked_add(delay).unwrap_or(now + Self::MAX_WAIT);
        if due.saturating_duration_since(now) > Self::MAX_WAIT {
            // Re-anchor so that this gap costs MAX_WAIT and later records keep the pace.
            self.origin = Some((now + Self::MAX_WAIT, event_time));
            return now + Self::MAX_WAIT;
        }
        due
    }

    /// How long to wait at `now` before handing on records up to `event_time`.
    pub fn wait(&mut self, event_time: Millis, now: Instant) -> Duration {
        self.due(event_time, now).saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Millis = 60_000;

    #[test]
    fn the_pacer_holds_records_until_their_event_time_is_due() {
        let start = Instant::now();
        let mut pacer = Pacer::new(600.0); // ten minutes of event time per wall-clock second
        assert_eq!(pacer.wait(0, start), Duration::ZERO, "the first record sets the origin");
        assert_eq!(pacer.wait(5 * MINUTE, start), Duration::from_millis(500));
        // Already past due: no wait.
        assert_eq!(pacer.wait(5 * MINUTE, start + Duration::from_secs(2)), Duration::ZERO);
        // Older records (disorder) are never held.
        assert_eq!(pacer.wait(-MINUTE, start), Duration::ZERO);
    }

    #[test]
    fn the_pacer_compresses_gaps_to_its_longest_wait() {
        let start = Instant::now();
        let mut pacer = Pacer::new(600.0);
        pacer.wait(0, start);
        // A day's gap would be 144 s at this pace: it costs one MAX_WAIT instead …
        assert_eq!(pacer.wait(24 * 60 * MINUTE, start), Pacer::MAX_WAIT);
        // … asking again while waiting gives the same instant …
        let halfway = start + Pacer::MAX_WAIT / 2;
        assert_eq!(pacer.due(24 * 60 * MINUTE, halfway), start + Pacer::MAX_WAIT);
        // … and the pace continues from there.
        let resumed = start + Pacer::MAX_WAIT;
        assert_eq!(pacer.wait(24 * 60 * MINUTE + 5 * MINUTE, resumed), Duration::from_millis(500));
    }

    #[test]
    fn a_timestamp_at_the_end_of_time_costs_one_longest_wait() {
        let start = Instant::now();
        let mut pacer = Pacer::new(0.001);
        pacer.wait(Millis::MIN, start);
        assert_eq!(pacer.wait(Millis::MAX, start), Pacer::MAX_WAIT);
    }
}

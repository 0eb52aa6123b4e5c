//! The one retry policy of every loop that waits out a failing dependency (the Kinesis readers,
//! the OpenSearch sink, the S3 store, the producer, the operator's reconcile and its leader
//! election): exponential back-off with jitter. Each loop decides for itself which of its errors
//! are worth another attempt; how long it waits before that attempt is decided here.

use std::time::Duration;

/// How a wait is drawn below its ceiling, so that clients that failed together do not all try
/// again at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the ceiling: for a loop that is alone in retrying (the controller requeues one
    /// pipeline; its runtime spreads the pipelines).
    None,
    /// Uniform in `[0, ceiling]`: the widest spread, for many readers polling one service.
    Full,
    /// Uniform in `[ceiling / 2, ceiling]`: spread, yet never much sooner than planned.
    Equal,
}

/// Exponential back-off: after `n` failures in a row the wait's ceiling is `first · 2^(n-1)`,
/// and never more than `longest`; the wait itself is drawn below the ceiling by `jitter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The ceiling after the first failure.
    pub first: Duration,
    /// The ceiling never grows beyond this.
    pub longest: Duration,
    /// How a wait is drawn below the ceiling.
    pub jitter: Jitter,
}

impl BackoffPolicy {
    /// A policy whose ceiling starts at `first` and doubles per failure up to `longest`.
    pub const fn new(first: Duration, longest: Duration, jitter: Jitter) -> BackoffPolicy {
        BackoffPolicy { first, longest, jitter }
    }

    /// The longest wait after `failures` failures in a row (0 is treated as 1).
    pub fn ceiling(&self, failures: u32) -> Duration {
        // 2^20 times any sensible first step is past any sensible cap; the shift cannot overflow.
        let doublings = failures.saturating_sub(1).min(20);
        self.first.saturating_mul(1 << doublings).min(self.longest)
    }

    /// How long to wait after `failures` failures in a row.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(fastrand::f64()),
            Jitter::Equal => {
                let half = ceiling / 2;
                half + half.mul_f64(fastrand::f64())
            }
        }
    }
}

/// One loop's failures since its last success, and the policy that spaces its attempts.
#[derive(Clone, Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    /// No failures yet.
    pub fn new(policy: BackoffPolicy) -> Backoff {
        Backoff { policy, failures: 0 }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.delay(self.failures)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_per_failure_up_to_the_cap() {
        let policy = BackoffPolicy::new(100 * MS, 1000 * MS, Jitter::None);
        let ceilings: Vec<u128> = (0..7).map(|n| policy.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [100, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.ceiling(u32::MAX), 1000 * MS, "no overflow however long it fails");
        assert_eq!(policy.delay(3), 400 * MS, "no jitter: exactly the ceiling");
    }

    #[test]
    fn jitter_draws_within_its_band() {
        for failures in 1..40 {
            let full = BackoffPolicy::new(100 * MS, 10_000 * MS, Jitter::Full);
            let equal = BackoffPolicy { jitter: Jitter::Equal, ..full };
            let ceiling = full.ceiling(failures);
            assert!(full.delay(failures) <= ceiling, "{failures}");
            let d = equal.delay(failures);
            assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?}");
        }
    }

    #[test]
    fn a_loop_counts_its_failures_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(BackoffPolicy::new(100 * MS, 1000 * MS, Jitter::None));
        let waits: Vec<u128> = (0..4).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800]);
        assert_eq!(backoff.failures(), 4);
        backoff.reset();
        assert_eq!((backoff.failures(), backoff.next_delay()), (0, 100 * MS));
    }
}

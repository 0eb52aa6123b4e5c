//! Failed shards and when each may start again: one shard's fault never stops the worker or its
//! other shards, and a shard that keeps failing is started again less and less often.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use taxi_io::retry::{Backoff, BackoffPolicy, Jitter};

/// Failed shards, each started again after its own back-off.
#[derive(Debug, Default)]
pub(super) struct Retries {
    shards: HashMap<String, Retry>,
}

/// One failed shard.
#[derive(Debug)]
struct Retry {
    /// Not started again before this instant.
    at: Instant,
    backoff: Backoff,
    /// Its last error, for a run to idle that ends with failed shards.
    error: String,
}

impl Retries {
    /// First and longest wait before a failed shard is started again.
    pub(super) const FIRST: Duration = Duration::from_secs(1);
    pub(super) const LONGEST: Duration = Duration::from_secs(60);

    /// Records a failure of `shard` at `now`; returns when it may start again. A shard that ran
    /// for longer than the longest wait since its last failure starts its back-off afresh.
    pub(super) fn failed(&mut self, shard: &str, error: String, now: Instant) -> Instant {
        let retry = self.shards.entry(shard.to_owned()).or_insert_with(|| Retry {
            at: now,
            backoff: Backoff::new(BackoffPolicy::new(Self::FIRST, Self::LONGEST, Jitter::Full)),
            error: String::new(),
        });
        if now.saturating_duration_since(retry.at) > Self::LONGEST {
            retry.backoff.reset();
        }
        retry.at = now + retry.backoff.next_delay();
        retry.error = error;
        retry.at
    }

    /// Whether `shard` is still waiting for its retry at `now`.
    pub(super) fn waiting(&self, shard: &str, now: Instant) -> bool {
        self.shards.get(shard).is_some_and(|r| r.at > now)
    }

    /// Forgets `shard` after it ended well.
    pub(super) fn succeeded(&mut self, shard: &str) {
        self.shards.remove(shard);
    }

    /// Forgets every failed shard `keep` rejects (it left the stream, or this worker).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.shards.retain(|id, _| keep(id));
    }

    /// Failed shards for which `is_running` is false: those waiting for their retry.
    pub(super) fn failed_now(&self, mut is_running: impl FnMut(&str) -> bool) -> usize {
        self.shards.keys().filter(|id| !is_running(id)).count()
    }

    /// Shards whose last run failed, with the error, by shard id.
    pub(super) fn failures(&self) -> Vec<(String, String)> {
        let mut failures: Vec<_> = self.shards.iter().map(|(id, r)| (id.clone(), r.error.clone())).collect();
        failures.sort();
        failures
    }

    /// Failures in a row of `shard` since its back-off last started afresh.
    #[cfg(test)]
    fn failures_in_a_row(&self, shard: &str) -> u32 {
        self.shards.get(shard).map_or(0, |r| r.backoff.failures())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn each_failure_in_a_row_may_wait_twice_as_long() {
        let mut retries = Retries::default();
        let t0 = Instant::now();
        let mut now = t0;
        for (n, ceiling) in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 32), (7, 60), (8, 60)] {
            let at = retries.failed("a", format!("failure {n}"), now);
            assert!(at >= now && at <= now + secs(ceiling), "failure {n}: waits at most {ceiling} s");
            assert_eq!(retries.failures_in_a_row("a"), n);
            // Fails again right when it is started again.
            now = at;
        }
        assert_eq!(retries.failures(), vec![("a".to_owned(), "failure 8".to_owned())], "the last error is kept");
    }

    #[test]
    fn a_shard_waits_until_its_retry_and_is_forgotten_once_it_ends_well() {
        let mut retries = Retries::default();
        let now = Instant::now();
        let at = retries.failed("a", "boom".to_owned(), now);
        assert!(!retries.waiting("b", now), "other shards are not held back");
        assert_eq!(retries.waiting("a", now), at > now);
        assert!(!retries.waiting("a", at), "may start at its retry instant");
        assert!(!retries.waiting("a", now + Retries::FIRST + secs(1)));

        retries.succeeded("a");
        assert!(retries.failures().is_empty());
        assert_eq!(retries.failures_in_a_row("a"), 0);
    }

    #[test]
    fn a_shard_that_ran_well_for_a_while_starts_its_back_off_afresh() {
        let mut retries = Retries::default();
        let t0 = Instant::now();
        let mut at = t0;
        for _ in 0..5 {
            at = retries.failed("a", "x".to_owned(), at);
        }
        assert_eq!(retries.failures_in_a_row("a"), 5);
        // Failing again within the longest wait of its retry counts as failing in a row ...
        at = retries.failed("a", "x".to_owned(), at + Retries::LONGEST);
        assert_eq!(retries.failures_in_a_row("a"), 6);
        // ... but after running longer than that, the first wait applies again.
        let later = at + Retries::LONGEST + secs(1);
        let next = retries.failed("a", "x".to_owned(), later);
        assert_eq!(retries.failures_in_a_row("a"), 1);
        assert!(next <= later + Retries::FIRST);
    }

    #[test]
    fn failures_are_listed_by_shard_and_can_be_dropped() {
        let mut retries = Retries::default();
        let now = Instant::now();
        for (shard, error) in [("c", "sink"), ("a", "kinesis"), ("b", "store")] {
            retries.failed(shard, error.to_owned(), now);
        }
        let ids = |r: &Retries| r.failures().into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(&retries), ["a", "b", "c"]);
        assert_eq!(retries.failures()[0].1, "kinesis");
        assert_eq!(retries.failed_now(|id| id == "b"), 2, "b is running again");

        retries.retain(|id| id != "c");
        assert_eq!(ids(&retries), ["a", "b"]);
    }
}

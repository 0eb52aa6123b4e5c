//! The pure election rule: what to do with the Lease as read, given our identity and the time.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;

/// What to do with the Lease as read, decided by [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it with us as holder.
    Create,
    /// We hold it: renew it.
    Renew,
    /// It is free or expired: take it over (a new term, `leaseTransitions` + 1).
    TakeOver,
    /// Another replica holds a valid Lease.
    Wait {
        /// The current holder.
        holder: String,
        /// Time until it may be taken over, by our clock.
        remaining: Duration,
    },
}

/// The pure election rule: given the Lease as read (`None` when absent), our identity and the local
/// time, what to do. A Lease without holder is free; a foreign Lease expires `clock_skew` after
/// `renewTime` (or `acquireTime`) + `leaseDurationSeconds`; one missing those times or with a
/// non-positive duration counts as expired. Our own Lease is renewed even if we are late: the
/// `resourceVersion` on the write detects whether anybody took it meanwhile.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp, clock_skew: Duration) -> Decision {
    let Some(lease) = lease else { return Decision::Create };
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.as_deref()).unwrap_or_default();
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let renewed = spec.and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()));
    let duration = spec.and_then(|s| s.lease_duration_seconds).filter(|d| *d > 0);
    let (Some(renewed), Some(duration)) = (renewed, duration) else { return Decision::TakeOver };
    let skew = i64::try_from(clock_skew.as_micros()).unwrap_or(i64::MAX);
    let expires = renewed.0.as_microsecond().saturating_add(i64::from(duration) * 1_000_000).saturating_add(skew);
    let remaining = expires.saturating_sub(now.as_microsecond());
    if remaining <= 0 {
        Decision::TakeOver
    } else {
        Decision::Wait { holder: holder.to_owned(), remaining: Duration::from_micros(remaining.unsigned_abs()) }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::super::DEFAULT_CLOCK_SKEW;
    use super::super::test_support::{ME, OTHER, lease_json};
    use super::*;

    fn ts(rfc3339: &str) -> Timestamp {
        rfc3339.parse().expect("valid timestamp")
    }

    fn lease(holder: Option<&str>, renewed: &str) -> Lease {
        serde_json::from_value(lease_json(holder, renewed, 3)).expect("valid Lease")
    }

    #[test]
    fn absent_lease_is_created() {
        assert_eq!(decide(None, ME, ts("2025-01-01T00:00:00Z"), DEFAULT_CLOCK_SKEW), Decision::Create);
    }

    #[test]
    fn own_lease_is_renewed_even_when_overdue() {
        let l = lease(Some(ME), "2025-01-01T00:00:00Z");
        assert_eq!(decide(Some(&l), ME, ts("2025-01-01T00:00:05Z"), DEFAULT_CLOCK_SKEW), Decision::Renew);
        assert_eq!(decide(Some(&l), ME, ts("2025-01-01T01:00:00Z"), DEFAULT_CLOCK_SKEW), Decision::Renew);
    }

    #[test]
    fn foreign_lease_is_respected_until_duration_and_skew_have_passed() {
        let l = lease(Some(OTHER), "2025-01-01T00:00:00Z");
        let skew = Duration::from_secs(2);
        assert_eq!(
            decide(Some(&l), ME, ts("2025-01-01T00:00:10Z"), skew),
            Decision::Wait { holder: OTHER.to_owned(), remaining: Duration::from_secs(7) }
        );
        // Past 15 s but within the skew tolerance: still theirs.
        assert!(matches!(decide(Some(&l), ME, ts("2025-01-01T00:00:16Z"), skew), Decision::Wait { .. }));
        assert_eq!(decide(Some(&l), ME, ts("2025-01-01T00:00:17Z"), skew), Decision::TakeOver);
    }

    #[test]
    fn released_or_incomplete_lease_is_free() {
        let released = lease(None, "2025-01-01T00:00:00Z");
        assert_eq!(decide(Some(&released), ME, ts("2025-01-01T00:00:01Z"), DEFAULT_CLOCK_SKEW), Decision::TakeOver);
        let mut no_duration = lease(Some(OTHER), "2025-01-01T00:00:00Z");
        if let Some(spec) = no_duration.spec.as_mut() {
            spec.lease_duration_seconds = None;
        }
        assert_eq!(decide(Some(&no_duration), ME, ts("2025-01-01T00:00:01Z"), DEFAULT_CLOCK_SKEW), Decision::TakeOver);
    }

    #[test]
    fn acquire_time_stands_in_for_a_missing_renew_time() {
        let mut l = lease(Some(OTHER), "2025-01-01T00:00:00Z");
        if let Some(spec) = l.spec.as_mut() {
            spec.renew_time = None;
            spec.acquire_time = Some(MicroTime(ts("2025-01-01T00:01:00Z")));
        }
        assert!(matches!(decide(Some(&l), ME, ts("2025-01-01T00:01:10Z"), Duration::ZERO), Decision::Wait { .. }));
    }
}

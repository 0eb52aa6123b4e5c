//! Where the Lease lives, who this replica is and how long a term lasts: [`LeaseConfig`], its
//! defaults and checks, and a per-process holder identity.

use std::time::Duration;

use super::LeaderError;

/// Name of the operator's Lease when none is configured.
pub const DEFAULT_LEASE_NAME: &str = "taxi-operator-leader";
/// How long a Lease stays valid after its last renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews, and how often the others check whether the Lease has expired.
pub const DEFAULT_RENEW_INTERVAL: Duration = Duration::from_secs(5);
/// How far apart the replicas' clocks may be; added before a foreign Lease counts as expired.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(2);
/// Field manager recorded on the Lease writes.
pub const FIELD_MANAGER: &str = "taxi-operator";

/// Where the Lease lives, who we are and how long a term lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the operator's own namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's holder identity, unique per process (see [`holder_identity`]).
    pub identity: String,
    /// How long the Lease stays ours without renewal; written as `leaseDurationSeconds`.
    pub lease_duration: Duration,
    /// Time between renewals (and between checks while another replica leads).
    pub renew_interval: Duration,
    /// Extra time a foreign Lease must be overdue before it is taken over, for clock differences.
    pub clock_skew: Duration,
}

impl LeaseConfig {
    /// The defaults: Lease [`DEFAULT_LEASE_NAME`], 15 s duration, renewal every 5 s, 2 s clock skew.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_owned(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_interval: DEFAULT_RENEW_INTERVAL,
            clock_skew: DEFAULT_CLOCK_SKEW,
        }
    }

    /// Fails on settings that cannot work (see [`LeaderElector::new`](super::LeaderElector::new)).
    pub(super) fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason: &'static str| Err(LeaderError::InvalidConfig { reason });
        if self.namespace.is_empty() || self.name.is_empty() {
            return invalid("the Lease needs a namespace and a name");
        }
        if self.identity.is_empty() {
            return invalid("the holder identity must not be empty");
        }
        if self.lease_duration < Duration::from_secs(1) || self.lease_duration.as_secs() > i32::MAX as u64 {
            return invalid("the lease duration must be between 1 s and i32::MAX seconds");
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.lease_duration {
            return invalid("the renew interval must be positive and shorter than the lease duration");
        }
        Ok(())
    }

    /// The lease duration as `leaseDurationSeconds`.
    pub(super) fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// A holder identity for this process: the pod name and a random suffix, so that a restarted
/// container with the same pod name is a different holder from its predecessor.
pub fn holder_identity(pod_name: &str) -> String {
    let suffix: String = std::iter::repeat_with(fastrand::lowercase).take(6).collect();
    format!("{pod_name}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ME, NS};
    use super::*;

    #[test]
    fn settings_are_validated() {
        let ok = LeaseConfig::new(NS, ME);
        assert!(ok.validate().is_ok());
        let slow = LeaseConfig { renew_interval: Duration::from_secs(15), ..ok.clone() };
        assert_eq!(slow.validate().map_err(|e| e.category()).err(), Some("config"));
        let anonymous = LeaseConfig { identity: String::new(), ..ok };
        assert!(anonymous.validate().is_err());
    }

    #[test]
    fn identities_carry_the_pod_name_and_differ_per_process() {
        let a = holder_identity("taxi-operator-0");
        let b = holder_identity("taxi-operator-0");
        assert!(a.starts_with("taxi-operator-0-") && a.len() == "taxi-operator-0-".len() + 6, "{a}");
        assert_ne!(a, b);
    }
}

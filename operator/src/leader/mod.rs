//! Leader election through a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! reconcile at the same time.
//!
//! One replica holds the Lease and renews it every [`LeaseConfig::renew_interval`]; the others poll
//! and take it over once it has not been renewed for [`LeaseConfig::lease_duration`] (plus
//! [`LeaseConfig::clock_skew`]). Every write is a `PUT` carrying the `resourceVersion` just read, so
//! of two replicas racing for the same Lease exactly one wins and the other gets `409 Conflict`.
//!
//! How the operator uses it:
//!
//! ```text
//! let (leading_tx, leading_rx) = watch::channel(false);
//! let (shutdown_tx, shutdown_rx) = watch::channel(false);
//! let elector = LeaderElector::new(client.clone(), LeaseConfig::new(namespace, holder_identity(&pod)))?;
//! let election = tokio::spawn(async move { elector.run(shutdown_rx, leading_tx, &metrics).await });
//! // The controller runs only while leading: it is dropped (in-flight reconciles cancelled) as soon
//! // as `false` is published, and started afresh when the Lease is won again.
//! run_while_leading(leading_rx, || controller_future()).await;
//! // On SIGTERM: stop the controller first, then `shutdown_tx.send(true)`; `run` publishes `false`
//! // and clears the holder so that the other replica takes over without waiting for expiry.
//! ```
//!
//! Leadership is published as `false` before the Lease can expire in anybody else's eyes: a replica
//! that cannot renew stops leading once [`LeaseConfig::lease_duration`] has passed since the *start*
//! of its last successful renewal, while the others wait that long after the renewal's *end* plus
//! [`LeaseConfig::clock_skew`].
//!
//! The parts: `config` (where the Lease is and how long a term lasts), `rule` (the pure decision on
//! the Lease as read), `elector` (the reads and writes against the API server, and the election
//! loop) and `gate` (running the controller only while leading).

use std::time::Duration;

mod config;
mod elector;
mod gate;
mod rule;
#[cfg(test)]
mod test_support;

pub use config::{
    DEFAULT_CLOCK_SKEW, DEFAULT_LEASE_DURATION, DEFAULT_LEASE_NAME, DEFAULT_RENEW_INTERVAL, FIELD_MANAGER, LeaseConfig,
    holder_identity,
};
pub use elector::LeaderElector;
pub use gate::run_while_leading;
pub use rule::{Decision, decide};

/// What leader election failed at. Conflicts and races are not errors: they mean "not leading".
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Reading the Lease failed (other than "not found").
    #[error("failed to read Lease {lease}")]
    Get {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating the Lease failed (other than "already exists").
    #[error("failed to create Lease {lease}")]
    Create {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the Lease failed (other than a conflict).
    #[error("failed to {action} Lease {lease}")]
    Replace {
        /// `renew`, `take over` or `release`.
        action: &'static str,
        /// `namespace/name` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer within the time left.
    #[error("timed out after {after:?} acquiring or renewing Lease {lease}")]
    Timeout {
        /// `namespace/name` of the Lease.
        lease: String,
        /// How long the attempt was given.
        after: Duration,
    },
    /// The settings cannot work.
    #[error("invalid leader election settings: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
}

impl LeaderError {
    /// A short fixed label for metrics: `forbidden`, `api`, `transport`, `serialization`,
    /// `kubernetes`, `timeout` or `config`.
    pub fn category(&self) -> &'static str {
        match self {
            LeaderError::Get { source, .. }
            | LeaderError::Create { source, .. }
            | LeaderError::Replace { source, .. } => match source {
                kube::Error::Api(status) if status.is_forbidden() => "forbidden",
                kube::Error::Api(_) => "api",
                kube::Error::HyperError(_) | kube::Error::Service(_) => "transport",
                kube::Error::SerdeError(_) => "serialization",
                _ => "kubernetes",
            },
            LeaderError::Timeout { .. } => "timeout",
            LeaderError::InvalidConfig { .. } => "config",
        }
    }
}

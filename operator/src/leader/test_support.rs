//! What the leader election tests share: the namespace, two holder identities and a Lease as the
//! API server returns it.

use serde_json::{Value, json};

pub(super) const NS: &str = "taxi-system";
pub(super) const ME: &str = "taxi-operator-0-abcdef";
pub(super) const OTHER: &str = "taxi-operator-1-zyxwvu";
pub(super) const OLD: &str = "2025-01-01T00:00:00.000000Z";

/// A Lease as the API server returns it, at `resourceVersion` 4711.
pub(super) fn lease_json(holder: Option<&str>, renewed: &str, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "taxi-operator-leader", "namespace": NS, "resourceVersion": "4711"},
        "spec": {
            "holderIdentity": holder,
            "acquireTime": OLD,
            "renewTime": renewed,
            "leaseDurationSeconds": 15,
            "leaseTransitions": transitions,
        }
    })
}

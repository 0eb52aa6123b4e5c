//! What each metric label holds. Where the code keeps a list of a label's values, the reference
//! shows that list; elsewhere the values are set by string literals or an error's `category()`,
//! so they are described here by hand and the page says so.
//!
//! A test of the metrics page checks that every label of every registered metric is described
//! here, and that every entry here names a label that exists.

use taxi_core::event::InvalidReason;
use taxi_operator::autoscale::Reason;
use taxi_operator::metrics::ReconcileOutcome;
use taxi_worker::metrics::{ASSIGNMENT_ERROR_REASONS, HANDOFF_OUTCOMES, SHARD_FAILURE_REASONS};

/// The values of one label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelValues {
    /// Every value, from a list in the code (named in `from`).
    Listed {
        /// The values.
        values: Vec<&'static str>,
        /// The list in the code.
        from: &'static str,
    },
    /// The code keeps no list: what the label holds, and what bounds it, in words.
    Open(&'static str),
}

const SHARD: &str = "the Kinesis shard id (`shardId-…`): one series per shard the worker reads; the gauges of a \
    shard are removed when the worker lets it go";
const PIPELINE: &str = "the TaxiPipeline as `namespace/name`: one series per pipeline, removed when it is deleted";

/// The values of `label` on `metric`, or `None` when nothing here describes it.
pub fn label_values(metric: &str, label: &str) -> Option<LabelValues> {
    match label {
        "shard" => return Some(LabelValues::Open(SHARD)),
        "pipeline" if metric.starts_with("taxi_operator_") => return Some(LabelValues::Open(PIPELINE)),
        _ => {}
    }
    described().into_iter().find(|(m, l, _)| *m == metric && *l == label).map(|(_, _, values)| values)
}

/// Every label described by metric and name (the `shard` and `pipeline` labels are described
/// once for every metric that has them).
pub fn described() -> Vec<(&'static str, &'static str, LabelValues)> {
    use LabelValues::{Listed, Open};
    vec![
        (
            "taxi_records_total",
            "outcome",
            Open(
                "what became of the record: `aggregated`, `outside_region`, `late`, `duplicate`, `watermark` (a \
             watermark event) or `invalid` (why: `taxi_invalid_records_total`)",
            ),
        ),
        (
            "taxi_invalid_records_total",
            "reason",
            Listed { values: InvalidReason::ALL.map(InvalidReason::as_str).to_vec(), from: "InvalidReason::ALL" },
        ),
        (
            "taxi_kinesis_errors_total",
            "operation",
            Open("the Kinesis call that failed, e.g. `GetRecords`, `SubscribeToShard` or `ListShards`"),
        ),
        (
            "taxi_kinesis_errors_total",
            "category",
            Open("the kind of failure: `throttled`, `transient`, `expired_iterator`, `not_found` or `permanent`"),
        ),
        ("taxi_checkpoint_seconds", "store", Open("the checkpoint store: `file` or `s3`")),
        (
            "taxi_checkpoint_failures_total",
            "reason",
            Open("`conflict` (another writer's checkpoint won), `corrupt` (a checkpoint that cannot be read) or `io`"),
        ),
        ("taxi_sink_documents_total", "sink", Open("the sink: `file` or `opensearch`")),
        (
            "taxi_shard_handoffs_total",
            "outcome",
            Listed { values: HANDOFF_OUTCOMES.to_vec(), from: "HANDOFF_OUTCOMES" },
        ),
        (
            "taxi_assignment_errors_total",
            "reason",
            Listed { values: ASSIGNMENT_ERROR_REASONS.to_vec(), from: "ASSIGNMENT_ERROR_REASONS" },
        ),
        (
            "taxi_shard_failures_total",
            "reason",
            Listed { values: SHARD_FAILURE_REASONS.to_vec(), from: "SHARD_FAILURE_REASONS" },
        ),
        (
            "taxi_sink_bulk_request_seconds",
            "outcome",
            Open("`ok` (every item stored), `item_errors` (some items refused) or `failed` (no answer to use)"),
        ),
        (
            "taxi_sink_bulk_request_errors_total",
            "category",
            Open(
                "why the whole request failed, e.g. `connection`, `timeout`, `throttled` (429), `server` (5xx), `client` \
             (another 4xx), `auth` (401, 403) or `too_large` (413 for a single document)",
            ),
        ),
        (
            "taxi_sink_item_errors_total",
            "reason",
            Open(
                "OpenSearch's error type for the item, folded into a fixed set: e.g. `mapper_parsing_exception`, \
             `version_conflict_engine_exception`, `es_rejected_execution_exception`, `too_many_requests`, \
             `server_error` or `other`",
            ),
        ),
        (
            "taxi_sink_item_errors_total",
            "action",
            Open(
                "what the sink did: `retried`, `dead_lettered`, `dropped` (no dead-letter store) or `superseded` (a \
             same-or-newer version is stored)",
            ),
        ),
        (
            "taxi_sink_retries_total",
            "scope",
            Open("`item` (one document queued again) or `request` (a whole request sent again)"),
        ),
        (
            "taxi_operator_reconciles_total",
            "outcome",
            Listed {
                values: ReconcileOutcome::ALL.map(ReconcileOutcome::as_str).to_vec(),
                from: "ReconcileOutcome::ALL",
            },
        ),
        (
            "taxi_operator_reconcile_errors_total",
            "category",
            Open("the service that failed: `kubernetes`, `kinesis` or `checkpoint_cleanup`"),
        ),
        (
            "taxi_operator_lease_errors_total",
            "category",
            Open(
                "`forbidden`, `api`, `transport`, `serialization` or `kubernetes` (how a call on the Lease failed), `timeout` \
             or `config`",
            ),
        ),
        (
            "taxi_operator_autoscale_decisions_total",
            "reason",
            Listed { values: Reason::KINDS.to_vec(), from: "autoscale::Reason::KINDS" },
        ),
    ]
}

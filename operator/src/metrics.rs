//! The operator's Prometheus metrics and what its HTTP endpoints report.
//!
//! Names start with `taxi_operator_`; labels are bounded: a reconcile outcome, an error category
//! from a fixed set of `&'static str`, and the pipeline (`namespace/name`, one series per
//! TaxiPipeline, removed with [`OperatorMetrics::forget`] when the pipeline is deleted).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::watch;

use crate::error_chain::ErrorChain;

/// Reconciles by outcome (`outcome` label).
pub const RECONCILES_TOTAL: &str = "taxi_operator_reconciles_total";
/// Reconcile latency histogram.
pub const RECONCILE_DURATION_SECONDS: &str = "taxi_operator_reconcile_duration_seconds";
/// Reconcile errors by category (`category` label).
pub const RECONCILE_ERRORS_TOTAL: &str = "taxi_operator_reconcile_errors_total";
/// Worker replicas the operator wants, per pipeline.
pub const DESIRED_REPLICAS: &str = "taxi_operator_desired_replicas";
/// Ready replicas of the worker StatefulSet as the last pass observed them, per pipeline.
pub const READY_REPLICAS: &str = "taxi_operator_ready_replicas";
/// Epoch of the current shard assignment, per pipeline.
pub const ASSIGNMENT_EPOCH: &str = "taxi_operator_assignment_epoch";
/// Open Kinesis shards of the pipeline's stream, per pipeline.
pub const OPEN_SHARDS: &str = "taxi_operator_open_shards";
/// 1 while this replica holds the leader Lease.
pub const LEADER: &str = "taxi_operator_leader";
/// Failed leader election attempts by category (`category` label).
pub const LEASE_ERRORS_TOTAL: &str = "taxi_operator_lease_errors_total";

/// Largest shard lag the autoscaler saw, per pipeline (ms).
pub const AUTOSCALE_MAX_LAG_MS: &str = "taxi_operator_autoscale_max_lag_ms";
/// Records per second the workers consumed over all shards, per pipeline.
pub const AUTOSCALE_CONSUMED_RECORDS_PER_SECOND: &str = "taxi_operator_autoscale_consumed_records_per_second";
/// Replicas the autoscaler recommends before stabilization, per pipeline.
pub const AUTOSCALE_RECOMMENDED_REPLICAS: &str = "taxi_operator_autoscale_recommended_replicas";
/// Autoscaler decisions by pipeline and reason kind.
pub const AUTOSCALE_DECISIONS_TOTAL: &str = "taxi_operator_autoscale_decisions_total";

/// Label names.
const OUTCOME: &str = "outcome";
const REASON: &str = "reason";
const CATEGORY: &str = "category";
const PIPELINE: &str = "pipeline";

/// How a reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReconcileOutcome {
    /// The cluster matches the spec.
    Success,
    /// The spec cannot be realised; the pipeline waits for a change (not retried).
    InvalidSpec,
    /// A transient failure; retried with backoff.
    Error,
}

impl ReconcileOutcome {
    /// Every outcome, in label order.
    pub const ALL: [ReconcileOutcome; 3] =
        [ReconcileOutcome::Success, ReconcileOutcome::InvalidSpec, ReconcileOutcome::Error];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileOutcome::Success => "success",
            ReconcileOutcome::InvalidSpec => "invalid_spec",
            ReconcileOutcome::Error => "error",
        }
    }
}

/// The `pipeline` label value of a TaxiPipeline: `namespace/name`.
pub fn pipeline_label(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Every metric the operator exports, in its own registry. Cloning shares the metrics.
#[derive(Clone, Debug)]
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_duration: Histogram,
    reconcile_errors: IntCounterVec,
    desired_replicas: IntGaugeVec,
    ready_replicas: IntGaugeVec,
    assignment_epoch: IntGaugeVec,
    open_shards: IntGaugeVec,
    leader: IntGauge,
    lease_errors: IntCounterVec,
    autoscale_max_lag_ms: IntGaugeVec,
    autoscale_consumed: GaugeVec,
    autoscale_recommended: IntGaugeVec,
    autoscale_decisions: IntCounterVec,
}

impl OperatorMetrics {
    /// Creates and registers every metric. Fails only if the definitions are inconsistent.
    pub fn new() -> Result<OperatorMetrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, label: &str| -> Result<IntCounterVec, prometheus::Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let pipeline_gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &[PIPELINE])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let reconciles = counter(RECONCILES_TOTAL, "Reconciles of TaxiPipelines, by outcome", OUTCOME)?;
        for outcome in ReconcileOutcome::ALL {
            reconciles.with_label_values(&[outcome.as_str()]);
        }
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(RECONCILE_DURATION_SECONDS, "Time one reconcile of a TaxiPipeline took (s)")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        let autoscale_consumed = GaugeVec::new(
            Opts::new(
                AUTOSCALE_CONSUMED_RECORDS_PER_SECOND,
                "Records per second consumed over all shards, per pipeline",
            ),
            &[PIPELINE],
        )?;
        registry.register(Box::new(autoscale_consumed.clone()))?;
        let autoscale_decisions = IntCounterVec::new(
            Opts::new(AUTOSCALE_DECISIONS_TOTAL, "Autoscaler decisions, by pipeline and reason"),
            &[PIPELINE, REASON],
        )?;
        registry.register(Box::new(autoscale_decisions.clone()))?;
        let leader = IntGauge::new(LEADER, "1 while this replica holds the leader Lease, else 0")?;
        registry.register(Box::new(leader.clone()))?;
        Ok(OperatorMetrics {
            reconciles,
            reconcile_duration,
            reconcile_errors: counter(RECONCILE_ERRORS_TOTAL, "Failed reconciles, by error category", CATEGORY)?,
            desired_replicas: pipeline_gauge(DESIRED_REPLICAS, "Worker replicas the operator wants, per pipeline")?,
            ready_replicas: pipeline_gauge(
                READY_REPLICAS,
                "Ready replicas of the worker StatefulSet at the last reconcile, per pipeline",
            )?,
            assignment_epoch: pipeline_gauge(ASSIGNMENT_EPOCH, "Epoch of the current shard assignment, per pipeline")?,
            open_shards: pipeline_gauge(OPEN_SHARDS, "Open shards of the pipeline's Kinesis stream, per pipeline")?,
            leader,
            lease_errors: counter(LEASE_ERRORS_TOTAL, "Failed leader election attempts, by category", CATEGORY)?,
            autoscale_max_lag_ms: pipeline_gauge(AUTOSCALE_MAX_LAG_MS, "Largest shard lag the autoscaler saw (ms)")?,
            autoscale_consumed,
            autoscale_recommended: pipeline_gauge(
                AUTOSCALE_RECOMMENDED_REPLICAS,
                "Replicas the autoscaler recommends before stabilization",
            )?,
            autoscale_decisions,
            registry,
        })
    }

    /// Every metric of the operator as a collector, whose descriptor (name, help, label names)
    /// and type can be read before any series exists: the registry lists only metrics with a
    /// series. The metrics reference (docs/reference/metrics.md) is generated from it. The fields
    /// are named one by one, so a new metric does not compile until it is listed here.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        fn boxed<C: Collector + Clone + 'static>(collector: &C) -> Box<dyn Collector> {
            Box::new(collector.clone())
        }
        let OperatorMetrics {
            registry: _,
            reconciles,
            reconcile_duration,
            reconcile_errors,
            desired_replicas,
            ready_replicas,
            assignment_epoch,
            open_shards,
            leader,
            lease_errors,
            autoscale_max_lag_ms,
            autoscale_consumed,
            autoscale_recommended,
            autoscale_decisions,
        } = self;
        vec![
            boxed(reconciles),
            boxed(reconcile_duration),
            boxed(reconcile_errors),
            boxed(desired_replicas),
            boxed(ready_replicas),
            boxed(assignment_epoch),
            boxed(open_shards),
            boxed(leader),
            boxed(lease_errors),
            boxed(autoscale_max_lag_ms),
            boxed(autoscale_consumed),
            boxed(autoscale_recommended),
            boxed(autoscale_decisions),
        ]
    }

    /// The registry, to add metrics defined elsewhere.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one finished reconcile: its outcome and how long it took.
    pub fn observe_reconcile(&self, outcome: ReconcileOutcome, duration: Duration) {
        self.reconciles.with_label_values(&[outcome.as_str()]).inc();
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// Counts a reconcile error of `category` (the reconcile error's fixed `category()`).
    pub fn reconcile_error(&self, category: &'static str) {
        self.reconcile_errors.with_label_values(&[category]).inc();
    }

    /// Reconciles counted so far with `outcome`.
    pub fn reconciles(&self, outcome: ReconcileOutcome) -> u64 {
        self.reconciles.with_label_values(&[outcome.as_str()]).get()
    }

    /// Sets the worker replicas wanted for `pipeline` (see [`pipeline_label`]).
    pub fn set_desired_replicas(&self, pipeline: &str, replicas: i32) {
        self.desired_replicas.with_label_values(&[pipeline]).set(i64::from(replicas));
    }

    /// Sets the ready replicas of `pipeline`'s worker StatefulSet, as observed by a reconcile.
    pub fn set_ready_replicas(&self, pipeline: &str, replicas: i32) {
        self.ready_replicas.with_label_values(&[pipeline]).set(i64::from(replicas));
    }

    /// Sets the epoch of `pipeline`'s current shard assignment.
    pub fn set_assignment_epoch(&self, pipeline: &str, epoch: u64) {
        self.assignment_epoch.with_label_values(&[pipeline]).set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// Sets the number of open shards of `pipeline`'s stream.
    pub fn set_open_shards(&self, pipeline: &str, shards: usize) {
        self.open_shards.with_label_values(&[pipeline]).set(i64::try_from(shards).unwrap_or(i64::MAX));
    }

    /// Removes every series of a deleted pipeline.
    pub fn forget(&self, pipeline: &str) {
        for gauge in [
            &self.desired_replicas,
            &self.ready_replicas,
            &self.assignment_epoch,
            &self.open_shards,
            &self.autoscale_max_lag_ms,
            &self.autoscale_recommended,
        ] {
            // Not found only means that series was never set.
            let _ = gauge.remove_label_values(&[pipeline]);
        }
        let _ = self.autoscale_consumed.remove_label_values(&[pipeline]);
        for reason in crate::autoscale::Reason::KINDS {
            let _ = self.autoscale_decisions.remove_label_values(&[pipeline, reason]);
        }
    }

    /// Records the autoscaler's inputs and its decision for a pipeline.
    pub fn observe_autoscale(
        &self,
        pipeline: &str,
        max_lag_ms: Option<u64>,
        consumed_per_s: f64,
        recommended: u32,
        reason: &'static str,
    ) {
        if let Some(lag) = max_lag_ms {
            self.autoscale_max_lag_ms.with_label_values(&[pipeline]).set(i64::try_from(lag).unwrap_or(i64::MAX));
        }
        self.autoscale_consumed.with_label_values(&[pipeline]).set(consumed_per_s);
        self.autoscale_recommended.with_label_values(&[pipeline]).set(i64::from(recommended));
        self.autoscale_decisions.with_label_values(&[pipeline, reason]).inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Counts a failed leader election attempt of `category` (see `LeaderError::category`).
    pub fn lease_error(&self, category: &'static str) {
        self.lease_errors.with_label_values(&[category]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        match TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            Ok(()) => String::from_utf8(buffer).unwrap_or_default(),
            Err(e) => format!("# failed to encode metrics: {e}\n"),
        }
    }
}

/// The last reconcile error, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileFailure {
    /// `namespace/name` of the pipeline.
    pub pipeline: String,
    /// The error's fixed category.
    pub category: &'static str,
    /// The error with its causes.
    pub message: String,
    /// When it happened (RFC 3339).
    pub at: String,
}

/// What the operator's HTTP endpoints report (`/readyz`, `/metrics`, `/status`), served with
/// `taxi_io::http::bind`.
#[derive(Debug)]
pub struct OperatorState {
    /// The operator's metrics.
    pub metrics: OperatorMetrics,
    leading: watch::Receiver<bool>,
    watch_synced: AtomicBool,
    last_error: Mutex<Option<ReconcileFailure>>,
}

impl OperatorState {
    /// State reporting `metrics` and the leadership published by the leader elector on `leading`.
    pub fn new(metrics: OperatorMetrics, leading: watch::Receiver<bool>) -> OperatorState {
        OperatorState { metrics, leading, watch_synced: AtomicBool::new(false), last_error: Mutex::new(None) }
    }

    /// Whether this replica currently leads.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Marks that the controller's first list of TaxiPipelines has completed.
    pub fn mark_watch_synced(&self) {
        self.watch_synced.store(true, Ordering::Release);
    }

    /// Marks that the controller (re)starts and has not listed TaxiPipelines yet, e.g. on
    /// regaining leadership.
    pub fn mark_watch_unsynced(&self) {
        self.watch_synced.store(false, Ordering::Release);
    }

    /// Whether the controller's first list has completed.
    pub fn is_watch_synced(&self) -> bool {
        self.watch_synced.load(Ordering::Acquire)
    }

    /// Counts a reconcile error in the metrics and keeps it as the last error for `/status`.
    pub fn record_reconcile_error(&self, pipeline: &str, category: &'static str, error: &dyn std::error::Error) {
        self.metrics.reconcile_error(category);
        let message = ErrorChain(error).to_string();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| k8s_openapi::jiff::Timestamp::from_second(i64::try_from(d.as_secs()).ok()?).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        let failure = ReconcileFailure { pipeline: pipeline.to_owned(), category, message, at };
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(failure);
    }

    /// The last reconcile error, if any.
    pub fn last_error(&self) -> Option<ReconcileFailure> {
        self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl taxi_io::http::Endpoints for OperatorState {
    /// A replica standing by (not leading) is ready: it can take over. The leader is ready once its
    /// first list of TaxiPipelines has completed.
    fn readiness(&self) -> Result<(), String> {
        if !self.is_leading() || self.is_watch_synced() {
            Ok(())
        } else {
            Err("leading, but the first list of TaxiPipelines has not completed".to_owned())
        }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn status(&self) -> serde_json::Value {
        let reconciles: serde_json::Map<String, serde_json::Value> = ReconcileOutcome::ALL
            .into_iter()
            .map(|outcome| (outcome.as_str().to_owned(), self.metrics.reconciles(outcome).into()))
            .collect();
        serde_json::json!({
            "leading": self.is_leading(),
            "watch_synced": self.is_watch_synced(),
            "reconciles": reconciles,
            "last_error": self.last_error(),
        })
    }
}

#[cfg(test)]
mod tests {
    use taxi_io::http::Endpoints;

    use super::*;

    fn lines_with<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(name)).collect()
    }

    #[test]
    fn every_outcome_is_exported_from_the_start() {
        let metrics = OperatorMetrics::new().expect("metrics");
        let text = metrics.render();
        for outcome in ["success", "invalid_spec", "error"] {
            assert!(text.contains(&format!("{RECONCILES_TOTAL}{{outcome=\"{outcome}\"}} 0")), "{text}");
        }
        assert!(text.contains(&format!("{LEADER} 0")), "{text}");
    }

    #[test]
    fn observations_appear_with_their_labels() {
        let metrics = OperatorMetrics::new().expect("metrics");
        metrics.observe_reconcile(ReconcileOutcome::Success, Duration::from_millis(30));
        metrics.observe_reconcile(ReconcileOutcome::Success, Duration::from_millis(40));
        metrics.observe_reconcile(ReconcileOutcome::InvalidSpec, Duration::from_millis(2));
        metrics.reconcile_error("kinesis");
        metrics.set_desired_replicas(&pipeline_label("rides", "nyc"), 3);
        metrics.set_ready_replicas("rides/nyc", 2);
        metrics.set_assignment_epoch("rides/nyc", 7);
        metrics.set_open_shards("rides/nyc", 12);
        metrics.set_leader(true);
        metrics.lease_error("forbidden");
        let text = metrics.render();
        assert!(text.contains(r#"taxi_operator_reconciles_total{outcome="success"} 2"#), "{text}");
        assert!(text.contains(r#"taxi_operator_reconciles_total{outcome="invalid_spec"} 1"#), "{text}");
        assert!(text.contains(r#"taxi_operator_reconciles_total{outcome="error"} 0"#), "{text}");
        assert!(text.contains("taxi_operator_reconcile_duration_seconds_count 3"), "{text}");
        assert!(text.contains(r#"taxi_operator_reconcile_duration_seconds_bucket{le="0.025"} 1"#), "{text}");
        assert!(text.contains(r#"taxi_operator_reconcile_errors_total{category="kinesis"} 1"#), "{text}");
        assert!(text.contains(r#"taxi_operator_desired_replicas{pipeline="rides/nyc"} 3"#), "{text}");
        assert!(text.contains(r#"taxi_operator_ready_replicas{pipeline="rides/nyc"} 2"#), "{text}");
        assert!(text.contains(r#"taxi_operator_assignment_epoch{pipeline="rides/nyc"} 7"#), "{text}");
        assert!(text.contains(r#"taxi_operator_open_shards{pipeline="rides/nyc"} 12"#), "{text}");
        assert!(text.contains("taxi_operator_leader 1"), "{text}");
        assert!(text.contains(r#"taxi_operator_lease_errors_total{category="forbidden"} 1"#), "{text}");
        assert_eq!(metrics.reconciles(ReconcileOutcome::Success), 2);
    }

    #[test]
    fn forget_removes_only_that_pipelines_series() {
        let metrics = OperatorMetrics::new().expect("metrics");
        for (pipeline, replicas) in [("rides/nyc", 3), ("rides/chicago", 5)] {
            metrics.set_desired_replicas(pipeline, replicas);
            metrics.set_ready_replicas(pipeline, replicas);
            metrics.set_assignment_epoch(pipeline, 1);
            metrics.set_open_shards(pipeline, 4);
        }
        metrics.forget("rides/nyc");
        metrics.forget("never/seen");
        let text = metrics.render();
        assert!(!text.contains("rides/nyc"), "{text}");
        for name in [DESIRED_REPLICAS, READY_REPLICAS, ASSIGNMENT_EPOCH, OPEN_SHARDS] {
            assert_eq!(lines_with(&text, name).len(), 1, "{name} in {text}");
        }
        assert!(text.contains(r#"taxi_operator_desired_replicas{pipeline="rides/chicago"} 5"#), "{text}");
    }

    #[test]
    fn the_collectors_are_the_registered_metrics() {
        let metrics = OperatorMetrics::new().expect("metrics");
        let collectors = metrics.collectors();
        assert_eq!(collectors.len(), 13);
        for collector in collectors {
            let name = collector.desc()[0].fq_name.clone();
            let again = metrics.registry().register(collector);
            assert!(matches!(again, Err(prometheus::Error::AlreadyReg)), "{name} is not the registered metric");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failed to apply StatefulSet")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn standby_is_ready_and_the_leader_once_its_watch_has_listed() {
        let (leading_tx, leading_rx) = watch::channel(false);
        let state = OperatorState::new(OperatorMetrics::new().expect("metrics"), leading_rx);
        assert_eq!(state.readiness(), Ok(()));
        leading_tx.send(true).expect("state listens");
        assert!(state.readiness().is_err());
        state.mark_watch_synced();
        assert_eq!(state.readiness(), Ok(()));
        state.mark_watch_unsynced();
        assert!(state.readiness().is_err());
    }

    #[test]
    fn status_reports_leadership_counts_and_the_last_error() {
        let (_leading_tx, leading_rx) = watch::channel(true);
        let state = OperatorState::new(OperatorMetrics::new().expect("metrics"), leading_rx);
        state.metrics.observe_reconcile(ReconcileOutcome::Error, Duration::from_millis(5));
        let error = Outer(std::io::Error::other("connection reset"));
        state.record_reconcile_error("rides/nyc", "kubernetes", &error);
        let status = state.status();
        assert_eq!(status["leading"], true);
        assert_eq!(status["watch_synced"], false);
        assert_eq!(status["reconciles"], serde_json::json!({"success": 0, "invalid_spec": 0, "error": 1}));
        assert_eq!(status["last_error"]["pipeline"], "rides/nyc");
        assert_eq!(status["last_error"]["category"], "kubernetes");
        assert_eq!(status["last_error"]["message"], "failed to apply StatefulSet: connection reset");
        assert!(status["last_error"]["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{status}");
        assert!(state.metrics().contains(r#"taxi_operator_reconcile_errors_total{category="kubernetes"} 1"#));
    }
}

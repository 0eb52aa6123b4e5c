//! Prometheus metrics of a worker. Names start with `taxi_`; labels are bounded sets
//! (shard id, outcome, reason, operation) — never a record key or an error message.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Outcomes of `taxi_shard_handoffs_total`.
pub const HANDOFF_OUTCOMES: [&str; 3] = ["released", "claimed_after_release", "taken_over_after_timeout"];
/// Reasons of `taxi_assignment_errors_total`: why an assignment document was not used.
pub const ASSIGNMENT_ERROR_REASONS: [&str; 4] = ["missing", "malformed", "stale_epoch", "watch"];
/// Reasons of `taxi_shard_failures_total`: why a shard stopped and waits to be retried.
pub const SHARD_FAILURE_REASONS: [&str; 7] =
    ["checkpoint_store", "corrupt_checkpoint", "settings_changed", "kinesis", "sink", "archive", "other"];

/// Every metric a worker exports, registered in one registry.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Records processed, by outcome (`aggregated`, `outside_region`, `late`, `duplicate`, `watermark`,
    /// `invalid`).
    pub records: IntCounterVec,
    /// Invalid records, by reason.
    pub invalid: IntCounterVec,
    /// Records read from Kinesis, by shard.
    pub records_read: IntCounterVec,
    /// Bytes read from Kinesis, by shard.
    pub bytes_read: IntCounterVec,
    /// How far each shard's reader is behind the tip of the shard.
    pub millis_behind_latest: IntGaugeVec,
    /// Event-time lag of each shard's watermark behind the wall clock.
    pub watermark_lag_seconds: IntGaugeVec,
    /// GetRecords latency, by shard.
    pub get_records_seconds: HistogramVec,
    /// Kinesis calls that failed, by operation and category (`throttled`, `transient`, …).
    pub kinesis_errors: IntCounterVec,
    /// Checkpoint write latency.
    pub checkpoint_seconds: HistogramVec,
    /// Checkpoint writes that failed, by reason (`conflict`, `io`, …).
    pub checkpoint_failures: IntCounterVec,
    /// Size of the last checkpoint written, by shard.
    pub checkpoint_bytes: IntGaugeVec,
    /// Wall clock (Unix seconds) of each shard's last successful checkpoint: its age is what the
    /// missed-checkpoint alert watches.
    pub checkpoint_last_success: IntGaugeVec,
    /// This worker's time between two checkpoints of a shard, from its settings (s): the
    /// missed-checkpoint alert allows a checkpoint age of a multiple of it.
    pub checkpoint_interval_seconds: Gauge,
    /// Partial documents written to the sink.
    pub sink_documents: IntCounterVec,
    /// Shards this worker reads.
    pub owned_shards: IntGauge,
    /// Refused documents stored as dead letters, awaiting re-delivery (as far as this worker knows).
    pub sink_dead_letters: IntGauge,
    /// Shard handoffs, by outcome ([`HANDOFF_OUTCOMES`]): `released` by the old owner,
    /// `claimed_after_release` or `taken_over_after_timeout` by the new one.
    pub shard_handoffs: IntCounterVec,
    /// New owner's pause per handoff: from seeing the assignment that grants a shard until reading it.
    pub handoff_pause_seconds: Histogram,
    /// Epoch of the assignment this worker follows (0 before the first, and with `--assignment all`).
    pub assignment_epoch: IntGauge,
    /// Assignment documents not used, by reason ([`ASSIGNMENT_ERROR_REASONS`]).
    pub assignment_errors: IntCounterVec,
    /// Shards that failed and wait to be retried, by reason ([`SHARD_FAILURE_REASONS`]).
    pub shard_failures: IntCounterVec,
    /// Shards failed now (waiting for their retry); the worker and its other shards go on.
    pub failed_shards: IntGauge,
    /// Trips written to the archive (counted when their file is uploaded).
    pub archive_trips: IntCounter,
    /// Archive files uploaded.
    pub archive_files: IntCounter,
    /// Bytes of archive files uploaded.
    pub archive_bytes: IntCounter,
    /// Archive uploads that failed (each is retried at the shard's next checkpoint).
    pub archive_failures: IntCounter,
    /// How long the oldest trip read and not yet archived has waited, by shard (s).
    pub archive_lag_seconds: IntGaugeVec,
}

impl WorkerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> WorkerMetrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
            registry.register(Box::new(g.clone())).expect("metric registered once");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric definition");
            registry.register(Box::new(h.clone())).expect("metric registered once");
            h
        };
        let plain_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric definition");
            registry.register(Box::new(c.clone())).expect("metric registered once");
            c
        };
        let latency = vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];
        let owned_shards =
            IntGauge::new("taxi_owned_shards", "Shards this worker reads").expect("valid metric definition");
        registry.register(Box::new(owned_shards.clone())).expect("metric registered once");
        let sink_dead_letters =
            IntGauge::new("taxi_sink_dead_letters", "Refused documents stored as dead letters, awaiting re-delivery")
                .expect("valid metric definition");
        registry.register(Box::new(sink_dead_letters.clone())).expect("metric registered once");
        let assignment_epoch = IntGauge::new("taxi_assignment_epoch", "Epoch of the assignment this worker follows")
            .expect("valid metric definition");
        registry.register(Box::new(assignment_epoch.clone())).expect("metric registered once");
        let handoff_pause_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "taxi_shard_handoff_pause_seconds",
                "New owner's pause per shard handoff, from the assignment granting it until reading it",
            )
            .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0]),
        )
        .expect("valid metric definition");
        registry.register(Box::new(handoff_pause_seconds.clone())).expect("metric registered once");
        let shard_handoffs = counter("taxi_shard_handoffs_total", "Shard handoffs, by outcome", &["outcome"]);
        for outcome in HANDOFF_OUTCOMES {
            shard_handoffs.with_label_values(&[outcome]);
        }
        let assignment_errors =
            counter("taxi_assignment_errors_total", "Assignment documents not used, by reason", &["reason"]);
        for reason in ASSIGNMENT_ERROR_REASONS {
            assignment_errors.with_label_values(&[reason]);
        }
        let shard_failures =
            counter("taxi_shard_failures_total", "Shards that failed and wait to be retried, by reason", &["reason"]);
        for reason in SHARD_FAILURE_REASONS {
            shard_failures.with_label_values(&[reason]);
        }
        let failed_shards = IntGauge::new("taxi_failed_shards", "Shards failed now, waiting for their retry")
            .expect("valid metric definition");
        registry.register(Box::new(failed_shards.clone())).expect("metric registered once");
        let checkpoint_interval_seconds = Gauge::new(
            "taxi_checkpoint_interval_seconds",
            "Time between two checkpoints of a shard, as configured (s)",
        )
        .expect("valid metric definition");
        registry.register(Box::new(checkpoint_interval_seconds.clone())).expect("metric registered once");
        WorkerMetrics {
            records: counter("taxi_records_total", "Records processed, by outcome", &["outcome"]),
            invalid: counter("taxi_invalid_records_total", "Invalid records, by reason", &["reason"]),
            records_read: counter("taxi_kinesis_records_read_total", "Kinesis records read", &["shard"]),
            bytes_read: counter("taxi_kinesis_bytes_read_total", "Kinesis payload bytes read", &["shard"]),
            millis_behind_latest: gauge(
                "taxi_millis_behind_latest",
                "How far the reader is behind the tip of the shard (ms)",
                &["shard"],
            ),
            watermark_lag_seconds: gauge(
                "taxi_watermark_lag_seconds",
                "Wall clock minus the shard's watermark (s)",
                &["shard"],
            ),
            get_records_seconds: histogram(
                "taxi_kinesis_get_records_seconds",
                "GetRecords latency",
                &["shard"],
                latency.clone(),
            ),
            kinesis_errors: counter(
                "taxi_kinesis_errors_total",
                "Failed Kinesis calls, by operation and category",
                &["operation", "category"],
            ),
            checkpoint_seconds: histogram("taxi_checkpoint_seconds", "Checkpoint write latency", &["store"], latency),
            checkpoint_failures: counter(
                "taxi_checkpoint_failures_total",
                "Checkpoint writes that failed, by reason",
                &["reason"],
            ),
            checkpoint_bytes: gauge("taxi_checkpoint_bytes", "Size of the last checkpoint", &["shard"]),
            checkpoint_last_success: gauge(
                "taxi_checkpoint_last_success_timestamp_seconds",
                "Unix time of the shard's last successful checkpoint (s)",
                &["shard"],
            ),
            checkpoint_interval_seconds,
            sink_documents: counter("taxi_sink_documents_total", "Partial documents written", &["sink"]),
            owned_shards,
            sink_dead_letters,
            shard_handoffs,
            handoff_pause_seconds,
            assignment_epoch,
            assignment_errors,
            shard_failures,
            failed_shards,
            archive_trips: plain_counter("taxi_archive_trips_total", "Trips written to the archive"),
            archive_files: plain_counter("taxi_archive_files_total", "Archive files uploaded"),
            archive_bytes: plain_counter("taxi_archive_bytes_total", "Bytes of archive files uploaded"),
            archive_failures: plain_counter(
                "taxi_archive_failures_total",
                "Archive uploads that failed (retried at the next checkpoint)",
            ),
            archive_lag_seconds: gauge(
                "taxi_archive_lag_seconds",
                "How long the oldest trip not yet archived has waited (s)",
                &["shard"],
            ),
            registry,
        }
    }

    /// Every metric of the set as a collector, whose descriptor (name, help, label names) and
    /// type can be read before any series exists: the registry lists only metrics with a series.
    /// The metrics reference (docs/reference/metrics.md) is generated from it. The fields are
    /// named one by one, so a new metric does not compile until it is listed here.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        fn boxed<C: Collector + Clone + 'static>(collector: &C) -> Box<dyn Collector> {
            Box::new(collector.clone())
        }
        let WorkerMetrics {
            registry: _,
            records,
            invalid,
            records_read,
            bytes_read,
            millis_behind_latest,
            watermark_lag_seconds,
            get_records_seconds,
            kinesis_errors,
            checkpoint_seconds,
            checkpoint_failures,
            checkpoint_bytes,
            checkpoint_last_success,
            checkpoint_interval_seconds,
            sink_documents,
            owned_shards,
            sink_dead_letters,
            shard_handoffs,
            handoff_pause_seconds,
            assignment_epoch,
            assignment_errors,
            shard_failures,
            failed_shards,
            archive_trips,
            archive_files,
            archive_bytes,
            archive_failures,
            archive_lag_seconds,
        } = self;
        vec![
            boxed(records),
            boxed(invalid),
            boxed(records_read),
            boxed(bytes_read),
            boxed(millis_behind_latest),
            boxed(watermark_lag_seconds),
            boxed(get_records_seconds),
            boxed(kinesis_errors),
            boxed(checkpoint_seconds),
            boxed(checkpoint_failures),
            boxed(checkpoint_bytes),
            boxed(checkpoint_last_success),
            boxed(checkpoint_interval_seconds),
            boxed(sink_documents),
            boxed(owned_shards),
            boxed(sink_dead_letters),
            boxed(shard_handoffs),
            boxed(handoff_pause_seconds),
            boxed(assignment_epoch),
            boxed(assignment_errors),
            boxed(shard_failures),
            boxed(failed_shards),
            boxed(archive_trips),
            boxed(archive_files),
            boxed(archive_bytes),
            boxed(archive_failures),
            boxed(archive_lag_seconds),
        ]
    }

    /// The registry, for components that register their own metrics (e.g. the OpenSearch sink).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records a checkpoint of `shard` written at `unix_millis`, `bytes` long.
    pub fn checkpoint_written(&self, shard: &str, unix_millis: i64, bytes: usize) {
        self.checkpoint_bytes.with_label_values(&[shard]).set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.checkpoint_last_success.with_label_values(&[shard]).set(unix_millis.div_euclid(1000));
    }

    /// Removes the per-shard gauges of a shard this worker no longer reads (released, fenced,
    /// finished): their last values would otherwise stay, and alerts on lag or checkpoint age
    /// would fire for a shard another worker now reads. Counters stay: their rate drops to zero.
    pub fn forget_shard(&self, shard: &str) {
        for gauge in [
            &self.millis_behind_latest,
            &self.watermark_lag_seconds,
            &self.checkpoint_bytes,
            &self.checkpoint_last_success,
        ] {
            // Not found only means that gauge was never set for the shard.
            let _ = gauge.remove_label_values(&[shard]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_with_their_labels() {
        let m = WorkerMetrics::new();
        m.records.with_label_values(&["aggregated"]).inc_by(3);
        m.millis_behind_latest.with_label_values(&["shardId-000000000001"]).set(1500);
        m.owned_shards.set(4);
        let text = m.render();
        assert!(text.contains("taxi_records_total{outcome=\"aggregated\"} 3"), "{text}");
        assert!(text.contains("taxi_millis_behind_latest{shard=\"shardId-000000000001\"} 1500"), "{text}");
        assert!(text.contains("taxi_owned_shards 4"), "{text}");
    }

    #[test]
    fn a_checkpoint_sets_its_shards_time_and_size_and_forgetting_the_shard_removes_only_its_gauges() {
        let m = WorkerMetrics::new();
        m.checkpoint_written("shardId-000000000001", 1_767_225_600_999, 512);
        m.checkpoint_written("shardId-000000000002", 1_767_225_700_000, 256);
        m.millis_behind_latest.with_label_values(&["shardId-000000000001"]).set(40);
        m.records_read.with_label_values(&["shardId-000000000001"]).inc_by(9);
        let text = m.render();
        let one = r#"taxi_checkpoint_last_success_timestamp_seconds{shard="shardId-000000000001"} 1767225600"#;
        assert!(text.contains(one), "whole seconds, rounded down: {text}");
        assert!(text.contains(r#"taxi_checkpoint_bytes{shard="shardId-000000000001"} 512"#), "{text}");

        m.forget_shard("shardId-000000000001");
        m.forget_shard("shardId-never-read");
        let text = m.render();
        assert!(!text.contains(one), "{text}");
        assert!(!text.contains(r#"taxi_millis_behind_latest{shard="shardId-000000000001"}"#), "{text}");
        assert!(!text.contains(r#"taxi_checkpoint_bytes{shard="shardId-000000000001"}"#), "{text}");
        let two = r#"taxi_checkpoint_last_success_timestamp_seconds{shard="shardId-000000000002"} 1767225700"#;
        assert!(text.contains(two), "{text}");
        assert!(text.contains(r#"taxi_kinesis_records_read_total{shard="shardId-000000000001"} 9"#), "{text}");
    }

    #[test]
    fn the_checkpoint_interval_is_one_gauge_without_labels_in_seconds() {
        let m = WorkerMetrics::new();
        m.checkpoint_interval_seconds.set(2.5);
        let text = m.render();
        assert!(
            text.contains("# TYPE taxi_checkpoint_interval_seconds gauge\ntaxi_checkpoint_interval_seconds 2.5\n"),
            "{text}"
        );
    }

    #[test]
    fn the_collectors_are_the_registered_metrics_each_once() {
        let m = WorkerMetrics::new();
        let collectors = m.collectors();
        let mut names: Vec<String> = collectors.iter().flat_map(|c| c.desc()).map(|d| d.fq_name.clone()).collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "a metric listed twice: {names:?}");
        for collector in collectors {
            let name = collector.desc()[0].fq_name.clone();
            let again = m.registry().register(collector);
            assert!(matches!(again, Err(prometheus::Error::AlreadyReg)), "{name} is not the registered metric");
        }
    }

    #[test]
    fn handoff_metrics_show_every_outcome_from_the_start() {
        let m = WorkerMetrics::new();
        m.assignment_epoch.set(7);
        m.handoff_pause_seconds.observe(1.5);
        let text = m.render();
        for outcome in HANDOFF_OUTCOMES {
            assert!(text.contains(&format!("taxi_shard_handoffs_total{{outcome=\"{outcome}\"}} 0")), "{text}");
        }
        assert!(text.contains("taxi_assignment_errors_total{reason=\"malformed\"} 0"), "{text}");
        assert!(text.contains("taxi_assignment_epoch 7"), "{text}");
        assert!(text.contains("taxi_shard_handoff_pause_seconds_bucket{le=\"2\"} 1"), "{text}");
    }
}

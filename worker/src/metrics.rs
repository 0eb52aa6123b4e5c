//! Prometheus metrics of a worker (DESIGN §8). Names start with `taxi_`; labels are bounded sets
//! (shard id, outcome, reason, operation) — never a record key or an error message.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric a worker exports, registered in one registry.
#[derive(Clone, Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Records processed, by outcome (`aggregated`, `outside_region`, `late`, `watermark`, `invalid`).
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
    /// Partial documents written to the sink.
    pub sink_documents: IntCounterVec,
    /// Shards this worker reads.
    pub owned_shards: IntGauge,
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
        let latency = vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0];
        let owned_shards =
            IntGauge::new("taxi_owned_shards", "Shards this worker reads").expect("valid metric definition");
        registry.register(Box::new(owned_shards.clone())).expect("metric registered once");
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
            sink_documents: counter("taxi_sink_documents_total", "Partial documents written", &["sink"]),
            owned_shards,
            registry,
        }
    }

    /// The registry, for components that register their own metrics (e.g. the OpenSearch sink).
    pub fn registry(&self) -> &Registry {
        &self.registry
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
}

//! The sink's metrics, all named `taxi_sink_*`, with bounded labels.

use prometheus::core::Collector;
use prometheus::{Counter, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric the sink registers, as collectors whose descriptors (name, help, label names) and
/// types can be read without a sink: the metrics reference (docs/reference/metrics.md) is
/// generated from it.
pub fn collectors() -> Vec<Box<dyn Collector>> {
    SinkMetrics::register(&Registry::new()).expect("the sink's metric definitions are valid").collectors()
}

/// The sink's metrics, all named `taxi_sink_*`.
#[derive(Clone, Debug)]
pub(super) struct SinkMetrics {
    pub(super) bulk_seconds: HistogramVec,
    pub(super) request_errors: IntCounterVec,
    pub(super) documents_sent: IntCounter,
    pub(super) bytes_sent: IntCounter,
    pub(super) acknowledged: IntCounter,
    pub(super) superseded: IntCounter,
    pub(super) item_errors: IntCounterVec,
    pub(super) retries: IntCounterVec,
    pub(super) backpressure_seconds: Counter,
    pub(super) backpressure_waits: IntCounter,
    pub(super) buffered: IntGauge,
}

impl SinkMetrics {
    /// The metrics one by one: a new field does not compile until it is listed here.
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        fn boxed<C: Collector + Clone + 'static>(collector: &C) -> Box<dyn Collector> {
            Box::new(collector.clone())
        }
        let SinkMetrics {
            bulk_seconds,
            request_errors,
            documents_sent,
            bytes_sent,
            acknowledged,
            superseded,
            item_errors,
            retries,
            backpressure_seconds,
            backpressure_waits,
            buffered,
        } = self;
        vec![
            boxed(bulk_seconds),
            boxed(request_errors),
            boxed(documents_sent),
            boxed(bytes_sent),
            boxed(acknowledged),
            boxed(superseded),
            boxed(item_errors),
            boxed(retries),
            boxed(backpressure_seconds),
            boxed(backpressure_waits),
            boxed(buffered),
        ]
    }

    pub(super) fn register(registry: &Registry) -> Result<SinkMetrics, prometheus::Error> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> Result<C, prometheus::Error> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let buckets = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        Ok(SinkMetrics {
            bulk_seconds: reg(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "taxi_sink_bulk_request_seconds",
                        "OpenSearch _bulk request latency, by outcome (ok, item_errors, failed)",
                    )
                    .buckets(buckets),
                    &["outcome"],
                )?,
            )?,
            request_errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "taxi_sink_bulk_request_errors_total",
                        "OpenSearch _bulk requests that failed as a whole, by category",
                    ),
                    &["category"],
                )?,
            )?,
            documents_sent: reg(
                registry,
                IntCounter::new(
                    "taxi_sink_bulk_documents_sent_total",
                    "Documents sent in _bulk requests (retries too)",
                )?,
            )?,
            bytes_sent: reg(
                registry,
                IntCounter::new("taxi_sink_bulk_bytes_sent_total", "Bytes of _bulk bodies sent")?,
            )?,
            acknowledged: reg(
                registry,
                IntCounter::new("taxi_sink_documents_acknowledged_total", "Documents stored by OpenSearch")?,
            )?,
            superseded: reg(
                registry,
                IntCounter::new(
                    "taxi_sink_documents_superseded_total",
                    "Queued documents replaced by a newer version of the same id before being sent",
                )?,
            )?,
            item_errors: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "taxi_sink_item_errors_total",
                        "Bulk items OpenSearch refused, by reason and action (retried; dead_lettered; dropped, without a dead-letter store; superseded: a same-or-newer version is stored)",
                    ),
                    &["reason", "action"],
                )?,
            )?,
            retries: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("taxi_sink_retries_total", "Documents re-queued for another attempt, by scope"),
                    &["scope"],
                )?,
            )?,
            backpressure_seconds: reg(
                registry,
                Counter::new(
                    "taxi_sink_backpressure_wait_seconds_total",
                    "Time writers waited because the sink's buffer was full",
                )?,
            )?,
            backpressure_waits: reg(
                registry,
                IntCounter::new("taxi_sink_backpressure_waits_total", "Writes that waited for buffer room")?,
            )?,
            buffered: reg(
                registry,
                IntGauge::new("taxi_sink_buffered_documents", "Documents written but not yet acknowledged or dropped")?,
            )?,
        })
    }
}

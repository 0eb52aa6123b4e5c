//! The metrics reference (`docs/reference/metrics.md`): every Prometheus metric of the worker and
//! of the operator, with its type, its labels and their values, and its help text.
//!
//! The metrics come from the code that registers them: `WorkerMetrics::collectors`, the
//! OpenSearch sink's `metric_collectors` and `OperatorMetrics::collectors` list every metric as a
//! collector, whose name, help, type and label names can be read before any series exists.
//! [`labels`] says what each label holds.

pub mod labels;

use std::fmt::Write as _;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use taxi_operator::metrics::OperatorMetrics;
use taxi_worker::metrics::WorkerMetrics;

use crate::markdown::{anchor, cell, code, generated_notice, row, table_header};
use labels::{LabelValues, label_values};

/// One metric as the reference lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Its name, e.g. `taxi_records_total`.
    pub name: String,
    /// `counter`, `gauge` or `histogram`.
    pub kind: &'static str,
    /// Its help text.
    pub help: String,
    /// Its label names.
    pub labels: Vec<String>,
}

/// The worker's metrics: its own and those the OpenSearch sink registers in its registry.
pub fn worker_metrics() -> Vec<Metric> {
    let mut collectors = WorkerMetrics::new().collectors();
    collectors.extend(taxi_io::sink::opensearch::metric_collectors());
    describe(&collectors)
}

/// The operator's metrics.
pub fn operator_metrics() -> Vec<Metric> {
    let metrics = OperatorMetrics::new().expect("the operator's metric definitions are valid");
    describe(&metrics.collectors())
}

/// The metrics of `collectors`, sorted by name.
pub fn describe(collectors: &[Box<dyn Collector>]) -> Vec<Metric> {
    let mut metrics: Vec<Metric> = collectors
        .iter()
        .flat_map(|collector| collector.collect().into_iter().zip(collector.desc()))
        .map(|(family, desc)| Metric {
            name: family.name().to_owned(),
            kind: match family.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            },
            help: family.help().to_owned(),
            labels: desc.variable_labels.clone(),
        })
        .collect();
    metrics.sort_by(|a, b| a.name.cmp(&b.name));
    metrics
}

/// The page `docs/reference/metrics.md`.
pub fn page() -> String {
    let mut page = generated_notice("the metrics the worker and the operator register");
    page.push_str(
        "\n# Metrics reference\n\n\
         `taxi-worker run` and `taxi-operator run` serve Prometheus metrics at `/metrics` on their HTTP \
         address (`--http-addr`, default `0.0.0.0:8080`).\n\n\
         Every label has a bounded set of values. Where the code keeps a list of a label's values, the \
         table shows that list (\"from `LIST`\"). Where it keeps none, the label is marked *open*: its \
         values are set one by one in the code and cannot be enumerated from it, so they are described \
         by hand.\n\n",
    );
    let sections = [
        (
            "taxi-worker",
            worker_metrics(),
            "The `taxi_sink_*` metrics other than `taxi_sink_documents_total` and `taxi_sink_dead_letters` \
             exist once the worker has connected to an OpenSearch sink.",
        ),
        ("taxi-operator", operator_metrics(), "Every replica serves them; only the leader reconciles."),
    ];
    for (binary, _, _) in &sections {
        let _ = writeln!(page, "- [{}](#{})", code(binary), anchor(binary));
    }
    for (binary, metrics, note) in &sections {
        let _ = write!(
            page,
            "\n## {}\n\n{note}\n\n{}",
            code(binary),
            table_header(&["Metric", "Type", "Labels", "Meaning"])
        );
        for metric in metrics {
            page.push_str(&row(&[code(&metric.name), metric.kind.to_owned(), labels_cell(metric), cell(&metric.help)]));
        }
    }
    page
}

fn labels_cell(metric: &Metric) -> String {
    metric
        .labels
        .iter()
        .map(|label| match label_values(&metric.name, label) {
            Some(LabelValues::Listed { values, from }) => {
                let values: Vec<String> = values.iter().map(|v| code(v)).collect();
                format!("{}: {} (from {})", code(label), values.join(", "), code(from))
            }
            Some(LabelValues::Open(what)) => format!("{} (*open*): {}", code(label), cell(what)),
            None => format!("{}: undescribed", code(label)),
        })
        .collect::<Vec<_>>()
        .join("<br>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_binaries_metrics_are_listed_with_their_types_and_labels() {
        let worker = worker_metrics();
        let find = |name: &str| worker.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(find("taxi_records_total").kind, "counter");
        assert_eq!(find("taxi_records_total").labels, ["outcome"]);
        assert_eq!(find("taxi_owned_shards").kind, "gauge");
        assert_eq!(find("taxi_kinesis_get_records_seconds").kind, "histogram");
        assert_eq!(find("taxi_sink_item_errors_total").labels, ["reason", "action"]);
        let operator = operator_metrics();
        assert!(operator.iter().all(|m| m.name.starts_with("taxi_operator_")), "{operator:?}");
        assert!(operator.iter().any(|m| m.name == "taxi_operator_autoscale_decisions_total"));
    }

    #[test]
    fn every_label_is_described_and_every_description_has_its_label() {
        let all: Vec<Metric> = worker_metrics().into_iter().chain(operator_metrics()).collect();
        for metric in &all {
            for label in &metric.labels {
                assert!(
                    label_values(&metric.name, label).is_some(),
                    "{}{{{label}}} is not described in labels.rs",
                    metric.name
                );
            }
        }
        for (name, label, _) in labels::described() {
            assert!(
                all.iter().any(|m| m.name == name && m.labels.iter().any(|l| l == label)),
                "labels.rs describes {name}{{{label}}}, which no metric has"
            );
        }
    }

    #[test]
    fn listed_values_come_from_the_code_and_open_ones_say_so() {
        let page = page();
        let handoffs =
            "`outcome`: `released`, `claimed_after_release`, `taken_over_after_timeout` (from `HANDOFF_OUTCOMES`)";
        assert!(page.contains(handoffs), "{page}");
        assert!(
            page.contains("| `taxi_records_total` | counter | `outcome` (*open*): what became of the record"),
            "{page}"
        );
        assert!(page.contains("`pipeline` (*open*): the TaxiPipeline as `namespace/name`"), "{page}");
        assert!(!page.contains("undescribed"), "{page}");
    }
}

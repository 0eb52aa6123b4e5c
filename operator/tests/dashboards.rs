//! The chart's Grafana dashboard and PrometheusRule query only metrics the binaries export.
//!
//! Both registries are filled with at least one observation per labelled family (a family without
//! a series is absent from `/metrics`), rendered by the function the `/metrics` endpoint calls, and
//! every `taxi_…` name in the dashboard's queries and the alert rules must be among the exported
//! names; every label they match on or group by must be a label of one of the expression's metrics
//! (or a target label a per-pod scrape adds); and every expression must parse as PromQL. The
//! OpenSearch sink registers its metrics when it connects, so the test kit's fake OpenSearch
//! answers it: one failed bulk request, then an item error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};
use taxi_core::document::PartialDocument;
use taxi_io::http::Endpoints;
use taxi_io::sink::opensearch::{BulkSettings, OpenSearchSettings, OpenSearchSink};
use taxi_operator::metrics::{OperatorMetrics, OperatorState, ReconcileOutcome};
use taxi_testkit::documents::hot_spot;
use taxi_testkit::opensearch::{FakeOpenSearch, Request, bulk_ids};
use taxi_worker::run::WorkerState;

/// Labels a Prometheus scrape adds to every series (ServiceMonitor or pod annotations).
const TARGET_LABELS: [&str; 5] = ["namespace", "pod", "instance", "job", "container"];

fn chart_file(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/taxi-pipeline").join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
}

/// Exported series names (histograms as their `_bucket`, `_sum` and `_count` series) with the
/// label names seen on them.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="#).expect("regex");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = names.entry(line[..end].to_owned()).or_default();
        if let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) {
            labels.extend(label.captures_iter(&line[open..close]).map(|c| c[1].to_owned()));
        }
    }
    names
}

/// A hot-spot partial of pipeline `nyc` whose id starts with `id_prefix` (the fake refuses those
/// starting with "bad").
fn partial(id_prefix: &str, window_s: i64) -> PartialDocument {
    PartialDocument {
        pipeline: "nyc".to_owned(),
        version: 6,
        ..hot_spot(id_prefix, "shardId-000000000000", window_s, "dr5ru7", 3)
    }
}

/// A fake OpenSearch where every call succeeds, except that the first `_bulk` fails with 503
/// and, afterwards, documents whose id starts with "bad" are refused.
async fn fake_opensearch() -> FakeOpenSearch {
    let bulks = AtomicU32::new(0);
    FakeOpenSearch::start(move |request: &Request| {
        if request.target.starts_with("/_bulk") {
            bulk_reply(bulks.fetch_add(1, Ordering::SeqCst), &request.body)
        } else {
            (200, json!({ "acknowledged": true }))
        }
    })
    .await
}

fn bulk_reply(attempt: u32, body: &[u8]) -> (u16, Value) {
    if attempt == 0 {
        return (503, json!({ "error": "unavailable", "status": 503 }));
    }
    let items: Vec<Value> = bulk_ids(body)
        .into_iter()
        .map(|id| {
            if id.starts_with("bad") {
                json!({ "index": { "_id": id, "status": 400, "error": { "type": "mapper_parsing_exception", "reason": "bad" } } })
            } else {
                json!({ "index": { "_id": id, "status": 201, "result": "created" } })
            }
        })
        .collect();
    (200, json!({ "errors": true, "took": 1, "items": items }))
}

/// A worker's `/metrics` with every family present.
async fn worker_metrics() -> String {
    let state = WorkerState::default();
    let opensearch = fake_opensearch().await;
    let settings = OpenSearchSettings {
        url: opensearch.url().to_owned(),
        index_prefix: "dash".to_owned(),
        bulk: BulkSettings {
            max_docs: 10,
            max_delay: Duration::from_millis(10),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..BulkSettings::default()
        },
        request_timeout: Duration::from_secs(5),
        startup_timeout: Duration::from_secs(5),
        ..OpenSearchSettings::default()
    };
    let sink = OpenSearchSink::connect(settings, state.metrics.registry(), None).await.expect("connect to the fake");
    sink.write(vec![partial("ok", 1_451_606_400), partial("bad", 1_451_607_000)]).await.expect("write");
    let report =
        tokio::time::timeout(Duration::from_secs(10), sink.flush()).await.expect("flush in time").expect("flush");
    assert_eq!((report.acknowledged, report.rejected), (1, 1), "one stored, one refused");

    let m = &state.metrics;
    let shard = "shardId-000000000000";
    m.records.with_label_values(&["aggregated"]).inc();
    m.invalid.with_label_values(&["not_json"]).inc();
    m.records_read.with_label_values(&[shard]).inc();
    m.bytes_read.with_label_values(&[shard]).inc_by(120);
    m.millis_behind_latest.with_label_values(&[shard]).set(1_500);
    m.watermark_lag_seconds.with_label_values(&[shard]).set(70);
    m.get_records_seconds.with_label_values(&[shard]).observe(0.02);
    m.kinesis_errors.with_label_values(&["GetRecords", "throttled"]).inc();
    m.checkpoint_seconds.with_label_values(&["s3"]).observe(0.05);
    m.checkpoint_failures.with_label_values(&["io"]).inc();
    m.checkpoint_written(shard, 1_767_225_600_000, 512);
    m.sink_documents.with_label_values(&["opensearch"]).inc();
    m.handoff_pause_seconds.observe(1.0);
    state.metrics()
}

/// The operator's `/metrics` with every family present.
fn operator_metrics() -> String {
    let (_leading, leading_rx) = tokio::sync::watch::channel(true);
    let state = OperatorState::new(OperatorMetrics::new().expect("metrics"), leading_rx);
    let m = &state.metrics;
    m.observe_reconcile(ReconcileOutcome::Success, Duration::from_millis(20));
    m.reconcile_error("kinesis");
    m.set_desired_replicas("taxi/nyc", 3);
    m.set_ready_replicas("taxi/nyc", 2);
    m.set_assignment_epoch("taxi/nyc", 4);
    m.set_open_shards("taxi/nyc", 8);
    m.set_leader(true);
    m.lease_error("api");
    m.observe_autoscale("taxi/nyc", Some(120_000), 950.5, 4, "lag_high");
    state.metrics()
}

/// The PromQL expressions of the Grafana dashboard: every target's `expr`, then every query
/// variable (`label_values(…)`, Grafana's, not PromQL).
fn dashboard_exprs() -> (Vec<String>, Vec<String>) {
    let dashboard: Value = serde_json::from_str(&chart_file("dashboards/taxi-pipeline.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["definition"].as_str().map(str::to_owned))
        .collect();
    (exprs, variables)
}

/// Whether `expr` parses as PromQL once Grafana's variables and Helm's values are filled in.
fn syntax_error(expr: &str) -> Option<String> {
    let helm_value = Regex::new(r"\{\{-?\s*[^}]*\}\}").expect("regex");
    let filled = helm_value
        .replace_all(expr, "1")
        .replace("$__rate_interval", "5m")
        .replace("$namespace", ".*")
        .replace("$pipeline", ".*");
    promql_parser::parser::parse(&filled).err().map(|e| format!("does not parse ({e})"))
}

/// The alert expressions of the PrometheusRule template: from `expr:` up to the rule's `for:`.
fn rule_exprs() -> Vec<String> {
    let template = chart_file("templates/prometheusrule.yaml");
    let mut exprs = Vec::new();
    let mut current: Option<String> = None;
    for line in template.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            current = Some(rest.trim_start_matches([' ', '>', '-']).to_owned());
        } else if trimmed.starts_with("for:") {
            exprs.extend(current.take());
        } else if let Some(expr) = current.as_mut()
            && !trimmed.starts_with('#')
        {
            expr.push(' ');
            expr.push_str(trimmed);
        }
    }
    exprs
}

/// Every problem of one expression: unknown metric names, labels none of its metrics has.
fn problems(expr: &str, exported: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let name = Regex::new(r"\btaxi_[a-z0-9_]+").expect("regex");
    let grouping = Regex::new(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)").expect("regex");
    let selector = Regex::new(r"\{([^}]*)\}").expect("regex");
    let matcher = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*""#).expect("regex");
    let names: Vec<&str> = name.find_iter(expr).map(|m| m.as_str()).collect();
    let mut found = Vec::new();
    let mut labels = BTreeSet::new();
    for n in &names {
        match exported.get(*n) {
            Some(l) => labels.extend(l.iter().cloned()),
            None => found.push(format!("unknown metric {n}")),
        }
    }
    let used = grouping
        .captures_iter(expr)
        .flat_map(|c| c[1].split(',').map(|l| l.trim().to_owned()).collect::<Vec<_>>())
        .chain(
            selector
                .captures_iter(expr)
                .flat_map(|c| matcher.captures_iter(&c[1]).map(|m| m[1].to_owned()).collect::<Vec<_>>()),
        )
        .filter(|l| !l.is_empty() && !TARGET_LABELS.contains(&l.as_str()));
    for label in used {
        if !labels.contains(&label) && !names.is_empty() {
            found.push(format!("label {label} is on none of {names:?}"));
        }
    }
    found
}

#[tokio::test]
async fn the_dashboard_and_the_alerts_query_only_exported_metrics_and_labels() {
    let mut exported = exported(&worker_metrics().await);
    exported.extend(self::exported(&operator_metrics()));
    // The registries really were filled: a family the test forgot would hide an unknown name.
    for family in [
        "taxi_sink_item_errors_total",
        "taxi_sink_bulk_request_errors_total",
        "taxi_sink_bulk_request_seconds_bucket",
        "taxi_checkpoint_last_success_timestamp_seconds",
        "taxi_operator_ready_replicas",
        "taxi_operator_autoscale_decisions_total",
    ] {
        assert!(exported.contains_key(family), "{family} not rendered: {:?}", exported.keys());
    }
    assert!(exported["taxi_sink_item_errors_total"].contains("reason"));

    let (dashboard, variables) = dashboard_exprs();
    let rules = rule_exprs();
    assert!(dashboard.len() >= 20, "the dashboard's queries were found: {dashboard:?}");
    assert_eq!(rules.len(), 7, "one expression per alert: {rules:?}");
    let mut unknown = Vec::new();
    let promql = dashboard.iter().map(|e| ("dashboard", e)).chain(rules.iter().map(|e| ("alert", e)));
    for (source, expr) in promql.clone().chain(variables.iter().map(|e| ("variable", e))) {
        for problem in problems(expr, &exported) {
            unknown.push(format!("{source}: {problem}\n    in {expr}"));
        }
    }
    for (source, expr) in promql {
        unknown.extend(syntax_error(expr).map(|e| format!("{source}: {e}\n    in {expr}")));
    }
    assert!(
        unknown.is_empty(),
        "the chart's queries do not parse or use what the binaries do not export:\n{}\nexported: {:?}",
        unknown.join("\n"),
        exported.keys()
    );

    // Names mentioned in the alerts' descriptions (pointers for whoever is paged) exist too.
    let template = chart_file("templates/prometheusrule.yaml");
    let mentioned: Vec<String> = Regex::new(r"\btaxi_[a-z0-9_]+")
        .expect("regex")
        .find_iter(&template)
        .map(|m| m.as_str().to_owned())
        .filter(|n| !exported.contains_key(n))
        .collect();
    assert!(mentioned.is_empty(), "unknown names in the PrometheusRule template: {mentioned:?}");
}

#[test]
fn a_syntax_error_is_reported_and_variables_are_filled_in() {
    let ok =
        r#"sum by (shard) (rate(taxi_records_total{pod=~"($pipeline)-worker-[0-9]+"}[$__rate_interval])) > {{ .x }}"#;
    assert_eq!(syntax_error(ok), None);
    assert!(syntax_error("sum by (shard) (rate(taxi_records_total[5m])").is_some(), "unbalanced");
    assert!(syntax_error("max by (shard) taxi_records_total and on(instance)").is_some());
}

#[test]
fn a_misspelt_name_or_label_is_reported() {
    let exported = exported("taxi_records_total{outcome=\"late\"} 1\ntaxi_owned_shards 2\n");
    assert!(problems(r#"sum by (outcome) (rate(taxi_records_total{pod=~"x"}[5m]))"#, &exported).is_empty());
    assert_eq!(problems("rate(taxi_record_total[5m])", &exported), ["unknown metric taxi_record_total"]);
    assert_eq!(
        problems("sum by (reason) (taxi_records_total)", &exported),
        [r#"label reason is on none of ["taxi_records_total"]"#]
    );
    assert_eq!(
        problems(r#"taxi_owned_shards{shard="s"}"#, &exported),
        [r#"label shard is on none of ["taxi_owned_shards"]"#]
    );
}

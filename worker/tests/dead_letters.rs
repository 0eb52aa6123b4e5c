//! Nothing refused is lost: documents OpenSearch refuses for good are stored as dead letters under
//! the checkpoint location before any checkpoint covers them, and the worker re-delivers them by
//! itself once OpenSearch accepts them. Against kinesis-mock and osmem-server, with a real
//! refusal: an index whose mapping cannot take the documents (`shard` mapped as a number).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{run_options, run_to_idle};
use opensearch::http::Method;
use serde_json::json;
use taxi_core::config::EngineConfig;
use taxi_core::document::AnalysisKind;
use taxi_io::sink::dead_letter::DeadLetterStore;
use taxi_io::sink::opensearch::{BulkSettings, OpenSearchSettings, index_name, merged_results};
use taxi_io::store::{CheckpointStore, S3Settings};
use taxi_testkit::input::{count_records, generated_input};
use taxi_testkit::kinesis::{client, fresh_stream, put_file};
use taxi_testkit::opensearch::{fresh_index_prefix, raw};
use taxi_testkit::oracle::{as_lines, batch_oracle};
use taxi_testkit::services::services;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_documents_become_dead_letters_before_the_checkpoint_and_are_redelivered_by_the_worker() {
    let Some(services) = services() else { return };
    let api = Arc::new(client(&services.kinesis));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 1_200, 51);
    let stream = fresh_stream(&api, 2).await;
    put_file(&api, &stream, &input).await;

    // Both indices exist with a mapping that refuses every document ("shardId-…" is no number).
    let prefix = fresh_index_prefix();
    let url = services.opensearch.clone();
    for analysis in [AnalysisKind::HotSpot, AnalysisKind::AirportTrip] {
        let body = json!({ "mappings": { "properties": { "shard": { "type": "long" } } } });
        let (status, answer) = raw(&url, Method::Put, &format!("/{}", index_name(&prefix, analysis)), Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.sink_uri = url.clone();
    options.opensearch = OpenSearchSettings {
        index_prefix: prefix.clone(),
        bulk: BulkSettings { max_delay: Duration::from_millis(50), ..BulkSettings::default() },
        ..OpenSearchSettings::default()
    };

    // The first run reads everything; OpenSearch stores nothing, the dead letters hold it all.
    let (first, state) = run_to_idle(api.clone(), options.clone()).await;
    assert_eq!(first.counters.records, count_records(&input));
    let store =
        CheckpointStore::from_uri(&options.checkpoint_uri, &S3Settings::default(), 0).await.expect("checkpoint store");
    let letters = DeadLetterStore::new(store, "nyc", prometheus::IntGauge::new("g", "g").expect("gauge"));
    let mut stored = Vec::new();
    for key in letters.list().await.expect("list") {
        stored.extend(letters.read(&key).await.expect("read"));
    }
    assert!(!stored.is_empty(), "refused documents were stored");
    assert!(stored.iter().all(|l| l.status == 400 && l.error_type == "mapper_parsing_exception"), "{:?}", stored[0]);
    let gauge = state.metrics.render();
    assert!(gauge.contains(&format!("taxi_sink_dead_letters {}", stored.len())), "{gauge}");
    assert_eq!(serde_json::to_value(state.status()).expect("status")["dead_letters"], json!(stored.len()));

    // OpenSearch is fixed (the indices are recreated from the worker's template). A second run,
    // with no new record, re-delivers the dead letters by itself, and the results are complete.
    for analysis in [AnalysisKind::HotSpot, AnalysisKind::AirportTrip] {
        raw(&url, Method::Delete, &format!("/{}", index_name(&prefix, analysis)), None).await;
    }
    let (second, state) = run_to_idle(api.clone(), options.clone()).await;
    assert_eq!(second.counters.records, 0, "nothing was read again: the checkpoints covered the dead letters");
    assert!(letters.list().await.expect("list").is_empty(), "re-delivered dead letters are deleted");
    assert!(state.metrics.render().contains("taxi_sink_dead_letters 0"));
    let settings = OpenSearchSettings { url: url.clone(), index_prefix: prefix, ..OpenSearchSettings::default() };
    let merged = merged_results(&settings, "nyc", &EngineConfig::default()).await.expect("results");
    assert_eq!(as_lines(&merged), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

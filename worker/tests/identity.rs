//! A pipeline's identity includes its namespace: two pipelines named alike in two namespaces, on
//! one stream, one checkpoint location and one sink, share no checkpoint and no document. A
//! pipeline whose checkpoints were written before namespaces were part of the identity keeps them.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{partials, run_options, run_to_idle};
use taxi_core::config::EngineConfig;
use taxi_core::document::{PartialDocument, merge_documents};
use taxi_io::sink::file::read_documents;
use taxi_testkit::input::{count_records, generated_input, split_in_halves};
use taxi_testkit::kinesis::{client, emulator, fresh_stream, put_file};
use taxi_testkit::oracle::{as_lines, batch_oracle};

/// The merged results of one pipeline's documents in the shared sink file.
fn results_of(dir: &Path, pipeline: &str) -> Vec<String> {
    let docs: Vec<PartialDocument> =
        read_documents(&partials(dir)).expect("partials").into_iter().filter(|d| d.pipeline == pipeline).collect();
    assert!(docs.iter().all(|d| d.id.starts_with(&format!("{pipeline}/"))), "ids carry the identity");
    as_lines(&merge_documents(&EngineConfig::default(), docs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_named_alike_in_two_namespaces_share_nothing() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 400, 43);
    let stream = fresh_stream(&api, 2).await;
    put_file(&api, &stream, &input).await;
    let expected = as_lines(&batch_oracle(&EngineConfig::default(), &input));
    for namespace in ["team-a", "team-b"] {
        let mut options = run_options(&stream, dir.path(), "nyc");
        options.namespace = Some(namespace.to_owned());
        let (summary, _) = run_to_idle(api.clone(), options).await;
        assert_eq!(summary.counters.records, count_records(&input), "{namespace} read the whole stream");
        let shards = dir.path().join(format!("checkpoints/{namespace}/nyc/shards"));
        assert_eq!(std::fs::read_dir(&shards).expect("checkpoints").count(), 2, "{}", shards.display());
        assert_eq!(results_of(dir.path(), &format!("{namespace}/nyc")), expected, "{namespace}");
    }
    assert!(!dir.path().join("checkpoints/nyc").exists(), "nothing under the name alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_checkpointed_before_namespaces_keeps_its_checkpoints_and_document_ids() {
    let Some(endpoint) = emulator() else { return };
    let api = Arc::new(client(&endpoint));
    let dir = tempfile::tempdir().expect("tempdir");
    let input = generated_input(dir.path(), 400, 43);
    let (a, b) = split_in_halves(&input, dir.path(), ["a.jsonl", "b.jsonl"]);
    let stream = fresh_stream(&api, 2).await;
    put_file(&api, &stream, &a).await;
    // Before: no namespace, so the layout is `nyc/…`.
    run_to_idle(api.clone(), run_options(&stream, dir.path(), "nyc")).await;

    put_file(&api, &stream, &b).await;
    let mut options = run_options(&stream, dir.path(), "nyc");
    options.namespace = Some("team-a".to_owned());
    let (summary, _) = run_to_idle(api.clone(), options).await;
    assert_eq!(summary.counters.records, count_records(&b), "went on from the old checkpoints");
    assert!(!dir.path().join("checkpoints/team-a").exists(), "the old layout is kept");
    assert_eq!(results_of(dir.path(), "nyc"), as_lines(&batch_oracle(&EngineConfig::default(), &input)));
}

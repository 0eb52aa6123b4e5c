//! What the pipeline must compute: the batch oracle over an input (see [`taxi_core::oracle`]),
//! the merge of the partial documents a run wrote, and results as comparable JSON lines.

use std::path::Path;

use taxi_core::analysis::MergedResult;
use taxi_core::config::EngineConfig;
use taxi_core::document::merge_documents;
use taxi_core::event::Trip;
use taxi_io::sink::file::read_documents;

/// The batch oracle over a file.
pub fn batch_oracle(config: &EngineConfig, input: &Path) -> Vec<MergedResult> {
    taxi_core::oracle::results_of_file(config, input).expect("read the input")
}

/// The batch oracle over trips already in memory.
pub fn oracle_over(config: &EngineConfig, trips: &[Trip]) -> Vec<MergedResult> {
    taxi_core::oracle::results(config, trips)
}

/// Results as the JSON lines `--output` writes.
pub fn as_lines(results: &[MergedResult]) -> Vec<String> {
    results.iter().map(|r| serde_json::to_string(r).expect("serialize")).collect()
}

/// The merged results of the partial documents in a file sink, as JSON lines.
pub fn merged_partials(config: &EngineConfig, partials: &Path) -> Vec<String> {
    as_lines(&merge_documents(config, read_documents(partials).expect("partials")))
}

/// Asserts that two long lists of result lines are equal, saying where they first differ
/// rather than printing both; `what` names the comparison (e.g. "merged results differ from the
/// oracle").
pub fn assert_same_lines<A: AsRef<str>, B: AsRef<str>>(actual: &[A], expected: &[B], what: &str) {
    let first_difference = actual.iter().zip(expected).position(|(a, b)| a.as_ref() != b.as_ref());
    assert!(
        actual.len() == expected.len() && first_difference.is_none(),
        "{what}: {} vs {} lines, first difference at {first_difference:?}: {:?} vs {:?}",
        actual.len(),
        expected.len(),
        first_difference.and_then(|i| actual.get(i)).map(AsRef::as_ref),
        first_difference.and_then(|i| expected.get(i)).map(AsRef::as_ref),
    );
}

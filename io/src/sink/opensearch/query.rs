//! Reading the partial documents back, and the merged view over them.

use ::opensearch::http::Method;
use serde_json::{Value, json};

use super::client::{build_client, send_json};
use super::config::{OpenSearchAuth, OpenSearchSettings};
use super::error::OpenSearchError;
use super::index::index_name;
use taxi_core::analysis::MergedResult;
use taxi_core::config::EngineConfig;
use taxi_core::document::{AnalysisKind, PartialDocument, merge_documents};
use taxi_core::settings::SigV4Service;

/// Documents per page when reading partials back.
const PAGE_SIZE: usize = 1000;

/// Every partial document of `pipeline` in both indices (refreshed first, except on OpenSearch
/// Serverless, then read page by page with `search_after` on the `id` keyword). Missing indices
/// count as empty.
pub async fn query_partials(
    settings: &OpenSearchSettings,
    pipeline: &str,
) -> Result<Vec<PartialDocument>, OpenSearchError> {
    let client = build_client(settings).await?;
    let url = settings.url.as_str();
    let indices = format!(
        "{},{}",
        index_name(&settings.index_prefix, AnalysisKind::HotSpot),
        index_name(&settings.index_prefix, AnalysisKind::AirportTrip)
    );
    let lenient = [("ignore_unavailable", "true"), ("allow_no_indices", "true")];
    // OpenSearch Serverless has no `_refresh` (it refreshes on its own, within seconds).
    if !matches!(settings.auth, OpenSearchAuth::SigV4 { service: SigV4Service::Aoss, .. }) {
        send_json(&client, url, "refresh", Method::Post, &format!("/{indices}/_refresh"), &lenient, None).await?;
    }
    let mut docs = Vec::new();
    let mut after: Option<Value> = None;
    loop {
        let mut body = json!({
            "size": PAGE_SIZE,
            "query": { "term": { "pipeline": pipeline } },
            "sort": [ { "id": { "order": "asc", "unmapped_type": "keyword" } } ],
        });
        if let (Some(after), Some(obj)) = (&after, body.as_object_mut()) {
            obj.insert("search_after".to_owned(), after.clone());
        }
        let path = format!("/{indices}/_search");
        let answer = send_json(&client, url, "search", Method::Post, &path, &lenient, Some(&body)).await?;
        let parsed: Value = serde_json::from_slice(&answer.body)
            .map_err(|source| OpenSearchError::Response { operation: "search", source })?;
        let hits = parsed.pointer("/hits/hits").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        for hit in hits {
            let source = hit.get("_source").cloned().unwrap_or(Value::Null);
            docs.push(
                serde_json::from_value(source)
                    .map_err(|source| OpenSearchError::Response { operation: "search", source })?,
            );
        }
        match hits.last().and_then(|h| h.get("sort")) {
            Some(sort) if hits.len() >= PAGE_SIZE => after = Some(sort.clone()),
            _ => break,
        }
    }
    Ok(docs)
}

/// The merged view of `pipeline`: [`query_partials`], then [`merge_documents`].
pub async fn merged_results(
    settings: &OpenSearchSettings,
    pipeline: &str,
    config: &EngineConfig,
) -> Result<Vec<MergedResult>, OpenSearchError> {
    Ok(merge_documents(config, query_partials(settings, pipeline).await?))
}

//! The `_bulk` wire format: encoding a document as its two lines, and reading the per-item
//! answers, with the bounded reason and retry decision of an item error.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};

use super::error::OpenSearchError;
use super::index::{document_id, index_name};
use taxi_core::document::PartialDocument;

pub(super) struct ItemResult {
    pub(super) status: u16,
    pub(super) error_type: String,
    pub(super) reason: String,
}

/// The bounded `reason` label of an item error.
pub(super) fn item_reason(status: u16, error_type: &str) -> &'static str {
    match error_type {
        "mapper_parsing_exception" | "document_parsing_exception" => "mapper_parsing_exception",
        "illegal_argument_exception" => "illegal_argument_exception",
        "version_conflict_engine_exception" => "version_conflict_engine_exception",
        "es_rejected_execution_exception" | "rejected_execution_exception" => "es_rejected_execution_exception",
        "index_not_found_exception" => "index_not_found_exception",
        "cluster_block_exception" => "cluster_block_exception",
        "strict_dynamic_mapping_exception" => "strict_dynamic_mapping_exception",
        _ if status == 429 => "too_many_requests",
        _ if status >= 500 => "server_error",
        _ => "other",
    }
}

/// Whether an item error may succeed when sent again.
pub(super) fn item_retryable(status: u16, error_type: &str) -> bool {
    status == 429 || status >= 500 || error_type == "es_rejected_execution_exception"
}

/// The key and the two bulk lines of a document.
pub(super) fn encode(prefix: &str, doc: &PartialDocument) -> Result<(Arc<str>, Bytes), OpenSearchError> {
    let index = index_name(prefix, doc.analysis);
    let id = document_id(&doc.id);
    let action = json!({ "index": { "_index": index, "_id": id, "version": doc.version, "version_type": "external" } });
    let serialize = |source| OpenSearchError::Serialize { id: doc.id.clone(), source };
    let mut out = BytesMut::with_capacity(512).writer();
    serde_json::to_writer(&mut out, &action).map_err(serialize)?;
    out.get_mut().put_u8(b'\n');
    serde_json::to_writer(&mut out, doc).map_err(serialize)?;
    out.get_mut().put_u8(b'\n');
    let key: Arc<str> = Arc::from(format!("{index}/{id}"));
    Ok((key, out.into_inner().freeze()))
}

/// The per-item results of a `_bulk` answer, checked to match the request.
pub(super) fn parse_bulk(body: &[u8], expected: usize) -> Result<Vec<ItemResult>, OpenSearchError> {
    let parsed: Value =
        serde_json::from_slice(body).map_err(|source| OpenSearchError::Response { operation: "bulk", source })?;
    let items = parsed.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if items.len() != expected {
        return Err(OpenSearchError::Status {
            operation: "bulk",
            status: 200,
            error_type: "item_count_mismatch".to_owned(),
            reason: format!("{} items answered for {expected} sent", items.len()),
        });
    }
    Ok(items
        .iter()
        .map(|item| {
            // `{"index": {...}}`: one action per item.
            let result = item.as_object().and_then(|o| o.values().next()).unwrap_or(&Value::Null);
            let status = result.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok()).unwrap_or(0);
            let error = result.get("error");
            let (error_type, reason) = match error {
                Some(Value::Object(e)) => (
                    e.get("type").and_then(Value::as_str).unwrap_or("unknown").to_owned(),
                    e.get("reason").and_then(Value::as_str).unwrap_or_default().to_owned(),
                ),
                Some(Value::String(s)) => ("unknown".to_owned(), s.clone()),
                _ => (String::new(), String::new()),
            };
            ItemResult { status, error_type, reason }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_errors_map_to_bounded_reasons() {
        assert_eq!(item_reason(400, "mapper_parsing_exception"), "mapper_parsing_exception");
        assert_eq!(item_reason(429, "whatever"), "too_many_requests");
        assert_eq!(item_reason(503, "unavailable_shards_exception"), "server_error");
        assert_eq!(item_reason(400, "made_up_exception"), "other");
        assert!(item_retryable(429, ""));
        assert!(item_retryable(400, "es_rejected_execution_exception"));
        assert!(!item_retryable(400, "mapper_parsing_exception"));
    }

    #[test]
    fn bulk_answers_parse_per_item() {
        let body = br#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}}]}"#;
        let items = parse_bulk(body, 2).expect("parse");
        assert_eq!(items[0].status, 201);
        assert_eq!((items[1].status, items[1].error_type.as_str()), (400, "mapper_parsing_exception"));
        assert!(parse_bulk(body, 3).is_err());
    }
}

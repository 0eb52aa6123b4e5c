//! Index names, document ids and the index template of the partial documents.

use std::borrow::Cow;

use md5::{Digest, Md5};
use serde_json::{Value, json};

use taxi_core::document::AnalysisKind;

/// The longest `_id` OpenSearch accepts, in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// How many bytes of a long id [`document_id`] keeps before the hash.
const KEPT_ID_BYTES: usize = 400;

/// The index a document of `analysis` goes to: `{prefix}-hot-spots` or `{prefix}-airport-trips`.
pub fn index_name(prefix: &str, analysis: AnalysisKind) -> String {
    match analysis {
        AnalysisKind::HotSpot => format!("{prefix}-hot-spots"),
        AnalysisKind::AirportTrip => format!("{prefix}-airport-trips"),
    }
}

/// Whether `prefix` can start an index name: non-empty, lowercase ASCII letters, digits, `-`, `_`
/// and `.`, not starting with `-`, `_` or `.`, at most 200 bytes.
pub fn valid_index_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 200
        && !prefix.starts_with(['-', '_', '.'])
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `_id` of a document: its [`PartialDocument::id`](taxi_core::document::PartialDocument::id) when that fits in [`MAX_ID_BYTES`];
/// otherwise its first 400 bytes (cut at a character boundary), `#md5:` and the lowercase hex
/// MD5 of the whole id — at most 437 bytes, deterministic, and distinct for distinct ids (MD5 is
/// not a security boundary here). The full id stays in the document's `id` field.
pub fn document_id(id: &str) -> Cow<'_, str> {
    if id.len() <= MAX_ID_BYTES {
        return Cow::Borrowed(id);
    }
    let mut cut = KEPT_ID_BYTES;
    while !id.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = Md5::digest(id.as_bytes());
    let mut out = String::with_capacity(cut + 5 + 32);
    out.push_str(&id[..cut]);
    out.push_str("#md5:");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    Cow::Owned(out)
}

/// The composable index template body for the partial documents of `prefix`.
///
/// Its patterns are `{prefix}-hot-spots*` and `{prefix}-airport-trips*` rather than `{prefix}-*`,
/// so that the templates of two prefixes (`taxi`, `taxi-dev`) never overlap.
pub fn index_template(prefix: &str) -> Value {
    json!({
        "index_patterns": [format!("{prefix}-hot-spots*"), format!("{prefix}-airport-trips*")],
        "priority": 200,
        "template": {
            "mappings": {
                "properties": {
                    "id": { "type": "keyword" },
                    "pipeline": { "type": "keyword" },
                    "analysis": { "type": "keyword" },
                    "window_start": { "type": "date" },
                    "window_end": { "type": "date" },
                    "location": { "type": "geo_point" },
                    "geohash": { "type": "keyword" },
                    "pickup_count": { "type": "long" },
                    "airport": { "type": "keyword" },
                    "trip_count": { "type": "long" },
                    "sum_duration_min": { "type": "double" },
                    "sum_duration_ms": { "type": "long" },
                    "shard": { "type": "keyword" },
                    "final": { "type": "boolean" }
                }
            }
        },
        "_meta": { "managed_by": "taxi-worker" }
    })
}

/// The name of the index template of `prefix`.
pub fn template_name(prefix: &str) -> String {
    format!("{prefix}-partials")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_stay_and_long_ids_are_hashed_deterministically() {
        assert_eq!(document_id("p/hot_spot/1/dr5ru7/s"), "p/hot_spot/1/dr5ru7/s");
        let long = "é".repeat(300);
        let a = document_id(&long);
        assert!(a.len() <= MAX_ID_BYTES, "{}", a.len());
        assert_eq!(a, document_id(&long));
        assert!(a.contains("#md5:"));
        assert_ne!(a, document_id(&format!("{long}x")));
    }

    #[test]
    fn index_prefixes_are_checked() {
        assert!(valid_index_prefix("taxi"));
        assert!(valid_index_prefix("taxi-dev_2.x"));
        for bad in ["", "Taxi", "-taxi", "_t", "ta xi", "t*", "t/x", "t,x"] {
            assert!(!valid_index_prefix(bad), "{bad:?}");
        }
    }
}

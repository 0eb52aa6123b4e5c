//! Dead letters: documents the sink refused for good, kept durably under the checkpoint location
//! until the sink accepts them.
//!
//! The invariant: a refused document (a per-item 4xx, a whole `_bulk` answered 400, a single
//! document answered 413) counts as done for a flush only once it is stored here, so a checkpoint
//! never covers a document that is neither in the sink nor in the dead-letter store. The worker
//! re-delivers dead letters by itself ([`super::redrive`]), at start and then periodically: each object
//! is written to the sink again, flushed, and only then deleted. A document refused again is
//! stored again (in a new object) before the old one is deleted, so it is never in neither place.
//! Documents carry their version, so re-delivering an old one never replaces newer content.
//!
//! Layout: one JSON-lines object per batch of refused documents,
//! `{pipeline}/dead-letters/{refused_at_ms:013}-{random:08x}.jsonl`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntGauge;
use serde::{Deserialize, Serialize};

use crate::store::{CheckpointStore, StoreError};
use taxi_core::document::PartialDocument;
use taxi_core::time::wall_clock_millis;

/// One refused document and why it was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The HTTP status of the refusal (of the item, or of the whole request).
    pub status: u16,
    /// The sink's error type (`mapper_parsing_exception`, `request_too_large`, …).
    pub error_type: String,
    /// The sink's reason, shortened.
    pub reason: String,
    /// The document, as it was written.
    pub document: PartialDocument,
}

/// Failures of the dead-letter store.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The store failed.
    #[error("failed to {action} dead letters: {source}")]
    Store {
        /// What was being done.
        action: &'static str,
        /// Why.
        source: StoreError,
    },
    /// The dead letters could not be serialized.
    #[error("failed to encode dead letters: {0}")]
    Encode(#[source] serde_json::Error),
    /// An object does not hold dead letters.
    #[error("dead-letter object {key} is not JSON lines of dead letters (line {line}): {source}")]
    Decode {
        /// The object.
        key: String,
        /// The 1-based line.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
}

/// The dead letters of one pipeline, and a count of those this worker knows of (the
/// `taxi_sink_dead_letters` gauge).
#[derive(Clone, Debug)]
pub struct DeadLetterStore {
    store: CheckpointStore,
    folder: String,
    gauge: IntGauge,
    state: Arc<Mutex<Known>>,
}

/// What the worker knows of the store: documents per object, and the last failure to store.
#[derive(Debug, Default)]
struct Known {
    objects: HashMap<String, usize>,
    store_error: Option<String>,
}

impl DeadLetterStore {
    /// The dead letters of `pipeline` in `store`; `gauge` shows how many documents are stored.
    pub fn new(store: CheckpointStore, pipeline: &str, gauge: IntGauge) -> DeadLetterStore {
        DeadLetterStore { store, folder: format!("{pipeline}/dead-letters"), gauge, state: Arc::default() }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, known: &Known) {
        let total: usize = known.objects.values().sum();
        self.gauge.set(i64::try_from(total).unwrap_or(i64::MAX));
    }

    /// Stores refused documents durably as one new object; returns its key.
    pub async fn put(&self, letters: &[DeadLetter]) -> Result<String, DeadLetterError> {
        let mut bytes = Vec::new();
        for letter in letters {
            // A PartialDocument always serializes (plain fields, finite floats from integers).
            serde_json::to_writer(&mut bytes, letter).map_err(DeadLetterError::Encode)?;
            bytes.push(b'\n');
        }
        let key = format!("{}/{:013}-{:08x}.jsonl", self.folder, wall_clock_millis(), fastrand::u32(..));
        let result = self.store.create(&key, &bytes).await;
        let mut known = self.known();
        match result {
            Ok(_) => {
                known.objects.insert(key.clone(), letters.len());
                known.store_error = None;
                self.publish(&known);
                Ok(key)
            }
            Err(source) => {
                known.store_error = Some(source.to_string());
                Err(DeadLetterError::Store { action: "store", source })
            }
        }
    }

    /// The keys of the stored objects, oldest first.
    pub async fn list(&self) -> Result<Vec<String>, DeadLetterError> {
        self.store.list(&self.folder).await.map_err(|source| DeadLetterError::Store { action: "list", source })
    }

    /// The dead letters of one object (none if it is gone).
    pub async fn read(&self, key: &str) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let Some((bytes, _)) =
            self.store.get(key).await.map_err(|source| DeadLetterError::Store { action: "read", source })?
        else {
            return Ok(Vec::new());
        };
        bytes
            .split(|b| *b == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
            .map(|(i, line)| {
                serde_json::from_slice(line).map_err(|source| DeadLetterError::Decode {
                    key: key.to_owned(),
                    line: i + 1,
                    source,
                })
            })
            .collect()
    }

    /// Deletes one object.
    pub async fn delete(&self, key: &str) -> Result<(), DeadLetterError> {
        self.store.delete(key).await.map_err(|source| DeadLetterError::Store { action: "delete", source })?;
        let mut known = self.known();
        known.objects.remove(key);
        self.publish(&known);
        Ok(())
    }

    /// Documents stored, as far as this worker knows (its own writes and its last scan).
    pub fn count(&self) -> usize {
        self.known().objects.values().sum()
    }

    /// The last failure to store dead letters, until one succeeds: the sink then holds refused
    /// documents it cannot make durable, and checkpoints wait.
    pub fn store_error(&self) -> Option<String> {
        self.known().store_error.clone()
    }

    /// Lists and reads the store, so the count includes objects this worker did not write.
    pub(super) async fn scan(&self) -> Result<Vec<(String, Vec<DeadLetter>)>, DeadLetterError> {
        let keys = self.list().await?;
        let mut objects = Vec::with_capacity(keys.len());
        for key in keys {
            let letters = self.read(&key).await?;
            objects.push((key, letters));
        }
        let mut known = self.known();
        // Forget objects deleted elsewhere; keep those written since the listing (names sort by time).
        let newest = objects.last().map(|(key, _)| key.clone()).unwrap_or_default();
        let listed: std::collections::HashSet<&str> = objects.iter().map(|(key, _)| key.as_str()).collect();
        known.objects.retain(|key, _| listed.contains(key.as_str()) || *key > newest);
        known.objects.extend(objects.iter().map(|(key, letters)| (key.clone(), letters.len())));
        self.publish(&known);
        Ok(objects)
    }
}

//! The OpenSearch sink: partial documents go to `{prefix}-hot-spots` and
//! `{prefix}-airport-trips` through batched `_bulk` requests, and the merged view reads them back.
//!
//! - **Ids.** The `_id` of a document is [`PartialDocument::id`] (deterministic, so a replay
//!   overwrites); ids longer than [`MAX_ID_BYTES`] are shortened by [`document_id`].
//! - **Versions.** Documents are indexed with external versioning ([`PartialDocument::version`]):
//!   OpenSearch stores a document only over a lower version, so a late write of older content
//!   (a zombie worker, a retried request) cannot replace newer content. Its 409 answer means a
//!   same-or-newer version is stored: the document counts as acknowledged.
//! - **Batching.** [`OpenSearchSink::write`] only enqueues; a background task sends `_bulk`
//!   requests when [`BulkSettings::max_docs`] or [`BulkSettings::max_bytes`] are reached, when the
//!   oldest queued document waited [`BulkSettings::max_delay`], or at once when a flush waits, with
//!   at most [`BulkSettings::max_in_flight`] requests at a time.
//! - **Ordering.** At most one version of an id is in flight: a newer version waits until the
//!   older one is answered, and replaces a version that is still queued, so a retried older
//!   version never overwrites a newer one.
//! - **Back-pressure.** At most [`BulkSettings::max_buffered_docs`] documents are unacknowledged;
//!   `write` waits for room (the time is counted in `taxi_sink_backpressure_wait_seconds_total`).
//! - **Errors.** Items answered 429, 5xx or `es_rejected_execution_exception` are retried with
//!   back-off; any other item error, a whole request answered 400 and a single document answered
//!   413 are refusals: counted (by a bounded `reason`), logged and stored as dead letters
//!   ([`crate::sink::dead_letter`]) without holding up the other documents. A refused document is done
//!   for a flush only once its dead letter is durable. Whole requests that fail (connection refused, 429, 5xx, …)
//!   are retried with exponential back-off and jitter for as long as it takes: documents stay
//!   buffered (bounded by the back-pressure) and [`OpenSearchSink::flush`] waits for them, so a
//!   checkpoint is never written before the documents it covers are acknowledged.

mod bulk;
mod client;
mod config;
mod error;
mod index;
mod metrics;
mod query;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ::opensearch::OpenSearch;
use ::opensearch::http::Method;
use bytes::{Bytes, BytesMut};
use prometheus::Registry;
use tokio::sync::{Notify, Semaphore, TryAcquireError, watch};
use tokio::task::{AbortHandle, JoinSet};

use crate::sink::dead_letter::{DeadLetter, DeadLetterStore};
use bulk::{ItemResult, encode, item_reason, item_retryable, parse_bulk};
use client::{build_client, prepare_cluster, send, status_error, truncate};
use metrics::SinkMetrics;
use taxi_core::document::PartialDocument;
use taxi_core::redact;

pub use config::{BulkSettings, OpenSearchAuth, OpenSearchSettings};
pub use error::OpenSearchError;
pub use index::{MAX_ID_BYTES, document_id, index_name, index_template, template_name, valid_index_prefix};
pub use metrics::collectors as metric_collectors;
pub use query::{merged_results, query_partials};
pub use taxi_core::settings::SigV4Service;

/// Item errors logged one by one per bulk response; the rest are only counted.
const LOGGED_ITEM_ERRORS: usize = 5;

/// What a flush saw: documents answered since the previous flush returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Documents stored by OpenSearch.
    pub acknowledged: u64,
    /// Documents OpenSearch refused for good (e.g. a mapping conflict): counted, logged and, with a
    /// dead-letter store, stored there before the flush returned.
    pub rejected: u64,
}

// ---- The sink ----------------------------------------------------------------------------------

/// Sends partial documents to OpenSearch in batches; cheap to clone (one background task).
///
/// Dropping the last clone stops the background task: documents not yet flushed are lost (and
/// were never covered by a checkpoint, so a restart re-emits them).
#[derive(Clone, Debug)]
pub struct OpenSearchSink {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    task: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the writers and the background task share.
#[derive(Debug)]
struct Shared {
    client: OpenSearch,
    url: String,
    prefix: String,
    bulk: BulkSettings,
    metrics: SinkMetrics,
    state: Mutex<State>,
    /// New documents, a flush request, or room for a request.
    wake: Notify,
    /// One permit per document that may still be buffered.
    permits: Semaphore,
    progress: watch::Sender<Progress>,
    /// Where refused documents go; `None` drops them (counted), for tools and tests only.
    dead_letters: Option<DeadLetterStore>,
}

/// Progress seen by flushes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Every document with a sequence number below this is acknowledged or dropped.
    done_below: u64,
    /// The background task is gone.
    dead: bool,
}

#[derive(Debug)]
struct Doc {
    /// `{index}/{_id}`.
    key: Arc<str>,
    /// [`PartialDocument::version`].
    version: u64,
    /// The action and source lines.
    lines: Bytes,
    enqueued: Instant,
    attempts: u32,
    not_before: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    next_seq: u64,
    /// Documents waiting to be sent, by sequence number (retries keep theirs, so they go first).
    queue: BTreeMap<u64, Doc>,
    /// The queued version of each key.
    queued_keys: HashMap<Arc<str>, u64>,
    /// Keys in a request now.
    in_flight_keys: HashSet<Arc<str>>,
    /// Documents not yet acknowledged or dropped.
    outstanding: BTreeSet<u64>,
    /// The highest sequence number a flush waits for.
    flush_target: u64,
    /// No request before this (whole-request back-off).
    paused_until: Option<Instant>,
    consecutive_failures: u32,
    /// Documents per request after a 413 (halved, then grown back).
    batch_cap: usize,
    report: FlushReport,
    /// Refused documents waiting to be stored as dead letters (still outstanding).
    refused: Refused,
    /// No dead-letter write before this (back-off after a failed one).
    dead_letters_paused_until: Option<Instant>,
    dead_letter_failures: u32,
    dead: bool,
}

/// Refused documents on their way to the dead-letter store, by sequence number.
type Refused = Vec<(u64, Doc, Refusal)>;

/// Why OpenSearch refused a document for good.
#[derive(Debug)]
struct Refusal {
    status: u16,
    error_type: String,
    reason: String,
}

/// A batch being sent.
struct Batch {
    docs: Vec<(u64, Doc)>,
    body: Bytes,
}

/// How a `_bulk` request ended.
enum BulkOutcome {
    /// Per-item statuses, in request order.
    Items(Vec<ItemResult>),
    /// No usable answer: retry everything later.
    Failed(OpenSearchError),
    /// 413: the request was too large.
    TooLarge,
    /// 400 for the whole request: the body is refused; retrying cannot help.
    Refused(OpenSearchError),
}

enum Decision {
    Send(Batch),
    Wait(Option<Instant>),
}

impl OpenSearchSink {
    /// Connects: builds the client, waits (with back-off, up to
    /// [`OpenSearchSettings::startup_timeout`]) until the cluster answers, puts the index template,
    /// creates the two indices if missing, registers the metrics on `registry` and starts the
    /// background task. Must be called inside a tokio runtime.
    ///
    /// Refused documents go to `dead_letters`; without one they are dropped (counted and logged):
    /// only for tools and tests that check refusals themselves.
    pub async fn connect(
        settings: OpenSearchSettings,
        registry: &Registry,
        dead_letters: Option<DeadLetterStore>,
    ) -> Result<OpenSearchSink, OpenSearchError> {
        let client = build_client(&settings).await?;
        let url = settings.url.clone();
        let prefix = settings.index_prefix.clone();
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match prepare_cluster(&client, &url, &prefix).await {
                Ok(()) => break,
                Err(e) if e.is_transient() && started.elapsed() < settings.startup_timeout => {
                    let delay = settings.bulk.retry().delay(attempts).max(Duration::from_millis(50));
                    tracing::warn!(
                        url = %redact::url(&url),
                        attempt = attempts,
                        error = %e,
                        "OpenSearch not ready; retrying in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) if e.is_transient() => {
                    return Err(OpenSearchError::Unavailable {
                        url: redact::url(&url).into_owned(),
                        waited: started.elapsed(),
                        attempts,
                        last: Box::new(e),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let metrics = SinkMetrics::register(registry).map_err(|source| OpenSearchError::Metrics { source })?;
        let max_buffered = settings.bulk.max_buffered_docs.clamp(1, u32::MAX as usize);
        let (progress, _) = watch::channel(Progress::default());
        let state = State { batch_cap: settings.bulk.max_docs.max(1), ..State::default() };
        let shared = Arc::new(Shared {
            client,
            url,
            prefix,
            bulk: settings.bulk,
            metrics,
            state: Mutex::new(state),
            wake: Notify::new(),
            permits: Semaphore::new(max_buffered),
            progress,
            dead_letters,
        });
        let task = tokio::spawn(run(shared.clone()));
        let abort = task.abort_handle();
        let supervised = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("the OpenSearch sink's background task panicked");
                supervised.stop();
            }
        });
        tracing::info!(url = %redact::url(&shared.url), prefix = %shared.prefix, "OpenSearch sink connected");
        Ok(OpenSearchSink { inner: Arc::new(Inner { shared, task: abort }) })
    }

    /// Enqueues documents. Returns once they are buffered; waits while
    /// [`BulkSettings::max_buffered_docs`] documents are unacknowledged (back-pressure).
    pub async fn write(&self, docs: Vec<PartialDocument>) -> Result<(), OpenSearchError> {
        if docs.is_empty() {
            return Ok(());
        }
        let shared = &self.inner.shared;
        let encoded = docs.iter().map(|d| encode(&shared.prefix, d)).collect::<Result<Vec<_>, _>>()?;
        let chunk = shared.bulk.max_buffered_docs.clamp(1, u32::MAX as usize);
        for (originals, part) in docs.chunks(chunk).zip(encoded.chunks(chunk)) {
            let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
            let permit = match shared.permits.try_acquire_many(n) {
                Ok(permit) => permit,
                Err(TryAcquireError::Closed) => return Err(OpenSearchError::Closed),
                Err(TryAcquireError::NoPermits) => {
                    let started = Instant::now();
                    shared.metrics.backpressure_waits.inc();
                    tracing::debug!(docs = n, "OpenSearch sink buffer full; waiting");
                    let permit = shared.permits.acquire_many(n).await.map_err(|_| OpenSearchError::Closed)?;
                    shared.metrics.backpressure_seconds.inc_by(started.elapsed().as_secs_f64());
                    permit
                }
            };
            permit.forget();
            let released = {
                let mut st = shared.lock();
                if st.dead {
                    return Err(OpenSearchError::Closed);
                }
                let now = Instant::now();
                let mut released = 0;
                for (doc, (key, lines)) in originals.iter().zip(part) {
                    // Of two queued versions of one id only the higher is sent (a re-delivered
                    // dead letter may be older than what its shard wrote since).
                    if let Some(&queued) = st.queued_keys.get(key)
                        && st.queue.get(&queued).is_some_and(|q| q.version > doc.version)
                    {
                        released += 1;
                        continue;
                    }
                    let seq = st.next_seq;
                    st.next_seq += 1;
                    if let Some(old) = st.queued_keys.insert(key.clone(), seq) {
                        st.queue.remove(&old);
                        st.outstanding.remove(&old);
                        released += 1;
                    }
                    st.outstanding.insert(seq);
                    let doc = Doc {
                        key: key.clone(),
                        version: doc.version,
                        lines: lines.clone(),
                        enqueued: now,
                        attempts: 0,
                        not_before: None,
                    };
                    st.queue.insert(seq, doc);
                }
                shared.publish(&st);
                released
            };
            if released > 0 {
                shared.metrics.superseded.inc_by(released as u64);
                shared.permits.add_permits(released);
            }
            shared.wake.notify_one();
        }
        Ok(())
    }

    /// Returns once every document written before this call is acknowledged or dropped (sends
    /// what is queued at once). While the cluster is down this waits; wrap it in a timeout to
    /// bound it. The report counts documents answered since the previous flush returned.
    pub async fn flush(&self) -> Result<FlushReport, OpenSearchError> {
        let shared = &self.inner.shared;
        let target = {
            let mut st = shared.lock();
            st.flush_target = st.flush_target.max(st.next_seq);
            st.next_seq
        };
        shared.wake.notify_one();
        let mut rx = shared.progress.subscribe();
        let progress = *rx.wait_for(|p| p.dead || p.done_below >= target).await.map_err(|_| OpenSearchError::Closed)?;
        if progress.dead {
            return Err(OpenSearchError::Closed);
        }
        Ok(std::mem::take(&mut shared.lock().report))
    }

    /// Documents written but not yet acknowledged or dropped.
    pub fn buffered(&self) -> usize {
        self.inner.shared.lock().outstanding.len()
    }

    /// The index prefix.
    pub fn index_prefix(&self) -> &str {
        &self.inner.shared.prefix
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements; a panic elsewhere must not wedge the sink.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the sink dead: waiting flushes and every later write or flush fail with
    /// [`OpenSearchError::Closed`] instead of returning as if their documents were stored.
    fn stop(&self) {
        self.lock().dead = true;
        self.progress.send_modify(|p| p.dead = true);
        self.permits.close();
    }

    /// Tells flushes how far documents are done, and updates the gauge.
    fn publish(&self, st: &State) {
        let done_below = st.outstanding.first().copied().unwrap_or(st.next_seq);
        self.progress.send_if_modified(|p| {
            let changed = p.done_below != done_below;
            p.done_below = done_below;
            changed
        });
        self.metrics.buffered.set(i64::try_from(st.outstanding.len()).unwrap_or(i64::MAX));
    }

    /// Picks the next batch, or says until when to wait.
    fn next_batch(&self, requests_in_flight: usize) -> Decision {
        if requests_in_flight >= self.bulk.max_in_flight.max(1) {
            return Decision::Wait(None);
        }
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(until) = st.paused_until {
            if until > now {
                return Decision::Wait(Some(until));
            }
            st.paused_until = None;
        }
        let max_docs = st.batch_cap.clamp(1, self.bulk.max_docs.max(1));
        let mut picked = Vec::new();
        let mut bytes = 0usize;
        let mut full = false;
        let mut oldest: Option<Instant> = None;
        let mut next_retry: Option<Instant> = None;
        for (&seq, doc) in &st.queue {
            if st.in_flight_keys.contains(&doc.key) {
                continue;
            }
            if let Some(at) = doc.not_before
                && at > now
            {
                next_retry = Some(next_retry.map_or(at, |t| t.min(at)));
                continue;
            }
            if !picked.is_empty() && bytes + doc.lines.len() > self.bulk.max_bytes {
                full = true;
                break;
            }
            picked.push(seq);
            bytes += doc.lines.len();
            oldest = Some(oldest.map_or(doc.enqueued, |t| t.min(doc.enqueued)));
            if picked.len() >= max_docs {
                full = true;
                break;
            }
        }
        let Some(oldest) = oldest else {
            return Decision::Wait(next_retry);
        };
        let done_below = st.outstanding.first().copied().unwrap_or(st.next_seq);
        let flushing = st.flush_target > done_below;
        let due = oldest + self.bulk.max_delay;
        if !(full || flushing || due <= now) {
            return Decision::Wait(Some(next_retry.map_or(due, |t| t.min(due))));
        }
        let mut body = BytesMut::with_capacity(bytes);
        let mut docs = Vec::with_capacity(picked.len());
        for seq in picked {
            if let Some(doc) = st.queue.remove(&seq) {
                st.queued_keys.remove(&doc.key);
                st.in_flight_keys.insert(doc.key.clone());
                body.extend_from_slice(&doc.lines);
                docs.push((seq, doc));
            }
        }
        Decision::Send(Batch { docs, body: body.freeze() })
    }

    /// Applies the answer to a batch.
    fn complete(&self, batch: Vec<(u64, Doc)>, outcome: BulkOutcome) {
        let now = Instant::now();
        let mut released = 0usize;
        let mut logged = 0usize;
        let mut st = self.lock();
        let st = &mut *st;
        match outcome {
            BulkOutcome::Items(items) => {
                st.consecutive_failures = 0;
                st.batch_cap = st.batch_cap.saturating_mul(2).min(self.bulk.max_docs.max(1));
                for ((seq, doc), item) in batch.into_iter().zip(items) {
                    let superseded = item.status == 409 && item.error_type == "version_conflict_engine_exception";
                    if (200..300).contains(&item.status) || superseded {
                        if superseded {
                            // A same-or-newer version is stored: nothing of this one is lost.
                            self.metrics
                                .item_errors
                                .with_label_values(&["version_conflict_engine_exception", "superseded"])
                                .inc();
                        }
                        st.report.acknowledged += 1;
                        self.metrics.acknowledged.inc();
                        released += st.finish(seq, &doc);
                        continue;
                    }
                    let reason = item_reason(item.status, &item.error_type);
                    if item_retryable(item.status, &item.error_type) {
                        self.metrics.item_errors.with_label_values(&[reason, "retried"]).inc();
                        self.metrics.retries.with_label_values(&["item"]).inc();
                        let delay = self.bulk.retry().delay(doc.attempts.saturating_add(1));
                        released += st.requeue(seq, doc, Some(now + delay));
                        continue;
                    }
                    if logged < LOGGED_ITEM_ERRORS {
                        logged += 1;
                        tracing::warn!(
                            key = %doc.key,
                            status = item.status,
                            error_type = %item.error_type,
                            reason = %truncate(&item.reason, 500),
                            "OpenSearch refused a document"
                        );
                    }
                    let refusal = Refusal {
                        status: item.status,
                        error_type: item.error_type,
                        reason: truncate(&item.reason, 500).into_owned(),
                    };
                    released += self.refuse(st, seq, doc, reason, refusal);
                }
            }
            BulkOutcome::TooLarge => {
                self.metrics.request_errors.with_label_values(&["too_large"]).inc();
                if batch.len() > 1 {
                    st.batch_cap = (batch.len() / 2).max(1);
                    tracing::warn!(docs = batch.len(), "OpenSearch answered 413; halving the batch");
                    for (seq, doc) in batch {
                        self.metrics.retries.with_label_values(&["request"]).inc();
                        released += st.requeue(seq, doc, None);
                    }
                } else {
                    for (seq, doc) in batch {
                        tracing::warn!(key = %doc.key, "a single document is too large for OpenSearch");
                        let refusal = Refusal {
                            status: 413,
                            error_type: "request_too_large".to_owned(),
                            reason: "the document alone exceeds the cluster's request size limit".to_owned(),
                        };
                        released += self.refuse(st, seq, doc, "request_too_large", refusal);
                    }
                }
            }
            BulkOutcome::Refused(error) => {
                self.metrics.request_errors.with_label_values(&[error.category()]).inc();
                tracing::error!(docs = batch.len(), error = %error, "OpenSearch refused a bulk request");
                let (error_type, reason) = match &error {
                    OpenSearchError::Status { error_type, reason, .. } => (error_type.clone(), reason.clone()),
                    other => ("bad_request".to_owned(), other.to_string()),
                };
                for (seq, doc) in batch {
                    let refusal = Refusal { status: 400, error_type: error_type.clone(), reason: reason.clone() };
                    released += self.refuse(st, seq, doc, "bad_request", refusal);
                }
            }
            BulkOutcome::Failed(error) => {
                self.metrics.request_errors.with_label_values(&[error.category()]).inc();
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                let delay = self.bulk.retry().delay(st.consecutive_failures);
                st.paused_until = Some(st.paused_until.map_or(now + delay, |t| t.max(now + delay)));
                tracing::warn!(
                    docs = batch.len(),
                    failures = st.consecutive_failures,
                    error = %error,
                    "OpenSearch bulk request failed; retrying in {delay:?}"
                );
                for (seq, doc) in batch {
                    self.metrics.retries.with_label_values(&["request"]).inc();
                    released += st.requeue(seq, doc, None);
                }
            }
        }
        self.publish(st);
        if released > 0 {
            self.permits.add_permits(released);
        }
    }
}

impl Shared {
    /// A document refused for good: kept outstanding until its dead letter is stored (the
    /// background task writes it), or done at once without a dead-letter store. Returns the
    /// permits to release.
    fn refuse(&self, st: &mut State, seq: u64, doc: Doc, reason: &'static str, refusal: Refusal) -> usize {
        st.report.rejected += 1;
        if self.dead_letters.is_none() {
            self.metrics.item_errors.with_label_values(&[reason, "dropped"]).inc();
            return st.finish(seq, &doc);
        }
        self.metrics.item_errors.with_label_values(&[reason, "dead_lettered"]).inc();
        st.in_flight_keys.remove(&doc.key);
        st.refused.push((seq, doc, refusal));
        0
    }

    /// The refused documents to store as dead letters now, if any and not backing off.
    fn take_refused(&self) -> Option<Refused> {
        let mut st = self.lock();
        if st.refused.is_empty() || st.dead_letters_paused_until.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        Some(std::mem::take(&mut st.refused))
    }

    /// Applies the outcome of storing dead letters: done, or back to wait for a retry.
    fn dead_lettered(&self, refused: Refused, stored: bool) {
        let mut released = 0;
        let mut st = self.lock();
        if stored {
            st.dead_letter_failures = 0;
            for (seq, doc, _) in &refused {
                released += st.finish(*seq, doc);
            }
        } else {
            st.dead_letter_failures = st.dead_letter_failures.saturating_add(1);
            let delay = self.bulk.retry().delay(st.dead_letter_failures);
            st.dead_letters_paused_until = Some(Instant::now() + delay);
            st.refused.extend(refused);
        }
        self.publish(&st);
        drop(st);
        if released > 0 {
            self.permits.add_permits(released);
        }
    }
}

/// Stores refused documents as dead letters; `true` once they are durable.
async fn store_dead_letters(store: &DeadLetterStore, refused: &Refused) -> bool {
    let mut letters = Vec::with_capacity(refused.len());
    for (_, doc, refusal) in refused {
        // The second bulk line is the document's source, as `encode` wrote it.
        let source = doc.lines.splitn(3, |b| *b == b'\n').nth(1).unwrap_or_default();
        match serde_json::from_slice::<PartialDocument>(source) {
            Ok(document) => letters.push(DeadLetter {
                status: refusal.status,
                error_type: refusal.error_type.clone(),
                reason: refusal.reason.clone(),
                document,
            }),
            Err(e) => {
                tracing::error!(key = %doc.key, error = %e, "a refused document does not decode; it cannot be kept")
            }
        }
    }
    match store.put(&letters).await {
        Ok(key) => {
            tracing::warn!(documents = letters.len(), %key, "refused documents stored as dead letters");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, documents = letters.len(), "failed to store dead letters; retrying");
            false
        }
    }
}

impl State {
    /// Marks a sent document done; returns the permits to release.
    fn finish(&mut self, seq: u64, doc: &Doc) -> usize {
        self.in_flight_keys.remove(&doc.key);
        usize::from(self.outstanding.remove(&seq))
    }

    /// Puts a sent document back in the queue, unless a newer version of it is queued (then this
    /// one is done: the newer one carries the state). Returns the permits to release.
    fn requeue(&mut self, seq: u64, mut doc: Doc, not_before: Option<Instant>) -> usize {
        self.in_flight_keys.remove(&doc.key);
        if self.queued_keys.contains_key(&doc.key) {
            return usize::from(self.outstanding.remove(&seq));
        }
        doc.attempts = doc.attempts.saturating_add(1);
        doc.not_before = not_before;
        self.queued_keys.insert(doc.key.clone(), seq);
        self.queue.insert(seq, doc);
        0
    }
}

/// The background task: sends batches and applies their answers.
async fn run(shared: Arc<Shared>) {
    let mut requests: JoinSet<(Vec<(u64, Doc)>, BulkOutcome)> = JoinSet::new();
    // At most one dead-letter write at a time.
    let mut storing: JoinSet<(Refused, bool)> = JoinSet::new();
    loop {
        if storing.is_empty()
            && let Some(store) = shared.dead_letters.clone()
            && let Some(refused) = shared.take_refused()
        {
            storing.spawn(async move {
                let stored = store_dead_letters(&store, &refused).await;
                (refused, stored)
            });
        }
        match shared.next_batch(requests.len()) {
            Decision::Send(batch) => {
                let shared = shared.clone();
                requests.spawn(async move {
                    let outcome = send_bulk(&shared, &batch).await;
                    (batch.docs, outcome)
                });
            }
            Decision::Wait(until) => {
                // Wake for a dead-letter retry too, when one waits.
                let until = {
                    let st = shared.lock();
                    let retry = st.dead_letters_paused_until.filter(|_| !st.refused.is_empty());
                    match (until, retry) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    }
                };
                let sleep = async {
                    match until {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = shared.wake.notified() => {}
                    Some(joined) = requests.join_next(), if !requests.is_empty() => match joined {
                        Ok((docs, outcome)) => shared.complete(docs, outcome),
                        Err(e) => {
                            // Without the batch its documents can no longer be tracked: give up
                            // loudly rather than let a flush return too early.
                            tracing::error!(error = %e, "an OpenSearch bulk request task failed; the sink stops");
                            shared.stop();
                            return;
                        }
                    },
                    Some(joined) = storing.join_next(), if !storing.is_empty() => match joined {
                        Ok((refused, stored)) => shared.dead_lettered(refused, stored),
                        Err(e) => {
                            tracing::error!(error = %e, "storing dead letters failed unexpectedly; the sink stops");
                            shared.stop();
                            return;
                        }
                    },
                    () = sleep => {}
                }
            }
        }
    }
}

/// Sends one `_bulk` request and classifies the answer.
async fn send_bulk(shared: &Shared, batch: &Batch) -> BulkOutcome {
    let started = Instant::now();
    shared.metrics.documents_sent.inc_by(batch.docs.len() as u64);
    shared.metrics.bytes_sent.inc_by(batch.body.len() as u64);
    let answer = send(
        &shared.client,
        &shared.url,
        "bulk",
        Method::Post,
        "/_bulk",
        &[],
        Some((batch.body.clone(), "application/x-ndjson")),
    )
    .await;
    let outcome = match answer {
        Err(e) => BulkOutcome::Failed(e),
        Ok(answer) if (200..300).contains(&answer.status) => match parse_bulk(&answer.body, batch.docs.len()) {
            Ok(items) => BulkOutcome::Items(items),
            Err(e) => BulkOutcome::Failed(e),
        },
        Ok(answer) if answer.status == 413 => BulkOutcome::TooLarge,
        Ok(answer) if answer.status == 400 => BulkOutcome::Refused(status_error("bulk", &answer)),
        // 401/403 (credentials may be rotated), 404 (proxy), 429, 5xx: try again later.
        Ok(answer) => BulkOutcome::Failed(status_error("bulk", &answer)),
    };
    let label = match &outcome {
        BulkOutcome::Items(items) if items.iter().all(|i| (200..300).contains(&i.status)) => "ok",
        BulkOutcome::Items(_) => "item_errors",
        _ => "failed",
    };
    shared.metrics.bulk_seconds.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
    outcome
}

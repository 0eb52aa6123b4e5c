//! One checkpoint-store interface over a local directory (`file://`) and S3 (`s3://`), with the
//! conditional puts that fence a shard's previous owner and a short history of past
//! checkpoints per key for inspection.
//!
//! Both kinds behave alike: `get` returns the bytes and their [`ETag`]; `put` with
//! [`Precondition::Absent`] creates, with [`Precondition::Matches`] replaces only the version the
//! writer last saw, and fails with [`StoreError::Conflict`] at once (never after retries)
//! otherwise. S3 requests are retried a few times on transient failures (5xx, timeouts, connection
//! errors) and then surface as a retryable [`StoreError::S3`], so a caller whose store is down
//! keeps its state and tries again at its next checkpoint interval.
//!
//! History: after each successful put of `key`, a copy is written to `history/{key}/{stamp}`
//! (`stamp`: zero-padded nanoseconds since the epoch, increasing within a process) and all but
//! the newest `retain` copies are deleted — best-effort, a failure there is logged and never fails
//! the put. Keys whose first segment is `history` are therefore reserved.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};

mod dir;
mod error;

/// How to reach S3, shared with the S3 inputs.
pub use crate::s3::S3Settings;
pub use dir::{DirStore, ETag, Precondition};
pub use error::StoreError;

use crate::retry::{BackoffPolicy, Jitter};
use crate::s3::{BUCKET_NAMES, chain, describe, is_bucket_name};

/// The folder (directory or key prefix) under the store's root that holds history copies.
const HISTORY: &str = "history";

/// Serializes [`DirStore`] puts within the process (see [`CheckpointStore::put`]).
static DIR_PUTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Attempts per S3 request (the first one included) before a transient failure is returned.
const MAX_ATTEMPTS: u32 = 4;
/// The wait between two attempts: 100, 200, 400 ms, each drawn from its upper half.
const RETRY: BackoffPolicy = BackoffPolicy::new(Duration::from_millis(100), Duration::from_millis(800), Jitter::Equal);
/// Time allowed to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time allowed for one attempt of one request (checkpoints are small objects).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time allowed for one attempt of writing `len` bytes: [`ATTEMPT_TIMEOUT`] for a checkpoint, and
/// a second more per MiB for a large object (an archive file), so a slow but steady upload ends.
fn attempt_timeout_for(len: usize) -> Duration {
    ATTEMPT_TIMEOUT + Duration::from_secs(u64::try_from(len >> 20).unwrap_or(u64::MAX))
}

/// A checkpoint store: a local directory or an S3 bucket and prefix, with per-key history.
#[derive(Clone, Debug)]
pub enum CheckpointStore {
    /// A local directory (`file:///dir` or a plain path).
    Dir {
        /// The directory.
        store: DirStore,
        /// History copies kept per key (0: none).
        retain: usize,
    },
    /// An S3 bucket and prefix (`s3://bucket/prefix`).
    S3 {
        /// The bucket and prefix.
        store: S3Store,
        /// History copies kept per key (0: none).
        retain: usize,
    },
}

impl CheckpointStore {
    /// Opens the store named by `uri`: `file:///dir`, a plain directory path, or `s3://bucket/prefix`
    /// (credentials from the default AWS chain, `s3` for endpoint, addressing and region). `retain`
    /// history copies are kept per key ([`taxi_core::settings::DEFAULT_RETAIN`] is the usual choice, 0 keeps none).
    pub async fn from_uri(uri: &str, s3: &S3Settings, retain: usize) -> Result<CheckpointStore, StoreError> {
        match parse_uri(uri)? {
            StoreUri::Dir(store) => Ok(CheckpointStore::Dir { store, retain }),
            StoreUri::S3 { bucket, prefix } => {
                Ok(CheckpointStore::S3 { store: S3Store::connect(bucket, prefix, s3).await?, retain })
            }
        }
    }

    /// The kind of store, `"file"` or `"s3"` (a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            CheckpointStore::Dir { .. } => "file",
            CheckpointStore::S3 { .. } => "s3",
        }
    }

    /// History copies kept per key.
    pub fn retain(&self) -> usize {
        match self {
            CheckpointStore::Dir { retain, .. } | CheckpointStore::S3 { retain, .. } => *retain,
        }
    }

    /// Reads an object and its tag, `None` if absent.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, ETag)>, StoreError> {
        check_key(key)?;
        self.get_raw(key).await
    }

    /// Reads the history copy `stamp` of `key` (see [`CheckpointStore::history`]), `None` if it
    /// has been pruned meanwhile.
    pub async fn get_history(&self, key: &str, stamp: &str) -> Result<Option<Vec<u8>>, StoreError> {
        check_key(key)?;
        Ok(self.get_raw(&format!("{HISTORY}/{key}/{stamp}")).await?.map(|(bytes, _)| bytes))
    }

    async fn get_raw(&self, key: &str) -> Result<Option<(Vec<u8>, ETag)>, StoreError> {
        match self {
            CheckpointStore::Dir { store, .. } => {
                let (store, owned) = (store.clone(), key.to_owned());
                blocking(store.root().join(key), "read", move || store.get(&owned)).await
            }
            CheckpointStore::S3 { store, .. } => store.get(key).await,
        }
    }

    /// Writes an object if `precondition` holds and returns its new tag; a failed precondition is
    /// [`StoreError::Conflict`] (another writer owns the key). Then keeps a history copy.
    ///
    /// Directory puts are serialized within the process, so their check-and-write is atomic there
    /// (as S3's is everywhere); across processes a directory still needs a single writer.
    ///
    /// A conflict is first checked by reading the object back: when an earlier attempt of this very
    /// write was applied but its answer lost (a timeout, a reset connection), the retry sees its own
    /// write as a conflict. If the object holds exactly these bytes, the write succeeded. Bytes name
    /// their writer (checkpoints carry a per-process owner id), so another writer's object never
    /// matches.
    pub async fn put(&self, key: &str, bytes: &[u8], precondition: &Precondition) -> Result<ETag, StoreError> {
        check_key(key)?;
        let tag = match self.put_raw(key, bytes, precondition).await {
            Err(StoreError::Conflict { .. })
                if let Ok(Some((stored, tag))) = self.get(key).await
                    && stored == bytes =>
            {
                tracing::info!(
                    store = self.kind(),
                    key,
                    "an earlier attempt of this write was applied; not a conflict"
                );
                tag
            }
            other => other?,
        };
        let retain = self.retain();
        if retain > 0
            && let Err(error) = self.keep_history(key, bytes, retain).await
        {
            tracing::warn!(store = self.kind(), key, %error, "failed to keep a history copy of a checkpoint");
        }
        Ok(tag)
    }

    /// Writes a new object (`If-None-Match: *`) and keeps no history: for objects written once
    /// under a unique name, such as dead letters.
    pub async fn create(&self, key: &str, bytes: &[u8]) -> Result<ETag, StoreError> {
        check_key(key)?;
        self.put_raw(key, bytes, &Precondition::Absent).await
    }

    /// Keys of the objects right under `folder/`, sorted (history copies are elsewhere).
    pub async fn list(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        check_key(folder)?;
        let mut keys: Vec<String> = match self {
            CheckpointStore::Dir { store, .. } => {
                let dir = store.root().join(folder);
                let names = blocking(dir.clone(), "list", move || list_dir(&dir)).await?;
                // `.tmp-…` files are puts in progress (or left by a crash), not objects.
                names.into_iter().filter(|n| !n.contains(".tmp-")).map(|n| format!("{folder}/{n}")).collect()
            }
            CheckpointStore::S3 { store, .. } => {
                let under = format!("{folder}/");
                let keys = store.list(&under).await?;
                keys.into_iter().filter(|k| k.strip_prefix(&under).is_some_and(|rest| !rest.contains('/'))).collect()
            }
        };
        keys.sort();
        Ok(keys)
    }

    /// Deletes one object (not its history); absent is fine.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.delete_one(key).await
    }

    /// Deletes the object `prefix`, every object under `prefix/`, and their history; absent is fine.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), StoreError> {
        check_key(prefix)?;
        let history = format!("{HISTORY}/{prefix}");
        match self {
            CheckpointStore::Dir { store, .. } => {
                let (store, owned) = (store.clone(), prefix.to_owned());
                blocking(store.root().join(prefix), "delete", move || {
                    store.delete_prefix(&owned)?;
                    store.delete_prefix(&history)
                })
                .await
            }
            CheckpointStore::S3 { store, .. } => {
                store.delete_prefix(prefix).await?;
                store.delete_prefix(&history).await
            }
        }
    }

    /// The history stamps kept for `key`, oldest first.
    pub async fn history(&self, key: &str) -> Result<Vec<String>, StoreError> {
        check_key(key)?;
        let folder = format!("{HISTORY}/{key}");
        let mut stamps = match self {
            CheckpointStore::Dir { store, .. } => {
                let dir = store.root().join(&folder);
                blocking(dir.clone(), "list", move || list_dir(&dir)).await?
            }
            CheckpointStore::S3 { store, .. } => {
                let prefix = format!("{folder}/");
                let keys = store.list(&prefix).await?;
                keys.into_iter().filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)).collect()
            }
        };
        stamps.retain(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        stamps.sort();
        Ok(stamps)
    }

    async fn put_raw(&self, key: &str, bytes: &[u8], precondition: &Precondition) -> Result<ETag, StoreError> {
        match self {
            CheckpointStore::Dir { store, .. } => {
                let (store, owned, bytes, precondition) =
                    (store.clone(), key.to_owned(), bytes.to_vec(), precondition.clone());
                blocking(store.root().join(key), "write", move || {
                    // DirStore checks, then renames, through a temporary file named after the process:
                    // one put at a time makes that atomic within this process, as S3's is.
                    let _one_at_a_time = DIR_PUTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    store.put(&owned, &bytes, &precondition)
                })
                .await
            }
            CheckpointStore::S3 { store, .. } => store.put(key, bytes, precondition).await,
        }
    }

    async fn delete_one(&self, key: &str) -> Result<(), StoreError> {
        match self {
            CheckpointStore::Dir { store, .. } => {
                let (store, owned) = (store.clone(), key.to_owned());
                blocking(store.root().join(key), "delete", move || store.delete_prefix(&owned)).await
            }
            CheckpointStore::S3 { store, .. } => store.delete(key).await,
        }
    }

    async fn keep_history(&self, key: &str, bytes: &[u8], retain: usize) -> Result<(), StoreError> {
        let folder = format!("{HISTORY}/{key}");
        self.put_raw(&format!("{folder}/{}", history_stamp()), bytes, &Precondition::None).await?;
        let stamps = self.history(key).await?;
        let excess = stamps.len().saturating_sub(retain);
        for stamp in &stamps[..excess] {
            self.delete_one(&format!("{folder}/{stamp}")).await?;
        }
        Ok(())
    }
}

/// Runs a [`DirStore`] call on the blocking pool: its puts `fsync`, which can stall for many
/// milliseconds and must not hold up the runtime's few worker threads (the machine has 2 cores).
async fn blocking<T, F>(path: PathBuf, action: &'static str, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Io { action, path, source: std::io::Error::other(join.to_string()) }),
    }
}

/// File names in `dir`, none if it does not exist.
fn list_dir(dir: &std::path::Path) -> Result<Vec<String>, StoreError> {
    let io = |source| StoreError::Io { action: "list", path: dir.to_owned(), source };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry.map_err(io)?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// A name for the next history copy: zero-padded nanoseconds since the epoch, strictly increasing
/// within this process, so names sort oldest first.
fn history_stamp() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let previous = LAST.fetch_max(now, Ordering::Relaxed);
    let stamp = if now > previous {
        now
    } else {
        // Same or earlier clock reading than the last stamp: take the next free number.
        LAST.fetch_add(1, Ordering::Relaxed) + 1
    };
    format!("{stamp:020}")
}

/// Keys are relative paths of non-empty normal segments, and not under the reserved history folder.
fn check_key(key: &str) -> Result<(), StoreError> {
    let normal = !key.is_empty() && key.split('/').all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\'));
    let reserved = key.split('/').next() == Some(HISTORY);
    if normal && !reserved { Ok(()) } else { Err(StoreError::BadKey(key.to_owned())) }
}

/// A parsed store URI.
#[derive(Debug)]
enum StoreUri {
    Dir(DirStore),
    S3 { bucket: String, prefix: String },
}

fn parse_uri(uri: &str) -> Result<StoreUri, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUri { uri: uri.to_owned(), reason: reason.to_owned() };
    let Some(rest) = uri.strip_prefix("s3://") else {
        if uri.is_empty() {
            return Err(invalid("it is empty"));
        }
        if !uri.starts_with("file://") && uri.contains("://") {
            return Err(invalid("unknown scheme"));
        }
        return DirStore::from_uri(uri).map(StoreUri::Dir);
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid("no bucket name"));
    }
    if !is_bucket_name(bucket) {
        return Err(invalid(BUCKET_NAMES));
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if !prefix.is_empty() && prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(invalid("the prefix has an empty, '.' or '..' segment"));
    }
    Ok(StoreUri::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
}

/// Checkpoint objects in an S3 bucket under a prefix, with S3's conditional writes.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// Connects with credentials and (unless `settings` names one) the region from the default AWS chain.
    pub async fn connect(
        bucket: impl Into<String>,
        prefix: impl Into<String>,
        settings: &S3Settings,
    ) -> Result<S3Store, StoreError> {
        S3Store::new(&settings.load_sdk_config().await, settings, bucket, prefix)
    }

    /// A store using `sdk` (credentials, region) overridden by `settings`. The client's own retries are
    /// turned off: this store retries transient failures itself and never retries a fenced write.
    pub fn new(
        sdk: &aws_config::SdkConfig,
        settings: &S3Settings,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
    ) -> Result<S3Store, StoreError> {
        let bucket = bucket.into();
        let prefix = prefix.into().trim_end_matches('/').to_owned();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .build();
        let client = settings.client(sdk, timeouts).map_err(|no_region| StoreError::S3 {
            action: "configure the client for",
            uri: format!("s3://{bucket}/{prefix}"),
            message: no_region.to_string(),
            retryable: false,
        })?;
        Ok(S3Store { client, bucket, prefix })
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix (no trailing slash; empty: the bucket's root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying client.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    fn object_key(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.prefix) }
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.object_key(key))
    }

    /// Reads the object `{prefix}/{key}` and its ETag (without quotes), `None` if absent.
    pub async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, ETag)>, StoreError> {
        let object = self.object_key(key);
        let action = "read checkpoint";
        self.retrying(action, key, || async {
            let output = match self.client.get_object().bucket(&self.bucket).key(&object).send().await {
                Ok(output) => output,
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
                Err(e) => return Err(self.sdk_error(action, key, &e)),
            };
            let tag = output.e_tag().map(etag_of).ok_or_else(|| self.no_etag(action, key))?;
            let bytes = output.body.collect().await.map_err(|e| StoreError::S3 {
                action,
                uri: self.uri(key),
                message: format!("reading the body: {}", chain(&e)),
                retryable: true,
            })?;
            Ok(Some((bytes.to_vec(), tag)))
        })
        .await
    }

    /// Writes `{prefix}/{key}` if `precondition` holds (`If-None-Match: *` / `If-Match`), returning
    /// its ETag. HTTP 412 and 409, and 404 for `If-Match` (the object is gone), are
    /// [`StoreError::Conflict`], returned at once.
    pub async fn put(&self, key: &str, bytes: &[u8], precondition: &Precondition) -> Result<ETag, StoreError> {
        let object = self.object_key(key);
        let action = "write checkpoint";
        self.retrying(action, key, || async {
            let content_type =
                if key.ends_with(".parquet") { "application/vnd.apache.parquet" } else { "application/json" };
            let mut request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .content_type(content_type)
                .body(ByteStream::from(bytes.to_vec()));
            request = match precondition {
                Precondition::None => request,
                Precondition::Absent => request.if_none_match("*"),
                Precondition::Matches(tag) => request.if_match(format!("\"{}\"", tag.0)),
            };
            let attempt_timeout = attempt_timeout_for(bytes.len());
            let sent = if attempt_timeout > ATTEMPT_TIMEOUT {
                let timeouts = TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(attempt_timeout)
                    .build();
                request
                    .customize()
                    .config_override(aws_sdk_s3::config::Builder::new().timeout_config(timeouts))
                    .send()
                    .await
            } else {
                request.send().await
            };
            match sent {
                Ok(output) => output.e_tag().map(etag_of).ok_or_else(|| self.no_etag(action, key)),
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    let gone = matches!(precondition, Precondition::Matches(_)) && status == Some(404);
                    if matches!(status, Some(412 | 409)) || gone {
                        Err(StoreError::Conflict { key: key.to_owned() })
                    } else {
                        Err(self.sdk_error(action, key, &e))
                    }
                }
            }
        })
        .await
    }

    /// Deletes `{prefix}/{key}`; absent is fine.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let object = self.object_key(key);
        let action = "delete checkpoint";
        self.retrying(action, key, || async {
            match self.client.delete_object().bucket(&self.bucket).key(&object).send().await {
                Ok(_) => Ok(()),
                Err(e) => Err(self.sdk_error(action, key, &e)),
            }
        })
        .await
    }

    /// Keys (relative to the store's prefix) of every object whose key starts with `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let full = self.object_key(prefix);
        let root = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let action = "list checkpoints under";
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retrying(action, prefix, || async {
                    self.client
                        .list_objects_v2()
                        .bucket(&self.bucket)
                        .prefix(&full)
                        .set_continuation_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| self.sdk_error(action, prefix, &e))
                })
                .await?;
            keys.extend(
                page.contents().iter().filter_map(|o| o.key()).filter_map(|k| k.strip_prefix(&root)).map(str::to_owned),
            );
            token = page.next_continuation_token().map(str::to_owned);
            if !page.is_truncated().unwrap_or(false) || token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Deletes the object `{prefix}/{key_prefix}` and every object under `{prefix}/{key_prefix}/`.
    pub async fn delete_prefix(&self, key_prefix: &str) -> Result<(), StoreError> {
        let under = format!("{key_prefix}/");
        let mut keys = self.list(&under).await?;
        keys.push(key_prefix.to_owned());
        let action = "delete checkpoints under";
        for chunk in keys.chunks(1000) {
            let objects = chunk
                .iter()
                .map(|k| ObjectIdentifier::builder().key(self.object_key(k)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::S3 {
                    action,
                    uri: self.uri(key_prefix),
                    message: e.to_string(),
                    retryable: false,
                })?;
            let delete = Delete::builder().set_objects(Some(objects)).quiet(true).build().map_err(|e| {
                StoreError::S3 { action, uri: self.uri(key_prefix), message: e.to_string(), retryable: false }
            })?;
            let output = self
                .retrying(action, key_prefix, || async {
                    self.client
                        .delete_objects()
                        .bucket(&self.bucket)
                        .delete(delete.clone())
                        .send()
                        .await
                        .map_err(|e| self.sdk_error(action, key_prefix, &e))
                })
                .await?;
            if let Some(failed) = output.errors().first() {
                return Err(StoreError::S3 {
                    action,
                    uri: self.uri(key_prefix),
                    message: format!(
                        "{} of {} objects not deleted, e.g. {}: {} {}",
                        output.errors().len(),
                        chunk.len(),
                        failed.key().unwrap_or("?"),
                        failed.code().unwrap_or("?"),
                        failed.message().unwrap_or("")
                    ),
                    retryable: false,
                });
            }
        }
        Ok(())
    }

    /// Runs `attempt` up to [`MAX_ATTEMPTS`] times while it fails with a retryable S3 error, with
    /// exponential back-off and jitter in between. Any other outcome (a conflict above all) returns at once.
    async fn retrying<T, F, Fut>(&self, action: &'static str, key: &str, mut attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        for n in 1..=MAX_ATTEMPTS {
            match attempt().await {
                Err(StoreError::S3 { message, retryable: true, .. }) if n < MAX_ATTEMPTS => {
                    let delay = RETRY.delay(n);
                    tracing::debug!(action, key, attempt = n, ?delay, %message, "transient S3 failure, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(StoreError::S3 { action, uri, message, retryable: true }) => {
                    return Err(StoreError::S3 {
                        action,
                        uri,
                        message: format!("{message} (gave up after {MAX_ATTEMPTS} attempts)"),
                        retryable: true,
                    });
                }
                other => return other,
            }
        }
        Err(StoreError::S3 { action, uri: self.uri(key), message: "no attempt was made".to_owned(), retryable: false })
    }

    fn no_etag(&self, action: &'static str, key: &str) -> StoreError {
        StoreError::S3 {
            action,
            uri: self.uri(key),
            message: "the response has no ETag, which conditional writes need".to_owned(),
            retryable: false,
        }
    }

    fn sdk_error<E>(&self, action: &'static str, key: &str, error: &SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (message, retryable) = describe(error);
        StoreError::S3 { action, uri: self.uri(key), message, retryable }
    }
}

/// An S3 ETag without its quotes, the form [`Precondition::Matches`] takes.
fn etag_of(raw: &str) -> ETag {
    ETag(raw.trim().trim_matches('"').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::config::BehaviorVersion;

    fn s3(uri: &str) -> (String, String) {
        match parse_uri(uri) {
            Ok(StoreUri::S3 { bucket, prefix }) => (bucket, prefix),
            other => panic!("{uri}: {other:?}"),
        }
    }

    #[test]
    fn parses_s3_uris() {
        assert_eq!(s3("s3://my-bucket/prefix/with/slashes"), ("my-bucket".into(), "prefix/with/slashes".into()));
        assert_eq!(s3("s3://my-bucket/prefix/"), ("my-bucket".into(), "prefix".into()));
        assert_eq!(s3("s3://my-bucket"), ("my-bucket".into(), String::new()));
        assert_eq!(s3("s3://my-bucket/"), ("my-bucket".into(), String::new()));
    }

    #[test]
    fn parses_directories() {
        for (uri, root) in [("file:///tmp/cp", "/tmp/cp"), ("rel/cp", "rel/cp")] {
            match parse_uri(uri) {
                Ok(StoreUri::Dir(store)) => assert_eq!(store.root(), std::path::Path::new(root)),
                other => panic!("{uri}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_bad_uris_clearly() {
        for (uri, reason) in [
            ("s3://", "no bucket"),
            ("s3:///prefix", "no bucket"),
            ("s3://ab/p", "bucket names"),
            ("s3://My_Bucket/p", "bucket names"),
            ("s3://bucket-/p", "bucket names"),
            ("s3://bucket//p", "empty"),
            ("s3://bucket/a/../b", "'..'"),
            ("gs://bucket/p", "unknown scheme"),
            ("", "empty"),
        ] {
            let error = parse_uri(uri).expect_err(uri);
            let text = error.to_string();
            assert!(matches!(error, StoreError::InvalidUri { .. }), "{uri}: {error:?}");
            assert!(text.contains(reason) && text.contains("expected s3://bucket/prefix"), "{uri}: {text}");
        }
    }

    #[test]
    fn keys_are_relative_and_history_is_reserved() {
        for key in ["a", "p/shard-1", "history-x/a"] {
            assert!(check_key(key).is_ok(), "{key}");
        }
        for key in ["", "/a", "a/", "a//b", "../a", "a/./b", "history", "history/a", "a\\b"] {
            assert!(matches!(check_key(key), Err(StoreError::BadKey(_))), "{key}");
        }
    }

    #[test]
    fn history_stamps_increase_and_sort() {
        let stamps: Vec<String> = (0..1000).map(|_| history_stamp()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]));
        assert!(stamps.iter().all(|s| s.len() == 20));
    }

    #[test]
    fn etags_lose_their_quotes() {
        assert_eq!(etag_of("\"abc\""), ETag("abc".into()));
        assert_eq!(etag_of("abc"), ETag("abc".into()));
    }

    #[tokio::test]
    async fn an_s3_store_needs_a_region_without_an_endpoint() {
        let sdk = aws_config::SdkConfig::builder().behavior_version(BehaviorVersion::latest()).build();
        let error = S3Store::new(&sdk, &S3Settings::default(), "bucket", "p").expect_err("no region");
        assert!(error.to_string().contains("no AWS region"), "{error}");
        let local = S3Settings { endpoint_url: Some("http://127.0.0.1:1".into()), ..S3Settings::default() };
        let store = S3Store::new(&sdk, &local, "bucket", "p/").expect("endpoint implies us-east-1");
        assert_eq!(store.client().config().region().map(|r| r.as_ref()), Some("us-east-1"));
        assert_eq!(store.prefix(), "p");
    }
}

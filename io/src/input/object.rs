//! [`S3Object`]: one S3 object as an input, read front to back through a streaming GetObject
//! body, or by ranged GETs. The readers are blocking, for the threads that parse input: each
//! request or body chunk is awaited on a multi-thread runtime through its [`Handle`], from a plain
//! thread, a blocking-pool thread, or a worker of that runtime (which hands its tasks over while
//! it waits).
//!
//! Every GET carries the `If-Match` of the version first seen, so the parts of one read always
//! come from one version. A body that breaks off is resumed with a ranged GET from the byte
//! reached, after a back-off; a read fails once its attempts in a row make no progress.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Buf, Bytes};
use taxi_core::input::{InputError, InputObject, RandomAccess};
use tokio::runtime::Handle;

use super::S3InputError;
use super::retry::ReadRetry;
use crate::retry::Backoff;
use crate::s3::{chain, describe};

/// Longest wait for the next bytes of a body before the connection is given up and the read resumed.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// An object in S3, of known size and version.
#[derive(Clone, Debug)]
pub struct S3Object {
    client: aws_sdk_s3::Client,
    handle: Handle,
    retry: ReadRetry,
    bucket: String,
    key: String,
    size: u64,
    /// The version read, as S3 quotes it; `None` when S3 gave none.
    etag: Option<String>,
    origin: String,
}

/// A failed request: worth another attempt, or final.
#[derive(Debug)]
enum Fault {
    /// A transient failure, described.
    Transient(String),
    /// A failure no retry cures.
    Fatal(S3InputError),
}

impl S3Object {
    /// The object `key` of `bucket`, `size` bytes long, of version `etag`; requests go through
    /// `client` and are awaited on `handle`'s runtime, a multi-thread runtime.
    pub(crate) fn new(
        client: aws_sdk_s3::Client,
        handle: Handle,
        retry: ReadRetry,
        location: (String, String),
        size: u64,
        etag: Option<String>,
    ) -> S3Object {
        let (bucket, key) = location;
        let origin = format!("s3://{bucket}/{key}");
        S3Object { client, handle, retry, bucket, key, size, etag, origin }
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A GET of the bytes from `first` (to `last` included, else to the end).
    async fn get(&self, first: u64, last: Option<u64>) -> Result<ByteStream, Fault> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(&self.key);
        if let Some(etag) = &self.etag {
            request = request.if_match(etag);
        }
        match (first, last) {
            (0, None) => {}
            (first, None) => request = request.range(format!("bytes={first}-")),
            (first, Some(last)) => request = request.range(format!("bytes={first}-{last}")),
        }
        request.send().await.map(|output| output.body).map_err(|e| self.fault(&e))
    }

    fn fault(&self, error: &SdkError<GetObjectError>) -> Fault {
        let uri = self.origin.clone();
        let status = error.raw_response().map(|r| r.status().as_u16());
        let (message, retryable) = describe(error);
        let code = error.as_service_error().and_then(|e| e.code());
        match (status, code) {
            (Some(412), _) => Fault::Fatal(S3InputError::Changed {
                uri,
                etag: self.etag.clone().unwrap_or_default().trim_matches('"').to_owned(),
            }),
            (_, Some("NoSuchKey")) => Fault::Fatal(S3InputError::NoSuchObject { uri }),
            (_, Some("NoSuchBucket")) => Fault::Fatal(S3InputError::NoSuchBucket { uri, bucket: self.bucket.clone() }),
            (Some(403), _) => Fault::Fatal(S3InputError::AccessDenied {
                action: "read",
                uri,
                permission: "s3:GetObject on the object",
                message,
            }),
            _ if retryable => Fault::Transient(message),
            _ => Fault::Fatal(S3InputError::Request { action: "read", uri, message }),
        }
    }

    /// The bytes `first..=last`, retried while transient failures last.
    async fn range(&self, first: u64, last: u64) -> Result<Vec<u8>, S3InputError> {
        let mut backoff = Backoff::new(self.retry.backoff);
        loop {
            let message = match self.get(first, Some(last)).await {
                Err(Fault::Fatal(error)) => return Err(error),
                Err(Fault::Transient(message)) => message,
                Ok(body) => match tokio::time::timeout(CHUNK_TIMEOUT, body.collect()).await {
                    Ok(Ok(bytes)) if bytes.remaining() as u64 == last - first + 1 => return Ok(bytes.to_vec()),
                    Ok(Ok(bytes)) => format!("asked for {} bytes, got {}", last - first + 1, bytes.remaining()),
                    Ok(Err(e)) => format!("the body broke off: {}", chain(&e)),
                    Err(_) => format!("the body stalled for {CHUNK_TIMEOUT:?}"),
                },
            };
            self.wait_after(&mut backoff, first, message).await?;
        }
    }

    /// Counts a failure at `offset` and waits before the next attempt, or gives up when the
    /// failures in a row reach the attempts allowed.
    async fn wait_after(&self, backoff: &mut Backoff, offset: u64, message: String) -> Result<(), S3InputError> {
        let delay = backoff.next_delay();
        let attempts = backoff.failures();
        if attempts >= self.retry.attempts {
            return Err(S3InputError::Interrupted {
                uri: self.origin.clone(),
                offset,
                size: self.size,
                attempts,
                message,
            });
        }
        tracing::warn!(input = %self.origin, offset, attempts, ?delay, %message, "reading an S3 input failed; trying again");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn read_error(&self, error: S3InputError) -> InputError {
        InputError::Read { origin: self.origin.clone(), source: io::Error::other(error) }
    }
}

impl InputObject for S3Object {
    fn origin(&self) -> &str {
        &self.origin
    }

    /// A blocking reader over a streaming GET; the first request is sent here, so a missing
    /// object or a denied read fails at once.
    fn stream(&self) -> Result<Box<dyn Read + Send>, InputError> {
        let mut reader = BodyReader {
            object: self.clone(),
            body: None,
            chunk: Bytes::new(),
            received: 0,
            backoff: Backoff::new(self.retry.backoff),
        };
        if self.size > 0 {
            block_on(&self.handle, reader.open()).map_err(|e| self.read_error(e))?;
        }
        Ok(Box::new(reader))
    }

    fn random_access(&self) -> Result<Arc<dyn RandomAccess>, InputError> {
        Ok(Arc::new(Ranges { object: self.clone() }))
    }
}

/// The blocking reader of one object's body, resuming where it broke off.
struct BodyReader {
    object: S3Object,
    body: Option<ByteStream>,
    /// Received and not yet handed out.
    chunk: Bytes,
    /// Bytes received so far: where a resumed GET starts.
    received: u64,
    /// Failures since the last bytes received.
    backoff: Backoff,
}

impl BodyReader {
    /// Sends GETs until one answers (or the attempts run out).
    async fn open(&mut self) -> Result<(), S3InputError> {
        while self.body.is_none() {
            match self.object.get(self.received, None).await {
                Ok(body) => self.body = Some(body),
                Err(Fault::Fatal(error)) => return Err(error),
                Err(Fault::Transient(message)) => {
                    self.object.wait_after(&mut self.backoff, self.received, message).await?;
                }
            }
        }
        Ok(())
    }

    /// The next bytes of the body, empty at its end.
    async fn next_chunk(&mut self) -> Result<Bytes, S3InputError> {
        loop {
            if self.body.is_none() && self.received >= self.object.size {
                return Ok(Bytes::new());
            }
            self.open().await?;
            let Some(body) = self.body.as_mut() else { continue };
            let message = match tokio::time::timeout(CHUNK_TIMEOUT, body.next()).await {
                Ok(Some(Ok(bytes))) if bytes.is_empty() => continue,
                Ok(Some(Ok(bytes))) => {
                    self.received += bytes.len() as u64;
                    self.backoff.reset();
                    return Ok(bytes);
                }
                Ok(None) if self.received >= self.object.size => return Ok(Bytes::new()),
                Ok(None) => "the body ended early".to_owned(),
                Ok(Some(Err(e))) => format!("the body broke off: {}", chain(&e)),
                Err(_) => format!("the body stalled for {CHUNK_TIMEOUT:?}"),
            };
            self.body = None;
            self.object.wait_after(&mut self.backoff, self.received, message).await?;
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.chunk.is_empty() {
            if self.received >= self.object.size && self.body.is_none() {
                return Ok(0);
            }
            let handle = self.object.handle.clone();
            self.chunk = block_on(&handle, self.next_chunk()).map_err(io::Error::other)?;
            if self.chunk.is_empty() {
                self.body = None;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// Ranged reads of one object.
struct Ranges {
    object: S3Object,
}

impl RandomAccess for Ranges {
    fn len(&self) -> u64 {
        self.object.size
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if offset >= self.object.size || len == 0 {
            return Ok(Vec::new());
        }
        let last = offset.saturating_add(len as u64).min(self.object.size) - 1;
        block_on(&self.object.handle, self.object.range(offset, last)).map_err(io::Error::other)
    }
}

/// Awaits `future` on `handle`'s runtime from blocking code. On a worker of a multi-thread
/// runtime, `block_in_place` first hands the worker's other tasks to another thread; elsewhere it
/// runs the wait directly. (A current-thread runtime cannot wait this way: tokio panics saying so.)
fn block_on<F: Future>(handle: &Handle, future: F) -> F::Output {
    tokio::task::block_in_place(|| handle.block_on(future))
}

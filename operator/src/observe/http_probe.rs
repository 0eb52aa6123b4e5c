//! [`HttpProbe`]: the operator's client for the workers' `/status`, HTTP/1.1 over hyper's client.
//! An answer is bounded: it must arrive whole within the probe's timeout and be at most
//! [`HttpProbe::max_body_bytes`] long, so a worker that hangs, or answers without end, can neither
//! stall a reconcile pass nor fill the operator's memory. Chunked answers are read like any other.

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::http::uri::InvalidUri;
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use taxi_core::status::WorkerStatus;

use super::{ProbeError, WorkerProbe};
use crate::error_chain::ErrorChain;

/// The longest `/status` read by default: a worker's document with thousands of shards stays
/// well below it.
pub const MAX_STATUS_BYTES: usize = 4 * 1024 * 1024;

/// [`WorkerProbe`] over plain HTTP/1.1 (the pods are in the cluster), with a short timeout and a
/// bounded answer.
#[derive(Clone, Debug)]
pub struct HttpProbe {
    /// Port of the workers' HTTP endpoints.
    pub port: u16,
    /// Longest one request may take, from connecting to the last byte of the answer.
    pub timeout: Duration,
    /// Longest answer read; a longer one is an error.
    pub max_body_bytes: usize,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for HttpProbe {
    fn default() -> Self {
        // One connection per request, as the probes are seconds apart: a pooled connection would
        // outlive the workers' idle timeout and fail the next probe that picks it.
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(HttpConnector::new());
        HttpProbe { port: 8080, timeout: Duration::from_secs(2), max_body_bytes: MAX_STATUS_BYTES, client }
    }
}

/// Why a worker's `/status` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The host does not make a URL.
    #[error("invalid URL: {0}")]
    Url(#[from] InvalidUri),
    /// The whole answer did not arrive in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or sending failed, or what came back is not an HTTP answer.
    #[error("request failed: {}", ErrorChain(.0))]
    Request(#[from] hyper_util::client::legacy::Error),
    /// The worker answered with another status than 200 OK.
    #[error("answered {0}")]
    Status(StatusCode),
    /// The answer is longer than the probe reads.
    #[error("the answer is longer than {limit} bytes")]
    TooLarge {
        /// The probe's [`HttpProbe::max_body_bytes`].
        limit: usize,
    },
    /// The answer broke off.
    #[error("reading the answer failed: {}", ErrorChain(.0.as_ref()))]
    Body(Box<dyn Error + Send + Sync>),
    /// The answer is not a worker status document.
    #[error("not a worker status document: {0}")]
    Document(#[from] serde_json::Error),
}

impl HttpProbe {
    /// The worker status document at `url`, within the timeout and size limit.
    pub async fn fetch(&self, url: &str) -> Result<WorkerStatus, FetchError> {
        let uri: Uri = url.parse()?;
        let body = tokio::time::timeout(self.timeout, self.body(uri))
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))??;
        Ok(serde_json::from_slice(&body)?)
    }

    /// The body of a 200 answer to `GET uri`, at most [`Self::max_body_bytes`] long.
    async fn body(&self, uri: Uri) -> Result<Bytes, FetchError> {
        let response = self.client.get(uri).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let limit = self.max_body_bytes;
        let collected = Limited::new(response.into_body(), limit).collect().await.map_err(|e| {
            if e.is::<LengthLimitError>() { FetchError::TooLarge { limit } } else { FetchError::Body(e) }
        })?;
        Ok(collected.to_bytes())
    }
}

impl WorkerProbe for HttpProbe {
    async fn status(&self, host: &str) -> Result<WorkerStatus, ProbeError> {
        let url = format!("http://{host}:{}/status", self.port);
        let fetched = self.fetch(&url).await;
        fetched.map_err(|e| ProbeError { reason: e.to_string(), url })
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const DOCUMENT: &str =
        r#"{"owned_shards":1,"ordinal":2,"shards":{"shardId-000000000007":{"state":"reading","records":41}}}"#;

    /// A probe of the one-connection server on `port` of 127.0.0.1.
    fn probe(port: u16, timeout: Duration, max_body_bytes: usize) -> HttpProbe {
        HttpProbe { port, timeout, max_body_bytes, ..HttpProbe::default() }
    }

    /// A server on 127.0.0.1 that accepts one connection, reads its request head and hands the
    /// connection to `answer`. Returns its port.
    async fn answering<F, A>(answer: F) -> u16
    where
        F: FnOnce(TcpStream) -> A + Send + 'static,
        A: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            assert!(head.starts_with(b"GET /status HTTP/1.1\r\n"), "{}", String::from_utf8_lossy(&head));
            answer(stream).await;
        });
        port
    }

    /// `chunks` as a chunked HTTP body.
    fn chunked(chunks: &[&str]) -> String {
        let mut body: String = chunks.iter().map(|c| format!("{:x}\r\n{c}\r\n", c.len())).collect();
        body.push_str("0\r\n\r\n");
        body
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole() {
        let (first, rest) = DOCUMENT.split_at(20);
        let (second, third) = rest.split_at(30);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{}",
            chunked(&[first, second, third])
        );
        let port = answering(move |mut stream| async move {
            let _ = stream.write_all(answer.as_bytes()).await;
        })
        .await;
        let status = probe(port, Duration::from_secs(5), 1024).status("127.0.0.1").await.expect("a status");
        assert_eq!((status.owned_shards, status.ordinal), (1, Some(2)));
        assert_eq!(status.shards["shardId-000000000007"].records, 41);
    }

    #[tokio::test]
    async fn an_answer_longer_than_the_limit_is_refused_without_reading_it_all() {
        // Chunks without end: only the limit stops the probe, long before its timeout.
        let port = answering(|mut stream| async move {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let chunk = format!("400\r\n{}\r\n", " ".repeat(1024));
            if stream.write_all(head.as_bytes()).await.is_ok() {
                while stream.write_all(chunk.as_bytes()).await.is_ok() {}
            }
        })
        .await;
        let probe = probe(port, Duration::from_secs(30), 4096);
        let error = probe.fetch(&format!("http://127.0.0.1:{port}/status")).await.expect_err("too long");
        assert!(matches!(error, FetchError::TooLarge { limit: 4096 }), "{error:?}");
        assert_eq!(error.to_string(), "the answer is longer than 4096 bytes");
    }

    #[tokio::test]
    async fn a_worker_that_does_not_answer_in_time_is_given_up() {
        let port = answering(|stream| async move {
            // Holds the connection open without a word.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        })
        .await;
        let timeout = Duration::from_millis(200);
        let started = tokio::time::Instant::now();
        let error = probe(port, timeout, 1024).status("127.0.0.1").await.expect_err("no answer");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert_eq!(error.url, format!("http://127.0.0.1:{port}/status"));
        assert_eq!(error.reason, "no answer within 200ms");
    }

    #[tokio::test]
    async fn an_answer_other_than_200_is_an_error_with_its_status() {
        let port = answering(|mut stream| async move {
            let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nnot ready";
            let _ = stream.write_all(answer.as_bytes()).await;
        })
        .await;
        let probe = probe(port, Duration::from_secs(5), 1024);
        let error = probe.fetch(&format!("http://127.0.0.1:{port}/status")).await.expect_err("503");
        assert!(matches!(error, FetchError::Status(s) if s == StatusCode::SERVICE_UNAVAILABLE), "{error:?}");
        assert_eq!(error.to_string(), "answered 503 Service Unavailable");
    }

    #[tokio::test]
    async fn an_unreachable_worker_and_a_foreign_document_are_errors_that_say_so() {
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let error = probe(port, Duration::from_secs(5), 1024).status("127.0.0.1").await.expect_err("refused");
        assert!(error.reason.starts_with("request failed: client error (Connect)"), "{}", error.reason);

        let port = answering(|mut stream| async move {
            let answer = "HTTP/1.1 200 OK\r\ncontent-length: 13\r\n\r\n<html></html>";
            let _ = stream.write_all(answer.as_bytes()).await;
        })
        .await;
        let error = probe(port, Duration::from_secs(5), 1024).status("127.0.0.1").await.expect_err("not JSON");
        assert!(error.reason.starts_with("not a worker status document"), "{}", error.reason);
    }
}

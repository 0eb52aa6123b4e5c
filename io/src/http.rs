//! The worker's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and `/status`, and the
//! small HTTP/1 server they (and the local dashboard and the operator's own endpoints) run on.
//!
//! The server is bounded ([`ServerLimits`]). It serves a fixed number of connections at once and
//! accepts the next one only when a slot is free: connections beyond the limit wait in the
//! kernel's listen backlog rather than being accepted and closed. Waiting holds no descriptor of
//! this process (the resource the limit protects), and the clients the port is for (the
//! kubelet's probes, Prometheus, the operator) send short requests and are served in turn a
//! moment later, where a closed connection would be a failed probe. A client that does not send
//! a whole request head in time (also between two requests of a kept-alive connection) is
//! disconnected, so neither a slow nor an idle client keeps a slot. A failing accept (typically
//! out of descriptors) is tried again after a growing back-off instead of at once, in a loop that
//! would spin at full CPU.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::retry::{Backoff, BackoffPolicy, Jitter};

/// What the endpoints report; implemented by the running worker.
pub trait Endpoints: Send + Sync + 'static {
    /// Whether the worker is ready: `Err` carries the reason it is not.
    fn readiness(&self) -> Result<(), String>;
    /// Prometheus text exposition.
    fn metrics(&self) -> String;
    /// The `/status` JSON document.
    fn status(&self) -> serde_json::Value;
}

/// A response with a body and its content type.
pub fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Answers one request.
pub fn route<E: Endpoints>(endpoints: &E, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match path {
        "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match endpoints.readiness() {
            Ok(()) => respond(StatusCode::OK, "text/plain", "ready\n"),
            Err(reason) => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n")),
        },
        "/metrics" => respond(StatusCode::OK, "text/plain; version=0.0.4", endpoints.metrics()),
        "/status" => {
            let body = serde_json::to_vec_pretty(&endpoints.status()).unwrap_or_default();
            respond(StatusCode::OK, "application/json", body)
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found: try /healthz, /readyz, /metrics, /status\n"),
    }
}

/// Binds `addr` and serves the endpoints until the task is dropped. Returns the bound address
/// (useful with port 0) and the serving future.
pub async fn bind<E: Endpoints>(
    addr: SocketAddr,
    endpoints: Arc<E>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send)> {
    serve(addr, move |method, uri| route(endpoints.as_ref(), method, uri.path())).await
}

/// Binds `addr` and answers every request with `handler`, within [`ServerLimits::default`],
/// until the task is dropped. Returns the bound address (useful with port 0) and the serving future.
pub async fn serve<H>(addr: SocketAddr, handler: H) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send)>
where
    H: Fn(&Method, &Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    serve_with(addr, ServerLimits::default(), handler).await
}

/// [`serve`] within other limits.
pub async fn serve_with<H>(
    addr: SocketAddr,
    limits: ServerLimits,
    handler: H,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send)>
where
    H: Fn(&Method, &Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, accept_loop(listener, limits, Arc::new(handler))))
}

/// How much the server takes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; the next one is accepted when one of them ends.
    pub max_connections: usize,
    /// Longest a client may take to send a request head, and on a kept-alive connection to start
    /// its next request.
    pub header_read_timeout: Duration,
    /// The wait after a failed accept, growing while accepts keep failing.
    pub accept_backoff: BackoffPolicy,
}

impl Default for ServerLimits {
    /// 64 connections: the port's clients need a handful at a time. 10 s for a request head: a
    /// probe sends its request at once. Accepts retried after 10 ms, doubling up to 1 s.
    fn default() -> Self {
        ServerLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            accept_backoff: BackoffPolicy::new(Duration::from_millis(10), Duration::from_secs(1), Jitter::None),
        }
    }
}

/// Where the server's connections come from: a bound TCP listener, or a test's script.
trait Listener: Send + 'static {
    /// One accepted connection.
    type Connection: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Connection>> + Send;
}

impl Listener for TcpListener {
    type Connection = TcpStream;
    async fn accept(&mut self) -> std::io::Result<TcpStream> {
        TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// Accepts connections while a slot is free and serves each on its own task.
async fn accept_loop<L, H>(mut listener: L, limits: ServerLimits, handler: Arc<H>)
where
    L: Listener,
    H: Fn(&Method, &Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut failures = Backoff::new(limits.accept_backoff);
    loop {
        // The semaphore is never closed.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        match listener.accept().await {
            Ok(connection) => {
                failures.reset();
                tokio::spawn(serve_connection(connection, limits.header_read_timeout, handler.clone(), slot));
            }
            Err(error) => {
                let delay = failures.next_delay();
                tracing::warn!(%error, retry_in = ?delay, "failed to accept an HTTP connection");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Answers the requests of one connection until it ends; its slot is free again then.
async fn serve_connection<C, H>(
    connection: C,
    header_read_timeout: Duration,
    handler: Arc<H>,
    _slot: OwnedSemaphorePermit,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(&Method, &Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        let response = handler(req.method(), req.uri());
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(connection), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<(), String>);

    impl Endpoints for Fixed {
        fn readiness(&self) -> Result<(), String> {
            self.0.clone()
        }
        fn metrics(&self) -> String {
            "taxi_owned_shards 2\n".to_owned()
        }
        fn status(&self) -> serde_json::Value {
            serde_json::json!({"owned_shards": 2})
        }
    }

    #[test]
    fn routes_health_readiness_metrics_and_status() {
        let ready = Fixed(Ok(()));
        assert_eq!(route(&ready, &Method::GET, "/healthz").status(), StatusCode::OK);
        assert_eq!(route(&ready, &Method::GET, "/readyz").status(), StatusCode::OK);
        assert_eq!(route(&ready, &Method::GET, "/metrics").status(), StatusCode::OK);
        assert_eq!(route(&ready, &Method::GET, "/status").status(), StatusCode::OK);
        assert_eq!(route(&ready, &Method::GET, "/nope").status(), StatusCode::NOT_FOUND);
        assert_eq!(route(&ready, &Method::POST, "/healthz").status(), StatusCode::METHOD_NOT_ALLOWED);
        let failing = Fixed(Err("checkpoints failing".to_owned()));
        assert_eq!(route(&failing, &Method::GET, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let (addr, serve) = bind("127.0.0.1:0".parse().expect("addr"), Arc::new(Fixed(Ok(())))).await.expect("bind");
        let server = tokio::spawn(serve);
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("taxi_owned_shards 2"), "{response}");
        server.abort();
    }

    const OK_BODY: &str = "ok\n";
    const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

    fn ok(_: &Method, _: &Uri) -> Response<Full<Bytes>> {
        respond(StatusCode::OK, "text/plain", OK_BODY)
    }

    /// A server over 127.0.0.1 within `limits`, answering `ok`; stopped when the task is dropped.
    async fn start(limits: ServerLimits) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let (addr, serve) = serve_with("127.0.0.1:0".parse().expect("addr"), limits, ok).await.expect("bind");
        (addr, tokio::spawn(serve))
    }

    /// Sends one request on a kept-alive connection and reads its whole answer.
    async fn get(stream: &mut TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(REQUEST).await.expect("write");
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while !answer.ends_with(OK_BODY.as_bytes()) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed mid-answer: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_until_a_slot_is_free() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, server) = start(ServerLimits { max_connections: 2, ..ServerLimits::default() }).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            assert!(get(&mut stream).await.starts_with("HTTP/1.1 200"));
            held.push(stream);
        }

        // Both slots are held by idle kept-alive connections: the third client is not served.
        let mut waiting = TcpStream::connect(addr).await.expect("the backlog takes the connection");
        waiting.write_all(REQUEST).await.expect("write");
        let mut buf = [0u8; 512];
        let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut buf)).await;
        assert!(early.is_err(), "a third connection was served beyond the limit of two");

        drop(held.pop());
        let n = tokio::time::timeout(Duration::from_secs(5), waiting.read(&mut buf))
            .await
            .expect("served once a slot is free")
            .expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
        server.abort();
    }

    #[tokio::test]
    async fn a_client_that_does_not_finish_its_request_loses_its_slot() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let limits = ServerLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        };
        let (addr, server) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.expect("write");

        let mut next = TcpStream::connect(addr).await.expect("connect");
        let answer = tokio::time::timeout(Duration::from_secs(5), get(&mut next)).await.expect("served after the cut");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut rest = Vec::new();
        // Closed (or reset) by the server, long before the test gives up.
        let cut = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        assert!(cut.is_ok(), "the slow client is still connected");
        server.abort();
    }

    /// A listener whose accepts follow a script (then wait forever), recording when each was asked.
    struct Scripted {
        script: std::collections::VecDeque<std::io::Result<tokio::io::DuplexStream>>,
        asked: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
    }

    impl Listener for Scripted {
        type Connection = tokio::io::DuplexStream;
        fn accept(&mut self) -> impl Future<Output = std::io::Result<tokio::io::DuplexStream>> + Send {
            self.asked.lock().expect("lock").push(tokio::time::Instant::now());
            let next = self.script.pop_front();
            async move {
                match next {
                    Some(accepted) => accepted,
                    None => std::future::pending().await,
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_until_one_succeeds() {
        const EMFILE: i32 = 24;
        let out_of_descriptors = || Err(std::io::Error::from_raw_os_error(EMFILE));
        let (_client, connection) = tokio::io::duplex(1024);
        let script =
            [out_of_descriptors(), out_of_descriptors(), out_of_descriptors(), Ok(connection), out_of_descriptors()];
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = Scripted { script: script.into_iter().collect(), asked: asked.clone() };
        let ms = Duration::from_millis;
        let limits = ServerLimits {
            accept_backoff: BackoffPolicy::new(ms(10), ms(1000), Jitter::None),
            ..ServerLimits::default()
        };

        let start = tokio::time::Instant::now();
        let server = tokio::spawn(accept_loop(listener, limits, Arc::new(ok)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        let at: Vec<u128> = asked.lock().expect("lock").iter().map(|t| (*t - start).as_millis()).collect();
        // 10, 20 and 40 ms after the failures; at once after the connection, and the next failure
        // waits the first step again.
        assert_eq!(at, [0, 10, 30, 70, 70, 80]);
        server.abort();
    }
}

//! The worker's HTTP endpoints: `/healthz`, `/readyz`, `/metrics` and `/status`, and the
//! small HTTP/1 server they (and the local dashboard) run on.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send)> {
    serve(addr, move |method, uri| route(endpoints.as_ref(), method, uri.path())).await
}

/// Binds `addr` and answers every request with `handler` until the task is dropped. Returns the
/// bound address (useful with port 0) and the serving future.
pub async fn serve<H>(
    addr: SocketAddr,
    handler: H,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send)>
where
    H: Fn(&Method, &Uri) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let handler = Arc::new(handler);
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let response = handler(req.method(), req.uri());
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            });
        }
    };
    Ok((local, serve))
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
}

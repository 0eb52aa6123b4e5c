//! A mocked Kubernetes API server over kube's `tower_test::mock::pair`, as kube-client's own
//! tests use: a test lists the calls it expects, in order, with the answer the server gives, and
//! gets back what the client sent, to check the bodies.
//!
//! ```no_run
//! # async fn example() {
//! use http::Method;
//! use taxi_testkit::apiserver::{call, mock_client, not_found, serve};
//! let (client, handle) = mock_client("default");
//! let server = tokio::spawn(serve(handle, vec![call(Method::GET, "/api/v1/namespaces/taxi/configmaps/x", 404, not_found())]));
//! // … run the code under test with `client` …
//! let sent = server.await.expect("server");
//! # }
//! ```

use std::time::Duration;

use http::{Method, Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// The test's side of the mocked API server.
pub type ApiHandle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every request goes to the returned handle; `namespace` is its default one.
pub fn mock_client(namespace: &str) -> (Client, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, namespace.to_owned()), handle)
}

/// One call the test expects: method, a path (query excluded), the status and body answered.
pub struct Call {
    /// The expected method.
    pub method: Method,
    /// The expected path, without the query.
    pub path: String,
    /// The status answered.
    pub status: u16,
    /// The JSON body answered.
    pub response: Value,
}

/// A [`Call`].
pub fn call(method: Method, path: &str, status: u16, response: Value) -> Call {
    Call { method, path: path.to_owned(), status, response }
}

/// What the client sent: method, path with query, JSON body.
#[derive(Debug)]
pub struct Sent {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub uri: String,
    /// The JSON body (`Null` when there was none).
    pub body: Value,
}

/// Serves `calls` in order and returns what was sent; panics on any other request, and when
/// an expected one does not come within 5 s.
pub async fn serve(mut handle: ApiHandle, calls: Vec<Call>) -> Vec<Sent> {
    let mut sent = Vec::new();
    for expected in calls {
        let next = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await;
        let (request, respond) = next
            .unwrap_or_else(|_| panic!("timed out waiting for {} {}", expected.method, expected.path))
            .unwrap_or_else(|| panic!("the client went away before {} {}", expected.method, expected.path));
        let uri = request.uri().to_string();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        assert!(
            method == expected.method && path == expected.path,
            "expected {} {}, got {method} {uri}",
            expected.method,
            expected.path
        );
        let bytes = request.into_body().collect().await.expect("request body").to_bytes();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
        let response = Response::builder()
            .status(expected.status)
            .body(Body::from(serde_json::to_vec(&expected.response).expect("response")))
            .expect("response");
        respond.send_response(response);
        sent.push(Sent { method, uri, body });
    }
    sent
}

/// The first request sent with `method` to `path` (query ignored); panics when there is none.
pub fn find<'a>(sent: &'a [Sent], method: Method, path: &str) -> &'a Sent {
    sent.iter()
        .find(|s| s.method == method && s.uri.split('?').next() == Some(path))
        .unwrap_or_else(|| panic!("no {method} {path} among {:?}", sent.iter().map(|s| &s.uri).collect::<Vec<_>>()))
}

/// The API server's 404 Status.
pub fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

/// The API server's 409 Status for a write over a stale resourceVersion.
pub fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
        "message": "the object has been modified; please apply your changes to the latest version and try again"})
}

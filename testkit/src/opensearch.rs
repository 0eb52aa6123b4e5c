//! OpenSearch for tests: raw requests to the emulator (osmem-server, started by
//! `.ci/services.sh`) to set up or inspect indices, and [`FakeOpenSearch`], a scripted server for
//! answers the emulator does not give (per-item errors, refusals, captured signatures).

use std::sync::{Arc, Mutex};

use opensearch::OpenSearch;
use opensearch::http::Method;
use opensearch::http::headers::HeaderMap;
use opensearch::http::transport::Transport;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The emulator's endpoint, or `None` (with a message) outside CI when it is not running.
pub fn emulator() -> Option<String> {
    crate::services::service_endpoint(crate::services::OPENSEARCH_ENDPOINT)
}

/// A fresh index prefix, so tests sharing the emulator never see each other's indices.
pub fn fresh_index_prefix() -> String {
    format!("t{:016x}", fastrand::u64(..))
}

/// A raw request to the cluster: status and JSON body (`Null` when it is not JSON).
pub async fn raw(url: &str, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = OpenSearch::new(Transport::single_node(url).expect("transport"));
    let response = client
        .transport()
        .send(method, path, HeaderMap::new(), None::<&()>, body.map(|b| b.to_string()), None)
        .await
        .expect("raw request");
    let status = response.status_code().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Documents in an index, refreshed first.
pub async fn count(url: &str, index: &str) -> u64 {
    raw(url, Method::Post, &format!("/{index}/_refresh"), None).await;
    let (status, body) = raw(url, Method::Get, &format!("/{index}/_count"), None).await;
    assert_eq!(status, 200, "{body}");
    body["count"].as_u64().expect("count")
}

/// The `_id`s of a bulk body, in order.
pub fn bulk_ids(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .step_by(2)
        .map(|l| serde_json::from_str::<Value>(l).expect("action")["index"]["_id"].as_str().expect("_id").to_owned())
        .collect()
}

/// A request seen by [`FakeOpenSearch`].
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET`, `PUT`, `POST`…
    pub method: String,
    /// The path and query, e.g. `/_bulk`.
    pub target: String,
    /// Header names (lower case) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body (read by its content-length).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of a header, by its name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// What [`FakeOpenSearch`] answers a request: the status and a JSON body.
pub type Handler = Arc<dyn Fn(&Request) -> (u16, Value) + Send + Sync>;

/// A minimal OpenSearch over HTTP/1.1 (keep-alive, content-length bodies) that answers through
/// its handler and records every request. Stopped when dropped.
pub struct FakeOpenSearch {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
    task: JoinHandle<()>,
}

impl FakeOpenSearch {
    /// Starts answering on a free port of 127.0.0.1.
    pub async fn start(handler: impl Fn(&Request) -> (u16, Value) + Send + Sync + 'static) -> FakeOpenSearch {
        let handler: Handler = Arc::new(handler);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let seen = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                tokio::spawn(serve_connection(stream, handler.clone(), seen.clone()));
            }
        });
        FakeOpenSearch { url, requests, task }
    }

    /// Its `http://127.0.0.1:port`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeOpenSearch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers the requests of one connection until the client closes it.
async fn serve_connection(stream: TcpStream, handler: Handler, seen: Arc<Mutex<Vec<Request>>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some(request) = read_request(&mut read).await {
        let (status, reply) = handler(&request);
        // A HEAD answer has no body, or the next answer on the connection would be misread.
        let reply = if request.method == "HEAD" { String::new() } else { reply.to_string() };
        seen.lock().expect("lock").push(request);
        let head =
            format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", reply.len());
        if write.write_all(head.as_bytes()).await.is_err() || write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The next request of a connection, or `None` once it is closed.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(read: &mut BufReader<R>) -> Option<Request> {
    let mut line = String::new();
    if read.read_line(&mut line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if read.read_line(&mut h).await.unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0usize);
    let mut body = vec![0; len];
    read.read_exact(&mut body).await.ok()?;
    Some(Request { method, target, headers, body })
}

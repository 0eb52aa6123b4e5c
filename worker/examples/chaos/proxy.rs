//! A fault-injecting HTTP/1.1 proxy in front of one emulator. Each request gets its own upstream
//! connection (`Connection: close`), so every request is a point where a fault can strike:
//! latency, an error answer of the service's own kind (5xx or throttling), a reset before the
//! request is forwarded, a reset after it was applied (an ambiguous outcome), an answer held
//! past the client's patience, or the whole service down for a while. The requests that change
//! state (S3 PUTs, OpenSearch `_bulk`) are recorded for the invariants.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Which emulator a proxy fronts: decides what an injected error looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Kinesis,
    S3,
    OpenSearch,
}

/// Per-request fault probabilities (each in 0..1; the rest pass).
#[derive(Clone, Copy, Debug, Default)]
pub struct FaultRates {
    pub latency: f64,
    pub error: f64,
    pub reset_before: f64,
    pub reset_after: f64,
    pub hold: f64,
}

/// The kinds of request faults, as counted.
pub const REQUEST_FAULTS: [&str; 6] = ["latency", "error", "reset_before", "reset_after", "hold", "down"];

/// A state-changing request that was forwarded (whether or not its answer reached the client).
#[derive(Clone, Debug)]
pub struct Forwarded {
    pub at: Instant,
    pub path: String,
    pub body: Vec<u8>,
}

struct State {
    service: Service,
    target: SocketAddr,
    rng: Mutex<fastrand::Rng>,
    rates: Mutex<FaultRates>,
    down_until: Mutex<Option<Instant>>,
    healed: AtomicBool,
    counts: [AtomicU64; REQUEST_FAULTS.len()],
    log: Mutex<Vec<Forwarded>>,
}

/// A running proxy.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy in front of `target_url` (`http://host:port`), drawing faults from `seed`.
    pub async fn start(service: Service, target_url: &str, seed: u64, rates: FaultRates) -> FaultProxy {
        let target = target_url.trim_start_matches("http://").trim_end_matches('/').parse().expect("target address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            service,
            target,
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            rates: Mutex::new(rates),
            down_until: Mutex::new(None),
            healed: AtomicBool::new(false),
            counts: Default::default(),
            log: Mutex::new(Vec::new()),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else { continue };
                tokio::spawn(serve(shared.clone(), inbound));
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Refuses every request for `duration`.
    pub fn down_for(&self, duration: Duration) {
        *self.state.down_until.lock().expect("lock") = Some(Instant::now() + duration);
    }

    /// Waits until an outage started with [`FaultProxy::down_for`] is over.
    pub async fn wait_up(&self) {
        let until = *self.state.down_until.lock().expect("lock");
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    /// No more faults: every request passes from now on.
    pub fn heal(&self) {
        self.state.healed.store(true, Ordering::SeqCst);
        *self.state.down_until.lock().expect("lock") = None;
    }

    /// How many requests met each fault of [`REQUEST_FAULTS`].
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        REQUEST_FAULTS.iter().zip(&self.state.counts).map(|(name, n)| (*name, n.load(Ordering::SeqCst))).collect()
    }

    /// The state-changing requests forwarded so far.
    pub fn forwarded(&self) -> Vec<Forwarded> {
        self.state.log.lock().expect("lock").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Pass,
    Latency(Duration),
    Error,
    ResetBefore,
    ResetAfter,
    Hold(Duration),
}

impl State {
    fn count(&self, name: &str) {
        if let Some(i) = REQUEST_FAULTS.iter().position(|n| *n == name) {
            self.counts[i].fetch_add(1, Ordering::SeqCst);
        }
    }

    fn draw(&self) -> Fault {
        if self.healed.load(Ordering::SeqCst) {
            return Fault::Pass;
        }
        let rates = *self.rates.lock().expect("lock");
        let mut rng = self.rng.lock().expect("lock");
        // An S3 answer held past the worker's 3 s attempt timeout: the write may be applied while
        // the worker retries it. (OpenSearch's 30 s timeout is out of reach; resets after
        // forwarding make its ambiguous outcomes.)
        let hold = match self.service {
            Service::S3 => rng.u64(3_500..5_000),
            Service::Kinesis | Service::OpenSearch => rng.u64(1_500..4_000),
        };
        let mut x = rng.f64();
        for (rate, fault) in [
            (rates.latency, Fault::Latency(Duration::from_millis(rng.u64(20..400)))),
            (rates.error, Fault::Error),
            (rates.reset_before, Fault::ResetBefore),
            (rates.reset_after, Fault::ResetAfter),
            (rates.hold, Fault::Hold(Duration::from_millis(hold))),
        ] {
            if x < rate {
                return fault;
            }
            x -= rate;
        }
        Fault::Pass
    }

    fn is_down(&self) -> bool {
        self.down_until.lock().expect("lock").is_some_and(|until| Instant::now() < until)
    }

    /// An error answer as the service gives it: throttling or a server error.
    fn error_answer(&self) -> Vec<u8> {
        let throttle = self.rng.lock().expect("lock").bool();
        let (status, content_type, body) = match (self.service, throttle) {
            (Service::Kinesis, true) => (
                "400 Bad Request",
                "application/x-amz-json-1.1",
                r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded (chaos)"}"#,
            ),
            (Service::Kinesis, false) => {
                ("500 Internal Server Error", "application/x-amz-json-1.1", r#"{"__type":"InternalFailure"}"#)
            }
            (Service::S3, true) => {
                ("503 Slow Down", "application/xml", "<Error><Code>SlowDown</Code><Message>chaos</Message></Error>")
            }
            (Service::S3, false) => (
                "500 Internal Server Error",
                "application/xml",
                "<Error><Code>InternalError</Code><Message>chaos</Message></Error>",
            ),
            (Service::OpenSearch, true) => (
                "429 Too Many Requests",
                "application/json",
                r#"{"error":{"type":"es_rejected_execution_exception","reason":"chaos"},"status":429}"#,
            ),
            (Service::OpenSearch, false) => (
                "503 Service Unavailable",
                "application/json",
                r#"{"error":{"type":"unavailable","reason":"chaos"},"status":503}"#,
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn records(&self, method: &str, path: &str) -> bool {
        match self.service {
            Service::S3 => method == "PUT",
            Service::OpenSearch => path.split('?').next().is_some_and(|p| p.ends_with("/_bulk")),
            Service::Kinesis => false,
        }
    }
}

/// One HTTP message read off a connection.
struct Message {
    head: Vec<String>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.iter().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The message with `Connection: close` and without `Expect`, as bytes.
    fn to_bytes_closing(&self) -> Vec<u8> {
        let mut out = String::new();
        for (i, line) in self.head.iter().enumerate() {
            let name = line.split(':').next().unwrap_or("").trim();
            if i > 0 && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("expect")) {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Reads a message head, answering `Expect: 100-continue` on `inbound` when given, then its body
/// (by content-length, chunked, or — for answers — to the end of the stream).
async fn read_message<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    continue_to: Option<&mut tokio::net::tcp::OwnedWriteHalf>,
    body_expected: bool,
    is_response: bool,
) -> std::io::Result<Message> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let mut message = Message { head, body: Vec::new() };
    if let Some(out) = continue_to
        && message.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    if !body_expected {
        return Ok(message);
    }
    if let Some(length) = message.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        message.body = vec![0; length];
        reader.read_exact(&mut message.body).await?;
    } else if message.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        // Keep the chunked framing as it is; only find its end.
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).await?;
            message.body.extend_from_slice(size_line.as_bytes());
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if size == 0 {
                loop {
                    let mut trailer = String::new();
                    reader.read_line(&mut trailer).await?;
                    message.body.extend_from_slice(trailer.as_bytes());
                    if trailer.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            message.body.extend_from_slice(&chunk);
        }
    } else if is_response {
        reader.read_to_end(&mut message.body).await?;
    }
    Ok(message)
}

async fn serve(state: Arc<State>, inbound: TcpStream) {
    let (read_half, mut write_half) = inbound.into_split();
    let mut reader = BufReader::new(read_half);
    let Ok(request) = read_message(&mut reader, Some(&mut write_half), true, false).await else { return };
    let mut request_line = request.head.first().map(|l| l.split(' ')).into_iter().flatten();
    let (method, path) = (request_line.next().unwrap_or("").to_owned(), request_line.next().unwrap_or("").to_owned());
    if state.is_down() {
        state.count("down");
        return;
    }
    let fault = state.draw();
    match fault {
        Fault::Pass => {}
        Fault::Latency(delay) => {
            state.count("latency");
            tokio::time::sleep(delay).await;
        }
        Fault::Error => {
            state.count("error");
            let _ = write_half.write_all(&state.error_answer()).await;
            return;
        }
        Fault::ResetBefore => {
            state.count("reset_before");
            return;
        }
        Fault::ResetAfter => state.count("reset_after"),
        Fault::Hold(_) => state.count("hold"),
    }
    let Ok(upstream) = TcpStream::connect(state.target).await else { return };
    let (up_read, mut up_write) = upstream.into_split();
    let at = Instant::now();
    let recorded = state.records(&method, &path);
    if up_write.write_all(&request.to_bytes_closing()).await.is_err() {
        return;
    }
    let mut up_reader = BufReader::new(up_read);
    if recorded {
        state.log.lock().expect("lock").push(Forwarded { at, path, body: request.body.clone() });
    }
    let answer = read_message(&mut up_reader, None, method != "HEAD", true).await.ok();
    let Some(answer) = answer else { return };
    match fault {
        Fault::ResetAfter => return,
        Fault::Hold(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }
    let _ = write_half.write_all(&answer.to_bytes_closing()).await;
    let _ = write_half.shutdown().await;
}

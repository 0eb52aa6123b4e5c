//! TCP proxies in front of a test service, to inject faults at the connection level: [`Proxy`]
//! takes the service "down" and brings it back on the same port, [`answer_dropping`] applies
//! requests but loses their answers, [`answer_cutting`] breaks answers off mid-way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// `host:port` of an `http://host:port` URL.
fn socket_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").trim_end_matches('/').parse().expect("target address")
}

/// A TCP proxy in front of a target that can be stopped (connections refused, open ones cut)
/// and started again on the same port.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding a free port of 127.0.0.1 to `target_url` (`http://host:port`).
    pub async fn start(target_url: &str) -> Proxy {
        let target = socket_addr(target_url);
        let addr = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        let mut proxy = Proxy { addr, target, task: None };
        proxy.up();
        proxy
    }

    /// The URL to give the client instead of the target's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Listens again on the same port: the service is back.
    pub fn up(&mut self) {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(self.addr).expect("rebind the proxy port");
        let listener = socket.listen(128).expect("listen");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { continue };
                conns.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    /// Stops listening and cuts every open connection: the service is down.
    pub async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// A TCP proxy that forwards requests but swallows the answers on the first `drops` connections
/// that get one: the request is applied, then the client sees its connection closed (an
/// ambiguous outcome). Later connections are forwarded both ways. Returns its URL and its task.
pub async fn answer_dropping(target_url: &str, drops: u32) -> (String, JoinHandle<()>) {
    let target = socket_addr(target_url);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let left = Arc::new(AtomicU32::new(drops));
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            let left = left.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                if left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
                // Forward the request, read the answer, and close without passing it on.
                let (mut in_read, _in_write) = inbound.split();
                let (mut out_read, mut out_write) = outbound.split();
                let mut answer = [0u8; 4096];
                let forward = async {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = in_read.read(&mut buf).await {
                        if n == 0 || out_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! {
                    () = forward => {}
                    _ = out_read.read(&mut answer) => {}
                }
            });
        }
    });
    (url, task)
}

/// A TCP proxy that forwards requests and answers, but cuts the first `cuts` connections once
/// `after` bytes of their answer (headers included) have been passed on: a body that breaks off
/// mid-way. Later connections are forwarded whole. Returns its URL, the count of answers cut so
/// far (an answer shorter than `after` uses up a cut without being cut) and its task.
pub async fn answer_cutting(target_url: &str, after: usize, cuts: u32) -> (String, Arc<AtomicU32>, JoinHandle<()>) {
    let target = socket_addr(target_url);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let left = Arc::new(AtomicU32::new(cuts));
    let made = Arc::new(AtomicU32::new(0));
    let counter = made.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            let (left, made) = (left.clone(), made.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(target).await else { return };
                let (mut in_read, mut in_write) = inbound.split();
                let (mut out_read, mut out_write) = outbound.split();
                let forward = async {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = in_read.read(&mut buf).await {
                        if n == 0 || out_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                // The connection's fate is decided at its first answer byte, so a client's idle
                // pooled connection does not use up a cut.
                let backward = async {
                    let mut buf = [0u8; 8192];
                    let mut budget: Option<usize> = None;
                    loop {
                        let n = match out_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let budget = budget.get_or_insert_with(|| {
                            let cut =
                                left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                            if cut { after } else { usize::MAX }
                        });
                        let pass = n.min(*budget);
                        if in_write.write_all(&buf[..pass]).await.is_err() {
                            break;
                        }
                        *budget -= pass;
                        if *budget == 0 {
                            made.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                    }
                };
                tokio::select! {
                    () = forward => {}
                    () = backward => {}
                }
            });
        }
    });
    (url, counter, task)
}

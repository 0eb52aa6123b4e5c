//! A TCP proxy that can be stopped and started again on the same port: a test service "down".

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A TCP proxy in front of a target that can be stopped (connections refused, open ones cut)
/// and started again on the same port.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(target_url: &str) -> Proxy {
        let target = target_url.trim_start_matches("http://").trim_end_matches('/').parse().expect("target address");
        let addr = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        let mut proxy = Proxy { addr, target, task: None };
        proxy.up();
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

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

    pub async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

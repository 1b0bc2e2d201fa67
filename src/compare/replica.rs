//! The replicas `compare` runs against: small HTTP/1.1 servers on loopback with a fixed
//! capacity (a pool of workers, each busy for a service time per request), so a replica that
//! gets more than its share queues — as a real one would. Any replica can be killed: its
//! listener closes and every open connection drops at once, as if the process died.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The header a replica answers with: `replica-{n}`, n counted from 1.
pub(super) const ID_HEADER: &str = "x-upstream-id";

pub(super) struct Fleet {
    replicas: Vec<Handle>,
}

struct Handle {
    addr: SocketAddr,
    kill: watch::Sender<bool>,
}

impl Fleet {
    /// Start `n` replicas, each serving `workers` requests at a time for `service_time`.
    pub(super) async fn start(
        n: usize,
        workers: usize,
        service_time: Duration,
    ) -> Result<Fleet, String> {
        let mut replicas = Vec::with_capacity(n);
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("cannot bind a replica: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let (kill, killed) = watch::channel(false);
            let id = header::HeaderValue::from_str(&format!("replica-{}", i + 1))
                .map_err(|e| e.to_string())?;
            let capacity = Arc::new(Semaphore::new(workers.max(1)));
            tokio::spawn(serve(listener, id, capacity, service_time, killed));
            replicas.push(Handle { addr, kill });
        }
        Ok(Fleet { replicas })
    }

    pub(super) fn addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.addr).collect()
    }

    /// Kill replica `i` (0-based): no more accepts, every connection dropped.
    pub(super) fn kill(&self, i: usize) {
        if let Some(r) = self.replicas.get(i) {
            let _ = r.kill.send(true);
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in &self.replicas {
            let _ = r.kill.send(true);
        }
    }
}

async fn serve(
    listener: TcpListener,
    id: header::HeaderValue,
    capacity: Arc<Semaphore>,
    service_time: Duration,
    mut killed: watch::Receiver<bool>,
) {
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            },
            _ = dead(&mut killed) => return,
        };
        let _ = tcp.set_nodelay(true);
        let (id, capacity, mut killed) = (id.clone(), capacity.clone(), killed.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let (id, capacity) = (id.clone(), capacity.clone());
                async move {
                    // Queue for a worker, then hold it for the service time.
                    let _worker = capacity.acquire_owned().await;
                    if !service_time.is_zero() {
                        tokio::time::sleep(service_time).await;
                    }
                    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                    resp.headers_mut().insert(ID_HEADER, id);
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                // Dropping the connection closes the socket mid-request, like a crash.
                _ = dead(&mut killed) => {}
            }
        });
    }
}

/// Resolves once the replica is killed (or its fleet is gone).
async fn dead(killed: &mut watch::Receiver<bool>) {
    let _ = killed.wait_for(|k| *k).await;
}

/// The replica index (0-based) named by an `x-upstream-id` value.
pub(super) fn parse_id(v: &[u8]) -> Option<u16> {
    let n: u16 = std::str::from_utf8(v)
        .ok()?
        .strip_prefix("replica-")?
        .parse()
        .ok()?;
    n.checked_sub(1)
}

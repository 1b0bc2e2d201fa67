//! The HTTP/1.1 keep-alive connections to one replica, and sending a request on one.
//!
//! One pool per replica: a LIFO stack of idle connections (`SendRequest` handles whose
//! connection task runs on its own), so a replica sees a handful of long-lived connections.
//! A connection goes back on the stack when its response body has been read to the end —
//! by the response body itself, as it finishes or is dropped — so finishing a request
//! spawns nothing and takes one short lock. A request that could not be written because its
//! pooled connection had just closed is sent again on another one (nothing reached the
//! replica); every other failure goes back to the caller.

use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::UpstreamRequestBody;

/// Why a request got no response head from the replica.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (or a pooled one made ready): nothing was sent.
    Connect(String),
    /// The request went out on a connection that then failed, or its body failed.
    Request(hyper::Error),
}

impl SendError {
    /// The whole cause chain in one line, for the log and the error detail.
    pub fn detail(&self) -> String {
        match self {
            SendError::Connect(s) => s.clone(),
            SendError::Request(e) => {
                let mut s = e.to_string();
                let mut source = e.source();
                while let Some(inner) = source {
                    s.push_str(": ");
                    s.push_str(&inner.to_string());
                    source = inner.source();
                }
                s
            }
        }
    }
}

struct Idle {
    sender: SendRequest<UpstreamRequestBody>,
    since: Instant,
}

/// The idle connections to one replica and how new ones are made.
pub struct ConnPool {
    address: SocketAddr,
    connect_timeout: Duration,
    /// At most this many idle connections are kept (0: none, a connection per request).
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnPool")
            .field("address", &self.address)
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl ConnPool {
    pub fn new(
        address: SocketAddr,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        ConnPool {
            address,
            connect_timeout,
            max_idle,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // The list stays consistent whatever panicked while holding it: one push or pop.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// The most recently used idle connection still open and not past the idle timeout.
    fn checkout(&self) -> Option<SendRequest<UpstreamRequestBody>> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop() {
            if !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<UpstreamRequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Close the connections idle for longer than the idle timeout (called periodically, so
    /// a replica's connections close when traffic stops, not at the next request).
    pub fn prune(&self) {
        let timeout = self.idle_timeout;
        self.lock()
            .retain(|c| !c.sender.is_closed() && c.since.elapsed() < timeout);
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamRequestBody>, SendError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.address))
            .await
            .map_err(|_| {
                SendError::Connect(format!(
                    "connect timed out after {:?}",
                    self.connect_timeout
                ))
            })?
            .map_err(|e| SendError::Connect(format!("connect: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| SendError::Connect(format!("handshake: {e}")))?;
        let address = self.address;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(upstream = %address, error = %e, "upstream connection ended with error");
            }
        });
        Ok(sender)
    }

    /// A ready connection: a pooled one if any becomes ready in time, else a new one.
    /// The bool says whether it came from the pool.
    async fn ready_connection(
        &self,
    ) -> Result<(SendRequest<UpstreamRequestBody>, bool), SendError> {
        while let Some(mut sender) = self.checkout() {
            // Just checked in, its connection may still be finishing the last response.
            match tokio::time::timeout(self.connect_timeout, sender.ready()).await {
                Ok(Ok(())) => return Ok((sender, true)),
                Ok(Err(_)) => continue,
                // Not ready in all that time: something is wrong with this replica's
                // connections; a new one rather than another wait.
                Err(_) => break,
            }
        }
        // Boxed: connecting is rare, and its future would otherwise grow every request's.
        Ok((Box::pin(self.connect()).await?, false))
    }

    /// Send `req` (origin-form URI, Host set) and wait for the response head. The response
    /// body hands the connection back to this pool once it has been read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamRequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        loop {
            let (mut sender, reused) = self.ready_connection().await?;
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    // An upgraded connection is the tunnel's now; a response that says the
                    // connection closes after it leaves nothing to reuse.
                    let reusable =
                        self.max_idle > 0 && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS;
                    let checkin = reusable.then(|| Checkin {
                        sender,
                        pool: self.clone(),
                    });
                    return Ok(resp.map(|inner| {
                        let mut body = UpstreamBody { inner, checkin };
                        body.checkin_if_done();
                        body
                    }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: a pooled connection closed under us. Another one.
                    Some(back) if reused => {
                        debug!(upstream = %self.address, error = %e.error(), "pooled connection closed; sending on another");
                        req = back;
                    }
                    // Never written, on a new connection: nothing reached the replica.
                    Some(_) => {
                        return Err(SendError::Connect(format!(
                            "connection closed before the request was written: {}",
                            e.error()
                        )));
                    }
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }
}

/// Where a response body returns its connection when it has been read to the end.
struct Checkin {
    sender: SendRequest<UpstreamRequestBody>,
    pool: Arc<ConnPool>,
}

/// A replica's response body. Once it has been read to the end its connection goes back
/// to the pool; dropped before that, the connection closes with it (HTTP/1.1 cannot
/// abandon a response half read).
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<Checkin>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("pooled", &self.checkin.is_some())
            .finish()
    }
}

impl UpstreamBody {
    fn checkin_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some(c) = self.checkin.take()
        {
            c.pool.checkin(c.sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => this.checkin_if_done(),
            Poll::Ready(None) => {
                if let Some(c) = this.checkin.take() {
                    c.pool.checkin(c.sender);
                }
            }
            // A broken body leaves a broken connection.
            Poll::Ready(Some(Err(_))) => this.checkin = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper stops polling a body that says it has ended, so the end is often seen here.
        self.checkin_if_done();
    }
}

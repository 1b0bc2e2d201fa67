//! The HTTP/1.1 keep-alive connections to one replica, and sending a request on one.
//!
//! One pool per replica: a LIFO stack of idle connections, so a replica sees a handful of
//! long-lived connections. A connection goes back on the stack when its response body has
//! been read to the end — by the response body itself, as it finishes — so finishing a
//! request takes one short lock. An idle connection is not polled: at checkout its
//! readiness (kept by the reactor, no syscall) tells whether the replica closed it.
//!
//! A request is sent again on a new connection, once, when a pooled connection turns out
//! to be dead and nothing can have been acted on: the write failed, or the replica closed
//! before sending any byte of a response to a bodiless GET, HEAD, OPTIONS or TRACE (the
//! keep-alive race: the replica timed the connection out as the request left). Every other
//! failure goes back to the caller.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::UpstreamBody;
use super::conn::{Conn, Stream};
use super::exchange::{Exchange, RequestBody, SendError, finish_upload};
use crate::h1::client::{RequestFraming, encode_request};

struct Idle {
    conn: Conn,
    since: Instant,
}

/// The idle connections to one replica and how new ones are made.
pub(crate) struct ConnPool {
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
    pub(crate) fn new(
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
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// The most recently used idle connection still open and not past the idle timeout.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(mut c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout && c.conn.alive() {
                return Some(c.conn);
            }
        }
        None
    }

    pub(super) fn checkin(&self, conn: Conn) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Close the connections idle for longer than the idle timeout or closed by the
    /// replica (called periodically, so they close when traffic stops, not at the next
    /// request).
    pub(crate) fn prune(&self) {
        let timeout = self.idle_timeout;
        self.lock()
            .retain_mut(|c| c.since.elapsed() < timeout && c.conn.alive());
    }

    async fn connect<E>(&self) -> Result<Conn, SendError<E>> {
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
        Ok(Conn {
            io: Stream::Whole(tcp),
            buf: BytesMut::new(),
        })
    }

    /// Send a request (written in origin-form) and wait for the response head. The response
    /// body hands the connection back to this pool once it has been read to the end.
    /// `host` is written as the Host header (for a request that has none), and `extra`'s
    /// lines after the request's own headers.
    pub(crate) async fn send<B: RequestBody>(
        self: &Arc<Self>,
        parts: &http::request::Parts,
        host: Option<&[u8]>,
        extra: &[(&str, &[u8])],
        mut body: B,
    ) -> Result<Response<UpstreamBody>, SendError<B::Error>> {
        let framing = if body.is_end_stream() {
            RequestFraming::None
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestFraming::Length(n),
                None => RequestFraming::Chunked,
            }
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let head = || {
            let mut head = Vec::with_capacity(256 + 64 * (parts.headers.len() + extra.len()));
            encode_request(
                &mut head,
                &parts.method,
                target,
                host,
                &parts.headers,
                extra,
                framing,
            );
            head
        };
        let head_request = parts.method == Method::HEAD;
        // Safe to send twice if nothing came back: no body, and a method without effects.
        let resendable = framing == RequestFraming::None
            && matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            );
        let mut retried = false;
        let mut x = Exchange::new(head(), framing);
        loop {
            // A retry goes on a new connection, not another pooled one of the same age.
            let pooled = if retried { None } else { self.checkout() };
            let (mut conn, reused) = match pooled {
                Some(c) => (c, true),
                // Boxed: connecting is rare, and its future would otherwise grow every
                // request's.
                None => (Box::pin(self.connect()).await?, false),
            };
            let outcome =
                std::future::poll_fn(|cx| x.poll(cx, &mut conn, &mut body, head_request)).await;
            match outcome {
                Ok((resp, meta)) => {
                    let uploaded = x.uploaded();
                    let (conn, upload) = if uploaded {
                        (conn, None)
                    } else {
                        finish_upload(conn, x, body)
                    };
                    return Ok(self.respond(conn, resp, meta, uploaded, upload));
                }
                // Only the socket failing, on a connection that had been idle, and only when
                // nothing can have been acted on.
                Err(e)
                    if reused
                        && !retried
                        && x.socket_failed
                        && (x.nothing_written() || (resendable && x.nothing_read())) =>
                {
                    debug!(upstream = %self.address, error = %e.detail(), "pooled connection closed; sending on a new one");
                    retried = true;
                    // Nothing written: what was gathered (the head, body bytes already taken
                    // from the client) is all still there to send. Otherwise a bodiless
                    // request's head is written again.
                    x = if x.nothing_written() {
                        x.again()
                    } else {
                        Exchange::new(head(), framing)
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The response, its body reading on from the connection.
    fn respond(
        self: &Arc<Self>,
        conn: Conn,
        resp: Response<()>,
        meta: crate::h1::client::ResponseMeta,
        uploaded: bool,
        upload: Option<tokio::task::AbortHandle>,
    ) -> Response<UpstreamBody> {
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        // Reused only when the request went out whole and the response says it may be.
        let reusable = meta.keep_alive && uploaded && !switching && self.max_idle > 0;
        let body = UpstreamBody::new(
            conn,
            meta.framing,
            switching,
            reusable.then(|| self.clone()),
            upload,
        );
        resp.map(|()| body)
    }
}

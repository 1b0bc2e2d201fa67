//! The HTTP/1.1 keep-alive connections to one replica, and sending a request on one.
//!
//! doorman's own client side, on `h1::client`'s wire format. A request is written and its
//! response read by the task serving the request itself: no connection task, no channel
//! between the two, no wake-up of another task per request (hyper's client dispatches each
//! request to a task per connection and each response back). This is also how nginx and
//! Pingora hold upstream connections.
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

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;

use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tracing::debug;

use crate::h1::client::{RequestFraming, ResponseFraming, encode_request, parse_response};
use crate::h1::{Decoded, Decoder, Framing, Rewind};

/// The longest response head read from a replica; longer is a 502 (nginx's
/// `proxy_buffer_size` plays this part, at 4 or 8 KiB).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Buffer room reserved for each read from a replica.
const READ_SIZE: usize = 8 * 1024;
/// Request body bytes gathered behind the head (or the previous chunk) before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// A request body as `ConnPool::send` takes it: its bytes, and word of when all of them have
/// gone out (the caller's upload watch ends there, and its response-head wait begins).
pub trait RequestBody:
    Body<Data = Bytes, Error: std::fmt::Display + Send> + Unpin + Send + 'static
{
    /// All of the body has been written to the replica. Called for a body that was empty
    /// from the start too, which is never polled to its end.
    fn sent(&mut self);
}

/// Why a request got no response head from the replica. `E` is the request body's own
/// error, handed back as it came so the caller can tell its causes apart.
#[derive(Debug)]
pub enum SendError<E> {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// The request body failed to yield its bytes (its source broke off, or it refused to
    /// go on, e.g. over a size limit).
    Body(E),
    /// The request went out (at least in part) on a connection that then failed, or the
    /// replica's answer was not HTTP/1.1.
    Request(String),
}

impl<E: std::fmt::Display> SendError<E> {
    /// The cause in one line, for the log and the error detail.
    pub fn detail(&self) -> String {
        match self {
            SendError::Connect(s) | SendError::Request(s) => s.clone(),
            SendError::Body(e) => e.to_string(),
        }
    }
}

/// One connection to the replica, and what has been read from it and not yet used.
struct Conn {
    io: Stream,
    buf: BytesMut,
}

/// The connection, or its read half while a task of its own finishes the upload (a
/// replica that answered before the request body's end).
enum Stream {
    Whole(TcpStream),
    Read(OwnedReadHalf),
}

impl Conn {
    /// Whether the connection looks usable: no readiness (nothing arrived, no close) is the
    /// answer without a syscall; readiness is checked with one non-blocking read.
    fn alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let Stream::Whole(io) = &self.io else {
            return false;
        };
        let mut cx = Context::from_waker(Waker::noop());
        match io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // The close, bytes no request asked for, or readiness left from the last read.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Read more into the buffer: the bytes read, 0 at the replica's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        // The future holds nothing but the two borrows: made anew on every poll.
        match &mut self.io {
            Stream::Whole(io) => std::pin::pin!(io.read_buf(&mut self.buf)).poll(cx),
            Stream::Read(io) => std::pin::pin!(io.read_buf(&mut self.buf)).poll(cx),
        }
    }
}

struct Idle {
    conn: Conn,
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
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(mut c) = idle.pop() {
            if c.since.elapsed() < self.idle_timeout && c.conn.alive() {
                return Some(c.conn);
            }
        }
        None
    }

    fn checkin(&self, conn: Conn) {
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
    pub fn prune(&self) {
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
    pub async fn send<B: RequestBody>(
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
        let reading = match meta.framing {
            _ if switching => Reading::Upgrade,
            ResponseFraming::Empty => Reading::Decode(Decoder::new(Framing::Empty)),
            ResponseFraming::Length(n) => Reading::Decode(Decoder::new(Framing::Length(n))),
            ResponseFraming::Chunked => Reading::Decode(Decoder::new(Framing::Chunked)),
            ResponseFraming::Close => Reading::Close,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            reading,
            pool: reusable.then(|| self.clone()),
            upload,
        };
        if body.finished() {
            body.finish();
        }
        resp.map(|()| body)
    }
}

/// One request written and its response head read, on one connection, in the caller's
/// task. The body keeps being written while the response is awaited, and an answer that
/// comes before the body's end ends the upload (the connection is then not reused).
struct Exchange {
    framing: RequestFraming,
    /// Bytes to write: the head, then body data in its framing.
    out: Vec<u8>,
    written: usize,
    /// Everything handed to the kernel so far, the head included.
    total_written: u64,
    /// Body bytes taken from the request body, against a declared length.
    body_sent: u64,
    body_done: bool,
    upload_done: bool,
    read_any: bool,
    /// Reading or writing the connection failed (not the request body, not a bad answer):
    /// what a dead pooled connection looks like.
    socket_failed: bool,
    /// Writing failed (the cause): kept while whatever the replica already sent is read, since
    /// a replica that refuses a request (413, 401) often closes as it answers, before the
    /// body's end.
    write_error: Option<String>,
}

impl Exchange {
    fn new(head: Vec<u8>, framing: RequestFraming) -> Self {
        Exchange {
            framing,
            out: head,
            written: 0,
            total_written: 0,
            body_sent: 0,
            body_done: framing == RequestFraming::None,
            upload_done: false,
            read_any: false,
            socket_failed: false,
            write_error: None,
        }
    }

    /// The same exchange for a new connection, when nothing of it was written.
    fn again(self) -> Self {
        Exchange {
            socket_failed: false,
            write_error: None,
            read_any: false,
            ..self
        }
    }

    fn nothing_written(&self) -> bool {
        self.total_written == 0
    }

    fn nothing_read(&self) -> bool {
        !self.read_any
    }

    fn uploaded(&self) -> bool {
        self.upload_done
    }

    fn poll<B: RequestBody>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        body: &mut B,
        head_request: bool,
    ) -> Poll<Result<(Response<()>, crate::h1::client::ResponseMeta), SendError<B::Error>>> {
        if !self.upload_done
            && self.write_error.is_none()
            && let Stream::Whole(io) = &mut conn.io
            && let Poll::Ready(Err(e)) = self.poll_upload(cx, io, body)
        {
            match e {
                // The replica may have answered already: read what it sent first.
                SendError::Request(d) => self.write_error = Some(d),
                // The client's body failed, or is over the limit: nothing more to do here.
                e => return Poll::Ready(Err(e)),
            }
        }
        loop {
            // What has arrived may already hold the answer (or interim 1xx ones before it).
            while !conn.buf.is_empty() {
                match parse_response(&mut conn.buf, head_request, MAX_RESPONSE_HEAD) {
                    Ok(None) => break,
                    Ok(Some((resp, _)))
                        if resp.status().is_informational()
                            && resp.status() != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue;
                    }
                    Ok(Some(parsed)) => return Poll::Ready(Ok(parsed)),
                    Err(e) => return Poll::Ready(Err(SendError::Request(e.to_string()))),
                }
            }
            let failed = match ready!(conn.poll_fill(cx)) {
                Ok(0) => SendError::Request(
                    if self.read_any {
                        "connection closed in the middle of the response head"
                    } else {
                        "connection closed before a response"
                    }
                    .into(),
                ),
                Ok(_) => {
                    self.read_any = true;
                    continue;
                }
                Err(e) => SendError::Request(format!("read: {e}")),
            };
            self.socket_failed = true;
            // A failed write says more than the close that follows it.
            return Poll::Ready(Err(self
                .write_error
                .take()
                .map_or(failed, SendError::Request)));
        }
    }

    /// Write the head and the body as far as the socket and the body allow. Ready(Ok) once
    /// all of it is written.
    fn poll_upload<B: RequestBody>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut (impl AsyncWrite + Unpin),
        body: &mut B,
    ) -> Poll<Result<(), SendError<B::Error>>> {
        loop {
            // Gather what the body has ready behind what waits to be written.
            // Bounded by what the buffer holds in all, written or not: it is cleared only once
            // written out, so topping up the unwritten part would let it grow without end.
            while !self.body_done && self.out.len() < WRITE_BATCH {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(None) => {
                        self.body_done = true;
                        match self.framing {
                            RequestFraming::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
                            RequestFraming::Length(n) if self.body_sent != n => {
                                return Poll::Ready(Err(SendError::Request(format!(
                                    "request body ended after {} of its {n} bytes",
                                    self.body_sent
                                ))));
                            }
                            _ => {}
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(SendError::Body(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        // Trailers (HTTP/2 clients) are not forwarded.
                        let Ok(data) = frame.into_data() else {
                            continue;
                        };
                        self.add_data(&data)?;
                    }
                }
            }
            if self.written == self.out.len() {
                if self.body_done {
                    self.upload_done = true;
                    self.out = Vec::new();
                    // The wait for the response head starts now.
                    body.sent();
                    return Poll::Ready(Ok(()));
                }
                return Poll::Pending;
            }
            match Pin::new(&mut *io).poll_write(cx, &self.out[self.written..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.socket_failed = true;
                    return Poll::Ready(Err(SendError::Request("write: connection closed".into())));
                }
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.total_written += n as u64;
                    if self.written == self.out.len() {
                        self.out.clear();
                        self.written = 0;
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.socket_failed = true;
                    return Poll::Ready(Err(SendError::Request(format!("write: {e}"))));
                }
            }
        }
    }

    fn add_data<E>(&mut self, data: &Bytes) -> Result<(), SendError<E>> {
        if data.is_empty() {
            return Ok(());
        }
        self.body_sent += data.len() as u64;
        match self.framing {
            RequestFraming::Chunked => {
                let mut size = [0u8; 16];
                let hex = hex_len(data.len(), &mut size);
                self.out.extend_from_slice(hex);
                self.out.extend_from_slice(b"\r\n");
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            }
            RequestFraming::Length(n) if self.body_sent > n => {
                return Err(SendError::Request(format!(
                    "request body longer than its declared {n} bytes"
                )));
            }
            _ => self.out.extend_from_slice(data),
        }
        Ok(())
    }
}

/// `n` in lower-case hex, written into `buf`.
fn hex_len(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// How the rest of a response is read.
#[derive(Debug)]
enum Reading {
    Decode(Decoder),
    /// Until the replica closes.
    Close,
    /// A 101: no body; the connection is the tunnel's.
    Upgrade,
}

/// A replica's response body, read from its connection by whoever polls it. Once read to
/// the end the connection goes back to the pool; dropped before that, the connection
/// closes with it (HTTP/1.1 cannot abandon a response half read).
pub struct UpstreamBody {
    /// None once the body has ended (the connection is back in the pool, or closed).
    conn: Option<Conn>,
    reading: Reading,
    /// Where the connection goes at the end, when it may be reused.
    pool: Option<Arc<ConnPool>>,
    /// The task still writing the request body (the replica answered before its end):
    /// stopped when the response ends.
    upload: Option<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("reading", &self.reading)
            .field("pooled", &self.pool.is_some())
            .finish()
    }
}

/// The replica broke the response off, or sent a body that is not HTTP/1.1.
#[derive(Debug, thiserror::Error)]
#[error("reading the response body from the replica failed: {0}")]
pub struct UpstreamBodyError(String);

impl UpstreamBodyError {
    /// A failure seen by the reader rather than the decoder (the body stopped moving).
    pub fn new(why: impl Into<String>) -> Self {
        UpstreamBodyError(why.into())
    }
}

impl UpstreamBody {
    fn finished(&self) -> bool {
        match &self.reading {
            Reading::Decode(d) => d.finished(),
            Reading::Close => self.conn.is_none(),
            Reading::Upgrade => true,
        }
    }

    /// The body has been read to its end: the connection goes back to the pool (when it
    /// may, and nothing was sent past the response), or closes.
    fn finish(&mut self) {
        if matches!(self.reading, Reading::Upgrade) {
            return;
        }
        if let Some(upload) = self.upload.take() {
            upload.abort();
        }
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.take())
            && conn.buf.is_empty()
        {
            pool.checkin(conn);
        }
    }

    /// A 101's connection, with the bytes the replica sent past its head, for the tunnel.
    pub fn take_upgrade(&mut self) -> Option<Rewind<TcpStream>> {
        if !matches!(self.reading, Reading::Upgrade) {
            return None;
        }
        let Conn {
            io: Stream::Whole(io),
            buf,
        } = self.conn.take()?
        else {
            return None;
        };
        Some(Rewind::new(buf.freeze(), io))
    }

    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        self.conn = None;
        self.pool = None;
        Poll::Ready(Some(Err(UpstreamBodyError(why))))
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            upload.abort();
        }
    }
}

/// The replica answered before the request body's end: the rest of the body goes on in a
/// task of its own while the response is relayed, as the two directions are independent
/// (a client may send its whole body before it reads). The connection is not reused after.
fn finish_upload<B: RequestBody>(
    conn: Conn,
    mut x: Exchange,
    mut body: B,
) -> (Conn, Option<tokio::task::AbortHandle>) {
    let Conn { io, buf } = conn;
    let tcp = match io {
        Stream::Whole(tcp) => tcp,
        read => return (Conn { io: read, buf }, None),
    };
    let (read, mut write) = tcp.into_split();
    let conn = Conn {
        io: Stream::Read(read),
        buf,
    };
    let task = tokio::spawn(async move {
        let done = std::future::poll_fn(|cx| x.poll_upload(cx, &mut write, &mut body)).await;
        if let Err(e) = done {
            debug!(error = %e.detail(), "request body after an early response: not sent whole");
        }
        // Dropped, the write half would shut down its side: a FIN in the middle of the
        // response, which many servers take for the client going away. The connection
        // closes with the read half instead, when the response ends.
        write.forget();
    });
    (conn, Some(task.abort_handle()))
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.reading {
                Reading::Upgrade => return Poll::Ready(None),
                Reading::Decode(d) => {
                    let mut data = Bytes::new();
                    match d.decode(&mut conn.buf, &mut data) {
                        Ok(Some(Decoded::Data)) => {
                            if d.finished() {
                                this.finish();
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Ok(Some(Decoded::End)) => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(None) => {}
                        Err(e) => return this.fail(e.to_string()),
                    }
                }
                Reading::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Reading::Close => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.reading, Reading::Close) => {
                    this.conn = None;
                    if let Some(upload) = this.upload.take() {
                        upload.abort();
                    }
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("connection closed before the body's end".into()),
                Ok(_) => {}
                Err(e) => return this.fail(format!("read: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.finished()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.reading {
            _ if self.is_end_stream() => SizeHint::with_exact(0),
            Reading::Decode(d) => match d.remaining() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::new(),
            },
            _ => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        let mut buf = [0u8; 16];
        assert_eq!(hex_len(0, &mut buf), b"0");
        assert_eq!(hex_len(10, &mut buf), b"a");
        assert_eq!(hex_len(0x4000, &mut buf), b"4000");
        assert_eq!(hex_len(usize::MAX, &mut buf), b"ffffffffffffffff");
    }
}

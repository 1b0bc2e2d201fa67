//! One request written and its response head read on one connection, and the request
//! body types it takes (`RequestBody`) and the failures it reports (`SendError`).
//!
//! doorman's own client side, on `h1::client`'s wire format. A request is written and its
//! response read by the task serving the request itself: no connection task, no channel
//! between the two, no wake-up of another task per request (hyper's client dispatches each
//! request to a task per connection and each response back). This is also how nginx and
//! Pingora hold upstream connections.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body;
use tokio::io::AsyncWrite;
use tracing::debug;

use super::conn::{Conn, Stream};
use crate::h1::client::{RequestFraming, ResponseMeta, parse_response};

/// The longest response head read from a replica; longer is a 502 (nginx's
/// `proxy_buffer_size` plays this part, at 4 or 8 KiB).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Request body bytes gathered behind the head (or the previous chunk) before a write.
const WRITE_BATCH: usize = 64 * 1024;

/// A request body as `ConnPool::send` takes it: its bytes, and word of when all of them have
/// gone out (the caller's upload watch ends there, and its response-head wait begins).
pub(crate) trait RequestBody:
    Body<Data = Bytes, Error: std::fmt::Display + Send> + Unpin + Send + 'static
{
    /// All of the body has been written to the replica. Called for a body that was empty
    /// from the start too, which is never polled to its end.
    fn sent(&mut self);
}

/// Why a request got no response head from the replica. `E` is the request body's own
/// error, handed back as it came so the caller can tell its causes apart.
#[derive(Debug)]
pub(crate) enum SendError<E> {
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
    pub(crate) fn detail(&self) -> String {
        match self {
            SendError::Connect(s) | SendError::Request(s) => s.clone(),
            SendError::Body(e) => e.to_string(),
        }
    }
}

/// A response head as read from the replica, and how its body is framed.
type Head = (Response<()>, ResponseMeta);

/// One request written and its response head read, on one connection, in the caller's
/// task. The body keeps being written while the response is awaited, and an answer that
/// comes before the body's end ends the upload (the connection is then not reused).
pub(super) struct Exchange {
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
    pub(super) socket_failed: bool,
    /// Writing failed (the cause): kept while whatever the replica already sent is read, since
    /// a replica that refuses a request (413, 401) often closes as it answers, before the
    /// body's end.
    write_error: Option<String>,
}

impl Exchange {
    pub(super) fn new(head: Vec<u8>, framing: RequestFraming) -> Self {
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
    pub(super) fn again(self) -> Self {
        Exchange {
            socket_failed: false,
            write_error: None,
            read_any: false,
            ..self
        }
    }

    pub(super) fn nothing_written(&self) -> bool {
        self.total_written == 0
    }

    pub(super) fn nothing_read(&self) -> bool {
        !self.read_any
    }

    pub(super) fn uploaded(&self) -> bool {
        self.upload_done
    }

    pub(super) fn poll<B: RequestBody>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        body: &mut B,
        head_request: bool,
    ) -> Poll<Result<Head, SendError<B::Error>>> {
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

/// The replica answered before the request body's end: the rest of the body goes on in a
/// task of its own while the response is relayed, as the two directions are independent
/// (a client may send its whole body before it reads). The connection is not reused after.
pub(super) fn finish_upload<B: RequestBody>(
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

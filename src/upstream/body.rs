//! A replica's response body, read from its connection by whoever polls it, handing the
//! connection back to its pool at the end.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use super::conn::{Conn, Stream};
use super::pool::ConnPool;
use crate::h1::client::ResponseFraming;
use crate::h1::{Decoded, Decoder, Framing, Rewind};

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
pub(crate) struct UpstreamBody {
    /// None once the body has ended (the connection is back in the pool, or closed).
    conn: Option<Conn>,
    reading: Reading,
    /// Where the connection goes at the end, when it may be reused.
    pool: Option<Arc<ConnPool>>,
    /// The task still writing the request body (the replica answered before its end):
    /// stopped when the response ends.
    upload: Option<AbortHandle>,
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
pub(crate) struct UpstreamBodyError(String);

impl UpstreamBodyError {
    /// A failure seen by the reader rather than the decoder (the body stopped moving).
    pub(crate) fn new(why: impl Into<String>) -> Self {
        UpstreamBodyError(why.into())
    }
}

impl UpstreamBody {
    /// The body of a response whose head was just read from `conn` (`switching`: a 101).
    /// `pool` takes the connection back at the body's end; without one it closes.
    pub(super) fn new(
        conn: Conn,
        framing: ResponseFraming,
        switching: bool,
        pool: Option<Arc<ConnPool>>,
        upload: Option<AbortHandle>,
    ) -> Self {
        let reading = match framing {
            _ if switching => Reading::Upgrade,
            ResponseFraming::Empty => Reading::Decode(Decoder::new(Framing::Empty)),
            ResponseFraming::Length(n) => Reading::Decode(Decoder::new(Framing::Length(n))),
            ResponseFraming::Chunked => Reading::Decode(Decoder::new(Framing::Chunked)),
            ResponseFraming::Close => Reading::Close,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            reading,
            pool,
            upload,
        };
        if body.finished() {
            body.finish();
        }
        body
    }

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
    pub(crate) fn take_upgrade(&mut self) -> Option<Rewind<TcpStream>> {
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

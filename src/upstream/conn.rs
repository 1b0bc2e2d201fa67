//! One connection to a replica: its socket (whole, or only the read half while a task of
//! its own finishes an upload) and the bytes read from it and not yet used.

use std::future::Future;
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

/// Buffer room reserved for each read from a replica.
const READ_SIZE: usize = 8 * 1024;

/// One connection to the replica, and what has been read from it and not yet used.
pub(super) struct Conn {
    pub(super) io: Stream,
    pub(super) buf: BytesMut,
}

/// The connection, or its read half while a task of its own finishes the upload (a
/// replica that answered before the request body's end).
pub(super) enum Stream {
    Whole(TcpStream),
    Read(OwnedReadHalf),
}

impl Conn {
    /// Whether the connection looks usable: no readiness (nothing arrived, no close) is the
    /// answer without a syscall; readiness is checked with one non-blocking read.
    pub(super) fn alive(&mut self) -> bool {
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
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
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

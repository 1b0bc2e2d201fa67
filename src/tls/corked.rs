//! The TCP stream under a downstream TLS connection: fewer, fuller writes.
//!
//! A TLS 1.3 server sends its session tickets once it has read the client's Finished, and
//! tokio-rustls writes them straight away; a client sends its first request with its
//! Finished, so the response follows a moment later in a second write. A connection that
//! closes after its response then writes its close_notify in a third. Three packets where
//! one would do, on every short connection.
//!
//! [`Corked`] holds what is written during the handshake and sends it when the handshake
//! must wait for the client — just before a read that would block — so the server's
//! flight leaves exactly when it did. After the handshake, writes wait for a flush (up to
//! 16 KiB; more goes straight out, the held bytes first): the tickets leave with the first
//! response, and a closing connection's last response with its close_notify, when the
//! shutdown flushes them (`h1` does not flush the end of such a response itself). A client
//! whose first request has not come yet gets the tickets on the first read that would
//! block instead (see [`Corked::handshake_done`]).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How many of the caller's slices go in one vectored write beside the held bytes.
const SLICES: usize = 15;

/// After the handshake, writes wait for a flush while they add up to no more than this
/// (the records of a response; then, on a connection that closes, its close_notify).
const HOLD: usize = 16 * 1024;

pub struct Corked {
    tcp: TcpStream,
    held: Vec<u8>,
    /// Until [`Corked::handshake_done`]: every write is held, and flushes wait for a read
    /// that would block.
    handshaking: bool,
    /// A read that would block sends what is held: during the handshake, and after it
    /// until the first request's bytes are read.
    send_on_wait: bool,
}

impl Corked {
    pub fn new(tcp: TcpStream) -> Self {
        Corked {
            tcp,
            held: Vec::new(),
            handshaking: true,
            send_on_wait: true,
        }
    }

    /// The handshake is over: writes go to the socket, the held bytes first. When the
    /// first request has not come with the client's Finished (`request_read` false), the
    /// held bytes also go as soon as a read would block: a client with Nagle's algorithm on
    /// holds its request back until its Finished is acknowledged, and without a packet
    /// from us that acknowledgement waits for the delayed-ACK timer (40 ms).
    pub fn handshake_done(&mut self, request_read: bool) {
        self.handshaking = false;
        self.send_on_wait = !request_read;
    }

    /// Send what is held (a failed handshake's alert, before the socket is dropped).
    pub fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.held))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.drain(..n);
        }
        self.held = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Corked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            // About to wait for the client, which may be waiting for what is held.
            Poll::Pending if this.send_on_wait && !this.held.is_empty() => {
                match this.poll_send_held(cx) {
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    _ => Poll::Pending,
                }
            }
            Poll::Ready(Ok(())) if !this.handshaking && buf.filled().len() > before => {
                // The request is here: what is held (tickets, which the client needs
                // nothing from to go on) waits for its response, even while the
                // connection reads ahead.
                this.send_on_wait = false;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Corked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let incoming: usize = bufs.iter().map(|b| b.len()).sum();
        if this.handshaking || this.held.len() + incoming <= HOLD {
            for b in bufs {
                this.held.extend_from_slice(b);
            }
            return Poll::Ready(Ok(incoming));
        }
        while !this.held.is_empty() {
            let mut slices = [IoSlice::new(&[]); SLICES + 1];
            slices[0] = IoSlice::new(&this.held);
            let k = bufs.len().min(SLICES);
            slices[1..=k].copy_from_slice(&bufs[..k]);
            let n = ready!(Pin::new(&mut this.tcp).poll_write_vectored(cx, &slices[..=k]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n < this.held.len() {
                this.held.drain(..n);
                continue;
            }
            let past = n - this.held.len();
            this.held = Vec::new();
            if past > 0 {
                return Poll::Ready(Ok(past));
            }
        }
        Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.handshaking {
            // The handshake flushes after each flight and then reads: the held bytes go
            // when that read would block, or, at its end, with the next write.
            return Poll::Ready(Ok(()));
        }
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (Corked, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (Corked::new(accepted.unwrap().0), client.unwrap())
    }

    /// Reads what the peer has been sent so far (waiting briefly for it to arrive).
    async fn arrived(peer: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), peer.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn handshake_writes_wait_for_a_read_that_would_block() {
        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"flight").await.unwrap();
        corked.flush().await.unwrap();
        assert_eq!(
            arrived(&mut peer).await,
            b"",
            "held while the handshake can go on"
        );
        // The handshake reads: nothing has come, so the flight goes out before it waits.
        let mut buf = [0u8; 16];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), corked.read(&mut buf));
        assert!(read.await.is_err(), "nothing to read yet");
        assert_eq!(arrived(&mut peer).await, b"flight");
        peer.write_all(b"finished").await.unwrap();
        let n = corked.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"finished");
    }

    #[tokio::test]
    async fn bytes_held_at_the_handshakes_end_leave_with_the_next_flushed_write() {
        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"tickets|").await.unwrap();
        corked.flush().await.unwrap();
        corked.handshake_done(true);
        assert_eq!(arrived(&mut peer).await, b"");
        corked.write_all(b"response").await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"", "a write waits for its flush");
        corked.flush().await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"tickets|response");
        corked.write_all(b"|last").await.unwrap();
        corked.write_all(b"|close_notify").await.unwrap();
        corked.shutdown().await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"|last|close_notify");
    }

    #[tokio::test]
    async fn a_write_past_the_hold_limit_goes_out_at_once_after_the_held_bytes() {
        let (mut corked, mut peer) = pair().await;
        corked.handshake_done(true);
        corked.write_all(b"head|").await.unwrap();
        let big = vec![b'x'; HOLD];
        corked.write_all(&big).await.unwrap();
        let got = arrived(&mut peer).await;
        assert_eq!(got.len(), 5 + HOLD, "sent without a flush");
        assert!(got.starts_with(b"head|x"));
    }

    #[tokio::test]
    async fn held_bytes_go_on_flush_or_shutdown_but_not_a_read_after_the_handshake() {
        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"a").await.unwrap();
        corked.handshake_done(true);
        corked.flush().await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"a");

        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"b").await.unwrap();
        corked.handshake_done(true);
        corked.shutdown().await.unwrap();
        assert_eq!(
            arrived(&mut peer).await,
            b"b",
            "sent, then the end of the stream"
        );

        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"c").await.unwrap();
        corked.handshake_done(true);
        let mut buf = [0u8; 4];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), corked.read(&mut buf));
        assert!(read.await.is_err());
        assert_eq!(
            arrived(&mut peer).await,
            b"",
            "a read ahead does not send the tickets"
        );
        corked.write_all(b"d").await.unwrap();
        corked.flush().await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"cd");
    }

    #[tokio::test]
    async fn without_a_request_yet_held_bytes_go_when_the_first_read_would_block() {
        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"tickets").await.unwrap();
        corked.handshake_done(false);
        let mut buf = [0u8; 8];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), corked.read(&mut buf));
        assert!(read.await.is_err());
        assert_eq!(
            arrived(&mut peer).await,
            b"tickets",
            "the client's Finished acknowledged"
        );
        // Once the request is read, later held bytes wait for a write again.
        peer.write_all(b"GET").await.unwrap();
        let n = corked.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET");
        corked.held.extend_from_slice(b"more");
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), corked.read(&mut buf));
        assert!(read.await.is_err());
        assert_eq!(
            arrived(&mut peer).await,
            b"",
            "a read ahead does not send them"
        );
        corked.flush().await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"more");
    }

    #[tokio::test]
    async fn large_held_bytes_and_many_slices_arrive_whole_and_in_order() {
        let (mut corked, mut peer) = pair().await;
        let held: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        corked.write_all(&held).await.unwrap();
        corked.handshake_done(true);
        let parts: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 1000]).collect();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = std::future::poll_fn(|cx| Pin::new(&mut corked).poll_write_vectored(cx, rest))
                .await
                .unwrap();
            IoSlice::advance_slices(&mut rest, n);
        }
        corked.shutdown().await.unwrap();
        drop(corked);
        let mut want = held;
        for p in &parts {
            want.extend_from_slice(p);
        }
        let got = reader.await.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes reordered or lost");
    }
}

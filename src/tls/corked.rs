//! The TCP stream under a downstream TLS connection: fewer, fuller writes.
//!
//! tokio-rustls writes each TLS flight as it is produced. [`Corked`] holds writes when
//! holding saves one:
//! - during the handshake, until the handshake must wait for the client (a read that would
//!   block), so the server's flight leaves exactly when it did, in one write;
//! - after it, while the connection asks (`h1` sets the flag given to
//!   [`Corked::hold_when`] before the last write of a response after which it closes),
//!   until a flush, a shutdown or a read that would block (up to 16 KiB; more goes straight
//!   out, the held bytes first). The shutdown then sends that response and the TLS
//!   close_notify in one write, where there were two, on every short connection. Any other
//!   write goes straight to the socket, after whatever is still held.
//!
//! A read that would block always sends what is held, because the client may be waiting
//! for it: the session tickets, written at the handshake's end, go before the connection
//! first waits for the client. Holding them for the first response would save another
//! write, but a client with Nagle's algorithm on holds a small write until its last one is
//! acknowledged, and without a packet from us that acknowledgement waits for the
//! delayed-ACK timer: measured, a Python client's first request waited 44 ms. Bytes still
//! held when the stream is dropped are sent if the socket takes them at once.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How many of the caller's slices go in one vectored write beside the held bytes.
const SLICES: usize = 15;

/// After the handshake, held writes wait for a flush while they add up to no more than
/// this (the records of a closing response, then its close_notify).
const HOLD: usize = 16 * 1024;

pub struct Corked {
    tcp: TcpStream,
    held: Vec<u8>,
    /// Until [`Corked::handshake_done`]: every write is held, and flushes wait for a read
    /// that would block.
    handshaking: bool,
    /// After the handshake, writes are held while this is set (see the module's doc).
    hold: Option<Arc<AtomicBool>>,
}

impl Corked {
    pub fn new(tcp: TcpStream) -> Self {
        Corked {
            tcp,
            held: Vec::new(),
            handshaking: true,
            hold: None,
        }
    }

    /// The handshake is over: flushes send what is held from now on.
    pub fn handshake_done(&mut self) {
        self.handshaking = false;
    }

    /// After the handshake, hold writes for a flush while `flag` is set.
    pub fn hold_when(&mut self, flag: Arc<AtomicBool>) {
        self.hold = Some(flag);
    }

    fn holding(&self) -> bool {
        self.handshaking
            || self
                .hold
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
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
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            // About to wait for the client, which may be waiting for what is held.
            Poll::Pending if !this.held.is_empty() => match this.poll_send_held(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Pending,
            },
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
        if this.holding() && (this.handshaking || this.held.len() + incoming <= HOLD) {
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

impl Drop for Corked {
    fn drop(&mut self) {
        // What the connection wrote last and never flushed (an alert tokio-rustls wrote
        // before giving up on a bad record): sent if the socket takes it now, as it would
        // have been without the hold.
        while !self.held.is_empty() {
            match self.tcp.try_write(&self.held) {
                Ok(n) if n > 0 => {
                    self.held.drain(..n);
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            tokio::time::timeout(Duration::from_millis(100), peer.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Gives `corked` a hold flag, unset, and returns it.
    fn flagged(corked: &mut Corked) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        corked.hold_when(flag.clone());
        flag
    }

    /// A read finds nothing (the peer has sent nothing) and waits: it is given up on.
    async fn nothing_to_read(corked: &mut Corked) {
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_millis(50), corked.read(&mut buf));
        assert!(read.await.is_err(), "the read should have found nothing");
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
        nothing_to_read(&mut corked).await;
        assert_eq!(arrived(&mut peer).await, b"flight");
        peer.write_all(b"finished").await.unwrap();
        let n = corked.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"finished");
    }

    #[tokio::test]
    async fn after_the_handshake_writes_go_at_once_unless_the_connection_asks_to_hold() {
        let (mut corked, mut peer) = pair().await;
        let hold = flagged(&mut corked);
        corked.write_all(b"tickets|").await.unwrap();
        corked.flush().await.unwrap();
        corked.handshake_done();
        assert_eq!(arrived(&mut peer).await, b"");
        // Not asked to hold: a write goes at once, what is still held first.
        corked.write_all(b"response").await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"tickets|response");
        // Asked to hold (a closing response): held until the shutdown, with what follows.
        hold.store(true, Ordering::Relaxed);
        corked.write_all(b"|last").await.unwrap();
        corked.write_all(b"|close_notify").await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"");
        corked.shutdown().await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"|last|close_notify");
    }

    #[tokio::test]
    async fn a_write_past_the_hold_limit_goes_out_at_once_after_the_held_bytes() {
        let (mut corked, mut peer) = pair().await;
        flagged(&mut corked).store(true, Ordering::Relaxed);
        corked.handshake_done();
        corked.write_all(b"head|").await.unwrap();
        let big = vec![b'x'; HOLD];
        corked.write_all(&big).await.unwrap();
        let got = arrived(&mut peer).await;
        assert_eq!(got.len(), 5 + HOLD, "sent without a flush");
        assert!(got.starts_with(b"head|x"));
    }

    #[tokio::test]
    async fn after_the_handshake_held_bytes_go_on_flush_shutdown_a_blocked_read_or_drop() {
        let (mut corked, mut peer) = pair().await;
        flagged(&mut corked).store(true, Ordering::Relaxed);
        corked.handshake_done();
        corked.write_all(b"a").await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"", "held for a flush");
        corked.flush().await.unwrap();
        assert_eq!(arrived(&mut peer).await, b"a");

        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"b").await.unwrap();
        corked.handshake_done();
        corked.shutdown().await.unwrap();
        assert_eq!(
            arrived(&mut peer).await,
            b"b",
            "sent, then the end of the stream"
        );

        // The tickets, held at the handshake's end: the client may wait for a packet.
        let (mut corked, mut peer) = pair().await;
        corked.write_all(b"tickets").await.unwrap();
        corked.handshake_done();
        nothing_to_read(&mut corked).await;
        assert_eq!(arrived(&mut peer).await, b"tickets");

        // Dropped unflushed: sent if the socket takes it at once.
        let (mut corked, mut peer) = pair().await;
        flagged(&mut corked).store(true, Ordering::Relaxed);
        corked.handshake_done();
        corked.write_all(b"alert").await.unwrap();
        drop(corked);
        assert_eq!(arrived(&mut peer).await, b"alert");
    }

    #[tokio::test]
    async fn large_held_bytes_and_many_slices_arrive_whole_and_in_order() {
        let (mut corked, mut peer) = pair().await;
        let held: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        corked.write_all(&held).await.unwrap();
        corked.handshake_done();
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

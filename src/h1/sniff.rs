//! Protocol sniffing on a connection without ALPN: HTTP/2's preface (h2c with prior
//! knowledge) told from an HTTP/1.x request.

use std::future::poll_fn;
use std::io;

use bytes::BytesMut;
use tokio::io::AsyncRead;

use super::Rewind;
use super::feed::fill;

/// The HTTP/2 connection preface (RFC 9113 §3.4): what a client speaking HTTP/2 without
/// ALPN (h2c with prior knowledge) sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection of unknown protocol turned out to speak.
#[derive(Debug)]
pub(crate) enum Sniffed<I> {
    /// HTTP/1.x, with the bytes read so far.
    H1(I, BytesMut),
    /// HTTP/2, replaying the bytes read so far.
    H2(Rewind<I>),
}

/// Read just enough of a connection to tell HTTP/2's preface from an HTTP/1.x request.
pub(crate) async fn sniff<I: AsyncRead + Unpin>(mut io: I) -> io::Result<Sniffed<I>> {
    let mut buf = BytesMut::new();
    loop {
        let n = poll_fn(|cx| fill(&mut io, cx, &mut buf)).await?;
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] || n == 0 {
            // Not the preface (or the client closed: the HTTP/1 side sees the end).
            return Ok(Sniffed::H1(io, buf));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Sniffed::H2(Rewind::new(buf.freeze(), io)));
        }
    }
}

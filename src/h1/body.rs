//! Request bodies on an HTTP/1.1 connection: the decoder (Content-Length or chunked) that
//! turns the read buffer into data, and the `Body` the pipeline reads them from.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::sync::{mpsc, oneshot};

use super::head::Framing;

/// A chunk-size line (with its extensions) or a trailer line longer than this, CRLF not
/// counted, is refused — however the line arrives: whole in one read or a byte at a time.
const MAX_LINE: usize = 4096;
/// Chunk extensions and the trailer section together, per body (they are read and dropped):
/// the extension bytes of every chunk-size line, plus every trailer line with its CRLF.
const MAX_OVERHEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data,
    End,
}

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes left of a Content-Length body.
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Bytes left of the current chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer lines until the empty line.
    Trailers,
    Done,
}

/// Decodes one request body (Content-Length or chunked) from the connection's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoder {
    state: State,
    /// Bytes of chunk extensions and trailers seen: both are read and dropped, so both are
    /// bounded (a body of 1-byte chunks with long extensions would cost far more to read
    /// than it carries).
    overhead: usize,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
        };
        Decoder { state, overhead: 0 }
    }

    /// Nothing more to read: the body's last byte has been taken.
    pub(crate) fn finished(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    /// Bytes left of a Content-Length body (None: chunked, length unknown).
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Take the next piece of body from `buf`: `Ok(None)` when more bytes are needed. Data
    /// is split off the buffer (shared, not copied) into `out`.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        out: &mut Bytes,
    ) -> Result<Option<Decoded>, &'static str> {
        loop {
            match self.state {
                State::Done | State::Length(0) => {
                    self.state = State::Done;
                    return Ok(Some(Decoded::End));
                }
                State::Length(n) | State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = n.min(buf.len() as u64);
                    *out = buf.split_to(take as usize).freeze();
                    self.state = match self.state {
                        State::Length(_) => State::Length(n - take),
                        _ if n == take => State::ChunkEnd,
                        _ => State::ChunkData(n - take),
                    };
                    return Ok(Some(Decoded::Data));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf, "chunk-size line too long")? else {
                        return Ok(None);
                    };
                    let (n, ext) = chunk_size_line(&line).ok_or("invalid chunk size")?;
                    self.add_overhead(ext)?;
                    self.state = if n == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(n)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk data not followed by CRLF");
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let Some(line) = take_line(buf, "trailer line too long")? else {
                        return Ok(None);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                    } else {
                        // With its CRLF: a section of many empty-ish lines costs its bytes.
                        self.add_overhead(line.len() + 2)?;
                    }
                }
            }
        }
    }

    fn add_overhead(&mut self, n: usize) -> Result<(), &'static str> {
        self.overhead += n;
        if self.overhead > MAX_OVERHEAD {
            return Err("chunk extensions and trailers too large");
        }
        Ok(())
    }
}

/// One CRLF-terminated line off the front of `buf`, without its CRLF. A CR anywhere else,
/// or an LF without its CR, is refused; so is a line over `MAX_LINE` (`too_long`).
///
/// Only the first `MAX_LINE + 2` bytes are looked at — room for the longest line allowed
/// and its CRLF — so the verdict on a line is the same whether it came in one read, with
/// what follows it, or a byte at a time; and a dripped line costs no rescans of a large
/// buffer.
fn take_line(buf: &mut BytesMut, too_long: &'static str) -> Result<Option<BytesMut>, &'static str> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) if i == 0 || buf[i - 1] != b'\r' => Err("line not terminated by CRLF"),
        Some(i) if buf[..i - 1].contains(&b'\r') => Err("bare CR in a chunk line"),
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i - 1);
            Ok(Some(line))
        }
        // No LF among MAX_LINE + 2 bytes: the line is longer than MAX_LINE.
        None if window.len() == MAX_LINE + 2 => Err(too_long),
        None => Ok(None),
    }
}

/// `chunk-size [ BWS ";" chunk-ext ]` (RFC 9112 §7.1): 1 to 16 hex digits, then nothing or
/// extensions. The size, and how many bytes of extensions followed it.
fn chunk_size_line(line: &[u8]) -> Option<(u64, usize)> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !rest.is_empty() && !ext.starts_with(b";") {
        return None;
    }
    let n = line[..digits].iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some((n << 4) | u64::from(v))
    })?;
    Some((n, rest.len()))
}

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    #[error("the client closed the connection before the end of the body")]
    Incomplete,
    #[error("reading the request body failed: {0}")]
    Io(#[from] io::Error),
}

/// A request body arriving on an HTTP/1.1 connection. The connection reads and decodes it
/// while the request is served and hands the data over, one chunk at a time.
#[derive(Debug)]
pub struct RequestBody {
    /// None for a request without a body.
    rx: Option<mpsc::Receiver<Result<Bytes, BodyError>>>,
    /// Fired at the first read: the connection then sends `100 Continue` (Expect).
    want: Option<oneshot::Sender<()>>,
    /// Bytes still to come, when the length was declared.
    left: Option<u64>,
}

impl RequestBody {
    pub(super) fn new(
        rx: mpsc::Receiver<Result<Bytes, BodyError>>,
        want: Option<oneshot::Sender<()>>,
        framing: Framing,
    ) -> Self {
        let left = match framing {
            Framing::Length(n) => Some(n),
            Framing::Empty => Some(0),
            Framing::Chunked => None,
        };
        RequestBody {
            rx: Some(rx),
            want,
            left,
        }
    }

    pub(super) fn empty() -> Self {
        RequestBody {
            rx: None,
            want: None,
            left: Some(0),
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(want) = self.want.take() {
            let _ = want.send(());
        }
        let Some(rx) = &mut self.rx else {
            return Poll::Ready(None);
        };
        match ready!(rx.poll_recv(cx)) {
            Some(Ok(data)) => {
                if let Some(left) = &mut self.left {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `wire` fed in pieces of `step` bytes: the data, and how it ended.
    fn decode_in_steps(
        framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> (Vec<u8>, Result<Vec<u8>, &'static str>) {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            let mut out = Bytes::new();
            match d.decode(&mut buf, &mut out) {
                Ok(Some(Decoded::Data)) => data.extend_from_slice(&out),
                Ok(Some(Decoded::End)) => return (data, Ok(buf.to_vec())),
                Ok(None) if fed >= wire.len() => return (data, Err("incomplete")),
                Ok(None) => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
                Err(e) => return (data, Err(e)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_read_sizes() {
        let wire = b"5;ext=1\r\nhello\r\nA ;e\r\n, world!!!\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, rest) = decode_in_steps(Framing::Chunked, wire, step);
            assert_eq!(data, b"hello, world!!!", "step {step}");
            // What follows the body (a pipelined request) is left in the buffer.
            let rest = rest.unwrap();
            assert!(b"NEXT".starts_with(&rest), "step {step}: {rest:?}");
        }
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let (data, rest) = decode_in_steps(Framing::Length(5), b"helloGET /", 100);
        assert_eq!(
            (data.as_slice(), rest.unwrap().as_slice()),
            (&b"hello"[..], &b"GET /"[..])
        );
        let (data, rest) = decode_in_steps(Framing::Length(5), b"hel", 1);
        assert_eq!((data.as_slice(), rest), (&b"hel"[..], Err("incomplete")));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for (wire, why) in [
            (&b"zz\r\nab\r\n0\r\n\r\n"[..], "invalid chunk size"),
            (b"\r\n", "invalid chunk size"),
            (b"11111111111111111\r\n", "invalid chunk size"),
            (b"2\r\nabXY0\r\n\r\n", "chunk data not followed by CRLF"),
            (b"2\nab\r\n", "line not terminated by CRLF"),
            (b" 5\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5 x\r\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5\r\r\nhello\r\n0\r\n\r\n", "bare CR in a chunk line"),
        ] {
            assert_eq!(
                decode_in_steps(Framing::Chunked, wire, 64).1,
                Err(why),
                "{wire:?}"
            );
        }
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..(MAX_OVERHEAD / 100 + 1) {
            trailers.extend_from_slice(&[b'x'; 100]);
            trailers.extend_from_slice(b"\r\n");
        }
        let too_much = Err("chunk extensions and trailers too large");
        assert_eq!(
            decode_in_steps(Framing::Chunked, &trailers, 4096).1,
            too_much
        );
        // One data byte per chunk, each with a long extension: bounded per body.
        let mut exts = Vec::new();
        for _ in 0..(MAX_OVERHEAD / 1000 + 1) {
            exts.extend_from_slice(format!("1;{}\r\nx\r\n", "e".repeat(1000)).as_bytes());
        }
        assert_eq!(decode_in_steps(Framing::Chunked, &exts, 4096).1, too_much);
    }

    /// Decode `wire` whole (one read) and a byte at a time: both must end the same way.
    fn both_ways(wire: &[u8]) -> Result<Vec<u8>, &'static str> {
        let (whole_data, whole) = decode_in_steps(Framing::Chunked, wire, wire.len());
        let (byte_data, by_byte) = decode_in_steps(Framing::Chunked, wire, 1);
        assert_eq!(whole, by_byte, "whole vs byte by byte");
        assert_eq!(whole_data, byte_data);
        whole.map(|_| whole_data)
    }

    /// A chunk-size line of exactly `len` bytes (CRLF not counted): `1;eeee…`.
    fn size_line(len: usize) -> Vec<u8> {
        let mut line = b"1;".to_vec();
        line.resize(len, b'e');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        line
    }

    /// The last chunk, then a trailer section whose lines (CRLFs included) are `total`
    /// bytes, each line at most `line` bytes, then the empty line.
    fn trailer_section(total: usize, line: usize) -> Vec<u8> {
        let mut wire = b"1\r\nx\r\n0\r\n".to_vec();
        let mut left = total;
        while left > 0 {
            let n = left.min(line + 2);
            assert!(n >= 5, "a trailer line needs a name");
            wire.extend_from_slice(b"t:");
            wire.extend(std::iter::repeat_n(b'v', n - 4));
            wire.extend_from_slice(b"\r\n");
            left -= n;
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    #[test]
    fn a_chunk_size_line_over_its_limit_is_refused_however_it_arrives() {
        assert_eq!(both_ways(&size_line(MAX_LINE)), Ok(b"x".to_vec()));
        assert_eq!(
            both_ways(&size_line(MAX_LINE + 1)),
            Err("chunk-size line too long")
        );
        // Digits only, no extension: the same limit.
        let mut digits = vec![b'0'; MAX_LINE + 1];
        digits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(both_ways(&digits), Err("chunk-size line too long"));
        // No line end at all: refused once the limit is passed, not buffered on.
        let endless = vec![b'1'; MAX_LINE + 2];
        assert_eq!(both_ways(&endless), Err("chunk-size line too long"));
    }

    #[test]
    fn a_trailer_line_over_its_limit_is_refused_however_it_arrives() {
        assert_eq!(
            both_ways(&trailer_section(MAX_LINE + 2, MAX_LINE)),
            Ok(b"x".to_vec())
        );
        assert_eq!(
            both_ways(&trailer_section(MAX_LINE + 3, MAX_LINE + 1)),
            Err("trailer line too long")
        );
    }

    #[test]
    fn the_trailer_section_over_its_limit_is_refused_however_it_arrives() {
        assert_eq!(
            both_ways(&trailer_section(MAX_OVERHEAD, 1000)),
            Ok(b"x".to_vec())
        );
        assert_eq!(
            both_ways(&trailer_section(MAX_OVERHEAD + 1, 1000)),
            Err("chunk extensions and trailers too large")
        );
    }

    #[test]
    fn extensions_over_their_budget_are_refused_however_they_arrive() {
        // Chunk-size lines `1;eee…` whose extensions (from the `;`) total `total` bytes.
        let exts = |total: usize| {
            let mut wire = Vec::new();
            let mut left = total;
            while left > 0 {
                let n = left.min(1000);
                wire.push(b'1');
                wire.push(b';');
                wire.extend(std::iter::repeat_n(b'e', n - 1));
                wire.extend_from_slice(b"\r\nx\r\n");
                left -= n;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            wire
        };
        assert!(both_ways(&exts(MAX_OVERHEAD)).is_ok());
        assert_eq!(
            both_ways(&exts(MAX_OVERHEAD + 1)),
            Err("chunk extensions and trailers too large")
        );
    }

    #[test]
    fn chunk_sizes_are_hex_digits_only() {
        for wire in [
            &b"0x5\r\nhello\r\n0\r\n\r\n"[..],
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"5\t\r\nhello\r\n0\r\n\r\n",
        ] {
            assert_eq!(both_ways(wire), Err("invalid chunk size"), "{wire:?}");
        }
        // A bare LF ends no line.
        assert_eq!(
            both_ways(b"5\nhello\r\n0\r\n\r\n"),
            Err("line not terminated by CRLF")
        );
        assert_eq!(
            both_ways(b"0\r\nt: 1\n\r\n"),
            Err("line not terminated by CRLF")
        );
    }
}

//! The response on the wire: its head (status line, the response's headers, `Date`, the
//! framing and `Connection` verdict this side decides) and its body's frames in that
//! framing (length, chunked or until close), written in as few writes as they allow.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSlice};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version, header};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::debug;

/// Data frames up to this size are copied behind the response head (one write for both);
/// larger ones are written from where they are.
const INLINE_DATA: usize = 16 * 1024;

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// HEAD, 1xx, 204, 304: no body whatever the headers say.
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client, length unknown: the body ends when the connection closes.
    Close,
}

/// Write a response head: the status line, the response's own headers (less the framing
/// ones this side decides), then `Date`, the framing and the `Connection` verdict.
pub(super) fn head(
    dst: &mut Vec<u8>,
    version: Version,
    status: StatusCode,
    headers: &HeaderMap,
    framing: BodyFraming,
    keep_alive: bool,
    upgrading: bool,
) {
    dst.extend_from_slice(if version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    dst.extend_from_slice(status.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    dst.extend_from_slice(b"\r\n");
    let mut has_date = false;
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING || (name == header::CONNECTION && !upgrading) {
            continue;
        }
        // Kept as sent only for HEAD and 304: it then describes the body a GET would get.
        // 1xx and 204 never carry one; otherwise the length written is the one sent.
        if name == header::CONTENT_LENGTH
            && (framing != BodyFraming::None
                || status.is_informational()
                || status == StatusCode::NO_CONTENT)
        {
            continue;
        }
        has_date |= name == header::DATE;
        line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    if !has_date {
        DATE.with_borrow_mut(|d| line(dst, b"date", d.now()));
    }
    match framing {
        BodyFraming::Length(n) => line(
            dst,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        BodyFraming::Chunked => line(dst, b"transfer-encoding", b"chunked"),
        _ => {}
    }
    if !upgrading {
        if !keep_alive {
            line(dst, b"connection", b"close");
        } else if version == Version::HTTP_10 {
            line(dst, b"connection", b"keep-alive");
        }
    }
    dst.extend_from_slice(b"\r\n");
}

pub(super) fn line(dst: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    dst.extend_from_slice(name);
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// Whether `Connection: close` is among the response's own headers.
pub(super) fn asks_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

/// The IMF-fixdate of the current second, formatted once per second per thread.
struct CachedDate {
    second: u64,
    text: Vec<u8>,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, text: Vec::new() }) };
}

/// Frames of a response body onto the wire.
pub(super) struct BodyWriter {
    pub(super) framing: BodyFraming,
    pub(super) sent: u64,
    pub(super) ended: bool,
}

impl BodyWriter {
    /// Add a polled frame to `out`; a data frame too large to copy is returned instead, to
    /// be written after `out`. An error of the body ends the connection (the client sees
    /// a truncated body, as it would from the replica).
    pub(super) fn frame<E: fmt::Display>(
        &mut self,
        frame: Option<Result<http_body::Frame<Bytes>, E>>,
        out: &mut Vec<u8>,
    ) -> io::Result<Option<Bytes>> {
        let frame = match frame {
            None => {
                self.ended = true;
                return Ok(None);
            }
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                debug!(error = %e, "response body failed: closing");
                return Err(io::Error::other(format!("response body failed: {e}")));
            }
        };
        let mut data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let (Ok(trailers), BodyFraming::Chunked) = (frame.into_trailers(), self.framing)
                {
                    out.extend_from_slice(b"0\r\n");
                    for (name, value) in &trailers {
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    self.ended = true;
                    self.framing = BodyFraming::None;
                }
                return Ok(None);
            }
        };
        if data.is_empty() {
            return Ok(None);
        }
        match self.framing {
            BodyFraming::None => return Ok(None),
            BodyFraming::Length(n) => {
                // Never more than announced: the rest would be read as the next response.
                let room = n.saturating_sub(self.sent);
                data.truncate(room.min(data.len() as u64) as usize);
            }
            BodyFraming::Chunked => {
                out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
            BodyFraming::Close => {}
        }
        self.sent += data.len() as u64;
        if data.len() > INLINE_DATA {
            return Ok(Some(data));
        }
        out.extend_from_slice(&data);
        if self.framing == BodyFraming::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        Ok(None)
    }

    /// What follows a data frame written on its own: its chunk's CRLF.
    pub(super) fn suffix(&self) -> &'static [u8] {
        if self.framing == BodyFraming::Chunked {
            b"\r\n"
        } else {
            b""
        }
    }

    /// The end of the body: the last chunk, for a chunked one.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        if self.framing == BodyFraming::Chunked {
            out.extend_from_slice(b"0\r\n\r\n");
            self.framing = BodyFraming::None;
        }
    }
}

pub(super) async fn write_all_vectored<I: AsyncWrite + Unpin>(
    io: &mut I,
    parts: [&[u8]; 3],
) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut written = 0;
    while written < total {
        let mut skip = written;
        let mut slices = [IoSlice::new(&[]); 3];
        let mut n = 0;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices[n] = IoSlice::new(&p[skip..]);
            skip = 0;
            n += 1;
        }
        match io.write_vectored(&slices[..n]).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            w => written += w,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue};

    use super::*;

    fn encoded(
        version: Version,
        headers: &[(&str, &str)],
        framing: BodyFraming,
        keep_alive: bool,
    ) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        head(
            &mut out,
            version,
            StatusCode::OK,
            &map,
            framing,
            keep_alive,
            false,
        );
        let text = String::from_utf8(out).unwrap();
        // The date changes; its shape is checked once, then it is left out.
        let date = text.lines().find(|l| l.starts_with("date: ")).unwrap();
        assert!(
            date.ends_with(" GMT") && date.len() == "date: ".len() + 29,
            "{date}"
        );
        text.lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn response_heads_carry_the_framing_and_connection_verdict() {
        assert_eq!(
            encoded(
                Version::HTTP_11,
                &[("x-a", "1"), ("connection", "keep-alive")],
                BodyFraming::Length(2),
                true
            ),
            "HTTP/1.1 200 OK\nx-a: 1\ncontent-length: 2\n"
        );
        assert_eq!(
            encoded(
                Version::HTTP_11,
                &[("transfer-encoding", "chunked"), ("content-length", "9")],
                BodyFraming::Chunked,
                false
            ),
            "HTTP/1.1 200 OK\ntransfer-encoding: chunked\nconnection: close\n"
        );
        assert_eq!(
            encoded(
                Version::HTTP_10,
                &[("content-length", "7")],
                BodyFraming::Length(7),
                true
            ),
            "HTTP/1.0 200 OK\ncontent-length: 7\nconnection: keep-alive\n"
        );
        assert_eq!(
            encoded(Version::HTTP_10, &[], BodyFraming::Close, false),
            "HTTP/1.0 200 OK\nconnection: close\n"
        );
        // A HEAD answer keeps the length a GET would have had.
        assert_eq!(
            encoded(
                Version::HTTP_11,
                &[("content-length", "42")],
                BodyFraming::None,
                true
            ),
            "HTTP/1.1 200 OK\ncontent-length: 42\n"
        );
    }
}

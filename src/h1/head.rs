//! HTTP/1.1 request heads: parsed (httparse) into `http` types without copying — every
//! header value is a slice of the read buffer — with the framing and connection facts the
//! codec acts on, and the request-smuggling shapes refused.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version, header};

use crate::message::content_length::Lengths;

/// More header lines than this is a 431, as hyper's default.
pub(super) const MAX_HEADERS: usize = 100;

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// What the connection needs to know about a request beyond its `http` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    /// An `Upgrade` header was sent (whether it is honoured is the pipeline's call).
    pub(super) upgrade: bool,
}

/// Why a request head cannot be served; the status each deserves is noted, the answer is
/// the caller's (`Refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Longer than the connection's head limit, or too many header lines: 431.
    TooLarge,
    /// Not a valid HTTP/1.x request head: 400, with the reason.
    Bad(&'static str),
    /// Valid, but asks for what doorman does not do: 501.
    Unsupported(&'static str),
}

/// Parse the request head at the start of `input`. `Ok(None)`: not complete yet (`input`
/// untouched). On success `input` is advanced past the head, whose bytes stay shared by the
/// header values (no copy); what follows — a body, the next request — is what is left.
pub(super) fn parse(
    input: &mut Bytes,
    max: usize,
) -> Result<Option<(Request<()>, Meta)>, HeadError> {
    let bytes = input.clone();
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(&bytes, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() > max => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Bad("unsupported HTTP version")),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    if len > max {
        return Err(HeadError::TooLarge);
    }
    // A complete parse fills all three.
    let (Some(m), Some(path), Some(v)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("malformed request head"));
    };
    let method = Method::from_bytes(m.as_bytes()).map_err(|_| HeadError::Bad("invalid method"))?;
    // A fragment is never part of a request target (RFC 9112 §3.2); the URI type would
    // silently drop it, and a replica reading raw bytes might not.
    if path.contains('#') {
        return Err(HeadError::Bad("invalid request target"));
    }
    let uri = Uri::from_maybe_shared(bytes.slice_ref(path.as_bytes()))
        .map_err(|_| HeadError::Bad("invalid request target"))?;
    let version = if v == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };

    // Room for what the pipeline adds (X-Forwarded-*, X-Request-Id) without a regrow.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 6);
    let mut lengths = Lengths::default();
    let mut hosts = 0u32;
    let mut codings = Codings::default();
    let mut transfer_encoding = false;
    let (mut close, mut keep_alive_token, mut expect_continue, mut upgrade) =
        (false, false, false, false);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::Bad("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(h.value))
            .map_err(|_| HeadError::Bad("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            lengths
                .add(value.as_bytes())
                .map_err(|e| HeadError::Bad(e.reason()))?;
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            codings.add(value.as_bytes()).map_err(HeadError::Bad)?;
        } else if name == header::HOST {
            hosts += 1;
        } else if name == header::CONNECTION {
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::UPGRADE {
            upgrade = true;
        }
        headers.append(name, value);
    }
    if hosts > 1 {
        // Two proxies could route the same request by different hosts.
        return Err(HeadError::Bad("repeated Host header"));
    }
    let framing = match (transfer_encoding, lengths.value()) {
        // Both: a classic request-smuggling vector; refused rather than guessed.
        (true, Some(_)) => return Err(HeadError::Bad("both Content-Length and Transfer-Encoding")),
        (true, None) if version == Version::HTTP_10 => {
            return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        // The body's length cannot be known (RFC 9112 §6.3): 400, then close.
        (true, None) if !codings.chunked_last => {
            return Err(HeadError::Bad(
                "Transfer-Encoding does not end with chunked",
            ));
        }
        (true, None) if codings.count == 1 => Framing::Chunked,
        // gzip, chunked (and chunked twice): a coding doorman would have to undo.
        (true, None) => {
            return Err(HeadError::Unsupported("unsupported Transfer-Encoding"));
        }
        (false, Some(0) | None) => Framing::Empty,
        (false, Some(n)) => Framing::Length(n),
    };
    if lengths.repeated() {
        // Equal values ("5" and "05"): one canonical value goes on.
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(lengths.value().unwrap_or(0)),
        );
    }
    // After a CONNECT, the client's next bytes are meant for a tunnel, not more requests:
    // doorman opens no tunnels (the pipeline answers 405), and reading those bytes as
    // requests would let a client smuggle past whatever saw them as opaque tunnel data.
    // The connection ends after the answer. Any letter case: the pipeline refuses them all.
    let keep_alive = !method.as_str().eq_ignore_ascii_case("CONNECT")
        && match version {
            Version::HTTP_11 => !close,
            _ => keep_alive_token && !close,
        };
    let meta = Meta {
        framing,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
        // An upgrade with a body would leave the body's bytes to the tunnel.
        upgrade: upgrade && version == Version::HTTP_11 && framing == Framing::Empty,
    };
    input.advance(len);
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some((req, meta)))
}

/// The codings a message's Transfer-Encoding field lines list, over all its lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Codings {
    /// Codings named so far.
    pub(super) count: u32,
    /// Whether the last one named is `chunked`.
    pub(super) chunked_last: bool,
}

impl Codings {
    /// Add one field line. An empty list element (`chunked,`, `,chunked`, `a,,b`, an empty
    /// value) is refused: RFC 9110 §5.6.1 lets a recipient skip them, but a parser that
    /// does not — or that reads `chunked,` as "not ending in chunked" — would frame the body
    /// differently; refusing costs a well-behaved client nothing.
    pub(super) fn add(&mut self, value: &[u8]) -> Result<(), &'static str> {
        for coding in value.split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                return Err("empty element in Transfer-Encoding");
            }
            self.count = self.count.saturating_add(1);
            self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed_with(raw: &str, max: usize) -> Result<Option<Meta>, HeadError> {
        parse(&mut Bytes::copy_from_slice(raw.as_bytes()), max).map(|p| p.map(|(_, meta)| meta))
    }

    fn parsed(raw: &str) -> Result<Option<Meta>, HeadError> {
        parsed_with(raw, 16 * 1024)
    }

    fn meta(raw: &str) -> Meta {
        parsed(raw).unwrap().unwrap()
    }

    #[test]
    fn a_complete_head_is_split_off_and_the_rest_stays() {
        let mut buf = Bytes::from_static(
            b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabcGET",
        );
        let (req, meta) = parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(&buf[..], b"abcGET");
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()["host"], "x");
        let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(
            meta,
            Meta {
                framing: Framing::Length(3),
                keep_alive: true,
                expect_continue: false,
                upgrade: false
            }
        );
    }

    #[test]
    fn a_partial_head_waits_and_an_oversized_one_is_431() {
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(100));
        assert_eq!(parsed_with(&long, 64), Err(HeadError::TooLarge));
        let complete = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(100));
        assert_eq!(parsed_with(&complete, 64), Err(HeadError::TooLarge));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        assert_eq!(
            parsed(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_ambiguity() {
        assert_eq!(meta("GET / HTTP/1.1\r\n\r\n").framing, Framing::Empty);
        assert_eq!(
            meta("POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n").framing,
            Framing::Empty
        );
        assert_eq!(
            meta("POST / HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n").framing,
            Framing::Chunked
        );
        // A coding besides chunked would have to be undone before forwarding: 501.
        for te in ["gzip, chunked", "chunked, chunked"] {
            let raw = format!("POST / HTTP/1.1\r\ntransfer-encoding: {te}\r\n\r\n");
            assert_eq!(
                parsed(&raw),
                Err(HeadError::Unsupported("unsupported Transfer-Encoding"))
            );
        }
        let split =
            "POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            parsed(split),
            Err(HeadError::Unsupported("unsupported Transfer-Encoding"))
        );
        assert_eq!(
            meta("POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        for (raw, why) in [
            (
                "POST / HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                "conflicting Content-Length headers",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: +5\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 5, 5\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\ncontent-length: 99999999999999999999\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                "Transfer-Encoding does not end with chunked",
            ),
            (
                "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
                "Transfer-Encoding in an HTTP/1.0 request",
            ),
            ("GET / HTTP/2.0\r\n\r\n", "unsupported HTTP version"),
            (
                "GET / HTTP/1.1\r\nhost: a\r\nHost: b\r\n\r\n",
                "repeated Host header",
            ),
            ("GET\x01 / HTTP/1.1\r\n\r\n", "malformed request head"),
        ] {
            assert_eq!(parsed(raw), Err(HeadError::Bad(why)), "{raw:?}");
        }
    }

    #[test]
    fn content_length_follows_the_one_shared_parser() {
        for cl in ["-1", "+5", "1 0", "0x5", "5,5", "", "18446744073709551616"] {
            let raw = format!("POST / HTTP/1.1\r\ncontent-length: {cl}\r\n\r\n");
            assert_eq!(
                parsed(&raw),
                Err(HeadError::Bad("invalid Content-Length")),
                "{cl:?}"
            );
        }
        // Leading and trailing whitespace is the field's OWS, not part of the value.
        assert_eq!(
            meta("POST / HTTP/1.1\r\ncontent-length:   7  \r\n\r\n").framing,
            Framing::Length(7)
        );
        assert_eq!(
            meta("POST / HTTP/1.1\r\ncontent-length: 18446744073709551615\r\n\r\n").framing,
            Framing::Length(u64::MAX)
        );
    }

    #[test]
    fn transfer_encoding_lists_with_empty_elements_are_400() {
        for te in [
            "chunked,",
            ",chunked",
            "chunked,,",
            "chunked, ,",
            "gzip,,chunked",
            "",
            " , ",
        ] {
            let raw = format!("POST / HTTP/1.1\r\ntransfer-encoding: {te}\r\n\r\n");
            assert_eq!(
                parsed(&raw),
                Err(HeadError::Bad("empty element in Transfer-Encoding")),
                "{te:?}"
            );
        }
        // Over two lines, each must be a proper list.
        let split = "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \r\n\r\n";
        assert_eq!(
            parsed(split),
            Err(HeadError::Bad("empty element in Transfer-Encoding"))
        );
        // Anything but exactly one final chunked stays refused as before.
        for (te, want) in [
            (
                "identity",
                HeadError::Bad("Transfer-Encoding does not end with chunked"),
            ),
            (
                "chunked, identity",
                HeadError::Bad("Transfer-Encoding does not end with chunked"),
            ),
            (
                "chunked, chunked",
                HeadError::Unsupported("unsupported Transfer-Encoding"),
            ),
        ] {
            let raw = format!("POST / HTTP/1.1\r\ntransfer-encoding: {te}\r\n\r\n");
            assert_eq!(parsed(&raw), Err(want), "{te:?}");
        }
    }

    #[test]
    fn a_partial_head_leaves_its_input_and_repeated_lengths_go_on_as_one() {
        let mut input = Bytes::from_static(b"GET / HTTP/1.1\r\nhost: x\r\n");
        assert_eq!(parse(&mut input, 1024).map(|p| p.is_none()), Ok(true));
        assert_eq!(&input[..], b"GET / HTTP/1.1\r\nhost: x\r\n");
        let mut input = Bytes::from_static(
            b"POST / HTTP/1.1\r\ncontent-length: 05\r\ncontent-length: 5\r\n\r\nhello",
        );
        let (req, meta) = parse(&mut input, 1024).unwrap().unwrap();
        assert_eq!(meta.framing, Framing::Length(5));
        let lengths: Vec<_> = req.headers().get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"]);
        assert_eq!(&input[..], b"hello");
    }

    #[test]
    fn keep_alive_expect_and_upgrade_are_read_from_the_headers() {
        assert!(meta("GET / HTTP/1.1\r\n\r\n").keep_alive);
        assert!(!meta("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!meta("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(meta("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        assert!(
            meta("PUT / HTTP/1.1\r\nexpect: 100-Continue\r\ncontent-length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(
            !meta("PUT / HTTP/1.0\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(
            meta("GET / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n").upgrade
        );
        // Never with a body: its bytes would go down the tunnel.
        assert!(!meta("GET / HTTP/1.1\r\nupgrade: websocket\r\ncontent-length: 2\r\n\r\n").upgrade);
    }

    #[test]
    fn a_connect_request_ends_its_connection() {
        let mut input = Bytes::from_static(
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        let (req, m) = parse(&mut input, 1024).unwrap().unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert!(!m.keep_alive);
        assert!(!meta("CONNECT a:443 HTTP/1.1\r\nconnection: keep-alive\r\n\r\n").keep_alive);
        assert!(!meta("CONNECT a:443 HTTP/1.0\r\nconnection: keep-alive\r\n\r\n").keep_alive);
    }
}

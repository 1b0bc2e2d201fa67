//! The upstream side's wire format: a request head written for a replica, and a replica's
//! response head parsed (httparse) into `http` types, every header value a slice of the
//! bytes read (no copy). The connections themselves are `upstream`'s (`pool`, `exchange`,
//! `body`).

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header};

use super::head::{Codings, MAX_HEADERS};
use crate::message::content_length::Lengths;

/// How the request body is delimited on the way to the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body. Methods that usually carry one get `Content-Length: 0`, which some servers
    /// require (411 otherwise).
    None,
    Length(u64),
    Chunked,
}

/// Write a request head: the request line (origin-form target), `host` when given (a request
/// that came without one), the request's headers less the framing ones, the `extra` lines
/// (what the proxy adds), then the framing this side decided.
pub(crate) fn encode_request(
    dst: &mut Vec<u8>,
    method: &Method,
    target: &str,
    host: Option<&[u8]>,
    headers: &HeaderMap,
    extra: &[(&str, &[u8])],
    framing: RequestFraming,
) {
    dst.extend_from_slice(method.as_str().as_bytes());
    dst.push(b' ');
    dst.extend_from_slice(target.as_bytes());
    dst.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        super::encode::line(dst, b"host", host);
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        super::encode::line(dst, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in extra {
        super::encode::line(dst, name.as_bytes(), value);
    }
    match framing {
        RequestFraming::None => {
            let bodiless = matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::DELETE
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::CONNECT
            );
            if !bodiless {
                super::encode::line(dst, b"content-length", b"0");
            }
        }
        RequestFraming::Length(n) => super::encode::line(
            dst,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        RequestFraming::Chunked => super::encode::line(dst, b"transfer-encoding", b"chunked"),
    }
    dst.extend_from_slice(b"\r\n");
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// HEAD, 1xx, 204, 304, or `Content-Length: 0`.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the replica closes.
    Close,
}

/// What the connection needs to know about a response beyond its `http` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResponseMeta {
    pub(crate) framing: ResponseFraming,
    /// The connection may carry another request once this response has been read.
    pub(crate) keep_alive: bool,
}

/// Parse the response head at the start of `buf`. `Ok(None)`: not complete yet (`buf`
/// untouched). On success the head's bytes are split off `buf` (shared by the header
/// values), leaving what follows: the body's first bytes.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    max: usize,
) -> Result<Option<(Response<()>, ResponseMeta)>, &'static str> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Partial) if buf.len() <= max => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err("response head too large"),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(code), Some(v)) = (resp.code, resp.version) else {
        return Err("malformed response head");
    };
    let status = StatusCode::from_u16(code).map_err(|_| "invalid status code")?;
    let version = if v == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names now; values once the head's bytes are split off and shared.
    let base = buf.as_ptr() as usize;
    let mut fields: Vec<(HeaderName, Range<usize>)> = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "invalid header name")?;
        let start = h.value.as_ptr() as usize - base;
        fields.push((name, start..start + h.value.len()));
    }
    let head = buf.split_to(len).freeze();

    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut lengths = Lengths::default();
    let (mut transfer_encoding, mut codings) = (false, Codings::default());
    let (mut close, mut keep_alive_token) = (false, false);
    for (name, range) in fields {
        let value = HeaderValue::from_maybe_shared(head.slice(range))
            .map_err(|_| "invalid header value")?;
        if name == header::CONTENT_LENGTH {
            // The same rules as for requests: a replica's framing is as untrusted as a
            // client's (the caller answers 502 and does not reuse the connection).
            lengths.add(value.as_bytes()).map_err(|e| e.reason())?;
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            codings.add(value.as_bytes())?;
            // This hop's framing, decided again on the next.
            continue;
        } else if name == header::CONNECTION {
            let mut names_others = false;
            for token in value.as_bytes().split(|&b| b == b',') {
                let token = token.trim_ascii();
                let c = token.eq_ignore_ascii_case(b"close");
                let k = token.eq_ignore_ascii_case(b"keep-alive");
                close |= c;
                keep_alive_token |= k;
                names_others |= !c && !k && !token.is_empty();
            }
            // `keep-alive` or `close` alone names no other header: nothing for the hop-by-hop
            // stripping to read, so the header is not kept (one map insert and removal less
            // on nearly every response). One naming headers stays, for the stripping.
            if !names_others {
                continue;
            }
        } else if name.as_str() == "keep-alive" {
            continue;
        }
        headers.append(name, value);
    }
    let mut keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive_token && !close,
    };
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        ResponseFraming::Empty
    } else if transfer_encoding {
        // A coding besides chunked (gzip, chunked) would have to be undone here, or passed
        // on with its header: refused, as nginx does ("unknown Transfer-Encoding").
        if codings.count != 1 || !codings.chunked_last {
            return Err("unsupported Transfer-Encoding");
        }
        // Transfer-Encoding overrides Content-Length, which must then go (RFC 9112 §6.3),
        // and a message with both may be an attempt at smuggling: the connection is not
        // reused after it.
        if lengths.value().is_some() {
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        ResponseFraming::Chunked
    } else {
        match lengths.value() {
            Some(0) => ResponseFraming::Empty,
            Some(n) => ResponseFraming::Length(n),
            None => ResponseFraming::Close,
        }
    };
    if framing == ResponseFraming::Close {
        keep_alive = false;
    }
    if lengths.repeated() && headers.contains_key(header::CONTENT_LENGTH) {
        // Equal values ("5" and "05"): one canonical value goes on (HEAD and 304 answers
        // keep theirs for the client).
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(lengths.value().unwrap_or(0)),
        );
    }
    let mut r = Response::new(());
    *r.status_mut() = status;
    *r.version_mut() = version;
    *r.headers_mut() = headers;
    Ok(Some((
        r,
        ResponseMeta {
            framing,
            keep_alive,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(
        raw: &str,
        head_request: bool,
    ) -> Result<Option<(Response<()>, ResponseMeta)>, &'static str> {
        let mut buf = BytesMut::from(raw);
        parse_response(&mut buf, head_request, 8192)
    }

    #[test]
    fn a_keep_alive_response_with_its_body_behind() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nokHTTP",
        );
        let (r, meta) = parse_response(&mut buf, false, 8192).unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["server"], "nginx");
        assert_eq!(r.headers()["content-length"], "2");
        // This hop's own: not kept.
        assert!(r.headers().get("connection").is_none());
        assert_eq!(r.headers().len(), 2);
        assert_eq!(
            meta,
            ResponseMeta {
                framing: ResponseFraming::Length(2),
                keep_alive: true
            }
        );
        assert_eq!(&buf[..], b"okHTTP");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let framing = |raw: &str, head| parse(raw, head).unwrap().unwrap().1;
        let chunked = framing(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(chunked.framing, ResponseFraming::Chunked);
        assert!(chunked.keep_alive);
        // Both: chunked wins, and the connection is not reused.
        let both = framing(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!(
            (both.framing, both.keep_alive),
            (ResponseFraming::Chunked, false)
        );
        let (r, _) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert!(r.headers().get("content-length").is_none());
        let until_close = framing("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(
            (until_close.framing, until_close.keep_alive),
            (ResponseFraming::Close, false)
        );
        for te in ["gzip", "gzip, chunked", "chunked, chunked"] {
            let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                parse(&raw, false).err(),
                Some("unsupported Transfer-Encoding"),
                "{te}"
            );
        }
        for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let m = framing(
                &format!("HTTP/1.1 {status}\r\nContent-Length: 9\r\n\r\n"),
                false,
            );
            assert_eq!(m.framing, ResponseFraming::Empty, "{status}");
        }
        let head = framing("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        assert_eq!(
            (head.framing, head.keep_alive),
            (ResponseFraming::Empty, true)
        );
        let closing = framing(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert_eq!(
            (closing.framing, closing.keep_alive),
            (ResponseFraming::Length(1), false)
        );
        // A Connection header naming another header stays, for the hop-by-hop stripping.
        let (r, m) = parse(
            "HTTP/1.1 200 OK\r\nConnection: x-trace\r\nx-trace: 1\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (r.headers()["connection"].as_bytes(), m.keep_alive),
            (&b"x-trace"[..], true)
        );
        let old = framing("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!old.keep_alive);
        let old_kept = framing(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(old_kept.keep_alive);
    }

    #[test]
    fn bad_heads_are_refused_and_partial_ones_wait() {
        assert!(matches!(
            parse("HTTP/1.1 200 OK\r\nContent-", false),
            Ok(None)
        ));
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            )
            .err(),
            Some("conflicting Content-Length headers")
        );
        // The shared Content-Length rules (message::content_length), as for requests.
        for cl in ["-1", "+5", "1 0", "0x5", "5, 5", "", "18446744073709551616"] {
            let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\n");
            assert_eq!(
                parse(&raw, false).err(),
                Some("invalid Content-Length"),
                "{cl:?}"
            );
        }
        // Even where no body follows: the head itself is not to be trusted.
        assert_eq!(
            parse(
                "HTTP/1.1 204 No Content\r\nContent-Length: x\r\n\r\n",
                false
            )
            .err(),
            Some("invalid Content-Length")
        );
        let (r, m) = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 05\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.framing, ResponseFraming::Length(5));
        let lengths: Vec<_> = r.headers().get_all("content-length").iter().collect();
        assert_eq!(lengths, ["5"]);
        for te in [
            "chunked,",
            ",chunked",
            "chunked,,",
            "gzip,,chunked",
            " , chunked",
        ] {
            let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(
                parse(&raw, false).err(),
                Some("empty element in Transfer-Encoding"),
                "{te:?}"
            );
        }
        assert_eq!(
            parse("SSH-2.0-OpenSSH\r\n\r\n", false).err(),
            Some("malformed response head")
        );
        let mut long = BytesMut::from("HTTP/1.1 200 OK\r\nX: ");
        long.extend_from_slice(&[b'a'; 100]);
        assert_eq!(
            parse_response(&mut long, false, 64).err(),
            Some("response head too large")
        );
    }

    /// A request head encoded for `method` on `/` (or `target`), as the client writes it.
    fn head(
        method: Method,
        target: &str,
        host: Option<&[u8]>,
        headers: &HeaderMap,
        extra: &[(&str, &[u8])],
        framing: RequestFraming,
    ) -> String {
        let mut out = Vec::new();
        encode_request(&mut out, &method, target, host, headers, extra, framing);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_heads_carry_the_framing_decided_here() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("app"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let rid: &[(&str, &[u8])] = &[("x-request-id", b"r1")];
        assert_eq!(
            head(Method::GET, "/a?b", None, &h, rid, RequestFraming::None),
            "GET /a?b HTTP/1.1\r\nhost: app\r\nx-request-id: r1\r\n\r\n"
        );
        let no_headers = HeaderMap::new();
        assert_eq!(
            head(
                Method::GET,
                "/",
                Some(b"10.0.0.1:80"),
                &no_headers,
                &[],
                RequestFraming::None
            ),
            "GET / HTTP/1.1\r\nhost: 10.0.0.1:80\r\n\r\n"
        );
        assert_eq!(
            head(Method::POST, "/", None, &h, &[], RequestFraming::None),
            "POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            head(Method::PUT, "/", None, &h, &[], RequestFraming::Length(12)),
            "PUT / HTTP/1.1\r\nhost: app\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!(
            head(Method::POST, "/", None, &h, &[], RequestFraming::Chunked),
            "POST / HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}

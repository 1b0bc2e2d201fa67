//! The upstream response parser (`h1::client::parse_response`) and the body decoder after
//! it, as `upstream::exchange` and `upstream::body` use them: interim 1xx answers skipped,
//! the body read to its end, the connection reused only when the response allows it and
//! nothing follows the body.
//!
//! Checked: an incomplete head leaves the buffer untouched; the head parsed from bytes
//! arriving in pieces (split points from the input) is the one parsed from the whole; the
//! framing agrees with the status and headers (keep-alive only with a known end, never after
//! Content-Length with Transfer-Encoding, no framing headers passed on that contradict it);
//! the body's bytes, end and the reuse decision do not depend on how the bytes arrived.
#![no_main]

use bytes::{Bytes, BytesMut};
use doorman::fuzzing::{BodyDecoder, BodyEnd, Piece, UpstreamHead, parse_response};
use doorman_fuzz::{find, hash, split_points};
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

/// As `upstream::exchange`'s limit.
const MAX: usize = 64 * 1024;

type Parsed = Result<Option<UpstreamHead>, &'static str>;

/// Parse what `buf` holds as the client does: skipping interim answers. `at` is set to how
/// many bytes were left when the last head parsed started (the final response's head).
fn parse(buf: &mut BytesMut, head_request: bool, at: &mut usize) -> Parsed {
    while !buf.is_empty() {
        *at = buf.len();
        let before = buf.clone();
        match parse_response(buf, head_request, MAX) {
            Ok(None) => {
                assert_eq!(*buf, before, "an incomplete head moved the buffer");
                return Ok(None);
            }
            Ok(Some(head)) => {
                assert!(
                    before.ends_with(buf) && buf.len() < before.len(),
                    "the head was not split off the front of the buffer"
                );
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                return Ok(Some(head));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[derive(Debug, PartialEq, Eq)]
enum BodyRead {
    End { data: Vec<u8>, leftover: Vec<u8> },
    More { data: Vec<u8> },
    Failed(&'static str),
}

/// Decode a body from `rest`, arriving in reads ending at `ends`.
fn body(mut dec: BodyDecoder, rest: &[u8], ends: &[usize]) -> (BodyRead, bool) {
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut at = 0;
    let mut cuts = ends.iter().copied();
    loop {
        let mut out = Bytes::new();
        match dec.decode(&mut buf, &mut out) {
            Ok(Some(Piece::Data)) => {
                assert!(!out.is_empty(), "an empty data piece");
                data.extend_from_slice(&out);
            }
            Ok(Some(Piece::End)) => {
                let mut leftover = buf.to_vec();
                leftover.extend_from_slice(&rest[at..]);
                return (BodyRead::End { data, leftover }, dec.finished());
            }
            Ok(None) => match cuts.next() {
                Some(end) => {
                    buf.extend_from_slice(&rest[at..end]);
                    at = end;
                }
                None => return (BodyRead::More { data }, dec.finished()),
            },
            Err(e) => return (BodyRead::Failed(e), dec.finished()),
        }
    }
}

fn lower(b: &[u8]) -> Vec<u8> {
    b.to_ascii_lowercase()
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, data)) = input.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;

    let mut whole = BytesMut::from(data);
    let mut final_left = 0;
    let parsed = parse(&mut whole, head_request, &mut final_left);

    // The same bytes in pieces: parsed after every read, as the client does.
    let ends = split_points(hash(input), data.len(), 1 + usize::from(flags >> 1));
    let mut buf = BytesMut::new();
    let mut at = 0;
    let mut piecewise: Parsed = Ok(None);
    for end in &ends {
        buf.extend_from_slice(&data[at..*end]);
        at = *end;
        piecewise = parse(&mut buf, head_request, &mut 0);
        if !matches!(piecewise, Ok(None)) {
            break;
        }
    }
    buf.extend_from_slice(&data[at..]);
    assert_eq!(
        parsed, piecewise,
        "the head depends on how its bytes arrived"
    );
    let Ok(Some(head)) = parsed else {
        return;
    };
    assert_eq!(whole, buf, "a different rest after the head");

    // Framing against status and headers.
    let head_len = data.len() - whole.len();
    // The final head only (interim 1xx heads before it frame nothing).
    let raw = lower(&data[data.len() - final_left..head_len]);
    let bodiless = head_request
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    if bodiless {
        assert_eq!(head.framing, BodyEnd::Empty);
    }
    if head.keep_alive {
        assert_ne!(
            head.framing,
            BodyEnd::Close,
            "kept alive without a known end"
        );
    }
    let te = find(&raw, b"\ntransfer-encoding:").is_some();
    let cl = find(&raw, b"\ncontent-length:").is_some();
    if te && cl && !bodiless {
        assert!(
            !head.keep_alive,
            "reused after Content-Length with Transfer-Encoding"
        );
    }
    assert!(
        !head.headers.contains_key("transfer-encoding"),
        "this hop's Transfer-Encoding passed on"
    );
    match head.framing {
        BodyEnd::Chunked => assert!(!head.headers.contains_key("content-length")),
        BodyEnd::Length(n) => {
            let v = head
                .headers
                .get("content-length")
                .expect("a length without its header");
            assert_eq!(v.to_str().ok().and_then(|v| v.parse::<u64>().ok()), Some(n));
        }
        _ => {}
    }

    // The body, whole and in pieces, and the reuse decision.
    let decoder = match head.framing {
        BodyEnd::Empty => BodyDecoder::empty(),
        BodyEnd::Length(n) => BodyDecoder::length(n),
        BodyEnd::Chunked => BodyDecoder::chunked(),
        BodyEnd::Close => return,
    };
    let rest = &whole[..];
    let (all, fin_all) = body(decoder, rest, &[rest.len()]);
    let cuts = split_points(hash(rest) ^ u64::from(flags), rest.len(), 7);
    let (pieces, fin_pieces) = body(decoder, rest, &cuts);
    assert_eq!(all, pieces, "the body depends on how its bytes arrived");
    assert_eq!(fin_all, fin_pieces);
    if let BodyRead::End { data, .. } = &all {
        assert!(fin_all);
        if let BodyEnd::Length(n) = head.framing {
            assert_eq!(data.len() as u64, n);
        }
    }
    // upstream::body: reused when the response allows it, it is not a 101, the body
    // was read to its end and nothing came after it.
    let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let reusable = head.keep_alive
        && !switching
        && matches!(&all, BodyRead::End { leftover, .. } if leftover.is_empty());
    if reusable {
        assert!(matches!(
            head.framing,
            BodyEnd::Empty | BodyEnd::Length(_) | BodyEnd::Chunked
        ));
    }
});

//! HTTP vocabulary shared by every layer: the request target's normal form and host
//! matching, the one Content-Length parser, strict JSON, the hop-by-hop header list and
//! request ids.
//! Knows nothing of the pipeline, upstreams or errors.

pub(crate) mod content_length;
pub(crate) mod json;
pub mod target;

use http::HeaderValue;
use http::header::{self, HeaderName};

/// The request id header: kept from the client when sane, else generated; sent upstream and
/// returned on every response.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// de-facto ones proxies also drop.
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
];

/// A client-supplied request id is kept when it is 1..=128 visible, unambiguous characters.
pub(crate) fn is_sane_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'=' | b'/')
        })
}

/// 32 lower-case hex digits from a thread-local fast PRNG: unique enough to correlate logs,
/// cheap enough for every request. Not a secret.
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut n = fastrand::u128(..);
    let mut buf = [0u8; 32];
    for b in buf.iter_mut() {
        *b = HEX[(n & 0xf) as usize];
        n >>= 4;
    }
    HeaderValue::from_bytes(&buf).expect("hex is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_sanity() {
        assert!(is_sane_request_id(b"abc-123_X.y:z"));
        assert!(!is_sane_request_id(b""));
        assert!(!is_sane_request_id(b"has space"));
        assert!(!is_sane_request_id(b"quote\"d"));
        assert!(!is_sane_request_id(&[b'a'; 129]));
    }

    #[test]
    fn generated_ids_are_hex_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}

//! The forwarded request's headers: hop-by-hop headers removed (in both directions), the
//! WebSocket upgrade the only one forwarded, and the headers doorman sets on every forwarded
//! request (X-Forwarded-For/Proto/Host, X-Request-Id), written once however many replicas
//! are tried.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

use super::body::DownstreamBody;
use super::context::ConnInfo;
use crate::message::{HOP_BY_HOP, X_REQUEST_ID};
use crate::upstream::Upstream;

/// HTTP/2 over cleartext upgrade settings: meaningless past this hop, and the tool of h2c
/// smuggling when paired with `Upgrade: h2c`.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Remove hop-by-hop headers, including every header the Connection header names (a
/// replica's response; requests have the named ones removed by `strip_connection_named`
/// before doorman adds headers of its own, then `strip_fixed_hop_by_hop` here).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop_present(headers);
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        remove_connection_named(headers, false);
    }
    remove_present(headers, present);
}

/// The fixed hop-by-hop headers only (the request's forwarded head): the headers its
/// Connection names are already gone, and what doorman added since must stay even if a
/// client's Connection names it.
pub(super) fn strip_fixed_hop_by_hop(headers: &mut HeaderMap) {
    let present = hop_by_hop_present(headers);
    if present != 0 {
        remove_present(headers, present);
    }
}

/// Remove the headers a request's Connection names, before any stage reads or adds
/// headers. Host is never removed (`Connection: host` would forward a request without one).
pub(super) fn strip_connection_named(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        remove_connection_named(headers, true);
    }
}

/// One pass over the few names present finds which hop-by-hop ones are there (bit i:
/// HOP_BY_HOP[i], bit 8: HTTP2-Settings). Most requests carry none, and most responses
/// just `Connection: keep-alive`.
fn hop_by_hop_present(headers: &HeaderMap) -> u16 {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        } else if *name == HTTP2_SETTINGS {
            present |= 1 << 8;
        }
    }
    present
}

fn remove_present(headers: &mut HeaderMap, present: u16) {
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << 8) != 0 {
        headers.remove(HTTP2_SETTINGS);
    }
}

fn remove_connection_named(headers: &mut HeaderMap, keep_host: bool) {
    // Almost always a lone `keep-alive` or `close`, which name no header: nothing to scan.
    // `keep-alive` goes with HOP_BY_HOP, and `close` is an option, a field name RFC 9110
    // reserves for that reason.
    let names_no_header =
        |t: &[u8]| t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close");
    let mut values = headers.get_all(header::CONNECTION).iter();
    if values.next().is_some_and(|v| names_no_header(v.as_bytes())) && values.next().is_none() {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !names_no_header(t.as_bytes()))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| !(HOP_BY_HOP.contains(n) || keep_host && *n == header::HOST))
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// The `Upgrade` value to forward, for a WebSocket handshake (HTTP/1.1 GET with
/// `Connection: upgrade` and `Upgrade: websocket`). Any other upgrade — `h2c` above all,
/// which would let a client talk HTTP/2 straight to a replica past every check here — is
/// not forwarded: the request goes upstream as an ordinary request without it.
pub(super) fn websocket_upgrade(req: &Request<DownstreamBody>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || req.method() != Method::GET {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let upgrade = req.headers().get(header::UPGRADE)?;
    if asks && upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") {
        Some(upgrade.clone())
    } else {
        None
    }
}

/// A header line written as it is: name, value.
type Line<'a> = (&'static str, &'a [u8]);

/// The headers doorman sets on every forwarded request. They are not inserted into the
/// request's header map (a hash and a probe each, on every request) but written after it
/// when the head is encoded; the client's own values of these names are taken out of the
/// map (X-Forwarded-For's are merged in front of the peer's address).
#[derive(Debug)]
pub(super) struct Forwarded {
    /// The request's Host header (the decided authority); None only for HTTP/1.0 without one.
    host: Option<HeaderValue>,
    for_: HeaderValue,
    proto: &'static str,
    request_id: HeaderValue,
}

impl Forwarded {
    /// The lines written after the request's own headers, and the Host to write when the
    /// request has none (the replica's authority as a last resort: HTTP/1.1 requires one).
    pub(super) fn lines<'a>(
        &'a self,
        upstream: &'a Upstream,
    ) -> (Option<&'a [u8]>, [Line<'a>; 4], usize) {
        // A request with a Host header sends it among its own headers.
        let host = match &self.host {
            Some(_) => None,
            None => Some(upstream.authority.as_str().as_bytes()),
        };
        let mut lines = [("", &b""[..]); 4];
        let mut n = 0;
        // Never a client's own X-Forwarded-Host: it would poison links built from it.
        if let Some(h) = &self.host {
            lines[n] = ("x-forwarded-host", h.as_bytes());
            n += 1;
        }
        lines[n] = ("x-forwarded-for", self.for_.as_bytes());
        lines[n + 1] = ("x-forwarded-proto", self.proto.as_bytes());
        lines[n + 2] = ("x-request-id", self.request_id.as_bytes());
        (host, lines, n + 3)
    }
}

/// The request's head as every replica gets it: hop-by-hop headers out (the upgrade ones
/// back in when it upgrades), Host kept, and what `Forwarded` adds. Done once per request,
/// however many replicas are tried.
pub(super) fn prepare(
    parts: &mut http::request::Parts,
    upgrade: Option<HeaderValue>,
    request_id: &HeaderValue,
    conn: &ConnInfo,
) -> Forwarded {
    // Host is the authority the normalise stage decided on (the absolute-form target's or
    // :authority, else the client's Host); only an HTTP/1.0 request may have none.
    let host = parts.headers.get(header::HOST).cloned();

    let headers = &mut parts.headers;
    strip_fixed_hop_by_hop(headers);
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    // The client's own values of the names doorman sets: rare, so found in one pass over
    // the names present and removed only then.
    let (mut forwarded_for, mut own) = (false, false);
    for name in headers.keys() {
        if *name == X_FORWARDED_FOR {
            forwarded_for = true;
        } else if *name == X_FORWARDED_HOST || *name == X_FORWARDED_PROTO || *name == X_REQUEST_ID {
            own = true;
        }
    }
    let for_ = if forwarded_for {
        forwarded_for_value(headers, &conn.peer_ip)
    } else {
        conn.peer_ip.clone()
    };
    if forwarded_for {
        headers.remove(X_FORWARDED_FOR);
    }
    if own {
        headers.remove(X_FORWARDED_HOST);
        headers.remove(X_FORWARDED_PROTO);
        headers.remove(X_REQUEST_ID);
    }
    // Written in origin-form (`/path?query`) whatever the client sent: the replica is
    // reached directly, never through a proxy.
    parts.version = Version::HTTP_11;
    Forwarded {
        host,
        for_,
        proto: conn.scheme,
        request_id: request_id.clone(),
    }
}

/// The X-Forwarded-For value to send: the client's own values, in order, then the peer.
fn forwarded_for_value(headers: &HeaderMap, ip: &HeaderValue) -> HeaderValue {
    let mut joined = Vec::with_capacity(64);
    for v in headers.get_all(X_FORWARDED_FOR) {
        joined.extend_from_slice(v.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| ip.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in HOP_BY_HOP.iter().chain([&HTTP2_SETTINGS]) {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            h.insert(name.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} kept");
            assert_eq!(h.len(), 1, "{name}: other headers untouched");
        }
        // None present: nothing changes.
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(header::HOST, HeaderValue::from_static("a"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Custom-Hop"),
        );
        h.insert("x-custom-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::PROXY_AUTHORIZATION,
            HeaderValue::from_static("Basic x"),
        );
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["authorization", "x-end-to-end"]);
    }

    #[test]
    fn a_keep_alive_response_loses_only_its_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        h.insert(header::SERVER, HeaderValue::from_static("nginx"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, vec!["content-length", "server"]);

        // Every listed name goes, whatever it looks like.
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Trace"),
        );
        h.insert("x-trace", HeaderValue::from_static("1"));
        h.insert(header::DATE, HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["date"]);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let ip = HeaderValue::from_static("10.0.0.9");
        assert_eq!(forwarded_for_value(&HeaderMap::new(), &ip), "10.0.0.9");

        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(
            X_FORWARDED_FOR,
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        assert_eq!(
            forwarded_for_value(&h, &ip),
            "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9"
        );
    }
}

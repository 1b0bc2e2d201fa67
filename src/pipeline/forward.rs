//! Stage 7: forward the request to the chosen replica and relay its response.
//!
//! Hop-by-hop headers go in both directions; X-Forwarded-For is appended, X-Forwarded-Proto
//! and X-Forwarded-Host are set; Host is the authority the normalise stage decided on. Bodies stream both ways. HTTP/1.1 upgrades
//! (WebSocket) become a byte tunnel once the replica answers 101.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use tokio::sync::oneshot;
use tracing::debug;

use super::ResponseBody;
use super::body::{BodyError, DownstreamBody, LimitedBody, RelayBody};
use super::context::{AwaitingUpstream, ConnInfo, Phase, reached};
use crate::error::ProxyError;
use crate::h1::{OnUpgrade, Rewind};
use crate::idle::{self, Tracked};
use crate::message::{HOP_BY_HOP, X_REQUEST_ID};
use crate::upstream::{SendError, Upstream, UpstreamGroup};

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
fn websocket_upgrade(req: &Request<DownstreamBody>) -> Option<HeaderValue> {
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

/// How long the replica took from the request sent to its response head (a response
/// extension, read by the access log).
#[derive(Debug, Clone, Copy)]
pub(super) struct UpstreamTime(pub(super) std::time::Duration);

/// Whether the request asks for a (WebSocket) upgrade: such requests are never re-sent.
pub(super) fn asks_upgrade(req: &Request<DownstreamBody>) -> bool {
    websocket_upgrade(req).is_some()
}

/// Forward a request whose body streams from the client.
pub(super) async fn send(
    mut req: Request<DownstreamBody>,
    request_id: &HeaderValue,
    conn: &std::sync::Arc<ConnInfo>,
    group: &UpstreamGroup,
    upstream: &Upstream,
    max_body_bytes: u64,
) -> Result<Response<ResponseBody>, ProxyError> {
    let upgrade = websocket_upgrade(&req);
    let downstream_upgrade = match upgrade {
        Some(_) => req.extensions_mut().remove::<OnUpgrade>(),
        None => None,
    };
    let (mut parts, body) = req.into_parts();
    let (uploaded_tx, uploaded) = oneshot::channel();
    let body = LimitedBody::new(body, max_body_bytes, uploaded_tx, conn.linger.clone());
    let upgrade = upgrade.zip(downstream_upgrade);
    let (upgrade, downstream_upgrade) = match upgrade {
        Some((proto, on)) => (Some(proto), Some(on)),
        None => (None, None),
    };
    let forwarded = prepare(&mut parts, upgrade, request_id, conn);
    relay(
        &parts,
        &forwarded,
        body,
        uploaded,
        downstream_upgrade,
        conn,
        group,
        upstream,
    )
    .await
}

/// Forward a request whose body was already read (an idempotent request).
pub(super) async fn send_buffered(
    mut parts: http::request::Parts,
    body: bytes::Bytes,
    request_id: &HeaderValue,
    conn: &std::sync::Arc<ConnInfo>,
    group: &UpstreamGroup,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, ProxyError> {
    let forwarded = prepare(&mut parts, None, request_id, conn);
    send_prepared(&parts, &forwarded, body, conn, group, upstream).await
}

/// Forward a request already `prepare`d, whose body was already read: what each attempt
/// of a retried request sends, the same head every time.
pub(super) async fn send_prepared(
    parts: &http::request::Parts,
    forwarded: &Forwarded,
    body: bytes::Bytes,
    conn: &std::sync::Arc<ConnInfo>,
    group: &UpstreamGroup,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (uploaded_tx, uploaded) = oneshot::channel();
    let body = LimitedBody::buffered(body, uploaded_tx);
    relay(
        parts, forwarded, body, uploaded, None, conn, group, upstream,
    )
    .await
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
    fn lines<'a>(&'a self, upstream: &'a Upstream) -> (Option<&'a [u8]>, [Line<'a>; 4], usize) {
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

#[allow(clippy::too_many_arguments)]
async fn relay(
    parts: &http::request::Parts,
    forwarded: &Forwarded,
    body: LimitedBody,
    uploaded: oneshot::Receiver<()>,
    downstream_upgrade: Option<OnUpgrade>,
    conn: &std::sync::Arc<ConnInfo>,
    group: &UpstreamGroup,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, ProxyError> {
    let progress = body.progress();
    let (host, lines, n) = forwarded.lines(upstream);
    // In flight until the response head: what bounded-load hashing balances.
    let in_flight = crate::upstream::InFlight::new(upstream);
    let m = &upstream.metrics;
    m.selections.inc();
    let sent = std::time::Instant::now();
    let result = tokio::select! {
        r = upstream.pool.send(parts, host, &lines[..n], body) => r.map_err(|e| classify(e, upstream)),
        e = deadlines(uploaded, progress, conn, group.response_timeout) => Err(e),
    };
    let upstream_time = sent.elapsed();
    drop(in_flight);
    // Passive health: the replica's own failures count against it; the client's don't.
    match &result {
        Ok(r) => {
            let ok = !r.status().is_server_error();
            m.upstream_duration.observe(upstream_time.as_secs_f64());
            m.answered.inc();
            if !ok {
                m.failed.inc();
            }
            upstream.report(ok, &group.health)
        }
        Err(
            e @ (ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UpstreamTimeout),
        ) => {
            match e {
                ProxyError::UpstreamConnect(_) => m.connect_errors.inc(),
                ProxyError::UpstreamTimeout => m.timeouts.inc(),
                _ => 0,
            };
            m.answered.inc();
            m.failed.inc();
            upstream.report(false, &group.health)
        }
        Err(_) => {}
    }
    let mut resp = result?;
    // For the access log: how long the replica took to its response head.
    resp.extensions_mut().insert(UpstreamTime(upstream_time));

    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        match downstream_upgrade {
            Some(down) => match resp.body_mut().take_upgrade() {
                Some(up) => {
                    tokio::spawn(tunnel(down, up, conn.clone()));
                }
                None => {
                    return Err(ProxyError::Internal(
                        "a 101 response without its connection".into(),
                    ));
                }
            },
            // A 101 we did not ask for cannot be relayed: the client would be stranded.
            None => {
                return Err(ProxyError::UpstreamBroken(format!(
                    "{} answered 101 to a request that did not ask to upgrade",
                    upstream.address
                )));
            }
        }
    }
    let headers = resp.headers_mut();
    let upgrade_header = if switching {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(proto) = upgrade_header {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto);
    }
    Ok(resp.map(|b| Either::Left(RelayBody::new(b))))
}

/// The two clocks of a forwarded request. While the body uploads, it must keep moving: no
/// progress for `idle_timeout` is a 408 (the connection's own watchdog cannot see one stuck
/// HTTP/2 stream among busy ones). Once it is sent, `response_timeout` runs until the
/// response head, so a slow client's large body is never blamed on the replica.
async fn deadlines(
    mut uploaded: oneshot::Receiver<()>,
    progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    conn: &ConnInfo,
    response_timeout: std::time::Duration,
) -> ProxyError {
    if let Some(progress) = progress {
        tokio::select! {
            _ = &mut uploaded => {}
            _ = idle::quiet(&progress, conn.idle_timeout, || false) => {
                return ProxyError::BodyTimeout;
            }
        }
    } else {
        let _ = uploaded.await;
    }
    let _waiting = AwaitingUpstream::new(&conn.awaiting_upstream);
    tokio::time::sleep(response_timeout).await;
    ProxyError::UpstreamTimeout
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

/// Tell apart who failed: our own body limit, the client's body, or the replica.
fn classify(e: SendError<BodyError>, upstream: &Upstream) -> ProxyError {
    match e {
        SendError::Body(BodyError::TooLarge) => ProxyError::BodyTooLarge,
        SendError::Body(BodyError::Downstream(d)) => ProxyError::DownstreamAborted(d.to_string()),
        SendError::Connect(d) => ProxyError::UpstreamConnect(format!("{}: {d}", upstream.address)),
        SendError::Request(d) => ProxyError::UpstreamBroken(format!("{}: {d}", upstream.address)),
    }
}

/// Copy bytes both ways between an upgraded client and replica until either side closes,
/// nothing moves for `idle_timeout`, or shutdown's grace period runs out. The connection's
/// `ConnInfo` (and so its connection-limit permit) lives as long as the tunnel.
async fn tunnel(
    down: OnUpgrade,
    mut up: Rewind<tokio::net::TcpStream>,
    conn: std::sync::Arc<ConnInfo>,
) {
    let down = match down.upgraded().await {
        Ok(down) => down,
        Err(e) => {
            debug!(peer = %conn.peer, error = %e, "upgrade failed");
            return;
        }
    };
    let activity = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut down = Tracked::new(down, activity.clone());
    let mut phase = conn.phase.clone();
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut down, &mut up) => match r {
            Ok((to_up, to_down)) => debug!(peer = %conn.peer, to_up, to_down, "tunnel closed"),
            Err(e) => debug!(peer = %conn.peer, error = %e, "tunnel ended with error"),
        },
        _ = idle::quiet(&activity, conn.idle_timeout, || false) => {
            debug!(peer = %conn.peer, "tunnel idle timeout")
        }
        _ = reached(&mut phase, Phase::Closing) => {
            debug!(peer = %conn.peer, "tunnel closed: shutdown grace expired")
        }
    }
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

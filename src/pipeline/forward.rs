//! The forward stage: send the request to the selected replica and relay its response —
//! one loop for every request, keyed ones included, that re-sends where it is safe.
//!
//! RFC 9110 §9.2.2: a proxy must not blindly retry non-idempotent requests, so
//! - a connection that could not be made (nothing was sent) is retried for any method;
//! - a reset or a timeout before the response head is retried only for GET, HEAD, OPTIONS,
//!   PUT, DELETE and TRACE: a POST or PATCH may already have been acted on.
//!
//! Only a body held whole can be sent again: a bodiless request, a small declared body (read
//! whole first, as nginx buffers request bodies) or a keyed request's body (read to
//! fingerprint it). A streamed body of unknown or large size, or an upgrade, is sent once.
//! Each retry goes to a replica not tried yet, within the group's `retries` and its retry
//! budget (retries add at most `retry_budget` to the request rate). Once the replica answers
//! 101, an HTTP/1.1 upgrade (WebSocket) becomes a byte tunnel.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Either;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::ResponseBody;
use super::body::{self, BodyError, DownstreamBody, LimitedBody, RelayBody};
use super::context::{Attempts, AwaitingUpstream, ConnInfo, Phase, reached};
use super::headers::{Forwarded, prepare, strip_hop_by_hop, websocket_upgrade};
use crate::error::ProxyError;
use crate::h1::{OnUpgrade, Rewind};
use crate::idle::{self, Tracked};
use crate::upstream::{SendError, Upstream, UpstreamGroup};

/// At most 1 + 10 attempts (`retries` is capped at 10 when the config is loaded).
const MAX_ATTEMPTS: usize = 11;

/// Bodies up to this size (declared by Content-Length) are read whole so that they can be
/// sent again; larger or chunked ones stream once.
const REPLAY_BODY_BYTES: u64 = 64 * 1024;

/// How long the replica took from the request sent to its response head (a response
/// extension, read by the access log).
#[derive(Debug, Clone, Copy)]
pub(super) struct UpstreamTime(pub(super) std::time::Duration);

/// What the forward stage sends.
pub(super) enum Outgoing {
    /// The request as it came, its body (if any) still to be read from the client.
    Request(Request<DownstreamBody>),
    /// A request whose body is held whole already (a keyed request's, read to fingerprint it).
    Held(http::request::Parts, Bytes),
}

/// What every attempt of one request shares: where it goes and on whose behalf.
pub(super) struct Exchange<'a> {
    pub(super) group: &'a UpstreamGroup,
    pub(super) conn: &'a Arc<ConnInfo>,
    pub(super) request_id: &'a HeaderValue,
    /// The sticky key, for choosing a replica not tried yet on a retry.
    pub(super) sticky: Option<u64>,
    pub(super) max_body_bytes: u64,
}

/// Whether the request declares a body small enough to hold for a possible retry.
fn replayable_length<B>(req: &Request<B>, max_body_bytes: u64) -> bool {
    // `limits` refused a malformed length already; none here means "not replayable".
    crate::message::content_length::from_headers(req.headers())
        .ok()
        .flatten()
        .is_some_and(|n| n <= REPLAY_BODY_BYTES.min(max_body_bytes))
}

/// The forward stage: send `out` to the replica `first`, and where it fails in a way that
/// is safe to retry, to others, one at a time.
pub(super) async fn forward(
    out: Outgoing,
    first: usize,
    x: &Exchange<'_>,
    attempts: &mut Attempts,
) -> Result<Response<ResponseBody>, ProxyError> {
    let group = x.group;
    let (mut parts, body) = match out {
        Outgoing::Held(parts, body) => (parts, body),
        Outgoing::Request(req) => {
            let bodiless = http_body::Body::is_end_stream(req.body());
            let replayable = bodiless || replayable_length(&req, x.max_body_bytes);
            if group.retries == 0 || !replayable || websocket_upgrade(&req).is_some() {
                let upstream = &group.servers[first];
                attempts.on(upstream.address);
                return send_streaming(req, x, upstream).await;
            }
            let (parts, body) = req.into_parts();
            let body = if bodiless {
                Bytes::new()
            } else {
                body::read_all(body, x.max_body_bytes, x.conn.idle_timeout).await?
            };
            (parts, body)
        }
    };
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    // One head for every attempt.
    let forwarded = prepare(&mut parts, None, x.request_id, x.conn);
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut n = 0;
    let mut current = first;
    loop {
        tried[n] = current;
        n += 1;
        let upstream = &group.servers[current];
        attempts.on(upstream.address);
        let (uploaded_tx, uploaded) = oneshot::channel();
        let held = LimitedBody::buffered(body.clone(), uploaded_tx);
        let sent = relay(&parts, &forwarded, held, uploaded, None, x, upstream).await;
        let err = match sent {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let safe_to_retry = match &err {
            ProxyError::UpstreamConnect(_) => true,
            ProxyError::UpstreamBroken(_) | ProxyError::UpstreamTimeout => idempotent,
            _ => false,
        };
        if !safe_to_retry || n > group.retries as usize || n >= MAX_ATTEMPTS {
            return Err(err);
        }
        let Some(next) = group.select_excluding(x.sticky, &tried[..n]) else {
            return Err(err);
        };
        if !group.withdraw_retry() {
            group.metrics.retry_budget_exhausted.inc();
            warn!(request_id = ?x.request_id, "retry budget exhausted; not retrying");
            return Err(err);
        }
        warn!(
            request_id = ?x.request_id,
            failed = %upstream.address,
            next = %group.servers[next].address,
            error = %err,
            "retrying on another replica"
        );
        group.metrics.retries.inc();
        current = next;
    }
}

/// Send a request whose body streams from the client: once, to `upstream`.
async fn send_streaming(
    mut req: Request<DownstreamBody>,
    x: &Exchange<'_>,
    upstream: &Upstream,
) -> Result<Response<ResponseBody>, ProxyError> {
    let upgrade = websocket_upgrade(&req);
    let downstream_upgrade = match upgrade {
        Some(_) => req.extensions_mut().remove::<OnUpgrade>(),
        None => None,
    };
    let (mut parts, body) = req.into_parts();
    let (uploaded_tx, uploaded) = oneshot::channel();
    let body = LimitedBody::new(body, x.max_body_bytes, uploaded_tx, x.conn.linger.clone());
    let (upgrade, downstream_upgrade) = match upgrade.zip(downstream_upgrade) {
        Some((proto, on)) => (Some(proto), Some(on)),
        None => (None, None),
    };
    let forwarded = prepare(&mut parts, upgrade, x.request_id, x.conn);
    relay(
        &parts,
        &forwarded,
        body,
        uploaded,
        downstream_upgrade,
        x,
        upstream,
    )
    .await
}

/// One attempt: write the request to `upstream`, wait for its response head under the
/// upload and response clocks, count the outcome for the replica's health, and ready the
/// response for the client (hop-by-hop headers out, a 101 turned into a tunnel).
async fn relay(
    parts: &http::request::Parts,
    forwarded: &Forwarded,
    body: LimitedBody,
    uploaded: oneshot::Receiver<()>,
    downstream_upgrade: Option<OnUpgrade>,
    x: &Exchange<'_>,
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
        e = deadlines(uploaded, progress, x.conn, x.group.response_timeout) => Err(e),
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
            upstream.report(ok, &x.group.health)
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
            upstream.report(false, &x.group.health)
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
                    tokio::spawn(tunnel(down, up, x.conn.clone()));
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

    fn with_length(v: &str) -> Request<()> {
        Request::post("/")
            .header("content-length", v)
            .body(())
            .unwrap()
    }

    #[test]
    fn only_small_declared_bodies_are_held_for_a_retry() {
        assert!(replayable_length(&with_length("8"), 1 << 20));
        assert!(replayable_length(&with_length("65536"), 1 << 20));
        assert!(!replayable_length(&with_length("65537"), 1 << 20));
        // The tighter of the replay limit and max_body_bytes.
        assert!(!replayable_length(&with_length("100"), 99));
        assert!(!replayable_length(&with_length("x"), 1 << 20));
        // Chunked: no declared length, streamed once.
        assert!(!replayable_length(
            &Request::post("/").body(()).unwrap(),
            1 << 20
        ));
    }
}

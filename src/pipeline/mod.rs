//! The request pipeline. `handle` is the one place where stage order is written:
//!
//! 1. limits    — head size (431), declared body size (413), request id
//! 2. normalise — target → (authority, normal path), forged-header removal (400, 405)
//! 3. route     — host + path prefix on segment boundaries → route and its group (404, 405)
//! 4. auth      — bearer JWT verified, revocation checked, claims forwarded (401 / 503)
//! 5. idempotency — keyed writes: lease / replay / 409 / 422, result stored (400 / 409 / 422)
//! 6. select    — the group's balancer picks a replica (503 when none may take traffic)
//! 7. forward   — hop-by-hop stripped, X-Forwarded-* set, bodies streamed both ways
//! 8. complete  — request id on the response, access log line

mod auth;
mod body;
mod context;
mod forward;
mod idempotency;
mod limits;
mod normalise;
mod retry;
mod route;
mod select;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tracing::{info, warn};

pub use crate::message::{HOP_BY_HOP, X_REQUEST_ID, is_sane_request_id, new_request_id};
pub use body::{BodyError, DownstreamBody, DownstreamError, LimitedBody, RelayBody};
pub use context::{AwaitingUpstream, ConnInfo, Phase, RequestCtx, reached};
pub use forward::strip_hop_by_hop;
pub use idempotency::fingerprint as idempotency_fingerprint;

use crate::error::{Fault, ProxyError};
use crate::metrics::{GaugeGuard, MethodLabel, Metrics};
use crate::snapshot::Snapshot;

/// What doorman sends downstream: the replica's streamed body, or a small body of its own.
pub type ResponseBody = Either<RelayBody, Full<Bytes>>;

/// Run one request through every stage and always produce a response.
pub async fn handle(
    req: Request<DownstreamBody>,
    conn: &Arc<ConnInfo>,
    snap: &Arc<Snapshot>,
) -> Response<LoggedBody> {
    let mut ctx = RequestCtx::new(&req);
    let m = &snap.metrics;
    // A body left unread by an earlier request was read or the connection would be gone.
    if conn.linger.load(Ordering::Relaxed) {
        conn.linger.store(false, Ordering::Relaxed);
    }
    let has_body = !http_body::Body::is_end_stream(req.body());
    let in_flight = GaugeGuard::new(if req.version() == http::Version::HTTP_2 {
        m.in_flight_h2.clone()
    } else {
        m.in_flight_h1.clone()
    });
    ctx.on_abandon = Some((m.clone(), conn.peer));
    let result = stages(req, &mut ctx, conn, snap).await;
    ctx.on_abandon = None;
    let idempotency = ctx.keyed.then(|| idempotency_outcome(&result));
    let mut resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            // The error may be answered before the client has sent all of its body.
            if has_body {
                conn.linger.store(true, Ordering::Relaxed);
            }
            match err.fault() {
                Fault::Downstream => {
                    info!(request_id = ?ctx.request_id, error = %err, "request refused")
                }
                Fault::Upstream | Fault::Internal => {
                    warn!(request_id = ?ctx.request_id, upstream = %OrDash(ctx.upstream), error = %err, "request failed")
                }
            }
            err.to_response(&ctx.request_id).map(Either::Right)
        }
    };
    // Never indexed by HPACK: a value unique to each response would only churn the HTTP/2
    // connection's header table, evicting the entries that do repeat.
    let mut request_id = ctx.request_id.clone();
    request_id.set_sensitive(true);
    resp.headers_mut().insert(X_REQUEST_ID, request_id);
    let status = resp.status().as_u16();
    record(&ctx, m, status, idempotency);
    let upstream_us = resp
        .extensions()
        .get::<forward::UpstreamTime>()
        .map(|t| t.0.as_micros() as u64);
    let log =
        access_log_on().then(|| AccessLog::of(&ctx, conn.peer, status, upstream_us, idempotency));
    resp.map(|inner| LoggedBody {
        inner,
        bytes_out: 0,
        log,
        _in_flight: in_flight,
    })
}

fn access_log_on() -> bool {
    tracing::enabled!(target: "doorman::access", tracing::Level::INFO)
}

/// A request whose handler was dropped before it had a response: the client went away
/// (closed the connection, reset the HTTP/2 stream). Counted and logged as 499, as nginx.
pub(super) fn abandoned(ctx: &RequestCtx, m: &Metrics, peer: std::net::SocketAddr) {
    const CLIENT_CLOSED: u16 = 499;
    let idempotency = ctx.keyed.then_some("abandoned");
    record(ctx, m, CLIENT_CLOSED, idempotency);
    if access_log_on() {
        AccessLog::of(ctx, peer, CLIENT_CLOSED, None, idempotency).write(0, false);
    }
}

/// How a keyed request ended, for the metrics and the access log.
fn idempotency_outcome(result: &Result<Response<ResponseBody>, ProxyError>) -> &'static str {
    match result {
        Ok(r) if r.extensions().get::<idempotency::Replayed>().is_some() => "replay",
        Ok(_) => "first",
        Err(ProxyError::IdempotencyInFlight(_)) => "conflict",
        Err(ProxyError::IdempotencyMismatch) => "mismatch",
        Err(ProxyError::IdempotencyNotReplayable(_)) => "not_replayable",
        Err(ProxyError::IdempotencyKey(_)) => "bad_key",
        Err(_) => "failed",
    }
}

async fn stages(
    mut req: Request<DownstreamBody>,
    ctx: &mut RequestCtx,
    conn: &Arc<ConnInfo>,
    snap: &Arc<Snapshot>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Limits first, on the request as it came: an oversized or malformed request never
    // reaches routing or a replica, and costs no normalising.
    limits::check(&req, &snap.settings)?;
    // Normalise next: every stage after it, and the replica, see the same request.
    let is_claim_header = |name: &str| {
        snap.auth
            .as_ref()
            .is_some_and(|v| v.forwarded_headers().any(|h| h.as_str() == name))
    };
    if normalise::request(&mut req, &snap.settings, &is_claim_header)? {
        ctx.uri = req.uri().clone();
    }
    // Route before select: the route decides which group's balancer is asked.
    let host = route::host_of(&req);
    let route = snap
        .route(
            host.as_deref(),
            &crate::message::target::routing_view(req.uri().path()),
        )
        .ok_or(ProxyError::NoRoute)?;
    ctx.route = Some(route.metrics.clone());
    normalise::method_allowed(req.method(), &route.allow_methods)?;
    // Auth after route (the route says whether a token is needed), before any replica is
    // chosen: an unauthenticated request never costs upstream capacity.
    let token = auth::check(req.headers_mut(), route.auth, snap).await?;
    ctx.token = token.clone();
    // Idempotency after auth (the key is scoped to the verified subject), before select
    // (a duplicate must never cost a replica a call).
    // The sticky key is read before the body or the request is consumed.
    let sticky = select::sticky_hash(&req, &route.group, token.as_deref(), conn);
    let key = idempotency::client_key(&req, route.idempotency, &snap.idempotency)
        .inspect_err(|_| ctx.keyed = true)?;
    if let Some(key) = key {
        ctx.keyed = true;
        // Keys are scoped to the host too (routes may match many hosts).
        let host = route::host_of(&req)
            .map(|h| h.into_owned())
            .unwrap_or_default();
        // Boxed: keyed writes are the minority, and their large future would otherwise be
        // part of every request's (moved by value into hyper's dispatcher).
        return Box::pin(idempotency::run(
            req, &host, key, token, sticky, ctx, conn, route, snap,
        ))
        .await;
    }
    let group = &route.group;
    group.deposit_retry_budget();
    let index = group.select_for(sticky).ok_or(ProxyError::NoUpstream)?;
    // Requests that can be re-sent on another replica where that is safe: bodiless ones,
    // and small declared bodies (read whole first, as nginx buffers request bodies). A
    // streamed body of unknown or large size, or an upgrade, can be sent once only.
    let bodiless = http_body::Body::is_end_stream(req.body());
    let replayable = bodiless || retry::replayable_length(&req, snap.settings.max_body_bytes);
    if group.retries == 0 || !replayable || forward::asks_upgrade(&req) {
        let upstream = &group.servers[index];
        ctx.upstream = Some(upstream.address);
        ctx.attempts = 1;
        return forward::send(
            req,
            &ctx.request_id,
            conn,
            group,
            upstream,
            snap.settings.max_body_bytes,
        )
        .await;
    }
    let (parts, body) = req.into_parts();
    let body = if bodiless {
        Bytes::new()
    } else {
        body::read_all(body, snap.settings.max_body_bytes, conn.idle_timeout).await?
    };
    retry::forward_with_retries(parts, body, index, sticky, ctx, conn, group).await
}

/// Last stage: count the request (the request id is already on the response). Its access
/// log line is written when the response body ends (`LoggedBody`), with the bytes sent.
fn record(ctx: &RequestCtx, m: &Metrics, status: u16, idempotency: Option<&'static str>) {
    let route = ctx.route.as_deref().unwrap_or_else(|| m.no_route());
    route.record(
        m,
        MethodLabel::of(&ctx.method),
        status,
        ctx.upstream,
        ctx.started.elapsed(),
    );
    if let Some(outcome) = idempotency {
        Metrics::count(&m.idempotency, outcome);
    }
}

/// One access-log line's fields, gathered when the response head is ready.
#[derive(Debug)]
struct AccessLog {
    request_id: http::HeaderValue,
    peer: std::net::SocketAddr,
    method: http::Method,
    uri: http::Uri,
    route: Option<Arc<str>>,
    status: u16,
    upstream: Option<std::net::SocketAddr>,
    attempts: u32,
    started: std::time::Instant,
    head_us: u64,
    upstream_us: Option<u64>,
    bytes_in: Option<u64>,
    subject: Option<Arc<crate::auth::VerifiedToken>>,
    idempotency: Option<&'static str>,
}

impl AccessLog {
    fn of(
        ctx: &RequestCtx,
        peer: std::net::SocketAddr,
        status: u16,
        upstream_us: Option<u64>,
        idempotency: Option<&'static str>,
    ) -> Self {
        AccessLog {
            request_id: ctx.request_id.clone(),
            peer,
            method: ctx.method.clone(),
            uri: ctx.uri.clone(),
            route: ctx.route.as_ref().map(|r| r.label.0.clone()),
            status,
            upstream: ctx.upstream,
            // A keyed request forwarded from its own task: one attempt, when it had one.
            attempts: ctx.attempts.max(u32::from(ctx.upstream.is_some())),
            started: ctx.started,
            head_us: ctx.started.elapsed().as_micros() as u64,
            upstream_us,
            bytes_in: ctx.bytes_in,
            subject: ctx.token.clone(),
            idempotency,
        }
    }

    fn write(&self, bytes_out: u64, complete: bool) {
        info!(
            target: "doorman::access",
            request_id = self.request_id.to_str().unwrap_or("-"),
            client = %self.peer,
            method = %self.method,
            path = self.uri.path(),
            route = self.route.as_deref().unwrap_or("-"),
            status = self.status,
            upstream = %OrDash(self.upstream),
            attempts = self.attempts,
            duration_us = self.started.elapsed().as_micros() as u64,
            head_us = self.head_us,
            upstream_us = %OrDash(self.upstream_us),
            bytes_in = %OrDash(self.bytes_in),
            bytes_out,
            complete,
            subject = self
                .subject
                .as_ref()
                .and_then(|t| t.sub.as_deref())
                .unwrap_or("-"),
            idempotency = self.idempotency.unwrap_or("-"),
        );
    }
}

/// The response body as sent downstream: counts its bytes and writes the access-log line
/// when it ends — or when it is dropped unfinished (the client went away: `complete=false`).
#[derive(Debug)]
pub struct LoggedBody {
    inner: ResponseBody,
    bytes_out: u64,
    log: Option<AccessLog>,
    /// The request counts as in flight until its body is sent.
    _in_flight: GaugeGuard,
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = <ResponseBody as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(log) = this.log.take() {
                    log.write(this.bytes_out, true);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            // hyper never polls a body it knows is empty: those end here, complete.
            let complete = http_body::Body::is_end_stream(&self.inner);
            log.write(self.bytes_out, complete);
        }
    }
}

/// Log an optional value as itself or "-", like an access-log field.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

//! The request pipeline. `stages` is the one place where stage order is written, and the
//! only caller of select and forward:
//!
//! - limits       head size (431), declared body size (413)
//! - normalise    target → (authority, normal path), forged-header removal (400, 405)
//! - route        host + path prefix on segment boundaries → route and group (404, 405)
//! - auth         bearer JWT verified, revocation checked, claims forwarded (401, 503)
//! - idempotency  begin: key rules, lease / replay / in flight / mismatch (400, 409, 422)
//! - select       the group's balancer picks a replica (503 when none may take traffic)
//! - forward      one loop: send, retry where safe within the budget (502, 504)
//! - idempotency  finish: the outcome stored under the lease, or the key released
//! - complete     request id on the response, metrics, the access log line (`handle`)

mod auth;
mod body;
mod context;
mod forward;
mod headers;
mod idempotency;
mod limits;
mod normalise;
mod route;
mod select;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use tracing::{info, warn};

pub(crate) use crate::message::X_REQUEST_ID;
// For the benchmarks: the hot path's pieces, measured on their own.
pub use crate::message::new_request_id;
pub(crate) use body::{DownstreamBody, RelayBody};
pub(crate) use context::{Attempts, AwaitingUpstream, ConnInfo, Phase, RequestCtx, reached};
pub use headers::strip_hop_by_hop;
pub use idempotency::fingerprint as idempotency_fingerprint;

use crate::config::AccessFormat;
use crate::error::{Fault, ProxyError};
use crate::metrics::{GaugeGuard, MethodLabel, Metrics};
use crate::snapshot::Snapshot;
use forward::Outgoing;
use idempotency::Begun;

/// What doorman sends downstream: the replica's streamed body, or a small body of its own.
pub(crate) type ResponseBody = Either<RelayBody, Full<Bytes>>;

/// Run one request through every stage and always produce a response.
pub(crate) async fn handle(
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
    ctx.on_abandon = Some(context::Abandon {
        metrics: m.clone(),
        peer: conn.peer,
        access: access_log(snap),
    });
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
                    warn!(request_id = ?ctx.request_id, upstream = %OrDash(ctx.attempts.upstream), error = %err, "request failed")
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
    let head = record(&ctx, m, status, idempotency);
    let upstream_us = resp
        .extensions()
        .get::<forward::UpstreamTime>()
        .map(|t| t.0.as_micros() as u64);
    let log = access_log(snap).map(|format| {
        AccessLog::of(
            &mut ctx,
            conn.peer,
            status,
            head,
            upstream_us,
            idempotency,
            format,
        )
    });
    resp.map(|inner| LoggedBody {
        inner,
        bytes_out: 0,
        log,
        _in_flight: in_flight,
    })
}

/// The access log's format, when there is one to write to.
fn access_log(snap: &Snapshot) -> Option<AccessFormat> {
    snap.access_log.filter(|_| crate::logging::running())
}

/// A request whose handler was dropped before it had a response: the client went away
/// (closed the connection, reset the HTTP/2 stream). Counted and logged as 499, as nginx.
fn abandoned(ctx: &mut RequestCtx, a: &context::Abandon) {
    const CLIENT_CLOSED: u16 = 499;
    let idempotency = ctx.keyed.then_some("abandoned");
    let head = record(ctx, &a.metrics, CLIENT_CLOSED, idempotency);
    if let Some(format) = a.access {
        AccessLog::of(ctx, a.peer, CLIENT_CLOSED, head, None, idempotency, format).write(0, false);
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

/// The stages, in order. A stage that must answer early returns a response or an error.
async fn stages(
    mut req: Request<DownstreamBody>,
    ctx: &mut RequestCtx,
    conn: &Arc<ConnInfo>,
    snap: &Arc<Snapshot>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // limits: on the request as it came, so an oversized or malformed request never reaches
    // routing or a replica, and costs no normalising.
    limits::check(&req, &snap.settings)?;
    // normalise: every stage after it, and the replica, see the same request.
    let is_claim_header = |name: &str| {
        snap.auth
            .as_ref()
            .is_some_and(|v| v.forwarded_headers().any(|h| h.as_str() == name))
    };
    if normalise::request(&mut req, &snap.settings, &is_claim_header)? {
        ctx.uri = req.uri().clone();
    }
    // route: before select, as the route decides which group's balancer is asked.
    let route = route::find(&req, snap)?;
    ctx.route = Some(route.metrics.clone());
    normalise::method_allowed(req.method(), &route.allow_methods)?;
    // auth: the route says whether a token is needed; an unauthenticated request never
    // costs upstream capacity.
    let token = auth::check(req.headers_mut(), route.auth, snap).await?;
    ctx.token = token.clone();
    // The sticky key is read before idempotency consumes the request.
    let sticky = select::sticky_hash(&req, &route.group, token.as_deref(), conn);
    // idempotency begin: after auth (the key is scoped to the verified subject), before
    // select (a duplicate never costs a replica a call).
    let key = idempotency::client_key(&req, route.idempotency, &snap.idempotency)
        .inspect_err(|_| ctx.keyed = true)?;
    let (outgoing, lease) = match key {
        None => (Outgoing::Request(req), None),
        Some(key) => {
            ctx.keyed = true;
            // Boxed: keyed writes are the minority, and their large future would otherwise
            // be part of every request's (moved by value into hyper's dispatcher).
            let begun = idempotency::begin(
                req,
                key,
                route,
                token.as_deref(),
                &ctx.request_id,
                conn,
                snap,
            );
            match Box::pin(begun).await? {
                Begun::Replay(resp) => return Ok(resp),
                Begun::Forward { parts, body, lease } => (Outgoing::Held(parts, body), lease),
            }
        }
    };
    // select
    let group = &route.group;
    let first = select::replica(group, sticky);
    if let Ok(index) = first {
        ctx.attempts.upstream = Some(group.servers[index].address);
    }
    let max_body_bytes = snap.settings.max_body_bytes;
    let Some(lease) = lease else {
        // forward
        let exchange = forward::Exchange {
            group,
            conn,
            request_id: &ctx.request_id,
            sticky,
            max_body_bytes,
        };
        return forward::forward(outgoing, first?, &exchange, &mut ctx.attempts).await;
    };
    // forward, then idempotency finish: in a task of their own, within the lease.
    let (group, conn, request_id) = (route.group.clone(), conn.clone(), ctx.request_id.clone());
    let exchange = async move {
        let mut attempts = Attempts::default();
        let exchange = forward::Exchange {
            group: &group,
            conn: &conn,
            request_id: &request_id,
            sticky,
            max_body_bytes,
        };
        let sent = match first {
            Ok(first) => forward::forward(outgoing, first, &exchange, &mut attempts).await,
            Err(e) => Err(e),
        };
        (sent, attempts)
    };
    let (sent, attempts) = Box::pin(lease.forward_and_finish(exchange)).await;
    if let Some(attempts) = attempts {
        ctx.attempts = attempts;
    }
    sent
}

/// Last stage: count the request (the request id is already on the response). Its access
/// log line is written when the response body ends (`LoggedBody`), with the bytes sent.
/// Returns the time since the request's head was read (the access log's `head_us`).
fn record(
    ctx: &RequestCtx,
    m: &Metrics,
    status: u16,
    idempotency: Option<&'static str>,
) -> std::time::Duration {
    let route = ctx.route.as_deref().unwrap_or_else(|| m.no_route());
    let elapsed = ctx.started.elapsed();
    route.record(
        m,
        MethodLabel::of(&ctx.method),
        status,
        ctx.attempts.upstream,
        elapsed,
    );
    if let Some(outcome) = idempotency {
        Metrics::count(&m.idempotency, outcome);
    }
    elapsed
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
    format: AccessFormat,
}

impl AccessLog {
    /// Takes what it needs out of `ctx`, which is done with: moved, not cloned.
    fn of(
        ctx: &mut RequestCtx,
        peer: std::net::SocketAddr,
        status: u16,
        head: std::time::Duration,
        upstream_us: Option<u64>,
        idempotency: Option<&'static str>,
        format: AccessFormat,
    ) -> Self {
        AccessLog {
            request_id: std::mem::replace(&mut ctx.request_id, http::HeaderValue::from_static("")),
            peer,
            method: std::mem::take(&mut ctx.method),
            uri: std::mem::take(&mut ctx.uri),
            route: ctx.route.as_ref().map(|r| r.label.0.clone()),
            status,
            upstream: ctx.attempts.upstream,
            // A keyed request whose client left while its task forwarded it: at least the
            // attempt on the replica selected for it.
            attempts: ctx
                .attempts
                .count
                .max(u32::from(ctx.attempts.upstream.is_some())),
            started: ctx.started,
            head_us: head.as_micros() as u64,
            upstream_us,
            bytes_in: ctx.bytes_in,
            subject: ctx.token.take(),
            idempotency,
            format,
        }
    }

    fn write(&self, bytes_out: u64, complete: bool) {
        let now = std::time::Instant::now();
        let entry = crate::logging::line::Entry {
            time: crate::logging::line::wall_clock(now),
            request_id: self.request_id.as_bytes(),
            client: self.peer,
            method: self.method.as_str(),
            path: self.uri.path(),
            route: self.route.as_deref(),
            status: self.status,
            upstream: self.upstream,
            attempts: self.attempts,
            duration_us: now.duration_since(self.started).as_micros() as u64,
            head_us: self.head_us,
            upstream_us: self.upstream_us,
            bytes_in: self.bytes_in,
            bytes_out,
            complete,
            subject: self.subject.as_ref().and_then(|t| t.sub.as_deref()),
            idempotency: self.idempotency,
        };
        crate::logging::access(self.format, &entry);
    }
}

/// The response body as sent downstream: counts its bytes and writes the access-log line
/// when it ends — or when it is dropped unfinished (the client went away: `complete=false`).
#[derive(Debug)]
pub(crate) struct LoggedBody {
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

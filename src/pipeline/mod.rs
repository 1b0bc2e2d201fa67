//! The request pipeline. `handle` is the one place where stage order is written:
//!
//! 1. limits   — head size (431), declared body size (413), request id
//! 2. route    — host + path prefix → route and its upstream group (404)
//! 3. auth     — bearer JWT verified, revocation checked, claims forwarded (401 / 503)
//! 4. idempotency — keyed writes: lease / replay / 409 / 422, result stored (400 / 409 / 422)
//! 5. select   — the group's balancer picks a replica (503 when none may take traffic)
//! 6. forward  — hop-by-hop stripped, X-Forwarded-* set, bodies streamed both ways
//! 7. complete — request id on the response, access log line

mod auth;
mod body;
mod context;
mod forward;
mod idempotency;
mod limits;
mod retry;
mod route;
mod select;

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tracing::{info, warn};

pub use body::{BodyError, LimitedBody, RelayBody};
pub use context::{AwaitingUpstream, ConnInfo, Phase, RequestCtx, reached};
pub use forward::{HOP_BY_HOP, strip_hop_by_hop};
pub use limits::{is_sane_request_id, new_request_id};

use crate::error::{Fault, ProxyError};
use crate::snapshot::Snapshot;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What doorman sends downstream: the replica's streamed body, or a small body of its own.
pub type ResponseBody = Either<RelayBody, Full<Bytes>>;

/// Run one request through every stage and always produce a response.
pub async fn handle(
    req: Request<Incoming>,
    conn: &Arc<ConnInfo>,
    snap: &Arc<Snapshot>,
) -> Response<ResponseBody> {
    let mut ctx = RequestCtx::new(&req);
    let mut resp = match stages(req, &mut ctx, conn, snap).await {
        Ok(resp) => resp,
        Err(err) => {
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
    complete(&mut resp, &ctx);
    resp
}

async fn stages(
    mut req: Request<Incoming>,
    ctx: &mut RequestCtx,
    conn: &Arc<ConnInfo>,
    snap: &Arc<Snapshot>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // Limits first: an oversized or malformed request never reaches routing or a replica.
    limits::check(&req, &snap.settings)?;
    // Route before select: the route decides which group's balancer is asked.
    let host = route::host_of(&req)?;
    let route = snap
        .route(host.as_deref(), req.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    ctx.route = Some(route.path_prefix.clone());
    // Auth after route (the route says whether a token is needed), before any replica is
    // chosen: an unauthenticated request never costs upstream capacity.
    let token = auth::check(req.headers_mut(), route.auth, snap).await?;
    // Idempotency after auth (the key is scoped to the verified subject), before select
    // (a duplicate must never cost a replica a call).
    // The sticky key is read before the body or the request is consumed.
    let sticky = select::sticky_hash(&req, &route.group, token.as_deref(), conn);
    if let Some(key) = idempotency::client_key(&req, route.idempotency, &snap.idempotency)? {
        // Keys are scoped to the host too (routes may match many hosts).
        let host = route::host_of(&req)?
            .map(|h| h.into_owned())
            .unwrap_or_default();
        return idempotency::run(req, &host, key, token, sticky, ctx, conn, route, snap).await;
    }
    let group = &route.group;
    group.deposit_retry_budget();
    let index = group.select_for(sticky).ok_or(ProxyError::NoUpstream)?;
    // A streamed body or an upgrade can be sent once only; bodiless requests can be
    // re-sent on another replica where that is safe.
    let once_only = !http_body::Body::is_end_stream(req.body()) || forward::asks_upgrade(&req);
    if group.retries == 0 || once_only {
        let upstream = &group.servers[index];
        ctx.upstream = Some(upstream.address);
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
    retry::forward_with_retries(req, index, sticky, ctx, conn, group).await
}

/// Last stage: every response carries the request id, and every request gets one log line.
fn complete(resp: &mut Response<ResponseBody>, ctx: &RequestCtx) {
    resp.headers_mut()
        .insert(X_REQUEST_ID, ctx.request_id.clone());
    info!(
        target: "doorman::access",
        method = %ctx.method,
        path = ctx.uri.path(),
        status = resp.status().as_u16(),
        upstream = %OrDash(ctx.upstream),
        route = ctx.route.as_deref().unwrap_or("-"),
        duration_us = ctx.started.elapsed().as_micros() as u64,
        request_id = ctx.request_id.to_str().unwrap_or("-"),
    );
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

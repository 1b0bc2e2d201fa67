//! Stage 6 for requests that can be re-sent: bodiless and not upgrades. RFC 9110 §9.2.2: a
//! proxy must not blindly retry non-idempotent requests, so
//! - a connection that could not be made (nothing was sent) is retried for any method;
//! - a reset or a timeout before the response head is retried only for GET, HEAD, OPTIONS,
//!   PUT, DELETE and TRACE.
//!
//! Each retry goes to a replica not tried yet, within the group's `retries` and its retry
//! budget (retries add at most `retry_budget` to the request rate).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tracing::warn;

use super::context::{ConnInfo, RequestCtx};
use super::{ResponseBody, forward};
use crate::error::ProxyError;
use crate::upstream::UpstreamGroup;

/// At most 1 + 10 attempts (`retries` is capped at 10 when the config is loaded).
const MAX_ATTEMPTS: usize = 11;

pub(super) async fn forward_with_retries(
    req: Request<Incoming>,
    first: usize,
    sticky: Option<u64>,
    ctx: &mut RequestCtx,
    conn: &Arc<ConnInfo>,
    group: &UpstreamGroup,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (parts, _empty_body) = req.into_parts();
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut attempts = 0;
    let mut current = first;
    loop {
        tried[attempts] = current;
        attempts += 1;
        let upstream = &group.servers[current];
        ctx.upstream = Some(upstream.address);
        let mut attempt = Request::new(());
        *attempt.method_mut() = parts.method.clone();
        *attempt.uri_mut() = parts.uri.clone();
        *attempt.version_mut() = parts.version;
        *attempt.headers_mut() = parts.headers.clone();
        let (attempt, ()) = attempt.into_parts();
        let err = match forward::send_buffered(
            attempt,
            Bytes::new(),
            &ctx.request_id,
            conn,
            group,
            upstream,
        )
        .await
        {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        let safe_to_retry = match &err {
            ProxyError::UpstreamConnect(_) => true,
            ProxyError::UpstreamBroken(_) | ProxyError::UpstreamTimeout => idempotent,
            _ => false,
        };
        if !safe_to_retry || attempts > group.retries as usize || attempts >= MAX_ATTEMPTS {
            return Err(err);
        }
        let Some(next) = group.select_excluding(sticky, &tried[..attempts]) else {
            return Err(err);
        };
        if !group.withdraw_retry() {
            warn!(request_id = ?ctx.request_id, "retry budget exhausted; not retrying");
            return Err(err);
        }
        warn!(
            request_id = ?ctx.request_id,
            failed = %upstream.address,
            next = %group.servers[next].address,
            error = %err,
            "retrying on another replica"
        );
        current = next;
    }
}

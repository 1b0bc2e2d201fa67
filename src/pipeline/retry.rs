//! Stage 7 (forward) for requests that can be re-sent: not upgrades, and bodiless or with a small
//! declared body held in memory. RFC 9110 §9.2.2: a proxy must not blindly retry
//! non-idempotent requests, so
//! - a connection that could not be made (nothing was sent) is retried for any method;
//! - a reset or a timeout before the response head is retried only for GET, HEAD, OPTIONS,
//!   PUT, DELETE and TRACE: a POST or PATCH may already have been acted on.
//!
//! Each retry goes to a replica not tried yet, within the group's `retries` and its retry
//! budget (retries add at most `retry_budget` to the request rate).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use tracing::warn;

use super::context::{ConnInfo, RequestCtx};
use super::{ResponseBody, forward};
use crate::error::ProxyError;
use crate::upstream::UpstreamGroup;

/// At most 1 + 10 attempts (`retries` is capped at 10 when the config is loaded).
const MAX_ATTEMPTS: usize = 11;

/// Bodies up to this size (declared by Content-Length) are read whole so that they can be
/// sent again; larger or chunked ones stream once.
pub(super) const REPLAY_BODY_BYTES: u64 = 64 * 1024;

/// Whether the request declares a body small enough to hold for a possible retry.
pub(super) fn replayable_length<B>(req: &Request<B>, max_body_bytes: u64) -> bool {
    // `limits` refused a malformed length already; none here means "not replayable".
    crate::message::content_length::from_headers(req.headers())
        .ok()
        .flatten()
        .is_some_and(|n| n <= REPLAY_BODY_BYTES.min(max_body_bytes))
}

pub(super) async fn forward_with_retries(
    mut parts: http::request::Parts,
    body: Bytes,
    first: usize,
    sticky: Option<u64>,
    ctx: &mut RequestCtx,
    conn: &Arc<ConnInfo>,
    group: &UpstreamGroup,
) -> Result<Response<ResponseBody>, ProxyError> {
    let idempotent = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    // One head for every attempt.
    let forwarded = forward::prepare(&mut parts, None, &ctx.request_id, conn);
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut attempts = 0;
    let mut current = first;
    loop {
        tried[attempts] = current;
        attempts += 1;
        ctx.attempts = attempts as u32;
        let upstream = &group.servers[current];
        ctx.upstream = Some(upstream.address);
        let err =
            match forward::send_prepared(&parts, &forwarded, body.clone(), conn, group, upstream)
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
            group.metrics.retry_budget_exhausted.inc();
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
        group.metrics.retries.inc();
        current = next;
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

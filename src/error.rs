//! The one proxy error type, who is at fault, and the one place that turns it into a status.
//!
//! Internals (addresses, io errors) stay in `detail` for the log; the client only ever sees
//! `client_message()` and the request id.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

/// Who caused a failed request: decides the log level and, later, the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Downstream,
    Upstream,
    Internal,
}

/// Why a key whose request already ran has no response to replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReplayable {
    /// The response was larger than `max_stored_body_bytes`.
    TooLarge,
    /// The replica sent a response head that commits the key, but the body did not arrive
    /// whole (broken off, stalled, or still streaming when the lease ran out).
    Incomplete,
}

/// Every way a proxied request can fail before the upstream's own response is relayed.
#[derive(Debug)]
pub(crate) enum ProxyError {
    /// The request cannot be proxied as sent (no Host, bad framing, ...).
    BadRequest(&'static str),
    /// The request uses a feature doorman does not implement (a transfer coding other
    /// than chunked).
    NotImplemented(&'static str),
    /// No usable bearer token (None: none was sent; Some: why the one sent was refused).
    Unauthorized(Option<&'static str>),
    /// The idempotency key is missing on a required route, or malformed.
    IdempotencyKey(&'static str),
    /// The same key is being processed right now; retry after this many seconds.
    IdempotencyInFlight(u64),
    /// The same key was used for a different request.
    IdempotencyMismatch,
    /// The key's request ran, but its response cannot be replayed: a retry is refused (409),
    /// never run again.
    IdempotencyNotReplayable(NotReplayable),
    /// No route matches the request's host and path.
    NoRoute,
    /// CONNECT anywhere, TRACE where the route does not allow it (RFC 9110 §15.5.6).
    MethodNotAllowed,
    /// The request head is larger than `server.max_header_bytes`.
    HeadTooLarge,
    /// The request body is larger than `server.max_body_bytes`.
    BodyTooLarge,
    /// The client went away or sent a broken body while we were forwarding it.
    DownstreamAborted(String),
    /// The request body stopped moving for `idle_timeout` mid-upload.
    BodyTimeout,
    /// The route's group has no server that may take traffic.
    NoUpstream,
    /// The state store could not answer within its budget and `on_error = "closed"`.
    StoreUnavailable(String),
    /// Connecting to the chosen replica failed (refused, unreachable, connect timeout).
    UpstreamConnect(String),
    /// The replica closed or reset the connection, or answered with a broken response.
    UpstreamBroken(String),
    /// The replica did not answer within the group's `response_timeout`.
    UpstreamTimeout,
    /// A bug or resource failure inside doorman.
    Internal(String),
}

impl ProxyError {
    /// The one mapping from error to HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::IdempotencyKey(_) => StatusCode::BAD_REQUEST,
            ProxyError::IdempotencyInFlight(_) => StatusCode::CONFLICT,
            ProxyError::IdempotencyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            ProxyError::IdempotencyNotReplayable(_) => StatusCode::CONFLICT,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::DownstreamAborted(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::NoUpstream => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamBroken(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(crate) fn fault(&self) -> Fault {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::Unauthorized(_)
            | ProxyError::IdempotencyKey(_)
            | ProxyError::IdempotencyInFlight(_)
            | ProxyError::IdempotencyMismatch
            | ProxyError::IdempotencyNotReplayable(_)
            | ProxyError::NoRoute
            | ProxyError::MethodNotAllowed
            | ProxyError::HeadTooLarge
            | ProxyError::BodyTooLarge
            | ProxyError::DownstreamAborted(_)
            | ProxyError::BodyTimeout => Fault::Downstream,
            ProxyError::NoUpstream
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UpstreamTimeout => Fault::Upstream,
            ProxyError::Internal(_) | ProxyError::StoreUnavailable(_) => Fault::Internal,
        }
    }

    /// What the client is told: short, stable, free of internals.
    pub(crate) fn client_message(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(why) => why,
            ProxyError::NotImplemented(why) => why,
            ProxyError::Unauthorized(None) => "missing bearer token",
            ProxyError::Unauthorized(Some(why)) => why,
            ProxyError::IdempotencyKey(why) => why,
            ProxyError::IdempotencyInFlight(_) => {
                "a request with this idempotency key is in progress"
            }
            ProxyError::IdempotencyMismatch => "idempotency key reused with a different request",
            ProxyError::IdempotencyNotReplayable(NotReplayable::TooLarge) => {
                "the original response to this idempotency key was too large to store and cannot be replayed"
            }
            ProxyError::IdempotencyNotReplayable(NotReplayable::Incomplete) => {
                "the original request with this idempotency key was processed, but its response did not arrive whole and cannot be replayed"
            }
            ProxyError::NoRoute => "no route for this host and path",
            ProxyError::MethodNotAllowed => "method not allowed",
            ProxyError::HeadTooLarge => "request header fields too large",
            ProxyError::BodyTooLarge => "request body too large",
            ProxyError::DownstreamAborted(_) => "request body could not be read",
            ProxyError::BodyTimeout => "request body timed out",
            ProxyError::NoUpstream => "no upstream server available",
            ProxyError::StoreUnavailable(_) => "state store unavailable",
            ProxyError::UpstreamConnect(_) => "upstream connection failed",
            ProxyError::UpstreamBroken(_) => "upstream closed the connection",
            ProxyError::UpstreamTimeout => "upstream timed out",
            ProxyError::Internal(_) => "internal error",
        }
    }

    /// The JSON error response: `{"error": "...", "request_id": "..."}`; a 401 also carries
    /// the RFC 6750 `WWW-Authenticate` challenge.
    pub(crate) fn to_response(&self, request_id: &HeaderValue) -> Response<Full<Bytes>> {
        let mut resp = error_response(self.status(), self.client_message(), request_id);
        if let ProxyError::Unauthorized(why) = self {
            let challenge = match why {
                None => HeaderValue::from_static("Bearer"),
                // Descriptions are our own static ASCII strings, never token content.
                Some(d) => HeaderValue::from_str(&format!(
                    "Bearer error=\"invalid_token\", error_description=\"{d}\""
                ))
                .unwrap_or_else(|_| HeaderValue::from_static("Bearer error=\"invalid_token\"")),
            };
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let ProxyError::MethodNotAllowed = self {
            // RFC 9110 §15.5.6: a 405 lists what the target supports. TRACE and CONNECT are
            // the only methods doorman itself refuses; the rest are the replica's to judge.
            resp.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        if let ProxyError::IdempotencyInFlight(secs) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
        }
        resp
    }
}

impl fmt::Display for ProxyError {
    /// The log form: the client message plus whatever detail we kept.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::DownstreamAborted(d)
            | ProxyError::UpstreamConnect(d)
            | ProxyError::UpstreamBroken(d)
            | ProxyError::Internal(d)
            | ProxyError::StoreUnavailable(d) => write!(f, "{}: {}", self.client_message(), d),
            ProxyError::BadRequest(_)
            | ProxyError::NotImplemented(_)
            | ProxyError::Unauthorized(_)
            | ProxyError::IdempotencyKey(_)
            | ProxyError::IdempotencyInFlight(_)
            | ProxyError::IdempotencyMismatch
            | ProxyError::IdempotencyNotReplayable(_)
            | ProxyError::NoRoute
            | ProxyError::MethodNotAllowed
            | ProxyError::HeadTooLarge
            | ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout
            | ProxyError::NoUpstream
            | ProxyError::UpstreamTimeout => f.write_str(self.client_message()),
        }
    }
}

impl std::error::Error for ProxyError {}

/// A JSON error response with the request id echoed in body and header.
pub(crate) fn error_response(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": message,
        "request_id": request_id.to_str().unwrap_or(""),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(crate::message::X_REQUEST_ID, request_id.clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn status_of(e: ProxyError) -> u16 {
        e.status().as_u16()
    }

    #[test]
    fn method_not_allowed_is_405_with_allow() {
        let r = ProxyError::MethodNotAllowed.to_response(&HeaderValue::from_static("r"));
        assert_eq!(r.status(), 405);
        assert_eq!(
            r.headers()[header::ALLOW],
            "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
        );
        assert_eq!(ProxyError::MethodNotAllowed.fault(), Fault::Downstream);
    }

    #[test]
    fn bad_request_is_400() {
        assert_eq!(
            status_of(ProxyError::BadRequest("missing Host header")),
            400
        );
    }
    #[test]
    fn not_implemented_is_501_and_the_clients_fault() {
        let e = ProxyError::NotImplemented("unsupported Transfer-Encoding");
        assert_eq!(
            (status_of(ProxyError::NotImplemented("x")), e.fault()),
            (501, Fault::Downstream)
        );
        assert_eq!(e.client_message(), "unsupported Transfer-Encoding");
    }
    #[test]
    fn unauthorized_is_401_with_a_bearer_challenge() {
        let id = HeaderValue::from_static("r");
        assert_eq!(status_of(ProxyError::Unauthorized(None)), 401);
        let r = ProxyError::Unauthorized(None).to_response(&id);
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let r = ProxyError::Unauthorized(Some("token expired")).to_response(&id);
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\", error_description=\"token expired\""
        );
    }
    #[test]
    fn idempotency_arms() {
        assert_eq!(status_of(ProxyError::IdempotencyKey("missing")), 400);
        assert_eq!(status_of(ProxyError::IdempotencyMismatch), 422);
        for why in [NotReplayable::TooLarge, NotReplayable::Incomplete] {
            let e = ProxyError::IdempotencyNotReplayable(why);
            assert_eq!((e.status().as_u16(), e.fault()), (409, Fault::Downstream));
        }
        assert_ne!(
            ProxyError::IdempotencyNotReplayable(NotReplayable::TooLarge).client_message(),
            ProxyError::IdempotencyNotReplayable(NotReplayable::Incomplete).client_message()
        );
        let r = ProxyError::IdempotencyInFlight(3).to_response(&HeaderValue::from_static("r"));
        assert_eq!(r.status(), 409);
        assert_eq!(r.headers()["retry-after"], "3");
    }
    #[test]
    fn store_unavailable_is_503() {
        assert_eq!(
            status_of(ProxyError::StoreUnavailable("timeout".into())),
            503
        );
    }
    #[test]
    fn no_route_is_404() {
        assert_eq!(status_of(ProxyError::NoRoute), 404);
    }
    #[test]
    fn head_too_large_is_431() {
        assert_eq!(status_of(ProxyError::HeadTooLarge), 431);
    }
    #[test]
    fn body_too_large_is_413() {
        assert_eq!(status_of(ProxyError::BodyTooLarge), 413);
    }
    #[test]
    fn downstream_aborted_is_400() {
        assert_eq!(status_of(ProxyError::DownstreamAborted("eof".into())), 400);
    }
    #[test]
    fn stalled_body_is_408() {
        assert_eq!(status_of(ProxyError::BodyTimeout), 408);
    }
    #[test]
    fn no_upstream_is_503() {
        assert_eq!(status_of(ProxyError::NoUpstream), 503);
    }
    #[test]
    fn connect_failure_is_502() {
        assert_eq!(
            status_of(ProxyError::UpstreamConnect("refused".into())),
            502
        );
    }
    #[test]
    fn upstream_reset_is_502() {
        assert_eq!(status_of(ProxyError::UpstreamBroken("reset".into())), 502);
    }
    #[test]
    fn upstream_timeout_is_504() {
        assert_eq!(status_of(ProxyError::UpstreamTimeout), 504);
    }
    #[test]
    fn internal_is_500() {
        assert_eq!(status_of(ProxyError::Internal("bug".into())), 500);
    }

    #[test]
    fn faults_are_attributed() {
        assert_eq!(ProxyError::HeadTooLarge.fault(), Fault::Downstream);
        assert_eq!(ProxyError::UpstreamTimeout.fault(), Fault::Upstream);
        assert_eq!(ProxyError::Internal("x".into()).fault(), Fault::Internal);
    }

    #[tokio::test]
    async fn client_never_sees_internal_detail() {
        let id = HeaderValue::from_static("req-1");
        let err = ProxyError::UpstreamConnect("connect 10.0.0.7:9001: refused".into());
        assert_eq!(
            err.to_string(),
            "upstream connection failed: connect 10.0.0.7:9001: refused"
        );
        let resp = err.to_response(&id);
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-request-id"], "req-1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": "upstream connection failed", "request_id": "req-1"})
        );
    }
}

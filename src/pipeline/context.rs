//! Per-connection and per-request context carried through the pipeline stages.

use std::net::SocketAddr;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Uri};
use tokio::sync::OwnedSemaphorePermit;

use super::X_REQUEST_ID;
use super::limits::{is_sane_request_id, new_request_id};

/// Facts about the downstream connection, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// "https" on the TLS listener, "http" on the plain one.
    pub scheme: &'static str,
    /// The peer's IP, preformatted for X-Forwarded-For.
    pub peer_ip: HeaderValue,
    /// The connection-limit permit: upgraded tunnels hold it too, so they count as connections.
    pub permit: Option<OwnedSemaphorePermit>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        scheme: &'static str,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .expect("an IP address is a valid header value");
        ConnInfo {
            peer,
            scheme,
            peer_ip,
            permit,
        }
    }
}

/// What one request accumulates as it moves through the stages.
#[derive(Debug)]
pub struct RequestCtx {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
    pub route: Option<String>,
    pub upstream: Option<SocketAddr>,
}

impl RequestCtx {
    pub fn new<B>(req: &Request<B>) -> Self {
        // Keep the client's id when it is sane, so one id follows a request across systems.
        let request_id = match req.headers().get(X_REQUEST_ID) {
            Some(v) if is_sane_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        };
        RequestCtx {
            started: Instant::now(),
            request_id,
            method: req.method().clone(),
            uri: req.uri().clone(),
            route: None,
            upstream: None,
        }
    }
}

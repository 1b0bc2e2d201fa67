//! Per-connection and per-request context carried through the pipeline stages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Uri};
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::message::{X_REQUEST_ID, is_sane_request_id, new_request_id};

/// Where the server is in its life: connections and tunnels watch this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Serving,
    /// Shutdown began: finish what is in flight, take nothing new.
    Draining,
    /// The grace period is over: close everything now.
    Closing,
}

/// Resolves once `phase` reaches `at_least`, with the phase seen. A server that is gone
/// (sender dropped) counts as `Closing`.
pub(crate) async fn reached(phase: &mut watch::Receiver<Phase>, at_least: Phase) -> Phase {
    // The borrow guard is dropped here, before the caller awaits anything else.
    match phase.wait_for(|p| *p >= at_least).await {
        Ok(p) => *p,
        Err(_) => Phase::Closing,
    }
}

/// Facts and live counters about one downstream connection, shared by its requests.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    /// "https" on the TLS listener, "http" on the plain one.
    pub scheme: &'static str,
    /// The peer's IP, preformatted for X-Forwarded-For.
    pub peer_ip: HeaderValue,
    /// The connection-limit permit: upgraded tunnels hold it too, so they count as connections.
    _permit: Option<OwnedSemaphorePermit>,
    /// Reads and writes on the socket (see `idle::Tracked`).
    pub activity: Arc<AtomicU64>,
    /// Requests started on this connection.
    pub requests: AtomicU64,
    /// Requests whose body is sent and which wait for the replica's response head (the
    /// group's `response_timeout` bounds them), or keyed requests reading a committed
    /// response's body before answering (each read under `idle_timeout`): bounded on their
    /// own, so the idle watchdog leaves them alone.
    pub awaiting_upstream: AtomicUsize,
    pub phase: watch::Receiver<Phase>,
    pub idle_timeout: Duration,
    /// Set when the last request ended before its body was read to the end: closing the
    /// connection then lingers (see `idle::Tracked::lingering`).
    pub linger: Arc<AtomicBool>,
    /// Counts the connection as open for as long as it (or a tunnel it became) lives.
    _open: Option<crate::metrics::GaugeGuard>,
}

impl ConnInfo {
    pub(crate) fn new(
        peer: SocketAddr,
        scheme: &'static str,
        permit: Option<OwnedSemaphorePermit>,
        phase: watch::Receiver<Phase>,
        idle_timeout: Duration,
        open: Option<crate::metrics::GaugeGuard>,
    ) -> Self {
        // An IPv4 client on a dual-stack listener is logged and forwarded as a.b.c.d.
        let peer_ip = HeaderValue::try_from(peer.ip().to_canonical().to_string())
            .expect("an IP address is a valid header value");
        ConnInfo {
            peer,
            scheme,
            peer_ip,
            _permit: permit,
            activity: Arc::default(),
            requests: AtomicU64::new(0),
            awaiting_upstream: AtomicUsize::new(0),
            phase,
            idle_timeout,
            linger: Arc::default(),
            _open: open,
        }
    }
}

/// Counts a request as waiting on its replica for as long as the guard lives.
pub(crate) struct AwaitingUpstream<'a>(&'a AtomicUsize);

impl<'a> AwaitingUpstream<'a> {
    pub(crate) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        AwaitingUpstream(counter)
    }
}

impl Drop for AwaitingUpstream<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request went: the last replica tried and how many attempts it took.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Attempts {
    pub upstream: Option<SocketAddr>,
    pub count: u32,
}

impl Attempts {
    pub(super) fn on(&mut self, upstream: SocketAddr) {
        self.upstream = Some(upstream);
        self.count += 1;
    }
}

/// What one request accumulates as it moves through the stages.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
    /// The matched route's metric handles and label.
    pub route: Option<Arc<crate::metrics::RouteMetrics>>,
    /// The replicas the request was sent to (retries included).
    pub attempts: Attempts,
    /// The verified token, for the access log's subject.
    pub token: Option<Arc<crate::auth::VerifiedToken>>,
    /// The request carried an idempotency key the route enforces.
    pub keyed: bool,
    /// The declared request body length.
    pub bytes_in: Option<u64>,
    /// Set while the request is being handled: if the handler is dropped before it has a
    /// response (the client went away), `Drop` counts and logs the request as 499.
    pub(super) on_abandon: Option<Abandon>,
}

/// What counting and logging an abandoned request needs.
#[derive(Debug)]
pub(super) struct Abandon {
    pub(super) metrics: Arc<crate::metrics::Metrics>,
    pub(super) peer: SocketAddr,
    pub(super) access: Option<crate::config::AccessFormat>,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let Some(a) = self.on_abandon.take() {
            super::abandoned(self, &a);
        }
    }
}

impl RequestCtx {
    pub(crate) fn new<B>(req: &Request<B>) -> Self {
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
            attempts: Attempts::default(),
            token: None,
            keyed: false,
            on_abandon: None,
            bytes_in: crate::message::content_length::from_headers(req.headers())
                .ok()
                .flatten(),
        }
    }
}

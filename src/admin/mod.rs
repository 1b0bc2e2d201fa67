//! The admin listener: `GET /health` (process alive), `GET /ready` (config loaded, listeners
//! bound, not draining, the identity provider's key set loaded), `POST /revocations` (revoke a token or a subject), `POST /reload`
//! (reload proxy.toml now) and `GET /reload` (the last reload's outcome). Plain HTTP/1.1 on
//! its own address — keep it on loopback or a private network.
//!
//! Every request passes three gates first, in this order (see `gate`):
//! 1. Host: the request's authority (absolute-form target, and the `Host` header) must be
//!    an IP literal (v4, or bracketed v6), `localhost`, or a name in `[server] admin_hosts`,
//!    with an optional port; else 421. A DNS-rebinding page reaches us under its own name,
//!    so it is refused before it can read `/status` or post anything. No Host: 421 too.
//! 2. Token: with `[server] admin_token_env`, `Authorization: Bearer <token>` (compared in
//!    constant time) on every endpoint except the liveness probes `/health` and `/ready`
//!    (orchestrators probe without secrets; they disclose nothing) and the status page's
//!    static HTML shell (a browser cannot attach a header to a navigation; the page sends
//!    the token, taken from `#token=` in its URL, with its JSON requests); else 401.
//! 3. Content type: every method other than GET and HEAD needs `Content-Type:
//!    application/json`; else 415. A browser cannot send that cross-site without a CORS
//!    preflight, which this listener never grants, so no page can POST here.

mod client;
mod gate;
mod reload;
mod revocations;
mod status;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::reload::Reloader;
use crate::snapshot::{SharedSnapshot, Snapshot};

pub use client::{post_revocation, request};
use status::Totals;

/// State the admin endpoints report on.
/// The addresses the listeners are actually bound to (the server binds them; `/status`
/// shows them).
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub tls: std::net::SocketAddr,
    pub plain: Option<std::net::SocketAddr>,
    pub admin: std::net::SocketAddr,
}

#[derive(Debug, Default)]
pub(crate) struct AdminState {
    pub ready: AtomicBool,
    /// None when the server was started without a config file to reload (tests, demo).
    pub reloader: Option<Arc<Reloader>>,
    /// Where the listeners are bound now (a reload may move them).
    pub listeners: std::sync::Mutex<Option<BoundAddrs>>,
    /// Per-replica (answered, failed) totals every few seconds, for recent error rates.
    history: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, Totals)>>,
}

impl AdminState {
    pub(crate) fn new(reloader: Option<Arc<Reloader>>, listeners: BoundAddrs) -> Self {
        AdminState {
            ready: AtomicBool::new(false),
            reloader,
            listeners: std::sync::Mutex::new(Some(listeners)),
            history: Default::default(),
        }
    }
}

/// Serve the admin endpoints until `stop` (a reload moved the listener) or abort.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    snapshot: SharedSnapshot,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut stop => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        let snapshot = snapshot.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                let snap = snapshot.load_full();
                async move { Ok::<_, Infallible>(answer(req, &state, &snap).await) }
            });
            let result = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            if let Err(e) = result {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    state: &AdminState,
    snap: &Snapshot,
) -> Response<Full<Bytes>> {
    if let Some(refused) = gate::gate(&req, &snap.settings) {
        return refused;
    }
    if req.uri().path() == "/reload" {
        return reload::answer(req, state).await;
    }
    if req.uri().path() == "/revocations" {
        return match *req.method() {
            Method::POST => revocations::revoke(req, snap).await,
            _ => json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method not allowed"}"#,
            ),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method not allowed"}"#,
        );
    }
    match req.uri().path() {
        "/health" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/metrics" => metrics(snap),
        "/status" => status::answer(&req, state, snap).await,
        // Ready: serving, every upstream group has a replica that may take traffic, and the
        // identity provider's key set (if any) has loaded once.
        "/ready"
            if state.ready.load(Ordering::Acquire)
                && snap.groups.iter().all(|g| g.has_live_replica())
                && snap.auth.as_ref().is_none_or(|v| v.keys_ready()) =>
        {
            json(StatusCode::OK, r#"{"ready":true}"#)
        }
        "/ready" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    }
}

fn wants_json<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// `Content-Type: application/json` (parameters such as charset allowed).
fn json_content_type<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
}

/// `GET /metrics`: the live replica gauges are read from the snapshot now, then everything
/// is encoded as OpenMetrics text.
fn metrics(snap: &Snapshot) -> Response<Full<Bytes>> {
    let m = &snap.metrics;
    m.set_jwks(
        snap.auth
            .as_ref()
            .and_then(|v| v.jwks())
            .map(|j| j.gauges()),
    );
    m.refresh(snap.groups.iter().flat_map(|g| {
        g.servers.iter().map(|s| {
            let in_flight = s.in_flight.load(std::sync::atomic::Ordering::Relaxed);
            (&g.label, s.address, s.usable(), in_flight)
        })
    }));
    let mut resp = Response::new(Full::new(Bytes::from(m.encode())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}

fn json_owned(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = json(status, "");
    *resp.body_mut() = Full::new(Bytes::from(body.to_string()));
    resp
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

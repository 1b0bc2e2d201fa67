//! The admin listener: `GET /health` (process alive), `GET /ready` (config loaded, listeners
//! bound, not draining), `POST /revocations` (revoke a token or a subject), `POST /reload`
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

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::auth::unix_now;
use crate::config::{AdminToken, ServerSettings};
use crate::reload::{ReloadStatus, Reloader};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::store::{Revoke, StoreError};

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

/// (group, replica) → (selections, answered, failed).
type Totals = std::collections::HashMap<(String, std::net::SocketAddr), (u64, u64, u64)>;

/// How far back "recent" error rates look.
const RECENT: std::time::Duration = std::time::Duration::from_secs(60);

fn totals(snap: &Snapshot) -> Totals {
    snap.groups
        .iter()
        .flat_map(|g| {
            g.servers.iter().map(|s| {
                (
                    (g.name.clone(), s.address),
                    (
                        s.metrics.selections.get(),
                        s.metrics.answered.get(),
                        s.metrics.failed.get(),
                    ),
                )
            })
        })
        .collect()
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

    /// Record the current totals (called every few seconds by the server).
    pub(crate) fn sample(&self, snap: &Snapshot) {
        let now = std::time::Instant::now();
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.push_back((now, totals(snap)));
        while h
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RECENT + RECENT / 10)
        {
            h.pop_front();
        }
    }

    /// The oldest sample within the recent window.
    fn baseline(&self) -> Option<(std::time::Duration, Totals)> {
        let now = std::time::Instant::now();
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.iter()
            .find(|(t, _)| now.duration_since(*t) <= RECENT + RECENT / 10)
            .map(|(t, totals)| (now.duration_since(*t), totals.clone()))
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
    if let Some(refused) = gate(&req, &snap.settings) {
        return refused;
    }
    if req.uri().path() == "/reload" {
        return match (&state.reloader, req.method()) {
            (None, _) => json(
                StatusCode::NOT_FOUND,
                r#"{"error":"this instance was not started from a config file"}"#,
            ),
            (Some(r), &Method::GET) => reload_answer(r.status()),
            (Some(r), &Method::POST) => match reload_body(req).await {
                Err(refused) => refused,
                Ok(()) => match r.reload().await {
                    Some(status) => reload_answer(status),
                    None => json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"error":"shutting down"}"#,
                    ),
                },
            },
            _ => json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method not allowed"}"#,
            ),
        };
    }
    if req.uri().path() == "/revocations" {
        return match *req.method() {
            Method::POST => revoke(req, snap).await,
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
        "/status" => {
            if wants_json(&req) {
                json_owned(StatusCode::OK, status(state, snap).await)
            } else {
                let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp
            }
        }
        // Ready: serving, and every upstream group has a replica that may take traffic.
        "/ready"
            if state.ready.load(Ordering::Acquire)
                && snap.groups.iter().all(|g| g.has_live_replica()) =>
        {
            json(StatusCode::OK, r#"{"ready":true}"#)
        }
        "/ready" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    }
}

/// The gates every admin request passes before its endpoint (see the module docs): the
/// refusal, or None to go on.
fn gate(req: &Request<Incoming>, settings: &ServerSettings) -> Option<Response<Full<Bytes>>> {
    if !host_allowed(req, &settings.admin_hosts) {
        debug!(host = ?req.headers().get(header::HOST), "admin request for another host refused");
        return Some(json(
            StatusCode::MISDIRECTED_REQUEST,
            r#"{"error":"Host must be an IP address, localhost or one of [server] admin_hosts"}"#,
        ));
    }
    let path = req.uri().path();
    let reads = req.method() == Method::GET || req.method() == Method::HEAD;
    let open =
        path == "/health" || path == "/ready" || (path == "/status" && reads && !wants_json(req));
    if let Some(token) = &settings.admin_token
        && !open
        && !bearer_matches(req, token)
    {
        debug!(%path, "admin request without the admin token refused");
        let mut resp = json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"admin token required: Authorization: Bearer <token>"}"#,
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Bearer realm="doorman admin""#),
        );
        return Some(resp);
    }
    if !reads && !json_content_type(req) {
        return Some(json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            r#"{"error":"Content-Type must be application/json"}"#,
        ));
    }
    None
}

/// Whether the request names this listener by an address or an allowed name: the
/// absolute-form target's authority, if any, and the one `Host` header must both pass.
fn host_allowed(req: &Request<Incoming>, admin_hosts: &[String]) -> bool {
    if let Some(a) = req.uri().authority()
        && !authority_allowed(a.as_str(), admin_hosts)
    {
        return false;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().is_ok_and(|h| authority_allowed(h, admin_hosts)),
        // HTTP/1.1 requires exactly one Host; the absolute form may stand in for it.
        (None, _) => req.uri().authority().is_some(),
        (Some(_), Some(_)) => false,
    }
}

/// `host[:port]`: an IPv4 literal, a bracketed IPv6 literal, `localhost`, or a name in
/// `admin_hosts` (already lower-case, without a trailing dot).
fn authority_allowed(authority: &str, admin_hosts: &[String]) -> bool {
    let port_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    };
    if authority.contains('@') {
        return false;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let port_fine = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return port_fine && ip.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let host = match authority.split_once(':') {
        Some((h, p)) if port_ok(p) => h,
        Some(_) => return false,
        None => authority,
    };
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    !name.is_empty() && (name == "localhost" || admin_hosts.contains(&name))
}

/// `Authorization: Bearer <token>` (one header, scheme case-insensitive) carrying `token`.
/// Both sides are hashed and the digests compared in constant time, so neither the
/// position of the first differing byte nor the token's length shows in the timing.
fn bearer_matches(req: &Request<Incoming>, token: &AdminToken) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some((scheme, given)) = value.as_bytes().split_first_chunk::<7>() else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = given.trim_ascii();
    use aws_lc_rs::digest::{SHA256, digest};
    aws_lc_rs::constant_time::verify_slices_are_equal(
        digest(&SHA256, given).as_ref(),
        digest(&SHA256, token.0.as_bytes()).as_ref(),
    )
    .is_ok()
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

/// `POST /reload` takes no options: its body is empty or a JSON object (ignored), so that
/// `curl -X POST -H 'content-type: application/json'` and clients that always send `{}` both
/// work, and anything else is a mistake worth a 400.
async fn reload_body(req: Request<Incoming>) -> Result<(), Response<Full<Bytes>>> {
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"body unreadable or over 4 KiB"}"#,
            ));
        }
    };
    if body.trim_ascii().is_empty()
        || serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object())
    {
        Ok(())
    } else {
        Err(json(
            StatusCode::BAD_REQUEST,
            r#"{"error":"POST /reload takes an empty body or a JSON object"}"#,
        ))
    }
}

/// The status page: one self-contained HTML file that polls `GET /status` as JSON.
const STATUS_PAGE: &str = include_str!("status.html");

/// `GET /status` as JSON: what an operator checks first.
async fn status(state: &AdminState, snap: &Snapshot) -> serde_json::Value {
    use serde_json::json;
    let m = &snap.metrics;
    let baseline = state.baseline();
    let now = totals(snap);
    let groups: Vec<serde_json::Value> = snap
        .groups
        .iter()
        .map(|g| {
            // Recent = since the oldest sample of the last minute; a replica that has no
            // sample yet (added by a reload just now) reports null rather than totals.
            let recent = |s: &crate::upstream::Upstream| {
                let key = (g.name.clone(), s.address);
                let (sel, answered, failed) = now.get(&key).copied().unwrap_or_default();
                let (b_sel, b_answered, b_failed) = baseline.as_ref()?.1.get(&key).copied()?;
                Some((
                    sel.saturating_sub(b_sel),
                    answered.saturating_sub(b_answered),
                    failed.saturating_sub(b_failed),
                ))
            };
            let group_selections: u64 = g.servers.iter().filter_map(recent).map(|r| r.0).sum();
            let replicas: Vec<serde_json::Value> = g
                .servers
                .iter()
                .map(|s| {
                    let r = recent(s);
                    json!({
                        "address": s.address.to_string(),
                        "weight": s.weight,
                        "state": s.state(),
                        "in_flight": s.in_flight.load(Ordering::Relaxed),
                        "selections": s.metrics.selections.get(),
                        "ejections": s.metrics.ejections.get(),
                        "share": r.map(|(sel, _, _)| if group_selections > 0 {
                            sel as f64 / group_selections as f64
                        } else { 0.0 }),
                        "recent_requests": r.map(|(_, answered, _)| answered),
                        "recent_error_rate": r.and_then(|(_, answered, failed)| {
                            (answered > 0).then(|| failed as f64 / answered as f64)
                        }),
                    })
                })
                .collect();
            json!({
                "name": g.name,
                "balance": if g.sticky.is_some() { "consistent_hash" } else { "round_robin" },
                "live": g.has_live_replica(),
                "replicas": replicas,
            })
        })
        .collect();
    let counts = |f: &prometheus_client::metrics::family::Family<
        crate::metrics::OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
                  kinds: &[&'static str]| {
        kinds
            .iter()
            .map(|k| {
                let v = f
                    .get(&crate::metrics::OutcomeLabels { outcome: k })
                    .map_or(0, |c| c.get());
                (k.to_string(), json!(v))
            })
            .collect::<serde_json::Map<_, _>>()
    };
    let listeners = state
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|a| {
            json!({
                "tls": a.tls.to_string(),
                "plain": a.plain.map(|p| p.to_string()),
                "admin": a.admin.to_string(),
            })
        });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": m.started.elapsed().as_secs(),
        "ready": state.ready.load(Ordering::Acquire),
        "config": state.reloader.as_ref().map(|r| json!({
            "path": r.path().display().to_string(),
            "reload": r.status(),
        })),
        "listeners": listeners,
        "recent_window_seconds": baseline.map_or(0, |(d, _)| d.as_secs()),
        "groups": groups,
        "store": snap.store.status().await,
        "revocation_checks": {
            "hit": m.revocation_view.get(&crate::metrics::OutcomeLabels { outcome: "hit" }).map_or(0, |c| c.get()),
            "miss": m.revocation_view.get(&crate::metrics::OutcomeLabels { outcome: "miss" }).map_or(0, |c| c.get()),
            "resyncs": m.revocation_resyncs.get(),
        },
        "auth": counts(&m.auth, &["ok", "missing", "malformed", "expired", "bad_signature", "revoked", "store_unavailable"]),
        "idempotency": counts(&m.idempotency, &["first", "replay", "conflict", "mismatch", "not_replayable", "lease_expired"]),
    })
}

/// `GET /metrics`: the live replica gauges are read from the snapshot now, then everything
/// is encoded as OpenMetrics text.
fn metrics(snap: &Snapshot) -> Response<Full<Bytes>> {
    let m = &snap.metrics;
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

/// `POST /revocations` with `{"jti": "...", "expires_at": UNIX}` or
/// `{"sub": "...", "before": UNIX}` (`before` defaults to now).
async fn revoke(req: Request<Incoming>, snap: &Snapshot) -> Response<Full<Bytes>> {
    // JSON only (`gate` checked it already; kept here so this endpoint never depends on
    // the order of the checks): a browser cannot send that cross-site without a CORS
    // preflight, which this listener never grants.
    if !json_content_type(&req) {
        return json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            r#"{"error":"Content-Type must be application/json"}"#,
        );
    }
    let leeway = snap
        .auth
        .as_ref()
        .map_or(crate::config::defaults::LEEWAY.as_secs(), |a| a.leeway);
    let body = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::BAD_REQUEST,
                r#"{"error":"body unreadable or over 4 KiB"}"#,
            );
        }
    };
    let r = match parse_revoke(&body, unix_now(), leeway) {
        Ok(r) => r,
        Err(why) => {
            return json_owned(StatusCode::BAD_REQUEST, serde_json::json!({ "error": why }));
        }
    };
    match snap.store.revoke(&r).await {
        Ok(()) => {
            info!(revocation = ?r, "revoked");
            let body = match &r {
                Revoke::Jti { jti, expires_at } => {
                    serde_json::json!({"revoked": {"jti": jti, "expires_at": expires_at}})
                }
                Revoke::Subject { sub, before } => {
                    serde_json::json!({"revoked": {"sub": sub, "before": before}})
                }
            };
            json_owned(StatusCode::OK, body)
        }
        Err(StoreError::Full(why)) => {
            warn!(revocation = ?r, why, "revocation refused: the embedded store is at [store] embedded_max_revocations");
            json(
                StatusCode::INSUFFICIENT_STORAGE,
                r#"{"error":"revocation store full ([store] embedded_max_revocations): not revoked"}"#,
            )
        }
        Err(e) => {
            warn!(error = %e, "revocation could not be stored");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"error":"state store unavailable"}"#,
            )
        }
    }
}

fn parse_revoke(body: &[u8], now: u64, leeway: u64) -> Result<Revoke, &'static str> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "body is not JSON")?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).filter(|s| !s.is_empty());
    let time = |k: &str| v.get(k).and_then(|x| x.as_u64());
    let r = match (text("jti"), text("sub")) {
        (Some(jti), None) => Revoke::Jti {
            jti: jti.to_string(),
            expires_at: time("expires_at")
                .ok_or("expires_at (unix seconds) is required with jti")?,
        },
        (None, Some(sub)) => Revoke::Subject {
            sub: sub.to_string(),
            before: match v.get("before") {
                None => now,
                Some(_) => time("before").ok_or("before must be unix seconds")?,
            },
        },
        _ => return Err("give exactly one of jti or sub"),
    };
    r.check(now, leeway)?;
    Ok(r)
}

/// 200 with the status when the last reload worked, 422 with its errors when it did not.
fn reload_answer(status: ReloadStatus) -> Response<Full<Bytes>> {
    let code = if status.result == "ok" {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    json_owned(
        code,
        serde_json::to_value(&status).unwrap_or(serde_json::Value::Null),
    )
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

/// Ask a running instance to revoke (what `doorman revoke` does with the embedded store).
pub async fn post_revocation(
    admin: std::net::SocketAddr,
    token: Option<&AdminToken>,
    r: &Revoke,
) -> Result<(), String> {
    let body = match r {
        Revoke::Jti { jti, expires_at } => {
            serde_json::json!({"jti": jti, "expires_at": expires_at})
        }
        Revoke::Subject { sub, before } => serde_json::json!({"sub": sub, "before": before}),
    };
    match request(admin, token, Method::POST, "/revocations", Some(body)).await? {
        (status, _) if status.is_success() => Ok(()),
        (status, text) => Err(format!("{status}: {text}")),
    }
}

/// One request to a running instance's admin listener (for the CLI): status and body text.
/// Sends the admin token when the config has one.
pub async fn request(
    admin: std::net::SocketAddr,
    token: Option<&AdminToken>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(StatusCode, String), String> {
    // An admin listener on 0.0.0.0 / [::] is reached on loopback.
    let mut addr = admin;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach the admin listener {addr}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        // Every non-GET needs the JSON content type, even without a body.
        let json_type = body.is_some() || method != Method::GET;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        if json_type {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", t.0));
        }
        let req = req
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok((status, text))
    };
    // A reload may take a while (certificates, a Redis connection): allow for it.
    tokio::time::timeout(std::time::Duration::from_secs(15), exchange)
        .await
        .map_err(|_| format!("admin listener {addr} did not answer in 15s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_hosts_are_ip_literals_localhost_or_listed_names() {
        let listed = ["admin.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "10.1.2.3:1",
            "[::1]",
            "[::1]:9901",
            "[fe80::1]:65535",
            "localhost",
            "LocalHost:9901",
            "localhost.",
            "admin.internal",
            "Admin.Internal:9901",
        ] {
            assert!(authority_allowed(ok, &listed), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "admin.internal.evil.example",
            "127.0.0.1.nip.io",
            "",
            ":9901",
            "localhost:",
            "localhost:65536",
            "localhost:99x",
            "127.0.0.1:9901:1",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[evil.example]",
            "user@127.0.0.1",
            "127.1",
            "0x7f.0.0.1",
        ] {
            assert!(!authority_allowed(refused, &listed), "{refused:?}");
        }
    }
}

//! The admin listener: `GET /health` (process alive), `GET /ready` (config loaded, listeners
//! bound, not draining), `POST /revocations` (revoke a token or a subject), `POST /reload`
//! (reload proxy.toml now) and `GET /reload` (the last reload's outcome). Plain HTTP/1.1 on
//! its own address — keep it on loopback or a private network.

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
use crate::reload::{ReloadStatus, Reloader};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::store::Revoke;

/// State the admin endpoints report on.
#[derive(Debug, Default)]
pub struct AdminState {
    pub ready: AtomicBool,
    /// None when the server was started without a config file to reload (tests, demo).
    pub reloader: Option<Arc<Reloader>>,
    /// Where the listeners are bound now (a reload may move them).
    pub listeners: std::sync::Mutex<Option<crate::server::BoundAddrs>>,
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
    pub fn new(reloader: Option<Arc<Reloader>>, listeners: crate::server::BoundAddrs) -> Self {
        AdminState {
            ready: AtomicBool::new(false),
            reloader,
            listeners: std::sync::Mutex::new(Some(listeners)),
            history: Default::default(),
        }
    }

    /// Record the current totals (called every few seconds by the server).
    pub fn sample(&self, snap: &Snapshot) {
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
pub async fn serve(
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
    if req.uri().path() == "/reload" {
        return match (&state.reloader, req.method()) {
            (None, _) => json(
                StatusCode::NOT_FOUND,
                r#"{"error":"this instance was not started from a config file"}"#,
            ),
            (Some(r), &Method::GET) => reload_answer(r.status()),
            (Some(r), &Method::POST) => match r.reload().await {
                Some(status) => reload_answer(status),
                None => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"shutting down"}"#,
                ),
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
            let wants_json = req
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/json"));
            if wants_json {
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
    m.refresh(&snap.groups);
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
    // JSON only: a browser cannot send that cross-site without a CORS preflight, which this
    // listener never grants.
    let json_body = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    if !json_body {
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
pub async fn post_revocation(admin: std::net::SocketAddr, r: &Revoke) -> Result<(), String> {
    let body = match r {
        Revoke::Jti { jti, expires_at } => {
            serde_json::json!({"jti": jti, "expires_at": expires_at})
        }
        Revoke::Subject { sub, before } => serde_json::json!({"sub": sub, "before": before}),
    };
    match request(admin, Method::POST, "/revocations", Some(body)).await? {
        (status, _) if status.is_success() => Ok(()),
        (status, text) => Err(format!("{status}: {text}")),
    }
}

/// One request to a running instance's admin listener (for the CLI): status and body text.
pub async fn request(
    admin: std::net::SocketAddr,
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
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
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

//! The admin listener: `GET /health` (process alive), `GET /ready` (config loaded, listeners
//! bound, not draining) and `POST /revocations` (revoke a token or a subject). Plain
//! HTTP/1.1 on its own address — keep it on loopback or a private network.

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
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::store::Revoke;

/// State the admin endpoints report on.
#[derive(Debug, Default)]
pub struct AdminState {
    pub ready: AtomicBool,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, snapshot: SharedSnapshot) {
    loop {
        let (tcp, peer) = match listener.accept().await {
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
    // An admin listener on 0.0.0.0 / [::] is reached on loopback.
    let mut addr = admin;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let body = match r {
        Revoke::Jti { jti, expires_at } => {
            serde_json::json!({"jti": jti, "expires_at": expires_at})
        }
        Revoke::Subject { sub, before } => serde_json::json!({"sub": sub, "before": before}),
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot reach the admin listener {addr}: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::post("/revocations")
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{status}: {text}"))
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("admin listener {addr} did not answer in 5s"))?
}

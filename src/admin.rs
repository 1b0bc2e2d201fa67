//! The admin listener: `GET /health` (process alive) and `GET /ready` (config loaded, listeners
//! bound, not draining). Plain HTTP/1.1 on its own address, never on the proxy listeners.

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

/// State the admin endpoints report on.
#[derive(Debug, Default)]
pub struct AdminState {
    pub ready: AtomicBool,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
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
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&req, &state)) }
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

fn answer(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method not allowed"}"#,
        );
    }
    match req.uri().path() {
        "/health" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/ready" if state.ready.load(Ordering::Acquire) => {
            json(StatusCode::OK, r#"{"ready":true}"#)
        }
        "/ready" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"ready":false}"#),
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#),
    }
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

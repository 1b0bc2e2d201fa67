//! The CLI's client for a running instance's admin API.

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::config::AdminToken;
use crate::store::Revoke;

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

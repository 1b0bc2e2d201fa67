//! `POST /revocations`: revoke a token (by jti) or a subject's tokens issued before a time.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::{info, warn};

use super::{json, json_content_type, json_owned};
use crate::auth::unix_now;
use crate::snapshot::Snapshot;
use crate::store::{Revoke, StoreError};

/// `POST /revocations` with `{"jti": "...", "expires_at": UNIX}` or
/// `{"sub": "...", "before": UNIX}` (`before` defaults to now).
pub(super) async fn revoke(req: Request<Incoming>, snap: &Snapshot) -> Response<Full<Bytes>> {
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
        Ok(replicated) => {
            let mut body = match &r {
                Revoke::Jti { jti, expires_at } => {
                    serde_json::json!({"revoked": {"jti": jti, "expires_at": expires_at}})
                }
                Revoke::Subject { sub, before } => {
                    serde_json::json!({"revoked": {"sub": sub, "before": before}})
                }
            };
            // With `durable_revocations`: whether a replica acknowledged the write within
            // `[store] timeout`. The revocation is in force either way; false says that a
            // failover before a replica copies it could lose it.
            if let Some(replicated) = replicated {
                body["replicated"] = replicated.into();
            }
            if replicated == Some(false) {
                warn!(revocation = ?r, "revoked, but no Redis replica acknowledged the write within [store] timeout");
            } else {
                info!(revocation = ?r, "revoked");
            }
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

//! `GET /reload` (the last reload's outcome) and `POST /reload` (reload proxy.toml now).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use super::{AdminState, json, json_owned};
use crate::reload::ReloadStatus;

/// `/reload`: 404 when there is no config file to reload, else by method.
pub(super) async fn answer(req: Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    match (&state.reloader, req.method()) {
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
    }
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

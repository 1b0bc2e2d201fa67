//! Helpers for the `[auth.jwks]` tests: configuration snippets, a request with a token and
//! its verdict, the status page's key set, and polling under a bounded deadline.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use super::idp::Idp;
use super::*;

/// `[auth]` trusting `issuer`, with `jwks` as its `[auth.jwks]` and `extra` in `[auth]`.
pub fn auth(issuer: &str, extra: &str, jwks: &str) -> String {
    format!(
        "[auth]\nissuer = \"{issuer}\"\naudiences = [\"api\"]\nforward_claims = {{ sub = \"x-user-id\" }}\n{extra}\n[auth.jwks]\n{jwks}\n"
    )
}

/// `[auth.jwks]` fetching the provider's set by URL with `algs` (an `algorithms = [...]`
/// line); `extra` adds intervals.
pub fn by_url_with(idp: &Idp, algs: &str, extra: &str) -> String {
    format!(
        "url = \"{}\"\nca_file = \"{}\"\n{algs}\n{extra}\n",
        idp.jwks_url(),
        idp.ca_path().display()
    )
}

pub fn rest(r: &Replica, auth: &str) -> String {
    group_toml("api", &[r.addr], "") + auth + &route_toml("/", "api")
}

pub async fn start(auth: &str) -> (TestProxy, Replica) {
    let r = Replica::start("r").await;
    (TestProxy::start("", &rest(&r, auth)).await, r)
}

/// Status and `WWW-Authenticate` of GET /x with the token, on a new connection.
pub async fn call(p: &TestProxy, token: &str) -> (u16, Option<String>) {
    let mut c = p.h1().await;
    let req = c
        .request(http::Method::GET, "/x")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let (resp, _) = within("request", c.send_collect(req)).await;
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), challenge)
}

pub fn refused(why: &str) -> (u16, Option<String>) {
    (
        401,
        Some(format!(
            "Bearer error=\"invalid_token\", error_description=\"{why}\""
        )),
    )
}

pub const OK: (u16, Option<String>) = (200, None);

pub async fn admin(p: &TestProxy, path: &str) -> (u16, String) {
    let mut c = Client::plain(p.addrs.admin).await;
    let req = http::Request::get(path)
        .header("host", "localhost")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (resp, body) = within("admin request", c.send_collect(req)).await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub async fn key_set(p: &TestProxy) -> Value {
    status_json(p).await["key_set"].clone()
}

/// Poll `check` every 20 ms until it holds, at most `STEP`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(what, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

pub async fn wait_ready(p: &TestProxy) {
    eventually("the key set to load", || async {
        admin(p, "/ready").await.0 == 200
    })
    .await;
}

pub fn kids(set: &Value) -> Vec<(String, String)> {
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_string(),
                k["alg"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Poll the status page until the key set's `last_error` is `want`.
pub async fn wait_error(p: &TestProxy, want: &str) {
    eventually(&format!("last_error = {want:?}"), || async {
        key_set(p).await["last_error"] == want
    })
    .await;
}

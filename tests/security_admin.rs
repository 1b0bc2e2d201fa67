//! The admin listener's gates, with raw requests: cross-site "simple" POSTs are 415 and
//! change nothing; a Host that is not an IP literal, localhost or a listed admin host is 421
//! on every endpoint (DNS rebinding); the optional bearer token (a real doorman process, as
//! the token comes from its environment); and `doorman check`'s warning for an exposed
//! listener without a token.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_doorman");

/// The status code and body of one raw HTTP/1.1 exchange on the admin listener.
async fn raw(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
    let request = format!(
        "{head}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = raw_exchange(addr, request.as_bytes()).await;
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn rest(r: &Replica) -> String {
    group_toml("api", &[r.addr], "") + &route_toml("/", "api")
}

/// The reload generation the admin listener reports (0: never reloaded).
async fn generation(admin: SocketAddr) -> u64 {
    let (status, body) = raw(admin, "GET /reload HTTP/1.1\r\nhost: localhost", "").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["generation"].as_u64().unwrap()
}

async fn revoked_tokens(admin: SocketAddr) -> u64 {
    let (status, body) = raw(
        admin,
        "GET /status HTTP/1.1\r\nhost: localhost\r\naccept: application/json",
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["store"]["revoked_tokens"].as_u64().unwrap()
}

const NOT_JSON: &str = r#"{"error":"Content-Type must be application/json"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_simple_posts_are_415_and_change_nothing() {
    let r = Replica::start("r").await;
    let p = TestProxy::start_reloadable("", &rest(&r)).await;
    let admin = p.addrs.admin;
    let exp = support::jwt::now() + 600;
    let revocation = format!(r#"{{"jti":"x","expires_at":{exp}}}"#);
    // What a page on another site can send without a CORS preflight.
    for (path, content_type, body) in [
        ("/reload", Some("text/plain"), "{}"),
        ("/reload", Some("application/x-www-form-urlencoded"), "a=b"),
        ("/reload", Some("multipart/form-data; boundary=x"), ""),
        ("/reload", None, ""),
        (
            "/revocations",
            Some("application/x-www-form-urlencoded"),
            "jti=x",
        ),
        ("/revocations", Some("text/plain"), revocation.as_str()),
        ("/revocations", None, revocation.as_str()),
        ("/health", Some("text/plain"), ""),
    ] {
        let mut head = format!("POST {path} HTTP/1.1\r\nhost: 127.0.0.1");
        if let Some(t) = content_type {
            head.push_str(&format!("\r\ncontent-type: {t}"));
        }
        assert_eq!(
            raw(admin, &head, body).await,
            (415, NOT_JSON.to_string()),
            "{path} {content_type:?}"
        );
    }
    assert_eq!(generation(admin).await, 0, "no reload happened");
    assert_eq!(revoked_tokens(admin).await, 0, "nothing was revoked");

    // With the JSON content type: no body, or a JSON object, reloads; anything else is 400.
    let json_post = "POST /reload HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json";
    assert_eq!(raw(admin, json_post, "").await.0, 200);
    assert_eq!(generation(admin).await, 1);
    assert_eq!(raw(admin, json_post, "{}").await.0, 200);
    assert_eq!(generation(admin).await, 2);
    assert_eq!(
        raw(admin, json_post, "[1]").await,
        (
            400,
            r#"{"error":"POST /reload takes an empty body or a JSON object"}"#.to_string()
        )
    );
    assert_eq!(generation(admin).await, 2);
    let head = "POST /revocations HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json; charset=utf-8";
    assert_eq!(raw(admin, head, &revocation).await.0, 200);
    assert_eq!(revoked_tokens(admin).await, 1);
    p.stop().await;
}

const MISDIRECTED: &str =
    r#"{"error":"Host must be an IP address, localhost or one of [server] admin_hosts"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_is_not_an_address_localhost_or_listed_is_421_everywhere() {
    let r = Replica::start("r").await;
    let p = TestProxy::start("admin_hosts = [\"admin.internal\"]", &rest(&r)).await;
    let admin = p.addrs.admin;
    let port = admin.port();
    let exp = support::jwt::now() + 600;
    let revocation = format!(r#"{{"jti":"x","expires_at":{exp}}}"#);
    // A DNS-rebinding page reaches the listener under its own name.
    for (method, path, body) in [
        ("GET", "/status", ""),
        ("GET", "/metrics", ""),
        ("GET", "/health", ""),
        ("GET", "/ready", ""),
        ("GET", "/reload", ""),
        ("POST", "/revocations", revocation.as_str()),
    ] {
        for host in [
            "evil.example".to_string(),
            format!("evil.example:{port}"),
            "localhost.evil.example".to_string(),
            "admin.internal.evil.example".to_string(),
        ] {
            let head = format!(
                "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\naccept: application/json"
            );
            assert_eq!(
                raw(admin, &head, body).await,
                (421, MISDIRECTED.to_string()),
                "{method} {path} for {host}"
            );
        }
    }
    // No Host, two of them, or an absolute-form target naming another host.
    for head in [
        "GET /status HTTP/1.1".to_string(),
        "GET /status HTTP/1.1\r\nhost: localhost\r\nhost: evil.example".to_string(),
        "GET http://evil.example/status HTTP/1.1\r\nhost: localhost".to_string(),
    ] {
        assert_eq!(
            raw(admin, &head, "").await,
            (421, MISDIRECTED.to_string()),
            "{head}"
        );
    }
    assert_eq!(revoked_tokens(admin).await, 0, "nothing was revoked");

    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        format!("localhost:{port}"),
        "[::1]".to_string(),
        format!("[::1]:{port}"),
        "admin.internal".to_string(),
        format!("Admin.Internal:{port}"),
    ] {
        let head = format!("GET /status HTTP/1.1\r\nhost: {host}\r\naccept: application/json");
        let (status, body) = raw(admin, &head, "").await;
        assert_eq!(status, 200, "{host}: {body}");
        let (status, _) = raw(admin, &format!("GET /metrics HTTP/1.1\r\nhost: {host}"), "").await;
        assert_eq!(status, 200, "{host}");
    }
    p.stop().await;
}

/// Kills the child on drop so a failing test never leaves doorman running.
struct Reaper(std::process::Child);
impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `doorman run` on `config` (whose listeners are on port 0: the kernel picks, so no
/// other process can take a port between a test choosing it and doorman binding it) and
/// return it with the admin address it bound, read from its JSON "doorman ready" log line.
/// Its stderr is drained for as long as it runs.
async fn run_doorman(config: &std::path::Path) -> (Reaper, SocketAddr) {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(config)
        .env(TOKEN_ENV, TOKEN)
        .env("RUST_LOG", "warn,doorman::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let doorman = Reaper(child);
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Some(tx) = tx.take_if(|_| line.contains("doorman ready")) else {
                if tx.is_some() {
                    seen.push(line);
                }
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let _ = tx.send(
                v["fields"]["admin_listen"]
                    .as_str()
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .ok_or(line),
            );
        }
        // Ended (doorman exited) before it was ready: what it said instead.
        if let Some(tx) = tx {
            let _ = tx.send(Err(seen.join("\n")));
        }
    });
    let admin = within("doorman ready", rx)
        .await
        .expect("the log reader")
        .unwrap_or_else(|log| panic!("doorman never said where it listens: {log}"));
    (doorman, admin)
}

const TOKEN_ENV: &str = "DOORMAN_TEST_ADMIN_TOKEN";
const TOKEN: &str = "s3cret-admin-token-0123456789";
const UNAUTHORIZED: &str = r#"{"error":"admin token required: Authorization: Bearer <token>"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_every_endpoint_but_the_probes_needs_it() {
    let pki = TestPki::new();
    let leaf = pki.leaf("localhost", &["localhost"]);
    let r = Replica::start("r").await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token_env = \"{TOKEN_ENV}\"\n{}{}",
        cert_toml(&leaf, &["localhost"]),
        rest(&r)
    );
    let path = pki.dir.path().join("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    let (_doorman, admin) = run_doorman(&path).await;
    assert!(admin.ip().is_loopback() && admin.port() != 0, "{admin}");

    // Liveness probes and the status page's static shell need no token.
    for head in [
        "GET /health HTTP/1.1\r\nhost: localhost",
        "GET /ready HTTP/1.1\r\nhost: localhost",
    ] {
        assert_eq!(raw(admin, head, "").await.0, 200, "{head}");
    }
    let (status, page) = raw(admin, "GET /status HTTP/1.1\r\nhost: localhost", "").await;
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"), "{page}");

    let exp = support::jwt::now() + 600;
    let revocation = format!(r#"{{"jti":"x","expires_at":{exp}}}"#);
    let json = "\r\ncontent-type: application/json";
    let requests = [
        (
            "GET /status HTTP/1.1\r\nhost: localhost\r\naccept: application/json",
            "",
        ),
        ("GET /metrics HTTP/1.1\r\nhost: localhost", ""),
        ("GET /reload HTTP/1.1\r\nhost: localhost", ""),
        (
            "POST /revocations HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json",
            revocation.as_str(),
        ),
    ];
    let wrong = [
        String::new(),
        format!("\r\nauthorization: Bearer {TOKEN}x"),
        format!("\r\nauthorization: Bearer {}", &TOKEN[1..]),
        "\r\nauthorization: Bearer ".to_string(),
        format!("\r\nauthorization: Basic {TOKEN}"),
        format!("\r\nauthorization: {TOKEN}"),
        format!("\r\nauthorization: Bearer {TOKEN}\r\nauthorization: Bearer {TOKEN}"),
    ];
    for (head, body) in requests {
        for auth in &wrong {
            let response = raw(admin, &format!("{head}{auth}"), body).await;
            assert_eq!(response, (401, UNAUTHORIZED.to_string()), "{head} {auth:?}");
        }
    }
    assert_eq!(
        raw(
            admin,
            &format!("GET /metrics HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {TOKEN}x"),
            ""
        )
        .await
        .0,
        401
    );
    // Nothing was revoked by the refused requests.
    let auth = format!("\r\nauthorization: Bearer {TOKEN}");
    let status_json = |auth: &str| {
        format!("GET /status HTTP/1.1\r\nhost: localhost\r\naccept: application/json{auth}")
    };
    let (status, body) = raw(admin, &status_json(&auth), "").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["store"]["revoked_tokens"], 0);

    // The right token (scheme case-insensitive) opens everything.
    for (head, body) in requests {
        for auth in [auth.clone(), format!("\r\nauthorization: bearer {TOKEN}")] {
            assert_eq!(
                raw(admin, &format!("{head}{auth}"), body).await.0,
                200,
                "{head}"
            );
        }
    }
    // The gates keep their order: Host first, then the token, then the content type.
    let (status, _) = raw(
        admin,
        &format!("GET /metrics HTTP/1.1\r\nhost: evil.example{auth}"),
        "",
    )
    .await;
    assert_eq!(status, 421);
    let (status, _) = raw(
        admin,
        &format!("POST /reload HTTP/1.1\r\nhost: localhost\r\ncontent-type: text/plain{auth}"),
        "",
    )
    .await;
    assert_eq!(status, 415);
    let (status, _) = raw(
        admin,
        &format!("POST /reload HTTP/1.1\r\nhost: localhost{json}"),
        "",
    )
    .await;
    assert_eq!(status, 401);

    // `doorman revoke` sends the token from the same environment, to the admin listener its
    // config names: the same config, naming the address doorman bound.
    let cli = pki.dir.path().join("cli.toml");
    std::fs::write(
        &cli,
        text.replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"{admin}\""),
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["revoke", "--config"])
        .arg(&cli)
        .args(["--jti", "cli", "--expires-at", &exp.to_string()])
        .env(TOKEN_ENV, TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, body) = raw(admin, &status_json(&auth), "").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["store"]["revoked_tokens"], 2);
}

/// `doorman check` on a config whose admin listener is `admin_listen`, with the token
/// variable set or not: (exit code, stderr).
fn check(admin_listen: &str, token: bool) -> (Option<i32>, String, String) {
    let pki = TestPki::new();
    let leaf = pki.leaf("localhost", &["localhost"]);
    let token_line = if token {
        format!("admin_token_env = \"{TOKEN_ENV}\"\n")
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8443\"\nadmin_listen = \"{admin_listen}\"\n{token_line}{}[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n{}",
        cert_toml(&leaf, &["localhost"]),
        route_toml("/", "api")
    );
    let path = pki.dir.path().join("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg(&path)
        .env(TOKEN_ENV, TOKEN)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

#[test]
fn check_warns_when_the_admin_listener_is_exposed_without_a_token() {
    for listen in ["0.0.0.0:9901", "[::]:9901", "10.1.2.3:9901"] {
        let (code, stderr, path) = check(listen, false);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(
            stderr,
            format!(
                "{path}: warning: server.admin_listen = {listen} is not a loopback address and server.admin_token_env is not set: anyone who can reach it may reload, revoke and read /status\n"
            )
        );
    }
    for (listen, token) in [
        ("0.0.0.0:9901", true),
        ("127.0.0.1:9901", false),
        ("127.0.0.2:9901", false),
        ("[::1]:9901", false),
    ] {
        let (code, stderr, _) = check(listen, token);
        assert_eq!(code, Some(0), "{stderr}");
        assert_eq!(stderr, "", "{listen} token={token}");
    }
}

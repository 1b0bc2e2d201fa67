//! TLS to Redis: `rediss://` verified against `[store] ca_file` (a test CA), with the
//! password from the URL or from `password_env`. A node whose certificate the CA did not
//! sign is never talked to: the view stays untrusted and checks fail closed.

mod support;

use std::process::Command;
use std::time::Duration;

use support::jwt::*;
use support::sentinel::{Node, query};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_doorman");

/// A redis-server with a plain port (for the test's own set-up) and a TLS port serving a
/// certificate for 127.0.0.1 signed by `pki`, requiring `password`.
struct TlsRedis {
    node: Node,
    tls_port: u16,
    _certs: tempfile::TempDir,
}

impl TlsRedis {
    async fn start(pki: &TestPki, password: &str) -> TlsRedis {
        let certs = tempfile::tempdir().unwrap();
        let leaf = pki.leaf("redis", &["127.0.0.1", "localhost"]);
        let ca = certs.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let tls_port = free_port();
        let node = Node::spawn(|port| {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--tls-port",
                &tls_port.to_string(),
                "--tls-cert-file",
                &leaf.cert_path.display().to_string(),
                "--tls-key-file",
                &leaf.key_path.display().to_string(),
                "--tls-ca-cert-file",
                &ca.display().to_string(),
                "--tls-auth-clients",
                "no",
            ]
            .map(String::from)
            .to_vec()
        });
        let _: () = query(node.port, &["CONFIG", "SET", "requirepass", password]).await;
        TlsRedis {
            node,
            tls_port,
            _certs: certs,
        }
    }

    async fn plain(&self, password: &str) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!(
            "redis://:{password}@127.0.0.1:{}/0",
            self.node.port
        ))
        .unwrap();
        within(
            "plain connection",
            client.get_multiplexed_async_connection(),
        )
        .await
        .unwrap()
    }

    /// GET `key` through the plain port.
    async fn get(&self, key: &str, password: &str) -> Option<String> {
        let mut conn = self.plain(password).await;
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// SET `key` (a revocation by another tool) through the plain port.
    async fn set(&self, key: &str, password: &str) {
        let mut conn = self.plain(password).await;
        let () = redis::cmd("SET")
            .arg(key)
            .arg("1")
            .arg("EX")
            .arg(300)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The CA's certificate as a file doorman reads through `ca_file`.
fn ca_file(pki: &TestPki, dir: &std::path::Path, name: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, &pki.ca_pem).unwrap();
    path.display().to_string()
}

async fn status(c: &mut Client, token: &str) -> u16 {
    let req = c
        .request(http::Method::GET, "/api/x")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    c.send_collect(req).await.0.status().as_u16()
}

fn store_toml(url: &str, ca: &str) -> String {
    format!(
        "[store]\nredis_url = \"{url}\"\nca_file = \"{ca}\"\ntimeout = \"300ms\"\non_error = \"closed\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rediss_is_verified_against_ca_file_and_carries_the_view() {
    let redis_pki = TestPki::new();
    let redis = TlsRedis::start(&redis_pki, "tls-pw").await;
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca_file(&redis_pki, dir.path(), "redis-ca.pem");
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let url = format!("rediss://:tls-pw@127.0.0.1:{}/0", redis.tls_port);
    let rest = group_toml("api", &[r.addr], "")
        + &store_toml(&url, &good_ca)
        + &kit.auth_toml("")
        + &route_toml("/", "api");
    let p = TestProxy::start("", &rest).await;
    within("the view syncs over TLS", async {
        while status_json(&p).await["store"]["revocation_view"] != "synced" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let claims = good_claims("tls-user");
    let jti = claims["jti"].as_str().unwrap().to_string();
    let token = sign(kit.key("es256"), &claims);
    let mut c = p.h1().await;
    assert_eq!(status(&mut c, &token).await, 200);
    // A raw write on the node reaches the view through the TLS tracking connection.
    redis
        .set(&format!("doorman:revoked:jti:{jti}"), "tls-pw")
        .await;
    within("the revoked token is refused", async {
        while status(&mut c, &token).await != 401 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(status_json(&p).await["store"]["revocation_view"], "synced");
    p.stop().await;
}

/// `doorman revoke` over TLS with the password from `password_env`, set for the child
/// process alone; then the same with a CA that did not sign the node's certificate.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_writes_over_tls_and_refuses_an_unknown_ca() {
    let redis_pki = TestPki::new();
    let redis = TlsRedis::start(&redis_pki, "env-pw").await;
    let other_pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let good_ca = ca_file(&redis_pki, dir.path(), "good-ca.pem");
    let bad_ca = ca_file(&other_pki, dir.path(), "bad-ca.pem");
    let leaf = other_pki.leaf("localhost", &["localhost"]);
    let config = |ca: &str, name: &str| {
        let path = dir.path().join(name);
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\
             [store]\nredis_url = \"rediss://127.0.0.1:{}/0\"\nca_file = \"{ca}\"\npassword_env = \"DOORMAN_TEST_TLS_PW\"\ntimeout = \"300ms\"\n\
             [upstreams.api]\nservers = [{{ address = \"127.0.0.1:9\" }}]\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            cert_toml(&leaf, &["localhost"]),
            redis.tls_port
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let (good, bad) = (config(&good_ca, "good.toml"), config(&bad_ca, "bad.toml"));
    let revoke = |path: &std::path::Path, sub: &str| {
        let out = Command::new(BIN)
            .args(["revoke", "--sub", sub, "--before", "7", "--config"])
            .arg(path)
            .env("DOORMAN_TEST_TLS_PW", "env-pw")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| revoke(&good, "over-tls"));
    assert!(ok, "{stdout}{stderr}");
    assert_eq!(
        redis
            .get("doorman:revoked:sub:over-tls", "env-pw")
            .await
            .as_deref(),
        Some("7")
    );
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| revoke(&bad, "wrong-ca"));
    assert!(!ok, "a node signed by another CA was accepted: {stdout}");
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the failure names the certificate: {stderr}"
    );
    assert_eq!(
        redis.get("doorman:revoked:sub:wrong-ca", "env-pw").await,
        None
    );
}

/// A proxy pointed at a node its CA does not vouch for never trusts a view from it, and
/// checks fail closed (503), not open.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_outside_ca_file_is_never_trusted() {
    let redis_pki = TestPki::new();
    let redis = TlsRedis::start(&redis_pki, "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let other = TestPki::new();
    let bad_ca = ca_file(&other, dir.path(), "other-ca.pem");
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let url = format!("rediss://:pw@127.0.0.1:{}/0", redis.tls_port);
    let rest = group_toml("api", &[r.addr], "")
        + &store_toml(&url, &bad_ca)
        + &kit.auth_toml("")
        + &route_toml("/", "api");
    let p = TestProxy::start("", &rest).await;
    let token = sign(kit.key("es256"), &good_claims("nobody"));
    let mut c = p.h1().await;
    for _ in 0..5 {
        assert_eq!(status(&mut c, &token).await, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = status_json(&p).await["store"].clone();
    assert_eq!(s["revocation_view"], "resyncing");
    let reason = s["untrusted_reason"].as_str().unwrap_or("").to_lowercase();
    assert!(reason.contains("certificate"), "{s}");
    assert_eq!(r.count(), 0, "nothing reached the replica");
    p.stop().await;
}

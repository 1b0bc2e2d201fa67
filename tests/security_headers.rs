//! Forged identity: every way a client might make the replica see an identity header that
//! doorman did not set, or lose one that it did. Raw bytes on the plain listener and HTTP/2
//! through TLS, against a replica that records what it received.

mod support;

use support::jwt::*;
use support::*;

async fn proxy(server_extra: &str) -> (TestProxy, Replica, JwtKit) {
    let kit = JwtKit::new();
    let r = Replica::start("r1").await;
    let rest = group_toml("app", &[r.addr], "")
        + &kit.auth_toml_for(&["hs256"], "")
        + "[[routes]]\npath_prefix = \"/open\"\nupstream = \"app\"\nauth = \"off\"\n"
        + "[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"required\"\n";
    (TestProxy::start(server_extra, &rest).await, r, kit)
}

/// Header names and values the replica received, in order, lower-case names.
fn seen_headers(r: &Replica) -> Vec<(String, String)> {
    let seen = r.seen();
    seen.last()
        .unwrap()
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

fn values<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_identity_headers_never_reach_the_replica() {
    let (p, r, kit) = proxy("").await;
    let plain = p.addrs.plain.unwrap();
    let token = sign(kit.key("hs256"), &good_claims("alice"));
    let auth = format!("Authorization: Bearer {token}\r\n");
    // (extra request headers, path): after each, the replica's x-user-id must be exactly
    // the verified subject (or absent on the open route), and no `_` look-alike may remain.
    let cases: &[(&str, &str, &[&str])] = &[
        ("x_user_id: admin\r\n", "/x", &["alice"]),
        ("X_User_Id: admin\r\n", "/x", &["alice"]),
        ("x-user-id: admin\r\n", "/x", &["alice"]),
        ("Connection: x-user-id\r\n", "/x", &["alice"]),
        (
            "Connection: x-user-id\r\nx_user_id: admin\r\n",
            "/x",
            &["alice"],
        ),
        (
            "Connection: keep-alive, X-User-Id, close\r\n",
            "/x",
            &["alice"],
        ),
        ("x-user-id: admin\r\n", "/open", &[]),
        ("x_user_id: admin\r\n", "/open", &[]),
        (
            "Connection: x-user-id\r\nx-user-id: admin\r\n",
            "/open",
            &[],
        ),
    ];
    for (extra, path, want) in cases {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: a.test\r\n{auth}{extra}Connection: close\r\n\r\n"
        );
        let raw = raw_exchange(plain, req.as_bytes()).await;
        assert_eq!(status_of(&raw), 200, "{extra:?}: {raw}");
        let h = seen_headers(&r);
        assert_eq!(values(&h, "x-user-id"), *want, "{extra:?} on {path}");
        assert!(
            h.iter().all(|(n, _)| !n.contains('_')),
            "{extra:?}: an underscore header was forwarded: {h:?}"
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_doorman_sets_survive_connection_and_underscores() {
    let (p, r, _kit) = proxy("").await;
    let plain = p.addrs.plain.unwrap();
    let req = "GET /open HTTP/1.1\r\nHost: a.test\r\n\
               Connection: host, x-forwarded-for, x-request-id, x-forwarded-proto\r\n\
               x_forwarded_for: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n\
               x_forwarded_host: evil.test\r\nx_real_ip: 6.6.6.6\r\n\r\n";
    let raw = raw_exchange(plain, req.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let h = seen_headers(&r);
    assert_eq!(values(&h, "host"), ["a.test"]);
    // The client's X-Forwarded-For was named by Connection, so only the peer remains.
    assert_eq!(values(&h, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(values(&h, "x-forwarded-proto"), ["http"]);
    assert_eq!(values(&h, "x-forwarded-host"), ["a.test"]);
    assert_eq!(values(&h, "x-request-id").len(), 1);
    assert!(h.iter().all(|(n, _)| !n.contains('_')), "{h:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn underscores_reject_and_allow() {
    let (p, r, kit) = proxy("underscores_in_headers = \"reject\"").await;
    let raw = raw_exchange(
        p.addrs.plain.unwrap(),
        b"GET /open HTTP/1.1\r\nHost: a.test\r\nmy_header: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert_eq!(r.count(), 0);
    p.stop().await;
    drop(kit);

    // allow: an ordinary `_` header goes through; one that folds onto a header doorman
    // sets (a claim header, X-Forwarded-*) still does not.
    let (p, r, kit) = proxy("underscores_in_headers = \"allow\"").await;
    let token = sign(kit.key("hs256"), &good_claims("alice"));
    let req = format!(
        "GET /x HTTP/1.1\r\nHost: a.test\r\nAuthorization: Bearer {token}\r\n\
         my_header: 1\r\nx_user_id: admin\r\nx_forwarded_for: 6.6.6.6\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_exchange(p.addrs.plain.unwrap(), req.as_bytes()).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let h = seen_headers(&r);
    assert_eq!(values(&h, "my_header"), ["1"]);
    assert_eq!(values(&h, "x_user_id"), Vec::<&str>::new());
    assert_eq!(values(&h, "x_forwarded_for"), Vec::<&str>::new());
    assert_eq!(values(&h, "x-user-id"), ["alice"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_authority_wins_and_cookies_are_joined() {
    let (p, r, _kit) = proxy("").await;
    let mut c = p.h2().await;
    let req = http::Request::get("https://a.test/open")
        .header("host", "b.test")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x_user_id", "admin")
        .body(empty())
        .unwrap();
    let (resp, _) = c.send_collect(req).await;
    assert_eq!(resp.status(), 200);
    let h = seen_headers(&r);
    assert_eq!(values(&h, "host"), ["a.test"]);
    assert_eq!(values(&h, "cookie"), ["a=1; b=2"]);
    assert_eq!(values(&h, "x_user_id"), Vec::<&str>::new());
    p.stop().await;
}

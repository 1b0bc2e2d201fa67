//! Proxying behaviour: round robin and weights, header transparency, request ids, upstream
//! connection reuse, streaming of large bodies, WebSocket upgrade passthrough.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn replicas(n: usize) -> Vec<Replica> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(Replica::start(&format!("r{i}")).await);
    }
    v
}

fn addrs(rs: &[Replica]) -> Vec<std::net::SocketAddr> {
    rs.iter().map(|r| r.addr).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_is_exact_over_h1_and_h2() {
    let rs = replicas(3).await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &addrs(&rs), "") + &route_toml("/", "api")),
    )
    .await;

    let mut c = p.h1().await;
    let mut order = Vec::new();
    for _ in 0..300 {
        let (resp, _) = c.get("/").await;
        assert_eq!(resp.status(), 200);
        order.push(
            resp.headers()["x-upstream-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(&order[..6], ["r1", "r2", "r3", "r1", "r2", "r3"]);
    for r in &rs {
        assert_eq!(r.count(), 100, "{} over HTTP/1.1", r.id);
    }

    let mut c = p.h2().await;
    for _ in 0..300 {
        let (resp, _) = c.get("/").await;
        assert_eq!(resp.status(), 200);
    }
    for r in &rs {
        assert_eq!(r.count(), 200, "{} after HTTP/2 too", r.id);
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_set_the_shares_and_weight_zero_drains() {
    let rs = replicas(3).await;
    let group = format!(
        "[upstreams.api]\nservers = [{{ address = \"{}\", weight = 3 }}, {{ address = \"{}\" }}, {{ address = \"{}\", weight = 0 }}]\n",
        rs[0].addr, rs[1].addr, rs[2].addr
    );
    let p = TestProxy::start("", &(group + &route_toml("/", "api"))).await;
    let mut c = p.h2().await;
    for _ in 0..400 {
        assert_eq!(c.get("/").await.0.status(), 200);
    }
    assert_eq!([rs[0].count(), rs[1].count(), rs[2].count()], [300, 100, 0]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_match_host_and_path_prefix_first_match_wins() {
    let rs = replicas(3).await;
    let rest = group_toml("a", &[rs[0].addr], "")
        + &group_toml("b", &[rs[1].addr], "")
        + &group_toml("c", &[rs[2].addr], "")
        + "[[routes]]\npath_prefix = \"/\"\nhost = \"other.test\"\nupstream = \"c\"\n"
        + &route_toml("/api/", "a")
        + &route_toml("/", "b");
    let p = TestProxy::start("", &rest).await;
    let mut c = p.h1().await;
    let mut ids = Vec::new();
    for (host, path) in [
        ("localhost", "/api/users"),
        ("localhost", "/apix"),
        ("localhost:8443", "/"),
        ("OTHER.test:443", "/api/users"),
    ] {
        let req = Request::get(path)
            .header("host", host)
            .body(empty())
            .unwrap();
        let resp = c.send(req).await.unwrap();
        ids.push(
            resp.headers()["x-upstream-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        body_bytes(resp.into_body()).await;
    }
    assert_eq!(ids, ["r1", "r2", "r2", "r3"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_are_transparent_except_hop_by_hop_and_forwarding() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;

    // HTTP/1.1 over TLS, with every kind of header a client might send.
    let mut c = p.h1().await;
    let req = Request::post("/submit?q=1&r=two")
        .header("host", "app.example:8443")
        .header("connection", "keep-alive, x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("authorization", "Bearer end-to-end")
        .header("cookie", "a=1; b=2")
        .header("accept", "application/json")
        .header("content-type", "text/plain")
        .header("x-custom", "one")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "gopher")
        .header("x-forwarded-host", "spoofed.example")
        .body(full("hello"))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp.into_body()).await;

    let seen = &r.seen()[0];
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.uri, "/submit?q=1&r=two");
    assert_eq!(seen.body_len, 5);
    let h = &seen.headers;
    let get = |n: &str| h.get(n).map(|v| v.to_str().unwrap().to_string());
    let table: &[(&str, Option<&str>)] = &[
        // kept end to end
        ("host", Some("app.example:8443")),
        ("authorization", Some("Bearer end-to-end")),
        ("cookie", Some("a=1; b=2")),
        ("accept", Some("application/json")),
        ("content-type", Some("text/plain")),
        ("content-length", Some("5")),
        ("x-custom", Some("one")),
        // hop-by-hop: gone
        ("connection", None),
        ("x-private-hop", None),
        ("keep-alive", None),
        ("te", None),
        ("proxy-connection", None),
        ("proxy-authorization", None),
        ("transfer-encoding", None),
        ("upgrade", None),
        // forwarding: appended / set by doorman
        ("x-forwarded-for", Some("203.0.113.7, 127.0.0.1")),
        ("x-forwarded-proto", Some("https")),
        ("x-forwarded-host", Some("app.example:8443")),
    ];
    for (name, want) in table {
        assert_eq!(get(name).as_deref(), *want, "header {name}");
    }
    let rid = get("x-request-id").unwrap();
    assert_eq!(rid.len(), 32);
    // Nothing else appeared or vanished.
    let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    names.sort();
    let mut want: Vec<&str> = table
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(n, _)| *n)
        .chain(["x-request-id"])
        .collect();
    want.sort();
    assert_eq!(names, want);

    // HTTP/2: Host comes from :authority; plain listener says http.
    let mut c = p.h2().await;
    assert_eq!(c.get("/h2").await.0.status(), 200);
    let h = &r.seen()[1].headers;
    assert_eq!(h["host"], "localhost");
    assert_eq!(h["x-forwarded-host"], "localhost");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");

    let mut c = Client::plain(p.addrs.plain.unwrap()).await;
    assert_eq!(c.get("/plain").await.0.status(), 200);
    assert_eq!(r.seen()[2].headers["x-forwarded-proto"], "http");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn response_hop_by_hop_headers_are_removed() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    for mut c in [p.h1().await, p.h2().await] {
        let (resp, body) = c.get("/hop").await;
        assert_eq!(&body[..], b"hop");
        let h = resp.headers();
        for gone in [
            "connection",
            "x-secret-hop",
            "keep-alive",
            "proxy-connection",
            "trailer",
            "upgrade",
        ] {
            assert!(h.get(gone).is_none(), "{gone} leaked to the client");
        }
        assert_eq!(h["x-end-to-end"], "kept");
        assert_eq!(h["set-cookie"], "a=b");
        assert_eq!(h["x-upstream-id"], "r1");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_id_is_kept_when_sane_and_generated_otherwise() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut c = p.h1().await;

    let send = |id: Option<&str>| {
        let mut b = Request::get("/").header("host", "localhost");
        if let Some(id) = id {
            b = b.header("x-request-id", id);
        }
        b.body(empty()).unwrap()
    };
    let req = send(Some("client-id-123"));
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id-123");
    body_bytes(resp.into_body()).await;
    assert_eq!(r.seen()[0].headers["x-request-id"], "client-id-123");

    for bad in [None, Some("has spaces in it"), Some(&*"x".repeat(200))] {
        let req = send(bad);
        let resp = c.send(req).await.unwrap();
        let returned = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        body_bytes(resp.into_body()).await;
        assert_eq!(returned.len(), 32, "generated id for {bad:?}");
        assert!(returned.bytes().all(|b| b.is_ascii_hexdigit()));
        let seen = r.seen();
        assert_eq!(
            seen.last().unwrap().headers["x-request-id"],
            returned.as_str()
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused() {
    let rs = replicas(3).await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &addrs(&rs), "") + &route_toml("/", "api")),
    )
    .await;
    // Sequential requests from several downstream connections share the upstream pool.
    for _ in 0..5 {
        let mut c = p.h2().await;
        for _ in 0..30 {
            assert_eq!(c.get("/").await.0.status(), 200);
        }
    }
    for r in &rs {
        assert_eq!(r.count(), 50);
        assert_eq!(
            r.connections.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{} should see one kept-alive connection for 50 sequential requests",
            r.id
        );
    }
    p.stop().await;
}

const MIB64: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_request_body_streams_through() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "max_body_bytes = 134217728",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    for mut c in [p.h1().await, p.h2().await] {
        // No Content-Length: chunked on HTTP/1.1, DATA frames on HTTP/2.
        let req = c
            .request(Method::POST, "/upload")
            .body(repeat_body(MIB64, 256 * 1024))
            .unwrap();
        let resp = c.send(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body_bytes(resp.into_body()).await, format!("ok {MIB64}"));
    }
    assert_eq!(
        r.seen().iter().map(|s| s.body_len).collect::<Vec<_>>(),
        [MIB64, MIB64]
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_response_body_streams_through() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    for mut c in [p.h1().await, p.h2().await] {
        let req = c
            .request(Method::GET, &format!("/bytes/{MIB64}"))
            .body(empty())
            .unwrap();
        let resp = c.send(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(body_len(resp.into_body()).await, MIB64);
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_are_streamed_not_buffered() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;

    // Response: the replica sends "first" and waits; the client must see "first" before the
    // replica is allowed to finish. A buffering proxy would deadlock here (and time out).
    let mut c = p.h1().await;
    let req = c.request(Method::GET, "/gate").body(empty()).unwrap();
    let mut body = c.send(req).await.unwrap().into_body();
    use http_body_util::BodyExt;
    let first = within("first response chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"first"));
    r.open_gate();
    let second = within("second response chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.into_data().unwrap(), Bytes::from_static(b"second"));

    // Request: the replica must receive the first chunk while the client still holds the rest.
    let mut c = p.h2().await;
    let (tx, body) = channel_body();
    let req = c.request(Method::POST, "/upload-gate").body(body).unwrap();
    let pending = tokio::spawn(async move { c.send(req).await.map(|r| r.into_parts().0.status) });
    tx.send(Ok(Frame::data(Bytes::from_static(b"part-one"))))
        .await
        .unwrap();
    within(
        "replica sees the first request chunk",
        r.first_chunk.notified(),
    )
    .await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"part-two"))))
        .await
        .unwrap();
    drop(tx);
    let status = within("upload response", pending).await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(r.seen().last().unwrap().body_len, 16);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrade_is_passed_through_and_echoes() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut io = p.h1().await.open_websocket("/ws").await;

    let seen = &r.seen()[0];
    assert_eq!(seen.headers["upgrade"], "websocket");
    assert_eq!(seen.headers["connection"], "upgrade");
    assert_eq!(
        seen.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );

    let mut echoed = HashMap::new();
    for msg in ["hello", "over the tunnel", "third frame"] {
        io.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        within("echo", io.read_exact(&mut buf)).await.unwrap();
        echoed.insert(msg, String::from_utf8(buf).unwrap());
    }
    for (sent, got) in &echoed {
        assert_eq!(sent, got);
    }
    drop(io);
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_and_non_websocket_upgrades_are_not_forwarded() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut c = p.h1().await;
    // h2c smuggling attempt: must reach the replica as a plain GET, not an upgrade.
    let req = c
        .request(Method::GET, "/ws")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")
        .body(empty())
        .unwrap();
    let resp = c.send(req).await.unwrap();
    // The mock's /ws answers 101 to anything; doorman did not forward an upgrade, so it must
    // not relay that 101 either (the client would be stranded): 502.
    assert_eq!(resp.status(), 502);
    body_bytes(resp.into_body()).await;
    let seen = r.seen();
    for name in ["upgrade", "connection", "http2-settings"] {
        assert!(seen[0].headers.get(name).is_none(), "{name} forwarded");
    }

    // A websocket upgrade on POST is not a WebSocket handshake either.
    let req = c
        .request(Method::POST, "/plain")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(full("x"))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp.into_body()).await;
    assert!(r.seen()[1].headers.get("upgrade").is_none());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_supplied_x_forwarded_host_is_never_passed_on() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    // HTTP/1.0 may omit Host; a spoofed X-Forwarded-Host must not ride along.
    let out = raw_exchange(
        p.addrs.plain.unwrap(),
        b"GET /reset HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    let seen = &r.seen()[0];
    assert!(seen.headers.get("x-forwarded-host").is_none());
    assert_eq!(seen.headers["host"], r.addr.to_string().as_str());
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_websocket_tunnel_is_closed_and_a_busy_one_is_not() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "idle_timeout = \"800ms\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let open_ws = || async { p.h1().await.open_websocket("/ws").await };

    // Busy: a message every 100ms for 1.2s (three idle periods) keeps it open.
    let mut busy = open_ws().await;
    for i in 0..12 {
        let msg = format!("msg-{i:02}");
        busy.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = [0u8; 6];
        within("echo", busy.read_exact(&mut buf)).await.unwrap();
        assert_eq!(&buf, msg.as_bytes());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Idle: closed by doorman (EOF) without the client doing anything.
    let mut idle = open_ws().await;
    let mut buf = [0u8; 8];
    let n = within("idle tunnel closed", idle.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    p.stop().await;
}

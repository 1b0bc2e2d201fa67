//! The admin listener (/health, /ready) and graceful shutdown: in-flight requests finish,
//! /ready turns 503 while draining, new connections are refused.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn health_and_ready_answer_on_the_admin_listener() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut admin = Client::plain(p.addrs.admin).await;
    let (resp, body) = admin.get("/health").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], br#"{"status":"ok"}"#);
    let (resp, body) = admin.get("/ready").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], br#"{"ready":true}"#);
    let (resp, _) = admin.get("/nope").await;
    assert_eq!(resp.status(), 404);
    // The admin listener is not a proxy: nothing reached the replica.
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_drains_in_flight_requests_and_reports_not_ready() {
    let r = Replica::start("r").await;
    let mut p = TestProxy::start(
        "shutdown_grace = \"10s\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut admin = Client::plain(p.addrs.admin).await;
    assert_eq!(admin.get("/ready").await.0.status(), 200);

    // A slow request is in flight when shutdown begins.
    let mut c = p.h2().await;
    let slow = tokio::spawn(async move { c.get("/sleep/1000").await });
    within("slow request reaches the replica", async {
        while r.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    p.begin_shutdown();

    // While draining: not ready, and no new connections are taken.
    within("ready turns 503", async {
        loop {
            if admin.get("/ready").await.0.status() == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    within("listener stops accepting", async {
        loop {
            let cfg = p
                .pki
                .client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
            if tls_connect(p.addrs.tls, cfg, "localhost").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // The in-flight request still completes normally.
    let (resp, body) = within("in-flight request", slow).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"slept");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn when_the_grace_period_ends_remaining_connections_are_closed() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "shutdown_grace = \"300ms\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    // A request that outlives the grace period, and an open WebSocket tunnel.
    let mut c = p.h1().await;
    let slow = tokio::spawn(async move {
        let req = c
            .request(http::Method::GET, "/sleep/10000")
            .body(empty())
            .unwrap();
        c.send(req).await.map(|r| r.status())
    });
    let mut ws = p.h1().await.open_websocket("/ws").await;
    within("slow request in flight", async {
        while r.count() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    // stop() returns (grace + close) well before the 10s request would finish.
    p.stop().await;
    let slow = within("slow request ended", slow).await.unwrap();
    assert!(
        slow.is_err(),
        "the request past the grace period should be cut: {slow:?}"
    );
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 8];
    let n = within("tunnel closed", ws.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

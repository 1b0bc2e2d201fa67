//! The upstream keep-alive pool: a connection goes back to its replica's pool only once its
//! response has been read to the end, `keepalive = 0` keeps none, idle connections close
//! after `keepalive_timeout` even with no traffic, and a replica closing a connection (or a
//! client abandoning a response) never breaks the next request.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::BodyExt;
use support::*;

fn one_replica(r: &Replica, extra: &str) -> String {
    group_toml("api", &[r.addr], extra) + &route_toml("/", "api")
}

fn opened(r: &Replica) -> usize {
    r.connections.load(Ordering::SeqCst)
}

/// Wait (bounded) until the replica has seen `n` of its connections end.
async fn closed(r: &Replica, n: usize) {
    within(&format!("{} upstream connections closed", n), async {
        while r.closed.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(r.closed.load(Ordering::SeqCst), n);
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_zero_opens_a_connection_per_request() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start("", &one_replica(&r, "keepalive = 0")).await;
    let mut c = p.h1().await;
    for i in 1..=5 {
        let (resp, body) = c.get("/").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"ok 0");
        assert_eq!(opened(&r), i, "request {i} had its own connection");
    }
    // None kept: each closes once its response is through.
    closed(&r, 5).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_close_after_keepalive_timeout_without_traffic() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start("", &one_replica(&r, "keepalive_timeout = \"300ms\"")).await;
    let mut c = p.h1().await;
    for _ in 0..3 {
        assert_eq!(c.get("/").await.0.status(), 200);
    }
    assert_eq!(opened(&r), 1, "sequential requests share one connection");
    assert_eq!(r.closed.load(Ordering::SeqCst), 0);
    // No request follows: the pool's own sweep closes it.
    closed(&r, 1).await;
    assert_eq!(c.get("/").await.0.status(), 200);
    assert_eq!(opened(&r), 2, "a new connection after the idle one closed");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_closing_its_connection_is_not_an_error() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start("", &one_replica(&r, "")).await;
    let mut c = p.h1().await;
    let (resp, body) = c.get("/close").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"closing");
    // Connection is hop-by-hop: the replica's close is not the client's.
    assert!(resp.headers().get("connection").is_none());
    closed(&r, 1).await;
    for _ in 0..20 {
        let (resp, body) = c.get("/").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"ok 0");
    }
    assert_eq!(
        opened(&r),
        2,
        "one new connection for the 20 requests after the close"
    );
    assert_eq!(r.count(), 21);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_response_read_to_the_end_returns_its_connection() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start("", &one_replica(&r, "")).await;
    let mut c = p.h1().await;
    for _ in 0..3 {
        let (resp, body) = c.get("/bytes/300000").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body.len(), 300_000);
        assert_eq!(c.get("/").await.0.status(), 200);
    }
    assert_eq!(opened(&r), 1, "one connection carried all six responses");
    assert_eq!(r.closed.load(Ordering::SeqCst), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_abandoned_midway_closes_its_upstream_connection() {
    let r = Replica::start("r1").await;
    let p = TestProxy::start("", &one_replica(&r, "")).await;
    {
        let mut c = p.h1().await;
        let req = c.request(http::Method::GET, "/gate").body(empty()).unwrap();
        let resp = within("gated head", c.send(req)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = within("first chunk", body.frame())
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(&first[..], b"first");
        // The client goes away with the response half read.
    }
    // The half-read response's connection cannot carry another request: it is closed, and
    // the next request gets a new one.
    closed(&r, 1).await;
    let mut c = p.h1().await;
    let (resp, body) = c.get("/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"ok 0");
    assert_eq!(opened(&r), 2);
    p.stop().await;
}

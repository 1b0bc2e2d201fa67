//! Retries (RFC 9110 §9.2.2): a refused connection (nothing sent) is retried for any
//! method, a reset after sending only for idempotent methods; large or chunked bodies are
//! never re-sent; a retry budget bounds it all.

mod support;

use http::Method;
use support::*;

async fn proxy(dead: std::net::SocketAddr, live: &[&Replica], extra: &str) -> TestProxy {
    let mut servers = vec![format!("{{ address = \"{dead}\" }}")];
    servers.extend(
        live.iter()
            .map(|r| format!("{{ address = \"{}\" }}", r.addr)),
    );
    // Passive ejection off: every pass over the dead replica must be handled by a retry.
    let group = format!(
        "[upstreams.api]\nservers = [{}]\n{extra}\n[upstreams.api.health]\neject_after_failures = 0\n",
        servers.join(", ")
    );
    TestProxy::start("", &(group + &route_toml("/", "api"))).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_is_retried_for_every_method_each_request_sent_once() {
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let dead = closed_port().await;
    // With ejection off the dead replica keeps its share, more than the default 20% budget
    // allows: this test is about which requests are retried, so the budget is unbounded.
    let p = proxy(dead, &[&a, &b], "retries = 2\nretry_budget = 1.0").await;
    let mut c = p.h2().await;
    for i in 0..60 {
        let (resp, _) = c.get(&format!("/item/{i}")).await;
        assert_eq!(resp.status(), 200, "GET {i}");
    }
    assert_eq!(
        a.count() + b.count(),
        60,
        "each GET reached a live replica once"
    );

    // POSTs with a small body: a refused connection sent nothing, so they are retried too.
    for i in 0..30 {
        let req = c
            .request(Method::POST, &format!("/pay/{i}"))
            .header("content-length", "8")
            .body(full("amount=1"))
            .unwrap();
        assert_eq!(c.send_collect(req).await.0.status(), 200, "POST {i}");
    }
    let seen: Vec<Seen> = a.seen().into_iter().chain(b.seen()).collect();
    for i in 0..30 {
        let hits: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.uri == format!("/pay/{i}"))
            .collect();
        assert_eq!(hits.len(), 1, "POST {i} reached a replica exactly once");
        assert_eq!(hits[0].body_len, 8, "with its whole body");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_after_sending_is_retried_for_get_but_never_for_post() {
    let (a, b, c3) = (
        Replica::start("a").await,
        Replica::start("b").await,
        Replica::start("c").await,
    );
    let servers: Vec<_> = [&a, &b, &c3].iter().map(|r| r.addr).collect();
    let p = TestProxy::start(
        "",
        &(group_toml(
            "api",
            &servers,
            "retries = 2\nretry_budget = 1.0\n[upstreams.api.health]\neject_after_failures = 0",
        ) + &route_toml("/", "api")),
    )
    .await;
    let total = || a.count() + b.count() + c3.count();
    let mut c = p.h1().await;
    // Every replica aborts /abort: a GET is tried on all three (1 + 2 retries), then 502.
    assert_eq!(c.get("/abort/get").await.0.status(), 502);
    assert_eq!(total(), 3);
    for r in [&a, &b, &c3] {
        assert_eq!(r.count(), 1, "each replica tried once");
    }
    // A POST that reached a replica may have been acted on: sent once, then 502.
    let mut c = p.h1().await;
    let req = c
        .request(Method::POST, "/abort/post")
        .header("content-length", "8")
        .body(full("amount=1"))
        .unwrap();
    assert_eq!(c.send_collect(req).await.0.status(), 502);
    assert_eq!(total(), 4, "the POST was sent exactly once");
    // A PUT is idempotent: re-sent, body and all.
    let mut c = p.h1().await;
    let req = c
        .request(Method::PUT, "/abort/put")
        .header("content-length", "3")
        .body(full("v=1"))
        .unwrap();
    assert_eq!(c.send_collect(req).await.0.status(), 502);
    let puts: Vec<Seen> = [&a, &b, &c3]
        .iter()
        .flat_map(|r| r.seen())
        .filter(|s| s.uri == "/abort/put")
        .collect();
    assert_eq!(puts.len(), 3);
    assert!(puts.iter().all(|s| s.body_len == 3));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_or_streamed_body_is_sent_once_even_when_refused() {
    let a = Replica::start("a").await;
    let dead = closed_port().await;
    let p = proxy(dead, &[&a], "retries = 2\nretry_budget = 1.0").await;
    let mut statuses = Vec::new();
    // Over the 64 KiB replay limit: streamed, so never re-sent. A fresh connection each
    // time: a failed upload ends its connection.
    for _ in 0..4 {
        let mut c = p.h1().await;
        let req = c
            .request(Method::POST, "/big")
            .header("content-length", (100 * 1024).to_string())
            .body(repeat_body(100 * 1024, 16 * 1024))
            .unwrap();
        statuses.push(c.send_collect(req).await.0.status().as_u16());
    }
    // Round robin alternates: two went to the dead replica and failed, two reached `a`.
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 502, 502]);
    assert_eq!(a.count(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_retry_budget_stops_retrying() {
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let dead = closed_port().await;
    // No budget beyond the floor of 10 retries for quiet periods.
    let p = proxy(dead, &[&a, &b], "retries = 2\nretry_budget = 0.0").await;
    let mut c = p.h1().await;
    let mut statuses = Vec::new();
    for i in 0..80 {
        statuses.push(c.get(&format!("/x/{i}")).await.0.status().as_u16());
    }
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    let failed = statuses.iter().filter(|s| **s == 502).count();
    assert!(
        failed >= 5,
        "once the budget is spent, dead-replica hits fail: {statuses:?}"
    );
    assert_eq!(a.count() + b.count() + failed, 80);
    p.stop().await;
}

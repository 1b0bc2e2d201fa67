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

/// POSTs `/pay/0` … `/pay/{n-1}` each reached a replica exactly once, with its 8-byte body.
fn each_pay_reached_once(seen: &[Seen], n: usize) {
    for i in 0..n {
        let hits: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.uri == format!("/pay/{i}"))
            .collect();
        assert_eq!(hits.len(), 1, "POST {i} reached a replica exactly once");
        assert_eq!(hits[0].body_len, 8, "with its whole body");
    }
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
    each_pay_reached_once(&seen, 30);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_write_is_retried_after_a_refused_connection_and_pays_into_the_budget() {
    let a = Replica::start("a").await;
    let dead = closed_port().await;
    // Every request meets the dead replica first (the retry's pick moves round robin on
    // too) and needs one retry. A budget of 1.0 sustains that only if keyed requests pay
    // into it: without their deposits the floor of 10 retries is spent after 10 requests.
    let toml = format!(
        "[upstreams.api]\nservers = [{{ address = \"{dead}\" }}, {{ address = \"{}\" }}]\nretries = 1\nretry_budget = 1.0\n[upstreams.api.health]\neject_after_failures = 0\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n",
        a.addr
    );
    let p = TestProxy::start("", &toml).await;
    let mut c = p.h1().await;
    let post = |c: &mut Client, i: usize| {
        c.request(Method::POST, &format!("/pay/{i}"))
            .header("idempotency-key", format!("key-{i}"))
            .header("content-length", "8")
            .body(full("amount=1"))
            .unwrap()
    };
    for i in 0..60 {
        let req = post(&mut c, i);
        assert_eq!(c.send_collect(req).await.0.status(), 200, "keyed POST {i}");
    }
    let seen = a.seen();
    assert_eq!(seen.len(), 60, "each keyed POST reached the live replica");
    each_pay_reached_once(&seen, 60);
    // The retried request's outcome was stored under its key like any other.
    let req = post(&mut c, 0);
    let (resp, _) = c.send_collect(req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(a.count(), 60, "the replay cost no replica a call");

    let mut admin = Client::plain(p.addrs.admin).await;
    let (_, body) = admin.get("/metrics").await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let retries: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("doorman_retries_total{"))
        .collect();
    assert_eq!(retries, [r#"doorman_retries_total{group="api"} 60"#]);
    p.stop().await;
}

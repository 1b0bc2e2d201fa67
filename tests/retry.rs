//! Retries (RFC 9110 §9.2.2): bodiless requests are re-sent on another replica where that is
//! safe; requests with a body never are; a retry budget bounds them.

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
async fn gets_survive_a_dead_replica_and_posts_with_bodies_are_never_resent() {
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
    let gets = a.count() + b.count();
    assert_eq!(gets, 60, "each GET reached a live replica exactly once");

    // POSTs with a body: sent once; the ones that hit the dead replica fail, none is doubled.
    let mut ok = 0;
    let mut failed = 0;
    for i in 0..30 {
        let req = c
            .request(Method::POST, &format!("/pay/{i}"))
            .body(full("amount=1"))
            .unwrap();
        match c.send_collect(req).await.0.status().as_u16() {
            200 => ok += 1,
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(failed > 0, "some POSTs must have met the dead replica");
    assert_eq!(ok + failed, 30);
    let posts = a.count() + b.count() - gets;
    assert_eq!(posts, ok, "a POST with a body is never re-sent");

    // A bodiless POST whose connection was refused reached nothing: it is retried.
    for i in 0..6 {
        let req = c
            .request(Method::POST, &format!("/ping/{i}"))
            .body(empty())
            .unwrap();
        assert_eq!(c.send_collect(req).await.0.status(), 200);
    }
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

//! Consistent-hash (sticky) mode end to end: a key always lands on the same replica, keys
//! spread, two instances agree, every key source works, requests without a key fall back to
//! round robin, and bounded loads cap a hot key's replica.

mod support;

use std::collections::{HashMap, HashSet};

use http::Method;
use support::*;

async fn replicas(n: usize) -> Vec<Replica> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.push(Replica::start(&format!("r{i}")).await);
    }
    v
}

fn sticky_group(rs: &[Replica], extra: &str) -> String {
    let addrs: Vec<_> = rs.iter().map(|r| r.addr).collect();
    group_toml(
        "api",
        &addrs,
        &format!("balance = \"consistent_hash\"\n{extra}"),
    )
}

async fn upstream_for(c: &mut Client, req: http::Request<TestBody>) -> String {
    let (resp, _) = c.send_collect(req).await;
    assert_eq!(resp.status(), 200);
    resp.headers()["x-upstream-id"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_key_always_lands_on_the_same_replica_and_keys_spread() {
    let rs = replicas(5).await;
    let p = TestProxy::start(
        "",
        &(sticky_group(&rs, "hash_key = \"header:x-session-id\"") + &route_toml("/", "api")),
    )
    .await;
    let mut c = p.h2().await;
    let mut home: HashMap<String, String> = HashMap::new();
    for i in 0..1000 {
        let session = format!("session-{}", i % 40);
        let req = c
            .request(Method::GET, "/")
            .header("x-session-id", &session)
            .body(empty())
            .unwrap();
        let id = upstream_for(&mut c, req).await;
        let first = home.entry(session.clone()).or_insert_with(|| id.clone());
        assert_eq!(*first, id, "{session} moved");
    }
    let used: HashSet<&String> = home.values().collect();
    assert!(
        used.len() >= 4,
        "40 sessions should spread over most of 5 replicas: {used:?}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_with_the_same_config_route_every_key_alike() {
    let rs = replicas(4).await;
    let rest = sticky_group(&rs, "hash_key = \"query:user\"") + &route_toml("/", "api");
    let a = TestProxy::start("", &rest).await;
    let b = TestProxy::start("", &rest).await;
    let (mut ca, mut cb) = (a.h1().await, b.h1().await);
    for k in 0..200 {
        let path = format!("/items?user=u{k}&page=2");
        let req_a = ca.request(Method::GET, &path).body(empty()).unwrap();
        let ra = upstream_for(&mut ca, req_a).await;
        let req_b = cb.request(Method::GET, &path).body(empty()).unwrap();
        let rb = upstream_for(&mut cb, req_b).await;
        assert_eq!(ra, rb, "{path}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cookie_claim_and_ip_keys_are_sticky_and_no_key_falls_back_to_round_robin() {
    let rs = replicas(3).await;
    // Cookie.
    let p = TestProxy::start(
        "",
        &(sticky_group(&rs, "hash_key = \"cookie:sid\"") + &route_toml("/", "api")),
    )
    .await;
    let mut c = p.h1().await;
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let req = c
            .request(Method::GET, "/")
            .header("cookie", "theme=dark; sid=abc123; lang=en")
            .body(empty())
            .unwrap();
        seen.insert(upstream_for(&mut c, req).await);
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    // No cookie: round robin, exactly.
    for r in &rs {
        r.seen.lock().unwrap().clear();
    }
    for _ in 0..300 {
        assert_eq!(c.get("/").await.0.status(), 200);
    }
    assert_eq!(
        rs.iter().map(|r| r.count()).collect::<Vec<_>>(),
        [100, 100, 100]
    );
    p.stop().await;

    // The client IP: every request from this test comes from 127.0.0.1.
    let p = TestProxy::start(
        "",
        &(sticky_group(&rs, "hash_key = \"ip\"") + &route_toml("/", "api")),
    )
    .await;
    let mut seen = HashSet::new();
    for _ in 0..30 {
        seen.insert(
            p.get("/").await.0.headers()["x-upstream-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    p.stop().await;

    // A verified JWT claim.
    use support::jwt::*;
    let kit = JwtKit::new();
    let rest = sticky_group(&rs, "hash_key = \"claim:sub\"")
        + &kit.auth_toml("")
        + &route_toml("/", "api");
    let p = TestProxy::start("", &rest).await;
    let mut c = p.h2().await;
    let mut homes = HashMap::new();
    for round in 0..5 {
        for user in ["ann", "ben", "cal", "dee", "eve", "fay"] {
            // A fresh token each round: the claim, not the token, is the key.
            let token = sign(kit.key("hs256"), &good_claims(user));
            let req = c
                .request(Method::GET, "/")
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap();
            let id = upstream_for(&mut c, req).await;
            let home = homes.entry(user).or_insert_with(|| id.clone());
            assert_eq!(*home, id, "{user} moved in round {round}");
        }
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_loads_cap_a_hot_keys_replica() {
    let rs = replicas(4).await;
    let rest = sticky_group(
        &rs,
        "hash_key = \"header:x-key\"\nhash_balance_factor = 1.25",
    ) + &route_toml("/", "api");
    let p = TestProxy::start("", &rest).await;
    // 40 concurrent slow requests for one hot key.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let mut c = p.h1().await;
        tasks.push(tokio::spawn(async move {
            let req = c
                .request(Method::GET, "/sleep/3000")
                .header("x-key", "hot")
                .body(empty())
                .unwrap();
            upstream_for(&mut c, req).await
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        *counts
            .entry(within("hot request", t).await.unwrap())
            .or_default() += 1;
    }
    // Without a bound all 40 would hit one replica. With 1.25, none may hold more than
    // ceil(1.25 × 40 / 4) = 13 at once; all 40 overlap, so that caps the totals too.
    let max = counts.values().copied().max().unwrap();
    assert!(max <= 13, "{counts:?}");
    assert!(counts.len() >= 3, "{counts:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sticky_settings_are_validated() {
    let text = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.api]\nservers = [{{ address = \"127.0.0.1:2\" }}]\n{extra}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
        )
    };
    for (extra, key, why) in [
        (
            "balance = \"consistent_hash\"",
            "upstreams.api.hash_key",
            "required with balance = \"consistent_hash\"",
        ),
        (
            "balance = \"consistent_hash\"\nhash_key = \"body:x\"",
            "upstreams.api.hash_key",
            "\"body:x\": expected header:NAME, cookie:NAME, claim:NAME, query:NAME or ip",
        ),
        (
            "balance = \"consistent_hash\"\nhash_key = \"ip\"\nhash_balance_factor = 0.9",
            "upstreams.api.hash_balance_factor",
            "0.9 must be above 1.0 (e.g. 1.25)",
        ),
        (
            "hash_key = \"ip\"",
            "upstreams.api.hash_key",
            "only applies with balance = \"consistent_hash\"",
        ),
    ] {
        let e = doorman::config::parse(&text(extra), std::path::Path::new("t.toml")).unwrap_err();
        let found = e.errors.iter().find(|x| x.key == key);
        assert_eq!(
            found.map(|x| x.message.as_str()),
            Some(why),
            "{extra}: {:?}",
            e.errors
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_key_is_no_key() {
    let rs = replicas(3).await;
    let p = TestProxy::start(
        "",
        &(sticky_group(&rs, "hash_key = \"header:x-session-id\"") + &route_toml("/", "api")),
    )
    .await;
    let mut c = p.h1().await;
    for _ in 0..300 {
        let req = c
            .request(Method::GET, "/")
            .header("x-session-id", "")
            .body(empty())
            .unwrap();
        upstream_for(&mut c, req).await;
    }
    assert_eq!(
        rs.iter().map(|r| r.count()).collect::<Vec<_>>(),
        [100, 100, 100]
    );
    p.stop().await;
}

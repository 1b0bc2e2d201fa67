//! Redis Cluster: three masters and three replicas (real redis-server processes on free
//! ports, one cluster for this whole binary) shared by two doorman instances.
//!
//! In order, on the one cluster: a revocation through either instance or a raw
//! `redis-cli -c SET` is refused by both within 100 ms, with keys on all three masters; an
//! idempotency key runs once across both instances; a slot moved to another master (keys
//! and all) keeps the view exact; a master killed with SIGKILL makes the view untrusted
//! (checks go to Redis and follow `on_error`), and once its replica is promoted the view is
//! trusted again and still refuses every acknowledged revocation.

mod support;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::RedisCluster;
use support::jwt::*;
use support::*;

const PREFIX: &str = "doorman:revoked:";

async fn proxy(kit: &JwtKit, replica: &Replica, cluster: &RedisCluster) -> TestProxy {
    let seeds: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    let rest = group_toml("api", &[replica.addr], "")
        + &format!(
            "[store]\nredis_cluster = [{}]\ntimeout = \"300ms\"\non_error = \"closed\"\ndurable_revocations = true\n",
            seeds.join(", ")
        )
        + &kit.auth_toml("")
        + "[[routes]]\npath_prefix = \"/unique\"\nupstream = \"api\"\nauth = \"off\"\nidempotency = \"required\"\n"
        + &route_toml("/", "api");
    TestProxy::start("", &rest).await
}

async fn status(c: &mut Client, token: &str) -> u16 {
    let req = c
        .request(http::Method::GET, "/api/x")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    c.send_collect(req).await.0.status().as_u16()
}

async fn until_status(c: &mut Client, token: &str, want: u16, what: &str) -> Duration {
    let start = Instant::now();
    within(what, async {
        while status(c, token).await != want {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    start.elapsed()
}

/// `POST /revocations` on `p`'s admin listener: (status, JSON body).
async fn revoke(p: &TestProxy, jti: &str, exp: u64) -> (u16, serde_json::Value) {
    let mut admin = Client::plain(p.addrs.admin).await;
    let req = http::Request::post("/revocations")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(json!({"jti": jti, "expires_at": exp}).to_string()))
        .unwrap();
    let (resp, body) = admin.send_collect(req).await;
    (
        resp.status().as_u16(),
        serde_json::from_slice(&body).unwrap(),
    )
}

async fn store_status(p: &TestProxy) -> serde_json::Value {
    status_json(p).await["store"].clone()
}

/// Wait until `p`'s view is trusted under a topology whose masters are `masters`.
async fn until_synced(p: &TestProxy, masters: &[u16], what: &str) -> serde_json::Value {
    let mut want: Vec<String> = masters.iter().map(|m| format!("127.0.0.1:{m}")).collect();
    want.sort();
    within(what, async {
        loop {
            let s = store_status(p).await;
            let got: Vec<String> = s["masters"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|m| m["address"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            if got == want && s["revocation_view"] == "synced" {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A token whose jti key lands on the master on `port` (tried until one does).
async fn token_on(
    kit: &JwtKit,
    cluster: &RedisCluster,
    port: u16,
    sub: &str,
) -> (String, String, u64) {
    for _ in 0..200 {
        let claims = good_claims(sub);
        let jti = claims["jti"].as_str().unwrap().to_string();
        if cluster.master_of(&format!("{PREFIX}jti:{jti}")).await == port {
            let exp = claims["exp"].as_u64().unwrap();
            return (sign(kit.key("es256"), &claims), jti, exp);
        }
    }
    panic!("no jti in 200 tries lands on the master on {port}");
}

async fn keyed_post(c: &mut Client, key: &str) -> (u16, bool, String) {
    let req = c
        .request(http::Method::POST, "/unique")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(full("{}"))
        .unwrap();
    let (resp, body) = c.send_collect(req).await;
    (
        resp.status().as_u16(),
        resp.headers().contains_key("idempotent-replayed"),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// `redis-cli -c -p {port} SET {key} 1 EX 300`: a write by another tool, following
/// MOVED like any cluster client.
fn redis_cli_set(port: u16, key: &str) {
    let out = Command::new("redis-cli")
        .args(["-c", "-p", &port.to_string(), "SET", key, "1", "EX", "300"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("redis-cli is required by this test ({e})"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_keeps_revocations_exact_and_keys_once_through_failover_and_resharding() {
    let mut cluster = RedisCluster::start().await;
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3);
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let a = proxy(&kit, &r, &cluster).await;
    let b = proxy(&kit, &r, &cluster).await;
    let (mut ca, mut cb) = (a.h1().await, b.h2().await);

    for p in [&a, &b] {
        let s = until_synced(p, &masters, "view synced with every master").await;
        assert_eq!(s["kind"], "redis");
        assert_eq!(s["mode"], "cluster");
        assert_eq!(s["untrusted_reason"], serde_json::Value::Null);
        assert_eq!(s["topology_version"], 1);
        for m in s["masters"].as_array().unwrap() {
            assert_eq!(m["connected"], true, "{m}");
            assert_eq!(m["synced"], true, "{m}");
        }
        assert_eq!(s["replicas"].as_array().unwrap().len(), 3);
        assert_eq!(metric(p, "doorman_revocation_view_trusted").await, 1.0);
        assert_eq!(metric(p, "doorman_store_topology_version").await, 1.0);
        for m in &masters {
            let series = format!("doorman_store_node_connected{{node=\"127.0.0.1:{m}\"}}");
            assert_eq!(metric(p, &series).await, 1.0, "{series}");
        }
    }

    // Revocations on every master: through A, through B, and raw with redis-cli -c. Both
    // instances refuse each within 100 ms of the write's acknowledgement.
    let mut revoked = Vec::new();
    for (i, &m) in masters.iter().enumerate() {
        for how in ["a", "b", "cli"] {
            let (token, jti, exp) = token_on(&kit, &cluster, m, &format!("u{i}{how}")).await;
            assert_eq!(status(&mut ca, &token).await, 200);
            assert_eq!(status(&mut cb, &token).await, 200);
            match how {
                "a" | "b" => {
                    let p = if how == "a" { &a } else { &b };
                    let (code, body) = revoke(p, &jti, exp).await;
                    assert_eq!(code, 200, "{body}");
                    // durable_revocations: the master's replica acknowledged it.
                    assert_eq!(body["replicated"], true, "{body}");
                }
                _ => redis_cli_set(cluster.any_live(), &format!("{PREFIX}jti:{jti}")),
            }
            for (c, who) in [(&mut ca, "A"), (&mut cb, "B")] {
                let took = until_status(
                    c,
                    &token,
                    401,
                    &format!("{who} refuses a {how} revocation on {m}"),
                )
                .await;
                assert!(
                    took < Duration::from_millis(100),
                    "{who} took {took:?} to refuse a {how} revocation on the master on {m}"
                );
            }
            revoked.push(token);
        }
    }
    // Refused from the local view: no request went to Redis for it.
    for p in [&a, &b] {
        assert_eq!(store_status(p).await["revocation_view"], "synced");
    }

    // Idempotency across both instances: one replica call per key, replays elsewhere.
    let before = r.count();
    let (code, replayed, first) = keyed_post(&mut ca, "k-1").await;
    assert_eq!((code, replayed), (201, false), "{first}");
    assert_eq!(keyed_post(&mut cb, "k-1").await, (201, true, first.clone()));
    assert_eq!(keyed_post(&mut ca, "k-1").await, (201, true, first));
    let (code, replayed, _) = keyed_post(&mut cb, "k-2").await;
    assert_eq!((code, replayed), (201, false));
    assert!(keyed_post(&mut ca, "k-2").await.1, "k-2 replays through A");
    assert_eq!(
        r.count() - before,
        2,
        "each key reached the replica exactly once"
    );

    // Move the slot of a revoked key to another master: the topology changes, both views
    // resync, and the key is refused on its new master as before. A key revoked in that
    // slot afterwards is seen through the new master's session. The jtis carry a hash tag,
    // so both keys share one slot.
    let tagged = |jti: &str| {
        let mut claims = good_claims("mover");
        claims["jti"] = json!(jti);
        let exp = claims["exp"].as_u64().unwrap();
        (sign(kit.key("es256"), &claims), exp)
    };
    let (moved_token, _) = tagged("{mv}-1");
    let (late_token, late_exp) = tagged("{mv}-2");
    let moved_key = format!("{PREFIX}jti:{{mv}}-1");
    redis_cli_set(cluster.any_live(), &moved_key);
    until_status(
        &mut ca,
        &moved_token,
        401,
        "A refuses the key before the move",
    )
    .await;
    let slot = cluster.slot(&moved_key).await;
    let from = cluster.master_of(&moved_key).await;
    let to = *masters.iter().find(|m| **m != from).unwrap();
    let watch_done = AtomicBool::new(false);
    let moving = async {
        cluster.move_slot(slot, from, to).await;
        for p in [&a, &b] {
            within("topology version 2 seen", async {
                while store_status(p).await["topology_version"] != 2 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            until_synced(p, &masters, "view resynced after the slot moved").await;
        }
        watch_done.store(true, Ordering::Release);
    };
    let watch = async {
        let mut n = 0;
        while !watch_done.load(Ordering::Acquire) {
            for c in [&mut ca, &mut cb] {
                let code = status(c, &moved_token).await;
                assert!(
                    matches!(code, 401 | 503),
                    "{code} for a key in a slot being moved"
                );
            }
            n += 1;
            assert!(n < 20_000, "the move never settled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::join!(moving, watch);
    assert_eq!(cluster.master_of(&moved_key).await, to);
    for c in [&mut ca, &mut cb] {
        assert_eq!(status(c, &moved_token).await, 401);
    }
    assert_eq!(status(&mut ca, &late_token).await, 200);
    let (code, body) = revoke(&b, "{mv}-2", late_exp).await;
    assert_eq!(
        (code, body["replicated"].clone()),
        (200, json!(true)),
        "{body}"
    );
    let took = until_status(
        &mut ca,
        &late_token,
        401,
        "A refuses a revocation in the moved slot",
    )
    .await;
    assert!(took < Duration::from_millis(100), "{took:?}");
    revoked.push(moved_token);
    revoked.push(late_token);

    // SIGKILL the master that served the first revocations. The views lose that session at
    // once: untrusted, so checks go to Redis (503 while its slots have no master, with
    // on_error = closed). No revoked token passes on the way; after the promotion both
    // views are trusted again and refuse every token revoked before.
    let victim = masters[0];
    let (live, _, _) = token_on(&kit, &cluster, masters[2], "live").await;
    assert_eq!(status(&mut ca, &live).await, 200);
    cluster.kill(victim);
    let done = AtomicBool::new(false);
    let promoted = async {
        cluster.wait_for_promotion(victim).await;
        let now = cluster.masters().await;
        for p in [&a, &b] {
            until_synced(p, &now, "view resynced after the promotion").await;
        }
        done.store(true, Ordering::Release);
    };
    let watch = async {
        let mut untrusted_seen = false;
        let mut n = 0;
        while !done.load(Ordering::Acquire) {
            for t in &revoked {
                let (x, y) = (status(&mut ca, t).await, status(&mut cb, t).await);
                assert!(matches!(x, 401 | 503), "A answered {x} for a revoked token");
                assert!(matches!(y, 401 | 503), "B answered {y} for a revoked token");
            }
            let l = status(&mut ca, &live).await;
            assert!(matches!(l, 200 | 503), "A answered {l} for a live token");
            if !untrusted_seen && store_status(&a).await["revocation_view"] == "resyncing" {
                untrusted_seen = true;
            }
            n += 1;
            assert!(n < 5_000, "no promotion after {n} rounds");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        untrusted_seen
    };
    let ((), untrusted_seen) = tokio::join!(promoted, watch);
    assert!(
        untrusted_seen,
        "A's view was never seen untrusted during the failover"
    );
    for p in [&a, &b] {
        let s = store_status(p).await;
        assert_eq!(s["untrusted_reason"], serde_json::Value::Null);
        assert!(s["failovers"].as_u64().unwrap() >= 1, "{s}");
        assert!(metric(p, "doorman_store_failovers_total").await >= 1.0);
        assert_eq!(metric(p, "doorman_revocation_view_trusted").await, 1.0);
    }
    for t in &revoked {
        assert_eq!(status(&mut ca, t).await, 401);
        assert_eq!(status(&mut cb, t).await, 401);
    }
    until_status(
        &mut ca,
        &live,
        200,
        "a live token passes after the failover",
    )
    .await;

    // The killed node comes back as a replica: the masters do not change, nothing resyncs
    // for it beyond the replica list.
    cluster.restart(victim);
    cluster
        .settled("the old master rejoined as a replica")
        .await;
    for t in &revoked {
        assert_eq!(status(&mut cb, t).await, 401);
    }

    a.stop().await;
    b.stop().await;
}

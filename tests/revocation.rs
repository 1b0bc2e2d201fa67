//! Revocation: by jti and by subject, through the admin endpoint, the CLI and raw Redis
//! writes; two proxy instances sharing one real redis-server; Redis stopped (SIGSTOP) under
//! both `on_error` policies; Redis restarted under a running proxy; the embedded store.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use support::jwt::*;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_doorman");

async fn proxy(kit: &JwtKit, replica: &Replica, store: &str) -> TestProxy {
    let rest = group_toml("api", &[replica.addr], "")
        + store
        + "\n"
        + &kit.auth_toml("")
        + &route_toml("/", "api");
    TestProxy::start("", &rest).await
}

fn store_toml(redis: &RedisServer, on_error: &str) -> String {
    format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"50ms\"\non_error = \"{on_error}\"\n",
        redis.url()
    )
}

async fn status(c: &mut Client, token: &str) -> u16 {
    let req = c
        .request(http::Method::GET, "/api/x")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    c.send_collect(req).await.0.status().as_u16()
}

async fn admin_post(p: &TestProxy, body: serde_json::Value) -> (u16, String) {
    let mut admin = Client::plain(p.addrs.admin).await;
    let req = http::Request::post("/revocations")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    let (resp, body) = admin.send_collect(req).await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// `doorman revoke --config <text> --jti JTI --expires-at EXP`, asserting success.
async fn cli_revoke(config_text: &str, jti: &str, exp: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text).unwrap();
    let (jti, exp) = (jti.to_string(), exp.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["revoke", "--config"])
            .arg(&path)
            .args(["--jti", &jti, "--expires-at", &exp])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Poll until `token` gets `want` from `c`; returns how long it took.
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

fn token_for(kit: &JwtKit, sub: &str, iat: u64) -> (String, String, u64) {
    let mut claims = good_claims(sub);
    claims["iat"] = json!(iat);
    claims["nbf"] = json!(iat);
    let jti = claims["jti"].as_str().unwrap().to_string();
    let exp = claims["exp"].as_u64().unwrap();
    (sign(kit.key("es256"), &claims), jti, exp)
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_store_revokes_by_jti_and_by_subject() {
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let p = proxy(&kit, &r, "").await;
    let mut c = p.h1().await;
    let now = now();
    let (t1, jti1, exp1) = token_for(&kit, "alice", now - 20);
    let (t2, _, _) = token_for(&kit, "alice", now - 20);
    let (t3, _, _) = token_for(&kit, "alice", now);
    let (t4, _, _) = token_for(&kit, "bob", now - 20);
    for t in [&t1, &t2, &t3, &t4] {
        assert_eq!(status(&mut c, t).await, 200);
    }

    let (code, body) = admin_post(&p, json!({"jti": jti1, "expires_at": exp1})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&mut c, &t1).await, 401);
    assert_eq!(
        status(&mut c, &t2).await,
        200,
        "only that one token is revoked"
    );

    // Log alice out everywhere as of 10s ago: tokens issued before are refused, newer pass.
    let (code, body) = admin_post(&p, json!({"sub": "alice", "before": now - 10})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&mut c, &t2).await, 401);
    assert_eq!(status(&mut c, &t3).await, 200);
    assert_eq!(
        status(&mut c, &t4).await,
        200,
        "other subjects are untouched"
    );

    // The refusal names the reason.
    let req = c
        .request(http::Method::GET, "/api/x")
        .header("authorization", format!("Bearer {t1}"))
        .body(empty())
        .unwrap();
    let (resp, _) = c.send_collect(req).await;
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\", error_description=\"token revoked\""
    );

    // Bad requests to the admin endpoint are 400 with a reason.
    for (body, why) in [
        (
            json!({"jti": "x"}),
            "expires_at (unix seconds) is required with jti",
        ),
        (
            json!({"jti": "x", "sub": "y", "expires_at": 1}),
            "give exactly one of jti or sub",
        ),
        (
            json!({"sub": "y", "before": "yesterday"}),
            "before must be unix seconds",
        ),
    ] {
        let (code, text) = admin_post(&p, body).await;
        assert_eq!(code, 400);
        assert_eq!(text, json!({ "error": why }).to_string());
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_revokes_through_the_admin_listener_of_an_embedded_instance() {
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let p = proxy(&kit, &r, "").await;
    let mut c = p.h2().await;
    let (token, jti, exp) = token_for(&kit, "erin", now());
    assert_eq!(status(&mut c, &token).await, 200);

    let text = p.text.replace(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"{}\"", p.addrs.admin),
    );
    cli_revoke(&text, &jti, exp).await;
    assert_eq!(status(&mut c, &token).await, 401);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_revocations_through_redis() {
    let redis = RedisServer::start();
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let a = proxy(&kit, &r, &store_toml(&redis, "closed")).await;
    let b = proxy(&kit, &r, &store_toml(&redis, "closed")).await;
    let mut ca = a.h1().await;
    let mut cb = b.h2().await;

    // Each way of revoking, three times: through A's admin endpoint, a raw Redis SET, and
    // `doorman revoke` against B's config. B must refuse within 100 ms (median of three).
    let mut waits = Vec::new();
    for how in ["admin", "raw", "cli"] {
        for _ in 0..3 {
            let (token, jti, exp) = token_for(&kit, "frank", now());
            within("both instances in sync", async {
                while status(&mut ca, &token).await != 200 || status(&mut cb, &token).await != 200 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            match how {
                "admin" => assert_eq!(
                    admin_post(&a, json!({"jti": jti, "expires_at": exp}))
                        .await
                        .0,
                    200
                ),
                "raw" => {
                    let key = format!("doorman:revoked:jti:{jti}");
                    redis.cmd(&["SET", &key, "1", "EX", "300"]).await;
                }
                _ => cli_revoke(&b.text, &jti, exp).await,
            }
            waits.push(until_status(&mut cb, &token, 401, "B refuses the revoked token").await);
            // A learns of it the same way, but not necessarily before B: it must refuse too,
            // within the same bound (asserting it at once raced under a loaded machine).
            until_status(&mut ca, &token, 401, &format!("A refuses it too ({how})")).await;
        }
    }
    // The key written by the CLI and the endpoint carries a TTL (remaining life + leeway).
    let (_, jti, _) = token_for(&kit, "gina", now());
    admin_post(&a, json!({"jti": jti, "expires_at": now() + 100})).await;
    let ttl = redis
        .cmd(&["TTL", &format!("doorman:revoked:jti:{jti}")])
        .await;
    assert!(
        matches!(ttl, redis::Value::Int(t) if (125..=130).contains(&t)),
        "{ttl:?}"
    );

    // Subject-wide, through Redis directly.
    let (old, _, _) = token_for(&kit, "hank", now() - 20);
    assert_eq!(status(&mut cb, &old).await, 200);
    redis
        .cmd(&["SET", "doorman:revoked:sub:hank", &(now() - 5).to_string()])
        .await;
    until_status(&mut cb, &old, 401, "subject revocation reaches B").await;

    for chunk in waits.chunks(3) {
        let mut c = chunk.to_vec();
        c.sort();
        assert!(c[1] <= Duration::from_millis(100), "propagation took {c:?}");
    }
    eprintln!("propagation to the other instance: {waits:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_redis_means_503_when_closed_and_recovers_by_itself() {
    let redis = RedisServer::start();
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let p = proxy(&kit, &r, &store_toml(&redis, "closed")).await;
    let mut c = p.h1().await;
    let (token, _, _) = token_for(&kit, "ivan", now());
    until_status(&mut c, &token, 200, "view in sync").await;

    redis.pause();
    // Within the PING deadline the view is distrusted; from then on each check goes to the
    // stopped Redis and gives up after the 50ms store timeout: 503, never a hang.
    until_status(&mut c, &token, 503, "503 while Redis is stopped").await;
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(status(&mut c, &token).await, 503);
        // Generous bound (the budget is 50ms): a hang would be seconds.
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    redis.resume();
    until_status(&mut c, &token, 200, "recovery after SIGCONT").await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_redis_lets_requests_through_when_open() {
    let redis = RedisServer::start();
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let p = proxy(&kit, &r, &store_toml(&redis, "open")).await;
    let mut c = p.h1().await;
    let (token, _, _) = token_for(&kit, "judy", now());
    until_status(&mut c, &token, 200, "view in sync").await;
    redis.pause();
    // Long enough for the view to be distrusted (PING every 100ms, 250ms deadline).
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(status(&mut c, &token).await, 200);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    redis.resume();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_redis_is_resynced_without_restarting_the_proxy() {
    let mut redis = RedisServer::start();
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let p = proxy(&kit, &r, &store_toml(&redis, "closed")).await;
    let mut c = p.h2().await;
    let (token, jti, _) = token_for(&kit, "kate", now());
    until_status(&mut c, &token, 200, "view in sync").await;
    let key = format!("doorman:revoked:jti:{jti}");
    redis.cmd(&["SET", &key, "1", "EX", "300"]).await;
    until_status(&mut c, &token, 401, "revoked").await;

    // A fresh, empty Redis on the same port: the view reloads, so the token passes again...
    tokio::task::block_in_place(|| redis.restart());
    until_status(&mut c, &token, 200, "resynced with the empty Redis").await;
    // ...and tracking is live on the new connection.
    redis.cmd(&["SET", &key, "1", "EX", "300"]).await;
    until_status(&mut c, &token, 401, "revocation seen after restart").await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_endpoint_refuses_mistakes_and_never_weakens_a_revocation() {
    let redis = RedisServer::start();
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let p = proxy(&kit, &r, &store_toml(&redis, "closed")).await;
    let now = now();

    // Not JSON by Content-Type: 415 (a cross-site form post cannot revoke or un-revoke).
    let mut admin = Client::plain(p.addrs.admin).await;
    let req = http::Request::post("/revocations")
        .header("host", "localhost")
        .header("content-type", "text/plain")
        .body(full(json!({"sub": "x"}).to_string()))
        .unwrap();
    assert_eq!(admin.send_collect(req).await.0.status(), 415);

    for (body, why) in [
        (
            json!({"jti": "x", "expires_at": now - 3600}),
            "expires_at is in the past: that token is already refused",
        ),
        (
            json!({"jti": "x", "expires_at": now * 1000}),
            "expires_at is more than a year ahead (unix seconds, not milliseconds?)",
        ),
        (
            json!({"sub": "x", "before": now * 1000}),
            "before is in the future (unix seconds, not milliseconds?)",
        ),
    ] {
        let (code, text) = admin_post(&p, body).await;
        assert_eq!((code, text), (400, json!({ "error": why }).to_string()));
    }

    // A later, weaker write does not shorten a jti revocation...
    admin_post(&p, json!({"jti": "keep", "expires_at": now + 3000})).await;
    admin_post(&p, json!({"jti": "keep", "expires_at": now + 10})).await;
    let ttl = redis.cmd(&["TTL", "doorman:revoked:jti:keep"]).await;
    assert!(matches!(ttl, redis::Value::Int(t) if t > 3000), "{ttl:?}");
    // ...nor lower a subject's cut-off (un-revoking its tokens).
    let (old, _, _) = token_for(&kit, "lena", now - 20);
    let mut c = p.h1().await;
    admin_post(&p, json!({"sub": "lena", "before": now - 5})).await;
    admin_post(&p, json!({"sub": "lena", "before": 0})).await;
    assert_eq!(status(&mut c, &old).await, 401);
    let cutoff = redis.cmd(&["GET", "doorman:revoked:sub:lena"]).await;
    assert_eq!(
        cutoff,
        redis::Value::BulkString((now - 5).to_string().into_bytes())
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_keys_under_the_prefix_fail_closed_without_breaking_the_view() {
    let redis = RedisServer::start();
    // Written before doorman starts: a set where a string belongs, and a junk cut-off.
    redis
        .cmd(&["SADD", "doorman:revoked:jti:odd-type", "1"])
        .await;
    redis
        .cmd(&["SET", "doorman:revoked:sub:mona", "not-a-number"])
        .await;
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let p = proxy(&kit, &r, &store_toml(&redis, "closed")).await;
    let mut c = p.h1().await;
    let now = now();
    let mut claims = good_claims("nina");
    claims["jti"] = json!("odd-type");
    let odd = sign(kit.key("es256"), &claims);
    let (mona, _, _) = token_for(&kit, "mona", now);
    let (fine, jti, _) = token_for(&kit, "olga", now);

    until_status(&mut c, &fine, 200, "the view syncs despite the odd keys").await;
    assert_eq!(
        status(&mut c, &odd).await,
        401,
        "a wrong-type jti key counts as revoked"
    );
    assert_eq!(
        status(&mut c, &mona).await,
        401,
        "a junk cut-off revokes the whole subject"
    );
    // And tracking works: a normal revocation still arrives.
    redis
        .cmd(&[
            "SET",
            &format!("doorman:revoked:jti:{jti}"),
            "1",
            "EX",
            "300",
        ])
        .await;
    until_status(&mut c, &fine, 401, "revocation after odd keys").await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_still_reach_redis_when_tracking_is_not_permitted() {
    let redis = RedisServer::start();
    // A Redis user that may read and write but not run CLIENT: no tracking session can start.
    redis
        .cmd(&[
            "ACL", "SETUSER", "limited", "on", ">pw", "~*", "+@all", "-client",
        ])
        .await;
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let store = format!(
        "[store]\nredis_url = \"redis://limited:pw@127.0.0.1:{}/0\"\ntimeout = \"200ms\"\non_error = \"closed\"\n",
        redis.port
    );
    let p = proxy(&kit, &r, &store).await;
    let mut c = p.h1().await;
    let (token, jti, _) = token_for(&kit, "pia", now());
    // Not 503: the fallback connection answers, and the answer is exact.
    until_status(&mut c, &token, 200, "fallback check passes a live token").await;
    redis
        .cmd(&[
            "SET",
            &format!("doorman:revoked:jti:{jti}"),
            "1",
            "EX",
            "300",
        ])
        .await;
    assert_eq!(status(&mut c, &token).await, 401);
    p.stop().await;
}

//! Idempotency keys end to end, against mock replicas that count calls. Every semantic test
//! runs twice: on the embedded store and on a real redis-server.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::*;

/// The two stores: embedded, and a private redis-server (kept alive by the returned guard).
fn stores() -> Vec<(String, Option<RedisServer>)> {
    let redis = RedisServer::start();
    let url = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"200ms\"\n",
        redis.url()
    );
    vec![(String::new(), None), (url, Some(redis))]
}

async fn proxy(replica: &Replica, store: &str, idem: &str) -> TestProxy {
    let rest = format!(
        "{}{store}\n[idempotency]\nlock_ttl = \"5s\"\n{idem}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n",
        group_toml("api", &[replica.addr], "response_timeout = \"4s\"")
    );
    TestProxy::start("", &rest).await
}

async fn post(
    c: &mut Client,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (http::Response<()>, Bytes) {
    let mut b = c
        .request(Method::POST, path)
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("idempotency-key", k);
    }
    c.send_collect(b.body(full(body.to_string())).unwrap())
        .await
}

fn json_error(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_is_replayed_byte_for_byte_and_the_replica_called_once() {
    for (store, _redis) in stores() {
        let r = Replica::start("r").await;
        let p = proxy(&r, &store, "").await;
        let mut c = p.h1().await;
        let (first, body1) = post(&mut c, "/unique/pay", Some("key-1"), r#"{"amount":10}"#).await;
        assert_eq!(first.status(), 201);
        assert_eq!(&body1[..], br#"{"call":1,"len":13}"#);
        assert!(first.headers().get("idempotent-replayed").is_none());
        assert_eq!(first.headers()["set-cookie"], "session=secret");

        for mut c in [p.h1().await, p.h2().await] {
            let (again, body2) =
                post(&mut c, "/unique/pay", Some("key-1"), r#"{"amount":10}"#).await;
            assert_eq!(again.status(), 201, "store {store:?}");
            assert_eq!(body2, body1, "byte-identical replay");
            assert_eq!(again.headers()["idempotent-replayed"], "true");
            assert_eq!(again.headers()["content-type"], "application/json");
            assert_eq!(again.headers()["x-custom"], "kept");
            assert!(
                again.headers().get("set-cookie").is_none(),
                "Set-Cookie is not stored by default"
            );
            assert_ne!(
                again.headers()["x-request-id"],
                first.headers()["x-request-id"]
            );
        }
        assert_eq!(r.count(), 1, "store {store:?}");
        // Other methods and another key are not affected.
        let (other, _) = post(&mut c, "/unique/pay", Some("key-2"), r#"{"amount":10}"#).await;
        assert_eq!(other.status(), 201);
        let (get, _) = c.get("/unique/pay").await;
        assert_eq!(get.status(), 201);
        assert_eq!(r.count(), 3);
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_duplicates_reach_the_replica_once() {
    for (store, _redis) in stores() {
        let r = Replica::start("r").await;
        let p = proxy(&r, &store, "").await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let mut c = if i % 2 == 0 {
                p.h2().await
            } else {
                p.h1().await
            };
            tasks.push(tokio::spawn(async move {
                let (resp, _) = post(&mut c, "/sleep/300", Some("same"), "pay").await;
                (
                    resp.status().as_u16(),
                    resp.headers().contains_key("idempotent-replayed"),
                )
            }));
        }
        let mut outcomes = std::collections::BTreeMap::new();
        for t in tasks {
            let (status, replayed) = within("duplicate answered", t).await.unwrap();
            *outcomes.entry((status, replayed)).or_insert(0) += 1;
        }
        assert_eq!(r.count(), 1, "store {store:?}: {outcomes:?}");
        let firsts = outcomes.get(&(200, false)).copied().unwrap_or(0);
        assert_eq!(firsts, 1, "{outcomes:?}");
        for (status, replayed) in outcomes.keys() {
            assert!(
                *status == 409 || (*status == 200 && (*replayed || firsts == 1)),
                "unexpected answer {status} (replayed {replayed}): {outcomes:?}"
            );
        }
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_in_flight_duplicate_gets_409_with_retry_after() {
    for (store, _redis) in stores() {
        let r = Replica::start("r").await;
        let p = proxy(&r, &store, "").await;
        let mut c1 = p.h2().await;
        let first = tokio::spawn(async move {
            post(&mut c1, "/sleep/2000", Some("k"), "x")
                .await
                .0
                .status()
        });
        within("first request reaches the replica", async {
            while r.count() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let mut c2 = p.h1().await;
        let (dup, body) = post(&mut c2, "/sleep/2000", Some("k"), "x").await;
        assert_eq!(dup.status(), 409);
        let retry: u64 = dup.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=5).contains(&retry), "{retry}");
        assert_eq!(
            json_error(&body),
            "a request with this idempotency key is in progress"
        );
        assert_eq!(first.await.unwrap(), 200);
        assert_eq!(r.count(), 1);
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_key_on_a_different_request_is_422() {
    for (store, _redis) in stores() {
        let r = Replica::start("r").await;
        let p = proxy(&r, &store, "").await;
        let mut c = p.h1().await;
        assert_eq!(
            post(&mut c, "/unique/a", Some("k"), "body-1")
                .await
                .0
                .status(),
            201
        );
        // Different body, path, query, content-type, method: all 422.
        let cases: Vec<http::Request<TestBody>> = vec![
            c.request(Method::POST, "/unique/a")
                .header("idempotency-key", "k")
                .header("content-type", "application/json")
                .body(full("body-2"))
                .unwrap(),
            c.request(Method::POST, "/unique/b")
                .header("idempotency-key", "k")
                .header("content-type", "application/json")
                .body(full("body-1"))
                .unwrap(),
            c.request(Method::POST, "/unique/a?x=1")
                .header("idempotency-key", "k")
                .header("content-type", "application/json")
                .body(full("body-1"))
                .unwrap(),
            c.request(Method::POST, "/unique/a")
                .header("idempotency-key", "k")
                .header("content-type", "text/plain")
                .body(full("body-1"))
                .unwrap(),
            c.request(Method::PATCH, "/unique/a")
                .header("idempotency-key", "k")
                .header("content-type", "application/json")
                .body(full("body-1"))
                .unwrap(),
        ];
        for req in cases {
            let (resp, body) = c.send_collect(req).await;
            assert_eq!(resp.status(), 422, "store {store:?}");
            assert_eq!(
                json_error(&body),
                "idempotency key reused with a different request"
            );
        }
        assert_eq!(r.count(), 1);
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_or_missing_keys_are_400_and_never_forwarded() {
    let r = Replica::start("r").await;
    let p = proxy(&r, "", "").await;
    let mut c = p.h1().await;
    let long = "k".repeat(256);
    for (headers, why) in [
        (vec![], "Idempotency-Key header required"),
        (
            vec![("idempotency-key", "a"), ("idempotency-key", "b")],
            "repeated Idempotency-Key header",
        ),
        (
            vec![("idempotency-key", "a"), ("x-idempotency-key", "b")],
            "repeated Idempotency-Key header",
        ),
        (
            vec![("idempotency-key", "")],
            "invalid Idempotency-Key: 1 to 255 visible ASCII characters",
        ),
        (
            vec![("idempotency-key", "has space")],
            "invalid Idempotency-Key: 1 to 255 visible ASCII characters",
        ),
        (
            vec![("idempotency-key", long.as_str())],
            "invalid Idempotency-Key: 1 to 255 visible ASCII characters",
        ),
    ] {
        let mut b = c.request(Method::POST, "/unique");
        for (n, v) in &headers {
            b = b.header(*n, *v);
        }
        let (resp, body) = c.send_collect(b.body(full("x")).unwrap()).await;
        assert_eq!(
            (resp.status().as_u16(), json_error(&body)),
            (400, why.to_string()),
            "{headers:?}"
        );
    }
    // A request body over max_request_body_bytes is 413 before anything is stored. (Over
    // HTTP/2: the early answer resets the upload stream cleanly, where HTTP/1.1 would leave
    // the client writing into a closed socket.)
    let mut c = p.h2().await;
    let (resp, _) = post(&mut c, "/unique", Some("big"), &"x".repeat(2 << 20)).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_are_scoped_to_the_authenticated_subject() {
    use support::jwt::*;
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let rest = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n",
        group_toml("api", &[r.addr], ""),
        kit.auth_toml("")
    );
    let p = TestProxy::start("", &rest).await;
    let mut c = p.h1().await;
    let send = |c: &mut Client, who: &str| {
        let token = sign(kit.key("hs256"), &good_claims(who));
        c.request(Method::POST, "/unique")
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", "shared-key")
            .body(full("same body"))
            .unwrap()
    };
    let req = send(&mut c, "alice");
    let (a1, body_a) = c.send_collect(req).await;
    let req = send(&mut c, "bob");
    let (b1, body_b) = c.send_collect(req).await;
    assert_eq!((a1.status().as_u16(), b1.status().as_u16()), (201, 201));
    assert_ne!(body_a, body_b, "bob must not get alice's stored response");
    assert!(b1.headers().get("idempotent-replayed").is_none());
    let req = send(&mut c, "alice");
    let (a2, body_a2) = c.send_collect(req).await;
    assert_eq!(a2.headers()["idempotent-replayed"], "true");
    assert_eq!(body_a2, body_a);
    assert_eq!(r.count(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_share_keys_through_redis() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"200ms\"\n",
        redis.url()
    );
    let r = Replica::start("r").await;
    let a = proxy(&r, &store, "").await;
    let b = proxy(&r, &store, "").await;
    let (first, body) = post(&mut a.h1().await, "/unique", Some("shared"), "pay").await;
    assert_eq!(first.status(), 201);
    let (replay, body2) = post(&mut b.h2().await, "/unique", Some("shared"), "pay").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(body2, body);
    assert_eq!(r.count(), 1);

    // Concurrent duplicates split across A and B still reach the replica once.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = if i % 2 == 0 {
            a.h1().await
        } else {
            b.h1().await
        };
        tasks.push(tokio::spawn(async move {
            post(&mut c, "/sleep/300", Some("ab"), "x")
                .await
                .0
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(within("duplicate", t).await.unwrap());
    }
    assert_eq!(r.count(), 2, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&200),
        "the one forwarded request answers 200: {statuses:?}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_release_the_key_or_are_stored_by_policy() {
    for (store, _redis) in stores() {
        for (policy, want_calls) in [
            ("store_server_errors = false", 2),
            ("store_server_errors = true", 1),
        ] {
            let r = Replica::start("r").await;
            let p = proxy(&r, &store, policy).await;
            let mut c = p.h1().await;
            assert_eq!(
                post(&mut c, "/status/503", Some("k"), "x").await.0.status(),
                503
            );
            let (again, _) = post(&mut c, "/status/503", Some("k"), "x").await;
            assert_eq!(again.status(), 503);
            assert_eq!(r.count(), want_calls, "{store:?} {policy}");
            assert_eq!(
                again.headers().contains_key("idempotent-replayed"),
                want_calls == 1
            );
            p.stop().await;
        }
        // A refused connection never ran anything: always released.
        let dead = closed_port().await;
        let rest = format!(
            "{store}\n[idempotency]\nstore_server_errors = true\n[upstreams.api]\nservers = [{{ address = \"{dead}\" }}]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n"
        );
        let p = TestProxy::start("", &rest).await;
        let mut c = p.h1().await;
        for _ in 0..2 {
            // Its own key: the Redis store still holds the cases above.
            let (resp, body) = post(&mut c, "/", Some("refused"), "x").await;
            assert_eq!(resp.status(), 502);
            assert_eq!(json_error(&body), "upstream connection failed");
            assert!(!resp.headers().contains_key("idempotent-replayed"));
        }
        p.stop().await;
        // No replica may take traffic (weight 0): nothing was sent, so nothing is stored.
        let r = Replica::start("r").await;
        let rest = format!(
            "{store}\n[idempotency]\nstore_server_errors = true\n[upstreams.api]\nservers = [{{ address = \"{}\", weight = 0 }}]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n",
            r.addr
        );
        let p = TestProxy::start("", &rest).await;
        let mut c = p.h1().await;
        for _ in 0..2 {
            let (resp, _) = post(&mut c, "/", Some("no-replica"), "x").await;
            assert_eq!(resp.status(), 503);
            assert!(!resp.headers().contains_key("idempotent-replayed"));
        }
        assert_eq!(r.count(), 0);
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_response_is_delivered_once_and_then_refused_clearly() {
    for (store, _redis) in stores() {
        let r = Replica::start("r").await;
        let p = proxy(&r, &store, "max_stored_body_bytes = 1000").await;
        let mut c = p.h2().await;
        let (first, body) = post(&mut c, "/bytes/5000", Some("big"), "x").await;
        assert_eq!(first.status(), 200);
        assert_eq!(body.len(), 5000, "the first client gets the whole body");
        let (again, body) = post(&mut c, "/bytes/5000", Some("big"), "x").await;
        assert_eq!(again.status(), 409);
        assert_eq!(
            json_error(&body),
            "the original response to this idempotency key was too large to store and cannot be replayed"
        );
        assert_eq!(r.count(), 1);
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_key_expires_after_its_ttl() {
    for (store, _redis) in stores() {
        let r = Replica::start("r").await;
        let p = proxy(&r, &store, "ttl = \"2s\"").await;
        let mut c = p.h1().await;
        assert_eq!(
            post(&mut c, "/unique", Some("k"), "x").await.0.status(),
            201
        );
        let (replay, _) = post(&mut c, "/unique", Some("k"), "x").await;
        assert!(replay.headers().contains_key("idempotent-replayed"));
        tokio::time::sleep(Duration::from_millis(2300)).await;
        let (fresh, _) = post(&mut c, "/unique", Some("k"), "x").await;
        assert!(!fresh.headers().contains_key("idempotent-replayed"));
        assert_eq!(r.count(), 2);
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_redis_is_503_and_the_replica_is_not_called() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"100ms\"\n",
        redis.url()
    );
    let r = Replica::start("r").await;
    let p = proxy(&r, &store, "").await;
    let mut c = p.h1().await;
    assert_eq!(
        post(&mut c, "/unique", Some("before"), "x")
            .await
            .0
            .status(),
        201
    );
    redis.pause();
    for i in 0..3 {
        let (resp, body) = post(&mut c, "/unique", Some(&format!("during-{i}")), "x").await;
        assert_eq!(resp.status(), 503);
        assert_eq!(json_error(&body), "state store unavailable");
    }
    assert_eq!(r.count(), 1);
    redis.resume();
    p.stop().await;
}

/// A real doorman process holds the lease when it is killed; after lock_ttl another instance
/// may process the key again (at-least-once across a crash).
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_left_by_a_killed_instance_expires() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"200ms\"\n",
        redis.url()
    );
    let r = Replica::start("r").await;
    let rest = format!(
        "{}{store}\n[idempotency]\nlock_ttl = \"5s\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n",
        group_toml("api", &[r.addr], "response_timeout = \"4s\"")
    );
    let b = TestProxy::start("", &rest).await;

    // Instance A: the binary, on fixed free ports, with the same config.
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (tls, plain, admin) = (port(()), port(()), port(()));
    let text = b
        .text
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{tls}\""),
            1,
        )
        .replace(
            "plain_listen = \"127.0.0.1:0\"",
            &format!("plain_listen = \"127.0.0.1:{plain}\""),
        )
        .replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:{admin}\""),
        );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    std::fs::write(&path, text).unwrap();
    let mut a = Command::new(env!("CARGO_BIN_EXE_doorman"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let a_addr: std::net::SocketAddr = format!("127.0.0.1:{plain}").parse().unwrap();
    within("instance A listening", async {
        while tokio::net::TcpStream::connect(a_addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // A takes the lease and forwards to a replica that sleeps; A is killed meanwhile.
    let mut ca = Client::plain(a_addr).await;
    let req = ca
        .request(Method::POST, "/sleep-once/20000")
        .header("idempotency-key", "crash")
        .header("content-type", "application/json")
        .body(full("x"))
        .unwrap();
    let pending = tokio::spawn(async move { ca.send(req).await.map(|r| r.status()) });
    within("A forwarded", async {
        while r.count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    a.kill().unwrap();
    a.wait().unwrap();
    assert!(
        within("A's client sees the crash", pending)
            .await
            .unwrap()
            .is_err()
    );

    // B: the lease is still held (409), then expires and B processes the key itself.
    let mut cb = b.h1().await;
    let (busy, _) = post(&mut cb, "/sleep-once/20000", Some("crash"), "x").await;
    assert_eq!(busy.status(), 409);
    let done = within("lease expiry", async {
        loop {
            let (resp, _) = post(&mut cb, "/sleep-once/20000", Some("crash"), "x").await;
            if resp.status() != 409 {
                return resp.status();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(done, 200);
    assert_eq!(
        r.count(),
        2,
        "at-least-once: the killed attempt and the retry"
    );
    b.stop().await;
}

/// The round-trip budget: a first keyed request costs two store operations (begin, finish),
/// a replay one — counted by Redis itself, not timed.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_request_costs_two_redis_round_trips_and_a_replay_one() {
    let redis = RedisServer::start();
    let store = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"200ms\"\n",
        redis.url()
    );
    let r = Replica::start("r").await;
    let p = proxy(&r, &store, "").await;
    let mut c = p.h1().await;
    let evals = || async {
        let info = redis.cmd(&["INFO", "commandstats"]).await;
        let text = match info {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("{other:?}"),
        };
        text.lines()
            .find_map(|l| l.strip_prefix("cmdstat_eval:calls="))
            .map_or(0, |rest| {
                rest.split(',').next().unwrap().parse::<u64>().unwrap()
            })
    };
    let before = evals().await;
    assert_eq!(
        post(&mut c, "/unique", Some("rt"), "x").await.0.status(),
        201
    );
    let after_first = evals().await;
    assert_eq!(
        post(&mut c, "/unique", Some("rt"), "x").await.0.status(),
        201
    );
    let after_replay = evals().await;
    assert_eq!(after_first - before, 2, "first request: begin + finish");
    assert_eq!(after_replay - after_first, 1, "replay: begin only");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limited_answers_release_the_key_and_hosts_are_separate_scopes() {
    for (store, _redis) in stores() {
        let r = Replica::start("r").await;
        let p = proxy(&r, &store, "store_server_errors = true").await;
        let mut c = p.h1().await;
        // 429 means "not processed": never stored, even Stripe-style.
        for _ in 0..2 {
            let (resp, _) = post(&mut c, "/status/429", Some("busy"), "x").await;
            assert_eq!(resp.status(), 429);
            assert!(!resp.headers().contains_key("idempotent-replayed"));
        }
        assert_eq!(r.count(), 2, "{store:?}");

        // The same key, path and body on two hosts served by one route: two scopes.
        for host in ["a.test", "b.test"] {
            let req = http::Request::post("/unique")
                .header("host", host)
                .header("idempotency-key", "per-host")
                .body(full("x"))
                .unwrap();
            let (resp, _) = c.send_collect(req).await;
            assert_eq!(resp.status(), 201);
            assert!(
                !resp.headers().contains_key("idempotent-replayed"),
                "{host}"
            );
        }
        assert_eq!(r.count(), 4, "{store:?}");
        p.stop().await;
    }
}

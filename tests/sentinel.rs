//! Sentinel: doorman follows the master that the sentinels name. One master, one replica and
//! three sentinels (real redis-server processes on free ports) and two doorman instances.
//! The master is SIGKILLed: the sentinels promote the replica, both instances resolve the
//! new master, resync their revocation views from it, and a revocation acknowledged before
//! the failover is never answered "not revoked" on the way.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use support::jwt::*;
use support::sentinel::*;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_doorman");

async fn proxy(kit: &JwtKit, replica: &Replica, set: &SentinelSet) -> TestProxy {
    let rest = group_toml("api", &[replica.addr], "")
        + &format!(
            "[store]\n{}\ntimeout = \"200ms\"\non_error = \"closed\"\ndurable_revocations = true\n",
            set.store_line()
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

async fn until_status(c: &mut Client, token: &str, want: u16, what: &str) {
    within(what, async {
        while status(c, token).await != want {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
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

/// Wait until `p`'s view is synced with the master on `port`.
async fn until_synced_on(p: &TestProxy, port: u16, what: &str) -> serde_json::Value {
    let want = format!("127.0.0.1:{port}");
    within(what, async {
        loop {
            let s = store_status(p).await;
            if s["master"] == want.as_str() && s["revocation_view"] == "synced" {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn token_for(kit: &JwtKit, sub: &str) -> (String, String, u64) {
    let claims = good_claims(sub);
    let jti = claims["jti"].as_str().unwrap().to_string();
    let exp = claims["exp"].as_u64().unwrap();
    (sign(kit.key("es256"), &claims), jti, exp)
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

#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_is_followed_without_a_stale_answer() {
    let mut set = SentinelSet::start().await;
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let a = proxy(&kit, &r, &set).await;
    let b = proxy(&kit, &r, &set).await;
    let (mut ca, mut cb) = (a.h1().await, b.h2().await);

    // Both resolve the master through the sentinels and sync their views from it.
    for p in [&a, &b] {
        let s = until_synced_on(p, set.master.port, "view synced on the first master").await;
        assert_eq!(s["kind"], "redis");
        assert_eq!(s["mode"], "sentinel");
        assert_eq!(s["session_connected"], true);
        assert_eq!(s["failovers"], 0);
        assert_eq!(s["untrusted_reason"], serde_json::Value::Null);
    }
    assert_eq!(metric(&a, "doorman_revocation_view_trusted").await, 1.0);
    assert_eq!(metric(&a, "doorman_store_connected").await, 1.0);

    // Revoked through A before the failover: durable, so the replica has it when A answers.
    let (early, early_jti, early_exp) = token_for(&kit, "ada");
    let (live, _, _) = token_for(&kit, "bea");
    assert_eq!(status(&mut cb, &early).await, 200);
    let (code, body) = revoke(&a, &early_jti, early_exp).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["replicated"], true);
    until_status(&mut cb, &early, 401, "B refuses the token A revoked").await;
    assert_eq!(status(&mut ca, &early).await, 401);
    // An idempotency key taken before the failover.
    let (code, replayed, first) = keyed_post(&mut ca, "before").await;
    assert_eq!((code, replayed), (201, false), "{first}");
    // Its record was not written durably (only revocations are): let replication catch up
    // so that what follows tests doorman, not the race of asynchronous replication.
    set.wait_replicated().await;

    // SIGKILL the master. Until the sentinels promote the replica and the views resync,
    // the revoked token must never pass (on_error = closed: 503 while Redis cannot answer,
    // 401 when it can); a live token gets 200 or 503, nothing else.
    set.master.kill();
    // The watch stops between two requests once both views resynced (not cancelled in the
    // middle of one: the client connection would not survive that).
    let done = AtomicBool::new(false);
    let promoted = async {
        set.wait_for_promotion().await;
        for p in [&a, &b] {
            until_synced_on(p, set.replica.port, "view resynced on the promoted replica").await;
        }
        done.store(true, Ordering::Release);
    };
    let watch = async {
        let mut seen = Vec::new();
        while !done.load(Ordering::Acquire) {
            let (ea, eb, l) = (
                status(&mut ca, &early).await,
                status(&mut cb, &early).await,
                status(&mut ca, &live).await,
            );
            assert!(
                matches!(ea, 401 | 503),
                "A answered {ea} for a revoked token"
            );
            assert!(
                matches!(eb, 401 | 503),
                "B answered {eb} for a revoked token"
            );
            assert!(matches!(l, 200 | 503), "A answered {l} for a live token");
            seen.push(l);
            tokio::time::sleep(Duration::from_millis(5)).await;
            // Bounded: `promoted` gives up (and fails the test) long before this.
            assert!(
                seen.len() < 20_000,
                "no failover after {} checks",
                seen.len()
            );
        }
        seen
    };
    let ((), seen) = tokio::join!(promoted, watch);
    // The failover was watched: the live token was refused with 503 at least once while
    // no master could answer.
    assert!(seen.contains(&503), "{seen:?}");

    // After the failover: both name the new master, counted once, view trusted again.
    for p in [&a, &b] {
        let s = store_status(p).await;
        assert_eq!(s["master"], format!("127.0.0.1:{}", set.replica.port));
        assert_eq!(s["failovers"], 1);
        assert_eq!(s["session_connected"], true);
        assert_eq!(s["untrusted_reason"], serde_json::Value::Null);
        assert_eq!(metric(p, "doorman_store_failovers_total").await, 1.0);
        assert_eq!(metric(p, "doorman_revocation_view_trusted").await, 1.0);
    }
    // The revocation acknowledged before is held by the resynced views.
    assert_eq!(status(&mut ca, &early).await, 401);
    assert_eq!(status(&mut cb, &early).await, 401);
    until_status(&mut ca, &live, 200, "a live token passes on the new master").await;

    // A revocation after the failover, through B: the new master has no replica left, so
    // it is written but reported not replicated; A's tracking on the new master sees it.
    let (after, after_jti, after_exp) = token_for(&kit, "cy");
    assert_eq!(status(&mut ca, &after).await, 200);
    let (code, body) = revoke(&b, &after_jti, after_exp).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["replicated"], false);
    until_status(
        &mut ca,
        &after,
        401,
        "A refuses the token B revoked after the failover",
    )
    .await;

    // A raw write on the new master reaches both views.
    let (raw, raw_jti, _) = token_for(&kit, "dee");
    assert_eq!(status(&mut cb, &raw).await, 200);
    let key = format!("doorman:revoked:jti:{raw_jti}");
    let _: () = query(set.replica.port, &["SET", &key, "1", "EX", "300"]).await;
    until_status(&mut ca, &raw, 401, "A sees a raw SET on the new master").await;
    until_status(&mut cb, &raw, 401, "B sees a raw SET on the new master").await;

    // Idempotency follows the master too: the key taken before the failover replays
    // (its record was replicated), a new one runs once and replays through the other.
    let (code, replayed, body) = keyed_post(&mut cb, "before").await;
    assert_eq!((code, replayed, body), (201, true, first));
    let (code, replayed, body) = keyed_post(&mut ca, "after").await;
    assert_eq!((code, replayed), (201, false));
    let calls = r.count();
    assert_eq!(keyed_post(&mut cb, "after").await, (201, true, body));
    assert_eq!(r.count(), calls, "a replay does not call the replica");

    // A graceful failover back: the killed node rejoins as a replica (and copies every
    // revocation), then SENTINEL FAILOVER promotes it while the current master stays up,
    // demoted to replica. Both instances leave the demoted node (ROLE, READONLY or its
    // disconnect) for the one the sentinels name, and no revoked token passes meanwhile.
    set.rejoin_old_master().await;
    let back = set.master.port;
    let done = AtomicBool::new(false);
    let switched = async {
        set.failover_to(back).await;
        for p in [&a, &b] {
            until_synced_on(p, back, "view resynced after the graceful failover").await;
        }
        done.store(true, Ordering::Release);
    };
    let watch = async {
        let mut n = 0;
        while !done.load(Ordering::Acquire) {
            for (c, t) in [(&mut ca, &early), (&mut cb, &after)] {
                let code = status(c, t).await;
                assert!(matches!(code, 401 | 503), "{code} for a revoked token");
            }
            n += 1;
            assert!(n < 20_000, "no switch after {n} checks");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::join!(switched, watch);
    for p in [&a, &b] {
        let s = store_status(p).await;
        assert_eq!(s["failovers"], 2);
        assert_eq!(metric(p, "doorman_store_failovers_total").await, 2.0);
    }
    for t in [&early, &after, &raw] {
        assert_eq!(status(&mut ca, t).await, 401);
        assert_eq!(status(&mut cb, t).await, 401);
    }

    // `doorman revoke` resolves the master through the sentinels too.
    let (cli, cli_jti, cli_exp) = token_for(&kit, "eve");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &a.text).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["revoke", "--config"])
            .arg(&path)
            .args(["--jti", &cli_jti, "--expires-at", &cli_exp.to_string()])
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Durable: the CLI says whether the replica acknowledged it. Not asserted either way:
    // right after a graceful switch the demoted node's acknowledgement within 200 ms was
    // seen to miss now and then (1 run in 3) even with its link up and offsets equal.
    assert!(
        stdout.ends_with(" (replicated)\n")
            || stdout.ends_with(
                " (NOT replicated: no replica acknowledged it within [store] timeout)\n"
            ),
        "{stdout}"
    );
    until_status(&mut cb, &cli, 401, "B refuses the token revoked by the CLI").await;

    a.stop().await;
    b.stop().await;
}

/// `password_env` end to end, through `doorman revoke` (a process of its own, so the
/// variable is set for it alone): the configured node requires a password, the config names
/// only the variable, and the revocation lands. Without the variable, `doorman check`
/// reports it at its line.
#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_comes_from_password_env() {
    let redis = RedisServer::start();
    let _: () = query(redis.port, &["CONFIG", "SET", "requirepass", "s3cret-pw"]).await;
    let pki = TestPki::new();
    let leaf = pki.leaf("localhost", &["localhost"]);
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\
         [store]\nredis_url = \"redis://127.0.0.1:{}/0\"\npassword_env = \"DOORMAN_TEST_REDIS_PASSWORD\"\n\
         [upstreams.api]\nservers = [{{ address = \"127.0.0.1:9\" }}]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
        cert_toml(&leaf, &["localhost"]),
        redis.port
    );
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("password_env"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    let run = |args: &[&str], password: Option<&str>| {
        let mut c = Command::new(BIN);
        c.args(args).arg("--config").arg(&path);
        c.env_remove("DOORMAN_TEST_REDIS_PASSWORD");
        if let Some(p) = password {
            c.env("DOORMAN_TEST_REDIS_PASSWORD", p);
        }
        c.output().unwrap()
    };
    let out = tokio::task::block_in_place(|| {
        run(
            &["revoke", "--sub", "zed", "--before", "1"],
            Some("s3cret-pw"),
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // AUTH as a plain client: the record is there.
    let client =
        redis::Client::open(format!("redis://:s3cret-pw@127.0.0.1:{}/0", redis.port)).unwrap();
    let mut conn = within(
        "connect with the password",
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap();
    let cutoff: String = redis::cmd("GET")
        .arg("doorman:revoked:sub:zed")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(cutoff, "1");

    // A wrong password fails loudly; no variable at all is a config error at its line.
    let out = tokio::task::block_in_place(|| {
        run(&["revoke", "--sub", "zed", "--before", "1"], Some("wrong"))
    });
    assert!(!out.status.success());
    let out = tokio::task::block_in_place(|| run(&["check"], None));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:{line}: store.password_env: environment variable DOORMAN_TEST_REDIS_PASSWORD is not set",
            path.display()
        )),
        "{stderr}"
    );
}

//! Hot reload through the same path as SIGHUP and `POST /reload`: nothing in flight notices,
//! new requests see the new configuration at once, invalid files change nothing, and what
//! must survive a reload (health, rings, the store) does.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use support::jwt::{JwtKit, good_claims, sign};
use support::*;

fn routes(group: &str) -> String {
    format!(
        "[[routes]]\npath_prefix = \"/pay\"\nupstream = \"{group}\"\nidempotency = \"required\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"{group}\"\n"
    )
}

fn set_toml(rs: &[&Replica]) -> String {
    let addrs: Vec<_> = rs.iter().map(|r| r.addr).collect();
    group_toml("api", &addrs, "") + &routes("api")
}

#[derive(Debug)]
struct Done {
    start: Instant,
    end: Instant,
    replica: String,
}

fn quantile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_storm_under_load_drops_nothing_and_moves_traffic_at_once() {
    let mut r = Vec::new();
    for id in ["a1", "a2", "b1", "b2"] {
        r.push(Replica::start(id).await);
    }
    let set_a = set_toml(&[&r[0], &r[1]]);
    let set_b = set_toml(&[&r[2], &r[3]]);
    let p = TestProxy::start_reloadable("", &set_a).await;

    // One long streaming response that must live through every reload.
    let mut long = p.h1().await;
    let long_req = long
        .request(Method::GET, "/drip/0/130")
        .body(empty())
        .unwrap();
    let long_resp = long.send(long_req).await.unwrap();
    assert_eq!(long_resp.status(), 200);
    let long_body = tokio::spawn(body_bytes(long_resp.into_body()));

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..8 {
        let mut c = if n % 2 == 0 {
            p.h1().await
        } else {
            p.h2().await
        };
        let stop = stop.clone();
        clients.push(tokio::spawn(async move {
            let mut done = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let req = if i.is_multiple_of(2) {
                    c.request(Method::GET, &format!("/item/{n}/{i}"))
                        .body(empty())
                        .unwrap()
                } else {
                    c.request(Method::POST, &format!("/pay/{n}/{i}"))
                        .header("idempotency-key", format!("k-{n}-{i}"))
                        .header("content-length", "8")
                        .body(full("amount=1"))
                        .unwrap()
                };
                let start = Instant::now();
                let resp = c
                    .send(req)
                    .await
                    .unwrap_or_else(|e| panic!("client {n} request {i}: {e}"));
                let status = resp.status();
                let replica = resp.headers()["x-upstream-id"]
                    .to_str()
                    .unwrap()
                    .to_string();
                body_bytes(resp.into_body()).await;
                assert_eq!(status, 200, "client {n} request {i}");
                done.push(Done {
                    start,
                    end: Instant::now(),
                    replica,
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            done
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    // (start, end, the set now serving) for each valid reload; invalid ones in between.
    let mut valid: Vec<(Instant, Instant, [&str; 2])> = Vec::new();
    let mut windows: Vec<(Instant, Instant)> = Vec::new();
    let invalid = [
        "[upstreams.api\nservers = [".to_string(),
        "[upstreams.api]\nservers = [{ address = \"not-an-address\" }]\n".to_string()
            + &routes("api"),
        set_toml(&[&r[0]]) + "[[routes]]\npath_prefix = \"/x\"\nupstream = \"missing\"\n",
    ];
    for k in 0..20 {
        let (text, set) = if k % 2 == 0 {
            (&set_b, ["b1", "b2"])
        } else {
            (&set_a, ["a1", "a2"])
        };
        let start = Instant::now();
        let status = p.reload_rest(text).await;
        let end = Instant::now();
        assert_eq!(status.result, "ok", "{status:?}");
        valid.push((start, end, set));
        windows.push((start, end));
        tokio::time::sleep(Duration::from_millis(200)).await;
        if k % 4 == 3 {
            let start = Instant::now();
            let status = p.reload_text(&invalid[k % 3]).await;
            assert_eq!(status.result, "failure");
            assert!(!status.errors.is_empty());
            windows.push((start, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(within("clients", c).await.unwrap());
    }
    let drip = within("long response", long_body).await.unwrap();
    assert_eq!(
        drip.len(),
        5 + 130 * 4,
        "the streaming response arrived whole"
    );

    // Every request that started after a reload returned and ended before the next valid
    // one began went to that reload's replica set; before the first, to set A.
    let mut checked = 0;
    for d in &all {
        let serving = valid
            .iter()
            .rev()
            .find(|(_, end, _)| d.start > *end)
            .map_or(["a1", "a2"], |v| v.2);
        // A request in flight while a reload ran may meet either set.
        let between = valid.iter().all(|(s, e, _)| d.start > *e || d.end < *s);
        if between {
            assert!(
                serving.contains(&d.replica.as_str()),
                "a request started after the reload to {serving:?} went to {}",
                d.replica
            );
            checked += 1;
        }
    }
    assert!(checked > 1000, "only {checked} requests checked");

    // Pauses seen by clients: requests overlapping a reload vs the others.
    let overlaps = |d: &Done| windows.iter().any(|(s, e)| d.start <= *e && d.end >= *s);
    let (mut during, mut outside): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for d in &all {
        let lat = d.end - d.start;
        if overlaps(d) {
            during.push(lat)
        } else {
            outside.push(lat)
        }
    }
    println!(
        "reload storm: {} requests, 0 failed; during reloads n={} p99={:?} max={:?}; outside n={} p99={:?} max={:?}",
        all.len(),
        during.len(),
        quantile(&mut during, 0.99),
        during.last().copied().unwrap_or_default(),
        outside.len(),
        quantile(&mut outside, 0.99),
        outside.last().copied().unwrap_or_default(),
    );
    let status = p.reloader.as_ref().unwrap().status();
    assert_eq!((status.succeeded, status.failed), (20, 5));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_file_changes_nothing_and_admin_reports_its_errors() {
    let a = Replica::start("a").await;
    let p = TestProxy::start_reloadable("", &set_toml(&[&a])).await;
    let mut admin = Client::plain(p.addrs.admin).await;
    let (resp, body) = admin.get("/reload").await;
    assert_eq!(resp.status(), 200);
    let before: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(before["generation"], 0);
    assert_eq!(before["result"], "ok");

    std::fs::write(
        p.config_path.as_ref().unwrap(),
        format!(
            "{}[upstreams.api]\nservers = [{{ address = \"nowhere\" }}]\nretries = -1\n{}",
            p.text.split("[upstreams").next().unwrap(),
            routes("api")
        ),
    )
    .unwrap();
    let req = admin
        .request(Method::POST, "/reload")
        .header("content-type", "application/json")
        .body(empty())
        .unwrap();
    let (resp, body) = admin.send_collect(req).await;
    assert_eq!(resp.status(), 422);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"], "failure");
    assert_eq!(v["generation"], 1);
    assert_eq!(v["failed"], 1);
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("upstreams.api.servers[0].address")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("upstreams.api.retries")),
        "{errors:?}"
    );
    assert_eq!(
        v["config_hash"], before["config_hash"],
        "the running config is unchanged"
    );
    // Still served as before.
    assert_eq!(p.get("/x").await.0.headers()["x-upstream-id"], "a");
    let (_, body) = admin.get("/reload").await;
    let after: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(after["result"], "failure");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn new_handshakes_get_a_rotated_certificate_established_connections_keep_theirs() {
    let pki = Arc::new(TestPki::new());
    let old = pki.leaf("old", &["localhost"]);
    let new = pki.leaf("new", &["localhost"]);
    let r = Replica::start("r").await;
    let rest = set_toml(&[&r]);
    let p =
        TestProxy::start_reloadable_with(pki.clone(), "", &cert_toml(&old, &["localhost"]), &rest)
            .await;
    let peer_cert = |c: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        c.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    let cfg = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let before = tls_connect(p.addrs.tls, cfg.clone(), "localhost")
        .await
        .unwrap();
    assert_eq!(peer_cert(&before), old.der);
    let mut kept = p.h1().await;
    assert_eq!(kept.get("/").await.0.status(), 200);

    let text = p
        .text
        .replace(
            &old.cert_path.display().to_string(),
            &new.cert_path.display().to_string(),
        )
        .replace(
            &old.key_path.display().to_string(),
            &new.key_path.display().to_string(),
        );
    assert_eq!(p.reload_text(&text).await.result, "ok");
    let after = tls_connect(p.addrs.tls, cfg, "localhost").await.unwrap();
    assert_eq!(
        peer_cert(&after),
        new.der,
        "new handshakes get the new certificate"
    );
    assert_eq!(
        kept.get("/").await.0.status(),
        200,
        "an established connection keeps working"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_jwt_key_is_accepted_and_a_removed_one_refused() {
    let kit = JwtKit::new();
    let r = Replica::start("r").await;
    let rest = |kids: &[&str]| kit.auth_toml_for(kids, "") + &set_toml(&[&r]);
    let p = TestProxy::start_reloadable("", &rest(&["es256"])).await;
    let old_token = sign(kit.key("es256"), &good_claims("alice"));
    let new_token = sign(kit.key("eddsa"), &good_claims("alice"));
    let status_with = |token: String| {
        let p = &p;
        async move {
            let mut c = p.h1().await;
            let req = c
                .request(Method::GET, "/me")
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap();
            c.send_collect(req).await.0.status().as_u16()
        }
    };
    assert_eq!(status_with(old_token.clone()).await, 200);
    assert_eq!(status_with(new_token.clone()).await, 401);
    // Rotation: the new key joins...
    assert_eq!(p.reload_rest(&rest(&["es256", "eddsa"])).await.result, "ok");
    assert_eq!(status_with(new_token.clone()).await, 200);
    assert_eq!(status_with(old_token.clone()).await, 200);
    // ...then the old one leaves (its cached verification goes with it).
    assert_eq!(p.reload_rest(&rest(&["eddsa"])).await.result, "ok");
    assert_eq!(status_with(new_token).await, 200);
    assert_eq!(status_with(old_token).await, 401);
    p.stop().await;
}

async fn sticky_map(p: &TestProxy, keys: usize) -> Vec<String> {
    let mut c = p.h1().await;
    let mut out = Vec::new();
    for k in 0..keys {
        let req = c
            .request(Method::GET, "/s/x")
            .header("x-session-id", format!("user-{k}"))
            .body(empty())
            .unwrap();
        let (resp, _) = c.send_collect(req).await;
        assert_eq!(resp.status(), 200);
        out.push(
            resp.headers()["x-upstream-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn what_did_not_change_survives_a_reload_rings_health_and_state() {
    let mut rs = Vec::new();
    for id in ["s1", "s2", "s3", "s4", "p1", "p2", "p3"] {
        rs.push(Replica::start(id).await);
    }
    let dead = closed_port().await;
    let sticky_of = |members: &[Replica]| {
        format!(
            "[upstreams.sticky]\nservers = [{}]\nbalance = \"consistent_hash\"\nhash_key = \"header:x-session-id\"\n",
            members
                .iter()
                .map(|r| format!("{{ address = \"{}\" }}", r.addr))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let sticky = sticky_of(&rs[..4]);
    // The plain group has a dead replica that gets ejected after 2 failures, for long.
    let plain = |extra: &[&Replica]| {
        let mut servers = vec![format!("{{ address = \"{dead}\" }}")];
        servers.extend(
            [&rs[4]]
                .into_iter()
                .chain(extra.iter().copied())
                .map(|r| format!("{{ address = \"{}\" }}", r.addr)),
        );
        format!(
            "[upstreams.plain]\nretries = 0\nservers = [{}]\n[upstreams.plain.health]\neject_after_failures = 2\neject_for = \"60s\"\n",
            servers.join(", ")
        )
    };
    let routes = "[[routes]]\npath_prefix = \"/s/\"\nupstream = \"sticky\"\n\
                  [[routes]]\npath_prefix = \"/\"\nupstream = \"plain\"\n";
    let p = TestProxy::start_reloadable("", &(sticky.clone() + &plain(&[]) + routes)).await;

    let before = sticky_map(&p, 200).await;
    // Eject the dead replica: round robin alternates, so 4 requests meet it twice.
    let mut c = p.h1().await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(c.get("/p").await.0.status().as_u16());
    }
    assert_eq!(statuses, [502, 200, 502, 200]);

    // Reload a config where only the plain group changed (a replica added).
    let status = p
        .reload_rest(&(sticky.clone() + &plain(&[&rs[5]]) + routes))
        .await;
    assert_eq!(status.result, "ok", "{status:?}");
    assert_eq!(
        sticky_map(&p, 200).await,
        before,
        "the unchanged ring maps every key alike"
    );
    // The dead replica stayed in the changed group, and so did its ejection.
    let mut c = p.h1().await;
    for _ in 0..12 {
        assert_eq!(
            c.get("/p").await.0.status(),
            200,
            "the ejection survived the reload"
        );
    }
    assert_eq!(rs[4].count() + rs[5].count(), 2 + 12);
    assert!(rs[5].count() >= 5, "the added replica takes its share");

    // A reload that changes the sticky group itself rebuilds its ring from the new list:
    // with one replica added, only keys that move to it change.
    let grown = sticky_of(&[
        rs[0].clone(),
        rs[1].clone(),
        rs[2].clone(),
        rs[3].clone(),
        rs[6].clone(),
    ]);
    assert_eq!(
        p.reload_rest(&(grown + &plain(&[&rs[5]]) + routes))
            .await
            .result,
        "ok"
    );
    let after = sticky_map(&p, 200).await;
    for (b, a) in before.iter().zip(&after) {
        assert!(
            a == b || a == "p3",
            "a key moved from {b} to {a}, not to the new replica"
        );
    }
    assert!(after.iter().any(|a| a == "p3"));
    p.stop().await;
}

async fn post(p: &TestProxy) -> (http::Response<()>, bytes::Bytes) {
    let mut c = p.h1().await;
    let req = c
        .request(Method::POST, "/unique/order")
        .header("idempotency-key", "order-1")
        .header("content-length", "3")
        .body(full("x=1"))
        .unwrap();
    c.send_collect(req).await
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_records_survive_a_reload_with_the_same_store() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let keyed = |r: &Replica| {
        group_toml("api", &[r.addr], "")
            + "[[routes]]\npath_prefix = \"/unique\"\nupstream = \"api\"\nidempotency = \"required\"\n"
    };
    let p = TestProxy::start_reloadable("", &keyed(&a)).await;
    let (first, body1) = post(&p).await;
    assert_eq!(first.status(), 201);
    assert_eq!(p.reload_rest(&keyed(&b)).await.result, "ok");
    let (again, body2) = post(&p).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(body1, body2);
    assert_eq!(
        (a.count(), b.count()),
        (1, 0),
        "replayed across the reload, not re-run"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_listener_is_bound_first_and_a_taken_address_keeps_everything() {
    let r = Replica::start("r").await;
    let p = TestProxy::start_reloadable("", &set_toml(&[&r])).await;
    let old = p.addrs.plain.unwrap();
    let mut kept = Client::plain(old).await;
    assert_eq!(kept.get("/").await.0.status(), 200);

    // A port someone else holds: the reload fails and the old listener stays.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap();
    let moved_to = |addr: std::net::SocketAddr| {
        p.text.replace(
            "plain_listen = \"127.0.0.1:0\"",
            &format!("plain_listen = \"{addr}\""),
        )
    };
    let status = p.reload_text(&moved_to(taken)).await;
    assert_eq!(status.result, "failure");
    assert!(
        status.errors[0].contains("server.plain_listen: cannot bind"),
        "{status:?}"
    );
    assert_eq!(Client::plain(old).await.get("/").await.0.status(), 200);

    // A free port: the new listener serves, the old one refuses new connections, and a
    // connection made before the move still works.
    let free = closed_port().await;
    assert_eq!(p.reload_text(&moved_to(free)).await.result, "ok");
    assert_eq!(Client::plain(free).await.get("/").await.0.status(), 200);
    within("old listener closes", async {
        while tokio::net::TcpStream::connect(old).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(kept.get("/").await.0.status(), 200);
    drop(squatter);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_tunnel_lives_through_reloads_that_drop_its_replica() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let p = TestProxy::start_reloadable("", &set_toml(&[&a])).await;
    let mut ws = p.h1().await.open_websocket("/ws").await;
    for (i, set) in [&b, &a, &b].into_iter().enumerate() {
        // The tunnel's replica leaves the configuration and comes back: the tunnel is
        // untouched either way.
        assert_eq!(p.reload_rest(&set_toml(&[set])).await.result, "ok");
        let msg = format!("frame-{i}");
        ws.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        within("echo", ws.read_exact(&mut buf)).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    assert_eq!(b.count(), 0, "the tunnel stayed on its replica");
    // An open tunnel would hold shutdown for its grace period.
    drop(ws);
    p.stop().await;
}

/// Ids of the Redis clients connected to `redis`, except the one asking.
async fn doorman_clients(redis: &RedisServer) -> std::collections::BTreeSet<String> {
    let text = match redis.cmd(&["CLIENT", "LIST"]).await {
        redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
        redis::Value::VerbatimString { text, .. } => text,
        other => panic!("CLIENT LIST: {other:?}"),
    };
    text.lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_store_keeps_its_connections_and_view_a_changed_one_reconnects() {
    let (one, two) = (RedisServer::start(), RedisServer::start());
    let kit = JwtKit::new();
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let store = |r: &RedisServer| format!("[store]\nredis_url = \"{}\"\n", r.url());
    let rest = |s: &RedisServer, replica: &Replica| {
        store(s) + &kit.auth_toml_for(&["es256"], "") + &set_toml(&[replica])
    };
    let p = TestProxy::start_reloadable("", &rest(&one, &a)).await;
    // A keep-alive connection open across every reload must not keep a replaced snapshot
    // (and its store's connections) alive.
    let mut kept = p.h1().await;
    assert_eq!(kept.get("/").await.0.status(), 401);
    let token = sign(kit.key("es256"), &good_claims("carol"));
    let status = |token: String| {
        let p = &p;
        async move {
            let mut c = p.h1().await;
            let req = c
                .request(Method::GET, "/api")
                .header("authorization", format!("Bearer {token}"))
                .body(empty())
                .unwrap();
            c.send_collect(req).await.0.status().as_u16()
        }
    };
    assert_eq!(status(token.clone()).await, 200);
    // carol revoked straight in Redis; the tracked view hears of it.
    let cutoff = (support::jwt::now() + 1).to_string();
    one.cmd(&["SET", "doorman:revoked:sub:carol", &cutoff])
        .await;
    within("the revocation reaches the view", async {
        while status(token.clone()).await != 401 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let connections = doorman_clients(&one).await;
    assert!(!connections.is_empty());

    // Only the replica changed: same Redis connections, and the view needs no resync —
    // the very first request after the reload is still refused.
    assert_eq!(p.reload_rest(&rest(&one, &b)).await.result, "ok");
    assert_eq!(status(token.clone()).await, 401);
    assert_eq!(doorman_clients(&one).await, connections, "no reconnect");

    // The store moved to another Redis: doorman connects there (carol is not revoked
    // there), and lets go of the old one.
    assert_eq!(p.reload_rest(&rest(&two, &b)).await.result, "ok");
    assert_eq!(status(token.clone()).await, 200);
    within("the old store's connections close", async {
        while !doorman_clients(&one).await.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!doorman_clients(&two).await.is_empty());
    assert_eq!(
        kept.get("/").await.0.status(),
        401,
        "the kept connection still works"
    );
    two.cmd(&["SET", "doorman:revoked:sub:carol", &cutoff])
        .await;
    within("the new store's view hears of revocations", async {
        while status(token.clone()).await != 401 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_marked_down_comes_back_when_active_checks_are_removed() {
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let group =
        |health: &str| group_toml("api", &[a.addr, b.addr], health) + &route_toml("/", "api");
    let checked = "[upstreams.api.health]\npath = \"/health\"\ninterval = \"50ms\"\nunhealthy_threshold = 1\n";
    let p = TestProxy::start_reloadable("", &group(checked)).await;
    a.set_healthy(false);
    let mut c = p.h1().await;
    within("a is taken out", async {
        loop {
            let ids: Vec<String> = ids_of(&mut c, 6).await;
            if ids.iter().all(|i| i == "b") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Without active checks nothing could ever bring `a` back: it must not inherit "down".
    assert_eq!(p.reload_rest(&group("")).await.result, "ok");
    let ids = ids_of(&mut c, 6).await;
    assert_eq!(ids.iter().filter(|i| *i == "a").count(), 3, "{ids:?}");
    p.stop().await;
}

async fn ids_of(c: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (resp, _) = c.get("/").await;
        out.push(
            resp.headers()["x-upstream-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_store_keeps_its_records_when_its_settings_change() {
    let a = Replica::start("a").await;
    let keyed = |extra: &str| {
        group_toml("api", &[a.addr], "")
            + "[[routes]]\npath_prefix = \"/unique\"\nupstream = \"api\"\nidempotency = \"required\"\n"
            + extra
    };
    let p = TestProxy::start_reloadable("", &keyed("")).await;
    let (first, body1) = post(&p).await;
    assert_eq!(first.status(), 201);
    // Every store and revocation setting changed: still the one embedded store.
    let changed = "[store]\ntimeout = \"80ms\"\non_error = \"open\"\n\
                   [revocation]\nkey_prefix = \"other:\"\nsubject_ttl = \"2d\"\n";
    assert_eq!(p.reload_rest(&keyed(changed)).await.result, "ok");
    let (again, body2) = post(&p).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(body1, body2);
    assert_eq!(a.count(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_asked_for_during_shutdown_is_refused_not_left_hanging() {
    let a = Replica::start("a").await;
    let mut p = TestProxy::start_reloadable("", &set_toml(&[&a])).await;
    // A slow request keeps the drain going while the reload is asked for.
    let mut slow = p.h1().await;
    let req = slow
        .request(Method::GET, "/sleep/3000")
        .body(empty())
        .unwrap();
    let in_flight = tokio::spawn(async move { slow.send_collect(req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    let outcome = within("the reload answer", p.reloader.as_ref().unwrap().reload()).await;
    assert_eq!(outcome, None, "no reload once shutting down");
    // Refused at once, not after the drain (which the 3 s request holds open).
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        within("slow request", in_flight).await.unwrap().0.status(),
        200
    );
    p.stop().await;
}

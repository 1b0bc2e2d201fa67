//! Replica health: passive ejection after consecutive failures, active checks with
//! thresholds and recovery, /ready, and a fast 503 when no replica is live.

mod support;

use std::time::{Duration, Instant};

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn consecutive_failures_eject_a_replica_for_a_while() {
    let live = Replica::start("live").await;
    let dead = closed_port().await;
    let group = format!(
        // No retries: the client sees each failure, which is what ejection ends.
        "[upstreams.api]\nretries = 0\nservers = [{{ address = \"{dead}\" }}, {{ address = \"{}\" }}]\n[upstreams.api.health]\neject_after_failures = 2\neject_for = \"30s\"\n",
        live.addr
    );
    let p = TestProxy::start("", &(group + &route_toml("/", "api"))).await;
    let mut c = p.h1().await;
    let mut statuses = Vec::new();
    for _ in 0..24 {
        statuses.push(c.get("/").await.0.status().as_u16());
    }
    // Round robin sends every other request to the dead replica until its second failure;
    // after that it is ejected and the live one takes everything.
    assert_eq!(&statuses[..4], [502, 200, 502, 200]);
    assert!(statuses[4..].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(live.count(), 22);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_checks_take_replicas_out_and_back_and_drive_ready() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let group = format!(
        "[upstreams.api]\nservers = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n[upstreams.api.health]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
        a.addr, b.addr
    );
    let p = TestProxy::start("", &(group + &route_toml("/", "api"))).await;
    let mut c = p.h1().await;
    let mut admin = Client::plain(p.addrs.admin).await;

    // Until only b answers 20 requests in a row.
    a.set_healthy(false);
    only(&p, "b").await;
    assert_eq!(admin.get("/ready").await.0.status(), 200, "b is still live");

    // Both down: not ready, and requests fail fast with 503 instead of waiting.
    b.set_healthy(false);
    within("not ready", async {
        while admin.get("/ready").await.0.status() != 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let start = Instant::now();
    let (resp, _) = c.get("/").await;
    assert_eq!(resp.status(), 503);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // a recovers after healthy_threshold passes and takes the traffic.
    a.set_healthy(true);
    only(&p, "a").await;
    assert_eq!(admin.get("/ready").await.0.status(), 200);
    p.stop().await;
}

/// Wait until `want` answers 20 requests in a row.
async fn only(p: &TestProxy, want: &str) {
    let mut c = p.h1().await;
    within("traffic settles", async {
        'outer: loop {
            for _ in 0..20 {
                let (resp, _) = c.get("/").await;
                let id = resp
                    .headers()
                    .get("x-upstream-id")
                    .map(|v| v.to_str().unwrap().to_string());
                if id.as_deref() != Some(want) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'outer;
                }
            }
            break;
        }
    })
    .await;
}

//! `GET /status` as JSON: what an operator sees after a replica is ejected and a reload
//! failed, and the HTML page served to browsers.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_an_ejected_replica_and_a_failed_reload() {
    let live = Replica::start("live").await;
    let dead = closed_port().await;
    let rest = format!(
        "[upstreams.api]\nretries = 0\nservers = [{{ address = \"{dead}\" }}, {{ address = \"{}\", weight = 3 }}]\n\
         [upstreams.api.health]\neject_after_failures = 1\neject_for = \"60s\"\n{}",
        live.addr,
        route_toml("/", "api")
    );
    let p = TestProxy::start_reloadable("", &rest).await;
    let mut c = p.h1().await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(c.get("/").await.0.status().as_u16());
    }
    // Smooth weighted round robin (1:3) reaches the dead replica once, then it is ejected.
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        1,
        "{statuses:?}"
    );
    let failed = p.reload_text("[upstreams.api]\nservers = 1\n").await;
    assert_eq!(failed.result, "failure");

    let s = status_json(&p).await;
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["ready"], true);
    assert_eq!(s["listeners"]["admin"], p.addrs.admin.to_string());
    let reload = &s["config"]["reload"];
    assert_eq!(reload["result"], "failure");
    assert_eq!(reload["generation"], 1);
    assert!(!reload["errors"].as_array().unwrap().is_empty());
    let group = &s["groups"][0];
    assert_eq!(group["name"], "api");
    assert_eq!(group["balance"], "round_robin");
    assert_eq!(group["live"], true);
    let replicas = group["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 2);
    assert_eq!(replicas[0]["address"], dead.to_string());
    assert_eq!(replicas[0]["state"], "ejected");
    assert_eq!(replicas[0]["ejections"], 1);
    assert_eq!(replicas[0]["selections"], 1);
    assert_eq!(replicas[1]["address"], live.addr.to_string());
    assert_eq!(replicas[1]["state"], "up");
    assert_eq!(replicas[1]["weight"], 3);
    assert_eq!(replicas[1]["selections"], 7);
    assert_eq!(replicas[1]["share"], 7.0 / 8.0);
    // Recent error rates: the first sample is the baseline taken at start.
    assert_eq!(replicas[0]["recent_requests"], 1);
    assert_eq!(replicas[0]["recent_error_rate"], 1.0);
    assert_eq!(replicas[1]["recent_error_rate"], 0.0);
    assert_eq!(s["store"]["kind"], "embedded");
    assert_eq!(s["store"]["connected"], true);
    assert_eq!(s["idempotency"]["first"], 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_a_redis_store_and_its_view() {
    let redis = RedisServer::start();
    let r = Replica::start("r").await;
    let rest = format!(
        "[store]\nredis_url = \"{}\"\n{}{}",
        redis.url(),
        group_toml("api", &[r.addr], ""),
        route_toml("/", "api")
    );
    let p = TestProxy::start("", &rest).await;
    let s = within("the view syncs", async {
        loop {
            let s = status_json(&p).await;
            if s["store"]["revocation_view"] == "synced" {
                break s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(s["store"]["kind"], "redis");
    assert_eq!(s["store"]["connected"], true);
    assert!(s["store"]["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(s["revocation_checks"]["resyncs"].as_u64().unwrap() >= 1);
    assert_eq!(s["store"]["mode"], "single");
    assert_eq!(s["store"]["master"], format!("127.0.0.1:{}", redis.port));
    assert_eq!(s["store"]["session_connected"], true);
    assert_eq!(s["store"]["failovers"], 0);
    assert_eq!(s["store"]["untrusted_reason"], serde_json::Value::Null);
    // A paused Redis: the page says so instead of hanging, and why the view is untrusted.
    redis.pause();
    let s = within("status with Redis stopped", status_json(&p)).await;
    assert_eq!(s["store"]["connected"], false);
    let s = within("the view is distrusted", async {
        loop {
            let s = status_json(&p).await;
            if s["store"]["revocation_view"] == "resyncing" {
                break s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // The session that noticed it ended on its PING deadline; a session that then fails to
    // start says so instead.
    let reason = s["store"]["untrusted_reason"].as_str().unwrap().to_string();
    assert!(
        reason == "PING deadline missed" || reason.starts_with("no session: "),
        "{reason}"
    );
    redis.resume();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn browsers_get_the_html_page() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let (resp, body) = Client::plain(p.addrs.admin).await.get("/status").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
    let html = String::from_utf8(body.to_vec()).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("fetch(\"/status\""));
    // Self-contained: nothing loaded from elsewhere.
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    p.stop().await;
}

//! `GET /metrics` after a scripted workload: the text parses as Prometheus exposition, and
//! the counters hold exactly what the workload did.

mod support;

use http::Method;
use serde_json::json;
use support::jwt::{JwtKit, good_claims, sign};
use support::*;

struct Scraped(prometheus_parse::Scrape);

impl Scraped {
    async fn from(p: &TestProxy) -> Scraped {
        let mut admin = Client::plain(p.addrs.admin).await;
        let (resp, body) = admin.get("/metrics").await;
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text")
        );
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF"
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        // A histogram's buckets fold into one sample per series; every other line (its
        // _sum and _count included) is one sample.
        let plain_lines = lines.iter().filter(|l| !l.contains("_bucket{")).count();
        let plain_samples = scrape
            .samples
            .iter()
            .filter(|s| !matches!(s.value, prometheus_parse::Value::Histogram(_)))
            .count();
        assert_eq!(
            plain_samples, plain_lines,
            "every sample line parsed:\n{text}"
        );
        Scraped(scrape)
    }

    /// The value of `metric` with exactly these labels (0 when the series does not exist).
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => panic!("{metric} is not a counter or gauge"),
            })
            .collect();
        assert!(
            found.len() <= 1,
            "{metric} {labels:?} matches {} series",
            found.len()
        );
        found.first().copied().unwrap_or(0.0)
    }

    fn has(&self, metric: &str, labels: &[(&str, &str)]) -> bool {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .any(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    fn histogram_count(&self, metric: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(b) => {
                    b.last().map_or(0.0, |last| last.count) as u64
                }
                _ => panic!("{metric} is not a histogram"),
            })
            .sum()
    }
}

fn with(c: &Client, token: &str) -> http::Request<TestBody> {
    c.request(Method::GET, "/api/me")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_exactly_what_a_scripted_workload_did() {
    let kit = JwtKit::new();
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let dead = closed_port().await;
    let rest = format!(
        "{}{}[upstreams.flaky]\nservers = [{{ address = \"{dead}\" }}, {{ address = \"{}\" }}]\n\
         [upstreams.flaky.health]\neject_after_failures = 2\neject_for = \"60s\"\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"api\"\n\
         [[routes]]\npath_prefix = \"/unique\"\nupstream = \"api\"\nauth = \"off\"\nidempotency = \"required\"\n\
         [[routes]]\npath_prefix = \"/flaky\"\nupstream = \"flaky\"\nauth = \"off\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = \"off\"\n",
        group_toml("api", &[a.addr, b.addr], ""),
        kit.auth_toml_for(&["es256"], ""),
        b.addr,
    );
    let p = TestProxy::start_reloadable("", &rest).await;
    let mut c = p.h1().await;

    // 10 plain GETs: round robin, 5 per replica; then a 204 and a 200, one to each replica:
    // 200 and 204 are the same status class, one series.
    for i in 0..10 {
        assert_eq!(c.get(&format!("/page/{i}")).await.0.status(), 200);
    }
    assert_eq!(c.get("/status/204").await.0.status(), 204);
    assert_eq!(c.get("/page/11").await.0.status(), 200);
    // Auth: 4 good requests with one token (1 cache miss, 3 hits), 2 without a token,
    // 1 malformed, then the subject is revoked and 3 more are refused.
    let token = sign(kit.key("es256"), &good_claims("dora"));
    for _ in 0..4 {
        let req = with(&c, &token);
        assert_eq!(c.send_collect(req).await.0.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(c.get("/api/me").await.0.status(), 401);
    }
    let req = with(&c, "not.a.jwt");
    assert_eq!(c.send_collect(req).await.0.status(), 401);
    let mut admin = Client::plain(p.addrs.admin).await;
    let req = http::Request::post("/revocations")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(
            json!({"sub": "dora", "before": support::jwt::now() + 1}).to_string(),
        ))
        .unwrap();
    assert_eq!(admin.send_collect(req).await.0.status(), 200);
    for _ in 0..3 {
        let req = with(&c, &token);
        assert_eq!(c.send_collect(req).await.0.status(), 401);
    }
    // Idempotency: first, replay, mismatch.
    for (body, want) in [("x=1", 201), ("x=1", 201), ("x=2", 422)] {
        let req = c
            .request(Method::POST, "/unique/order")
            .header("idempotency-key", "k-1")
            .header("content-length", "3")
            .body(full(body))
            .unwrap();
        assert_eq!(c.send_collect(req).await.0.status(), want);
    }
    // A group with a dead replica: 2 connect failures (retried), then it is ejected.
    for _ in 0..6 {
        assert_eq!(c.get("/flaky").await.0.status(), 200);
    }
    // One failed reload, one that works.
    assert_eq!(p.reload_text("[server\n").await.result, "failure");
    assert_eq!(p.reload_text(&p.text).await.result, "ok");
    // A TLS 1.2-only client is refused.
    let tls12 = p
        .pki
        .client_config(&[b"http/1.1"], &[&rustls::version::TLS12]);
    assert!(tls_connect(p.addrs.tls, tls12, "localhost").await.is_err());

    let m = Scraped::from(&p).await;
    let req = |route: &str, method: &str, status: &str, upstream: &str| {
        m.value(
            "doorman_requests_total",
            &[
                ("route", route),
                ("method", method),
                ("status", status),
                ("upstream", upstream),
            ],
        )
    };
    let (ra, rb) = (a.addr.to_string(), b.addr.to_string());
    assert_eq!(req("/", "GET", "2xx", &ra), 6.0);
    assert_eq!(req("/", "GET", "2xx", &rb), 6.0);
    assert_eq!(
        req("/api/", "GET", "2xx", &ra) + req("/api/", "GET", "2xx", &rb),
        4.0
    );
    assert_eq!(req("/api/", "GET", "4xx", "-"), 6.0);
    assert_eq!(
        m.histogram_count("doorman_request_duration_seconds", &[("route", "/")]),
        12
    );
    // Families counted elsewhere are exported too (they once were counted but never
    // registered); with the embedded store and a quiet log, both are zero.
    for family in [
        "doorman_revocation_resyncs_total",
        "doorman_log_dropped_lines_total",
    ] {
        assert!(m.has(family, &[]), "{family} exported");
        assert_eq!(m.value(family, &[]), 0.0, "{family}");
    }
    let auth = |kind: &str| m.value("doorman_auth_verifications_total", &[("outcome", kind)]);
    assert_eq!(auth("ok"), 4.0);
    assert_eq!(auth("missing"), 2.0);
    assert_eq!(auth("malformed"), 1.0);
    assert_eq!(auth("revoked"), 3.0);
    // The malformed token was looked up too: 8 lookups, the first of the good token and the
    // garbage one missed.
    assert_eq!(
        m.value("doorman_auth_token_cache_total", &[("outcome", "miss")]),
        2.0
    );
    assert_eq!(
        m.value("doorman_auth_token_cache_total", &[("outcome", "hit")]),
        6.0
    );
    assert_eq!(
        m.value("doorman_revocation_checks_total", &[("outcome", "hit")]),
        7.0
    );
    let idem = |kind: &str| m.value("doorman_idempotency_total", &[("outcome", kind)]);
    assert_eq!(
        (idem("first"), idem("replay"), idem("mismatch")),
        (1.0, 1.0, 1.0)
    );
    // The store was asked twice for the first request, once for the replay and the mismatch.
    assert_eq!(
        m.histogram_count("doorman_store_duration_seconds", &[("op", "idem_begin")]),
        3
    );
    let dead_l = [("group", "flaky"), ("replica", &*dead.to_string())];
    assert_eq!(
        m.value("doorman_upstream_connect_errors_total", &dead_l),
        2.0
    );
    assert_eq!(m.value("doorman_replica_ejections_total", &dead_l), 1.0);
    assert_eq!(m.value("doorman_replica_up", &dead_l), 0.0);
    assert_eq!(
        m.value(
            "doorman_replica_up",
            &[("group", "flaky"), ("replica", &rb)]
        ),
        1.0
    );
    assert_eq!(m.value("doorman_retries_total", &[("group", "flaky")]), 2.0);
    // Selections: every attempt, the two refused ones included.
    assert_eq!(m.value("doorman_balancer_selections_total", &dead_l), 2.0);
    assert_eq!(
        m.value(
            "doorman_balancer_selections_total",
            &[("group", "flaky"), ("replica", &rb)]
        ),
        6.0
    );
    assert_eq!(m.value("doorman_reloads_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(
        m.value("doorman_reloads_total", &[("outcome", "failure")]),
        1.0
    );
    let hash = p.reloader.as_ref().unwrap().status().config_hash;
    assert!(
        m.value(
            "doorman_config_loaded_timestamp_seconds",
            &[("hash", &hash)]
        ) > 1.7e9
    );
    assert_eq!(
        m.value(
            "doorman_tls_handshakes_total",
            &[("outcome", "peer_incompatible")]
        ),
        1.0
    );
    assert_eq!(
        m.value("doorman_tls_handshakes_total", &[("outcome", "ok")]),
        1.0
    );
    // The one client connection still open (the refused TLS 1.2 one never counted).
    assert_eq!(m.value("doorman_connections", &[("protocol", "h1")]), 1.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_leaves_before_the_answer_is_counted_as_499() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut c = p.h1().await;
    let req = c.request(Method::GET, "/sleep/600").body(empty()).unwrap();
    // The client gives up after 100 ms and closes its connection.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(100), c.send(req))
            .await
            .is_err()
    );
    drop(c);
    let rl = r.addr.to_string();
    let labels = [
        ("route", "/"),
        ("method", "GET"),
        ("status", "4xx"),
        ("upstream", rl.as_str()),
    ];
    within("the abandoned request is counted", async {
        while Scraped::from(&p)
            .await
            .value("doorman_requests_total", &labels)
            != 1.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let m = Scraped::from(&p).await;
    assert_eq!(
        m.value("doorman_in_flight_requests", &[("protocol", "h1")]),
        0.0
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_drops_the_series_of_removed_replicas_and_keeps_the_others() {
    let (a, b) = (Replica::start("a").await, Replica::start("b").await);
    let rest = |rs: &[&Replica]| {
        let addrs: Vec<_> = rs.iter().map(|r| r.addr).collect();
        group_toml("api", &addrs, "") + &route_toml("/", "api")
    };
    let p = TestProxy::start_reloadable("", &rest(&[&a, &b])).await;
    let mut c = p.h1().await;
    for _ in 0..4 {
        c.get("/").await;
    }
    let (la, lb) = (a.addr.to_string(), b.addr.to_string());
    fn of(r: &str) -> [(&str, &str); 2] {
        [("group", "api"), ("replica", r)]
    }
    let m = Scraped::from(&p).await;
    assert_eq!(m.value("doorman_balancer_selections_total", &of(&la)), 2.0);
    assert_eq!(m.value("doorman_balancer_selections_total", &of(&lb)), 2.0);
    let hash_before = p.reloader.as_ref().unwrap().status().config_hash;

    assert_eq!(p.reload_rest(&rest(&[&a])).await.result, "ok");
    c.get("/").await;
    let m = Scraped::from(&p).await;
    assert_eq!(
        m.value("doorman_balancer_selections_total", &of(&la)),
        3.0,
        "kept counting"
    );
    for metric in [
        "doorman_balancer_selections_total",
        "doorman_replica_up",
        "doorman_replica_in_flight",
        "doorman_upstream_connect_errors_total",
    ] {
        assert!(
            !m.has(metric, &of(&lb)),
            "{metric} of the removed replica is gone"
        );
    }
    // One config series: the new hash replaced the old one.
    let hash_after = p.reloader.as_ref().unwrap().status().config_hash;
    assert!(m.has(
        "doorman_config_loaded_timestamp_seconds",
        &[("hash", &hash_after)]
    ));
    assert!(!m.has(
        "doorman_config_loaded_timestamp_seconds",
        &[("hash", &hash_before)]
    ));
    p.stop().await;
}

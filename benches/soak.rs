//! The failover soak (issue 23; `scripts/soak.sh`): three doorman instances share a Redis
//! Cluster (3 masters + 3 replicas), then a Sentinel set (1 master, 1 replica, 3
//! sentinels), on 127.0.0.1 only, with three replicas behind them. For a bounded time it
//! drives JWT traffic (live and revoked tokens) and keyed POSTs through all three, revokes
//! tokens through each instance and through `redis-cli -c`, SIGKILLs the master that owns
//! revoked keys, restarts it later and (cluster) moves slots with `redis-cli --cluster
//! reshard`. It reports, per setup: revocation propagation, revoked tokens accepted after
//! a durable acknowledgement, duplicate replica calls per idempotency key, errors during
//! the failover, `failover_time_ms` and how long each view was untrusted. Figures go to
//! stdout and target/soak/report.md.
//!
//! Usage: `scripts/soak.sh [--seconds N] [--only cluster|sentinel]` (default 60 s each).

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::RedisCluster;
use support::jwt::*;
use support::sentinel::SentinelSet;
use support::*;

const PREFIX: &str = "doorman:revoked:";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo test --all-targets` runs every bench binary once without `--bench`: the soak
    // takes minutes and starts a dozen servers, so it only runs when asked for.
    if !args.iter().any(|a| a == "--bench") {
        println!("soak: not run under cargo test; run scripts/soak.sh");
        return;
    }
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let seconds: u64 = value("--seconds").map_or(60, |s| s.parse().expect("--seconds N"));
    assert!(
        (10..=3600).contains(&seconds),
        "--seconds between 10 and 3600"
    );
    let only = value("--only");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(async {
        if only.as_deref().is_none_or(|o| o == "cluster") {
            rows.push(soak(Setup::Cluster, Duration::from_secs(seconds)).await);
        }
        if only.as_deref().is_none_or(|o| o == "sentinel") {
            rows.push(soak(Setup::Sentinel, Duration::from_secs(seconds)).await);
        }
    });
    let report = render(&rows, seconds);
    println!("{report}");
    std::fs::create_dir_all("target/soak").unwrap();
    std::fs::write("target/soak/report.md", &report).unwrap();
    let bad: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.revoked_accepted > 0
                || r.duplicates_outside_crash > 0
                || r.audit.present_but_accepted > 0
                || r.audit.lost.keys().any(|k| k.starts_with("durable"))
        })
        .collect();
    assert!(bad.is_empty(), "a promise was broken: see the report");
}

#[derive(Clone, Copy, PartialEq)]
enum Setup {
    Cluster,
    Sentinel,
}

/// Whichever Redis the run uses; dropped (killed) at the end.
enum Redis {
    Cluster(RedisCluster),
    Sentinel(SentinelSet),
}

impl Redis {
    fn store_line(&self) -> String {
        match self {
            Redis::Cluster(c) => {
                let seeds: Vec<String> = c.urls().iter().map(|u| format!("{u:?}")).collect();
                format!("redis_cluster = [{}]", seeds.join(", "))
            }
            Redis::Sentinel(s) => s.store_line(),
        }
    }

    /// Ports `redis-cli -c` can start from (it follows MOVED from any of them).
    fn ports(&self) -> Vec<u16> {
        match self {
            Redis::Cluster(c) => c.nodes.iter().map(|n| n.port).collect(),
            Redis::Sentinel(s) => vec![s.master.port, s.replica.port],
        }
    }
}

/// One revocation: when its write was acknowledged and whether durably (WAIT 1 answered).
struct Revoked {
    token: String,
    key: String,
    acked: Instant,
    durable: bool,
}

#[derive(Default)]
struct Shared {
    revoked: Mutex<Vec<Arc<Revoked>>>,
    /// Propagation per instance, in ms.
    propagation: Mutex<[Vec<f64>; 3]>,
    /// Requests with a revoked token answered 200 after a durable acknowledgement.
    revoked_accepted: AtomicU64,
    /// ...and after a non-durable one (a raw redis-cli write), reported apart.
    revoked_accepted_not_durable: AtomicU64,
    /// Live-token answers: (instance, when, status).
    live: Mutex<Vec<(usize, Instant, u16)>>,
    /// Keyed POSTs: key -> (first sent, statuses).
    keys: Mutex<HashMap<String, Instant>>,
    /// Sampled view state: (instance, when, trusted).
    views: Mutex<Vec<(usize, Instant, bool)>>,
    stop: AtomicBool,
}

/// What the end-of-run audit found.
#[derive(Default)]
struct Audit {
    /// Revocations gone from Redis, by kind and when they were acknowledged.
    lost: std::collections::BTreeMap<String, usize>,
    /// Answers of 200 for a token whose key is in Redis (must be 0).
    present_but_accepted: usize,
}

/// Whether `key` exists, asked with `redis-cli -c` from the first node that answers.
fn exists(ports: &[u16], key: &str) -> bool {
    for port in ports {
        let out = Command::new("redis-cli")
            .args(["-c", "-p", &port.to_string(), "EXISTS", key])
            .stdin(Stdio::null())
            .output();
        if let Ok(out) = out {
            match String::from_utf8_lossy(&out.stdout).trim() {
                "1" => return true,
                "0" => return false,
                _ => {}
            }
        }
    }
    panic!("no node answered EXISTS {key}");
}

struct Row {
    audit: Audit,
    setup: &'static str,
    revocations: usize,
    propagation: [(f64, f64, f64); 3],
    revoked_accepted: u64,
    revoked_accepted_not_durable: u64,
    keys: usize,
    duplicates_outside_crash: usize,
    duplicates_in_crash: usize,
    errors: Vec<(u16, usize)>,
    failover_time_ms: Option<f64>,
    untrusted_ms: [f64; 3],
    checks: usize,
}

async fn proxy(kit: &JwtKit, replicas: &[Replica], redis: &Redis) -> TestProxy {
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let rest = group_toml("api", &addrs, "")
        + &format!(
            "[store]\n{}\ntimeout = \"200ms\"\non_error = \"closed\"\ndurable_revocations = true\n",
            redis.store_line()
        )
        + &kit.auth_toml("")
        + "[[routes]]\npath_prefix = \"/unique\"\nupstream = \"api\"\nauth = \"off\"\nidempotency = \"required\"\n"
        + &route_toml("/", "api");
    TestProxy::start("", &rest).await
}

async fn get(c: &mut Client, token: &str) -> u16 {
    let req = c
        .request(http::Method::GET, "/api/x")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    c.send_collect(req).await.0.status().as_u16()
}

fn token(kit: &JwtKit, sub: &str) -> (String, String, u64) {
    let claims = good_claims(sub);
    let jti = claims["jti"].as_str().unwrap().to_string();
    let exp = claims["exp"].as_u64().unwrap();
    (sign(kit.key("es256"), &claims), jti, exp)
}

/// Revoke through an instance's admin API: whether one replica acknowledged it.
async fn revoke_via(p: &TestProxy, jti: &str, exp: u64) -> Option<bool> {
    let mut admin = Client::plain(p.addrs.admin).await;
    let req = http::Request::post("/revocations")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(full(json!({"jti": jti, "expires_at": exp}).to_string()))
        .unwrap();
    let (resp, body) = admin.send_collect(req).await;
    if resp.status() != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    Some(v["replicated"] == true)
}

/// Run redis-cli; true when it exited 0 and printed `OK` (redis-cli exits 0 on an error
/// reply such as READONLY or CLUSTERDOWN, which is no acknowledgement).
fn redis_cli(args: &[&str]) -> bool {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("redis-cli is required by the soak ({e})"));
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "OK"
}

/// Run redis-cli for its exit status (`--cluster reshard` prints a report, not `OK`).
fn redis_cli_status(args: &[&str]) -> bool {
    Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or_else(|e| panic!("redis-cli is required by the soak ({e})"))
}

async fn soak(setup: Setup, run_for: Duration) -> Row {
    let name = if setup == Setup::Cluster {
        "cluster (3 masters + 3 replicas)"
    } else {
        "sentinel (1 master, 1 replica, 3 sentinels)"
    };
    eprintln!("soak: {name}, {run_for:?}");
    let mut redis = match setup {
        Setup::Cluster => Redis::Cluster(RedisCluster::start().await),
        Setup::Sentinel => Redis::Sentinel(SentinelSet::start().await),
    };
    let kit = Arc::new(JwtKit::new());
    let mut replicas = Vec::new();
    for id in ["r1", "r2", "r3"] {
        replicas.push(Replica::start(id).await);
    }
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(Arc::new(proxy(&kit, &replicas, &redis).await));
    }
    for p in &proxies {
        within("views synced before the run", async {
            while status_json(p).await["store"]["revocation_view"] != "synced" {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    let shared = Arc::new(Shared::default());
    let live: Arc<Vec<String>> = Arc::new(
        (0..20)
            .map(|i| token(&kit, &format!("live{i}")).0)
            .collect(),
    );
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = tokio::task::JoinSet::new();

    // Checkers: two clients per instance, live and revoked tokens mixed.
    for (i, p) in proxies.iter().enumerate() {
        for k in 0..2 {
            let (p, shared, live) = (p.clone(), shared.clone(), live.clone());
            tasks.spawn(async move {
                let mut c = if k == 0 { p.h1().await } else { p.h2().await };
                let mut n = 0usize;
                while !shared.stop.load(Ordering::Relaxed) {
                    n += 1;
                    let pick = {
                        let revoked = shared.revoked.lock().unwrap();
                        (n.is_multiple_of(2) && !revoked.is_empty())
                            .then(|| revoked[fastrand::usize(..revoked.len())].clone())
                    };
                    let sent = Instant::now();
                    match pick {
                        Some(r) => {
                            let code = get(&mut c, &r.token).await;
                            if code == 200 && r.acked < sent {
                                let counter = if r.durable {
                                    &shared.revoked_accepted
                                } else {
                                    &shared.revoked_accepted_not_durable
                                };
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        None => {
                            let t = &live[fastrand::usize(..live.len())];
                            let code = get(&mut c, t).await;
                            shared.live.lock().unwrap().push((i, sent, code));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
    }

    // Keyed POSTs: a fresh key through one instance, replayed through the next.
    for (i, p) in proxies.iter().enumerate() {
        let (p, next, shared) = (p.clone(), proxies[(i + 1) % 3].clone(), shared.clone());
        tasks.spawn(async move {
            let (mut c, mut d) = (p.h1().await, next.h1().await);
            let mut n = 0;
            while !shared.stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("soak-{i}-{n}");
                shared
                    .keys
                    .lock()
                    .unwrap()
                    .insert(key.clone(), Instant::now());
                for c in [&mut c, &mut d] {
                    let req = c
                        .request(http::Method::POST, "/unique")
                        .header("content-type", "application/json")
                        .header("idempotency-key", &key)
                        .body(full("{}"))
                        .unwrap();
                    c.send_collect(req).await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    // The view sampler.
    {
        let (proxies, shared) = (proxies.clone(), shared.clone());
        tasks.spawn(async move {
            while !shared.stop.load(Ordering::Relaxed) {
                for (i, p) in proxies.iter().enumerate() {
                    let s = status_json(p).await;
                    let trusted = s["store"]["revocation_view"] == "synced";
                    shared
                        .views
                        .lock()
                        .unwrap()
                        .push((i, Instant::now(), trusted));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    // The revoker: every 250 ms, through instance A, B, C or redis-cli -c in turn; then the
    // time until each instance refuses the token.
    {
        let (proxies, shared, kit) = (proxies.clone(), shared.clone(), kit.clone());
        let ports = redis.ports();
        tasks.spawn(async move {
            let mut n = 0usize;
            let mut from = 0;
            while !shared.stop.load(Ordering::Relaxed) {
                n += 1;
                let (t, jti, exp) = token(&kit, &format!("rev{n}"));
                // The pollers connect first: a handshake must not count as propagation.
                let mut pollers = Vec::new();
                for p in proxies.iter() {
                    pollers.push(p.h1().await);
                }
                let durable = match n % 4 {
                    3 => {
                        let key = format!("{PREFIX}jti:{jti}");
                        let p = ports[from % ports.len()].to_string();
                        let ok = tokio::task::spawn_blocking(move || {
                            redis_cli(&["-c", "-p", &p, "SET", &key, "1", "EX", "600"])
                        })
                        .await
                        .unwrap();
                        if !ok {
                            // The node it started from may be the one killed, or (Sentinel)
                            // a replica now: start from the next one.
                            from += 1;
                            continue;
                        }
                        Some(false)
                    }
                    k => revoke_via(&proxies[k], &jti, exp).await,
                };
                let Some(durable) = durable else {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                };
                let r = Arc::new(Revoked {
                    token: t,
                    key: format!("{PREFIX}jti:{jti}"),
                    acked: Instant::now(),
                    durable,
                });
                shared.revoked.lock().unwrap().push(r.clone());
                for (i, mut c) in pollers.into_iter().enumerate() {
                    let (r, shared) = (r.clone(), shared.clone());
                    tokio::spawn(async move {
                        let limit = r.acked + Duration::from_secs(10);
                        while Instant::now() < limit {
                            if get(&mut c, &r.token).await == 401 {
                                let ms = r.acked.elapsed().as_secs_f64() * 1000.0;
                                shared.propagation.lock().unwrap()[i].push(ms);
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        shared.propagation.lock().unwrap()[i].push(f64::INFINITY);
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
    }

    // The events: kill the master that owns revoked keys, restart it, move slots.
    let at = |f: f64| start + run_for.mul_f64(f);
    tokio::time::sleep_until(at(0.3).into()).await;
    let killed_at = Instant::now();
    let victim = match &mut redis {
        Redis::Cluster(c) => {
            // The master of the first revocation's key.
            let key = shared
                .revoked
                .lock()
                .unwrap()
                .first()
                .map(|r| r.key.clone())
                .expect("a revocation before the failover");
            let port = c.master_of(&key).await;
            c.kill(port);
            eprintln!("soak: killed master {port}");
            port
        }
        Redis::Sentinel(s) => {
            let port = s.master.port;
            s.master.kill();
            eprintln!("soak: killed master {port}");
            port
        }
    };
    tokio::time::sleep_until(at(0.6).into()).await;
    let restarted_at = Instant::now();
    match &mut redis {
        Redis::Cluster(c) => {
            c.restart(victim);
            eprintln!("soak: restarted {victim}");
        }
        Redis::Sentinel(s) => {
            s.rejoin_old_master().await;
            eprintln!("soak: {victim} rejoined as a replica");
        }
    }
    if let Redis::Cluster(c) = &redis {
        tokio::time::sleep_until(at(0.75).into()).await;
        let masters = c.masters().await;
        let (from, to) = (c.id(masters[0]).await, c.id(masters[1]).await);
        let seed = format!("127.0.0.1:{}", masters[0]);
        let moved = tokio::task::spawn_blocking(move || {
            redis_cli_status(&[
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &from,
                "--cluster-to",
                &to,
                "--cluster-slots",
                "50",
                "--cluster-yes",
            ])
        })
        .await
        .unwrap();
        eprintln!(
            "soak: resharded 50 slots ({})",
            if moved { "ok" } else { "FAILED" }
        );
    }
    tokio::time::sleep_until(deadline.into()).await;
    shared.stop.store(true, Ordering::Relaxed);
    // Bounded: every task checks `stop` between requests, each bounded by the client.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The audit: every revocation is either still in Redis — and then refused by every
    // instance — or was lost by Redis in the failover (only a write not acknowledged by a
    // replica can be). A key in Redis that an instance lets through is doorman's fault.
    let ports = redis.ports();
    let revoked: Vec<Arc<Revoked>> = shared.revoked.lock().unwrap().clone();
    let mut audit = Audit::default();
    let mut clients = Vec::new();
    for p in &proxies {
        clients.push(p.h1().await);
    }
    for r in &revoked {
        let (key, ports) = (r.key.clone(), ports.clone());
        let present = tokio::task::spawn_blocking(move || exists(&ports, &key))
            .await
            .unwrap();
        let when = if r.acked < killed_at {
            "before the kill"
        } else if r.acked < restarted_at {
            "during the failover"
        } else {
            "after the restart"
        };
        if !present {
            *audit
                .lost
                .entry(format!(
                    "{} {when}",
                    if r.durable { "durable" } else { "raw" }
                ))
                .or_default() += 1;
            continue;
        }
        for c in clients.iter_mut() {
            if get(c, &r.token).await == 200 {
                audit.present_but_accepted += 1;
            }
        }
    }

    let mut row = tally(&shared, &replicas, name, killed_at, restarted_at);
    row.audit = audit;
    for p in proxies {
        if let Ok(p) = Arc::try_unwrap(p) {
            p.stop().await;
        }
    }
    drop(redis);
    row
}

/// The figures of one run, from what the tasks recorded.
fn tally(
    shared: &Shared,
    replicas: &[Replica],
    name: &'static str,
    killed_at: Instant,
    restarted_at: Instant,
) -> Row {
    // Duplicates: replica calls per idempotency key, over all three replicas.
    let mut calls: HashMap<String, usize> = HashMap::new();
    for r in replicas {
        for s in r.seen() {
            if let Some(k) = s.headers.get("idempotency-key") {
                *calls
                    .entry(k.to_str().unwrap_or("").to_string())
                    .or_default() += 1;
            }
        }
    }
    let keys = shared.keys.lock().unwrap();
    let crash = killed_at - Duration::from_secs(2)..restarted_at;
    let (mut in_crash, mut outside) = (0, 0);
    for (k, n) in &calls {
        if *n > 1 {
            if keys.get(k).is_some_and(|t| crash.contains(t)) {
                in_crash += 1;
            } else {
                outside += 1;
            }
        }
    }

    // Failover: live-token errors from the kill to the restart.
    let live = shared.live.lock().unwrap();
    let window: Vec<&(usize, Instant, u16)> = live
        .iter()
        .filter(|(_, t, _)| *t >= killed_at && *t < restarted_at)
        .collect();
    let mut errors: HashMap<u16, usize> = HashMap::new();
    for (_, _, code) in &window {
        if *code != 200 {
            *errors.entry(*code).or_default() += 1;
        }
    }
    let first_error = window
        .iter()
        .find(|(_, _, c)| *c != 200)
        .map(|(_, t, _)| *t);
    let last_error = window
        .iter()
        .rev()
        .find(|(_, _, c)| *c != 200)
        .map(|(_, t, _)| *t);
    let failover_time_ms = first_error
        .zip(last_error)
        .map(|(a, b)| (b - a).as_secs_f64() * 1000.0);
    let mut errors: Vec<(u16, usize)> = errors.into_iter().collect();
    errors.sort();

    let views = shared.views.lock().unwrap();
    let mut untrusted_ms = [0.0; 3];
    for (i, total) in untrusted_ms.iter_mut().enumerate() {
        let mine: Vec<&(usize, Instant, bool)> = views.iter().filter(|v| v.0 == i).collect();
        for w in mine.windows(2) {
            if !w[0].2 {
                *total += (w[1].1 - w[0].1).as_secs_f64() * 1000.0;
            }
        }
    }
    let prop = shared.propagation.lock().unwrap();
    let stats = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        let q = |f: f64| {
            v.get(((v.len() as f64 - 1.0) * f).round() as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        (q(0.5), q(0.99), v.last().copied().unwrap_or(f64::NAN))
    };
    Row {
        audit: Audit::default(),
        setup: name,
        revocations: shared.revoked.lock().unwrap().len(),
        propagation: [stats(&prop[0]), stats(&prop[1]), stats(&prop[2])],
        revoked_accepted: shared.revoked_accepted.load(Ordering::Relaxed),
        revoked_accepted_not_durable: shared.revoked_accepted_not_durable.load(Ordering::Relaxed),
        keys: keys.len(),
        duplicates_outside_crash: outside,
        duplicates_in_crash: in_crash,
        errors,
        failover_time_ms,
        untrusted_ms,
        checks: live.len(),
    }
}

fn render(rows: &[Row], seconds: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Command: `scripts/soak.sh --seconds {seconds}`. Three doorman instances (A, B, C), on_error = closed, timeout = 200ms, durable_revocations = true. Propagation: ms from the write's acknowledgement to the first 401 on that instance (polled every ~1 ms), p50 / p99 / max.\n"
    );
    let _ = writeln!(
        out,
        "| setup | revocations | propagation A | propagation B | propagation C | revoked accepted (durable / raw) | keyed POSTs | duplicate calls (outside / within the crash) | live-token errors during failover | failover_time_ms | view untrusted ms (A / B / C) | live checks |"
    );
    let _ = writeln!(out, "|---|---:|---|---|---|---|---:|---|---|---:|---|---:|");
    for r in rows {
        let p = |(a, b, c): (f64, f64, f64)| format!("{a:.1} / {b:.1} / {c:.1}");
        let errors = if r.errors.is_empty() {
            "none".to_string()
        } else {
            r.errors
                .iter()
                .map(|(c, n)| format!("{n}×{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} / {} | {} | {} | {:.0} / {:.0} / {:.0} | {} |",
            r.setup,
            r.revocations,
            p(r.propagation[0]),
            p(r.propagation[1]),
            p(r.propagation[2]),
            r.revoked_accepted,
            r.revoked_accepted_not_durable,
            r.keys,
            r.duplicates_outside_crash,
            r.duplicates_in_crash,
            errors,
            r.failover_time_ms
                .map_or("no error".into(), |t| format!("{t:.0}")),
            r.untrusted_ms[0],
            r.untrusted_ms[1],
            r.untrusted_ms[2],
            r.checks,
        );
    }
    let _ = writeln!(out);
    for r in rows {
        let lost = if r.audit.lost.is_empty() {
            "none".to_string()
        } else {
            r.audit
                .lost
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "- {}: end-of-run audit: revocations lost by Redis: {lost}; tokens whose key is in Redis yet accepted by an instance: {}.",
            r.setup, r.audit.present_but_accepted
        );
    }
    out
}

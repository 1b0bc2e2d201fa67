//! A replica killed under load (listener closed, every connection dropped mid-request):
//! GETs see no error (retried on another replica), POSTs are never run twice, and with
//! consistent hashing only the dead replica's keys move.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use support::*;

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 120;
const KEYS: usize = 30;
/// Replica r1 dies once this many requests have completed.
const KILL_AFTER: usize = 300;

#[derive(Debug, Clone)]
struct Outcome {
    key: String,
    method: Method,
    path: String,
    status: u16,
    replica: Option<String>,
    /// Started after the kill was done.
    after_kill: bool,
    /// Ended before the kill began.
    before_kill: bool,
}

struct Run {
    replicas: Vec<Replica>,
    outcomes: Vec<Outcome>,
}

async fn kill_under_load(balance: &str) -> Run {
    let mut replicas = Vec::new();
    for i in 1..=3 {
        replicas.push(Replica::start(&format!("r{i}")).await);
    }
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let p = TestProxy::start(
        "",
        &(group_toml("api", &addrs, balance) + &route_toml("/", "api")),
    )
    .await;
    let done = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Set just before the kill: a request ending after this may have met a dead replica.
    let killing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let mut c = p.h1().await;
        let (done, killed, victim) = (done.clone(), killed.clone(), replicas[0].clone());
        let killing = killing.clone();
        let (addr, pki) = (p.addrs.tls, p.pki.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..PER_CLIENT {
                let key = format!("session-{}", (client * 7 + i) % KEYS);
                let after_kill = killed.load(Ordering::SeqCst);
                let (method, path, body) = if i % 2 == 0 {
                    (Method::GET, format!("/item/{client}-{i}"), empty())
                } else {
                    (Method::POST, format!("/pay/{client}-{i}"), full("amount=1"))
                };
                let mut req = c
                    .request(method.clone(), &path)
                    .header("x-session-id", &key);
                if method == Method::POST {
                    req = req.header("content-length", "8");
                }
                let resp = c.send(req.body(body).unwrap()).await;
                let (status, replica) = match resp {
                    Ok(r) => {
                        let id = r
                            .headers()
                            .get("x-upstream-id")
                            .map(|v| v.to_str().unwrap().to_string());
                        let status = r.status().as_u16();
                        body_bytes(r.into_body()).await;
                        (status, id)
                    }
                    Err(e) => panic!("{method} {path}: the connection to doorman failed: {e}"),
                };
                if status != 200 {
                    // doorman ends an HTTP/1.1 connection after a failed upload.
                    c = Client::connect(addr, &pki, "localhost", &[b"http/1.1"])
                        .await
                        .unwrap();
                }
                let before_kill = !killing.load(Ordering::SeqCst);
                out.push(Outcome {
                    key,
                    method,
                    path,
                    status,
                    replica,
                    after_kill,
                    before_kill,
                });
                if done.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                    killing.store(true, Ordering::SeqCst);
                    victim.kill();
                    killed.store(true, Ordering::SeqCst);
                }
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(within("clients finish", t).await.unwrap());
    }
    p.stop().await;
    Run { replicas, outcomes }
}

/// Checks shared by both modes: no GET failed, no POST ran twice, every answered POST ran
/// exactly once, and POSTs failed only where a request was cut on a dropped connection.
fn check_no_errors_and_no_duplicates(run: &Run) {
    assert_eq!(run.outcomes.len(), CLIENTS * PER_CLIENT);
    assert!(
        run.outcomes.iter().filter(|o| o.after_kill).count() > 500,
        "the kill happened early in the run"
    );
    for o in &run.outcomes {
        if o.method == Method::GET {
            assert_eq!(o.status, 200, "GET {} failed: {o:?}", o.path);
        } else {
            assert!(o.status == 200 || o.status == 502, "{o:?}");
        }
    }
    let mut runs: HashMap<String, usize> = HashMap::new();
    for r in &run.replicas {
        for s in r.seen() {
            *runs.entry(s.uri).or_default() += 1;
        }
    }
    let mut failed_posts = 0;
    for o in run.outcomes.iter().filter(|o| o.method == Method::POST) {
        let n = runs.get(&o.path).copied().unwrap_or(0);
        assert!(n <= 1, "POST {} ran {n} times", o.path);
        if o.status == 200 {
            assert_eq!(n, 1, "answered POST {} ran once", o.path);
        } else {
            failed_posts += 1;
        }
    }
    // A POST fails only when the connection it was sent on was dropped by the kill: each
    // of doorman's connections to the victim can carry at most one such request.
    let victim_connections = run.replicas[0].connections.load(Ordering::SeqCst);
    assert!(
        failed_posts <= victim_connections,
        "{failed_posts} POSTs failed, the victim had {victim_connections} connections"
    );
    // Nothing reached the victim once it was dead.
    let victim_id = &run.replicas[0].id;
    assert!(
        run.outcomes
            .iter()
            .filter(|o| o.after_kill)
            .all(|o| o.replica.as_ref() != Some(victim_id)),
        "a request started after the kill was answered by the dead replica"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_a_killed_replica_costs_no_get_and_no_duplicate_post() {
    let run = kill_under_load("").await;
    check_no_errors_and_no_duplicates(&run);
    // The survivors took every request after the kill, half each (round robin).
    let after: Vec<&Outcome> = run
        .outcomes
        .iter()
        .filter(|o| o.after_kill && o.status == 200)
        .collect();
    let r2 = after
        .iter()
        .filter(|o| o.replica.as_deref() == Some("r2"))
        .count();
    let r3 = after
        .iter()
        .filter(|o| o.replica.as_deref() == Some("r3"))
        .count();
    assert_eq!(r2 + r3, after.len());
    assert!(r2.abs_diff(r3) <= after.len() / 5, "r2 {r2}, r3 {r3}");
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_a_killed_replica_moves_only_its_own_keys() {
    let run =
        kill_under_load("balance = \"consistent_hash\"\nhash_key = \"header:x-session-id\"").await;
    check_no_errors_and_no_duplicates(&run);
    // Each key's replica before the kill (requests that ended before it began).
    let mut home: HashMap<&str, &str> = HashMap::new();
    for o in run
        .outcomes
        .iter()
        .filter(|o| o.before_kill && o.status == 200)
    {
        let r = o.replica.as_deref().unwrap();
        let h = home.entry(&o.key).or_insert(r);
        assert_eq!(*h, r, "{} moved before any replica died", o.key);
    }
    assert_eq!(home.len(), KEYS, "every key was seen before the kill");
    let victims: HashSet<&str> = home
        .iter()
        .filter(|(_, r)| **r == "r1")
        .map(|(k, _)| *k)
        .collect();
    assert!(!victims.is_empty() && victims.len() < KEYS, "{home:?}");
    let mut new_home: HashMap<&str, &str> = HashMap::new();
    for o in run
        .outcomes
        .iter()
        .filter(|o| o.after_kill && o.status == 200)
    {
        let r = o.replica.as_deref().unwrap();
        if victims.contains(o.key.as_str()) {
            // The dead replica's keys move, each to one surviving replica, consistently.
            assert_ne!(r, "r1");
            let h = new_home.entry(&o.key).or_insert(r);
            assert_eq!(*h, r, "{} moved twice", o.key);
        } else {
            assert_eq!(
                r,
                home[o.key.as_str()],
                "{} of a surviving replica moved",
                o.key
            );
        }
    }
}

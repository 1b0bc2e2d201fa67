//! The embedded store's caps, end to end on a running doorman with small caps in its
//! proxy.toml: completed idempotency records are evicted oldest first (counted, and an
//! evicted key's retry runs again), a live lease is never evicted (a store full of leases
//! answers 503 under `on_error = "closed"`), and revocations beyond the cap are refused
//! with 507 while every held one is kept.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::*;

/// A proxy on the embedded store with these `[store]` caps; every POST needs a key.
async fn proxy(replica: &Replica, caps: &str) -> TestProxy {
    let rest = format!(
        "{}[store]\n{caps}\n[idempotency]\nlock_ttl = \"30s\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n",
        group_toml("api", &[replica.addr], "response_timeout = \"20s\"")
    );
    TestProxy::start("", &rest).await
}

async fn post(c: &mut Client, path: &str, key: &str) -> (http::Response<()>, Bytes) {
    let req = c
        .request(Method::POST, path)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(full("{}"))
        .unwrap();
    c.send_collect(req).await
}

async fn store_status(p: &TestProxy) -> serde_json::Value {
    status_json(p).await["store"].clone()
}

const EVICTIONS: &str = r#"doorman_store_evictions_total{kind="idempotency"}"#;
const LEASE_REFUSALS: &str = r#"doorman_store_refusals_total{kind="idempotency_lease"}"#;
const REVOCATION_REFUSALS: &str = r#"doorman_store_refusals_total{kind="revocation"}"#;

#[tokio::test(flavor = "multi_thread")]
async fn unique_keys_beyond_the_cap_evict_the_oldest_completed_and_an_evicted_retry_runs_again() {
    let r = Replica::start("r").await;
    let p = proxy(&r, "embedded_max_entries = 4").await;
    let mut c = p.h1().await;
    assert_eq!(count(&p, EVICTIONS).await, 0);
    for i in 0..10 {
        let (resp, body) = post(&mut c, "/unique", &format!("k{i}")).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(
            &body[..],
            format!(r#"{{"call":{},"len":2}}"#, i + 1).as_bytes()
        );
    }
    // Ten completed keys under a cap of four: the six oldest were evicted.
    assert_eq!(count(&p, EVICTIONS).await, 6);
    let store = store_status(&p).await;
    assert_eq!(store["idempotency_records"], 4);
    assert_eq!(store["idempotency_leases"], 0);

    // A kept key is replayed: the replica is not called.
    let (resp, body) = post(&mut c, "/unique", "k9").await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(&body[..], br#"{"call":10,"len":2}"#);
    assert_eq!(r.count(), 10);

    // An evicted key is gone, as after its ttl: its retry runs again (documented), and its
    // new record evicts the oldest kept one (k6).
    let (resp, body) = post(&mut c, "/unique", "k0").await;
    assert_eq!(resp.status(), 201);
    assert!(resp.headers().get("idempotent-replayed").is_none());
    assert_eq!(&body[..], br#"{"call":11,"len":2}"#);
    assert_eq!(r.count(), 11);
    assert_eq!(count(&p, EVICTIONS).await, 7);
    let (resp, _) = post(&mut c, "/unique", "k7").await;
    assert_eq!(resp.headers()["idempotent-replayed"], "true");
    assert_eq!(r.count(), 11);
    assert_eq!(count(&p, LEASE_REFUSALS).await, 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_lease_is_never_evicted_and_a_store_full_of_leases_answers_503() {
    let r = Replica::start("r").await;
    let p = proxy(&r, "embedded_max_entries = 2").await;

    // "slow" holds its lease until the replica's gate opens.
    let mut c1 = p.h1().await;
    let slow = tokio::spawn(async move { post(&mut c1, "/gate", "slow").await.0.status() });
    within("the slow request reaches the replica", async {
        while r.count() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    // Unique keys cycle through the one free slot: each evicts the previous completed one.
    let mut c = p.h1().await;
    for i in 0..6 {
        assert_eq!(
            post(&mut c, "/unique", &format!("u{i}")).await.0.status(),
            201
        );
    }
    assert_eq!(count(&p, EVICTIONS).await, 5);
    // The lease survived all of it: a duplicate is still in flight.
    let (dup, _) = post(&mut c, "/gate", "slow").await;
    assert_eq!(dup.status(), 409);
    assert_eq!(r.count(), 7);

    // A second lease takes the last slot (evicting u5); then only leases are left.
    let mut c2 = p.h1().await;
    let slow2 = tokio::spawn(async move { post(&mut c2, "/gate", "slow2").await.0.status() });
    within("the second slow request reaches the replica", async {
        while r.count() < 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(count(&p, EVICTIONS).await, 6);
    let (full_resp, body) = post(&mut c, "/unique", "new").await;
    assert_eq!(full_resp.status(), 503);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"], "state store unavailable");
    assert_eq!(r.count(), 8, "a refused key never reaches the replica");
    assert_eq!(count(&p, LEASE_REFUSALS).await, 1);
    assert_eq!(count(&p, EVICTIONS).await, 6);
    let store = store_status(&p).await;
    assert_eq!(store["idempotency_leases"], 2);

    // Once the leases complete, new keys are taken again.
    r.open_gate();
    r.open_gate();
    assert_eq!(within("slow", slow).await.unwrap(), 200);
    assert_eq!(within("slow2", slow2).await.unwrap(), 200);
    assert_eq!(post(&mut c, "/unique", "new").await.0.status(), 201);
    assert_eq!(count(&p, EVICTIONS).await, 7);
    p.stop().await;
}

async fn revoke(p: &TestProxy, body: serde_json::Value) -> (u16, serde_json::Value) {
    let mut admin = Client::plain(p.addrs.admin).await;
    let req = admin
        .request(Method::POST, "/revocations")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    let (resp, body) = admin.send_collect(req).await;
    (
        resp.status().as_u16(),
        serde_json::from_slice(&body).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_beyond_the_cap_are_refused_with_507_and_every_held_one_kept() {
    let r = Replica::start("r").await;
    let p = proxy(&r, "embedded_max_revocations = 3").await;
    let exp = support::jwt::now() + 600;
    for jti in ["a", "b", "c"] {
        let (status, _) = revoke(&p, serde_json::json!({"jti": jti, "expires_at": exp})).await;
        assert_eq!(status, 200, "{jti}");
    }
    let refused = serde_json::json!({
        "error": "revocation store full ([store] embedded_max_revocations): not revoked"
    });
    assert_eq!(
        revoke(&p, serde_json::json!({"jti": "d", "expires_at": exp})).await,
        (507, refused.clone())
    );
    assert_eq!(
        revoke(&p, serde_json::json!({"sub": "alice"})).await,
        (507, refused)
    );
    // Renewing a held revocation needs no room.
    assert_eq!(
        revoke(&p, serde_json::json!({"jti": "a", "expires_at": exp + 60}))
            .await
            .0,
        200
    );
    assert_eq!(count(&p, REVOCATION_REFUSALS).await, 2);
    let store = store_status(&p).await;
    assert_eq!(store["revoked_tokens"], 3);
    assert_eq!(store["revoked_subjects"], 0);
    p.stop().await;
}

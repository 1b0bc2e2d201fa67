//! `[auth.jwks]` against a test identity provider over real HTTPS (its own CA): every
//! algorithm of a set, rotation without a reload, an unknown-kid flood, a provider that
//! fails, hangs or sends garbage, discovery, a file set, skipped keys, `/ready`, reloads,
//! and `doorman check`. No assertion on wall-clock time: intervals are short and every wait
//! polls under a bounded deadline.

mod support;

use serde_json::{Value, json};
use support::idp::{Idp, Mode, SigningKey};
use support::jwks::*;
use support::jwt::{ISSUER, good_claims};
use support::*;

const ALGS: &str = "algorithms = [\"RS256\", \"ES256\", \"EdDSA\"]";

/// `[auth.jwks]` fetching the provider's set by URL with this file's algorithms.
fn by_url(idp: &Idp, extra: &str) -> String {
    by_url_with(idp, ALGS, extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_signed_by_every_algorithm_of_the_set_are_accepted() {
    let idp = Idp::start().await;
    let keys = [
        SigningKey::rsa("rs"),
        SigningKey::es256("es"),
        SigningKey::eddsa("ed"),
    ];
    idp.serve(&keys.iter().collect::<Vec<_>>());
    let (p, r) = start(&auth(ISSUER, "", &by_url(&idp, ""))).await;
    wait_ready(&p).await;
    for k in &keys {
        let claims = good_claims(&format!("user-{}", k.kid));
        assert_eq!(call(&p, &k.token(&claims)).await, OK, "{}", k.kid);
        let seen = r.seen();
        assert_eq!(
            seen.last().unwrap().headers["x-user-id"],
            format!("user-{}", k.kid).as_str()
        );
    }
    // The algorithm is pinned by the key: an ES256 signature under the RSA key's kid, and a
    // token naming HS256, are refused before any crypto.
    let claims = good_claims("mallory");
    assert_eq!(
        call(&p, &keys[1].token_as("rs", &claims)).await,
        refused("algorithm not allowed")
    );
    let hs = jsonwebtoken::EncodingKey::from_secret(&[7; 32]);
    let header = json!({"alg": "HS256", "kid": "rs"});
    let forged = support::jwt::sign_raw(&header, &claims, &hs, jsonwebtoken::Algorithm::HS256);
    assert_eq!(call(&p, &forged).await, refused("algorithm not allowed"));
    assert_eq!(idp.hits(), 1);

    let set = key_set(&p).await;
    assert_eq!(
        kids(&set),
        [("rs", "RS256"), ("es", "ES256"), ("ed", "EdDSA")]
            .map(|(k, a)| (k.to_string(), a.to_string()))
    );
    assert_eq!(set["loaded"], true);
    assert_eq!(set["source"], idp.jwks_url());
    assert_eq!(set["last_error"], Value::Null);
    assert_eq!(set["fetches"], json!({"ok": 1, "failed": 0}));
    assert_eq!(set["algorithms"], json!(["RS256", "ES256", "EdDSA"]));
    // Never the key material.
    let (_, status) = admin(&p, "/status").await;
    for k in &keys {
        let public = k.jwk.get("n").or(k.jwk.get("x")).unwrap().as_str().unwrap();
        assert!(
            !status.contains(public),
            "{} material on the status page",
            k.kid
        );
    }
    let (_, metrics) = admin(&p, "/metrics").await;
    for line in [
        "doorman_jwks_fetches_total{outcome=\"ok\"} 1",
        "doorman_jwks_keys 3",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("doorman_jwks_seconds_since_success "));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_verifies_without_a_reload_and_a_removed_one_stops() {
    let idp = Idp::start().await;
    let (old, new) = (SigningKey::es256("2024"), SigningKey::rsa("2025"));
    idp.serve(&[&old]);
    let extra = "refresh = \"10m\"\nmin_refresh = \"10m\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    let old_token = old.token(&good_claims("alice"));
    assert_eq!(call(&p, &old_token).await, OK);
    // The provider rotates: the new key in, the old one out.
    idp.serve(&[&new]);
    // The new kid is unknown: one early fetch brings it in.
    assert_eq!(call(&p, &new.token(&good_claims("bob"))).await, OK);
    assert_eq!(idp.hits(), 2);
    // The fetch that added the new key dropped the old one: its token, verified and cached
    // before, is refused (no second early fetch within min_refresh).
    assert_eq!(call(&p, &old_token).await, refused("unknown key id"));
    assert_eq!(idp.hits(), 2);
    let set = key_set(&p).await;
    assert_eq!(kids(&set), [("2025".to_string(), "RS256".to_string())]);
    assert_eq!(set["generation"], 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_dropped_by_the_provider_stops_verifying_after_the_scheduled_refresh() {
    let idp = Idp::start().await;
    let (a, b) = (SigningKey::es256("a"), SigningKey::eddsa("b"));
    idp.serve(&[&a, &b]);
    let extra = "refresh = \"200ms\"\nmin_refresh = \"100ms\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    let a_token = a.token(&good_claims("alice"));
    assert_eq!(call(&p, &a_token).await, OK);
    idp.serve(&[&b]);
    eventually("the refresh that drops kid a", || async {
        call(&p, &a_token).await != OK
    })
    .await;
    assert_eq!(call(&p, &a_token).await, refused("unknown key id"));
    assert_eq!(call(&p, &b.token(&good_claims("bob"))).await, OK);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_unknown_kids_costs_one_fetch() {
    let idp = Idp::start().await;
    let key = SigningKey::es256("real");
    idp.serve(&[&key]);
    let extra = "refresh = \"10m\"\nmin_refresh = \"10m\"\ntimeout = \"2s\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    assert_eq!(idp.hits(), 1);
    let p = std::sync::Arc::new(p);
    let flood: Vec<_> = (0..40)
        .map(|i| {
            let (p, token) = (
                p.clone(),
                key.token_as(
                    &format!("random-{i}-{}", fastrand::u64(..)),
                    &good_claims("x"),
                ),
            );
            tokio::spawn(async move { call(&p, &token).await })
        })
        .collect();
    for answer in flood {
        assert_eq!(answer.await.unwrap(), refused("unknown key id"));
    }
    // The first unknown kid was granted one early fetch; every other waited for it or was
    // within min_refresh of it.
    assert_eq!(idp.hits(), 2);
    for i in 0..10 {
        let token = key.token_as(&format!("again-{i}"), &good_claims("x"));
        assert_eq!(call(&p, &token).await, refused("unknown key id"));
    }
    assert_eq!(idp.hits(), 2);
    assert_eq!(call(&p, &key.token(&good_claims("x"))).await, OK);
    std::sync::Arc::into_inner(p).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_fails_or_hangs_leaves_the_last_good_set_in_force() {
    let idp = Idp::start().await;
    let key = SigningKey::rsa("k");
    idp.serve(&[&key]);
    let extra = "refresh = \"200ms\"\nmin_refresh = \"100ms\"\ntimeout = \"300ms\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    let token = key.token(&good_claims("alice"));
    for (mode, error) in [
        (
            Mode::Fail,
            "the provider answered 500 (only 200 is a key set)",
        ),
        (Mode::Hang, "no complete answer within the timeout"),
    ] {
        idp.set_mode(mode);
        let seen = idp.hits();
        eventually("two failed fetches", || async { idp.hits() >= seen + 2 }).await;
        eventually("the failure on the status page", || async {
            key_set(&p).await["last_error"] == error
        })
        .await;
        assert_eq!(call(&p, &token).await, OK, "{mode:?}");
        // An unknown kid waits for the failing fetch (at most the timeout), then 401.
        let stranger = key.token_as("stranger", &good_claims("x"));
        assert_eq!(call(&p, &stranger).await, refused("unknown key id"));
        assert_eq!(admin(&p, "/ready").await.0, 200);
    }
    let (_, metrics) = admin(&p, "/metrics").await;
    for outcome in ["http_status", "timeout"] {
        let prefix = format!("doorman_jwks_fetches_total{{outcome=\"{outcome}\"}} ");
        assert!(metrics.lines().any(|l| l.starts_with(&prefix)), "{outcome}");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_or_an_empty_set_leaves_the_last_good_set_in_force() {
    let idp = Idp::start().await;
    let key = SigningKey::eddsa("k");
    idp.serve(&[&key]);
    let extra = "refresh = \"200ms\"\nmin_refresh = \"100ms\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    let token = key.token(&good_claims("alice"));
    for (mode, error) in [
        (Mode::Garbage, "not a key set: not JSON"),
        (Mode::Empty, "the set has no usable key"),
    ] {
        idp.set_mode(mode);
        eventually("the failure on the status page", || async {
            key_set(&p).await["last_error"] == error
        })
        .await;
        assert_eq!(call(&p, &token).await, OK, "{mode:?}");
        assert_eq!(
            kids(&key_set(&p).await),
            [("k".to_string(), "EdDSA".to_string())]
        );
    }
    idp.set_mode(Mode::Serve);
    eventually("a good fetch again", || async {
        key_set(&p).await["last_error"].is_null()
    })
    .await;
    assert_eq!(key_set(&p).await["generation"], 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_finds_the_set_from_the_issuer() {
    let idp = Idp::start().await;
    let key = SigningKey::rsa("disc");
    idp.serve(&[&key]);
    let jwks = format!(
        "discovery = true\nca_file = \"{}\"\n{ALGS}\n",
        idp.ca_path().display()
    );
    let (p, _r) = start(&auth(&idp.issuer, "", &jwks)).await;
    wait_ready(&p).await;
    let mut claims = good_claims("alice");
    claims["iss"] = idp.issuer.clone().into();
    assert_eq!(call(&p, &key.token(&claims)).await, OK);
    assert_eq!((idp.discovery_hits(), idp.hits()), (1, 1));
    let set = key_set(&p).await;
    assert_eq!(set["jwks_uri"], idp.jwks_url());
    p.stop().await;

    // A document naming another issuer than [auth] issuer is refused: nothing loads.
    let other = format!("{}/", idp.issuer);
    let (p, _r) = start(&auth(&other, "", &jwks)).await;
    eventually("the discovery failure", || async {
        key_set(&p).await["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("discovery: the document's issuer"))
    })
    .await;
    assert_eq!(admin(&p, "/ready").await.0, 503);
    assert_eq!(idp.hits(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_set_is_in_force_at_once_and_read_again_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let (a, b) = (SigningKey::es256("a"), SigningKey::rsa("b"));
    let write = |k: &SigningKey| {
        std::fs::write(&path, json!({ "keys": [k.jwk] }).to_string()).unwrap();
    };
    write(&a);
    let r = Replica::start("r").await;
    let jwks = format!("file = \"{}\"\n", path.display());
    let rest = rest(&r, &auth(ISSUER, "", &jwks));
    let p = TestProxy::start_reloadable("", &rest).await;
    assert_eq!(admin(&p, "/ready").await.0, 200);
    assert_eq!(call(&p, &a.token(&good_claims("alice"))).await, OK);
    assert_eq!(
        key_set(&p).await["source"],
        format!("file {}", path.display())
    );
    write(&b);
    assert_eq!(p.reload_rest(&rest).await.result, "ok");
    assert_eq!(call(&p, &b.token(&good_claims("bob"))).await, OK);
    assert_eq!(
        call(&p, &a.token(&good_claims("alice"))).await,
        refused("unknown key id")
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_unfit_for_signatures_are_skipped_and_the_rest_loads() {
    let idp = Idp::start().await;
    let good = SigningKey::es256("good");
    let enc = SigningKey::rsa("enc");
    let rs512 = SigningKey::rsa("rs512");
    let mut enc_jwk = enc.jwk.clone();
    enc_jwk["use"] = "enc".into();
    let mut rs512_jwk = rs512.jwk.clone();
    rs512_jwk["alg"] = "RS512".into();
    // A 1024-bit modulus (top bit set, odd): refused for its size alone.
    let n1024 = [&[0xc1u8][..], &[0x37; 126], &[0x01]].concat();
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    idp.serve_json(vec![
        enc_jwk,
        json!({"kty": "oct", "kid": "oct", "k": b64(&[9; 32]), "alg": "HS256"}),
        rs512_jwk,
        json!({"kty": "RSA", "kid": "rsa1024", "n": b64(&n1024), "e": "AQAB", "alg": "RS256"}),
        good.jwk.clone(),
    ]);
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, ""))).await;
    wait_ready(&p).await;
    assert_eq!(
        kids(&key_set(&p).await),
        [("good".to_string(), "ES256".to_string())]
    );
    assert_eq!(call(&p, &good.token(&good_claims("alice"))).await, OK);
    for k in [&enc, &rs512] {
        let token = k.token(&good_claims("mallory"));
        assert_eq!(
            call(&p, &token).await,
            refused("unknown key id"),
            "{}",
            k.kid
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_waits_for_the_first_set_while_static_keys_work_at_once() {
    let idp = Idp::start().await;
    idp.set_mode(Mode::Fail);
    let key = SigningKey::es256("idp");
    idp.serve(&[&key]);
    let dir = tempfile::tempdir().unwrap();
    let secret = [b's'; 40];
    std::fs::write(dir.path().join("hs"), secret).unwrap();
    let statik = format!(
        "[[auth.keys]]\nkid = \"static\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
        dir.path().join("hs").display()
    );
    let extra = "refresh = \"1s\"\nmin_refresh = \"100ms\"\ntimeout = \"500ms\"";
    let (p, _r) = start(&(auth(ISSUER, "", &by_url(&idp, extra)) + &statik)).await;
    eventually("a failed first fetch", || async { idp.hits() >= 1 }).await;
    assert_eq!(
        admin(&p, "/ready").await,
        (503, r#"{"ready":false}"#.to_string())
    );
    let header = json!({"alg": "HS256", "kid": "static"});
    let hs = support::jwt::sign_raw(
        &header,
        &good_claims("svc"),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
        jsonwebtoken::Algorithm::HS256,
    );
    assert_eq!(call(&p, &hs).await, OK);
    // A token for the set: 401, never a 500, while nothing is loaded.
    let token = key.token(&good_claims("alice"));
    assert_eq!(call(&p, &token).await, refused("unknown key id"));
    idp.set_mode(Mode::Serve);
    wait_ready(&p).await;
    assert_eq!(call(&p, &token).await, OK);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_an_unchanged_set_and_replaces_a_changed_one() {
    let idp = Idp::start().await;
    let key = SigningKey::rsa("k");
    idp.serve(&[&key]);
    let r = Replica::start("r").await;
    let jwks = by_url(&idp, "refresh = \"10m\"\nmin_refresh = \"10m\"");
    let p = TestProxy::start_reloadable("", &rest(&r, &auth(ISSUER, "", &jwks))).await;
    wait_ready(&p).await;
    let token = key.token(&good_claims("alice"));
    assert_eq!(call(&p, &token).await, OK);
    // Another [auth] setting, the same [auth.jwks]: the running set and its task stay.
    let changed_auth = rest(&r, &auth(ISSUER, "leeway = \"10s\"", &jwks));
    let reloaded = p.reload_rest(&changed_auth).await;
    assert_eq!(reloaded.result, "ok", "{:?}", reloaded.errors);
    assert_eq!(admin(&p, "/ready").await.0, 200);
    assert_eq!(call(&p, &token).await, OK);
    assert_eq!(idp.hits(), 1);
    assert_eq!(key_set(&p).await["fetches"], json!({"ok": 1, "failed": 0}));
    // A changed [auth.jwks]: a new set, fetched by a new task.
    let jwks = by_url(&idp, "refresh = \"11m\"\nmin_refresh = \"10m\"");
    assert_eq!(
        p.reload_rest(&rest(&r, &auth(ISSUER, "", &jwks)))
            .await
            .result,
        "ok"
    );
    eventually("the new set's first fetch", || async { idp.hits() == 2 }).await;
    wait_ready(&p).await;
    assert_eq!(call(&p, &token).await, OK);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_providers_max_age_schedules_the_refresh_within_bounds() {
    let idp = Idp::start().await;
    let key = SigningKey::es256("k");
    idp.serve(&[&key]);
    // max-age=0 is read as min_refresh: a fetch about every 50 ms, not every 10 minutes.
    idp.set_cache_control(Some("public, max-age=0"));
    let extra = "refresh = \"10m\"\nmin_refresh = \"50ms\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    eventually("refreshes at min_refresh", || async { idp.hits() >= 4 }).await;
    p.stop().await;
}

#[test]
fn check_refuses_plain_http_to_a_host_that_is_not_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.path().join("c.crt"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("c.key"), ck.signing_key.serialize_pem()).unwrap();
    let config = |url: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:8443\"\n\n[[tls.certificates]]\ncert = \"c.crt\"\nkey = \"c.key\"\n\n\
             [upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n\n\
             [auth]\nissuer = \"https://idp.example.com\"\n\n[auth.jwks]\nurl = \"{url}\"\n"
        )
    };
    let check = |url: &str| {
        std::fs::write(dir.path().join("p.toml"), config(url)).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_doorman"))
            .args(["check", "p.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    // Nothing listens on port 1: check never fetches.
    let ok = check("http://127.0.0.1:1/certs");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = check("http://idp.example.com/certs");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .collect::<Vec<_>>(),
        [
            "p.toml:19: auth.jwks.url: \"http://idp.example.com/certs\": plain http:// is only allowed to 127.0.0.1 or [::1]; use https://",
            "p.toml: configuration check failed with 1 error(s)",
        ]
    );
}

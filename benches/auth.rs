//! JWT verification per algorithm, cold (signature + claims) and cached (cache hit + time
//! checks), and the revocation check against a warm local view: the embedded store and the
//! Redis-backed view (a private redis-server is started on a free port; it must be installed).

use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

mod common;
use common::redis_server;
use doorman::auth::{Verifier, unix_now};
use doorman::config::{AuthSettings, JwtKey, RedisSpec, RevocationSettings, StoreSettings};
use doorman::store::{Revoke, Store};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};

fn keys() -> Vec<(Algorithm, EncodingKey, DecodingKey)> {
    let secret = [42u8; 48];
    let mut out = vec![(
        Algorithm::HS256,
        EncodingKey::from_secret(&secret),
        DecodingKey::from_secret(&secret),
    )];
    for (alg, rc) in [
        (Algorithm::RS256, &rcgen::PKCS_RSA_SHA256),
        (Algorithm::PS256, &rcgen::PKCS_RSA_SHA256),
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        (Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
        (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
    ] {
        let kp = rcgen::KeyPair::generate_for(rc).unwrap();
        let private = kp.serialize_pem();
        let public = kp.public_key_pem();
        let (enc, dec) = match alg {
            Algorithm::ES256 | Algorithm::ES384 => (
                EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
                DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
            ),
            Algorithm::EdDSA => (
                EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
                DecodingKey::from_ed_pem(public.as_bytes()).unwrap(),
            ),
            _ => (
                EncodingKey::from_rsa_pem(private.as_bytes()).unwrap(),
                DecodingKey::from_rsa_pem(public.as_bytes()).unwrap(),
            ),
        };
        out.push((alg, enc, dec));
    }
    out
}

fn settings(alg: Algorithm, key: DecodingKey) -> AuthSettings {
    AuthSettings {
        issuer: Some("https://auth.bench".into()),
        audiences: Some(vec!["api".into()]),
        leeway: Duration::from_secs(30),
        require_jti: true,
        forward_claims: vec![("sub".into(), http::HeaderName::from_static("x-user-id"))],
        strip_authorization: false,
        cache_entries: 16_384,
        max_lifetime: None,
        keys: vec![JwtKey {
            kid: Some("k".into()),
            algorithm: alg,
            key,
        }],
        jwks: None,
    }
}

fn token(alg: Algorithm, key: &EncodingKey, jti: &str) -> String {
    let now = unix_now();
    let claims = serde_json::json!({
        "iss": "https://auth.bench", "aud": "api", "sub": "user-1234", "scope": "read",
        "iat": now, "exp": now + 3600, "jti": jti,
    });
    let mut h = Header::new(alg);
    h.kid = Some("k".into());
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

fn verification(c: &mut Criterion) {
    let mut cold = c.benchmark_group("verify_cold");
    let mut cases = Vec::new();
    for (alg, enc, dec) in keys() {
        let v = Verifier::new(&settings(alg, dec));
        let t = token(alg, &enc, "jti-1");
        cold.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| black_box(v.verify_uncached(black_box(&t)).unwrap()))
        });
        cases.push((alg, v, t));
    }
    cold.finish();
    let mut cached = c.benchmark_group("verify_cached");
    for (alg, v, t) in &cases {
        let now = unix_now();
        v.verify(t, now).unwrap();
        cached.bench_function(format!("{alg:?}"), |b| {
            b.iter(|| black_box(v.verify(black_box(t), now).unwrap()))
        });
    }
    cached.finish();
}

/// Poll a future once: a warm-view check must complete without awaiting anything.
fn poll_once<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a warm-view revocation check should not wait"),
    }
}

fn revocation(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (alg, enc, dec) = keys().swap_remove(0);
    let v = Verifier::new(&settings(alg, dec));
    let live = v
        .verify(&token(alg, &enc, "live-token"), unix_now())
        .unwrap();
    let exp = unix_now() + 3600;
    let redis = redis_server();
    let mut g = c.benchmark_group("revocation_check_warm");
    for (name, url) in [
        ("embedded", None),
        (
            "redis_view",
            Some(format!("redis://127.0.0.1:{}/0", redis.port)),
        ),
    ] {
        let store = rt.block_on(async {
            let settings = StoreSettings {
                redis: url.map(RedisSpec::Url),
                ..StoreSettings::default()
            };
            let store = Store::new(
                &settings,
                &RevocationSettings::default(),
                Duration::from_secs(30),
                Default::default(),
                Default::default(),
            )
            .unwrap();
            // 10,000 revoked tokens in the list, then wait until the view holds them all.
            for i in 0..10_000 {
                let r = Revoke::Jti {
                    jti: format!("revoked-{i}"),
                    expires_at: exp,
                };
                while store.revoke(&r).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            while !store.view_coherent() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            store
        });
        let _guard = rt.enter();
        g.bench_function(name, |b| {
            b.iter(|| assert!(!poll_once(store.is_revoked(black_box(&live))).unwrap()))
        });
    }
    g.finish();
}

criterion_group!(benches, verification, revocation);
criterion_main!(benches);

//! JWT security suite: every verification rule, table-driven, against a real proxy with keys
//! and tokens minted here for every supported algorithm.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::jwt::*;
use support::*;

async fn proxy(kit: &JwtKit, auth_extra: &str) -> (TestProxy, Replica) {
    let r = Replica::start("r1").await;
    let rest = group_toml("api", &[r.addr], "")
        + &kit.auth_toml(auth_extra)
        + "[[routes]]\npath_prefix = \"/open/\"\nupstream = \"api\"\nauth = \"off\"\n"
        + "[[routes]]\npath_prefix = \"/maybe/\"\nupstream = \"api\"\nauth = \"optional\"\n"
        + "[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = \"required\"\n";
    (TestProxy::start("", &rest).await, r)
}

/// Send GET `path` with `Authorization: <auth>` (if any); return status, challenge, body.
async fn call(c: &mut Client, path: &str, auth: Option<&str>) -> (u16, Option<String>, String) {
    let mut b = c.request(http::Method::GET, path);
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let (resp, body) = c.send_collect(b.body(empty()).unwrap()).await;
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (
        resp.status().as_u16(),
        challenge,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn invalid(desc: &str) -> Option<String> {
    Some(format!(
        "Bearer error=\"invalid_token\", error_description=\"{desc}\""
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_algorithm_verifies_and_forwards_claims() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "").await;
    let mut c = p.h2().await;
    for key in &kit.keys {
        let token = sign(key, &good_claims(&format!("user-{}", key.kid)));
        let (status, challenge, body) =
            call(&mut c, "/api/x", Some(&format!("Bearer {token}"))).await;
        assert_eq!((status, challenge), (200, None), "{}: {body}", key.kid);
        let seen = r.seen();
        let h = &seen.last().unwrap().headers;
        assert_eq!(h["x-user-id"], format!("user-{}", key.kid).as_str());
        assert_eq!(h["x-user-scope"], "read write");
        // strip_authorization defaults to false: the replica sees the token too.
        assert_eq!(h["authorization"], format!("Bearer {token}").as_str());
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rule_refuses_what_it_should() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "").await;
    let now = now();
    let hs = kit.key("hs256");
    let es = kit.key("es256");
    let rs = kit.key("rs256");
    let with = |patch: serde_json::Value| {
        let mut c = good_claims("alice");
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let good = good_claims("alice");
    let es384 = kit.key("es384");
    let other_secret = EncodingKey::from_secret(&[7u8; 48]);

    let cases: Vec<(&str, String, Option<String>)> = vec![
        // --- structure
        (
            "two segments",
            format!("{}.{}", b64(&json!({"alg":"HS256"})), b64(&good)),
            invalid("malformed token"),
        ),
        (
            "four segments",
            format!("{}.x", sign(hs, &good)),
            invalid("malformed token"),
        ),
        (
            "bad base64 header",
            format!("%%%.{}.c2ln", b64(&good)),
            invalid("malformed token"),
        ),
        (
            "header not JSON",
            format!("{}.{}.c2ln", base64_raw(b"not json"), b64(&good)),
            invalid("malformed token"),
        ),
        (
            "header a JSON array",
            format!("{}.{}.c2ln", base64_raw(b"[1,2]"), b64(&good)),
            invalid("malformed token"),
        ),
        (
            "claims not JSON",
            {
                let m = format!(
                    "{}.{}",
                    b64(&json!({"alg":"HS256","kid":"hs256"})),
                    base64_raw(b"{nope")
                );
                let s = jsonwebtoken::crypto::sign(m.as_bytes(), &hs.encoding, Algorithm::HS256)
                    .unwrap();
                format!("{m}.{s}")
            },
            invalid("malformed token"),
        ),
        (
            "signature not base64",
            format!("{}.!!!", sign(hs, &good).rsplit_once('.').unwrap().0),
            invalid("malformed token"),
        ),
        // --- algorithm pinning
        (
            "alg none, no signature",
            format!("{}.{}.", b64(&json!({"alg":"none"})), b64(&good)),
            invalid("malformed token"),
        ),
        (
            "alg none with kid",
            format!(
                "{}.{}.c2ln",
                b64(&json!({"alg":"none","kid":"hs256"})),
                b64(&good)
            ),
            invalid("algorithm not allowed"),
        ),
        (
            "alg NONE",
            format!("{}.{}.c2ln", b64(&json!({"alg":"NONE"})), b64(&good)),
            invalid("algorithm not allowed"),
        ),
        (
            "alg None",
            format!("{}.{}.c2ln", b64(&json!({"alg":"None"})), b64(&good)),
            invalid("algorithm not allowed"),
        ),
        (
            "HS256 with the RSA public key as secret, RS kid (confusion)",
            sign_raw(
                &json!({"alg":"HS256","kid":"rs256"}),
                &good,
                &EncodingKey::from_secret(&rs.public),
                Algorithm::HS256,
            ),
            invalid("algorithm not allowed"),
        ),
        (
            "HS256 with the EC public key as secret, no kid (confusion)",
            sign_raw(
                &json!({"alg":"HS256"}),
                &good,
                &EncodingKey::from_secret(&es.public),
                Algorithm::HS256,
            ),
            invalid("invalid signature"),
        ),
        (
            "ES384 token under the ES256 key's kid",
            sign_raw(
                &json!({"alg":"ES384","kid":"es256"}),
                &good,
                &es384.encoding,
                Algorithm::ES384,
            ),
            invalid("algorithm not allowed"),
        ),
        (
            "lower-case alg",
            sign_raw(
                &json!({"alg":"hs256","kid":"hs256"}),
                &good,
                &hs.encoding,
                Algorithm::HS256,
            ),
            invalid("algorithm not allowed"),
        ),
        // --- keys
        (
            "unknown kid",
            sign_raw(
                &json!({"alg":"HS256","kid":"../../etc/passwd"}),
                &good,
                &hs.encoding,
                Algorithm::HS256,
            ),
            invalid("unknown key id"),
        ),
        (
            "kid not a string",
            sign_raw(
                &json!({"alg":"HS256","kid":7}),
                &good,
                &hs.encoding,
                Algorithm::HS256,
            ),
            invalid("malformed token"),
        ),
        (
            "wrong key",
            sign_raw(
                &json!({"alg":"HS256","kid":"hs256"}),
                &good,
                &other_secret,
                Algorithm::HS256,
            ),
            invalid("invalid signature"),
        ),
        (
            "tampered claims",
            {
                let t = sign(hs, &good);
                let parts: Vec<&str> = t.split('.').collect();
                format!(
                    "{}.{}.{}",
                    parts[0],
                    b64(&with(json!({"sub":"admin"}))),
                    parts[2]
                )
            },
            invalid("invalid signature"),
        ),
        (
            "embedded jwk is ignored",
            {
                let attacker = EncodingKey::from_secret(&[9u8; 48]);
                sign_raw(
                    &json!({"alg":"HS256","jwk":{"kty":"oct","k":"CQkJ"}}),
                    &good,
                    &attacker,
                    Algorithm::HS256,
                )
            },
            invalid("invalid signature"),
        ),
        // --- header rules
        (
            "crit header",
            sign_raw(
                &json!({"alg":"HS256","kid":"hs256","crit":["exp"]}),
                &good,
                &hs.encoding,
                Algorithm::HS256,
            ),
            invalid("unsupported critical header"),
        ),
        (
            "empty crit",
            sign_raw(
                &json!({"alg":"HS256","kid":"hs256","crit":[]}),
                &good,
                &hs.encoding,
                Algorithm::HS256,
            ),
            invalid("unsupported critical header"),
        ),
        // --- time claims
        (
            "missing exp",
            sign(hs, &with(json!({"exp": null}))),
            invalid("invalid claims"),
        ),
        (
            "expired",
            sign(hs, &with(json!({"exp": now - 100}))),
            invalid("token expired"),
        ),
        (
            "exp as a string",
            sign(hs, &with(json!({"exp": (now + 300).to_string()}))),
            invalid("invalid claims"),
        ),
        (
            "exp negative",
            sign(hs, &with(json!({"exp": -1}))),
            invalid("invalid claims"),
        ),
        (
            "nbf in the future",
            sign(hs, &with(json!({"nbf": now + 300}))),
            invalid("token not yet valid"),
        ),
        (
            "nbf as a string",
            sign(hs, &with(json!({"nbf": "soon"}))),
            invalid("invalid claims"),
        ),
        (
            "iat in the future",
            sign(hs, &with(json!({"iat": now + 300}))),
            invalid("token issued in the future"),
        ),
        (
            "iat as a bool",
            sign(hs, &with(json!({"iat": true}))),
            invalid("invalid claims"),
        ),
        // --- iss / aud / jti
        (
            "missing iss",
            sign(hs, &with(json!({"iss": null}))),
            invalid("invalid issuer"),
        ),
        (
            "wrong iss",
            sign(hs, &with(json!({"iss": "https://evil.test"}))),
            invalid("invalid issuer"),
        ),
        (
            "missing aud",
            sign(hs, &with(json!({"aud": null}))),
            invalid("invalid audience"),
        ),
        (
            "wrong aud",
            sign(hs, &with(json!({"aud": "other"}))),
            invalid("invalid audience"),
        ),
        (
            "aud array without ours",
            sign(hs, &with(json!({"aud": ["a", "b"]}))),
            invalid("invalid audience"),
        ),
        (
            "missing jti",
            sign(hs, &with(json!({"jti": null}))),
            invalid("missing jti"),
        ),
        (
            "sub not a string",
            sign(hs, &with(json!({"sub": 42}))),
            invalid("invalid claims"),
        ),
        (
            "forwarded claim with a newline",
            sign(hs, &with(json!({"sub": "a\r\nx-admin: 1"}))),
            invalid("invalid claims"),
        ),
    ];

    let mut c = p.h1().await;
    for (name, token, want) in &cases {
        let (status, challenge, body) =
            call(&mut c, "/api/x", Some(&format!("Bearer {token}"))).await;
        assert_eq!((status, &challenge), (401, want), "case {name:?}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json["error"],
            want.as_ref().unwrap().split('"').nth(3).unwrap(),
            "case {name:?}"
        );
    }
    assert_eq!(r.count(), 0, "no refused token may reach a replica");

    // Within leeway, aud as an array containing ours, fractional NumericDates: accepted.
    for (name, claims) in [
        ("exp within leeway", with(json!({"exp": now - 10}))),
        ("nbf within leeway", with(json!({"nbf": now + 10}))),
        ("aud array", with(json!({"aud": ["other", AUDIENCE]}))),
        (
            "fractional exp",
            with(json!({"exp": (now + 300) as f64 + 0.5})),
        ),
    ] {
        let (status, _, body) = call(
            &mut c,
            "/api/x",
            Some(&format!("Bearer {}", sign(hs, &claims))),
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    p.stop().await;
}

fn base64_raw(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_tokens_and_route_modes() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "").await;
    let mut c = p.h1().await;
    let token = sign(kit.key("hs256"), &good_claims("bob"));
    let bearer = format!("Bearer {token}");

    // Required route.
    assert_eq!(call(&mut c, "/api/x", None).await.0, 401);
    assert_eq!(
        call(&mut c, "/api/x", None).await.1.as_deref(),
        Some("Bearer")
    );
    assert_eq!(
        call(&mut c, "/api/x", Some("Basic dXNlcjpwdw=="))
            .await
            .1
            .as_deref(),
        Some("Bearer")
    );
    assert_eq!(
        call(&mut c, "/api/x", Some("Bearer")).await.1,
        invalid("malformed token")
    );
    assert_eq!(
        call(&mut c, "/api/x", Some("Bearer a b")).await.1,
        invalid("malformed token")
    );
    assert_eq!(
        call(&mut c, "/api/x", Some(&format!("bearer {token}")))
            .await
            .0,
        200
    );
    // Optional route: absent is fine, invalid is not.
    assert_eq!(call(&mut c, "/maybe/x", None).await.0, 200);
    assert_eq!(call(&mut c, "/maybe/x", Some(&bearer)).await.0, 200);
    assert_eq!(call(&mut c, "/maybe/x", Some("Bearer nope")).await.0, 401);
    // Off route: no token needed, none checked.
    assert_eq!(call(&mut c, "/open/x", Some("Bearer nope")).await.0, 200);

    // Two Authorization headers are ambiguous: refused.
    let req = c
        .request(http::Method::GET, "/api/x")
        .header("authorization", &bearer)
        .header("authorization", &bearer)
        .body(empty())
        .unwrap();
    assert_eq!(c.send_collect(req).await.0.status(), 401);
    // Reached the replica: the lower-case "bearer", both optional-route passes, the off route.
    assert_eq!(r.count(), 4);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_claim_headers_are_stripped_on_every_route() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "").await;
    let mut c = p.h1().await;
    let token = sign(kit.key("es256"), &good_claims("real-user"));
    for (path, auth) in [
        ("/api/x", Some(format!("Bearer {token}"))),
        ("/open/x", None),
        ("/maybe/x", None),
    ] {
        let mut b = c
            .request(http::Method::GET, path)
            .header("x-user-id", "admin")
            .header("x-user-scope", "everything");
        if let Some(a) = &auth {
            b = b.header("authorization", a);
        }
        let (resp, _) = c.send_collect(b.body(empty()).unwrap()).await;
        assert_eq!(resp.status(), 200, "{path}");
        let seen = r.seen();
        let h = &seen.last().unwrap().headers;
        let want = if auth.is_some() {
            Some("real-user")
        } else {
            None
        };
        assert_eq!(
            h.get("x-user-id").map(|v| v.to_str().unwrap()),
            want,
            "{path}"
        );
        assert_eq!(
            h.get_all("x-user-id").iter().count(),
            usize::from(want.is_some())
        );
        if auth.is_none() {
            assert!(h.get("x-user-scope").is_none(), "{path}");
        }
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jku_and_x5u_are_never_fetched() {
    // A listener that counts every connection: doorman must never dial it.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap = l.local_addr().unwrap();
    let dialed = std::sync::Arc::new(AtomicUsize::new(0));
    let d = dialed.clone();
    tokio::spawn(async move {
        while l.accept().await.is_ok() {
            d.fetch_add(1, Ordering::SeqCst);
        }
    });
    let kit = JwtKit::new();
    let (p, _r) = proxy(&kit, "").await;
    let mut c = p.h1().await;
    let hs = kit.key("hs256");
    let attacker = EncodingKey::from_secret(&[5u8; 48]);
    for (header, key, want) in [
        // Signed with the configured key: the URLs are ignored, the token is fine.
        (
            json!({"alg":"HS256","kid":"hs256","jku": format!("http://{trap}/jwks.json")}),
            &hs.encoding,
            200,
        ),
        (
            json!({"alg":"HS256","kid":"hs256","x5u": format!("http://{trap}/cert.pem")}),
            &hs.encoding,
            200,
        ),
        // Signed by an attacker who points at their own key set: refused.
        (
            json!({"alg":"HS256","jku": format!("http://{trap}/jwks.json")}),
            &attacker,
            401,
        ),
        (
            json!({"alg":"HS256","x5u": format!("http://{trap}/cert.pem")}),
            &attacker,
            401,
        ),
    ] {
        let token = sign_raw(&header, &good_claims("eve"), key, Algorithm::HS256);
        assert_eq!(
            call(&mut c, "/api/x", Some(&format!("Bearer {token}")))
                .await
                .0,
            want,
            "{header}"
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(dialed.load(Ordering::SeqCst), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_authorization_header_is_431_before_any_crypto() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "").await;
    let mut c = p.h1().await;
    let huge = format!("Bearer {}", "a".repeat(20_000));
    let (status, challenge, _) = call(&mut c, "/api/x", Some(&huge)).await;
    assert_eq!((status, challenge), (431, None));
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn strip_authorization_keeps_the_token_from_the_replica() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "strip_authorization = true").await;
    let mut c = p.h1().await;
    let token = sign(kit.key("eddsa"), &good_claims("carol"));
    assert_eq!(
        call(&mut c, "/api/x", Some(&format!("Bearer {token}")))
            .await
            .0,
        200
    );
    let seen = r.seen();
    assert!(seen[0].headers.get("authorization").is_none());
    assert_eq!(seen[0].headers["x-user-id"], "carol");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cached_token_still_has_its_times_checked() {
    // The verifier itself: a token verified once is served from the cache, but an expired
    // one is refused even from the cache.
    let kit = JwtKit::new();
    let pki = TestPki::new();
    let settings = doorman::config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n{}\n[upstreams.a]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
            cert_toml(&pki.leaf("l", &["localhost"]), &["localhost"]),
            kit.auth_toml("")
        ),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let v = doorman::auth::Verifier::new(settings.auth.as_ref().unwrap());
    let now = now();
    let mut claims = good_claims("dan");
    claims["exp"] = json!(now + 60);
    let token = sign(kit.key("es256"), &claims);
    let first = v.verify(&token, now).unwrap();
    let second = v.verify(&token, now).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &second),
        "second verification should be a cache hit"
    );
    // 60s + 30s leeway later, the cached entry is expired.
    assert_eq!(
        v.verify(&token, now + 90).unwrap_err(),
        doorman::auth::Reject::Expired
    );
    assert!(v.verify(&token, now + 89).is_ok());
}

//! JWT hardening, table-driven with real signed tokens: header or claims JSON that repeats a
//! member (at any depth) is refused, and `[auth] max_lifetime` caps `exp - iat`; a refused
//! token never reaches a replica and is never served from the verified-token cache.

mod support;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use doorman::auth::{Reject, Verifier};
use serde_json::json;
use support::jwt::*;
use support::*;

/// A token over exactly these header and claims bytes (duplicates cannot be written as a
/// `serde_json::Value`), properly signed with `key`.
fn sign_text(key: &Key, header: &str, claims: &str) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, key.alg).unwrap();
    format!("{message}.{sig}")
}

/// Valid claims as JSON text, with `extra` members spliced in after the first brace.
fn claims_text(sub: &str, extra: &str) -> String {
    let good = good_claims(sub).to_string();
    format!("{{{extra}{}", &good[1..])
}

fn header_text(key: &Key) -> String {
    format!(
        r#"{{"alg":"{:?}","typ":"JWT","kid":"{}"}}"#,
        key.alg, key.kid
    )
}

async fn proxy(kit: &JwtKit, auth_extra: &str) -> (TestProxy, Replica) {
    let r = Replica::start("r1").await;
    let rest = group_toml("api", &[r.addr], "")
        + &kit.auth_toml(auth_extra)
        + "[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = \"required\"\n";
    (TestProxy::start("", &rest).await, r)
}

/// Status and `WWW-Authenticate` of GET /api with `token`.
async fn call(c: &mut Client, token: &str) -> (u16, Option<String>) {
    let req = c
        .request(http::Method::GET, "/api")
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let (resp, _) = c.send_collect(req).await;
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status().as_u16(), challenge)
}

fn invalid(desc: &str) -> Option<String> {
    Some(format!(
        "Bearer error=\"invalid_token\", error_description=\"{desc}\""
    ))
}

/// A verifier built from `[auth]` as the proxy would build it.
fn verifier(kit: &JwtKit, auth_extra: &str) -> Verifier {
    let pki = TestPki::new();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}\n{}\n[upstreams.a]\nservers = [{{ address = \"127.0.0.1:1\" }}]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        cert_toml(&pki.leaf("l", &["localhost"]), &["localhost"]),
        kit.auth_toml(auth_extra)
    );
    let config = doorman::config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    Verifier::new(config.auth.as_ref().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_members_in_header_or_claims_are_refused() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "").await;
    let hs = kit.key("hs256");
    let es = kit.key("es256");
    let dup = invalid("duplicate JSON member");
    let cases: Vec<(&str, String, Option<String>)> = vec![
        (
            "sub twice, the last an admin",
            sign_text(
                hs,
                &header_text(hs),
                &claims_text("alice", r#""sub":"admin","#),
            ),
            dup.clone(),
        ),
        (
            "sub twice, the same value",
            sign_text(
                hs,
                &header_text(hs),
                &claims_text("alice", r#""sub":"alice","#),
            ),
            dup.clone(),
        ),
        (
            "sub again, written with an escape",
            sign_text(
                hs,
                &header_text(hs),
                &claims_text("alice", r#""s\u0075b":"admin","#),
            ),
            dup.clone(),
        ),
        (
            "exp twice",
            sign_text(
                es,
                &header_text(es),
                &claims_text("alice", r#""exp":99999999999,"#),
            ),
            dup.clone(),
        ),
        (
            "a nested object repeats a member",
            sign_text(
                hs,
                &header_text(hs),
                &claims_text("alice", r#""realm":{"roles":["user"],"roles":["admin"]},"#),
            ),
            dup.clone(),
        ),
        (
            "an object inside an array repeats a member",
            sign_text(
                hs,
                &header_text(hs),
                &claims_text("alice", r#""grants":[{"r":"a"},{"r":"b","r":"c"}],"#),
            ),
            dup.clone(),
        ),
        (
            "alg twice in the header",
            sign_text(
                hs,
                r#"{"alg":"none","alg":"HS256","kid":"hs256"}"#,
                &good_claims("alice").to_string(),
            ),
            dup.clone(),
        ),
        (
            "kid twice in the header",
            sign_text(
                es,
                r#"{"alg":"ES256","kid":"hs256","kid":"es256"}"#,
                &good_claims("alice").to_string(),
            ),
            dup.clone(),
        ),
        // Distinct members that merely look alike stay valid (case differs).
        (
            "Sub and sub",
            sign_text(
                hs,
                &header_text(hs),
                &claims_text("alice", r#""Sub":"admin","#),
            ),
            None,
        ),
    ];
    let mut c = p.h1().await;
    for (name, token, want) in &cases {
        // Twice: a second look (a cache hit, were it cached) answers the same.
        for round in 0..2 {
            let (status, challenge) = call(&mut c, token).await;
            let status_want = if want.is_some() { 401 } else { 200 };
            assert_eq!(
                (status, &challenge),
                (status_want, want),
                "case {name:?}, round {round}"
            );
        }
    }
    // Only the one valid case reached the replica, twice.
    assert_eq!(r.count(), 2);
    assert!(r.seen().iter().all(|s| s.headers["x-user-id"] == "alice"));
    p.stop().await;
}

#[test]
fn a_token_refused_for_a_repeated_member_is_never_cached() {
    let kit = JwtKit::new();
    let v = verifier(&kit, "");
    let hs = kit.key("hs256");
    let token = sign_text(
        hs,
        &header_text(hs),
        &claims_text("alice", r#""sub":"admin","#),
    );
    for _ in 0..3 {
        let (verdict, cached) = v.verify_traced(&token, now());
        assert_eq!(
            (verdict.map(|_| ()), cached),
            (Err(Reject::DuplicateMember), false)
        );
    }
    assert_eq!(Reject::DuplicateMember.label(), "duplicate_member");
}

#[tokio::test(flavor = "multi_thread")]
async fn max_lifetime_caps_exp_minus_iat() {
    let kit = JwtKit::new();
    let (p, r) = proxy(&kit, "max_lifetime = \"1h\"").await;
    let hs = kit.key("hs256");
    let now = now();
    let with = |iat: Option<u64>, exp: u64| {
        let mut c = good_claims("alice");
        c["exp"] = json!(exp);
        match iat {
            Some(iat) => c["iat"] = json!(iat),
            None => {
                c.as_object_mut().unwrap().remove("iat");
            }
        }
        sign(hs, &c)
    };
    let too_long = invalid("token lifetime too long");
    let cases: Vec<(&str, String, u16, Option<String>)> = vec![
        (
            "exactly the maximum",
            with(Some(now), now + 3600),
            200,
            None,
        ),
        ("one second under", with(Some(now), now + 3599), 200, None),
        (
            "one second over",
            with(Some(now), now + 3601),
            401,
            too_long.clone(),
        ),
        (
            "issued long ago, expiring soon",
            with(Some(now - 7200), now + 60),
            401,
            too_long.clone(),
        ),
        (
            "a year",
            with(Some(now), now + 365 * 86400),
            401,
            too_long.clone(),
        ),
        (
            "fractional, over by half a second",
            {
                let mut c = good_claims("alice");
                c["iat"] = json!(now);
                c["exp"] = json!((now + 3601) as f64 + 0.5);
                sign(hs, &c)
            },
            401,
            too_long.clone(),
        ),
        ("no iat", with(None, now + 60), 401, invalid("missing iat")),
    ];
    let mut c = p.h2().await;
    for (name, token, status, want) in &cases {
        for round in 0..2 {
            let (got, challenge) = call(&mut c, token).await;
            assert_eq!((got, &challenge), (*status, want), "{name}, round {round}");
        }
    }
    assert_eq!(r.count(), 4, "two accepted cases, twice each");
    p.stop().await;
}

#[test]
fn without_max_lifetime_a_long_token_or_one_without_iat_passes() {
    let kit = JwtKit::new();
    let v = verifier(&kit, "");
    let es = kit.key("es256");
    let now = now();
    let mut claims = good_claims("alice");
    claims.as_object_mut().unwrap().remove("iat");
    claims["exp"] = json!(now + 365 * 86400);
    assert!(v.verify(&sign(es, &claims), now).is_ok());

    // With it set, the refusal is time-independent: never cached, the same every time.
    let capped = verifier(&kit, "max_lifetime = \"10m\"");
    let token = sign(es, &claims);
    for _ in 0..2 {
        let (verdict, cached) = capped.verify_traced(&token, now);
        assert_eq!(
            (verdict.map(|_| ()), cached),
            (Err(Reject::MissingIat), false)
        );
    }
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 601);
    assert_eq!(
        capped.verify(&sign(es, &claims), now).map(|_| ()),
        Err(Reject::Lifetime)
    );
    claims["exp"] = json!(now + 600);
    let ok = sign(es, &claims);
    assert!(capped.verify(&ok, now).is_ok());
    assert!(capped.verify_traced(&ok, now).1, "a valid token is cached");
    assert_eq!(Reject::Lifetime.label(), "lifetime_too_long");
    assert_eq!(Reject::MissingIat.label(), "missing_iat");
}

//! Adversarial tests of `[auth.jwks]`: algorithm confusion between static and set keys, kid
//! shadowing, tokens without a kid, headers that name keys (jku/x5u/jwk), the fetch rules
//! (https only, loopback http, redirects, the 1 MiB cap while streaming, the timeout up to
//! the last byte, discovery's jwks_uri), generations and the verified-token cache, reloads
//! (a failed one must change nothing; the old task ends), and the parser on hostile input.
//! Real sockets on 127.0.0.1 only; no wall-clock assertion; every wait is bounded.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use support::idp::{Idp, Mode, SigningKey};
use support::jwks::*;
use support::jwt::{ISSUER, good_claims, sign_raw};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ALGS: &str = "algorithms = [\"RS256\", \"PS256\", \"ES256\", \"EdDSA\"]";
const MIB: usize = 1024 * 1024;

// ------------------------------------------------------------------ helpers

/// `[auth.jwks]` fetching the provider's set by URL with this file's algorithms.
fn by_url(idp: &Idp, extra: &str) -> String {
    by_url_with(idp, ALGS, extra)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `key`'s JWK without its kid.
fn kidless(key: &SigningKey) -> Value {
    let mut jwk = key.jwk.clone();
    jwk.as_object_mut().unwrap().remove("kid");
    jwk
}

/// A token with exactly `header`, signed by `key` under `alg`.
fn token_with(header: Value, key: &EncodingKey, alg: Algorithm) -> String {
    sign_raw(&header, &good_claims("mallory"), key, alg)
}

/// An RSA key pair: (encoding key, public JWK with kid and alg RS256).
fn rsa_signing(kid: &str) -> SigningKey {
    SigningKey::rsa(kid)
}

// ------------------------------------------------------- a plain-HTTP stub server

/// What the stub answers on one path.
#[derive(Clone)]
enum Reply {
    /// These bytes (a whole response), then the connection is closed.
    Whole(Vec<u8>),
    /// `head`, then `chunk` up to `times` times `pause` apart, then the connection is held.
    Stream {
        head: Vec<u8>,
        chunk: Vec<u8>,
        times: usize,
        pause: Duration,
    },
}

fn json_reply(status: u16, body: &[u8]) -> Reply {
    let mut out = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Reply::Whole(out)
}

type Route = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1 (doorman may fetch over plain http from loopback),
/// answering by path and counting requests per path.
struct Stub {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stub {
    async fn start(route: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Stub {
        let route: Route = Arc::new(route);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let task = {
            let hits = hits.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((mut tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (route, hits) = (route.clone(), hits.clone());
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                            match tcp.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head).into_owned();
                        let path = text.split(' ').nth(1).unwrap_or("").to_string();
                        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
                        match route(&path) {
                            Reply::Whole(bytes) => {
                                let _ = tcp.write_all(&bytes).await;
                                let _ = tcp.shutdown().await;
                            }
                            Reply::Stream {
                                head,
                                chunk,
                                times,
                                pause,
                            } => {
                                if tcp.write_all(&head).await.is_err() {
                                    return;
                                }
                                for _ in 0..times {
                                    if tcp.write_all(&chunk).await.is_err() {
                                        return;
                                    }
                                    if !pause.is_zero() {
                                        tokio::time::sleep(pause).await;
                                    }
                                }
                                tokio::time::sleep(Duration::from_secs(60)).await;
                            }
                        }
                    });
                }
            })
        };
        Stub { addr, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.hits.lock().unwrap().values().sum()
    }
}

/// `[auth.jwks]` fetching `url` over plain http (loopback).
fn plain(url: &str, extra: &str) -> String {
    format!("url = \"{url}\"\n{ALGS}\n{extra}\n")
}

// ------------------------------------------------------------ findings / bypasses

/// The provider drops key B from a set of key-id-less keys, publishing A twice instead:
/// the refresh must put the new set in force, and B must stop verifying. `Shared::apply`
/// decides "same set" by `len` + "every new key is in the old set", which holds for
/// [A, A] against [A, B]: the old set (with B) stays in force, and so does B's cached token.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_dropped_for_a_duplicate_of_another_stops_verifying() {
    let idp = Idp::start().await;
    let (a, b) = (SigningKey::es256("a"), SigningKey::es256("b"));
    idp.serve_json(vec![kidless(&a), kidless(&b)]);
    let extra = "refresh = \"200ms\"\nmin_refresh = \"100ms\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    let b_token = token_with(json!({"alg": "ES256", "typ": "JWT"}), &b.encoding, b.alg);
    assert_eq!(call(&p, &b_token).await, OK);
    idp.serve_json(vec![kidless(&a), kidless(&a)]);
    let seen = idp.hits();
    // Two more fetches started: the first one (after the change) has finished.
    eventually("a refresh after B was dropped", || async {
        idp.hits() >= seen + 2
    })
    .await;
    assert_eq!(call(&p, &b_token).await, refused("invalid signature"));
    p.stop().await;
}

/// A reload that fails (here: its new admin_listen is taken) must leave everything as it
/// was. `Verifier::rebuild` calls `set_static_kids` on the running key set before the
/// reload is certain, so the failed reload's `[[auth.keys]]` kid "k" starts hiding the
/// provider's key "k" at the next refresh.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_reload_leaves_the_running_set_as_it_was() {
    let idp = Idp::start().await;
    let (k, other) = (SigningKey::es256("k"), SigningKey::es256("other"));
    idp.serve(&[&k, &other]);
    let r = Replica::start("r").await;
    let jwks = by_url(&idp, "refresh = \"200ms\"\nmin_refresh = \"100ms\"");
    let good_rest = rest(&r, &auth(ISSUER, "", &jwks));
    let p = TestProxy::start_reloadable("", &good_rest).await;
    wait_ready(&p).await;
    let token = k.token(&good_claims("alice"));
    assert_eq!(call(&p, &token).await, OK);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hs"), [b's'; 40]).unwrap();
    let statik = format!(
        "[[auth.keys]]\nkid = \"k\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
        dir.path().join("hs").display()
    );
    let bad_rest = rest(&r, &(auth(ISSUER, "", &jwks) + &statik));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = p.text.replace(&good_rest, &bad_rest).replacen(
        "admin_listen = \"127.0.0.1:0\"",
        &format!("admin_listen = \"{}\"", taken.local_addr().unwrap()),
        1,
    );
    assert_ne!(text, p.text);
    let status = p.reload_text(&text).await;
    assert_eq!(status.result, "failure", "{:?}", status.errors);

    let seen = idp.hits();
    eventually("two refreshes after the failed reload", || async {
        idp.hits() >= seen + 2
    })
    .await;
    assert_eq!(call(&p, &token).await, OK);
    p.stop().await;
}

/// A reload that changes only how often the set is refreshed starts a new, empty key set;
/// with the provider down at that moment every token of the set is refused, though doorman
/// held a good set ("the last good set is kept when a fetch fails").
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_only_retimes_the_set_keeps_its_keys_while_the_provider_is_down() {
    let idp = Idp::start().await;
    let key = SigningKey::rsa("k");
    idp.serve(&[&key]);
    let r = Replica::start("r").await;
    let jwks = |refresh: &str| {
        by_url(
            &idp,
            &format!("refresh = \"{refresh}\"\nmin_refresh = \"100ms\"\ntimeout = \"300ms\""),
        )
    };
    let p = TestProxy::start_reloadable("", &rest(&r, &auth(ISSUER, "", &jwks("10m")))).await;
    wait_ready(&p).await;
    let token = key.token(&good_claims("alice"));
    assert_eq!(call(&p, &token).await, OK);
    idp.set_mode(Mode::Fail);
    let reloaded = p
        .reload_rest(&rest(&r, &auth(ISSUER, "", &jwks("11m"))))
        .await;
    assert_eq!(reloaded.result, "ok", "{:?}", reloaded.errors);
    let seen = idp.hits();
    eventually("the new set's fetch", || async { idp.hits() > seen }).await;
    assert_eq!(call(&p, &token).await, OK);
    assert_eq!(admin(&p, "/ready").await.0, 200);
    p.stop().await;
}

/// The project refuses ambiguous JSON in tokens (a repeated member); a JWK that repeats
/// `alg` or `kid` is just as ambiguous (serde_json keeps the last, other readers the first)
/// and should be skipped rather than read one way.
#[test]
fn a_jwk_repeating_a_member_is_skipped() {
    let k = SigningKey::rsa("dup");
    let n = k.jwk["n"].as_str().unwrap();
    let e = k.jwk["e"].as_str().unwrap();
    for doc in [
        format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"dup","alg":"PS256","alg":"RS256","n":"{n}","e":"{e}"}}]}}"#
        ),
        format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"a","kid":"b","alg":"RS256","n":"{n}","e":"{e}"}}]}}"#
        ),
    ] {
        let p =
            doorman::config::parse_key_set(doc.as_bytes(), &[Algorithm::RS256, Algorithm::PS256]);
        let usable = p.map(|s| s.keys.len()).unwrap_or(0);
        assert_eq!(usable, 0, "{doc}");
    }
}

// ------------------------------------------------- regression: verification rules

/// A token without a kid is tried only against keys pinned to its `alg`: a set key pinned
/// to RS256 never verifies a PS256 signature of its own private key, an HMAC made with its
/// public modulus, or `none`.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_a_kid_cannot_choose_the_algorithm_of_a_set_key() {
    let idp = Idp::start().await;
    let rsa = rsa_signing("r");
    idp.serve_json(vec![kidless(&rsa)]);
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, ""))).await;
    wait_ready(&p).await;
    // The genuine kid-less RS256 token verifies.
    let good = sign_raw(
        &json!({"alg": "RS256"}),
        &good_claims("alice"),
        &rsa.encoding,
        Algorithm::RS256,
    );
    assert_eq!(call(&p, &good).await, OK);
    // PS256 (allowed in [auth.jwks] algorithms) signed by the same RSA key.
    let ps = token_with(json!({"alg": "PS256"}), &rsa.encoding, Algorithm::PS256);
    assert_eq!(call(&p, &ps).await, refused("algorithm not allowed"));
    // HS256 keyed with the public modulus, and with the JWK's JSON.
    let n = URL_SAFE_NO_PAD
        .decode(rsa.jwk["n"].as_str().unwrap())
        .unwrap();
    for secret in [n, rsa.jwk.to_string().into_bytes()] {
        let hs = token_with(
            json!({"alg": "HS256"}),
            &EncodingKey::from_secret(&secret),
            Algorithm::HS256,
        );
        assert_eq!(call(&p, &hs).await, refused("algorithm not allowed"));
    }
    // alg none / None / empty signature.
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg}).to_string().as_bytes());
        let claims = b64(good_claims("mallory").to_string().as_bytes());
        for token in [
            format!("{header}.{claims}."),
            format!("{header}.{claims}.AAAA"),
        ] {
            assert_eq!(call(&p, &token).await.0, 401, "{token}");
        }
    }
    // RS256 with a crit header is refused even with a good signature.
    let crit = token_with(
        json!({"alg": "RS256", "crit": ["exp"], "exp": 1}),
        &rsa.encoding,
        Algorithm::RS256,
    );
    assert_eq!(
        call(&p, &crit).await,
        refused("unsupported critical header")
    );
    assert_eq!(idp.hits(), 1);
    p.stop().await;
}

/// A kid in `[[auth.keys]]` and in the set is the static key's: the provider's key under
/// that kid never verifies, and the kid never triggers an early fetch.
#[tokio::test(flavor = "multi_thread")]
async fn a_static_kid_shadows_the_same_kid_in_the_set() {
    let idp = Idp::start().await;
    let theirs = SigningKey::es256("shared");
    idp.serve(&[&theirs, &SigningKey::es256("other")]);
    let dir = tempfile::tempdir().unwrap();
    let secret = [b'q'; 40];
    std::fs::write(dir.path().join("hs"), secret).unwrap();
    let statik = format!(
        "[[auth.keys]]\nkid = \"shared\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\n",
        dir.path().join("hs").display()
    );
    let extra = "refresh = \"10m\"\nmin_refresh = \"10m\"";
    let (p, _r) = start(&(auth(ISSUER, "", &by_url(&idp, extra)) + &statik)).await;
    wait_ready(&p).await;
    assert_eq!(
        call(&p, &theirs.token(&good_claims("x"))).await,
        refused("algorithm not allowed")
    );
    let hs = sign_raw(
        &json!({"alg": "HS256", "kid": "shared"}),
        &good_claims("svc"),
        &EncodingKey::from_secret(&secret),
        Algorithm::HS256,
    );
    assert_eq!(call(&p, &hs).await, OK);
    // The shadowed key is not in the set in force.
    let set = key_set(&p).await;
    let kids: Vec<&str> = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, ["other"]);
    assert_eq!(idp.hits(), 1);
    p.stop().await;
}

/// jku, x5u and jwk in a token header are never fetched nor used: an attacker's embedded
/// key and URLs get a 401 and no request.
#[tokio::test(flavor = "multi_thread")]
async fn key_naming_headers_are_never_followed() {
    let idp = Idp::start().await;
    let real = SigningKey::es256("real");
    idp.serve(&[&real]);
    let attacker = SigningKey::es256("attacker");
    let stub = Stub::start(move |_| json_reply(200, b"{}")).await;
    let stub_set = {
        let attacker_jwk = attacker.jwk.clone();
        Stub::start(move |_| {
            json_reply(
                200,
                json!({ "keys": [attacker_jwk] }).to_string().as_bytes(),
            )
        })
        .await
    };
    let extra = "refresh = \"10m\"\nmin_refresh = \"10m\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    let mut jwk = attacker.jwk.clone();
    jwk.as_object_mut().unwrap().remove("kid");
    for header in [
        json!({"alg": "ES256", "jwk": jwk}),
        json!({"alg": "ES256", "jku": stub_set.url("/certs")}),
        json!({"alg": "ES256", "x5u": stub.url("/cert.pem")}),
        json!({"alg": "ES256", "jku": stub_set.url("/certs"), "kid": "attacker"}),
    ] {
        let token = token_with(header.clone(), &attacker.encoding, Algorithm::ES256);
        let want = if header.get("kid").is_some() {
            refused("unknown key id")
        } else {
            refused("invalid signature")
        };
        assert_eq!(call(&p, &token).await, want, "{header}");
    }
    assert_eq!((stub.total_hits(), stub_set.total_hits()), (0, 0));
    // The one early fetch for the unknown kid went to the provider.
    assert_eq!(idp.hits(), 2);
    p.stop().await;
}

/// A flood of unknown kids while the provider hangs: one early fetch, every request
/// answered 401 (bounded by the timeout), a good token still accepted.
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_kid_flood_against_a_hanging_provider_costs_one_fetch() {
    let idp = Idp::start().await;
    let key = SigningKey::es256("real");
    idp.serve(&[&key]);
    let extra = "refresh = \"10m\"\nmin_refresh = \"10m\"\ntimeout = \"300ms\"";
    let (p, _r) = start(&auth(ISSUER, "", &by_url(&idp, extra))).await;
    wait_ready(&p).await;
    idp.set_mode(Mode::Hang);
    let p = Arc::new(p);
    let flood: Vec<_> = (0..30)
        .map(|i| {
            let (p, token) = (
                p.clone(),
                key.token_as(&format!("flood-{i}"), &good_claims("x")),
            );
            tokio::spawn(async move { call(&p, &token).await })
        })
        .collect();
    for answer in flood {
        assert_eq!(answer.await.unwrap(), refused("unknown key id"));
    }
    assert_eq!(idp.hits(), 2);
    assert_eq!(call(&p, &key.token(&good_claims("x"))).await, OK);
    Arc::into_inner(p).unwrap().stop().await;
}

// ------------------------------------------------------------- regression: fetch

#[test]
fn only_https_or_plain_http_to_exact_loopback_literals_is_allowed() {
    for (url, ok) in [
        ("https://idp.example.com/certs", true),
        ("HTTPS://idp.example.com/certs", true),
        ("http://127.0.0.1:1/certs", true),
        ("HTTP://127.0.0.1:1/certs", true),
        ("http://[::1]:1/certs", true),
        ("http://127.0.0.1.evil.com/certs", false),
        ("http://127.0.0.1.nip.io/certs", false),
        ("http://[::ffff:7f00:1]/certs", false),
        ("http://[::ffff:127.0.0.1]/certs", false),
        ("http://localhost/certs", false),
        ("http://127.1/certs", false),
        ("http://2130706433/certs", false),
        ("http://0x7f000001/certs", false),
        ("http://127.0.0.2/certs", false),
        ("http://0.0.0.0/certs", false),
        ("HTTP://evil.example/certs", false),
        ("https://a@b/certs", false),
        ("https://user:pw@idp.example.com/certs", false),
        ("http://127.0.0.1@evil.example/certs", false),
        ("http://evil.example@127.0.0.1/certs", false),
        ("http://127.0.0.1:80@evil.example/certs", false),
        ("https:///certs", false),
        ("file:///etc/passwd", false),
        ("ws://127.0.0.1/certs", false),
        ("/certs", false),
    ] {
        let allowed = url
            .parse::<http::Uri>()
            .ok()
            .is_some_and(|u| doorman::config::url_allowed(&u).is_ok());
        assert_eq!(allowed, ok, "{url}");
    }
    // Not even parseable: IDN and spaces.
    for url in ["https://ïdp.example/certs", "http://127.0.0.1 .evil/certs"] {
        let allowed = url
            .parse::<http::Uri>()
            .ok()
            .is_some_and(|u| doorman::config::url_allowed(&u).is_ok());
        assert!(!allowed, "{url}");
    }
}

/// A 3xx is a failure: its Location is never followed.
#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed() {
    let key = SigningKey::es256("k");
    let body = json!({ "keys": [key.jwk] }).to_string();
    let stub = Stub::start(move |path| match path {
        "/real" => json_reply(200, body.as_bytes()),
        _ => Reply::Whole(
            b"HTTP/1.1 302 Found\r\nlocation: /real\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                .to_vec(),
        ),
    })
    .await;
    let (p, _r) = start(&auth(ISSUER, "", &plain(&stub.url("/certs"), ""))).await;
    wait_error(&p, "the provider answered 302 (only 200 is a key set)").await;
    assert_eq!(stub.hits("/real"), 0);
    assert_eq!(admin(&p, "/ready").await.0, 503);
    p.stop().await;
}

/// A body with no length that never ends is cut at 1 MiB, not read until the timeout.
#[tokio::test(flavor = "multi_thread")]
async fn an_endless_body_is_cut_at_the_cap_while_streaming() {
    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
    chunk.extend(std::iter::repeat_n(b' ', 64 * 1024));
    chunk.extend_from_slice(b"\r\n");
    let stub = Stub::start(move |_| Reply::Stream {
        head: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
        chunk: chunk.clone(),
        times: 64,
        pause: Duration::ZERO,
    })
    .await;
    let jwks = plain(&stub.url("/certs"), "timeout = \"60s\"");
    let (p, _r) = start(&auth(ISSUER, "", &jwks)).await;
    wait_error(&p, "the answer is over 1048576 bytes").await;
    let (_, metrics) = admin(&p, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("doorman_jwks_fetches_total{outcome=\"too_large\"} ")),
        "{metrics}"
    );
    p.stop().await;
}

/// A valid set padded to exactly 1 MiB loads; one byte more is refused, declared or not.
#[tokio::test(flavor = "multi_thread")]
async fn the_size_cap_is_exactly_one_mebibyte() {
    let key = SigningKey::es256("k");
    let doc = json!({ "keys": [key.jwk] }).to_string();
    let padded = |len: usize| {
        let mut b = doc.clone().into_bytes();
        b.resize(len, b' ');
        b
    };
    let (at, over) = (padded(MIB), padded(MIB + 1));
    let chunked = |body: &[u8]| {
        let mut out =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
        out.extend(format!("{:x}\r\n", body.len()).into_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n0\r\n\r\n");
        Reply::Whole(out)
    };
    let (at_c, over_c) = (chunked(&at), chunked(&over));
    let (at_l, over_l) = (json_reply(200, &at), json_reply(200, &over));
    let stub = Stub::start(move |path| match path {
        "/at-length" => at_l.clone(),
        "/over-length" => over_l.clone(),
        "/at-chunked" => at_c.clone(),
        _ => over_c.clone(),
    })
    .await;
    for (path, loads) in [
        ("/at-length", true),
        ("/at-chunked", true),
        ("/over-length", false),
        ("/over-chunked", false),
    ] {
        let (p, _r) = start(&auth(ISSUER, "", &plain(&stub.url(path), ""))).await;
        if loads {
            wait_ready(&p).await;
            assert_eq!(call(&p, &key.token(&good_claims("a"))).await, OK, "{path}");
        } else {
            wait_error(&p, "the answer is over 1048576 bytes").await;
            assert_eq!(admin(&p, "/ready").await.0, 503, "{path}");
        }
        p.stop().await;
    }
}

/// The timeout covers the body up to its last byte: a provider that dribbles fails it.
#[tokio::test(flavor = "multi_thread")]
async fn a_dribbling_provider_is_cut_by_the_timeout() {
    let stub = Stub::start(|_| Reply::Stream {
        head: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n"
            .to_vec(),
        chunk: b" ".to_vec(),
        times: 5000,
        pause: Duration::from_millis(20),
    })
    .await;
    let jwks = plain(&stub.url("/certs"), "timeout = \"300ms\"");
    let (p, _r) = start(&auth(ISSUER, "", &jwks)).await;
    wait_error(&p, "no complete answer within the timeout").await;
    p.stop().await;
}

/// The discovery document's jwks_uri obeys the same rules as a configured url.
#[tokio::test(flavor = "multi_thread")]
async fn a_discovered_jwks_uri_is_held_to_the_url_rules() {
    for (jwks_uri, why) in [
        (
            "http://idp.example.com/certs",
            "plain http:// is only allowed to 127.0.0.1 or [::1]; use https://",
        ),
        (
            "http://127.0.0.1.evil.com/certs",
            "plain http:// is only allowed to 127.0.0.1 or [::1]; use https://",
        ),
        (
            "http://localhost/certs",
            "plain http:// is only allowed to 127.0.0.1 or [::1]; use https://",
        ),
        (
            "https://u:p@idp.example.com/certs",
            "a URL with credentials is not supported",
        ),
        ("ftp://idp.example.com/certs", "the scheme must be https://"),
        ("/certs", "not an absolute URL"),
    ] {
        let issuer: Arc<Mutex<String>> = Arc::default();
        let stub = {
            let issuer = issuer.clone();
            let jwks_uri = jwks_uri.to_string();
            Stub::start(move |path| match path {
                "/.well-known/openid-configuration" => {
                    let doc = json!({"issuer": *issuer.lock().unwrap(), "jwks_uri": jwks_uri});
                    json_reply(200, doc.to_string().as_bytes())
                }
                _ => json_reply(404, b"{}"),
            })
            .await
        };
        *issuer.lock().unwrap() = stub.url("");
        let jwks = format!("discovery = true\n{ALGS}\n");
        let (p, _r) = start(&auth(&stub.url(""), "", &jwks)).await;
        wait_error(&p, &format!("discovery: jwks_uri {jwks_uri:?}: {why}")).await;
        assert_eq!(
            stub.total_hits(),
            stub.hits("/.well-known/openid-configuration")
        );
        assert_eq!(admin(&p, "/ready").await.0, 503);
        p.stop().await;
    }
}

/// A reload to another provider ends the old set's refresh task: the old provider is not
/// asked again.
#[tokio::test(flavor = "multi_thread")]
async fn a_replaced_set_stops_fetching() {
    let (one, two) = (Idp::start().await, Idp::start().await);
    let key = SigningKey::es256("k");
    one.serve(&[&key]);
    two.serve(&[&key]);
    let r = Replica::start("r").await;
    let fast = "refresh = \"100ms\"\nmin_refresh = \"50ms\"";
    let p =
        TestProxy::start_reloadable("", &rest(&r, &auth(ISSUER, "", &by_url(&one, fast)))).await;
    wait_ready(&p).await;
    eventually("the first provider refreshed", || async { one.hits() >= 3 }).await;
    let reloaded = p
        .reload_rest(&rest(&r, &auth(ISSUER, "", &by_url(&two, fast))))
        .await;
    assert_eq!(reloaded.result, "ok", "{:?}", reloaded.errors);
    eventually("the second provider used", || async { two.hits() >= 1 }).await;
    let before = one.hits();
    let seen = two.hits();
    eventually("the second provider refreshed", || async {
        two.hits() >= seen + 5
    })
    .await;
    // One fetch of the old task may have been under way when it was told to stop.
    assert!(one.hits() <= before + 1, "{} > {before} + 1", one.hits());
    assert_eq!(call(&p, &key.token(&good_claims("a"))).await, OK);
    p.stop().await;
}

// ------------------------------------------------------------- regression: parser

/// Hostile documents never panic the parser and never yield a usable key.
#[test]
fn hostile_documents_neither_panic_nor_load() {
    let rsa = SigningKey::rsa("x");
    let n = rsa.jwk["n"].as_str().unwrap().to_string();
    let n_bytes = URL_SAFE_NO_PAD.decode(&n).unwrap();
    // A 2040-bit modulus behind one leading zero byte: 256 bytes long, under 2048 bits.
    let mut short = vec![0u8];
    short.extend_from_slice(&n_bytes[1..]);
    short[1] |= 0x80;
    let ec = SigningKey::es256("e");
    let x = ec.jwk["x"].as_str().unwrap().to_string();
    let y = ec.jwk["y"].as_str().unwrap().to_string();
    let mut y_flipped = URL_SAFE_NO_PAD.decode(&y).unwrap();
    y_flipped[31] ^= 1;
    let entries = [
        json!({"kty": "RSA", "kid": "a", "alg": "RS256", "n": b64(&short), "e": "AQAB"}),
        json!({"kty": "RSA", "kid": "b", "alg": "RS256", "n": n, "e": "65537"}),
        json!({"kty": "RSA", "kid": "c", "alg": "RS256", "n": n, "e": 65537}),
        json!({"kty": "RSA", "kid": "d", "alg": "RS256", "n": n, "e": "AQAB", "use": ["sig"]}),
        json!({"kty": "RSA", "kid": "e", "n": n, "e": "AQAB"}), // RS256 and PS256 allowed
        json!({"kty": "RSA", "kid": "f", "alg": "none", "n": n, "e": "AQAB"}),
        json!({"kty": "EC", "kid": "g", "crv": "P-256", "alg": "ES256", "x": x, "y": b64(&y_flipped)}),
        json!({"kty": "EC", "kid": "h", "crv": "P-256", "alg": "ES256", "x": format!("AA{x}"), "y": y}),
        json!({"kty": "EC", "kid": "i", "crv": "P-256", "alg": "ES256", "x": x}),
        json!({"kty": "OKP", "kid": "j", "crv": "Ed25519", "alg": "EdDSA", "x": b64(&[0; 33])}),
        json!({"kty": "OKP", "kid": "k", "crv": "Ed25519", "alg": "ES256", "x": b64(&[0; 32])}),
        json!({"kty": "oct", "kid": "l", "alg": "RS256", "k": b64(&[1; 32])}),
        json!({"kty": "RSA", "kid": "m", "alg": "RS256", "n": n, "e": "AQAB", "key_ops": ["sign"]}),
        json!({"kty": "RSA", "kid": "n", "alg": "RS256", "n": n, "e": "AQAB", "use": "enc"}),
        json!({"kty": "RSA", "kid": {"nested": "kid"}, "alg": "RS256", "n": n, "e": "AQAB"}),
    ];
    let allowed = [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ];
    let doc = json!({ "keys": entries }).to_string();
    let p = doorman::config::parse_key_set(doc.as_bytes(), &allowed).unwrap();
    assert_eq!(
        p.keys.len(),
        0,
        "{:?}",
        p.keys.iter().map(|k| &k.key.kid).collect::<Vec<_>>()
    );
    assert_eq!(p.skipped.len(), entries.len());
    assert!(p.skipped[0].why.contains("2040 bits"), "{:?}", p.skipped[0]);
    assert!(p.skipped[4].why.contains("ambiguous"), "{:?}", p.skipped[4]);

    // Whole documents that are not sets (or too deep), in any shape: an error, no panic.
    let mut docs: Vec<Vec<u8>> = vec![
        format!("{}{}", "{\"keys\":".repeat(10_000), "}".repeat(10_000)).into_bytes(),
        format!("{{\"keys\":[{}{}]}}", "[".repeat(200), "]".repeat(200)).into_bytes(),
        b"{\"keys\":[],\"keys\":{}}".to_vec(),
        b"{\"keys\":\"[]\"}".to_vec(),
        b"{\"keys\":[{\"kty\":\"RSA\",\"n\":\"\xff\xfe\",\"e\":\"AQAB\"}]}".to_vec(),
        b"\xef\xbb\xbf{\"keys\":[]}".to_vec(),
        b"{\"keys\":[1e999999]}".to_vec(),
        vec![0u8; 4096],
    ];
    docs.push(vec![b'['; MIB]);
    for doc in docs {
        let r = std::panic::catch_unwind(|| doorman::config::parse_key_set(&doc, &allowed));
        let r = r.unwrap_or_else(|_| {
            panic!(
                "panicked on {:?}",
                String::from_utf8_lossy(&doc[..doc.len().min(60)])
            )
        });
        assert!(r.map_or(true, |s| s.keys.is_empty()));
    }
}

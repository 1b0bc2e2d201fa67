//! The JWT verifier (`auth::Verifier`) with two fixed HMAC keys: HS256 without a kid and
//! HS384 with kid `k2`, issuer and audience required. Never panics, and every token it
//! accepts (signature, claims and times) is also accepted by `jsonwebtoken::decode` with the
//! same key, algorithm, issuer, audience and leeway.
//!
//! Input: a first byte, then either the token itself (first byte even) or, so that the
//! fuzzer reaches the header and claims rules past the signature, a header and claims
//! separated by a NUL byte that the harness encodes and signs (first byte odd; bit 1 picks
//! the key that signs).
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use doorman::auth::Verifier;
use doorman::config::{AuthSettings, JwtKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use libfuzzer_sys::fuzz_target;

const KEY1: &[u8] = b"doorman fuzz HS256 key: 32 bytes+";
const KEY2: &[u8] = b"doorman fuzz HS384 key, with a kid: 48 bytes long";
const ISSUER: &str = "doorman-fuzz";
const AUDIENCE: &str = "api";
const LEEWAY: u64 = 30;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    Verifier::new(&AuthSettings {
        issuer: Some(ISSUER.into()),
        audiences: Some(vec![AUDIENCE.into()]),
        leeway: Duration::from_secs(LEEWAY),
        require_jti: false,
        forward_claims: vec![
            ("sub".into(), http::HeaderName::from_static("x-user")),
            ("scope".into(), http::HeaderName::from_static("x-scope")),
        ],
        strip_authorization: true,
        cache_entries: 16,
        max_lifetime: None,
        keys: vec![
            JwtKey {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(KEY1),
            },
            JwtKey {
                kid: Some("k2".into()),
                algorithm: Algorithm::HS384,
                key: DecodingKey::from_secret(KEY2),
            },
        ],
        jwks: None,
    })
});

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = LEEWAY;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v
}

/// Whether jsonwebtoken accepts the token with one of the configured keys.
fn library_accepts(token: &str) -> Result<(), String> {
    let mut why = Vec::new();
    for (alg, key) in [(Algorithm::HS256, KEY1), (Algorithm::HS384, KEY2)] {
        match jsonwebtoken::decode::<serde_json::Value>(
            token,
            &DecodingKey::from_secret(key),
            &validation(alg),
        ) {
            Ok(_) => return Ok(()),
            Err(e) => why.push(format!("{alg:?}: {e:?}")),
        }
    }
    Err(why.join("; "))
}

fn signed(header: &[u8], claims: &[u8], second_key: bool) -> Option<String> {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let (alg, key) = match second_key {
        false => (Algorithm::HS256, KEY1),
        true => (Algorithm::HS384, KEY2),
    };
    let sig =
        jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(key), alg).ok()?;
    Some(format!("{message}.{sig}"))
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        let (header, claims) = match rest.iter().position(|&b| b == 0) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &b"{}"[..]),
        };
        match signed(header, claims, mode & 2 == 2) {
            Some(t) => t,
            None => return,
        }
    };
    let now = doorman::auth::unix_now();
    let Ok(verified) = VERIFIER.verify_uncached(&token) else {
        return;
    };
    if verified.check_time(now, LEEWAY).is_err() {
        return;
    }
    if let Err(why) = library_accepts(&token) {
        panic!(
            "doorman accepted a token jsonwebtoken refuses ({why}): {token}\nheader {}\nclaims {}",
            token
                .split('.')
                .next()
                .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
                .map(|h| String::from_utf8_lossy(&h).into_owned())
                .unwrap_or_default(),
            token
                .split('.')
                .nth(1)
                .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
                .map(|c| String::from_utf8_lossy(&c).into_owned())
                .unwrap_or_default(),
        );
    }
});

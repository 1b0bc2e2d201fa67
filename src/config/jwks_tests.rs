//! The JWKS parser against well-formed keys of every supported shape and a table of
//! adversarial documents and entries (keys generated here, none committed).

use std::sync::LazyLock;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use super::*;

const DEFAULT: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];
const ALL: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A public JWK (as JSON) for a fresh key of `alg`, without `alg` and `kid`.
fn public_jwk(alg: Algorithm) -> Value {
    let (rc, crv) = match alg {
        Algorithm::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, "P-256"),
        Algorithm::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, "P-384"),
        Algorithm::EdDSA => (&rcgen::PKCS_ED25519, "Ed25519"),
        _ => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
            let enc = EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap();
            let mut v = serde_json::to_value(Jwk::from_encoding_key(&enc, alg).unwrap()).unwrap();
            v.as_object_mut().unwrap().remove("alg");
            return v;
        }
    };
    let kp = rcgen::KeyPair::generate_for(rc).unwrap();
    let raw = kp.public_key_raw();
    if alg == Algorithm::EdDSA {
        return json!({"kty": "OKP", "crv": crv, "x": b64(raw)});
    }
    // The uncompressed point: 0x04, x, y.
    let (x, y) = raw[1..].split_at((raw.len() - 1) / 2);
    json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)})
}

static RSA: LazyLock<Value> = LazyLock::new(|| public_jwk(Algorithm::RS256));
static P256: LazyLock<Value> = LazyLock::new(|| public_jwk(Algorithm::ES256));
static P384: LazyLock<Value> = LazyLock::new(|| public_jwk(Algorithm::ES384));
static ED: LazyLock<Value> = LazyLock::new(|| public_jwk(Algorithm::EdDSA));

/// `base` with `patch` applied (null removes a member).
fn with(base: &Value, patch: Value) -> Value {
    let mut v = base.clone();
    for (k, p) in patch.as_object().unwrap() {
        if p.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = p.clone();
        }
    }
    v
}

fn set(keys: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

/// Usable keys as (kid, alg), and the reasons for the skipped ones, by kid.
fn parsed(keys: Vec<Value>, allowed: &[Algorithm]) -> (Vec<(String, Algorithm)>, Vec<Skipped>) {
    let p = parse_key_set(&set(keys), allowed).unwrap();
    let usable = p
        .keys
        .iter()
        .map(|k| (k.key.kid.clone().unwrap_or_default(), k.key.algorithm))
        .collect();
    (usable, p.skipped)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn every_supported_shape_loads_pinned_to_its_algorithm() {
    let (usable, skipped) = parsed(
        vec![
            with(&RSA, json!({"kid": "rs", "alg": "RS256", "use": "sig"})),
            with(&RSA, json!({"kid": "ps", "alg": "PS256"})),
            with(&P256, json!({"kid": "es", "key_ops": ["verify"]})),
            with(&P384, json!({"kid": "es384"})),
            with(&ED, json!({"kid": "ed", "alg": "EdDSA"})),
        ],
        ALL,
    );
    assert_eq!(skipped, []);
    assert_eq!(
        usable,
        [
            ("rs".into(), Algorithm::RS256),
            ("ps".into(), Algorithm::PS256),
            ("es".into(), Algorithm::ES256),
            ("es384".into(), Algorithm::ES384),
            ("ed".into(), Algorithm::EdDSA),
        ]
    );
}

#[test]
fn a_key_without_alg_takes_the_one_algorithm_its_type_implies() {
    let (usable, skipped) = parsed(vec![with(&RSA, json!({"kid": "a"}))], DEFAULT);
    assert_eq!(
        (usable, skipped),
        (vec![("a".into(), Algorithm::RS256)], vec![])
    );
    let (usable, skipped) = parsed(vec![with(&RSA, json!({"kid": "a"}))], ALL);
    assert_eq!(usable, []);
    assert!(skipped[0].why.contains("ambiguous"), "{skipped:?}");
    let (usable, skipped) = parsed(vec![with(&ED, json!({"kid": "e"}))], DEFAULT);
    assert_eq!(usable, []);
    assert!(skipped[0].why.contains("no algorithm"), "{skipped:?}");
}

#[test]
fn leading_zeros_in_an_rsa_modulus_are_tolerated() {
    let n = URL_SAFE_NO_PAD.decode(RSA["n"].as_str().unwrap()).unwrap();
    let padded = [&[0u8, 0][..], &n].concat();
    let k = with(&RSA, json!({"kid": "z", "n": b64(&padded)}));
    let p = parse_key_set(&set(vec![k, with(&RSA, json!({"kid": "y"}))]), DEFAULT).unwrap();
    assert_eq!(p.keys.len(), 2);
    // The same key either way.
    assert_eq!(p.keys[0].material, p.keys[1].material);
}

#[test]
fn documents_that_are_not_key_sets_are_refused_whole() {
    for doc in [
        &b""[..],
        b"null",
        b"[]",
        b"{}",
        b"{\"keys\": {}}",
        b"{\"keys\": null}",
        b"{\"keys\": [}",
        b"\xff\xfe{\"keys\":[]}",
        b"<html>502 Bad Gateway</html>",
    ] {
        assert!(
            parse_key_set(doc, DEFAULT).is_err(),
            "{}",
            String::from_utf8_lossy(doc)
        );
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_key_set(deep.as_bytes(), DEFAULT).is_err());
    let empty = parse_key_set(b"{\"keys\": [], \"other\": 1}", DEFAULT).unwrap();
    assert!(empty.keys.is_empty() && empty.skipped.is_empty());
}

#[test]
fn adversarial_entries_are_each_skipped_with_their_reason() {
    let n1024 = b64(&[&[0xc5u8][..], &[0x5a; 127]].concat());
    let n = RSA["n"].as_str().unwrap().to_string();
    let x = P256["x"].as_str().unwrap().to_string();
    // (kid, entry, a word the reason must contain)
    let cases: Vec<(&str, Value, &str)> = vec![
        ("enc", with(&RSA, json!({"use": "enc"})), "enc"),
        ("odd-use", with(&RSA, json!({"use": "tls"})), "tls"),
        ("ops", with(&RSA, json!({"key_ops": ["encrypt"]})), "verify"),
        (
            "oct",
            json!({"kty": "oct", "k": b64(&[7; 32]), "alg": "HS256"}),
            "symmetric",
        ),
        ("oct-no-k", json!({"kty": "oct"}), "symmetric"),
        ("rsa1024", with(&RSA, json!({"n": n1024})), "1024 bits"),
        ("alg-out", with(&RSA, json!({"alg": "RS512"})), "not in"),
        (
            "alg-enc",
            with(&RSA, json!({"alg": "RSA-OAEP"})),
            "not a signature",
        ),
        (
            "alg-junk",
            with(&RSA, json!({"alg": "XX999"})),
            "not a signature",
        ),
        (
            "alg-hmac",
            with(&RSA, json!({"alg": "HS256"})),
            "does not fit",
        ),
        (
            "alg-curve",
            with(&P256, json!({"alg": "ES384"})),
            "does not fit",
        ),
        ("no-n", with(&RSA, json!({"n": null})), "malformed RSA"),
        ("bad-n", with(&RSA, json!({"n": "!!!"})), "base64url"),
        (
            "padded-n",
            with(&RSA, json!({"n": format!("{n}==")})),
            "base64url",
        ),
        ("n-number", with(&RSA, json!({"n": 5})), "malformed"),
        ("e-even", with(&RSA, json!({"e": "AAI"})), "exponent"),
        ("e-one", with(&RSA, json!({"e": "AQ"})), "exponent"),
        ("e-empty", with(&RSA, json!({"e": ""})), "exponent"),
        ("e-huge", with(&RSA, json!({"e": b64(&[1; 9])})), "exponent"),
        (
            "n-huge",
            with(&RSA, json!({"n": b64(&[0xff; 1100])})),
            "at most",
        ),
        (
            "ec-short",
            with(&P256, json!({"x": b64(&[1; 31])})),
            "32 bytes",
        ),
        (
            "ec-off-curve",
            with(&P256, json!({"x": b64(&[0; 32]), "y": b64(&[0; 32])})),
            "malformed EC",
        ),
        ("ec-p521", with(&P256, json!({"crv": "P-521"})), "curve"),
        (
            "ec-k1",
            with(&P256, json!({"crv": "secp256k1"})),
            "malformed EC",
        ),
        ("ec-no-y", with(&P256, json!({"y": null})), "malformed EC"),
        (
            "ec-ed-curve",
            with(&P256, json!({"crv": "Ed25519"})),
            "curve",
        ),
        (
            "okp-x25519",
            with(&ED, json!({"crv": "X25519"})),
            "malformed OKP",
        ),
        ("okp-p256", with(&ED, json!({"crv": "P-256"})), "curve"),
        (
            "okp-short",
            with(&ED, json!({"x": b64(&[9; 31])})),
            "32 bytes",
        ),
        ("kty-odd", json!({"kty": "EC2", "x": x}), "unsupported kty"),
        ("no-kty", json!({"n": n, "e": "AQAB"}), "no kty"),
        ("kty-number", json!({"kty": 3}), "no kty"),
        ("use-number", with(&RSA, json!({"use": 1})), "malformed"),
        ("alg-number", with(&RSA, json!({"alg": 256})), "malformed"),
        (
            "ops-string",
            with(&RSA, json!({"key_ops": "verify"})),
            "malformed",
        ),
    ];
    let entries: Vec<Value> = cases
        .iter()
        .map(|(kid, e, _)| with(e, json!({ "kid": kid })))
        .chain([
            json!(1),
            json!("RSA"),
            json!(null),
            json!([]),
            with(&RSA, json!({"kid": 7})),
        ])
        .collect();
    let allowed = [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    let p = parse_key_set(&set(entries), &allowed).unwrap();
    assert_eq!(p.keys.len(), 0, "{:?}", p.keys);
    assert_eq!(p.skipped.len(), cases.len() + 5, "{:#?}", p.skipped);
    for ((kid, _, word), skipped) in cases.iter().zip(&p.skipped) {
        assert_eq!(skipped.kid.as_deref(), Some(*kid));
        assert!(
            skipped.why.contains(word),
            "{kid}: {:?} lacks {word:?}",
            skipped.why
        );
    }
    let tail: Vec<&str> = p.skipped[cases.len()..]
        .iter()
        .map(|s| s.why.as_str())
        .collect();
    assert_eq!(
        tail,
        [
            "not a JSON object",
            "not a JSON object",
            "not a JSON object",
            "not a JSON object",
            "malformed: kid is not a string"
        ]
    );
}

#[test]
fn skipped_entries_leave_the_rest_of_the_set_usable() {
    let (usable, skipped) = parsed(
        vec![
            with(&RSA, json!({"kid": "enc", "use": "enc"})),
            with(&RSA, json!({"kid": "good"})),
            json!({"kid": "junk", "kty": "RSA", "n": {}}),
        ],
        DEFAULT,
    );
    assert_eq!(usable, [("good".to_string(), Algorithm::RS256)]);
    assert_eq!(skipped.len(), 2);
}

#[test]
fn a_kid_used_twice_is_refused_in_every_copy() {
    let (usable, skipped) = parsed(
        vec![
            with(&RSA, json!({"kid": "twice"})),
            with(&P256, json!({"kid": "twice"})),
            with(&P256, json!({"kid": "once"})),
            // Unusable copies do not count.
            with(&RSA, json!({"kid": "once", "use": "enc"})),
        ],
        DEFAULT,
    );
    assert_eq!(usable, [("once".to_string(), Algorithm::ES256)]);
    assert_eq!(
        skipped.last().unwrap(),
        &Skipped {
            kid: Some("twice".into()),
            why: "the kid names more than one usable key".into()
        }
    );
}

#[test]
fn entries_past_the_cap_are_not_looked_at() {
    let entries: Vec<Value> = (0..MAX_KEYS + 3)
        .map(|i| with(&P256, json!({ "kid": format!("k{i}") })))
        .collect();
    let p = parse_key_set(&set(entries), DEFAULT).unwrap();
    assert_eq!(p.keys.len(), MAX_KEYS);
    assert_eq!(p.skipped.len(), 1);
    assert_eq!(p.skipped[0].why, "3 entries past the first 100 ignored");
}

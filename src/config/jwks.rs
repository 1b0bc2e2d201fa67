//! JSON Web Key Set documents (RFC 7517) → verification keys, each pinned to one algorithm.
//!
//! One parser for both places a set comes from: `[auth.jwks] file` (read at load, so
//! `doorman check` reports what is wrong with it) and a set fetched from the identity
//! provider (parsed in the refresh task). Each entry is read with `jsonwebtoken::jwk::Jwk` on
//! its own, so one entry that does not parse is skipped and never takes the set down with
//! it. What is skipped, and why, is returned for the caller to log, naming the kid.
//!
//! A key is usable only for signatures (`use` absent or `sig`; `key_ops`, when present,
//! naming `verify`), only asymmetric (a symmetric key published in a set would let anyone
//! who reads the set sign tokens), only with an algorithm in `[auth.jwks] algorithms` that
//! fits its type, and only when its components parse as that type's public key. A key
//! without `alg` takes the one allowed algorithm its type implies; when its type fits two
//! (RSA with RS256 and PS256 both allowed), it is skipped: the token's `alg` would choose,
//! and the algorithm must never come from the token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::JwtKey;
use crate::message::json::{StrictJsonError, strict_json};

/// Entries looked at in one set; the rest are skipped. A set this large is a mistake or an
/// attack: a token without a kid is tried against every key of its algorithm.
pub const MAX_KEYS: usize = 100;
/// RSA keys under this are refused (NIST SP 800-131A: 2048 bits at least).
pub const MIN_RSA_BITS: usize = 2048;
/// The largest RSA key aws-lc verifies with.
const MAX_RSA_BITS: usize = 8192;

/// One usable key from a set.
#[derive(Debug, Clone)]
pub struct SetKey {
    pub key: JwtKey,
    /// The public key's bytes as decoded (type tag, then components): two sets hold the
    /// same keys when these, the kids and the algorithms are equal.
    pub material: Vec<u8>,
}

impl PartialEq for SetKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.kid == other.key.kid
            && self.key.algorithm == other.key.algorithm
            && self.material == other.material
    }
}

/// An entry left out of the set, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kid: Option<String>,
    pub why: String,
}

/// A parsed set: its usable keys and what was skipped. No usable key at all is for the
/// caller to treat as a failure.
#[derive(Debug, Clone, Default)]
pub struct ParsedKeySet {
    pub keys: Vec<SetKey>,
    pub skipped: Vec<Skipped>,
}

/// The shapes of public key doorman verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Shape {
    fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Shape::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Shape::P256 => alg == ES256,
            Shape::P384 => alg == ES384,
            Shape::Ed25519 => alg == EdDSA,
        }
    }

    fn tag(self) -> u8 {
        match self {
            Shape::Rsa => 1,
            Shape::P256 => 2,
            Shape::P384 => 3,
            Shape::Ed25519 => 4,
        }
    }
}

/// Parse a JWKS document. Err when it is not a JSON object with a `keys` array; every entry
/// that cannot be used is skipped with its reason.
pub fn parse_key_set(bytes: &[u8], algorithms: &[Algorithm]) -> Result<ParsedKeySet, String> {
    // Strict: a member named twice (two `alg`s, two `kid`s) is ambiguous, and which one
    // counts is not for a parser's habit to decide. The whole document is refused; the set in
    // force stays.
    let doc: Value = strict_json(bytes).map_err(|e| match e {
        StrictJsonError::Duplicate => "a JSON object repeats a member".to_string(),
        StrictJsonError::Malformed => "not JSON".to_string(),
    })?;
    let Some(Value::Array(entries)) = doc.as_object().and_then(|o| o.get("keys")) else {
        return Err("not a JWK set: no \"keys\" array".into());
    };
    let mut out = ParsedKeySet::default();
    for entry in entries.iter().take(MAX_KEYS) {
        let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
        match key(entry, algorithms) {
            Ok(k) => out.keys.push(k),
            Err(why) => out.skipped.push(Skipped { kid, why }),
        }
    }
    if entries.len() > MAX_KEYS {
        out.skipped.push(Skipped {
            kid: None,
            why: format!(
                "{} entries past the first {MAX_KEYS} ignored",
                entries.len() - MAX_KEYS
            ),
        });
    }
    // The same key twice (no kid, or the same kid and algorithm) is one key.
    let mut unique: Vec<SetKey> = Vec::with_capacity(out.keys.len());
    for k in std::mem::take(&mut out.keys) {
        if !unique.contains(&k) {
            unique.push(k);
        }
    }
    out.keys = unique;
    // A kid names one key: with two, which one verifies would depend on their order.
    let mut i = 0;
    while i < out.keys.len() {
        let kid = out.keys[i].key.kid.clone();
        let repeated = kid.is_some() && out.keys.iter().filter(|k| k.key.kid == kid).count() > 1;
        if repeated {
            out.keys.retain(|k| k.key.kid != kid);
            out.skipped.push(Skipped {
                kid,
                why: "the kid names more than one usable key".into(),
            });
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// One entry → a usable key, or why not.
fn key(entry: &Value, algorithms: &[Algorithm]) -> Result<SetKey, String> {
    if !entry.is_object() {
        return Err("not a JSON object".into());
    }
    if entry.get("kid").is_some_and(|k| !k.is_string()) {
        return Err("malformed: kid is not a string".into());
    }
    if entry.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err("symmetric key (kty oct): a key set only provides public keys".into());
    }
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("malformed: {e}"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(PublicKeyUse::Encryption) => return Err("use is \"enc\", not \"sig\"".into()),
        Some(PublicKeyUse::Other(u)) => return Err(format!("use is {u:?}, not \"sig\"")),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include \"verify\"".into());
    }
    let shape = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Shape::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Shape::P256,
            EllipticCurve::P384 => Shape::P384,
            ref c => return Err(format!("unsupported EC curve {c:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => Shape::Ed25519,
            ref c => return Err(format!("unsupported OKP curve {c:?}")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric key (kty oct): a key set only provides public keys".into());
        }
        _ => {
            return Err(match entry.get("kty").and_then(Value::as_str) {
                Some(t @ ("RSA" | "EC" | "OKP")) => format!("malformed {t} key"),
                Some(t) => format!("unsupported kty {t:?}"),
                None => "malformed: no kty".into(),
            });
        }
    };
    let named = entry.get("alg").and_then(Value::as_str).unwrap_or("");
    let algorithm = algorithm(shape, jwk.common.key_algorithm, named, algorithms)?;
    let (key, material) = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => rsa(&p.n, &p.e)?,
        AlgorithmParameters::EllipticCurve(p) => ec(shape, &p.x, &p.y)?,
        AlgorithmParameters::OctetKeyPair(p) => ed25519(&p.x)?,
        _ => return Err("unsupported key".into()),
    };
    let mut tagged = Vec::with_capacity(material.len() + 1);
    tagged.push(shape.tag());
    tagged.extend_from_slice(&material);
    Ok(SetKey {
        key: JwtKey {
            kid: jwk.common.key_id,
            algorithm,
            key,
        },
        material: tagged,
    })
}

/// The one algorithm the key is pinned to.
fn algorithm(
    shape: Shape,
    alg: Option<KeyAlgorithm>,
    named: &str,
    allowed: &[Algorithm],
) -> Result<Algorithm, String> {
    match alg {
        Some(a) => {
            let Ok(alg) = Algorithm::try_from(a) else {
                return Err(format!("alg {named:?} is not a signature algorithm"));
            };
            if !shape.fits(alg) {
                return Err(format!("alg {alg:?} does not fit a {shape:?} key"));
            }
            if !allowed.contains(&alg) {
                return Err(format!("alg {alg:?} is not in [auth.jwks] algorithms"));
            }
            Ok(alg)
        }
        None => {
            let fitting: Vec<Algorithm> =
                allowed.iter().copied().filter(|a| shape.fits(*a)).collect();
            match fitting[..] {
                [one] => Ok(one),
                [] => Err(format!(
                    "no alg, and no algorithm in [auth.jwks] algorithms fits a {shape:?} key"
                )),
                _ => Err(format!(
                    "no alg, and a {shape:?} key fits more than one allowed algorithm ({fitting:?}): ambiguous"
                )),
            }
        }
    }
}

/// base64url without padding (RFC 7518 §2: Base64urlUInt and octet strings).
fn decode(what: &str, s: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("malformed: {what} is not base64url"))
}

fn rsa(n: &str, e: &str) -> Result<(DecodingKey, Vec<u8>), String> {
    // RFC 7518 §6.3.1.1 forbids leading zeros; some providers send them anyway, and aws-lc
    // refuses them, so they are dropped rather than the key.
    let n = strip_zeros(decode("n", n)?);
    let e = strip_zeros(decode("e", e)?);
    let bits = match n.first() {
        Some(b) => (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize),
        None => 0,
    };
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits: at least {MIN_RSA_BITS} are required"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!("RSA key of {bits} bits: at most {MAX_RSA_BITS}"));
    }
    // An exponent of 1 or an even one is no RSA key; over 32 bits no provider uses.
    if e.len() > 4 || e.last().is_none_or(|b| b & 1 == 0) || e == [1] {
        return Err("malformed: RSA exponent".into());
    }
    let components = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
    components
        .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
        .map_err(|e| format!("malformed RSA key: {e}"))?;
    let key = DecodingKey::from_rsa_raw_components(&n, &e);
    let mut material = n;
    material.push(0);
    material.extend_from_slice(&e);
    Ok((key, material))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

fn ec(shape: Shape, x: &str, y: &str) -> Result<(DecodingKey, Vec<u8>), String> {
    let (x, y) = (decode("x", x)?, decode("y", y)?);
    let (size, verify) = match shape {
        Shape::P256 => (32, &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED),
        _ => (48, &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED),
    };
    if x.len() != size || y.len() != size {
        return Err(format!(
            "malformed: EC coordinates must be {size} bytes each"
        ));
    }
    // The uncompressed point, as aws-lc verifies with it; parsing it checks that it lies
    // on the curve.
    let mut point = Vec::with_capacity(1 + 2 * size);
    point.push(4);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    aws_lc_rs::signature::ParsedPublicKey::new(verify, &point)
        .map_err(|e| format!("malformed EC key: {e}"))?;
    Ok((DecodingKey::from_ec_der(&point), point))
}

fn ed25519(x: &str) -> Result<(DecodingKey, Vec<u8>), String> {
    let x = decode("x", x)?;
    if x.len() != 32 {
        return Err("malformed: an Ed25519 key is 32 bytes".into());
    }
    aws_lc_rs::signature::ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, &x)
        .map_err(|e| format!("malformed Ed25519 key: {e}"))?;
    Ok((DecodingKey::from_ed_der(&x), x))
}

#[cfg(test)]
#[path = "jwks_tests.rs"]
mod tests;

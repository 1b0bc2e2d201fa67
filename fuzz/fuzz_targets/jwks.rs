//! The JWKS parser (`doorman::config::parse_key_set`, used for `[auth.jwks] file` and for
//! every set fetched from an identity provider). Never panics on any bytes, and every key
//! it keeps holds the parser's promises: an algorithm from the allowed list that fits the
//! key's type (never HMAC), a kid used by one key only, at most `MAX_KEYS` keys, and the
//! same answer for the same bytes.
#![no_main]

use doorman::config::{MAX_KEYS, parse_key_set};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;

const DEFAULT: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256];
const WIDE: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    for allowed in [DEFAULT, WIDE] {
        let Ok(set) = parse_key_set(data, allowed) else {
            continue;
        };
        assert!(set.keys.len() <= MAX_KEYS);
        for (i, k) in set.keys.iter().enumerate() {
            let alg = k.key.algorithm;
            assert!(allowed.contains(&alg), "{alg:?} not allowed");
            assert!(
                !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512),
                "an HMAC key from a set"
            );
            if let Some(kid) = &k.key.kid {
                assert!(
                    set.keys[i + 1..].iter().all(|o| o.key.kid.as_ref() != Some(kid)),
                    "kid {kid:?} twice"
                );
            }
        }
        let again = parse_key_set(data, allowed).expect("parsed once, parses again");
        assert!(again.keys == set.keys && again.skipped == set.skipped);
    }
});

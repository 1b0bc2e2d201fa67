//! `[auth]`: JWT verification keys, token rules, and the claims forwarded as headers.

use std::time::Duration;

use super::super::file::{RawAuth, RawKey};
use super::super::{AuthSettings, JwtKey, defaults};
use super::Validator;

impl Validator {
    pub(super) fn auth(&mut self, raw: RawAuth) -> Option<AuthSettings> {
        if raw.keys.is_empty() && raw.jwks.is_none() {
            self.err(
                "auth.keys",
                "at least one [[auth.keys]] entry or an [auth.jwks] key set is required",
            );
        }
        let mut keys = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            let key = format!("auth.keys[{i}]");
            if let Some(kid) = &k.kid
                && keys.iter().any(|o: &JwtKey| o.kid.as_ref() == Some(kid))
            {
                self.err(format!("{key}.kid"), format!("kid {kid:?} is used twice"));
            }
            if let Some(jk) = self.jwt_key(&key, k) {
                keys.push(jk);
            }
        }
        let static_kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        let jwks = raw
            .jwks
            .and_then(|j| self.jwks(j, raw.issuer.as_deref(), &static_kids));
        let mut forward_claims = Vec::new();
        for (claim, header) in raw.forward_claims {
            match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) if !crate::message::HOP_BY_HOP.contains(&h) && h != http::header::HOST => {
                    forward_claims.push((claim, h))
                }
                _ => self.err(
                    format!("auth.forward_claims.{claim}"),
                    format!("{header:?} is not a header doorman can set"),
                ),
            }
        }
        let cache_entries = self.count(
            "auth.cache_entries",
            raw.cache_entries,
            defaults::AUTH_CACHE_ENTRIES,
            0,
            1 << 24,
        );
        Some(AuthSettings {
            issuer: raw.issuer,
            audiences: raw.audiences,
            leeway: self.duration_or_zero("auth.leeway", raw.leeway, defaults::LEEWAY),
            require_jti: raw.require_jti.unwrap_or(true),
            forward_claims,
            strip_authorization: raw.strip_authorization.unwrap_or(false),
            cache_entries,
            max_lifetime: raw.max_lifetime.map(|s| {
                let d = self.duration("auth.max_lifetime", Some(s.clone()), defaults::LEEWAY);
                // Token times are whole seconds: under 1s would refuse every token.
                if d < Duration::from_secs(1) {
                    self.err("auth.max_lifetime", format!("{s:?} is under 1s"));
                }
                d
            }),
            keys,
            jwks,
        })
    }

    fn jwt_key(&mut self, key: &str, raw: RawKey) -> Option<JwtKey> {
        use jsonwebtoken::{Algorithm, DecodingKey};
        let algorithm = match raw.algorithm.parse::<Algorithm>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    format!("{key}.algorithm"),
                    format!(
                        "unknown algorithm {:?} (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)",
                        raw.algorithm
                    ),
                );
                return None;
            }
        };
        let hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let decoding = if hmac {
            if raw.public_key_file.is_some() {
                self.err(
                    format!("{key}.public_key_file"),
                    "an HMAC key takes secret_env or secret_file",
                );
            }
            let secret = match (&raw.secret_env, &raw.secret_file) {
                (Some(var), None) => match std::env::var(var) {
                    Ok(v) => v.into_bytes(),
                    Err(_) => {
                        self.err(
                            format!("{key}.secret_env"),
                            format!("environment variable {var} is not set"),
                        );
                        return None;
                    }
                },
                (None, Some(path)) => match std::fs::read(path) {
                    // A trailing newline from `echo > file` is not part of the secret.
                    Ok(mut v) => {
                        while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            v.pop();
                        }
                        v
                    }
                    Err(e) => {
                        self.err(
                            format!("{key}.secret_file"),
                            format!("{path}: cannot read: {e}"),
                        );
                        return None;
                    }
                },
                _ => {
                    self.err(
                        key,
                        "an HMAC key needs exactly one of secret_env or secret_file",
                    );
                    return None;
                }
            };
            if secret.len() < defaults::MIN_SECRET_BYTES {
                self.err(
                    key,
                    format!(
                        "the HMAC secret is {} bytes; at least {} are required",
                        secret.len(),
                        defaults::MIN_SECRET_BYTES
                    ),
                );
                return None;
            }
            DecodingKey::from_secret(&secret)
        } else {
            if raw.secret_env.is_some() || raw.secret_file.is_some() {
                self.err(key, "an asymmetric key takes public_key_file, not a secret");
            }
            let Some(path) = &raw.public_key_file else {
                self.err(
                    format!("{key}.public_key_file"),
                    "missing: required for this algorithm",
                );
                return None;
            };
            let pem = match std::fs::read(path) {
                Ok(p) => p,
                Err(e) => {
                    self.err(
                        format!("{key}.public_key_file"),
                        format!("{path}: cannot read: {e}"),
                    );
                    return None;
                }
            };
            let parsed = match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            match parsed {
                Ok(k) => k,
                Err(e) => {
                    self.err(
                        format!("{key}.public_key_file"),
                        format!("{path}: not a {algorithm:?} public key: {e}"),
                    );
                    return None;
                }
            }
        };
        Some(JwtKey {
            kid: raw.kid,
            algorithm,
            key: decoding,
        })
    }
}

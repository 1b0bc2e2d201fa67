//! JWT verification. The verification algorithm always comes from the configured key:
//! the token's `alg` must name it exactly, so `none`, algorithm confusion (HS256 signed
//! with a public key) and algorithms a key does not allow are refused before any crypto.
//! Header and claims rules are checked here rather than left to jsonwebtoken's defaults,
//! which accept a missing `aud`/`iss` and ignore `crit`. The header and claims JSON are
//! parsed strictly (`json.rs`): an object that repeats a member refuses the token.
//!
//! Keys come from `[[auth.keys]]` and, with `[auth.jwks]`, from the identity provider's key
//! set (`jwks/`), read lock-free; a kid in both is the static key's. Every rule applies the
//! same to both.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::cache::TokenCache;
use super::json::json_object;
use super::jwks::{FetchCounter, Jwks, KeySet};
use crate::config::{AuthSettings, JwtKey};

/// Why a token was refused; `description()` goes into `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    Algorithm,
    UnknownKid,
    Critical,
    Signature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    Issuer,
    Audience,
    MissingJti,
    BadClaim,
    Revoked,
    /// The header or claims JSON repeats a member.
    DuplicateMember,
    /// `exp - iat` is over `[auth] max_lifetime`.
    Lifetime,
    /// No `iat`, while `[auth] max_lifetime` is set (the lifetime cannot be checked).
    MissingIat,
}

impl Reject {
    /// A bounded name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::Algorithm => "bad_algorithm",
            Reject::UnknownKid => "unknown_kid",
            Reject::Critical => "critical_header",
            Reject::Signature => "bad_signature",
            Reject::Expired => "expired",
            Reject::NotYetValid => "not_yet_valid",
            Reject::IssuedInFuture => "issued_in_future",
            Reject::Issuer => "bad_issuer",
            Reject::Audience => "bad_audience",
            Reject::MissingJti => "missing_jti",
            Reject::BadClaim => "bad_claim",
            Reject::Revoked => "revoked",
            Reject::DuplicateMember => "duplicate_member",
            Reject::Lifetime => "lifetime_too_long",
            Reject::MissingIat => "missing_iat",
        }
    }

    pub(crate) fn description(&self) -> &'static str {
        match self {
            Reject::Malformed => "malformed token",
            Reject::Algorithm => "algorithm not allowed",
            Reject::UnknownKid => "unknown key id",
            Reject::Critical => "unsupported critical header",
            Reject::Signature => "invalid signature",
            Reject::Expired => "token expired",
            Reject::NotYetValid => "token not yet valid",
            Reject::IssuedInFuture => "token issued in the future",
            Reject::Issuer => "invalid issuer",
            Reject::Audience => "invalid audience",
            Reject::MissingJti => "missing jti",
            Reject::BadClaim => "invalid claims",
            Reject::Revoked => "token revoked",
            Reject::DuplicateMember => "duplicate JSON member",
            Reject::Lifetime => "token lifetime too long",
            Reject::MissingIat => "missing iat",
        }
    }
}

/// A token whose signature and time-independent claims have been checked.
#[derive(Debug)]
pub struct VerifiedToken {
    pub token: Box<str>,
    pub exp: u64,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub jti: Option<String>,
    pub sub: Option<String>,
    /// Claim headers to send upstream, already validated as header values.
    pub forward: Vec<(HeaderName, HeaderValue)>,
    /// Every claim, for sticky routing on a claim.
    pub claims: Map<String, Value>,
    /// The generation of the key set whose key verified it; None for a static key.
    pub(crate) key_set: Option<u64>,
}

impl VerifiedToken {
    /// exp / nbf / iat against `now`, with `leeway` seconds of clock skew. Checked on every
    /// request, cached or not.
    pub fn check_time(&self, now: u64, leeway: u64) -> Result<(), Reject> {
        if now >= self.exp.saturating_add(leeway) {
            return Err(Reject::Expired);
        }
        if let Some(nbf) = self.nbf
            && now.saturating_add(leeway) < nbf
        {
            return Err(Reject::NotYetValid);
        }
        if let Some(iat) = self.iat
            && iat > now.saturating_add(leeway)
        {
            return Err(Reject::IssuedInFuture);
        }
        Ok(())
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The JOSE name of an algorithm, as it must appear in a token's `alg`. None for a variant
/// this build does not know, so it can never match any token.
pub(crate) fn alg_name(a: Algorithm) -> Option<&'static str> {
    Some(match a {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        _ => return None,
    })
}

/// Everything needed to verify tokens for one snapshot.
#[derive(Debug)]
pub struct Verifier {
    keys: Vec<JwtKey>,
    /// `[auth.jwks]`: the identity provider's keys, shared across reloads that keep it.
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    pub leeway: u64,
    require_jti: bool,
    /// `[auth] max_lifetime` in seconds: the longest `exp - iat` accepted.
    max_lifetime: Option<u64>,
    forward_claims: Vec<(String, HeaderName)>,
    pub strip_authorization: bool,
    cache: TokenCache,
}

impl Verifier {
    /// A verifier of its own: with `[auth.jwks]`, a new key set (its refresh task started
    /// in the current tokio runtime).
    pub fn new(s: &AuthSettings) -> Self {
        Self::rebuild(s, None, None)
    }

    /// A verifier for a new snapshot. The key set of `previous` is kept when `[auth.jwks]`
    /// is unchanged (its keys, task and status live on); else a new one starts, counting
    /// its fetches with `on_fetch`.
    pub(crate) fn rebuild(
        s: &AuthSettings,
        previous: Option<&Verifier>,
        on_fetch: Option<FetchCounter>,
    ) -> Self {
        let static_kids: Vec<String> = s.keys.iter().filter_map(|k| k.kid.clone()).collect();
        let jwks = s
            .jwks
            .as_ref()
            .map(|settings| match previous.and_then(|p| p.jwks.as_ref()) {
                // Its static kids change only in `commit`: a reload that fails later must
                // leave the running set as it was.
                Some(running) if running.settings() == settings => running.clone(),
                // Same provider, other timing, CA or algorithms: the new set starts from the
                // keys in force (those its algorithms still allow), so a reload while the
                // provider is down does not lose the last good set.
                running => {
                    let seed = running
                        .filter(|r| r.settings().source == settings.source)
                        .map(|r| r.current().clone());
                    Arc::new(Jwks::start(settings, static_kids.clone(), on_fetch, seed))
                }
            });
        Verifier {
            keys: s.keys.clone(),
            jwks,
            issuer: s.issuer.clone(),
            audiences: s.audiences.clone(),
            leeway: s.leeway.as_secs(),
            require_jti: s.require_jti,
            // Whole seconds, as NumericDates are compared; a fraction only makes it stricter.
            max_lifetime: s.max_lifetime.map(|d| d.as_secs()),
            forward_claims: s.forward_claims.clone(),
            strip_authorization: s.strip_authorization,
            cache: TokenCache::new(s.cache_entries),
        }
    }

    /// The last step of a reload, when nothing can fail any more: a kept key set learns the
    /// new `[[auth.keys]]` kids (a set key under one of them is refused from its next fetch).
    pub(crate) fn commit(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.set_static_kids(self.keys.iter().filter_map(|k| k.kid.clone()).collect());
        }
    }

    /// The identity provider's key set, when `[auth.jwks]` is configured.
    pub(crate) fn jwks(&self) -> Option<&Arc<Jwks>> {
        self.jwks.as_ref()
    }

    /// Whether every key source has loaded (`/ready`): static keys always have; a key set
    /// once its first fetch succeeded.
    pub fn keys_ready(&self) -> bool {
        self.jwks.as_ref().is_none_or(|j| j.ready())
    }

    /// Headers a client must never set itself: the ones doorman fills from claims.
    pub(crate) fn forwarded_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.forward_claims.iter().map(|(_, h)| h)
    }

    /// Verify a token at time `now`. A token verified before skips the signature check;
    /// its times are still checked.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<VerifiedToken>, Reject> {
        self.verify_traced(token, now).0
    }

    /// `verify`, also telling whether the verified-token cache answered (for metrics).
    pub fn verify_traced(
        &self,
        token: &str,
        now: u64,
    ) -> (Result<Arc<VerifiedToken>, Reject>, bool) {
        let set = self.jwks.as_ref().map(|j| j.current());
        if let Some(hit) = self.cache.get(token) {
            // Verified by a key of the set: only while that set is still the one in force,
            // so a token never outlives the removal of its key.
            let in_force = match hit.key_set {
                None => true,
                Some(generation) => set.as_ref().is_some_and(|s| s.generation == generation),
            };
            if in_force {
                return (hit.check_time(now, self.leeway).map(|()| hit), true);
            }
        }
        let verified = self
            .verify_with(token, set.as_deref().map(|s| &**s))
            .and_then(|v| {
                v.check_time(now, self.leeway)?;
                let v = Arc::new(v);
                self.cache.insert(v.clone());
                Ok(v)
            });
        (verified, false)
    }

    /// A token was refused for an unknown kid: with a key set, ask for an early fetch (rate
    /// limited, shared, bounded by `[auth.jwks] timeout`). True when a fetch finished
    /// meanwhile and the token is worth verifying again.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        match &self.jwks {
            Some(j) => j.refresh_for_unknown_kid().await,
            None => false,
        }
    }

    /// Signature and every time-independent rule.
    pub fn verify_uncached(&self, token: &str) -> Result<VerifiedToken, Reject> {
        let set = self.jwks.as_ref().map(|j| j.current());
        self.verify_with(token, set.as_deref().map(|s| &**s))
    }

    /// `verify_uncached` with the key set in force now.
    fn verify_with(&self, token: &str, set: Option<&KeySet>) -> Result<VerifiedToken, Reject> {
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::Malformed);
        };
        if h64.is_empty() || p64.is_empty() || s64.is_empty() {
            return Err(Reject::Malformed);
        }
        let header = json_object(h64)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(Reject::Malformed)?;
        // RFC 7515 §4.1.11: we implement no extensions, so any `crit` is one we don't understand.
        if header.contains_key("crit") {
            return Err(Reject::Critical);
        }
        // jku / x5u / jwk / x5c are never looked at: keys come from configuration only. Still,
        // a registered parameter of the wrong JSON type makes the header mean different
        // things to different readers (jsonwebtoken refuses it): refused here too.
        if !registered_header_types_hold(&header) {
            return Err(Reject::Malformed);
        }
        // Each candidate with the generation of the set it came from (None: a static key).
        let generation = set.map(|s| s.generation);
        let set_keys = set.into_iter().flat_map(|s| s.keys.iter().map(|k| &k.key));
        let candidates: Vec<(&JwtKey, Option<u64>)> = match header.get("kid") {
            Some(Value::String(kid)) => {
                // A static key first: a kid in both is the static key's.
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                    .map(|k| (k, None))
                    .or_else(|| set.and_then(|s| s.find(kid)).map(|k| (k, generation)))
                    .ok_or(Reject::UnknownKid)?;
                vec![key]
            }
            Some(_) => return Err(Reject::Malformed),
            None => self
                .keys
                .iter()
                .map(|k| (k, None))
                .chain(set_keys.map(|k| (k, generation)))
                .filter(|(k, _)| alg_name(k.algorithm) == Some(alg))
                .collect(),
        };
        if candidates.is_empty()
            || candidates
                .iter()
                .any(|(k, _)| alg_name(k.algorithm) != Some(alg))
        {
            return Err(Reject::Algorithm);
        }
        let message = &token.as_bytes()[..h64.len() + 1 + p64.len()];
        let mut verified_by = None;
        for (key, generation) in candidates {
            match jsonwebtoken::crypto::verify(s64, message, &key.key, key.algorithm) {
                Ok(true) => {
                    verified_by = Some(generation);
                    break;
                }
                Ok(false) => {}
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Base64(_)) => {
                    return Err(Reject::Malformed);
                }
                Err(_) => {}
            }
        }
        let Some(key_set) = verified_by else {
            return Err(Reject::Signature);
        };
        let claims = json_object(p64)?;
        let mut verified = self.claims(token, claims)?;
        verified.key_set = key_set;
        Ok(verified)
    }

    fn claims(&self, token: &str, c: Map<String, Value>) -> Result<VerifiedToken, Reject> {
        let exp = numeric_date(c.get("exp"))?.ok_or(Reject::BadClaim)?;
        let nbf = numeric_date(c.get("nbf"))?;
        let iat = numeric_date(c.get("iat"))?;
        // Time-independent, so checked before the token can be cached: a token refused
        // here is never cached.
        if let Some(max) = self.max_lifetime {
            let iat = iat.ok_or(Reject::MissingIat)?;
            // exp before iat: no lifetime to speak of (the time check refuses it if expired).
            if exp.saturating_sub(iat) > max {
                return Err(Reject::Lifetime);
            }
        }
        if let Some(want) = &self.issuer
            && c.get("iss").and_then(Value::as_str) != Some(want.as_str())
        {
            return Err(Reject::Issuer);
        }
        if let Some(allowed) = &self.audiences {
            let ok = match c.get("aud") {
                Some(Value::String(a)) => allowed.contains(a),
                Some(Value::Array(items)) => items
                    .iter()
                    .any(|a| a.as_str().is_some_and(|a| allowed.iter().any(|x| x == a))),
                _ => false,
            };
            if !ok {
                return Err(Reject::Audience);
            }
        }
        let jti = match c.get("jti") {
            Some(Value::String(j)) if !j.is_empty() => Some(j.clone()),
            None if !self.require_jti => None,
            None => return Err(Reject::MissingJti),
            Some(_) => return Err(Reject::BadClaim),
        };
        let sub = match c.get("sub") {
            Some(Value::String(s)) => Some(s.clone()),
            None => None,
            Some(_) => return Err(Reject::BadClaim),
        };
        let mut forward = Vec::with_capacity(self.forward_claims.len());
        for (claim, header) in &self.forward_claims {
            let text = match c.get(claim) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                // A list of scopes travels as the usual space-separated string.
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or(Reject::BadClaim))
                    .collect::<Result<Vec<_>, _>>()?
                    .join(" "),
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Object(_)) => return Err(Reject::BadClaim),
            };
            let value = HeaderValue::from_str(&text).map_err(|_| Reject::BadClaim)?;
            forward.push((header.clone(), value));
        }
        Ok(VerifiedToken {
            token: token.into(),
            exp,
            nbf,
            iat,
            jti,
            sub,
            forward,
            claims: c,
            key_set: None,
        })
    }
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, fractional allowed. Anything else
/// present under the name is refused.
/// RFC 7515 §4.1 / RFC 7519 §5: the registered header parameters' JSON types.
fn registered_header_types_hold(header: &Map<String, Value>) -> bool {
    header.iter().all(|(name, v)| match name.as_str() {
        "typ" | "cty" | "kid" | "jku" | "x5u" | "x5t" | "x5t#S256" | "alg" => v.is_string(),
        "jwk" => v.is_object(),
        "x5c" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        _ => true,
    })
}

fn numeric_date(v: Option<&Value>) -> Result<Option<u64>, Reject> {
    // 2^64: a float at or above it would saturate `as u64` into a date that never comes.
    const ABOVE_U64: f64 = 18_446_744_073_709_551_616.0;
    match v {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            (None, Some(f)) if (0.0..ABOVE_U64).contains(&f) => Ok(Some(f as u64)),
            _ => Err(Reject::BadClaim),
        },
        Some(_) => Err(Reject::BadClaim),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn parsed(json: &str) -> Result<Map<String, Value>, Reject> {
        json_object(&URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn numeric_dates_never_saturate() {
        for (v, want) in [
            (serde_json::json!(1_700_000_000u64), Ok(Some(1_700_000_000))),
            (serde_json::json!(1.7e9), Ok(Some(1_700_000_000))),
            (
                serde_json::json!(1.8e19),
                Ok(Some(18_000_000_000_000_000_000)),
            ),
            (serde_json::json!(1e20), Err(Reject::BadClaim)),
            (
                serde_json::json!(1.8446744073709552e19),
                Err(Reject::BadClaim),
            ),
            (serde_json::json!(-1), Err(Reject::BadClaim)),
            (serde_json::json!("1"), Err(Reject::BadClaim)),
        ] {
            assert_eq!(numeric_date(Some(&v)), want, "{v}");
        }
    }

    #[test]
    fn registered_header_parameters_must_have_their_types() {
        let ok = parsed(r#"{"alg":"HS256","typ":"JWT","kid":"k","x5c":["a"],"jwk":{},"zz":1}"#);
        assert!(registered_header_types_hold(&ok.unwrap()));
        for bad in [
            r#"{"alg":"HS256","typ":1}"#,
            r#"{"alg":"HS256","cty":null}"#,
            r#"{"alg":"HS256","x5c":"a"}"#,
            r#"{"alg":"HS256","x5c":[1]}"#,
            r#"{"alg":"HS256","jwk":"k"}"#,
            r#"{"alg":"HS256","x5t#S256":false}"#,
        ] {
            assert!(
                !registered_header_types_hold(&parsed(bad).unwrap()),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_reject_has_its_own_label() {
        let all = [
            Reject::Malformed,
            Reject::Algorithm,
            Reject::UnknownKid,
            Reject::Critical,
            Reject::Signature,
            Reject::Expired,
            Reject::NotYetValid,
            Reject::IssuedInFuture,
            Reject::Issuer,
            Reject::Audience,
            Reject::MissingJti,
            Reject::BadClaim,
            Reject::Revoked,
            Reject::DuplicateMember,
            Reject::Lifetime,
            Reject::MissingIat,
        ];
        let labels: std::collections::HashSet<_> = all.iter().map(Reject::label).collect();
        let texts: std::collections::HashSet<_> = all.iter().map(Reject::description).collect();
        assert_eq!((labels.len(), texts.len()), (all.len(), all.len()));
    }
}

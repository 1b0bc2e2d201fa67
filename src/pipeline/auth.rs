//! The auth stage: who is calling. Verify the bearer token (cached after its first signature
//! check; an unknown kid may wait, bounded, for an early key set fetch), refuse revoked tokens from the store's local view, and forward the configured
//! claims upstream — after removing any copies the client sent itself.

use http::header::{self, HeaderMap};
use tracing::warn;

use std::sync::Arc;

use crate::auth::{Reject, VerifiedToken, unix_now};
use crate::config::{AuthMode, OnError};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Returns the verified token, when one was required or offered.
pub(super) async fn check(
    headers: &mut HeaderMap,
    mode: AuthMode,
    snap: &Snapshot,
) -> Result<Option<Arc<VerifiedToken>>, ProxyError> {
    let Some(verifier) = &snap.auth else {
        return Ok(None);
    };
    // On every route: a client must never be able to set x-user-id & co itself.
    for h in verifier.forwarded_headers() {
        headers.remove(h);
    }
    if mode == AuthMode::Off {
        return Ok(None);
    }
    let m = &snap.metrics;
    let token = match bearer(headers) {
        Bearer::Token(t) => t,
        Bearer::Missing if mode == AuthMode::Optional => return Ok(None),
        Bearer::Missing => {
            Metrics::count(&m.auth, "missing");
            return Err(ProxyError::Unauthorized(None));
        }
        Bearer::Malformed => {
            Metrics::count(&m.auth, Reject::Malformed.label());
            return Err(ProxyError::Unauthorized(Some(
                Reject::Malformed.description(),
            )));
        }
    };
    let (mut verified, mut cached) = verifier.verify_traced(token, unix_now());
    // A kid no key has may be one the identity provider just rotated in: an early fetch of
    // its key set (rate limited, shared, bounded by its timeout), then one more look.
    if matches!(verified, Err(Reject::UnknownKid)) && verifier.refresh_for_unknown_kid().await {
        (verified, cached) = verifier.verify_traced(token, unix_now());
    }
    let hot = &m.auth_counters;
    if cached {
        &hot.cache_hit
    } else {
        &hot.cache_miss
    }
    .inc();
    let verified = verified.map_err(|r| {
        Metrics::count(&m.auth, r.label());
        ProxyError::Unauthorized(Some(r.description()))
    })?;
    if snap.revocation_enabled {
        let asked = std::time::Instant::now();
        let (revoked, local) = snap.store.check_revoked(&verified).await;
        if local {
            hot.view_hit.inc();
        } else {
            hot.view_miss.inc();
            m.store_observe("revocation_check", asked.elapsed(), revoked.is_err());
        }
        match revoked {
            Ok(false) => {}
            Ok(true) => {
                Metrics::count(&m.auth, Reject::Revoked.label());
                return Err(ProxyError::Unauthorized(Some(
                    Reject::Revoked.description(),
                )));
            }
            Err(e) => match snap.on_error {
                OnError::Closed => {
                    Metrics::count(&m.auth, "store_unavailable");
                    return Err(ProxyError::StoreUnavailable(e.to_string()));
                }
                OnError::Open => {
                    Metrics::count_op(&m.store_open_passes, "revocation");
                    warn!(error = %e, "revocation check skipped (store on_error = open)")
                }
            },
        }
    }
    hot.ok.inc();
    for (name, value) in &verified.forward {
        headers.insert(name.clone(), value.clone());
    }
    if verifier.strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    Ok(Some(verified))
}

#[derive(Debug, PartialEq, Eq)]
enum Bearer<'a> {
    Token(&'a str),
    /// No Authorization header, or one with another scheme (RFC 6750 §3: no error code).
    Missing,
    /// Repeated, non-ASCII, or "Bearer" with nothing after it.
    Malformed,
}

fn bearer(headers: &HeaderMap) -> Bearer<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Bearer::Missing,
        (Some(_), Some(_)) => return Bearer::Malformed,
        (Some(v), None) => v,
    };
    // As `to_str` (visible ASCII only), but checked a word at a time: a token is ~300 bytes,
    // so every pass over it counts. Bytes first; `&str` only for the token, at the end.
    let value = value.as_bytes();
    if !value.is_ascii() {
        return Bearer::Malformed;
    }
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return if value.eq_ignore_ascii_case(b"bearer") {
            Bearer::Malformed
        } else {
            Bearer::Missing
        };
    };
    if !value[..space].eq_ignore_ascii_case(b"bearer") {
        return Bearer::Missing;
    }
    let token = trim_spaces(&value[space + 1..]);
    if token.is_empty() || token.contains(&b' ') {
        return Bearer::Malformed;
    }
    match std::str::from_utf8(token) {
        Ok(t) => Bearer::Token(t),
        Err(_) => Bearer::Malformed,
    }
}

/// `bytes` without leading and trailing spaces (tabs are not spaces here, as `trim_matches(' ')`).
fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn of(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_reads_one_ascii_token() {
        assert_eq!(
            bearer(&of(&[b"Bearer abc.def.ghi"])),
            Bearer::Token("abc.def.ghi")
        );
        assert_eq!(bearer(&of(&[b"bEaReR   abc  "])), Bearer::Token("abc"));
        assert_eq!(bearer(&of(&[])), Bearer::Missing);
        assert_eq!(bearer(&of(&[b"Basic dXNlcjpwdw=="])), Bearer::Missing);
        assert_eq!(bearer(&of(&[b"Token"])), Bearer::Missing);
        assert_eq!(bearer(&of(&[b"Bearer"])), Bearer::Malformed);
        assert_eq!(bearer(&of(&[b"Bearer  "])), Bearer::Malformed);
        assert_eq!(bearer(&of(&[b"Bearer a b"])), Bearer::Malformed);
        assert_eq!(bearer(&of(&[b"Bearer a", b"Bearer b"])), Bearer::Malformed);
        // obs-text (bytes >= 0x80), valid UTF-8 or not, is refused as `to_str` refuses it.
        assert_eq!(
            bearer(&of(&["Bearer t\u{e9}".as_bytes()])),
            Bearer::Malformed
        );
        assert_eq!(bearer(&of(&[b"Bearer t\xff"])), Bearer::Malformed);
    }
}

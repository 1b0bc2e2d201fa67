//! Stage 3: who is calling. Verify the bearer token (cached after its first signature
//! check), refuse revoked tokens from the store's local view, and forward the configured
//! claims upstream — after removing any copies the client sent itself.

use http::header::{self, HeaderMap};
use tracing::warn;

use std::sync::Arc;

use crate::auth::{Reject, VerifiedToken, unix_now};
use crate::config::{AuthMode, OnError};
use crate::error::ProxyError;
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
    let token = match bearer(headers) {
        Bearer::Token(t) => t,
        Bearer::Missing if mode == AuthMode::Optional => return Ok(None),
        Bearer::Missing => return Err(ProxyError::Unauthorized(None)),
        Bearer::Malformed => {
            return Err(ProxyError::Unauthorized(Some(
                Reject::Malformed.description(),
            )));
        }
    };
    let verified = verifier
        .verify(token, unix_now())
        .map_err(|r| ProxyError::Unauthorized(Some(r.description())))?;
    if snap.revocation_enabled {
        match snap.store.is_revoked(&verified).await {
            Ok(false) => {}
            Ok(true) => {
                return Err(ProxyError::Unauthorized(Some(
                    Reject::Revoked.description(),
                )));
            }
            Err(e) => match snap.on_error {
                OnError::Closed => return Err(ProxyError::StoreUnavailable(e.to_string())),
                OnError::Open => {
                    warn!(error = %e, "revocation check skipped (store on_error = open)")
                }
            },
        }
    }
    for (name, value) in &verified.forward {
        headers.insert(name.clone(), value.clone());
    }
    if verifier.strip_authorization {
        headers.remove(header::AUTHORIZATION);
    }
    Ok(Some(verified))
}

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
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return if value.eq_ignore_ascii_case("bearer") {
            Bearer::Malformed
        } else {
            Bearer::Missing
        };
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Bearer::Missing;
    }
    match rest.trim_matches(' ') {
        "" => Bearer::Malformed,
        t if t.contains(' ') => Bearer::Malformed,
        t => Bearer::Token(t),
    }
}

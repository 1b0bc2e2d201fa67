//! Stage 5 helper: the sticky key of a request, for consistent-hash groups.

use http::{Request, header};

use crate::auth::VerifiedToken;
use crate::balance::key_hash;
use crate::config::HashKey;
use crate::upstream::UpstreamGroup;

use super::context::ConnInfo;

/// The ring position of the request's key, or None (not a sticky group, or no key: the
/// group falls back to round robin). Hashes borrowed bytes: no allocation except for a
/// numeric claim.
pub(super) fn sticky_hash<B>(
    req: &Request<B>,
    group: &UpstreamGroup,
    token: Option<&VerifiedToken>,
    conn: &ConnInfo,
) -> Option<u64> {
    let sticky = group.sticky.as_ref()?;
    match &sticky.key {
        HashKey::Header(name) => req.headers().get(name).map(|v| key_hash(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| key_hash(v.as_bytes()))
            }),
        HashKey::Claim(name) => match token?.claims.get(name)? {
            serde_json::Value::String(s) => Some(key_hash(s.as_bytes())),
            serde_json::Value::Number(n) => Some(key_hash(n.to_string().as_bytes())),
            _ => None,
        },
        HashKey::Query(name) => req.uri().query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name && !v.is_empty()).then(|| key_hash(v.as_bytes()))
        }),
        HashKey::Ip => Some(key_hash(conn.peer_ip.as_bytes())),
    }
}

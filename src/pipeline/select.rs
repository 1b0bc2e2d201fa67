//! The select stage: the replica the route's group picks for a request — by its balancer,
//! with the request's sticky key for consistent-hash groups.

use http::{Request, header};

use crate::error::ProxyError;

use crate::auth::VerifiedToken;
use crate::balance::key_hash;
use crate::config::HashKey;
use crate::upstream::UpstreamGroup;

use super::context::ConnInfo;

/// The select stage: the group's pick for the request (503 when no replica may take
/// traffic). Every selection pays into the group's retry budget.
pub(super) fn replica(group: &UpstreamGroup, sticky: Option<u64>) -> Result<usize, ProxyError> {
    group.deposit_retry_budget();
    group.select_for(sticky).ok_or(ProxyError::NoUpstream)
}

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
    // An empty value is no key: it would pile every such request onto one replica.
    let nonempty = |v: &[u8]| (!v.is_empty()).then(|| key_hash(v));
    match &sticky.key {
        HashKey::Header(name) => req.headers().get(name).and_then(|v| nonempty(v.as_bytes())),
        // Bytes, not str: one non-ASCII cookie must not hide the others.
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|b| *b == b'=')?;
                (&pair[..eq] == name.as_bytes()).then(|| nonempty(&pair[eq + 1..]))?
            }),
        HashKey::Claim(name) => match token?.claims.get(name)? {
            serde_json::Value::String(s) => nonempty(s.as_bytes()),
            serde_json::Value::Number(n) => Some(key_hash(n.to_string().as_bytes())),
            _ => None,
        },
        // Percent-decoded (and + as space), so one logical value is one key.
        HashKey::Query(name) => req.uri().query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if v.is_empty() || !decoded_eq(k, name) {
                return None;
            }
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            decode(v, |b| h.update(&[b]));
            Some(h.digest())
        }),
        HashKey::Ip => Some(key_hash(conn.peer_ip.as_bytes())),
    }
}

/// Feed the percent-decoded bytes of a query component to `out` ('+' is a space).
fn decode(s: &str, mut out: impl FnMut(u8)) {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out(b'%'),
                }
            }
            c => out(c),
        }
        i += 1;
    }
}

fn decoded_eq(encoded: &str, want: &str) -> bool {
    let mut it = want.bytes();
    let mut same = true;
    decode(encoded, |b| same &= it.next() == Some(b));
    same && it.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(s: &str) -> Vec<u8> {
        let mut v = Vec::new();
        decode(s, |b| v.push(b));
        v
    }

    #[test]
    fn query_components_are_percent_decoded() {
        assert_eq!(decoded("a%40b"), b"a@b");
        assert_eq!(decoded("%61@b+c"), b"a@b c");
        assert_eq!(decoded("100%"), b"100%");
        assert_eq!(decoded("%zz"), b"%zz");
        assert!(decoded_eq("s%69d", "sid"));
        assert!(!decoded_eq("sid2", "sid"));
        assert!(!decoded_eq("si", "sid"));
    }
}

//! The gates every admin request passes first: Host (421), bearer token (401), content
//! type (415).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use tracing::debug;

use super::{json, json_content_type, wants_json};
use crate::config::{AdminToken, ServerSettings};

/// The gates every admin request passes before its endpoint (see the module docs): the
/// refusal, or None to go on.
pub(super) fn gate(
    req: &Request<Incoming>,
    settings: &ServerSettings,
) -> Option<Response<Full<Bytes>>> {
    if !host_allowed(req, &settings.admin_hosts) {
        debug!(host = ?req.headers().get(header::HOST), "admin request for another host refused");
        return Some(json(
            StatusCode::MISDIRECTED_REQUEST,
            r#"{"error":"Host must be an IP address, localhost or one of [server] admin_hosts"}"#,
        ));
    }
    let path = req.uri().path();
    let reads = req.method() == Method::GET || req.method() == Method::HEAD;
    let open =
        path == "/health" || path == "/ready" || (path == "/status" && reads && !wants_json(req));
    if let Some(token) = &settings.admin_token
        && !open
        && !bearer_matches(req, token)
    {
        debug!(%path, "admin request without the admin token refused");
        let mut resp = json(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"admin token required: Authorization: Bearer <token>"}"#,
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(r#"Bearer realm="doorman admin""#),
        );
        return Some(resp);
    }
    if !reads && !json_content_type(req) {
        return Some(json(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            r#"{"error":"Content-Type must be application/json"}"#,
        ));
    }
    None
}

/// Whether the request names this listener by an address or an allowed name: the
/// absolute-form target's authority, if any, and the one `Host` header must both pass.
fn host_allowed(req: &Request<Incoming>, admin_hosts: &[String]) -> bool {
    if let Some(a) = req.uri().authority()
        && !authority_allowed(a.as_str(), admin_hosts)
    {
        return false;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().is_ok_and(|h| authority_allowed(h, admin_hosts)),
        // HTTP/1.1 requires exactly one Host; the absolute form may stand in for it.
        (None, _) => req.uri().authority().is_some(),
        (Some(_), Some(_)) => false,
    }
}

/// `host[:port]`: an IPv4 literal, a bracketed IPv6 literal, `localhost`, or a name in
/// `admin_hosts` (already lower-case, without a trailing dot).
fn authority_allowed(authority: &str, admin_hosts: &[String]) -> bool {
    let port_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    };
    if authority.contains('@') {
        return false;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        let port_fine = after.is_empty() || after.strip_prefix(':').is_some_and(port_ok);
        return port_fine && ip.parse::<std::net::Ipv6Addr>().is_ok();
    }
    let host = match authority.split_once(':') {
        Some((h, p)) if port_ok(p) => h,
        Some(_) => return false,
        None => authority,
    };
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    !name.is_empty() && (name == "localhost" || admin_hosts.contains(&name))
}

/// `Authorization: Bearer <token>` (one header, scheme case-insensitive) carrying `token`.
/// Both sides are hashed and the digests compared in constant time, so neither the
/// position of the first differing byte nor the token's length shows in the timing.
fn bearer_matches(req: &Request<Incoming>, token: &AdminToken) -> bool {
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Some((scheme, given)) = value.as_bytes().split_first_chunk::<7>() else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = given.trim_ascii();
    use aws_lc_rs::digest::{SHA256, digest};
    aws_lc_rs::constant_time::verify_slices_are_equal(
        digest(&SHA256, given).as_ref(),
        digest(&SHA256, token.0.as_bytes()).as_ref(),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_hosts_are_ip_literals_localhost_or_listed_names() {
        let listed = ["admin.internal".to_string()];
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "10.1.2.3:1",
            "[::1]",
            "[::1]:9901",
            "[fe80::1]:65535",
            "localhost",
            "LocalHost:9901",
            "localhost.",
            "admin.internal",
            "Admin.Internal:9901",
        ] {
            assert!(authority_allowed(ok, &listed), "{ok}");
        }
        for refused in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "admin.internal.evil.example",
            "127.0.0.1.nip.io",
            "",
            ":9901",
            "localhost:",
            "localhost:65536",
            "localhost:99x",
            "127.0.0.1:9901:1",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[evil.example]",
            "user@127.0.0.1",
            "127.1",
            "0x7f.0.0.1",
        ] {
            assert!(!authority_allowed(refused, &listed), "{refused:?}");
        }
    }
}

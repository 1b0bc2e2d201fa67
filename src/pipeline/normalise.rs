//! The normalise stage. Every later stage — routing, auth, idempotency, the access log — and
//! the replica decide on the same request: the one this stage leaves behind.
//!
//! - headers: names with `_` dropped/refused (`underscores_in_headers`), the headers the
//!   client's `Connection` names removed *before* doorman adds any of its own;
//! - authority: the absolute-form target's or HTTP/2 `:authority` wins over `Host`
//!   (RFC 9112 §3.2.2, RFC 9113 §8.3.1) and replaces it; one valid `Host` otherwise;
//! - path: `message::target::normalise` (dot segments, escapes, slashes);
//! - HTTP/2 `cookie` fields joined with `; ` for the HTTP/1.1 replica (RFC 9113 §8.2.3).
//!
//! The policy is documented in docs/security.md.

use std::borrow::Cow;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};

use super::headers::strip_connection_named;
use crate::config::{ServerSettings, Underscores};
use crate::error::ProxyError;
use crate::message::target::{self, PathPolicy};

/// Names doorman sets on the forwarded request: a client header that folds (`_` → `-`)
/// onto one of these is dropped even when underscores are allowed, since CGI-style
/// backends (`HTTP_X_FORWARDED_FOR`) cannot tell the two apart.
const SET_BY_DOORMAN: [&str; 5] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Normalise `req` in place; true when its target was rewritten. `is_claim_header`:
/// whether auth forwards a claim in this header (also protected from `_` look-alikes).
pub(super) fn request<B>(
    req: &mut Request<B>,
    settings: &ServerSettings,
    is_claim_header: &dyn Fn(&str) -> bool,
) -> Result<bool, ProxyError> {
    if req.method().as_str().eq_ignore_ascii_case("CONNECT") {
        // Refused before anything is parsed further: doorman opens no tunnels. Any case:
        // method names are case-sensitive, but some servers read them case-insensitively.
        return Err(ProxyError::MethodNotAllowed);
    }
    if req
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        // `post` is not POST to doorman (methods are case-sensitive) but is to servers that
        // upper-case them (Django, Werkzeug): idempotency and TRACE rules would be skipped.
        // Refused as nginx does.
        return Err(ProxyError::BadRequest(
            "method name with lower-case letters",
        ));
    }
    underscores(
        req.headers_mut(),
        settings.underscores_in_headers,
        is_claim_header,
    )?;
    strip_connection_named(req.headers_mut());
    authority(req)?;
    let changed = path(req, settings)?;
    if req.version() == Version::HTTP_2 {
        join_cookies(req.headers_mut());
    }
    Ok(changed)
}

fn underscores(
    headers: &mut http::HeaderMap,
    policy: Underscores,
    is_claim_header: &dyn Fn(&str) -> bool,
) -> Result<(), ProxyError> {
    // One scan over the names present; almost no request has any.
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return Ok(());
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| match policy {
            Underscores::Drop | Underscores::Reject => true,
            Underscores::Allow => {
                let folded = n.as_str().replace('_', "-");
                SET_BY_DOORMAN.contains(&folded.as_str()) || is_claim_header(&folded)
            }
        })
        .cloned()
        .collect();
    if doomed.is_empty() {
        return Ok(());
    }
    if policy == Underscores::Reject {
        return Err(ProxyError::BadRequest("header name with '_'"));
    }
    for name in doomed {
        headers.remove(name);
    }
    Ok(())
}

/// Settle the one authority the request is for, and write it as the `Host` header.
fn authority<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    if let Some(a) = req.uri().authority() {
        // Absolute-form (HTTP/1.1) or :authority (HTTP/2): it wins over any Host header.
        if !matches!(req.uri().scheme(), Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS) {
            return Err(ProxyError::BadRequest(
                "request target scheme must be http or https",
            ));
        }
        if target::host_for_matching(a.as_str()).is_none() {
            return Err(ProxyError::BadRequest("invalid request authority"));
        }
        let value = HeaderValue::from_str(a.as_str())
            .map_err(|_| ProxyError::BadRequest("invalid request authority"))?;
        let headers = req.headers_mut();
        match headers.get(header::HOST) {
            Some(h) if *h == value && headers.get_all(header::HOST).iter().nth(1).is_none() => {}
            _ => {
                headers.insert(header::HOST, value);
            }
        }
        return Ok(());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("repeated Host header")),
        (Some(h), None) => match h.to_str().ok().and_then(target::host_for_matching) {
            Some(_) => Ok(()),
            None => Err(ProxyError::BadRequest("invalid Host header")),
        },
        (None, _) if req.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("missing Host header"))
        }
        // HTTP/1.0 may omit Host; the replica then gets its own authority (forward).
        (None, _) => Ok(()),
    }
}

/// True when the target was rewritten.
fn path<B>(req: &mut Request<B>, settings: &ServerSettings) -> Result<bool, ProxyError> {
    let policy = PathPolicy {
        merge_slashes: settings.merge_slashes,
        escaped_slashes: settings.escaped_slashes,
    };
    let refused = |e: target::TargetError| ProxyError::BadRequest(e.reason());
    let absolute = req.uri().authority().is_some();
    let raw = req.uri().path_and_query().map_or("", |p| p.as_str());
    let rewritten = if absolute && !raw.starts_with('/') {
        // `http://a.test?x`: an absolute-form target with an empty path means `/`
        // (RFC 9112 §3.2.2).
        Some(
            target::normalise(&format!("/{raw}"), policy)
                .map_err(refused)?
                .into_owned(),
        )
    } else {
        match target::normalise(raw, policy).map_err(refused)? {
            Cow::Owned(p) => Some(p),
            Cow::Borrowed(_) => None,
        }
    };
    let origin_form = absolute && req.version() != Version::HTTP_2;
    let changed = rewritten.is_some() || origin_form;
    if let Some(p) = rewritten {
        let pq = PathAndQuery::try_from(p)
            .map_err(|_| ProxyError::BadRequest("invalid request target"))?;
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.path_and_query = Some(pq);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    }
    // An absolute-form HTTP/1.1 target goes on in origin-form: its authority now lives in
    // Host, and nothing later may read a second copy of it.
    if origin_form {
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = req.uri().path_and_query().cloned();
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid request target"))?;
    }
    Ok(changed)
}

/// HTTP/2 lets a client split `cookie` into many fields; HTTP/1.1 replicas expect one.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let all = headers.get_all(header::COOKIE);
    let len: usize = all.iter().map(|v| v.len() + 2).sum();
    let mut joined = Vec::with_capacity(len);
    for (i, v) in all.iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(header::COOKIE, v);
    }
}

/// TRACE reaches a replica only on a route that allows it (it echoes the request,
/// credentials included, to whoever can read the response). Spellings a lenient server
/// may take for TRACE (`trace`, `Trace`) and IIS's TRACK are refused on every route.
pub(super) fn method_allowed(method: &Method, allowed: &[Method]) -> Result<(), ProxyError> {
    let m = method.as_str();
    if *method == Method::TRACE {
        if allowed.contains(method) {
            return Ok(());
        }
        return Err(ProxyError::MethodNotAllowed);
    }
    if m.eq_ignore_ascii_case("TRACE") || m.eq_ignore_ascii_case("TRACK") {
        return Err(ProxyError::MethodNotAllowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::target::EscapedSlashes;

    fn settings() -> ServerSettings {
        ServerSettings::with_listen("127.0.0.1:0".parse().unwrap())
    }

    fn is_claim(n: &str) -> bool {
        n == "x-user-id"
    }

    fn run(mut req: Request<()>) -> Result<Request<()>, ProxyError> {
        request(&mut req, &settings(), &is_claim).map(|_| req)
    }

    #[test]
    fn rewrites_are_reported_and_plain_targets_left_alone() {
        let mut req = Request::get("/api/x?q=1")
            .header("host", "a")
            .body(())
            .unwrap();
        assert!(!request(&mut req, &settings(), &is_claim).unwrap());
        let mut req = Request::get("/api/./x")
            .header("host", "a")
            .body(())
            .unwrap();
        assert!(request(&mut req, &settings(), &is_claim).unwrap());
        let mut req = Request::get("http://a.test/x").body(()).unwrap();
        assert!(request(&mut req, &settings(), &is_claim).unwrap());
        let req = Request::get("http://a.test?x=1").body(()).unwrap();
        assert_eq!(run(req).unwrap().uri(), "/?x=1");
    }

    fn reason(r: Result<Request<()>, ProxyError>) -> &'static str {
        match r {
            Err(ProxyError::BadRequest(why)) => why,
            Err(e) => panic!("not a 400: {e}"),
            Ok(r) => panic!("accepted: {}", r.uri()),
        }
    }

    #[test]
    fn absolute_form_authority_replaces_host_and_goes_on_in_origin_form() {
        let req = Request::get("http://API.test:80/public/../api/x?q=1")
            .header("host", "other.test")
            .body(())
            .unwrap();
        let req = run(req).unwrap();
        assert_eq!(req.uri().to_string(), "/api/x?q=1");
        assert_eq!(req.headers()["host"], "API.test:80");
        assert_eq!(req.headers().get_all("host").iter().count(), 1);
    }

    #[test]
    fn h2_authority_wins_and_stays_in_the_uri() {
        let req = Request::get("https://a.test/x")
            .version(Version::HTTP_2)
            .header("host", "b.test")
            .body(())
            .unwrap();
        let req = run(req).unwrap();
        assert_eq!(req.headers()["host"], "a.test");
        assert_eq!(req.uri().path(), "/x");
    }

    #[test]
    fn bad_authorities_and_hosts_are_400() {
        let r = Request::get("ftp://a.test/x").body(()).unwrap();
        assert_eq!(
            reason(run(r)),
            "request target scheme must be http or https"
        );
        let r = Request::get("http://u@a.test/x").body(()).unwrap();
        assert_eq!(reason(run(r)), "invalid request authority");
        let r = Request::get("/x").header("host", "a b").body(()).unwrap();
        assert_eq!(reason(run(r)), "invalid Host header");
        let r = Request::get("/x")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert_eq!(reason(run(r)), "repeated Host header");
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(reason(run(r)), "missing Host header");
    }

    #[test]
    fn connection_cannot_remove_host_but_removes_what_it_names() {
        let req = Request::get("/x")
            .header("host", "a.test")
            .header("connection", "host, x-user-id, x-custom")
            .header("x-custom", "1")
            .header("x-user-id", "forged")
            .body(())
            .unwrap();
        let req = run(req).unwrap();
        assert_eq!(req.headers()["host"], "a.test");
        assert!(!req.headers().contains_key("x-custom"));
        assert!(!req.headers().contains_key("x-user-id"));
    }

    #[test]
    fn underscore_headers_by_policy() {
        let mk = || {
            Request::get("/x")
                .header("host", "a.test")
                .header("x_user_id", "admin")
                .header("x_forwarded_for", "1.2.3.4")
                .header("my_header", "v")
                .body(())
                .unwrap()
        };
        let mut s = settings();
        let mut req = mk();
        request(&mut req, &s, &is_claim).unwrap();
        assert_eq!(
            req.headers().len(),
            1,
            "only host is left: {:?}",
            req.headers()
        );
        s.underscores_in_headers = Underscores::Allow;
        let mut req = mk();
        request(&mut req, &s, &is_claim).unwrap();
        let left: Vec<&str> = req.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["host", "my_header"]);
        s.underscores_in_headers = Underscores::Reject;
        let mut req = mk();
        assert!(matches!(
            request(&mut req, &s, &is_claim),
            Err(ProxyError::BadRequest("header name with '_'"))
        ));
    }

    #[test]
    fn paths_are_normalised_in_place() {
        let req = Request::get("/public/%2e%2e/api")
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(reason(run(req)), "encoded dot segment in request path");
        let req = Request::get("//api/./x/%61")
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(run(req).unwrap().uri(), "/api/x/a");
        let mut s = settings();
        s.escaped_slashes = EscapedSlashes::Decode;
        s.merge_slashes = false;
        let mut req = Request::get("/a%2F..%2Fb//c")
            .header("host", "a")
            .body(())
            .unwrap();
        request(&mut req, &s, &|_| false).unwrap();
        assert_eq!(req.uri(), "/b//c");
    }

    #[test]
    fn connect_is_refused_and_trace_needs_a_route() {
        let req = Request::connect("a.test:443")
            .header("host", "a.test:443")
            .body(())
            .unwrap();
        assert!(matches!(run(req), Err(ProxyError::MethodNotAllowed)));
        assert!(matches!(
            method_allowed(&Method::TRACE, &[]),
            Err(ProxyError::MethodNotAllowed)
        ));
        assert!(method_allowed(&Method::TRACE, &[Method::TRACE]).is_ok());
        assert!(method_allowed(&Method::GET, &[]).is_ok());
        let req = Request::builder()
            .method(Method::from_bytes(b"post").unwrap())
            .uri("/x")
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(reason(run(req)), "method name with lower-case letters");
        for m in ["trace", "Trace", "TRACK", "track"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(
                matches!(
                    method_allowed(&m, &[Method::TRACE]),
                    Err(ProxyError::MethodNotAllowed)
                ),
                "{m}"
            );
        }
        let req = Request::builder()
            .method(Method::from_bytes(b"connect").unwrap())
            .uri("/x")
            .header("host", "a")
            .body(())
            .unwrap();
        assert!(matches!(run(req), Err(ProxyError::MethodNotAllowed)));
    }

    #[test]
    fn h2_cookies_are_joined() {
        let req = Request::get("https://a.test/x")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let req = run(req).unwrap();
        let all: Vec<_> = req.headers().get_all("cookie").iter().collect();
        assert_eq!(all, vec!["a=1; b=2"]);
    }
}

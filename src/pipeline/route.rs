//! Stage 2 helper: which host the request is for (normalise has settled it in `Host`).

use std::borrow::Cow;

use http::{Request, Version, header};

use crate::error::ProxyError;

/// The request's host, lower-cased, without port or trailing dot: Host header (HTTP/1.x) or :authority
/// (HTTP/2). HTTP/1.1 requires one Host header; HTTP/1.0 may omit it.
pub(super) fn host_of<B>(req: &Request<B>) -> Result<Option<Cow<'_, str>>, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let raw = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(ProxyError::BadRequest("repeated Host header")),
        (Some(h), None) => h
            .to_str()
            .map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
        (None, _) => match req.uri().authority() {
            Some(a) => a.as_str(),
            None if req.version() == Version::HTTP_11 => {
                return Err(ProxyError::BadRequest("missing Host header"));
            }
            None => return Ok(None),
        },
    };
    crate::message::target::host_for_matching(raw)
        .map(Some)
        .ok_or(ProxyError::BadRequest("invalid Host header"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(req: Request<()>) -> Result<Option<String>, ProxyError> {
        host_of(&req).map(|h| h.map(|c| c.into_owned()))
    }

    #[test]
    fn host_header_is_lowercased_without_port() {
        let req = Request::get("/")
            .header("host", "API.Example.com:8443")
            .body(())
            .unwrap();
        assert_eq!(host(req).unwrap().as_deref(), Some("api.example.com"));
        let req = Request::get("/")
            .header("host", "[::1]:8443")
            .body(())
            .unwrap();
        assert_eq!(host(req).unwrap().as_deref(), Some("[::1]"));
    }

    #[test]
    fn h2_authority_is_used_when_no_host_header() {
        let req = Request::get("https://svc.test:8443/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(host(req).unwrap().as_deref(), Some("svc.test"));
    }

    #[test]
    fn http11_without_host_is_400() {
        let req = Request::get("/").body(()).unwrap();
        assert!(matches!(
            host(req),
            Err(ProxyError::BadRequest("missing Host header"))
        ));
        let req = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(host(req).unwrap(), None);
    }

    #[test]
    fn repeated_or_garbage_host_is_400() {
        let req = Request::get("/")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert!(matches!(
            host(req),
            Err(ProxyError::BadRequest("repeated Host header"))
        ));
        let req = Request::get("/").header("host", "a b").body(()).unwrap();
        assert!(matches!(
            host(req),
            Err(ProxyError::BadRequest("invalid Host header"))
        ));
    }
}

//! The limits stage: the head's size (431) and the declared body size (413), checked on the
//! request as it came, before anything else reads it.

use http::Request;

use crate::config::ServerSettings;
use crate::error::ProxyError;
use crate::message::content_length;

/// Refuse heads over `max_header_bytes` (431) and declared bodies over `max_body_bytes` (413).
/// Bodies without a declared length are counted as they stream (see `LimitedBody`).
pub(super) fn check<B>(req: &Request<B>, settings: &ServerSettings) -> Result<(), ProxyError> {
    if head_size(req) > settings.max_header_bytes {
        return Err(ProxyError::HeadTooLarge);
    }
    // The h1 codec has applied the same parser already; this guards the h2 path, with the
    // same rules (message::content_length), so both protocols read one length.
    let declared = content_length::from_headers(req.headers())
        .map_err(|e| ProxyError::BadRequest(e.reason()))?;
    if declared.is_some_and(|len| len > settings.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge);
    }
    Ok(())
}

/// Size of the request head as it would appear on the wire in HTTP/1.1.
pub(super) fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    let authority = req.uri().authority().map_or(0, |a| a.as_str().len() + 8);
    let headers: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    line + authority + headers + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServerSettings {
        let mut s = ServerSettings::with_listen("127.0.0.1:0".parse().unwrap());
        s.max_header_bytes = 1024;
        s.max_body_bytes = 100;
        s
    }

    #[test]
    fn head_over_limit_is_431() {
        let req = Request::get("/")
            .header("x-big", "a".repeat(1100))
            .body(())
            .unwrap();
        assert!(matches!(
            check(&req, &settings()),
            Err(ProxyError::HeadTooLarge)
        ));
        let req = Request::get("/")
            .header("x-big", "a".repeat(900))
            .body(())
            .unwrap();
        assert!(check(&req, &settings()).is_ok());
    }

    #[test]
    fn declared_body_over_limit_is_413() {
        let req = Request::post("/")
            .header("content-length", "101")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&req, &settings()),
            Err(ProxyError::BodyTooLarge)
        ));
        let req = Request::post("/")
            .header("content-length", "100")
            .body(())
            .unwrap();
        assert!(check(&req, &settings()).is_ok());
        for bad in [
            "ten",
            "+5",
            " 5 ",
            "0x5",
            "5, 5",
            "-1",
            "99999999999999999999",
        ] {
            let req = Request::post("/")
                .header("content-length", bad)
                .body(())
                .unwrap();
            assert!(
                matches!(
                    check(&req, &settings()),
                    Err(ProxyError::BadRequest("invalid Content-Length"))
                ),
                "{bad:?}"
            );
        }
        let req = Request::post("/")
            .header("content-length", "5")
            .header("content-length", "6")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&req, &settings()),
            Err(ProxyError::BadRequest("conflicting Content-Length headers"))
        ));
        let req = Request::post("/")
            .header("content-length", "5")
            .header("content-length", "05")
            .body(())
            .unwrap();
        assert!(check(&req, &settings()).is_ok());
    }
}

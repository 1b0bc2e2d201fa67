//! The route stage: the first route whose host and path prefix match the request. The
//! normalise stage has settled the host in `Host` (the absolute-form target's or
//! :authority wins) and refused a missing, repeated or invalid one, so this only reads it in
//! matching form; prefixes match on segment boundaries of the routing view of the path.

use std::borrow::Cow;

use http::{Request, header};

use crate::error::ProxyError;
use crate::message::target::routing_view;
use crate::snapshot::{Route, Snapshot};

/// The request's route (404 when none matches).
pub(super) fn find<'s, B>(req: &Request<B>, snap: &'s Snapshot) -> Result<&'s Route, ProxyError> {
    let host = host_of(req);
    snap.route(host.as_deref(), &routing_view(req.uri().path()))
        .ok_or(ProxyError::NoRoute)
}

/// The request's host, lower-cased, without port or trailing dot; None for an HTTP/1.0
/// request that named none.
pub(super) fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let raw = req.headers().get(header::HOST)?.to_str().ok()?;
    crate::message::target::host_for_matching(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_read_in_matching_form() {
        let req = Request::get("/")
            .header("host", "API.Example.com.:8443")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("api.example.com"));
        let req = Request::get("/")
            .header("host", "[::1]:8443")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req).as_deref(), Some("[::1]"));
        let req = Request::get("/").body(()).unwrap();
        assert_eq!(host_of(&req), None);
    }
}

//! `[[routes]]`: host and path prefix, the upstream group, per-route auth, idempotency, methods.

use super::super::file::RawRoute;
use super::super::{AuthMode, IdempotencyMode, RouteSpec, UpstreamSpec};
use super::Validator;
use super::values::valid_name;

impl Validator {
    pub(super) fn routes(
        &mut self,
        value: Option<toml::Value>,
        upstreams: &[UpstreamSpec],
        auth_present: bool,
    ) -> Vec<RouteSpec> {
        let items = match value {
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.err("routes", "must be an array of tables: [[routes]]");
                return Vec::new();
            }
            None => {
                self.err(
                    "routes",
                    "missing: at least one [[routes]] entry is required",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, v) in items.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let Some(raw) = self.section::<RawRoute>(&key, v) else {
                continue;
            };
            if !raw.path_prefix.starts_with('/') {
                self.err(
                    format!("{key}.path_prefix"),
                    format!("{:?} must start with '/'", raw.path_prefix),
                );
            }
            // A group that failed its own validation was already reported; don't pile on.
            let group_known = upstreams.iter().any(|u| u.name == raw.upstream);
            if !group_known
                && !self.errors.iter().any(|e| {
                    let group = format!("upstreams.{}", raw.upstream);
                    e.key == group || e.key.starts_with(&format!("{group}."))
                })
            {
                self.err(
                    format!("{key}.upstream"),
                    format!("no upstream group named {:?}", raw.upstream),
                );
            }
            let host = raw.host.map(|h| h.trim().to_ascii_lowercase());
            if let Some(h) = &host
                && !valid_name(h)
            {
                self.err(
                    format!("{key}.host"),
                    format!("invalid host {h:?} (a DNS name or *.parent; no port, no scheme)"),
                );
            }
            // With an [auth] section, routes require a token unless they say otherwise.
            let auth = match raw.auth.as_deref() {
                None if auth_present => AuthMode::Required,
                None => AuthMode::Off,
                Some("required") => AuthMode::Required,
                Some("optional") => AuthMode::Optional,
                Some("off") => AuthMode::Off,
                Some(other) => {
                    self.err(
                        format!("{key}.auth"),
                        format!("unknown auth mode {other:?}, expected required, optional or off"),
                    );
                    AuthMode::Off
                }
            };
            if auth != AuthMode::Off && !auth_present {
                self.err(
                    format!("{key}.auth"),
                    "needs an [auth] section with at least one key",
                );
            }
            let idempotency = match raw.idempotency.as_deref() {
                None | Some("off") => IdempotencyMode::Off,
                Some("required") => IdempotencyMode::Required,
                Some("optional") => IdempotencyMode::Optional,
                Some(other) => {
                    self.err(
                        format!("{key}.idempotency"),
                        format!("unknown mode {other:?}, expected required, optional or off"),
                    );
                    IdempotencyMode::Off
                }
            };
            let mut allow_methods = Vec::new();
            for m in raw.allow_methods.unwrap_or_default() {
                match m.as_str() {
                    "TRACE" => allow_methods.push(http::Method::TRACE),
                    "CONNECT" => self.err(
                        format!("{key}.allow_methods"),
                        "CONNECT is always refused: doorman is a reverse proxy and opens no tunnels to a client's chosen authority",
                    ),
                    other => self.err(
                        format!("{key}.allow_methods"),
                        format!("{other:?}: only \"TRACE\" is refused by default (other methods need no allowing)"),
                    ),
                }
            }
            let p = raw.path_prefix.as_str();
            if p.contains(';') {
                self.err(
                    format!("{key}.path_prefix"),
                    format!("{p:?}: routes are matched with segment parameters (;…) removed, so it would never match"),
                );
            } else if p.starts_with('/')
                && crate::message::target::normalise_prefix(p).as_deref() != Some(p)
            {
                self.err(
                    format!("{key}.path_prefix"),
                    format!("{p:?} is not a normalised path (no dot segments, repeated or percent-encoded separators, or escapes of unreserved characters): requests are matched after normalisation, so it would never match"),
                );
            }
            out.push(RouteSpec {
                host,
                path_prefix: raw.path_prefix,
                upstream: raw.upstream,
                auth,
                idempotency,
                allow_methods,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MINIMAL_REST, errors, keys};

    #[test]
    fn a_route_to_a_similarly_named_broken_group_is_still_reported() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL_REST}\n[upstreams.api2]\nservers = []\n[[routes]]\npath_prefix = \"/x\"\nupstream = \"ap\"\n"
        );
        let keys = keys(&text);
        assert!(keys.contains(&"routes[1].upstream".to_string()), "{keys:?}");
    }

    #[test]
    fn route_prefixes_must_be_normal_and_lifetimes_whole_seconds() {
        let base = "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\nservers = [{ address = \"127.0.0.1:1\" }]\n";
        for (prefix, bad) in [
            ("/api", false),
            ("/api/", false),
            ("/a/../b", true),
            ("/%61pi", true),
            ("//api", true),
            ("/api;v=1", true),
        ] {
            let text = format!("{base}[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"a\"\n");
            assert_eq!(
                keys(&text).contains(&"routes[0].path_prefix".to_string()),
                bad,
                "{prefix}: {:?}",
                errors(&text)
            );
        }
        let text = format!(
            "{base}[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"off\"\n\
             [auth]\nmax_lifetime = \"500ms\"\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret_env = \"DOORMAN_TEST_UNSET_SECRET\"\n"
        );
        assert!(
            keys(&text).contains(&"auth.max_lifetime".to_string()),
            "{:?}",
            errors(&text)
        );
    }
}

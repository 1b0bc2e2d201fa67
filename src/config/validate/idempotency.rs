//! `[idempotency]`: the key header, keyed methods, lifetimes and size caps, and the lease bound.

use super::super::file::RawIdempotency;
use super::super::{
    IdempotencyMode, IdempotencySettings, RouteSpec, StoreSettings, UpstreamSpec, defaults,
};
use super::Validator;

impl Validator {
    pub(super) fn idempotency(&mut self, raw: RawIdempotency) -> IdempotencySettings {
        let d = IdempotencySettings::default();
        let header = match raw.header.as_deref() {
            None => d.header.clone(),
            Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => h,
                Err(_) => {
                    self.err("idempotency.header", format!("{h:?} is not a header name"));
                    d.header.clone()
                }
            },
        };
        let mut methods = Vec::new();
        for m in raw
            .methods
            .unwrap_or_else(|| vec!["POST".into(), "PATCH".into()])
        {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) if m != http::Method::CONNECT => methods.push(m),
                _ => self.err(
                    "idempotency.methods",
                    format!("{m:?} is not a method doorman can key"),
                ),
            }
        }
        let key_prefix = raw.key_prefix.unwrap_or(d.key_prefix.clone());
        if key_prefix.is_empty() || key_prefix.bytes().any(|b| b <= b' ') {
            self.err(
                "idempotency.key_prefix",
                format!("{key_prefix:?} must be non-empty, without spaces"),
            );
        }
        IdempotencySettings {
            header,
            methods,
            ttl: self.duration("idempotency.ttl", raw.ttl, d.ttl),
            lock_ttl: self.duration("idempotency.lock_ttl", raw.lock_ttl, d.lock_ttl),
            max_request_body_bytes: self.count(
                "idempotency.max_request_body_bytes",
                raw.max_request_body_bytes,
                d.max_request_body_bytes as usize,
                0,
                64 << 20,
            ) as u64,
            max_stored_body_bytes: self.count(
                "idempotency.max_stored_body_bytes",
                raw.max_stored_body_bytes,
                d.max_stored_body_bytes as usize,
                0,
                64 << 20,
            ) as u64,
            store_server_errors: raw.store_server_errors.unwrap_or(false),
            store_set_cookie: raw.store_set_cookie.unwrap_or(false),
            key_prefix,
        }
    }

    /// A lease must outlive the longest wait for a replica's head plus FINISH's store
    /// call and its margin, or a slow first request would lose its key to a duplicate
    /// while still running (or its FINISH would find the lease gone, nothing stored).
    pub(super) fn lease_outlives_finish(
        &mut self,
        idempotency: &IdempotencySettings,
        routes: &[RouteSpec],
        upstreams: &[UpstreamSpec],
        store: &StoreSettings,
    ) {
        for (i, r) in routes.iter().enumerate() {
            if r.idempotency == IdempotencyMode::Off {
                continue;
            }
            let Some(g) = upstreams.iter().find(|u| u.name == r.upstream) else {
                continue;
            };
            let needed = g.response_timeout + store.timeout + defaults::FINISH_MARGIN;
            if idempotency.lock_ttl <= needed {
                self.err(
                    "idempotency.lock_ttl",
                    format!(
                        "{:?} must exceed {needed:?}: the response_timeout ({:?}) of upstream {:?} used by routes[{i}] + [store] timeout ({:?}) + {:?} for FINISH to land within the lease",
                        idempotency.lock_ttl,
                        g.response_timeout,
                        g.name,
                        store.timeout,
                        defaults::FINISH_MARGIN
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::defaults;
    use super::super::tests::errors;

    #[test]
    fn lock_ttl_must_leave_finish_its_store_timeout_and_margin_after_the_head() {
        // 1 s response_timeout + 200 ms store timeout + the 100 ms FINISH_MARGIN = 1.3 s.
        assert_eq!(defaults::FINISH_MARGIN, Duration::from_millis(100));
        for (lock_ttl, idempotency, ok) in [
            ("1s", "required", false),
            ("1200ms", "required", false),
            ("1300ms", "optional", false),
            ("1301ms", "required", true),
            ("1s", "off", true),
        ] {
            let text = format!(
                r#"
                [server]
                listen = "127.0.0.1:1"
                [tls]
                certificates = [{{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }}]
                [upstreams.api]
                servers = [{{ address = "127.0.0.1:9001" }}]
                response_timeout = "1s"
                [store]
                timeout = "200ms"
                [idempotency]
                lock_ttl = "{lock_ttl}"
                [[routes]]
                path_prefix = "/"
                upstream = "api"
                idempotency = "{idempotency}"
                "#
            );
            let e = errors(&text);
            let bad: Vec<_> = e
                .iter()
                .filter(|e| e.key == "idempotency.lock_ttl")
                .collect();
            assert_eq!(bad.is_empty(), ok, "{lock_ttl} {idempotency}: {e:?}");
            if let [only] = bad[..] {
                assert_eq!(
                    only.message,
                    format!(
                        "{:?} must exceed 1.3s: the response_timeout (1s) of upstream \"api\" used by routes[0] + [store] timeout (200ms) + 100ms for FINISH to land within the lease",
                        humantime::parse_duration(lock_ttl).unwrap()
                    )
                );
            }
        }
    }
}

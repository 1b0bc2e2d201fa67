//! The snapshot: one fully built, immutable configuration, swapped atomically behind one
//! `ArcSwap`. A request loads it once and keeps it to the end, so a reload never changes the
//! rules under a running request.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Verifier;
use crate::config::{
    AuthMode, Config, IdempotencyMode, IdempotencySettings, OnError, RouteSpec, ServerSettings,
};
use crate::store::Store;
use crate::upstream::UpstreamGroup;

/// Everything a request or a new connection needs, built once per (re)load.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: ServerSettings,
    pub routes: Vec<Route>,
    pub groups: Vec<Arc<UpstreamGroup>>,
    pub tls: Arc<rustls::ServerConfig>,
    /// None when no `[auth]` is configured.
    pub auth: Option<Arc<Verifier>>,
    pub store: Store,
    pub revocation_enabled: bool,
    pub on_error: OnError,
    pub idempotency: IdempotencySettings,
}

/// A route with its group resolved: no name lookups at request time.
#[derive(Debug)]
pub struct Route {
    pub host: Option<HostMatch>,
    pub path_prefix: Arc<str>,
    pub group: Arc<UpstreamGroup>,
    pub auth: AuthMode,
    pub idempotency: IdempotencyMode,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
}

impl HostMatch {
    fn new(host: &str) -> Self {
        match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => HostMatch::Suffix(suffix.to_string()),
            _ => HostMatch::Exact(host.to_string()),
        }
    }

    /// `host` is lower-case, without port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    /// Build every runtime piece from a validated config. Call within a tokio runtime: a
    /// Redis store starts its background sync here.
    pub fn build(config: &Config) -> Result<Self, String> {
        let tls = crate::tls::server_config(&config.tls).map_err(|e| format!("tls: {e}"))?;
        let groups: Vec<Arc<UpstreamGroup>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(UpstreamGroup::build(u)))
            .collect();
        for g in &groups {
            g.start_health_checks();
        }
        let routes = config
            .routes
            .iter()
            .map(|r| route(r, &groups))
            .collect::<Result<Vec<_>, _>>()?;
        let leeway = config
            .auth
            .as_ref()
            .map_or(crate::config::defaults::LEEWAY, |a| a.leeway);
        let store = Store::new(&config.store, &config.revocation, leeway)?;
        if store.is_embedded() {
            tracing::warn!(
                "no [store] redis_url: using the embedded in-process store (one doorman instance only)"
            );
        }
        Ok(Snapshot {
            settings: config.server.clone(),
            routes,
            groups,
            tls,
            auth: config.auth.as_ref().map(|a| Arc::new(Verifier::new(a))),
            store,
            revocation_enabled: config.revocation.enabled,
            on_error: config.store.on_error,
            idempotency: config.idempotency.clone(),
        })
    }

    pub fn into_shared(self) -> SharedSnapshot {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// First match wins: host (when the route has one) and path prefix.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            path.starts_with(&*r.path_prefix)
                && match (&r.host, host) {
                    (None, _) => true,
                    (Some(m), Some(h)) => m.matches(h),
                    (Some(_), None) => false,
                }
        })
    }
}

fn route(spec: &RouteSpec, groups: &[Arc<UpstreamGroup>]) -> Result<Route, String> {
    let group = groups
        .iter()
        .find(|g| g.name == spec.upstream)
        .ok_or_else(|| {
            format!(
                "route {}: no upstream group {:?}",
                spec.path_prefix, spec.upstream
            )
        })?;
    Ok(Route {
        host: spec.host.as_deref().map(HostMatch::new),
        path_prefix: spec.path_prefix.as_str().into(),
        group: group.clone(),
        auth: spec.auth,
        idempotency: spec.idempotency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_match_exact_and_wildcard() {
        assert!(HostMatch::new("api.test").matches("api.test"));
        assert!(!HostMatch::new("api.test").matches("www.api.test"));
        let w = HostMatch::new("*.api.test");
        assert_eq!(w, HostMatch::Suffix(".api.test".into()));
        assert!(w.matches("a.api.test"));
        assert!(!w.matches("api.test"));
        assert!(!w.matches(".api.test"));
    }
}

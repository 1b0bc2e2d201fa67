//! The snapshot: one fully built, immutable configuration, swapped atomically behind one
//! `ArcSwap`. A request loads it once and keeps it to the end, so a reload never changes the
//! rules under a running request.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::Verifier;
use crate::config::{
    AuthMode, Config, IdempotencyMode, IdempotencySettings, OnError, RevocationSettings, RouteSpec,
    ServerSettings, StoreSettings, UpstreamSpec,
};
use crate::metrics::{Metrics, RouteMetrics};
use crate::store::Store;
use crate::upstream::UpstreamGroup;

/// Everything a request or a new connection needs, built once per (re)load.
#[derive(Debug)]
pub struct Snapshot {
    pub settings: ServerSettings,
    pub routes: Vec<Route>,
    pub(crate) groups: Vec<Arc<UpstreamGroup>>,
    pub tls: Arc<rustls::ServerConfig>,
    /// None when no `[auth]` is configured.
    pub auth: Option<Arc<Verifier>>,
    pub store: Store,
    pub revocation_enabled: bool,
    /// Shared by every snapshot of one running proxy: counts survive reloads.
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) on_error: OnError,
    pub(crate) idempotency: IdempotencySettings,
    /// `[log]` as loaded; `access_log` is the format lines are written in, None when off.
    pub(crate) log: crate::config::LogSettings,
    pub(crate) access_log: Option<crate::config::AccessFormat>,
    /// What the store was built from: a reload with the same settings keeps the store (its
    /// Redis connections, revocation view and embedded records).
    store_spec: (StoreSettings, RevocationSettings, std::time::Duration),
    /// What each group was built from (same order as `groups`): an unchanged group is kept
    /// whole across a reload.
    upstream_specs: Vec<UpstreamSpec>,
}

/// A route with its group resolved: no name lookups at request time.
#[derive(Debug)]
pub struct Route {
    pub(crate) host: Option<HostMatch>,
    pub path_prefix: Arc<str>,
    /// Its metric handles, and its name in metrics and logs (`metrics.label`): host +
    /// prefix (`api.test/v1/`), or the prefix alone for a route on any host.
    pub(crate) metrics: Arc<RouteMetrics>,
    pub(crate) group: Arc<UpstreamGroup>,
    pub(crate) auth: AuthMode,
    pub(crate) idempotency: IdempotencyMode,
    /// Methods refused by default (TRACE) that this route forwards.
    pub allow_methods: Vec<http::Method>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostMatch {
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
    pub(crate) fn matches(&self, host: &str) -> bool {
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
        Self::rebuild(config, None)
    }

    /// Build a snapshot to replace `previous` (a reload), carrying over what must survive
    /// it: an unchanged upstream group is kept whole (keep-alive pool, health and ejections,
    /// in-flight counts, retry budget, ring); a changed one is built anew and takes over the
    /// health state of the replicas it kept; an unchanged store (Redis connections,
    /// revocation view, embedded records) is kept, and so is an unchanged `[auth.jwks]` key
    /// set (its keys and refresh task). TLS, routes and static keys are always rebuilt.
    pub(crate) fn rebuild(config: &Config, previous: Option<&Snapshot>) -> Result<Self, String> {
        let tls = crate::tls::server_config(&config.tls, &config.cipher_suites)
            .map_err(|e| format!("tls: {e}"))?;
        let metrics = previous.map_or_else(|| Arc::new(Metrics::new()), |p| p.metrics.clone());
        let groups: Vec<Arc<UpstreamGroup>> = config
            .upstreams
            .iter()
            .map(|spec| {
                let old = previous.and_then(|p| {
                    p.groups
                        .iter()
                        .zip(&p.upstream_specs)
                        .find(|(g, _)| g.name == spec.name)
                });
                match old {
                    Some((g, old_spec)) if old_spec == spec => g.clone(),
                    _ => {
                        let g = Arc::new(UpstreamGroup::build(spec, &metrics));
                        if let Some((old, _)) = old {
                            g.inherit_health(old);
                        }
                        g.start_health_checks();
                        g.start_pool_reaper();
                        g
                    }
                }
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| route(r, &groups, &metrics))
            .collect::<Result<Vec<_>, _>>()?;
        let leeway = config
            .auth
            .as_ref()
            .map_or(crate::config::defaults::LEEWAY, |a| a.leeway);
        let store_spec = (config.store.clone(), config.revocation.clone(), leeway);
        let store = match previous {
            // The same store (the embedded one, or the same Redis and key prefix): kept, so
            // its connections, revocation view and records live on. Its tunable settings
            // are applied by `commit` once the reload is certain.
            Some(p) if same_store(&p.store_spec, &store_spec) => p.store.clone(),
            _ => {
                let store = Store::new(
                    &config.store,
                    &config.revocation,
                    leeway,
                    metrics.redis_counters(),
                    metrics.memory_counters(),
                )?;
                if store.is_embedded() {
                    tracing::warn!(
                        "no [store] redis_url, redis_sentinel or redis_cluster: using the embedded in-process store (one doorman instance only)"
                    );
                }
                store
            }
        };
        Ok(Snapshot {
            settings: config.server.clone(),
            routes,
            groups,
            tls,
            auth: config.auth.as_ref().map(|a| {
                let fetches = metrics.jwks_fetches.clone();
                let count: crate::auth::FetchCounter =
                    Arc::new(move |outcome| Metrics::count(&fetches, outcome));
                let running = previous.and_then(|p| p.auth.as_deref());
                Arc::new(Verifier::rebuild(a, running, Some(count)))
            }),
            store,
            revocation_enabled: config.revocation.enabled,
            metrics,
            on_error: config.store.on_error,
            idempotency: config.idempotency.clone(),
            log: config.log.clone(),
            access_log: (config.log.access != crate::config::AccessTarget::Off)
                .then_some(config.log.access_format),
            store_spec,
            upstream_specs: config.upstreams.clone(),
        })
    }

    /// The last step of a reload, when nothing can fail any more: settings of a kept store
    /// (timeout, TTLs, leeway) take effect, and a kept key set learns the new static kids.
    pub(crate) fn commit(&self) {
        let (store, revocation, leeway) = &self.store_spec;
        self.store
            .retune(store, crate::store::Records::new(revocation, *leeway));
        if let Some(auth) = &self.auth {
            auth.commit();
        }
    }

    /// `[store] timeout`: the budget of a store call on the request path.
    pub(crate) fn store_timeout(&self) -> std::time::Duration {
        self.store_spec.0.timeout
    }

    pub fn into_shared(self) -> SharedSnapshot {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// First match wins: host (when the route has one) and path prefix, on segment
    /// boundaries (`/api` matches `/api` and `/api/…`, not `/apiary`). `path` is normalised.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            crate::message::target::under_prefix(path, &r.path_prefix)
                && match (&r.host, host) {
                    (None, _) => true,
                    (Some(m), Some(h)) => m.matches(h),
                    (Some(_), None) => false,
                }
        })
    }
}

/// Whether a reload may keep the running store: the embedded store always (its records are
/// the only copy), a Redis store while where it connects (URL or sentinels and master, and
/// the password, the CA for rediss://) and the key prefix its view tracks are the same.
fn same_store(
    old: &(StoreSettings, RevocationSettings, std::time::Duration),
    new: &(StoreSettings, RevocationSettings, std::time::Duration),
) -> bool {
    match (&old.0.redis, &new.0.redis) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a == b
                && old.0.password == new.0.password
                && old.0.ca_pem == new.0.ca_pem
                && old.1.key_prefix == new.1.key_prefix
        }
        _ => false,
    }
}

fn route(
    spec: &RouteSpec,
    groups: &[Arc<UpstreamGroup>],
    metrics: &Metrics,
) -> Result<Route, String> {
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
        metrics: Arc::new(RouteMetrics::new(
            metrics,
            match &spec.host {
                Some(h) => format!("{h}{}", spec.path_prefix).into(),
                None => spec.path_prefix.as_str().into(),
            },
            group.servers.iter().map(|s| s.address).collect(),
        )),
        group: group.clone(),
        auth: spec.auth,
        idempotency: spec.idempotency,
        allow_methods: spec.allow_methods.clone(),
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

//! Prometheus metrics (prometheus-client, OpenMetrics text on `GET /metrics`).
//!
//! One `Metrics` per running proxy, held by the snapshot and handed on by every reload, so
//! counts survive reloads and two proxies in one process (tests) never mix. Label values
//! are bounded by the configuration: route prefixes, group names, replica addresses, fixed
//! outcome names — never request ids, keys, tokens or raw paths. Per-replica handles are
//! resolved once when a group is built (`ReplicaMetrics`) and the in-flight gauges once per
//! process, a route's request counters and duration histogram when its snapshot is built
//! (`RouteMetrics`), and the auth outcomes every authenticated request counts at start
//! (`AuthCounters`): recording a request hashes no labels.

mod gauge;
mod groups;
mod labels;
mod register;
mod route;
mod store;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub(crate) use gauge::GaugeGuard;
pub(crate) use groups::{GroupMetrics, ReplicaMetrics};
use labels::{
    ConfigLabels, GroupLabels, KindLabels, OpLabels, Replica, ReplicaLabels, RequestLabels,
    RouteLabels,
};
pub(crate) use labels::{MethodLabel, Name, NodeLabels, OutcomeLabels, ProtocolLabels};
pub(crate) use route::RouteMetrics;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn latency() -> Histogram {
    // 100 µs … ~52 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(latency)
}

/// Every metric doorman exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub started: Instant,
    /// The handles of requests that matched no route (label `-`), made on first use.
    no_route: OnceLock<RouteMetrics>,
    /// In-flight gauges for h1 and h2, resolved once.
    pub in_flight_h1: Gauge,
    pub in_flight_h2: Gauge,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Histograms<RouteLabels>,
    pub upstream_duration: Histograms<ReplicaLabels>,
    pub connections: Family<ProtocolLabels, Gauge>,
    pub in_flight: Family<ProtocolLabels, Gauge>,
    pub tls_handshakes: Family<OutcomeLabels, Counter>,
    pub replica_up: Family<ReplicaLabels, Gauge>,
    pub replica_in_flight: Family<ReplicaLabels, Gauge>,
    pub ejections: Family<ReplicaLabels, Counter>,
    pub connect_errors: Family<ReplicaLabels, Counter>,
    pub upstream_timeouts: Family<ReplicaLabels, Counter>,
    pub selections: Family<ReplicaLabels, Counter>,
    pub retries: Family<GroupLabels, Counter>,
    pub retry_budget_exhausted: Family<GroupLabels, Counter>,
    pub hash_fallbacks: Family<GroupLabels, Counter>,
    pub bounded_load_spills: Family<GroupLabels, Counter>,
    pub auth: Family<OutcomeLabels, Counter>,
    /// Handles into `auth`, `token_cache` and `revocation_view` for the common outcomes.
    pub auth_counters: AuthCounters,
    pub token_cache: Family<OutcomeLabels, Counter>,
    pub revocation_view: Family<OutcomeLabels, Counter>,
    /// `[auth.jwks]`: fetches by outcome; keys in force and seconds since the last good
    /// fetch, read from the live key set at scrape time.
    pub jwks_fetches: Family<OutcomeLabels, Counter>,
    jwks_keys: Gauge,
    jwks_age: Gauge,
    pub idempotency: Family<OutcomeLabels, Counter>,
    /// Idempotency FINISH scripts that failed or timed out (op `store`: a result; op
    /// `release`: giving the key back): the key keeps its lease until `lock_ttl`.
    pub idempotency_store_failures: Family<OpLabels, Counter>,
    pub store_duration: Histograms<OpLabels>,
    pub store_errors: Family<OpLabels, Counter>,
    pub store_open_passes: Family<OpLabels, Counter>,
    pub store_evictions: Family<KindLabels, Counter>,
    pub store_refusals: Family<KindLabels, Counter>,
    pub revocation_resyncs: Counter,
    /// Redis store: times the resolved master changed (Sentinel failovers followed).
    pub store_failovers: Counter,
    /// Redis store: 1 while the tracking session is connected.
    pub store_connected: Gauge,
    pub store_topology_version: Gauge,
    pub(crate) store_node_connected: Family<NodeLabels, Gauge>,
    /// Redis store: 1 while the revocation view is trusted (checks answered locally).
    pub revocation_view_trusted: Gauge,
    pub reloads: Family<OutcomeLabels, Counter>,
    pub config: Family<ConfigLabels, Gauge>,
    /// Not exported (the request counter has them by route): per-replica answers and
    /// failures for the status page's error rates, kept across group rebuilds.
    answered: Family<ReplicaLabels, Counter>,
    failed: Family<ReplicaLabels, Counter>,
    /// Replicas and groups that have series, so a reload can drop those it removed.
    known_replicas: Mutex<HashSet<ReplicaLabels>>,
    known_groups: Mutex<HashSet<GroupLabels>>,
    /// The config hash exported now (its series is replaced, never cleared).
    config_hash: Mutex<Option<String>>,
    log_dropped: Counter,
    log_dropped_seen: AtomicU64,
}

/// Lines the log writer thread dropped because its buffer was full (set by `main`).
static LOG_DROPPED: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> = OnceLock::new();

/// Tell the metrics where to read the log writer's dropped-line count.
pub fn set_log_dropped_source(f: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = LOG_DROPPED.set(Box::new(f));
}

/// The auth outcomes of a request that passes, resolved once per process.
#[derive(Debug, Clone)]
pub(crate) struct AuthCounters {
    pub ok: Counter,
    pub cache_hit: Counter,
    pub cache_miss: Counter,
    pub view_hit: Counter,
    pub view_miss: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let in_flight: Family<ProtocolLabels, Gauge> = Family::default();
        let gauge = |protocol| {
            in_flight
                .get_or_create(&ProtocolLabels { protocol })
                .clone()
        };
        let (in_flight_h1, in_flight_h2) = (gauge("h1"), gauge("h2"));
        let [auth, token_cache, revocation_view]: [Family<OutcomeLabels, Counter>; 3] =
            Default::default();
        let outcome = |f: &Family<OutcomeLabels, Counter>, outcome| {
            f.get_or_create(&OutcomeLabels { outcome }).clone()
        };
        let auth_counters = AuthCounters {
            ok: outcome(&auth, "ok"),
            cache_hit: outcome(&token_cache, "hit"),
            cache_miss: outcome(&token_cache, "miss"),
            view_hit: outcome(&revocation_view, "hit"),
            view_miss: outcome(&revocation_view, "miss"),
        };
        let m = Metrics {
            registry: Registry::with_prefix("doorman"),
            started: Instant::now(),
            no_route: OnceLock::new(),
            in_flight_h1,
            in_flight_h2,
            requests: Family::default(),
            request_duration: histograms(),
            upstream_duration: histograms(),
            connections: Family::default(),
            in_flight,
            tls_handshakes: Family::default(),
            replica_up: Family::default(),
            replica_in_flight: Family::default(),
            ejections: Family::default(),
            connect_errors: Family::default(),
            upstream_timeouts: Family::default(),
            selections: Family::default(),
            retries: Family::default(),
            retry_budget_exhausted: Family::default(),
            hash_fallbacks: Family::default(),
            bounded_load_spills: Family::default(),
            auth,
            auth_counters,
            token_cache,
            revocation_view,
            jwks_fetches: Family::default(),
            jwks_keys: Gauge::default(),
            jwks_age: Gauge::default(),
            idempotency: Family::default(),
            idempotency_store_failures: Family::default(),
            store_duration: histograms(),
            store_errors: Family::default(),
            store_open_passes: Family::default(),
            store_evictions: Family::default(),
            store_refusals: Family::default(),
            revocation_resyncs: Counter::default(),
            store_failovers: Counter::default(),
            store_connected: Gauge::default(),
            store_topology_version: Gauge::default(),
            store_node_connected: Family::default(),
            revocation_view_trusted: Gauge::default(),
            reloads: Family::default(),
            config: Family::default(),
            answered: Family::default(),
            failed: Family::default(),
            known_replicas: Default::default(),
            known_groups: Default::default(),
            config_hash: Default::default(),
            log_dropped: Counter::default(),
            log_dropped_seen: AtomicU64::new(0),
        };
        m.register()
    }

    pub(crate) fn count(family: &Family<OutcomeLabels, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn count_op(family: &Family<OpLabels, Counter>, op: &'static str) {
        family.get_or_create(&OpLabels { op }).inc();
    }

    /// The running configuration: one series, its hash, valued at its load time. The new
    /// series exists before the old one goes, so a scrape never sees none.
    pub(crate) fn set_config(&self, hash: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut current = lock(&self.config_hash);
        self.config
            .get_or_create(&ConfigLabels {
                hash: hash.to_string(),
            })
            .set(now);
        if let Some(old) = current.replace(hash.to_string())
            && old != hash
        {
            self.config.remove(&ConfigLabels { hash: old });
        }
    }

    /// Read what is only known at scrape time: each live replica's liveness and in-flight
    /// count, (group, address, up, in flight) (set in place: a concurrent scrape never sees
    /// them missing), and the log writer's dropped lines.
    pub(crate) fn refresh<'a>(
        &self,
        replicas: impl IntoIterator<Item = (&'a Name, SocketAddr, bool, usize)>,
    ) {
        for (group, address, up, in_flight) in replicas {
            let l = ReplicaLabels {
                group: group.clone(),
                replica: Replica(Some(address)),
            };
            self.replica_up.get_or_create(&l).set(i64::from(up));
            self.replica_in_flight
                .get_or_create(&l)
                .set(in_flight as i64);
        }
        if let Some(dropped) = LOG_DROPPED.get().map(|f| f()) {
            let seen = self.log_dropped_seen.swap(dropped, Ordering::Relaxed);
            self.log_dropped.inc_by(dropped.saturating_sub(seen));
        }
    }

    /// The key set's live gauges at scrape time: (keys in force, seconds since the last
    /// good fetch); None (no `[auth.jwks]`) reads 0 for both.
    pub(crate) fn set_jwks(&self, gauges: Option<(i64, i64)>) {
        let (keys, age) = gauges.unwrap_or_default();
        self.jwks_keys.set(keys);
        self.jwks_age.set(age);
    }

    /// OpenMetrics text of everything.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

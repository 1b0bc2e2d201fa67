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

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label value shared rather than copied (route prefixes, group names).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub(crate) struct Name(pub Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        w.write_str(&self.0)
    }
}

/// A replica address, or "-" when no replica was involved.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) struct Replica(pub Option<SocketAddr>);

impl EncodeLabelValue for Replica {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(a) => write!(w, "{a}"),
            None => w.write_str("-"),
        }
    }
}

/// The method, folded into a fixed set.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms)]
pub(crate) enum MethodLabel {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
    OTHER,
}

impl MethodLabel {
    pub(crate) fn of(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Self::GET,
            http::Method::HEAD => Self::HEAD,
            http::Method::POST => Self::POST,
            http::Method::PUT => Self::PUT,
            http::Method::PATCH => Self::PATCH,
            http::Method::DELETE => Self::DELETE,
            http::Method::OPTIONS => Self::OPTIONS,
            _ => Self::OTHER,
        }
    }
}

/// 1xx … 5xx: holds the class only, so 200 and 204 are one series.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub(crate) struct StatusClass(u16);

impl StatusClass {
    pub(crate) fn of(status: u16) -> Self {
        StatusClass(status / 100)
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, w: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        write!(w, "{}xx", self.0)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub route: Name,
    pub method: MethodLabel,
    pub status: StatusClass,
    pub upstream: Replica,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RouteLabels {
    pub route: Name,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReplicaLabels {
    pub group: Name,
    pub replica: Replica,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabels {
    pub group: Name,
}

/// An outcome from a fixed vocabulary (ok, a failure reason, hit/miss, ...).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabels {
    pub outcome: &'static str,
}

/// A state-store operation, or the feature a store failure was let through for.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OpLabels {
    pub op: &'static str,
}

/// What kind of stored state an eviction or refusal concerned.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabels {
    pub kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConfigLabels {
    pub hash: String,
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

/// Methods × status classes (`status / 100`, 1 … 9 for the codes hyper accepts).
const METHOD_LABELS: usize = 8;
const STATUS_CLASSES: usize = 10;
/// Routes over groups larger than this count requests through the family lookup: the
/// route's table of handles stays small.
const ROUTE_TABLE_REPLICAS: usize = 32;

/// A route's metric handles, resolved when its snapshot is built: the duration histogram,
/// and the request counters, one per method × status class × replica (or none), each
/// resolved the first time it is counted. The series are the same as through the families.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    pub label: Name,
    duration: Histogram,
    /// The group's replicas in order: a counter's slot is its position + 1 (0: none).
    replicas: Vec<SocketAddr>,
    requests: Box<[OnceLock<Counter>]>,
}

impl RouteMetrics {
    /// `replicas`: the route's group, in order.
    pub(crate) fn new(m: &Metrics, label: Arc<str>, mut replicas: Vec<SocketAddr>) -> Self {
        let label = Name(label);
        if replicas.len() > ROUTE_TABLE_REPLICAS {
            replicas = Vec::new();
        }
        let slots = METHOD_LABELS * STATUS_CLASSES * (replicas.len() + 1);
        RouteMetrics {
            duration: m
                .request_duration
                .get_or_create(&RouteLabels {
                    route: label.clone(),
                })
                .clone(),
            label,
            requests: (0..slots).map(|_| OnceLock::new()).collect(),
            replicas,
        }
    }

    /// Where the counter for these labels sits in the table; None: not in it.
    fn slot(
        &self,
        method: MethodLabel,
        class: StatusClass,
        upstream: Option<SocketAddr>,
    ) -> Option<usize> {
        let replica = match upstream {
            None => 0,
            Some(a) => self.replicas.iter().position(|r| *r == a)? + 1,
        };
        let class = usize::from(class.0);
        (class < STATUS_CLASSES).then(|| {
            (method as usize * STATUS_CLASSES + class) * (self.replicas.len() + 1) + replica
        })
    }

    /// Count one answered request and observe its duration.
    pub(crate) fn record(
        &self,
        m: &Metrics,
        method: MethodLabel,
        status: u16,
        upstream: Option<SocketAddr>,
        took: std::time::Duration,
    ) {
        self.duration.observe(took.as_secs_f64());
        let class = StatusClass::of(status);
        let labels = || RequestLabels {
            route: self.label.clone(),
            method,
            status: class,
            upstream: Replica(upstream),
        };
        match self.slot(method, class, upstream) {
            Some(i) => self.requests[i]
                .get_or_init(|| m.requests.get_or_create(&labels()).clone())
                .inc(),
            None => m.requests.get_or_create(&labels()).inc(),
        };
    }
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

/// A replica's metric handles, resolved once per group build.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaMetrics {
    pub selections: Counter,
    pub ejections: Counter,
    pub connect_errors: Counter,
    pub timeouts: Counter,
    pub upstream_duration: Histogram,
    /// Answers from this replica (any status) and 5xx/failed ones, for the status page.
    pub answered: Counter,
    pub failed: Counter,
}

/// A group's metric handles.
#[derive(Debug, Clone)]
pub(crate) struct GroupMetrics {
    pub retries: Counter,
    pub retry_budget_exhausted: Counter,
    pub hash_fallbacks: Counter,
    pub bounded_load_spills: Counter,
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
            idempotency: Family::default(),
            idempotency_store_failures: Family::default(),
            store_duration: histograms(),
            store_errors: Family::default(),
            store_open_passes: Family::default(),
            store_evictions: Family::default(),
            store_refusals: Family::default(),
            revocation_resyncs: Counter::default(),
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

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "requests",
            "Requests answered, by route, method, status class and replica",
            self.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request head to response head, downstream",
            self.request_duration.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time from sending to a replica to its response head",
            self.upstream_duration.clone(),
        );
        r.register(
            "connections",
            "Open downstream connections by protocol",
            self.connections.clone(),
        );
        r.register(
            "in_flight_requests",
            "Requests being handled, by protocol",
            self.in_flight.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes by result (ok, or the failure reason)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "replica_up",
            "1 while a replica may take traffic (healthy, not ejected, weight > 0)",
            self.replica_up.clone(),
        );
        r.register(
            "replica_in_flight",
            "Requests sent to a replica and waiting for its response head",
            self.replica_in_flight.clone(),
        );
        r.register(
            "replica_ejections",
            "Passive ejections after consecutive failures",
            self.ejections.clone(),
        );
        r.register(
            "upstream_connect_errors",
            "Connections to a replica that failed",
            self.connect_errors.clone(),
        );
        r.register(
            "upstream_timeouts",
            "Replica answers slower than response_timeout",
            self.upstream_timeouts.clone(),
        );
        r.register(
            "balancer_selections",
            "Times the balancer picked a replica (first attempts and retries)",
            self.selections.clone(),
        );
        r.register(
            "retries",
            "Requests re-sent on another replica",
            self.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries refused because the group's retry budget was spent",
            self.retry_budget_exhausted.clone(),
        );
        r.register(
            "hash_fallbacks",
            "Consistent-hash requests without a key, sent round robin",
            self.hash_fallbacks.clone(),
        );
        r.register(
            "bounded_load_spills",
            "Consistent-hash keys passed on because their replica was at its load cap",
            self.bounded_load_spills.clone(),
        );
        r.register(
            "auth_verifications",
            "Bearer token checks by outcome",
            self.auth.clone(),
        );
        r.register(
            "auth_token_cache",
            "Verified-token cache lookups (hit, miss)",
            self.token_cache.clone(),
        );
        r.register(
            "revocation_checks",
            "Revocation checks: answered by the local view (hit) or by Redis (miss)",
            self.revocation_view.clone(),
        );
        r.register("idempotency", "Keyed requests by outcome (first, replay, conflict, mismatch, not_replayable, bad_key, failed) and leases that expired before their result was stored (lease_expired)", self.idempotency.clone());
        r.register(
            "idempotency_store_failures",
            "Idempotency results (op=store) or releases (op=release) the store did not take in time; the key stays leased until lock_ttl",
            self.idempotency_store_failures.clone(),
        );
        r.register(
            "revocation_resyncs",
            "Times the Redis revocation view became coherent again (a fresh read of the whole list)",
            self.revocation_resyncs.clone(),
        );
        r.register(
            "log_dropped_lines",
            "Log lines dropped because the non-blocking log writer's buffer was full",
            self.log_dropped.clone(),
        );
        r.register(
            "store_duration_seconds",
            "State store operations on the request path",
            self.store_duration.clone(),
        );
        r.register(
            "store_errors",
            "State store operations that failed or timed out",
            self.store_errors.clone(),
        );
        r.register(
            "store_open_passes",
            "Requests let through because the store failed and on_error = open",
            self.store_open_passes.clone(),
        );
        r.register(
            "store_evictions",
            "Embedded store: completed idempotency records evicted before their ttl to stay within embedded_max_entries / embedded_max_bytes (kind=idempotency)",
            self.store_evictions.clone(),
        );
        r.register(
            "store_refusals",
            "Embedded store: writes refused at a cap (kind=idempotency_lease: a new key while only leases are held; kind=revocation: beyond embedded_max_revocations)",
            self.store_refusals.clone(),
        );
        r.register(
            "reloads",
            "Configuration reloads by result",
            self.reloads.clone(),
        );
        r.register(
            "config_loaded_timestamp_seconds",
            "When the running configuration (by hash) was loaded",
            self.config.clone(),
        );
        self
    }

    /// The embedded store's handles (its series exist from the start, at 0).
    pub(crate) fn memory_counters(&self) -> crate::store::MemoryCounters {
        let kind =
            |f: &Family<KindLabels, Counter>, kind| f.get_or_create(&KindLabels { kind }).clone();
        crate::store::MemoryCounters {
            evictions: kind(&self.store_evictions, "idempotency"),
            lease_refusals: kind(&self.store_refusals, "idempotency_lease"),
            revocation_refusals: kind(&self.store_refusals, "revocation"),
        }
    }

    /// Handles for one replica of `group`.
    pub(crate) fn replica(&self, group: &Name, addr: SocketAddr) -> ReplicaMetrics {
        let l = ReplicaLabels {
            group: group.clone(),
            replica: Replica(Some(addr)),
        };
        lock(&self.known_replicas).insert(l.clone());
        ReplicaMetrics {
            selections: self.selections.get_or_create(&l).clone(),
            ejections: self.ejections.get_or_create(&l).clone(),
            connect_errors: self.connect_errors.get_or_create(&l).clone(),
            timeouts: self.upstream_timeouts.get_or_create(&l).clone(),
            upstream_duration: self.upstream_duration.get_or_create(&l).clone(),
            answered: self.answered.get_or_create(&l).clone(),
            failed: self.failed.get_or_create(&l).clone(),
        }
    }

    pub(crate) fn group(&self, group: &Name) -> GroupMetrics {
        let l = GroupLabels {
            group: group.clone(),
        };
        lock(&self.known_groups).insert(l.clone());
        GroupMetrics {
            retries: self.retries.get_or_create(&l).clone(),
            retry_budget_exhausted: self.retry_budget_exhausted.get_or_create(&l).clone(),
            hash_fallbacks: self.hash_fallbacks.get_or_create(&l).clone(),
            bounded_load_spills: self.bounded_load_spills.get_or_create(&l).clone(),
        }
    }

    /// The handles for requests that matched no route.
    pub(crate) fn no_route(&self) -> &RouteMetrics {
        self.no_route
            .get_or_init(|| RouteMetrics::new(self, "-".into(), Vec::new()))
    }

    pub(crate) fn count(family: &Family<OutcomeLabels, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn count_op(family: &Family<OpLabels, Counter>, op: &'static str) {
        family.get_or_create(&OpLabels { op }).inc();
    }

    /// Record one state-store operation that took `took`.
    pub(crate) fn store_observe(&self, op: &'static str, took: std::time::Duration, failed: bool) {
        let l = OpLabels { op };
        self.store_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        if failed {
            self.store_errors.get_or_create(&l).inc();
        }
    }

    /// Time a state-store operation and count its failure.
    pub(crate) async fn store_op<T, E>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = f.await;
        self.store_observe(op, start.elapsed(), result.is_err());
        result
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

    /// After a reload: drop the series of replicas and groups no longer configured, so
    /// they neither linger as flat lines nor pile up as addresses change. Series of those
    /// that stayed keep counting.
    pub(crate) fn retain<'a>(
        &self,
        replicas: impl IntoIterator<Item = (&'a Name, SocketAddr)>,
        groups: impl IntoIterator<Item = &'a Name>,
    ) {
        let live: HashSet<ReplicaLabels> = replicas
            .into_iter()
            .map(|(group, address)| ReplicaLabels {
                group: group.clone(),
                replica: Replica(Some(address)),
            })
            .collect();
        let mut known = lock(&self.known_replicas);
        for gone in known.difference(&live) {
            self.selections.remove(gone);
            self.ejections.remove(gone);
            self.connect_errors.remove(gone);
            self.upstream_timeouts.remove(gone);
            self.upstream_duration.remove(gone);
            self.replica_up.remove(gone);
            self.replica_in_flight.remove(gone);
            self.answered.remove(gone);
            self.failed.remove(gone);
        }
        *known = live;
        let live: HashSet<GroupLabels> = groups
            .into_iter()
            .map(|group| GroupLabels {
                group: group.clone(),
            })
            .collect();
        let mut known = lock(&self.known_groups);
        for gone in known.difference(&live) {
            self.retries.remove(gone);
            self.retry_budget_exhausted.remove(gone);
            self.hash_fallbacks.remove(gone);
            self.bounded_load_spills.remove(gone);
        }
        *known = live;
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

    /// OpenMetrics text of everything.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Counts a value in a gauge while alive (connections, in-flight requests).
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub(crate) fn new(g: Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn route_handles_count_into_the_same_series_as_the_family() {
        let m = Metrics::new();
        let a: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:9002".parse().unwrap();
        let outside: SocketAddr = "127.0.0.1:9009".parse().unwrap();
        let r = RouteMetrics::new(&m, "/api/".into(), vec![a, b]);
        let ms = std::time::Duration::from_millis(1);
        r.record(&m, MethodLabel::GET, 200, Some(a), ms);
        r.record(&m, MethodLabel::GET, 204, Some(a), ms);
        r.record(&m, MethodLabel::GET, 200, Some(b), ms);
        r.record(&m, MethodLabel::POST, 404, None, ms);
        // Not in the group (the table has no slot for it): counted through the family.
        r.record(&m, MethodLabel::GET, 502, Some(outside), ms);
        m.no_route().record(&m, MethodLabel::GET, 404, None, ms);

        let count = |route: &str, method, status, upstream| {
            m.requests
                .get_or_create(&RequestLabels {
                    route: Name(route.into()),
                    method,
                    status: StatusClass::of(status),
                    upstream: Replica(upstream),
                })
                .get()
        };
        assert_eq!(count("/api/", MethodLabel::GET, 200, Some(a)), 2);
        assert_eq!(count("/api/", MethodLabel::GET, 200, Some(b)), 1);
        assert_eq!(count("/api/", MethodLabel::POST, 404, None), 1);
        assert_eq!(count("/api/", MethodLabel::GET, 502, Some(outside)), 1);
        assert_eq!(count("-", MethodLabel::GET, 404, None), 1);
        assert_eq!(count("/api/", MethodLabel::GET, 500, Some(a)), 0);

        let text = m.encode();
        assert_eq!(
            line(
                &text,
                "doorman_request_duration_seconds_count{route=\"/api/\"}"
            ),
            Some("doorman_request_duration_seconds_count{route=\"/api/\"} 5")
        );
        assert_eq!(
            line(&text, "doorman_request_duration_seconds_count{route=\"-\"}"),
            Some("doorman_request_duration_seconds_count{route=\"-\"} 1")
        );
    }

    #[test]
    fn a_group_larger_than_the_table_counts_through_the_family() {
        let m = Metrics::new();
        let many: Vec<SocketAddr> = (0..=ROUTE_TABLE_REPLICAS as u16)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 10_000 + i)))
            .collect();
        let r = RouteMetrics::new(&m, "/big/".into(), many.clone());
        assert_eq!(r.requests.len(), METHOD_LABELS * STATUS_CLASSES);
        let last = *many.last().unwrap();
        r.record(
            &m,
            MethodLabel::PUT,
            201,
            Some(last),
            std::time::Duration::ZERO,
        );
        let got = m
            .requests
            .get_or_create(&RequestLabels {
                route: Name("/big/".into()),
                method: MethodLabel::PUT,
                status: StatusClass::of(201),
                upstream: Replica(Some(last)),
            })
            .get();
        assert_eq!(got, 1);
    }
}

//! An upstream group: its replicas and their health state, its balancer, its retry budget,
//! and per replica the HTTP/1.1 keep-alive pool (`pool.rs`) built with the group's connect
//! timeout and keep-alive limits. Active checks that feed the health state are `health.rs`'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;

use super::pool::ConnPool;
use crate::balance::{Ring, RoundRobin};
use crate::config::{Balance, HashKey, HealthSpec, UpstreamSpec};
use crate::metrics::{GroupMetrics, Metrics, Name, ReplicaMetrics};

/// One replica, with what the hot path needs precomputed.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub address: SocketAddr,
    pub weight: u32,
    /// `ip:port` as a URI authority, parsed once.
    pub authority: Authority,
    /// Requests sent and waiting for their response head (for bounded-load hashing).
    pub in_flight: AtomicUsize,
    /// Active checks: up until `unhealthy_threshold` failures in a row.
    pub healthy: AtomicBool,
    checks_ok: AtomicU32,
    checks_failed: AtomicU32,
    /// Passive: consecutive connect failures / 5xx, and the ejection that may follow.
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    pub metrics: ReplicaMetrics,
    /// Idle keep-alive connections to this replica, and how new ones are made.
    pub pool: Arc<ConnPool>,
}

/// Retries available when traffic is quiet (the budget's floor), and its cap, in milli-retries.
const RETRY_FLOOR: i64 = 10_000;
const RETRY_CAP: i64 = 100_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Upstream {
    /// May this replica take traffic now?
    #[inline]
    pub(crate) fn usable(&self) -> bool {
        self.weight > 0
            && self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now_ms()
    }

    /// The replica's state in words (status page): why it takes no traffic, or "up".
    pub(crate) fn state(&self) -> &'static str {
        if self.weight == 0 {
            "drained"
        } else if !self.healthy.load(Ordering::Relaxed) {
            "unhealthy"
        } else if self.ejected_until_ms.load(Ordering::Relaxed) > now_ms() {
            "ejected"
        } else {
            "up"
        }
    }

    /// Take over another replica's health state (the same address in the group a reload
    /// replaced): passive failures and ejection always; the active-check verdict only when
    /// checks still run (`active`) — otherwise nothing would ever bring it back.
    fn inherit(&self, old: &Upstream, active: bool) {
        let copy = |to: &AtomicU32, from: &AtomicU32| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        if active {
            self.healthy
                .store(old.healthy.load(Ordering::Relaxed), Ordering::Relaxed);
            copy(&self.checks_ok, &old.checks_ok);
            copy(&self.checks_failed, &old.checks_failed);
        }
        copy(&self.failures, &old.failures);
        self.ejected_until_ms.store(
            old.ejected_until_ms.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
    }

    /// Passive health: the outcome of one proxied request (false: connect failure or 5xx).
    pub(crate) fn report(&self, ok: bool, health: &HealthSpec) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if health.eject_after_failures > 0 && n >= health.eject_after_failures {
            self.failures.store(0, Ordering::Relaxed);
            let until = now_ms() + health.eject_for.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            self.metrics.ejections.inc();
            tracing::warn!(upstream = %self.address, failures = n, eject_for = ?health.eject_for, "replica ejected");
        }
    }

    /// Active health: one check's outcome, flipping state after the thresholds.
    pub(super) fn record_check(&self, ok: bool, health: &HealthSpec) {
        if ok {
            self.checks_failed.store(0, Ordering::Relaxed);
            let n = self.checks_ok.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= health.healthy_threshold && !self.healthy.swap(true, Ordering::Relaxed) {
                tracing::info!(upstream = %self.address, "replica healthy again");
            }
        } else {
            self.checks_ok.store(0, Ordering::Relaxed);
            let n = self.checks_failed.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= health.unhealthy_threshold && self.healthy.swap(false, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.address, checks_failed = n, "replica unhealthy");
            }
        }
    }
}

/// Counts a request as in flight on a replica while it lives.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(crate) fn new(upstream: &'a Upstream) -> Self {
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&upstream.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sticky selection for a consistent-hash group.
#[derive(Debug)]
pub(crate) struct Sticky {
    pub key: HashKey,
    pub ring: Ring,
    pub balance_factor: Option<f64>,
}

#[derive(Debug)]
pub(crate) struct UpstreamGroup {
    pub name: String,
    /// The name as a metric label.
    pub label: Name,
    pub metrics: GroupMetrics,
    pub servers: Vec<Upstream>,
    /// Round robin, and the fallback of a sticky group for requests without a key.
    pub balancer: RoundRobin,
    pub sticky: Option<Sticky>,
    pub health: HealthSpec,
    pub retries: u32,
    /// Retry budget in milli-retries: each request deposits `retry_budget × 1000`, each retry
    /// withdraws 1000 (a token bucket, capped, with a small floor for quiet periods).
    retry_tokens: std::sync::atomic::AtomicI64,
    retry_deposit: i64,
    /// Sum of the servers' weights (bounded-load caps are weighted shares of it).
    pub total_weight: u32,
    pub response_timeout: Duration,
    /// How long an idle upstream connection is kept.
    keepalive_timeout: Duration,
}

impl UpstreamGroup {
    pub(crate) fn build(spec: &UpstreamSpec, metrics: &Metrics) -> Self {
        let name = Name(spec.name.as_str().into());
        let servers: Vec<Upstream> = spec
            .servers
            .iter()
            .map(|s| Upstream {
                address: s.address,
                weight: s.weight,
                authority: Authority::try_from(s.address.to_string())
                    .expect("a socket address is a valid authority"),
                in_flight: AtomicUsize::new(0),
                healthy: AtomicBool::new(true),
                checks_ok: AtomicU32::new(0),
                checks_failed: AtomicU32::new(0),
                failures: AtomicU32::new(0),
                ejected_until_ms: AtomicU64::new(0),
                metrics: metrics.replica(&name, s.address),
                pool: Arc::new(ConnPool::new(
                    s.address,
                    spec.connect_timeout,
                    spec.keepalive,
                    spec.keepalive_timeout,
                )),
            })
            .collect();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();

        UpstreamGroup {
            name: spec.name.clone(),
            metrics: metrics.group(&name),
            label: name,
            servers,
            balancer: RoundRobin::new(&weights),
            sticky: match &spec.balance {
                Balance::RoundRobin => None,
                Balance::ConsistentHash(h) => Some(Sticky {
                    key: h.key.clone(),
                    ring: Ring::new(
                        &spec
                            .servers
                            .iter()
                            .map(|s| (s.address, s.weight))
                            .collect::<Vec<_>>(),
                        h.virtual_nodes,
                    ),
                    balance_factor: h.balance_factor,
                }),
            },
            total_weight: weights.iter().sum(),
            health: spec.health.clone(),
            retries: spec.retries,
            retry_tokens: std::sync::atomic::AtomicI64::new(RETRY_FLOOR),
            retry_deposit: (spec.retry_budget * 1000.0) as i64,
            response_timeout: spec.response_timeout,
            keepalive_timeout: spec.keepalive_timeout,
        }
    }

    /// Count one request toward the retry budget.
    #[inline]
    pub(crate) fn deposit_retry_budget(&self) {
        if self.retries > 0 {
            let t = self
                .retry_tokens
                .fetch_add(self.retry_deposit, Ordering::Relaxed);
            if t > RETRY_CAP {
                self.retry_tokens.store(RETRY_CAP, Ordering::Relaxed);
            }
        }
    }

    /// Take one retry from the budget, if it has one.
    pub(crate) fn withdraw_retry(&self) -> bool {
        self.retry_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }

    /// Like `select_for`, skipping replicas already tried for this request.
    pub(crate) fn select_excluding(&self, key: Option<u64>, tried: &[usize]) -> Option<usize> {
        let ok = |i: usize| self.servers[i].usable() && !tried.contains(&i);
        match (&self.sticky, key) {
            (Some(sticky), Some(hash)) => sticky.ring.pick(hash, ok),
            _ => self.balancer.select_where(ok),
        }
    }

    /// After a reload changed this group: replicas that stayed keep their health state.
    pub(crate) fn inherit_health(&self, old: &UpstreamGroup) {
        for s in &self.servers {
            if let Some(o) = old.servers.iter().find(|o| o.address == s.address) {
                s.inherit(o, self.health.path.is_some());
            }
        }
    }

    /// Whether any replica may take traffic (for /ready).
    pub(crate) fn has_live_replica(&self) -> bool {
        self.servers.iter().any(Upstream::usable)
    }

    /// Close idle upstream connections past the keep-alive timeout, every half of it, so
    /// they close when traffic stops too. The task holds the group weakly and ends when the
    /// group's snapshot is gone. Call within a tokio runtime.
    pub(crate) fn start_pool_reaper(self: &Arc<Self>) {
        let group = Arc::downgrade(self);
        let every = (self.keepalive_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(g) = group.upgrade() else { return };
                for s in &g.servers {
                    s.pool.prune();
                }
            }
        });
    }

    /// The replica for a request whose sticky key hashes to `key` (None: no key, or not a
    /// sticky group → round robin). With a balance factor, a replica at its cap of
    /// `ceil(factor × (in-flight + 1) / replicas)` passes the key on along the ring.
    pub(crate) fn select_for(&self, key: Option<u64>) -> Option<usize> {
        let usable = |i: usize| self.servers[i].usable();
        let Some(sticky) = &self.sticky else {
            return self.balancer.select_where(usable);
        };
        let Some(hash) = key else {
            self.metrics.hash_fallbacks.inc();
            return self.balancer.select_where(usable);
        };
        let Some(factor) = sticky.balance_factor else {
            return sticky.ring.pick(hash, usable);
        };
        // Each replica's cap is its weighted share of the in-flight requests (plus this one),
        // times the factor: a replica at its normal share is never passed over.
        let total: usize = self
            .servers
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum();
        let scale = factor * (total + 1) as f64 / f64::from(self.total_weight.max(1));
        let home = sticky.ring.pick(hash, usable);
        let picked = sticky
            .ring
            .pick(hash, |i| {
                let s = &self.servers[i];
                let cap = (scale * f64::from(s.weight)).ceil() as usize;
                s.usable() && s.in_flight.load(Ordering::Relaxed) < cap
            })
            .or(home);
        if picked != home {
            self.metrics.bounded_load_spills.inc();
        }
        picked
    }
}

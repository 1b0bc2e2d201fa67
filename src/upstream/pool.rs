//! An upstream group: its replicas, its balancer and its HTTP/1.1 keep-alive pool.
//!
//! One hyper-util client per group, so connect timeout and keep-alive limits are per group;
//! the pool is keyed by replica address, so a replica sees a handful of long-lived
//! connections rather than one per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::{Ring, RoundRobin};
use crate::config::{Balance, HashKey, UpstreamSpec};

/// The body type doorman sends upstream: the downstream body under the size limit.
pub type UpstreamRequestBody = crate::pipeline::LimitedBody;

/// One replica, with what the hot path needs precomputed.
#[derive(Debug)]
pub struct Upstream {
    pub address: SocketAddr,
    pub weight: u32,
    /// `ip:port` as a URI authority, parsed once.
    pub authority: Authority,
    /// Requests sent and waiting for their response head (for bounded-load hashing).
    pub in_flight: AtomicUsize,
}

/// Counts a request as in flight on a replica while it lives.
pub struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub fn new(upstream: &'a Upstream) -> Self {
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
pub struct Sticky {
    pub key: HashKey,
    pub ring: Ring,
    pub balance_factor: Option<f64>,
}

#[derive(Debug)]
pub struct UpstreamGroup {
    pub name: String,
    pub servers: Vec<Upstream>,
    /// Round robin, and the fallback of a sticky group for requests without a key.
    pub balancer: RoundRobin,
    pub sticky: Option<Sticky>,
    /// Sum of the servers' weights (bounded-load caps are weighted shares of it).
    pub total_weight: u32,
    pub response_timeout: Duration,
    pub client: Client<HttpConnector, UpstreamRequestBody>,
}

impl UpstreamGroup {
    pub fn build(spec: &UpstreamSpec) -> Self {
        let servers: Vec<Upstream> = spec
            .servers
            .iter()
            .map(|s| Upstream {
                address: s.address,
                weight: s.weight,
                authority: Authority::try_from(s.address.to_string())
                    .expect("a socket address is a valid authority"),
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(spec.keepalive_timeout)
            .pool_max_idle_per_host(spec.keepalive)
            // We always set Host ourselves: it is the client's, not the replica's address.
            .set_host(false)
            .build(connector);

        UpstreamGroup {
            name: spec.name.clone(),
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
            response_timeout: spec.response_timeout,
            client,
        }
    }

    /// The replica for the next request, or None when the group has no usable server.
    #[inline]
    pub fn select(&self) -> Option<&Upstream> {
        self.balancer.select().map(|i| &self.servers[i])
    }

    /// The replica for a request whose sticky key hashes to `key` (None: no key, or not a
    /// sticky group → round robin). With a balance factor, a replica at its cap of
    /// `ceil(factor × (in-flight + 1) / replicas)` passes the key on along the ring.
    pub fn select_for(&self, key: Option<u64>) -> Option<usize> {
        let (Some(sticky), Some(hash)) = (&self.sticky, key) else {
            return self.balancer.select();
        };
        let Some(factor) = sticky.balance_factor else {
            return sticky.ring.pick(hash, |_| true);
        };
        // Each replica's cap is its weighted share of the in-flight requests (plus this one),
        // times the factor: a replica at its normal share is never passed over.
        let total: usize = self
            .servers
            .iter()
            .map(|s| s.in_flight.load(Ordering::Relaxed))
            .sum();
        let scale = factor * (total + 1) as f64 / f64::from(self.total_weight.max(1));
        sticky
            .ring
            .pick(hash, |i| {
                let s = &self.servers[i];
                let cap = (scale * f64::from(s.weight)).ceil() as usize;
                s.in_flight.load(Ordering::Relaxed) < cap
            })
            .or_else(|| sticky.ring.pick(hash, |_| true))
    }
}

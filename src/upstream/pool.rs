//! An upstream group: its replicas, its balancer and its HTTP/1.1 keep-alive pool.
//!
//! One hyper-util client per group, so connect timeout and keep-alive limits are per group;
//! the pool is keyed by replica address, so a replica sees a handful of long-lived
//! connections rather than one per request.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::balance::RoundRobin;
use crate::config::UpstreamSpec;

/// The body type doorman sends upstream: the downstream body under the size limit.
pub type UpstreamRequestBody = crate::pipeline::LimitedBody;

/// One replica, with what the hot path needs precomputed.
#[derive(Debug)]
pub struct Upstream {
    pub address: SocketAddr,
    pub weight: u32,
    /// `ip:port` as a URI authority, parsed once.
    pub authority: Authority,
}

#[derive(Debug)]
pub struct UpstreamGroup {
    pub name: String,
    pub servers: Vec<Upstream>,
    pub balancer: RoundRobin,
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
            response_timeout: spec.response_timeout,
            client,
        }
    }

    /// The replica for the next request, or None when the group has no usable server.
    #[inline]
    pub fn select(&self) -> Option<&Upstream> {
        self.balancer.select().map(|i| &self.servers[i])
    }

    /// Like `select`, as an index into `servers` (for work that outlives the borrow).
    #[inline]
    pub fn select_index(&self) -> Option<usize> {
        self.balancer.select()
    }
}

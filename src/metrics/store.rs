//! The state store's metrics: operation timing and failures, the embedded store's caps.

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Metrics;
use super::labels::{KindLabels, OpLabels};

impl Metrics {
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

    /// The Redis store's handles: its resyncs and failovers, its session and view state.
    pub(crate) fn redis_counters(&self) -> crate::store::RedisCounters {
        crate::store::RedisCounters {
            resyncs: self.revocation_resyncs.clone(),
            failovers: self.store_failovers.clone(),
            connected: self.store_connected.clone(),
            view_trusted: self.revocation_view_trusted.clone(),
            topology_version: self.store_topology_version.clone(),
            node_connected: self.store_node_connected.clone(),
        }
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
}

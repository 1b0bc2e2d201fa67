//! The exported series: each family's name and help text in the registry.

use super::Metrics;

impl Metrics {
    pub(super) fn register(mut self) -> Self {
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
        r.register(
            "jwks_fetches",
            "Key set fetches from the identity provider by outcome (ok, http_status, timeout, connect, too_large, invalid, no_usable_keys, discovery)",
            self.jwks_fetches.clone(),
        );
        r.register(
            "jwks_keys",
            "Keys of the identity provider's key set in force (0 without [auth.jwks])",
            self.jwks_keys.clone(),
        );
        r.register(
            "jwks_seconds_since_success",
            "Seconds since the key set was last fetched and parsed (since start when it never was)",
            self.jwks_age.clone(),
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
            "store_failovers",
            "Redis store: times the master resolved through the sentinels changed, or a cluster master left the masters (a failover followed)",
            self.store_failovers.clone(),
        );
        r.register(
            "store_connected",
            "Redis store: 1 while the revocation tracking session is connected to its node (on a cluster, to at least one master)",
            self.store_connected.clone(),
        );
        r.register(
            "store_node_connected",
            "Redis Cluster: 1 while the revocation tracking session to this master is connected",
            self.store_node_connected.clone(),
        );
        r.register(
            "store_topology_version",
            "Redis Cluster: how many different topologies (masters and their slots) were seen; each change resyncs the revocation view",
            self.store_topology_version.clone(),
        );
        r.register(
            "revocation_view_trusted",
            "1 while revocation checks are answered locally (always with the embedded store; with Redis, while the view is in sync), 0 while they go to Redis",
            self.revocation_view_trusted.clone(),
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
}

//! The raw shape of proxy.toml: serde types with `deny_unknown_fields`, nothing validated yet.
//!
//! Every value a user can get wrong (addresses, durations) is kept as a string here so that
//! validation can report all mistakes in one pass with the key they sit under.

use serde::Deserialize;

/// Top-level sections. Each is checked key by key, then deserialized on its own (see
/// `validate::keys`), so that a typo does not hide the errors after it.
///
/// The known keys of each table are the fields of its raw type below (read from serde's own
/// field list): add a key by adding a field, nowhere else.
pub(crate) const SECTIONS: &[&str] = &[
    "server",
    "tls",
    "upstreams",
    "routes",
    "store",
    "auth",
    "revocation",
    "idempotency",
    "log",
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<String>,
    pub(crate) plain_listen: Option<String>,
    pub(crate) admin_listen: Option<String>,
    pub(crate) workers: Option<i64>,
    pub(crate) max_connections: Option<i64>,
    pub(crate) max_header_bytes: Option<i64>,
    pub(crate) max_body_bytes: Option<i64>,
    pub(crate) header_timeout: Option<String>,
    pub(crate) idle_timeout: Option<String>,
    pub(crate) shutdown_grace: Option<String>,
    pub(crate) pid_file: Option<String>,
    pub(crate) merge_slashes: Option<bool>,
    pub(crate) escaped_slashes: Option<String>,
    pub(crate) underscores_in_headers: Option<String>,
    pub(crate) admin_hosts: Option<Vec<String>>,
    pub(crate) admin_token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    #[serde(default)]
    pub(crate) certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub(crate) cipher_suites: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub(crate) cert: String,
    pub(crate) key: String,
    #[serde(default)]
    pub(crate) server_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) balance: Option<String>,
    pub(crate) hash_key: Option<String>,
    pub(crate) hash_fallback: Option<String>,
    pub(crate) hash_balance_factor: Option<f64>,
    pub(crate) virtual_nodes: Option<i64>,
    pub(crate) health: Option<RawHealth>,
    pub(crate) retries: Option<i64>,
    pub(crate) retry_budget: Option<f64>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) response_timeout: Option<String>,
    pub(crate) keepalive: Option<i64>,
    pub(crate) keepalive_timeout: Option<String>,
    pub(crate) servers: Vec<RawServerEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) path: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) healthy_threshold: Option<i64>,
    pub(crate) unhealthy_threshold: Option<i64>,
    pub(crate) eject_after_failures: Option<i64>,
    pub(crate) eject_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerEntry {
    pub(crate) address: String,
    pub(crate) weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) path_prefix: String,
    pub(crate) upstream: String,
    pub(crate) host: Option<String>,
    pub(crate) auth: Option<String>,
    pub(crate) idempotency: Option<String>,
    pub(crate) allow_methods: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIdempotency {
    pub(crate) header: Option<String>,
    pub(crate) methods: Option<Vec<String>>,
    pub(crate) ttl: Option<String>,
    pub(crate) lock_ttl: Option<String>,
    pub(crate) max_request_body_bytes: Option<i64>,
    pub(crate) max_stored_body_bytes: Option<i64>,
    pub(crate) store_server_errors: Option<bool>,
    pub(crate) store_set_cookie: Option<bool>,
    pub(crate) key_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStore {
    pub(crate) redis_url: Option<String>,
    pub(crate) redis_sentinel: Option<RawSentinel>,
    pub(crate) redis_cluster: Option<Vec<String>>,
    pub(crate) ca_file: Option<String>,
    pub(crate) password_env: Option<String>,
    pub(crate) durable_revocations: Option<bool>,
    pub(crate) timeout: Option<String>,
    pub(crate) on_error: Option<String>,
    pub(crate) embedded_max_entries: Option<i64>,
    pub(crate) embedded_max_bytes: Option<i64>,
    pub(crate) embedded_max_revocations: Option<i64>,
}

/// `[store] redis_sentinel = { master = "...", sentinels = ["redis://...", ...] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSentinel {
    pub(crate) master: String,
    pub(crate) sentinels: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuth {
    pub(crate) issuer: Option<String>,
    pub(crate) audiences: Option<Vec<String>>,
    pub(crate) leeway: Option<String>,
    pub(crate) require_jti: Option<bool>,
    #[serde(default)]
    pub(crate) forward_claims: std::collections::BTreeMap<String, String>,
    pub(crate) strip_authorization: Option<bool>,
    pub(crate) cache_entries: Option<i64>,
    pub(crate) max_lifetime: Option<String>,
    #[serde(default)]
    pub(crate) keys: Vec<RawKey>,
    pub(crate) jwks: Option<RawJwks>,
}

/// `[auth.jwks]`: a JSON Web Key Set from the identity provider.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwks {
    pub(crate) url: Option<String>,
    pub(crate) discovery: Option<bool>,
    pub(crate) file: Option<String>,
    pub(crate) refresh: Option<String>,
    pub(crate) min_refresh: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) ca_file: Option<String>,
    pub(crate) algorithms: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKey {
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: String,
    pub(crate) secret_env: Option<String>,
    pub(crate) secret_file: Option<String>,
    pub(crate) public_key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRevocation {
    pub(crate) enabled: Option<bool>,
    pub(crate) key_prefix: Option<String>,
    pub(crate) subject_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) access: Option<String>,
    pub(crate) access_format: Option<String>,
    pub(crate) level: Option<String>,
}

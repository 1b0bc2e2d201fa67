//! proxy.toml: typed configuration, parsed once and validated in one pass.
//!
//! `file` holds the raw serde shape; `validate` turns it into [`Config`], whose fields are
//! `Duration`s, `SocketAddr`s and loaded certificates — never strings to re-parse at request time.

mod file;
mod jwks;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::message::target::EscapedSlashes;
pub use jwks::{MAX_KEYS, MIN_RSA_BITS, ParsedKeySet, SetKey, Skipped, parse_key_set};
pub use validate::{load, parse, url_allowed};

/// Defaults for every key that has one, in one place so docs and code agree.
pub mod defaults {
    use std::time::Duration;
    pub(crate) const ADMIN_LISTEN: &str = "127.0.0.1:9901";
    pub(crate) const MAX_CONNECTIONS: usize = 10_000;
    pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;
    pub(crate) const MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
    pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
    pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
    pub(crate) const KEEPALIVE: usize = 64;
    pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
    pub(crate) const WEIGHT: u32 = 1;
    pub(crate) const STORE_TIMEOUT: Duration = Duration::from_millis(50);
    pub const LEEWAY: Duration = Duration::from_secs(30);
    pub(crate) const AUTH_CACHE_ENTRIES: usize = 16_384;
    pub(crate) const KEY_PREFIX: &str = "doorman:revoked:";
    pub(crate) const SUBJECT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
    /// Shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size; 256 bits here).
    pub(crate) const MIN_SECRET_BYTES: usize = 32;
    pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";
    pub(crate) const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);
    pub(crate) const LOCK_TTL: Duration = Duration::from_secs(60);
    /// What a keyed request leaves unused at the end of its lease, beyond the store timeout
    /// its FINISH may take: a fixed amount, not a fraction of `lock_ttl`, because what it
    /// absorbs does not grow with the lease — the time between the body deadline firing and
    /// FINISH being on the wire (encoding the record, a busy runtime's scheduling, the
    /// timer's millisecond granularity) and the store's own expiry precision (Redis: 1 ms).
    /// A fraction would take seconds from a 60 s lease for nothing. Checked at load:
    /// `lock_ttl` must exceed `response_timeout + [store] timeout +` this.
    pub(crate) const FINISH_MARGIN: Duration = Duration::from_millis(100);
    pub(crate) const IDEMPOTENCY_BODY_BYTES: usize = 1024 * 1024;
    pub(crate) const IDEMPOTENCY_PREFIX: &str = "doorman:idem:";
    pub(crate) const MAX_WEIGHT: u32 = 1000;
    /// Embedded store caps (one instance only; production uses Redis with `maxmemory`).
    pub(crate) const EMBEDDED_MAX_ENTRIES: usize = 100_000;
    pub(crate) const EMBEDDED_MAX_BYTES: usize = 256 * 1024 * 1024;
    pub(crate) const EMBEDDED_MAX_REVOCATIONS: usize = 1_000_000;
    /// `[auth.jwks]`: background refresh, the shortest interval between two fetches a
    /// token with an unknown kid may cause, and one fetch's budget.
    pub(crate) const JWKS_REFRESH: Duration = Duration::from_secs(300);
    pub(crate) const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
    pub(crate) const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
    pub(crate) const JWKS_ALGORITHMS: &[jsonwebtoken::Algorithm] = &[
        jsonwebtoken::Algorithm::RS256,
        jsonwebtoken::Algorithm::ES256,
    ];
    /// The largest JWKS (or discovery) document read.
    pub(crate) const JWKS_MAX_BYTES: usize = 1024 * 1024;
}

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub tls: Vec<CertificateSpec>,
    /// `[tls] cipher_suites`: the TLS 1.3 suites in the server's order of preference, which
    /// then overrides the client's. Empty: rustls' suites, in the client's order.
    pub cipher_suites: Vec<rustls::SupportedCipherSuite>,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    pub store: StoreSettings,
    /// None when there is no `[auth]` section: no route may then require a token.
    pub auth: Option<AuthSettings>,
    pub revocation: RevocationSettings,
    pub(crate) idempotency: IdempotencySettings,
    /// `[log]`: where access-log lines go, their format, the diagnostic log's level.
    pub log: LogSettings,
}

/// `[log]`. Reloadable: a SIGHUP that changes it reopens the access log with the new settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub access: AccessTarget,
    pub access_format: AccessFormat,
    /// The diagnostic log's level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG`, when
    /// set, overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            access: AccessTarget::Stderr,
            access_format: AccessFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// `[log] access`: `"stderr"`, `"off"`, or a file path (opened for append, reopened on SIGUSR1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessTarget {
    Off,
    Stderr,
    File(PathBuf),
}

/// `[log] access_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// One line, fixed field order (docs/logging.md).
    Text,
    /// One JSON object per line, stable keys (docs/logging.md).
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencySettings {
    /// The header carrying the key (lower-case); `x-` + it is accepted too.
    pub header: http::HeaderName,
    pub methods: Vec<http::Method>,
    /// How long a completed response can be replayed.
    pub ttl: Duration,
    /// Lease on an in-flight request.
    pub lock_ttl: Duration,
    pub max_request_body_bytes: u64,
    pub max_stored_body_bytes: u64,
    /// Store and replay upstream 5xx / timeouts (Stripe-style) instead of releasing the key.
    pub store_server_errors: bool,
    pub store_set_cookie: bool,
    pub key_prefix: String,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        IdempotencySettings {
            header: http::HeaderName::from_static(defaults::IDEMPOTENCY_HEADER),
            methods: vec![http::Method::POST, http::Method::PATCH],
            ttl: defaults::IDEMPOTENCY_TTL,
            lock_ttl: defaults::LOCK_TTL,
            max_request_body_bytes: defaults::IDEMPOTENCY_BODY_BYTES as u64,
            max_stored_body_bytes: defaults::IDEMPOTENCY_BODY_BYTES as u64,
            store_server_errors: false,
            store_set_cookie: false,
            key_prefix: defaults::IDEMPOTENCY_PREFIX.to_string(),
        }
    }
}

/// Whether a route enforces idempotency keys on the configured methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdempotencyMode {
    Required,
    /// Enforced when the client sends a key.
    Optional,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// None: the embedded in-process store (one instance only).
    pub redis: Option<RedisSpec>,
    /// `password_env`'s value, read at load: the password of the Redis nodes (for Sentinel,
    /// of the master and replicas; a sentinel's own comes from its URL).
    pub password: Option<Secret>,
    /// `ca_file`'s certificates (PEM), read at load: the roots that `rediss://` nodes are
    /// verified against instead of the system's.
    pub ca_pem: Option<Arc<[u8]>>,
    /// Revocation writes wait for one replica (`WAIT 1`) within `timeout`, so that a
    /// failover cannot lose an acknowledged revocation; the write reports whether it was.
    pub durable_revocations: bool,
    /// Budget for any store call on the request path.
    pub timeout: Duration,
    pub on_error: OnError,
    /// Embedded store: most idempotency records kept (completed ones are evicted oldest
    /// first beyond it; leases never are).
    pub embedded_max_entries: usize,
    /// Embedded store: most bytes of idempotency records kept (same eviction order).
    pub embedded_max_bytes: usize,
    /// Embedded store: most revocation entries kept; beyond it a new revocation is refused,
    /// never an old one forgotten (forgetting would let a revoked token back in).
    pub embedded_max_revocations: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            redis: None,
            password: None,
            ca_pem: None,
            durable_revocations: false,
            timeout: defaults::STORE_TIMEOUT,
            on_error: OnError::Closed,
            embedded_max_entries: defaults::EMBEDDED_MAX_ENTRIES,
            embedded_max_bytes: defaults::EMBEDDED_MAX_BYTES,
            embedded_max_revocations: defaults::EMBEDDED_MAX_REVOCATIONS,
        }
    }
}

/// Where the Redis store lives (`[store] redis_url`, `redis_sentinel` or `redis_cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisSpec {
    /// One node.
    Url(String),
    /// The master that the sentinels name `master`, resolved again after every failover.
    Sentinel {
        master: String,
        sentinels: Vec<String>,
    },
    /// A Redis Cluster, found through these seed nodes (the topology is discovered).
    Cluster(Vec<String>),
}

/// A secret read from the environment (a Redis password): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Arc<str>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a request gets when the store cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// 503.
    Closed,
    /// Let the request through.
    Open,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub leeway: Duration,
    pub require_jti: bool,
    /// claim name → header sent upstream.
    pub forward_claims: Vec<(String, http::HeaderName)>,
    pub strip_authorization: bool,
    pub cache_entries: usize,
    /// Longest accepted token lifetime (`exp - iat`); a token over it, or without `iat`
    /// when this is set, is refused. None: no cap.
    pub max_lifetime: Option<Duration>,
    pub keys: Vec<JwtKey>,
    /// `[auth.jwks]`: keys from the identity provider, besides `keys`.
    pub jwks: Option<JwksSettings>,
}

/// `[auth.jwks]`, validated: where the key set comes from and how it is kept fresh.
#[derive(Debug, Clone, PartialEq)]
pub struct JwksSettings {
    pub source: JwksSource,
    /// Background refresh; a provider's `Cache-Control: max-age` is honoured within
    /// [`min_refresh`, `refresh`].
    pub refresh: Duration,
    /// A token naming an unknown kid causes at most one fetch per this interval.
    pub min_refresh: Duration,
    /// One HTTP request, connect to last byte.
    pub timeout: Duration,
    /// `ca_file`'s certificates, trusted besides the system's roots.
    pub ca: Vec<pki_types::CertificateDer<'static>>,
    /// The algorithms keys from the set may be used with.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
}

/// Where a key set comes from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// `url`: the set itself.
    Url(http::Uri),
    /// `discovery = true`: `{issuer}/.well-known/openid-configuration`, whose `issuer` must
    /// be `[auth] issuer` and whose `jwks_uri` is the set.
    Discovery { document: http::Uri, issuer: String },
    /// `file`: read and parsed at load (and at every reload).
    File {
        path: PathBuf,
        keys: Arc<ParsedKeySet>,
    },
}

impl PartialEq for JwksSource {
    /// Equal sources let a reload keep the running set and its refresh task. A file is
    /// never equal: a reload reads it again.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (JwksSource::Url(a), JwksSource::Url(b)) => a == b,
            (
                JwksSource::Discovery { document, issuer },
                JwksSource::Discovery {
                    document: d,
                    issuer: i,
                },
            ) => document == d && issuer == i,
            _ => false,
        }
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::Url(u) => write!(f, "{u}"),
            JwksSource::Discovery { document, .. } => write!(f, "discovery via {document}"),
            JwksSource::File { path, .. } => write!(f, "file {}", path.display()),
        }
    }
}

/// A verification key, loaded at config time. The algorithm is pinned here, never taken
/// from a token.
#[derive(Clone)]
pub struct JwtKey {
    pub kid: Option<String>,
    pub algorithm: jsonwebtoken::Algorithm,
    pub key: jsonwebtoken::DecodingKey,
}

impl fmt::Debug for JwtKey {
    // Never print key material (HMAC secrets live in DecodingKey).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationSettings {
    pub enabled: bool,
    pub key_prefix: String,
    /// How long a subject-wide revocation is kept: must outlast the longest token lifetime.
    pub subject_ttl: Duration,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        RevocationSettings {
            enabled: true,
            key_prefix: defaults::KEY_PREFIX.to_string(),
            subject_ttl: defaults::SUBJECT_TTL,
        }
    }
}

/// Whether a route needs a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthMode {
    Required,
    /// Verified when present; absent is fine, invalid is not.
    Optional,
    Off,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub plain_listen: Option<SocketAddr>,
    pub admin_listen: SocketAddr,
    pub workers: usize,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Where `run` writes its process id (for `doorman reload`); None: no pid file.
    pub pid_file: Option<PathBuf>,
    /// Merge runs of `/` in request paths into one before routing (nginx `merge_slashes on`).
    pub merge_slashes: bool,
    /// What to do with `%2F`, `%5C` (encoded `/`, `\`) in a request path.
    pub(crate) escaped_slashes: EscapedSlashes,
    /// What to do with request header names containing `_`.
    pub(crate) underscores_in_headers: Underscores,
    /// Host names (besides IP literals and `localhost`) the admin listener answers to.
    pub admin_hosts: Vec<String>,
    /// Bearer token every admin request must carry, read from `admin_token_env` at load.
    pub admin_token: Option<AdminToken>,
}

/// `[server] underscores_in_headers`, as nginx's `underscores_in_headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Underscores {
    /// Remove such headers before anything reads them (nginx's default).
    Drop,
    /// 400.
    Reject,
    /// Keep them (CGI-style backends then cannot tell `x_user_id` from `x-user-id`).
    Allow,
}

/// A secret read from the environment: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub Arc<str>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl ServerSettings {
    /// Settings with every default applied, listening on `listen` (used by `demo`).
    pub(crate) fn with_listen(listen: SocketAddr) -> Self {
        ServerSettings {
            listen,
            plain_listen: None,
            admin_listen: defaults::ADMIN_LISTEN.parse().expect("valid default"),
            workers: default_workers(),
            max_connections: defaults::MAX_CONNECTIONS,
            max_header_bytes: defaults::MAX_HEADER_BYTES,
            max_body_bytes: defaults::MAX_BODY_BYTES,
            header_timeout: defaults::HEADER_TIMEOUT,
            idle_timeout: defaults::IDLE_TIMEOUT,
            shutdown_grace: defaults::SHUTDOWN_GRACE,
            pid_file: None,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
            underscores_in_headers: Underscores::Drop,
            admin_hosts: Vec::new(),
            admin_token: None,
        }
    }
}

pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// One certificate chain with its key, already loaded and checked to match.
#[derive(Clone)]
pub struct CertificateSpec {
    pub server_names: Vec<String>,
    pub key: Arc<rustls::sign::CertifiedKey>,
    /// Where it came from, for logs.
    pub source: String,
}

impl fmt::Debug for CertificateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateSpec")
            .field("server_names", &self.server_names)
            .field("source", &self.source)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Balance {
    RoundRobin,
    /// Sticky: a key taken from each request picks its replica on a consistent-hash ring.
    ConsistentHash(HashSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HashSpec {
    pub key: HashKey,
    /// Ring points per unit of weight.
    pub virtual_nodes: u32,
    /// Bounded loads: no replica above `factor ×` the mean in-flight requests.
    pub balance_factor: Option<f64>,
}

/// Where the sticky key comes from. A request without one falls back to round robin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    Header(http::HeaderName),
    Cookie(String),
    /// A claim of the verified JWT.
    Claim(String),
    Query(String),
    /// The client's IP address.
    Ip,
}

/// Active health checks (when `path` is set) and passive ejection of a group's replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthSpec {
    /// GET this path on each replica every `interval`; None: no active checks.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Passive: consecutive connect failures or 5xx before a replica is ejected (0: never).
    pub eject_after_failures: u32,
    pub eject_for: Duration,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            path: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            eject_after_failures: 5,
            eject_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSpec {
    pub name: String,
    pub(crate) balance: Balance,
    pub(crate) health: HealthSpec,
    /// Extra attempts on another replica, where safe.
    pub retries: u32,
    /// Retries may add at most this fraction to the request rate.
    pub retry_budget: f64,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// Idle keep-alive connections kept per replica.
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub servers: Vec<ServerSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub address: SocketAddr,
    /// 0 = drained: configured but given no traffic.
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Lower-case host without port; `*.example.com` matches any subdomain. None = any host.
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: String,
    pub(crate) auth: AuthMode,
    pub(crate) idempotency: IdempotencyMode,
    /// Methods refused by default (TRACE, CONNECT) that this route lets through.
    pub allow_methods: Vec<http::Method>,
}

/// One problem found in a config file: the key it sits under, its line and why it is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
    /// 1-based line of the key (or of the nearest table or entry holding it); None when the
    /// file has no such place (it could not be read, or a required section is missing).
    pub line: Option<usize>,
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file.display())?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
            }
            if !e.key.is_empty() {
                write!(f, ": {}", e.key)?;
            }
            write!(f, ": {}", e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The TLS 1.3 suites `[tls] cipher_suites` may name, by their IANA names.
pub(crate) fn cipher_suites() -> [(&'static str, rustls::SupportedCipherSuite); 3] {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    [
        ("TLS_AES_128_GCM_SHA256", cs::TLS13_AES_128_GCM_SHA256),
        ("TLS_AES_256_GCM_SHA384", cs::TLS13_AES_256_GCM_SHA384),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            cs::TLS13_CHACHA20_POLY1305_SHA256,
        ),
    ]
}

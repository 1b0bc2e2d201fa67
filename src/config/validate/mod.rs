//! Raw TOML → typed [`Config`], collecting every error (file, key, why) in one pass.
//!
//! Each section — and each upstream, route and certificate inside it — is deserialized on its
//! own, so one typo does not hide the next. Relative certificate paths resolve against the
//! current working directory, as the example `config/proxy.toml` expects.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use super::file::{
    RawAuth, RawCertificate, RawHealth, RawIdempotency, RawKey, RawRevocation, RawRoute, RawServer,
    RawServerEntry, RawStore, RawTls, RawUpstream, SECTIONS,
};
use super::{
    AdminToken, AuthMode, AuthSettings, Balance, CertificateSpec, Config, ConfigError,
    ConfigErrors, EscapedSlashes, HashKey, HashSpec, HealthSpec, IdempotencyMode,
    IdempotencySettings, JwtKey, OnError, RevocationSettings, RouteSpec, ServerSettings,
    ServerSpec, StoreSettings, Underscores, UpstreamSpec, default_workers, defaults,
};

const MIN_DURATION: Duration = Duration::from_millis(1);
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A DNS name, optionally with one leading `*.` label; lower-case, no port.
fn valid_name(n: &str) -> bool {
    let base = n.strip_prefix("*.").unwrap_or(n);
    !base.is_empty()
        && !base.starts_with('.')
        && !base.ends_with('.')
        && !base.contains("..")
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                key: String::new(),
                message: format!("cannot read file: {e}"),
            }],
        }),
    }
}

/// Validate config text; `file` is only used to label errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let mut v = Validator { errors: Vec::new() };
    let config = v.config(text);
    match config {
        Some(c) if v.errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors {
            file: file.to_path_buf(),
            errors: v.errors,
        }),
    }
}

struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
        });
    }

    fn section<T: DeserializeOwned>(&mut self, key: &str, value: toml::Value) -> Option<T> {
        match value.try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(key, e.message().trim().to_string());
                None
            }
        }
    }

    fn config(&mut self, text: &str) -> Option<Config> {
        let mut doc: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                self.err("", format!("invalid TOML: {}", e.to_string().trim_end()));
                return None;
            }
        };
        for key in doc.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                self.err(
                    key.clone(),
                    format!("unknown section, expected one of {}", SECTIONS.join(", ")),
                );
            }
        }

        // A section that does not deserialize was reported once; its keys are not re-checked.
        let server = match doc.remove("server") {
            Some(v) => self
                .section::<RawServer>("server", v)
                .and_then(|raw| self.server(raw)),
            None => self.server(RawServer::default()),
        };
        let (tls, cipher_suites) = self.tls(doc.remove("tls"));
        let upstreams = self.upstreams(doc.remove("upstreams"));
        let store = match doc.remove("store") {
            Some(v) => self
                .section::<RawStore>("store", v)
                .map(|raw| self.store(raw))
                .unwrap_or_default(),
            None => StoreSettings::default(),
        };
        let auth_present = doc.contains_key("auth");
        let auth = doc
            .remove("auth")
            .and_then(|v| self.section::<RawAuth>("auth", v))
            .and_then(|raw| self.auth(raw));
        let revocation = match doc.remove("revocation") {
            Some(v) => self
                .section::<RawRevocation>("revocation", v)
                .map(|raw| self.revocation(raw))
                .unwrap_or_default(),
            None => RevocationSettings::default(),
        };
        let idempotency = match doc.remove("idempotency") {
            Some(v) => self
                .section::<RawIdempotency>("idempotency", v)
                .map(|raw| self.idempotency(raw))
                .unwrap_or_default(),
            None => IdempotencySettings::default(),
        };
        let routes = self.routes(doc.remove("routes"), &upstreams, auth_present);
        // A lease must outlive the longest wait for a replica's head plus FINISH's store
        // call and its margin, or a slow first request would lose its key to a duplicate
        // while still running (or its FINISH would find the lease gone, nothing stored).
        for (i, r) in routes.iter().enumerate() {
            if r.idempotency == IdempotencyMode::Off {
                continue;
            }
            let Some(g) = upstreams.iter().find(|u| u.name == r.upstream) else {
                continue;
            };
            let needed = g.response_timeout + store.timeout + defaults::FINISH_MARGIN;
            if idempotency.lock_ttl <= needed {
                self.err(
                    "idempotency.lock_ttl",
                    format!(
                        "{:?} must exceed {needed:?}: the response_timeout ({:?}) of upstream {:?} used by routes[{i}] + [store] timeout ({:?}) + {:?} for FINISH to land within the lease",
                        idempotency.lock_ttl,
                        g.response_timeout,
                        g.name,
                        store.timeout,
                        defaults::FINISH_MARGIN
                    ),
                );
            }
        }

        Some(Config {
            server: server?,
            tls,
            cipher_suites,
            upstreams,
            routes,
            store,
            auth,
            revocation,
            idempotency,
        })
    }

    fn server(&mut self, raw: RawServer) -> Option<ServerSettings> {
        let listen = match raw.listen {
            Some(s) => self.addr("server.listen", &s),
            None => {
                self.err(
                    "server.listen",
                    "missing: the TLS listener address is required",
                );
                None
            }
        };
        let plain_listen = raw
            .plain_listen
            .and_then(|s| self.addr("server.plain_listen", &s));
        let admin_listen = self.addr(
            "server.admin_listen",
            raw.admin_listen
                .as_deref()
                .unwrap_or(defaults::ADMIN_LISTEN),
        );
        let workers = self.count("server.workers", raw.workers, default_workers(), 1, 1024);
        let max_connections = self.count(
            "server.max_connections",
            raw.max_connections,
            defaults::MAX_CONNECTIONS,
            1,
            // The connection limit is a semaphore whose drain waits for all permits at once.
            u32::MAX as usize,
        );
        let max_header_bytes = self.count(
            "server.max_header_bytes",
            raw.max_header_bytes,
            defaults::MAX_HEADER_BYTES,
            1024,
            1024 * 1024,
        );
        let max_body_bytes = self.count(
            "server.max_body_bytes",
            raw.max_body_bytes,
            defaults::MAX_BODY_BYTES as usize,
            0,
            usize::MAX,
        ) as u64;
        let header_timeout = self.duration(
            "server.header_timeout",
            raw.header_timeout,
            defaults::HEADER_TIMEOUT,
        );
        let idle_timeout = self.duration(
            "server.idle_timeout",
            raw.idle_timeout,
            defaults::IDLE_TIMEOUT,
        );
        let shutdown_grace = self.duration(
            "server.shutdown_grace",
            raw.shutdown_grace,
            defaults::SHUTDOWN_GRACE,
        );
        let pid_file = match raw.pid_file {
            Some(p) if p.trim().is_empty() => {
                self.err("server.pid_file", "must be a path (or left out)");
                None
            }
            p => p.map(std::path::PathBuf::from),
        };
        let escaped_slashes = match raw.escaped_slashes.as_deref() {
            None | Some("reject") => EscapedSlashes::Reject,
            Some("decode") => EscapedSlashes::Decode,
            Some("keep") => EscapedSlashes::Keep,
            Some(other) => {
                self.err(
                    "server.escaped_slashes",
                    format!(
                        "unknown action {other:?}, expected \"reject\", \"decode\" or \"keep\""
                    ),
                );
                EscapedSlashes::Reject
            }
        };
        let underscores_in_headers = match raw.underscores_in_headers.as_deref() {
            None | Some("drop") => Underscores::Drop,
            Some("reject") => Underscores::Reject,
            Some("allow") => Underscores::Allow,
            Some(other) => {
                self.err(
                    "server.underscores_in_headers",
                    format!("unknown action {other:?}, expected \"drop\", \"reject\" or \"allow\""),
                );
                Underscores::Drop
            }
        };
        let mut admin_hosts = Vec::new();
        for h in raw.admin_hosts.unwrap_or_default() {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            if valid_name(&h) && !h.starts_with('*') {
                admin_hosts.push(h);
            } else {
                self.err(
                    "server.admin_hosts",
                    format!("invalid host {h:?} (a DNS name; no port, no wildcard)"),
                );
            }
        }
        let admin_token = match raw.admin_token_env.as_deref() {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if v.len() >= 16 && v.bytes().all(|b| b.is_ascii_graphic()) => {
                    Some(AdminToken(v.into()))
                }
                Ok(_) => {
                    self.err(
                        "server.admin_token_env",
                        format!("{var} must hold at least 16 printable ASCII characters"),
                    );
                    None
                }
                Err(_) => {
                    self.err(
                        "server.admin_token_env",
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
        };
        let listen = listen?;
        let admin_listen = admin_listen?;
        // Port 0 asks the kernel for a free port, so only fixed ports can collide.
        let fixed: Vec<SocketAddr> = [Some(listen), plain_listen, Some(admin_listen)]
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
            .collect();
        if (1..fixed.len()).any(|i| fixed[..i].contains(&fixed[i])) {
            self.err(
                "server",
                "listen, plain_listen and admin_listen must be different addresses",
            );
        }
        Some(ServerSettings {
            listen,
            plain_listen,
            admin_listen,
            workers,
            max_connections,
            max_header_bytes,
            max_body_bytes,
            header_timeout,
            idle_timeout,
            shutdown_grace,
            pid_file,
            merge_slashes: raw.merge_slashes.unwrap_or(true),
            escaped_slashes,
            underscores_in_headers,
            admin_hosts,
            admin_token,
        })
    }

    fn tls(
        &mut self,
        value: Option<toml::Value>,
    ) -> (Vec<CertificateSpec>, Vec<rustls::SupportedCipherSuite>) {
        let raw: RawTls = match value {
            Some(v) => match self.section("tls", v) {
                Some(raw) => raw,
                None => return (Vec::new(), Vec::new()),
            },
            None => RawTls::default(),
        };
        let suites = self.cipher_suites(raw.cipher_suites.as_deref());
        if raw.certificates.is_empty() {
            self.err(
                "tls.certificates",
                "missing: at least one [[tls.certificates]] entry is required",
            );
        }
        let mut seen = HashSet::new();
        let certs = raw
            .certificates
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let key = format!("tls.certificates[{i}]");
                if i > 0 && c.server_names.is_empty() {
                    // Only the first certificate is the default; this one could never be chosen.
                    self.err(
                        format!("{key}.server_names"),
                        "required for every certificate but the first (the default)",
                    );
                }
                self.certificate(&key, c, &mut seen)
            })
            .collect();
        (certs, suites)
    }

    /// `[tls] cipher_suites`: IANA names of TLS 1.3 suites, each once, at least one.
    fn cipher_suites(&mut self, names: Option<&[String]>) -> Vec<rustls::SupportedCipherSuite> {
        let Some(names) = names else {
            return Vec::new();
        };
        if names.is_empty() {
            self.err(
                "tls.cipher_suites",
                "empty: leave it out for the default, or name at least one suite",
            );
        }
        let known = crate::tls::cipher_suites();
        let mut out: Vec<rustls::SupportedCipherSuite> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let key = format!("tls.cipher_suites[{i}]");
            match known.iter().find(|(n, _)| *n == name.as_str()) {
                None => {
                    let all: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                    self.err(
                        key,
                        format!("unknown TLS 1.3 suite {name:?}; known: {}", all.join(", ")),
                    );
                }
                Some((_, s)) if out.contains(s) => self.err(key, format!("{name} is listed twice")),
                Some((_, s)) => out.push(*s),
            }
        }
        out
    }

    fn certificate(
        &mut self,
        key: &str,
        raw: RawCertificate,
        seen: &mut HashSet<String>,
    ) -> Option<CertificateSpec> {
        let mut names = Vec::new();
        for name in &raw.server_names {
            let n = name.trim().to_ascii_lowercase();
            if !valid_name(&n) {
                self.err(
                    format!("{key}.server_names"),
                    format!("invalid server name {name:?} (a DNS name, or *.parent)"),
                );
            } else if !seen.insert(n.clone()) {
                self.err(
                    format!("{key}.server_names"),
                    format!("server name {name:?} is already used by another certificate"),
                );
            } else {
                names.push(n);
            }
        }
        let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&raw.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        {
            Ok(chain) if !chain.is_empty() => chain,
            Ok(_) => {
                self.err(
                    format!("{key}.cert"),
                    format!("{}: no PEM certificate found", raw.cert),
                );
                return None;
            }
            Err(e) => {
                self.err(
                    format!("{key}.cert"),
                    format!("{}: {}", raw.cert, pem_error(&e)),
                );
                return None;
            }
        };
        let private_key = match PrivateKeyDer::from_pem_file(&raw.key) {
            Ok(k) => k,
            Err(e) => {
                self.err(
                    format!("{key}.key"),
                    format!("{}: {}", raw.key, pem_error(&e)),
                );
                return None;
            }
        };
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        match rustls::sign::CertifiedKey::from_der(chain, private_key, &provider) {
            Ok(ck) => Some(CertificateSpec {
                server_names: names,
                key: Arc::new(ck),
                source: raw.cert,
            }),
            Err(e) => {
                self.err(
                    format!("{key}.key"),
                    format!("{} does not fit {}: {e}", raw.key, raw.cert),
                );
                None
            }
        }
    }

    fn upstreams(&mut self, value: Option<toml::Value>) -> Vec<UpstreamSpec> {
        let table = match value {
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                self.err("upstreams", "must be a table of groups: [upstreams.NAME]");
                return Vec::new();
            }
            None => {
                self.err(
                    "upstreams",
                    "missing: at least one [upstreams.NAME] group is required",
                );
                return Vec::new();
            }
        };
        if table.is_empty() {
            self.err(
                "upstreams",
                "at least one [upstreams.NAME] group is required",
            );
        }
        let mut out = Vec::new();
        for (name, v) in table {
            let key = format!("upstreams.{name}");
            if let Some(raw) = self.section::<RawUpstream>(&key, v)
                && let Some(spec) = self.upstream(&key, name, raw)
            {
                out.push(spec);
            }
        }
        out
    }

    fn upstream(&mut self, key: &str, name: String, raw: RawUpstream) -> Option<UpstreamSpec> {
        let balance = match raw.balance.as_deref() {
            None | Some("round_robin") => {
                for (set, k) in [
                    (raw.hash_key.is_some(), "hash_key"),
                    (raw.hash_balance_factor.is_some(), "hash_balance_factor"),
                    (raw.virtual_nodes.is_some(), "virtual_nodes"),
                    (raw.hash_fallback.is_some(), "hash_fallback"),
                ] {
                    if set {
                        self.err(
                            format!("{key}.{k}"),
                            "only applies with balance = \"consistent_hash\"",
                        );
                    }
                }
                Some(Balance::RoundRobin)
            }
            Some("consistent_hash") => self.hash_spec(key, &raw).map(Balance::ConsistentHash),
            Some(other) => {
                self.err(
                    format!("{key}.balance"),
                    format!(
                        "unknown balance {other:?}, expected \"round_robin\" or \"consistent_hash\""
                    ),
                );
                None
            }
        };
        let connect_timeout = self.duration(
            &format!("{key}.connect_timeout"),
            raw.connect_timeout,
            defaults::CONNECT_TIMEOUT,
        );
        let response_timeout = self.duration(
            &format!("{key}.response_timeout"),
            raw.response_timeout,
            defaults::RESPONSE_TIMEOUT,
        );
        let keepalive = self.count(
            &format!("{key}.keepalive"),
            raw.keepalive,
            defaults::KEEPALIVE,
            0,
            100_000,
        );
        let keepalive_timeout = self.duration(
            &format!("{key}.keepalive_timeout"),
            raw.keepalive_timeout,
            defaults::KEEPALIVE_TIMEOUT,
        );
        if raw.servers.is_empty() {
            self.err(format!("{key}.servers"), "at least one server is required");
        }
        let mut servers = Vec::new();
        for (i, s) in raw.servers.into_iter().enumerate() {
            if let Some(s) = self.server_entry(&format!("{key}.servers[{i}]"), s) {
                if servers.iter().any(|o: &ServerSpec| o.address == s.address) {
                    self.err(
                        format!("{key}.servers[{i}].address"),
                        format!("{} is listed twice", s.address),
                    );
                }
                servers.push(s);
            }
        }
        if let Some(Balance::ConsistentHash(h)) = &balance {
            let points: u64 = servers
                .iter()
                .map(|s| u64::from(s.weight) * u64::from(h.virtual_nodes))
                .sum();
            if points > 2_000_000 {
                self.err(
                    format!("{key}.virtual_nodes"),
                    format!("the ring would hold {points} points (weights × virtual_nodes); keep it under 2,000,000"),
                );
            }
        }
        let health = self.health(key, raw.health.unwrap_or_default());
        let retries = self.count(&format!("{key}.retries"), raw.retries, 2, 0, 10) as u32;
        let retry_budget = match raw.retry_budget {
            None => 0.2,
            Some(b) if b.is_finite() && (0.0..=1.0).contains(&b) => b,
            Some(b) => {
                self.err(
                    format!("{key}.retry_budget"),
                    format!("{b} must be within 0.0..=1.0"),
                );
                0.2
            }
        };
        Some(UpstreamSpec {
            name,
            balance: balance?,
            health,
            retries,
            retry_budget,
            connect_timeout,
            response_timeout,
            keepalive,
            keepalive_timeout,
            servers,
        })
    }

    fn health(&mut self, key: &str, raw: RawHealth) -> HealthSpec {
        let d = HealthSpec::default();
        let k = |name: &str| format!("{key}.health.{name}");
        if let Some(p) = &raw.path
            && !p.starts_with('/')
        {
            self.err(k("path"), format!("{p:?} must start with '/'"));
        }
        let threshold = |v: &mut Self, name: &str, raw: Option<i64>, default: u32| {
            v.count(&k(name), raw, default as usize, 1, 100) as u32
        };
        HealthSpec {
            path: raw.path,
            interval: self.duration(&k("interval"), raw.interval, d.interval),
            timeout: self.duration(&k("timeout"), raw.timeout, d.timeout),
            healthy_threshold: threshold(
                self,
                "healthy_threshold",
                raw.healthy_threshold,
                d.healthy_threshold,
            ),
            unhealthy_threshold: threshold(
                self,
                "unhealthy_threshold",
                raw.unhealthy_threshold,
                d.unhealthy_threshold,
            ),
            eject_after_failures: self.count(
                &k("eject_after_failures"),
                raw.eject_after_failures,
                d.eject_after_failures as usize,
                0,
                1000,
            ) as u32,
            eject_for: self.duration(&k("eject_for"), raw.eject_for, d.eject_for),
        }
    }

    fn hash_spec(&mut self, key: &str, raw: &RawUpstream) -> Option<HashSpec> {
        let hash_key = match raw.hash_key.as_deref() {
            None => {
                self.err(
                    format!("{key}.hash_key"),
                    "required with balance = \"consistent_hash\"",
                );
                return None;
            }
            Some("ip") => HashKey::Ip,
            Some(k) => {
                match k.split_once(':') {
                    Some(("header", name)) => match http::HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) => HashKey::Header(h),
                        Err(_) => {
                            self.err(
                                format!("{key}.hash_key"),
                                format!("{name:?} is not a header name"),
                            );
                            return None;
                        }
                    },
                    Some(("cookie", name)) if !name.is_empty() => HashKey::Cookie(name.to_string()),
                    Some(("claim", name)) if !name.is_empty() => HashKey::Claim(name.to_string()),
                    Some(("query", name)) if !name.is_empty() => HashKey::Query(name.to_string()),
                    _ => {
                        self.err(
                        format!("{key}.hash_key"),
                        format!("{k:?}: expected header:NAME, cookie:NAME, claim:NAME, query:NAME or ip"),
                    );
                        return None;
                    }
                }
            }
        };
        if let Some(f) = raw.hash_fallback.as_deref()
            && f != "round_robin"
        {
            self.err(
                format!("{key}.hash_fallback"),
                format!("{f:?}: only \"round_robin\" is supported"),
            );
        }
        let balance_factor = match raw.hash_balance_factor {
            None => None,
            Some(f) if f.is_finite() && f > 1.0 && f <= 100.0 => Some(f),
            Some(f) => {
                self.err(
                    format!("{key}.hash_balance_factor"),
                    format!("{f} must be above 1.0 (e.g. 1.25)"),
                );
                None
            }
        };
        let virtual_nodes = self.count(
            &format!("{key}.virtual_nodes"),
            raw.virtual_nodes,
            160,
            1,
            10_000,
        ) as u32;
        Some(HashSpec {
            key: hash_key,
            virtual_nodes,
            balance_factor,
        })
    }

    fn server_entry(&mut self, key: &str, raw: RawServerEntry) -> Option<ServerSpec> {
        let weight = self.count(
            &format!("{key}.weight"),
            raw.weight,
            defaults::WEIGHT as usize,
            0,
            defaults::MAX_WEIGHT as usize,
        ) as u32;
        // Names resolve once, at load: the request path never waits on DNS.
        let address = match raw.address.to_socket_addrs() {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => a,
                None => {
                    self.err(
                        format!("{key}.address"),
                        format!("{:?} resolves to nothing", raw.address),
                    );
                    return None;
                }
            },
            Err(e) => {
                self.err(
                    format!("{key}.address"),
                    format!("invalid address {:?} (want host:port): {e}", raw.address),
                );
                return None;
            }
        };
        Some(ServerSpec { address, weight })
    }

    fn routes(
        &mut self,
        value: Option<toml::Value>,
        upstreams: &[UpstreamSpec],
        auth_present: bool,
    ) -> Vec<RouteSpec> {
        let items = match value {
            Some(toml::Value::Array(items)) => items,
            Some(_) => {
                self.err("routes", "must be an array of tables: [[routes]]");
                return Vec::new();
            }
            None => {
                self.err(
                    "routes",
                    "missing: at least one [[routes]] entry is required",
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, v) in items.into_iter().enumerate() {
            let key = format!("routes[{i}]");
            let Some(raw) = self.section::<RawRoute>(&key, v) else {
                continue;
            };
            if !raw.path_prefix.starts_with('/') {
                self.err(
                    format!("{key}.path_prefix"),
                    format!("{:?} must start with '/'", raw.path_prefix),
                );
            }
            // A group that failed its own validation was already reported; don't pile on.
            let group_known = upstreams.iter().any(|u| u.name == raw.upstream);
            if !group_known
                && !self.errors.iter().any(|e| {
                    let group = format!("upstreams.{}", raw.upstream);
                    e.key == group || e.key.starts_with(&format!("{group}."))
                })
            {
                self.err(
                    format!("{key}.upstream"),
                    format!("no upstream group named {:?}", raw.upstream),
                );
            }
            let host = raw.host.map(|h| h.trim().to_ascii_lowercase());
            if let Some(h) = &host
                && !valid_name(h)
            {
                self.err(
                    format!("{key}.host"),
                    format!("invalid host {h:?} (a DNS name or *.parent; no port, no scheme)"),
                );
            }
            // With an [auth] section, routes require a token unless they say otherwise.
            let auth = match raw.auth.as_deref() {
                None if auth_present => AuthMode::Required,
                None => AuthMode::Off,
                Some("required") => AuthMode::Required,
                Some("optional") => AuthMode::Optional,
                Some("off") => AuthMode::Off,
                Some(other) => {
                    self.err(
                        format!("{key}.auth"),
                        format!("unknown auth mode {other:?}, expected required, optional or off"),
                    );
                    AuthMode::Off
                }
            };
            if auth != AuthMode::Off && !auth_present {
                self.err(
                    format!("{key}.auth"),
                    "needs an [auth] section with at least one key",
                );
            }
            let idempotency = match raw.idempotency.as_deref() {
                None | Some("off") => IdempotencyMode::Off,
                Some("required") => IdempotencyMode::Required,
                Some("optional") => IdempotencyMode::Optional,
                Some(other) => {
                    self.err(
                        format!("{key}.idempotency"),
                        format!("unknown mode {other:?}, expected required, optional or off"),
                    );
                    IdempotencyMode::Off
                }
            };
            let mut allow_methods = Vec::new();
            for m in raw.allow_methods.unwrap_or_default() {
                match m.as_str() {
                    "TRACE" => allow_methods.push(http::Method::TRACE),
                    "CONNECT" => self.err(
                        format!("{key}.allow_methods"),
                        "CONNECT is always refused: doorman is a reverse proxy and opens no tunnels to a client's chosen authority",
                    ),
                    other => self.err(
                        format!("{key}.allow_methods"),
                        format!("{other:?}: only \"TRACE\" is refused by default (other methods need no allowing)"),
                    ),
                }
            }
            let p = raw.path_prefix.as_str();
            if p.contains(';') {
                self.err(
                    format!("{key}.path_prefix"),
                    format!("{p:?}: routes are matched with segment parameters (;…) removed, so it would never match"),
                );
            } else if p.starts_with('/')
                && crate::message::target::normalise_prefix(p).as_deref() != Some(p)
            {
                self.err(
                    format!("{key}.path_prefix"),
                    format!("{p:?} is not a normalised path (no dot segments, repeated or percent-encoded separators, or escapes of unreserved characters): requests are matched after normalisation, so it would never match"),
                );
            }
            out.push(RouteSpec {
                host,
                path_prefix: raw.path_prefix,
                upstream: raw.upstream,
                auth,
                idempotency,
                allow_methods,
            });
        }
        out
    }

    fn store(&mut self, raw: RawStore) -> StoreSettings {
        if let Some(url) = &raw.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
        {
            self.err("store.redis_url", format!("{url:?} is not a redis:// URL"));
        }
        if let Some(url) = &raw.redis_url
            && url.contains("protocol=")
            && !url.contains("protocol=resp3")
        {
            self.err(
                "store.redis_url",
                "doorman speaks RESP3 to Redis (for client-side caching pushes): drop protocol=",
            );
        }
        let on_error = match raw.on_error.as_deref() {
            None | Some("closed") => OnError::Closed,
            Some("open") => OnError::Open,
            Some(other) => {
                self.err(
                    "store.on_error",
                    format!("unknown policy {other:?}, expected \"closed\" or \"open\""),
                );
                OnError::Closed
            }
        };
        StoreSettings {
            redis_url: raw.redis_url,
            timeout: self.duration("store.timeout", raw.timeout, defaults::STORE_TIMEOUT),
            on_error,
            embedded_max_entries: self.count(
                "store.embedded_max_entries",
                raw.embedded_max_entries,
                defaults::EMBEDDED_MAX_ENTRIES,
                1,
                1 << 30,
            ),
            embedded_max_bytes: self.count(
                "store.embedded_max_bytes",
                raw.embedded_max_bytes,
                defaults::EMBEDDED_MAX_BYTES,
                64 * 1024,
                usize::MAX,
            ),
            embedded_max_revocations: self.count(
                "store.embedded_max_revocations",
                raw.embedded_max_revocations,
                defaults::EMBEDDED_MAX_REVOCATIONS,
                1,
                1 << 30,
            ),
        }
    }

    fn idempotency(&mut self, raw: RawIdempotency) -> IdempotencySettings {
        let d = IdempotencySettings::default();
        let header = match raw.header.as_deref() {
            None => d.header.clone(),
            Some(h) => match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => h,
                Err(_) => {
                    self.err("idempotency.header", format!("{h:?} is not a header name"));
                    d.header.clone()
                }
            },
        };
        let mut methods = Vec::new();
        for m in raw
            .methods
            .unwrap_or_else(|| vec!["POST".into(), "PATCH".into()])
        {
            match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) if m != http::Method::CONNECT => methods.push(m),
                _ => self.err(
                    "idempotency.methods",
                    format!("{m:?} is not a method doorman can key"),
                ),
            }
        }
        let key_prefix = raw.key_prefix.unwrap_or(d.key_prefix.clone());
        if key_prefix.is_empty() || key_prefix.bytes().any(|b| b <= b' ') {
            self.err(
                "idempotency.key_prefix",
                format!("{key_prefix:?} must be non-empty, without spaces"),
            );
        }
        IdempotencySettings {
            header,
            methods,
            ttl: self.duration("idempotency.ttl", raw.ttl, d.ttl),
            lock_ttl: self.duration("idempotency.lock_ttl", raw.lock_ttl, d.lock_ttl),
            max_request_body_bytes: self.count(
                "idempotency.max_request_body_bytes",
                raw.max_request_body_bytes,
                d.max_request_body_bytes as usize,
                0,
                64 << 20,
            ) as u64,
            max_stored_body_bytes: self.count(
                "idempotency.max_stored_body_bytes",
                raw.max_stored_body_bytes,
                d.max_stored_body_bytes as usize,
                0,
                64 << 20,
            ) as u64,
            store_server_errors: raw.store_server_errors.unwrap_or(false),
            store_set_cookie: raw.store_set_cookie.unwrap_or(false),
            key_prefix,
        }
    }

    fn revocation(&mut self, raw: RawRevocation) -> RevocationSettings {
        let key_prefix = raw
            .key_prefix
            .unwrap_or_else(|| defaults::KEY_PREFIX.to_string());
        // The prefix is also a SCAN pattern: glob characters would make it match other keys
        // (or none) while tracking matches it literally.
        if key_prefix.is_empty()
            || key_prefix
                .bytes()
                .any(|b| b <= b' ' || matches!(b, b'*' | b'?' | b'[' | b']' | b'\\'))
        {
            self.err(
                "revocation.key_prefix",
                format!("{key_prefix:?} must be non-empty, without spaces or * ? [ ] \\"),
            );
        }
        RevocationSettings {
            enabled: raw.enabled.unwrap_or(true),
            key_prefix,
            subject_ttl: self.duration(
                "revocation.subject_ttl",
                raw.subject_ttl,
                defaults::SUBJECT_TTL,
            ),
        }
    }

    fn auth(&mut self, raw: RawAuth) -> Option<AuthSettings> {
        if raw.keys.is_empty() {
            self.err("auth.keys", "at least one [[auth.keys]] entry is required");
        }
        let mut keys = Vec::new();
        for (i, k) in raw.keys.into_iter().enumerate() {
            let key = format!("auth.keys[{i}]");
            if let Some(kid) = &k.kid
                && keys.iter().any(|o: &JwtKey| o.kid.as_ref() == Some(kid))
            {
                self.err(format!("{key}.kid"), format!("kid {kid:?} is used twice"));
            }
            if let Some(jk) = self.jwt_key(&key, k) {
                keys.push(jk);
            }
        }
        let mut forward_claims = Vec::new();
        for (claim, header) in raw.forward_claims {
            match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) if !crate::message::HOP_BY_HOP.contains(&h) && h != http::header::HOST => {
                    forward_claims.push((claim, h))
                }
                _ => self.err(
                    format!("auth.forward_claims.{claim}"),
                    format!("{header:?} is not a header doorman can set"),
                ),
            }
        }
        let cache_entries = self.count(
            "auth.cache_entries",
            raw.cache_entries,
            defaults::AUTH_CACHE_ENTRIES,
            0,
            1 << 24,
        );
        Some(AuthSettings {
            issuer: raw.issuer,
            audiences: raw.audiences,
            leeway: self.duration_or_zero("auth.leeway", raw.leeway, defaults::LEEWAY),
            require_jti: raw.require_jti.unwrap_or(true),
            forward_claims,
            strip_authorization: raw.strip_authorization.unwrap_or(false),
            cache_entries,
            max_lifetime: raw.max_lifetime.map(|s| {
                let d = self.duration("auth.max_lifetime", Some(s.clone()), defaults::LEEWAY);
                // Token times are whole seconds: under 1s would refuse every token.
                if d < Duration::from_secs(1) {
                    self.err("auth.max_lifetime", format!("{s:?} is under 1s"));
                }
                d
            }),
            keys,
        })
    }

    fn jwt_key(&mut self, key: &str, raw: RawKey) -> Option<JwtKey> {
        use jsonwebtoken::{Algorithm, DecodingKey};
        let algorithm = match raw.algorithm.parse::<Algorithm>() {
            Ok(a) => a,
            Err(_) => {
                self.err(
                    format!("{key}.algorithm"),
                    format!(
                        "unknown algorithm {:?} (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)",
                        raw.algorithm
                    ),
                );
                return None;
            }
        };
        let hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let decoding = if hmac {
            if raw.public_key_file.is_some() {
                self.err(
                    format!("{key}.public_key_file"),
                    "an HMAC key takes secret_env or secret_file",
                );
            }
            let secret = match (&raw.secret_env, &raw.secret_file) {
                (Some(var), None) => match std::env::var(var) {
                    Ok(v) => v.into_bytes(),
                    Err(_) => {
                        self.err(
                            format!("{key}.secret_env"),
                            format!("environment variable {var} is not set"),
                        );
                        return None;
                    }
                },
                (None, Some(path)) => match std::fs::read(path) {
                    // A trailing newline from `echo > file` is not part of the secret.
                    Ok(mut v) => {
                        while v.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                            v.pop();
                        }
                        v
                    }
                    Err(e) => {
                        self.err(
                            format!("{key}.secret_file"),
                            format!("{path}: cannot read: {e}"),
                        );
                        return None;
                    }
                },
                _ => {
                    self.err(
                        key,
                        "an HMAC key needs exactly one of secret_env or secret_file",
                    );
                    return None;
                }
            };
            if secret.len() < defaults::MIN_SECRET_BYTES {
                self.err(
                    key,
                    format!(
                        "the HMAC secret is {} bytes; at least {} are required",
                        secret.len(),
                        defaults::MIN_SECRET_BYTES
                    ),
                );
                return None;
            }
            DecodingKey::from_secret(&secret)
        } else {
            if raw.secret_env.is_some() || raw.secret_file.is_some() {
                self.err(key, "an asymmetric key takes public_key_file, not a secret");
            }
            let Some(path) = &raw.public_key_file else {
                self.err(
                    format!("{key}.public_key_file"),
                    "missing: required for this algorithm",
                );
                return None;
            };
            let pem = match std::fs::read(path) {
                Ok(p) => p,
                Err(e) => {
                    self.err(
                        format!("{key}.public_key_file"),
                        format!("{path}: cannot read: {e}"),
                    );
                    return None;
                }
            };
            let parsed = match algorithm {
                Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            };
            match parsed {
                Ok(k) => k,
                Err(e) => {
                    self.err(
                        format!("{key}.public_key_file"),
                        format!("{path}: not a {algorithm:?} public key: {e}"),
                    );
                    return None;
                }
            }
        };
        Some(JwtKey {
            kid: raw.kid,
            algorithm,
            key: decoding,
        })
    }

    /// Like `duration`, but "0s" is allowed (e.g. no clock-skew leeway).
    fn duration_or_zero(&mut self, key: &str, s: Option<String>, default: Duration) -> Duration {
        match s.as_deref().map(humantime::parse_duration) {
            Some(Ok(d)) if d.is_zero() => d,
            _ => self.duration(key, s, default),
        }
    }

    fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(
                    key,
                    format!("invalid socket address {s:?} (want ip:port): {e}"),
                );
                None
            }
        }
    }

    /// A duration within [`MIN_DURATION`, `MAX_DURATION`]: below, timers would tick at zero;
    /// above, deadlines overflow the clock.
    fn duration(&mut self, key: &str, s: Option<String>, default: Duration) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(&s) {
            Ok(d) if (MIN_DURATION..=MAX_DURATION).contains(&d) => d,
            Ok(_) => {
                self.err(key, format!("{s:?} is out of range 1ms..=7days"));
                default
            }
            Err(e) => {
                self.err(
                    key,
                    format!("invalid duration {s:?} (like \"500ms\", \"30s\", \"5m\"): {e}"),
                );
                default
            }
        }
    }

    fn count(
        &mut self,
        key: &str,
        v: Option<i64>,
        default: usize,
        min: usize,
        max: usize,
    ) -> usize {
        let Some(v) = v else { return default };
        match usize::try_from(v) {
            Ok(n) if n >= min && n <= max => n,
            _ => {
                self.err(key, format!("{v} is out of range {min}..={max}"));
                default
            }
        }
    }
}

fn pem_error(e: &pki_types::pem::Error) -> String {
    match e {
        pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind found".into(),
        other => format!("invalid PEM: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, Path::new("t.toml")).unwrap_err().errors
    }

    fn keys(text: &str) -> Vec<String> {
        errors(text).into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let text = r#"
            [server]
            listen = "127.0.0.1:8443"
            typo_key = 1

            [tls]
            certificates = [{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }]

            [upstreams.api]
            balance = "random"
            servers = [{ address = "127.0.0.1:9001", weight = 5000 }]

            [[routes]]
            path_prefix = "api"
            upstream = "missing"
        "#;
        let e = errors(text);
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "server",
                "tls.certificates[0].cert",
                "upstreams.api.balance",
                "upstreams.api.servers[0].weight",
                "routes[0].path_prefix",
                "routes[0].upstream",
            ]
        );
        assert!(e[0].message.contains("typo_key"), "{}", e[0].message);
        assert!(
            e[1].message.contains("/nonexistent/a.crt"),
            "{}",
            e[1].message
        );
        assert_eq!(e[3].message, "5000 is out of range 0..=1000");
        assert_eq!(e[5].message, "no upstream group named \"missing\"");
    }

    #[test]
    fn cipher_suites_must_be_known_tls13_suites_each_once() {
        let with = |suites: &str| {
            format!(
                r#"
                [tls]
                certificates = [{{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }}]
                cipher_suites = {suites}
                [upstreams.api]
                servers = [{{ address = "127.0.0.1:9001" }}]
                [[routes]]
                path_prefix = "/"
                upstream = "api"
                "#
            )
        };
        let suite_errors = |suites: &str| -> Vec<(String, String)> {
            errors(&with(suites))
                .into_iter()
                .filter(|e| e.key.starts_with("tls.cipher_suites"))
                .map(|e| (e.key, e.message))
                .collect()
        };
        assert_eq!(
            suite_errors(r#"["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"]"#),
            vec![]
        );
        let e = suite_errors(
            r#"["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"]"#,
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, "tls.cipher_suites[1]");
        assert!(e[0].1.contains("unknown TLS 1.3 suite"), "{}", e[0].1);
        assert!(
            e[0].1.contains("TLS_CHACHA20_POLY1305_SHA256"),
            "{}",
            e[0].1
        );
        assert_eq!(
            e[1],
            (
                "tls.cipher_suites[2]".to_string(),
                "TLS_AES_128_GCM_SHA256 is listed twice".to_string()
            )
        );
        assert_eq!(
            suite_errors("[]"),
            vec![(
                "tls.cipher_suites".to_string(),
                "empty: leave it out for the default, or name at least one suite".to_string()
            )]
        );
    }

    #[test]
    fn typed_values_are_checked_even_when_all_keys_are_known() {
        let text = r#"
            [server]
            listen = "nope"
            idle_timeout = "forever"
            max_header_bytes = 10

            [tls]
            certificates = [{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }]

            [upstreams.api]
            servers = [{ address = "127.0.0.1:9001" }]

            [[routes]]
            path_prefix = "/"
            upstream = "api"
        "#;
        assert_eq!(
            keys(text),
            vec![
                "server.listen",
                "server.max_header_bytes",
                "server.idle_timeout",
                "tls.certificates[0].cert",
            ]
        );
    }

    const MINIMAL_REST: &str = r#"
        [tls]
        certificates = [{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }]
        [upstreams.api]
        servers = [{ address = "127.0.0.1:9001" }]
        [[routes]]
        path_prefix = "/"
        upstream = "api"
    "#;

    #[test]
    fn durations_must_be_within_bounds() {
        for (value, ok) in [
            ("1ns", false),
            ("999us", false),
            ("1ms", true),
            ("7days", true),
            ("8days", false),
            ("500000000000y", false),
        ] {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nidle_timeout = \"{value}\"\n{MINIMAL_REST}"
            );
            let e = errors(&text);
            let idle: Vec<_> = e
                .iter()
                .filter(|e| e.key == "server.idle_timeout")
                .collect();
            assert_eq!(idle.is_empty(), ok, "{value}: {e:?}");
        }
    }

    #[test]
    fn lock_ttl_must_leave_finish_its_store_timeout_and_margin_after_the_head() {
        // 1 s response_timeout + 200 ms store timeout + the 100 ms FINISH_MARGIN = 1.3 s.
        assert_eq!(defaults::FINISH_MARGIN, Duration::from_millis(100));
        for (lock_ttl, idempotency, ok) in [
            ("1s", "required", false),
            ("1200ms", "required", false),
            ("1300ms", "optional", false),
            ("1301ms", "required", true),
            ("1s", "off", true),
        ] {
            let text = format!(
                r#"
                [server]
                listen = "127.0.0.1:1"
                [tls]
                certificates = [{{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }}]
                [upstreams.api]
                servers = [{{ address = "127.0.0.1:9001" }}]
                response_timeout = "1s"
                [store]
                timeout = "200ms"
                [idempotency]
                lock_ttl = "{lock_ttl}"
                [[routes]]
                path_prefix = "/"
                upstream = "api"
                idempotency = "{idempotency}"
                "#
            );
            let e = errors(&text);
            let bad: Vec<_> = e
                .iter()
                .filter(|e| e.key == "idempotency.lock_ttl")
                .collect();
            assert_eq!(bad.is_empty(), ok, "{lock_ttl} {idempotency}: {e:?}");
            if let [only] = bad[..] {
                assert_eq!(
                    only.message,
                    format!(
                        "{:?} must exceed 1.3s: the response_timeout (1s) of upstream \"api\" used by routes[0] + [store] timeout (200ms) + 100ms for FINISH to land within the lease",
                        humantime::parse_duration(lock_ttl).unwrap()
                    )
                );
            }
        }
    }

    #[test]
    fn names_must_be_dns_names_or_leading_wildcards() {
        for (host, ok) in [
            ("api.test", true),
            ("*.api.test", true),
            ("*", false),
            ("*foo.test", false),
            ("a.*.test", false),
            ("a..test", false),
            ("a b", false),
            ("a:80", false),
        ] {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL_REST}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nhost = \"{host}\"\n"
            );
            let e = errors(&text);
            let bad: Vec<_> = e.iter().filter(|e| e.key == "routes[1].host").collect();
            assert_eq!(bad.is_empty(), ok, "{host}: {e:?}");
        }
    }

    #[test]
    fn a_broken_tls_section_is_reported_once() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n[tls]\ncertificate = []\n";
        let e = errors(text);
        let tls: Vec<_> = e.iter().filter(|e| e.key.starts_with("tls")).collect();
        assert_eq!(tls.len(), 1, "{e:?}");
        assert!(
            tls[0].message.contains("unknown field `certificate`"),
            "{}",
            tls[0].message
        );
    }

    #[test]
    fn a_route_to_a_similarly_named_broken_group_is_still_reported() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL_REST}\n[upstreams.api2]\nservers = []\n[[routes]]\npath_prefix = \"/x\"\nupstream = \"ap\"\n"
        );
        let keys = keys(&text);
        assert!(keys.contains(&"routes[1].upstream".to_string()), "{keys:?}");
    }

    #[test]
    fn route_prefixes_must_be_normal_and_lifetimes_whole_seconds() {
        let base = "[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\nservers = [{ address = \"127.0.0.1:1\" }]\n";
        for (prefix, bad) in [
            ("/api", false),
            ("/api/", false),
            ("/a/../b", true),
            ("/%61pi", true),
            ("//api", true),
            ("/api;v=1", true),
        ] {
            let text = format!("{base}[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"a\"\n");
            assert_eq!(
                keys(&text).contains(&"routes[0].path_prefix".to_string()),
                bad,
                "{prefix}: {:?}",
                errors(&text)
            );
        }
        let text = format!(
            "{base}[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"off\"\n\
             [auth]\nmax_lifetime = \"500ms\"\n[[auth.keys]]\nalgorithm = \"HS256\"\nsecret_env = \"DOORMAN_TEST_UNSET_SECRET\"\n"
        );
        assert!(
            keys(&text).contains(&"auth.max_lifetime".to_string()),
            "{:?}",
            errors(&text)
        );
    }

    #[test]
    fn unknown_top_level_section_is_an_error() {
        let e = errors("[servr]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(e[0].key, "servr");
        assert!(
            e[0].message.starts_with("unknown section"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn toml_syntax_error_is_reported_with_position() {
        let e = errors("[server\nlisten = 1");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("invalid TOML"), "{}", e[0].message);
        assert!(e[0].message.contains("line 1"), "{}", e[0].message);
    }

    #[test]
    fn errors_display_file_key_and_reason() {
        let err = parse("[server]\nlisten = \"x\"\n", Path::new("conf/p.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .starts_with("conf/p.toml: server.listen: invalid socket address \"x\""),
            "{text}"
        );
    }
}

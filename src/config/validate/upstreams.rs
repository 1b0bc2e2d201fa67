//! `[upstreams.NAME]`: each group's servers, balancing, timeouts, health checks and retries.

use std::net::ToSocketAddrs;

use super::super::file::{RawHealth, RawServerEntry, RawUpstream};
use super::super::{Balance, HashKey, HashSpec, HealthSpec, ServerSpec, UpstreamSpec, defaults};
use super::Validator;

impl Validator {
    pub(super) fn upstreams(&mut self, value: Option<toml::Value>) -> Vec<UpstreamSpec> {
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
}

//! `[store]`: one Redis node, a Sentinel-managed master, or the bounded embedded store; the
//! Redis password, durable revocation writes, the timeout and the failure policy.

use redis::IntoConnectionInfo;

use super::super::file::{RawSentinel, RawStore};
use super::super::{OnError, RedisSpec, Secret, StoreSettings, defaults};
use super::Validator;

impl Validator {
    pub(super) fn store(&mut self, raw: RawStore) -> StoreSettings {
        let url_password = raw.redis_url.as_deref().and_then(|url| self.redis_url(url));
        let given = [
            ("redis_url", raw.redis_url.is_some()),
            ("redis_sentinel", raw.redis_sentinel.is_some()),
            ("redis_cluster", raw.redis_cluster.is_some()),
        ];
        let redis = if given.iter().filter(|(_, set)| *set).count() > 1 {
            let names: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
            self.err(
                format!("store.{}", names[1]),
                format!(
                    "give one of redis_url, redis_sentinel or redis_cluster, not {}",
                    names.join(" and ")
                ),
            );
            None
        } else if let Some(url) = raw.redis_url {
            Some(RedisSpec::Url(url))
        } else if let Some(s) = raw.redis_sentinel {
            self.sentinel(s)
        } else if let Some(seeds) = raw.redis_cluster {
            self.cluster(seeds)
        } else {
            None
        };
        let ca_pem = raw.ca_file.as_deref().and_then(|path| {
            if raw_has_no_redis(&redis, &self.errors) {
                self.err(
                    "store.ca_file",
                    "ca_file is for rediss:// Redis nodes: set redis_url, redis_sentinel or redis_cluster",
                );
                return None;
            }
            let certs = self.pem_certificates("store.ca_file", path);
            (!certs.is_empty()).then(|| std::fs::read(path).unwrap_or_default().into())
        });
        let password = raw.password_env.as_deref().and_then(|var| {
            if raw_has_no_redis(&redis, &self.errors) {
                self.err(
                    "store.password_env",
                    "password_env is for a Redis store: set redis_url, redis_sentinel or redis_cluster",
                );
                return None;
            }
            if url_password == Some(true) {
                self.err(
                    "store.password_env",
                    "redis_url carries a password already: keep one of the two",
                );
                return None;
            }
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(Secret(v.into())),
                Ok(_) => {
                    self.err("store.password_env", format!("{var} is empty"));
                    None
                }
                Err(_) => {
                    self.err(
                        "store.password_env",
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            }
        });
        let durable_revocations = raw.durable_revocations.unwrap_or(false);
        if durable_revocations && raw_has_no_redis(&redis, &self.errors) {
            self.err(
                "store.durable_revocations",
                "durable_revocations waits for a Redis replica: set redis_url, redis_sentinel or redis_cluster",
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
            redis,
            password,
            ca_pem,
            durable_revocations,
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

    /// Checks `redis_url`; returns whether it carries a password (None when it is invalid).
    fn redis_url(&mut self, url: &str) -> Option<bool> {
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            self.err("store.redis_url", format!("{url:?} is not a redis:// URL"));
            return None;
        }
        if url.contains("protocol=") && !url.contains("protocol=resp3") {
            self.err(
                "store.redis_url",
                "doorman speaks RESP3 to Redis (for client-side caching pushes): drop protocol=",
            );
            return None;
        }
        match parse_url(url) {
            Ok(info) => Some(info.redis_settings().password().is_some()),
            Err(why) => {
                self.err("store.redis_url", why);
                None
            }
        }
    }

    fn sentinel(&mut self, raw: RawSentinel) -> Option<RedisSpec> {
        let before = self.errors.len();
        if raw.master.is_empty() || raw.master.bytes().any(|b| !b.is_ascii_graphic()) {
            self.err(
                "store.redis_sentinel.master",
                format!("{:?} must be a non-empty name without spaces", raw.master),
            );
        }
        if raw.sentinels.is_empty() {
            self.err(
                "store.redis_sentinel.sentinels",
                "name at least one sentinel (three or more in production)",
            );
        }
        for (i, url) in raw.sentinels.iter().enumerate() {
            let key = format!("store.redis_sentinel.sentinels[{i}]");
            if url.starts_with("rediss://") {
                // redis-rs can do it, but doorman has no test bed for TLS sentinels yet.
                self.err(
                    key,
                    format!("{url:?}: TLS through Sentinel is not supported yet (rediss:// works with redis_url and redis_cluster)"),
                );
            } else if !url.starts_with("redis://") {
                self.err(key, format!("{url:?} is not a redis:// URL"));
            } else if let Err(why) = parse_url(url) {
                self.err(key, why);
            }
        }
        (self.errors.len() == before).then_some(RedisSpec::Sentinel {
            master: raw.master,
            sentinels: raw.sentinels,
        })
    }
}

impl Validator {
    /// `redis_cluster`: seed nodes, all `redis://` or all `rediss://` (redis-rs takes the
    /// TLS mode of the whole cluster from them), none naming a database (a cluster has only
    /// database 0).
    fn cluster(&mut self, seeds: Vec<String>) -> Option<RedisSpec> {
        let before = self.errors.len();
        if seeds.is_empty() {
            self.err(
                "store.redis_cluster",
                "name at least one seed node (two or more in production)",
            );
        }
        for (i, url) in seeds.iter().enumerate() {
            let key = format!("store.redis_cluster[{i}]");
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                self.err(key, format!("{url:?} is not a redis:// URL"));
                continue;
            }
            match parse_url(url) {
                Err(why) => self.err(key, why),
                Ok(info) if info.redis_settings().db() != 0 => self.err(
                    key,
                    format!("{url:?}: a cluster has only database 0: drop the /db"),
                ),
                Ok(_) => {}
            }
        }
        let tls = seeds.iter().filter(|u| u.starts_with("rediss://")).count();
        if tls != 0 && tls != seeds.len() {
            self.err(
                "store.redis_cluster",
                "mixes redis:// and rediss:// seeds: the whole cluster speaks TLS or none of it does",
            );
        }
        (self.errors.len() == before).then_some(RedisSpec::Cluster(seeds))
    }
}

/// The URL as redis-rs reads it, or why it cannot be used.
fn parse_url(url: &str) -> Result<redis::ConnectionInfo, String> {
    if url.contains('#') {
        // redis-rs reads `#insecure` as "skip certificate checks".
        return Err(format!(
            "{url:?}: drop the #fragment: doorman always verifies a Redis node's certificate (set ca_file for a private CA)"
        ));
    }
    url.into_connection_info().map_err(|e| {
        // "Invalid database number - InvalidClientConfig": the reason, without the kind.
        let text = e.to_string();
        let reason = text.split(" - ").next().unwrap_or(&text);
        format!("{url:?}: {reason}")
    })
}

/// No Redis store is configured, and not because its own settings were wrong (already
/// reported: a second error about the same mistake would only add noise).
fn raw_has_no_redis(redis: &Option<RedisSpec>, errors: &[super::super::ConfigError]) -> bool {
    redis.is_none()
        && !errors.iter().any(|e| {
            e.key.starts_with("store.redis_url")
                || e.key.starts_with("store.redis_sentinel")
                || e.key.starts_with("store.redis_cluster")
        })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MINIMAL_REST, errors};
    use super::*;

    /// (key, line, message) of every error outside `[tls]` (its files do not exist here).
    fn store_errors(store: &str) -> Vec<(String, Option<usize>, String)> {
        errors(&format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[store]\n{store}{MINIMAL_REST}"
        ))
        .into_iter()
        .filter(|e| !e.key.starts_with("tls"))
        .map(|e| (e.key, e.line, e.message))
        .collect()
    }

    fn parsed(store: &str) -> StoreSettings {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n[store]\n{store}\n[upstreams.api]\nservers = [{{ address = \"127.0.0.1:9001\" }}]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
        );
        let mut v = Validator {
            errors: Vec::new(),
            lines: super::super::lines::Lines::new(&text),
        };
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let raw: RawStore = doc["store"].clone().try_into().unwrap();
        let s = v.store(raw);
        assert_eq!(v.errors, vec![], "{store}");
        s
    }

    #[test]
    fn a_sentinel_master_is_read_with_its_sentinels() {
        let s = parsed(
            "redis_sentinel = { master = \"mymaster\", sentinels = [\"redis://127.0.0.1:26379\", \"redis://127.0.0.1:26380\"] }\ndurable_revocations = true",
        );
        assert_eq!(
            s.redis,
            Some(RedisSpec::Sentinel {
                master: "mymaster".into(),
                sentinels: vec![
                    "redis://127.0.0.1:26379".into(),
                    "redis://127.0.0.1:26380".into()
                ],
            })
        );
        assert!(s.durable_revocations);
        assert_eq!(s.password, None);
        let s = parsed("redis_url = \"redis://127.0.0.1:6379/0\"");
        assert_eq!(
            s.redis,
            Some(RedisSpec::Url("redis://127.0.0.1:6379/0".into()))
        );
        assert!(!s.durable_revocations);
        let s = parsed(
            "redis_cluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\ndurable_revocations = true",
        );
        assert_eq!(
            s.redis,
            Some(RedisSpec::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "redis://127.0.0.1:7001".into()
            ]))
        );
        assert_eq!(s.ca_pem, None);
    }

    #[test]
    fn the_password_comes_from_the_environment_and_is_never_printed() {
        // Setting a variable is `unsafe` in edition 2024 (other test threads read the
        // environment): read one that is always set and non-empty instead.
        let s = parsed("redis_url = \"redis://127.0.0.1:6379/0\"\npassword_env = \"PATH\"");
        let p = s.password.expect("read from PATH");
        assert_eq!(&*p.0, std::env::var("PATH").unwrap());
        assert_eq!(format!("{p:?}"), "Secret(..)");
    }

    #[test]
    fn every_store_mistake_is_reported_at_its_key_and_line() {
        type Case<'a> = (&'a str, &'a [(&'a str, usize, &'a str)]);
        let cases: &[Case] = &[
            (
                "redis_url = \"redis://127.0.0.1:1\"\nredis_sentinel = { master = \"m\", sentinels = [\"redis://127.0.0.1:2\"] }\n",
                &[(
                    "store.redis_sentinel",
                    5,
                    "give one of redis_url, redis_sentinel or redis_cluster, not redis_url and redis_sentinel",
                )],
            ),
            (
                "redis_sentinel = { master = \"\", sentinels = [] }\n",
                &[
                    (
                        "store.redis_sentinel.master",
                        4,
                        "\"\" must be a non-empty name without spaces",
                    ),
                    (
                        "store.redis_sentinel.sentinels",
                        4,
                        "name at least one sentinel (three or more in production)",
                    ),
                ],
            ),
            (
                "redis_sentinel = { master = \"m\", sentinels = [\"http://x:1\"], port = 1 }\n",
                &[
                    (
                        "store.redis_sentinel",
                        4,
                        "unknown field `port`, expected one of `master`, `sentinels`",
                    ),
                    (
                        "store.redis_sentinel.sentinels[0]",
                        4,
                        "\"http://x:1\" is not a redis:// URL",
                    ),
                ],
            ),
            (
                "redis_sentinel = { master = \"m\" }\n",
                &[("store.redis_sentinel", 4, "missing field `sentinels`")],
            ),
            (
                "password_env = \"DOORMAN_TEST_SURELY_UNSET_VARIABLE\"\ndurable_revocations = true\n",
                &[
                    (
                        "store.password_env",
                        4,
                        "password_env is for a Redis store: set redis_url, redis_sentinel or redis_cluster",
                    ),
                    (
                        "store.durable_revocations",
                        5,
                        "durable_revocations waits for a Redis replica: set redis_url, redis_sentinel or redis_cluster",
                    ),
                ],
            ),
            (
                "redis_url = \"redis://127.0.0.1:1\"\npassword_env = \"DOORMAN_TEST_SURELY_UNSET_VARIABLE\"\n",
                &[(
                    "store.password_env",
                    5,
                    "environment variable DOORMAN_TEST_SURELY_UNSET_VARIABLE is not set",
                )],
            ),
            (
                "redis_url = \"redis://:pw@127.0.0.1:1\"\npassword_env = \"PATH\"\n",
                &[(
                    "store.password_env",
                    5,
                    "redis_url carries a password already: keep one of the two",
                )],
            ),
            (
                "redis_url = \"rediss://127.0.0.1:1/#insecure\"\n",
                &[(
                    "store.redis_url",
                    4,
                    "\"rediss://127.0.0.1:1/#insecure\": drop the #fragment: doorman always verifies a Redis node's certificate (set ca_file for a private CA)",
                )],
            ),
            (
                "redis_sentinel = { master = \"m\", sentinels = [\"rediss://127.0.0.1:2\"] }\n",
                &[(
                    "store.redis_sentinel.sentinels[0]",
                    4,
                    "\"rediss://127.0.0.1:2\": TLS through Sentinel is not supported yet (rediss:// works with redis_url and redis_cluster)",
                )],
            ),
            (
                "redis_cluster = [\"redis://127.0.0.1:1\"]\nredis_url = \"redis://127.0.0.1:2\"\n",
                &[(
                    "store.redis_cluster",
                    4,
                    "give one of redis_url, redis_sentinel or redis_cluster, not redis_url and redis_cluster",
                )],
            ),
            (
                "redis_cluster = []\n",
                &[(
                    "store.redis_cluster",
                    4,
                    "name at least one seed node (two or more in production)",
                )],
            ),
            (
                "redis_cluster = [\"redis://127.0.0.1:1/3\", \"http://127.0.0.1:2\", \"rediss://127.0.0.1:3\"]\n",
                &[
                    (
                        "store.redis_cluster[0]",
                        4,
                        "\"redis://127.0.0.1:1/3\": a cluster has only database 0: drop the /db",
                    ),
                    (
                        "store.redis_cluster[1]",
                        4,
                        "\"http://127.0.0.1:2\" is not a redis:// URL",
                    ),
                    (
                        "store.redis_cluster",
                        4,
                        "mixes redis:// and rediss:// seeds: the whole cluster speaks TLS or none of it does",
                    ),
                ],
            ),
            (
                "redis_cluster = \"redis://127.0.0.1:1\"\n",
                &[(
                    "store.redis_cluster",
                    4,
                    "invalid type: string \"redis://127.0.0.1:1\", expected a sequence",
                )],
            ),
            (
                "ca_file = \"/nonexistent/ca.pem\"\n",
                &[(
                    "store.ca_file",
                    4,
                    "ca_file is for rediss:// Redis nodes: set redis_url, redis_sentinel or redis_cluster",
                )],
            ),
            (
                "redis_url = \"rediss://127.0.0.1:1\"\nca_file = \"/nonexistent/ca.pem\"\n",
                &[(
                    "store.ca_file",
                    5,
                    "/nonexistent/ca.pem: cannot read: No such file or directory (os error 2)",
                )],
            ),
            (
                "redis_url = \"redis://127.0.0.1:1/x\"\n",
                &[(
                    "store.redis_url",
                    4,
                    "\"redis://127.0.0.1:1/x\": Invalid database number",
                )],
            ),
            (
                "redis_sentinel = 5\n",
                &[(
                    "store.redis_sentinel",
                    4,
                    "invalid type: integer `5`, expected a table",
                )],
            ),
        ];
        for (store, want) in cases {
            let want: Vec<_> = want
                .iter()
                .map(|(k, l, m)| (k.to_string(), Some(*l), m.to_string()))
                .collect();
            assert_eq!(store_errors(store), want, "{store}");
        }
    }
}

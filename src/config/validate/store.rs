//! `[store]`: one Redis node, a Sentinel-managed master, or the bounded embedded store; the
//! Redis password, durable revocation writes, the timeout and the failure policy.

use redis::IntoConnectionInfo;

use super::super::file::{RawSentinel, RawStore};
use super::super::{OnError, RedisSpec, Secret, StoreSettings, defaults};
use super::Validator;

impl Validator {
    pub(super) fn store(&mut self, raw: RawStore) -> StoreSettings {
        let url_password = raw.redis_url.as_deref().and_then(|url| self.redis_url(url));
        let redis = match (raw.redis_url, raw.redis_sentinel) {
            (Some(_), Some(_)) => {
                self.err(
                    "store.redis_sentinel",
                    "give one of redis_url or redis_sentinel, not both",
                );
                None
            }
            (Some(url), None) => Some(RedisSpec::Url(url)),
            (None, Some(s)) => self.sentinel(s),
            (None, None) => None,
        };
        let password = raw.password_env.as_deref().and_then(|var| {
            if raw_has_no_redis(&redis, &self.errors) {
                self.err(
                    "store.password_env",
                    "password_env is for a Redis store: set redis_url or redis_sentinel",
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
                "durable_revocations waits for a Redis replica: set redis_url or redis_sentinel",
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
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
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

/// The URL as redis-rs reads it, or why it cannot be used.
fn parse_url(url: &str) -> Result<redis::ConnectionInfo, String> {
    if url.starts_with("rediss://") {
        // redis-rs' rustls feature is not built in yet: say so at load, not at connect.
        return Err(format!(
            "{url:?}: TLS to Redis (rediss://) is not supported by this build yet"
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
            e.key.starts_with("store.redis_url") || e.key.starts_with("store.redis_sentinel")
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
                    "give one of redis_url or redis_sentinel, not both",
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
                        "password_env is for a Redis store: set redis_url or redis_sentinel",
                    ),
                    (
                        "store.durable_revocations",
                        5,
                        "durable_revocations waits for a Redis replica: set redis_url or redis_sentinel",
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
                "redis_url = \"rediss://127.0.0.1:1\"\n",
                &[(
                    "store.redis_url",
                    4,
                    "\"rediss://127.0.0.1:1\": TLS to Redis (rediss://) is not supported by this build yet",
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

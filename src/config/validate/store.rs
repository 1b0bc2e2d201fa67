//! `[store]`: the Redis URL or the bounded embedded store, its timeout and its failure policy.

use super::super::file::RawStore;
use super::super::{OnError, StoreSettings, defaults};
use super::Validator;

impl Validator {
    pub(super) fn store(&mut self, raw: RawStore) -> StoreSettings {
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
}

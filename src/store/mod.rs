//! The shared state store: revocations now, idempotency records later.
//!
//! Two backends behind one type. `Memory` is the embedded single-instance store (no Redis
//! configured). `Redis` keeps a local, coherent view of every revocation key so that the
//! request path answers without a network round trip; see `redis/`.
//!
//! Key schema (public, so an auth server can revoke by writing Redis directly):
//! - `{prefix}jti:{jti}` exists → that token is revoked. TTL = the token's remaining life.
//! - `{prefix}sub:{sub}` = unix seconds T → every token of `sub` with `iat <= T` is revoked
//!   (a token of that subject without `iat` is treated as revoked too).

mod idempotency;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use idempotency::{Begin, IdemRecord, StoredResponse};
pub(crate) use memory::{Caps, MemoryCounters, MemoryStore};
pub use redis::RedisCounters;
pub(crate) use redis::RedisStore;
pub(crate) use redis::parse_cluster_shards;

use crate::auth::VerifiedToken;
use crate::config::{RevocationSettings, StoreSettings};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store timed out")]
    Timeout,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The embedded store is at a cap and may not make room (the leases alone leave no room
    /// for another, or a new revocation beyond `embedded_max_revocations`). On the request
    /// path it is handled as any store failure (`on_error`); `POST /revocations` answers 507.
    #[error("embedded store full: {0}")]
    Full(&'static str),
}

#[derive(Debug, Clone)]
pub enum Store {
    Memory(Arc<MemoryStore>),
    Redis(Arc<RedisStore>),
}

/// A revocation to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// Revoke one token until it would have expired anyway (unix seconds).
    Jti { jti: String, expires_at: u64 },
    /// Revoke every token of `sub` issued at or before `before` (unix seconds).
    Subject { sub: String, before: u64 },
}

/// Longest a jti revocation can be asked to live: beyond this, `expires_at` is a mistake.
const MAX_TOKEN_LIFETIME: u64 = 366 * 24 * 3600;

impl Revoke {
    /// Refuse revocations that are certainly mistakes (milliseconds for seconds, a token
    /// that is already dead) before anything is written.
    pub fn check(&self, now: u64, leeway: u64) -> Result<(), &'static str> {
        match self {
            Revoke::Jti { expires_at, .. } => {
                if expires_at.saturating_add(leeway) <= now {
                    return Err("expires_at is in the past: that token is already refused");
                }
                if *expires_at > now.saturating_add(MAX_TOKEN_LIFETIME) {
                    return Err(
                        "expires_at is more than a year ahead (unix seconds, not milliseconds?)",
                    );
                }
            }
            Revoke::Subject { before, .. } => {
                if *before > now.saturating_add(leeway) {
                    return Err("before is in the future (unix seconds, not milliseconds?)");
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// The embedded store, or a Redis-backed one whose background sync task starts now
    /// (call from within a tokio runtime).
    /// `leeway` is the JWT clock-skew allowance: a revoked jti is kept that much past the
    /// token's expiry, as long as a verifier could still accept the token.
    /// `redis` holds the Redis store's metrics (resyncs, failovers, session and view state);
    /// `counters`, what the embedded store evicts and refuses at its caps.
    pub fn new(
        store: &StoreSettings,
        revocation: &RevocationSettings,
        leeway: Duration,
        redis: RedisCounters,
        counters: MemoryCounters,
    ) -> Result<Self, String> {
        let records = Records::new(revocation, leeway);
        match &store.redis {
            None => {
                // The embedded list is the only copy: always answered locally.
                redis.view_trusted.set(1);
                Ok(Store::Memory(Arc::new(MemoryStore::new(
                    records,
                    Caps::of(store),
                    counters,
                ))))
            }
            Some(spec) => Ok(Store::Redis(RedisStore::start(
                spec, store, records, redis,
            )?)),
        }
    }

    /// What the status page shows of the store: its kind, whether it answers, the round
    /// trip of one PING, the revocation view.
    pub(crate) async fn status(&self) -> serde_json::Value {
        match self {
            Store::Memory(m) => {
                let s = m.sizes();
                serde_json::json!({
                    "kind": "embedded", "connected": true, "latency_ms": 0.0,
                    "revocation_view": "local",
                    "revoked_tokens": s.revoked_tokens, "revoked_subjects": s.revoked_subjects,
                    "idempotency_records": s.idempotency_records,
                    "idempotency_leases": s.idempotency_leases,
                    "idempotency_bytes": s.idempotency_bytes,
                })
            }
            Store::Redis(r) => {
                let ping = r.ping().await;
                let (jtis, subs) = r.view_size();
                let mut v = serde_json::json!({
                    "kind": "redis",
                    "connected": ping.is_ok(),
                    "latency_ms": ping.as_ref().ok().map(|d| d.as_secs_f64() * 1000.0),
                    "error": ping.err().map(|e| e.to_string()),
                    "revocation_view": if r.view_trusted() { "synced" } else { "resyncing" },
                    "revoked_tokens": jtis, "revoked_subjects": subs,
                });
                // mode, master, session_connected, failovers, untrusted_reason.
                if let (Some(map), serde_json::Value::Object(session)) =
                    (v.as_object_mut(), r.session_status())
                {
                    map.extend(session);
                }
                v
            }
        }
    }

    /// Is this verified token revoked? Answered from local state when it can be; otherwise
    /// one Redis round trip under the store timeout.
    pub async fn is_revoked(&self, t: &VerifiedToken) -> Result<bool, StoreError> {
        self.check_revoked(t).await.0
    }

    /// `is_revoked`, also telling whether local state answered (true) or Redis (false).
    pub(crate) async fn check_revoked(
        &self,
        t: &VerifiedToken,
    ) -> (Result<bool, StoreError>, bool) {
        match self {
            Store::Memory(m) => (
                Ok(m.is_revoked(t.jti.as_deref(), t.sub.as_deref(), t.iat)),
                true,
            ),
            Store::Redis(r) => {
                r.is_revoked(t.jti.as_deref(), t.sub.as_deref(), t.iat)
                    .await
            }
        }
    }

    /// Write a revocation. `Some(replicated)` when `durable_revocations` asked Redis to
    /// confirm that one replica has it; None when not asked (or the embedded store).
    pub async fn revoke(&self, r: &Revoke) -> Result<Option<bool>, StoreError> {
        match self {
            Store::Memory(m) => m.revoke(r).map(|()| None),
            Store::Redis(s) => s.revoke(r).await,
        }
    }

    /// Take the lease on an idempotency key, or return what is recorded there.
    pub(crate) async fn idem_begin(
        &self,
        key: &str,
        lease: &str,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        match self {
            Store::Memory(m) => m.idem_begin(key, lease, lock_ttl),
            Store::Redis(r) => r.idem_begin(key, lease, lock_ttl).await,
        }
    }

    /// Replace our lease with `result` (None: release the key), only if it is still ours.
    /// Returns whether it was.
    pub(crate) async fn idem_finish(
        &self,
        key: &str,
        lease: &str,
        result: Option<&str>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.idem_finish(key, lease, result, ttl)),
            Store::Redis(r) => r.idem_finish(key, lease, result, ttl).await,
        }
    }

    /// Whether revocation checks are answered locally right now (always, for the embedded
    /// store; for Redis, while the tracked view is in sync).
    pub fn view_coherent(&self) -> bool {
        match self {
            Store::Memory(_) => true,
            Store::Redis(r) => r.view_trusted(),
        }
    }

    pub(crate) fn is_embedded(&self) -> bool {
        matches!(self, Store::Memory(_))
    }

    /// Apply reloaded settings that do not change what the store is: the budget of remote
    /// calls, the TTLs/leeway of written revocations, the embedded store's caps.
    pub(crate) fn retune(&self, settings: &StoreSettings, records: Records) {
        match self {
            Store::Memory(m) => m.retune(records, Caps::of(settings)),
            Store::Redis(r) => r.retune(settings, records),
        }
    }
}

/// How revocations are written: the key schema and the TTLs. Shared by the stores, the
/// admin endpoint and `doorman revoke`, so every writer produces the same records.
#[derive(Debug, Clone)]
pub struct Records {
    pub prefix: String,
    pub subject_ttl: Duration,
    pub leeway: Duration,
}

impl Records {
    pub fn new(revocation: &RevocationSettings, leeway: Duration) -> Self {
        Records {
            prefix: revocation.key_prefix.clone(),
            subject_ttl: revocation.subject_ttl,
            leeway,
        }
    }

    /// (key, value, ttl) for a revocation written at unix time `now`.
    pub(crate) fn record(&self, r: &Revoke, now: u64) -> (String, String, Duration) {
        match r {
            Revoke::Jti { jti, expires_at } => (
                jti_key(&self.prefix, jti),
                "1".to_string(),
                jti_ttl(*expires_at, now, self.leeway),
            ),
            Revoke::Subject { sub, before } => (
                sub_key(&self.prefix, sub),
                before.to_string(),
                self.subject_ttl,
            ),
        }
    }
}

/// Write one revocation straight to Redis (used by `doorman revoke`): to the configured
/// node, the master the sentinels name, or the cluster. With `durable_revocations`, returns whether
/// one replica acknowledged it (waiting up to `timeout`).
pub async fn write_to_redis(
    store: &StoreSettings,
    records: &Records,
    r: &Revoke,
) -> Result<Option<bool>, String> {
    let Some(spec) = &store.redis else {
        return Err("no Redis store is configured".into());
    };
    let target = redis::Target::new(spec, store)?;
    let mut conn = target
        .command_connection()
        .await
        .map_err(|e| format!("connecting to Redis: {e}"))?;
    let written = if store.durable_revocations {
        redis::write_durably(&mut conn, records, r, store.timeout)
            .await
            .map(Some)
    } else {
        redis::write_record(&mut conn, records, r)
            .await
            .map(|()| None)
    };
    written.map_err(|e| format!("writing the revocation: {e}"))
}

/// The Redis keys for a token's revocation checks.
pub(crate) fn jti_key(prefix: &str, jti: &str) -> String {
    format!("{prefix}jti:{jti}")
}

pub(crate) fn sub_key(prefix: &str, sub: &str) -> String {
    format!("{prefix}sub:{sub}")
}

/// Whether a subject revocation stamped `before` covers a token issued at `iat`.
pub(crate) fn subject_covers(before: u64, iat: Option<u64>) -> bool {
    iat.is_none_or(|iat| iat <= before)
}

/// TTL for a jti key: the token's remaining life plus leeway, at least one second.
pub(crate) fn jti_ttl(expires_at: u64, now: u64, leeway: Duration) -> Duration {
    Duration::from_secs(expires_at.saturating_sub(now).max(1)).saturating_add(leeway)
}

//! The Redis store and its commands: revocation checks (answered from the local view while
//! it is trusted, else by Redis), revocation writes and the idempotency scripts.
//!
//! The view is a copy of every revocation key, kept coherent by `sync`'s tracking session
//! (docs/revocation.md has the long form); the request path therefore reads two concurrent
//! maps and never waits on the network while the view is trusted. `target` says which node
//! the session and the fallback connection talk to: the configured one, the master the
//! sentinels name, or a cluster, whose view `cluster` keeps with a session per master
//! (docs/scale-out.md).

mod cluster;
mod conn;
mod sync;
mod target;
mod write;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tracing::warn;

use super::{Records, Revoke, StoreError, jti_key, sub_key, subject_covers};
use crate::auth::unix_now;
use crate::config::{RedisSpec, StoreSettings};
use conn::Conn;
use sync::{refresh, sync_forever};
pub(super) use target::Target;
pub(super) use write::{write_durably, write_record};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Writes off the request path (admin endpoint, CLI) may take longer; the idempotency
/// scripts, which a client waits for, get the store timeout instead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// One revocation entry: the stored value (a subject's cut-off; unused for a jti) and when
/// Redis will expire it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    value: u64,
    expires: Option<Instant>,
    /// The view's epoch when this entry was last read from Redis (see `cluster`).
    epoch: u64,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|d| d > now)
    }
}

#[derive(Debug, Default)]
struct View {
    trusted: AtomicBool,
    // foldhash (keyed per process) instead of SipHash: every authenticated request looks
    // its jti and subject up here, and the keys come from signed tokens or the operator.
    jtis: DashMap<String, Entry, foldhash::quality::RandomState>,
    subs: DashMap<String, Entry, foldhash::quality::RandomState>,
    /// Bumped by each cluster generation: entries older than it when every master has
    /// loaded were found by no scan, so they are gone from Redis.
    epoch: AtomicU64,
}

/// Metric handles the Redis store keeps current (resolved once, by the snapshot).
#[derive(Debug, Clone, Default)]
pub struct RedisCounters {
    /// Each time the view becomes coherent again.
    pub resyncs: prometheus_client::metrics::counter::Counter,
    /// Each time the resolved master differs from the one before (Sentinel).
    pub failovers: prometheus_client::metrics::counter::Counter,
    /// 1 while the tracking session is connected.
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// 1 while the view is trusted (checks answered locally).
    pub view_trusted: prometheus_client::metrics::gauge::Gauge,
    /// Cluster: how many different topologies (masters and their slots) were seen.
    pub topology_version: Gauge,
    /// Cluster: 1 per master whose tracking session is connected, by `host:port`.
    pub(crate) node_connected: Family<crate::metrics::NodeLabels, Gauge>,
}

/// What the status page shows of the session: set by the session task, read on demand.
#[derive(Debug, Default)]
struct Health {
    /// `host:port` of the node the session talks to, once resolved.
    master: Option<String>,
    connected: bool,
    /// Why the view is not trusted; None while it is.
    reason: Option<String>,
    /// Times a resolution named another master than the one before (on a cluster: times
    /// a master left the topology's masters).
    failovers: u64,
    /// Cluster: the masters' sessions, by `host:port`.
    nodes: BTreeMap<String, NodeHealth>,
    /// Cluster: the last topology read, and how many different ones were seen.
    topology: cluster::Topology,
    topology_version: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct NodeHealth {
    connected: bool,
    synced: bool,
}

#[derive(Debug)]
pub struct RedisStore {
    prefix: String,
    /// TTLs and leeway of written records, and the budget of remote checks: retuned in place
    /// on reload (the prefix is what the view tracks, so it never changes here).
    records: std::sync::RwLock<Records>,
    timeout_ms: std::sync::atomic::AtomicU64,
    view: View,
    /// The current session's connection, for fallback reads and writes. None between
    /// sessions, and always on a cluster (the cluster connection serves instead).
    conn: Mutex<Option<Conn>>,
    /// A connection of its own for checks and writes while no session is up (tracking not
    /// permitted, scan failing, reconnecting), so a healthy Redis is still asked. On a
    /// cluster, the cluster connection, for everything but tracking.
    fallback: tokio::sync::Mutex<Option<Conn>>,
    target: Target,
    health: Mutex<Health>,
    counters: RedisCounters,
    /// `[store] durable_revocations`: retuned in place on reload.
    durable: AtomicBool,
    /// Woken when a command met a node that is no longer the master (READONLY): the session
    /// then starts over and resolves the master again, rather than at its next ROLE check.
    suspect: Arc<tokio::sync::Notify>,
}

impl RedisStore {
    fn records(&self) -> Records {
        self.records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub(crate) fn retune(&self, settings: &StoreSettings, records: Records) {
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = records;
        self.timeout_ms.store(
            settings.timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.durable
            .store(settings.durable_revocations, Ordering::Relaxed);
    }

    /// Check the target and start the background session that keeps the view coherent.
    pub(crate) fn start(
        spec: &RedisSpec,
        store: &StoreSettings,
        records: Records,
        counters: RedisCounters,
    ) -> Result<Arc<Self>, String> {
        let target = Target::new(spec, store)?;
        counters.connected.set(0);
        counters.view_trusted.set(0);
        let s = Arc::new(RedisStore {
            prefix: records.prefix.clone(),
            records: std::sync::RwLock::new(records),
            timeout_ms: std::sync::atomic::AtomicU64::new(store.timeout.as_millis() as u64),
            view: View::default(),
            conn: Mutex::new(None),
            fallback: tokio::sync::Mutex::new(None),
            target,
            health: Mutex::new(Health {
                reason: Some("starting".into()),
                ..Health::default()
            }),
            counters,
            durable: AtomicBool::new(store.durable_revocations),
            suspect: Arc::new(tokio::sync::Notify::new()),
        });
        if s.target.is_cluster() {
            tokio::spawn(cluster::sync_forever(Arc::downgrade(&s)));
        } else {
            tokio::spawn(sync_forever(Arc::downgrade(&s)));
        }
        Ok(s)
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The view answers locally from now on.
    fn set_trusted(&self) {
        self.view.trusted.store(true, Ordering::Release);
        self.counters.view_trusted.set(1);
        self.counters.resyncs.inc();
        self.health().reason = None;
    }

    /// Checks go to Redis from now on, for `reason`.
    fn set_untrusted(&self, reason: impl Into<String>) {
        self.view.trusted.store(false, Ordering::Release);
        self.counters.view_trusted.set(0);
        self.health().reason = Some(reason.into());
    }

    fn set_connected(&self, connected: bool) {
        self.counters.connected.set(i64::from(connected));
        self.health().connected = connected;
    }

    /// The session resolved `addr`: a different node than the one before is a failover.
    /// Returns whether it was one.
    fn resolved(&self, addr: String) -> bool {
        let mut h = self.health();
        let changed = h.master.as_ref().is_some_and(|old| *old != addr);
        if changed {
            h.failovers += 1;
            self.counters.failovers.inc();
            warn!(master = %addr, previous = ?h.master, "Redis master changed: the revocation view resyncs from the new one");
        }
        h.master = Some(addr);
        changed
    }

    /// The session's state for the status page.
    pub(crate) fn session_status(&self) -> serde_json::Value {
        let h = self.health();
        let mut out = serde_json::json!({
            "mode": self.target.mode(),
            "master": h.master,
            "session_connected": h.connected,
            "failovers": h.failovers,
            "untrusted_reason": h.reason,
        });
        if self.target.is_cluster() {
            let masters: Vec<serde_json::Value> = h
                .topology
                .masters
                .iter()
                .map(|m| {
                    let n = h.nodes.get(&m.addr).copied().unwrap_or_default();
                    serde_json::json!({
                        "address": m.addr,
                        "slots": m.slots.iter().map(|(lo, hi)| format!("{lo}-{hi}")).collect::<Vec<_>>(),
                        "connected": n.connected,
                        "synced": n.synced,
                    })
                })
                .collect();
            out["masters"] = masters.into();
            out["replicas"] = h.topology.replicas.clone().into();
            out["topology_version"] = h.topology_version.into();
        }
        out
    }

    /// Cluster: a topology was read. A different one than before bumps the version; a
    /// master that is no longer one counts as a failover seen.
    fn topology_seen(&self, t: &cluster::Topology) {
        let mut h = self.health();
        if h.topology.masters != t.masters || h.topology_version == 0 {
            let before: Vec<&str> = h.topology.masters.iter().map(|m| m.addr.as_str()).collect();
            let left = before
                .iter()
                .filter(|a| !t.masters.iter().any(|m| m.addr == **a))
                .count() as u64;
            if left > 0 {
                h.failovers += left;
                self.counters.failovers.inc_by(left);
                warn!(masters = ?t.masters.iter().map(|m| &m.addr).collect::<Vec<_>>(), "Redis Cluster masters changed");
            }
            h.topology_version += 1;
            self.counters
                .topology_version
                .set(h.topology_version as i64);
            h.nodes
                .retain(|addr, _| t.masters.iter().any(|m| m.addr == *addr));
        }
        h.topology = t.clone();
    }

    /// Cluster: a master's session connected, and whether it has loaded.
    fn node_state(&self, addr: &str, connected: bool, synced: bool) {
        let mut h = self.health();
        h.nodes
            .insert(addr.to_string(), NodeHealth { connected, synced });
        let connected_masters = h.nodes.values().filter(|n| n.connected).count();
        h.connected = connected_masters > 0;
        self.counters.connected.set(i64::from(h.connected));
        self.counters
            .node_connected
            .get_or_create(&crate::metrics::NodeLabels {
                node: crate::metrics::Name(addr.into()),
            })
            .set(i64::from(connected));
    }

    /// Cluster: a generation ended; its sessions are gone with it.
    fn cluster_sessions_down(&self) {
        let mut h = self.health();
        for (addr, n) in h.nodes.iter_mut() {
            *n = NodeHealth::default();
            self.counters
                .node_connected
                .get_or_create(&crate::metrics::NodeLabels {
                    node: crate::metrics::Name(addr.as_str().into()),
                })
                .set(0);
        }
        h.connected = false;
        self.counters.connected.set(0);
    }

    /// One PING on the write connection, under the store timeout: the round trip.
    pub(crate) async fn ping(&self) -> Result<Duration, StoreError> {
        let start = Instant::now();
        let _: String = self.eval(redis::cmd("PING"), self.timeout()).await?;
        Ok(start.elapsed())
    }

    /// Revocations held in the local view (jtis, subjects).
    pub(crate) fn view_size(&self) -> (usize, usize) {
        (self.view.jtis.len(), self.view.subs.len())
    }

    /// Whether the local view is currently coherent with Redis.
    pub(crate) fn view_trusted(&self) -> bool {
        self.view.trusted.load(Ordering::Acquire)
    }

    /// The answer, and whether the local view gave it (false: Redis was asked).
    pub(crate) async fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: Option<u64>,
    ) -> (Result<bool, StoreError>, bool) {
        if self.view_trusted() {
            return (Ok(self.is_revoked_locally(jti, sub, iat)), true);
        }
        // Boxed: this rare path's future is large, and it would otherwise inflate the
        // future of every request (moved by value into hyper's dispatcher).
        let remote = tokio::time::timeout(
            self.timeout(),
            Box::pin(self.is_revoked_remotely(jti, sub, iat)),
        )
        .await
        .map_err(|_| StoreError::Timeout)
        .and_then(|r| r);
        (remote, false)
    }

    fn is_revoked_locally(&self, jti: Option<&str>, sub: Option<&str>, iat: Option<u64>) -> bool {
        let now = Instant::now();
        if let Some(jti) = jti
            && self.view.jtis.get(jti).is_some_and(|e| e.live(now))
        {
            return true;
        }
        if let Some(sub) = sub
            && let Some(e) = self.view.subs.get(sub)
            && e.live(now)
        {
            return subject_covers(e.value, iat);
        }
        false
    }

    async fn is_revoked_remotely(
        &self,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: Option<u64>,
    ) -> Result<bool, StoreError> {
        if jti.is_none() && sub.is_none() {
            return Ok(false);
        }
        let conn = self.connection().await?;
        let keys: Vec<String> = jti
            .map(|j| jti_key(&self.prefix, j))
            .into_iter()
            .chain(sub.map(|s| sub_key(&self.prefix, s)))
            .collect();
        let states = match conn.read_keys(&keys).await {
            Ok(v) => v,
            Err(e) => {
                self.drop_fallback_if_broken(&e).await;
                return Err(unavailable(e));
            }
        };
        let mut values = states.into_iter().map(|k| read_value(k.value));
        if jti.is_some() && values.next().flatten().is_some() {
            return Ok(true);
        }
        if sub.is_some()
            && let Some(cutoff) = values.next().flatten()
        {
            return Ok(subject_covers(cutoff, iat));
        }
        Ok(false)
    }

    /// Write a revocation. With `durable_revocations`, returns whether one replica has it
    /// (`WAIT 1` within the store timeout); otherwise None (not asked).
    pub(crate) async fn revoke(&self, r: &Revoke) -> Result<Option<bool>, StoreError> {
        let durable = self.durable.load(Ordering::Relaxed);
        let write = async {
            let replicated = if durable {
                // A connection of its own: WAIT blocks the client it runs on, and the shared
                // connection carries the request path's checks. It must be the connection
                // that wrote, since WAIT counts that client's writes.
                let mut own = self.target.command_connection().await?;
                let timeout = self.timeout();
                Some(write::write_durably(&mut own, &self.records(), r, timeout).await?)
            } else {
                let mut conn = self.connection().await.map_err(store_to_redis)?;
                write_record(&mut conn, &self.records(), r).await?;
                None
            };
            // Read-your-writes on this instance without waiting for the invalidation echo.
            let conn = self.connection().await.map_err(store_to_redis)?;
            let (key, _, _) = self.records().record(r, unix_now());
            refresh(self, &conn, std::slice::from_ref(&key))
                .await
                .map_err(|e| {
                    redis::RedisError::from((redis::ErrorKind::Io, "re-read", e.to_string()))
                })?;
            Ok::<_, redis::RedisError>(replicated)
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(e)) => {
                self.drop_fallback_if_broken(&e).await;
                Err(StoreError::Unavailable(e.to_string()))
            }
            Ok(Ok(replicated)) => Ok(replicated),
        }
    }

    pub(crate) async fn idem_begin(
        &self,
        key: &str,
        lease: &str,
        lock_ttl: Duration,
    ) -> Result<super::Begin, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(super::idempotency::BEGIN)
            .arg(1)
            .arg(key)
            .arg(lease)
            .arg(lock_ttl.as_millis() as u64);
        let v: Option<String> = self.eval(cmd, self.timeout()).await?;
        Ok(match v {
            None => super::Begin::Acquired,
            Some(v) => super::Begin::Existing(super::IdemRecord::decode(&v)),
        })
    }

    pub(crate) async fn idem_finish(
        &self,
        key: &str,
        lease: &str,
        result: Option<&str>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(super::idempotency::FINISH)
            .arg(1)
            .arg(key)
            .arg(lease)
            .arg(result.unwrap_or(""))
            .arg(ttl.as_millis() as u64);
        // The client waits for this answer, so it gets the request path's budget like BEGIN
        // (it used to get WRITE_TIMEOUT: a stalled Redis held every keyed response 2 s).
        // Given up on, the key keeps our lease until lock_ttl — a retry gets 409, never a
        // second run — unless Redis, once it catches up, still runs the script it received:
        // then the result is stored after all and a retry gets the replay.
        let n: i64 = self.eval(cmd, self.timeout()).await?;
        Ok(n == 1)
    }

    /// Run one script on the write connection within `budget`; a broken connection is
    /// dropped so the next call reconnects.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        budget: Duration,
    ) -> Result<T, StoreError> {
        let run = async {
            let mut conn = self.write_connection().await?;
            match cmd.query_async(&mut conn).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    self.drop_fallback_if_broken(&e).await;
                    Err(unavailable(e))
                }
            }
        };
        tokio::time::timeout(budget, run)
            .await
            .map_err(|_| StoreError::Timeout)?
    }

    /// The session's connection, or else the fallback one (opened on demand).
    async fn connection(&self) -> Result<Conn, StoreError> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        self.write_connection().await
    }

    /// The connection for writes (idempotency records, revocations): its own, with a
    /// per-command timeout of WRITE_TIMEOUT rather than the tracking session's PING deadline
    /// (callers on the request path bound each call tighter: see `eval`).
    async fn write_connection(&self) -> Result<Conn, StoreError> {
        self.command_conn().await.map_err(unavailable)
    }

    /// `write_connection`, with redis-rs' error (for the sessions).
    async fn command_conn(&self) -> Result<Conn, redis::RedisError> {
        let mut fallback = self.fallback.lock().await;
        if let Some(c) = fallback.as_ref() {
            return Ok(c.clone());
        }
        let c = self.target.command_connection().await?;
        *fallback = Some(c.clone());
        Ok(c)
    }

    /// After a failed command: a broken connection is dropped (the next call reconnects);
    /// a node that is no longer the master (READONLY) also makes the session start over and
    /// resolve the master again.
    async fn drop_fallback_if_broken(&self, e: &redis::RedisError) {
        let demoted = is_readonly(e);
        // A timeout alone is not a reason: a slow node keeps its connection.
        let broken = e.is_connection_dropped()
            || e.is_unrecoverable_error()
            || (e.is_io_error() && !e.is_timeout());
        if broken || demoted {
            self.fallback.lock().await.take();
            self.target.forget_master();
        }
        if demoted {
            self.suspect.notify_waiters();
        }
    }

    /// Put one key's current state into the view: `value` as read by `read_value` (None =
    /// absent), `pttl` in ms (-1 = no TTL).
    fn apply(&self, key: &str, value: Option<u64>, pttl: i64) {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        let (map, id) = if let Some(jti) = rest.strip_prefix("jti:") {
            (&self.view.jtis, jti)
        } else if let Some(sub) = rest.strip_prefix("sub:") {
            (&self.view.subs, sub)
        } else {
            return;
        };
        let Some(value) = value else {
            map.remove(id);
            return;
        };
        let expires = (pttl >= 0).then(|| Instant::now() + Duration::from_millis(pttl as u64));
        let epoch = self.view.epoch.load(Ordering::Acquire);
        map.insert(
            id.to_string(),
            Entry {
                value,
                expires,
                epoch,
            },
        );
    }
}

/// Each master's `host:port` and inclusive slot ranges.
pub(crate) type MasterSlots = Vec<(String, Vec<(u16, u16)>)>;

/// `CLUSTER SHARDS` as the cluster session reads it: each master's address and slot
/// ranges (for the fuzz target: `crate::fuzzing::cluster_shards`).
pub(crate) fn parse_cluster_shards(v: redis::Value, tls: bool) -> Result<MasterSlots, String> {
    cluster::parse_shards(v, tls)
        .map(|t| t.masters.into_iter().map(|m| (m.addr, m.slots)).collect())
}

/// A key's value as doorman reads it: None when the key is absent; for a subject, its
/// cut-off. A value that is not a number, not text, or not a string key at all (WRONGTYPE)
/// counts as present with the strictest meaning — failing closed beats guessing.
fn read_value(v: redis::Value) -> Option<u64> {
    use redis::Value;
    match v {
        Value::Nil => None,
        Value::BulkString(b) => Some(
            std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX),
        ),
        Value::Int(i) => Some(u64::try_from(i).unwrap_or(u64::MAX)),
        _ => Some(u64::MAX),
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A write refused by a node that is no longer the master (a replica after a failover).
fn is_readonly(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        // A write inside a script comes back as a script error quoting READONLY.
        || e.to_string().contains("READONLY")
}

/// A store failure met inside a write, as a Redis error (one error type per write path).
fn store_to_redis(e: StoreError) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "store", e.to_string()))
}

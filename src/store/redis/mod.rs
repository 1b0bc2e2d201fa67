//! The Redis store and its commands: revocation checks (answered from the local view while
//! it is trusted, else by Redis), revocation writes and the idempotency scripts.
//!
//! The view is a copy of every revocation key, kept coherent by `sync`'s tracking session
//! (docs/revocation.md has the long form); the request path therefore reads two concurrent
//! maps and never waits on the network while the view is trusted.

mod sync;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use super::{Records, Revoke, StoreError, jti_key, sub_key, subject_covers};
use crate::auth::unix_now;
use crate::config::StoreSettings;
use sync::{refresh, sync_forever};

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
}

#[derive(Debug)]
pub struct RedisStore {
    prefix: String,
    /// TTLs and leeway of written records, and the budget of remote checks: retuned in place
    /// on reload (the prefix is what the view tracks, so it never changes here).
    records: std::sync::RwLock<Records>,
    timeout_ms: std::sync::atomic::AtomicU64,
    view: View,
    /// The current session's connection, for fallback reads and writes. None between sessions.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// A connection of its own for checks and writes while no session is up (tracking not
    /// permitted, scan failing, reconnecting), so a healthy Redis is still asked.
    fallback: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    url: String,
    /// Counts each time the view becomes coherent again (a metric).
    resyncs: prometheus_client::metrics::counter::Counter,
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

    pub(crate) fn retune(&self, timeout: Duration, records: Records) {
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = records;
        self.timeout_ms.store(
            timeout.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Validate the URL and start the background session that keeps the view coherent.
    pub(crate) fn start(
        url: &str,
        store: &StoreSettings,
        records: Records,
        resyncs: prometheus_client::metrics::counter::Counter,
    ) -> Result<Arc<Self>, String> {
        let url = resp3_url(url);
        redis::Client::open(url.as_str()).map_err(|e| format!("store.redis_url: {e}"))?;
        let s = Arc::new(RedisStore {
            prefix: records.prefix.clone(),
            records: std::sync::RwLock::new(records),
            timeout_ms: std::sync::atomic::AtomicU64::new(store.timeout.as_millis() as u64),
            view: View::default(),
            conn: Mutex::new(None),
            fallback: tokio::sync::Mutex::new(None),
            url,
            resyncs,
        });
        tokio::spawn(sync_forever(Arc::downgrade(&s)));
        Ok(s)
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
        let mut conn = self.connection().await?;
        let mut p = redis::pipe();
        p.ignore_errors();
        if let Some(j) = jti {
            p.get(jti_key(&self.prefix, j));
        }
        if let Some(s) = sub {
            p.get(sub_key(&self.prefix, s));
        }
        let values: Vec<Value> = match p.query_async(&mut conn).await {
            Ok(v) => v,
            Err(e) => {
                self.drop_fallback_if_broken(&e).await;
                return Err(unavailable(e));
            }
        };
        let mut values = values.into_iter();
        if jti.is_some() && read_value(values.next().unwrap_or(Value::Nil)).is_some() {
            return Ok(true);
        }
        if sub.is_some()
            && let Some(cutoff) = read_value(values.next().unwrap_or(Value::Nil))
        {
            return Ok(subject_covers(cutoff, iat));
        }
        Ok(false)
    }

    pub(crate) async fn revoke(&self, r: &Revoke) -> Result<(), StoreError> {
        let mut conn = self.connection().await?;
        let write = async {
            write_record(&mut conn, &self.records(), r).await?;
            // Read-your-writes on this instance without waiting for the invalidation echo.
            let (key, _, _) = self.records().record(r, unix_now());
            refresh(self, &mut conn, std::slice::from_ref(&key)).await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Err(_) => Err(StoreError::Timeout),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Ok(Ok(())) => Ok(()),
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
    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(c) = self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(c);
        }
        self.write_connection().await
    }

    /// The connection for writes (idempotency records, revocations): its own, with a
    /// per-command timeout of WRITE_TIMEOUT rather than the tracking session's PING deadline
    /// (callers on the request path bound each call tighter: see `eval`).
    async fn write_connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut fallback = self.fallback.lock().await;
        if let Some(c) = fallback.as_ref() {
            return Ok(c.clone());
        }
        let c = write_connection(&self.url).await.map_err(unavailable)?;
        *fallback = Some(c.clone());
        Ok(c)
    }

    async fn drop_fallback_if_broken(&self, e: &redis::RedisError) {
        if e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.fallback.lock().await.take();
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
        map.insert(id.to_string(), Entry { value, expires });
    }
}

/// A key's value as doorman reads it: None when the key is absent; for a subject, its
/// cut-off. A value that is not a number, not text, or not a string key at all (WRONGTYPE)
/// counts as present with the strictest meaning — failing closed beats guessing.
fn read_value(v: Value) -> Option<u64> {
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

/// A plain connection for commands (no push messages), with the write timeouts.
pub(super) async fn write_connection(
    url: &str,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(WRITE_TIMEOUT));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Write a revocation so that it never weakens one already there: a jti keeps the later
/// expiry, a subject keeps the later cut-off (and the longer TTL).
pub(super) async fn write_record(
    conn: &mut MultiplexedConnection,
    records: &Records,
    r: &Revoke,
) -> Result<(), redis::RedisError> {
    let (key, value, ttl) = records.record(r, unix_now());
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    match r {
        Revoke::Jti { .. } => {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl_ms)
                .arg("GT")
                .ignore()
                .exec_async(conn)
                .await
        }
        Revoke::Subject { .. } => {
            redis::cmd("EVAL")
                .arg(RAISE_CUTOFF)
                .arg(1)
                .arg(&key)
                .arg(&value)
                .arg(ttl_ms)
                .exec_async(conn)
                .await
        }
    }
}

/// Set a subject's cut-off only if it raises it; otherwise only extend the TTL.
const RAISE_CUTOFF: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if cur == nil or tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
end
return 1
"#;

/// Client-side caching pushes need RESP3.
fn resp3_url(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    }
}

//! The Redis store and its coherent local view of the revocation list.
//!
//! How the view stays coherent (docs/revocation.md has the long form):
//! 1. One RESP3 connection turns on `CLIENT TRACKING ON BCAST PREFIX {prefix}` *before*
//!    scanning, so any write that lands during or after the scan — by any doorman, by an
//!    auth server, by `redis-cli` — is pushed to us as an `invalidate` message.
//! 2. `SCAN {prefix}*` loads every revocation key (value and PTTL) into local maps.
//! 3. Each invalidation re-reads just the named keys (GET + PTTL in one pipeline); a nil
//!    invalidation (FLUSHALL) reloads everything.
//! 4. A `Disconnection` push or a PING that misses its deadline (a SIGSTOP'd or partitioned
//!    server is silent, not failing) marks the view untrusted at once; until a new session
//!    has resynced, every check goes to Redis under the store timeout, and `on_error`
//!    decides what a failure means.
//!
//! The request path therefore reads two concurrent maps and never waits on the network while
//! the view is trusted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, PushInfo, PushKind, ScanOptions, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tracing::{info, warn};

use super::{Records, Revoke, StoreError, jti_key, sub_key, subject_covers};
use crate::auth::unix_now;
use crate::config::StoreSettings;

/// How often the tracking connection proves it is alive, and how long a PING may take.
const PING_EVERY: Duration = Duration::from_millis(100);
const PING_DEADLINE: Duration = Duration::from_millis(250);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Writes (admin endpoint, CLI) are not on the request path and may take longer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
const SCAN_BATCH: usize = 1000;

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
    jtis: DashMap<String, Entry>,
    subs: DashMap<String, Entry>,
}

#[derive(Debug)]
pub struct RedisStore {
    prefix: String,
    records: Records,
    timeout: Duration,
    view: View,
    /// The current session's connection, for fallback reads and writes. None between sessions.
    conn: Mutex<Option<MultiplexedConnection>>,
    url: String,
}

impl RedisStore {
    /// Validate the URL and start the background session that keeps the view coherent.
    pub fn start(url: &str, store: &StoreSettings, records: Records) -> Result<Arc<Self>, String> {
        let url = resp3_url(url);
        redis::Client::open(url.as_str()).map_err(|e| format!("store.redis_url: {e}"))?;
        let s = Arc::new(RedisStore {
            prefix: records.prefix.clone(),
            records,
            timeout: store.timeout,
            view: View::default(),
            conn: Mutex::new(None),
            url,
        });
        tokio::spawn(sync_forever(Arc::downgrade(&s)));
        Ok(s)
    }

    /// Whether the local view is currently coherent with Redis.
    pub fn view_trusted(&self) -> bool {
        self.view.trusted.load(Ordering::Acquire)
    }

    pub async fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: Option<u64>,
    ) -> Result<bool, StoreError> {
        if self.view_trusted() {
            return Ok(self.is_revoked_locally(jti, sub, iat));
        }
        tokio::time::timeout(self.timeout, self.is_revoked_remotely(jti, sub, iat))
            .await
            .map_err(|_| StoreError::Timeout)?
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
        let mut conn = self.connection()?;
        let keys = [
            jti.map(|j| jti_key(&self.prefix, j)),
            sub.map(|s| sub_key(&self.prefix, s)),
        ];
        let keys: Vec<&String> = keys.iter().flatten().collect();
        if keys.is_empty() {
            return Ok(false);
        }
        let values: Vec<Option<String>> = conn.mget(&keys).await.map_err(unavailable)?;
        let mut values = values.into_iter();
        if jti.is_some() && values.next().flatten().is_some() {
            return Ok(true);
        }
        if sub.is_some()
            && let Some(v) = values.next().flatten()
        {
            return Ok(subject_covers(parse_cutoff(&v), iat));
        }
        Ok(false)
    }

    pub async fn revoke(&self, r: &Revoke) -> Result<(), StoreError> {
        let mut conn = self.connection()?;
        let (key, value, ttl) = self.records.record(r, unix_now());
        let write = conn.pset_ex::<_, _, ()>(&key, &value, ttl.as_millis() as u64);
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| StoreError::Timeout)?
            .map_err(unavailable)?;
        // Read-your-writes on this instance without waiting for the invalidation echo.
        self.apply(&key, Some(&value), ttl.as_millis() as i64);
        Ok(())
    }

    fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        self.conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Unavailable("not connected".into()))
    }

    /// Put one key's current state (value, PTTL in ms; -1 = no TTL) into the view.
    fn apply(&self, key: &str, value: Option<&str>, pttl: i64) {
        let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        // Only a subject entry's value means something: its cut-off time.
        let (map, id, cutoff) = if let Some(jti) = rest.strip_prefix("jti:") {
            (&self.view.jtis, jti, 0)
        } else if let Some(sub) = rest.strip_prefix("sub:") {
            (&self.view.subs, sub, value.map_or(0, parse_cutoff))
        } else {
            return;
        };
        if value.is_none() {
            map.remove(id);
            return;
        }
        let expires = (pttl >= 0).then(|| Instant::now() + Duration::from_millis(pttl as u64));
        map.insert(
            id.to_string(),
            Entry {
                value: cutoff,
                expires,
            },
        );
    }
}

/// A subject cut-off that is not a number revokes every token of the subject: failing
/// closed beats guessing.
fn parse_cutoff(v: &str) -> u64 {
    v.trim().parse().unwrap_or(u64::MAX)
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

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

/// Run sessions until the store is dropped, marking the view untrusted between them.
async fn sync_forever(store: Weak<RedisStore>) {
    let mut backoff = Duration::from_millis(50);
    let mut reported = false;
    loop {
        let result = session(&store).await;
        let Some(s) = store.upgrade() else { return };
        s.view.trusted.store(false, Ordering::Release);
        *s.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(s);
        match result {
            Ok(Synced::Gone) => return,
            Ok(Synced::WasTrusted) => {
                // A session that got in sync was healthy: retry quickly, report once.
                backoff = Duration::from_millis(50);
                reported = false;
            }
            Err(e) => {
                if !reported {
                    warn!(error = %e, "revocation view has no Redis session; checks go to Redis until it resyncs");
                    reported = true;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// How a session that did not fail outright ended.
enum Synced {
    /// The store was dropped: stop.
    Gone,
    /// It reached sync, then lost the connection.
    WasTrusted,
}

async fn connect(
    url: &str,
) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>), SessionError> {
    let client = redis::Client::open(url)?;
    let (tx, rx) = unbounded_channel();
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(PING_DEADLINE))
        .set_push_sender(tx);
    let conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    Ok((conn, rx))
}

/// One tracking session: connect, subscribe, load, then follow invalidations until the
/// connection is lost or the store is dropped. Holds the store only weakly between steps.
async fn session(store: &Weak<RedisStore>) -> Result<Synced, SessionError> {
    let Some(url) = store.upgrade().map(|s| s.url.clone()) else {
        return Ok(Synced::Gone);
    };
    let (mut conn, mut pushes) = connect(&url).await?;
    {
        let Some(s) = store.upgrade() else {
            return Ok(Synced::Gone);
        };
        // Tracking first, then the scan: nothing written in between can be missed.
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&s.prefix)
            .exec_async(&mut conn)
            .await?;
        *s.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        let loaded = full_load(&s, &mut conn).await?;
        s.view.trusted.store(true, Ordering::Release);
        info!(keys = loaded, "revocation view in sync with Redis");
    }

    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            msg = pushes.recv() => {
                let Some(s) = store.upgrade() else { return Ok(Synced::Gone) };
                match msg {
                    None | Some(PushInfo { kind: PushKind::Disconnection, .. }) => {
                        warn!("revocation view: Redis connection lost");
                        return Ok(Synced::WasTrusted);
                    }
                    Some(PushInfo { kind: PushKind::Invalidate, data }) => match data.into_iter().next() {
                        Some(Value::Array(keys)) => {
                            let keys: Vec<String> = keys
                                .into_iter()
                                .filter_map(|k| redis::from_redis_value(k).ok())
                                .collect();
                            refresh(&s, &mut conn, &keys).await?;
                        }
                        // FLUSHALL / FLUSHDB: every key may be gone.
                        _ => {
                            full_load(&s, &mut conn).await?;
                        }
                    },
                    Some(_) => {}
                }
            }
            _ = ping.tick() => {
                if store.strong_count() == 0 {
                    return Ok(Synced::Gone);
                }
                // A stopped server answers nothing and reports nothing: silence is failure.
                match tokio::time::timeout(PING_DEADLINE, redis::cmd("PING").exec_async(&mut conn)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        warn!(error = %e, "revocation view: Redis PING failed");
                        return Ok(Synced::WasTrusted);
                    }
                    Err(_) => {
                        warn!("revocation view: Redis PING deadline missed");
                        return Ok(Synced::WasTrusted);
                    }
                }
            }
        }
    }
}

/// Load every revocation key; entries that vanished from Redis are pruned afterwards rather
/// than clearing first, so a concurrent check never sees a half-empty view.
async fn full_load(
    s: &RedisStore,
    conn: &mut MultiplexedConnection,
) -> Result<usize, SessionError> {
    let mut keys = Vec::new();
    {
        let opts = ScanOptions::default()
            .with_pattern(format!("{}*", s.prefix))
            .with_count(SCAN_BATCH);
        let mut it = conn.scan_options::<String>(opts).await?;
        while let Some(k) = it.next_item().await {
            keys.push(k?);
        }
    }
    for chunk in keys.chunks(SCAN_BATCH) {
        refresh(s, conn, chunk).await?;
    }
    let present: std::collections::HashSet<&str> = keys.iter().map(String::as_str).collect();
    let jti_prefix = format!("{}jti:", s.prefix);
    let sub_prefix = format!("{}sub:", s.prefix);
    s.view
        .jtis
        .retain(|id, _| present.contains(format!("{jti_prefix}{id}").as_str()));
    s.view
        .subs
        .retain(|id, _| present.contains(format!("{sub_prefix}{id}").as_str()));
    Ok(keys.len())
}

/// Re-read the named keys (GET + PTTL in one pipeline) and apply them to the view.
async fn refresh(
    s: &RedisStore,
    conn: &mut MultiplexedConnection,
    keys: &[String],
) -> Result<(), SessionError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut p = redis::pipe();
    for k in keys {
        p.get(k).pttl(k);
    }
    let values: Vec<(Option<String>, i64)> = p.query_async(conn).await?;
    for (k, (v, pttl)) in keys.iter().zip(values) {
        s.apply(k, v.as_deref(), pttl);
    }
    Ok(())
}

//! The tracking session that keeps the Redis store's revocation view coherent.
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
//! 5. With Sentinel, each session starts by asking the sentinels for the master, and checks
//!    `ROLE` instead of PING: a master demoted to replica (a failover it did not see coming)
//!    ends the session like a lost connection, as does a READONLY answer to any command.
//!    The next session resolves the new master and reloads the view from it.

use std::sync::Weak;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Client, PushInfo, PushKind, ScanOptions, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tracing::{info, warn};

use super::conn::Conn;
use super::target::address;
use super::{CONNECT_TIMEOUT, RedisStore, read_value};

/// How often the tracking connection proves it is alive, and how long a PING may take.
pub(super) const PING_EVERY: Duration = Duration::from_millis(100);
pub(super) const PING_DEADLINE: Duration = Duration::from_millis(250);
pub(super) const SCAN_BATCH: usize = 1000;

/// Run sessions until the store is dropped, marking the view untrusted between them.
pub(super) async fn sync_forever(store: Weak<RedisStore>) {
    let mut backoff = Duration::from_millis(50);
    let mut reported = false;
    // With Sentinel a failed session is most often "the replica is not promoted yet", over
    // within seconds: retry often (each try costs the sentinels one lookup and the node one
    // ROLE). One node that is down stays down longer: back off further.
    let max_backoff = match store.upgrade() {
        Some(s) if s.target.is_sentinel() => Duration::from_millis(500),
        Some(_) => Duration::from_secs(2),
        None => return,
    };
    loop {
        let started = Instant::now();
        let result = session(&store).await;
        let Some(s) = store.upgrade() else { return };
        match &result {
            Ok(Synced::Ended(why)) => s.set_untrusted(*why),
            Err(e) => s.set_untrusted(format!("no session: {e}")),
            Ok(Synced::Gone) => {}
        }
        s.set_connected(false);
        *s.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(s);
        match result {
            Ok(Synced::Gone) => return,
            Ok(Synced::Ended(_)) => {
                // A session that stayed in sync a while was healthy: retry quickly. One that
                // keeps dropping (a Redis too slow for the PING deadline) backs off instead
                // of rescanning every few hundred milliseconds.
                if started.elapsed() > Duration::from_secs(5) {
                    backoff = Duration::from_millis(50);
                }
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
        backoff = (backoff * 2).min(max_backoff);
    }
}

pub(super) type SessionError = Box<dyn std::error::Error + Send + Sync>;

/// How a session that did not fail outright ended.
enum Synced {
    /// The store was dropped: stop.
    Gone,
    /// It was connected, then lost the connection or its node (why, for the status page).
    Ended(&'static str),
}

/// A RESP3 connection whose push messages (invalidations, a disconnection) arrive on the
/// returned channel.
pub(super) async fn connect(
    client: &Client,
) -> Result<(MultiplexedConnection, UnboundedReceiver<PushInfo>), SessionError> {
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
    let (client, suspect, sentinel) = {
        let Some(s) = store.upgrade() else {
            return Ok(Synced::Gone);
        };
        // Resolved afresh for every session: after a failover this names the new master.
        let client = s.target.resolve().await?;
        if s.resolved(address(&client)) {
            // The fallback connection may still point at the old master.
            s.fallback.lock().await.take();
        }
        (client, s.suspect.clone(), s.target.is_sentinel())
    };
    let (mut conn, mut pushes) = connect(&client).await?;
    {
        let Some(s) = store.upgrade() else {
            return Ok(Synced::Gone);
        };
        s.set_connected(true);
        // Tracking first, then the scan: nothing written in between can be missed.
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&s.prefix)
            .exec_async(&mut conn)
            .await?;
        *s.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(Conn::Node(conn.clone()));
        let loaded = full_load(&s, &mut conn).await?;
        // Writes that landed during the scan are queued as invalidations: apply them before
        // the view is trusted.
        match drain(&mut pushes) {
            Pending::Lost => return Ok(Synced::Ended("connection lost while loading")),
            Pending::Flush => {
                full_load(&s, &mut conn).await?;
            }
            Pending::Keys(keys) => refresh(&s, &Conn::Node(conn.clone()), &keys).await?,
        }
        s.set_trusted();
        info!(keys = loaded, node = %address(&client), "revocation view in sync with Redis");
    }

    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            msg = pushes.recv() => {
                let Some(s) = store.upgrade() else { return Ok(Synced::Gone) };
                // Take everything queued, not one message per round trip.
                let mut batch = classify(msg);
                if !matches!(batch, Pending::Lost) {
                    batch = batch.merge(drain(&mut pushes));
                }
                match batch {
                    Pending::Lost => {
                        warn!("revocation view: Redis connection lost");
                        return Ok(Synced::Ended("connection lost"));
                    }
                    Pending::Flush => {
                        full_load(&s, &mut conn).await?;
                    }
                    Pending::Keys(keys) => refresh(&s, &Conn::Node(conn.clone()), &keys).await?,
                }
            }
            _ = suspect.notified() => {
                warn!("revocation view: a command met READONLY; resolving the master again");
                return Ok(Synced::Ended("a command met READONLY: the node is no longer the master"));
            }
            _ = ping.tick() => {
                if store.strong_count() == 0 {
                    return Ok(Synced::Gone);
                }
                // A stopped server answers nothing and reports nothing: silence is failure.
                match tokio::time::timeout(PING_DEADLINE, still_master(&mut conn, sentinel)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        warn!("revocation view: the Redis node is no longer the master");
                        return Ok(Synced::Ended("the node is no longer the master (ROLE)"));
                    }
                    // The connection's own response timeout is the same deadline.
                    Ok(Err(e)) if e.is_timeout() => {
                        warn!("revocation view: Redis PING deadline missed");
                        return Ok(Synced::Ended("PING deadline missed"));
                    }
                    Ok(Err(e)) => {
                        warn!(error = %e, "revocation view: Redis PING failed");
                        return Ok(Synced::Ended("PING failed"));
                    }
                    Err(_) => {
                        warn!("revocation view: Redis PING deadline missed");
                        return Ok(Synced::Ended("PING deadline missed"));
                    }
                }
            }
        }
    }
}

/// The liveness check: PING for one node; with Sentinel, ROLE, which also tells whether
/// the node is still the master (a demoted one keeps answering, as a replica).
async fn still_master(
    conn: &mut MultiplexedConnection,
    sentinel: bool,
) -> Result<bool, redis::RedisError> {
    if sentinel {
        let role: redis::Role = redis::cmd("ROLE").query_async(conn).await?;
        Ok(matches!(role, redis::Role::Primary { .. }))
    } else {
        redis::cmd("PING").exec_async(conn).await.map(|()| true)
    }
}

/// What a batch of push messages asks for.
pub(super) enum Pending {
    /// Re-read these keys.
    Keys(Vec<String>),
    /// Everything may have changed (FLUSHALL / FLUSHDB): reload.
    Flush,
    /// The connection is gone.
    Lost,
}

impl Pending {
    pub(super) fn merge(self, other: Pending) -> Pending {
        match (self, other) {
            (Pending::Lost, _) | (_, Pending::Lost) => Pending::Lost,
            (Pending::Flush, _) | (_, Pending::Flush) => Pending::Flush,
            (Pending::Keys(mut a), Pending::Keys(b)) => {
                a.extend(b);
                Pending::Keys(a)
            }
        }
    }
}

pub(super) fn classify(msg: Option<PushInfo>) -> Pending {
    match msg {
        None
        | Some(PushInfo {
            kind: PushKind::Disconnection,
            ..
        }) => Pending::Lost,
        Some(PushInfo {
            kind: PushKind::Invalidate,
            data,
        }) => match data.into_iter().next() {
            Some(Value::Array(keys)) => Pending::Keys(
                keys.into_iter()
                    .filter_map(|k| redis::from_redis_value(k).ok())
                    .collect(),
            ),
            _ => Pending::Flush,
        },
        Some(_) => Pending::Keys(Vec::new()),
    }
}

/// Everything already queued on the push channel, without waiting.
pub(super) fn drain(pushes: &mut UnboundedReceiver<PushInfo>) -> Pending {
    let mut out = Pending::Keys(Vec::new());
    loop {
        match pushes.try_recv() {
            Ok(msg) => out = out.merge(classify(Some(msg))),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return out,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Pending::Lost,
        }
    }
}

/// Every key under `prefix` on the node `conn` talks to (on a cluster node, its own keys).
pub(super) async fn scan_keys(
    conn: &mut MultiplexedConnection,
    prefix: &str,
) -> Result<Vec<String>, SessionError> {
    let mut keys = Vec::new();
    let opts = ScanOptions::default()
        .with_pattern(format!("{prefix}*"))
        .with_count(SCAN_BATCH);
    let mut it = conn.scan_options::<Vec<u8>>(opts).await?;
    while let Some(k) = it.next_item().await {
        // A key name that is not UTF-8 can never equal a JSON jti or sub: skip it.
        if let Ok(k) = String::from_utf8(k?) {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// Load every revocation key; entries that vanished from Redis are pruned afterwards rather
/// than clearing first, so a concurrent check never sees a half-empty view.
async fn full_load(
    s: &RedisStore,
    conn: &mut MultiplexedConnection,
) -> Result<usize, SessionError> {
    let keys = scan_keys(conn, &s.prefix).await?;
    let reader = Conn::Node(conn.clone());
    for chunk in keys.chunks(SCAN_BATCH) {
        refresh(s, &reader, chunk).await?;
    }
    // Prune what vanished, comparing bare ids (no formatting under the maps' shard locks).
    let ids = |kind: &str| -> std::collections::HashSet<&str> {
        keys.iter()
            .filter_map(|k| k.strip_prefix(s.prefix.as_str())?.strip_prefix(kind))
            .collect()
    };
    let (jtis, subs) = (ids("jti:"), ids("sub:"));
    s.view.jtis.retain(|id, _| jtis.contains(id.as_str()));
    s.view.subs.retain(|id, _| subs.contains(id.as_str()));
    Ok(keys.len())
}

/// Re-read the named keys (GET + PTTL) and apply them to the view. A key that is not a
/// string (WRONGTYPE) does not fail the batch: it counts as present.
pub(super) async fn refresh(
    s: &RedisStore,
    conn: &Conn,
    keys: &[String],
) -> Result<(), SessionError> {
    if keys.is_empty() {
        return Ok(());
    }
    let states = conn.read_keys(keys).await?;
    for (k, state) in keys.iter().zip(states) {
        s.apply(k, read_value(state.value), state.pttl);
    }
    Ok(())
}

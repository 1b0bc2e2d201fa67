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

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, PushInfo, PushKind, ScanOptions, Value};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tracing::{info, warn};

use super::{CONNECT_TIMEOUT, RedisStore, read_value};

/// How often the tracking connection proves it is alive, and how long a PING may take.
const PING_EVERY: Duration = Duration::from_millis(100);
const PING_DEADLINE: Duration = Duration::from_millis(250);
const SCAN_BATCH: usize = 1000;

/// Run sessions until the store is dropped, marking the view untrusted between them.
pub(super) async fn sync_forever(store: Weak<RedisStore>) {
    let mut backoff = Duration::from_millis(50);
    let mut reported = false;
    loop {
        let started = Instant::now();
        let result = session(&store).await;
        let Some(s) = store.upgrade() else { return };
        s.view.trusted.store(false, Ordering::Release);
        *s.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(s);
        match result {
            Ok(Synced::Gone) => return,
            Ok(Synced::WasTrusted) => {
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
        // Writes that landed during the scan are queued as invalidations: apply them before
        // the view is trusted.
        match drain(&mut pushes) {
            Pending::Lost => return Ok(Synced::WasTrusted),
            Pending::Flush => {
                full_load(&s, &mut conn).await?;
            }
            Pending::Keys(keys) => refresh(&s, &mut conn, &keys).await?,
        }
        s.view.trusted.store(true, Ordering::Release);
        s.resyncs.inc();
        info!(keys = loaded, "revocation view in sync with Redis");
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
                        return Ok(Synced::WasTrusted);
                    }
                    Pending::Flush => {
                        full_load(&s, &mut conn).await?;
                    }
                    Pending::Keys(keys) => refresh(&s, &mut conn, &keys).await?,
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

/// What a batch of push messages asks for.
enum Pending {
    /// Re-read these keys.
    Keys(Vec<String>),
    /// Everything may have changed (FLUSHALL / FLUSHDB): reload.
    Flush,
    /// The connection is gone.
    Lost,
}

impl Pending {
    fn merge(self, other: Pending) -> Pending {
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

fn classify(msg: Option<PushInfo>) -> Pending {
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
fn drain(pushes: &mut UnboundedReceiver<PushInfo>) -> Pending {
    let mut out = Pending::Keys(Vec::new());
    loop {
        match pushes.try_recv() {
            Ok(msg) => out = out.merge(classify(Some(msg))),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return out,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Pending::Lost,
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
        let mut it = conn.scan_options::<Vec<u8>>(opts).await?;
        while let Some(k) = it.next_item().await {
            // A key name that is not UTF-8 can never equal a JSON jti or sub: skip it.
            if let Ok(k) = String::from_utf8(k?) {
                keys.push(k);
            }
        }
    }
    for chunk in keys.chunks(SCAN_BATCH) {
        refresh(s, conn, chunk).await?;
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

/// Re-read the named keys (GET + PTTL in one pipeline) and apply them to the view. An error
/// on a single key (WRONGTYPE) does not fail the batch: such a key counts as present.
pub(super) async fn refresh(
    s: &RedisStore,
    conn: &mut MultiplexedConnection,
    keys: &[String],
) -> Result<(), SessionError> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut p = redis::pipe();
    p.ignore_errors();
    for k in keys {
        p.get(k).pttl(k);
    }
    let values: Vec<Value> = p.query_async(conn).await?;
    let mut values = values.into_iter();
    for k in keys {
        let value = read_value(values.next().unwrap_or(Value::Nil));
        let pttl = match values.next() {
            Some(Value::Int(ms)) => ms,
            _ => -1,
        };
        s.apply(k, value, pttl);
    }
    Ok(())
}

//! The revocation view on a Redis Cluster: one tracking connection per master, driven by the
//! topology.
//!
//! redis-rs' cluster connection routes commands but does not keep `CLIENT TRACKING` across
//! its reconnects and failovers, so doorman opens its own RESP3 connection to every master
//! and runs there what `sync` runs on a single node: `CLIENT TRACKING ON BCAST PREFIX`,
//! then `SCAN` of that master's keys. Re-reads (after a scan, after an invalidation) go
//! through the cluster connection, which follows MOVED/ASK, so a key caught mid-migration is
//! read where it lives now.
//!
//! One *generation* covers one topology (`CLUSTER SHARDS`: the masters and their slots):
//! 1. read the topology, open a session on every master;
//! 2. once every session has loaded, read the topology again: unchanged, the view is
//!    trusted; entries no session touched in this generation are stale and pruned;
//! 3. the topology is polled every second through the masters' own connections; any change
//!    of a master or of a slot range (a failover, a resharding, a master added), any session
//!    lost (a disconnect, a missed PING deadline, a FLUSHALL) or a poll no master answers
//!    ends the generation: the view is untrusted at once, checks go to Redis through the
//!    cluster connection under `timeout`, and the next generation reloads everything.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::RedisStore;
use super::conn::Conn;
use super::sync::{
    PING_DEADLINE, PING_EVERY, Pending, SCAN_BATCH, SessionError, classify, connect, drain,
    refresh, scan_keys,
};

/// Redis Cluster's hash slots: 0 to 16383.
const SLOTS: u16 = 16384;

/// How often the topology is read while the view is trusted.
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// How long one `CLUSTER SHARDS` may take on one node.
const TOPOLOGY_DEADLINE: Duration = Duration::from_millis(500);

/// One master and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Master {
    /// `host:port`, as the topology names it.
    pub addr: String,
    pub host: String,
    pub port: u16,
    /// Inclusive slot ranges, sorted.
    pub slots: Vec<(u16, u16)>,
}

/// What `CLUSTER SHARDS` says: the masters (sorted by address), which decide whether the
/// view can be trusted, and the replicas, shown on the status page only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Topology {
    pub masters: Vec<Master>,
    pub replicas: Vec<String>,
}

/// How one generation ended.
enum Outcome {
    /// The store was dropped: stop.
    Gone,
    /// Why the view is no longer trusted (for the status page and the log).
    Ended(String),
}

/// What a master's session tells the generation.
enum Event {
    /// Tracking is on and this master's keys are loaded; `conn` can read the topology.
    Synced { conn: MultiplexedConnection },
    /// The session is over.
    Ended { addr: String, why: String },
}

/// Run generations until the store is dropped, the view untrusted between them.
pub(super) async fn sync_forever(store: Weak<RedisStore>) {
    let mut backoff = Duration::from_millis(50);
    let mut reported = false;
    loop {
        let result = generation(&store).await;
        let Some(s) = store.upgrade() else { return };
        s.cluster_sessions_down();
        match result {
            Ok(Outcome::Gone) => return,
            Ok(Outcome::Ended(why)) => {
                warn!(reason = %why, "revocation view untrusted: resyncing with the cluster");
                s.set_untrusted(why);
                backoff = Duration::from_millis(50);
                reported = false;
            }
            Err(e) => {
                s.set_untrusted(format!("no session: {e}"));
                if !reported {
                    warn!(error = %e, "revocation view has no cluster session; checks go to Redis until it resyncs");
                    reported = true;
                }
            }
        }
        drop(s);
        tokio::time::sleep(backoff).await;
        // A master that is down stays down until its replica is promoted (about the
        // cluster's node timeout): retry often.
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn generation(store: &Weak<RedisStore>) -> Result<Outcome, SessionError> {
    let (topology, epoch) = {
        let Some(s) = store.upgrade() else {
            return Ok(Outcome::Gone);
        };
        let cluster = s.command_conn().await?;
        let Conn::Cluster(mut cluster) = cluster else {
            return Err("the cluster session needs a cluster connection".into());
        };
        let random = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
        let shards = tokio::time::timeout(
            TOPOLOGY_DEADLINE,
            cluster.route_command(redis::cmd("CLUSTER").arg("SHARDS").clone(), random),
        )
        .await
        .map_err(|_| "CLUSTER SHARDS timed out")??;
        let topology = parse_shards(shards, s.target.tls())?;
        s.topology_seen(&topology);
        // Every entry applied from here on carries this epoch; what is older when all the
        // sessions have loaded was found by no scan and no invalidation: it is gone.
        let epoch = s.view.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        (topology, epoch)
    };

    let (tx, mut events) = unbounded_channel();
    let mut sessions = JoinSet::new();
    for m in &topology.masters {
        sessions.spawn(master_session(store.clone(), m.clone(), tx.clone()));
    }
    drop(tx);

    let mut synced: Vec<MultiplexedConnection> = Vec::new();
    while synced.len() < topology.masters.len() {
        match events.recv().await {
            Some(Event::Synced { conn, .. }) => synced.push(conn),
            Some(Event::Ended { addr, why }) => {
                return Ok(Outcome::Ended(format!("{addr}: {why}")));
            }
            None => return Ok(Outcome::Ended("every session ended".into())),
        }
    }
    // The slot map must be the one the sessions loaded under.
    match read_topology(&mut synced, store).await {
        Ok(now) if now.masters == topology.masters => {}
        Ok(now) => {
            if let Some(s) = store.upgrade() {
                s.topology_seen(&now);
            }
            return Ok(Outcome::Ended("the topology changed while loading".into()));
        }
        Err(e) => return Ok(Outcome::Ended(format!("topology unreadable: {e}"))),
    }
    {
        let Some(s) = store.upgrade() else {
            return Ok(Outcome::Gone);
        };
        s.view.jtis.retain(|_, e| e.epoch >= epoch);
        s.view.subs.retain(|_, e| e.epoch >= epoch);
        s.set_trusted();
        let (jtis, subs) = s.view_size();
        info!(
            masters = topology.masters.len(),
            keys = jtis + subs,
            "revocation view in sync with the cluster"
        );
    }

    let mut tick = tokio::time::interval(TOPOLOGY_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Ended { addr, why }) => {
                    return Ok(Outcome::Ended(format!("{addr}: {why}")));
                }
                Some(Event::Synced { .. }) => {}
                None => return Ok(Outcome::Ended("every session ended".into())),
            },
            _ = tick.tick() => {
                if store.strong_count() == 0 {
                    return Ok(Outcome::Gone);
                }
                match read_topology(&mut synced, store).await {
                    Ok(now) if now.masters == topology.masters => {
                        if let Some(s) = store.upgrade() {
                            s.topology_seen(&now);
                        }
                    }
                    Ok(now) => {
                        if let Some(s) = store.upgrade() {
                            s.topology_seen(&now);
                        }
                        return Ok(Outcome::Ended("the topology changed".into()));
                    }
                    Err(e) => return Ok(Outcome::Ended(format!("topology unreadable: {e}"))),
                }
            }
        }
    }
}

/// `CLUSTER SHARDS` from the first master that answers in time (they are the nodes the
/// sessions are proving alive every 100 ms).
async fn read_topology(
    masters: &mut [MultiplexedConnection],
    store: &Weak<RedisStore>,
) -> Result<Topology, SessionError> {
    let tls = store.upgrade().ok_or("store dropped")?.target.tls();
    let mut last: SessionError = "no master to ask".into();
    for conn in masters.iter_mut() {
        let cmd = redis::cmd("CLUSTER").arg("SHARDS").clone();
        let ask = cmd.query_async::<Value>(conn);
        match tokio::time::timeout(TOPOLOGY_DEADLINE, ask).await {
            Ok(Ok(v)) => return parse_shards(v, tls).map_err(Into::into),
            Ok(Err(e)) => last = e.into(),
            Err(_) => last = "CLUSTER SHARDS timed out".into(),
        }
    }
    Err(last)
}

/// One master's session; whatever ends it is reported as `Event::Ended`.
async fn master_session(store: Weak<RedisStore>, master: Master, events: UnboundedSender<Event>) {
    let why = match run_master(&store, &master, &events).await {
        Ok(why) => why,
        Err(e) => e.to_string(),
    };
    let _ = events.send(Event::Ended {
        addr: master.addr,
        why,
    });
}

async fn run_master(
    store: &Weak<RedisStore>,
    master: &Master,
    events: &UnboundedSender<Event>,
) -> Result<String, SessionError> {
    let (mut conn, mut pushes, reader) = {
        let s = store.upgrade().ok_or("store dropped")?;
        let client = s
            .target
            .cluster_node(&master.host, master.port)
            .ok_or("not a cluster")??;
        let (mut conn, pushes) = connect(&client).await?;
        s.node_state(&master.addr, true, false);
        // Tracking first, then the scan: nothing written in between can be missed.
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&s.prefix)
            .exec_async(&mut conn)
            .await?;
        let reader = s.command_conn().await?;
        let keys = scan_keys(&mut conn, &s.prefix).await?;
        for chunk in keys.chunks(SCAN_BATCH) {
            refresh(&s, &reader, chunk).await?;
        }
        (conn, pushes, reader)
    };
    // Writes that landed during the scan are queued as invalidations.
    match drain(&mut pushes) {
        Pending::Lost => return Ok("connection lost while loading".into()),
        Pending::Flush => return Ok("the node was flushed while loading".into()),
        Pending::Keys(keys) => {
            let s = store.upgrade().ok_or("store dropped")?;
            refresh(&s, &reader, &keys).await?;
            s.node_state(&master.addr, true, true);
        }
    }
    events.send(Event::Synced { conn: conn.clone() })?;

    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            msg = pushes.recv() => {
                let mut batch = classify(msg);
                if !matches!(batch, Pending::Lost) {
                    batch = batch.merge(drain(&mut pushes));
                }
                match batch {
                    Pending::Lost => return Ok("connection lost".into()),
                    // Which entries lived on this master is not recorded: reload everything.
                    Pending::Flush => return Ok("the node was flushed".into()),
                    Pending::Keys(keys) => {
                        let s = store.upgrade().ok_or("store dropped")?;
                        refresh(&s, &reader, &keys).await?;
                    }
                }
            }
            _ = ping.tick() => {
                // A stopped server answers nothing and reports nothing: silence is failure.
                let ping_cmd = redis::cmd("PING");
                let alive = ping_cmd.exec_async(&mut conn);
                match tokio::time::timeout(PING_DEADLINE, alive).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if !e.is_timeout() => return Ok(format!("PING failed: {e}")),
                    _ => return Ok("PING deadline missed".into()),
                }
            }
        }
    }
}

/// The named member of a RESP3 map (or a RESP2 flat key/value array).
fn member<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let is = |k: &Value| match k {
        Value::BulkString(b) => b == name.as_bytes(),
        Value::SimpleString(s) => s == name,
        _ => false,
    };
    match v {
        Value::Map(pairs) => pairs.iter().find(|(k, _)| is(k)).map(|(_, v)| v),
        Value::Array(flat) => flat
            .chunks(2)
            .find(|kv| kv.len() == 2 && is(&kv[0]))
            .map(|kv| &kv[1]),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => Some(s.clone()),
        _ => None,
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Int(i) => Some(*i),
        other => text(Some(other))?.parse().ok(),
    }
}

/// Read `CLUSTER SHARDS`: each shard's slot ranges and its master. A node is reached at its
/// `endpoint` (else its `ip`) on its `port`, or `tls-port` when the cluster speaks TLS.
pub(super) fn parse_shards(v: Value, tls: bool) -> Result<Topology, String> {
    let Value::Array(shards) = v else {
        return Err(format!("CLUSTER SHARDS: not a list: {v:?}"));
    };
    let mut masters = BTreeMap::new();
    let mut replicas = Vec::new();
    for shard in &shards {
        let Some(Value::Array(flat)) = member(shard, "slots") else {
            return Err("CLUSTER SHARDS: a shard without slots".into());
        };
        let mut slots = Vec::new();
        for pair in flat.chunks(2) {
            let (Some(lo), Some(hi)) = (int(pair.first()), int(pair.get(1))) else {
                return Err("CLUSTER SHARDS: a slot range that is not two numbers".into());
            };
            let (Ok(lo), Ok(hi)) = (u16::try_from(lo), u16::try_from(hi)) else {
                return Err("CLUSTER SHARDS: a slot out of range".into());
            };
            if lo > hi || hi >= SLOTS {
                return Err("CLUSTER SHARDS: a slot out of range".into());
            }
            slots.push((lo, hi));
        }
        slots.sort_unstable();
        let Some(Value::Array(nodes)) = member(shard, "nodes") else {
            return Err("CLUSTER SHARDS: a shard without nodes".into());
        };
        let mut master = None;
        for node in nodes {
            let host = text(member(node, "endpoint"))
                .filter(|h| !h.is_empty() && h != "?")
                .or_else(|| text(member(node, "ip")))
                .ok_or("CLUSTER SHARDS: a node without an address")?;
            let port = int(member(node, if tls { "tls-port" } else { "port" }))
                .and_then(|p| u16::try_from(p).ok());
            let addr = |port: u16| {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            };
            match text(member(node, "role")).as_deref() {
                Some("master") if master.is_some() => {
                    return Err("CLUSTER SHARDS: a shard with two masters".into());
                }
                Some("master") => {
                    let port = port.ok_or("CLUSTER SHARDS: a node without a port")?;
                    master = Some(Master {
                        addr: addr(port),
                        host: host.clone(),
                        port,
                        slots: slots.clone(),
                    })
                }
                // Replicas are only shown: one without a usable port is left out.
                _ => replicas.extend(port.map(addr)),
            }
        }
        // A shard without slots holds no key a client can reach: an empty master just
        // added, or a failed master whose slots its replica took over. It is not tracked.
        if slots.is_empty() {
            continue;
        }
        match master {
            Some(m) => {
                masters.insert(m.addr.clone(), m);
            }
            None => return Err("CLUSTER SHARDS: a shard serves slots without a master".into()),
        }
    }
    replicas.sort();
    Ok(Topology {
        masters: masters.into_values().collect(),
        replicas,
    })
}

#[cfg(test)]
#[path = "cluster/tests.rs"]
mod tests;

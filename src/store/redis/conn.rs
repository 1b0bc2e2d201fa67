//! One handle for commands however Redis is deployed: a multiplexed connection to one node
//! (a single node, or the master the sentinels name) or redis-rs' cluster connection, which
//! routes each command by its key's slot and follows MOVED/ASK itself.
//!
//! A pipeline cannot cross slots on a cluster, so reads of many keys go through `read_keys`:
//! one pipeline on a node, one small pipeline per key on a cluster.

use futures_util::future::join_all;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

#[derive(Clone)]
pub(in crate::store) enum Conn {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Node(_) => "Conn::Node",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// What `read_keys` learns of one key: its value (Nil when absent) and its PTTL in ms
/// (-1: no TTL, -2: absent).
pub(in crate::store) struct KeyState {
    pub value: Value,
    pub pttl: i64,
}

impl Conn {
    /// GET and PTTL of every key, in key order. A key that is not a string (WRONGTYPE)
    /// reads as a value that is not a number, which counts as present: failing closed.
    pub(in crate::store) async fn read_keys(&self, keys: &[String]) -> RedisResult<Vec<KeyState>> {
        match self {
            Conn::Node(c) => {
                let mut p = redis::pipe();
                p.ignore_errors();
                for k in keys {
                    p.get(k).pttl(k);
                }
                let values: Vec<Value> = p.query_async(&mut c.clone()).await?;
                let mut values = values.into_iter();
                Ok(keys
                    .iter()
                    .map(|_| {
                        let value = values.next().unwrap_or(Value::Nil);
                        let pttl = pttl_of(values.next());
                        KeyState { value, pttl }
                    })
                    .collect())
            }
            // Errors are not ignored here: the cluster connection only follows a MOVED or
            // ASK redirection that fails the pipeline; one ignored would read as "present".
            Conn::Cluster(c) => {
                let reads = keys.iter().map(|k| {
                    let mut c = c.clone();
                    async move {
                        let mut p = redis::pipe();
                        p.get(k).pttl(k);
                        match p.query_async::<(Value, Value)>(&mut c).await {
                            Ok((value, pttl)) => Ok(KeyState {
                                value,
                                pttl: pttl_of(Some(pttl)),
                            }),
                            Err(e) if e.code() == Some("WRONGTYPE") => Ok(KeyState {
                                value: Value::Okay,
                                pttl: -1,
                            }),
                            Err(e) => Err(e),
                        }
                    }
                });
                join_all(reads).await.into_iter().collect()
            }
        }
    }

    /// `WAIT 1 {ms}` where `key` was just written through this handle: on a cluster, on the
    /// master of the key's slot (the connection that wrote, since WAIT counts that client's
    /// writes). The number of replicas that acknowledged.
    pub(in crate::store) async fn wait_replica(&mut self, key: &str, ms: u64) -> RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(1).arg(ms);
        match self {
            Conn::Node(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(v).map_err(Into::into)
            }
        }
    }
}

fn pttl_of(v: Option<Value>) -> i64 {
    match v {
        Some(Value::Int(ms)) => ms,
        _ => -1,
    }
}

//! Where the Redis store connects: one configured node, or the master that the sentinels
//! name, resolved again whenever the session starts over (a failover, a READONLY answer, a
//! lost connection).
//!
//! Resolution is redis-rs' own (`sentinel` feature): the sentinels are asked in turn for the
//! master's address, and a node is only accepted after `ROLE` on it says it is a master.

use std::sync::Mutex;
use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError};

use crate::config::{RedisSpec, Secret};

/// The longest one resolution through the sentinels may take (each sentinel, then `ROLE` on
/// the master it names). Off the request path: the session task and a fallback connection
/// opened while no session is up (that one is also bound by the caller's `timeout`).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

pub(in crate::store) enum Target {
    /// One node: the configured URL, with RESP3 and the password applied.
    Node(Client),
    /// Boxed: the sentinel client (a connection slot per sentinel) is far larger.
    Sentinel(Box<Sentinel>),
}

pub(in crate::store) struct Sentinel {
    /// The master's name, as the sentinels know it.
    name: String,
    /// A tokio mutex: a lookup awaits the sentinels, and redis-rs needs `&mut` for it (it
    /// caches one connection per sentinel).
    client: tokio::sync::Mutex<SentinelClient>,
    /// The master the last resolution named: where a fallback connection goes while no
    /// session is up. Cleared when that node fails or answers READONLY, so the next
    /// connection asks the sentinels again.
    master: Mutex<Option<Client>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Node(c) => write!(f, "Node({})", c.get_connection_info().addr()),
            Target::Sentinel(s) => write!(f, "Sentinel({})", s.name),
        }
    }
}

impl Target {
    /// Check the URLs and build the target (no connection yet).
    pub(in crate::store) fn new(
        spec: &RedisSpec,
        password: Option<&Secret>,
    ) -> Result<Target, String> {
        match spec {
            RedisSpec::Url(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| format!("store.redis_url: {e}"))?;
                let info = node_info(info, password);
                Ok(Target::Node(
                    Client::open(info).map_err(|e| format!("store.redis_url: {e}"))?,
                ))
            }
            RedisSpec::Sentinel { master, sentinels } => {
                let mut redis =
                    redis::RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3);
                if let Some(p) = password {
                    redis = redis.set_password(&*p.0);
                }
                let nodes = SentinelNodeConnectionInfo::default().set_redis_connection_info(redis);
                let client = SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master.clone(),
                    Some(nodes),
                    SentinelServerType::Master,
                )
                .map_err(|e| format!("store.redis_sentinel: {e}"))?;
                Ok(Target::Sentinel(Box::new(Sentinel {
                    name: master.clone(),
                    client: tokio::sync::Mutex::new(client),
                    master: Mutex::new(None),
                })))
            }
        }
    }

    /// The node to talk to now. For Sentinel, asks the sentinels (and `ROLE` on the node)
    /// afresh: the session calls this each time it starts over, so a failover is followed.
    pub(in crate::store) async fn resolve(&self) -> Result<Client, RedisError> {
        match self {
            Target::Node(c) => Ok(c.clone()),
            Target::Sentinel(s) => {
                let lookup = async { s.client.lock().await.async_get_client().await };
                let client = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                    .await
                    .map_err(|_| {
                        RedisError::from((
                            redis::ErrorKind::Io,
                            "the sentinels did not name a master in time",
                        ))
                    })??;
                *s.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
                Ok(client)
            }
        }
    }

    /// The node for a fallback connection: the last one resolved, else a fresh resolution.
    pub(in crate::store) async fn current(&self) -> Result<Client, RedisError> {
        if let Target::Sentinel(s) = self
            && let Some(c) = s.master.lock().unwrap_or_else(|p| p.into_inner()).clone()
        {
            return Ok(c);
        }
        self.resolve().await
    }

    /// Forget the resolved master (it failed, or answered READONLY): the next connection
    /// asks the sentinels again.
    pub(in crate::store) fn forget_master(&self) {
        if let Target::Sentinel(s) = self {
            s.master.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    pub(in crate::store) fn is_sentinel(&self) -> bool {
        matches!(self, Target::Sentinel(_))
    }

    /// "single" or "sentinel", for the status page.
    pub(in crate::store) fn mode(&self) -> &'static str {
        match self {
            Target::Node(_) => "single",
            Target::Sentinel(_) => "sentinel",
        }
    }
}

/// `host:port` of a client's node (no credentials), for logs and the status page.
pub(in crate::store) fn address(c: &Client) -> String {
    c.get_connection_info().addr().to_string()
}

/// A node's connection info with RESP3 (client-side caching pushes need it) and the
/// configured password, unless the URL carries its own (config validation refuses both).
fn node_info(info: ConnectionInfo, password: Option<&Secret>) -> ConnectionInfo {
    let mut redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    if let Some(p) = password
        && redis.password().is_none()
    {
        redis = redis.set_password(&*p.0);
    }
    info.set_redis_settings(redis)
}

//! Where the Redis store connects: one configured node; the master that the sentinels name,
//! resolved again whenever the session starts over (a failover, a READONLY answer, a lost
//! connection); or a Redis Cluster, whose topology the cluster session follows.
//!
//! Resolution is redis-rs' own (`sentinel` feature): the sentinels are asked in turn for the
//! master's address, and a node is only accepted after `ROLE` on it says it is a master.
//! Cluster routing is redis-rs' too (`cluster-async`); doorman only opens its own tracking
//! connection to each master (`cluster.rs`), with the same credentials and TLS settings.

use std::sync::Mutex;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisError,
    TlsCertificates,
};

use super::conn::Conn;
use super::write::write_connection;
use super::{CONNECT_TIMEOUT, WRITE_TIMEOUT};
use crate::config::{RedisSpec, Secret, StoreSettings};

/// The longest one resolution through the sentinels may take (each sentinel, then `ROLE` on
/// the master it names). Off the request path: the session task and a fallback connection
/// opened while no session is up (that one is also bound by the caller's `timeout`).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

pub(in crate::store) enum Target {
    /// One node: the configured URL, with RESP3 and the password applied. Boxed like the
    /// others: the variants differ in size by hundreds of bytes.
    Node(Box<Client>),
    Sentinel(Box<Sentinel>),
    Cluster(Box<Cluster>),
}

pub(in crate::store) struct Cluster {
    /// redis-rs' cluster client: slot routing, MOVED/ASK, its own topology refreshes.
    client: ClusterClient,
    /// A seed's connection info (credentials, RESP3, TLS): the template for the tracking
    /// connection to each master, whose address comes from the topology.
    template: ConnectionInfo,
    ca_pem: Option<std::sync::Arc<[u8]>>,
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
            Target::Cluster(c) => write!(f, "Cluster({})", c.template.addr()),
        }
    }
}

impl Target {
    /// Check the URLs and build the target (no connection yet).
    pub(in crate::store) fn new(spec: &RedisSpec, store: &StoreSettings) -> Result<Target, String> {
        let password = store.password.as_ref();
        let ca = store.ca_pem.clone();
        match spec {
            RedisSpec::Url(url) => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| format!("store.redis_url: {e}"))?;
                let info = node_info(info, password);
                Ok(Target::Node(Box::new(
                    node_client(info, ca.as_deref())
                        .map_err(|e| format!("store.redis_url: {e}"))?,
                )))
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
            RedisSpec::Cluster(seeds) => {
                let infos = seeds
                    .iter()
                    .map(|u| {
                        u.as_str()
                            .into_connection_info()
                            .map(|i| node_info(i, password))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("store.redis_cluster: {e}"))?;
                let template = infos
                    .first()
                    .cloned()
                    .ok_or("store.redis_cluster: no seed node")?;
                let mut b = ClusterClientBuilder::new(infos)
                    .use_protocol(ProtocolVersion::RESP3)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(WRITE_TIMEOUT)
                    // Its defaults retry 16 times, waiting up to minutes: doorman's own
                    // `timeout` must be what bounds a request, so retry briefly (a MOVED,
                    // a reconnect) and leave the rest to the caller's deadline.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .retry_wait_formula(10, 2);
                if let Some(pem) = &ca {
                    b = b.certs(TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.to_vec()),
                    });
                }
                let client = b.build().map_err(|e| format!("store.redis_cluster: {e}"))?;
                Ok(Target::Cluster(Box::new(Cluster {
                    client,
                    template,
                    ca_pem: ca,
                })))
            }
        }
    }

    /// A connection for commands (checks while the view is not trusted, writes, scripts),
    /// with the write timeouts: to the node, the master the sentinels name, or the cluster.
    pub(in crate::store) async fn command_connection(&self) -> Result<Conn, RedisError> {
        match self {
            Target::Cluster(c) => {
                let connect = c.client.get_async_connection();
                match tokio::time::timeout(WRITE_TIMEOUT, connect).await {
                    Ok(conn) => conn.map(Conn::Cluster),
                    Err(_) => Err(RedisError::from((
                        redis::ErrorKind::Io,
                        "no seed node of the cluster answered in time",
                    ))),
                }
            }
            _ => {
                let client = self.current().await?;
                match write_connection(&client).await {
                    Ok(c) => Ok(Conn::Node(c)),
                    Err(e) => {
                        // A master that cannot be reached may be gone: ask the sentinels
                        // next time.
                        self.forget_master();
                        Err(e)
                    }
                }
            }
        }
    }

    /// A client for one cluster node named by the topology (`host`, `port`), with the
    /// seeds' credentials and TLS settings. None for a target that is not a cluster.
    pub(in crate::store) fn cluster_node(
        &self,
        host: &str,
        port: u16,
    ) -> Option<RedisResultClient> {
        let Target::Cluster(c) = self else {
            return None;
        };
        let addr = match c.template.addr() {
            ConnectionAddr::TcpTls { .. } => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: false,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_string(), port),
        };
        Some(node_client(
            c.template.clone().set_addr(addr),
            c.ca_pem.as_deref(),
        ))
    }

    /// Whether nodes are reached over TLS (the topology then gives their `tls-port`).
    pub(in crate::store) fn tls(&self) -> bool {
        match self {
            Target::Node(c) => matches!(
                c.get_connection_info().addr(),
                ConnectionAddr::TcpTls { .. }
            ),
            Target::Sentinel(_) => false,
            Target::Cluster(c) => matches!(c.template.addr(), ConnectionAddr::TcpTls { .. }),
        }
    }

    /// The node to talk to now. For Sentinel, asks the sentinels (and `ROLE` on the node)
    /// afresh: the session calls this each time it starts over, so a failover is followed.
    pub(in crate::store) async fn resolve(&self) -> Result<Client, RedisError> {
        match self {
            Target::Node(c) => Ok((**c).clone()),
            Target::Cluster(_) => Err(RedisError::from((
                redis::ErrorKind::Client,
                "a cluster has no single node to resolve",
            ))),
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

    pub(in crate::store) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }

    /// "single", "sentinel" or "cluster", for the status page.
    pub(in crate::store) fn mode(&self) -> &'static str {
        match self {
            Target::Node(_) => "single",
            Target::Sentinel(_) => "sentinel",
            Target::Cluster(_) => "cluster",
        }
    }
}

/// `host:port` of a client's node (no credentials), for logs and the status page.
pub(in crate::store) fn address(c: &Client) -> String {
    c.get_connection_info().addr().to_string()
}

type RedisResultClient = Result<Client, RedisError>;

/// A client for one node; with `ca_pem`, a `rediss://` node is verified against that CA's
/// certificates instead of the system roots.
fn node_client(info: ConnectionInfo, ca_pem: Option<&[u8]>) -> Result<Client, RedisError> {
    match ca_pem {
        Some(pem) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
            Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            )
        }
        _ => Client::open(info),
    }
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

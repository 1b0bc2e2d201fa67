//! Redis Cluster for tests (the groundwork for `[store] redis_cluster`, issue 23): three
//! masters and three replicas, each a real redis-server on a free 127.0.0.1 port (its
//! cluster bus on port + 10000), joined by `redis-cli --cluster create`, killed on drop.
//! Panics (never skips) when redis-server or redis-cli is missing.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::sentinel::{Node, info, query};
use super::within;

pub struct RedisCluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair (port, port + 10000) for a cluster node");
}

impl RedisCluster {
    /// Start six nodes, create the cluster (one replica per master) and wait until every
    /// node reports `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let nodes: Vec<Node> = (0..6)
            .map(|_| {
                Node::spawn_on(cluster_port, |port| {
                    let p = port.to_string();
                    let conf = format!("nodes-{p}.conf");
                    let dir = path.display().to_string();
                    [
                        "--port",
                        p.as_str(),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        conf.as_str(),
                        // Failover within about a second of a master going silent.
                        "--cluster-node-timeout",
                        "500",
                        "--repl-diskless-sync-delay",
                        "0",
                        "--dir",
                        dir.as_str(),
                    ]
                    .map(String::from)
                    .to_vec()
                })
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = tokio::task::block_in_place(|| {
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
        });
        let out = out.unwrap_or_else(|e| {
            panic!(
                "redis-cli is required by this test ({e}); run scripts/test.sh, which installs it"
            )
        });
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        within(
            "every node sees the cluster ok, with its replicas in sync",
            async {
                loop {
                    let mut ready = true;
                    for n in &cluster.nodes {
                        let state: String = query(n.port, &["CLUSTER", "INFO"]).await;
                        ready &= state.contains("cluster_state:ok");
                        let repl = info(n.port, "replication").await;
                        ready &=
                            repl.contains("role:master") || repl.contains("master_link_status:up");
                    }
                    if ready {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        )
        .await;
        cluster
    }

    /// `redis://` seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The ports of the nodes that are masters now.
    pub async fn masters(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for n in &self.nodes {
            if info(n.port, "replication").await.contains("role:master") {
                out.push(n.port);
            }
        }
        out
    }

    /// The port of the master serving `key`'s slot, as the first live node says.
    pub async fn master_of(&self, key: &str) -> u16 {
        let slot: i64 = query(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).await;
        let shards: redis::Value = query(self.nodes[0].port, &["CLUSTER", "SLOTS"]).await;
        let redis::Value::Array(ranges) = shards else {
            panic!("CLUSTER SLOTS: {shards:?}")
        };
        for r in ranges {
            let redis::Value::Array(r) = r else { continue };
            let (
                Some(redis::Value::Int(lo)),
                Some(redis::Value::Int(hi)),
                Some(redis::Value::Array(m)),
            ) = (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&slot)
                && let Some(redis::Value::Int(port)) = m.get(1)
            {
                return u16::try_from(*port).unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }
}

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
    /// Ports of the nodes killed and not restarted.
    dead: Vec<u16>,
    _dir: tempfile::TempDir,
}

/// A cluster node's command line: its config file (and so its identity) lives in `dir`, so
/// a node restarted with the same port rejoins as itself.
fn node_args(dir: &std::path::Path, port: u16) -> Vec<String> {
    let p = port.to_string();
    let conf = format!("nodes-{p}.conf");
    let dir = dir.display().to_string();
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
            .map(|_| Node::spawn_on(cluster_port, |port| node_args(&path, port)))
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
        let cluster = RedisCluster {
            nodes,
            dead: Vec::new(),
            _dir: dir,
        };
        cluster
            .settled("every node sees the cluster ok, with its replicas in sync")
            .await;
        cluster
    }

    /// Wait until every live node reports `cluster_state:ok` and every replica's link to
    /// its master is up.
    pub async fn settled(&self, what: &str) {
        within(what, async {
            loop {
                let mut ready = true;
                for n in self.live() {
                    let state: String = query(n.port, &["CLUSTER", "INFO"]).await;
                    ready &= state.contains("cluster_state:ok");
                    let repl = info(n.port, "replication").await;
                    ready &= repl.contains("role:master") || repl.contains("master_link_status:up");
                }
                if ready {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !self.dead.contains(&n.port))
    }

    /// A live node to ask.
    pub fn any_live(&self) -> u16 {
        self.live().next().expect("a live node").port
    }

    /// SIGKILL the node on `port` (it stays down until `restart`).
    pub fn kill(&mut self, port: u16) {
        let n = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        n.kill();
        self.dead.push(port);
    }

    /// Start the killed node on `port` again, with its config file: it rejoins the cluster
    /// as itself (a replica of whoever took its slots).
    pub fn restart(&mut self, port: u16) {
        let i = self.nodes.iter().position(|n| n.port == port).unwrap();
        let dir = self._dir.path().to_path_buf();
        self.nodes[i] = Node::spawn_on(|| port, |p| node_args(&dir, p));
        self.dead.retain(|p| *p != port);
    }

    /// Wait until the live nodes agree that a master other than `dead` serves its slots.
    pub async fn wait_for_promotion(&self, dead: u16) {
        within(
            "a replica is promoted in place of the killed master",
            async {
                loop {
                    let masters = self.masters().await;
                    if masters.len() == 3 && !masters.contains(&dead) {
                        let state: String = query(self.any_live(), &["CLUSTER", "INFO"]).await;
                        if state.contains("cluster_state:ok") {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await;
    }

    /// The node id of the node on `port`.
    pub async fn id(&self, port: u16) -> String {
        query(port, &["CLUSTER", "MYID"]).await
    }

    /// Move one slot (and its keys) from its master to the master on `to`, the way
    /// `redis-cli --cluster reshard` does it: IMPORTING/MIGRATING, MIGRATE the keys, then
    /// SETSLOT NODE on both ends and on every other master.
    pub async fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let (from_id, to_id) = (self.id(from).await, self.id(to).await);
        let s = slot.to_string();
        let _: () = query(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).await;
        let _: () = query(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await;
        loop {
            let keys: Vec<String> = query(from, &["CLUSTER", "GETKEYSINSLOT", &s, "100"]).await;
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let _: () = query(from, &args).await;
        }
        for port in [to, from] {
            let _: () = query(port, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
        }
        for m in self.masters().await {
            if m != to && m != from {
                let _: () = query(m, &["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await;
            }
        }
    }

    /// The slot of `key`.
    pub async fn slot(&self, key: &str) -> u16 {
        let slot: i64 = query(self.any_live(), &["CLUSTER", "KEYSLOT", key]).await;
        u16::try_from(slot).unwrap()
    }

    /// `redis://` seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The ports of the live nodes that are masters now.
    pub async fn masters(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for n in self.live() {
            if info(n.port, "replication").await.contains("role:master") {
                out.push(n.port);
            }
        }
        out
    }

    /// The port of the master serving `key`'s slot, as the first live node says.
    pub async fn master_of(&self, key: &str) -> u16 {
        let slot = i64::from(self.slot(key).await);
        let shards: redis::Value = query(self.any_live(), &["CLUSTER", "SLOTS"]).await;
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

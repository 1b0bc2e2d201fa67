//! Redis with Sentinel for tests: one master, one replica and three sentinels, each a real
//! redis-server on a free 127.0.0.1 port, killed on drop. Panics (never skips) when
//! redis-server is missing.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{redis_ping, within};

/// The master's name as the sentinels know it.
pub const MASTER: &str = "mymaster";

/// One redis-server process (a data node or a sentinel).
pub struct Node {
    pub port: u16,
    child: Child,
}

impl Node {
    /// Start redis-server with `args(port)` on a free port; returns once it answers PING.
    pub fn spawn(args: impl Fn(u16) -> Vec<String>) -> Node {
        Self::spawn_on(
            || {
                std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port()
            },
            args,
        )
    }

    /// `spawn` on a port chosen by `pick` (a cluster node also needs port + 10000 free).
    pub(super) fn spawn_on(pick: impl Fn() -> u16, args: impl Fn(u16) -> Vec<String>) -> Node {
        for _ in 0..5 {
            let port = pick();
            let mut child = match Command::new("redis-server")
                .args(args(port))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            {
                Ok(c) => c,
                Err(e) => panic!(
                    "redis-server is required by this test but could not be started ({e}); \
                     run scripts/test.sh, which installs it, or `apt-get install redis-server`"
                ),
            };
            for _ in 0..100 {
                if redis_ping(port).is_ok() {
                    return Node { port, child };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken between probe and start: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start answering PING on a free port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the process is gone at once, its connections reset.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master, its replica and three sentinels watching it (quorum 2), with small timeouts
/// so a failover takes a second or two.
pub struct SentinelSet {
    pub master: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

fn data_node(dir: &Path, port: u16) -> Vec<String> {
    let port = port.to_string();
    let dir = dir.display().to_string();
    [
        "--port",
        port.as_str(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        // Start a replica's full sync at once (the default waits 5 s for more replicas).
        "--repl-diskless-sync-delay",
        "0",
        "--dir",
        dir.as_str(),
    ]
    .map(String::from)
    .to_vec()
}

impl SentinelSet {
    /// Start everything and wait until the replica is in sync and every sentinel knows the
    /// replica and the two other sentinels (so a failover can be agreed on).
    pub async fn start() -> SentinelSet {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let master = Node::spawn(|port| data_node(&path, port));
        let mport = master.port.to_string();
        let replica = Node::spawn(|port| {
            let mut a = data_node(&path, port);
            a.extend(["--replicaof", "127.0.0.1", &mport].map(String::from));
            a
        });
        let sentinels: Vec<Node> = (0..3)
            .map(|_| {
                Node::spawn(|port| {
                    let conf = path.join(format!("sentinel-{port}.conf"));
                    std::fs::write(
                        &conf,
                        format!(
                            "port {port}\nbind 127.0.0.1\ndir {}\n\
                             sentinel monitor {MASTER} 127.0.0.1 {mport} 2\n\
                             sentinel down-after-milliseconds {MASTER} 500\n\
                             sentinel failover-timeout {MASTER} 2000\n\
                             sentinel parallel-syncs {MASTER} 1\n",
                            path.display()
                        ),
                    )
                    .unwrap();
                    vec![conf.display().to_string(), "--sentinel".to_string()]
                })
            })
            .collect();
        let set = SentinelSet {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        within("the replica syncs with the master", async {
            while !info(set.replica.port, "replication")
                .await
                .contains("master_link_status:up")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        within(
            "every sentinel knows the replica and the other sentinels",
            async {
                loop {
                    let mut ready = true;
                    for s in &set.sentinels {
                        let replicas = table(s.port, &["SENTINEL", "REPLICAS", MASTER]).await;
                        let peers = table(s.port, &["SENTINEL", "SENTINELS", MASTER]).await;
                        ready &= replicas.len() == 1
                            && replicas[0]["flags"] == "slave"
                            && peers.len() == 2;
                    }
                    if ready {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        )
        .await;
        set
    }

    /// `redis_sentinel = { ... }` naming the three sentinels.
    pub fn store_line(&self) -> String {
        let urls: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"{}\"", s.url()))
            .collect();
        format!(
            "redis_sentinel = {{ master = \"{MASTER}\", sentinels = [{}] }}",
            urls.join(", ")
        )
    }

    /// The master's port as every sentinel names it, once they all agree.
    pub async fn agreed_master(&self) -> Option<u16> {
        let mut ports = Vec::new();
        for s in &self.sentinels {
            let addr: Option<(String, String)> =
                query(s.port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER]).await;
            ports.push(addr.and_then(|(_, p)| p.parse::<u16>().ok()));
        }
        ports
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| ports[0])
            .flatten()
    }

    /// Start the killed master again on its port, as a replica of the promoted one, and
    /// wait until it is in sync and every sentinel lists it as a healthy replica.
    pub async fn rejoin_old_master(&mut self) {
        let (port, promoted) = (self.master.port, self.replica.port.to_string());
        let path = self._dir.path().to_path_buf();
        self.master = Node::spawn_on(
            || port,
            |p| {
                let mut a = data_node(&path, p);
                a.extend(["--replicaof", "127.0.0.1", promoted.as_str()].map(String::from));
                a
            },
        );
        within("the old master syncs as a replica", async {
            while !info(port, "replication")
                .await
                .contains("master_link_status:up")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let want = port.to_string();
        within(
            "every sentinel lists the old master as a healthy replica",
            async {
                loop {
                    let mut ready = true;
                    for s in &self.sentinels {
                        let replicas = table(s.port, &["SENTINEL", "REPLICAS", MASTER]).await;
                        ready &= replicas
                            .iter()
                            .any(|r| r["port"] == want && r["flags"] == "slave");
                    }
                    if ready {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        )
        .await;
    }

    /// A graceful failover (`SENTINEL FAILOVER`): the current master stays up and becomes a
    /// replica. Returns once every sentinel names `port` and that node says it is master.
    pub async fn failover_to(&self, port: u16) {
        let _: () = query(self.sentinels[0].port, &["SENTINEL", "FAILOVER", MASTER]).await;
        within("the sentinels switch the master", async {
            loop {
                if self.agreed_master().await == Some(port)
                    && info(port, "replication").await.contains("role:master")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// Wait until the replica has applied every write the master has made so far (its
    /// replication offset caught up with the master's).
    pub async fn wait_replicated(&self) {
        let offset = |text: String, field: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(field)?.parse().ok())
        };
        within("the replica catches up with the master", async {
            loop {
                let m = offset(
                    info(self.master.port, "replication").await,
                    "master_repl_offset:",
                );
                // Linked too: after a switch the offsets can match before the link is up.
                let replica = info(self.replica.port, "replication").await;
                let linked = replica.contains("master_link_status:up");
                let r = offset(replica, "slave_repl_offset:");
                if linked && m.is_some() && m == r {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Wait until every sentinel names the replica as the master and the replica says it is.
    pub async fn wait_for_promotion(&self) {
        within("the sentinels promote the replica", async {
            loop {
                if self.agreed_master().await == Some(self.replica.port)
                    && info(self.replica.port, "replication")
                        .await
                        .contains("role:master")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
}

/// One command on 127.0.0.1:`port`, bounded; panics on failure (the test set-up is broken).
pub async fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> T {
    let run = async {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async::<T>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{args:?} on {port}: {e}"),
        Err(_) => panic!("{args:?} on {port}: no answer in 5 s"),
    }
}

/// `INFO section` as text.
pub async fn info(port: u16, section: &str) -> String {
    query(port, &["INFO", section]).await
}

/// A sentinel's list answer (`SENTINEL REPLICAS`, `SENTINEL SENTINELS`) as maps.
async fn table(port: u16, args: &[&str]) -> Vec<HashMap<String, String>> {
    query(port, args).await
}

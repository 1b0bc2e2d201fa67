//! The redis-server helpers that the store's tests build on: a private server on a free port,
//! and a private Redis Cluster (three masters, three replicas); each fails loudly rather than
//! skipping when it cannot start.

mod support;

use support::*;

#[test]
fn starts_a_private_redis_on_a_free_port_and_stops_it() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    assert_ne!(a.port, b.port);
    assert_eq!(redis_ping(a.port).unwrap(), "+PONG\r\n");
    assert_eq!(redis_ping(b.port).unwrap(), "+PONG\r\n");
    assert_eq!(a.url(), format!("redis://127.0.0.1:{}/0", a.port));
    let port = a.port;
    drop(a);
    assert!(
        redis_ping(port).is_err(),
        "redis on {port} still answers after drop"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn starts_a_private_cluster_of_three_masters_with_a_replica_each() {
    let cluster = support::cluster::RedisCluster::start().await;
    assert_eq!(cluster.nodes.len(), 6);
    assert_eq!(cluster.urls().len(), 6);
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    // Keys spread over the three masters: each is served by one of them.
    let mut owners: Vec<u16> = Vec::new();
    for key in ["a", "b", "c", "d", "e", "f", "g", "h"] {
        let owner = cluster.master_of(key).await;
        assert!(
            masters.contains(&owner),
            "{key} on {owner}, masters {masters:?}"
        );
        owners.push(owner);
    }
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), 3, "eight keys land on all three masters");
}

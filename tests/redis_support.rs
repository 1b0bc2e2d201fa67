//! The redis-server helper that the store's tests build on: a private server on a free port,
//! failing loudly rather than skipping when it cannot start. (The Redis Cluster helper is
//! exercised by tests/cluster.rs, which needs one cluster per binary.)

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

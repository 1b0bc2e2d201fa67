//! Revocation writes: records that never weaken one already there, and the durable variant
//! that waits for a replica (`WAIT 1`) so a failover cannot lose an acknowledged revocation.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};

use super::super::{Records, Revoke};
use super::conn::Conn;
use super::{CONNECT_TIMEOUT, WRITE_TIMEOUT};
use crate::auth::unix_now;

/// A plain connection for commands (no push messages), with the write timeouts.
pub(in crate::store) async fn write_connection(
    client: &Client,
) -> Result<MultiplexedConnection, redis::RedisError> {
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(WRITE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
}

/// Write a revocation so that it never weakens one already there: a jti keeps the later
/// expiry, a subject keeps the later cut-off (and the longer TTL).
pub(in crate::store) async fn write_record(
    conn: &mut Conn,
    records: &Records,
    r: &Revoke,
) -> Result<(), redis::RedisError> {
    let (key, value, ttl) = records.record(r, unix_now());
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    match r {
        Revoke::Jti { .. } => {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl_ms)
                .arg("GT")
                .ignore()
                .exec_async(conn)
                .await
        }
        Revoke::Subject { .. } => {
            redis::cmd("EVAL")
                .arg(RAISE_CUTOFF)
                .arg(1)
                .arg(&key)
                .arg(&value)
                .arg(ttl_ms)
                .exec_async(conn)
                .await
        }
    }
}

/// `write_record`, then `WAIT 1 {wait}` on the same connection (WAIT counts the writes of
/// the client it runs on; on a cluster, the connection to the key's master): whether at
/// least one replica acknowledged the write in time. The record is written either way;
/// false means a failover now could lose it. WAIT blocks the connection it runs on, so
/// `conn` must be one of the caller's own, not the request path's.
pub(in crate::store) async fn write_durably(
    conn: &mut Conn,
    records: &Records,
    r: &Revoke,
    wait: Duration,
) -> Result<bool, redis::RedisError> {
    write_record(conn, records, r).await?;
    // WAIT 0 would wait forever: at least one millisecond.
    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let (key, _, _) = records.record(r, unix_now());
    let replicas = conn.wait_replica(&key, wait_ms).await?;
    Ok(replicas >= 1)
}

/// Set a subject's cut-off only if it raises it; otherwise only extend the TTL.
const RAISE_CUTOFF: &str = r#"
local cur = tonumber(redis.call('GET', KEYS[1]) or '')
if cur == nil or tonumber(ARGV[1]) > cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2], 'GT')
end
return 1
"#;

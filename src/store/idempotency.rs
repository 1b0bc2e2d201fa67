//! Idempotency records and how they are kept (the same in Redis and the embedded store).
//!
//! One key per (route, subject, client key): `{idempotency.key_prefix}{sha256 hex}`. Its value
//! is one of four records, as plain strings so an operator can read them with `redis-cli`:
//! - `L|{owner}|{fingerprint}|{expires unix ms}` — a lease on an in-flight request
//! - `D|{fingerprint}|{json response}` — completed; the response to replay
//! - `N|{fingerprint}` — completed, but the response was too large to store
//! - `C|{fingerprint}` — committed (the replica sent a head doorman would store), but its
//!   body did not arrive whole in time to be stored: the replica broke it off, it stalled
//!   past `idle_timeout`, or it was still streaming when the lease budget ran out. The
//!   request ran; it is never run again, nor replayed.
//!
//! A record kind an older doorman does not know decodes to nothing, which it answers as
//! "in flight" (409): never as a free key, so adding a kind never lets a request run twice.
//!
//! A first request costs two round trips: `BEGIN` (one script: return the record, or take the
//! lease) and `FINISH` (one script: write the result only if the lease is still ours). A
//! replay costs one: `BEGIN` returns the record.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdemRecord {
    Lease {
        owner: String,
        fingerprint: String,
        expires_ms: u64,
    },
    Done {
        fingerprint: String,
        response: StoredResponse,
    },
    TooLarge {
        fingerprint: String,
    },
    /// Committed, response not stored whole (see the module's `C|` record).
    Committed {
        fingerprint: String,
    },
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    pub status: u16,
    /// Header name and base64 of the raw value bytes.
    pub headers: Vec<(String, String)>,
    /// Base64 of the body.
    pub body: String,
}

impl StoredResponse {
    pub(crate) fn new(status: u16, headers: &http::HeaderMap, body: &[u8]) -> Self {
        StoredResponse {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), STANDARD.encode(v.as_bytes())))
                .collect(),
            body: STANDARD.encode(body),
        }
    }

    pub(crate) fn body_bytes(&self) -> Option<Bytes> {
        STANDARD.decode(&self.body).ok().map(Bytes::from)
    }

    pub(crate) fn header_values(
        &self,
    ) -> impl Iterator<Item = (http::HeaderName, http::HeaderValue)> + '_ {
        self.headers.iter().filter_map(|(n, v)| {
            let name = http::HeaderName::from_bytes(n.as_bytes()).ok()?;
            let value = http::HeaderValue::from_bytes(&STANDARD.decode(v).ok()?).ok()?;
            Some((name, value))
        })
    }
}

impl IdemRecord {
    pub(crate) fn encode(&self) -> String {
        match self {
            IdemRecord::Lease {
                owner,
                fingerprint,
                expires_ms,
            } => format!("L|{owner}|{fingerprint}|{expires_ms}"),
            IdemRecord::Done {
                fingerprint,
                response,
            } => format!(
                "D|{fingerprint}|{}",
                serde_json::to_string(response).expect("a stored response serializes")
            ),
            IdemRecord::TooLarge { fingerprint } => format!("N|{fingerprint}"),
            IdemRecord::Committed { fingerprint } => format!("C|{fingerprint}"),
        }
    }

    pub(crate) fn decode(s: &str) -> Option<IdemRecord> {
        let (kind, rest) = s.split_once('|')?;
        match kind {
            "L" => {
                let mut p = rest.splitn(3, '|');
                Some(IdemRecord::Lease {
                    owner: p.next()?.to_string(),
                    fingerprint: p.next()?.to_string(),
                    expires_ms: p.next()?.parse().ok()?,
                })
            }
            "D" => {
                let (fingerprint, json) = rest.split_once('|')?;
                Some(IdemRecord::Done {
                    fingerprint: fingerprint.to_string(),
                    response: serde_json::from_str(json).ok()?,
                })
            }
            "N" => Some(IdemRecord::TooLarge {
                fingerprint: rest.to_string(),
            }),
            "C" => Some(IdemRecord::Committed {
                fingerprint: rest.to_string(),
            }),
            _ => None,
        }
    }

    pub(crate) fn fingerprint(&self) -> &str {
        match self {
            IdemRecord::Lease { fingerprint, .. }
            | IdemRecord::Done { fingerprint, .. }
            | IdemRecord::TooLarge { fingerprint }
            | IdemRecord::Committed { fingerprint } => fingerprint,
        }
    }
}

/// What `begin` found.
#[derive(Debug)]
pub(crate) enum Begin {
    /// The lease is ours: forward the request.
    Acquired,
    /// Someone was here first (or a record is unreadable: `None`, treated as in flight).
    Existing(Option<IdemRecord>),
}

/// Return the record, or take the lease: `KEYS[1]`, `ARGV = lease, lock_ttl_ms`.
///
/// Replay-safe: a client (redis-rs' cluster connection, say) may send a script again after
/// the connection dropped with the answer in flight. A BEGIN that finds exactly its own
/// lease (the owner is random per request) took it the first time: acquired, not a conflict.
pub(super) const BEGIN: &str = r#"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then return false end
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"#;

/// Replace our lease with the result (or delete it when the result is empty), only if the
/// lease is still exactly ours: `KEYS[1]`, `ARGV = lease, result, ttl_ms`.
///
/// Replay-safe too: a FINISH sent again after it ran finds its own result in place of the
/// lease, and reports success without writing anything.
pub(super) const FINISH: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[2] ~= '' and cur == ARGV[2] then return 1 end
if cur ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut h = http::HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        let records = [
            IdemRecord::Lease {
                owner: "o1".into(),
                fingerprint: "ab".into(),
                expires_ms: 17,
            },
            IdemRecord::Done {
                fingerprint: "cd".into(),
                response: StoredResponse::new(201, &h, b"{\"id\":1}|pipe"),
            },
            IdemRecord::TooLarge {
                fingerprint: "ef".into(),
            },
            IdemRecord::Committed {
                fingerprint: "01".into(),
            },
        ];
        for r in records {
            assert_eq!(IdemRecord::decode(&r.encode()), Some(r));
        }
        assert_eq!(IdemRecord::decode("garbage"), None);
        assert_eq!(IdemRecord::decode("X|ab"), None, "an unknown kind");
        assert_eq!(
            IdemRecord::Committed {
                fingerprint: "ab".into()
            }
            .encode(),
            "C|ab"
        );
    }
}

/// The scripts as Redis runs them, sent twice the way a client retries after a connection
/// dropped with the answer in flight. Needs redis-server (fails loudly without it).
#[cfg(test)]
mod replays {
    use super::{BEGIN, FINISH};

    struct Server(std::process::Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn start() -> (Server, redis::Connection) {
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("redis-server is required by this test ({e}); run scripts/test.sh")
                });
            let server = Server(child);
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
            for _ in 0..100 {
                if let Ok(c) = client.get_connection() {
                    return (server, c);
                }
                std::thread::sleep(std::time::Duration::from_millis(30));
            }
        }
        panic!("redis-server did not start on a free port");
    }

    fn begin(c: &mut redis::Connection, lease: &str) -> Option<String> {
        redis::cmd("EVAL")
            .arg(BEGIN)
            .arg(1)
            .arg("k")
            .arg(lease)
            .arg(60_000)
            .query(c)
            .unwrap()
    }

    fn finish(c: &mut redis::Connection, lease: &str, result: &str) -> i64 {
        redis::cmd("EVAL")
            .arg(FINISH)
            .arg(1)
            .arg("k")
            .arg(lease)
            .arg(result)
            .arg(60_000)
            .query(c)
            .unwrap()
    }

    #[test]
    fn a_replayed_begin_or_finish_is_harmless() {
        let (_server, mut c) = start();
        // BEGIN, replayed: both acquire (the second finds exactly its own lease).
        assert_eq!(begin(&mut c, "L|me|fp|1"), None);
        assert_eq!(begin(&mut c, "L|me|fp|1"), None);
        // Another owner is a conflict: it gets the lease back, not the key.
        assert_eq!(begin(&mut c, "L|you|fp|1").as_deref(), Some("L|me|fp|1"));
        // FINISH, replayed: the second finds our result and writes nothing.
        assert_eq!(finish(&mut c, "L|me|fp|1", "D|fp|result"), 1);
        assert_eq!(finish(&mut c, "L|me|fp|1", "D|fp|result"), 1);
        let stored: String = redis::cmd("GET").arg("k").query(&mut c).unwrap();
        assert_eq!(stored, "D|fp|result");
        // A late FINISH by someone else, with another result, changes nothing.
        assert_eq!(finish(&mut c, "L|you|fp|1", "D|fp|other"), 0);
        // A replayed BEGIN after the result is stored gets the result (a replay).
        assert_eq!(begin(&mut c, "L|me|fp|1").as_deref(), Some("D|fp|result"));
        // A release (empty result), replayed: the key is gone after the first; the second
        // finds no lease of ours and reports it.
        let _: () = redis::cmd("DEL").arg("k").query(&mut c).unwrap();
        assert_eq!(begin(&mut c, "L|me|fp|2"), None);
        assert_eq!(finish(&mut c, "L|me|fp|2", ""), 1);
        assert_eq!(finish(&mut c, "L|me|fp|2", ""), 0);
        let gone: Option<String> = redis::cmd("GET").arg("k").query(&mut c).unwrap();
        assert_eq!(gone, None);
    }
}

//! A committed keyed request never runs twice: `response_timeout` bounds the replica's
//! response head only; once a head that commits the key has arrived, a slow, broken or
//! stalled body never releases the key; and a result the store cannot take in time keeps
//! the lease. Replicas here are scripted on raw sockets, so each one's timing is exact.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// What the scripted replica does with one call, once it has read the whole request.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// A 200 head at once, then `chunks` body chunks `gap_ms` apart, then the end.
    Slow { chunks: usize, gap_ms: u64 },
    /// No head for `ms`, then a small 200 ("late").
    Late { ms: u64 },
    /// A small 200 at once ("prompt").
    Prompt,
    /// A 200 head and one chunk, then a TCP reset.
    Reset,
    /// A 200 head and one chunk, then silence on an open connection for `ms`.
    Stall { ms: u64 },
    /// Wait for `Scripted::open_gate`, then a small 200 ("gated").
    Gated,
}

/// A replica on 127.0.0.1:0 that plays `script` (call i plays the i-th act; the last one
/// repeats) and counts the calls it received whole.
#[derive(Clone)]
struct Scripted {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    /// Notified when a call has been read whole (before it is answered).
    arrived: Arc<Notify>,
    gate: Arc<Notify>,
}

/// The body `Act::Slow { chunks: n, .. }` sends.
fn slow_body(n: usize) -> String {
    (0..n).map(|i| format!("chunk-{i}|")).collect()
}

fn chunk(data: &str) -> Vec<u8> {
    format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
}

const CHUNKED_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";

impl Scripted {
    async fn start(script: Vec<Act>) -> Scripted {
        assert!(!script.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Scripted {
            addr: listener.local_addr().unwrap(),
            calls: Arc::default(),
            arrived: Arc::default(),
            gate: Arc::default(),
        };
        let me = s.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (me, script) = (me.clone(), script.clone());
                tokio::spawn(async move {
                    let _ = me.serve(tcp, &script).await;
                });
            }
        });
        s
    }

    fn count(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn open_gate(&self) {
        self.gate.notify_one();
    }

    /// One request per connection: read it whole, count it, play its act, close.
    async fn serve(&self, mut tcp: TcpStream, script: &[Act]) -> std::io::Result<()> {
        let _ = tcp.set_nodelay(true);
        let mut buf = Vec::new();
        let mut scratch = [0u8; 4096];
        // The head: doorman sends a small one; 64 KiB bounds a broken test.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            let n = tcp.read(&mut scratch).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&scratch[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        while buf.len() < head_end + length {
            let n = tcp.read(&mut scratch).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&scratch[..n]);
        }
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_one();
        let small = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        match script[call.min(script.len() - 1)] {
            Act::Prompt => tcp.write_all(small("prompt").as_bytes()).await?,
            Act::Late { ms } => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                tcp.write_all(small("late").as_bytes()).await?;
            }
            Act::Gated => {
                within("the test opens the gate", self.gate.notified()).await;
                tcp.write_all(small("gated").as_bytes()).await?;
            }
            Act::Slow { chunks, gap_ms } => {
                tcp.write_all(CHUNKED_HEAD).await?;
                for i in 0..chunks {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(gap_ms)).await;
                    }
                    tcp.write_all(&chunk(&format!("chunk-{i}|"))).await?;
                }
                tcp.write_all(b"0\r\n\r\n").await?;
            }
            Act::Reset => {
                tcp.write_all(CHUNKED_HEAD).await?;
                tcp.write_all(&chunk("chunk-0|")).await?;
                // Let the head and the chunk reach doorman before the reset.
                tokio::time::sleep(Duration::from_millis(100)).await;
                tcp.set_zero_linger()?;
                drop(tcp);
                return Ok(());
            }
            Act::Stall { ms } => {
                tcp.write_all(CHUNKED_HEAD).await?;
                tcp.write_all(&chunk("chunk-0|")).await?;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
        }
        tcp.shutdown().await
    }
}

/// The two stores: embedded, and a private redis-server (kept alive by the returned guard).
fn stores() -> Vec<(String, Option<RedisServer>)> {
    let redis = RedisServer::start();
    let url = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"200ms\"\n",
        redis.url()
    );
    vec![(String::new(), None), (url, Some(redis))]
}

/// doorman in front of `replica` on one idempotent route; `group` goes in the upstream
/// group, `idem` in `[idempotency]`, `server` in `[server]`.
async fn proxy(
    replica: &Scripted,
    server: &str,
    store: &str,
    group: &str,
    idem: &str,
) -> TestProxy {
    let rest = format!(
        "{}{store}\n[idempotency]\n{idem}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nidempotency = \"required\"\n",
        group_toml("api", &[replica.addr], &format!("retries = 0\n{group}"))
    );
    TestProxy::start(server, &rest).await
}

fn keyed(c: &Client, key: &str) -> http::Request<TestBody> {
    c.request(Method::POST, "/pay")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(full(r#"{"amount":10}"#))
        .unwrap()
}

async fn post(c: &mut Client, key: &str) -> (http::Response<()>, Bytes) {
    let req = keyed(c, key);
    within("keyed POST", c.send_collect(req)).await
}

fn json_error(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"].as_str().unwrap().to_string()
}

const INCOMPLETE: &str = "the original request with this idempotency key was processed, but its response did not arrive whole and cannot be replayed";

#[tokio::test(flavor = "multi_thread")]
async fn a_body_streaming_past_response_timeout_is_delivered_stored_and_replayed() {
    for (store, _redis) in stores() {
        let r = Scripted::start(vec![Act::Slow {
            chunks: 5,
            gap_ms: 250,
        }])
        .await;
        let p = proxy(
            &r,
            "",
            &store,
            "response_timeout = \"300ms\"",
            "lock_ttl = \"10s\"",
        )
        .await;
        let mut c = p.h1().await;
        let (first, body) = post(&mut c, "slow").await;
        assert_eq!(first.status(), 200, "store {store:?}");
        assert_eq!(body, slow_body(5).as_bytes(), "the whole body");
        assert!(!first.headers().contains_key("idempotent-replayed"));
        assert_eq!(r.count(), 1);

        for mut c in [p.h1().await, p.h2().await] {
            let (again, replayed) = post(&mut c, "slow").await;
            assert_eq!(again.status(), 200, "store {store:?}");
            assert_eq!(again.headers()["idempotent-replayed"], "true");
            assert_eq!(replayed, body);
        }
        assert_eq!(r.count(), 1, "store {store:?}: the POST ran once");
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_head_within_response_timeout_is_504_and_releases_the_key() {
    for (store, _redis) in stores() {
        let r = Scripted::start(vec![Act::Late { ms: 1000 }, Act::Prompt]).await;
        let p = proxy(
            &r,
            "",
            &store,
            "response_timeout = \"300ms\"",
            "lock_ttl = \"10s\"",
        )
        .await;
        let mut c = p.h1().await;
        let (first, body) = post(&mut c, "late").await;
        assert_eq!(first.status(), 504, "store {store:?}");
        assert_eq!(json_error(&body), "upstream timed out");
        assert_eq!(r.count(), 1);

        // Nothing was committed: the retry reaches the replica, and its answer is stored.
        let (retry, body) = post(&mut c, "late").await;
        assert_eq!(retry.status(), 200, "store {store:?}");
        assert_eq!(&body[..], b"prompt");
        assert!(!retry.headers().contains_key("idempotent-replayed"));
        assert_eq!(r.count(), 2);
        let (replay, body) = post(&mut c, "late").await;
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert_eq!(&body[..], b"prompt");
        assert_eq!(r.count(), 2);
        p.stop().await;
    }
}

/// The client sees the response broken off where the replica broke it; the key then
/// answers 409 and never reaches the replica again.
async fn assert_cut_then_refused(p: &TestProxy, r: &Scripted, key: &str, store: &str) {
    let mut c = p.h1().await;
    let req = keyed(&c, key);
    let resp = within("response head", c.send(req)).await.unwrap();
    assert_eq!(resp.status(), 200, "store {store:?}: the committed head");
    let read = within("cut body", resp.into_body().collect()).await;
    assert!(read.is_err(), "store {store:?}: the body is cut, not ended");
    for mut c in [p.h1().await, p.h2().await] {
        let (again, body) = post(&mut c, key).await;
        assert_eq!(again.status(), 409, "store {store:?}");
        assert_eq!(json_error(&body), INCOMPLETE);
    }
    assert_eq!(r.count(), 1, "store {store:?}: the POST ran once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_mid_body_is_never_run_again() {
    for (store, _redis) in stores() {
        let r = Scripted::start(vec![Act::Reset]).await;
        let p = proxy(
            &r,
            "",
            &store,
            "response_timeout = \"2s\"",
            "lock_ttl = \"10s\"",
        )
        .await;
        assert_cut_then_refused(&p, &r, "reset", &store).await;
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_stalled_past_idle_timeout_is_never_run_again() {
    for (store, _redis) in stores() {
        let r = Scripted::start(vec![Act::Stall { ms: 3000 }]).await;
        let p = proxy(
            &r,
            "idle_timeout = \"500ms\"",
            &store,
            "response_timeout = \"300ms\"",
            "lock_ttl = \"10s\"",
        )
        .await;
        assert_cut_then_refused(&p, &r, "stall", &store).await;
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_still_streaming_when_the_lease_runs_out_is_delivered_and_not_replayable() {
    for (store, _redis) in stores() {
        // 8 chunks over ~1.75 s; the lease budget is 1 s less the store timeout (embedded:
        // the 50 ms default; Redis: 200 ms) and FINISH's 100 ms margin, from BEGIN.
        let r = Scripted::start(vec![Act::Slow {
            chunks: 8,
            gap_ms: 250,
        }])
        .await;
        let p = proxy(
            &r,
            "",
            &store,
            "response_timeout = \"300ms\"",
            "lock_ttl = \"1s\"",
        )
        .await;
        let mut c = p.h1().await;
        let (first, body) = post(&mut c, "long").await;
        assert_eq!(first.status(), 200, "store {store:?}");
        assert_eq!(body, slow_body(8).as_bytes(), "the whole body, streamed");
        let (again, body) = post(&mut c, "long").await;
        assert_eq!(again.status(), 409, "store {store:?}");
        assert_eq!(json_error(&body), INCOMPLETE);
        assert_eq!(r.count(), 1);
        p.stop().await;
    }
}

/// Retry `key` until the store answers again (503 while doorman reconnects), at most 20
/// times; every answer before that must be 503. Returns the first other answer.
async fn retry_past_503(p: &TestProxy, key: &str) -> (http::Response<()>, Bytes) {
    for _ in 0..20 {
        let mut c = p.h1().await;
        let (resp, body) = post(&mut c, key).await;
        if resp.status() != 503 {
            return (resp, body);
        }
        assert_eq!(json_error(&body), "state store unavailable");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store never answered again");
}

/// A keyed POST through a proxy on `redis` (store timeout 100 ms, lease 30 s) to a replica
/// that answers when its gate opens: returns once the replica has been called (BEGIN done),
/// with the request still in flight.
async fn gated_post_on_redis(
    redis: &RedisServer,
    key: &'static str,
) -> (
    Scripted,
    TestProxy,
    tokio::task::JoinHandle<(http::Response<()>, Bytes)>,
) {
    let store = format!(
        "[store]\nredis_url = \"{}\"\ntimeout = \"100ms\"\n",
        redis.url()
    );
    let r = Scripted::start(vec![Act::Gated]).await;
    let p = proxy(
        &r,
        "",
        &store,
        "response_timeout = \"5s\"",
        "lock_ttl = \"30s\"",
    )
    .await;
    let mut c = p.h1().await;
    let first = tokio::spawn(async move { post(&mut c, key).await });
    within("the replica is called", r.arrived.notified()).await;
    (r, p, first)
}

/// FINISH against a Redis that holds writes: the client still gets its response while Redis
/// still holds them (FINISH gave up on its own rather than waiting for Redis; that it gives
/// up after the store timeout, not a fixed 2 s, is checked by
/// `a_finish_redis_runs_after_the_stall_is_replayed`), the failure is counted, and the key
/// is never released: while Redis holds writes a retry is 503; once the stalled connection
/// is gone (killed, the FINISH with it), a retry finds the lease: 409.
#[tokio::test(flavor = "multi_thread")]
async fn a_finish_lost_to_a_stalled_redis_keeps_the_lease() {
    let redis = RedisServer::start();
    let (r, p, first) = gated_post_on_redis(&redis, "stalled").await;
    // BEGIN is done; from now on Redis holds every write (EVAL included) unanswered. The
    // pause ends by itself after 60 s should the test fail before unpausing.
    redis.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]).await;
    r.open_gate();
    let (resp, body) = within("the response despite the store", first)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"gated");
    let failures = "doorman_idempotency_store_failures_total{op=\"store\"}";
    assert_eq!(metric(&p, failures).await, 1.0);

    // Redis still holds writes: BEGIN cannot answer, the replica is not called.
    let mut c = p.h1().await;
    let (during, body) = post(&mut c, "stalled").await;
    assert_eq!(during.status(), 503);
    assert_eq!(json_error(&body), "state store unavailable");

    // The stalled connections die with the FINISH still queued on them; then writes resume.
    redis
        .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        .await;
    redis.cmd(&["CLIENT", "UNPAUSE"]).await;
    let (after, body) = retry_past_503(&p, "stalled").await;
    assert_eq!(after.status(), 409, "the lease is still there");
    assert_eq!(
        json_error(&body),
        "a request with this idempotency key is in progress"
    );
    let retry_after: u64 = after.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    assert_eq!(r.count(), 1, "the POST ran once");
    assert_eq!(metric(&p, failures).await, 1.0);
    p.stop().await;
}

/// The other ending of a stall: doorman gave up waiting for FINISH, but Redis still had the
/// script and runs it once writes resume. The result is then stored after all: a retry gets
/// the replay. Either way, the POST ran once.
///
/// Redis holds writes for 1 s only, then resumes by itself: longer than the 100 ms store
/// timeout, shorter than the 2 s FINISH used to wait. The failure being counted proves
/// FINISH gave up within the pause, before Redis could answer it, without timing anything
/// here: a FINISH that waited 2 s would have had its answer once the pause ended, and
/// counted nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_finish_redis_runs_after_the_stall_is_replayed() {
    let redis = RedisServer::start();
    let (r, p, first) = gated_post_on_redis(&redis, "late-finish").await;
    redis.cmd(&["CLIENT", "PAUSE", "1000", "WRITE"]).await;
    r.open_gate();
    let (resp, body) = within("the response despite the store", first)
        .await
        .unwrap();
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"gated"[..]));
    // Counted before the response was sent, so final by now.
    let failures = "doorman_idempotency_store_failures_total{op=\"store\"}";
    assert_eq!(
        metric(&p, failures).await,
        1.0,
        "FINISH gave up within the 1 s pause"
    );
    // Ends the pause early if it is still on; the failure above was already decided.
    redis.cmd(&["CLIENT", "UNPAUSE"]).await;
    let (after, replayed) = retry_past_503(&p, "late-finish").await;
    assert_eq!(after.status(), 200);
    assert_eq!(after.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed, body);
    assert_eq!(r.count(), 1, "the POST ran once");
    p.stop().await;
}

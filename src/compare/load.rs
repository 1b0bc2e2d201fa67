//! The workload: a fixed sequence of request keys (uniform or Zipf-skewed, from a seed, so
//! every mode sees the very same sequence) driven through doorman by a fixed number of
//! closed-loop HTTP/1.1 keep-alive clients. Bounded by count and by a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::replica::{ID_HEADER, parse_id};

/// The request header carrying the key (the sticky groups hash it).
pub(super) const KEY_HEADER: &str = "x-session-id";

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Population {
    Uniform,
    /// Zipf with exponent s: key k (from 1) drawn with probability ∝ 1/k^s.
    Zipf(f64),
}

impl Population {
    pub(super) fn label(self) -> String {
        match self {
            Population::Uniform => "uniform".into(),
            Population::Zipf(s) => format!("zipf s={s}"),
        }
    }
}

/// `n` keys out of `keys`, drawn from `population` with a seeded generator.
pub(super) fn key_sequence(population: Population, keys: usize, n: usize, seed: u64) -> Vec<u32> {
    let keys = keys.max(1);
    let mut rng = fastrand::Rng::with_seed(seed);
    match population {
        Population::Uniform => (0..n).map(|_| rng.u32(..keys as u32)).collect(),
        Population::Zipf(s) => {
            // Cumulative weights, then a binary search per draw.
            let mut cdf = Vec::with_capacity(keys);
            let mut total = 0.0;
            for k in 1..=keys {
                total += 1.0 / (k as f64).powf(s);
                cdf.push(total);
            }
            (0..n)
                .map(|_| {
                    let x = rng.f64() * total;
                    cdf.partition_point(|c| *c <= x).min(keys - 1) as u32
                })
                .collect()
        }
    }
}

/// One request's outcome.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sample {
    pub key: u32,
    /// 0-based replica that answered (from its id header), if any.
    pub replica: Option<u16>,
    /// HTTP status; 0 = the request failed at the transport.
    pub status: u16,
    /// Start, in µs since the run began.
    pub start_us: u64,
    pub latency_us: u64,
}

impl Sample {
    pub(super) fn ok(&self) -> bool {
        self.status == 200
    }
}

/// A run's samples, and a counter of requests started (for triggering mid-run events).
pub(super) struct Run {
    pub started: Arc<AtomicUsize>,
    pub begin: Instant,
}

impl Run {
    pub(super) fn new() -> Self {
        Run {
            started: Arc::new(AtomicUsize::new(0)),
            begin: Instant::now(),
        }
    }

    /// Drive every key in `keys` through `target` with `concurrency` clients; stops early at
    /// `deadline`. Samples come back sorted by start time.
    pub(super) async fn drive(
        &self,
        target: SocketAddr,
        keys: Arc<[u32]>,
        concurrency: usize,
        deadline: Duration,
    ) -> Vec<Sample> {
        let end = self.begin + deadline;
        let mut tasks = Vec::with_capacity(concurrency);
        for _ in 0..concurrency.max(1) {
            let (keys, next, begin) = (keys.clone(), self.started.clone(), self.begin);
            tasks.push(tokio::spawn(async move {
                client(target, &keys, &next, begin, end).await
            }));
        }
        let mut samples = Vec::with_capacity(keys.len());
        for t in tasks {
            if let Ok(mut s) = t.await {
                samples.append(&mut s);
            }
        }
        samples.sort_by_key(|s| s.start_us);
        samples
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(target: SocketAddr) -> Option<Sender> {
    let tcp = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(target))
        .await
        .ok()?
        .ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// One closed-loop client: take the next key, send, wait for the whole answer, repeat.
async fn client(
    target: SocketAddr,
    keys: &[u32],
    next: &AtomicUsize,
    begin: Instant,
    end: Instant,
) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut sender: Option<Sender> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= keys.len() || Instant::now() >= end {
            return out;
        }
        let key = keys[i];
        let start = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(10), async {
            if sender.as_ref().is_none_or(|s| s.is_closed()) {
                sender = connect(target).await;
            }
            let s = sender.as_mut()?;
            s.ready().await.ok()?;
            let req = Request::get(format!("/item/{key}"))
                .header(http::header::HOST, "compare.local")
                .header(KEY_HEADER, format!("k{key}"))
                .body(Empty::new())
                .ok()?;
            let resp = s.send_request(req).await.ok()?;
            let replica = resp
                .headers()
                .get(ID_HEADER)
                .and_then(|v| parse_id(v.as_bytes()));
            let status = resp.status().as_u16();
            resp.into_body().collect().await.ok()?;
            Some((status, replica))
        })
        .await
        .ok()
        .flatten();
        let (status, replica) = result.unwrap_or_else(|| {
            sender = None;
            (0, None)
        });
        out.push(Sample {
            key,
            replica,
            status,
            start_us: start.duration_since(begin).as_micros() as u64,
            latency_us: start.elapsed().as_micros() as u64,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_reproducible_and_in_range() {
        for p in [Population::Uniform, Population::Zipf(1.0)] {
            let a = key_sequence(p, 100, 5000, 7);
            assert_eq!(a, key_sequence(p, 100, 5000, 7));
            assert_ne!(a, key_sequence(p, 100, 5000, 8));
            assert!(a.iter().all(|k| *k < 100));
        }
    }

    #[test]
    fn zipf_makes_the_first_keys_hot() {
        // s = 1 over 100 keys: key 0 has 1/H(100) ≈ 19.3% of the draws, key 1 half that.
        let seq = key_sequence(Population::Zipf(1.0), 100, 100_000, 1);
        let share = |k: u32| seq.iter().filter(|x| **x == k).count() as f64 / 100_000.0;
        assert!((share(0) - 0.193).abs() < 0.01, "{}", share(0));
        assert!((share(1) - 0.0965).abs() < 0.01, "{}", share(1));
        let uniform = key_sequence(Population::Uniform, 100, 100_000, 1);
        let top = uniform.iter().filter(|x| **x == 0).count() as f64 / 100_000.0;
        assert!((top - 0.01).abs() < 0.003, "{top}");
    }
}

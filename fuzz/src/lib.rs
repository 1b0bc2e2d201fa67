//! Harness code shared by the fuzz targets: a scripted connection (the client's bytes in
//! reads of chosen sizes, then a client that keeps the connection open and sends nothing),
//! doorman's HTTP/1.1 connection and hyper's served over it, and what each made of the bytes.

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The longest request head doorman reads in these runs (hyper's limit is far above the
/// inputs libFuzzer makes, so neither refuses a head as too large).
pub const MAX_HEAD: usize = 64 * 1024;

/// A connection whose client sends `data` in reads ending at `ends` (increasing, the last
/// one `data.len()`), then waits without closing. What the server writes is collected.
pub struct ScriptedIo {
    data: Bytes,
    pos: usize,
    ends: Vec<usize>,
    out: Arc<Mutex<Vec<u8>>>,
}

impl ScriptedIo {
    pub fn new(data: Bytes, ends: Vec<usize>) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let io = ScriptedIo {
            data,
            pos: 0,
            ends,
            out: out.clone(),
        };
        (io, out)
    }
}

impl AsyncRead for ScriptedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let len = self.data.len();
        if self.pos >= len {
            // The client keeps the connection open and sends nothing more: only a timer (the
            // paused clock advances to it at once) moves the server on.
            return Poll::Pending;
        }
        let pos = self.pos;
        let end = self
            .ends
            .iter()
            .copied()
            .find(|&e| e > pos)
            .unwrap_or(len)
            .min(len);
        let n = (end - pos).min(buf.remaining());
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ScriptedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.out.lock().unwrap().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Read split points for `len` bytes, from a seed: reads of 1 to `max` bytes.
pub fn split_points(seed: u64, len: usize, max: usize) -> Vec<usize> {
    let mut x = seed | 1;
    let mut ends = Vec::new();
    let mut at = 0;
    while at < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at = (at + 1 + (x % max as u64) as usize).min(len);
        ends.push(at);
    }
    ends
}

/// FNV-1a: the input's own hash seeds its split points.
pub fn hash(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How a request's body ended, as the service read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Still waiting for bytes when the run ended.
    Pending,
    Complete(Vec<u8>),
    Failed(String),
}

/// A request as the service saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: Version,
    /// Names lower-case, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyOutcome,
}

/// What a server made of a client's bytes.
#[derive(Debug, Clone)]
pub struct Served {
    pub requests: Vec<Seen>,
    /// Status codes of the responses written, in order (1xx left out).
    pub statuses: Vec<u16>,
    /// The connection's own end: Ok, an error's text, or None when it was still running
    /// (a body still expected) when the run was stopped.
    pub end: Option<Result<(), String>>,
    pub output: Vec<u8>,
}

thread_local! {
    static RUNTIME: RefCell<tokio::runtime::Runtime> = RefCell::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime"),
    );
}

/// Run `conn` to its end, or until an hour passes on the paused clock (a body that never
/// arrives: no timer of the server's own ends that wait).
fn run<F: std::future::Future<Output = Result<(), String>>>(conn: F) -> Option<Result<(), String>> {
    RUNTIME.with_borrow(|rt| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(3600), conn)
                .await
                .ok()
        })
    })
}

fn headers_of(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    h.iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

fn record(log: &Arc<Mutex<Vec<Seen>>>, parts: &http::request::Parts) -> usize {
    let mut log = log.lock().unwrap();
    log.push(Seen {
        method: parts.method.as_str().to_owned(),
        target: parts.uri.to_string(),
        version: parts.version,
        headers: headers_of(&parts.headers),
        body: BodyOutcome::Pending,
    });
    log.len() - 1
}

/// Status codes of the responses in `out`, 1xx left out. The services' own bodies are
/// `ok`; doorman's error bodies are JSON without an `HTTP/1.` in them.
pub fn statuses(out: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&out[i..], b"HTTP/1.") {
        let s = i + at;
        if let Some(code) = out
            .get(s + 9..s + 12)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u16>().ok())
            && code >= 200
        {
            codes.push(code);
        }
        i = s + 7;
    }
    codes
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A refused head answered with the status doorman's server gives it; the body (doorman's
/// JSON error there) does not matter to the targets.
fn refused(e: doorman::fuzzing::HeadError) -> Response<Full<Bytes>> {
    use http::StatusCode;
    let status = match e {
        doorman::fuzzing::HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        doorman::fuzzing::HeadError::Bad(_) => StatusCode::BAD_REQUEST,
        doorman::fuzzing::HeadError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(b"refused")));
    *resp.status_mut() = status;
    resp
}

/// The client's bytes to doorman's HTTP/1.1 connection, in reads ending at `ends`.
pub fn doorman(data: &[u8], ends: Vec<usize>) -> Served {
    let (io, out) = ScriptedIo::new(Bytes::copy_from_slice(data), ends);
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let l = log.clone();
    let service = move |req: Request<doorman::fuzzing::RequestBody>| {
        let log = l.clone();
        async move {
            let (parts, body) = req.into_parts();
            let i = record(&log, &parts);
            let outcome = match body.collect().await {
                Ok(b) => BodyOutcome::Complete(b.to_bytes().to_vec()),
                Err(e) => BodyOutcome::Failed(e.to_string()),
            };
            log.lock().unwrap()[i].body = outcome;
            Response::new(Full::new(Bytes::from_static(b"ok")))
        }
    };
    let limits = doorman::fuzzing::Limits {
        header_timeout: Duration::from_secs(10),
        max_head: MAX_HEAD,
    };
    let conn = doorman::fuzzing::Connection::new(
        io,
        bytes::BytesMut::new(),
        service,
        refused,
        limits,
        Arc::new(AtomicBool::new(false)),
    );
    let end = run(async { conn.await.map_err(|e| e.to_string()) });
    let output = std::mem::take(&mut *out.lock().unwrap());
    let requests = std::mem::take(&mut *log.lock().unwrap());
    Served {
        requests,
        statuses: statuses(&output),
        end,
        output,
    }
}

/// The client's bytes, whole, to hyper's HTTP/1.1 server (its defaults, a tokio timer).
pub fn hyper(data: &[u8]) -> Served {
    let (io, out) = ScriptedIo::new(Bytes::copy_from_slice(data), vec![data.len()]);
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let l = log.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let log = l.clone();
        async move {
            let (parts, body) = req.into_parts();
            let i = record(&log, &parts);
            let outcome = match body.collect().await {
                Ok(b) => BodyOutcome::Complete(b.to_bytes().to_vec()),
                Err(e) => BodyOutcome::Failed(e.to_string()),
            };
            log.lock().unwrap()[i].body = outcome;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let end = run(async { conn.await.map_err(|e| e.to_string()) });
    let output = std::mem::take(&mut *out.lock().unwrap());
    let requests = std::mem::take(&mut *log.lock().unwrap());
    Served {
        requests,
        statuses: statuses(&output),
        end,
        output,
    }
}

/// With `DOORMAN_FUZZ_DEBUG` set, print what a server made of the bytes (to check the
/// harness on one input: `DOORMAN_FUZZ_DEBUG=1 fuzz/target/…/h1_request file`).
pub fn debug(label: &str, s: &Served) {
    if std::env::var_os("DOORMAN_FUZZ_DEBUG").is_none() {
        return;
    }
    eprintln!("== {label}: end {:?}, statuses {:?}", s.end, s.statuses);
    for r in &s.requests {
        eprintln!(
            "   {} {} {:?} headers {} body {:?}",
            r.method,
            r.target,
            r.version,
            r.headers.len(),
            match &r.body {
                BodyOutcome::Complete(b) => format!("complete {:?}", String::from_utf8_lossy(b)),
                other => format!("{other:?}"),
            }
        );
    }
    eprintln!("   output: {:?}", String::from_utf8_lossy(&s.output));
}

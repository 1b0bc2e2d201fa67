//! Unit tests of the HTTP/1.1 connection loop (`h1::Connection`) as a state machine: raw
//! bytes in over an in-memory duplex, exact bytes out — pipelining, keep-alive and close,
//! early answers to unread bodies, upgrades, half-close, refused heads, the head timeout
//! and graceful shutdown.
//!
//! Every test runs on a paused clock: "nothing more arrives" is a read that times out
//! when the runtime has nothing else to do, never a wall-clock sleep.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use super::{Connection, Limits, OnUpgrade, RequestBody};

/// The head timeout of these tests: long against everything else they wait for.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for: well inside `HEADER_TIMEOUT`.
const QUIET: Duration = Duration::from_secs(1);
/// A read that waits longer than this means the test is stuck, not slow.
const STUCK: Duration = Duration::from_secs(3600);

fn limits() -> Limits {
    Limits {
        header_timeout: HEADER_TIMEOUT,
        max_head: 1024,
    }
}

/// The one place these tests build a connection: issue 20 changes `Connection::new`'s
/// arguments (`hold` goes, refused heads go to a caller-supplied callback), and only this
/// function should need to follow.
fn connection<S, F, B>(
    io: DuplexStream,
    read: &[u8],
    service: S,
    limits: Limits,
    linger: Arc<AtomicBool>,
) -> Connection
where
    S: FnMut(Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let hold = Arc::new(AtomicBool::new(false));
    Connection::new(io, BytesMut::from(read), service, limits, linger, hold)
}

// ---------------------------------------------------------------------------------------
// The service: what it does is chosen by the request's path, so one service serves every
// table below and records, in order, what it saw.

type Answer = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;

/// The test's side of the service: what it saw, and the gate `/wait` requests wait at.
struct Probe {
    seen: mpsc::UnboundedReceiver<String>,
    gate: Arc<Semaphore>,
}

impl Probe {
    /// What the service has recorded so far, in order.
    fn seen(&mut self) -> Vec<String> {
        let mut all = Vec::new();
        while let Ok(s) = self.seen.try_recv() {
            all.push(s);
        }
        all
    }

    /// The next record, waiting for it (a request being served, a tunnel's verdict).
    async fn next(&mut self) -> String {
        timeout(STUCK, self.seen.recv())
            .await
            .expect("the service never recorded anything")
            .expect("the service is gone")
    }
}

/// Records its drop unless disarmed: a request's future dropped before its answer is a
/// request the connection abandoned.
struct DropNote(Option<(mpsc::UnboundedSender<String>, String)>);

impl DropNote {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for DropNote {
    fn drop(&mut self) {
        if let Some((tx, note)) = self.0.take() {
            let _ = tx.send(note);
        }
    }
}

/// By path:
/// - `/early...` answers 401 `early` without touching the body (dropping it);
/// - `/wait` records `waiting`, then answers as the echo once `gate` gives a permit (or
///   records `abandoned` if dropped before);
/// - `/close` answers as the echo with its own `Connection: close`;
/// - `/upgrade` answers 101 and echoes whatever the upgraded connection carries;
/// - `/no-upgrade` takes `OnUpgrade`, answers as the echo, and records what `upgraded()`
///   then gives;
/// - anything else is the echo: reads the whole body and answers 200
///   `<method> <target> <body>` (400 with the error if the body fails).
fn service() -> (
    impl FnMut(Request<RequestBody>) -> Answer + Send + 'static,
    Probe,
) {
    let (tx, seen) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let probe = Probe {
        seen,
        gate: gate.clone(),
    };
    let svc = move |mut req: Request<RequestBody>| -> Answer {
        let tx = tx.clone();
        let gate = gate.clone();
        let upgrade = req.extensions_mut().remove::<OnUpgrade>();
        Box::pin(async move {
            let what = format!("{} {}", req.method(), req.uri());
            let path = req.uri().path().to_owned();
            if path.starts_with("/early") {
                let _ = tx.send(format!("{what} unread"));
                drop(req);
                return with_status(StatusCode::UNAUTHORIZED, "early");
            }
            if path == "/upgrade" {
                let Some(upgrade) = upgrade else {
                    let _ = tx.send(format!("{what} without OnUpgrade"));
                    return with_status(StatusCode::OK, "no upgrade asked");
                };
                let _ = tx.send(format!("{what} upgrading"));
                tokio::spawn(tunnel_echo(upgrade, tx.clone()));
                return Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "upgrade")
                    .header(header::UPGRADE, "echo")
                    .body(Full::default())
                    .unwrap();
            }
            if path == "/no-upgrade" {
                let upgrade = upgrade.expect("an upgrade request carries OnUpgrade");
                let tx = tx.clone();
                tokio::spawn(async move {
                    let verdict = match upgrade.upgraded().await {
                        Ok(_) => "upgraded".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    let _ = tx.send(verdict);
                });
            }
            let waits = path == "/wait";
            let note = DropNote(waits.then(|| (tx.clone(), format!("{what} abandoned"))));
            if waits {
                let _ = tx.send(format!("{what} waiting"));
                gate.acquire().await.unwrap().forget();
            }
            let close = path == "/close";
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            note.disarm();
            let mut resp = match body {
                Ok(body) => {
                    let text = format!("{what} <{}>", String::from_utf8_lossy(&body));
                    let _ = tx.send(text.clone());
                    with_status(StatusCode::OK, &text)
                }
                Err(e) => {
                    let _ = tx.send(format!("{what} failed: {e}"));
                    with_status(StatusCode::BAD_REQUEST, &e.to_string())
                }
            };
            if close {
                resp.headers_mut()
                    .insert(header::CONNECTION, "close".parse().unwrap());
            }
            resp
        })
    };
    (svc, probe)
}

fn with_status(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

/// The far end of an upgrade: echoes what it reads until the client stops sending, then
/// closes its side.
async fn tunnel_echo(upgrade: OnUpgrade, tx: mpsc::UnboundedSender<String>) {
    let mut io = match upgrade.upgraded().await {
        Ok(io) => io,
        Err(e) => {
            let _ = tx.send(e.to_string());
            return;
        }
    };
    let mut buf = [0u8; 256];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let _ = tx.send(format!(
                    "tunnel read {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ));
                if io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.send("tunnel closed".to_owned());
    let _ = io.shutdown().await;
}

/// A response body whose size is not announced: one data frame, then its end.
struct Unsized(Option<Bytes>);

impl Body for Unsized {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|d| Ok(Frame::data(d))))
    }
}

// ---------------------------------------------------------------------------------------
// The client: writes raw bytes, reads responses back as they came.

/// One response as read off the wire.
#[derive(Debug)]
struct Resp {
    /// Exactly the bytes received, less the `date` line (whose value changes).
    text: String,
    status_line: String,
    /// Lower-cased names, in order, `date` left out.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    date: Option<String>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Client {
    io: DuplexStream,
    /// Read and not yet taken as a response.
    buf: BytesMut,
    /// The server side has closed (a read returned 0).
    eof: bool,
    linger: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<io::Result<()>>>,
}

/// Serve one connection on the test runtime; the client's half is returned.
fn start<S, F, B>(service: S, limits: Limits) -> Client
where
    S: FnMut(Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    start_with(b"", service, limits)
}

/// As `start`, with bytes already read off the connection (as after sniffing).
fn start_with<S, F, B>(read: &[u8], service: S, limits: Limits) -> Client
where
    S: FnMut(Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display + Send,
{
    let (client, server) = tokio::io::duplex(64 * 1024);
    let linger = Arc::new(AtomicBool::new(false));
    let conn = connection(server, read, service, limits, linger.clone());
    let (shutdown, shutdown_rx) = oneshot::channel();
    Client {
        io: client,
        buf: BytesMut::new(),
        eof: false,
        linger,
        shutdown: Some(shutdown),
        served: Some(tokio::spawn(drive(conn, shutdown_rx))),
    }
}

/// Run a connection as `server::drive` does: on shutdown, set the flag and poll it again
/// (the flag registers no waker of its own).
async fn drive(mut conn: Connection, shutdown: oneshot::Receiver<()>) -> io::Result<()> {
    tokio::select! {
        biased;
        done = &mut conn => return done,
        Ok(()) = shutdown => {}
    }
    conn.graceful_shutdown();
    conn.await
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.io
            .write_all(bytes)
            .await
            .expect("the server side is gone");
    }

    /// Let the connection's task run until it waits for something (the runtime is
    /// single-threaded: it then runs in a fixed order).
    async fn settle() {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }

    async fn response(&mut self) -> Resp {
        self.read_response(false).await
    }

    async fn read_response(&mut self, to_head: bool) -> Resp {
        loop {
            if let Some((used, resp)) = parse_response(&self.buf, to_head, self.eof) {
                self.buf.advance(used);
                return resp;
            }
            assert!(
                !self.eof,
                "the connection ended inside a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.read_more().await;
        }
    }

    async fn read_more(&mut self) {
        let n = timeout(STUCK, self.io.read_buf(&mut self.buf))
            .await
            .expect("stuck: nothing read and nothing timed out")
            .expect("reading the client side failed");
        self.eof |= n == 0;
    }

    /// The server has closed the connection, with nothing unread before the end.
    async fn assert_eof(&mut self) {
        if !self.eof {
            self.read_more().await;
        }
        assert!(
            self.eof && self.buf.is_empty(),
            "expected the end of the connection, got {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// Nothing more arrives, and the connection is not closed either.
    async fn assert_quiet(&mut self) {
        assert!(
            self.buf.is_empty() && !self.eof,
            "unexpected {:?}",
            self.buf
        );
        let read = timeout(QUIET, self.io.read_buf(&mut self.buf)).await;
        assert!(
            read.is_err(),
            "expected silence, got {read:?}: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }

    /// The next `n` bytes, whatever they are (an upgraded connection's).
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(!self.eof, "the connection ended: {:?}", self.buf);
            self.read_more().await;
        }
        self.buf.split_to(n).to_vec()
    }

    fn graceful_shutdown(&mut self) {
        let _ = self.shutdown.take().expect("shut down once").send(());
    }

    /// The connection's future has finished, without an error.
    async fn served(&mut self) {
        let served = self.served.take().expect("awaited once");
        timeout(STUCK, served)
            .await
            .expect("the connection never finished")
            .expect("the connection's task panicked")
            .expect("the connection ended with an error");
    }

    fn linger(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }
}

/// One complete response at the front of `buf`: the bytes it took and what it says.
/// `eof`: the connection has ended, so a body delimited by the close is complete.
fn parse_response(buf: &[u8], to_head: bool, eof: bool) -> Option<(usize, Resp)> {
    let head_len = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_len]).expect("a response head in ASCII");
    let mut lines = head[..head_len - 4].split("\r\n");
    let status_line = lines.next().unwrap().to_owned();
    let (mut headers, mut date) = (Vec::new(), None);
    for line in lines {
        let (name, value) = line.split_once(": ").expect("a header line");
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "date" => {
                assert!(date.is_none(), "two date lines in {head:?}");
                date = Some(value.to_owned());
            }
            _ => headers.push((name, value.to_owned())),
        }
    }
    let code: u16 = status_line[9..12].parse().unwrap();
    let value = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
    let rest = &buf[head_len..];
    let (used, body) = if to_head || code < 200 || code == 204 || code == 304 {
        (0, Vec::new())
    } else if let Some(n) = value("content-length") {
        let n: usize = n.parse().unwrap();
        if rest.len() < n {
            return None;
        }
        (n, rest[..n].to_vec())
    } else if value("transfer-encoding").as_deref() == Some("chunked") {
        dechunk(rest)?
    } else if eof {
        (rest.len(), rest.to_vec())
    } else {
        return None;
    };
    let total = head_len + used;
    let mut text = String::from_utf8_lossy(&buf[..total]).into_owned();
    if let Some(d) = &date {
        text = text.replacen(&format!("date: {d}\r\n"), "", 1);
    }
    let resp = Resp {
        text,
        status_line,
        headers,
        body,
        date,
    };
    Some((total, resp))
}

/// A chunked body at the front of `wire`: the bytes it took and its data.
fn dechunk(wire: &[u8]) -> Option<(usize, Vec<u8>)> {
    let (mut at, mut data) = (0, Vec::new());
    loop {
        let line_end = wire[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size = std::str::from_utf8(&wire[at..line_end]).unwrap();
        let size = usize::from_str_radix(size, 16).unwrap();
        at = line_end + 2;
        if size == 0 {
            // No trailers from this side: the empty line ends it.
            return (wire.len() >= at + 2).then(|| (at + 2, data));
        }
        if wire.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&wire[at..at + size]);
        at += size + 2;
    }
}

/// `200 OK` with `body`, as the connection writes it (less `date`), HTTP/1.1 unless the
/// status line is given.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// As `ok`, ending the connection.
fn ok_close(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

// ---------------------------------------------------------------------------------------
// Pipelining

/// A pipeline of requests and exactly what comes back for it.
struct Pipeline {
    name: &'static str,
    wire: &'static str,
    /// In order; `true`: the answer to a HEAD.
    answers: &'static [(bool, &'static str)],
    seen: &'static [&'static str],
}

const PIPELINES: &[Pipeline] = &[
    Pipeline {
        name: "two GETs",
        wire: "GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b?q=1 HTTP/1.1\r\nhost: x\r\n\r\n",
        answers: &[(false, "GET /a <>"), (false, "GET /b?q=1 <>")],
        seen: &["GET /a <>", "GET /b?q=1 <>"],
    },
    Pipeline {
        name: "a Content-Length body between two requests",
        wire: "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\n\r\n",
        answers: &[
            (false, "GET /a <>"),
            (false, "POST /b <hello>"),
            (false, "GET /c <>"),
        ],
        seen: &["GET /a <>", "POST /b <hello>", "GET /c <>"],
    },
    Pipeline {
        name: "a chunked body with extensions and trailers, then a request",
        wire: "POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nt: 1\r\n\r\nGET /d HTTP/1.1\r\n\r\n",
        answers: &[(false, "POST /c <abcde>"), (false, "GET /d <>")],
        seen: &["POST /c <abcde>", "GET /d <>"],
    },
    Pipeline {
        // The HEAD answer has no body (and, from a `Full` the service did not size in a
        // header, no length): the next response starts right after its head.
        name: "HEAD between GETs",
        wire: "GET /a HTTP/1.1\r\n\r\nHEAD /h HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        answers: &[(false, "GET /a <>"), (true, ""), (false, "GET /b <>")],
        seen: &["GET /a <>", "HEAD /h <>", "GET /b <>"],
    },
];

async fn run_pipeline(p: &Pipeline, parts: &[&[u8]]) {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    for part in parts {
        c.send(part).await;
        Client::settle().await;
    }
    for (i, (to_head, body)) in p.answers.iter().enumerate() {
        let resp = c.read_response(*to_head).await;
        let want = if *to_head {
            "HTTP/1.1 200 OK\r\n\r\n".to_owned()
        } else {
            ok(body)
        };
        assert_eq!(resp.text, want, "{}: answer {i} of {parts:?}", p.name);
    }
    // Each request exactly once: no answer more, and the connection waits for the next.
    c.assert_quiet().await;
    assert_eq!(probe.seen(), p.seen, "{}: {parts:?}", p.name);
    assert!(!c.linger(), "{}", p.name);
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_in_one_write_are_answered_in_order_once_each() {
    for p in PIPELINES {
        run_pipeline(p, &[p.wire.as_bytes()]).await;
    }
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_split_at_every_byte_boundary_are_answered_alike() {
    for p in &PIPELINES[1..3] {
        let wire = p.wire.as_bytes();
        for at in 1..wire.len() {
            let (a, b) = wire.split_at(at);
            run_pipeline(p, &[a, b]).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_dripped_a_byte_at_a_time_are_answered_alike() {
    let p = &PIPELINES[2];
    let bytes: Vec<&[u8]> = p.wire.as_bytes().chunks(1).collect();
    run_pipeline(p, &bytes).await;
}

#[tokio::test(start_paused = true)]
async fn bytes_read_before_the_connection_started_are_the_start_of_its_first_head() {
    let (svc, mut probe) = service();
    // As `sniff` hands them over: part of the first head already read.
    let mut c = start_with(b"GET /sniffed HT", svc, limits());
    c.send(b"TP/1.1\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok("GET /sniffed <>"));
    c.assert_quiet().await;
    assert_eq!(probe.seen(), ["GET /sniffed <>"]);
}

// ---------------------------------------------------------------------------------------
// Keep-alive and close

struct Verdict {
    name: &'static str,
    request: &'static str,
    answer: &'static str,
    /// Whether the connection stays open for the next request.
    keeps: bool,
}

const VERDICTS: &[Verdict] = &[
    Verdict {
        name: "HTTP/1.1 keeps the connection by default",
        request: "GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nGET /a <>",
        keeps: true,
    },
    Verdict {
        name: "HTTP/1.1 with Connection: close",
        request: "GET /a HTTP/1.1\r\nconnection: close\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nGET /a <>",
        keeps: false,
    },
    Verdict {
        name: "close among other Connection tokens",
        request: "GET /a HTTP/1.1\r\nconnection: keep-alive, Close\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nGET /a <>",
        keeps: false,
    },
    Verdict {
        name: "HTTP/1.0 closes by default",
        request: "GET /a HTTP/1.0\r\n\r\n",
        answer: "HTTP/1.0 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nGET /a <>",
        keeps: false,
    },
    Verdict {
        name: "HTTP/1.0 with Connection: keep-alive",
        request: "GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        answer: "HTTP/1.0 200 OK\r\ncontent-length: 9\r\nconnection: keep-alive\r\n\r\nGET /a <>",
        keeps: true,
    },
    Verdict {
        name: "the service's own Connection: close",
        request: "GET /close HTTP/1.1\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nGET /close <>",
        keeps: false,
    },
    Verdict {
        // doorman opens no tunnels: what follows a CONNECT is never read as requests.
        name: "CONNECT ends the connection",
        request: "CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 16\r\nconnection: close\r\n\r\nCONNECT a:443 <>",
        keeps: false,
    },
];

#[tokio::test(start_paused = true)]
async fn the_connection_ends_exactly_when_the_request_or_response_says_so() {
    for v in VERDICTS {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        // The next request is already there: the verdict decides whether it is read.
        let next = if v.request.contains("HTTP/1.0") {
            "GET /next HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
        } else {
            "GET /next HTTP/1.1\r\n\r\n"
        };
        c.send(format!("{}{next}", v.request).as_bytes()).await;
        let first = c.response().await;
        assert_eq!(first.text, v.answer, "{}", v.name);
        let date = first.date.as_deref().unwrap_or_default();
        assert!(
            date.ends_with(" GMT") && date.len() == 29,
            "{}: {date:?}",
            v.name
        );
        let first_seen = v.answer.rsplit("\r\n").next().unwrap();
        if v.keeps {
            let second = c.response().await;
            assert_eq!(second.status_line, first.status_line, "{}", v.name);
            assert_eq!(second.body, b"GET /next <>", "{}", v.name);
            c.assert_quiet().await;
            assert_eq!(probe.seen(), [first_seen, "GET /next <>"], "{}", v.name);
        } else {
            c.assert_eof().await;
            c.served().await;
            assert_eq!(probe.seen(), [first_seen], "{}", v.name);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_of_unknown_length_is_chunked_on_1_1_and_ends_at_close_on_1_0() {
    let unsized_svc = || {
        |_: Request<RequestBody>| async {
            Response::new(Unsized(Some(Bytes::from_static(b"hello"))))
        }
    };
    let mut c = start(unsized_svc(), limits());
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        c.response().await.text,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    c.assert_quiet().await;

    // HTTP/1.0 has no chunking: the close ends the body, whatever the client asked for.
    let mut c = start(unsized_svc(), limits());
    c.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(
        c.response().await.text,
        "HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nhello"
    );
    c.assert_eof().await;
    c.served().await;
}

// ---------------------------------------------------------------------------------------
// Early answers to bodies the service did not read

struct Early {
    name: &'static str,
    wire: &'static str,
    /// The response texts, in order.
    answers: &'static [&'static str],
    seen: &'static [&'static str],
    /// Whether the connection is closed after them (else a next request is served).
    closes: bool,
    /// The `linger` flag afterwards.
    linger: bool,
}

const EARLY: &[Early] = &[
    Early {
        name: "Content-Length body all buffered: discarded, the connection goes on",
        wire: "POST /early HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
        answers: &["HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\nearly"],
        seen: &["POST /early unread", "GET /b <>"],
        closes: false,
        linger: false,
    },
    Early {
        name: "chunked body all buffered, trailers too: discarded, the connection goes on",
        wire: "POST /early HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx: y\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        answers: &["HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\nearly"],
        seen: &["POST /early unread", "GET /b <>"],
        closes: false,
        linger: false,
    },
    Early {
        // A request inside the body is body, never a request.
        name: "a body that looks like a request is discarded as body",
        wire: "POST /early HTTP/1.1\r\ncontent-length: 24\r\n\r\nGET /smuggled HTTP/1.1\r\nGET /b HTTP/1.1\r\n\r\n",
        answers: &["HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\nearly"],
        seen: &["POST /early unread", "GET /b <>"],
        closes: false,
        linger: false,
    },
    Early {
        name: "Content-Length body still on the wire: close, lingering",
        wire: "POST /early HTTP/1.1\r\ncontent-length: 5\r\n\r\nhe",
        answers: &[
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
        ],
        seen: &["POST /early unread"],
        closes: true,
        linger: true,
    },
    Early {
        name: "chunked body without its last chunk: close, lingering",
        wire: "POST /early HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        answers: &[
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
        ],
        seen: &["POST /early unread"],
        closes: true,
        linger: true,
    },
    Early {
        // The client waits for a 100 that never comes: no body follows, and none is read.
        name: "Expect: 100-continue never wanted: no 100, close, lingering",
        wire: "POST /early HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
        answers: &[
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
        ],
        seen: &["POST /early unread"],
        closes: true,
        linger: true,
    },
];

#[tokio::test(start_paused = true)]
async fn an_early_answer_discards_a_buffered_body_and_closes_on_one_still_arriving() {
    for e in EARLY {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        c.send(e.wire.as_bytes()).await;
        for (i, want) in e.answers.iter().enumerate() {
            assert_eq!(c.response().await.text, *want, "{}: answer {i}", e.name);
        }
        if e.closes {
            c.assert_eof().await;
            c.served().await;
        } else {
            assert_eq!(c.response().await.text, ok("GET /b <>"), "{}", e.name);
            c.assert_quiet().await;
        }
        assert_eq!(probe.seen(), e.seen, "{}", e.name);
        assert_eq!(c.linger(), e.linger, "{}: linger", e.name);
    }
}

#[tokio::test(start_paused = true)]
async fn expect_100_continue_is_answered_when_the_service_reads_the_body() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(b"PUT /up HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        .await;
    let cont = c.response().await;
    assert_eq!(cont.text, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(cont.date, None);
    c.send(b"hello").await;
    assert_eq!(c.response().await.text, ok("PUT /up <hello>"));
    c.assert_quiet().await;
    assert_eq!(probe.seen(), ["PUT /up <hello>"]);
    assert!(!c.linger());
}

// ---------------------------------------------------------------------------------------
// Upgrades

#[tokio::test(start_paused = true)]
async fn a_101_hands_the_connection_over_with_the_bytes_behind_the_head() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    // "early" is sent right behind the head, before any 101: it must reach the tunnel.
    c.send(b"GET /upgrade HTTP/1.1\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nearly")
        .await;
    let switched = c.response().await;
    assert_eq!(
        switched.text,
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
    );
    assert!(switched.date.is_some());
    // The connection's own future ends at the handoff; the IO lives on in the tunnel.
    c.served().await;
    assert_eq!(probe.next().await, "GET /upgrade upgrading");
    assert_eq!(probe.next().await, "tunnel read \"early\"");
    assert_eq!(c.take(5).await, b"early");
    // Both ways, after the handoff: what looks like a request is tunnel data now.
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.take(18).await, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        probe.next().await,
        "tunnel read \"GET / HTTP/1.1\\r\\n\\r\\n\""
    );
    // The client's close ends the tunnel, which closes its side.
    c.io.shutdown().await.unwrap();
    assert_eq!(probe.next().await, "tunnel closed");
    c.assert_eof().await;
    // The tunnel's own close must not linger.
    assert!(!c.linger());
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_request_answered_otherwise_stays_http() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(
        b"GET /no-upgrade HTTP/1.1\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(c.response().await.text, ok("GET /no-upgrade <>"));
    assert_eq!(c.response().await.text, ok("GET /b <>"));
    c.assert_quiet().await;
    let mut seen = probe.seen();
    seen.sort();
    assert_eq!(
        seen,
        [
            "GET /b <>",
            "GET /no-upgrade <>",
            "the connection was not upgraded"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn requests_that_cannot_upgrade_carry_no_on_upgrade() {
    // HTTP/1.0, or a body (whose bytes would go down the tunnel): no OnUpgrade, so the
    // service cannot answer 101 with a handoff.
    for (wire, seen) in [
        (
            "GET /upgrade HTTP/1.0\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            "GET /upgrade without OnUpgrade",
        ),
        (
            "POST /upgrade HTTP/1.1\r\nupgrade: echo\r\ncontent-length: 2\r\n\r\nhi",
            "POST /upgrade without OnUpgrade",
        ),
    ] {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        c.send(wire.as_bytes()).await;
        let resp = c.response().await;
        assert_eq!(&resp.status_line[9..], "200 OK", "{wire:?}");
        assert_eq!(resp.body, b"no upgrade asked", "{wire:?}");
        assert_eq!(probe.seen(), [seen]);
    }
}

// ---------------------------------------------------------------------------------------
// Half-close: the client shuts its write side down

struct HalfClose {
    name: &'static str,
    wire: &'static str,
    /// What arrives before the end of the connection.
    answer: Option<&'static str>,
    seen: &'static [&'static str],
    linger: bool,
}

const HALF_CLOSES: &[HalfClose] = &[
    HalfClose {
        name: "after a complete request answered at once: the answer, then the end",
        wire: "GET /a HTTP/1.1\r\n\r\n",
        answer: Some("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nGET /a <>"),
        seen: &["GET /a <>"],
        linger: false,
    },
    HalfClose {
        name: "after a complete request with its body",
        wire: "POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi",
        answer: Some("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nPOST /a <hi>"),
        seen: &["POST /a <hi>"],
        linger: false,
    },
    HalfClose {
        // nginx's default too: a client that closes while served has left (a 499).
        name: "after a complete request not answered yet: abandoned, no answer",
        wire: "GET /wait HTTP/1.1\r\n\r\n",
        answer: None,
        seen: &["GET /wait waiting", "GET /wait abandoned"],
        linger: false,
    },
    HalfClose {
        name: "inside a body: the service sees it incomplete, its answer closes",
        wire: "POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhe",
        answer: Some(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 59\r\nconnection: close\r\n\r\nthe client closed the connection before the end of the body",
        ),
        seen: &["POST /a failed: the client closed the connection before the end of the body"],
        linger: true,
    },
    HalfClose {
        name: "inside a head: closed without an answer, lingering on the unread bytes",
        wire: "GET /a HTTP/1.1\r\nhost:",
        answer: None,
        seen: &[],
        linger: true,
    },
    HalfClose {
        name: "before any byte: closed quietly",
        wire: "",
        answer: None,
        seen: &[],
        linger: false,
    },
];

#[tokio::test(start_paused = true)]
async fn a_client_half_close_ends_the_connection_after_what_it_completed() {
    for h in HALF_CLOSES {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        c.send(h.wire.as_bytes()).await;
        c.io.shutdown().await.unwrap();
        if let Some(answer) = h.answer {
            assert_eq!(c.response().await.text, answer, "{}", h.name);
        }
        c.assert_eof().await;
        c.served().await;
        assert_eq!(probe.seen(), h.seen, "{}", h.name);
        assert_eq!(c.linger(), h.linger, "{}: linger", h.name);
    }
}

// ---------------------------------------------------------------------------------------
// Refused heads

struct Refusal {
    name: &'static str,
    wire: String,
    status_line: &'static str,
    /// A valid request is sent right behind it (and must never be served).
    follow: bool,
}

fn refusals() -> Vec<Refusal> {
    let big = "x".repeat(1100);
    vec![
        Refusal {
            name: "not a request line",
            wire: "GARBAGE\r\n\r\n".into(),
            status_line: "HTTP/1.1 400 Bad Request",

            follow: true,
        },
        Refusal {
            name: "HTTP/2.0 in an HTTP/1 request line",
            wire: "GET / HTTP/2.0\r\n\r\n".into(),
            status_line: "HTTP/1.1 400 Bad Request",

            follow: true,
        },
        Refusal {
            name: "Content-Length and Transfer-Encoding",
            wire: "POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\nabc"
                .into(),
            status_line: "HTTP/1.1 400 Bad Request",

            follow: true,
        },
        Refusal {
            name: "a coding besides chunked",
            wire: "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n".into(),
            status_line: "HTTP/1.1 501 Not Implemented",

            follow: true,
        },
        Refusal {
            name: "a complete head over max_head",
            wire: format!("GET / HTTP/1.1\r\nx: {big}\r\n\r\n"),
            status_line: "HTTP/1.1 431 Request Header Fields Too Large",
            follow: true,
        },
        Refusal {
            // Refused as soon as it is too long, not when (if ever) it ends.
            name: "an unfinished head already over max_head",
            wire: format!("GET /{big}"),
            status_line: "HTTP/1.1 431 Request Header Fields Too Large",
            follow: false,
        },
    ]
}

#[tokio::test(start_paused = true)]
async fn a_refused_head_gets_its_status_and_the_connection_closes() {
    for r in refusals() {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        let after = if r.follow {
            "GET /after HTTP/1.1\r\n\r\n"
        } else {
            ""
        };
        c.send(format!("{}{after}", r.wire).as_bytes()).await;
        let resp = c.response().await;
        assert_eq!(resp.status_line, r.status_line, "{}", r.name);
        assert_eq!(resp.header("connection"), Some("close"), "{}", r.name);
        c.assert_eof().await;
        c.served().await;
        assert_eq!(probe.seen(), Vec::<String>::new(), "{}", r.name);
        // The client may still be sending: the close must not reset the answer.
        assert!(c.linger(), "{}: linger", r.name);
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_head_behind_a_good_one_is_refused_after_its_answer() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(b"GET /a HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok("GET /a <>"));
    let refused = c.response().await;
    assert_eq!(refused.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(refused.header("connection"), Some("close"));
    c.assert_eof().await;
    assert_eq!(probe.seen(), ["GET /a <>"]);
}

// ---------------------------------------------------------------------------------------
// header_timeout

#[tokio::test(start_paused = true)]
async fn a_head_not_complete_within_header_timeout_ends_the_connection_without_an_answer() {
    // (name, bytes sent at once, linger afterwards)
    for (name, sent, linger) in [
        ("nothing sent", "", false),
        ("a partial head", "GET /a HTTP/1.1\r\nhost: x\r\n", true),
    ] {
        let (svc, mut probe) = service();
        let t0 = Instant::now();
        let mut c = start(svc, limits());
        c.send(sent.as_bytes()).await;
        // Not a moment before the timeout...
        let early = timeout(
            HEADER_TIMEOUT - Duration::from_millis(1),
            c.io.read_buf(&mut c.buf),
        )
        .await;
        assert!(early.is_err(), "{name}: {early:?}");
        // ...and then the end, with no 408 or anything else.
        c.assert_eof().await;
        assert_eq!(t0.elapsed(), HEADER_TIMEOUT, "{name}");
        c.served().await;
        assert_eq!(probe.seen(), Vec::<String>::new(), "{name}");
        assert_eq!(c.linger(), linger, "{name}: linger");
    }
}

#[tokio::test(start_paused = true)]
async fn header_timeout_counts_from_the_end_of_the_previous_response_not_per_byte() {
    let (svc, mut probe) = service();
    let t0 = Instant::now();
    let mut c = start(svc, limits());
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.send(b"GET /a HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok("GET /a <>"));
    // A client dripping its next head a byte a second is still cut off at the deadline:
    // bytes arriving do not extend it.
    let drip = b"GET /b HTTP/1.1\r\n";
    for &byte in &drip[..9] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.send(&[byte]).await;
    }
    c.assert_eof().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(4) + HEADER_TIMEOUT);
    c.served().await;
    assert_eq!(probe.seen(), ["GET /a <>"]);
    assert!(c.linger(), "closed on a partial head");
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_closes_an_idle_connection_at_once() {
    for served_before in [false, true] {
        let (svc, mut probe) = service();
        let t0 = Instant::now();
        let mut c = start(svc, limits());
        if served_before {
            c.send(b"GET /a HTTP/1.1\r\n\r\n").await;
            assert_eq!(c.response().await.text, ok("GET /a <>"));
        }
        c.assert_quiet().await;
        c.graceful_shutdown();
        c.assert_eof().await;
        // At once: not at the head timeout.
        assert_eq!(t0.elapsed(), QUIET, "served before: {served_before}");
        c.served().await;
        let want: &[&str] = if served_before { &["GET /a <>"] } else { &[] };
        assert_eq!(probe.seen(), want);
        assert!(!c.linger());
    }
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_lets_the_request_in_flight_finish_with_connection_close() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    // A request pipelined behind the one in flight is never served.
    c.send(b"GET /wait HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(probe.next().await, "GET /wait waiting");
    c.graceful_shutdown();
    c.assert_quiet().await;
    probe.gate.add_permits(1);
    assert_eq!(c.response().await.text, ok_close("GET /wait <>"));
    c.assert_eof().await;
    c.served().await;
    assert_eq!(probe.seen(), ["GET /wait <>"]);
    // The pipelined request was left unread: the close lingers.
    assert!(c.linger());
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_waits_for_a_head_already_begun_and_answers_it_with_close() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(b"GET /a HTTP/1.1\r\n").await;
    Client::settle().await;
    c.graceful_shutdown();
    c.assert_quiet().await;
    c.send(b"host: x\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok_close("GET /a <>"));
    c.assert_eof().await;
    c.served().await;
    assert_eq!(probe.seen(), ["GET /a <>"]);
}

//! Unit tests of the HTTP/1.1 connection loop (`h1::Connection`) as a state machine: raw
//! bytes in over an in-memory duplex, exact bytes out — pipelining, keep-alive and close,
//! early answers to unread bodies, upgrades, half-close, refused heads, the head timeout
//! and graceful shutdown.
//!
//! Every test runs on a paused clock: "nothing more arrives" is a read that times out
//! when the runtime has nothing else to do, never a wall-clock sleep.

mod framing;
mod lifecycle;

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

use super::{Connection, HeadError, Limits, OnUpgrade, RequestBody};

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
    Connection::new(io, BytesMut::from(read), service, refused, limits, linger)
}

/// The caller's answer to a refused head (the server's is a JSON error): its status only.
fn refused(e: HeadError) -> Response<Full<Bytes>> {
    let status = match e {
        HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        HeadError::Bad(_) => StatusCode::BAD_REQUEST,
        HeadError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(b"refused")));
    *resp.status_mut() = status;
    resp
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

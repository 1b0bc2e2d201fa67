//! Shared test harness: a generated CA and certificates, mock upstream replicas that record
//! what they receive, doorman started in-process on port 0, TLS clients (h1 and h2) that trust
//! the test CA, and a real redis-server on a free port. Everything talks to 127.0.0.1 only.
#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod idp;
pub mod jwks;
pub mod jwt;
pub mod sentinel;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use doorman::server::{self, BoundAddrs, Listeners};
use doorman::snapshot::Snapshot;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Every awaited step in a test is bounded by this, so a bug fails instead of hanging.
pub const STEP: Duration = Duration::from_secs(20);

pub async fn within<F: std::future::Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

// ---------------------------------------------------------------- certificates

/// A test CA that signs leaf certificates, written as PEM files into a temp dir.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate on disk.
pub struct Leaf {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub der: CertificateDer<'static>,
}

impl TestPki {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "doorman test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        TestPki {
            dir: tempfile::tempdir().unwrap(),
            ca_der: issuer.der().clone(),
            ca_pem: issuer.pem(),
            issuer,
        }
    }

    /// Issue a leaf for `names`, written as `<file>.crt` (leaf + CA) and `<file>.key`.
    pub fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.path().join(format!("{file}.crt"));
        let key_path = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca_pem)).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf {
            cert_path,
            key_path,
            der: cert.der().clone(),
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        let p = self.dir.path().join("ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// A client config trusting this CA, offering `alpn`, limited to `versions`.
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        self.client_config_with(
            alpn,
            versions,
            rustls::crypto::aws_lc_rs::default_provider(),
        )
    }

    /// `client_config` with a crypto provider of the test's own (its suites, their order).
    pub fn client_config_with(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
        provider: rustls::crypto::CryptoProvider,
    ) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut cfg = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

// ---------------------------------------------------------------- mock replicas

/// What a replica saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    /// The body was read to its end (false: the request was cut off mid-body).
    pub complete: bool,
}

/// A mock upstream replica on 127.0.0.1:0. It tags every response with `x-upstream-id` and
/// records each request. Paths with special behaviour:
/// - `/sleep/{ms}`: answer after that long
/// - `/bytes/{n}`: stream n bytes back (chunked, 64 KiB chunks)
/// - `/status/{code}`: answer with that status
/// - `/hop`: answer with hop-by-hop headers that must not reach the client
/// - `/gate`: send "first", wait for `Replica::open_gate`, then send "second"
/// - `/drip/{pause_ms}/{n}`: send "first", pause, then n chunks "drip" 100ms apart
/// - `/unique...`: read the body, answer 201 with a body unique to this call
///   (`{"call":N,"len":L}`), plus content-type, set-cookie and x-custom headers
/// - `/sleep-once/{ms}`: the first such call sleeps, later ones answer at once
/// - `/health`: 200 or 503 as set by `set_healthy` (not recorded)
/// - `/abort...`: read the body, record the request, then drop the connection unanswered
/// - `/ws`: accept an HTTP/1.1 upgrade and echo bytes on the upgraded connection
/// - `/close`: answer `200 closing` with `Connection: close`, then close the connection
/// - anything else: `200 ok` after reading the whole body (its length goes in `Seen`)
#[derive(Clone)]
pub struct Replica {
    pub id: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub connections: Arc<AtomicUsize>,
    /// Connections that have ended (closed by either side).
    pub closed: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    calls: Arc<AtomicUsize>,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    /// Notified when a `/upload-gate` request has received its first body chunk.
    pub first_chunk: Arc<Notify>,
    killed: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Replica {
    pub async fn start(id: &str) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let replica = Replica {
            id: id.to_string(),
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            connections: Arc::default(),
            closed: Arc::default(),
            gate: Arc::default(),
            calls: Arc::default(),
            healthy: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            first_chunk: Arc::default(),
            killed: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let r = replica.clone();
        tokio::spawn(async move {
            let mut killed = r.killed.subscribe();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = killed.wait_for(|k| *k) => return,
                };
                let Ok((tcp, _)) = accepted else {
                    continue;
                };
                r.connections.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let r = r.clone();
                let mut killed = r.killed.subscribe();
                tokio::spawn(async move {
                    let answering = r.clone();
                    let svc = service_fn(move |req| answering.clone().answer(req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades();
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                    r.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        replica
    }

    /// Die as a crashed process would: the listener closes (connects are refused) and every
    /// open connection drops, mid-request or not. Not undone.
    pub fn kill(&self) {
        self.killed.send_replace(true);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn set_healthy(&self, up: bool) {
        self.healthy.store(up, Ordering::SeqCst);
    }

    pub fn open_gate(&self) {
        self.gate.notify_one();
    }

    fn record<B>(&self, req: &Request<B>, body_len: u64) {
        self.record_as(req, body_len, true);
    }

    fn record_as<B>(&self, req: &Request<B>, body_len: u64, complete: bool) {
        self.seen.lock().unwrap().push(Seen {
            method: req.method().clone(),
            uri: req.uri().to_string(),
            version: req.version(),
            headers: req.headers().clone(),
            body_len,
            complete,
        });
    }

    /// Requests whose body arrived whole.
    pub fn complete_count(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.complete)
            .count()
    }

    async fn answer(self, mut req: Request<Incoming>) -> Result<Response<TestBody>, BoxError> {
        let path = req.uri().path().to_string();
        let mut resp = if path.starts_with("/abort") {
            let (parts, body) = req.into_parts();
            let n = body
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            self.record(&Request::from_parts(parts, ()), n as u64);
            // An error from the service makes hyper drop the connection without a response.
            return Err("reset on purpose".into());
        } else if path == "/health" {
            let mut r = Response::new(full("health"));
            if !self.healthy.load(Ordering::SeqCst) {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        } else if let Some(ms) = path.strip_prefix("/sleep/") {
            self.record(&req, 0);
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            Response::new(full("slept"))
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            self.record(&req, 0);
            Response::new(repeat_body(n.parse().unwrap(), 64 * 1024))
        } else if let Some(code) = path.strip_prefix("/status/") {
            self.record(&req, 0);
            let mut r = Response::new(full("status"));
            *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
            r
        } else if path == "/close" {
            self.record(&req, 0);
            let mut r = Response::new(full("closing"));
            r.headers_mut()
                .insert("connection", "close".parse().unwrap());
            r
        } else if path == "/hop" {
            self.record(&req, 0);
            let mut r = Response::new(full("hop"));
            let h = r.headers_mut();
            h.insert("connection", "x-secret-hop".parse().unwrap());
            h.insert("x-secret-hop", "1".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-connection", "keep-alive".parse().unwrap());
            h.insert("trailer", "x-checksum".parse().unwrap());
            h.insert("upgrade", "h2c".parse().unwrap());
            h.insert("x-end-to-end", "kept".parse().unwrap());
            h.insert("set-cookie", "a=b".parse().unwrap());
            r
        } else if path == "/gate" {
            self.record(&req, 0);
            let gate = self.gate.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                gate.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await;
            });
            Response::new(BoxBody::new(http_body_util::StreamBody::new(
                tokio_stream_from(rx),
            )))
        } else if path.starts_with("/unique") {
            let (parts, body) = req.into_parts();
            let n = body
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            self.record(&Request::from_parts(parts, ()), n as u64);
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut r = Response::new(full(format!("{{\"call\":{call},\"len\":{n}}}")));
            *r.status_mut() = StatusCode::CREATED;
            let h = r.headers_mut();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert("set-cookie", "session=secret".parse().unwrap());
            h.insert("x-custom", "kept".parse().unwrap());
            r
        } else if let Some(ms) = path.strip_prefix("/sleep-once/") {
            self.record(&req, 0);
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
            }
            Response::new(full("done"))
        } else if let Some(rest) = path.strip_prefix("/drip/") {
            self.record(&req, 0);
            let (pause, n) = rest.split_once('/').unwrap();
            let (pause, n): (u64, usize) = (pause.parse().unwrap(), n.parse().unwrap());
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
                tokio::time::sleep(Duration::from_millis(pause)).await;
                for _ in 0..n {
                    let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"drip")))).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            Response::new(BoxBody::new(http_body_util::StreamBody::new(
                tokio_stream_from(rx),
            )))
        } else if path == "/ws" {
            self.record(&req, 0);
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(up) = on_upgrade.await {
                    let mut io = TokioIo::new(up);
                    let mut buf = [0u8; 4096];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            r.headers_mut()
                .insert("connection", "Upgrade".parse().unwrap());
            r
        } else if path == "/upload-gate" {
            // Record the first chunk's arrival, then drain the rest.
            let (parts, mut body) = req.into_parts();
            let mut n = 0u64;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                    if first {
                        first = false;
                        self.first_chunk.notify_one();
                    }
                }
            }
            self.record(&Request::from_parts(parts, ()), n);
            Response::new(full(n.to_string()))
        } else {
            let (parts, body) = req.into_parts();
            let mut n = 0u64;
            let mut body = body;
            let mut complete = true;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => {
                        complete = false;
                        break;
                    }
                }
            }
            self.record_as(&Request::from_parts(parts, ()), n, complete);
            Response::new(full(format!("ok {n}")))
        };
        resp.headers_mut()
            .insert("x-upstream-id", self.id.parse().unwrap());
        Ok(resp)
    }
}

/// An address where nothing listens (bound, then released).
pub async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

// ---------------------------------------------------------------- bodies

pub fn empty() -> TestBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed()
}

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// A body of `total` bytes produced `chunk` bytes at a time, never held whole in memory.
pub fn repeat_body(total: u64, chunk: usize) -> TestBody {
    RepeatBody {
        remaining: total,
        chunk: Bytes::from(vec![b'x'; chunk]),
    }
    .boxed()
}

struct RepeatBody {
    remaining: u64,
    chunk: Bytes,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
}

/// A body fed from a channel: lets a test hold back the rest of a body.
pub fn channel_body() -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
    TestBody,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (
        tx,
        BoxBody::new(http_body_util::StreamBody::new(tokio_stream_from(rx))),
    )
}

/// Adapts an mpsc receiver into a `futures_core::Stream` without pulling in tokio-stream.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> ReceiverStream<T> {
    ReceiverStream(rx)
}

pub struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// Read a whole response body, counting bytes without keeping them when `keep` is false.
pub async fn body_len(mut body: Incoming) -> u64 {
    let mut n = 0u64;
    while let Some(frame) = within("reading response body", body.frame()).await {
        n += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    n
}

pub async fn body_bytes(body: Incoming) -> Bytes {
    within("reading response body", body.collect())
        .await
        .unwrap()
        .to_bytes()
}

// ---------------------------------------------------------------- the proxy

/// doorman running in-process on port 0, stopped through the same shutdown future as signals.
pub struct TestProxy {
    pub addrs: BoundAddrs,
    /// The config the proxy runs, with its listeners at port 0.
    pub text: String,
    pub pki: Arc<TestPki>,
    /// `[server]` and `[[tls.certificates]]`: what `reload_rest` keeps.
    head: String,
    /// Set for proxies started with `start_reloadable`: the config file and its reloader.
    pub config_path: Option<PathBuf>,
    pub reloader: Option<Arc<doorman::reload::Reloader>>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<io::Result<()>>,
}

/// `[[routes]]` + `[upstreams.NAME]` TOML for one group sending `/` to `addrs`.
pub fn group_toml(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let servers: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!(
        "[upstreams.{name}]\nservers = [{}]\n{extra}\n",
        servers.join(", ")
    )
}

pub fn route_toml(prefix: &str, group: &str) -> String {
    format!("[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"{group}\"\n")
}

impl TestProxy {
    /// Start with a default `localhost` certificate; `server_extra` goes in `[server]`,
    /// `rest` holds upstream groups and routes.
    pub async fn start(server_extra: &str, rest: &str) -> TestProxy {
        let pki = Arc::new(TestPki::new());
        let leaf = pki.leaf("localhost", &["localhost", "127.0.0.1"]);
        let tls = cert_toml(&leaf, &["localhost"]);
        Self::start_with(pki, server_extra, &tls, rest).await
    }

    /// Full control: `tls` holds the `[[tls.certificates]]` entries.
    pub async fn start_with(
        pki: Arc<TestPki>,
        server_extra: &str,
        tls: &str,
        rest: &str,
    ) -> TestProxy {
        Self::launch(pki, server_extra, tls, rest, false).await
    }

    /// Like `start`, from a config file that `reload_rest` / `reload_text` rewrite and
    /// reload through the same path as SIGHUP and `POST /reload`.
    pub async fn start_reloadable(server_extra: &str, rest: &str) -> TestProxy {
        let pki = Arc::new(TestPki::new());
        let leaf = pki.leaf("localhost", &["localhost", "127.0.0.1"]);
        let tls = cert_toml(&leaf, &["localhost"]);
        Self::launch(pki, server_extra, &tls, rest, true).await
    }

    pub async fn start_reloadable_with(
        pki: Arc<TestPki>,
        server_extra: &str,
        tls: &str,
        rest: &str,
    ) -> TestProxy {
        Self::launch(pki, server_extra, tls, rest, true).await
    }

    async fn launch(
        pki: Arc<TestPki>,
        server_extra: &str,
        tls: &str,
        rest: &str,
        reloadable: bool,
    ) -> TestProxy {
        let head = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nplain_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{server_extra}\n{tls}\n"
        );
        let text = format!("{head}{rest}");
        let config = doorman::config::parse(&text, std::path::Path::new("test.toml"))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let addrs = listeners.addrs().unwrap();
        let snapshot = Snapshot::build(&config).unwrap().into_shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async move {
            let _ = stopped.await;
        };
        let (config_path, reloader, done) = if reloadable {
            let path = pki
                .dir
                .path()
                .join(format!("proxy-{:x}.toml", fastrand::u64(..)));
            std::fs::write(&path, &text).unwrap();
            let (reloader, requests) = doorman::reload::Reloader::new(&path, &text);
            let done = tokio::spawn(server::run_reloadable(
                listeners,
                snapshot,
                stopped,
                Some((reloader.clone(), requests)),
            ));
            (Some(path), Some(reloader), done)
        } else {
            (
                None,
                None,
                tokio::spawn(server::run(listeners, snapshot, stopped)),
            )
        };
        TestProxy {
            addrs,
            text,
            pki,
            head,
            config_path,
            reloader,
            stop: Some(stop),
            done,
        }
    }

    /// Rewrite the config file with the same `[server]` and TLS and a new `rest`, and reload.
    pub async fn reload_rest(&self, rest: &str) -> doorman::reload::ReloadStatus {
        self.reload_text(&format!("{}{rest}", self.head)).await
    }

    /// Rewrite the whole config file and reload.
    pub async fn reload_text(&self, text: &str) -> doorman::reload::ReloadStatus {
        let path = self
            .config_path
            .as_ref()
            .expect("started with start_reloadable");
        std::fs::write(path, text).unwrap();
        within("reload", self.reloader.as_ref().unwrap().reload())
            .await
            .expect("the server is running")
    }

    /// Begin graceful shutdown (returns at once).
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Shut down and wait for `server::run` to return.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        within("server::run to return", &mut self.done)
            .await
            .unwrap()
            .unwrap();
    }

    pub async fn h1(&self) -> Client {
        Client::connect(self.addrs.tls, &self.pki, "localhost", &[b"http/1.1"])
            .await
            .unwrap()
    }

    pub async fn h2(&self) -> Client {
        Client::connect(self.addrs.tls, &self.pki, "localhost", &[b"h2"])
            .await
            .unwrap()
    }

    /// A client without Nagle's algorithm, for tests that measure latency: a head and a
    /// body written apart must not wait for a delayed ACK (40 ms). Not the default, so the
    /// other tests keep the timing of an ordinary client.
    pub async fn fast(&self, alpn: &'static [u8]) -> Client {
        let cfg = self.pki.client_config(&[alpn], &[&rustls::version::TLS13]);
        let tcp = TcpStream::connect(self.addrs.tls).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost".to_string()).unwrap();
        let tls = TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Client::over(TokioIo::new(tls), h2).await
    }

    /// One GET over a fresh HTTP/1.1 connection.
    pub async fn get(&self, path: &str) -> (Response<()>, Bytes) {
        let mut c = self.h1().await;
        c.get(path).await
    }
}

pub fn cert_toml(leaf: &Leaf, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [{}]\n",
        leaf.cert_path.display(),
        leaf.key_path.display(),
        names.join(", ")
    )
}

// ---------------------------------------------------------------- clients

pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

/// One HTTP connection to doorman, HTTP/1.1 or HTTP/2 as ALPN decided.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<TestBody>),
    H2(hyper::client::conn::http2::SendRequest<TestBody>),
}

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        pki: &TestPki,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> io::Result<Client> {
        let cfg = pki.client_config(alpn, &[&rustls::version::TLS13]);
        let tls = within("TLS connect", tls_connect(addr, cfg, server_name)).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok(Self::over(TokioIo::new(tls), h2).await)
    }

    /// Plain HTTP/1.1 (for the plain listener).
    pub async fn plain(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Self::over(TokioIo::new(tcp), false).await
    }

    pub async fn over<I>(io: I, h2: bool) -> Client
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn.with_upgrades());
            Client::H1(send)
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Client::H2(_))
    }

    /// A request builder with the right target form for the protocol.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        match self {
            Client::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost"),
            Client::H2(_) => Request::builder()
                .method(method)
                .uri(format!("https://localhost{path}")),
        }
    }

    pub async fn send(&mut self, req: Request<TestBody>) -> hyper::Result<Response<Incoming>> {
        within("response head", async {
            match self {
                Client::H1(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
                Client::H2(s) => {
                    s.ready().await?;
                    s.send_request(req).await
                }
            }
        })
        .await
    }

    /// Send and read the whole response.
    pub async fn send_collect(&mut self, req: Request<TestBody>) -> (Response<()>, Bytes) {
        let resp = self.send(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        (Response::from_parts(parts, ()), body_bytes(body).await)
    }

    pub async fn get(&mut self, path: &str) -> (Response<()>, Bytes) {
        let req = self.request(Method::GET, path).body(empty()).unwrap();
        self.send_collect(req).await
    }

    /// A WebSocket handshake on `path` (HTTP/1.1); asserts 101 and returns the tunnel.
    pub async fn open_websocket(&mut self, path: &str) -> TokioIo<hyper::upgrade::Upgraded> {
        let req = self
            .request(Method::GET, path)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13")
            .body(empty())
            .unwrap();
        let resp = self.send(req).await.unwrap();
        assert_eq!(resp.status(), 101);
        assert_eq!(resp.headers()["upgrade"], "websocket");
        assert_eq!(resp.headers()["connection"], "upgrade");
        TokioIo::new(within("upgrade", hyper::upgrade::on(resp)).await.unwrap())
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Client::H1(s) => s.is_closed(),
            Client::H2(s) => s.is_closed(),
        }
    }
}

/// Send raw bytes on a plain TCP connection and read until the server closes or `limit`
/// bytes arrive.
/// Asserts a JSON error response: its status, error text and request id, and that it names
/// no address.
pub fn assert_json_error(status: u16, resp: &http::Response<()>, body: &[u8], want: (u16, &str)) {
    assert_eq!(
        status,
        want.0,
        "status; body: {}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(
        json,
        serde_json::json!({"error": want.1, "request_id": rid}),
        "error body"
    );
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains("127.0.0.1"), "address leaked: {text}");
}

/// The status code of a raw HTTP/1.1 response (`raw_exchange`'s output).
pub fn status_of(raw: &str) -> u16 {
    raw.get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"))
}

/// One recording replica behind a proxy that sends every path to it.
pub async fn proxy_with_replica() -> (Replica, TestProxy) {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    (r, p)
}

pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within("raw response", tcp.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                // One response is all these tests need: stop at the end of its body.
                if let Some(end) = find(&out, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok());
                    if let Some(len) = len
                        && out.len() >= end + 4 + len
                    {
                        break;
                    }
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- redis

/// A real redis-server on a free port, killed on drop. Panics (never skips) when
/// redis-server is not installed: scripts/test.sh installs it.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => panic!(
                    "redis-server is required by this test but could not be started ({e}); \
                     run scripts/test.sh, which installs it, or `apt-get install redis-server`"
                ),
            };
            for _ in 0..100 {
                if redis_ping(port).is_ok() {
                    return RedisServer {
                        port,
                        child,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken between probe and start: try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start answering PING on a free port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} redis-server");
    }

    /// SIGSTOP: the server stays connected but answers nothing.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kill the server (its data is gone: it keeps nothing on disk) and start a fresh one on
    /// the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..100 {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self._dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server restarts");
            self.child = child;
            for _ in 0..50 {
                if redis_ping(self.port).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    /// Run one command with redis-cli-like simplicity (through the redis crate).
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut conn).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PING over RESP with std sockets: returns the raw reply.
pub fn redis_ping(port: u16) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// `GET /status` as JSON from `p`'s admin listener.
pub async fn status_json(p: &TestProxy) -> serde_json::Value {
    let mut admin = Client::plain(p.addrs.admin).await;
    let req = http::Request::get("/status")
        .header("host", "localhost")
        .header("accept", "application/json")
        .body(empty())
        .unwrap();
    let (resp, body) = within("GET /status", admin.send_collect(req)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    serde_json::from_slice(&body).unwrap()
}

/// The value of one `/metrics` series, by its exact name and labels; 0 when absent.
pub async fn metric(p: &TestProxy, series: &str) -> f64 {
    let mut admin = Client::plain(p.addrs.admin).await;
    let (resp, body) = within("GET /metrics", admin.get("/metrics")).await;
    assert_eq!(resp.status(), 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A counter's value (`metric`, which must be a whole number).
pub async fn count(p: &TestProxy, series: &str) -> u64 {
    let v = metric(p, series).await;
    assert_eq!(v.fract(), 0.0, "{series} = {v}");
    v as u64
}

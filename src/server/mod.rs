//! Listeners, the accept loops, the connection limit, TLS accept, hyper serving and the
//! graceful drain. `run(listeners, snapshot, shutdown)` takes shutdown as a future so tests,
//! signals and (later) reloads share one path.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::Either;
use http::Request;
use hyper::body::Incoming;
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admin::{self, AdminState};
use crate::config::ServerSettings;
use crate::h1;
use crate::idle::{self, Tracked};
use crate::metrics::{GaugeGuard, Metrics, ProtocolLabels};
use crate::pipeline::{self, ConnInfo, DownstreamBody, Phase, reached};
use crate::reload::{self, ReloadRequests, Reloader};
use crate::snapshot::SharedSnapshot;

/// The sockets doorman serves, bound before `run` so callers (tests, `demo`) can bind port 0
/// and learn the real addresses, and so a bind failure is reported before anything starts.
#[derive(Debug)]
pub struct Listeners {
    pub tls: TcpListener,
    pub plain: Option<TcpListener>,
    pub admin: TcpListener,
}

pub use crate::admin::BoundAddrs;

impl Listeners {
    pub async fn bind(settings: &ServerSettings) -> io::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind {what} {addr}: {e}")))
        };
        Ok(Listeners {
            tls: bind(settings.listen, "server.listen").await?,
            plain: match settings.plain_listen {
                Some(a) => Some(bind(a, "server.plain_listen").await?),
                None => None,
            },
            admin: bind(settings.admin_listen, "server.admin_listen").await?,
        })
    }

    pub fn addrs(&self) -> io::Result<BoundAddrs> {
        Ok(BoundAddrs {
            tls: self.tls.local_addr()?,
            plain: self.plain.as_ref().map(|l| l.local_addr()).transpose()?,
            admin: self.admin.local_addr()?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tls,
    Plain,
}

/// After the grace period, connections get this long to notice `Phase::Closing` and go.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A running accept loop and the way to stop it (its listener closes when it returns).
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(());
        self.task
    }
}

/// Serve until `shutdown` resolves, then stop accepting, drain for up to `shutdown_grace`,
/// close whatever is left, and return.
pub async fn run(
    listeners: Listeners,
    snapshot: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_reloadable(listeners, snapshot, shutdown, None).await
}

/// `run`, also applying the reloads asked of `reloader` (SIGHUP, `POST /reload`): each one
/// is prepared off to the side and, when complete, swapped in while requests keep flowing.
pub async fn run_reloadable(
    listeners: Listeners,
    snapshot: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
    reload: Option<(Arc<Reloader>, ReloadRequests)>,
) -> io::Result<()> {
    let addrs = listeners.addrs()?;
    let max = u32::try_from(snapshot.load().settings.max_connections).unwrap_or(u32::MAX);
    let limit = Arc::new(Semaphore::new(max as usize));
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let (reloader, mut requests) = match reload {
        Some((r, q)) => (Some(r), Some(q.0)),
        None => (None, None),
    };
    let admin_state = Arc::new(AdminState::new(reloader.clone(), addrs));
    // Per-replica totals every 5 s, for the status page's recent error rates.
    let sampler = {
        let (state, snapshot) = (admin_state.clone(), snapshot.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                state.sample(&snapshot.load());
            }
        })
    };

    let accepting = |listener: TcpListener, kind: Kind| {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            kind,
            snapshot.clone(),
            limit.clone(),
            phase_rx.clone(),
            stopped,
        ));
        Running { stop, task }
    };
    let admin = |listener: TcpListener| {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(admin::serve(
            listener,
            admin_state.clone(),
            snapshot.clone(),
            stopped,
        ));
        Running { stop, task }
    };

    if let Some(r) = &reloader {
        snapshot.load().metrics.set_config(&r.status().config_hash);
    }
    // Listeners are bound (before `run`) and the snapshot is built: ready from the first
    // answer the admin listener gives.
    admin_state.ready.store(true, Ordering::Release);
    let mut admin_loop = admin(listeners.admin);
    let mut tls_loop = accepting(listeners.tls, Kind::Tls);
    let mut plain_loop = listeners.plain.map(|l| accepting(l, Kind::Plain));
    info!(listen = %addrs.tls, plain_listen = ?addrs.plain, admin_listen = %addrs.admin, "doorman ready");

    tokio::pin!(shutdown);
    loop {
        let next_reload = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(reply) = next_reload => {
                let Some(reloader) = &reloader else { continue };
                let current = snapshot.load_full();
                let outcome = match reload::prepare(reloader.path(), &current).await {
                    Ok(p) => {
                        // Nothing can fail from here: settings of a kept store apply, then
                        // one store — requests from here on see the new snapshot, running
                        // ones keep the one they started with.
                        p.snapshot.commit();
                        let groups = &p.snapshot.groups;
                        p.snapshot.metrics.retain(
                            groups
                                .iter()
                                .flat_map(|g| g.servers.iter().map(|s| (&g.label, s.address))),
                            groups.iter().map(|g| &g.label),
                        );
                        snapshot.store(Arc::new(p.snapshot));
                        // New sockets start accepting before the old ones close.
                        let moved = |f: &dyn Fn(&mut BoundAddrs)| {
                            if let Some(a) = admin_state.listeners.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                                f(a);
                            }
                        };
                        if let Some(l) = p.tls {
                            info!(listen = ?l.local_addr().ok(), "TLS listener moved");
                            if let Ok(a) = l.local_addr() {
                                moved(&|b| b.tls = a);
                            }
                            std::mem::replace(&mut tls_loop, accepting(l, Kind::Tls)).stop();
                        }
                        if let Some(l) = p.plain {
                            let a = l.as_ref().and_then(|l| l.local_addr().ok());
                            info!(plain_listen = ?a, "plain listener moved");
                            moved(&|b| b.plain = a);
                            let new = l.map(|l| accepting(l, Kind::Plain));
                            if let Some(old) = std::mem::replace(&mut plain_loop, new) {
                                old.stop();
                            }
                        }
                        if let Some(l) = p.admin {
                            info!(admin_listen = ?l.local_addr().ok(), "admin listener moved");
                            if let Ok(a) = l.local_addr() {
                                moved(&|b| b.admin = a);
                            }
                            std::mem::replace(&mut admin_loop, admin(l)).stop();
                        }
                        Ok(p.hash)
                    }
                    Err(errors) => Err(errors),
                };
                let metrics = snapshot.load().metrics.clone();
                Metrics::count(&metrics.reloads, if outcome.is_ok() { "ok" } else { "failure" });
                if let Ok(hash) = &outcome {
                    metrics.set_config(hash);
                }
                let _ = reply.send(reloader.record(outcome));
            }
        }
    }

    // Reloads asked for from now on get "shutting down" instead of waiting forever.
    drop(requests);
    admin_state.ready.store(false, Ordering::Release);
    let _ = phase_tx.send(Phase::Draining);
    let _ = tls_loop.stop().await;
    if let Some(l) = plain_loop {
        let _ = l.stop().await;
    }
    // The grace period as configured now (a reload may have changed it).
    let grace = snapshot.load().settings.shutdown_grace;
    let open = |l: &Semaphore| max as usize - l.available_permits();
    info!(open_connections = open(&limit), ?grace, "draining");
    // Every connection (and upgraded tunnel) holds one permit: all permits back = all done.
    if tokio::time::timeout(grace, limit.acquire_many(max))
        .await
        .is_ok()
    {
        info!("drained");
    } else {
        warn!(
            still_open = open(&limit),
            "shutdown grace expired; closing remaining connections"
        );
        let _ = phase_tx.send(Phase::Closing);
        if tokio::time::timeout(CLOSE_WAIT, limit.acquire_many(max))
            .await
            .is_err()
        {
            warn!(
                still_open = open(&limit),
                "connections did not close in time"
            );
        }
    }
    admin_loop.stop().abort();
    sampler.abort();
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    snapshot: SharedSnapshot,
    limit: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
    mut stop: oneshot::Receiver<()>,
) {
    configure_listener(&listener);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = reached(&mut phase, Phase::Draining) => return,
            // A reload moved this listener elsewhere.
            _ = &mut stop => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning or exiting.
                warn!(error = %e, backoff = ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // At the limit this loop stops accepting: further clients wait in the kernel backlog
        // (and this one before its handshake) until a connection closes. The permit is taken
        // after accept so that one listener's idle wait never starves the others.
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p.expect("the connection semaphore is never closed"),
            _ = reached(&mut phase, Phase::Draining) => return,
        };
        backoff = Duration::from_millis(5);
        let span = info_span!("conn", %peer);
        tokio::spawn(
            connection(tcp, peer, kind, snapshot.clone(), permit, phase.clone()).instrument(span),
        );
    }
}

/// TCP_NODELAY and TCP keepalive, set once on the listening socket: Linux copies them to
/// every socket it accepts (checked by a test below), which saves four `setsockopt` calls
/// per connection. Keepalive probes find peers that vanished without a FIN (a pulled cable,
/// a crashed NAT), which would otherwise hold an upgraded tunnel and its permit.
fn configure_listener(listener: &TcpListener) {
    let sock = socket2::SockRef::from(listener);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = sock
        .set_tcp_nodelay(true)
        .and_then(|()| sock.set_tcp_keepalive(&keepalive))
    {
        warn!(error = %e, "cannot set TCP_NODELAY and keepalive on the listener");
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    snapshot: SharedSnapshot,
    permit: OwnedSemaphorePermit,
    phase: watch::Receiver<Phase>,
) {
    // New connections take the current snapshot's TLS config and limits — copied out, so
    // a long-lived connection does not keep a replaced snapshot (its pools, health checks,
    // store) alive.
    let (tls, limits, metrics) = {
        let snap = snapshot.load();
        let s = &snap.settings;
        let limits = ConnLimits {
            header_timeout: s.header_timeout,
            max_header_bytes: s.max_header_bytes,
            idle_timeout: s.idle_timeout,
        };
        (snap.tls.clone(), limits, snap.metrics.clone())
    };
    let open = |protocol: &'static str| {
        GaugeGuard::new(
            metrics
                .connections
                .get_or_create(&ProtocolLabels { protocol })
                .clone(),
        )
    };
    match kind {
        Kind::Plain => {
            // Plain connections are counted as HTTP/1.1 (h2c with prior knowledge is rare).
            let conn = Arc::new(ConnInfo::new(
                peer,
                "http",
                Some(permit),
                phase,
                limits.idle_timeout,
                Some(open("h1")),
            ));
            serve(tcp, Http::Sniff, conn, limits, snapshot).await
        }
        Kind::Tls => {
            let acceptor = TlsAcceptor::from(tls);
            // The stream's binding ends with this block, before the await: otherwise the
            // task keeps room for it (1.2 KiB) beside the serving future that owns it.
            let serving = {
                // Boxed: the handshake's state (a TLS stream, 1.2 KiB) is needed only until
                // the stream moves into its HTTP connection, not for the task's whole life.
                let handshake = Box::pin(tokio::time::timeout(
                    limits.header_timeout,
                    acceptor.accept(tcp),
                ));
                let tls = match handshake.await {
                    Ok(Ok(tls)) => {
                        Metrics::count(&metrics.tls_handshakes, "ok");
                        tls
                    }
                    // tokio-rustls has already tried to send the alert that says why.
                    Ok(Err(e)) => {
                        Metrics::count(&metrics.tls_handshakes, handshake_failure(&e));
                        debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        Metrics::count(&metrics.tls_handshakes, "timeout");
                        debug!("TLS handshake timed out");
                        return;
                    }
                };
                let http = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Http::H2,
                    Some(b"http/1.1") => Http::H1,
                    _ => Http::Sniff,
                };
                let conn = Arc::new(ConnInfo::new(
                    peer,
                    "https",
                    Some(permit),
                    phase,
                    limits.idle_timeout,
                    Some(open(if http == Http::H2 { "h2" } else { "h1" })),
                ));
                serve(tls, http, conn, limits, snapshot)
            };
            serving.await
        }
    }
}

/// A bounded name for why a TLS handshake failed (a metric label).
fn handshake_failure(e: &io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::PeerIncompatible(_)) => "peer_incompatible",
        Some(rustls::Error::InvalidMessage(_)) => "invalid_message",
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::PeerMisbehaved(_)) => "peer_misbehaved",
        Some(_) => "tls_error",
        None if e.kind() == io::ErrorKind::UnexpectedEof => "eof",
        None => "io_error",
    }
}

/// The settings a connection keeps from the snapshot it was accepted under.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    max_header_bytes: usize,
    idle_timeout: Duration,
}

/// Which HTTP a connection speaks: known from ALPN on TLS; sniffed from the first bytes
/// otherwise (plain listeners, TLS clients that offered no ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Http {
    H1,
    H2,
    Sniff,
}

/// A hyper connection future that can be asked to finish gracefully.
trait Graceful: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    fn graceful(self: Pin<&mut Self>);
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Graceful for h1::Connection {
    type Error = io::Error;
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S, E, B> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Error = hyper::Error;
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// The future that serves one connection. A plain function, not an `async fn`: the stream
/// moves into the connection here, so the task does not also keep the argument's room
/// (a TLS stream is 1.2 KiB) beside the connection that now owns it.
fn serve<I>(
    io: I,
    http: Http,
    conn: Arc<ConnInfo>,
    settings: ConnLimits,
    snapshot: SharedSnapshot,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Tracked::lingering(io, conn.activity.clone(), conn.linger.clone());
    type Boxed = Pin<Box<dyn Future<Output = ()> + Send>>;
    // With ALPN the protocol is known. HTTP/2 and sniffed connections are boxed, so the
    // task of every HTTP/1.1 connection is sized for HTTP/1.1 alone.
    match http {
        Http::H1 => {
            let c = h1_connection(io, BytesMut::new(), &conn, settings, snapshot);
            Either::Left(drive(c, conn, settings))
        }
        Http::H2 => Either::Right(Box::pin(serve_h2(io, conn, settings, snapshot)) as Boxed),
        Http::Sniff => Either::Right(Box::pin(async move {
            // The first request must start within header_timeout, sniffing included.
            let sniffed = tokio::time::timeout(settings.header_timeout, h1::sniff(io)).await;
            match sniffed {
                Ok(Ok(h1::Sniffed::H2(io))) => serve_h2(io, conn, settings, snapshot).await,
                Ok(Ok(h1::Sniffed::H1(io, read))) => {
                    let c = h1_connection(io, read, &conn, settings, snapshot);
                    drive(c, conn, settings).await
                }
                Ok(Err(e)) => debug!(error = %e, "connection ended before its first request"),
                Err(_) => debug!("no request within header_timeout: closing connection"),
            }
        }) as Boxed),
    }
}

/// An HTTP/1.1 connection on doorman's own codec (`h1`), each request through the pipeline.
fn h1_connection<I>(
    io: I,
    read: BytesMut,
    conn: &Arc<ConnInfo>,
    settings: ConnLimits,
    snapshot: SharedSnapshot,
) -> h1::Connection
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_conn = conn.clone();
    let service = move |req: Request<h1::RequestBody>| {
        handled(&snapshot, &svc_conn, req.map(DownstreamBody::H1))
    };
    let limits = h1::Limits {
        header_timeout: settings.header_timeout,
        // A backstop above max_header_bytes: heads in between reach the pipeline, which
        // counts them as it does HTTP/2's; both get the same JSON 431.
        max_head: (settings.max_header_bytes * 2).max(16 * 1024),
    };
    // The codec says why a head is refused; the answer is doorman's JSON error, as for any
    // other refusal.
    let refuse = |e: h1::HeadError| {
        let err = match e {
            h1::HeadError::TooLarge => crate::error::ProxyError::HeadTooLarge,
            h1::HeadError::Bad(why) => crate::error::ProxyError::BadRequest(why),
            h1::HeadError::Unsupported(why) => crate::error::ProxyError::NotImplemented(why),
        };
        info!(error = %err, "request head refused");
        err.to_response(&crate::message::new_request_id())
    };
    h1::Connection::new(io, read, service, refuse, limits, conn.linger.clone())
}

/// One request through the pipeline, under the snapshot current when it starts (kept to
/// its end). Boxed: the connection holds a pointer, not the pipeline's 5 KiB state — and
/// for h1, whose connection boxes each request's state anyway, inline in that state it
/// cost +19 % instructions per request (moved with it; same-run callgrind).
fn handled(
    snapshot: &SharedSnapshot,
    conn: &Arc<ConnInfo>,
    req: Request<DownstreamBody>,
) -> Pin<Box<impl Future<Output = http::Response<pipeline::LoggedBody>> + Send + use<>>> {
    let snap = snapshot.load_full();
    let conn = conn.clone();
    conn.requests.fetch_add(1, Ordering::Relaxed);
    Box::pin(async move { pipeline::handle(req, &conn, &snap).await })
}

/// An HTTP/2 connection on hyper, each request through the pipeline.
async fn serve_h2<I>(io: I, conn: Arc<ConnInfo>, settings: ConnLimits, snapshot: SharedSnapshot)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc_conn = conn.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let handling = handled(&snapshot, &svc_conn, req.map(DownstreamBody::H2));
        futures_util::FutureExt::map(handling, Ok::<_, Infallible>)
    });
    let h2_header_list = u32::try_from(settings.max_header_bytes * 2).unwrap_or(u32::MAX);
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(h2_header_list)
        .max_concurrent_streams(256);
    let c = b.serve_connection(TokioIo::new(io), svc);
    drive(c, conn, settings).await
}

/// Run a connection to its end, applying the drain, the shutdown deadline, the first-request
/// deadline and the idle timeout.
async fn drive<C: Graceful>(http: C, conn: Arc<ConnInfo>, settings: ConnLimits) {
    tokio::pin!(http);
    let mut phase = conn.phase.clone();
    let mut closing = *phase.borrow() >= Phase::Draining;
    if closing {
        http.as_mut().graceful();
    }
    // hyper's header timer starts only once the first bytes arrive (after protocol
    // detection), and HTTP/2 has none: the first request must start within header_timeout.
    let first_request_by = tokio::time::Instant::now() + settings.header_timeout;
    let mut first_checked = false;
    // The first quiet period closes gracefully; a second one in a row drops the connection.
    let mut idle_closed = false;
    loop {
        let event = {
            // The rare events, polled only when one of them woke (`idle::Rarely`): the
            // connection's task wakes several times per request for its IO.
            let watchdog = async {
                tokio::select! {
                    // A fixed order: no random number per poll.
                    biased;
                    seen = reached(&mut phase, if closing { Phase::Closing } else { Phase::Draining }) => {
                        Watch::Phase(seen)
                    }
                    _ = tokio::time::sleep_until(first_request_by), if !first_checked => {
                        Watch::FirstRequestDue
                    }
                    _ = idle::quiet(&conn.activity, conn.idle_timeout, || {
                        conn.awaiting_upstream.load(Ordering::Relaxed) > 0
                    }) => Watch::Quiet,
                }
            };
            let mut watchdog = std::pin::pin!(watchdog);
            tokio::select! {
                // The connection first.
                biased;
                res = http.as_mut() => {
                    if let Err(e) = res {
                        debug!(error = %e, "connection ended with error");
                    }
                    return;
                }
                event = idle::Rarely::new(watchdog.as_mut()) => event,
            }
        };
        match event {
            Watch::Phase(Phase::Closing) => {
                debug!("shutdown grace expired: closing connection");
                return;
            }
            Watch::Phase(_) => {
                http.as_mut().graceful();
                closing = true;
            }
            Watch::FirstRequestDue => {
                first_checked = true;
                if conn.requests.load(Ordering::Relaxed) == 0 {
                    debug!("no request within header_timeout: closing connection");
                    return;
                }
            }
            Watch::Quiet => {
                if idle_closed {
                    debug!("idle timeout: dropping connection");
                    return;
                }
                debug!("idle timeout: closing connection");
                http.as_mut().graceful();
                closing = true;
                idle_closed = true;
            }
        }
    }
}

/// What ended a wait in [`drive`], other than the connection itself.
enum Watch {
    /// The server's phase reached the one waited for (draining, or closing once draining).
    Phase(Phase),
    /// header_timeout after the connection began (whether a request has started is checked).
    FirstRequestDue,
    /// A whole idle period with no IO and no request waiting for a replica.
    Quiet,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_nodelay_and_keepalive() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        configure_listener(&listener);
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, (tcp, _)) = (client.unwrap(), accepted.unwrap());
        assert!(tcp.nodelay().unwrap());
        let sock = socket2::SockRef::from(&tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
    }
}

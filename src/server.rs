//! Listeners, the accept loops, the connection limit, TLS accept, hyper serving and the
//! graceful drain. `run(listeners, snapshot, shutdown)` takes shutdown as a future so tests,
//! signals and (later) reloads share one path.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admin::{self, AdminState};
use crate::config::ServerSettings;
use crate::idle::{self, Tracked};
use crate::pipeline::{self, ConnInfo, Phase, reached};
use crate::snapshot::{SharedSnapshot, Snapshot};

/// The sockets doorman serves, bound before `run` so callers (tests, `demo`) can bind port 0
/// and learn the real addresses, and so a bind failure is reported before anything starts.
#[derive(Debug)]
pub struct Listeners {
    pub tls: TcpListener,
    pub plain: Option<TcpListener>,
    pub admin: TcpListener,
}

/// The addresses actually bound.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub tls: SocketAddr,
    pub plain: Option<SocketAddr>,
    pub admin: SocketAddr,
}

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

/// Serve until `shutdown` resolves, then stop accepting, drain for up to `shutdown_grace`,
/// close whatever is left, and return.
pub async fn run(
    listeners: Listeners,
    snapshot: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let addrs = listeners.addrs()?;
    let settings = snapshot.load().settings.clone();
    let max = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let limit = Arc::new(Semaphore::new(max as usize));
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let admin_state = Arc::new(AdminState::default());

    // Listeners are bound (before `run`) and the snapshot is built: ready from the first
    // answer the admin listener gives.
    admin_state.ready.store(true, Ordering::Release);
    let admin_task = tokio::spawn(admin::serve(
        listeners.admin,
        admin_state.clone(),
        snapshot.clone(),
    ));
    let mut loops = vec![tokio::spawn(accept_loop(
        listeners.tls,
        Kind::Tls,
        snapshot.clone(),
        limit.clone(),
        phase_rx.clone(),
    ))];
    if let Some(plain) = listeners.plain {
        loops.push(tokio::spawn(accept_loop(
            plain,
            Kind::Plain,
            snapshot.clone(),
            limit.clone(),
            phase_rx.clone(),
        )));
    }
    info!(listen = %addrs.tls, plain_listen = ?addrs.plain, admin_listen = %addrs.admin, "doorman ready");

    shutdown.await;

    admin_state.ready.store(false, Ordering::Release);
    let _ = phase_tx.send(Phase::Draining);
    for l in loops {
        let _ = l.await;
    }
    let open = |l: &Semaphore| max as usize - l.available_permits();
    info!(open_connections = open(&limit), grace = ?settings.shutdown_grace, "draining");
    // Every connection (and upgraded tunnel) holds one permit: all permits back = all done.
    if tokio::time::timeout(settings.shutdown_grace, limit.acquire_many(max))
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
    admin_task.abort();
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    snapshot: SharedSnapshot,
    limit: Arc<Semaphore>,
    mut phase: watch::Receiver<Phase>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = reached(&mut phase, Phase::Draining) => return,
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
        configure_socket(&tcp);
        let span = info_span!("conn", %peer);
        tokio::spawn(
            connection(tcp, peer, kind, snapshot.clone(), permit, phase.clone()).instrument(span),
        );
    }
}

fn configure_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    // Keepalive probes find peers that vanished without a FIN (a pulled cable, a crashed
    // NAT), which would otherwise hold an upgraded tunnel and its permit.
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    snapshot: SharedSnapshot,
    permit: OwnedSemaphorePermit,
    phase: watch::Receiver<Phase>,
) {
    // New connections take the current snapshot's TLS config and limits.
    let snap = snapshot.load_full();
    let idle = snap.settings.idle_timeout;
    match kind {
        Kind::Plain => {
            let conn = Arc::new(ConnInfo::new(peer, "http", Some(permit), phase, idle));
            serve(tcp, conn, &snap, snapshot).await
        }
        Kind::Tls => {
            let acceptor = TlsAcceptor::from(snap.tls.clone());
            match tokio::time::timeout(snap.settings.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let conn = Arc::new(ConnInfo::new(peer, "https", Some(permit), phase, idle));
                    serve(tls, conn, &snap, snapshot).await
                }
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve<I>(io: I, conn: Arc<ConnInfo>, snap: &Snapshot, snapshot: SharedSnapshot)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &snap.settings;
    let io = TokioIo::new(Tracked::new(io, conn.activity.clone()));
    let svc_conn = conn.clone();
    let svc = service_fn(move |req| {
        // Each request takes the snapshot current when it starts and keeps it to the end.
        let snap = snapshot.load_full();
        let conn = svc_conn.clone();
        conn.requests.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, Infallible>(pipeline::handle(req, &conn, &snap).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Also bounds the wait for the next request on a keep-alive connection, as HAProxy's
        // `timeout http-keep-alive` defaults to `timeout http-request`.
        .header_read_timeout(settings.header_timeout)
        // A backstop above max_header_bytes: heads in between get our JSON 431, larger ones
        // hyper's own 431.
        .max_buf_size((settings.max_header_bytes * 2).max(16 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes * 2).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    let http = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(http);

    let mut phase = conn.phase.clone();
    let mut closing = *phase.borrow() >= Phase::Draining;
    if closing {
        http.as_mut().graceful_shutdown();
    }
    // hyper's header timer starts only once the first bytes arrive (after protocol
    // detection), and HTTP/2 has none: the first request must start within header_timeout.
    let first_request_by = tokio::time::Instant::now() + settings.header_timeout;
    let mut first_checked = false;
    // The first quiet period closes gracefully; a second one in a row drops the connection.
    let mut idle_closed = false;
    loop {
        tokio::select! {
            res = http.as_mut() => {
                if let Err(e) = res {
                    debug!(error = %e, "connection ended with error");
                }
                return;
            }
            seen = reached(&mut phase, if closing { Phase::Closing } else { Phase::Draining }) => {
                if seen == Phase::Closing {
                    debug!("shutdown grace expired: closing connection");
                    return;
                }
                http.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(first_request_by), if !first_checked => {
                first_checked = true;
                if conn.requests.load(Ordering::Relaxed) == 0 {
                    debug!("no request within header_timeout: closing connection");
                    return;
                }
            }
            _ = idle::quiet(&conn.activity, conn.idle_timeout, || {
                conn.awaiting_upstream.load(Ordering::Relaxed) > 0
            }) => {
                if idle_closed {
                    debug!("idle timeout: dropping connection");
                    return;
                }
                debug!("idle timeout: closing connection");
                http.as_mut().graceful_shutdown();
                closing = true;
                idle_closed = true;
            }
        }
    }
}

//! Listeners, the accept loops, the connection limit, TLS accept, hyper serving and the
//! graceful drain. `run(listeners, snapshot, shutdown)` takes shutdown as a future so tests,
//! signals and (later) reloads share one path.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::admin::{self, AdminState};
use crate::config::ServerSettings;
use crate::pipeline::{self, ConnInfo};
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

/// Serve until `shutdown` resolves, then stop accepting, drain for up to `shutdown_grace`
/// and return.
pub async fn run(
    listeners: Listeners,
    snapshot: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let addrs = listeners.addrs()?;
    let settings = snapshot.load().settings.clone();
    let max = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let limit = Arc::new(Semaphore::new(max as usize));
    let (drain_tx, drain_rx) = watch::channel(false);
    let admin_state = Arc::new(AdminState::default());

    let admin_task = tokio::spawn(admin::serve(listeners.admin, admin_state.clone()));
    let mut loops = vec![tokio::spawn(accept_loop(
        listeners.tls,
        Kind::Tls,
        snapshot.clone(),
        limit.clone(),
        drain_rx.clone(),
    ))];
    if let Some(plain) = listeners.plain {
        loops.push(tokio::spawn(accept_loop(
            plain,
            Kind::Plain,
            snapshot.clone(),
            limit.clone(),
            drain_rx.clone(),
        )));
    }
    admin_state.ready.store(true, Ordering::Release);
    info!(listen = %addrs.tls, plain_listen = ?addrs.plain, admin_listen = %addrs.admin, "doorman ready");

    shutdown.await;

    admin_state.ready.store(false, Ordering::Release);
    let _ = drain_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let active = max as usize - limit.available_permits();
    info!(active_connections = active, grace = ?settings.shutdown_grace, "draining");
    // Every connection (and upgraded tunnel) holds one permit: all permits back = all done.
    match tokio::time::timeout(settings.shutdown_grace, limit.acquire_many(max)).await {
        Ok(_) => info!("drained"),
        Err(_) => warn!(
            still_open = max as usize - limit.available_permits(),
            "shutdown grace expired; closing remaining connections"
        ),
    }
    admin_task.abort();
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    snapshot: SharedSnapshot,
    limit: Arc<Semaphore>,
    mut drain: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = drained(&mut drain) => return,
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
            _ = drained(&mut drain) => return,
        };
        backoff = Duration::from_millis(5);
        let _ = tcp.set_nodelay(true);
        let span = info_span!("conn", %peer);
        tokio::spawn(
            connection(tcp, peer, kind, snapshot.clone(), permit, drain.clone()).instrument(span),
        );
    }
}

/// Resolves once the drain flag is set (the borrow guard is dropped before returning).
async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    snapshot: SharedSnapshot,
    permit: OwnedSemaphorePermit,
    drain: watch::Receiver<bool>,
) {
    // New connections take the current snapshot's TLS config and limits.
    let snap = snapshot.load_full();
    match kind {
        Kind::Plain => {
            let conn = Arc::new(ConnInfo::new(peer, "http", Some(permit)));
            serve(tcp, conn, &snap, snapshot, drain).await
        }
        Kind::Tls => {
            let acceptor = TlsAcceptor::from(snap.tls.clone());
            match tokio::time::timeout(snap.settings.header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let conn = Arc::new(ConnInfo::new(peer, "https", Some(permit)));
                    serve(tls, conn, &snap, snapshot, drain).await
                }
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve<I>(
    io: I,
    conn: Arc<ConnInfo>,
    snap: &Snapshot,
    snapshot: SharedSnapshot,
    mut drain: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = &snap.settings;
    let activity = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: activity.clone(),
    });
    let svc = service_fn(move |req| {
        // Each request takes the snapshot current when it starts and keeps it to the end.
        let snap = snapshot.load_full();
        let conn = conn.clone();
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
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);

    // Idle watchdog: a connection that moves no bytes for idle_timeout is closed gracefully
    // (HTTP/2 GOAWAY, HTTP/1.1 close when idle); if it still moves nothing for another
    // idle_timeout it is dropped.
    let tick = settings.idle_timeout / 4;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    let mut last_seen = 0;
    let mut quiet_ticks = 0u32;
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(error = %e, "connection ended with error");
                }
                return;
            }
            _ = drained(&mut drain), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = ticker.tick() => {
                let seen = activity.load(Ordering::Relaxed);
                if seen != last_seen {
                    last_seen = seen;
                    quiet_ticks = 0;
                    continue;
                }
                quiet_ticks += 1;
                if quiet_ticks == 4 && !closing {
                    debug!("idle timeout: closing connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else if quiet_ticks >= 8 {
                    debug!("idle timeout: dropping connection");
                    return;
                }
            }
        }
    }
}

/// An IO wrapper that counts reads and writes, so the idle watchdog can tell a quiet
/// connection from a busy one without a clock read per poll.
struct Tracked<I> {
    inner: I,
    activity: Arc<AtomicU64>,
}

impl<I> Tracked<I> {
    #[inline]
    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if res.is_ready() {
            self.touch();
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if res.is_ready() {
            self.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if res.is_ready() {
            self.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

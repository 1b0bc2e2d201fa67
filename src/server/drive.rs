//! Running one connection to its end: the graceful drain, the shutdown deadline, the
//! first-request deadline and the idle timeout, watched beside the connection's own future.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::service::HttpService;
use tracing::debug;

use super::accept::ConnLimits;
use crate::h1;
use crate::idle;
use crate::pipeline::{ConnInfo, Phase, reached};

/// A hyper connection future that can be asked to finish gracefully.
pub(super) trait Graceful: Future<Output = Result<(), Self::Error>> {
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

/// Run a connection to its end, applying the drain, the shutdown deadline, the first-request
/// deadline and the idle timeout.
pub(super) async fn drive<C: Graceful>(http: C, conn: Arc<ConnInfo>, settings: ConnLimits) {
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

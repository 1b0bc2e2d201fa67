//! One accept loop: accept with backoff, the connection limit, then per connection the
//! settings it keeps, TLS accept and ALPN, handed to `serve`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, info_span, warn};

use super::listeners::configure_listener;
use super::serve::{Http, serve};
use crate::metrics::{GaugeGuard, Metrics, ProtocolLabels};
use crate::pipeline::{ConnInfo, Phase, reached};
use crate::snapshot::SharedSnapshot;

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Tls,
    Plain,
}

pub(super) async fn accept_loop(
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
pub(super) struct ConnLimits {
    pub(super) header_timeout: Duration,
    pub(super) max_header_bytes: usize,
    pub(super) idle_timeout: Duration,
}

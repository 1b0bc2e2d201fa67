//! Serving one connection: doorman's h1 codec or hyper's HTTP/2 (known from ALPN, or sniffed),
//! each request through the pipeline under the snapshot current when it starts.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use futures_util::future::Either;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use super::accept::ConnLimits;
use super::drive::drive;
use crate::h1;
use crate::idle::Tracked;
use crate::pipeline::{self, ConnInfo, DownstreamBody};
use crate::snapshot::SharedSnapshot;

/// Which HTTP a connection speaks: known from ALPN on TLS; sniffed from the first bytes
/// otherwise (plain listeners, TLS clients that offered no ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Http {
    H1,
    H2,
    Sniff,
}

/// The future that serves one connection. A plain function, not an `async fn`: the stream
/// moves into the connection here, so the task does not also keep the argument's room
/// (a TLS stream is 1.2 KiB) beside the connection that now owns it.
pub(super) fn serve<I>(
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
/// its end). Boxed: the connection holds a pointer, not the pipeline's large state.
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

//! doorman's own HTTP/1.1 server side (downstream): one task per connection reads request
//! heads, hands each request to the pipeline, streams its body in and the response out,
//! and keeps nothing allocated while the connection waits for its next request — the read
//! buffer is made per request and freed with it, as nginx does, where hyper keeps two
//! 8 KiB buffers for the life of every connection.
//!
//! Behaviour, as a user of nginx or HAProxy would expect it:
//! - keep-alive by default on HTTP/1.1, on request on HTTP/1.0; pipelined requests are
//!   answered in order;
//! - a head that does not arrive within `header_timeout` (counted from the end of the
//!   previous response) closes the connection; a head over `max_head` bytes (431), a
//!   malformed one (400) or one asking for what doorman does not do (501) is answered
//!   with the caller's `Refusal`, and the connection closes;
//! - request bodies by Content-Length or chunked (trailers are read and dropped); the
//!   request-smuggling shapes are refused and the connection closed: Content-Length
//!   together with Transfer-Encoding, two different Content-Lengths, a Content-Length
//!   that is not plain digits (`message::content_length`), a Transfer-Encoding not ending
//!   in chunked or with an empty list element, a repeated Host (400), a coding besides
//!   chunked (501); chunk-size and trailer lines are bounded however the reads split them;
//! - a CONNECT request is answered (doorman opens no tunnels) and ends the connection: what
//!   follows it is never read as further requests;
//! - `Expect: 100-continue` is answered when the pipeline first reads the body;
//! - a body the pipeline did not read is discarded when it has all arrived (the connection
//!   stays usable); otherwise the response says `Connection: close` and the close lingers
//!   so the client still reads the response; while a response is written, a body still
//!   arriving keeps being read (no deadlock with a client that sends before it reads);
//! - responses carry `Date`, and `Content-Length` when the body's size is known, else
//!   chunked (HTTP/1.1) or end at close (HTTP/1.0);
//! - a client that closes its side while its request is served abandons the request
//!   (counted as 499 by the pipeline), as nginx does by default;
//! - a 101 answer to a request that asked to upgrade hands the connection (and any bytes
//!   already read) to the request's `OnUpgrade`.

use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::encode::{self, BodyFraming, BodyWriter, write_all_vectored};
use super::feed::{
    Feeder, ReadEvent, Step, answered_step, discard_buffered, feed, fill, read_side,
};
use super::head::{self, Framing, HeadError};
use super::upgrade::{OnUpgrade, Upgraded};
use super::{Decoder, RequestBody, Rewind};

/// How the caller answers a request head the codec refuses: the codec knows why (too
/// large, malformed, unsupported), the caller what the answer looks like. The response is
/// written with its body's length and the connection closes after it.
pub(crate) type Refusal = fn(HeadError) -> Response<Full<Bytes>>;

/// What a connection keeps from the snapshot it was accepted under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the request head to arrive, counted from the end of the previous response.
    pub header_timeout: Duration,
    /// The longest request head read; longer is a 431.
    pub max_head: usize,
}

/// One HTTP/1.1 connection being served. `graceful_shutdown` lets the request in progress
/// finish (its response says `Connection: close`) and closes a connection waiting for its
/// next request.
pub struct Connection {
    serving: Pin<Box<dyn Future<Output = io::Result<()>> + Send>>,
    closing: Arc<AtomicBool>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("h1::Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Serve `io`, whose first bytes (already read, e.g. to sniff the protocol) are `read`.
    /// Each request goes to `service`; a head that cannot be served is answered with
    /// `refuse`'s response. `linger` is set when the connection closes with bytes unread.
    pub fn new<I, S, F, B>(
        io: I,
        read: BytesMut,
        service: S,
        refuse: Refusal,
        limits: Limits,
        linger: Arc<AtomicBool>,
    ) -> Self
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: FnMut(Request<RequestBody>) -> F + Send + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: fmt::Display + Send,
    {
        let closing = Arc::new(AtomicBool::new(false));
        let state = Serving {
            io,
            buf: read,
            rest: Bytes::new(),
            limits,
            refusal: refuse,
            closing: closing.clone(),
            linger,
        };
        Connection {
            serving: Box::pin(state.run(service)),
            closing,
        }
    }

    /// Finish the request in progress, then close. The caller polls the connection again
    /// right after (as `server::drive` does): that poll sees the flag, so no wake-up is
    /// needed for a connection that is waiting for a request.
    pub(crate) fn graceful_shutdown(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }
}

impl Future for Connection {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.serving.as_mut().poll(cx)
    }
}

struct Serving<I> {
    io: I,
    /// What has been read and not yet used: empty (no allocation) between requests.
    buf: BytesMut,
    /// What followed the last head in the bytes it was parsed from (a pipelined request,
    /// a body): parsed or merged from there, never copied request by request. Comes
    /// before `buf`.
    rest: Bytes,
    limits: Limits,
    refusal: Refusal,
    closing: Arc<AtomicBool>,
    linger: Arc<AtomicBool>,
}

/// How the exchange of one request ended, for the connection.
enum Next {
    KeepAlive,
    Close,
    /// The 101 was sent: the IO goes to the request's `OnUpgrade`.
    Upgrade(oneshot::Sender<Upgraded>),
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Serving<I> {
    /// Not an `async fn`: one taking `self` by value keeps the argument and its moved-in
    /// local side by side in its state (the TLS stream twice, 1.3 KiB each); the block
    /// below captures it once.
    #[allow(clippy::manual_async_fn)]
    fn run<S, F, B>(mut self, mut service: S) -> impl Future<Output = io::Result<()>>
    where
        S: FnMut(Request<RequestBody>) -> F,
        F: Future<Output = Response<B>>,
        B: Body<Data = Bytes> + Unpin,
        B::Error: fmt::Display + Send,
    {
        async move {
            let mut header_timer = pin!(tokio::time::sleep(Duration::ZERO));
            loop {
                header_timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.limits.header_timeout);
                let Some((req, meta)) = self.read_head(header_timer.as_mut()).await? else {
                    return self.close().await;
                };
                // Boxed: a request's state (2.5 KiB) is allocated for the request, not kept
                // in every connection for its whole life.
                match Box::pin(self.exchange(req, meta, &mut service)).await? {
                    Next::KeepAlive => {}
                    Next::Close => return self.close().await,
                    Next::Upgrade(to) => {
                        self.absorb_rest();
                        let pre = self.buf.split().freeze();
                        // The tunnel's own close must not linger on its bytes.
                        self.linger.store(false, Ordering::Relaxed);
                        let _ = to.send(Rewind::new(pre, Box::new(self.io)));
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The next request head, or None when the connection should close quietly: the
    /// client closed it, no head came in time, or shutdown found it idle.
    async fn read_head(
        &mut self,
        mut timer: Pin<&mut tokio::time::Sleep>,
    ) -> io::Result<Option<(Request<()>, head::Meta)>> {
        let max = self.limits.max_head;
        // Whether the bytes held may now hold a complete head: parsing again only after
        // a read that brought a line end keeps a client that drips its head byte by byte
        // from costing a full parse per byte.
        let mut try_parse = true;
        loop {
            if try_parse {
                let parsed = if self.buf.is_empty() && !self.rest.is_empty() {
                    // A pipelined request: parsed where it lies.
                    let parsed = head::parse(&mut self.rest, max);
                    if let Ok(None) = parsed {
                        self.buf = BytesMut::from(std::mem::take(&mut self.rest));
                    }
                    parsed
                } else if !self.buf.is_empty() {
                    self.absorb_rest();
                    let mut frozen = std::mem::take(&mut self.buf).freeze();
                    let parsed = head::parse(&mut frozen, max);
                    match parsed {
                        // Unshared while incomplete: the same buffer back, not a copy.
                        Ok(None) => self.buf = BytesMut::from(frozen),
                        _ => self.rest = frozen,
                    }
                    parsed
                } else {
                    Ok(None)
                };
                match parsed {
                    Ok(Some(parsed)) => return Ok(Some(parsed)),
                    Ok(None) => {}
                    Err(e) => {
                        // Boxed: rare, and its state would otherwise be every
                        // connection's.
                        Box::pin(self.refuse(e)).await?;
                        return Ok(None);
                    }
                }
            }
            let idle = self.buf.is_empty() && self.rest.is_empty();
            if idle {
                // Between requests the connection holds no buffer at all.
                self.buf = BytesMut::new();
                self.rest = Bytes::new();
            }
            let closing = &self.closing;
            let (io, buf) = (&mut self.io, &mut self.buf);
            tokio::select! {
                biased;
                read = poll_fn(|cx| fill(io, cx, buf)) => match read? {
                    0 => {
                        if !idle {
                            debug!("client closed the connection in the middle of a request head");
                        }
                        return Ok(None);
                    }
                    n => {
                        let fresh = &self.buf[self.buf.len() - n..];
                        try_parse = fresh.contains(&b'\n') || self.buf.len() > max;
                    }
                },
                () = timer.as_mut() => {
                    debug!(partial = !idle, "no request head within header_timeout: closing");
                    return Ok(None);
                }
                // Shutdown finds the connection between requests.
                () = flag_set(closing), if idle => return Ok(None),
            }
        }
    }

    /// Put what is left of the last parsed bytes back in front of `buf` (one copy): before
    /// a body is read, or when more bytes must be appended to them.
    fn absorb_rest(&mut self) {
        if self.rest.is_empty() {
            return;
        }
        let mut merged = BytesMut::with_capacity(self.rest.len() + self.buf.len());
        merged.extend_from_slice(&self.rest);
        merged.extend_from_slice(&self.buf);
        self.buf = merged;
        self.rest = Bytes::new();
    }

    /// Whether the read side may read more while a request is served (watching for the
    /// client leaving, keeping what it pipelines): not while earlier pipelined bytes wait
    /// in `rest`, not past the head limit.
    fn room(&self) -> bool {
        self.rest.is_empty() && self.buf.len() < self.limits.max_head
    }

    /// Serve one request: run the service while reading the request body (or watching for
    /// the client leaving), then write the response.
    async fn exchange<S, F, B>(
        &mut self,
        req: Request<()>,
        meta: head::Meta,
        service: &mut S,
    ) -> io::Result<Next>
    where
        S: FnMut(Request<RequestBody>) -> F,
        F: Future<Output = Response<B>>,
        B: Body<Data = Bytes> + Unpin,
        B::Error: fmt::Display + Send,
    {
        let version = req.version();
        let is_head = req.method() == Method::HEAD;
        let mut keep_alive = meta.keep_alive;
        let (body, mut feeder) = match meta.framing {
            Framing::Empty => (RequestBody::empty(), None),
            framing => {
                let (tx, rx) = mpsc::channel(1);
                let (want_tx, want_rx) = match meta.expect_continue {
                    true => {
                        let (t, r) = oneshot::channel();
                        (Some(t), Some(r))
                    }
                    false => (None, None),
                };
                let feeder = Feeder {
                    decoder: Decoder::new(framing),
                    tx,
                    waits_for_continue: want_rx.is_some(),
                    want: want_rx,
                };
                (RequestBody::new(rx, want_tx, framing), Some(feeder))
            }
        };
        let mut req = req.map(|()| body);
        let mut upgrade = None;
        if meta.upgrade {
            let (tx, rx) = oneshot::channel();
            req.extensions_mut().insert(OnUpgrade::new(rx));
            upgrade = Some(tx);
        }
        if feeder.is_some() {
            // The body's first bytes may have come with the head.
            self.absorb_rest();
        }
        // Set when the body will not be read to its end: the connection cannot be reused.
        let mut unfinished = false;
        // A body the pipeline dropped before its end, to discard.
        let mut drain: Option<Decoder> = None;

        let mut answer = pin!(service(req));
        let resp = loop {
            let room = self.room();
            let (io, buf) = (&mut self.io, &mut self.buf);
            tokio::select! {
                biased;
                resp = answer.as_mut() => break resp,
                event = read_side(io, buf, &mut feeder, room) => match event {
                    ReadEvent::Fed(Step::Sent) => {}
                    ReadEvent::Fed(Step::Done) => feeder = None,
                    ReadEvent::Fed(Step::Continue) => {
                        self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                        self.io.flush().await?;
                    }
                    ReadEvent::Fed(Step::Abandoned) => {
                        // Discarded below if the rest of it is already here.
                        drain = feeder.take().filter(|f| !f.waits_for_continue).map(|f| f.decoder);
                        unfinished = drain.is_none();
                    }
                    ReadEvent::Fed(Step::Failed) => {
                        feeder = None;
                        unfinished = true;
                    }
                    // Pipelined bytes: kept for the next request.
                    ReadEvent::Filled(Ok(n)) if n > 0 => {}
                    ReadEvent::Filled(_) => {
                        // Dropping the service's future abandons the request.
                        debug!("client closed the connection before its response");
                        return Ok(Next::Close);
                    }
                },
            }
        };

        // A body left unread (an early answer: 401, 413, ...) whose rest is already in the
        // buffer is discarded, and the connection stays usable; one still on the wire is
        // not waited for: the connection closes after this response, as hyper's does.
        if let Some(f) = feeder.take_if(|f| f.tx.is_closed() && !f.waits_for_continue) {
            drain = Some(f.decoder);
        }
        if let Some(mut d) = drain {
            unfinished = !discard_buffered(&mut d, &mut self.buf);
        }
        let (parts, mut body) = resp.into_parts();
        let status = parts.status;
        let upgrading = status == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_some();
        if feeder.is_some()
            || unfinished
            || self.closing.load(Ordering::Relaxed)
            || encode::asks_close(&parts.headers)
        {
            keep_alive = false;
        }
        let framing = if is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            BodyFraming::None
        } else if let Some(n) = body.size_hint().exact() {
            BodyFraming::Length(n)
        } else if version == Version::HTTP_11 {
            BodyFraming::Chunked
        } else {
            keep_alive = false;
            BodyFraming::Close
        };
        let mut out = Vec::with_capacity(256 + 40 * parts.headers.len());
        encode::head(
            &mut out,
            version,
            status,
            &parts.headers,
            framing,
            keep_alive,
            upgrading,
        );
        drop(parts);

        let mut writer = BodyWriter {
            framing,
            sent: 0,
            ended: false,
        };
        let mut ended = framing == BodyFraming::None || body.is_end_stream();
        if !ended {
            // The replica's head and body usually arrive together: one write for both.
            if let Some(frame) = futures_util::FutureExt::now_or_never(body.frame()) {
                self.put_frame(&mut writer, frame, &mut out, &mut feeder, &mut unfinished)
                    .await?;
                ended = writer.ended || body.is_end_stream();
            }
        }
        if ended {
            writer.finish(&mut out);
        }
        self.send([&out, &[], &[]], &mut feeder, &mut unfinished)
            .await?;
        while !ended {
            out.clear();
            let room = self.room();
            let watch = feeder.is_some() || room;
            let (io, buf) = (&mut self.io, &mut self.buf);
            let frame = tokio::select! {
                biased;
                frame = body.frame() => frame,
                event = read_side(io, buf, &mut feeder, room), if watch => {
                    match event {
                        ReadEvent::Fed(step) => answered_step(step, &mut feeder, &mut unfinished),
                        ReadEvent::Filled(Ok(n)) if n > 0 => {}
                        ReadEvent::Filled(_) => {
                            debug!("client closed the connection during its response");
                            return Ok(Next::Close);
                        }
                    }
                    continue;
                }
            };
            let wrote = self
                .put_frame(&mut writer, frame, &mut out, &mut feeder, &mut unfinished)
                .await?;
            ended = writer.ended || body.is_end_stream();
            if ended {
                writer.finish(&mut out);
            }
            if !wrote || ended {
                self.send([&out, &[], &[]], &mut feeder, &mut unfinished)
                    .await?;
            }
        }
        drop(body);
        if let BodyFraming::Length(n) = framing
            && writer.sent != n
        {
            debug!(
                declared = n,
                sent = writer.sent,
                "response body shorter than its length: closing"
            );
            return Ok(Next::Close);
        }
        if feeder.is_some() || unfinished {
            self.linger.store(true, Ordering::Relaxed);
        }
        Ok(match upgrade {
            Some(to) if upgrading => Next::Upgrade(to),
            _ if keep_alive => Next::KeepAlive,
            _ => Next::Close,
        })
    }

    /// Add a polled frame of the response body to `out`. A data frame too large to copy is
    /// written at once, behind what `out` holds (then emptied): true when that happened.
    async fn put_frame<E: fmt::Display>(
        &mut self,
        writer: &mut BodyWriter,
        frame: Option<Result<http_body::Frame<Bytes>, E>>,
        out: &mut Vec<u8>,
        feeder: &mut Option<Feeder>,
        unfinished: &mut bool,
    ) -> io::Result<bool> {
        let Some(data) = writer.frame(frame, out)? else {
            return Ok(false);
        };
        let suffix = writer.suffix();
        self.send([out.as_slice(), &data, suffix], feeder, unfinished)
            .await?;
        out.clear();
        Ok(true)
    }

    /// Write `parts` and flush. While a request body is still arriving, it keeps being read
    /// meanwhile: a client that sends its whole body before reading would otherwise
    /// deadlock against a response larger than the socket buffers.
    async fn send(
        &mut self,
        parts: [&[u8]; 3],
        feeder: &mut Option<Feeder>,
        unfinished: &mut bool,
    ) -> io::Result<()> {
        if feeder.is_none() {
            write_all_vectored(&mut self.io, parts).await?;
            return self.io.flush().await;
        }
        let (io, buf) = (&mut self.io, &mut self.buf);
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut write = pin!(async {
            write_all_vectored(&mut wr, parts).await?;
            wr.flush().await
        });
        loop {
            tokio::select! {
                biased;
                written = write.as_mut() => return written,
                step = feed(&mut rd, buf, feeder), if feeder.is_some() => {
                    answered_step(step, feeder, unfinished)
                }
            }
        }
    }

    /// Answer a head that cannot be served, then close.
    async fn refuse(&mut self, e: HeadError) -> io::Result<()> {
        // The client may still be sending (the rest of a huge head, a body): closing on
        // unread bytes would reset the connection under the answer.
        self.linger.store(true, Ordering::Relaxed);
        let resp = (self.refusal)(e);
        let (parts, body) = resp.into_parts();
        let data = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(256 + data.len());
        let framing = BodyFraming::Length(data.len() as u64);
        encode::head(
            &mut out,
            Version::HTTP_11,
            parts.status,
            &parts.headers,
            framing,
            false,
            false,
        );
        out.extend_from_slice(&data);
        self.buf.clear();
        self.rest = Bytes::new();
        self.io.write_all(&out).await?;
        self.io.flush().await
    }

    async fn close(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() || !self.rest.is_empty() {
            // Closing on unread bytes would reset the connection under the last answer.
            self.linger.store(true, Ordering::Relaxed);
        }
        // A TLS close_notify, then FIN (lingering first when bytes were left unread).
        self.io.shutdown().await
    }
}

/// Resolves once `flag` is set. Registers no waker: whoever sets it polls again after.
fn flag_set(flag: &AtomicBool) -> impl Future<Output = ()> + '_ {
    poll_fn(move |_| match flag.load(Ordering::Relaxed) {
        true => Poll::Ready(()),
        false => Poll::Pending,
    })
}

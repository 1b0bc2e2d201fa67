//! The request body as sent upstream: streamed frame by frame, counted against
//! `max_body_bytes`, with downstream errors kept distinguishable from upstream ones.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;

use crate::error::ProxyError;
use crate::upstream::{self, UpstreamBody, UpstreamBodyError};

/// A request body as the client sends it: from doorman's HTTP/1.1 connection, or from
/// hyper's HTTP/2 one.
#[derive(Debug)]
pub(crate) enum DownstreamBody {
    H1(crate::h1::RequestBody),
    H2(Incoming),
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DownstreamError {
    #[error(transparent)]
    H1(#[from] crate::h1::BodyError),
    #[error(transparent)]
    H2(#[from] hyper::Error),
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = DownstreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DownstreamError>>> {
        let polled = match self.get_mut() {
            DownstreamBody::H1(b) => {
                ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(DownstreamError::from))
            }
            DownstreamBody::H2(b) => {
                ready!(Pin::new(b).poll_frame(cx)).map(|r| r.map_err(DownstreamError::from))
            }
        };
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DownstreamBody::H1(b) => b.is_end_stream(),
            DownstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DownstreamBody::H1(b) => b.size_hint(),
            DownstreamBody::H2(b) => b.size_hint(),
        }
    }
}

/// Read the request body: at most `limit` bytes, and each chunk within `idle` of the last
/// (a slow upload that keeps moving is fine; a stalled one is a 408).
pub(super) async fn read_all(
    mut body: DownstreamBody,
    limit: u64,
    idle: Duration,
) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(ProxyError::BodyTimeout),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(ProxyError::DownstreamAborted(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() as u64 + data.len() as u64 > limit {
                return Err(ProxyError::BodyTooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("request body exceeds the configured limit")]
    TooLarge,
    #[error("reading the downstream body failed: {0}")]
    Downstream(#[source] DownstreamError),
}

#[derive(Debug)]
pub(crate) struct LimitedBody {
    inner: Source,
    remaining: u64,
    /// Dropped when the body ends (or fails, or is dropped): the upload is over, and the
    /// wait for the response head begins.
    done: Option<oneshot::Sender<()>>,
    /// Bumped on every frame, so a stalled upload can be told from a moving one. None for
    /// bodies that are empty from the start (most GETs): nothing to watch.
    progress: Option<Arc<AtomicU64>>,
    /// The connection's lingering-close flag, set if this body is dropped before its end
    /// (the replica answered early, or the upload failed upstream).
    linger: Option<Arc<AtomicBool>>,
}

/// Where the bytes come from: the client, or a body already buffered (idempotent requests).
#[derive(Debug)]
enum Source {
    Stream(DownstreamBody),
    Buffered(Option<Bytes>),
}

impl LimitedBody {
    /// A body already in memory (its size was checked when it was read).
    pub(crate) fn buffered(bytes: Bytes, done: oneshot::Sender<()>) -> Self {
        let remaining = bytes.len() as u64;
        LimitedBody {
            inner: Source::Buffered((!bytes.is_empty()).then_some(bytes)),
            remaining,
            done: Some(done),
            progress: None,
            linger: None,
        }
    }

    pub(crate) fn new(
        inner: DownstreamBody,
        limit: u64,
        done: oneshot::Sender<()>,
        linger: Arc<AtomicBool>,
    ) -> Self {
        let streaming = !inner.is_end_stream();
        LimitedBody {
            inner: Source::Stream(inner),
            remaining: limit,
            done: Some(done),
            progress: streaming.then(Arc::default),
            linger: streaming.then_some(linger),
        }
    }

    /// The upload's progress counter, when there is an upload to watch.
    pub(crate) fn progress(&self) -> Option<Arc<AtomicU64>> {
        self.progress.clone()
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = match &mut self.inner {
            Source::Stream(inner) => ready!(Pin::new(inner).poll_frame(cx)),
            Source::Buffered(b) => b.take().map(|b| Ok(Frame::data(b))),
        };
        let frame = match polled {
            None => {
                self.done.take();
                self.linger = None;
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                self.done.take();
                self.linger = None;
                return Poll::Ready(Some(Err(BodyError::Downstream(e))));
            }
            Some(Ok(frame)) => frame,
        };
        if let Some(p) = &self.progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if n > self.remaining {
                self.remaining = 0;
                self.done.take();
                return Poll::Ready(Some(Err(BodyError::TooLarge)));
            }
            self.remaining -= n;
        }
        if self.is_end_stream() {
            self.done.take();
            self.linger = None;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Stream(inner) => inner.is_end_stream(),
            Source::Buffered(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Stream(inner) => inner.size_hint(),
            Source::Buffered(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl upstream::RequestBody for LimitedBody {
    /// The upload is over: all of it was sent (called too for a body sent whole that was
    /// never polled to its end because it had none).
    fn sent(&mut self) {
        self.done.take();
        self.linger = None;
    }
}

impl Drop for LimitedBody {
    fn drop(&mut self) {
        if let Some(linger) = &self.linger {
            linger.store(true, Ordering::Relaxed);
        }
    }
}

/// The body relayed downstream: chunks already read (an idempotent response that was partly
/// buffered) followed by the rest of the replica's stream — or by the failure that broke it.
#[derive(Debug)]
pub(crate) struct RelayBody {
    read: std::collections::VecDeque<Bytes>,
    rest: UpstreamBody,
    /// Yielded once `read` is drained, in place of `rest`: the replica's body broke off while
    /// doorman was reading it. A failed `UpstreamBody` reads as ended afterwards, so without
    /// this the client would get a truncated body framed as a whole one.
    cut: Option<UpstreamBodyError>,
}

impl RelayBody {
    pub(crate) fn new(rest: UpstreamBody) -> Self {
        RelayBody {
            read: Default::default(),
            rest,
            cut: None,
        }
    }

    pub(crate) fn resume(read: Vec<Bytes>, rest: UpstreamBody) -> Self {
        RelayBody {
            read: read.into(),
            rest,
            cut: None,
        }
    }

    /// The chunks read, then `why` as the body's error: the client sees the response broken
    /// off where the replica broke it (HTTP/1.1: the connection closes short of the body's
    /// end; HTTP/2: the stream is reset).
    pub(crate) fn cut(read: Vec<Bytes>, rest: UpstreamBody, why: UpstreamBodyError) -> Self {
        RelayBody {
            read: read.into(),
            rest,
            cut: Some(why),
        }
    }

    pub(crate) fn into_stream(self) -> UpstreamBody {
        self.rest
    }
}

impl Body for RelayBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        if let Some(b) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(why) = self.cut.take() {
            return Poll::Ready(Some(Err(why)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.cut.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.read.iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(rest.lower() + read);
        // A cut body has no upper bound: a failed stream hints "exactly 0 more", and an exact
        // hint would have the encoder frame what was read as the whole body
        // (Content-Length) and never poll far enough to see the failure.
        if let (Some(u), None) = (rest.upper(), &self.cut) {
            h.set_upper(u + read);
        }
        h
    }
}

//! The request body as sent upstream: streamed frame by frame, counted against
//! `max_body_bytes`, with downstream errors kept distinguishable from upstream ones.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the configured limit")]
    TooLarge,
    #[error("reading the downstream body failed: {0}")]
    Downstream(#[source] hyper::Error),
}

#[derive(Debug)]
pub struct LimitedBody {
    inner: Incoming,
    remaining: u64,
    /// Dropped when the body ends (or fails, or is dropped): the upload is over, and the
    /// wait for the response head begins.
    done: Option<oneshot::Sender<()>>,
    /// Bumped on every frame, so a stalled upload can be told from a moving one. None for
    /// bodies that are empty from the start (most GETs): nothing to watch.
    progress: Option<Arc<AtomicU64>>,
}

impl LimitedBody {
    pub fn new(inner: Incoming, limit: u64, done: oneshot::Sender<()>) -> Self {
        let progress = (!inner.is_end_stream()).then(Arc::default);
        LimitedBody {
            inner,
            remaining: limit,
            done: Some(done),
            progress,
        }
    }

    /// The upload's progress counter, when there is an upload to watch.
    pub fn progress(&self) -> Option<Arc<AtomicU64>> {
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
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            None => {
                self.done.take();
                return Poll::Ready(None);
            }
            Some(Err(e)) => {
                self.done.take();
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
        if self.inner.is_end_stream() {
            self.done.take();
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

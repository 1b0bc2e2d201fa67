//! Idle detection without a clock read per poll: an IO wrapper counts reads and writes, and
//! `quiet()` resolves once the count has not moved for a whole idle period. The same
//! wrapper does the lingering close (see `Tracked::lingering`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Resolves once `activity` has not changed for `idle` while `busy()` was false, checked
/// every quarter of `idle` (so it fires between `idle` and `1.25 × idle` of real quiet).
pub async fn quiet(activity: &AtomicU64, idle: Duration, busy: impl Fn() -> bool) {
    let tick = (idle / 4).max(Duration::from_millis(1));
    let mut last = activity.load(Ordering::Relaxed);
    let mut quiet_for = Duration::ZERO;
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.load(Ordering::Relaxed);
        if now != last || busy() {
            last = now;
            quiet_for = Duration::ZERO;
            continue;
        }
        quiet_for += tick;
        if quiet_for >= idle {
            return;
        }
    }
}

/// A lingering close reads and discards for at most this long in all...
const LINGER_TOTAL: Duration = Duration::from_secs(5);
/// ...and gives up once the client has sent nothing for this long.
const LINGER_QUIET: Duration = Duration::from_secs(1);

/// Counts every completed read and write on the wrapped IO.
pub struct Tracked<I> {
    inner: I,
    activity: Arc<AtomicU64>,
    linger: Option<Linger>,
}

/// Closing a socket with unread bytes in its receive buffer makes the kernel send a reset,
/// which can destroy a response the client has not read yet — typically an error answered
/// before the client finished uploading its body (a 413, a 502). So when `wanted` is set,
/// shutdown first ends our side (FIN, after TLS close_notify), then reads and discards what
/// the client still sends until it closes or goes quiet, as nginx's `lingering_close`.
struct Linger {
    wanted: Arc<AtomicBool>,
    /// Set once our side is shut down and draining has begun: the overall deadline and
    /// the timer (reset by each read to the quiet deadline, capped by the overall one).
    draining: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl<I> Tracked<I> {
    pub fn new(inner: I, activity: Arc<AtomicU64>) -> Self {
        Tracked {
            inner,
            activity,
            linger: None,
        }
    }

    /// Like `new`, with a lingering close whenever `wanted` is set at shutdown.
    pub fn lingering(inner: I, activity: Arc<AtomicU64>, wanted: Arc<AtomicBool>) -> Self {
        Tracked {
            inner,
            activity,
            linger: Some(Linger {
                wanted,
                draining: None,
            }),
        }
    }

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

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
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
        let this = &mut *self;
        let Some(linger) = this
            .linger
            .as_mut()
            .filter(|l| l.draining.is_some() || l.wanted.load(Ordering::Relaxed))
        else {
            return Pin::new(&mut this.inner).poll_shutdown(cx);
        };
        if linger.draining.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            let now = tokio::time::Instant::now();
            let sleep = Box::pin(tokio::time::sleep_until(now + LINGER_QUIET));
            linger.draining = Some((now + LINGER_TOTAL, sleep));
        }
        let (until, sleep) = linger.draining.as_mut().expect("draining was just set");
        let mut scratch = [0u8; 8192];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                // The client closed (or broke) its side: nothing more can arrive.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    let next = (tokio::time::Instant::now() + LINGER_QUIET).min(*until);
                    sleep.as_mut().reset(next);
                }
                Poll::Pending => {
                    return match sleep.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Ok(())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn quiet_waits_for_a_full_idle_period_without_activity() {
        let activity = Arc::new(AtomicU64::new(0));
        let a = activity.clone();
        let start = tokio::time::Instant::now();
        // Activity at 50ms and 150ms pushes the quiet point to at least 150ms + 100ms.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            a.fetch_add(1, Ordering::Relaxed);
        });
        quiet(&activity, Duration::from_millis(100), || false).await;
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert!(waited <= Duration::from_millis(300), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn busy_postpones_quiet() {
        let activity = AtomicU64::new(0);
        let start = tokio::time::Instant::now();
        let busy_until = start + Duration::from_millis(500);
        quiet(&activity, Duration::from_millis(100), || {
            tokio::time::Instant::now() < busy_until
        })
        .await;
        // Busy ends at 500ms; quiet is then due one idle period later, give or take a tick.
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(575), "{waited:?}");
        assert!(waited <= Duration::from_millis(625), "{waited:?}");
    }
}

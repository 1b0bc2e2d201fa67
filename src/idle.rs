//! Idle detection without a clock read per poll: an IO wrapper counts reads and writes, and
//! `quiet()` resolves once the count has not moved for a whole idle period. The same
//! wrapper does the lingering close (see `Tracked::lingering`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Resolves once `activity` has not changed for `idle` while `busy()` was false, checked
/// every quarter of `idle` (so it fires between `idle` and `1.25 × idle` of real quiet).
pub(crate) async fn quiet(activity: &AtomicU64, idle: Duration, busy: impl Fn() -> bool) {
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

/// Polls `inner` only when it asked to be: on the first poll and after a waker it was
/// given fired. A connection's watchdog (drain, deadlines, idle) shares the connection's
/// task, which wakes several times per request for its IO; polled on every one of those
/// wakes, the watchdog's timers and its watch channel cost more than a request's routing.
/// Wrapped, a wake that was not the watchdog's costs the task waker's registration (two
/// compare-and-swaps, no clone while the task's waker stays the same) and an atomic swap.
/// Like the future it wraps, it must not be polled again once it completed.
pub(crate) struct Rarely<'a, F> {
    inner: Pin<&'a mut F>,
    signal: Arc<Signal>,
    waker: Waker,
}

/// Set by `inner`'s waker; wakes the task that polls the [`Rarely`].
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<'a, F: Future> Rarely<'a, F> {
    pub(crate) fn new(inner: Pin<&'a mut F>) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        Rarely {
            inner,
            signal,
            waker,
        }
    }
}

impl<F: Future> Future for Rarely<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // The task's waker first: a wake after this point reaches it, one before it is
        // seen in the flag.
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

/// A lingering close reads and discards for at most this long in all...
const LINGER_TOTAL: Duration = Duration::from_secs(5);
/// ...and gives up once the client has sent nothing for this long.
const LINGER_QUIET: Duration = Duration::from_secs(1);

/// Counts every completed read and write on the wrapped IO.
pub(crate) struct Tracked<I> {
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
    pub(crate) fn new(inner: I, activity: Arc<AtomicU64>) -> Self {
        Tracked {
            inner,
            activity,
            linger: None,
        }
    }

    /// Like `new`, with a lingering close whenever `wanted` is set at shutdown.
    pub(crate) fn lingering(inner: I, activity: Arc<AtomicU64>, wanted: Arc<AtomicBool>) -> Self {
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

    /// A future that counts its polls and keeps the last waker it was given.
    struct Probe {
        polls: usize,
        waker: Option<Waker>,
        ready: bool,
    }

    impl Future for Probe {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            self.polls += 1;
            self.waker = Some(cx.waker().clone());
            if self.ready {
                Poll::Ready(self.polls)
            } else {
                Poll::Pending
            }
        }
    }

    struct CountWakes(std::sync::atomic::AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn rarely_polls_its_future_first_and_then_only_after_its_own_wake() {
        let mut probe = std::pin::pin!(Probe {
            polls: 0,
            waker: None,
            ready: false,
        });
        let task = Arc::new(CountWakes(std::sync::atomic::AtomicUsize::new(0)));
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let mut rarely = Rarely::new(probe.as_mut());
        assert!(Pin::new(&mut rarely).poll(&mut cx).is_pending());
        // The task wakes for other reasons: the wrapped future is left alone.
        for _ in 0..5 {
            assert!(Pin::new(&mut rarely).poll(&mut cx).is_pending());
        }
        assert_eq!(rarely.inner.polls, 1);
        // Its own waker fires: the task is woken and the next poll reaches it.
        let inner_waker = rarely.inner.waker.take().unwrap();
        inner_waker.wake_by_ref();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        rarely.inner.ready = true;
        assert_eq!(Pin::new(&mut rarely).poll(&mut cx), Poll::Ready(2));
    }

    #[tokio::test(start_paused = true)]
    async fn rarely_wrapped_timers_and_channels_still_fire() {
        let start = tokio::time::Instant::now();
        let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::from_millis(30)));
        Rarely::new(sleep.as_mut()).await;
        assert_eq!(start.elapsed(), Duration::from_millis(30));
        let (tx, mut rx) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(7).unwrap();
        });
        let mut changed = std::pin::pin!(rx.wait_for(|v| *v == 7));
        let seen = *Rarely::new(changed.as_mut()).await.unwrap();
        assert_eq!(seen, 7);
    }

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

//! The read side of a connection while a request is served: the request body decoded and
//! fed to the pipeline's `RequestBody` (answering `Expect: 100-continue` when it is first
//! read), a body left unread discarded, and otherwise a watch for the client leaving; and
//! `fill`, the read that allocates only for the bytes that arrive.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use super::{BodyError, Decoded, Decoder};

/// Bytes read at a time while a head is incomplete: on the stack, copied into a buffer
/// sized to what arrived.
const HEAD_READ: usize = 8 * 1024;
/// Buffer room reserved for each read of a request body.
const BODY_READ: usize = 16 * 1024;

/// Reads and decodes a request body into the pipeline's `RequestBody`.
pub(super) struct Feeder {
    pub(super) decoder: Decoder,
    pub(super) tx: mpsc::Sender<Result<Bytes, BodyError>>,
    /// Expect: 100-continue, until the body is first read.
    pub(super) want: Option<oneshot::Receiver<()>>,
    /// The client waits for `100 Continue` (not sent yet) before sending the body.
    pub(super) waits_for_continue: bool,
}

/// One step of a `Feeder`.
pub(super) enum Step {
    /// A piece of body went to the pipeline.
    Sent,
    /// The body was read to its end.
    Done,
    /// The pipeline wants the body: time for `100 Continue`.
    Continue,
    /// The pipeline dropped the body before its end.
    Abandoned,
    /// The body is broken (malformed, or the client left): the error went to the pipeline.
    Failed,
}

impl Feeder {
    /// Cancel-safe: bytes read stay in `buf` and the decoder moves only when data is sent.
    async fn step<I: AsyncRead + Unpin>(&mut self, io: &mut I, buf: &mut BytesMut) -> Step {
        if let Some(want) = &mut self.want {
            let wanted = want.await.is_ok();
            self.want = None;
            self.waits_for_continue = !wanted;
            return if wanted {
                Step::Continue
            } else {
                Step::Abandoned
            };
        }
        let Ok(permit) = self.tx.reserve().await else {
            return Step::Abandoned;
        };
        loop {
            let mut data = Bytes::new();
            match self.decoder.decode(buf, &mut data) {
                Ok(Some(Decoded::Data)) => {
                    permit.send(Ok(data));
                    return if self.decoder.finished() {
                        Step::Done
                    } else {
                        Step::Sent
                    };
                }
                Ok(Some(Decoded::End)) => return Step::Done,
                Ok(None) => {
                    buf.reserve(BODY_READ);
                    match io.read_buf(buf).await {
                        Ok(0) => {
                            permit.send(Err(BodyError::Incomplete));
                            return Step::Failed;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            permit.send(Err(e.into()));
                            return Step::Failed;
                        }
                    }
                }
                Err(why) => {
                    permit.send(Err(BodyError::Malformed(why)));
                    return Step::Failed;
                }
            }
        }
    }
}

pub(super) enum ReadEvent {
    Fed(Step),
    Filled(io::Result<usize>),
}

/// What the read side does while a request is served: feed its body, or (once the body is
/// in) watch for the client leaving, keeping what it pipelines — while there is `room`.
pub(super) async fn read_side<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    feeder: &mut Option<Feeder>,
    room: bool,
) -> ReadEvent {
    match feeder {
        None if room => ReadEvent::Filled(poll_fn(|cx| fill(io, cx, buf)).await),
        _ => ReadEvent::Fed(feed(io, buf, feeder).await),
    }
}

/// A step of the body's feeder once the response is going out.
pub(super) fn answered_step(step: Step, feeder: &mut Option<Feeder>, unfinished: &mut bool) {
    match step {
        // Too late for a 100 once the answer is out: the body is read anyway.
        Step::Sent | Step::Continue => {}
        Step::Done => *feeder = None,
        Step::Abandoned | Step::Failed => {
            *feeder = None;
            *unfinished = true;
        }
    }
}

/// One step of the body's feeder, if there is one (else never ready).
pub(super) async fn feed<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    feeder: &mut Option<Feeder>,
) -> Step {
    match feeder {
        Some(f) => f.step(io, buf).await,
        None => std::future::pending().await,
    }
}

/// Discard what `buf` holds of a body: true when its end was in it.
pub(super) fn discard_buffered(decoder: &mut Decoder, buf: &mut BytesMut) -> bool {
    let mut data = Bytes::new();
    loop {
        match decoder.decode(buf, &mut data) {
            Ok(Some(Decoded::Data)) => {}
            Ok(Some(Decoded::End)) => return true,
            Ok(None) | Err(_) => return false,
        }
    }
}

/// Read once into a stack buffer and append what came to `buf`, so a buffer is allocated
/// only when bytes arrive, at the size they need.
pub(super) fn fill<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut scratch = [MaybeUninit::<u8>::uninit(); HEAD_READ];
    let mut rb = ReadBuf::uninit(&mut scratch);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    buf.extend_from_slice(rb.filled());
    Poll::Ready(Ok(rb.filled().len()))
}

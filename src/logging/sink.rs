//! Where access-log lines go: a buffer per thread that the request path formats whole lines
//! into, and a writer thread that owns the file (or stderr) and writes the buffers out in
//! batches.
//!
//! A request never waits for a disk, nor for another worker: each thread formats its line
//! straight into its own buffer (a lock only the writer ever contends for, once a second).
//! A full buffer (64 KiB, as nginx's `buffer=64k` per worker) is handed to the writer
//! through a bounded queue, and when that queue is full too (the disk is slower than the
//! traffic) the batch is dropped and its lines counted (`doorman_log_dropped_lines_total`).
//! The writer also takes whatever every thread has buffered once a second, so a quiet
//! proxy's lines still appear promptly. As with nginx's workers, lines from different
//! threads may reach the file out of time order by up to that second; each thread's own
//! lines stay in order.
//!
//! Lines are only ever appended whole and a batch is written with one `write_all`, so a
//! reopen (SIGUSR1, logrotate) or a retarget (a reload that changes `[log] access`) falls
//! between lines: the batches before it go to the old file, the rest to the new one.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::AccessTarget;

/// A buffer this full is handed to the writer.
const BATCH_BYTES: usize = 64 * 1024;
/// Batches queued for the writer before new ones are dropped (at most ~1 MiB waiting).
const QUEUE: usize = 16;
/// The longest a line waits in the buffer.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    lines: u64,
}

enum Message {
    Batch(Buffer),
    /// Look at `Shared::control` (reopen, retarget, flush).
    Wake,
}

#[derive(Default)]
struct Control {
    reopen: bool,
    target: Option<AccessTarget>,
    /// Write everything buffered, then answer.
    flush: Vec<std::sync::mpsc::Sender<()>>,
}

type Local = Arc<Mutex<Buffer>>;

struct Shared {
    /// Which sink a thread's buffer belongs to (a process has one; tests start several).
    id: usize,
    /// Every thread's buffer, so the writer can take what is buffered.
    buffers: Mutex<Vec<Local>>,
    /// Emptied batches the writer hands back, so steady traffic allocates no buffers.
    spare: Mutex<Vec<Vec<u8>>>,
    control: Mutex<Control>,
    dropped: AtomicU64,
    written: AtomicU64,
}

/// The handle the request path and the signal handlers use; the writer thread holds the
/// receiving end.
pub(crate) struct Sink {
    shared: Arc<Shared>,
    queue: SyncSender<Message>,
}

thread_local! {
    /// This thread's buffer and the sink it belongs to.
    static LOCAL: RefCell<Option<(usize, Local)>> = const { RefCell::new(None) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sink {
    /// Start the writer thread writing to `target`.
    pub(crate) fn start(target: AccessTarget) -> std::io::Result<Sink> {
        static IDS: AtomicUsize = AtomicUsize::new(0);
        let shared = Arc::new(Shared {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            buffers: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            control: Mutex::new(Control::default()),
            dropped: AtomicU64::new(0),
            written: AtomicU64::new(0),
        });
        let out = Output::open(&target)?;
        let (queue, rx) = sync_channel(QUEUE);
        let writer = Writer {
            shared: shared.clone(),
            out,
            target,
        };
        std::thread::Builder::new()
            .name("doorman-access-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Sink { shared, queue })
    }

    /// Append one whole line: `write` appends it (with its newline) to this thread's buffer.
    pub(crate) fn append_with(&self, write: impl FnOnce(&mut Vec<u8>)) {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let buffer = match &*local {
                Some((id, b)) if *id == self.shared.id => b,
                _ => {
                    let b: Local = Arc::new(Mutex::new(Buffer {
                        bytes: Vec::with_capacity(BATCH_BYTES + 1024),
                        lines: 0,
                    }));
                    lock(&self.shared.buffers).push(b.clone());
                    &local.insert((self.shared.id, b)).1
                }
            };
            let full = {
                let mut b = lock(buffer);
                write(&mut b.bytes);
                b.lines += 1;
                if b.bytes.len() < BATCH_BYTES {
                    return;
                }
                let fresh = lock(&self.shared.spare)
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + 1024));
                Buffer {
                    bytes: std::mem::replace(&mut b.bytes, fresh),
                    lines: std::mem::take(&mut b.lines),
                }
            };
            self.hand_over(full);
        });
    }

    fn hand_over(&self, full: Buffer) {
        if let Err(
            TrySendError::Full(Message::Batch(b)) | TrySendError::Disconnected(Message::Batch(b)),
        ) = self.queue.try_send(Message::Batch(full))
        {
            self.shared.dropped.fetch_add(b.lines, Ordering::Relaxed);
            let mut bytes = b.bytes;
            bytes.clear();
            lock(&self.shared.spare).push(bytes);
        }
    }

    /// Reopen the file at its path (after logrotate moved it away).
    pub(crate) fn reopen(&self) {
        lock(&self.shared.control).reopen = true;
        self.wake();
    }

    /// Write to `target` from the next batch on.
    pub(crate) fn retarget(&self, target: AccessTarget) {
        lock(&self.shared.control).target = Some(target);
        self.wake();
    }

    /// Write out everything appended so far; wait at most `timeout` for it.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        lock(&self.shared.control).flush.push(tx);
        self.wake();
        rx.recv_timeout(timeout).is_ok()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    fn wake(&self) {
        // A full queue wakes the writer anyway: it looks at the controls after each batch.
        let _ = self.queue.try_send(Message::Wake);
    }
}

enum Output {
    Off,
    Stderr,
    File(File),
}

impl Output {
    fn open(target: &AccessTarget) -> std::io::Result<Output> {
        Ok(match target {
            AccessTarget::Off => Output::Off,
            AccessTarget::Stderr => Output::Stderr,
            AccessTarget::File(path) => {
                Output::File(OpenOptions::new().create(true).append(true).open(path)?)
            }
        })
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Off => Ok(()),
            Output::Stderr => std::io::stderr().lock().write_all(bytes),
            Output::File(f) => f.write_all(bytes),
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    out: Output,
    target: AccessTarget,
}

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        let mut last_take = Instant::now();
        let mut last_error: Option<Instant> = None;
        loop {
            let wait = FLUSH_EVERY.saturating_sub(last_take.elapsed());
            match rx.recv_timeout(wait) {
                Ok(Message::Batch(b)) => self.write(b, &mut last_error),
                Ok(Message::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            let control = std::mem::take(&mut *lock(&self.shared.control));
            let due = last_take.elapsed() >= FLUSH_EVERY;
            if due || !control.flush.is_empty() || control.reopen || control.target.is_some() {
                // Everything appended before the control goes where the control found it.
                while let Ok(m) = rx.try_recv() {
                    if let Message::Batch(b) = m {
                        self.write(b, &mut last_error);
                    }
                }
                for pending in self.take_buffered() {
                    self.write(pending, &mut last_error);
                }
                last_take = Instant::now();
            }
            if let Some(target) = control.target {
                self.target = target;
                self.reopen(&mut last_error);
            } else if control.reopen {
                self.reopen(&mut last_error);
            }
            for done in control.flush {
                let _ = done.send(());
            }
        }
    }

    /// What every thread has buffered. A thread that has exited leaves its buffer behind; it
    /// is forgotten once emptied.
    fn take_buffered(&self) -> Vec<Buffer> {
        let mut buffers = lock(&self.shared.buffers);
        let mut taken = Vec::new();
        for local in buffers.iter() {
            let mut b = lock(local);
            if b.lines > 0 {
                let fresh = lock(&self.shared.spare)
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(BATCH_BYTES + 1024));
                taken.push(Buffer {
                    bytes: std::mem::replace(&mut b.bytes, fresh),
                    lines: std::mem::take(&mut b.lines),
                });
            }
        }
        buffers.retain(|local| Arc::strong_count(local) > 1);
        taken
    }

    fn write(&mut self, b: Buffer, last_error: &mut Option<Instant>) {
        if b.lines == 0 {
            return;
        }
        match self.out.write(&b.bytes) {
            Ok(()) => {
                self.shared.written.fetch_add(b.lines, Ordering::Relaxed);
            }
            Err(e) => {
                self.shared.dropped.fetch_add(b.lines, Ordering::Relaxed);
                // One warning per ten seconds of trouble, not one per batch.
                if last_error.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    *last_error = Some(Instant::now());
                    tracing::warn!(error = %e, lines = b.lines, "access log: write failed, lines dropped");
                }
            }
        }
        let mut bytes = b.bytes;
        bytes.clear();
        let mut spare = lock(&self.shared.spare);
        if spare.len() < QUEUE {
            spare.push(bytes);
        }
    }

    fn reopen(&mut self, last_error: &mut Option<Instant>) {
        match Output::open(&self.target) {
            Ok(out) => {
                self.out = out;
                *last_error = None;
            }
            // Keep writing to the file already open rather than lose lines.
            Err(e) => {
                tracing::error!(error = %e, target = ?self.target, "access log: cannot reopen; still writing to the previous file")
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! The logs. The access log has a path of its own, off `tracing`: one line per request,
//! formatted straight into a buffer of the request's thread (`line`) and written by a writer thread
//! (`sink`), so a line costs well under a microsecond and a slow disk never holds a request.
//! The diagnostic log (errors, reloads, health changes) stays on `tracing`; its level comes
//! from `[log] level` unless `RUST_LOG` is set.
//!
//! The binary starts the writer (`start`); a library user that never does gets no access log
//! (lines are formatted nowhere and written nowhere).

pub mod line;
mod sink;

use std::sync::OnceLock;
use std::time::Duration;

use crate::config::{AccessFormat, LogSettings};
use line::Entry;
use sink::Sink;

static SINK: OnceLock<Sink> = OnceLock::new();
type LevelHook = Box<dyn Fn(&str) + Send + Sync>;
static LEVEL: OnceLock<LevelHook> = OnceLock::new();

/// Start the access-log writer with `settings` (once per process; later calls only
/// retarget it).
pub fn start(settings: &LogSettings) -> std::io::Result<()> {
    if let Some(sink) = SINK.get() {
        sink.retarget(settings.access.clone());
        return Ok(());
    }
    let sink = Sink::start(settings.access.clone())?;
    let _ = SINK.set(sink);
    Ok(())
}

/// How `[log] level` reaches the diagnostic log's filter; the binary sets it (and does not
/// when `RUST_LOG` overrides the level).
pub fn set_level_hook(hook: impl Fn(&str) + Send + Sync + 'static) {
    let _ = LEVEL.set(Box::new(hook));
}

/// A reload changed `[log]`: the access log follows its new target (a file opened anew) and
/// the diagnostic log its level.
pub(crate) fn apply(old: &LogSettings, new: &LogSettings) {
    if old.access != new.access
        && let Some(sink) = SINK.get()
    {
        sink.retarget(new.access.clone());
    }
    if old.level != new.level {
        apply_level(&new.level);
    }
}

/// Set the diagnostic log's level (no-op when `RUST_LOG` overrides it).
pub fn apply_level(level: &str) {
    if let Some(hook) = LEVEL.get() {
        hook(level);
    }
}

/// Reopen the access-log file at its path (SIGUSR1, after logrotate moved it).
pub fn reopen() {
    if let Some(sink) = SINK.get() {
        sink.reopen();
    }
}

/// Write out every line appended so far (at shutdown); false when that took over `timeout`.
pub fn flush(timeout: Duration) -> bool {
    SINK.get().is_none_or(|s| s.flush(timeout))
}

/// The writer runs: access-log lines go somewhere.
pub(crate) fn running() -> bool {
    SINK.get().is_some()
}

/// Access-log lines dropped: the writer's queue was full, or the write failed.
pub fn dropped_lines() -> u64 {
    SINK.get().map_or(0, Sink::dropped)
}

/// Access-log lines written.
pub fn written_lines() -> u64 {
    SINK.get().map_or(0, Sink::written)
}

/// Format `entry` and append it to the access log, if the writer runs.
pub(crate) fn access(format: AccessFormat, entry: &Entry<'_>) {
    if let Some(sink) = SINK.get() {
        sink.append_with(|out| entry.write(format, out));
    }
}

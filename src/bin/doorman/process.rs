//! The running process: its pid file, and what its signals do (SIGHUP reloads, SIGUSR1
//! reopens the access log, SIGTERM/SIGINT drain then stop, a second one stops at once).

use std::path::PathBuf;

use doorman::reload::Reloader;
use tracing::{error, info};

/// Reopen the access-log file on every SIGUSR1 (logrotate's postrotate, as nginx's USR1).
pub(crate) async fn reopen_on_sigusr1(mut usr1: tokio::signal::unix::Signal) {
    while usr1.recv().await.is_some() {
        info!("SIGUSR1: reopening the access log");
        doorman::logging::reopen();
    }
}

/// The pid file currently written, if any (a reload may move it).
#[derive(Clone, Default)]
pub(crate) struct PidFile(std::sync::Arc<std::sync::Mutex<Option<PathBuf>>>);

impl PidFile {
    /// Write our pid to `path` (whole or not at all: a temp file renamed), and remove the
    /// previous file if it was elsewhere.
    pub(crate) fn set(&self, path: Option<&std::path::Path>) -> Result<(), String> {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_deref() == path {
            return Ok(());
        }
        if let Some(p) = path {
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, format!("{}\n", std::process::id()))
                .and_then(|()| std::fs::rename(&tmp, p))
                .map_err(|e| format!("cannot write the pid file {}: {e}", p.display()))?;
        }
        if let Some(old) = current.take() {
            let _ = std::fs::remove_file(old);
        }
        *current = path.map(PathBuf::from);
        Ok(())
    }

    pub(crate) fn remove(&self) {
        if let Some(p) = self.0.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Every SIGHUP asks the server for a reload; the outcome is logged by the reloader.
pub(crate) async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reloader: std::sync::Arc<Reloader>,
) {
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading {}", reloader.path().display());
        if reloader.reload().await.is_none() {
            return;
        }
    }
}

/// After each applied reload, move the pid file if `[server] pid_file` changed.
pub(crate) async fn follow_pid_file(
    mut applied: tokio::sync::watch::Receiver<u64>,
    snapshot: doorman::snapshot::SharedSnapshot,
    pid_file: PidFile,
) {
    while applied.changed().await.is_ok() {
        let wanted = snapshot.load().settings.pid_file.clone();
        if let Err(e) = pid_file.set(wanted.as_deref()) {
            error!("{e}");
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once. Installs its
/// handlers when first polled (`demo`).
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(term), Ok(int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    shutdown_on(term, int, None).await
}

/// Resolves on the first SIGINT or SIGTERM; a second one removes the pid file and exits
/// at once.
pub(crate) async fn shutdown_on(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    pid_file: Option<PidFile>,
) {
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down gracefully"),
        _ = int.recv() => info!("SIGINT: shutting down gracefully"),
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        error!("second signal: exiting now");
        doorman::logging::flush(std::time::Duration::from_secs(1));
        if let Some(p) = pid_file {
            p.remove();
        }
        std::process::exit(1);
    });
}

//! Hot reload (SIGHUP, `POST /reload`, `doorman reload`): read proxy.toml, validate it, build
//! a complete new snapshot beside the running one and bind any new listener address — and
//! only when every step worked, swap the snapshot in with one store and move the listeners.
//! A failed reload changes nothing; its errors are logged, counted and kept for
//! `GET /reload` on the admin listener.
//!
//! The work itself runs in `server::run`, which owns the listeners; this module holds what
//! is needed to ask for a reload and to report on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::snapshot::Snapshot;

/// The outcome of the last reload, and counts of all of them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Reloads attempted since start (0: only the initial load).
    pub generation: u64,
    /// "ok" or "failure": the last attempt's result.
    pub result: &'static str,
    /// When the last attempt finished (unix milliseconds).
    pub at_unix_ms: u64,
    /// xxh3 of the file text the running snapshot was built from.
    pub config_hash: String,
    /// The last attempt's errors (empty when it worked).
    pub errors: Vec<String>,
    pub succeeded: u64,
    pub failed: u64,
}

/// What a reload request gets back.
type Reply = oneshot::Sender<ReloadStatus>;

/// Where reloads come from: a config file, and a channel into the running server.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    status: Mutex<ReloadStatus>,
    requests: mpsc::Sender<Reply>,
    /// The generation of the last reload that was applied.
    applied: tokio::sync::watch::Sender<u64>,
}

/// The receiving end, handed to `server::run_reloadable`.
#[derive(Debug)]
pub struct ReloadRequests(pub(crate) mpsc::Receiver<Reply>);

impl Reloader {
    /// A reloader for the config at `path`, whose text `text` built the running snapshot.
    pub fn new(path: &Path, text: &str) -> (Arc<Reloader>, ReloadRequests) {
        let (tx, rx) = mpsc::channel(16);
        let status = ReloadStatus {
            generation: 0,
            result: "ok",
            at_unix_ms: now_ms(),
            config_hash: config_hash(text),
            errors: Vec::new(),
            succeeded: 0,
            failed: 0,
        };
        let reloader = Reloader {
            path: path.to_path_buf(),
            status: Mutex::new(status),
            requests: tx,
            applied: tokio::sync::watch::Sender::new(0),
        };
        (Arc::new(reloader), ReloadRequests(rx))
    }

    /// Ask the running server to reload, and wait for the outcome. None: the server is
    /// gone (shutting down).
    pub async fn reload(&self) -> Option<ReloadStatus> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.ok()?;
        rx.await.ok()
    }

    pub fn status(&self) -> ReloadStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes each time a reload is applied (for what follows the configuration outside
    /// the snapshot, such as the pid file).
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record an attempt's outcome (logged here, once).
    pub(crate) fn record(&self, outcome: Result<String, Vec<String>>) -> ReloadStatus {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.generation += 1;
        s.at_unix_ms = now_ms();
        match outcome {
            Ok(hash) => {
                s.result = "ok";
                s.config_hash = hash;
                s.errors.clear();
                s.succeeded += 1;
                self.applied.send_replace(s.generation);
                info!(config = %self.path.display(), config_hash = %s.config_hash, generation = s.generation, "reload: new configuration in service");
            }
            Err(errors) => {
                s.result = "failure";
                for e in &errors {
                    warn!(config = %self.path.display(), error = %e, "reload refused");
                }
                warn!(
                    errors = errors.len(),
                    generation = s.generation,
                    "reload failed: the running configuration is unchanged"
                );
                s.errors = errors;
                s.failed += 1;
            }
        }
        s.clone()
    }
}

/// A reload ready to apply: nothing of it is visible yet.
pub(crate) struct Prepared {
    pub(crate) snapshot: Snapshot,
    pub(crate) hash: String,
    /// New sockets for the listeners whose configured address changed (None: the listener
    /// is gone, e.g. `plain_listen` removed).
    pub(crate) tls: Option<TcpListener>,
    pub(crate) plain: Option<Option<TcpListener>>,
    pub(crate) admin: Option<TcpListener>,
}

/// Reading and validating a file (certificates, host names to resolve) may block: it runs
/// on the blocking pool and may take at most this long.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read, validate and build; bind what moved. Every error, none applied.
pub(crate) async fn prepare(path: &Path, current: &Snapshot) -> Result<Prepared, Vec<String>> {
    let file = path.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| vec![format!("{}: cannot read file: {e}", file.display())])?;
        let config = crate::config::parse(&text, &file).map_err(|e| {
            e.to_string()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })?;
        Ok::<_, Vec<String>>((text, config))
    });
    let (text, mut config) = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => return Err(vec![format!("reading the configuration failed: {e}")]),
        Err(_) => {
            return Err(vec![format!(
                "{}: reading and validating took over {READ_TIMEOUT:?}",
                path.display()
            )]);
        }
    };
    let old = &current.settings;
    let new = &mut config.server;
    // The runtime and the connection limit are sized once, at start: the snapshot keeps
    // stating what is in force.
    if new.workers != old.workers || new.max_connections != old.max_connections {
        warn!(
            workers = new.workers,
            max_connections = new.max_connections,
            "reload: server.workers and server.max_connections take effect at the next restart"
        );
        new.workers = old.workers;
        new.max_connections = old.max_connections;
    }
    let snapshot = Snapshot::rebuild(&config, Some(current)).map_err(|e| vec![e])?;
    let new = &config.server;
    // Bind before anything is swapped: a taken port fails the reload, not the service.
    let tls = rebind("server.listen", old.listen, Some(new.listen)).await?;
    let plain = rebind("server.plain_listen", old.plain_listen, new.plain_listen).await?;
    let admin = rebind(
        "server.admin_listen",
        old.admin_listen,
        Some(new.admin_listen),
    )
    .await?;
    Ok(Prepared {
        snapshot,
        hash: config_hash(&text),
        tls: tls.flatten(),
        plain,
        admin: admin.flatten(),
    })
}

/// None: unchanged. Some(None): removed. Some(Some(l)): moved to a newly bound address.
async fn rebind(
    key: &str,
    old: impl Into<Option<SocketAddr>>,
    new: Option<SocketAddr>,
) -> Result<Option<Option<TcpListener>>, Vec<String>> {
    if old.into() == new {
        return Ok(None);
    }
    match new {
        None => Ok(Some(None)),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(|l| Some(Some(l)))
            .map_err(|e| vec![format!("{key}: cannot bind {addr}: {e}")]),
    }
}

/// The hash reported for a config file's text (`GET /reload`, `doorman reload`).
pub fn config_hash(text: &str) -> String {
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

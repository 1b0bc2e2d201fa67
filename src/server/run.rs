//! The server's life: start the accept loops and the admin listener, apply reloads (a new
//! snapshot swapped in, listeners moved), then drain and close on shutdown.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::accept::{Kind, accept_loop};
use super::{BoundAddrs, Listeners};
use crate::admin::{self, AdminState};
use crate::metrics::Metrics;
use crate::pipeline::Phase;
use crate::reload::{self, ReloadRequests, Reloader};
use crate::snapshot::SharedSnapshot;

/// After the grace period, connections get this long to notice `Phase::Closing` and go.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A running accept loop and the way to stop it (its listener closes when it returns).
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn stop(self) -> JoinHandle<()> {
        let _ = self.stop.send(());
        self.task
    }
}

/// Serve until `shutdown` resolves, then stop accepting, drain for up to `shutdown_grace`,
/// close whatever is left, and return.
pub async fn run(
    listeners: Listeners,
    snapshot: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    run_reloadable(listeners, snapshot, shutdown, None).await
}

/// `run`, also applying the reloads asked of `reloader` (SIGHUP, `POST /reload`): each one
/// is prepared off to the side and, when complete, swapped in while requests keep flowing.
pub async fn run_reloadable(
    listeners: Listeners,
    snapshot: SharedSnapshot,
    shutdown: impl Future<Output = ()>,
    reload: Option<(Arc<Reloader>, ReloadRequests)>,
) -> io::Result<()> {
    let addrs = listeners.addrs()?;
    let max = u32::try_from(snapshot.load().settings.max_connections).unwrap_or(u32::MAX);
    let limit = Arc::new(Semaphore::new(max as usize));
    let (phase_tx, phase_rx) = watch::channel(Phase::Serving);
    let (reloader, mut requests) = match reload {
        Some((r, q)) => (Some(r), Some(q.0)),
        None => (None, None),
    };
    let admin_state = Arc::new(AdminState::new(reloader.clone(), addrs));
    // Per-replica totals every 5 s, for the status page's recent error rates.
    let sampler = {
        let (state, snapshot) = (admin_state.clone(), snapshot.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                state.sample(&snapshot.load());
            }
        })
    };

    let accepting = |listener: TcpListener, kind: Kind| {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            kind,
            snapshot.clone(),
            limit.clone(),
            phase_rx.clone(),
            stopped,
        ));
        Running { stop, task }
    };
    let admin = |listener: TcpListener| {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(admin::serve(
            listener,
            admin_state.clone(),
            snapshot.clone(),
            stopped,
        ));
        Running { stop, task }
    };

    if let Some(r) = &reloader {
        snapshot.load().metrics.set_config(&r.status().config_hash);
    }
    // Listeners are bound (before `run`) and the snapshot is built: ready from the first
    // answer the admin listener gives.
    admin_state.ready.store(true, Ordering::Release);
    let mut admin_loop = admin(listeners.admin);
    let mut tls_loop = accepting(listeners.tls, Kind::Tls);
    let mut plain_loop = listeners.plain.map(|l| accepting(l, Kind::Plain));
    info!(listen = %addrs.tls, plain_listen = ?addrs.plain, admin_listen = %addrs.admin, "doorman ready");

    tokio::pin!(shutdown);
    loop {
        let next_reload = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            Some(reply) = next_reload => {
                let Some(reloader) = &reloader else { continue };
                crate::service_notify::reloading();
                let current = snapshot.load_full();
                let outcome = match reload::prepare(reloader.path(), &current).await {
                    Ok(p) => {
                        // Nothing can fail from here: settings of a kept store apply, then
                        // one store — requests from here on see the new snapshot, running
                        // ones keep the one they started with.
                        p.snapshot.commit();
                        crate::logging::apply(&current.log, &p.snapshot.log);
                        let groups = &p.snapshot.groups;
                        p.snapshot.metrics.retain(
                            groups
                                .iter()
                                .flat_map(|g| g.servers.iter().map(|s| (&g.label, s.address))),
                            groups.iter().map(|g| &g.label),
                        );
                        snapshot.store(Arc::new(p.snapshot));
                        // New sockets start accepting before the old ones close.
                        let moved = |f: &dyn Fn(&mut BoundAddrs)| {
                            if let Some(a) = admin_state.listeners.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                                f(a);
                            }
                        };
                        if let Some(l) = p.tls {
                            info!(listen = ?l.local_addr().ok(), "TLS listener moved");
                            if let Ok(a) = l.local_addr() {
                                moved(&|b| b.tls = a);
                            }
                            std::mem::replace(&mut tls_loop, accepting(l, Kind::Tls)).stop();
                        }
                        if let Some(l) = p.plain {
                            let a = l.as_ref().and_then(|l| l.local_addr().ok());
                            info!(plain_listen = ?a, "plain listener moved");
                            moved(&|b| b.plain = a);
                            let new = l.map(|l| accepting(l, Kind::Plain));
                            if let Some(old) = std::mem::replace(&mut plain_loop, new) {
                                old.stop();
                            }
                        }
                        if let Some(l) = p.admin {
                            info!(admin_listen = ?l.local_addr().ok(), "admin listener moved");
                            if let Ok(a) = l.local_addr() {
                                moved(&|b| b.admin = a);
                            }
                            std::mem::replace(&mut admin_loop, admin(l)).stop();
                        }
                        Ok(p.hash)
                    }
                    Err(errors) => Err(errors),
                };
                let metrics = snapshot.load().metrics.clone();
                Metrics::count(&metrics.reloads, if outcome.is_ok() { "ok" } else { "failure" });
                if let Ok(hash) = &outcome {
                    metrics.set_config(hash);
                }
                crate::service_notify::reloaded(outcome.is_ok());
                let _ = reply.send(reloader.record(outcome));
            }
        }
    }

    // Reloads asked for from now on get "shutting down" instead of waiting forever.
    drop(requests);
    admin_state.ready.store(false, Ordering::Release);
    crate::service_notify::stopping();
    let _ = phase_tx.send(Phase::Draining);
    let _ = tls_loop.stop().await;
    if let Some(l) = plain_loop {
        let _ = l.stop().await;
    }
    // The grace period as configured now (a reload may have changed it).
    let grace = snapshot.load().settings.shutdown_grace;
    let open = |l: &Semaphore| max as usize - l.available_permits();
    info!(open_connections = open(&limit), ?grace, "draining");
    // Every connection (and upgraded tunnel) holds one permit: all permits back = all done.
    if tokio::time::timeout(grace, limit.acquire_many(max))
        .await
        .is_ok()
    {
        info!("drained");
    } else {
        warn!(
            still_open = open(&limit),
            "shutdown grace expired; closing remaining connections"
        );
        let _ = phase_tx.send(Phase::Closing);
        if tokio::time::timeout(CLOSE_WAIT, limit.acquire_many(max))
            .await
            .is_err()
        {
            warn!(
                still_open = open(&limit),
                "connections did not close in time"
            );
        }
    }
    admin_loop.stop().abort();
    sampler.abort();
    Ok(())
}

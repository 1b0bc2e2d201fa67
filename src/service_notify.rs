//! Telling systemd (`Type=notify`, sd_notify(3)) where the service is in its life: ready,
//! reloading, ready again, stopping. Every function is a no-op when `NOTIFY_SOCKET` is not
//! set (not started by systemd, the tests' in-process proxies); a failed send is logged
//! and otherwise ignored: the service never stops over its manager not listening.

use sd_notify::NotifyState;
use tracing::warn;

/// Listeners bound and the first snapshot built: systemd may start what depends on us.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload is starting (SIGHUP or `POST /reload`). `MONOTONIC_USEC` is the time the
/// reload began, which systemd wants with `RELOADING=1` to match it with its own request.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload has finished, applied or refused: either way the service is in service again.
pub(crate) fn reloaded(applied: bool) {
    let status = if applied {
        "configuration reloaded"
    } else {
        "reload failed: the running configuration is unchanged"
    };
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The listeners stop accepting and open connections drain.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

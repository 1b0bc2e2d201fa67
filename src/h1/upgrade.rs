//! Upgrades: the `OnUpgrade` a request that asked to upgrade carries, which resolves to the
//! connection (`Upgraded`) once a 101 answer to it has been sent.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::Rewind;

/// An IO an upgraded connection can be: whatever the connection was served on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An upgraded connection: its IO, replaying first what was read past the request head.
pub(crate) type Upgraded = Rewind<Box<dyn Io>>;

/// In the extensions of a request that asked to upgrade: resolves to the connection once
/// a 101 response to it has been sent. (Clone, as `http` extensions must be; only the
/// first `upgraded` gets the connection.)
#[derive(Debug, Clone)]
pub(crate) struct OnUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

#[derive(Debug, thiserror::Error)]
#[error("the connection was not upgraded")]
pub(crate) struct NotUpgraded;

impl OnUpgrade {
    /// The request's side of an upgrade; the connection sends on the other once the 101
    /// has gone out.
    pub(super) fn new(rx: oneshot::Receiver<Upgraded>) -> Self {
        OnUpgrade(Arc::new(Mutex::new(Some(rx))))
    }

    pub(crate) async fn upgraded(self) -> Result<Upgraded, NotUpgraded> {
        let rx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        match rx {
            Some(rx) => rx.await.map_err(|_| NotUpgraded),
            None => Err(NotUpgraded),
        }
    }
}

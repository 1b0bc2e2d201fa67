//! The refresh task: one per running key set. Fetches at start, then on schedule or when a
//! request with an unknown kid was granted an early fetch; one fetch at a time, so requests
//! that arrive while one runs wait for it instead of starting their own.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::Uri;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::error;

use super::fetch::{Client, FetchError};
use super::{Shared, lock};
use crate::config::{JwksSource, parse_key_set};

/// Run until the last handle on the set is dropped (`stop` closes).
pub(super) async fn run(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let client = tokio::select! {
        _ = &mut stop => return,
        c = Client::new(&shared.settings) => c,
    };
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "JWKS: cannot build the HTTPS client; the key set will not load");
            lock(&shared.record).last_error = Some(e);
            shared.in_flight.store(false, Ordering::Release);
            return;
        }
    };
    // The jwks_uri discovery found, until a fetch from it fails.
    let mut discovered: Option<Uri> = None;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.wake.notified() => {
                // A wake-up left over from a request whose fetch already ran.
                if !shared.early.load(Ordering::Acquire) {
                    continue;
                }
            }
        }
        shared.in_flight.store(true, Ordering::Release);
        // Any fetch that starts now serves the early request too.
        shared.early.store(false, Ordering::Release);
        let outcome = tokio::select! {
            _ = &mut stop => return,
            o = fetch_once(&client, &shared, &mut discovered) => o,
        };
        let wait = shared.finish(outcome);
        next = Instant::now() + wait;
        shared.in_flight.store(false, Ordering::Release);
        shared.done.send_modify(|n| *n += 1);
    }
}

/// One refresh: discovery when needed, the set, parsed and put in force. Ok holds the
/// provider's max-age.
async fn fetch_once(
    client: &Client,
    shared: &Shared,
    discovered: &mut Option<Uri>,
) -> Result<Option<Duration>, FetchError> {
    let uri = match (&shared.settings.source, &discovered) {
        (JwksSource::Url(u), _) => u.clone(),
        (JwksSource::Discovery { .. }, Some(u)) => u.clone(),
        (JwksSource::Discovery { document, issuer }, None) => {
            let u = client.discover(document, issuer).await?;
            lock(&shared.record).jwks_uri = Some(u.to_string());
            *discovered = Some(u.clone());
            u
        }
        (JwksSource::File { .. }, _) => {
            return Err(FetchError::Invalid("a file is not fetched".into()));
        }
    };
    let result = async {
        let (body, max_age) = client.get(&uri).await?;
        let parsed =
            parse_key_set(&body, &shared.settings.algorithms).map_err(FetchError::Invalid)?;
        shared.apply(parsed)?;
        Ok(max_age)
    }
    .await;
    if result.is_err() {
        // The provider may have moved its keys: discover again next time.
        *discovered = None;
    }
    result
}

//! Active health checks: a task per group that asks each replica for `health.path` every
//! interval and feeds the answers to the replica's health state.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;

use super::exchange::RequestBody;
use super::group::{Upstream, UpstreamGroup};

/// A health check's request has no body.
impl RequestBody for Empty<Bytes> {
    fn sent(&mut self) {}
}

impl UpstreamGroup {
    /// Start active health checks (when `health.path` is set). The task holds the group
    /// weakly and ends when the group's snapshot is gone. Call within a tokio runtime.
    pub(crate) fn start_health_checks(self: &Arc<Self>) {
        let Some(path) = self.health.path.clone() else {
            return;
        };
        let group = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(g) = group.upgrade() else { return };
                let interval = g.health.interval;
                for s in &g.servers {
                    let ok = g.check(s, &path).await;
                    s.record_check(ok, &g.health);
                }
                drop(g);
                tokio::time::sleep(interval).await;
            }
        });
    }

    async fn check(&self, s: &Upstream, path: &str) -> bool {
        let Ok(uri) = http::Uri::try_from(path) else {
            return false;
        };
        let body = Empty::<Bytes>::new();
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.uri = uri;
        parts.headers.insert(
            http::header::USER_AGENT,
            http::HeaderValue::from_static("doorman-health"),
        );
        // No Host of its own: the replica's authority is written as Host.
        let host = Some(s.authority.as_str().as_bytes());
        // The whole check, the body included, within the timeout: checks run one replica
        // after another, so one stalled body would stop them all.
        let check = async {
            let resp = s.pool.send(&parts, host, &[], body).await.ok()?;
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Read to the end, so the pooled connection can be reused.
            http_body_util::BodyExt::collect(resp.into_body())
                .await
                .ok()?;
            Some(ok)
        };
        matches!(
            tokio::time::timeout(self.health.timeout, check).await,
            Ok(Some(true))
        )
    }
}

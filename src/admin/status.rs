//! `GET /status`: the operator's page (static HTML) and its JSON, with the per-replica
//! totals sampled every few seconds for recent error rates.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{AdminState, json_owned, wants_json};
use crate::snapshot::Snapshot;

/// (group, replica) → (selections, answered, failed).
pub(super) type Totals = std::collections::HashMap<(String, std::net::SocketAddr), (u64, u64, u64)>;

/// How far back "recent" error rates look.
const RECENT: std::time::Duration = std::time::Duration::from_secs(60);

fn totals(snap: &Snapshot) -> Totals {
    snap.groups
        .iter()
        .flat_map(|g| {
            g.servers.iter().map(|s| {
                (
                    (g.name.clone(), s.address),
                    (
                        s.metrics.selections.get(),
                        s.metrics.answered.get(),
                        s.metrics.failed.get(),
                    ),
                )
            })
        })
        .collect()
}

impl AdminState {
    /// Record the current totals (called every few seconds by the server).
    pub(crate) fn sample(&self, snap: &Snapshot) {
        let now = std::time::Instant::now();
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.push_back((now, totals(snap)));
        while h
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > RECENT + RECENT / 10)
        {
            h.pop_front();
        }
    }

    /// The oldest sample within the recent window.
    fn baseline(&self) -> Option<(std::time::Duration, Totals)> {
        let now = std::time::Instant::now();
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.iter()
            .find(|(t, _)| now.duration_since(*t) <= RECENT + RECENT / 10)
            .map(|(t, totals)| (now.duration_since(*t), totals.clone()))
    }
}

/// `GET /status`: the JSON when asked for it, else the page that polls it.
pub(super) async fn answer(
    req: &Request<Incoming>,
    state: &AdminState,
    snap: &Snapshot,
) -> Response<Full<Bytes>> {
    if wants_json(req) {
        json_owned(StatusCode::OK, status(state, snap).await)
    } else {
        let mut resp = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        resp
    }
}

/// The status page: one self-contained HTML file that polls `GET /status` as JSON.
const STATUS_PAGE: &str = include_str!("../status.html");

/// `GET /status` as JSON: what an operator checks first.
async fn status(state: &AdminState, snap: &Snapshot) -> serde_json::Value {
    use serde_json::json;
    let m = &snap.metrics;
    let baseline = state.baseline();
    let now = totals(snap);
    let groups: Vec<serde_json::Value> = snap
        .groups
        .iter()
        .map(|g| {
            // Recent = since the oldest sample of the last minute; a replica that has no
            // sample yet (added by a reload just now) reports null rather than totals.
            let recent = |s: &crate::upstream::Upstream| {
                let key = (g.name.clone(), s.address);
                let (sel, answered, failed) = now.get(&key).copied().unwrap_or_default();
                let (b_sel, b_answered, b_failed) = baseline.as_ref()?.1.get(&key).copied()?;
                Some((
                    sel.saturating_sub(b_sel),
                    answered.saturating_sub(b_answered),
                    failed.saturating_sub(b_failed),
                ))
            };
            let group_selections: u64 = g.servers.iter().filter_map(recent).map(|r| r.0).sum();
            let replicas: Vec<serde_json::Value> = g
                .servers
                .iter()
                .map(|s| {
                    let r = recent(s);
                    json!({
                        "address": s.address.to_string(),
                        "weight": s.weight,
                        "state": s.state(),
                        "in_flight": s.in_flight.load(Ordering::Relaxed),
                        "selections": s.metrics.selections.get(),
                        "ejections": s.metrics.ejections.get(),
                        "share": r.map(|(sel, _, _)| if group_selections > 0 {
                            sel as f64 / group_selections as f64
                        } else { 0.0 }),
                        "recent_requests": r.map(|(_, answered, _)| answered),
                        "recent_error_rate": r.and_then(|(_, answered, failed)| {
                            (answered > 0).then(|| failed as f64 / answered as f64)
                        }),
                    })
                })
                .collect();
            json!({
                "name": g.name,
                "balance": if g.sticky.is_some() { "consistent_hash" } else { "round_robin" },
                "live": g.has_live_replica(),
                "replicas": replicas,
            })
        })
        .collect();
    let counts = |f: &prometheus_client::metrics::family::Family<
        crate::metrics::OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
                  kinds: &[&'static str]| {
        kinds
            .iter()
            .map(|k| {
                let v = f
                    .get(&crate::metrics::OutcomeLabels { outcome: k })
                    .map_or(0, |c| c.get());
                (k.to_string(), json!(v))
            })
            .collect::<serde_json::Map<_, _>>()
    };
    let listeners = state
        .listeners
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .map(|a| {
            json!({
                "tls": a.tls.to_string(),
                "plain": a.plain.map(|p| p.to_string()),
                "admin": a.admin.to_string(),
            })
        });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": m.started.elapsed().as_secs(),
        "ready": state.ready.load(Ordering::Acquire),
        "config": state.reloader.as_ref().map(|r| json!({
            "path": r.path().display().to_string(),
            "reload": r.status(),
        })),
        "listeners": listeners,
        "recent_window_seconds": baseline.map_or(0, |(d, _)| d.as_secs()),
        "groups": groups,
        "store": snap.store.status().await,
        "revocation_checks": {
            "hit": m.revocation_view.get(&crate::metrics::OutcomeLabels { outcome: "hit" }).map_or(0, |c| c.get()),
            "miss": m.revocation_view.get(&crate::metrics::OutcomeLabels { outcome: "miss" }).map_or(0, |c| c.get()),
            "resyncs": m.revocation_resyncs.get(),
        },
        "key_set": snap.auth.as_ref().and_then(|v| v.jwks()).map(|j| j.status()),
        "auth": counts(&m.auth, &["ok", "missing", "malformed", "expired", "bad_signature", "revoked", "store_unavailable"]),
        "idempotency": counts(&m.idempotency, &["first", "replay", "conflict", "mismatch", "not_replayable", "lease_expired"]),
    })
}

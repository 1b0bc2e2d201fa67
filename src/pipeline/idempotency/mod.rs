//! The idempotency stage: keys on write requests (draft-ietf-httpapi-idempotency-key-header,
//! Stripe's design), in two halves around the forward stage: `begin` takes a lease in the
//! store (or answers from it), the forward stage sends the request as it sends any other
//! (re-sent only where that is safe), and `finish` stores the response for `ttl`. A retry
//! gets the stored response, a concurrent duplicate 409, and the same key on a different
//! request 422.
//!
//! The request is *committed* once the replica's response head arrives with a status that
//! is stored rather than released (`commits`): from then on the key is never released, so
//! the request never runs twice while its record lives. `response_timeout` bounds the wait for
//! that head only, as for any request; the body is then read under the connection's
//! `idle_timeout` between chunks and within the lease. A body that cannot be stored leaves
//! a not-replayable record (409 on retry). Before the head, a failure or a retryable status
//! (408/425/429, and 5xx unless `store_server_errors`) releases the key for a retry.
//!
//! The guarantee is at-least-once across a proxy crash: a lease left by a dead instance
//! expires after `lock_ttl`, then the key can be processed again. docs/idempotency.md has
//! the states of a key.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, Either, Full};
use tracing::{info, warn};

use super::body::DownstreamBody;
use super::context::{Attempts, ConnInfo};
use super::{RelayBody, ResponseBody};
use crate::auth::VerifiedToken;
use crate::config::{IdempotencyMode, IdempotencySettings, OnError};
use crate::error::{NotReplayable, ProxyError};
use crate::message::X_REQUEST_ID;
use crate::metrics::Metrics;
use crate::snapshot::{Route, Snapshot};
use crate::store::{Begin, IdemRecord, StoredResponse};
use crate::upstream::UpstreamBodyError;

const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const MAX_KEY_BYTES: usize = 255;

/// The client's key when this request is subject to idempotency; None when it passes
/// through untouched (method not listed, route off, or optional and no key sent).
pub(super) fn client_key<B>(
    req: &Request<B>,
    mode: IdempotencyMode,
    s: &IdempotencySettings,
) -> Result<Option<String>, ProxyError> {
    if mode == IdempotencyMode::Off || !s.methods.contains(req.method()) {
        return Ok(None);
    }
    let alt = HeaderName::from_bytes(format!("x-{}", s.header.as_str()).as_bytes()).ok();
    let mut values = req
        .headers()
        .get_all(&s.header)
        .iter()
        .chain(alt.iter().flat_map(|a| req.headers().get_all(a).iter()));
    let value = match (values.next(), values.next()) {
        (None, _) if mode == IdempotencyMode::Required => {
            return Err(ProxyError::IdempotencyKey(
                "Idempotency-Key header required",
            ));
        }
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ProxyError::IdempotencyKey(
                "repeated Idempotency-Key header",
            ));
        }
        (Some(v), None) => v.as_bytes(),
    };
    // The draft sends the key as a structured-field string: "abc". Bare tokens are accepted.
    let key = match value {
        [b'"', inner @ .., b'"'] => inner,
        v => v,
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return Err(ProxyError::IdempotencyKey(
            "invalid Idempotency-Key: 1 to 255 visible ASCII characters",
        ));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// method + path + query + content-type + SHA-256 of the body.
pub fn fingerprint(parts: &http::request::Parts, body: &[u8]) -> String {
    let mut m = Vec::with_capacity(128);
    m.extend_from_slice(parts.method.as_str().as_bytes());
    m.push(0);
    m.extend_from_slice(parts.uri.path().as_bytes());
    m.push(0);
    m.extend_from_slice(parts.uri.query().unwrap_or("").as_bytes());
    m.push(0);
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        m.extend_from_slice(ct.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(digest(&SHA256, body).as_ref());
    hex(digest(&SHA256, &m).as_ref())
}

/// The store key: host + route + subject + client key, each length-prefixed and hashed, so
/// no combination can collide. "No subject" is its own scope, distinct from any subject.
fn store_key(
    s: &IdempotencySettings,
    host: &str,
    route: &str,
    subject: Option<&str>,
    key: &str,
) -> String {
    let mut m = Vec::with_capacity(96 + key.len());
    let subject = match subject {
        Some(sub) => format!("s:{sub}"),
        None => "-".to_string(),
    };
    for part in [host, route, subject.as_str(), key] {
        m.extend_from_slice(&(part.len() as u64).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    format!("{}{}", s.key_prefix, hex(digest(&SHA256, &m).as_ref()))
}

/// Statuses that say "not processed, try again": never stored, the key is released.
fn retryable(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429)
}

/// Whether a response head with this status commits the key: its outcome is stored (or,
/// when the body cannot be, the key is recorded as not replayable), and the request never
/// runs again under this key. Any other head releases the key for a retry.
fn commits(status: http::StatusCode, s: &IdempotencySettings) -> bool {
    !retryable(status) && (s.store_server_errors || !status.is_server_error())
}

/// What the idempotency stage's `begin` decided for a keyed request.
pub(super) enum Begun {
    /// Answered from the store: a replay of the stored response.
    Replay(Response<ResponseBody>),
    /// To be forwarded, its body held whole. With a lease, the stage's `finish` must follow
    /// (`Lease::forward_and_finish`); without one (the store failed and `on_error = open`),
    /// the request is forwarded as any other.
    Forward {
        parts: http::request::Parts,
        body: Bytes,
        lease: Option<Lease>,
    },
}

/// The idempotency stage's first half, for a request that carries a key: read and
/// fingerprint the body, then take the key's lease in the store — or answer from what the
/// store holds (a replay; or 409 in flight, 422 mismatch, 409 not replayable).
pub(super) async fn begin(
    req: Request<DownstreamBody>,
    key: String,
    route: &Route,
    token: Option<&VerifiedToken>,
    request_id: &HeaderValue,
    conn: &Arc<ConnInfo>,
    snap: &Arc<Snapshot>,
) -> Result<Begun, ProxyError> {
    let s = &snap.idempotency;
    // Keys are scoped to the host too (routes may match many hosts).
    let host = super::route::host_of(&req)
        .map(|h| h.into_owned())
        .unwrap_or_default();
    let (parts, body) = req.into_parts();
    // Bodies are buffered to fingerprint them, under the tighter of both limits; a declared
    // length over it fails fast.
    let limit = s.max_request_body_bytes.min(snap.settings.max_body_bytes);
    // `limits` refused a malformed length already.
    let declared = crate::message::content_length::from_headers(&parts.headers)
        .ok()
        .flatten();
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge);
    }
    let body = super::body::read_all(body, limit, conn.idle_timeout).await?;

    let fp = fingerprint(&parts, &body);
    let subject = token.and_then(|t| t.sub.as_deref());
    let store_key = store_key(s, &host, &route.path_prefix, subject, &key);
    let lease = IdemRecord::Lease {
        owner: format!("{:032x}", fastrand::u128(..)),
        fingerprint: fp.clone(),
        expires_ms: now_ms() + s.lock_ttl.as_millis() as u64,
    }
    .encode();

    // The lease runs from no earlier than now: the store starts its `lock_ttl` when BEGIN
    // arrives. Measuring from here rather than from when forwarding starts (after BEGIN's
    // round trip and the choice of a replica) errs on the safe side.
    let lease_start = tokio::time::Instant::now();
    let begin = snap.store.idem_begin(&store_key, &lease, s.lock_ttl);
    match snap.metrics.store_op("idem_begin", begin).await {
        Ok(Begin::Acquired) => {}
        Ok(Begin::Existing(record)) => {
            return answer_from(record, &fp, request_id).map(Begun::Replay);
        }
        Err(e) => {
            // The script may have run before the answer was lost: drop our lease if it is
            // there, so the key is not blocked for lock_ttl.
            let (store, k, l) = (snap.store.clone(), store_key.clone(), lease.clone());
            tokio::spawn(async move {
                let _ = store.idem_finish(&k, &l, None, Duration::ZERO).await;
            });
            return match snap.on_error {
                OnError::Closed => Err(ProxyError::StoreUnavailable(e.to_string())),
                OnError::Open => {
                    Metrics::count_op(&snap.metrics.store_open_passes, "idempotency");
                    warn!(error = %e, "idempotency skipped (store on_error = open): forwarding without a lease");
                    Ok(Begun::Forward {
                        parts,
                        body,
                        lease: None,
                    })
                }
            };
        }
    }
    let lease = Lease {
        snap: snap.clone(),
        conn: conn.clone(),
        request_id: request_id.clone(),
        store_key,
        lease,
        fingerprint: fp,
        deadline: body_deadline(lease_start, s.lock_ttl, snap.store_timeout()),
    };
    Ok(Begun::Forward {
        parts,
        body,
        lease: Some(lease),
    })
}

/// Marks a response answered from a stored record (for metrics and the access log: a
/// replica's own `Idempotent-Replayed` header proves nothing).
#[derive(Debug, Clone, Copy)]
pub(super) struct Replayed;

/// What a stored record means for a duplicate.
fn answer_from(
    record: Option<IdemRecord>,
    fp: &str,
    request_id: &HeaderValue,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Some(record) = record else {
        // Unreadable: treat it as someone else's work in progress.
        return Err(ProxyError::IdempotencyInFlight(1));
    };
    if record.fingerprint() != fp {
        return Err(ProxyError::IdempotencyMismatch);
    }
    match record {
        IdemRecord::Lease { expires_ms, .. } => {
            let left = expires_ms.saturating_sub(now_ms()).div_ceil(1000).max(1);
            Err(ProxyError::IdempotencyInFlight(left))
        }
        IdemRecord::TooLarge { .. } => Err(ProxyError::IdempotencyNotReplayable(
            NotReplayable::TooLarge,
        )),
        IdemRecord::Committed { .. } => Err(ProxyError::IdempotencyNotReplayable(
            NotReplayable::Incomplete,
        )),
        IdemRecord::Done { response, .. } => {
            let body = response
                .body_bytes()
                .ok_or_else(|| ProxyError::Internal("stored response body unreadable".into()))?;
            let mut resp = Response::new(Either::Right(Full::new(body)));
            *resp.status_mut() = http::StatusCode::from_u16(response.status)
                .map_err(|_| ProxyError::Internal("stored status invalid".into()))?;
            let headers = resp.headers_mut();
            for (name, value) in response.header_values() {
                headers.append(name, value);
            }
            headers.insert(REPLAYED, HeaderValue::from_static("true"));
            headers.insert(X_REQUEST_ID, request_id.clone());
            resp.extensions_mut().insert(Replayed);
            Ok(resp)
        }
    }
}

/// A key's lease, held from `begin` until `finish` stores the request's outcome or
/// releases the key.
pub(super) struct Lease {
    snap: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    request_id: HeaderValue,
    store_key: String,
    lease: String,
    fingerprint: String,
    /// When forwarding and reading the body must stop (`body_deadline`).
    deadline: tokio::time::Instant,
}

/// The end of a lease's budget: forwarding and reading the body stop here, so that
/// FINISH, which may then take the store timeout, still lands while the lease is ours —
/// landing after it, FINISH finds no lease (`lease_expired`), nothing is stored, the key is
/// free and the committed request could run a second time. `FINISH_MARGIN` covers what
/// lies between the deadline and FINISH on the wire (see it). Config validation keeps this
/// after `lease_start + response_timeout`.
fn body_deadline(
    lease_start: tokio::time::Instant,
    lock_ttl: Duration,
    store_timeout: Duration,
) -> tokio::time::Instant {
    let reserve = store_timeout + crate::config::defaults::FINISH_MARGIN;
    lease_start + lock_ttl.saturating_sub(reserve)
}

/// How reading a committed response's body ended.
enum BodyEnd {
    /// Read to its end, within what may be stored.
    Whole,
    /// Past `max_stored_body_bytes`: the rest is relayed, not read.
    TooLarge,
    /// Still streaming when the lease budget ran out: the rest is relayed, not read.
    OutOfLease,
    /// The replica broke it off (reset, closed early, bad framing).
    Broken(UpstreamBodyError),
    /// No data for the connection's `idle_timeout`.
    Stalled,
}

impl Lease {
    /// Forward (`exchange`: the forward stage) and then `finish`, in a task of its own: a
    /// client that goes away mid-request must not leave the key without its outcome. The
    /// task ends within the lease: forwarding stops at the lease budget's deadline, so a
    /// retry can never take the key while this request still runs.
    pub(super) async fn forward_and_finish<F>(
        self,
        exchange: F,
    ) -> (Result<Response<ResponseBody>, ProxyError>, Option<Attempts>)
    where
        F: Future<Output = (Result<Response<ResponseBody>, ProxyError>, Attempts)> + Send + 'static,
    {
        let job = async move {
            // lock_ttl > response_timeout is checked at load, but connecting and uploading
            // the buffered body to a slow replica come before the response_timeout clock.
            match tokio::time::timeout_at(self.deadline, exchange).await {
                Ok((outcome, attempts)) => (self.finish(outcome).await, Some(attempts)),
                Err(_) => {
                    warn!(request_id = ?self.request_id, "idempotent request ran past its lease budget before a response head");
                    self.store(None).await;
                    (Err(ProxyError::UpstreamTimeout), None)
                }
            }
        };
        match tokio::spawn(job).await {
            Ok(done) => done,
            Err(e) => (
                Err(ProxyError::Internal(format!(
                    "idempotent forward task: {e}"
                ))),
                None,
            ),
        }
    }

    /// The idempotency stage's second half: the forward stage's outcome decides the key.
    ///
    /// Until the replica's response head arrives (under the group's `response_timeout`, as
    /// for any request) nothing is committed, and a failure releases the key (or, with
    /// `store_server_errors`, stores the error). A head whose status `commits` accepts
    /// commits the key: from then on it is never released, whatever becomes of the body
    /// (see `committed`).
    async fn finish(
        &self,
        outcome: Result<Response<ResponseBody>, ProxyError>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let s = &self.snap.idempotency;
        let resp = match outcome {
            Err(e) => {
                // No replica to send to, or a refused connection: the request never reached
                // one, and the key is always released. A timeout or a broken answer may have
                // run: stored only Stripe-style.
                let reached = !matches!(e, ProxyError::NoUpstream | ProxyError::UpstreamConnect(_));
                let keep = s.store_server_errors && reached;
                if keep {
                    let r = e.to_response(&self.request_id);
                    let (p, b) = r.into_parts();
                    let body = b.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                    self.store(Some(self.done(p.status.as_u16(), &p.headers, &body)))
                        .await;
                } else {
                    self.store(None).await;
                }
                return Err(e);
            }
            Ok(resp) => resp,
        };
        if !commits(resp.status(), s) {
            self.store(None).await;
            return Ok(resp);
        }
        self.committed(resp).await
    }

    /// The replica sent a head that commits the key: read the body and store the outcome.
    /// The body is read like any relayed body is bounded — no data for the connection's
    /// `idle_timeout` ends it — never under `response_timeout`, which bounded the head only;
    /// and within the lease budget. The key is never released from here: a body that cannot
    /// be stored leaves a not-replayable record (`N` too large, `C` anything else), so a
    /// retry gets 409 and the request never runs twice.
    ///
    /// The client gets the response as far as the replica sent it: whole; or, past what may
    /// be stored or the lease budget, what was read followed by the rest as it streams; or,
    /// broken off or stalled, what was read and then the body's failure (a truncated
    /// response, as it would have had from the replica).
    async fn committed(
        &self,
        resp: Response<ResponseBody>,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let s = &self.snap.idempotency;
        let deadline = self.deadline;
        let (parts, body) = resp.into_parts();
        let mut stream = match body {
            Either::Left(relay) => relay.into_stream(),
            Either::Right(full) => {
                let bytes = full
                    .collect()
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                self.store(Some(self.done(
                    parts.status.as_u16(),
                    &parts.headers,
                    &bytes,
                )))
                .await;
                return Ok(Response::from_parts(parts, Either::Right(Full::new(bytes))));
            }
        };
        let mut chunks = Vec::new();
        let mut total = 0u64;
        let idle = self.conn.idle_timeout;
        // Bytes are still coming from the replica, not going to the client: keep the
        // connection's idle watchdog off this request while the body is read (each read
        // has its own idle bound here instead).
        let waiting = super::AwaitingUpstream::new(&self.conn.awaiting_upstream);
        let end = loop {
            let wait = (tokio::time::Instant::now() + idle).min(deadline);
            match tokio::time::timeout_at(wait, stream.frame()).await {
                Ok(None) => break BodyEnd::Whole,
                Ok(Some(Err(e))) => break BodyEnd::Broken(e),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len() as u64;
                        chunks.push(data);
                        if total > s.max_stored_body_bytes {
                            break BodyEnd::TooLarge;
                        }
                    }
                }
                Err(_) if wait == deadline => break BodyEnd::OutOfLease,
                Err(_) => break BodyEnd::Stalled,
            }
        };
        drop(waiting);
        let not_replayable = |why: &str| {
            warn!(request_id = ?self.request_id, why, "committed idempotent response not stored; the key answers 409 until its ttl");
            IdemRecord::Committed {
                fingerprint: self.fingerprint.clone(),
            }
            .encode()
        };
        let body = match end {
            BodyEnd::Whole => {
                let body: Bytes = if chunks.len() == 1 {
                    chunks.pop().unwrap_or_default()
                } else {
                    chunks.concat().into()
                };
                self.store(Some(self.done(
                    parts.status.as_u16(),
                    &parts.headers,
                    &body,
                )))
                .await;
                return Ok(Response::from_parts(parts, Either::Right(Full::new(body))));
            }
            BodyEnd::TooLarge => {
                let record = IdemRecord::TooLarge {
                    fingerprint: self.fingerprint.clone(),
                };
                self.store(Some(record.encode())).await;
                RelayBody::resume(chunks, stream)
            }
            BodyEnd::OutOfLease => {
                self.store(Some(not_replayable(
                    "still streaming when the lease budget ran out",
                )))
                .await;
                RelayBody::resume(chunks, stream)
            }
            BodyEnd::Broken(e) => {
                self.store(Some(not_replayable(&e.to_string()))).await;
                RelayBody::cut(chunks, stream, e)
            }
            BodyEnd::Stalled => {
                let why = format!("no data from the replica for {idle:?} (idle_timeout)");
                self.store(Some(not_replayable(&why))).await;
                RelayBody::cut(chunks, stream, UpstreamBodyError::new(why))
            }
        };
        Ok(Response::from_parts(parts, Either::Left(body)))
    }

    /// The record for a completed response: the headers that matter, never per-request or
    /// framing ones (and Set-Cookie only when configured).
    fn done(&self, status: u16, headers: &HeaderMap, body: &[u8]) -> String {
        let mut kept = headers.clone();
        for h in [
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            X_REQUEST_ID,
            header::DATE,
        ] {
            kept.remove(h);
        }
        if !self.snap.idempotency.store_set_cookie {
            kept.remove(header::SET_COOKIE);
        }
        IdemRecord::Done {
            fingerprint: self.fingerprint.clone(),
            response: StoredResponse::new(status, &kept, body),
        }
        .encode()
    }

    /// Replace our lease with the result (None: release the key so the client may retry),
    /// under the store timeout like every store call on the request path: the client waits
    /// for it. Not done in time, the key keeps our lease until `lock_ttl` (a retry gets 409,
    /// never a second run) and `doorman_idempotency_store_failures_total` counts it.
    async fn store(&self, result: Option<String>) {
        let ttl: Duration = self.snap.idempotency.ttl;
        let finish =
            self.snap
                .store
                .idem_finish(&self.store_key, &self.lease, result.as_deref(), ttl);
        match self.snap.metrics.store_op("idem_finish", finish).await {
            Ok(true) => {}
            Ok(false) => {
                Metrics::count(&self.snap.metrics.idempotency, "lease_expired");
                warn!(
                request_id = ?self.request_id,
                "idempotency lease expired before the request finished; its result was not stored"
                )
            }
            Err(e) => {
                let op = if result.is_some() { "store" } else { "release" };
                Metrics::count_op(&self.snap.metrics.idempotency_store_failures, op);
                warn!(
                    request_id = ?self.request_id,
                    error = %e,
                    op,
                    "idempotency result not stored; the key stays leased until lock_ttl"
                )
            }
        }
        if result.is_none() {
            info!(request_id = ?self.request_id, "idempotency key released for retry");
        }
    }
}

#[cfg(test)]
mod tests;

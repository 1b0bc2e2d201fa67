//! The identity provider's key set (`[auth.jwks]`), kept fresh without a reload.
//!
//! The keys in force are one immutable [`KeySet`] behind an `ArcSwap`: verifying a token
//! loads it without a lock, and a refresh swaps a whole new set in. A background task
//! (`task.rs`) fetches the set (`fetch.rs`) when it starts, then every `refresh` (or the
//! provider's `Cache-Control: max-age`, kept within [`min_refresh`, `refresh`]). A token
//! naming a kid nobody knows asks for an early fetch: at most one per `min_refresh`, shared
//! by every request waiting for it (single flight), and none waits longer than `timeout`.
//!
//! A failed fetch (error, timeout, not a key set, no usable key) keeps the last good set.
//! Each set that differs from the one before gets a new generation; the verified-token
//! cache holds the generation a token was verified under, so a token never outlives the
//! removal of its key. The set, its task and its status survive a reload that leaves
//! `[auth.jwks]` unchanged (the snapshot hands the same `Arc<Jwks>` on); the task ends when
//! the last snapshot holding it is gone.

mod fetch;
mod task;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{Notify, oneshot, watch};
use tracing::warn;

use crate::config::{JwksSettings, JwksSource, JwtKey, ParsedKeySet, SetKey, Skipped};
pub(crate) use fetch::FetchError;

/// Counts one fetch by its outcome (`ok` or a [`FetchError`] label), into the metrics.
pub(crate) type FetchCounter = Arc<dyn Fn(&'static str) + Send + Sync>;

/// The keys in force: generation 0 is "nothing loaded yet".
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<SetKey>,
    pub(crate) generation: u64,
}

impl KeySet {
    pub(crate) fn find(&self, kid: &str) -> Option<&JwtKey> {
        self.keys
            .iter()
            .map(|k| &k.key)
            .find(|k| k.kid.as_deref() == Some(kid))
    }
}

/// The running key set of one `[auth.jwks]`: shared by every snapshot while the settings
/// are unchanged. Dropping the last one stops its refresh task.
pub(crate) struct Jwks {
    shared: Arc<Shared>,
    /// Dropped with the handle: the task sees its receiver close and ends.
    _stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.shared.settings.source.to_string())
            .field("generation", &self.shared.current.load().generation)
            .finish_non_exhaustive()
    }
}

/// What the task and the request path share.
struct Shared {
    settings: JwksSettings,
    current: ArcSwap<KeySet>,
    record: Mutex<Record>,
    /// The kids of `[[auth.keys]]`: a key of the set under one of them is refused (the
    /// static key wins). Updated when a reload hands the set to a new snapshot.
    static_kids: Mutex<Vec<String>>,
    /// The keys the last set skipped, and why: logged again only when they change.
    last_skipped: Mutex<Vec<Skipped>>,
    /// A fetch is running.
    in_flight: AtomicBool,
    /// A request asked for an early fetch that has not started yet.
    early: AtomicBool,
    /// When the last early fetch was granted: the next one waits `min_refresh`.
    last_early: Mutex<Option<Instant>>,
    wake: Notify,
    /// Fetches finished so far: requests waiting for one watch it.
    done: watch::Sender<u64>,
    on_fetch: Option<FetchCounter>,
    started: Instant,
}

/// The status of the fetches, for the status page and the metrics.
#[derive(Debug, Default)]
struct Record {
    last_attempt_unix_ms: Option<u64>,
    last_success_unix_ms: Option<u64>,
    last_success: Option<Instant>,
    last_error: Option<String>,
    ok: u64,
    failed: u64,
    /// The `jwks_uri` discovery found.
    jwks_uri: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Jwks {
    /// The key set of `settings`: a `file` set is in force at once; a fetched one starts
    /// its refresh task (within a tokio runtime; without one it never loads).
    ///
    /// `seed`: the keys in force of a set from the same provider that a reload replaces; the
    /// ones `settings.algorithms` still allows are in force until the first fetch answers.
    pub(crate) fn start(
        settings: &JwksSettings,
        static_kids: Vec<String>,
        on_fetch: Option<FetchCounter>,
        seed: Option<Arc<KeySet>>,
    ) -> Jwks {
        let seeded = seed
            .map(|old| KeySet {
                keys: old
                    .keys
                    .iter()
                    .filter(|k| settings.algorithms.contains(&k.key.algorithm))
                    .filter(|k| {
                        k.key
                            .kid
                            .as_ref()
                            .is_none_or(|kid| !static_kids.contains(kid))
                    })
                    .cloned()
                    .collect(),
                generation: old.generation,
            })
            .filter(|s| !s.keys.is_empty())
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            current: ArcSwap::from_pointee(seeded),
            record: Mutex::default(),
            static_kids: Mutex::new(static_kids),
            last_skipped: Mutex::default(),
            in_flight: AtomicBool::new(false),
            early: AtomicBool::new(false),
            last_early: Mutex::new(None),
            wake: Notify::new(),
            done: watch::Sender::new(0),
            on_fetch,
            started: Instant::now(),
        });
        if let JwksSource::File { keys, .. } = &settings.source {
            // Validated at load: usable keys, none clashing with a static kid.
            if shared.apply(ParsedKeySet::clone(keys)).is_ok() {
                let mut r = lock(&shared.record);
                r.last_success = Some(Instant::now());
                r.last_success_unix_ms = Some(unix_ms());
            }
            return Jwks {
                shared,
                _stop: None,
            };
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!("JWKS: no runtime to fetch the key set in");
            return Jwks {
                shared,
                _stop: None,
            };
        };
        let (stop, stopped) = oneshot::channel();
        // In flight from the start: requests that come before the first set wait for it.
        shared.in_flight.store(true, Ordering::Release);
        runtime.spawn(task::run(shared.clone(), stopped));
        Jwks {
            shared,
            _stop: Some(stop),
        }
    }

    /// The settings this set runs with (a reload compares them).
    pub(crate) fn settings(&self) -> &JwksSettings {
        &self.shared.settings
    }

    /// A reload kept this set: the new `[[auth.keys]]` kids apply from the next fetch.
    pub(crate) fn set_static_kids(&self, kids: Vec<String>) {
        *lock(&self.shared.static_kids) = kids;
    }

    /// The keys in force, without a lock.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.shared.current.load()
    }

    /// Whether a set has been loaded (`/ready` waits for it).
    pub(crate) fn ready(&self) -> bool {
        self.shared.current.load().generation > 0
    }

    /// A token named a kid that no key has: ask for an early fetch (at most one per
    /// `min_refresh`) or join the one running, and wait for it, at most `timeout`. True
    /// when a fetch finished meanwhile, so the token is worth checking again.
    pub(crate) async fn refresh_for_unknown_kid(&self) -> bool {
        let s = &self.shared;
        if matches!(s.settings.source, JwksSource::File { .. }) {
            return false;
        }
        // Subscribed before looking, so a fetch that ends in between is not missed.
        let mut done = s.done.subscribe();
        let pending = s.in_flight.load(Ordering::Acquire) || s.early.load(Ordering::Acquire);
        if !pending {
            let now = Instant::now();
            {
                let mut last = lock(&s.last_early);
                if last.is_some_and(|t| now.duration_since(t) < s.settings.min_refresh) {
                    return false;
                }
                *last = Some(now);
            }
            s.early.store(true, Ordering::Release);
            s.wake.notify_one();
        }
        matches!(
            tokio::time::timeout(s.settings.timeout, done.changed()).await,
            Ok(Ok(()))
        )
    }

    /// (keys in force, seconds since the last good fetch — or since start when there was
    /// none, so an alert on its age fires for a set that never loaded).
    pub(crate) fn gauges(&self) -> (i64, i64) {
        let keys = self.shared.current.load().keys.len() as i64;
        let since = lock(&self.shared.record)
            .last_success
            .unwrap_or(self.shared.started);
        (keys, since.elapsed().as_secs() as i64)
    }

    /// The status page's view: kids and algorithms, never key material.
    pub(crate) fn status(&self) -> serde_json::Value {
        let s = &self.shared;
        let set = s.current.load();
        let keys: Vec<serde_json::Value> = set
            .keys
            .iter()
            .map(|k| json!({"kid": k.key.kid, "alg": format!("{:?}", k.key.algorithm)}))
            .collect();
        let algorithms: Vec<String> = s
            .settings
            .algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        let r = lock(&s.record);
        json!({
            "source": s.settings.source.to_string(),
            "jwks_uri": r.jwks_uri,
            "loaded": set.generation > 0,
            "generation": set.generation,
            "keys": keys,
            "algorithms": algorithms,
            "refresh_seconds": s.settings.refresh.as_secs_f64(),
            "last_fetch_unix_ms": r.last_attempt_unix_ms,
            "last_success_unix_ms": r.last_success_unix_ms,
            "last_error": r.last_error,
            "fetches": {"ok": r.ok, "failed": r.failed},
        })
    }
}

impl Shared {
    /// Put a parsed set in force: skipped keys logged, keys under a static kid refused. No
    /// usable key left is a failure (the set in force stays). A set equal to the one in
    /// force keeps its generation, so cached tokens stay cached.
    fn apply(&self, parsed: ParsedKeySet) -> Result<(), FetchError> {
        let mut skipped = parsed.skipped;
        let keys: Vec<SetKey> = {
            let static_kids = lock(&self.static_kids);
            parsed
                .keys
                .into_iter()
                .filter(|k| match &k.key.kid {
                    Some(kid) if static_kids.contains(kid) => {
                        skipped.push(Skipped {
                            kid: Some(kid.clone()),
                            why: "its kid is in [[auth.keys]], whose key is used".into(),
                        });
                        false
                    }
                    _ => true,
                })
                .collect()
        };
        // Logged when they change, not at every refresh of the same document.
        let mut last = lock(&self.last_skipped);
        if *last != skipped {
            let source = self.settings.source.to_string();
            for s in &skipped {
                warn!(%source, kid = s.kid.as_deref().unwrap_or("(none)"), why = %s.why, "JWKS: key skipped");
            }
            *last = skipped;
        }
        drop(last);
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys);
        }
        let old = self.current.load();
        // Exact duplicates are gone (the parser drops them), so equal lengths and containment
        // both ways mean the same keys.
        let same = old.keys.len() == keys.len()
            && keys.iter().all(|k| old.keys.contains(k))
            && old.keys.iter().all(|k| keys.contains(k));
        if !same {
            let generation = old.generation + 1;
            let source = self.settings.source.to_string();
            tracing::info!(%source, generation, keys = keys.len(), "JWKS: new key set in force");
            self.current.store(Arc::new(KeySet { keys, generation }));
        }
        Ok(())
    }

    /// Record a fetch's outcome; the wait until the next scheduled one.
    fn finish(&self, outcome: Result<Option<Duration>, FetchError>) -> Duration {
        let (min, max) = (self.settings.min_refresh, self.settings.refresh);
        let mut r = lock(&self.record);
        r.last_attempt_unix_ms = Some(unix_ms());
        let label = match &outcome {
            Ok(_) => "ok",
            Err(e) => e.label(),
        };
        if let Some(count) = &self.on_fetch {
            count(label);
        }
        match outcome {
            Ok(max_age) => {
                r.ok += 1;
                r.last_success = Some(Instant::now());
                r.last_success_unix_ms = r.last_attempt_unix_ms;
                r.last_error = None;
                max_age.unwrap_or(max).clamp(min, max)
            }
            Err(e) => {
                r.failed += 1;
                let source = self.settings.source.to_string();
                warn!(%source, error = %e, "JWKS: fetch failed; the last good key set stays in force");
                r.last_error = Some(e.to_string());
                // A failing provider is asked again soon, but no more often than an
                // unknown kid could make it be.
                min
            }
        }
    }
}

#[cfg(test)]
mod tests;

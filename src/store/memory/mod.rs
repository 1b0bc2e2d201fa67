//! The embedded store: revocations and idempotency records in process memory, bounded. One
//! instance only — with several doorman instances, use Redis.
//!
//! Bounds (`[store] embedded_max_*`):
//! - Idempotency records: at most `embedded_max_entries` records and `embedded_max_bytes`
//!   (key + encoded record + a fixed per-entry cost). Beyond either, the **oldest completed
//!   records are evicted first** (each one counted); a retry of an evicted key runs again,
//!   as after its ttl. **Leases (in-flight keys) are never evicted**: forgetting one would
//!   let a concurrent duplicate through. When the leases alone leave no room for a new one,
//!   a new BEGIN is refused with [`StoreError::Full`] **before anything is evicted**, which
//!   the pipeline treats like any store failure (route's `[store] on_error`: `closed` → 503,
//!   `open` → forwarded without a lease).
//! - A result that cannot fit beside the leases even with every completed record evicted
//!   (in particular one costing more than `embedded_max_bytes` on its own) is stored as
//!   not replayable (`N|{fingerprint}`, as for a response over `max_stored_body_bytes`),
//!   evicting nothing for it: a retry gets 409, never a second run.
//! - Revocations: at most `embedded_max_revocations` jti + subject entries. Expired ones are
//!   purged first; beyond it a **new** revocation is refused (never an old one forgotten:
//!   that would let a revoked token back in).
//!
//! Every operation is O(log n): expiry and eviction order are kept in ordered indexes and
//! drained from their front, so nothing scans the whole store. Values are `Arc<str>`: the
//! one lock is held for map and index work only; a value is copied in before it is taken
//! and decoded after it is released.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use tracing::warn;

use super::{Begin, IdemRecord, StoreError};

use super::{Records, Revoke, subject_covers};
use crate::auth::unix_now;
use crate::config::StoreSettings;

/// What one idempotency entry costs beyond its key and value bytes: the hash-map slot (key
/// pointer + `Slot`), the `Arc`'s two counters and the ordered-index entry, rounded up for
/// B-tree node and allocator slack (a unit test keeps it above the sum of those sizes).
pub(crate) const ENTRY_OVERHEAD: usize = 160;

/// The caps, retuned in place on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caps {
    pub max_entries: usize,
    pub max_bytes: usize,
    pub max_revocations: usize,
}

impl Caps {
    pub(crate) fn of(s: &StoreSettings) -> Self {
        Caps {
            max_entries: s.embedded_max_entries,
            max_bytes: s.embedded_max_bytes,
            max_revocations: s.embedded_max_revocations,
        }
    }
}

/// Metric handles the embedded store counts into (resolved once, by the snapshot).
#[derive(Debug, Clone, Default)]
pub struct MemoryCounters {
    /// Completed idempotency records evicted before their ttl to stay within the caps.
    pub evictions: Counter,
    /// BEGINs refused because the store held only leases.
    pub lease_refusals: Counter,
    /// New revocations refused at `embedded_max_revocations`.
    pub revocation_refusals: Counter,
}

#[derive(Debug)]
pub struct MemoryStore {
    /// jti → unix second after which the entry may be forgotten.
    jtis: DashMap<Arc<str>, u64>,
    /// sub → (revoked before, forget after).
    subs: DashMap<Arc<str>, (u64, u64)>,
    /// Writers of revocations: the expiry index and the cap. Readers (`is_revoked`, on the
    /// request path) only touch the maps.
    revocations: Mutex<RevocationIndex>,
    /// Retuned in place on reload (TTLs, leeway): the records themselves stay.
    records: std::sync::RwLock<Records>,
    idem: Mutex<Idem>,
    counters: MemoryCounters,
}

#[derive(Debug)]
struct RevocationIndex {
    /// (forget after, is a subject, key): the front is the next to expire.
    expiry: BTreeSet<(u64, bool, Arc<str>)>,
    max: usize,
}

/// Idempotency records: one map, and two indexes that give the next entry to drop in
/// O(log n).
#[derive(Debug)]
struct Idem {
    map: HashMap<Arc<str>, Slot>,
    /// Completed records by completion number: the front is the oldest, evicted first.
    done: BTreeMap<u64, Arc<str>>,
    /// Leases by expiry: the front is the next to lapse (dropped once lapsed, never evicted).
    leases: BTreeMap<(Instant, u64), Arc<str>>,
    /// Sum of `cost` over `map`.
    bytes: usize,
    /// Sum of `cost` over the leases alone: what no eviction can free.
    lease_bytes: usize,
    next: u64,
    max_entries: usize,
    max_bytes: usize,
    /// Counted at each eviction (not for lapsed or expired entries).
    evictions: Counter,
}

#[derive(Debug)]
struct Slot {
    /// The encoded record (`IdemRecord::encode`): a lease, or the result to replay. Shared,
    /// so a replay clones the `Arc` under the lock and decodes after releasing it.
    value: Arc<str>,
    until: Instant,
    /// Its place in `done` (completed) or `leases` (in flight).
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Lease(u64),
    Done(u64),
}

/// Bytes an entry is accounted for.
fn cost(key: &str, value: &str) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// For a replayable result (`D|{fingerprint}|{response}`), its not-replayable record
/// (`N|{fingerprint}`): what is kept when the result itself cannot fit. Other kinds are
/// already as small as a record gets.
fn not_replayable(result: &str) -> Option<Arc<str>> {
    let rest = result.strip_prefix("D|")?;
    let (fingerprint, _) = rest.split_once('|')?;
    Some(format!("N|{fingerprint}").into())
}

impl Idem {
    fn new(caps: Caps, evictions: Counter) -> Self {
        Idem {
            map: HashMap::new(),
            done: BTreeMap::new(),
            leases: BTreeMap::new(),
            bytes: 0,
            lease_bytes: 0,
            next: 0,
            max_entries: caps.max_entries,
            max_bytes: caps.max_bytes,
            evictions,
        }
    }

    fn seq(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Add `key` (absent) with its index entry; the books follow.
    fn insert(&mut self, key: Arc<str>, value: Arc<str>, until: Instant, state: State) {
        let c = cost(&key, &value);
        self.bytes += c;
        match state {
            State::Lease(n) => {
                self.lease_bytes += c;
                self.leases.insert((until, n), key.clone());
            }
            State::Done(n) => {
                self.done.insert(n, key.clone());
            }
        }
        self.map.insert(
            key,
            Slot {
                value,
                until,
                state,
            },
        );
    }

    /// Take `slot` (just removed from `map`) off the books.
    fn unbook(&mut self, key: &str, slot: &Slot) {
        let c = cost(key, &slot.value);
        self.bytes -= c;
        if matches!(slot.state, State::Lease(_)) {
            self.lease_bytes -= c;
        }
    }

    /// Remove `key` and its index entry.
    fn remove(&mut self, key: &str) -> Option<Slot> {
        let (k, slot) = self.map.remove_entry(key)?;
        self.unbook(&k, &slot);
        match slot.state {
            State::Lease(n) => self.leases.remove(&(slot.until, n)),
            State::Done(n) => self.done.remove(&n),
        };
        Some(slot)
    }

    /// Drop lapsed leases and expired completed records from the fronts of their indexes.
    /// Amortised O(log n): each entry is dropped once. A completed record whose ttl is
    /// shorter than an older one's (a reload shortened the ttl) waits behind it; lookups
    /// check expiry, so it is never served meanwhile. Not evictions: nothing is counted.
    fn purge(&mut self, now: Instant) {
        while self
            .leases
            .first_key_value()
            .is_some_and(|(&(until, _), _)| until <= now)
        {
            if let Some(((_, n), key)) = self.leases.pop_first() {
                self.drop_slot(&key, State::Lease(n));
            }
        }
        while self
            .done
            .first_key_value()
            .is_some_and(|(_, key)| self.map.get(&**key).is_none_or(|s| s.until <= now))
        {
            self.pop_done();
        }
    }

    /// Drop the oldest completed record. None when there is none; else whether a slot went.
    fn pop_done(&mut self) -> Option<bool> {
        let (n, key) = self.done.pop_first()?;
        Some(self.drop_slot(&key, State::Done(n)))
    }

    /// Remove `key`'s slot if it is the one an index entry just taken out named.
    fn drop_slot(&mut self, key: &str, state: State) -> bool {
        if self.map.get(key).is_some_and(|s| s.state == state)
            && let Some((k, slot)) = self.map.remove_entry(key)
        {
            self.unbook(&k, &slot);
            return true;
        }
        false
    }

    /// Whether `extra` more entries of `bytes` more would fit once every completed record
    /// were evicted: the leases alone are what no eviction frees.
    fn feasible(&self, extra: usize, bytes: usize) -> bool {
        self.leases.len().saturating_add(extra) <= self.max_entries
            && self.lease_bytes.saturating_add(bytes) <= self.max_bytes
    }

    /// Evict the oldest completed records, each counted, until `extra` more entries of
    /// `bytes` more fit. Call only when [`Idem::feasible`]: then it always ends within the
    /// caps; otherwise it stops once no completed record is left.
    fn make_room(&mut self, extra: usize, bytes: usize) {
        while self.map.len().saturating_add(extra) > self.max_entries
            || self.bytes.saturating_add(bytes) > self.max_bytes
        {
            match self.pop_done() {
                None => return,
                Some(true) => {
                    self.evictions.inc();
                }
                Some(false) => {}
            }
        }
    }
}

impl MemoryStore {
    pub(crate) fn new(records: Records, caps: Caps, counters: MemoryCounters) -> Self {
        MemoryStore {
            jtis: DashMap::new(),
            subs: DashMap::new(),
            revocations: Mutex::new(RevocationIndex {
                expiry: BTreeSet::new(),
                max: caps.max_revocations,
            }),
            records: std::sync::RwLock::new(records),
            idem: Mutex::new(Idem::new(caps, counters.evictions.clone())),
            counters,
        }
    }

    fn idem(&self) -> MutexGuard<'_, Idem> {
        self.idem.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn revocations(&self) -> MutexGuard<'_, RevocationIndex> {
        self.revocations.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the status page shows.
    pub(crate) fn sizes(&self) -> Sizes {
        let idem = self.idem();
        Sizes {
            revoked_tokens: self.jtis.len(),
            revoked_subjects: self.subs.len(),
            idempotency_records: idem.map.len(),
            idempotency_leases: idem.leases.len(),
            idempotency_bytes: idem.bytes,
        }
    }

    /// New TTLs and caps from a reload. Lower caps take effect on the next write: completed
    /// records are evicted down to them; revocations above them are kept (only new ones
    /// are refused).
    pub(crate) fn retune(&self, records: Records, caps: Caps) {
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = records;
        {
            let mut idem = self.idem();
            idem.max_entries = caps.max_entries;
            idem.max_bytes = caps.max_bytes;
        }
        self.revocations().max = caps.max_revocations;
    }

    /// Same contract as the Redis BEGIN script, atomic under the store's lock; refused with
    /// `StoreError::Full`, evicting nothing, when the key is new and the live leases alone
    /// leave no room for its lease.
    pub(crate) fn idem_begin(
        &self,
        key: &str,
        lease: &str,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let now = Instant::now();
        let need = cost(key, lease);
        let mut idem = self.idem();
        idem.purge(now);
        match idem.map.get(key) {
            Some(s) if s.until > now => {
                let value = s.value.clone();
                drop(idem);
                return Ok(Begin::Existing(IdemRecord::decode(&value)));
            }
            // Lapsed but not at an index front yet: gone, as far as anyone can tell.
            Some(_) => {
                idem.remove(key);
            }
            None => {}
        }
        if !idem.feasible(1, need) {
            drop(idem);
            let n = self.counters.lease_refusals.inc() + 1;
            // The first refusal and then every power of two: a flood of refusals must not
            // flood the log (the metric has the exact count).
            if n.is_power_of_two() {
                warn!(
                    refusals = n,
                    "embedded store full of in-flight idempotency leases: new key refused (raise [store] embedded_max_entries / embedded_max_bytes, or use Redis)"
                );
            }
            return Err(StoreError::Full(
                "the in-flight idempotency leases leave no room",
            ));
        }
        idem.make_room(1, need);
        let n = idem.seq();
        idem.insert(key.into(), lease.into(), now + lock_ttl, State::Lease(n));
        Ok(Begin::Acquired)
    }

    /// Same contract as the Redis FINISH script. A stored result may push the store over a
    /// cap: older completed records are evicted to make room. A result that cannot fit
    /// beside the leases even then is stored as `N|{fingerprint}` (not replayable), which
    /// costs no more than the lease it replaces, evicting nothing for it.
    pub(crate) fn idem_finish(
        &self,
        key: &str,
        lease: &str,
        result: Option<&str>,
        ttl: Duration,
    ) -> bool {
        let now = Instant::now();
        // Copied before the lock is taken: results run up to `max_stored_body_bytes`.
        let result: Option<(Arc<str>, Option<Arc<str>>)> =
            result.map(|r| (r.into(), not_replayable(r)));
        let mut idem = self.idem();
        let ours = idem.map.get(key).is_some_and(|s| {
            matches!(s.state, State::Lease(_)) && *s.value == *lease && s.until > now
        });
        if !ours {
            return false;
        }
        idem.remove(key);
        let Some((full, small)) = result else {
            return true;
        };
        let value = match small {
            Some(small) if !idem.feasible(1, cost(key, &full)) => small,
            _ => full,
        };
        let need = cost(key, &value);
        if idem.feasible(1, need) {
            idem.make_room(1, need);
        }
        // Otherwise (only after a reload lowered the caps below the leases) it is kept over
        // the cap: forgetting the record of a request that ran would let it run again.
        let n = idem.seq();
        idem.insert(key.into(), value, now + ttl, State::Done(n));
        true
    }

    pub(crate) fn is_revoked(
        &self,
        jti: Option<&str>,
        sub: Option<&str>,
        iat: Option<u64>,
    ) -> bool {
        let now = unix_now();
        if let Some(jti) = jti
            && self.jtis.get(jti).is_some_and(|until| *until >= now)
        {
            return true;
        }
        if let Some(sub) = sub
            && let Some(e) = self.subs.get(sub)
        {
            let (before, until) = *e;
            return until >= now && subject_covers(before, iat);
        }
        false
    }

    /// Write a revocation. Never weakens an existing one (the later expiry and cut-off win,
    /// as in Redis). A new entry beyond `embedded_max_revocations` (after expired ones are
    /// purged) is refused with `StoreError::Full`.
    pub(crate) fn revoke(&self, r: &Revoke) -> Result<(), StoreError> {
        let now = unix_now();
        // The same TTLs as the Redis records.
        let (_, _, ttl) = self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .record(r, now);
        let until = now.saturating_add(ttl.as_secs());
        let mut index = self.revocations();
        // Forget what has expired (from the front of the expiry index: no scan).
        while let Some((t, is_sub, key)) = index.expiry.first().cloned()
            && t < now
        {
            index.expiry.pop_first();
            if is_sub {
                self.subs.remove_if(&*key, |_, (_, u)| *u == t);
            } else {
                self.jtis.remove_if(&*key, |_, u| *u == t);
            }
        }
        match r {
            Revoke::Jti { jti, .. } => {
                if let Some(mut e) = self.jtis.get_mut(jti.as_str()) {
                    if until > *e {
                        let key = e.key().clone();
                        index.expiry.remove(&(*e, false, key.clone()));
                        index.expiry.insert((until, false, key));
                        *e = until;
                    }
                    return Ok(());
                }
                self.room_for_one(&index)?;
                let key: Arc<str> = jti.as_str().into();
                index.expiry.insert((until, false, key.clone()));
                self.jtis.insert(key, until);
            }
            Revoke::Subject { sub, before } => {
                if let Some(mut e) = self.subs.get_mut(sub.as_str()) {
                    let (old_before, old_until) = *e;
                    if until > old_until {
                        let key = e.key().clone();
                        index.expiry.remove(&(old_until, true, key.clone()));
                        index.expiry.insert((until, true, key));
                    }
                    *e = (old_before.max(*before), old_until.max(until));
                    return Ok(());
                }
                self.room_for_one(&index)?;
                let key: Arc<str> = sub.as_str().into();
                index.expiry.insert((until, true, key.clone()));
                self.subs.insert(key, (*before, until));
            }
        }
        Ok(())
    }

    fn room_for_one(&self, index: &RevocationIndex) -> Result<(), StoreError> {
        if index.expiry.len() >= index.max {
            self.counters.revocation_refusals.inc();
            return Err(StoreError::Full(
                "embedded_max_revocations reached: new revocation refused",
            ));
        }
        Ok(())
    }
}

/// The embedded store's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sizes {
    pub revoked_tokens: usize,
    pub revoked_subjects: usize,
    pub idempotency_records: usize,
    pub idempotency_leases: usize,
    pub idempotency_bytes: usize,
}

#[cfg(test)]
mod tests;

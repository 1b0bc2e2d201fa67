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
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);
    /// A result of 1000 bytes (what FINISH stores; only its size matters here).
    fn result() -> &'static str {
        static R: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| format!("D|fp|{}", "x".repeat(995)));
        &R
    }

    fn store(max_entries: usize, max_bytes: usize, max_revocations: usize) -> MemoryStore {
        let records = Records {
            prefix: "t:".into(),
            subject_ttl: LONG,
            leeway: Duration::ZERO,
        };
        MemoryStore::new(
            records,
            Caps {
                max_entries,
                max_bytes,
                max_revocations,
            },
            MemoryCounters::default(),
        )
    }

    fn lease(owner: &str) -> String {
        format!("L|{owner}|fp|1")
    }

    /// BEGIN and FINISH one key with `result()`.
    fn complete(m: &MemoryStore, key: &str) {
        assert!(matches!(
            m.idem_begin(key, &lease(key), LONG),
            Ok(Begin::Acquired)
        ));
        assert!(m.idem_finish(key, &lease(key), Some(result()), LONG));
    }

    fn keys(m: &MemoryStore) -> Vec<String> {
        let mut k: Vec<String> = m.idem().map.keys().map(|k| k.to_string()).collect();
        k.sort();
        k
    }

    #[test]
    fn the_per_entry_cost_covers_the_structures_an_entry_occupies() {
        use std::mem::size_of;
        let slot = size_of::<(Arc<str>, Slot)>();
        let index = size_of::<((Instant, u64), Arc<str>)>().max(size_of::<(u64, Arc<str>)>());
        // Two `Arc`s (key and value), two counters each.
        assert!(ENTRY_OVERHEAD >= slot + 4 * size_of::<usize>() + index);
    }

    #[test]
    fn at_the_entry_cap_nothing_is_evicted_one_over_evicts_the_oldest_completed() {
        let m = store(3, usize::MAX, 10);
        complete(&m, "k1");
        complete(&m, "k2");
        complete(&m, "k3");
        assert_eq!(keys(&m), ["k1", "k2", "k3"]);
        assert_eq!(m.counters.evictions.get(), 0, "at the cap: no eviction");
        // One more key: the oldest completed (k1) goes, once.
        complete(&m, "k4");
        assert_eq!(keys(&m), ["k2", "k3", "k4"]);
        assert_eq!(m.counters.evictions.get(), 1);
        // k1 is gone: its retry takes a new lease (and evicts k2, now the oldest).
        assert!(matches!(
            m.idem_begin("k1", &lease("k1b"), LONG),
            Ok(Begin::Acquired)
        ));
        assert_eq!(keys(&m), ["k1", "k3", "k4"]);
        assert_eq!(m.counters.evictions.get(), 2);
        // A replay of a kept key evicts nothing.
        assert!(matches!(
            m.idem_begin("k4", &lease("x"), LONG),
            Ok(Begin::Existing(_))
        ));
        assert_eq!(m.counters.evictions.get(), 2);
    }

    #[test]
    fn leases_are_never_evicted_and_a_store_full_of_them_refuses_new_keys() {
        let m = store(2, usize::MAX, 10);
        for k in ["a", "b"] {
            assert!(matches!(
                m.idem_begin(k, &lease(k), LONG),
                Ok(Begin::Acquired)
            ));
        }
        assert!(matches!(
            m.idem_begin("c", &lease("c"), LONG),
            Err(StoreError::Full(_))
        ));
        assert_eq!(m.counters.lease_refusals.get(), 1);
        assert_eq!(m.counters.evictions.get(), 0);
        assert_eq!(keys(&m), ["a", "b"]);
        // Once `a` completes, it is what makes room; `b` (in flight) stays.
        assert!(m.idem_finish("a", &lease("a"), Some(result()), LONG));
        assert!(matches!(
            m.idem_begin("c", &lease("c"), LONG),
            Ok(Begin::Acquired)
        ));
        assert_eq!(m.counters.evictions.get(), 1);
        assert_eq!(keys(&m), ["b", "c"]);
        assert!(matches!(
            m.idem_begin("b", &lease("other"), LONG),
            Ok(Begin::Existing(Some(IdemRecord::Lease { .. })))
        ));
        assert!(m.idem_finish("b", &lease("b"), None, LONG));
        assert_eq!(keys(&m), ["c"]);
    }

    #[test]
    fn the_byte_cap_holds_exactly_and_one_byte_less_evicts() {
        let done = cost("k1", result());
        let leased = cost("k3", &lease("k3"));
        // Two completed records and one lease fit exactly.
        let m = store(100, 2 * done + leased, 10);
        complete(&m, "k1");
        complete(&m, "k2");
        assert!(matches!(
            m.idem_begin("k3", &lease("k3"), LONG),
            Ok(Begin::Acquired)
        ));
        assert_eq!(m.sizes().idempotency_bytes, 2 * done + leased);
        assert_eq!(m.counters.evictions.get(), 0);
        // k3's result is larger than its lease: the oldest completed (k1) makes room.
        assert!(m.idem_finish("k3", &lease("k3"), Some(result()), LONG));
        assert_eq!(keys(&m), ["k2", "k3"]);
        assert_eq!(m.counters.evictions.get(), 1);
        assert_eq!(m.sizes().idempotency_bytes, 2 * done);

        // One byte less: the same lease no longer fits beside two completed records.
        let m = store(100, 2 * done + leased - 1, 10);
        complete(&m, "k1");
        complete(&m, "k2");
        assert!(matches!(
            m.idem_begin("k3", &lease("k3"), LONG),
            Ok(Begin::Acquired)
        ));
        assert_eq!(keys(&m), ["k2", "k3"]);
        assert_eq!(m.counters.evictions.get(), 1);
        assert_eq!(m.sizes().idempotency_bytes, done + leased);
    }

    /// The books: entries, index entries, bytes, lease bytes.
    fn books(m: &MemoryStore) -> (usize, usize, usize, usize, usize) {
        let idem = m.idem();
        let lease_bytes: usize = idem
            .map
            .iter()
            .filter(|(_, s)| matches!(s.state, State::Lease(_)))
            .map(|(k, s)| cost(k, &s.value))
            .sum();
        let bytes: usize = idem.map.iter().map(|(k, s)| cost(k, &s.value)).sum();
        assert_eq!((idem.bytes, idem.lease_bytes), (bytes, lease_bytes));
        (
            idem.map.len(),
            idem.done.len(),
            idem.leases.len(),
            idem.bytes,
            idem.lease_bytes,
        )
    }

    fn not_replayable_again(m: &MemoryStore, key: &str) {
        assert!(
            matches!(
                m.idem_begin(key, &lease("retry"), LONG),
                Ok(Begin::Existing(Some(IdemRecord::TooLarge { ref fingerprint }))) if fingerprint == "fp"
            ),
            "{key}: a retry is answered 409, never run again"
        );
    }

    #[test]
    fn a_result_over_the_byte_cap_alone_is_kept_not_replayable_and_evicts_nothing() {
        let small = cost("k", "N|fp");
        let cap = cost("k1", result()) + small + cost("k2", &lease("k2"));
        let big = result_of(cap);
        let m = store(100, cap, 10);
        complete(&m, "k1");
        assert!(matches!(
            m.idem_begin("k", &lease("k"), LONG),
            Ok(Begin::Acquired)
        ));
        // Its result alone is over the cap: `N|fp` is kept in its place; k1 stays.
        assert!(m.idem_finish("k", &lease("k"), Some(&big), LONG));
        assert_eq!(m.counters.evictions.get(), 0);
        assert_eq!(keys(&m), ["k", "k1"]);
        assert_eq!(
            books(&m),
            (2, 2, 0, cost("k1", result()) + small, 0),
            "entries, completed, leases, bytes, lease bytes"
        );
        not_replayable_again(&m, "k");
        // A wrong lease changes nothing; releasing ours leaves the books balanced.
        assert!(matches!(
            m.idem_begin("k2", &lease("k2"), LONG),
            Ok(Begin::Acquired)
        ));
        assert!(!m.idem_finish("k2", &lease("not-ours"), Some(result()), LONG));
        assert!(m.idem_finish("k2", &lease("k2"), None, LONG));
        assert_eq!(books(&m), (2, 2, 0, cost("k1", result()) + small, 0));
        assert_eq!(m.counters.evictions.get(), 0);
    }

    /// A result of exactly `len` bytes.
    fn result_of(len: usize) -> String {
        let mut r = "D|fp|".to_string();
        r.extend(std::iter::repeat_n('y', len - r.len()));
        r
    }

    #[test]
    fn a_result_at_the_byte_cap_is_stored_and_one_byte_over_is_not_replayable() {
        let big = result_of(3000);
        // At the cap: every other completed record makes room (each counted), it is kept.
        let m = store(100, cost("k", &big), 10);
        complete(&m, "k1");
        complete(&m, "k2");
        assert!(matches!(
            m.idem_begin("k", &lease("k"), LONG),
            Ok(Begin::Acquired)
        ));
        assert!(m.idem_finish("k", &lease("k"), Some(&big), LONG));
        assert_eq!(keys(&m), ["k"]);
        assert_eq!(m.counters.evictions.get(), 2);
        assert_eq!(books(&m), (1, 1, 0, cost("k", &big), 0));
        assert!(
            matches!(
                m.idem_begin("k", &lease("retry"), LONG),
                Ok(Begin::Existing(None)),
            ),
            "the stored result itself (not a decodable response here)"
        );

        // One byte over: `N|fp` instead, the others stay.
        let m = store(100, cost("k", &big) - 1, 10);
        complete(&m, "k1");
        complete(&m, "k2");
        assert!(matches!(
            m.idem_begin("k", &lease("k"), LONG),
            Ok(Begin::Acquired)
        ));
        assert!(m.idem_finish("k", &lease("k"), Some(&big), LONG));
        assert_eq!(keys(&m), ["k", "k1", "k2"]);
        assert_eq!(m.counters.evictions.get(), 0);
        not_replayable_again(&m, "k");
    }

    #[test]
    fn a_result_that_fits_the_cap_but_not_beside_the_leases_is_not_replayable() {
        let other = cost("other", &lease("other"));
        let done = cost("k", result());
        // Exactly room for the result beside the other lease: stored, k1 evicted (counted).
        let m = store(100, other + done, 10);
        complete(&m, "k1");
        for k in ["other", "k"] {
            assert!(matches!(
                m.idem_begin(k, &lease(k), LONG),
                Ok(Begin::Acquired)
            ));
        }
        assert!(m.idem_finish("k", &lease("k"), Some(result()), LONG));
        assert_eq!(keys(&m), ["k", "other"]);
        assert_eq!(m.counters.evictions.get(), 1);
        assert_eq!(books(&m), (2, 1, 1, other + done, other));

        // One byte less: the result could never fit while `other` is in flight.
        let m = store(100, other + done - 1, 10);
        complete(&m, "k1");
        for k in ["other", "k"] {
            assert!(matches!(
                m.idem_begin(k, &lease(k), LONG),
                Ok(Begin::Acquired)
            ));
        }
        let evicted_by_begins = m.counters.evictions.get();
        assert!(m.idem_finish("k", &lease("k"), Some(result()), LONG));
        assert_eq!(
            m.counters.evictions.get(),
            evicted_by_begins,
            "FINISH evicted nothing"
        );
        not_replayable_again(&m, "k");
    }

    #[test]
    fn a_begin_the_leases_leave_no_bytes_for_is_refused_before_anything_is_evicted() {
        let a = cost("a", &lease("a"));
        let done = cost("b", result());
        let long_key = "c".repeat(1200);
        let c = cost(&long_key, &lease("c"));
        assert!(
            c > done,
            "the new lease needs more than the completed record frees"
        );
        // Exactly room for the two leases: the completed record is evicted, counted once.
        let m = store(100, a + c, 10);
        assert!(matches!(
            m.idem_begin("a", &lease("a"), LONG),
            Ok(Begin::Acquired)
        ));
        complete(&m, "b");
        assert!(matches!(
            m.idem_begin(&long_key, &lease("c"), LONG),
            Ok(Begin::Acquired)
        ));
        assert_eq!(m.counters.evictions.get(), 1);
        assert_eq!(m.counters.lease_refusals.get(), 0);
        assert_eq!(books(&m), (2, 0, 2, a + c, a + c));

        // One byte less: refused, and the completed record is still there.
        let m = store(100, a + c - 1, 10);
        assert!(matches!(
            m.idem_begin("a", &lease("a"), LONG),
            Ok(Begin::Acquired)
        ));
        complete(&m, "b");
        assert!(matches!(
            m.idem_begin(&long_key, &lease("c"), LONG),
            Err(StoreError::Full(_))
        ));
        assert_eq!(m.counters.evictions.get(), 0);
        assert_eq!(m.counters.lease_refusals.get(), 1);
        assert_eq!(keys(&m), ["a", "b"]);
        assert_eq!(books(&m), (2, 1, 1, a + done, a));
    }

    #[test]
    fn a_begin_the_leases_leave_no_entry_for_is_refused_before_anything_is_evicted() {
        let m = store(3, usize::MAX, 10);
        for k in ["a", "b"] {
            assert!(matches!(
                m.idem_begin(k, &lease(k), LONG),
                Ok(Begin::Acquired)
            ));
        }
        complete(&m, "d");
        let records = m.records.read().unwrap().clone();
        let caps = |max_entries| Caps {
            max_entries,
            max_bytes: usize::MAX,
            max_revocations: 10,
        };
        // Two leases and a cap of two: no room for a third lease, `d` is kept.
        m.retune(records.clone(), caps(2));
        assert!(matches!(
            m.idem_begin("c", &lease("c"), LONG),
            Err(StoreError::Full(_))
        ));
        assert_eq!(keys(&m), ["a", "b", "d"]);
        assert_eq!(m.counters.evictions.get(), 0);
        assert_eq!(m.counters.lease_refusals.get(), 1);
        // A cap of three: `d` makes room, counted once.
        m.retune(records.clone(), caps(3));
        assert!(matches!(
            m.idem_begin("c", &lease("c"), LONG),
            Ok(Begin::Acquired)
        ));
        assert_eq!(keys(&m), ["a", "b", "c"]);
        assert_eq!(m.counters.evictions.get(), 1);
        // Below the leases (a reload), a result is still kept: the request ran.
        m.retune(records, caps(1));
        assert!(m.idem_finish("a", &lease("a"), Some(result()), LONG));
        assert_eq!(keys(&m), ["a", "b", "c"]);
        assert_eq!(m.counters.evictions.get(), 1);
        assert!(matches!(
            m.idem_begin("a", &lease("retry"), LONG),
            Ok(Begin::Existing(_))
        ));
        assert_eq!(books(&m).0, 3);
    }

    #[test]
    fn a_replay_decodes_the_stored_record_as_written() {
        let m = store(10, usize::MAX, 10);
        let done = IdemRecord::Done {
            fingerprint: "fp".into(),
            response: super::super::StoredResponse::new(201, &http::HeaderMap::new(), b"body"),
        };
        assert!(matches!(
            m.idem_begin("k", &lease("k"), LONG),
            Ok(Begin::Acquired)
        ));
        assert!(m.idem_finish("k", &lease("k"), Some(&done.encode()), LONG));
        match m.idem_begin("k", &lease("retry"), LONG) {
            Ok(Begin::Existing(Some(r))) => assert_eq!(r, done),
            other => panic!("{other:?}"),
        }
        // The value is shared, not copied, by a replay in progress.
        let held = m.idem().map.get("k").unwrap().value.clone();
        assert_eq!(&*held, done.encode());
        assert_eq!(Arc::strong_count(&held), 2);
    }

    #[test]
    fn lapsed_leases_and_expired_records_make_room_without_eviction() {
        let m = store(2, usize::MAX, 10);
        // A zero lock_ttl lapses at once; a zero ttl expires at once.
        assert!(matches!(
            m.idem_begin("lapsed", &lease("l"), Duration::ZERO),
            Ok(Begin::Acquired)
        ));
        assert!(matches!(
            m.idem_begin("old", &lease("o"), LONG),
            Ok(Begin::Acquired)
        ));
        assert!(m.idem_finish("old", &lease("o"), Some(result()), Duration::ZERO));
        for k in ["n1", "n2"] {
            assert!(matches!(
                m.idem_begin(k, &lease(k), LONG),
                Ok(Begin::Acquired)
            ));
        }
        assert_eq!(keys(&m), ["n1", "n2"]);
        assert_eq!(m.counters.evictions.get(), 0);
        assert_eq!(m.counters.lease_refusals.get(), 0);
    }

    #[test]
    fn lowering_the_caps_on_reload_evicts_completed_records_on_the_next_write() {
        let m = store(10, usize::MAX, 10);
        for k in ["k1", "k2", "k3"] {
            complete(&m, k);
        }
        let records = m.records.read().unwrap().clone();
        m.retune(
            records,
            Caps {
                max_entries: 2,
                max_bytes: usize::MAX,
                max_revocations: 10,
            },
        );
        complete(&m, "k4");
        assert_eq!(keys(&m), ["k3", "k4"]);
        assert_eq!(m.counters.evictions.get(), 2);
    }

    fn jti(id: &str) -> Revoke {
        Revoke::Jti {
            jti: id.into(),
            expires_at: unix_now() + 600,
        }
    }

    #[test]
    fn revocations_at_the_cap_are_kept_and_a_new_one_is_refused() {
        let m = store(10, usize::MAX, 2);
        m.revoke(&jti("a")).unwrap();
        assert!(m.revoke(&jti("b")).is_ok(), "at the cap");
        assert!(matches!(m.revoke(&jti("c")), Err(StoreError::Full(_))));
        let sub = Revoke::Subject {
            sub: "s".into(),
            before: unix_now(),
        };
        assert!(matches!(m.revoke(&sub), Err(StoreError::Full(_))));
        assert_eq!(m.counters.revocation_refusals.get(), 2);
        // Renewing one that is held needs no room; nothing old was forgotten.
        m.revoke(&jti("a")).unwrap();
        assert!(m.is_revoked(Some("a"), None, None));
        assert!(m.is_revoked(Some("b"), None, None));
        assert!(!m.is_revoked(Some("c"), None, None));
        assert_eq!(m.revocations().expiry.len(), 2);
    }

    #[test]
    fn expired_revocations_are_purged_before_a_new_one_is_refused() {
        let m = store(10, usize::MAX, 2);
        m.revoke(&jti("live")).unwrap();
        // An entry whose time has passed (written directly: the TTL floor is one second).
        let past = unix_now() - 10;
        let key: Arc<str> = "dead".into();
        m.revocations().expiry.insert((past, false, key.clone()));
        m.jtis.insert(key, past);
        assert_eq!(m.revocations().expiry.len(), 2);
        m.revoke(&jti("new")).unwrap();
        assert_eq!(m.revocations().expiry.len(), 2);
        assert!(m.jtis.get("dead").is_none());
        assert!(m.is_revoked(Some("live"), None, None));
        assert!(m.is_revoked(Some("new"), None, None));
        assert_eq!(m.counters.revocation_refusals.get(), 0);
    }

    #[test]
    fn a_subject_revocation_never_weakens_and_keeps_one_index_entry() {
        let m = store(10, usize::MAX, 10);
        let now = unix_now();
        m.revoke(&Revoke::Subject {
            sub: "s".into(),
            before: now,
        })
        .unwrap();
        m.revoke(&Revoke::Subject {
            sub: "s".into(),
            before: now - 100,
        })
        .unwrap();
        assert_eq!(*m.subs.get("s").unwrap(), (now, now + 3600));
        assert_eq!(m.revocations().expiry.len(), 1);
        assert!(m.is_revoked(None, Some("s"), Some(now)));
        assert!(!m.is_revoked(None, Some("s"), Some(now + 1)));
    }
}

//! The embedded store: revocations in process memory. One instance only — with several
//! doorman instances, use Redis.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::{Begin, IdemRecord};

use super::{Records, Revoke, subject_covers};
use crate::auth::unix_now;

#[derive(Debug)]
pub struct MemoryStore {
    /// jti → unix second after which the entry may be forgotten.
    jtis: DashMap<String, u64>,
    /// sub → (revoked before, forget after).
    subs: DashMap<String, (u64, u64)>,
    /// Retuned in place on reload (TTLs, leeway): the records themselves stay.
    records: std::sync::RwLock<Records>,
    /// Idempotency records: key → (encoded record, expiry).
    idem: DashMap<String, (String, Instant)>,
    idem_calls: std::sync::atomic::AtomicU64,
}

impl MemoryStore {
    pub fn new(records: Records) -> Self {
        MemoryStore {
            jtis: DashMap::new(),
            subs: DashMap::new(),
            records: std::sync::RwLock::new(records),
            idem: DashMap::new(),
            idem_calls: Default::default(),
        }
    }

    /// Revocations held (jtis, subjects) and idempotency records.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.jtis.len(), self.subs.len(), self.idem.len())
    }

    pub fn retune(&self, records: Records) {
        *self.records.write().unwrap_or_else(|e| e.into_inner()) = records;
    }

    /// Same contract as the Redis BEGIN script, atomic under the map's entry lock.
    pub fn idem_begin(&self, key: &str, lease: &str, lock_ttl: Duration) -> Begin {
        let now = Instant::now();
        // Forget expired records now and then (every 1024 begins), not on every call.
        if self
            .idem_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % 1024
            == 1023
        {
            self.idem.retain(|_, (_, until)| *until > now);
        }
        match self.idem.entry(key.to_string()) {
            Entry::Occupied(e) if e.get().1 > now => {
                Begin::Existing(IdemRecord::decode(&e.get().0))
            }
            Entry::Occupied(mut e) => {
                e.insert((lease.to_string(), now + lock_ttl));
                Begin::Acquired
            }
            Entry::Vacant(e) => {
                e.insert((lease.to_string(), now + lock_ttl));
                Begin::Acquired
            }
        }
    }

    /// Same contract as the Redis FINISH script.
    pub fn idem_finish(&self, key: &str, lease: &str, result: Option<&str>, ttl: Duration) -> bool {
        let now = Instant::now();
        match self.idem.entry(key.to_string()) {
            Entry::Occupied(mut e) if e.get().0 == lease && e.get().1 > now => {
                match result {
                    Some(r) => {
                        e.insert((r.to_string(), now + ttl));
                    }
                    None => {
                        e.remove();
                    }
                }
                true
            }
            _ => false,
        }
    }

    pub fn is_revoked(&self, jti: Option<&str>, sub: Option<&str>, iat: Option<u64>) -> bool {
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

    pub fn revoke(&self, r: &Revoke) {
        let now = unix_now();
        // Forget what has expired, so the maps stay bounded by live revocations.
        self.jtis.retain(|_, until| *until >= now);
        self.subs.retain(|_, (_, until)| *until >= now);
        // The same TTLs as the Redis records.
        // Never weaken an existing revocation: the later expiry and cut-off win, as in Redis.
        let (_, _, ttl) = self
            .records
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .record(r, now);
        let until = now.saturating_add(ttl.as_secs());
        match r {
            Revoke::Jti { jti, .. } => {
                let mut e = self.jtis.entry(jti.clone()).or_insert(until);
                *e = (*e).max(until);
            }
            Revoke::Subject { sub, before } => {
                let mut e = self.subs.entry(sub.clone()).or_insert((*before, until));
                *e = (e.0.max(*before), e.1.max(until));
            }
        }
    }
}

//! The embedded store: revocations in process memory. One instance only — with several
//! doorman instances, use Redis.

use dashmap::DashMap;
use std::time::Duration;

use super::{Revoke, subject_covers};
use crate::auth::unix_now;
use crate::config::RevocationSettings;

#[derive(Debug)]
pub struct MemoryStore {
    /// jti → unix second after which the entry may be forgotten.
    jtis: DashMap<String, u64>,
    /// sub → (revoked before, forget after).
    subs: DashMap<String, (u64, u64)>,
    subject_ttl: Duration,
}

impl MemoryStore {
    pub fn new(revocation: &RevocationSettings) -> Self {
        MemoryStore {
            jtis: DashMap::new(),
            subs: DashMap::new(),
            subject_ttl: revocation.subject_ttl,
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
        match r {
            Revoke::Jti { jti, expires_at } => {
                self.jtis.insert(jti.clone(), *expires_at);
            }
            Revoke::Subject { sub, before } => {
                let until = now + self.subject_ttl.as_secs();
                self.subs.insert(sub.clone(), (*before, until));
            }
        }
    }
}

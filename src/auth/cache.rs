//! A bounded cache of verified tokens, so a token seen again costs no signature check.
//!
//! Direct-mapped: a fixed array of slots indexed by a keyed hash of the whole token, each
//! slot holding at most one entry behind its own short-lived lock. A hit compares the full
//! token, so a hash collision can only cause a miss, never a wrong answer. Memory is bounded
//! by the slot count; a colliding insert simply replaces the older entry.

use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use super::jwt::VerifiedToken;

pub(crate) struct TokenCache {
    slots: Box<[Mutex<Option<Arc<VerifiedToken>>>]>,
    mask: usize,
    /// Keyed per process; foldhash rather than SipHash, whose cost over a 300-byte token
    /// was most of a hit's (a collision only costs a miss: a hit compares the whole token).
    hasher: foldhash::quality::RandomState,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl TokenCache {
    /// Room for about `entries` tokens (rounded up to a power of two; 0 disables caching).
    pub(crate) fn new(entries: usize) -> Self {
        let n = if entries == 0 {
            0
        } else {
            entries.next_power_of_two()
        };
        TokenCache {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            mask: n.wrapping_sub(1),
            hasher: Default::default(),
        }
    }

    fn slot(&self, token: &str) -> Option<&Mutex<Option<Arc<VerifiedToken>>>> {
        if self.slots.is_empty() {
            return None;
        }
        let h = self.hasher.hash_one(token) as usize;
        Some(&self.slots[h & self.mask])
    }

    pub(crate) fn get(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        let slot = self.slot(token)?.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref().filter(|v| &*v.token == token).cloned()
    }

    pub(crate) fn insert(&self, v: Arc<VerifiedToken>) {
        if let Some(slot) = self.slot(&v.token) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
        }
    }
}

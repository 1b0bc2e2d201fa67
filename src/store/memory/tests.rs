//! Unit tests of the embedded store: entry and byte caps, eviction order, leases, results
//! kept not replayable, revocation caps.

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

//! Unit tests of the idempotency stage: which requests are keyed and which keys are
//! accepted, the body deadline, store keys.

use super::*;

fn settings() -> IdempotencySettings {
    IdempotencySettings::default()
}

fn req(method: &str, key: &[&str]) -> Request<()> {
    let mut b = Request::builder().method(method).uri("/pay");
    for k in key {
        b = b.header("idempotency-key", *k);
    }
    b.body(()).unwrap()
}

#[test]
fn key_rules() {
    let s = settings();
    let req_mode = IdempotencyMode::Required;
    assert_eq!(
        client_key(&req("POST", &["abc-1"]), req_mode, &s)
            .unwrap()
            .as_deref(),
        Some("abc-1")
    );
    assert_eq!(
        client_key(&req("POST", &["\"abc-1\""]), req_mode, &s)
            .unwrap()
            .as_deref(),
        Some("abc-1")
    );
    assert_eq!(
        client_key(&req("GET", &[]), req_mode, &s).unwrap(),
        None,
        "GET is not keyed"
    );
    assert_eq!(
        client_key(&req("POST", &[]), IdempotencyMode::Optional, &s).unwrap(),
        None
    );
    assert_eq!(
        client_key(&req("POST", &["k"]), IdempotencyMode::Off, &s).unwrap(),
        None
    );
    for bad in [&[][..], &["a", "b"], &["has space"], &["\"\""]] {
        assert!(
            matches!(
                client_key(&req("POST", bad), req_mode, &s),
                Err(ProxyError::IdempotencyKey(_))
            ),
            "{bad:?}"
        );
    }
    let long = "k".repeat(256);
    assert!(client_key(&req("POST", &[&long]), req_mode, &s).is_err());
    let x = Request::post("/")
        .header("x-idempotency-key", "alt")
        .body(())
        .unwrap();
    assert_eq!(
        client_key(&x, req_mode, &s).unwrap().as_deref(),
        Some("alt")
    );
}

#[test]
fn the_body_deadline_leaves_finish_its_store_timeout_and_margin_from_begin() {
    let start = tokio::time::Instant::now();
    let ttl = Duration::from_secs(1);
    let margin = crate::config::defaults::FINISH_MARGIN;
    let d = body_deadline(start, ttl, Duration::from_millis(200));
    assert_eq!(d, start + ttl - Duration::from_millis(200) - margin);
    // Never past the start, whatever validation let through.
    assert_eq!(body_deadline(start, ttl, ttl), start);
}

#[test]
fn keys_are_scoped_and_unambiguous() {
    let s = settings();
    let a = store_key(&s, "h", "/pay", Some("alice"), "k1");
    assert_ne!(a, store_key(&s, "h", "/pay", Some("bob"), "k1"));
    assert_ne!(a, store_key(&s, "h", "/pay", None, "k1"));
    assert_ne!(a, store_key(&s, "other", "/pay", Some("alice"), "k1"));
    assert_ne!(
        store_key(&s, "h", "/pay", None, "k1"),
        store_key(&s, "h", "/pay", Some(""), "k1"),
        "no subject is not the empty subject"
    );
    assert_ne!(a, store_key(&s, "h", "/pay/", Some("alice"), "k1"));
    assert_ne!(
        store_key(&s, "h", "/a", Some("bc"), "k"),
        store_key(&s, "h", "/ab", Some("c"), "k")
    );
    assert!(a.starts_with("doorman:idem:"));
}

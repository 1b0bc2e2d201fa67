//! The key set's bookkeeping without a provider: generations, refused keys, intervals, the
//! early-fetch gate, the max-age parser.

use std::time::Duration;

use http::HeaderMap;
use http::header::CACHE_CONTROL;
use jsonwebtoken::Algorithm;

use super::fetch::max_age;
use super::*;

fn settings(source: JwksSource) -> JwksSettings {
    JwksSettings {
        source,
        refresh: Duration::from_secs(300),
        min_refresh: Duration::from_secs(30),
        timeout: Duration::from_millis(50),
        ca: Vec::new(),
        algorithms: vec![Algorithm::ES256],
    }
}

fn url() -> JwksSource {
    JwksSource::Url("https://idp.test/certs".parse().unwrap())
}

/// A set of fresh P-256 keys under `kids`.
fn set_of(kids: &[&str]) -> ParsedKeySet {
    let keys: Vec<serde_json::Value> = kids
        .iter()
        .map(|kid| {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let enc =
                jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
            let mut jwk = serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, Algorithm::ES256).unwrap(),
            )
            .unwrap();
            jwk["kid"] = (*kid).into();
            jwk
        })
        .collect();
    let doc = serde_json::to_vec(&json!({ "keys": keys })).unwrap();
    crate::config::parse_key_set(&doc, &[Algorithm::ES256]).unwrap()
}

/// A key set without a runtime: no task, nothing fetched.
fn idle(static_kids: &[&str]) -> Jwks {
    Jwks::start(
        &settings(url()),
        static_kids.iter().map(|k| k.to_string()).collect(),
        None,
        None,
    )
}

#[test]
fn a_changed_set_gets_a_new_generation_an_equal_one_does_not() {
    let j = idle(&[]);
    assert!(!j.ready());
    let a = set_of(&["a", "b"]);
    j.shared.apply(a.clone()).unwrap();
    assert_eq!((j.current().generation, j.ready()), (1, true));
    // The same keys in another order: the same set.
    let mut reordered = a.clone();
    reordered.keys.reverse();
    j.shared.apply(reordered).unwrap();
    assert_eq!(j.current().generation, 1);
    // One key dropped: a new set.
    let mut fewer = a.clone();
    fewer.keys.pop();
    j.shared.apply(fewer).unwrap();
    assert_eq!(j.current().generation, 2);
    assert!(j.current().find("a").is_some() && j.current().find("b").is_none());
}

#[test]
fn a_kid_of_a_static_key_is_refused_and_no_usable_key_keeps_the_set() {
    let j = idle(&["mine"]);
    j.shared.apply(set_of(&["mine", "theirs"])).unwrap();
    let kids: Vec<_> = j
        .current()
        .keys
        .iter()
        .map(|k| k.key.kid.clone().unwrap())
        .collect();
    assert_eq!(kids, ["theirs"]);
    assert!(matches!(
        j.shared.apply(set_of(&["mine"])),
        Err(FetchError::NoUsableKeys)
    ));
    assert_eq!(j.current().generation, 1);
    assert!(j.current().find("theirs").is_some());
}

#[test]
fn the_next_fetch_honours_max_age_within_bounds_and_retries_soon_after_a_failure() {
    let j = idle(&[]);
    let s = &j.shared;
    for (max_age, want) in [
        (None, 300),
        (Some(0), 30),
        (Some(10), 30),
        (Some(120), 120),
        (Some(86_400), 300),
    ] {
        let got = s.finish(Ok(max_age.map(Duration::from_secs)));
        assert_eq!(got, Duration::from_secs(want), "{max_age:?}");
    }
    assert_eq!(s.finish(Err(FetchError::Timeout)), Duration::from_secs(30));
    let status = j.status();
    assert_eq!(status["fetches"], json!({"ok": 5, "failed": 1}));
    assert_eq!(
        status["last_error"],
        "no complete answer within the timeout"
    );
    // Never key material: kids and algorithms only.
    assert_eq!(status["keys"], json!([]));
}

#[test]
fn an_unknown_kid_is_granted_one_early_fetch_per_min_refresh() {
    // Made outside a runtime, so no task runs: a granted request waits `timeout` for a
    // fetch that never comes (on a paused clock).
    let j = idle(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(early_fetches(j));
}

async fn early_fetches(j: Jwks) {
    assert!(!j.refresh_for_unknown_kid().await);
    assert!(
        j.shared.early.load(Ordering::Acquire),
        "an early fetch was asked for"
    );
    // Pending: a second request waits for the same fetch instead of asking again.
    j.shared.wake.notify_waiters();
    let before = *lock(&j.shared.last_early);
    assert!(!j.refresh_for_unknown_kid().await);
    assert_eq!(*lock(&j.shared.last_early), before);
    // Not pending any more, but within min_refresh: refused at once.
    j.shared.early.store(false, Ordering::Release);
    let asked = tokio::time::Instant::now();
    assert!(!j.refresh_for_unknown_kid().await);
    assert_eq!(asked.elapsed(), Duration::ZERO);
    // A finished fetch wakes the waiters.
    j.shared.in_flight.store(true, Ordering::Release);
    let waiter = {
        let shared = j.shared.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            shared.done.send_modify(|n| *n += 1);
        })
    };
    assert!(j.refresh_for_unknown_kid().await);
    waiter.await.unwrap();
}

#[test]
fn max_age_is_read_from_cache_control() {
    for (values, want) in [
        (&["public, max-age=120"][..], Some(120)),
        (&["max-age=\"60\", must-revalidate"][..], Some(60)),
        (&["MAX-AGE=7"][..], Some(7)),
        (&["no-cache"][..], Some(0)),
        (&["max-age=60", "no-store"][..], Some(0)),
        (&["max-age=soon"][..], None),
        (&["private"][..], None),
        (&[][..], None),
    ] {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CACHE_CONTROL, v.parse().unwrap());
        }
        assert_eq!(max_age(&h), want.map(Duration::from_secs), "{values:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_refresh_task_ends_with_the_last_handle() {
    // Nothing listens on port 1: the task keeps failing until it is stopped.
    let mut s = settings(JwksSource::Url("http://127.0.0.1:1/certs".parse().unwrap()));
    s.min_refresh = Duration::from_millis(10);
    let j = Jwks::start(&s, Vec::new(), None, None);
    let shared = Arc::downgrade(&j.shared);
    let mut done = j.shared.done.subscribe();
    tokio::time::timeout(Duration::from_secs(20), done.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(
        j.status()["last_error"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach the provider")
    );
    drop(j);
    tokio::time::timeout(Duration::from_secs(20), async {
        while shared.upgrade().is_some() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the task let go of the key set");
}

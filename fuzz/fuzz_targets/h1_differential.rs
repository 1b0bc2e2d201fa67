//! The same client bytes to doorman's HTTP/1.1 connection and to hyper's HTTP/1.1 server.
//! Requests both accepted must be the same request (method, target, version, headers, body);
//! two servers that disagree on where a body ends or the next request starts is a smuggling
//! risk and a crash. Inputs one side accepts and the other refuses are not crashes: set
//! `DOORMAN_FUZZ_CLASSIFY=<dir>` to have the first example of each kind of disagreement
//! written there.
#![no_main]

use std::collections::HashSet;
use std::sync::Mutex;

use doorman_fuzz::{BodyOutcome, Seen, Served, debug, doorman, hyper};
use libfuzzer_sys::fuzz_target;

/// Headers compared between the two: all but Content-Length, which doorman sends on as one
/// canonical value when a request repeats it with equal values.
fn headers(s: &Seen) -> Vec<(String, Vec<u8>)> {
    s.headers
        .iter()
        .filter(|(n, _)| n != "content-length")
        .cloned()
        .collect()
}

fn outcome(s: &Served, i: usize) -> String {
    match s.requests.get(i) {
        Some(r) => match &r.body {
            BodyOutcome::Complete(_) => "served".into(),
            BodyOutcome::Pending => "served, body pending".into(),
            BodyOutcome::Failed(e) => format!("served, body failed: {e}"),
        },
        None => match s.statuses.get(i) {
            Some(code) => format!("refused {code}"),
            None => match &s.end {
                Some(Ok(())) => "closed".into(),
                Some(Err(e)) => format!("closed: {e}"),
                None => "waiting".into(),
            },
        },
    }
}

static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn classify(data: &[u8], d: &Served, h: &Served, i: usize) {
    let Some(dir) = std::env::var_os("DOORMAN_FUZZ_CLASSIFY") else {
        return;
    };
    let kind = format!("doorman {} / hyper {}", outcome(d, i), outcome(h, i));
    let mut seen = SEEN.lock().unwrap();
    if seen.get_or_insert_with(HashSet::new).insert(kind.clone()) {
        let name: String = kind
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = std::path::Path::new(&dir);
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(
            dir.join(format!("{}.bin", &name[..name.len().min(120)])),
            data,
        );
        eprintln!("new disagreement: {kind} (request {i})");
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 32 * 1024 {
        return;
    }
    let d = doorman(data, vec![data.len()]);
    let h = hyper(data);
    debug("doorman", &d);
    debug("hyper", &h);
    let both = d.requests.len().min(h.requests.len());
    for i in 0..both {
        let (a, b) = (&d.requests[i], &h.requests[i]);
        let text = String::from_utf8_lossy(data);
        assert_eq!(
            (&a.method, &a.target, a.version),
            (&b.method, &b.target, b.version),
            "request {i}: doorman and hyper read different request lines from {text:?}"
        );
        assert_eq!(
            headers(a),
            headers(b),
            "request {i}: doorman and hyper read different headers from {text:?}"
        );
        match (&a.body, &b.body) {
            (BodyOutcome::Complete(x), BodyOutcome::Complete(y)) => assert_eq!(
                x, y,
                "request {i}: doorman and hyper read different bodies from {text:?}"
            ),
            // One side has the whole body while the other waits for more: they disagree
            // on where the body ends.
            (BodyOutcome::Complete(x), BodyOutcome::Pending) => {
                panic!(
                    "request {i}: doorman read a {}-byte body, hyper waits for more, from {text:?}",
                    x.len()
                )
            }
            (BodyOutcome::Pending, BodyOutcome::Complete(y)) => {
                panic!(
                    "request {i}: hyper read a {}-byte body, doorman waits for more, from {text:?}",
                    y.len()
                )
            }
            (x, y) if std::mem::discriminant(x) != std::mem::discriminant(y) => {
                classify(data, &d, &h, i);
                return;
            }
            _ => {}
        }
    }
    if d.requests.len() != h.requests.len() {
        classify(data, &d, &h, both);
    }
});

//! doorman's HTTP/1.1 connection (request heads, body framing, pipelining) over a scripted
//! client: the same bytes delivered whole and in reads of random sizes (split points from
//! the input's hash) must give the same requests — method, target, version, headers, body —
//! and the same answers. The one allowed difference: a refusal of bytes that end without a
//! line feed, which the codec parses only once a line end arrives (the split run may still
//! be waiting for it).
#![no_main]

use doorman_fuzz::{Served, debug, doorman, hash, split_points};
use libfuzzer_sys::fuzz_target;

fn same(whole: &Served, split: &Served, data: &[u8], how: &str) {
    assert_eq!(
        whole.requests,
        split.requests,
        "requests differ ({how}) for {:?}",
        String::from_utf8_lossy(data)
    );
    let (w, s) = (&whole.statuses, &split.statuses);
    let lazy_refusal = w.len() == s.len() + 1
        && w[..s.len()] == s[..]
        && matches!(w.last(), Some(400 | 431 | 501));
    assert!(
        w == s || lazy_refusal,
        "answers differ ({how}): whole {w:?}, split {s:?} for {:?}",
        String::from_utf8_lossy(data)
    );
}

fuzz_target!(|data: &[u8]| {
    if data.len() > 32 * 1024 {
        return;
    }
    let whole = doorman(data, vec![data.len()]);
    debug("whole", &whole);
    let seed = hash(data);
    let small = doorman(data, split_points(seed, data.len(), 8));
    same(&whole, &small, data, "reads of 1-8 bytes");
    let large = doorman(data, split_points(seed.rotate_left(17), data.len(), 512));
    same(&whole, &large, data, "reads of 1-512 bytes");
});

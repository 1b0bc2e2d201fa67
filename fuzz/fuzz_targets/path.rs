//! `message::target::normalise` under each path policy (merge_slashes × escaped_slashes),
//! `normalise_prefix`, `under_prefix` and `host_for_matching`.
//!
//! Input: a request target, optionally followed by `\n` and a route prefix, and a second
//! `\n` and an authority. Checked, besides never panicking: a normalised target is a fixed
//! point; its path starts with `/` and holds no dot segment, no `//` (when slashes are
//! merged), no `%2e`, no escape of an unreserved character, no lower-case hex, no forbidden
//! byte, and no escaped slash unless the policy keeps them; `under_prefix` agrees with a
//! segment-by-segment comparison; a matched host is lower-case, has no trailing dot, and is
//! its own normal form.
#![no_main]

use doorman::config::EscapedSlashes;
use doorman::message::target::{
    PathPolicy, host_for_matching, normalise, normalise_prefix, under_prefix,
};
use libfuzzer_sys::fuzz_target;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn check_path(target: &str, out: &str, policy: PathPolicy) {
    let path = out.split('?').next().unwrap_or("");
    let ctx = || format!("{target:?} → {out:?} under {policy:?}");
    assert!(path.starts_with('/'), "not origin-form: {}", ctx());
    for seg in path.split('/').skip(1) {
        assert!(seg != "." && seg != "..", "a dot segment left: {}", ctx());
    }
    if policy.merge_slashes {
        assert!(!path.contains("//"), "repeated slash left: {}", ctx());
    }
    let b = path.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        assert!(
            c > b' ' && c < 0x7f && !matches!(c, b'"' | b'#' | b'<' | b'>' | b'\\'),
            "forbidden byte {c:#x} left: {}",
            ctx()
        );
        if c == b'%' {
            let (h, l) = (b.get(i + 1).copied(), b.get(i + 2).copied());
            let hexu =
                |x: Option<u8>| x.is_some_and(|x| x.is_ascii_digit() || (b'A'..=b'F').contains(&x));
            assert!(
                hexu(h) && hexu(l),
                "escape not in upper-case hex: {}",
                ctx()
            );
            let v = u8::from_str_radix(&path[i + 1..i + 3], 16).unwrap();
            assert!(
                !unreserved(v),
                "escape of an unreserved character left: {}",
                ctx()
            );
            assert!(v != 0, "%00 left: {}", ctx());
            if policy.escaped_slashes != EscapedSlashes::Keep {
                assert!(v != b'/' && v != b'\\', "escaped slash left: {}", ctx());
            }
        }
    }
    let again = normalise(out, policy);
    assert_eq!(again.as_deref(), Ok(out), "not a fixed point: {}", ctx());
}

/// `under_prefix`, stated on segments.
fn segment_under(out: &str, prefix: &str) -> bool {
    let path = out.split('?').next().unwrap_or("");
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    let p: Vec<&str> = prefix.split('/').collect();
    let o: Vec<&str> = path.split('/').collect();
    o.len() >= p.len() && o[..p.len()] == p[..]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let target = parts.next().unwrap_or("");
    let prefix = parts.next();
    let authority = parts.next();

    let prefix = prefix.and_then(|p| {
        let np = normalise_prefix(p)?;
        // A normal prefix is its own normal form.
        assert_eq!(
            normalise_prefix(&np).as_deref(),
            Some(np.as_str()),
            "prefix {p:?}"
        );
        Some(np)
    });

    for merge_slashes in [true, false] {
        for escaped_slashes in [
            EscapedSlashes::Reject,
            EscapedSlashes::Decode,
            EscapedSlashes::Keep,
        ] {
            let policy = PathPolicy {
                merge_slashes,
                escaped_slashes,
            };
            let Ok(out) = normalise(target, policy) else {
                continue;
            };
            check_path(target, &out, policy);
            if let Some(p) = &prefix
                && !p.contains('?')
            {
                assert_eq!(
                    under_prefix(&out, p),
                    segment_under(&out, p),
                    "under_prefix({out:?}, {p:?})"
                );
            }
        }
    }

    if let Some(a) = authority
        && let Some(h) = host_for_matching(a)
    {
        assert!(!h.bytes().any(|b| b.is_ascii_uppercase()), "{a:?} → {h:?}");
        assert!(!h.ends_with('.'), "{a:?} → {h:?}");
        assert_eq!(host_for_matching(&h).as_deref(), Some(&*h), "{a:?} → {h:?}");
    }
});

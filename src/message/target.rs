//! The request target, normalised once: the path every later stage decides on (routing,
//! auth, idempotency fingerprints, the access log) and the replica receives, and the
//! authority the request is for.
//!
//! Path rules (RFC 3986 §6.2.2, plus a gateway's refusals; docs/security.md):
//! - only origin-form paths (`/…`); bytes outside RFC 3986's `pchar` set that mean something
//!   to some backend (controls, space, `"`, `#`, `<`, `>`, `\`, DEL, non-ASCII) → refused;
//! - `%XX` of an unreserved character is decoded, every other escape kept with upper-case hex;
//!   a malformed escape or `%00` → refused;
//! - encoded `/` and `\` (`%2F`, `%5C`): refused, decoded into `/`, or kept, by policy;
//! - a dot segment written with an escape (`%2e`, `.%2E`, …) → refused under `reject`;
//! - runs of `/` merged (by default), dot segments removed; `..` above the root → refused.
//!
//! The query is checked for the same forbidden bytes and otherwise left alone.

use std::borrow::Cow;

/// What to do with `%2F`, `%5C` in a path (`[server] escaped_slashes`, as Envoy's
/// `path_with_escaped_slashes_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400: a path whose meaning depends on who decodes it is refused.
    Reject,
    /// Decode them into `/` and `\` (then normalised like any other separator).
    Decode,
    /// Forward them encoded; routing sees them as ordinary characters of a segment.
    Keep,
}

/// How paths are normalised: `[server] merge_slashes` and `escaped_slashes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a target was refused (the 400's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    NotOriginForm,
    ForbiddenByte,
    BadEscape,
    EncodedNul,
    EscapedSlash,
    EncodedDotSegment,
    DotSegmentParameter,
    AboveRoot,
}

impl TargetError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            TargetError::NotOriginForm => "request path must start with '/'",
            TargetError::ForbiddenByte => "forbidden character in request target",
            TargetError::BadEscape => "malformed percent-escape in request target",
            TargetError::EncodedNul => "encoded NUL in request path",
            TargetError::EscapedSlash => "encoded '/' or '\\' in request path",
            TargetError::EncodedDotSegment => "encoded dot segment in request path",
            TargetError::DotSegmentParameter => "dot segment with parameters in request path",
            TargetError::AboveRoot => "request path climbs above the root",
        }
    }
}

/// RFC 3986 `unreserved`: escapes of these mean the same as the character itself.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes refused anywhere in a path or query: they are not `pchar`s and some backend or
/// intermediary gives each its own meaning (`\` is a separator to Windows servers, `#` ends
/// the path, controls and space split request lines, non-ASCII is decoded differently).
fn forbidden(b: u8) -> bool {
    b <= b' ' || b >= 0x7f || matches!(b, b'"' | b'#' | b'<' | b'>' | b'\\')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalise an origin-form `path[?query]`. Borrowed when it is already normal (the
/// common case: no allocation).
pub fn normalise(target: &str, policy: PathPolicy) -> Result<Cow<'_, str>, TargetError> {
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    };
    if let Some(q) = query
        && q.bytes().any(forbidden)
    {
        return Err(TargetError::ForbiddenByte);
    }
    if !path.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    match normalise_path(path, policy)? {
        Cow::Borrowed(_) => Ok(Cow::Borrowed(target)),
        Cow::Owned(mut p) => {
            if let Some(q) = query {
                p.push('?');
                p.push_str(q);
            }
            Ok(Cow::Owned(p))
        }
    }
}

/// A configured route prefix in normal form, or None when it could never match a
/// normalised path. A trailing `/` is kept (it is part of what the operator wrote).
pub fn normalise_prefix(prefix: &str) -> Option<String> {
    let policy = PathPolicy {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
    };
    normalise_path(prefix, policy).ok().map(Cow::into_owned)
}

/// One segment as decoded so far, and whether an escape went into a `.` of it.
struct Segment {
    start: usize,
    escaped_dot: bool,
}

fn normalise_path(path: &str, policy: PathPolicy) -> Result<Cow<'_, str>, TargetError> {
    let bytes = path.as_bytes();
    if !needs_work(bytes, policy.merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    // Output is never longer than the input. Segments are written one at a time; a dot
    // segment is recognised when its end is reached, then dropped (".") or pops the
    // previous segment ("..").
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut seg = Segment {
        start: 0,
        escaped_dot: false,
    };
    let mut i = 0;
    // Every path starts with '/', handled as the first separator.
    while i < bytes.len() {
        let b = bytes[i];
        if forbidden(b) {
            return Err(TargetError::ForbiddenByte);
        }
        match b {
            b'/' => {
                seg = separator(&mut out, &seg, policy)?;
                i += 1;
            }
            b'%' => {
                let (h, l) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                    (Some(&h), Some(&l)) => (hex(h), hex(l)),
                    _ => return Err(TargetError::BadEscape),
                };
                let (Some(h), Some(l)) = (h, l) else {
                    return Err(TargetError::BadEscape);
                };
                let c = h << 4 | l;
                i += 3;
                if c == 0 {
                    return Err(TargetError::EncodedNul);
                }
                if c == b'/' || c == b'\\' {
                    match policy.escaped_slashes {
                        EscapedSlashes::Reject => return Err(TargetError::EscapedSlash),
                        EscapedSlashes::Decode => {
                            // A separator like any other, so `..%2f` is a dot segment.
                            seg = separator(&mut out, &seg, policy)?;
                        }
                        EscapedSlashes::Keep => {
                            out.extend_from_slice(if c == b'/' { b"%2F" } else { b"%5C" })
                        }
                    }
                } else if unreserved(c) {
                    if c == b'.' {
                        seg.escaped_dot = true;
                    }
                    out.push(c);
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.extend_from_slice(&[b'%', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    end_segment(&mut out, &seg, policy)?;
    if out.is_empty() {
        out.push(b'/');
    }
    // Only ASCII was pushed: forbidden() refuses every byte >= 0x7f, escapes are re-encoded.
    Ok(Cow::Owned(
        String::from_utf8(out).expect("normalised path is ASCII"),
    ))
}

/// A '/' (or a decoded `%2F`): ends the segment, writes the separator unless the segment
/// was a dot segment (its opening '/' serves) or slashes merge, and opens the next one.
fn separator(out: &mut Vec<u8>, seg: &Segment, policy: PathPolicy) -> Result<Segment, TargetError> {
    let removed = end_segment(out, seg, policy)?;
    let merged = policy.merge_slashes && out.last() == Some(&b'/');
    if !(removed || merged) {
        out.push(b'/');
    }
    Ok(Segment {
        start: out.len(),
        escaped_dot: false,
    })
}

/// At a segment's end: drop a `.` segment, pop for `..` (the '/' that opened it stays,
/// so `/a/b/..` → `/a/`, as RFC 3986's algorithm gives). True when the segment was removed.
fn end_segment(out: &mut Vec<u8>, seg: &Segment, policy: PathPolicy) -> Result<bool, TargetError> {
    let s = &out[seg.start..];
    let dots = match s {
        b"." => 1,
        b".." => 2,
        // Servlet containers strip `;params` before resolving dots: `..;/` climbs there.
        _ if s.starts_with(b".;") || s.starts_with(b"..;") => {
            return Err(TargetError::DotSegmentParameter);
        }
        _ => return Ok(false),
    };
    if seg.escaped_dot && policy.escaped_slashes == EscapedSlashes::Reject {
        return Err(TargetError::EncodedDotSegment);
    }
    // Remove the segment itself; `out` then ends with the '/' that opened it.
    out.truncate(seg.start);
    if dots == 2 {
        // Pop the previous segment: back to the '/' before it (kept).
        if seg.start <= 1 {
            return Err(TargetError::AboveRoot);
        }
        let prev = out[..seg.start - 1]
            .iter()
            .rposition(|&b| b == b'/')
            .map_or(0, |p| p + 1);
        out.truncate(prev);
    }
    Ok(true)
}

/// Whether the path may need changing: any escape, dot segment, repeated slash or byte
/// outside the plain set. Plain paths (the vast majority) are checked in one scan.
fn needs_work(bytes: &[u8], merge_slashes: bool) -> bool {
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' => return true,
            b'.' if prev == b'/' => {
                // "/." or "/.." followed by '/' or the end is a dot segment.
                let rest = &bytes[i + 1..];
                let after = if rest.first() == Some(&b'.') {
                    &rest[1..]
                } else {
                    rest
                };
                if after.is_empty() || after[0] == b'/' || after[0] == b';' {
                    return true;
                }
            }
            b'/' if prev == b'/' && merge_slashes => return true,
            _ if forbidden(b) => return true,
            _ => {}
        }
        prev = b;
    }
    false
}

/// Whether `path` is under `prefix` on a segment boundary: `/api` matches `/api` and
/// `/api/…`, never `/apiary`. A prefix ending in `/` (`/api/`) matches only below it.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
    }
}

/// The path routes are matched on: `path` with each segment's `;parameters` removed and the
/// segments left empty by that (or by `merge_slashes = false`) dropped, as servlet
/// containers resolve it: `/api;x/secret` and `/;x/api/secret` are served as `/api/secret`
/// there, so they must meet `/api`'s route. The replica still gets `path` itself.
pub(crate) fn routing_view(path: &str) -> Cow<'_, str> {
    if !path.contains(';') && !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let segments: Vec<&str> = path.split('/').collect();
    for (i, seg) in segments.iter().enumerate().skip(1) {
        let seg = seg.split_once(';').map_or(*seg, |(s, _)| s);
        // An empty last segment is the directory form (`/api/`), kept.
        if !seg.is_empty() || i == segments.len() - 1 {
            out.push('/');
            out.push_str(seg);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// The host part of an authority, for matching: lower-case, without port or trailing dot.
/// None when it is not a valid host (reg-name or bracketed IPv6 literal, optional port).
pub fn host_for_matching(authority: &str) -> Option<Cow<'_, str>> {
    let a = authority;
    if a.is_empty() {
        return None;
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']')?;
        let lit = &rest[..end];
        if lit.is_empty()
            || !lit
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (&a[..end + 2], &rest[end + 1..])
    } else {
        match a.find(':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, ""),
        }
    };
    if !port.is_empty() {
        let digits = port.strip_prefix(':')?;
        if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
    }
    if !host.starts_with('[') {
        // reg-name: letters, digits, '-', '.', '_' (no escapes, no userinfo, no spaces).
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    // No empty label: `a..b`, `.a` or `a..` would be folded into another name by some
    // replica (DNS-style), past a host-scoped route.
    if host.is_empty() || (!host.starts_with('[') && host.split('.').any(str::is_empty)) {
        return None;
    }
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, TargetError> {
        normalise(p, PathPolicy::default()).map(Cow::into_owned)
    }

    fn with(p: &str, merge: bool, esc: EscapedSlashes) -> Result<String, TargetError> {
        normalise(
            p,
            PathPolicy {
                merge_slashes: merge,
                escaped_slashes: esc,
            },
        )
        .map(Cow::into_owned)
    }

    #[test]
    fn plain_paths_are_borrowed_unchanged() {
        for p in ["/", "/api/x", "/a.b/c..d/.e/f.", "/x?y=/../z", "/a/b/"] {
            assert!(matches!(
                normalise(p, PathPolicy::default()),
                Ok(Cow::Borrowed(q)) if q == p
            ));
        }
    }

    #[test]
    fn dot_segments_and_slashes_are_resolved() {
        use TargetError::*;
        let table: &[(&str, Result<&str, TargetError>)] = &[
            ("/public/../api/secret", Ok("/api/secret")),
            ("/./api/secret", Ok("/api/secret")),
            ("//api/secret", Ok("/api/secret")),
            ("/a//b///c", Ok("/a/b/c")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/.", Ok("/a/b/")),
            ("/a/./b/../c", Ok("/a/c")),
            ("/%61pi/secret", Ok("/api/secret")),
            ("/%7euser", Ok("/~user")),
            ("/a%2db", Ok("/a-b")),
            ("/caf%c3%a9", Ok("/caf%C3%A9")),
            ("/a%3fb?q=1", Ok("/a%3Fb?q=1")),
            ("/a/../b?x=/../y", Ok("/b?x=/../y")),
            ("/public/..;/api/secret", Err(DotSegmentParameter)),
            ("/public/.;x/api", Err(DotSegmentParameter)),
            ("/a;b/c", Ok("/a;b/c")),
            ("/a/..", Ok("/")),
            ("/a/b/../..", Ok("/")),
            ("/..", Err(AboveRoot)),
            ("/../api", Err(AboveRoot)),
            ("/a/../../api", Err(AboveRoot)),
            ("/public/%2e%2e/api/secret", Err(EncodedDotSegment)),
            ("/public/.%2e/api/secret", Err(EncodedDotSegment)),
            ("/public/%2E/api", Err(EncodedDotSegment)),
            ("/public/..%2fapi/secret", Err(EscapedSlash)),
            ("/public%2F..%2Fapi", Err(EscapedSlash)),
            ("/a%5cb", Err(EscapedSlash)),
            ("/a\\b", Err(ForbiddenByte)),
            ("/a b", Err(ForbiddenByte)),
            ("/a#b", Err(ForbiddenByte)),
            ("/a?b#c", Err(ForbiddenByte)),
            ("/a\x7f", Err(ForbiddenByte)),
            ("/a%00", Err(EncodedNul)),
            ("/a%2", Err(BadEscape)),
            ("/a%zz", Err(BadEscape)),
            ("/a%", Err(BadEscape)),
            ("api", Err(NotOriginForm)),
            ("", Err(NotOriginForm)),
            ("*", Err(NotOriginForm)),
        ];
        for (input, want) in table {
            assert_eq!(
                n(input).as_deref().map_err(|e| *e),
                want.as_ref().map(|s| *s).map_err(|e| *e),
                "{input:?}"
            );
        }
    }

    #[test]
    fn escaped_slash_policies() {
        use EscapedSlashes::*;
        assert_eq!(with("/public/..%2fapi/x", true, Decode).unwrap(), "/api/x");
        assert_eq!(with("/a%5Cb", true, Decode).unwrap(), "/a/b");
        assert_eq!(with("/a%2fb", true, Keep).unwrap(), "/a%2Fb");
        assert_eq!(
            with("/public/..%2fapi", true, Keep).unwrap(),
            "/public/..%2Fapi"
        );
        // Encoded dots are decoded (unreserved) and removed outside `reject`.
        assert_eq!(with("/p/%2e%2e/api", true, Keep).unwrap(), "/api");
        assert_eq!(with("/p/%2e%2e/api", true, Decode).unwrap(), "/api");
        assert_eq!(
            with("/%2e%2e/api", true, Decode),
            Err(TargetError::AboveRoot)
        );
    }

    #[test]
    fn merge_slashes_off_keeps_empty_segments() {
        use EscapedSlashes::Reject;
        assert_eq!(with("//api/x", false, Reject).unwrap(), "//api/x");
        assert_eq!(with("/a//../b", false, Reject).unwrap(), "/a/b");
        assert_eq!(with("/a/../b", false, Reject).unwrap(), "/b");
        assert_eq!(with("/a/./b", false, Reject).unwrap(), "/a/b");
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(under_prefix("/api", "/api"));
        assert!(under_prefix("/api/x", "/api"));
        assert!(under_prefix("/api?x", "/api"));
        assert!(!under_prefix("/apiary", "/api"));
        assert!(under_prefix("/api/", "/api/"));
        assert!(under_prefix("/api/x", "/api/"));
        assert!(!under_prefix("/api", "/api/"));
        assert!(under_prefix("/anything", "/"));
    }

    #[test]
    fn routing_ignores_segment_parameters() {
        assert_eq!(routing_view("/api;x/secret"), "/api/secret");
        assert_eq!(routing_view("/a;b;c/d;e"), "/a/d");
        assert_eq!(routing_view("/;x/api"), "/api");
        assert_eq!(routing_view("/;/api;/x"), "/api/x");
        assert_eq!(routing_view("//api//x/"), "/api/x/");
        assert_eq!(routing_view("/api;x/"), "/api/");
        assert_eq!(routing_view("/;x"), "/");
        assert!(matches!(routing_view("/plain/path"), Cow::Borrowed(_)));
    }

    #[test]
    fn prefixes_are_checked_for_normal_form() {
        assert_eq!(normalise_prefix("/api/").as_deref(), Some("/api/"));
        assert_eq!(normalise_prefix("/a/../b").as_deref(), Some("/b"));
        assert_eq!(normalise_prefix("/%61pi").as_deref(), Some("/api"));
        assert_eq!(normalise_prefix("/a b"), None);
    }

    #[test]
    fn hosts_are_lowercased_without_port_or_trailing_dot() {
        let table: &[(&str, Option<&str>)] = &[
            ("API.Example.com:8443", Some("api.example.com")),
            ("api.example.com.", Some("api.example.com")),
            ("api.example.com.:443", Some("api.example.com")),
            ("[::1]:8443", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("a b", None),
            ("", None),
            (".", None),
            ("user@host", None),
            ("host:80:80", None),
            ("host:abc", None),
            ("host:123456", None),
            ("[::1", None),
            ("[zz]", None),
            ("ho%73t", None),
            ("host/x", None),
            ("a..b", None),
            ("admin.test..", None),
            ("..", None),
            (".admin.test", None),
            ("admin.test..:80", None),
        ];
        for (input, want) in table {
            assert_eq!(host_for_matching(input).as_deref(), *want, "{input:?}");
        }
    }
}

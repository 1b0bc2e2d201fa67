//! The two line formats, exactly, and the escaping that keeps a hostile value inside its
//! field: one line per entry, always 17 fields, JSON that parses back to the value.

use super::*;
use std::time::Duration;

fn entry() -> Entry<'static> {
    Entry {
        // 2026-12-03T16:20:01.042Z
        time: UNIX_EPOCH + Duration::from_millis(1_796_314_801_042),
        request_id: b"r-1",
        client: "127.0.0.1:5000".parse().unwrap(),
        method: "GET",
        path: "/api/x",
        route: Some("/api"),
        status: 200,
        upstream: Some("127.0.0.2:9000".parse().unwrap()),
        attempts: 1,
        duration_us: 812,
        head_us: 700,
        upstream_us: Some(650),
        bytes_in: None,
        bytes_out: 12,
        complete: true,
        subject: None,
        idempotency: None,
    }
}

fn text(e: &Entry<'_>) -> String {
    let mut out = Vec::new();
    e.write(AccessFormat::Text, &mut out);
    String::from_utf8(out).unwrap()
}

fn json(e: &Entry<'_>) -> serde_json::Value {
    let mut out = Vec::new();
    e.write(AccessFormat::Json, &mut out);
    assert_eq!(out.last(), Some(&b'\n'));
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    serde_json::from_slice(&out).unwrap()
}

/// A text line's fields: split on spaces outside `"…"` (where `\"` does not close).
fn fields(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let (mut quoted, mut escaped) = (false, false);
    for c in line.trim_end_matches('\n').chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        out.last_mut().unwrap().push(c);
    }
    assert!(!quoted, "an unterminated quote: {line:?}");
    out
}

#[test]
fn the_text_line_has_every_field_in_its_documented_order() {
    let line = text(&entry());
    assert_eq!(
        line,
        "2026-12-03T16:20:01.042Z r-1 127.0.0.1:5000 GET /api/x /api 200 127.0.0.2:9000 1 812 \
         700 650 - 12 true - -\n"
    );
    assert_eq!(fields(&line).len(), 17);
}

#[test]
fn the_json_line_has_stable_keys_and_null_for_none() {
    let v = json(&entry());
    let expected = serde_json::json!({
        "time": "2026-12-03T16:20:01.042Z",
        "request_id": "r-1",
        "client": "127.0.0.1:5000",
        "method": "GET",
        "path": "/api/x",
        "route": "/api",
        "status": 200,
        "upstream": "127.0.0.2:9000",
        "attempts": 1,
        "duration_us": 812,
        "head_us": 700,
        "upstream_us": 650,
        "bytes_in": null,
        "bytes_out": 12,
        "complete": true,
        "subject": null,
        "idempotency": null,
    });
    assert_eq!(v, expected);
    // The key order is part of the interface too (tools that read lines as text).
    let mut out = Vec::new();
    entry().write(AccessFormat::Json, &mut out);
    let s = String::from_utf8(out).unwrap();
    let keys = [
        "time",
        "request_id",
        "client",
        "method",
        "path",
        "route",
        "status",
        "upstream",
        "attempts",
        "duration_us",
        "head_us",
        "upstream_us",
        "bytes_in",
        "bytes_out",
        "complete",
        "subject",
        "idempotency",
    ];
    assert_eq!(keys.len(), expected.as_object().unwrap().len());
    let mut at = 0;
    for k in keys {
        let found = s[at..]
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} in order"));
        at += found;
    }
}

#[test]
fn hostile_values_stay_inside_their_field() {
    // (subject as the token said it, how the text line writes it)
    let cases: &[(&str, &str)] = &[
        ("alice", "alice"),
        ("-", "\"-\""),
        ("", "\"\""),
        ("a b", "\"a b\""),
        ("x status=500", "\"x status=500\""),
        (
            "line\nstatus=500 forged=1",
            "\"line\\x0astatus=500 forged=1\"",
        ),
        ("cr\rlf", "\"cr\\x0dlf\""),
        ("q\"uote", "\"q\\\"uote\""),
        ("back\\slash", "\"back\\\\slash\""),
        ("\u{1b}[31mred", "\"\\x1b[31mred\""),
        ("tab\t", "\"tab\\x09\""),
        ("del\u{7f}", "\"del\\x7f\""),
        ("é", "\"\\xc3\\xa9\""),
        ("a=b", "a=b"),
    ];
    for &(subject, written) in cases {
        let e = Entry {
            subject: Some(subject),
            ..entry()
        };
        let line = text(&e);
        assert_eq!(line.matches('\n').count(), 1, "{subject:?}: {line}");
        assert!(
            line.ends_with(&format!(" 12 true {written} -\n")),
            "{subject:?}: {line}"
        );
        let f = fields(&line);
        assert_eq!(f.len(), 17, "{subject:?}: {line}");
        assert_eq!(f[15], written, "{subject:?}");
        assert!(line.is_ascii(), "{subject:?}");
        assert!(!line.bytes().any(|b| b < 0x20 && b != b'\n'), "{subject:?}");
        let v = json(&e);
        assert_eq!(v["subject"], subject, "JSON keeps the value exactly");
        assert_eq!(v["status"], 200);
    }
}

#[test]
fn a_request_id_that_is_not_utf8_is_escaped_in_text_and_replaced_in_json() {
    let e = Entry {
        request_id: b"id\xff\xfe\"x",
        ..entry()
    };
    assert!(text(&e).contains(" \"id\\xff\\xfe\\\"x\" 127.0.0.1:5000 "));
    assert_eq!(json(&e)["request_id"], "id\u{fffd}\u{fffd}\"x");
}

#[test]
fn control_characters_in_json_are_escaped() {
    let e = Entry {
        path: "/a\u{0}b\u{1f}c\u{7f}\n",
        ..entry()
    };
    let mut out = Vec::new();
    e.write(AccessFormat::Json, &mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.contains(r#""path":"/a\u0000b\u001fc\u007f\n""#), "{s}");
    assert_eq!(json(&e)["path"], "/a\u{0}b\u{1f}c\u{7f}\n");
}

#[test]
fn timestamps_are_utc_with_milliseconds_across_second_boundaries() {
    for (ms, want) in [
        (0u64, "1970-01-01T00:00:00.000Z"),
        (1_796_314_801_999, "2026-12-03T16:20:01.999Z"),
        (1_796_314_802_000, "2026-12-03T16:20:02.000Z"),
        (1_796_314_801_007, "2026-12-03T16:20:01.007Z"),
        (951_782_400_123, "2000-02-29T00:00:00.123Z"),
    ] {
        let mut out = Vec::new();
        timestamp(UNIX_EPOCH + Duration::from_millis(ms), &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

#[test]
fn unfinished_and_abandoned_requests_say_so() {
    let e = Entry {
        status: 499,
        upstream: None,
        upstream_us: None,
        complete: false,
        idempotency: Some("abandoned"),
        attempts: 0,
        ..entry()
    };
    let line = text(&e);
    assert!(
        line.ends_with(" /api 499 - 0 812 700 - - 12 false - abandoned\n"),
        "{line}"
    );
    let v = json(&e);
    assert_eq!(v["upstream"], serde_json::Value::Null);
    assert_eq!(v["complete"], false);
    assert_eq!(v["idempotency"], "abandoned");
}

#[test]
fn addresses_are_written_as_std_writes_them() {
    for a in [
        "127.0.0.1:5000",
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "10.20.3.4:80",
        "1.2.3.4:1",
        "100.99.10.9:10000",
        "9.90.199.200:9999",
        "[::1]:8443",
        "[2001:db8::7]:443",
        "[::ffff:127.0.0.1]:9000",
        "[fe80::1%7]:22",
    ] {
        let addr: SocketAddr = a.parse().unwrap();
        let mut out = Vec::new();
        address(addr, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), addr.to_string(), "{a}");
    }
}

#[test]
fn the_wall_clock_follows_the_monotonic_one() {
    let now = std::time::Instant::now();
    let before = SystemTime::now();
    let wall = wall_clock(now);
    let later = wall_clock(now + Duration::from_millis(250));
    assert_eq!(
        later.duration_since(wall).unwrap(),
        Duration::from_millis(250)
    );
    let after = SystemTime::now();
    // Within the second the reading may be from: never ahead of the clock.
    assert!(
        wall <= after + Duration::from_millis(1),
        "{wall:?} {after:?}"
    );
    assert!(before.duration_since(wall).unwrap_or_default() < Duration::from_secs(1));
}

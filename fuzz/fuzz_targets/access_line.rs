//! `logging::line::Entry::write`: every value a client or a replica chose (request id, path,
//! subject, route) as arbitrary bytes, in both formats.
//!
//! Input: up to four fields separated by `\0` (request id, path, subject, route); the path,
//! subject and route are taken as UTF-8 (lossily). Checked, besides never panicking: each
//! format writes exactly one line ending in `\n`; the text line is visible ASCII and spaces
//! only, and splitting it on spaces outside quotes yields exactly 17 fields, the path and the
//! subject in theirs; the JSON line parses and gives back every value exactly (the request id
//! lossily).
#![no_main]

use doorman::config::AccessFormat;
use doorman::logging::line::Entry;
use libfuzzer_sys::fuzz_target;

const KEYS: [&str; 17] = [
    "time", "request_id", "client", "method", "path", "route", "status", "upstream", "attempts",
    "duration_us", "head_us", "upstream_us", "bytes_in", "bytes_out", "complete", "subject",
    "idempotency",
];

/// A text line's fields: split on spaces outside `"…"` (a `\"` inside stays).
fn text_fields(line: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let (mut field, mut quoted, mut escaped) = (String::new(), false, false);
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                keys.push(std::mem::take(&mut field));
                continue;
            }
            _ => {}
        }
        field.push(c);
    }
    assert!(!quoted, "an unterminated quote: {line:?}");
    keys.push(field);
    keys
}

/// What the text format writes for a value: itself when plain, else quoted and escaped.
fn unquoted(field: &str) -> bool {
    !field.starts_with('"')
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let request_id = parts.next().unwrap_or(b"");
    let path = String::from_utf8_lossy(parts.next().unwrap_or(b"")).into_owned();
    let subject = parts.next().map(|s| String::from_utf8_lossy(s).into_owned());
    let route = parts.next().map(|s| String::from_utf8_lossy(s).into_owned());
    let entry = Entry {
        time: std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::from(data.len() as u32) * 997_003),
        request_id,
        client: "127.0.0.1:5000".parse().unwrap(),
        method: "GET",
        path: &path,
        route: route.as_deref(),
        status: 200,
        upstream: None,
        attempts: 1,
        duration_us: data.len() as u64,
        head_us: 0,
        upstream_us: None,
        bytes_in: Some(u64::MAX),
        bytes_out: 0,
        complete: true,
        subject: subject.as_deref(),
        idempotency: None,
    };

    let mut text = Vec::new();
    entry.write(AccessFormat::Text, &mut text);
    assert_eq!(text.last(), Some(&b'\n'));
    let body = &text[..text.len() - 1];
    assert!(
        body.iter().all(|&b| b == b' ' || b.is_ascii_graphic()),
        "a raw byte outside visible ASCII: {:?}",
        String::from_utf8_lossy(&text)
    );
    let line = std::str::from_utf8(body).unwrap();
    let fields = text_fields(line);
    assert_eq!(fields.len(), KEYS.len(), "{line:?}");
    // A plain value is written as itself; anything else is quoted.
    if !path.is_empty() && path != "-" && path.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\') {
        assert_eq!(fields[4], path);
    } else {
        assert!(!unquoted(&fields[4]), "{line:?}");
    }
    if subject.is_none() {
        assert_eq!(fields[15], "-");
    }

    let mut json = Vec::new();
    entry.write(AccessFormat::Json, &mut json);
    assert_eq!(json.last(), Some(&b'\n'));
    assert_eq!(json.iter().filter(|&&b| b == b'\n').count(), 1);
    let v: serde_json::Value = serde_json::from_slice(&json).expect("the JSON line parses");
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut sorted = KEYS.to_vec();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    assert_eq!(v["path"], path.as_str());
    assert_eq!(v["request_id"], String::from_utf8_lossy(request_id).as_ref());
    match &subject {
        Some(s) => assert_eq!(v["subject"], s.as_str()),
        None => assert!(v["subject"].is_null()),
    }
    match &route {
        Some(r) => assert_eq!(v["route"], r.as_str()),
        None => assert!(v["route"].is_null()),
    }
});

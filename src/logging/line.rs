//! One access-log line, formatted straight into a byte buffer: the text format (17 fields in
//! a fixed order, separated by one space, as nginx's and HAProxy's logs are positional) and
//! the JSON format (one object per line, the same fields as stable keys). Both are a public
//! interface, documented in docs/logging.md; change them only with that page.
//!
//! Every value a client or a replica chose (path, request id, subject, route label) is
//! escaped so that a line stays one line and cannot forge fields: no raw control byte, quote
//! or backslash, and in the text format no raw space or non-ASCII byte either.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::AccessFormat;

/// The fields of one line, borrowed from the request's context.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub time: SystemTime,
    pub request_id: &'a [u8],
    pub client: SocketAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub attempts: u32,
    pub duration_us: u64,
    pub head_us: u64,
    pub upstream_us: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: u64,
    pub complete: bool,
    pub subject: Option<&'a str>,
    pub idempotency: Option<&'a str>,
}

impl Entry<'_> {
    /// Append this entry as one line (with its `\n`) in `format`.
    pub fn write(&self, format: AccessFormat, out: &mut Vec<u8>) {
        match format {
            AccessFormat::Text => self.text(out),
            AccessFormat::Json => self.json(out),
        }
    }

    fn text(&self, out: &mut Vec<u8>) {
        timestamp(self.time, out);
        out.push(b' ');
        text_value(self.request_id, out);
        out.push(b' ');
        address(self.client, out);
        out.push(b' ');
        text_value(self.method.as_bytes(), out);
        out.push(b' ');
        text_value(self.path.as_bytes(), out);
        out.push(b' ');
        text_opt(self.route.map(str::as_bytes), out);
        out.push(b' ');
        number(self.status, out);
        out.push(b' ');
        match self.upstream {
            Some(a) => address(a, out),
            None => out.push(b'-'),
        }
        out.push(b' ');
        number(self.attempts, out);
        out.push(b' ');
        number(self.duration_us, out);
        out.push(b' ');
        number(self.head_us, out);
        out.push(b' ');
        text_number(self.upstream_us, out);
        out.push(b' ');
        text_number(self.bytes_in, out);
        out.push(b' ');
        number(self.bytes_out, out);
        out.extend_from_slice(if self.complete { b" true " } else { b" false " });
        text_opt(self.subject.map(str::as_bytes), out);
        out.push(b' ');
        text_opt(self.idempotency.map(str::as_bytes), out);
        out.push(b'\n');
    }

    fn json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"time\":\"");
        timestamp(self.time, out);
        out.extend_from_slice(b"\",\"request_id\":");
        json_string(self.request_id, out);
        out.extend_from_slice(b",\"client\":\"");
        address(self.client, out);
        out.extend_from_slice(b"\",\"method\":");
        json_string(self.method.as_bytes(), out);
        out.extend_from_slice(b",\"path\":");
        json_string(self.path.as_bytes(), out);
        out.extend_from_slice(b",\"route\":");
        json_opt(self.route, out);
        out.extend_from_slice(b",\"status\":");
        number(self.status, out);
        out.extend_from_slice(b",\"upstream\":");
        match self.upstream {
            Some(a) => {
                out.push(b'"');
                address(a, out);
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"attempts\":");
        number(self.attempts, out);
        out.extend_from_slice(b",\"duration_us\":");
        number(self.duration_us, out);
        out.extend_from_slice(b",\"head_us\":");
        number(self.head_us, out);
        out.extend_from_slice(b",\"upstream_us\":");
        json_number(self.upstream_us, out);
        out.extend_from_slice(b",\"bytes_in\":");
        json_number(self.bytes_in, out);
        out.extend_from_slice(b",\"bytes_out\":");
        number(self.bytes_out, out);
        out.extend_from_slice(if self.complete {
            b",\"complete\":true,\"subject\":"
        } else {
            b",\"complete\":false,\"subject\":"
        });
        json_opt(self.subject, out);
        out.extend_from_slice(b",\"idempotency\":");
        json_opt(self.idempotency, out);
        out.extend_from_slice(b"}\n");
    }
}

fn number(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `a.b.c.d:port`, or `[v6]:port` as std writes it. IPv4 by hand, on the stack and copied
/// once: std's `Display` goes through the formatting machinery, which costs more than the
/// rest of the line.
fn address(a: SocketAddr, out: &mut Vec<u8>) {
    match a {
        SocketAddr::V4(v4) => {
            // The longest is `255.255.255.255:65535`; two spare bytes let every octet copy
            // three.
            let mut text = [0u8; 23];
            let mut n = 0;
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                let (len, digits) = OCTETS[usize::from(octet)];
                text[n..n + 3].copy_from_slice(&digits);
                n += usize::from(len);
            }
            text[n] = b':';
            n = decimal(v4.port(), &mut text, n + 1);
            out.extend_from_slice(&text[..n]);
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]", v6.ip());
            if v6.scope_id() != 0 {
                // std's form puts the scope inside the brackets; keep to it.
                out.pop();
                let _ = write!(out, "%{}]", v6.scope_id());
            }
            out.push(b':');
            number(v6.port(), out);
        }
    }
}

/// Every octet's decimal digits (left-aligned) and their count: an address is then four
/// copies, no division.
static OCTETS: [(u8, [u8; 3]); 256] = {
    let mut table = [(0u8, [0u8; 3]); 256];
    let mut v = 0;
    while v < 256 {
        let d = [
            b'0' + (v / 100) as u8,
            b'0' + (v / 10 % 10) as u8,
            b'0' + (v % 10) as u8,
        ];
        table[v] = match v {
            0..10 => (1, [d[2], 0, 0]),
            10..100 => (2, [d[1], d[2], 0]),
            _ => (3, d),
        };
        v += 1;
    }
    table
};

/// Writes `v` in decimal into `text` at `at`; returns the index after it.
fn decimal(mut v: u16, text: &mut [u8; 23], at: usize) -> usize {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let end = at + digits.len() - i;
    text[at..end].copy_from_slice(&digits[i..]);
    end
}

fn text_number(n: Option<u64>, out: &mut Vec<u8>) {
    match n {
        Some(n) => number(n, out),
        None => out.push(b'-'),
    }
}

fn json_number(n: Option<u64>, out: &mut Vec<u8>) {
    match n {
        Some(n) => number(n, out),
        None => out.extend_from_slice(b"null"),
    }
}

fn text_opt(v: Option<&[u8]>, out: &mut Vec<u8>) {
    match v {
        Some(v) => text_value(v, out),
        None => out.push(b'-'),
    }
}

/// The bytes a text value may hold unquoted: visible ASCII other than `"` and `\\`.
static PLAIN: [bool; 256] = {
    let mut plain = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        plain[b] = c.is_ascii_graphic() && c != b'"' && c != b'\\';
        b += 1;
    }
    plain
};

/// A text value: as is when every byte is visible ASCII other than `"` and `\` (and it is
/// not `-`, which means "none"); otherwise quoted, with `"` and `\` escaped by a backslash and
/// every other byte outside visible ASCII or space as `\xHH`. So a value is always one field:
/// it cannot hold a raw space outside quotes, nor end the line.
fn text_value(v: &[u8], out: &mut Vec<u8>) {
    let plain = !v.is_empty() && v != b"-" && v.iter().all(|&b| PLAIN[usize::from(b)]);
    if plain {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b' ' => out.push(b' '),
            _ if b.is_ascii_graphic() => out.push(b),
            _ => hex_escape(b"\\x", b, out),
        }
    }
    out.push(b'"');
}

fn json_opt(v: Option<&str>, out: &mut Vec<u8>) {
    match v {
        Some(v) => json_string(v.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string of `v`: bytes that are not UTF-8 become U+FFFD; `"`, `\`, control characters
/// and DEL are escaped.
fn json_string(v: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for chunk in v.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            match b {
                b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b'\t' => out.extend_from_slice(b"\\t"),
                0..0x20 | 0x7f => hex_escape(b"\\u00", b, out),
                _ => out.push(b),
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice("\u{fffd}".as_bytes());
        }
    }
    out.push(b'"');
}

fn hex_escape(prefix: &[u8], b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(prefix);
    out.push(HEX[usize::from(b >> 4)]);
    out.push(HEX[usize::from(b & 0xf)]);
}

thread_local! {
    /// A wall-clock reading and the monotonic instant it was taken at, renewed every second.
    static WALL: std::cell::Cell<(std::time::Instant, SystemTime)> =
        std::cell::Cell::new((std::time::Instant::now(), SystemTime::now()));
}

/// The wall-clock time at `now`, from the monotonic clock the request already read: one clock
/// read per line instead of two. The reading it adds to is at most a second old, so a clock
/// step shows in the log within a second.
pub fn wall_clock(now: std::time::Instant) -> SystemTime {
    WALL.with(|wall| {
        let (at, time) = wall.get();
        match now.checked_duration_since(at) {
            Some(d) if d < std::time::Duration::from_secs(1) => time + d,
            _ => {
                let fresh = (now, SystemTime::now());
                wall.set(fresh);
                fresh.1
            }
        }
    })
}

thread_local! {
    /// `YYYY-MM-DDTHH:MM:SS` of the last second formatted on this thread: formatted once a
    /// second, not once a line.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 in UTC with milliseconds: `2026-12-03T16:20:01.123Z`.
fn timestamp(time: SystemTime, out: &mut Vec<u8>) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let whole = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let mut text = [0u8; 19];
            let formatted = humantime::format_rfc3339_seconds(whole).to_string();
            // `2026-12-03T16:20:01Z`: the 19 bytes before the Z.
            let n = formatted.len().saturating_sub(1).min(19);
            text[..n].copy_from_slice(&formatted.as_bytes()[..n]);
            *cached = (secs, text);
        }
        out.extend_from_slice(&cached.1);
    });
    let millis = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
    ]);
}

#[cfg(test)]
mod tests;

//! THE Content-Length parser: the one set of rules every stage applies to the field (the h1
//! request head, the upstream response head, the pipeline's limits, retry and idempotency
//! stages, and HTTP/2 requests through them), so no two stages can read a different length.
//!
//! Policy (RFC 9110 §8.6, RFC 9112 §6.3; docs/security.md):
//! - one field line is `1*DIGIT` and nothing else: no sign, no spaces inside, no hex, no
//!   empty value, no list (`5, 5` is refused even though §8.6 would allow collapsing it —
//!   one shape fewer for two parsers to disagree on);
//! - the value must fit in a `u64` (overflow is an error, never a wrap or a saturation);
//!   leading zeros are allowed (`05` is 5) since they change nothing once reframed;
//! - repeated field lines are accepted when they all carry the same number (`5` and `05`),
//!   and then count as one; differing numbers are an error.
//!
//! Callers decide the status: 400 for a request, 502 and no reuse for a replica's response.
//! doorman never forwards the value as received: the next hop gets a length it wrote itself.

use http::{HeaderMap, header};

/// Why a Content-Length was refused; `reason()` is the text that goes into the 400 / log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContentLengthError {
    /// Not `1*DIGIT`, or larger than a `u64`.
    Invalid,
    /// Two field lines with different numbers.
    Conflicting,
}

impl ContentLengthError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            ContentLengthError::Invalid => "invalid Content-Length",
            ContentLengthError::Conflicting => "conflicting Content-Length headers",
        }
    }
}

impl std::fmt::Display for ContentLengthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for ContentLengthError {}

/// One field line's value: `1*DIGIT`, at most `u64::MAX`.
pub(crate) fn parse_one(v: &[u8]) -> Result<u64, ContentLengthError> {
    if v.is_empty() {
        return Err(ContentLengthError::Invalid);
    }
    // Checked arithmetic bounds the value; the field's length is bounded by the head limit.
    v.iter().try_fold(0u64, |n, &d| {
        if !d.is_ascii_digit() {
            return Err(ContentLengthError::Invalid);
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(ContentLengthError::Invalid)
    })
}

/// Every Content-Length field line of one message, fed one at a time (a head parser sees
/// them in its single pass over the fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lengths {
    value: Option<u64>,
    lines: u32,
}

impl Lengths {
    /// Add one field line's value.
    pub(crate) fn add(&mut self, v: &[u8]) -> Result<(), ContentLengthError> {
        let n = parse_one(v)?;
        if self.value.is_some_and(|l| l != n) {
            return Err(ContentLengthError::Conflicting);
        }
        self.value = Some(n);
        self.lines = self.lines.saturating_add(1);
        Ok(())
    }

    /// The length, None when the field was absent.
    pub(crate) fn value(&self) -> Option<u64> {
        self.value
    }

    /// More than one field line was seen (the caller forwards one canonical value).
    pub(crate) fn repeated(&self) -> bool {
        self.lines > 1
    }
}

/// The length a sequence of field line values declares: None when there is none.
pub(crate) fn parse_all<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<u64>, ContentLengthError> {
    let mut lengths = Lengths::default();
    for v in values {
        lengths.add(v)?;
    }
    Ok(lengths.value())
}

/// The length the Content-Length field lines of `headers` declare.
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<Option<u64>, ContentLengthError> {
    parse_all(
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContentLengthError::{Conflicting, Invalid};

    #[test]
    fn one_value_is_digits_only_and_bounded() {
        for (v, want) in [
            ("0", Ok(0)),
            ("5", Ok(5)),
            ("05", Ok(5)),
            ("0000000000000000000000042", Ok(42)),
            ("18446744073709551615", Ok(u64::MAX)),
            ("18446744073709551616", Err(Invalid)),
            ("99999999999999999999999", Err(Invalid)),
            ("", Err(Invalid)),
            ("+5", Err(Invalid)),
            ("-1", Err(Invalid)),
            ("-0", Err(Invalid)),
            (" 5", Err(Invalid)),
            ("5 ", Err(Invalid)),
            ("1 0", Err(Invalid)),
            ("5\t", Err(Invalid)),
            ("0x5", Err(Invalid)),
            ("5a", Err(Invalid)),
            ("1e3", Err(Invalid)),
            ("5.0", Err(Invalid)),
            ("5,5", Err(Invalid)),
            ("5, 5", Err(Invalid)),
            ("٥", Err(Invalid)),
        ] {
            assert_eq!(parse_one(v.as_bytes()), want, "{v:?}");
        }
    }

    #[test]
    fn repeated_lines_must_agree() {
        let all = |vs: &[&str]| parse_all(vs.iter().map(|v| v.as_bytes()));
        assert_eq!(all(&[]), Ok(None));
        assert_eq!(all(&["7"]), Ok(Some(7)));
        assert_eq!(all(&["7", "7", "007"]), Ok(Some(7)));
        assert_eq!(all(&["7", "8"]), Err(Conflicting));
        assert_eq!(all(&["7", "x"]), Err(Invalid));
        assert_eq!(all(&["", "7"]), Err(Invalid));
        let mut l = Lengths::default();
        l.add(b"3").unwrap();
        assert!(!l.repeated());
        l.add(b"03").unwrap();
        assert!(l.repeated());
        assert_eq!(l.value(), Some(3));
    }

    #[test]
    fn header_maps_are_read_the_same_way() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h), Ok(None));
        h.append(header::CONTENT_LENGTH, "10".parse().unwrap());
        assert_eq!(from_headers(&h), Ok(Some(10)));
        h.append(header::CONTENT_LENGTH, "10".parse().unwrap());
        assert_eq!(from_headers(&h), Ok(Some(10)));
        h.append(header::CONTENT_LENGTH, "11".parse().unwrap());
        assert_eq!(from_headers(&h), Err(Conflicting));
        assert_eq!(Conflicting.reason(), "conflicting Content-Length headers");
        assert_eq!(Invalid.to_string(), "invalid Content-Length");
    }
}

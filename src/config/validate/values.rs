//! Scalar values every section shares: durations, counts, socket addresses and DNS names.

use std::net::SocketAddr;
use std::time::Duration;

use super::Validator;

const MIN_DURATION: Duration = Duration::from_millis(1);
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// A DNS name, optionally with one leading `*.` label; lower-case, no port.
pub(super) fn valid_name(n: &str) -> bool {
    let base = n.strip_prefix("*.").unwrap_or(n);
    !base.is_empty()
        && !base.starts_with('.')
        && !base.ends_with('.')
        && !base.contains("..")
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

impl Validator {
    /// Like `duration`, but "0s" is allowed (e.g. no clock-skew leeway).
    pub(super) fn duration_or_zero(
        &mut self,
        key: &str,
        s: Option<String>,
        default: Duration,
    ) -> Duration {
        match s.as_deref().map(humantime::parse_duration) {
            Some(Ok(d)) if d.is_zero() => d,
            _ => self.duration(key, s, default),
        }
    }

    pub(super) fn addr(&mut self, key: &str, s: &str) -> Option<SocketAddr> {
        match s.parse() {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(
                    key,
                    format!("invalid socket address {s:?} (want ip:port): {e}"),
                );
                None
            }
        }
    }

    /// A duration within [`MIN_DURATION`, `MAX_DURATION`]: below, timers would tick at zero;
    /// above, deadlines overflow the clock.
    pub(super) fn duration(&mut self, key: &str, s: Option<String>, default: Duration) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(&s) {
            Ok(d) if (MIN_DURATION..=MAX_DURATION).contains(&d) => d,
            Ok(_) => {
                self.err(key, format!("{s:?} is out of range 1ms..=7days"));
                default
            }
            Err(e) => {
                self.err(
                    key,
                    format!("invalid duration {s:?} (like \"500ms\", \"30s\", \"5m\"): {e}"),
                );
                default
            }
        }
    }

    pub(super) fn count(
        &mut self,
        key: &str,
        v: Option<i64>,
        default: usize,
        min: usize,
        max: usize,
    ) -> usize {
        let Some(v) = v else { return default };
        match usize::try_from(v) {
            Ok(n) if n >= min && n <= max => n,
            _ => {
                self.err(key, format!("{v} is out of range {min}..={max}"));
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MINIMAL_REST, errors};

    #[test]
    fn durations_must_be_within_bounds() {
        for (value, ok) in [
            ("1ns", false),
            ("999us", false),
            ("1ms", true),
            ("7days", true),
            ("8days", false),
            ("500000000000y", false),
        ] {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:1\"\nidle_timeout = \"{value}\"\n{MINIMAL_REST}"
            );
            let e = errors(&text);
            let idle: Vec<_> = e
                .iter()
                .filter(|e| e.key == "server.idle_timeout")
                .collect();
            assert_eq!(idle.is_empty(), ok, "{value}: {e:?}");
        }
    }

    #[test]
    fn names_must_be_dns_names_or_leading_wildcards() {
        for (host, ok) in [
            ("api.test", true),
            ("*.api.test", true),
            ("*", false),
            ("*foo.test", false),
            ("a.*.test", false),
            ("a..test", false),
            ("a b", false),
            ("a:80", false),
        ] {
            let text = format!(
                "[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL_REST}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nhost = \"{host}\"\n"
            );
            let e = errors(&text);
            let bad: Vec<_> = e.iter().filter(|e| e.key == "routes[1].host").collect();
            assert_eq!(bad.is_empty(), ok, "{host}: {e:?}");
        }
    }
}

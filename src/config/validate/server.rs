//! `[server]`: listeners, connection and size limits, timeouts, request-surface policy, admin.

use std::net::SocketAddr;

use super::super::file::RawServer;
use super::super::{
    AdminToken, EscapedSlashes, ServerSettings, Underscores, default_workers, defaults,
};
use super::Validator;
use super::values::valid_name;

impl Validator {
    pub(super) fn server(&mut self, raw: RawServer) -> Option<ServerSettings> {
        let listen = match raw.listen {
            Some(s) => self.addr("server.listen", &s),
            None => {
                self.err(
                    "server.listen",
                    "missing: the TLS listener address is required",
                );
                None
            }
        };
        let plain_listen = raw
            .plain_listen
            .and_then(|s| self.addr("server.plain_listen", &s));
        let admin_listen = self.addr(
            "server.admin_listen",
            raw.admin_listen
                .as_deref()
                .unwrap_or(defaults::ADMIN_LISTEN),
        );
        let workers = self.count("server.workers", raw.workers, default_workers(), 1, 1024);
        let max_connections = self.count(
            "server.max_connections",
            raw.max_connections,
            defaults::MAX_CONNECTIONS,
            1,
            // The connection limit is a semaphore whose drain waits for all permits at once.
            u32::MAX as usize,
        );
        let max_header_bytes = self.count(
            "server.max_header_bytes",
            raw.max_header_bytes,
            defaults::MAX_HEADER_BYTES,
            1024,
            1024 * 1024,
        );
        let max_body_bytes = self.count(
            "server.max_body_bytes",
            raw.max_body_bytes,
            defaults::MAX_BODY_BYTES as usize,
            0,
            usize::MAX,
        ) as u64;
        let header_timeout = self.duration(
            "server.header_timeout",
            raw.header_timeout,
            defaults::HEADER_TIMEOUT,
        );
        let idle_timeout = self.duration(
            "server.idle_timeout",
            raw.idle_timeout,
            defaults::IDLE_TIMEOUT,
        );
        let shutdown_grace = self.duration(
            "server.shutdown_grace",
            raw.shutdown_grace,
            defaults::SHUTDOWN_GRACE,
        );
        let pid_file = match raw.pid_file {
            Some(p) if p.trim().is_empty() => {
                self.err("server.pid_file", "must be a path (or left out)");
                None
            }
            p => p.map(std::path::PathBuf::from),
        };
        let escaped_slashes = match raw.escaped_slashes.as_deref() {
            None | Some("reject") => EscapedSlashes::Reject,
            Some("decode") => EscapedSlashes::Decode,
            Some("keep") => EscapedSlashes::Keep,
            Some(other) => {
                self.err(
                    "server.escaped_slashes",
                    format!(
                        "unknown action {other:?}, expected \"reject\", \"decode\" or \"keep\""
                    ),
                );
                EscapedSlashes::Reject
            }
        };
        let underscores_in_headers = match raw.underscores_in_headers.as_deref() {
            None | Some("drop") => Underscores::Drop,
            Some("reject") => Underscores::Reject,
            Some("allow") => Underscores::Allow,
            Some(other) => {
                self.err(
                    "server.underscores_in_headers",
                    format!("unknown action {other:?}, expected \"drop\", \"reject\" or \"allow\""),
                );
                Underscores::Drop
            }
        };
        let mut admin_hosts = Vec::new();
        for h in raw.admin_hosts.unwrap_or_default() {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            if valid_name(&h) && !h.starts_with('*') {
                admin_hosts.push(h);
            } else {
                self.err(
                    "server.admin_hosts",
                    format!("invalid host {h:?} (a DNS name; no port, no wildcard)"),
                );
            }
        }
        let admin_token = match raw.admin_token_env.as_deref() {
            None => None,
            Some(var) => match std::env::var(var) {
                Ok(v) if v.len() >= 16 && v.bytes().all(|b| b.is_ascii_graphic()) => {
                    Some(AdminToken(v.into()))
                }
                Ok(_) => {
                    self.err(
                        "server.admin_token_env",
                        format!("{var} must hold at least 16 printable ASCII characters"),
                    );
                    None
                }
                Err(_) => {
                    self.err(
                        "server.admin_token_env",
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
        };
        let listen = listen?;
        let admin_listen = admin_listen?;
        // Port 0 asks the kernel for a free port, so only fixed ports can collide.
        let fixed: Vec<SocketAddr> = [Some(listen), plain_listen, Some(admin_listen)]
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
            .collect();
        if (1..fixed.len()).any(|i| fixed[..i].contains(&fixed[i])) {
            self.err(
                "server",
                "listen, plain_listen and admin_listen must be different addresses",
            );
        }
        Some(ServerSettings {
            listen,
            plain_listen,
            admin_listen,
            workers,
            max_connections,
            max_header_bytes,
            max_body_bytes,
            header_timeout,
            idle_timeout,
            shutdown_grace,
            pid_file,
            merge_slashes: raw.merge_slashes.unwrap_or(true),
            escaped_slashes,
            underscores_in_headers,
            admin_hosts,
            admin_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MINIMAL_REST, keys};

    #[test]
    fn typed_values_are_checked_even_when_all_keys_are_known() {
        let text = format!(
            r#"
            [server]
            listen = "nope"
            idle_timeout = "forever"
            max_header_bytes = 10
            {MINIMAL_REST}"#
        );
        assert_eq!(
            keys(&text),
            vec![
                "server.listen",
                "server.max_header_bytes",
                "server.idle_timeout",
                "tls.certificates[0].cert",
            ]
        );
    }
}

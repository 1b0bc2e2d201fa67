//! Raw TOML → typed [`Config`], collecting every error (file, line, key, why) in one pass.
//!
//! Each section — and each upstream group and route inside it — is first checked key by key
//! (`keys`: unknown keys and badly typed values are reported and dropped), then deserialized
//! and validated on its own, so one typo does not hide the next. Every error carries the line
//! of its key (`lines`). Relative certificate paths resolve against the current working
//! directory, as the example `config/proxy.toml` expects.
//!
//! This file holds the entry points, the error collector and the pass that calls each section
//! in order; a section's rules live in the file named after it, shared scalars in `values`.

mod auth;
mod idempotency;
mod jwks;
mod keys;
mod lines;
mod log;
mod revocation;
mod routes;
mod server;
mod store;
mod tls;
mod upstreams;
mod values;

use std::path::Path;

use super::file::{RawAuth, RawIdempotency, RawLog, RawRevocation, RawServer, RawStore, SECTIONS};
use super::{Config, ConfigError, ConfigErrors};
pub use jwks::url_allowed;
use lines::Lines;

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigErrors {
            file: path.to_path_buf(),
            errors: vec![ConfigError {
                key: String::new(),
                message: format!("cannot read file: {e}"),
                line: None,
            }],
        }),
    }
}

/// Validate config text; `file` is only used to label errors.
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        errors: Vec::new(),
        lines: Lines::new(text),
    };
    let config = v.config(text);
    match config {
        Some(c) if v.errors.is_empty() => Ok(c),
        _ => Err(ConfigErrors {
            file: file.to_path_buf(),
            errors: v.errors,
        }),
    }
}

struct Validator {
    errors: Vec<ConfigError>,
    /// Where each key sits in the text: every error carries the line of its key.
    lines: Lines,
}

impl Validator {
    /// An error at `key`, on the line of that key (or of the nearest table holding it).
    fn err(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        let line = self.lines.line(&key);
        self.err_at(key, line, message);
    }

    /// An error at `key` on a line of the caller's choosing (an unknown key, reported under
    /// its table, is on its own line).
    fn err_at(&mut self, key: impl Into<String>, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            message: message.into(),
            line,
        });
    }

    /// A section with defaults: absent, or not deserializable (reported), gives the defaults.
    fn optional<R: keys::Raw, T: Default>(
        &mut self,
        doc: &mut toml::Table,
        key: &str,
        validate: fn(&mut Self, R) -> T,
    ) -> T {
        doc.remove(key)
            .and_then(|v| self.section::<R>(key, v))
            .map(|raw| validate(self, raw))
            .unwrap_or_default()
    }

    fn config(&mut self, text: &str) -> Option<Config> {
        let mut doc: toml::Table = match toml::from_str(text) {
            Ok(t) => t,
            Err(e) => {
                let line = e.span().map(|s| lines::line_of(text, s.start));
                self.err_at(
                    "",
                    line,
                    format!("invalid TOML: {}", e.to_string().trim_end()),
                );
                return None;
            }
        };
        for key in doc.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                let message = match keys::closest(key, SECTIONS) {
                    Some(hint) => format!("unknown section, did you mean `{hint}`?"),
                    None => format!("unknown section, expected one of {}", SECTIONS.join(", ")),
                };
                self.err(key.clone(), message);
            }
        }

        // A section that still does not deserialize (a required key is missing) was reported;
        // its values are not validated further.
        let server = match doc.remove("server") {
            Some(v) => self
                .section::<RawServer>("server", v)
                .and_then(|raw| self.server(raw)),
            None => self.server(RawServer::default()),
        };
        let (tls, cipher_suites) = self.tls(doc.remove("tls"));
        let upstreams = self.upstreams(doc.remove("upstreams"));
        let store = self.optional::<RawStore, _>(&mut doc, "store", Self::store);
        let auth_present = doc.contains_key("auth");
        let auth = doc
            .remove("auth")
            .and_then(|v| self.section::<RawAuth>("auth", v))
            .and_then(|raw| self.auth(raw));
        let revocation =
            self.optional::<RawRevocation, _>(&mut doc, "revocation", Self::revocation);
        let idempotency =
            self.optional::<RawIdempotency, _>(&mut doc, "idempotency", Self::idempotency);
        let log = self.optional::<RawLog, _>(&mut doc, "log", Self::log);
        let routes = self.routes(doc.remove("routes"), &upstreams, auth_present);
        self.lease_outlives_finish(&idempotency, &routes, &upstreams, &store);

        Some(Config {
            server: server?,
            tls,
            cipher_suites,
            upstreams,
            routes,
            store,
            auth,
            revocation,
            idempotency,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn errors(text: &str) -> Vec<ConfigError> {
        parse(text, Path::new("t.toml")).unwrap_err().errors
    }

    pub(super) fn keys(text: &str) -> Vec<String> {
        errors(text).into_iter().map(|e| e.key).collect()
    }

    pub(super) const MINIMAL_REST: &str = r#"
        [tls]
        certificates = [{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }]
        [upstreams.api]
        servers = [{ address = "127.0.0.1:9001" }]
        [[routes]]
        path_prefix = "/"
        upstream = "api"
    "#;

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let text = r#"
            [server]
            listen = "127.0.0.1:8443"
            typo_key = 1

            [tls]
            certificates = [{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }]

            [upstreams.api]
            balance = "random"
            servers = [{ address = "127.0.0.1:9001", weight = 5000 }]

            [[routes]]
            path_prefix = "api"
            upstream = "missing"
        "#;
        let e = errors(text);
        let keys: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "server",
                "tls.certificates[0].cert",
                "upstreams.api.balance",
                "upstreams.api.servers[0].weight",
                "routes[0].path_prefix",
                "routes[0].upstream",
            ]
        );
        assert!(e[0].message.contains("typo_key"), "{}", e[0].message);
        assert!(
            e[1].message.contains("/nonexistent/a.crt"),
            "{}",
            e[1].message
        );
        assert_eq!(e[3].message, "5000 is out of range 0..=1000");
        assert_eq!(e[5].message, "no upstream group named \"missing\"");
    }

    #[test]
    fn unknown_top_level_section_is_an_error() {
        let e = errors("[servr]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(e[0].key, "servr");
        assert!(
            e[0].message.starts_with("unknown section"),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn toml_syntax_error_is_reported_with_position() {
        let e = errors("[server\nlisten = 1");
        assert_eq!(e.len(), 1);
        assert!(e[0].message.contains("invalid TOML"), "{}", e[0].message);
        assert!(e[0].message.contains("line 1"), "{}", e[0].message);
        assert_eq!(e[0].line, Some(1));
    }

    #[test]
    fn errors_display_file_key_and_reason() {
        let err = parse("[server]\nlisten = \"x\"\n", Path::new("conf/p.toml")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.lines()
                .next()
                .unwrap()
                .starts_with("conf/p.toml:2: server.listen: invalid socket address \"x\""),
            "{text}"
        );
    }

    /// (key, line, message) of every error outside `[tls]` (whose certificate files do not
    /// exist in these tests).
    fn found(text: &str) -> Vec<(String, Option<usize>, String)> {
        errors(text)
            .into_iter()
            .filter(|e| !e.key.starts_with("tls"))
            .map(|e| (e.key, e.line, e.message))
            .collect()
    }

    #[test]
    fn unknown_keys_and_type_errors_are_each_reported_at_their_line() {
        let server_keys = "`listen`, `plain_listen`, `admin_listen`, `workers`, `max_connections`, `max_header_bytes`, `max_body_bytes`, `header_timeout`, `idle_timeout`, `shutdown_grace`, `pid_file`, `merge_slashes`, `escaped_slashes`, `underscores_in_headers`, `admin_hosts`, `admin_token_env`";
        let no_match = format!("unknown field `colour`, expected one of {server_keys}");
        // (case, text, expected (key, line, message) in order)
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, usize, &'a str)]);
        let cases: &[Case] = &[
            (
                "unknown key with a hint",
                "[server]\nlisten = \"127.0.0.1:1\"\nidle_timout = \"5s\"\n",
                &[(
                    "server",
                    3,
                    "unknown field `idle_timout`, did you mean `idle_timeout`?",
                )],
            ),
            (
                "unknown key without a close match",
                "[server]\ncolour = \"blue\"\nlisten = \"127.0.0.1:1\"\n",
                &[("server", 2, &no_match)],
            ),
            (
                "type errors at two keys of one section, the rest still validated",
                "[server]\nlisten = \"127.0.0.1:1\"\nworkers = \"four\"\nidle_timeout = \"soon\"\nmerge_slashes = 1\n",
                &[
                    (
                        "server.workers",
                        3,
                        "invalid type: string \"four\", expected i64",
                    ),
                    (
                        "server.merge_slashes",
                        5,
                        "invalid type: integer `1`, expected a boolean",
                    ),
                    (
                        "server.idle_timeout",
                        4,
                        "invalid duration \"soon\" (like \"500ms\", \"30s\", \"5m\"): expected number at 0",
                    ),
                ],
            ),
            (
                "errors inside the second [[routes]] entry",
                "[server]\nlisten = \"127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n\n[[routes]]\npath_prefix = \"/b\"\nupstrem = \"api\"\nhost = 7\n",
                &[
                    (
                        "routes[1]",
                        9,
                        "unknown field `upstrem`, did you mean `upstream`?",
                    ),
                    (
                        "routes[1].host",
                        10,
                        "invalid type: integer `7`, expected a string",
                    ),
                    ("routes[1]", 7, "missing field `upstream`"),
                ],
            ),
            (
                "errors in an inline entry and a nested table",
                "[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.web]\nservers = [\n  { address = \"127.0.0.1:2\" },\n  { adress = \"127.0.0.1:3\" },\n]\n[upstreams.web.health]\ninterval = 2\n",
                &[
                    (
                        "upstreams.web.servers[1]",
                        6,
                        "unknown field `adress`, did you mean `address`?",
                    ),
                    ("upstreams.web.servers[1]", 6, "missing field `address`"),
                    (
                        "upstreams.web.health.interval",
                        9,
                        "invalid type: integer `2`, expected a string",
                    ),
                ],
            ),
            (
                "a section or an entry that is not a table",
                "log = 5\n[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.web]\nservers = [{ address = \"127.0.0.1:2\" }, 3]\n",
                &[
                    (
                        "upstreams.web.servers[1]",
                        5,
                        "invalid type: integer `3`, expected a table",
                    ),
                    ("log", 1, "invalid type: integer `5`, expected a table"),
                ],
            ),
            (
                "unknown top-level section with a hint",
                "[server]\nlisten = \"127.0.0.1:1\"\n\n[upstream.web]\nservers = []\n",
                &[("upstream", 4, "unknown section, did you mean `upstreams`?")],
            ),
        ];
        for (name, text, want) in cases {
            let want: Vec<_> = want
                .iter()
                .map(|(k, l, m)| (k.to_string(), Some(*l), m.to_string()))
                .collect();
            assert_eq!(found(&format!("{text}{MINIMAL_REST}")), want, "{name}");
        }
    }
}

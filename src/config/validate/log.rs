//! `[log]`: where access-log lines go, their format, and the diagnostic log's level.

use std::path::PathBuf;

use super::super::file::RawLog;
use super::super::{AccessFormat, AccessTarget, LogSettings};
use super::Validator;

/// The levels `[log] level` accepts, quietest first.
const LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl Validator {
    pub(super) fn log(&mut self, raw: RawLog) -> LogSettings {
        let d = LogSettings::default();
        let access = match raw.access.as_deref() {
            None => d.access,
            Some("stderr") => AccessTarget::Stderr,
            Some("off") => AccessTarget::Off,
            Some(p) if p.trim().is_empty() => {
                self.err(
                    "log.access",
                    "must be \"stderr\", \"off\" or a file path, not empty",
                );
                d.access
            }
            // Relative paths are kept as given: opened against the working directory.
            Some(p) if std::path::Path::new(p).is_dir() => {
                self.err(
                    "log.access",
                    format!("{p:?} is a directory, not a file to append to"),
                );
                d.access
            }
            Some(p) => AccessTarget::File(PathBuf::from(p)),
        };
        let access_format = match raw.access_format.as_deref() {
            None => d.access_format,
            Some("text") => AccessFormat::Text,
            Some("json") => AccessFormat::Json,
            Some(other) => {
                self.err(
                    "log.access_format",
                    format!("unknown format {other:?}, expected \"text\" or \"json\""),
                );
                d.access_format
            }
        };
        let level = match raw.level {
            None => d.level,
            Some(l) if LEVELS.contains(&l.as_str()) => l,
            Some(l) => {
                self.err(
                    "log.level",
                    format!("unknown level {l:?}, expected one of {}", LEVELS.join(", ")),
                );
                d.level
            }
        };
        LogSettings {
            access,
            access_format,
            level,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::file::RawLog;
    use super::super::super::{AccessFormat, AccessTarget, LogSettings};
    use super::super::tests::{MINIMAL_REST, errors};
    use super::super::{Lines, Validator};

    type Errors = Vec<(String, Option<usize>, String)>;

    /// `[log]` with `body` (its keys from line 2 on): the settings, or the errors as
    /// (key, line, message).
    fn log(body: &str) -> Result<LogSettings, Errors> {
        let text = format!("[log]\n{body}\n");
        let mut doc: toml::Table = toml::from_str(&text).unwrap();
        let mut v = Validator {
            errors: Vec::new(),
            lines: Lines::new(&text),
        };
        let section = doc.remove("log").unwrap();
        let settings = v.section::<RawLog>("log", section).map(|raw| v.log(raw));
        match settings {
            Some(s) if v.errors.is_empty() => Ok(s),
            _ => Err(v
                .errors
                .into_iter()
                .map(|e| (e.key, e.line, e.message))
                .collect()),
        }
    }

    fn one(key: &str, line: usize, message: &str) -> Result<LogSettings, Errors> {
        Err(vec![(key.to_string(), Some(line), message.to_string())])
    }

    #[test]
    fn log_defaults_apply_to_an_empty_section() {
        assert_eq!(log(""), Ok(LogSettings::default()));
        let d = LogSettings::default();
        assert_eq!(
            (d.access, d.access_format, d.level.as_str()),
            (AccessTarget::Stderr, AccessFormat::Text, "info")
        );
    }

    #[test]
    fn access_is_stderr_off_or_a_path_kept_as_given() {
        for (value, want) in [
            ("stderr", AccessTarget::Stderr),
            ("off", AccessTarget::Off),
            (
                "logs/access.log",
                AccessTarget::File("logs/access.log".into()),
            ),
            ("./access.log", AccessTarget::File("./access.log".into())),
            (
                "/var/log/doorman/access.log",
                AccessTarget::File("/var/log/doorman/access.log".into()),
            ),
        ] {
            let got = log(&format!("access = {value:?}")).map(|s| s.access);
            assert_eq!(got, Ok(want), "{value}");
        }
    }

    #[test]
    fn access_must_not_be_empty_or_a_directory() {
        let empty = "must be \"stderr\", \"off\" or a file path, not empty";
        assert_eq!(log("access = \"\""), one("log.access", 2, empty));
        assert_eq!(log("\naccess = \"  \""), one("log.access", 3, empty));
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        assert_eq!(
            log(&format!("access = {d:?}")),
            one(
                "log.access",
                2,
                &format!("{d:?} is a directory, not a file to append to")
            )
        );
    }

    #[test]
    fn access_format_is_text_or_json() {
        assert_eq!(
            log("access_format = \"text\"").map(|s| s.access_format),
            Ok(AccessFormat::Text)
        );
        assert_eq!(
            log("access_format = \"json\"").map(|s| s.access_format),
            Ok(AccessFormat::Json)
        );
        assert_eq!(
            log("access_format = \"xml\""),
            one(
                "log.access_format",
                2,
                "unknown format \"xml\", expected \"text\" or \"json\""
            )
        );
    }

    #[test]
    fn level_is_one_of_the_five_levels() {
        for l in ["error", "warn", "info", "debug", "trace"] {
            assert_eq!(
                log(&format!("level = {l:?}")).map(|s| s.level),
                Ok(l.to_string())
            );
        }
        for bad in ["verbose", "INFO", ""] {
            assert_eq!(
                log(&format!("level = {bad:?}")),
                one(
                    "log.level",
                    2,
                    &format!(
                        "unknown level {bad:?}, expected one of error, warn, info, debug, trace"
                    )
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn log_keys_and_types_are_checked_like_any_section() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[log]\nlevl = \"info\"\naccess_format = 1\nlevel = \"loud\"\n{MINIMAL_REST}"
        );
        let got: Errors = errors(&text)
            .into_iter()
            .filter(|e| e.key.starts_with("log"))
            .map(|e| (e.key, e.line, e.message))
            .collect();
        let want = [
            ("log", 4, "unknown field `levl`, did you mean `level`?"),
            (
                "log.access_format",
                5,
                "invalid type: integer `1`, expected a string",
            ),
            (
                "log.level",
                6,
                "unknown level \"loud\", expected one of error, warn, info, debug, trace",
            ),
        ]
        .map(|(k, l, m)| (k.to_string(), Some(l), m.to_string()));
        assert_eq!(got, want);
    }
}

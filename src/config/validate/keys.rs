//! Keys and value types, table by table, before a section is deserialized.
//!
//! `deny_unknown_fields` stops at the first unknown key or wrong type of a table, hiding the
//! next. So each table is first walked here: every unknown key (with a "did you mean" hint)
//! and every value of the wrong type is reported under its own key and line, then removed,
//! so that what is left deserializes and the section's own rules still run.
//!
//! The known keys are the raw types' own field lists (what `#[derive(Deserialize)]` hands to
//! serde, read by [`fields`]): `file.rs` stays the one place they are written down. A value's
//! type is checked by deserializing the raw type from a table holding that one key.

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use super::super::file::{
    RawAuth, RawCertificate, RawHealth, RawIdempotency, RawJwks, RawKey, RawLog, RawRevocation,
    RawRoute, RawSentinel, RawServer, RawServerEntry, RawStore, RawTls, RawUpstream,
};
use super::Validator;

/// A raw section or entry type from `file.rs`, checked key by key.
pub(super) trait Raw: DeserializeOwned {
    /// Checks the value of `key` when it holds tables of another raw type (or a map) to be
    /// checked key by key in turn; false when `key` is not such a key or `value` is not of
    /// that shape (its type is then checked as a whole).
    fn nested(_v: &mut Validator, _key: &str, _path: &str, _value: &mut toml::Value) -> bool {
        false
    }
}

impl Raw for RawServer {}
impl Raw for RawCertificate {}
impl Raw for RawHealth {}
impl Raw for RawServerEntry {}
impl Raw for RawRoute {}
impl Raw for RawIdempotency {}
impl Raw for RawSentinel {}
impl Raw for RawKey {}
impl Raw for RawJwks {}
impl Raw for RawRevocation {}
impl Raw for RawLog {}

impl Raw for RawTls {
    fn nested(v: &mut Validator, key: &str, path: &str, value: &mut toml::Value) -> bool {
        key == "certificates" && v.entries::<RawCertificate>(path, value)
    }
}

impl Raw for RawStore {
    fn nested(v: &mut Validator, key: &str, path: &str, value: &mut toml::Value) -> bool {
        key == "redis_sentinel" && v.entry::<RawSentinel>(path, value)
    }
}

impl Raw for RawUpstream {
    fn nested(v: &mut Validator, key: &str, path: &str, value: &mut toml::Value) -> bool {
        match key {
            "health" => v.entry::<RawHealth>(path, value),
            "servers" => v.entries::<RawServerEntry>(path, value),
            _ => false,
        }
    }
}

impl Raw for RawAuth {
    fn nested(v: &mut Validator, key: &str, path: &str, value: &mut toml::Value) -> bool {
        match key {
            "keys" => v.entries::<RawKey>(path, value),
            "jwks" => v.entry::<RawJwks>(path, value),
            "forward_claims" => v.string_map(path, value),
            _ => false,
        }
    }
}

impl Validator {
    /// Deserializes one section (or one upstream group, one route) after reporting and
    /// removing its unknown keys and badly typed values. None when it still does not
    /// deserialize (a required key is missing): that is reported once, at `key`.
    pub(super) fn section<T: Raw>(&mut self, key: &str, mut value: toml::Value) -> Option<T> {
        let before = self.errors.len();
        if let toml::Value::Table(t) = &mut value {
            self.table::<T>(key, t);
        }
        match value.try_into::<T>() {
            Ok(t) => Some(t),
            Err(e) => {
                let message = message(&e);
                // A nested entry's missing key was reported at that entry already.
                if !self.errors[before..].iter().any(|e| e.message == message) {
                    self.err(key, message);
                }
                None
            }
        }
    }

    /// Reports every unknown key and badly typed value of `table` (at `path`), and removes
    /// them.
    fn table<T: Raw>(&mut self, path: &str, table: &mut toml::Table) {
        let known = fields::<T>();
        // In the file's order (the table itself is sorted by name).
        let mut keys: Vec<(Option<usize>, String)> = table
            .keys()
            .map(|k| (self.lines.line(&format!("{path}.{k}")), k.clone()))
            .collect();
        keys.sort();
        for (line, k) in keys {
            let key_path = format!("{path}.{k}");
            if !known.contains(&k.as_str()) {
                self.err_at(path, line, unknown("field", &k, known));
                table.remove(&k);
                continue;
            }
            let Some(value) = table.get_mut(&k) else {
                continue;
            };
            if T::nested(self, &k, &key_path, value) {
                continue;
            }
            let mut one = toml::Table::new();
            one.insert(k.clone(), value.clone());
            if let Err(e) = toml::Value::Table(one).try_into::<T>() {
                let message = message(&e);
                // Other keys are absent here: only this key's own error counts.
                if !message.starts_with("missing field") {
                    self.err(&key_path, message);
                    table.remove(&k);
                }
            }
        }
    }

    /// A table of raw type `T` under a known key: checked key by key, then for its required
    /// keys. False when `value` is not a table.
    fn entry<T: Raw>(&mut self, path: &str, value: &mut toml::Value) -> bool {
        let toml::Value::Table(t) = value else {
            return false;
        };
        self.table::<T>(path, t);
        if let Err(e) = value.clone().try_into::<T>() {
            self.err(path, message(&e));
        }
        true
    }

    /// An array of tables of raw type `T` (`[[tls.certificates]]`, `servers = [{…}]`): each
    /// entry checked under `path[i]`. False when `value` is not an array.
    fn entries<T: Raw>(&mut self, path: &str, value: &mut toml::Value) -> bool {
        let toml::Value::Array(items) = value else {
            return false;
        };
        for (i, item) in items.iter_mut().enumerate() {
            let item_path = format!("{path}[{i}]");
            if !self.entry::<T>(&item_path, item)
                && let Err(e) = item.clone().try_into::<T>()
            {
                self.err(&item_path, message(&e));
            }
        }
        true
    }

    /// A table of strings (`forward_claims`): each value that is not a string is reported
    /// under its own key and removed. False when `value` is not a table.
    fn string_map(&mut self, path: &str, value: &mut toml::Value) -> bool {
        let toml::Value::Table(t) = value else {
            return false;
        };
        t.retain(|k, v| {
            if v.is_str() {
                return true;
            }
            let message = match v.clone().try_into::<String>() {
                Err(e) => message(&e),
                Ok(_) => "expected a string".to_string(),
            };
            self.err(format!("{path}.{k}"), message);
            false
        });
        true
    }
}

/// serde's message, with the raw type's name (`struct RawServerEntry`) read as "a table".
fn message(e: &toml::de::Error) -> String {
    let m = e.message().trim();
    match m.split_once("struct Raw") {
        Some((before, after)) => {
            let rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
            format!("{before}a table{rest}")
        }
        None => m.to_string(),
    }
}

/// "unknown field `x`" (or section), with the closest known name when one is near enough,
/// else the list of known names.
pub(super) fn unknown(what: &str, name: &str, known: &[&str]) -> String {
    match closest(name, known) {
        Some(hint) => format!("unknown {what} `{name}`, did you mean `{hint}`?"),
        None if known.is_empty() => format!("unknown {what} `{name}`, there are none here"),
        None => {
            let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            format!(
                "unknown {what} `{name}`, expected one of {}",
                list.join(", ")
            )
        }
    }
}

/// The known name nearest to `name`: at most 2 edits away (1 for names under 4 characters),
/// comparing case-insensitively with `-` read as `_`.
pub(super) fn closest<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| -> Vec<char> {
        s.chars()
            .map(|c| {
                if c == '-' {
                    '_'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect()
    };
    let n = norm(name);
    // A long name cannot be within 2 edits of a short one: skip the distance (and any cost
    // an enormous key would bring).
    let limit = if n.len() < 4 { 1 } else { 2 };
    known
        .iter()
        .filter_map(|k| {
            let k_chars = norm(k);
            if k_chars.len().abs_diff(n.len()) > limit {
                return None;
            }
            let d = distance(&n, &k_chars);
            (d <= limit).then_some((d, *k))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Edit distance counting insertions, deletions, substitutions and swaps of two neighbours.
fn distance(a: &[char], b: &[char]) -> usize {
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = d;
        }
    }
    rows[a.len()][b.len()]
}

/// The keys `T` accepts: the field list `#[derive(Deserialize)]` passes to
/// `deserialize_struct`, caught by a deserializer that only records it.
pub(super) fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut out: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut out));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_the_raw_types_fields() {
        assert!(fields::<RawServer>().contains(&"listen"));
        assert!(fields::<RawUpstream>().contains(&"servers"));
        assert_eq!(fields::<RawLog>(), ["access", "access_format", "level"]);
        assert_eq!(fields::<String>(), [] as [&str; 0]);
    }

    #[test]
    fn every_prefix_of_a_config_parses_without_panicking() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\nworkrs = 1\nworkers = \"x\"\n\
            [tls]\ncipher_suites = [1]\n[[tls.certificates]]\ncert = \"é.crt\"\n\
            [upstreams.\"a.b\"]\nservers = [{ address = \"127.0.0.1:2\", wieght = 1 }, 3]\n\
            [upstreams.\"a.b\".health]\ninterval = 1\n[[routes]]\npath_prefix = \"/\"\n\
            upstream = \"a.b\"\n[[routes]]\nhost = []\n[auth]\nforward_claims = { sub = 1 }\n\
            [[auth.keys]]\nkid = 2\n[log]\nlevel = \"loud\"\n[lg]\n";
        for (i, _) in text.char_indices() {
            if let Err(e) = super::super::parse(&text[..i], std::path::Path::new("p.toml")) {
                let _ = e.to_string();
            }
        }
    }

    #[test]
    fn odd_keys_are_reported_without_panicking() {
        let text =
            "[server]\n\"\" = 1\n\"é.x[0\" = 2\nlisten = \"127.0.0.1:1\"\n\"listen]\" = [[]]\n";
        let e = super::super::tests::errors(text);
        let server: Vec<_> = e
            .iter()
            .filter(|e| e.key == "server")
            .map(|e| (e.line, e.message.split(',').next().unwrap()))
            .collect();
        assert_eq!(
            server,
            [
                // The empty key: its table's line.
                (Some(1), "unknown field ``"),
                (Some(3), "unknown field `é.x[0`"),
                (Some(5), "unknown field `listen]`"),
            ]
        );
    }

    #[test]
    fn hints_name_the_closest_key_only_when_near() {
        let known = ["timeout", "interval", "path", "healthy_threshold"];
        for (name, hint) in [
            ("timout", Some("timeout")),
            ("tiemout", Some("timeout")),
            ("Timeout", Some("timeout")),
            ("healthy-threshold", Some("healthy_threshold")),
            ("pth", Some("path")),
            ("px", None),
            ("color", None),
            ("", None),
        ] {
            assert_eq!(closest(name, &known), hint, "{name}");
        }
        assert_eq!(
            unknown("field", "colour", &["a", "b"]),
            "unknown field `colour`, expected one of `a`, `b`"
        );
        assert_eq!(
            unknown("field", "tiemout", &known),
            "unknown field `tiemout`, did you mean `timeout`?"
        );
    }
}

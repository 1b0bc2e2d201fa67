//! Strict JSON: serde_json's own parser building its `Value`, but refusing an object that
//! repeats a member, at any depth. One parser for every JSON doctrine decides on: token
//! headers and claims (`auth`), JWK Sets (`config::jwks`).
//!
//! serde_json keeps the last of two `"sub"`s; a replica (or an audit log) whose parser keeps
//! the first would act for another identity than the one doorman checked. Member names are
//! compared after JSON unescaping, so `"s\u0075b"` repeats `"sub"`.

use std::cell::Cell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why strict JSON was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrictJsonError {
    /// An object repeats a member name.
    Duplicate,
    /// Not one JSON value.
    Malformed,
}

/// One JSON value, refusing repeated members at any depth.
pub(crate) fn strict_json(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    // The visitor raises the flag where it finds a repeated member, and its error ends the
    // parse there: the flag, not the error's text, says why the parse failed.
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict(&duplicate)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        _ if duplicate.get() => Err(StrictJsonError::Duplicate),
        Ok(v) => Ok(v),
        Err(_) => Err(StrictJsonError::Malformed),
    }
}

/// A JSON value as serde_json's `Value`, built in the same single pass by serde_json's own
/// parser, but refusing an object that repeats a member name, at any depth: the refusal
/// raises the flag it carries.
#[derive(Clone, Copy)]
struct Strict<'a>(&'a Cell<bool>);

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity, so this is always a number.
        Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let v = map.next_value_seed(self)?;
            if members.insert(name, v).is_some() {
                self.0.set(true);
                return Err(de::Error::custom("duplicate JSON member"));
            }
        }
        Ok(Value::Object(members))
    }
}

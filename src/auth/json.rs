//! Strict JSON for token headers and claims: serde_json's own parser building its `Value`,
//! but refusing an object that repeats a member, at any depth.
//!
//! serde_json keeps the last of two `"sub"`s; a replica (or an audit log) whose parser keeps
//! the first would act for another identity than the one doorman checked. Member names are
//! compared after JSON unescaping, so `"s\u0075b"` repeats `"sub"`.

use std::cell::Cell;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::jwt::Reject;

/// A base64url JSON object (a token's header or claims), parsed strictly.
pub(super) fn json_object(b64: &str) -> Result<Map<String, Value>, Reject> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| Reject::Malformed)?;
    // The visitor raises the flag where it finds a repeated member, and its error ends the
    // parse there: the flag, not the error's text, says why the parse failed.
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let parsed = Strict(&duplicate)
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match parsed {
        _ if duplicate.get() => Err(Reject::DuplicateMember),
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Reject::Malformed),
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn parsed(json: &str) -> Result<Map<String, Value>, Reject> {
        json_object(&URL_SAFE_NO_PAD.encode(json))
    }

    #[test]
    fn a_repeated_member_at_any_depth_is_refused() {
        for json in [
            r#"{"sub":"alice","sub":"admin"}"#,
            r#"{"sub":"alice","sub":"alice"}"#,
            r#"{"sub":"alice","s\u0075b":"admin"}"#,
            r#"{"a":{"role":"user","role":"admin"}}"#,
            r#"{"a":[{"x":1},{"y":1,"y":2}]}"#,
            r#"{"a":[[{"deep":{"k":1,"k":1}}]]}"#,
        ] {
            assert_eq!(parsed(json), Err(Reject::DuplicateMember), "{json}");
        }
    }

    #[test]
    fn distinct_members_parse_as_serde_json_would() {
        let json = r#"{"sub":"alice","n":-3,"u":18446744073709551615,"f":1.5,"b":true,
            "z":null,"a":[1,"x",{"k":{"sub":"nested is another object"}}],"sub2":"alice"}"#;
        let strict = parsed(json).unwrap();
        let Value::Object(plain) = serde_json::from_str::<Value>(json).unwrap() else {
            unreachable!()
        };
        assert_eq!(strict, plain);
        for bad in ["[1]", "\"s\"", "{\"a\":1", "{\"a\":1} x", "{\"a\":1,}"] {
            assert_eq!(parsed(bad), Err(Reject::Malformed), "{bad}");
        }
    }
}

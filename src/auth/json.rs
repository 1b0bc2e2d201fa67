//! A token's header and claims: base64url, then strict JSON (`message::json`), which
//! refuses an object that repeats a member at any depth.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::jwt::Reject;
use crate::message::json::{StrictJsonError, strict_json};

/// A base64url JSON object (a token's header or claims), parsed strictly.
pub(super) fn json_object(b64: &str) -> Result<Map<String, Value>, Reject> {
    let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| Reject::Malformed)?;
    match strict_json(&bytes) {
        Err(StrictJsonError::Duplicate) => Err(Reject::DuplicateMember),
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Reject::Malformed),
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

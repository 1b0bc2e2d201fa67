//! `[revocation]`: whether revoked tokens are tracked, under which key prefix, and for how long.

use super::super::file::RawRevocation;
use super::super::{RevocationSettings, defaults};
use super::Validator;

impl Validator {
    pub(super) fn revocation(&mut self, raw: RawRevocation) -> RevocationSettings {
        let key_prefix = raw
            .key_prefix
            .unwrap_or_else(|| defaults::KEY_PREFIX.to_string());
        // The prefix is also a SCAN pattern: glob characters would make it match other keys
        // (or none) while tracking matches it literally.
        if key_prefix.is_empty()
            || key_prefix
                .bytes()
                .any(|b| b <= b' ' || matches!(b, b'*' | b'?' | b'[' | b']' | b'\\'))
        {
            self.err(
                "revocation.key_prefix",
                format!("{key_prefix:?} must be non-empty, without spaces or * ? [ ] \\"),
            );
        }
        RevocationSettings {
            enabled: raw.enabled.unwrap_or(true),
            key_prefix,
            subject_ttl: self.duration(
                "revocation.subject_ttl",
                raw.subject_ttl,
                defaults::SUBJECT_TTL,
            ),
        }
    }
}

//! `[auth.jwks]`: where the identity provider's key set comes from, checked without fetching
//! anything — the URL's form and scheme, the intervals, the extra trust anchor, the
//! algorithms. A `file` set is read and parsed here, so `doorman check` reports what is
//! wrong with it (and a kid it shares with `[[auth.keys]]`) like any other mistake.

use std::path::PathBuf;
use std::sync::Arc;

use jsonwebtoken::Algorithm;

use super::super::file::RawJwks;
use super::super::{JwksSettings, JwksSource, defaults, parse_key_set};
use super::Validator;

/// Whether doorman may fetch a key set (or a discovery document) from `uri`: HTTPS, or
/// plain HTTP to a loopback address only (a sidecar on the same host, or a test), where
/// there is no network to tamper with the answer.
pub fn url_allowed(uri: &http::Uri) -> Result<(), String> {
    let Some(authority) = uri.authority() else {
        return Err("not an absolute URL".into());
    };
    // Credentials in a URL end up in logs and on the status page.
    if authority.as_str().contains('@') {
        return Err("a URL with credentials is not supported".into());
    }
    match uri.scheme_str() {
        Some("https") if !authority.host().is_empty() => Ok(()),
        Some("http") if matches!(authority.host(), "127.0.0.1" | "[::1]") => Ok(()),
        Some("http") => {
            Err("plain http:// is only allowed to 127.0.0.1 or [::1]; use https://".into())
        }
        _ => Err("the scheme must be https://".into()),
    }
}

impl Validator {
    /// `[auth.jwks]`. `issuer` is `[auth] issuer` (discovery starts from it); `static_kids`
    /// are the kids of `[[auth.keys]]`, which a `file` set must not repeat.
    pub(super) fn jwks(
        &mut self,
        raw: RawJwks,
        issuer: Option<&str>,
        static_kids: &[&str],
    ) -> Option<JwksSettings> {
        let algorithms = self.jwks_algorithms(raw.algorithms);
        let discovery = raw.discovery == Some(true);
        let sources = usize::from(raw.url.is_some())
            + usize::from(discovery)
            + usize::from(raw.file.is_some());
        if sources != 1 {
            self.err(
                "auth.jwks",
                "exactly one of url, discovery = true or file is required",
            );
        }
        let fetched = raw.file.is_none();
        if !fetched {
            for (key, set) in [
                ("refresh", raw.refresh.is_some()),
                ("min_refresh", raw.min_refresh.is_some()),
                ("timeout", raw.timeout.is_some()),
                ("ca_file", raw.ca_file.is_some()),
            ] {
                if set {
                    self.err(
                        format!("auth.jwks.{key}"),
                        "applies to url and discovery only: a file is read at load and reload",
                    );
                }
            }
        }
        let refresh = self.duration("auth.jwks.refresh", raw.refresh, defaults::JWKS_REFRESH);
        let min_refresh = self.duration(
            "auth.jwks.min_refresh",
            raw.min_refresh,
            defaults::JWKS_MIN_REFRESH,
        );
        if min_refresh > refresh {
            self.err(
                "auth.jwks.min_refresh",
                format!("{min_refresh:?} is longer than refresh ({refresh:?})"),
            );
        }
        let timeout = self.duration("auth.jwks.timeout", raw.timeout, defaults::JWKS_TIMEOUT);
        let ca = raw
            .ca_file
            .map(|p| self.pem_certificates("auth.jwks.ca_file", &p))
            .unwrap_or_default();
        if sources != 1 {
            return None;
        }
        let source = if let Some(url) = raw.url {
            JwksSource::Url(self.jwks_url("auth.jwks.url", &url)?)
        } else if discovery {
            let Some(issuer) = issuer else {
                self.err("auth.jwks.discovery", "needs [auth] issuer to start from");
                return None;
            };
            // OpenID Connect Discovery 1.0 §4: the issuer, then the well-known path.
            let document = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let document = self.jwks_url("auth.issuer", &document)?;
            JwksSource::Discovery {
                document,
                issuer: issuer.to_string(),
            }
        } else {
            let path = PathBuf::from(raw.file?);
            let keys = self.jwks_file(&path, &algorithms, static_kids)?;
            JwksSource::File {
                path,
                keys: Arc::new(keys),
            }
        };
        Some(JwksSettings {
            source,
            refresh,
            min_refresh,
            timeout,
            ca,
            algorithms,
        })
    }

    fn jwks_url(&mut self, key: &str, s: &str) -> Option<http::Uri> {
        let checked = s
            .parse::<http::Uri>()
            .map_err(|e| format!("invalid URL: {e}"))
            .and_then(|u| url_allowed(&u).map(|()| u));
        match checked {
            Ok(u) => Some(u),
            Err(why) => {
                self.err(key, format!("{s:?}: {why}"));
                None
            }
        }
    }

    fn jwks_algorithms(&mut self, raw: Option<Vec<String>>) -> Vec<Algorithm> {
        let Some(names) = raw else {
            return defaults::JWKS_ALGORITHMS.to_vec();
        };
        let key = "auth.jwks.algorithms";
        if names.is_empty() {
            self.err(key, "empty: no key from the set could be used");
        }
        let mut out = Vec::new();
        for name in names {
            match name.parse::<Algorithm>() {
                Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => self.err(
                    key,
                    format!("{name}: an HMAC secret never comes from a key set"),
                ),
                Ok(a) if out.contains(&a) => self.err(key, format!("{name} is listed twice")),
                Ok(a) => out.push(a),
                Err(_) => self.err(
                    key,
                    format!(
                        "unknown algorithm {name:?} (RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
                    ),
                ),
            }
        }
        out
    }

    /// The certificates of a CA file (`key` names it in errors): JWKS fetches, rediss://.
    pub(super) fn pem_certificates(
        &mut self,
        key: &str,
        path: &str,
    ) -> Vec<pki_types::CertificateDer<'static>> {
        use pki_types::pem::PemObject;
        let pem = match std::fs::read(path) {
            Ok(p) => p,
            Err(e) => {
                self.err(key, format!("{path}: cannot read: {e}"));
                return Vec::new();
            }
        };
        match pki_types::CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => certs,
            Ok(_) => {
                self.err(key, format!("{path}: no certificate in it"));
                Vec::new()
            }
            Err(e) => {
                self.err(key, format!("{path}: not PEM certificates: {e}"));
                Vec::new()
            }
        }
    }

    fn jwks_file(
        &mut self,
        path: &std::path::Path,
        algorithms: &[Algorithm],
        static_kids: &[&str],
    ) -> Option<crate::config::ParsedKeySet> {
        let key = "auth.jwks.file";
        let shown = path.display();
        let bytes = match std::fs::read(path) {
            Ok(b) if b.len() <= defaults::JWKS_MAX_BYTES => b,
            Ok(b) => {
                let max = defaults::JWKS_MAX_BYTES;
                self.err(key, format!("{shown}: {} bytes, over {max}", b.len()));
                return None;
            }
            Err(e) => {
                self.err(key, format!("{shown}: cannot read: {e}"));
                return None;
            }
        };
        let set = match parse_key_set(&bytes, algorithms) {
            Ok(s) => s,
            Err(e) => {
                self.err(key, format!("{shown}: {e}"));
                return None;
            }
        };
        if set.keys.is_empty() {
            let why: Vec<String> = set
                .skipped
                .iter()
                .map(|s| format!("{}: {}", s.kid.as_deref().unwrap_or("(no kid)"), s.why))
                .collect();
            self.err(
                key,
                format!("{shown}: no usable key (skipped: {})", why.join("; ")),
            );
            return None;
        }
        let mut clash = false;
        for k in &set.keys {
            if let Some(kid) = &k.key.kid
                && static_kids.contains(&kid.as_str())
            {
                self.err(
                    key,
                    format!("{shown}: kid {kid:?} is also in [[auth.keys]]"),
                );
                clash = true;
            }
        }
        (!clash).then_some(set)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{MINIMAL_REST, errors};

    fn jwks_errors(jwks: &str, auth_extra: &str) -> Vec<(String, String)> {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL_REST}\n[auth]\n{auth_extra}\n[auth.jwks]\n{jwks}\n"
        );
        errors(&text)
            .into_iter()
            .filter(|e| e.key.starts_with("auth"))
            .map(|e| (e.key, e.message))
            .collect()
    }

    #[test]
    fn urls_must_be_https_or_loopback_http() {
        for (url, ok) in [
            ("https://idp.example.com/certs", true),
            ("https://idp.example.com:8443/realms/x/certs", true),
            ("http://127.0.0.1:8080/certs", true),
            ("http://[::1]:8080/certs", true),
            ("http://idp.example.com/certs", false),
            ("http://localhost:8080/certs", false),
            ("http://127.0.0.2/certs", false),
            ("http://10.0.0.1/certs", false),
            ("ftp://idp.example.com/certs", false),
            ("https://user:pw@idp.example.com/certs", false),
            ("/certs", false),
            ("idp.example.com/certs", false),
            ("https:// bad", false),
        ] {
            let e = jwks_errors(&format!("url = \"{url}\""), "");
            assert_eq!(e.is_empty(), ok, "{url}: {e:?}");
            if !ok {
                assert_eq!(e[0].0, "auth.jwks.url", "{url}");
            }
        }
    }

    #[test]
    fn exactly_one_source() {
        let one = "exactly one of url, discovery = true or file is required";
        for jwks in [
            "",
            "discovery = false",
            "url = \"https://a.test/k\"\ndiscovery = true",
            "url = \"https://a.test/k\"\nfile = \"k.json\"",
        ] {
            let e = jwks_errors(jwks, "issuer = \"https://a.test\"");
            assert_eq!(e, [("auth.jwks".to_string(), one.to_string())], "{jwks}");
        }
        assert_eq!(
            jwks_errors("discovery = true", ""),
            [(
                "auth.jwks.discovery".to_string(),
                "needs [auth] issuer to start from".to_string()
            )]
        );
        let e = jwks_errors("discovery = true", "issuer = \"http://idp.example.com\"");
        assert_eq!(e[0].0, "auth.issuer");
        assert!(
            jwks_errors("discovery = true", "issuer = \"https://a.test/realms/x/\"").is_empty()
        );
    }

    #[test]
    fn intervals_algorithms_and_the_ca_are_checked() {
        let e = jwks_errors(
            "url = \"https://a.test/k\"\nrefresh = \"10s\"\nmin_refresh = \"1m\"\ntimeout = \"soon\"\n\
             ca_file = \"/nonexistent/ca.pem\"\nalgorithms = [\"RS256\", \"HS256\", \"RS256\", \"XX1\"]",
            "",
        );
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.jwks.algorithms",
                "auth.jwks.algorithms",
                "auth.jwks.algorithms",
                "auth.jwks.min_refresh",
                "auth.jwks.timeout",
                "auth.jwks.ca_file",
            ],
            "{e:?}"
        );
        assert_eq!(
            jwks_errors("url = \"https://a.test/k\"\nalgorithms = []", "")[0].1,
            "empty: no key from the set could be used"
        );
    }

    #[test]
    fn a_file_set_is_read_at_load_and_its_fetch_settings_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            r#"{"keys": [{"kid": "a", "kty": "oct", "k": "AAAA"}]}"#,
        )
        .unwrap();
        let file = format!("file = \"{}\"", path.display());
        let e = jwks_errors(&file, "");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].1.contains("no usable key (skipped: a: symmetric"),
            "{e:?}"
        );
        std::fs::write(&path, "not json").unwrap();
        assert!(jwks_errors(&file, "")[0].1.contains("not JSON"));
        let e = jwks_errors(&format!("{file}\nrefresh = \"1m\"\nca_file = \"x\""), "");
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.jwks.refresh",
                "auth.jwks.ca_file",
                "auth.jwks.ca_file",
                "auth.jwks.file"
            ]
        );
        let missing = jwks_errors("file = \"/nonexistent/jwks.json\"", "");
        assert!(missing[0].1.contains("cannot read"), "{missing:?}");
    }

    #[test]
    fn unknown_keys_in_the_table_are_reported() {
        let e = jwks_errors("url = \"https://a.test/k\"\nrefesh = \"1m\"", "");
        assert_eq!(
            e,
            [(
                "auth.jwks".to_string(),
                "unknown field `refesh`, did you mean `refresh`?".to_string()
            )]
        );
    }
}

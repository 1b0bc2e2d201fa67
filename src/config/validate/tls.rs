//! `[tls]`: certificates with their server names, and the TLS 1.3 cipher suites.

use std::collections::HashSet;
use std::sync::Arc;

use pki_types::pem::PemObject;
use pki_types::{CertificateDer, PrivateKeyDer};

use super::super::CertificateSpec;
use super::super::file::{RawCertificate, RawTls};
use super::Validator;
use super::values::valid_name;

impl Validator {
    pub(super) fn tls(
        &mut self,
        value: Option<toml::Value>,
    ) -> (Vec<CertificateSpec>, Vec<rustls::SupportedCipherSuite>) {
        let raw: RawTls = match value {
            Some(v) => match self.section("tls", v) {
                Some(raw) => raw,
                None => return (Vec::new(), Vec::new()),
            },
            None => RawTls::default(),
        };
        let suites = self.cipher_suites(raw.cipher_suites.as_deref());
        if raw.certificates.is_empty() {
            self.err(
                "tls.certificates",
                "missing: at least one [[tls.certificates]] entry is required",
            );
        }
        let mut seen = HashSet::new();
        let certs = raw
            .certificates
            .into_iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let key = format!("tls.certificates[{i}]");
                if i > 0 && c.server_names.is_empty() {
                    // Only the first certificate is the default; this one could never be chosen.
                    self.err(
                        format!("{key}.server_names"),
                        "required for every certificate but the first (the default)",
                    );
                }
                self.certificate(&key, c, &mut seen)
            })
            .collect();
        (certs, suites)
    }

    /// `[tls] cipher_suites`: IANA names of TLS 1.3 suites, each once, at least one.
    fn cipher_suites(&mut self, names: Option<&[String]>) -> Vec<rustls::SupportedCipherSuite> {
        let Some(names) = names else {
            return Vec::new();
        };
        if names.is_empty() {
            self.err(
                "tls.cipher_suites",
                "empty: leave it out for the default, or name at least one suite",
            );
        }
        let known = super::super::cipher_suites();
        let mut out: Vec<rustls::SupportedCipherSuite> = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let key = format!("tls.cipher_suites[{i}]");
            match known.iter().find(|(n, _)| *n == name.as_str()) {
                None => {
                    let all: Vec<&str> = known.iter().map(|(n, _)| *n).collect();
                    self.err(
                        key,
                        format!("unknown TLS 1.3 suite {name:?}; known: {}", all.join(", ")),
                    );
                }
                Some((_, s)) if out.contains(s) => self.err(key, format!("{name} is listed twice")),
                Some((_, s)) => out.push(*s),
            }
        }
        out
    }

    fn certificate(
        &mut self,
        key: &str,
        raw: RawCertificate,
        seen: &mut HashSet<String>,
    ) -> Option<CertificateSpec> {
        let mut names = Vec::new();
        for name in &raw.server_names {
            let n = name.trim().to_ascii_lowercase();
            if !valid_name(&n) {
                self.err(
                    format!("{key}.server_names"),
                    format!("invalid server name {name:?} (a DNS name, or *.parent)"),
                );
            } else if !seen.insert(n.clone()) {
                self.err(
                    format!("{key}.server_names"),
                    format!("server name {name:?} is already used by another certificate"),
                );
            } else {
                names.push(n);
            }
        }
        let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(&raw.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        {
            Ok(chain) if !chain.is_empty() => chain,
            Ok(_) => {
                self.err(
                    format!("{key}.cert"),
                    format!("{}: no PEM certificate found", raw.cert),
                );
                return None;
            }
            Err(e) => {
                self.err(
                    format!("{key}.cert"),
                    format!("{}: {}", raw.cert, pem_error(&e)),
                );
                return None;
            }
        };
        let private_key = match PrivateKeyDer::from_pem_file(&raw.key) {
            Ok(k) => k,
            Err(e) => {
                self.err(
                    format!("{key}.key"),
                    format!("{}: {}", raw.key, pem_error(&e)),
                );
                return None;
            }
        };
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        match rustls::sign::CertifiedKey::from_der(chain, private_key, &provider) {
            Ok(ck) => Some(CertificateSpec {
                server_names: names,
                key: Arc::new(ck),
                source: raw.cert,
            }),
            Err(e) => {
                self.err(
                    format!("{key}.key"),
                    format!("{} does not fit {}: {e}", raw.key, raw.cert),
                );
                None
            }
        }
    }
}

fn pem_error(e: &pki_types::pem::Error) -> String {
    match e {
        pki_types::pem::Error::Io(io) => format!("cannot read: {io}"),
        pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind found".into(),
        other => format!("invalid PEM: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::errors;

    #[test]
    fn cipher_suites_must_be_known_tls13_suites_each_once() {
        let with = |suites: &str| {
            format!(
                r#"
                [tls]
                certificates = [{{ cert = "/nonexistent/a.crt", key = "/nonexistent/a.key" }}]
                cipher_suites = {suites}
                [upstreams.api]
                servers = [{{ address = "127.0.0.1:9001" }}]
                [[routes]]
                path_prefix = "/"
                upstream = "api"
                "#
            )
        };
        let suite_errors = |suites: &str| -> Vec<(String, String)> {
            errors(&with(suites))
                .into_iter()
                .filter(|e| e.key.starts_with("tls.cipher_suites"))
                .map(|e| (e.key, e.message))
                .collect()
        };
        assert_eq!(
            suite_errors(r#"["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"]"#),
            vec![]
        );
        let e = suite_errors(
            r#"["TLS_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"]"#,
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, "tls.cipher_suites[1]");
        assert!(e[0].1.contains("unknown TLS 1.3 suite"), "{}", e[0].1);
        assert!(
            e[0].1.contains("TLS_CHACHA20_POLY1305_SHA256"),
            "{}",
            e[0].1
        );
        assert_eq!(
            e[1],
            (
                "tls.cipher_suites[2]".to_string(),
                "TLS_AES_128_GCM_SHA256 is listed twice".to_string()
            )
        );
        assert_eq!(
            suite_errors("[]"),
            vec![(
                "tls.cipher_suites".to_string(),
                "empty: leave it out for the default, or name at least one suite".to_string()
            )]
        );
    }

    #[test]
    fn a_misspelt_tls_key_is_reported_with_a_hint_and_the_rest_still_checked() {
        let text = "[server]\nlisten = \"127.0.0.1:1\"\n[tls]\ncertificate = []\n";
        let e = errors(text);
        let tls: Vec<_> = e
            .iter()
            .filter(|e| e.key.starts_with("tls"))
            .map(|e| (e.key.as_str(), e.line, e.message.as_str()))
            .collect();
        assert_eq!(
            tls,
            [
                (
                    "tls",
                    Some(4),
                    "unknown field `certificate`, did you mean `certificates`?"
                ),
                (
                    "tls.certificates",
                    Some(3),
                    "missing: at least one [[tls.certificates]] entry is required"
                ),
            ]
        );
    }
}

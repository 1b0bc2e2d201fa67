//! rustls server configuration: TLS 1.3 only, SNI certificate choice, ALPN h2 + http/1.1,
//! on rustls' own aws-lc-rs provider as it ships.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::CertificateSpec;

/// ALPN protocols we offer, in order of preference.
pub(crate) const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Build the listener's TLS configuration from loaded certificates (the first is the default)
/// and the configured suites (empty: rustls' defaults, in the client's order of preference;
/// otherwise exactly these, in this order, whatever the client prefers — as nginx's
/// `ssl_prefer_server_ciphers on` or HAProxy's default).
pub(crate) fn server_config(
    certs: &[CertificateSpec],
    suites: &[rustls::SupportedCipherSuite],
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if !suites.is_empty() {
        provider.cipher_suites = suites.to_vec();
    }
    let resolver = SniResolver::new(certs)
        .ok_or_else(|| rustls::Error::General("no certificate configured".into()))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.ignore_client_order = !suites.is_empty();
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    // Stateless tickets let returning clients resume without a full handshake.
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Picks a certificate by SNI: exact name, then `*.parent` wildcard, then the default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn new(certs: &[CertificateSpec]) -> Option<Self> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for name in &c.server_names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_string(), c.key.clone()),
                    None => exact.insert(name.clone(), c.key.clone()),
                };
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        // rustls hands us SNI already lower-cased.
        let Some(name) = server_name else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(k) = self.wildcard.get(parent)
        {
            return k.clone();
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(names: &[&str]) -> CertificateSpec {
        let ck = rcgen::generate_simple_self_signed(vec!["x.test".to_string()]).unwrap();
        let key = pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let certified =
            CertifiedKey::from_der(vec![ck.cert.der().clone()], key, &provider).unwrap();
        CertificateSpec {
            server_names: names.iter().map(|s| s.to_string()).collect(),
            key: Arc::new(certified),
            source: names.join(","),
        }
    }

    #[test]
    fn sni_prefers_exact_then_wildcard_then_default() {
        let certs = [spec(&["a.test"]), spec(&["b.test"]), spec(&["*.w.test"])];
        let r = SniResolver::new(&certs).unwrap();
        let same = |a: &Arc<CertifiedKey>, b: &CertificateSpec| Arc::ptr_eq(a, &b.key);
        assert!(same(&r.pick(Some("b.test")), &certs[1]));
        assert!(same(&r.pick(Some("x.w.test")), &certs[2]));
        assert!(same(&r.pick(Some("deep.x.w.test")), &certs[0]));
        assert!(same(&r.pick(Some("other.test")), &certs[0]));
        assert!(same(&r.pick(None), &certs[0]));
    }

    #[test]
    fn alpn_prefers_h2_then_http11() {
        // TLS 1.3-only is checked end to end in tests/tls.rs (rustls and openssl clients).
        let cfg = server_config(&[spec(&["a.test"])], &[]).unwrap();
        assert_eq!(
            cfg.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // No suites configured: rustls' own, and the client's order is honoured.
        assert!(!cfg.ignore_client_order);
    }

    /// The same `&'static` suite, not merely one with the same id (rustls' `PartialEq`
    /// compares ids only, which a rebuilt suite would pass).
    fn same_suite(a: rustls::SupportedCipherSuite, b: rustls::SupportedCipherSuite) -> bool {
        use rustls::SupportedCipherSuite::{Tls12, Tls13};
        match (a, b) {
            (Tls13(a), Tls13(b)) => std::ptr::eq(a, b),
            (Tls12(a), Tls12(b)) => std::ptr::eq(a, b),
            _ => false,
        }
    }

    fn assert_rustls_own(
        got: &[rustls::SupportedCipherSuite],
        want: &[rustls::SupportedCipherSuite],
    ) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(same_suite(*g, *w), "{g:?} is not rustls' own {w:?}");
            assert_eq!(g.fips(), w.fips(), "{g:?}");
        }
    }

    #[test]
    fn suites_are_rustls_own_as_shipped() {
        use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
        let named: Vec<_> = crate::config::cipher_suites()
            .iter()
            .map(|(_, s)| *s)
            .collect();
        assert_rustls_own(
            &named,
            &[
                cs::TLS13_AES_128_GCM_SHA256,
                cs::TLS13_AES_256_GCM_SHA384,
                cs::TLS13_CHACHA20_POLY1305_SHA256,
            ],
        );
        for (name, suite) in crate::config::cipher_suites() {
            assert_eq!(
                suite.suite().as_str(),
                Some(&*format!("TLS13_{}", &name[4..]))
            );
        }

        // None configured: the provider's own list, untouched.
        let stock = default_provider();
        let cfg = server_config(&[spec(&["a.test"])], &[]).unwrap();
        assert_rustls_own(&cfg.crypto_provider().cipher_suites, &stock.cipher_suites);
        assert_eq!(cfg.crypto_provider().fips(), stock.fips());

        // Configured: exactly those, in that order.
        let chosen = [
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS13_AES_128_GCM_SHA256,
        ];
        let cfg = server_config(&[spec(&["a.test"])], &chosen).unwrap();
        assert_rustls_own(&cfg.crypto_provider().cipher_suites, &chosen);
        assert!(cfg.ignore_client_order);
    }
}

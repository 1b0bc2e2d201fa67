//! TLS 1.3's key schedule (HKDF, RFC 5869) on HMAC keys prepared once per secret.
//!
//! rustls' aws-lc provider runs each HKDF step as one aws-lc `HKDF` call: every
//! Derive-Secret and key expansion hashes its HMAC key's inner and outer pads again, and an
//! expansion from an extracted secret repeats the extraction too (the FIPS module's shape).
//! A full handshake makes about twenty such expansions. Here each secret becomes an aws-lc
//! HMAC key once, with both pads hashed, and each expansion costs the two compressions of
//! its message: a third of the SHA-384 work of a handshake on the `TLS_AES_256_GCM_SHA384`
//! suite that OpenSSL clients prefer (aws-lc has no vector SHA-512 on AMD CPUs).
//!
//! rustls' own [`HkdfUsingHmac`] does the HKDF arithmetic; this module gives it aws-lc's
//! HMAC. The results are bit for bit aws-lc's `HKDF` (tested below).

use std::sync::LazyLock;

use rustls::crypto::hmac::{self, Tag};
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::crypto::{CipherSuiteCommon, aws_lc_rs::cipher_suite as aws};
use rustls::{CipherSuite, SupportedCipherSuite, Tls13CipherSuite};

/// aws-lc's HMAC with one hash function.
struct Hmac(&'static aws_lc_rs::hmac::Algorithm);

impl hmac::Hmac for Hmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn hmac::Key> {
        Box::new(Key(aws_lc_rs::hmac::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

/// An HMAC key whose pads are hashed: each tag starts from a copy of that state.
struct Key(aws_lc_rs::hmac::Key);

impl hmac::Key for Key {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&self.0);
        ctx.update(first);
        for part in middle {
            ctx.update(part);
        }
        ctx.update(last);
        Tag::new(ctx.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: Hmac = Hmac(&aws_lc_rs::hmac::HMAC_SHA256);
static HMAC_SHA384: Hmac = Hmac(&aws_lc_rs::hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// One of rustls' aws-lc TLS 1.3 suites with this module's HKDF; everything else (the
/// AEAD, the transcript hash) is the suite's own.
fn prepared(base: SupportedCipherSuite, hkdf: &'static dyn Hkdf) -> Option<Tls13CipherSuite> {
    let base = base.tls13()?;
    Some(Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: base.common.suite,
            hash_provider: base.common.hash_provider,
            confidentiality_limit: base.common.confidentiality_limit,
        },
        hkdf_provider: hkdf,
        aead_alg: base.aead_alg,
        quic: base.quic,
    })
}

type Prepared = LazyLock<Option<Tls13CipherSuite>>;
static AES_128: Prepared = LazyLock::new(|| prepared(aws::TLS13_AES_128_GCM_SHA256, &HKDF_SHA256));
static AES_256: Prepared = LazyLock::new(|| prepared(aws::TLS13_AES_256_GCM_SHA384, &HKDF_SHA384));
static CHACHA20: Prepared =
    LazyLock::new(|| prepared(aws::TLS13_CHACHA20_POLY1305_SHA256, &HKDF_SHA256));

/// doorman's version of one of rustls' aws-lc suites (the suite itself if it has none).
pub(super) fn suite(base: SupportedCipherSuite) -> SupportedCipherSuite {
    let ours: &'static Prepared = match base.suite() {
        CipherSuite::TLS13_AES_128_GCM_SHA256 => &AES_128,
        CipherSuite::TLS13_AES_256_GCM_SHA384 => &AES_256,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => &CHACHA20,
        _ => return base,
    };
    match LazyLock::force(ours) {
        Some(s) => SupportedCipherSuite::Tls13(s),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::tls13::OkmBlock;

    use super::*;

    fn hkdf_of(suite: SupportedCipherSuite) -> &'static dyn Hkdf {
        match suite {
            SupportedCipherSuite::Tls13(s) => s.hkdf_provider,
            _ => panic!("not a TLS 1.3 suite"),
        }
    }

    /// RFC 5869, test case 1 (SHA-256).
    #[test]
    fn rfc5869_case_1() {
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0u8; 42];
        HKDF_SHA256
            .extract_from_secret(Some(&salt), &ikm)
            .expand_slice(&[&info], &mut okm)
            .unwrap();
        let want = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf\
                    34007208d5b887185865";
        let got: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, want);
    }

    /// Every operation rustls' key schedule uses gives aws-lc's own HKDF's bytes, for both
    /// hashes, over salts, secrets, infos and output lengths of several sizes.
    #[test]
    fn same_bytes_as_aws_lc_hkdf() {
        let cases = [
            aws::TLS13_AES_128_GCM_SHA256,
            aws::TLS13_AES_256_GCM_SHA384,
            aws::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        for theirs in cases {
            let ours = suite(theirs);
            assert_eq!(theirs.suite(), ours.suite());
            assert!(
                !std::ptr::addr_eq(hkdf_of(theirs), hkdf_of(ours)),
                "the suite was not replaced"
            );
            let (theirs, ours) = (hkdf_of(theirs), hkdf_of(ours));
            for n in [0usize, 1, 31, 48, 64, 129, 200] {
                let secret: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
                let salt: Vec<u8> = (0..n / 2).map(|i| (i * 13 + 1) as u8).collect();
                let info: Vec<u8> = (0..n).map(|i| (i * 5) as u8).collect();
                for salt in [None, Some(&salt[..])] {
                    for len in [1usize, 12, 16, 32, 48, 100, 255] {
                        let mut a = vec![0u8; len];
                        let mut b = vec![0u8; len];
                        let parts: [&[u8]; 3] = [b"\x00\x30", b"tls13 derived", &info];
                        theirs
                            .extract_from_secret(salt, &secret)
                            .expand_slice(&parts, &mut a)
                            .unwrap();
                        ours.extract_from_secret(salt, &secret)
                            .expand_slice(&parts, &mut b)
                            .unwrap();
                        assert_eq!(a, b, "n {n} salt {:?} len {len}", salt.map(|s| s.len()));
                    }
                    let a = theirs.extract_from_zero_ikm(salt).expand_block(&[&info]);
                    let b = ours.extract_from_zero_ikm(salt).expand_block(&[&info]);
                    assert_eq!(a.as_ref(), b.as_ref());
                }
                let okm = OkmBlock::new(&secret[..n.min(48)]);
                let a = theirs.expander_for_okm(&okm).expand_block(&[&info]);
                let b = ours.expander_for_okm(&okm).expand_block(&[&info]);
                assert_eq!(a.as_ref(), b.as_ref());
                let a = theirs.hmac_sign(&okm, &info);
                let b = ours.hmac_sign(&okm, &info);
                assert_eq!(a.as_ref(), b.as_ref());
            }
        }
    }
}

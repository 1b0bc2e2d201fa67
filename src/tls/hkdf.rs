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
//! HMAC. The start of a full handshake's schedule (the Early Secret and the salt derived
//! from it) is the same for every connection and is computed once per suite ([`Start`]).
//! The results are bit for bit aws-lc's `HKDF` (tested below).

use std::sync::LazyLock;

use rustls::crypto::hmac::{self, Tag};
use rustls::crypto::tls13::{Hkdf, HkdfExpander, HkdfUsingHmac, OkmBlock, OutputLengthError};
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
static START_SHA256: LazyLock<Start> = LazyLock::new(|| Start::new(&aws_lc_rs::hmac::HMAC_SHA256));
static START_SHA384: LazyLock<Start> = LazyLock::new(|| Start::new(&aws_lc_rs::hmac::HMAC_SHA384));
static SCHEDULE_SHA256: Schedule = Schedule {
    general: &HKDF_SHA256,
    start: &START_SHA256,
};
static SCHEDULE_SHA384: Schedule = Schedule {
    general: &HKDF_SHA384,
    start: &START_SHA384,
};

/// What every full handshake (no PSK) of a suite starts with (RFC 8446, section 7.1): the
/// Early Secret, HKDF-Extract(0, 0), and the salt of the Handshake Secret's extraction,
/// Derive-Secret(Early Secret, "derived", ""). Neither depends on the connection, so
/// neither is secret; computed on every handshake they cost three HMAC key setups and two
/// HMACs, a tenth of its SHA-384 work.
struct Start {
    /// The Early Secret as an HMAC key.
    early: aws_lc_rs::hmac::Key,
    /// The HkdfLabel of Derive-Secret(Early Secret, "derived", "").
    derived_label: Vec<u8>,
    /// Its value: the next extraction's salt.
    derived: Vec<u8>,
    /// That salt as an HMAC key.
    derived_key: aws_lc_rs::hmac::Key,
}

impl Start {
    fn new(alg: &'static aws_lc_rs::hmac::Algorithm) -> Start {
        let len = alg.digest_algorithm().output_len();
        let zeros = [0u8; hmac::Tag::MAX_LEN];
        let zeros = &zeros[..len];
        let early_secret = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(*alg, zeros), zeros);
        let early = aws_lc_rs::hmac::Key::new(*alg, early_secret.as_ref());
        let empty = aws_lc_rs::digest::digest(alg.digest_algorithm(), b"");
        let label = b"tls13 derived";
        let mut derived_label = Vec::with_capacity(4 + label.len() + len);
        derived_label.extend_from_slice(&(len as u16).to_be_bytes());
        derived_label.push(label.len() as u8);
        derived_label.extend_from_slice(label);
        derived_label.push(len as u8);
        derived_label.extend_from_slice(empty.as_ref());
        let mut derived = vec![0u8; len];
        expand(&early, &[&derived_label], &mut derived);
        let derived_key = aws_lc_rs::hmac::Key::new(*alg, &derived);
        Start {
            early,
            derived_label,
            derived,
            derived_key,
        }
    }

    fn len(&self) -> usize {
        self.derived.len()
    }
}

/// HKDF-Expand (RFC 5869, section 2.3) with a prepared key; `out` at most 255 blocks.
fn expand(key: &aws_lc_rs::hmac::Key, info: &[&[u8]], out: &mut [u8]) {
    let mut previous: Option<aws_lc_rs::hmac::Tag> = None;
    let block = key.algorithm().digest_algorithm().output_len();
    debug_assert!(
        out.len() <= 255 * block,
        "HKDF-Expand's counter is one byte"
    );
    for (n, chunk) in out.chunks_mut(block).enumerate() {
        let mut ctx = aws_lc_rs::hmac::Context::with_key(key);
        if let Some(t) = &previous {
            ctx.update(t.as_ref());
        }
        for part in info {
            ctx.update(part);
        }
        ctx.update(&[(n + 1) as u8]);
        let t = ctx.sign();
        chunk.copy_from_slice(&t.as_ref()[..chunk.len()]);
        previous = Some(t);
    }
}

/// Whether `parts`, concatenated, are exactly `whole`.
fn concatenates_to(parts: &[&[u8]], mut whole: &[u8]) -> bool {
    for part in parts {
        match whole.split_at_checked(part.len()) {
            Some((head, rest)) if head == *part => whole = rest,
            _ => return false,
        }
    }
    whole.is_empty()
}

/// Equal in time independent of where they differ (a salt derived from a PSK is secret).
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Early Secret of a handshake without a PSK.
struct Early(&'static Start);

impl HkdfExpander for Early {
    fn expand_slice(&self, info: &[&[u8]], output: &mut [u8]) -> Result<(), OutputLengthError> {
        if output.len() > 255 * self.0.len() {
            return Err(OutputLengthError);
        }
        expand(&self.0.early, info, output);
        Ok(())
    }

    fn expand_block(&self, info: &[&[u8]]) -> OkmBlock {
        if concatenates_to(info, &self.0.derived_label) {
            return OkmBlock::new(&self.0.derived);
        }
        let mut block = [0u8; hmac::Tag::MAX_LEN];
        let block = &mut block[..self.0.len()];
        expand(&self.0.early, info, block);
        OkmBlock::new(block)
    }

    fn hash_len(&self) -> usize {
        self.0.len()
    }
}

/// The key schedule: rustls' HKDF on prepared keys, with a handshake's constant start
/// computed once.
struct Schedule {
    general: &'static HkdfUsingHmac<'static>,
    start: &'static LazyLock<Start>,
}

impl Hkdf for Schedule {
    fn extract_from_zero_ikm(&self, salt: Option<&[u8]>) -> Box<dyn HkdfExpander> {
        match salt {
            // HKDF-Extract(0, 0): the Early Secret when no PSK is offered.
            None => Box::new(Early(LazyLock::force(self.start))),
            Some(_) => self.general.extract_from_zero_ikm(salt),
        }
    }

    fn extract_from_secret(&self, salt: Option<&[u8]>, secret: &[u8]) -> Box<dyn HkdfExpander> {
        if let Some(salt) = salt {
            let start = LazyLock::force(self.start);
            // The Handshake Secret after a full handshake's Early Secret.
            if same_secret(salt, &start.derived) {
                let prk = aws_lc_rs::hmac::sign(&start.derived_key, secret);
                return self.general.expander_for_okm(&OkmBlock::new(prk.as_ref()));
            }
        }
        self.general.extract_from_secret(salt, secret)
    }

    fn expander_for_okm(&self, okm: &OkmBlock) -> Box<dyn HkdfExpander> {
        self.general.expander_for_okm(okm)
    }

    fn hmac_sign(&self, key: &OkmBlock, message: &[u8]) -> Tag {
        self.general.hmac_sign(key, message)
    }
}

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
static AES_128: Prepared =
    LazyLock::new(|| prepared(aws::TLS13_AES_128_GCM_SHA256, &SCHEDULE_SHA256));
static AES_256: Prepared =
    LazyLock::new(|| prepared(aws::TLS13_AES_256_GCM_SHA384, &SCHEDULE_SHA384));
static CHACHA20: Prepared =
    LazyLock::new(|| prepared(aws::TLS13_CHACHA20_POLY1305_SHA256, &SCHEDULE_SHA256));

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
        assert_eq!(hex(&okm), want);
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

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A full handshake's start, as rustls asks for it (the HkdfLabel in the pieces
    /// `hkdf_expand_label` passes), comes out of the precomputed values with the bytes of
    /// the general path and the known values (RFC 8448's simple 1-RTT handshake for SHA-256).
    #[test]
    fn a_full_handshakes_start() {
        for (theirs, ours, len) in [
            (&HKDF_SHA256, &SCHEDULE_SHA256, 32usize),
            (&HKDF_SHA384, &SCHEDULE_SHA384, 48),
        ] {
            let alg = if len == 32 {
                &aws_lc_rs::digest::SHA256
            } else {
                &aws_lc_rs::digest::SHA384
            };
            let empty = aws_lc_rs::digest::digest(alg, b"");
            let out_len = (len as u16).to_be_bytes();
            let info: [&[u8]; 6] = [
                &out_len,
                &[13],
                b"tls13 ",
                b"derived",
                &[len as u8],
                empty.as_ref(),
            ];
            let salt_theirs = theirs.extract_from_zero_ikm(None).expand_block(&info);
            let salt_ours = ours.extract_from_zero_ikm(None).expand_block(&info);
            assert_eq!(hex(salt_ours.as_ref()), hex(salt_theirs.as_ref()));
            let start = if len == 32 {
                &*START_SHA256
            } else {
                &*START_SHA384
            };
            assert_eq!(salt_ours.as_ref(), &start.derived[..]);
            // rustls' pieces are what the shortcut recognises.
            assert!(concatenates_to(&info, &start.derived_label));
            // Other expansions of the Early Secret take the general path, same bytes.
            let other: [&[u8]; 3] = [&out_len, b"tls13 c e traffic", b"context"];
            let a = theirs.extract_from_zero_ikm(None).expand_block(&other);
            let b = ours.extract_from_zero_ikm(None).expand_block(&other);
            assert_eq!(a.as_ref(), b.as_ref());
            let (mut a, mut b) = (vec![0u8; 3 * len + 5], vec![0u8; 3 * len + 5]);
            theirs
                .extract_from_zero_ikm(None)
                .expand_slice(&other, &mut a)
                .unwrap();
            ours.extract_from_zero_ikm(None)
                .expand_slice(&other, &mut b)
                .unwrap();
            assert_eq!(a, b);
            let mut too_long = vec![0u8; 255 * len + 1];
            assert!(
                ours.extract_from_zero_ikm(None)
                    .expand_slice(&other, &mut too_long)
                    .is_err()
            );
            // The Handshake Secret from that salt, through the prepared salt key.
            let shared = [0x5au8; 32];
            let label: [&[u8]; 2] = [b"tls13 s hs traffic", b"transcript"];
            let a = theirs
                .extract_from_secret(Some(salt_theirs.as_ref()), &shared)
                .expand_block(&label);
            let b = ours
                .extract_from_secret(Some(salt_ours.as_ref()), &shared)
                .expand_block(&label);
            assert_eq!(a.as_ref(), b.as_ref());
            // Any other salt (a PSK's) takes the general path.
            let mut salt = salt_ours.as_ref().to_vec();
            salt[len - 1] ^= 1;
            let a = theirs
                .extract_from_secret(Some(&salt), &shared)
                .expand_block(&label);
            let b = ours
                .extract_from_secret(Some(&salt), &shared)
                .expand_block(&label);
            assert_eq!(a.as_ref(), b.as_ref());
            // SHA-256: RFC 8448, section 3, "derive secret for handshake \"tls13 derived\"";
            // SHA-384: the same computation in Python's hmac module.
            let want = if len == 32 {
                "6f2615a108c702c5678f54fc9dbab69716c076189c48250cebeac3576c3611ba"
            } else {
                "1591dac5cbbf0330a4a84de9c753330e92d01f0a88214b4464972fd668049e93\
                 e52f2b16fad922fdc0584478428f282b"
            };
            assert_eq!(hex(salt_ours.as_ref()), want);
        }
    }

    #[test]
    fn labels_match_only_exactly() {
        let whole = b"tls13 derived";
        assert!(concatenates_to(&[b"tls13 ", b"derived"], whole));
        assert!(concatenates_to(&[b"", b"tls13 derived", b""], whole));
        assert!(!concatenates_to(&[b"tls13 ", b"derive"], whole));
        assert!(!concatenates_to(&[b"tls13 ", b"derived", b"!"], whole));
        assert!(!concatenates_to(&[b"tls13 ", b"derivex"], whole));
        assert!(!concatenates_to(&[], whole));
        assert!(concatenates_to(&[], b""));
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"ab"));
    }
}

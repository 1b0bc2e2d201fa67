//! TLS termination: TLS 1.3 only, ALPN h2 and http/1.1, SNI certificate choice.

mod support;

use std::process::Command;
use std::sync::Arc;

use rustls::version::{TLS12, TLS13};
use support::*;

async fn proxy() -> (TestProxy, Replica) {
    let r = Replica::start("r1").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    (p, r)
}

#[tokio::test(flavor = "multi_thread")]
async fn tls13_handshake_succeeds_and_tls12_is_refused() {
    let (p, _r) = proxy().await;

    let cfg = p.pki.client_config(&[b"http/1.1"], &[&TLS13]);
    let tls = tls_connect(p.addrs.tls, cfg, "localhost").await.unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let cfg = p.pki.client_config(&[b"http/1.1"], &[&TLS12]);
    let err = tls_connect(p.addrs.tls, cfg, "localhost")
        .await
        .unwrap_err();
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("expected a TLS error, got {err:?}"));
    assert_eq!(
        inner,
        &rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_s_client_tls12_fails_and_tls13_succeeds() {
    let (p, _r) = proxy().await;
    let ca = p.pki.ca_path();
    let addr = p.addrs.tls.to_string();
    let s_client = move |version: &str| {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                "-servername",
                "localhost",
                version,
            ])
            .arg("-CAfile")
            .arg(&ca)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl is required (scripts/test.sh installs it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // s_client blocks on its stdin; /dev/null makes it close right after the handshake.
    let (ok12, _) = tokio::task::spawn_blocking({
        let f = s_client.clone();
        move || f("-tls1_2")
    })
    .await
    .unwrap();
    assert!(!ok12, "openssl s_client -tls1_2 must fail");
    let (ok13, out13) = tokio::task::spawn_blocking(move || s_client("-tls1_3"))
        .await
        .unwrap();
    assert!(ok13, "openssl s_client -tls1_3 must succeed:\n{out13}");
    assert!(out13.contains("TLSv1.3"), "{out13}");
    assert!(out13.contains("Verify return code: 0 (ok)"), "{out13}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_negotiates_h2_and_http11_and_both_work() {
    let (p, r) = proxy().await;
    for (offer, want) in [
        (vec![&b"h2"[..]], &b"h2"[..]),
        (vec![&b"http/1.1"[..]], &b"http/1.1"[..]),
        (vec![&b"h2"[..], &b"http/1.1"[..]], &b"h2"[..]),
        (vec![&b"http/1.1"[..], &b"h2"[..]], &b"h2"[..]),
    ] {
        let cfg = p.pki.client_config(&offer, &[&TLS13]);
        let tls = tls_connect(p.addrs.tls, cfg, "localhost").await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want));
    }

    let mut h2 = p.h2().await;
    assert!(h2.is_h2());
    let (resp, body) = h2.get("/x").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(&body[..], b"ok 0");

    let mut h1 = p.h1().await;
    assert!(!h1.is_h2());
    let (resp, body) = h1.get("/y").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(&body[..], b"ok 0");

    // Upstream is always HTTP/1.1, whatever the client spoke.
    let seen = r.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_11));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_the_certificate() {
    let r = Replica::start("r1").await;
    let pki = Arc::new(TestPki::new());
    let default = pki.leaf("default", &["localhost"]);
    let alpha = pki.leaf("alpha", &["alpha.test"]);
    let beta = pki.leaf("beta", &["beta.test", "www.beta.test"]);
    let wild = pki.leaf("wild", &["*.wild.test"]);
    let tls = cert_toml(&default, &["localhost"])
        + &cert_toml(&alpha, &["alpha.test"])
        + &cert_toml(&beta, &["beta.test", "www.beta.test"])
        + &cert_toml(&wild, &["*.wild.test"]);
    let p = TestProxy::start_with(
        pki.clone(),
        "",
        &tls,
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;

    for (name, want) in [
        ("alpha.test", &alpha.der),
        ("beta.test", &beta.der),
        ("www.beta.test", &beta.der),
        ("a.wild.test", &wild.der),
        ("localhost", &default.der),
    ] {
        let cfg = pki.client_config(&[b"http/1.1"], &[&TLS13]);
        // The client verifies the chain and the name, so a wrong pick fails the handshake too.
        let tls = tls_connect(p.addrs.tls, cfg, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = &tls.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(got, want, "SNI {name} got the wrong certificate");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_offering_no_alpn_is_served_either_protocol() {
    let (p, r) = proxy().await;
    // No ALPN: HTTP/1.1, as for any TLS client that did not ask.
    let mut c = Client::connect(p.addrs.tls, &p.pki, "localhost", &[])
        .await
        .unwrap();
    assert!(!c.is_h2());
    let (resp, body) = c.get("/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_11);
    assert_eq!(&body[..], b"ok 0");

    // No ALPN, but the HTTP/2 connection preface: recognised from the first bytes.
    let cfg = p.pki.client_config(&[], &[&TLS13]);
    let tls = tls_connect(p.addrs.tls, cfg, "localhost").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let mut c = Client::over(hyper_util::rt::TokioIo::new(tls), true).await;
    let (resp, body) = c.get("/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(&body[..], b"ok 0");
    assert_eq!(r.count(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cipher_suites_set_the_servers_order_and_the_default_follows_the_client() {
    use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
    // A client preferring AES-256 (as OpenSSL's clients do), also offering AES-128.
    let client_prefers_256 = || {
        let mut p = default_provider();
        p.cipher_suites = vec![cs::TLS13_AES_256_GCM_SHA384, cs::TLS13_AES_128_GCM_SHA256];
        p
    };
    let negotiated = |p: &TestProxy, provider| {
        let cfg = p
            .pki
            .client_config_with(&[b"http/1.1"], &[&TLS13], provider);
        let addr = p.addrs.tls;
        async move {
            let tls = tls_connect(addr, cfg, "localhost").await.unwrap();
            tls.get_ref().1.negotiated_cipher_suite().unwrap().suite()
        }
    };

    // Default: the client's order.
    let (p, _r) = proxy().await;
    assert_eq!(
        negotiated(&p, client_prefers_256()).await,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    p.stop().await;

    // Configured: the server's order wins, and a suite left out is never chosen.
    let r = Replica::start("r1").await;
    let pki = Arc::new(TestPki::new());
    let leaf = pki.leaf("localhost", &["localhost", "127.0.0.1"]);
    let tls = "[tls]\ncipher_suites = [\"TLS_AES_128_GCM_SHA256\", \"TLS_AES_256_GCM_SHA384\"]\n"
        .to_string()
        + &cert_toml(&leaf, &["localhost"]);
    let p = TestProxy::start_with(
        pki,
        "",
        &tls,
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    assert_eq!(
        negotiated(&p, client_prefers_256()).await,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    let mut chacha_only = default_provider();
    chacha_only.cipher_suites = vec![cs::TLS13_CHACHA20_POLY1305_SHA256];
    let cfg = p
        .pki
        .client_config_with(&[b"http/1.1"], &[&TLS13], chacha_only);
    assert!(tls_connect(p.addrs.tls, cfg, "localhost").await.is_err());
    p.stop().await;
}

/// A response after which the connection closes (the client asked) arrives whole, and the
/// TLS stream then ends with a close_notify (a clean end of stream, not a truncation).
/// Small and large bodies, chunked from the replica, over new connections with tickets.
#[tokio::test(flavor = "multi_thread")]
async fn a_closing_response_arrives_whole_then_a_close_notify() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (p, _r) = proxy().await;
    for n in [0usize, 10, 20_000, 300_000] {
        let cfg = p.pki.client_config(&[b"http/1.1"], &[&TLS13]);
        let mut tls = tls_connect(p.addrs.tls, cfg, "localhost").await.unwrap();
        let req =
            format!("GET /bytes/{n} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        within(
            "the response and the end of the stream",
            tls.read_to_end(&mut got),
        )
        .await
        .unwrap_or_else(|e| panic!("{n} bytes: the stream did not end cleanly: {e}"));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{n}: {text:.200}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{n}: {text:.300}"
        );
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = decode_chunked(&got[head_end..]);
        assert_eq!(body.len(), n, "{n}: body length");
    }
    p.stop().await;
}

/// A returning client resumes with a ticket from its first connection (a PSK with ECDHE), on
/// both hashes, and both connections carry a request.
#[tokio::test(flavor = "multi_thread")]
async fn a_returning_client_resumes_with_its_ticket_on_both_hashes() {
    use rustls::HandshakeKind;
    use rustls::crypto::aws_lc_rs::{cipher_suite as cs, default_provider};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (p, _r) = proxy().await;
    for suite in [cs::TLS13_AES_128_GCM_SHA256, cs::TLS13_AES_256_GCM_SHA384] {
        let mut provider = default_provider();
        provider.cipher_suites = vec![suite];
        // One config, so one session store: the second connection offers the first's ticket.
        let cfg = p
            .pki
            .client_config_with(&[b"http/1.1"], &[&TLS13], provider);
        for want in [HandshakeKind::Full, HandshakeKind::Resumed] {
            let mut tls = tls_connect(p.addrs.tls, cfg.clone(), "localhost")
                .await
                .unwrap();
            let conn = tls.get_ref().1;
            assert_eq!(conn.handshake_kind(), Some(want), "{:?}", suite.suite());
            assert_eq!(
                conn.negotiated_cipher_suite().map(|s| s.suite()),
                Some(suite.suite())
            );
            let req = "GET /bytes/5 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
            tls.write_all(req.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            within("the response", tls.read_to_end(&mut got))
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&got);
            assert!(
                text.starts_with("HTTP/1.1 200 OK\r\n"),
                "{want:?} {:?}: {text:.200}",
                suite.suite()
            );
        }
    }
    p.stop().await;
}

/// The body of a chunked HTTP/1.1 message (no trailers).
fn decode_chunked(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            assert_eq!(data, b"\r\n", "the message ends after the last chunk");
            return body;
        }
        body.extend_from_slice(&data[..size]);
        assert_eq!(&data[size..size + 2], b"\r\n");
        data = &data[size + 2..];
    }
}

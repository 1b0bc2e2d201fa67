//! Every failure a client can meet, end to end: status, JSON body, request id, and no
//! internals leaked. Also the connection-level limits (slow heads, idle connections,
//! max_connections).

mod support;

use std::time::Duration;

use http::{Method, Request};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn refused_connect_is_502() {
    let dead = closed_port().await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[dead], "") + &route_toml("/", "api")),
    )
    .await;
    for mut c in [p.h1().await, p.h2().await] {
        let (resp, body) = c.get("/").await;
        assert_json_error(
            resp.status().as_u16(),
            &resp,
            &body,
            (502, "upstream connection failed"),
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_reset_is_502() {
    // A "replica" that accepts, reads the request and slams the connection shut.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[addr], "") + &route_toml("/", "api")),
    )
    .await;
    let (resp, body) = p.get("/").await;
    assert_json_error(
        resp.status().as_u16(),
        &resp,
        &body,
        (502, "upstream closed the connection"),
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504() {
    let r = Replica::start("slow").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "response_timeout = \"600ms\"") + &route_toml("/", "api")),
    )
    .await;
    let (resp, body) = p.get("/sleep/5000").await;
    assert_json_error(
        resp.status().as_u16(),
        &resp,
        &body,
        (504, "upstream timed out"),
    );
    // The same replica answering in time is fine.
    let (resp, _) = p.get("/sleep/1").await;
    assert_eq!(resp.status(), 200);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn group_without_usable_server_is_503() {
    let r = Replica::start("drained").await;
    let group = format!(
        "[upstreams.api]\nservers = [{{ address = \"{}\", weight = 0 }}]\n",
        r.addr
    );
    let p = TestProxy::start("", &(group + &route_toml("/", "api"))).await;
    let (resp, body) = p.get("/").await;
    assert_json_error(
        resp.status().as_u16(),
        &resp,
        &body,
        (503, "no upstream server available"),
    );
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_matching_route_is_404() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/api/", "api")),
    )
    .await;
    let (resp, body) = p.get("/other").await;
    assert_json_error(
        resp.status().as_u16(),
        &resp,
        &body,
        (404, "no route for this host and path"),
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_head_is_431() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "max_header_bytes = 8192",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    for mut c in [p.h1().await, p.h2().await] {
        let req = c
            .request(Method::GET, "/")
            .header("x-big", "a".repeat(10_000))
            .body(empty())
            .unwrap();
        let (resp, body) = c.send_collect(req).await;
        assert_json_error(
            resp.status().as_u16(),
            &resp,
            &body,
            (431, "request header fields too large"),
        );
    }
    // Far beyond the limit, hyper's own parser refuses it before the pipeline: still 431.
    let raw = format!(
        "GET / HTTP/1.1\r\nhost: localhost\r\nx-huge: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let out = raw_exchange(p.addrs.plain.unwrap(), raw.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_body_is_413_declared_or_streamed() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "max_body_bytes = 1024",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    // Declared: refused before any replica is contacted.
    let mut c = p.h1().await;
    let req = c
        .request(Method::POST, "/")
        .body(full(vec![b'x'; 2048]))
        .unwrap();
    let (resp, body) = c.send_collect(req).await;
    assert_json_error(
        resp.status().as_u16(),
        &resp,
        &body,
        (413, "request body too large"),
    );
    assert_eq!(r.count(), 0);

    // Streamed without a length: counted as it flows, refused when it crosses the limit.
    for mut c in [p.h1().await, p.h2().await] {
        let req = c
            .request(Method::POST, "/")
            .body(repeat_body(64 * 1024, 512))
            .unwrap();
        let (resp, body) = c.send_collect(req).await;
        assert_json_error(
            resp.status().as_u16(),
            &resp,
            &body,
            (413, "request body too large"),
        );
    }
    // A body at the limit passes.
    let mut c = p.h2().await;
    let req = c
        .request(Method::POST, "/")
        .body(repeat_body(1024, 100))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_bytes(resp.into_body()).await, "ok 1024");
    p.stop().await;
}

/// An error answered before the upload ends must still reach the client: closing with the
/// rest of the body unread would make the kernel reset the connection and destroy the
/// response (lingering close, as nginx).
#[tokio::test(flavor = "multi_thread")]
async fn an_early_413_survives_the_rest_of_the_upload() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "max_body_bytes = 1024",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let addr = p.addrs.plain.unwrap();
    for _ in 0..3 {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let len = 1024 * 1024;
        let head = format!("POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: {len}\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        // The 413 is written and the server side closes while the body is still to come.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..len / chunk.len() {
            within("upload", tcp.write_all(&chunk)).await.unwrap();
        }
        let mut out = Vec::new();
        within("response", tcp.read_to_end(&mut out)).await.unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 413"), "{out}");
        assert!(out.contains("request body too large"), "{out}");
    }
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_are_400() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let plain = p.addrs.plain.unwrap();

    // HTTP/1.1 without Host: our JSON 400.
    let out = raw_exchange(plain, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains(r#""error":"missing Host header""#), "{out}");

    // Two Host headers.
    let out = raw_exchange(plain, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains(r#""error":"repeated Host header""#), "{out}");

    // Not HTTP at all: hyper's parser answers 400 and closes.
    let out = raw_exchange(plain, b"\x16\x03\x01 garbage\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");

    // Conflicting Content-Length.
    let out = raw_exchange(
        plain,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_request_head_is_cut_off() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "header_timeout = \"300ms\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    // A slowloris client: half a request head, then silence. The server must end it.
    let out = raw_exchange(p.addrs.plain.unwrap(), b"GET / HTTP/1.1\r\nHost: a\r\n").await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out:?}");

    // Over TLS, a client that never finishes the handshake is dropped too.
    let mut tcp = tokio::net::TcpStream::connect(p.addrs.tls).await.unwrap();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 16];
    let n = within("server drops a stalled handshake", tcp.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "idle_timeout = \"400ms\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    for h2 in [false, true] {
        let mut c = if h2 { p.h2().await } else { p.h1().await };
        assert_eq!(c.get("/").await.0.status(), 200);
        within("idle connection closed by the server", async {
            while !c.is_closed() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_holds_new_clients_until_a_slot_frees() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "max_connections = 1",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut first = p.h1().await;
    assert_eq!(first.get("/").await.0.status(), 200);

    // The second client sits in the backlog: its handshake cannot finish while the first
    // connection holds the only slot.
    let pki = p.pki.clone();
    let addr = p.addrs.tls;
    let second = tokio::spawn(async move {
        let mut c = Client::connect(addr, &pki, "localhost", &[b"http/1.1"])
            .await
            .unwrap();
        c.get("/").await.0.status()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "second connection was served past max_connections = 1"
    );
    assert_eq!(r.count(), 1);

    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = within("second connection served once the first closed", second)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(r.count(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_status_codes_pass_through_untouched() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    let mut c = p.h1().await;
    for code in [200u16, 201, 204, 302, 404, 500, 502, 503] {
        let req = Request::get(format!("/status/{code}"))
            .header("host", "localhost")
            .body(empty())
            .unwrap();
        let resp = c.send(req).await.unwrap();
        assert_eq!(resp.status().as_u16(), code);
        assert_eq!(resp.headers()["x-upstream-id"], "r");
        body_bytes(resp.into_body()).await;
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_replica_within_response_timeout_outlives_idle_timeout() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "idle_timeout = \"300ms\"",
        &(group_toml("api", &[r.addr], "response_timeout = \"10s\"") + &route_toml("/", "api")),
    )
    .await;
    // No bytes move for 1.2s while the replica thinks: the idle watchdog must not cut in.
    for h2 in [false, true] {
        let mut c = if h2 { p.h2().await } else { p.h1().await };
        let (resp, body) = c.get("/sleep/1200").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"slept");
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn response_timeout_starts_after_the_upload_ends() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "response_timeout = \"600ms\"") + &route_toml("/", "api")),
    )
    .await;
    // A 900ms upload (6 chunks, 150ms apart) to a replica that answers at once: not a 504.
    let mut c = p.h2().await;
    let (tx, body) = channel_body();
    let req = c.request(Method::POST, "/upload").body(body).unwrap();
    let pending = tokio::spawn(async move {
        let resp = c.send(req).await.unwrap();
        let status = resp.status();
        (status, body_bytes(resp.into_body()).await)
    });
    for _ in 0..6 {
        tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
            b"0123456789",
        ))))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    drop(tx);
    let (status, body) = within("upload response", pending).await.unwrap();
    assert_eq!(status, 200, "{body:?}");
    assert_eq!(&body[..], b"ok 60");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_never_sends_a_request_is_closed_after_header_timeout() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "header_timeout = \"300ms\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    use tokio::io::AsyncReadExt;
    // Plain: connect and say nothing.
    let mut tcp = tokio::net::TcpStream::connect(p.addrs.plain.unwrap())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = within("silent plain connection closed", tcp.read(&mut buf)).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    // TLS: finish the handshake, then say nothing (idle_timeout is 60s: this is header_timeout).
    let cfg = p.pki.client_config(&[b"h2"], &[&rustls::version::TLS13]);
    let mut tls = tls_connect(p.addrs.tls, cfg, "localhost").await.unwrap();
    // An HTTP/2 server speaks first (its SETTINGS frame); then nothing but the close.
    let mut heard = 0;
    let end = within("silent TLS connection closed", async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => return Ok(0),
                Ok(n) => heard += n,
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    assert!(
        heard < 100,
        "only the server's SETTINGS preface, got {heard} bytes"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_is_408_even_while_the_connection_is_busy() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "idle_timeout = \"400ms\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    // HTTP/1.1: a declared 100-byte body of which 10 bytes ever arrive.
    let mut c = p.h1().await;
    let (tx, body) = channel_body();
    let req = c
        .request(Method::POST, "/upload")
        .header("content-length", "100")
        .body(body)
        .unwrap();
    tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
        b"0123456789",
    ))))
    .await
    .unwrap();
    let (resp, body) = c.send_collect(req).await;
    assert_json_error(
        resp.status().as_u16(),
        &resp,
        &body,
        (408, "request body timed out"),
    );
    drop(tx);

    // HTTP/2: one stream stalls while another keeps the connection busy.
    let mut c = p.h2().await;
    let mut busy = p.h2().await;
    let (tx, body) = channel_body();
    let req = c.request(Method::POST, "/upload").body(body).unwrap();
    tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(
        b"0123456789",
    ))))
    .await
    .unwrap();
    let stalled = tokio::spawn(async move {
        let resp = c.send(req).await.unwrap();
        resp.status()
    });
    within("stalled stream answered while another stays busy", async {
        while !stalled.is_finished() {
            assert_eq!(busy.get("/").await.0.status(), 200);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(stalled.await.unwrap(), 408);
    drop(tx);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_that_pauses_past_idle_timeout_then_flows_is_not_cut() {
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "idle_timeout = \"600ms\"",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await;
    // A 900ms pause (one idle period: graceful close begins), then 15 chunks 100ms apart:
    // bytes move again, so the connection must live until the body is done.
    for h2 in [false, true] {
        let mut c = if h2 { p.h2().await } else { p.h1().await };
        let (resp, body) = c.get("/drip/900/15").await;
        assert_eq!(resp.status(), 200);
        assert_eq!(body.len(), 5 + 15 * 4, "h2={h2}");
    }
    p.stop().await;
}

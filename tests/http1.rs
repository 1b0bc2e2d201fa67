//! doorman's own HTTP/1.1 server side, on the wire: raw bytes in, raw bytes out, on the
//! plain listener. Pipelining, chunked uploads, Expect: 100-continue, HTTP/1.0, HEAD,
//! request smuggling shapes, and when a connection is kept or closed.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One response read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Lower-cased `name: value` lines.
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.headers
            .iter()
            .find_map(|h| h.strip_prefix(prefix.as_str()))
    }
}

/// A raw HTTP/1.1 client connection that reads responses as they are framed.
struct Wire {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    async fn open(p: &TestProxy) -> Wire {
        Wire {
            tcp: TcpStream::connect(p.addrs.plain.unwrap()).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// More bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        let n = within("bytes from doorman", self.tcp.read(&mut chunk))
            .await
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(
                self.fill().await,
                "connection closed mid-line: {:?}",
                self.buf
            );
        }
    }

    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "connection closed mid-body");
        }
        self.buf.drain(..n).collect()
    }

    /// The next response: its head, then its body as its framing says (none for HEAD).
    async fn response(&mut self, head_request: bool) -> Raw {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            headers.push(line.to_ascii_lowercase());
        }
        let mut raw = Raw {
            status,
            headers,
            body: Vec::new(),
        };
        if head_request || status == 100 || status == 204 || status == 304 {
            return raw;
        }
        if raw.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line().await, 16).unwrap();
                if size == 0 {
                    assert_eq!(self.line().await, "", "no trailers expected");
                    break;
                }
                let data = self.take(size).await;
                raw.body.extend_from_slice(&data);
                assert_eq!(self.take(2).await, b"\r\n");
            }
        } else if let Some(len) = raw.header("content-length") {
            raw.body = self.take(len.parse().unwrap()).await;
        } else {
            while self.fill().await {}
            raw.body = std::mem::take(&mut self.buf);
        }
        raw
    }

    /// True when doorman closes the connection (within a few seconds) with nothing more.
    async fn closed_by_peer(&mut self) -> bool {
        let mut chunk = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.tcp.read(&mut chunk)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ) && self.buf.is_empty()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (r, p) = proxy_with_replica().await;
    let mut w = Wire::open(&p).await;
    w.send(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\nGET /c HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    for _ in 0..3 {
        let resp = w.response(false).await;
        // The replica answers `ok {length of the request body}`.
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok 0"[..]));
        assert!(resp.header("date").is_some_and(|d| d.ends_with(" gmt")));
        assert_eq!(resp.header("connection"), None);
    }
    let uris: Vec<_> = r.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/a", "/b", "/c"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_upload_is_forwarded_whole_and_the_connection_stays_usable() {
    let (r, p) = proxy_with_replica().await;
    let mut w = Wire::open(&p).await;
    // Sent in pieces that split sizes, data and the final CRLFs; a trailer is dropped.
    let pieces: [&[u8]; 6] = [
        b"POST /up HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5\r\nhel",
        b"lo\r\n0",
        b"a;ext=1\r\n0123456789",
        b"\r\n0\r\nx-trailer: t\r\n",
        b"\r\n",
    ];
    for piece in pieces {
        w.send(piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = w.response(false).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok 15"[..]));
    w.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(w.response(false).await.body, b"ok 0");
    let seen = r.seen();
    assert_eq!(seen[0].body_len, 15);
    assert_eq!(seen[0].method, http::Method::POST);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (r, p) = proxy_with_replica().await;
    let mut w = Wire::open(&p).await;
    w.send(b"PUT /up HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
        .await;
    let interim = w.response(false).await;
    assert_eq!((interim.status, interim.headers.len()), (100, 0));
    w.send(b"data").await;
    let resp = w.response(false).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok 4"[..]));
    assert_eq!(r.seen()[0].body_len, 4);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_shapes_are_400_and_close_the_connection() {
    let (r, p) = proxy_with_replica().await;
    for (head, why) in [
        (
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n",
            "both Content-Length and Transfer-Encoding",
        ),
        (
            "POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n",
            "conflicting Content-Length headers",
        ),
        (
            "POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, identity\r\n\r\n",
            "Transfer-Encoding does not end with chunked",
        ),
        (
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "malformed request head",
        ),
    ] {
        let mut w = Wire::open(&p).await;
        w.send(head.as_bytes()).await;
        let resp = w.response(false).await;
        assert_eq!(resp.status, 400, "{head:?}");
        assert_eq!(resp.header("connection"), Some("close"));
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(json["error"], why, "{head:?}");
        assert!(w.closed_by_peer().await, "{head:?}");
    }
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http_1_0_is_closed_after_its_response_unless_it_asks_for_keep_alive() {
    let (_r, p) = proxy_with_replica().await;
    let mut w = Wire::open(&p).await;
    w.send(b"GET / HTTP/1.0\r\nhost: x\r\n\r\n").await;
    let resp = w.response(false).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok 0"[..]));
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(w.closed_by_peer().await);

    let mut w = Wire::open(&p).await;
    for _ in 0..2 {
        w.send(b"GET / HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
            .await;
        let resp = w.response(false).await;
        assert_eq!(resp.body, b"ok 0");
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_response_is_chunked_for_1_1_and_ends_at_close_for_1_0() {
    let (_r, p) = proxy_with_replica().await;
    let mut w = Wire::open(&p).await;
    w.send(b"GET /bytes/200000 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let resp = w.response(false).await;
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.body.len(), 200_000);
    // Still usable after a chunked response.
    w.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(w.response(false).await.status, 200);

    let mut w = Wire::open(&p).await;
    w.send(b"GET /bytes/200000 HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n")
        .await;
    let resp = w.response(false).await;
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(resp.body.len(), 200_000);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn head_responses_keep_their_length_and_carry_no_body() {
    let (_r, p) = proxy_with_replica().await;
    let mut w = Wire::open(&p).await;
    w.send(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let head = w.response(true).await;
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("4"))
    );
    // The next bytes are the GET's response, not a body of the HEAD's.
    let get = w.response(false).await;
    assert_eq!((get.status, get.body.as_slice()), (200, &b"ok 0"[..]));
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unread_body_keeps_the_connection_when_it_is_all_here_and_closes_it_otherwise() {
    // No route for /nowhere: a 404 answered without reading the body.
    let r = Replica::start("r").await;
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/api", "api")),
    )
    .await;
    let mut w = Wire::open(&p).await;
    w.send(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await;
    let resp = w.response(false).await;
    assert_eq!((resp.status, resp.header("connection")), (404, None));
    w.send(b"GET /api HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(w.response(false).await.body, b"ok 0");

    // Most of this body is still to come when the 404 is ready: not waited for.
    let mut w = Wire::open(&p).await;
    w.send(b"POST /nowhere HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nhello")
        .await;
    let resp = w.response(false).await;
    assert_eq!(
        (resp.status, resp.header("connection")),
        (404, Some("close"))
    );
    assert!(w.closed_by_peer().await);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_alpn_the_protocol_is_sniffed_h2c_prior_knowledge_or_http_1_1() {
    let (r, p) = proxy_with_replica().await;
    // Plain listener, HTTP/2 with prior knowledge: the preface picks hyper's HTTP/2 side.
    let tcp = TcpStream::connect(p.addrs.plain.unwrap()).await.unwrap();
    let mut c = Client::over(hyper_util::rt::TokioIo::new(tcp), true).await;
    for _ in 0..2 {
        let req = c.request(http::Method::GET, "/h2c").body(empty()).unwrap();
        let resp = within("h2c response", c.send(req)).await.unwrap();
        assert_eq!(
            (resp.version(), resp.status().as_u16()),
            (http::Version::HTTP_2, 200)
        );
        assert_eq!(body_bytes(resp.into_body()).await, "ok 0");
    }
    // TLS with no ALPN offered: HTTP/1.1, sniffed.
    let mut c = Client::connect(p.addrs.tls, &p.pki, "localhost", &[])
        .await
        .unwrap();
    assert!(!c.is_h2());
    let (resp, body) = c.get("/tls-no-alpn").await;
    assert_eq!(
        (resp.version(), resp.status().as_u16()),
        (http::Version::HTTP_11, 200)
    );
    assert_eq!(body, "ok 0");
    let uris: Vec<_> = r.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(uris, ["/h2c", "/h2c", "/tls-no-alpn"]);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_coding_besides_chunked_is_501() {
    let (r, p) = proxy_with_replica().await;
    let mut w = Wire::open(&p).await;
    w.send(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
        .await;
    let resp = w.response(false).await;
    assert_eq!(
        (resp.status, resp.header("connection")),
        (501, Some("close"))
    );
    let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(json["error"], "unsupported Transfer-Encoding");
    assert_eq!(r.count(), 0);
    p.stop().await;
}

/// A replica that starts a large answer as soon as it has the request head, and reads the
/// request body at the same time (a streaming transform, an echo).
async fn full_duplex_replica(answer_len: usize) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            rd.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let reading = tokio::spawn(async move {
            let mut sink = vec![0u8; 65536];
            while rd.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {answer_len}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'r'; 65536];
        let mut left = answer_len;
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        let _ = reading.await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_its_whole_body_before_reading_does_not_deadlock() {
    // Both directions well past what loopback socket buffers hold.
    const LEN: usize = 24 << 20;
    let replica = full_duplex_replica(LEN).await;
    let p = TestProxy::start(
        "max_body_bytes = 67108864",
        &(group_toml("api", &[replica], "") + &route_toml("/", "api")),
    )
    .await;
    let mut w = Wire::open(&p).await;
    let head = format!("POST /duplex HTTP/1.1\r\nhost: x\r\ncontent-length: {LEN}\r\n\r\n");
    w.send(head.as_bytes()).await;
    let body = vec![b'c'; LEN];
    within("the whole upload, before reading", w.tcp.write_all(&body))
        .await
        .unwrap();
    let resp = w.response(false).await;
    assert_eq!((resp.status, resp.body.len()), (200, LEN));
    p.stop().await;
}

//! doorman's own HTTP/1.1 client (proxy -> replica), checked byte by byte against a scripted
//! replica: a raw TCP listener that records every request exactly as it arrived (head, body
//! framing, which connection carried it) and answers with the bytes each test scripts.
//!
//! Covered: the request line, Host and the framing doorman picks (none, `content-length`,
//! chunked uploads from HTTP/1.1 and HTTP/2 clients); response framing (Content-Length,
//! chunked with extensions and trailers, close-delimited, HEAD/204/304, Content-Length
//! together with Transfer-Encoding); interim 1xx responses; malformed and oversized heads
//! (502); and when an upstream connection is reused or not (`Connection: close`, HTTP/1.0,
//! bytes past the response, the replica closing a kept-alive connection).

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body::Frame;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------- the scripted replica

/// One request as the replica read it off the wire.
#[derive(Debug, Clone)]
struct Received {
    /// Which accepted connection carried it (0 = the first one accepted).
    conn: usize,
    /// Its place on that connection (0 = the connection's first request).
    nth: usize,
    /// The head, from the request line to the empty line included, exactly as sent.
    head: String,
    /// The body exactly as framed on the wire (chunk-size lines and all).
    raw_body: Vec<u8>,
    /// The body's content, chunked framing removed.
    body: Vec<u8>,
    /// The chunk-size lines of a chunked body, as sent (the last one is the `0`).
    chunk_lines: Vec<String>,
    /// The request's framing was broken (the replica then closed the connection).
    error: Option<String>,
}

impl Received {
    fn request_line(&self) -> &str {
        self.head.split("\r\n").next().unwrap_or("")
    }

    fn path(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive), in order.
    fn header(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// What the replica does with one request.
struct Reply {
    /// Written in order, each after sleeping its delay.
    parts: Vec<(Duration, Vec<u8>)>,
    /// Close the connection once written (otherwise keep reading requests on it).
    close: bool,
}

impl Reply {
    /// Answer and keep the connection open.
    fn keep(bytes: impl AsRef<[u8]>) -> Reply {
        Reply {
            parts: vec![(Duration::ZERO, bytes.as_ref().to_vec())],
            close: false,
        }
    }

    /// Answer, then close the connection.
    fn close(bytes: impl AsRef<[u8]>) -> Reply {
        Reply {
            close: true,
            ..Reply::keep(bytes)
        }
    }

    /// Close the connection without a byte of response.
    fn hang_up() -> Reply {
        Reply {
            parts: Vec::new(),
            close: true,
        }
    }

    /// Close the connection once everything is written.
    fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    /// More bytes, written `after` the previous ones.
    fn then(mut self, after: Duration, bytes: impl AsRef<[u8]>) -> Reply {
        self.parts.push((after, bytes.as_ref().to_vec()));
        self
    }
}

type Script = dyn Fn(&Received) -> Reply + Send + Sync;

/// A replica speaking raw bytes on 127.0.0.1:0.
struct Scripted {
    addr: std::net::SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Connections that have ended (closed by either side).
    ended: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Scripted {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            accepted: Arc::default(),
            ended: Arc::default(),
        };
        let script: Arc<Script> = Arc::new(script);
        let (received, accepted, ended) = (s.received.clone(), s.accepted.clone(), s.ended.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = accepted.fetch_add(1, Ordering::SeqCst);
                let _ = tcp.set_nodelay(true);
                let (script, received, ended) = (script.clone(), received.clone(), ended.clone());
                tokio::spawn(async move {
                    serve(tcp, conn, &*script, &received).await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        s
    }

    /// The requests received so far; every one of them well framed.
    fn received(&self) -> Vec<Received> {
        let got = self.received.lock().unwrap().clone();
        for r in &got {
            assert!(r.error.is_none(), "badly framed request: {r:?}");
        }
        got
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Wait (bounded) until `n` connections have ended.
    async fn ended(&self, n: usize) {
        within(&format!("{n} replica connections ended"), async {
            while self.ended.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// Serve one connection: read each request, record it, write the scripted reply.
async fn serve(mut tcp: TcpStream, conn: usize, script: &Script, received: &Mutex<Vec<Received>>) {
    let mut buf = Vec::new();
    for nth in 0.. {
        // The head, to its empty line.
        let head_len = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut tcp, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        let mut req = Received {
            conn,
            nth,
            head,
            raw_body: Vec::new(),
            body: Vec::new(),
            chunk_lines: Vec::new(),
            error: None,
        };
        let chunked = req
            .header("transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let length = req.header("content-length").first().cloned();
        let framed = if chunked {
            read_chunked(&mut tcp, &mut buf, &mut req).await
        } else if let Some(len) = length {
            match len.parse::<usize>() {
                Ok(n) => {
                    while buf.len() < n {
                        if !fill(&mut tcp, &mut buf).await {
                            break;
                        }
                    }
                    if buf.len() < n {
                        Err(format!("closed after {} of {n} body bytes", buf.len()))
                    } else {
                        req.raw_body = buf.drain(..n).collect();
                        req.body = req.raw_body.clone();
                        Ok(())
                    }
                }
                Err(_) => Err(format!("content-length {len:?}")),
            }
        } else {
            Ok(())
        };
        if let Err(e) = framed {
            req.error = Some(e);
            received.lock().unwrap().push(req);
            return;
        }
        let reply = script(&req);
        received.lock().unwrap().push(req);
        for (delay, bytes) in reply.parts {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tcp.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if reply.close {
            let _ = tcp.shutdown().await;
            return;
        }
    }
}

/// A chunked body, strictly: lower- or upper-case hex sizes, CRLF everywhere, trailers up
/// to the empty line.
async fn read_chunked(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &mut Received,
) -> Result<(), String> {
    loop {
        let line = take_line(tcp, buf, &mut req.raw_body).await?;
        let digits = line.split(';').next().unwrap_or("");
        let size =
            usize::from_str_radix(digits, 16).map_err(|_| format!("chunk-size line {line:?}"))?;
        req.chunk_lines.push(line);
        if size == 0 {
            // Trailer lines, then the empty line.
            while !take_line(tcp, buf, &mut req.raw_body).await?.is_empty() {}
            return Ok(());
        }
        while buf.len() < size + 2 {
            if !fill(tcp, buf).await {
                return Err("closed inside a chunk".into());
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(format!("chunk of {size} bytes not followed by CRLF"));
        }
        req.body.extend_from_slice(&buf[..size]);
        req.raw_body.extend(buf.drain(..size + 2));
    }
}

/// One CRLF-terminated line, without its CRLF (kept in `raw`).
async fn take_line(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    raw: &mut Vec<u8>,
) -> Result<String, String> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            raw.extend(buf.drain(..i + 2));
            return Ok(line);
        }
        if !fill(tcp, buf).await {
            return Err("closed inside a chunked body".into());
        }
    }
}

/// Read more bytes; false at the end of the stream (or an error).
async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------- helpers

async fn proxy_for(r: &Scripted) -> TestProxy {
    TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], "") + &route_toml("/", "api")),
    )
    .await
}

/// GET `path` and assert a 200 whose body is `want`.
async fn expect_ok(c: &mut Client, path: &str, want: &str) -> Response<()> {
    let (resp, body) = c.get(path).await;
    assert_eq!(
        (resp.status().as_u16(), &body[..]),
        (200, want.as_bytes()),
        "{path}"
    );
    resp
}

/// A 200 with a Content-Length body.
fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// doorman's JSON 502 for a replica that broke the exchange (`ProxyError::UpstreamBroken`).
fn assert_bad_gateway(resp: &Response<()>, body: &[u8]) {
    assert_json_error(
        resp.status().as_u16(),
        resp,
        body,
        (502, "upstream closed the connection"),
    );
}

// ---------------------------------------------------------------- requests on the wire

#[tokio::test(flavor = "multi_thread")]
async fn requests_arrive_in_origin_form_with_host_and_the_framing_doorman_chose() {
    let r = Scripted::start(|_| Reply::keep(ok("ok"))).await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;

    expect_ok(&mut c, "/path?q", "ok").await;
    let req = c.request(Method::POST, "/empty").body(empty()).unwrap();
    let (resp, body) = c.send_collect(req).await;
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"ok"[..]));
    let req = c
        .request(Method::POST, "/sized")
        .body(full("hello world"))
        .unwrap();
    let (resp, body) = c.send_collect(req).await;
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"ok"[..]));
    // HTTP/2: an empty POST (END_STREAM on its HEADERS), Host from :authority.
    let mut h2 = p.h2().await;
    let req = h2.request(Method::POST, "/h2-empty").body(empty()).unwrap();
    let (resp, body) = h2.send_collect(req).await;
    assert_eq!((resp.status().as_u16(), &body[..]), (200, &b"ok"[..]));

    let got = r.received();
    assert_eq!(got.len(), 4);
    let get = &got[0];
    assert_eq!(get.request_line(), "GET /path?q HTTP/1.1");
    assert_eq!(get.header("host"), ["localhost"]);
    assert!(get.header("content-length").is_empty(), "{}", get.head);
    assert!(get.header("transfer-encoding").is_empty(), "{}", get.head);
    assert!(get.raw_body.is_empty());

    for (req, line) in [
        (&got[1], "POST /empty HTTP/1.1"),
        (&got[3], "POST /h2-empty HTTP/1.1"),
    ] {
        assert_eq!(req.request_line(), line);
        assert_eq!(req.header("host"), ["localhost"], "{}", req.head);
        assert_eq!(req.header("content-length"), ["0"], "{}", req.head);
        assert!(req.header("transfer-encoding").is_empty(), "{}", req.head);
        assert!(req.raw_body.is_empty());
    }

    let sized = &got[2];
    assert_eq!(sized.request_line(), "POST /sized HTTP/1.1");
    assert_eq!(sized.header("content-length"), ["11"]);
    assert!(sized.header("transfer-encoding").is_empty());
    assert_eq!(sized.raw_body, b"hello world");

    // Keep-alive responses read to their end: one connection carried all four.
    assert_eq!(r.accepted(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_without_a_length_are_sent_chunked() {
    let r = Scripted::start(|_| Reply::keep(ok("got it"))).await;
    let p = proxy_for(&r).await;
    let big = "x".repeat(5000);
    let expected = format!("hello world{big}");
    for (i, mut c) in [p.h2().await, p.h1().await].into_iter().enumerate() {
        let (tx, body) = channel_body();
        let req = c
            .request(Method::POST, &format!("/upload/{i}"))
            .body(body)
            .unwrap();
        let big = big.clone();
        let feeder = tokio::spawn(async move {
            let pieces = [
                Bytes::from_static(b"hello"),
                // An empty data frame mid-body must not end the chunked body (hyper's clients
                // may drop it before the wire, in which case this checks nothing more).
                Bytes::new(),
                Bytes::from_static(b" wor"),
                Bytes::from_static(b"ld"),
                Bytes::from(big),
            ];
            for piece in pieces {
                tx.send(Ok(Frame::data(piece))).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Trailers from the client: the body still ends with a well-formed last chunk.
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", "abc".parse().unwrap());
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        let (resp, body) = c.send_collect(req).await;
        within("feeder", feeder).await.unwrap();
        assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(&body[..], b"got it");

        let got = r.received();
        let up = got.last().unwrap();
        assert_eq!(up.request_line(), format!("POST /upload/{i} HTTP/1.1"));
        assert_eq!(up.header("transfer-encoding"), ["chunked"], "{}", up.head);
        assert!(up.header("content-length").is_empty(), "{}", up.head);
        assert_eq!(String::from_utf8_lossy(&up.body), expected);
        // Every chunk but the last carries data; sizes in hex without extensions.
        let (last, data) = up.chunk_lines.split_last().unwrap();
        assert_eq!(last, "0");
        assert!(!data.is_empty());
        for line in data {
            assert!(
                line.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
                "chunk-size line {line:?}"
            );
            let n = usize::from_str_radix(line, 16).unwrap();
            assert!(n > 0, "an empty chunk before the end: {:?}", up.chunk_lines);
        }
        // The last chunk and an empty trailer section (HTTP/2 trailers are not forwarded).
        assert!(
            up.raw_body.ends_with(b"\r\n0\r\n\r\n"),
            "{:?}",
            String::from_utf8_lossy(&up.raw_body)
        );
    }
    assert_eq!(r.received().len(), 2);
    p.stop().await;
}

// ---------------------------------------------------------------- response framing

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_response_with_trailers_is_relayed_and_its_connection_reused() {
    let r = Scripted::start(|req| match req.path() {
        "/chunked" => Reply::keep(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
             5\r\nhello\r\n1\r\n \r\n",
        )
        .then(
            Duration::from_millis(20),
            "5;ext=1\r\nworld\r\nA\r\n0123456789\r\n",
        )
        .then(Duration::from_millis(20), "0\r\nx-sum: 42\r\n\r\n"),
        _ => Reply::keep(ok("next")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    expect_ok(&mut c, "/chunked", "hello world0123456789").await;
    expect_ok(&mut c, "/after", "next").await;

    let got = r.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[1].conn, got[1].nth),
        (0, 1),
        "second request on the same connection"
    );
    assert_eq!(r.accepted(), 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_delimited_response_is_relayed_whole_and_not_reused() {
    let r = Scripted::start(|req| match req.path() {
        "/until-close" => Reply::keep("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil")
            .then(Duration::from_millis(30), "-the-")
            .then(Duration::from_millis(30), "close")
            .closing(),
        _ => Reply::keep(ok("next")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    expect_ok(&mut c, "/until-close", "until-the-close").await;
    expect_ok(&mut c, "/after", "next").await;

    let got = r.received();
    assert_eq!(got.len(), 2);
    assert_eq!((got[1].conn, got[1].nth), (1, 0), "a new connection");
    assert_eq!(r.accepted(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interim_responses_are_skipped() {
    let r = Scripted::start(|req| match req.path() {
        // Interim responses in writes of their own...
        "/apart" => Reply::keep("HTTP/1.1 100 Continue\r\n\r\n")
            .then(
                Duration::from_millis(20),
                "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n",
            )
            .then(
                Duration::from_millis(20),
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
            ),
        // ... and all in one with the final response.
        _ => Reply::keep(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond",
        ),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    let resp = expect_ok(&mut c, "/apart", "final").await;
    assert!(resp.headers().get("link").is_none(), "103's header leaked");
    let resp = expect_ok(&mut c, "/together", "second").await;
    assert!(resp.headers().get("link").is_none(), "103's header leaked");

    assert_eq!(r.received().len(), 2);
    assert_eq!(
        r.accepted(),
        1,
        "the connection is reused after interim responses"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_chunked_is_decoded_as_chunked_and_not_reused() {
    let r = Scripted::start(|req| match req.path() {
        // The replica keeps the connection open: only doorman can decide not to reuse it.
        "/both" => Reply::keep(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        ),
        _ => Reply::keep(ok("next")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    let resp = expect_ok(&mut c, "/both", "hello world").await;
    if let Some(len) = resp.headers().get("content-length") {
        assert_eq!(
            len, "11",
            "the replica's Content-Length must not be relayed"
        );
    }
    expect_ok(&mut c, "/after", "next").await;

    let got = r.received();
    assert_eq!(got.len(), 2);
    assert_eq!((got[1].conn, got[1].nth), (1, 0), "a new connection");
    assert_eq!(r.accepted(), 2);
    // doorman closed the one it would not reuse.
    r.ended(1).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn head_204_and_304_responses_have_no_body_and_keep_the_connection() {
    let r = Scripted::start(|req| match req.path() {
        // A HEAD's Content-Length describes the GET's body: none follows.
        "/head" => Reply::keep("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
        "/204" => Reply::keep("HTTP/1.1 204 No Content\r\n\r\n"),
        "/304" => Reply::keep("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
        _ => Reply::keep(ok("last")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    let req = c.request(Method::HEAD, "/head").body(empty()).unwrap();
    let (resp, body) = c.send_collect(req).await;
    assert_eq!(resp.status(), 200);
    assert!(body.is_empty());
    for (path, status) in [("/204", 204), ("/304", 304)] {
        let (resp, body) = c.get(path).await;
        assert_eq!(resp.status(), status);
        assert!(body.is_empty());
    }
    expect_ok(&mut c, "/last", "last").await;

    let got = r.received();
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].request_line(), "HEAD /head HTTP/1.1");
    assert_eq!(r.accepted(), 1, "bodiless responses keep the connection");
    p.stop().await;
}

// ---------------------------------------------------------------- broken responses

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_response_head_is_a_502() {
    let r = Scripted::start(|req| match req.path() {
        "/bad/0" => Reply::keep("garbage\r\n\r\n"),
        "/bad/1" => Reply::keep("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nok"),
        "/bad/2" => {
            Reply::keep("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok")
        }
        "/bad/3" => Reply::keep("HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok"),
        _ => Reply::keep(ok("fine")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    for i in 0..4 {
        let (resp, body) = c.get(&format!("/bad/{i}")).await;
        assert_bad_gateway(&resp, &body);
        // The next request gets a connection of its own, and its answer.
        let (resp, body) = c.get("/good").await;
        assert_eq!(
            (resp.status().as_u16(), &body[..]),
            (200, &b"fine"[..]),
            "after /bad/{i}"
        );
    }
    let got = r.received();
    assert_eq!(got.len(), 8);
    // Each broken connection is dropped, never reused: the request after every /bad/N
    // opened a new one (and /bad/N itself went on the previous good connection).
    for i in 0..4 {
        let (bad, good) = (&got[2 * i], &got[2 * i + 1]);
        assert_eq!(bad.path(), format!("/bad/{i}"));
        assert_eq!(
            (good.conn, good.nth),
            (i + 1, 0),
            "the request after /bad/{i}"
        );
    }
    assert_eq!(r.accepted(), 5);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_head_over_64_kib_is_a_502() {
    const LIMIT: usize = 64 * 1024;
    /// A 200 whose head (status line to the empty line) is exactly `len` bytes.
    fn head_of(len: usize) -> String {
        let fixed = "HTTP/1.1 200 OK\r\nX-Big: \r\nContent-Length: 2\r\n\r\n".len();
        format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
            "a".repeat(len - fixed)
        )
    }
    let r = Scripted::start(|req| match req.path() {
        "/over" => Reply::keep(head_of(LIMIT + 1)),
        "/huge" => Reply::keep(head_of(200 * 1024)),
        "/many" => {
            let mut h = String::from("HTTP/1.1 200 OK\r\n");
            for i in 0..150 {
                h.push_str(&format!("x-h{i}: v\r\n"));
            }
            h.push_str("Content-Length: 2\r\n\r\nok");
            Reply::keep(h)
        }
        _ => Reply::keep(head_of(LIMIT)),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    // Exactly at the limit: relayed.
    let (resp, body) = c.get("/at-limit").await;
    assert_eq!(resp.status(), 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"ok");
    assert_eq!(
        resp.headers()["x-big"].len(),
        LIMIT - "HTTP/1.1 200 OK\r\nX-Big: \r\nContent-Length: 2\r\n\r\n".len()
    );
    for path in ["/over", "/huge", "/many"] {
        let (resp, body) = c.get(path).await;
        assert_bad_gateway(&resp, &body);
        // Interleaved with good ones, so passive health never ejects the only replica.
        let (resp, _) = c.get("/at-limit").await;
        assert_eq!(resp.status(), 200, "after {path}");
    }
    p.stop().await;
}

// ---------------------------------------------------------------- connection reuse

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_the_replica_closed_is_not_a_502() {
    let r = Scripted::start(|req| match req.path() {
        // Keep-alive by HTTP/1.1's default, then the replica closes it (an idle timeout).
        "/first" => Reply::close(ok("first")),
        _ => Reply::keep(ok("second")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    expect_ok(&mut c, "/first", "first").await;
    r.ended(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    expect_ok(&mut c, "/second", "second").await;

    let got = r.received();
    assert_eq!(got.len(), 2, "the second GET reached the replica once");
    assert_eq!((got[1].conn, got[1].nth), (1, 0));
    assert_eq!(r.accepted(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_closed_as_a_request_arrives_resends_only_safe_requests() {
    // The race itself: the replica reads the next request on a kept-alive connection and
    // closes without answering. A bodiless GET goes again on a new connection; a POST with
    // a body may have been acted on and is not sent twice.
    let r = Scripted::start(|req| match (req.conn, req.nth) {
        (_, 1) => Reply::hang_up(),
        _ => Reply::keep(ok("fine")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    expect_ok(&mut c, "/warm", "fine").await;
    expect_ok(&mut c, "/raced", "fine").await;
    let got = r.received();
    let paths: Vec<_> = got
        .iter()
        .map(|g| (g.path().to_string(), g.conn, g.nth))
        .collect();
    assert_eq!(
        paths,
        [
            ("/warm".to_string(), 0, 0),
            ("/raced".to_string(), 0, 1),
            ("/raced".to_string(), 1, 0),
        ]
    );

    let req = c.request(Method::POST, "/post").body(full("data")).unwrap();
    let (resp, body) = c.send_collect(req).await;
    assert_bad_gateway(&resp, &body);
    let got = r.received();
    assert_eq!(got.len(), 4, "the POST was sent once: {got:?}");
    assert_eq!((got[3].path(), got[3].conn, got[3].nth), ("/post", 1, 1));
    assert_eq!(got[3].body, b"data");
    assert_eq!(r.accepted(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_close_from_the_replica_is_honoured() {
    // The replica says close but keeps its end open: only doorman can honour it.
    let r = Scripted::start(|req| match req.path() {
        "/close" => {
            Reply::keep("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nfirst")
        }
        "/tokens" => Reply::keep(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, CLOSE\r\nContent-Length: 6\r\n\r\nsecond",
        ),
        _ => Reply::keep(ok("third")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    for (path, want) in [
        ("/close", "first"),
        ("/tokens", "second"),
        ("/after", "third"),
    ] {
        let resp = expect_ok(&mut c, path, want).await;
        // Connection is hop-by-hop: the replica's close is not the client's.
        assert!(resp.headers().get("connection").is_none(), "{path}");
    }
    let got = r.received();
    let on: Vec<_> = got.iter().map(|g| (g.conn, g.nth)).collect();
    assert_eq!(
        on,
        [(0, 0), (1, 0), (2, 0)],
        "a new connection after each close"
    );
    assert_eq!(r.accepted(), 3);
    // doorman closed both connections it was told not to reuse.
    r.ended(2).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_1_0_response_is_reused_only_with_keep_alive() {
    let r = Scripted::start(|req| match req.path() {
        "/old" => Reply::keep("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"),
        "/old-kept" => Reply::keep(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nkept",
        ),
        _ => Reply::keep(ok("new")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    for (path, want) in [("/old", "old"), ("/old-kept", "kept"), ("/after", "new")] {
        expect_ok(&mut c, path, want).await;
    }
    let on: Vec<_> = r.received().iter().map(|g| (g.conn, g.nth)).collect();
    assert_eq!(on, [(0, 0), (1, 0), (1, 1)]);
    assert_eq!(r.accepted(), 2);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_past_the_response_are_never_taken_for_the_next_one() {
    let spoof = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nspoof";
    let r = Scripted::start(move |req| match req.path() {
        // Surplus in the same write as the response...
        "/same-write" => Reply::keep(format!("{}{spoof}", ok("one"))),
        // ... or a little after it, while the connection sits in the pool.
        "/later" => Reply::keep(ok("two")).then(Duration::from_millis(30), spoof),
        _ => Reply::keep(ok("real")),
    })
    .await;
    let p = proxy_for(&r).await;
    let mut c = p.h1().await;
    for (path, want) in [
        ("/same-write", "one"),
        ("/after", "real"),
        ("/later", "two"),
    ] {
        expect_ok(&mut c, path, want).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    expect_ok(&mut c, "/after", "real").await;
    let on: Vec<_> = r.received().iter().map(|g| (g.conn, g.nth)).collect();
    // /after reuses the clean connection /same-write's successor opened; /later's surplus
    // makes its connection unusable.
    assert_eq!(on, [(0, 0), (1, 0), (1, 1), (2, 0)]);
    assert_eq!(r.accepted(), 3);
    p.stop().await;
}

// ---------------------------------------------------------------- uploads the replica cut short

/// A client body that fails is the client's error (400), never a reason to send the request
/// again on another connection: the body's first bytes are gone by then, and a retry would
/// send the replica a shorter (here: empty) body as if it were the whole one.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_request_body_is_never_sent_again_as_an_empty_one() {
    let r = Scripted::start(|_| Reply::keep(ok("fine"))).await;
    let p = proxy_for(&r).await;
    // A pooled connection first, so that a failure could look like a dead pooled one.
    let (resp, _) = p.get("/warm").await;
    assert_eq!(resp.status(), 200);
    // The first chunk-size line is not hex: the client's body fails before any of it.
    let answer = raw_exchange(
        p.addrs.plain.unwrap(),
        b"POST /broken HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    // The replica saw the GET and no complete POST: never an empty body in its place.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = r.received.lock().unwrap().clone();
    let posts: Vec<_> = got
        .iter()
        .filter(|q| q.request_line().starts_with("POST") && q.error.is_none())
        .collect();
    assert!(
        posts.is_empty(),
        "a POST reached the replica whole: {posts:?}"
    );
    assert_eq!(got[0].request_line(), "GET /warm HTTP/1.1");
    p.stop().await;
}

/// A replica that answers `answer` as soon as it has a request head, then closes without
/// reading the body (the kernel then resets the connection: unread data).
async fn refusing_replica(answer: &'static [u8]) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while find(&buf, b"\r\n\r\n").is_none() {
                    if !fill(&mut tcp, &mut buf).await {
                        return;
                    }
                }
                let _ = tcp.write_all(answer).await;
                // Some of the body has arrived unread: dropping the socket sends a reset.
            });
        }
    });
    addr
}

/// Read one response (head and Content-Length body) off a raw connection.
async fn read_response(rd: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = find(&out, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return String::from_utf8_lossy(&out[..end + 4 + len]).into_owned();
            }
        }
        match within("response bytes", rd.read(&mut chunk)).await {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The replica refuses a large upload at once and resets the connection. doorman reads
/// what the replica sent before it fails a write: the 413 reaches the client, not a 502.
/// (Which of the two doorman meets first depends on timing; the client must get the 413
/// either way.)
#[tokio::test(flavor = "multi_thread")]
async fn an_early_refusal_reaches_the_client_though_the_replica_resets_the_upload() {
    const LEN: usize = 16 << 20;
    let replica = refusing_replica(
        b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big!",
    )
    .await;
    let p = TestProxy::start(
        "max_body_bytes = 67108864",
        &(group_toml("api", &[replica], "") + &route_toml("/", "api")),
    )
    .await;
    for _ in 0..3 {
        let tcp = TcpStream::connect(p.addrs.plain.unwrap()).await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let upload = tokio::spawn(async move {
            let head = format!("POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: {LEN}\r\n\r\n");
            let _ = wr.write_all(head.as_bytes()).await;
            let chunk = vec![b'u'; 64 * 1024];
            for _ in 0..LEN / chunk.len() {
                if wr.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let answer = read_response(&mut rd).await;
        // The replica's own answer, not a 502 for the write that failed after it.
        assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(answer.ends_with("\r\n\r\ntoo big!"), "{answer}");
        upload.abort();
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_finished_after_an_early_answer_does_not_half_close_the_replica() {
    // Over the 64 KiB held for retries: streamed, so the answer can come before its end.
    const BODY: usize = 256 * 1024;
    const ANSWER: usize = 10 * 32 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let eof_early = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body_read = Arc::new(AtomicUsize::new(0));
    let (eof, read) = (eof_early.clone(), body_read.clone());
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut rd, mut wr) = tcp.into_split();
        let mut buf = Vec::new();
        while find(&buf, b"\r\n\r\n").is_none() {
            let mut chunk = [0u8; 4096];
            let n = rd.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before the head");
            buf.extend_from_slice(&chunk[..n]);
        }
        // Body bytes that came with the head.
        let head_end = find(&buf, b"\r\n\r\n").unwrap() + 4;
        read.fetch_add(buf.len() - head_end, Ordering::SeqCst);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writing_done = done.clone();
        // Read the body alongside; an end of stream while the answer is still being
        // written is the client going away, to most servers.
        let reader = tokio::spawn(async move {
            let mut chunk = vec![0u8; 65536];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => {
                        if !writing_done.load(Ordering::SeqCst) {
                            eof.store(true, Ordering::SeqCst);
                        }
                        return;
                    }
                    Ok(n) => {
                        read.fetch_add(n, Ordering::SeqCst);
                    }
                }
            }
        });
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {ANSWER}\r\n\r\n");
        wr.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            wr.write_all(&[b'a'; 32 * 1024]).await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        reader.abort();
    });
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[addr], "") + &route_toml("/", "api")),
    )
    .await;
    let tcp = TcpStream::connect(p.addrs.plain.unwrap()).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let head = format!("POST /stream HTTP/1.1\r\nhost: x\r\ncontent-length: {BODY}\r\n\r\n");
    wr.write_all(head.as_bytes()).await.unwrap();
    // The body comes after the replica has begun its answer.
    let upload = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        wr.write_all(&vec![b'b'; BODY]).await.unwrap();
        wr
    });
    let answer = read_response(&mut rd).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let body_start = find(answer.as_bytes(), b"\r\n\r\n").unwrap() + 4;
    assert_eq!(answer.len() - body_start, ANSWER);
    let _wr = upload.await.unwrap();
    assert_eq!(
        body_read.load(Ordering::SeqCst),
        BODY,
        "the whole body reached the replica"
    );
    assert!(
        !eof_early.load(Ordering::SeqCst),
        "the replica saw its request stream end while it was still answering"
    );
    p.stop().await;
}

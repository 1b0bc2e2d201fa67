//! Request framing and smuggling shapes, as raw bytes over a real socket to a real doorman
//! (plain listener) in front of a recording replica: each shape is sent whole and a byte at
//! a time, and must get the exact status, close the connection, and reach the replica
//! exactly as stated — not at all for a refused head, never as a complete request for a
//! refused body.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How the bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Whole,
    /// One write per byte (Nagle off): the codec sees the shape split at every byte it can.
    ByteByByte,
}

/// What the replica must have seen of the case's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtReplica {
    /// Nothing at all: refused on its head.
    Nothing,
    /// Possibly a head whose body was cut off (bodies stream), never a complete request.
    NoCompleteRequest,
    /// Exactly one complete request, with a body of this many bytes.
    One(u64),
}

/// The bytes of a case's request to a given path.
type Wire = Box<dyn Fn(&str) -> Vec<u8>>;

struct Case {
    name: &'static str,
    wire: Wire,
    status: u16,
    /// The JSON `error` of doorman's own answer (None: the replica's answer).
    error: Option<&'static str>,
    replica: AtReplica,
}

/// A request head for `path` with `headers` (CRLF-terminated lines), then `body`. No
/// `connection: close`: a refusal must close the connection on its own.
fn req(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut w = format!("{method} {path} HTTP/1.1\r\nhost: a\r\n{headers}\r\n").into_bytes();
    w.extend_from_slice(body);
    w
}

/// The same, asking for the close: for the cases doorman accepts.
fn req_close(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    req(
        method,
        path,
        &format!("connection: close\r\n{headers}"),
        body,
    )
}

/// Sent behind every case's bytes: answered only if doorman kept reading the connection.
const CANARY: &[u8] = b"GET /canary HTTP/1.1\r\nHost: a\r\n\r\n";

/// `wire`, then the canary.
fn with_canary(mut wire: Vec<u8>) -> Vec<u8> {
    wire.extend_from_slice(CANARY);
    wire
}

fn refused(
    name: &'static str,
    headers: &'static str,
    body: &'static [u8],
    status: u16,
    error: &'static str,
) -> Case {
    Case {
        name,
        wire: Box::new(move |p| req("POST", p, headers, body)),
        status,
        error: Some(error),
        replica: AtReplica::Nothing,
    }
}

/// A chunked POST whose body is `body`: refused (`status` 400) or accepted.
fn chunked(name: &'static str, body: Vec<u8>, accepted: Option<u64>) -> Case {
    Case {
        name,
        wire: Box::new(move |p| match accepted {
            Some(_) => req_close("POST", p, "transfer-encoding: chunked\r\n", &body),
            None => req("POST", p, "transfer-encoding: chunked\r\n", &body),
        }),
        status: if accepted.is_some() { 200 } else { 400 },
        error: match accepted {
            Some(_) => None,
            None => Some("request body could not be read"),
        },
        replica: match accepted {
            Some(n) => AtReplica::One(n),
            None => AtReplica::NoCompleteRequest,
        },
    }
}

/// The codec's limits (h1::body): a chunk-size or trailer line of 4 KiB (CRLF not counted),
/// 16 KiB of extensions and trailer section (CRLFs counted) per body.
const MAX_LINE: usize = 4096;
const MAX_OVERHEAD: usize = 16 * 1024;

/// `1;eee…` of `len` bytes, one data byte, the last chunk.
fn long_size_line(len: usize) -> Vec<u8> {
    let mut b = b"1;".to_vec();
    b.resize(len, b'e');
    b.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    b
}

/// One data byte, the last chunk, trailer lines of `total` bytes (CRLFs counted), at most
/// `line` bytes each (CRLF not counted), the empty line.
fn trailers(total: usize, line: usize) -> Vec<u8> {
    let mut b = b"1\r\nx\r\n0\r\n".to_vec();
    let mut left = total;
    while left > 0 {
        let n = left.min(line + 2);
        b.extend_from_slice(b"t:");
        b.extend(std::iter::repeat_n(b'v', n - 4));
        b.extend_from_slice(b"\r\n");
        left -= n;
    }
    b.extend_from_slice(b"\r\n");
    b
}

fn cases() -> Vec<Case> {
    vec![
        // --- Content-Length: one strict parser (message::content_length)
        refused(
            "CL and TE",
            "content-length: 5\r\ntransfer-encoding: chunked\r\n",
            b"0\r\n\r\n",
            400,
            "both Content-Length and Transfer-Encoding",
        ),
        refused(
            "duplicate differing CL",
            "content-length: 5\r\ncontent-length: 6\r\n",
            b"hello",
            400,
            "conflicting Content-Length headers",
        ),
        refused(
            "CL +5",
            "content-length: +5\r\n",
            b"hello",
            400,
            "invalid Content-Length",
        ),
        refused(
            "CL -1",
            "content-length: -1\r\n",
            b"",
            400,
            "invalid Content-Length",
        ),
        refused(
            "CL with an inner space",
            "content-length: 1 0\r\n",
            b"0123456789",
            400,
            "invalid Content-Length",
        ),
        refused(
            "CL 0x5",
            "content-length: 0x5\r\n",
            b"hello",
            400,
            "invalid Content-Length",
        ),
        refused(
            "CL as a list",
            "content-length: 5, 5\r\n",
            b"hello",
            400,
            "invalid Content-Length",
        ),
        refused(
            "CL empty",
            "content-length: \r\n",
            b"",
            400,
            "invalid Content-Length",
        ),
        refused(
            "CL over u64",
            "content-length: 18446744073709551616\r\n",
            b"hello",
            400,
            "invalid Content-Length",
        ),
        refused(
            "CL huge",
            "content-length: 99999999999999999999999999999999\r\n",
            b"hello",
            400,
            "invalid Content-Length",
        ),
        Case {
            name: "CL repeated with the same number",
            wire: Box::new(|p| {
                req_close(
                    "POST",
                    p,
                    "content-length: 5\r\ncontent-length: 05\r\n",
                    b"hello",
                )
            }),
            status: 200,
            error: None,
            replica: AtReplica::One(5),
        },
        // --- Transfer-Encoding: exactly one final chunked
        refused(
            "TE chunked,",
            "transfer-encoding: chunked,\r\n",
            b"0\r\n\r\n",
            400,
            "empty element in Transfer-Encoding",
        ),
        refused(
            "TE ,chunked",
            "transfer-encoding: ,chunked\r\n",
            b"0\r\n\r\n",
            400,
            "empty element in Transfer-Encoding",
        ),
        refused(
            "TE chunked,,",
            "transfer-encoding: chunked,,\r\n",
            b"0\r\n\r\n",
            400,
            "empty element in Transfer-Encoding",
        ),
        refused(
            "TE identity",
            "transfer-encoding: identity\r\n",
            b"0\r\n\r\n",
            400,
            "Transfer-Encoding does not end with chunked",
        ),
        refused(
            "TE chunked, chunked",
            "transfer-encoding: chunked, chunked\r\n",
            b"0\r\n\r\n",
            501,
            "unsupported Transfer-Encoding",
        ),
        // --- the head's own syntax
        refused(
            "obs-fold",
            "x-a: 1\r\n folded\r\ncontent-length: 0\r\n",
            b"",
            400,
            "malformed request head",
        ),
        refused(
            "obs-fold continuing Content-Length",
            "content-length: 5\r\n 5\r\n",
            b"hello",
            400,
            "malformed request head",
        ),
        // --- chunked bodies
        chunked(
            "chunk size 0x5",
            b"0x5\r\nhello\r\n0\r\n\r\n".to_vec(),
            None,
        ),
        chunked(
            "chunk size with a sign",
            b"+5\r\nhello\r\n0\r\n\r\n".to_vec(),
            None,
        ),
        chunked(
            "chunk-size line ended by a bare LF",
            b"5\nhello\r\n0\r\n\r\n".to_vec(),
            None,
        ),
        chunked(
            "trailer line ended by a bare LF",
            b"5\r\nhello\r\n0\r\nt: 1\n\r\n".to_vec(),
            None,
        ),
        chunked(
            "chunk-size line at its limit",
            long_size_line(MAX_LINE),
            Some(1),
        ),
        chunked(
            "chunk-size line one byte over",
            long_size_line(MAX_LINE + 1),
            None,
        ),
        chunked(
            "trailer line at its limit",
            trailers(MAX_LINE + 2, MAX_LINE),
            Some(1),
        ),
        chunked(
            "trailer line one byte over",
            trailers(MAX_LINE + 3, MAX_LINE + 1),
            None,
        ),
        chunked(
            "trailer section at its limit",
            trailers(MAX_OVERHEAD, 1000),
            Some(1),
        ),
        chunked(
            "trailer section one byte over",
            trailers(MAX_OVERHEAD + 1, 1000),
            None,
        ),
    ]
}

/// Write `wire` as `how` says while reading everything doorman sends until it closes.
async fn exchange(p: &TestProxy, wire: &[u8], how: Delivery) -> Vec<u8> {
    let tcp = TcpStream::connect(p.addrs.plain.unwrap()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        // Ends at EOF (doorman closes after each of these answers) or a reset after it.
        let _ = within("doorman to answer and close", rd.read_to_end(&mut got)).await;
        got
    });
    // A refusal may close the connection before every byte is written: stop writing then.
    match how {
        Delivery::Whole => {
            let _ = wr.write_all(wire).await;
        }
        Delivery::ByteByByte => {
            for b in wire {
                if wr.write_all(std::slice::from_ref(b)).await.is_err() {
                    break;
                }
            }
        }
    }
    within("the reader", reading).await.unwrap()
}

/// Each response in `bytes` (all framed by Content-Length): status and body.
fn responses(mut bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    // Bounded: every turn consumes at least a status line.
    while !bytes.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!(
                "not a response: {other:?} in {:?}",
                String::from_utf8_lossy(bytes)
            ),
        };
        let cl = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .map(|h| {
                std::str::from_utf8(h.value)
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .expect("doorman's answers here carry a Content-Length");
        out.push((resp.code.unwrap(), bytes[len..len + cl].to_vec()));
        bytes = &bytes[len + cl..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_and_smuggling_shapes_get_their_exact_answer() {
    let (r, p) = proxy_with_replica().await;
    let cases = cases();
    let mut checked = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for how in [Delivery::Whole, Delivery::ByteByByte] {
            let path = format!("/case-{i}-{how:?}");
            let got = exchange(&p, &with_canary((case.wire)(&path)), how).await;
            let answers = responses(&got);
            let what = format!("{} ({how:?})", case.name);
            // `exchange` read to the close (a connection left open times out there): one
            // answer, and the canary behind the case never answered.
            assert_eq!(answers.len(), 1, "{what}: one answer, then the close");
            let (status, body) = &answers[0];
            assert_eq!(
                *status,
                case.status,
                "{what}: {}",
                String::from_utf8_lossy(body)
            );
            match case.error {
                Some(error) => {
                    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
                    assert_eq!(json["error"], error, "{what}");
                }
                None => assert_eq!(
                    String::from_utf8_lossy(body),
                    format!(
                        "ok {}",
                        match case.replica {
                            AtReplica::One(n) => n,
                            _ => unreachable!(),
                        }
                    ),
                    "{what}"
                ),
            }
            checked.push((what, path, case.replica));
        }
    }
    // Checked once all are done: a request cut off mid-body is recorded by the replica
    // when its connection ends, which may come after doorman's answer.
    let seen = r.seen();
    assert!(
        seen.iter().all(|s| s.uri != "/canary"),
        "a canary behind a case reached the replica: {:?}",
        seen.iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    for (what, path, want) in checked {
        let of: Vec<_> = seen.iter().filter(|s| s.uri == path).collect();
        match want {
            AtReplica::Nothing => assert_eq!(of.len(), 0, "{what}"),
            AtReplica::NoCompleteRequest => {
                assert_eq!(of.iter().filter(|s| s.complete).count(), 0, "{what}");
                assert!(of.len() <= 1, "{what}");
            }
            AtReplica::One(n) => {
                assert_eq!(of.len(), 1, "{what}");
                assert!(of[0].complete, "{what}");
                assert_eq!(of[0].body_len, n, "{what}");
                // The replica gets one length, written by doorman.
                let lengths: Vec<_> = of[0].headers.get_all("content-length").iter().collect();
                assert!(lengths.len() <= 1, "{what}: {lengths:?}");
            }
        }
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_after_a_connect_are_never_parsed_as_requests() {
    let (r, p) = proxy_with_replica().await;
    // Methods are case-sensitive (RFC 9110 §9.1), but a tunnel-minded hop may take the
    // lower-case form for CONNECT: doorman ends the connection after either.
    for method in ["CONNECT", "connect"] {
        let wire = format!(
            "{method} a:443 HTTP/1.1\r\nHost: a:443\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        for how in [Delivery::Whole, Delivery::ByteByByte] {
            let got = exchange(&p, &with_canary(wire.clone().into_bytes()), how).await;
            let answers = responses(&got);
            // Exactly one answer, then EOF: the pipelined GET is never read as a request.
            assert_eq!(
                answers.len(),
                1,
                "{method} {how:?}: {:?}",
                String::from_utf8_lossy(&got)
            );
            if method == "CONNECT" {
                // doorman opens no tunnels: the normalise stage answers CONNECT with 405.
                assert_eq!(answers[0].0, 405, "{how:?}");
            } else {
                assert!(
                    (400..500).contains(&answers[0].0),
                    "{method} {how:?}: {}",
                    answers[0].0
                );
            }
            let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
            assert!(
                text.contains("\r\nconnection: close\r\n"),
                "{method} {how:?}: {text}"
            );
        }
        // A keep-alive CONNECT with a pipelined request behind it: the same.
        let got = exchange(
            &p,
            &with_canary(
                format!(
                    "{method} a:443 HTTP/1.1\r\nHost: a:443\r\nConnection: keep-alive\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"
                )
                .into_bytes(),
            ),
            Delivery::Whole,
        )
        .await;
        assert_eq!(
            responses(&got).len(),
            1,
            "{method} keep-alive: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert!(
        r.seen().iter().all(|s| s.uri != "/x" && s.uri != "/canary"),
        "the replica must never see /x or /canary: {:?}",
        r.seen().iter().map(|s| &s.uri).collect::<Vec<_>>()
    );
    assert_eq!(r.count(), 0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_after_a_refused_one_on_the_same_connection_is_never_forwarded() {
    // The classic smuggling payload: CL+TE with a second request hidden in the body.
    let (r, p) = proxy_with_replica().await;
    let wire = with_canary(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".to_vec());
    for how in [Delivery::Whole, Delivery::ByteByByte] {
        let got = exchange(&p, &wire, how).await;
        let answers = responses(&got);
        assert_eq!(answers.len(), 1, "{how:?}");
        assert_eq!(answers[0].0, 400, "{how:?}");
    }
    assert_eq!(r.count(), 0);
    p.stop().await;
}

/// A replica answering each connection's one request with `answers[n]` for `GET /bad/{n}`,
/// then waiting for doorman to close the connection. Counts connections accepted, and
/// those doorman closed without sending anything more (never reused).
struct RawReplica {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed_unused: Arc<AtomicUsize>,
}

impl RawReplica {
    async fn start(answers: &'static [&'static str]) -> RawReplica {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = RawReplica {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            closed_unused: Arc::default(),
        };
        let (accepted, closed) = (r.accepted.clone(), r.closed_unused.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Bounded by doorman's request head (a GET without a body).
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).into_owned();
                    let n: usize = line
                        .strip_prefix("GET /bad/")
                        .and_then(|rest| rest.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap();
                    tcp.write_all(answers[n].as_bytes()).await.unwrap();
                    if let Ok(0) = tcp.read(&mut chunk).await {
                        closed.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        r
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_response_with_bad_framing_is_a_502_and_its_connection_is_dropped() {
    // The same Content-Length and Transfer-Encoding rules as for requests.
    const ANSWERS: &[&str] = &[
        "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 0 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ];
    let r = RawReplica::start(ANSWERS).await;
    // No retry and no ejection: every answer is judged on its own, on its own connection.
    let group = "retries = 0\n[upstreams.api.health]\neject_after_failures = 0\n";
    let p = TestProxy::start(
        "",
        &(group_toml("api", &[r.addr], group) + &route_toml("/", "api")),
    )
    .await;
    for (i, answer) in ANSWERS.iter().enumerate() {
        let got = exchange(
            &p,
            format!("GET /bad/{i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
            Delivery::Whole,
        )
        .await;
        let answers = responses(&got);
        assert_eq!(answers.len(), 1, "{answer:?}");
        assert_eq!(answers[0].0, 502, "{answer:?}");
        // One connection per bad answer (no retry of it), closed by doorman unused.
        within("doorman to drop the replica's connection", async {
            while r.closed_unused.load(Ordering::SeqCst) < i + 1 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        assert_eq!(r.accepted.load(Ordering::SeqCst), i + 1, "{answer:?}");
    }
    p.stop().await;
}

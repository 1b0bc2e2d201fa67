//! The connection loop's framing over its life: pipelined requests, keep-alive and close,
//! and early answers to bodies the service did not read.

use super::*;

// ---------------------------------------------------------------------------------------
// Pipelining

/// A pipeline of requests and exactly what comes back for it.
struct Pipeline {
    name: &'static str,
    wire: &'static str,
    /// In order; `true`: the answer to a HEAD.
    answers: &'static [(bool, &'static str)],
    seen: &'static [&'static str],
}

const PIPELINES: &[Pipeline] = &[
    Pipeline {
        name: "two GETs",
        wire: "GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b?q=1 HTTP/1.1\r\nhost: x\r\n\r\n",
        answers: &[(false, "GET /a <>"), (false, "GET /b?q=1 <>")],
        seen: &["GET /a <>", "GET /b?q=1 <>"],
    },
    Pipeline {
        name: "a Content-Length body between two requests",
        wire: "GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\n\r\n",
        answers: &[
            (false, "GET /a <>"),
            (false, "POST /b <hello>"),
            (false, "GET /c <>"),
        ],
        seen: &["GET /a <>", "POST /b <hello>", "GET /c <>"],
    },
    Pipeline {
        name: "a chunked body with extensions and trailers, then a request",
        wire: "POST /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nt: 1\r\n\r\nGET /d HTTP/1.1\r\n\r\n",
        answers: &[(false, "POST /c <abcde>"), (false, "GET /d <>")],
        seen: &["POST /c <abcde>", "GET /d <>"],
    },
    Pipeline {
        // The HEAD answer has no body (and, from a `Full` the service did not size in a
        // header, no length): the next response starts right after its head.
        name: "HEAD between GETs",
        wire: "GET /a HTTP/1.1\r\n\r\nHEAD /h HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        answers: &[(false, "GET /a <>"), (true, ""), (false, "GET /b <>")],
        seen: &["GET /a <>", "HEAD /h <>", "GET /b <>"],
    },
];

async fn run_pipeline(p: &Pipeline, parts: &[&[u8]]) {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    for part in parts {
        c.send(part).await;
        Client::settle().await;
    }
    for (i, (to_head, body)) in p.answers.iter().enumerate() {
        let resp = c.read_response(*to_head).await;
        let want = if *to_head {
            "HTTP/1.1 200 OK\r\n\r\n".to_owned()
        } else {
            ok(body)
        };
        assert_eq!(resp.text, want, "{}: answer {i} of {parts:?}", p.name);
    }
    // Each request exactly once: no answer more, and the connection waits for the next.
    c.assert_quiet().await;
    assert_eq!(probe.seen(), p.seen, "{}: {parts:?}", p.name);
    assert!(!c.linger(), "{}", p.name);
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_in_one_write_are_answered_in_order_once_each() {
    for p in PIPELINES {
        run_pipeline(p, &[p.wire.as_bytes()]).await;
    }
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_split_at_every_byte_boundary_are_answered_alike() {
    for p in &PIPELINES[1..3] {
        let wire = p.wire.as_bytes();
        for at in 1..wire.len() {
            let (a, b) = wire.split_at(at);
            run_pipeline(p, &[a, b]).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pipelined_requests_dripped_a_byte_at_a_time_are_answered_alike() {
    let p = &PIPELINES[2];
    let bytes: Vec<&[u8]> = p.wire.as_bytes().chunks(1).collect();
    run_pipeline(p, &bytes).await;
}

#[tokio::test(start_paused = true)]
async fn bytes_read_before_the_connection_started_are_the_start_of_its_first_head() {
    let (svc, mut probe) = service();
    // As `sniff` hands them over: part of the first head already read.
    let mut c = start_with(b"GET /sniffed HT", svc, limits());
    c.send(b"TP/1.1\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok("GET /sniffed <>"));
    c.assert_quiet().await;
    assert_eq!(probe.seen(), ["GET /sniffed <>"]);
}

// ---------------------------------------------------------------------------------------
// Keep-alive and close

struct Verdict {
    name: &'static str,
    request: &'static str,
    answer: &'static str,
    /// Whether the connection stays open for the next request.
    keeps: bool,
}

const VERDICTS: &[Verdict] = &[
    Verdict {
        name: "HTTP/1.1 keeps the connection by default",
        request: "GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nGET /a <>",
        keeps: true,
    },
    Verdict {
        name: "HTTP/1.1 with Connection: close",
        request: "GET /a HTTP/1.1\r\nconnection: close\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nGET /a <>",
        keeps: false,
    },
    Verdict {
        name: "close among other Connection tokens",
        request: "GET /a HTTP/1.1\r\nconnection: keep-alive, Close\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nGET /a <>",
        keeps: false,
    },
    Verdict {
        name: "HTTP/1.0 closes by default",
        request: "GET /a HTTP/1.0\r\n\r\n",
        answer: "HTTP/1.0 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nGET /a <>",
        keeps: false,
    },
    Verdict {
        name: "HTTP/1.0 with Connection: keep-alive",
        request: "GET /a HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
        answer: "HTTP/1.0 200 OK\r\ncontent-length: 9\r\nconnection: keep-alive\r\n\r\nGET /a <>",
        keeps: true,
    },
    Verdict {
        name: "the service's own Connection: close",
        request: "GET /close HTTP/1.1\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 13\r\nconnection: close\r\n\r\nGET /close <>",
        keeps: false,
    },
    Verdict {
        // doorman opens no tunnels: what follows a CONNECT is never read as requests.
        name: "CONNECT ends the connection",
        request: "CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
        answer: "HTTP/1.1 200 OK\r\ncontent-length: 16\r\nconnection: close\r\n\r\nCONNECT a:443 <>",
        keeps: false,
    },
];

#[tokio::test(start_paused = true)]
async fn the_connection_ends_exactly_when_the_request_or_response_says_so() {
    for v in VERDICTS {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        // The next request is already there: the verdict decides whether it is read.
        let next = if v.request.contains("HTTP/1.0") {
            "GET /next HTTP/1.0\r\nconnection: keep-alive\r\n\r\n"
        } else {
            "GET /next HTTP/1.1\r\n\r\n"
        };
        c.send(format!("{}{next}", v.request).as_bytes()).await;
        let first = c.response().await;
        assert_eq!(first.text, v.answer, "{}", v.name);
        let date = first.date.as_deref().unwrap_or_default();
        assert!(
            date.ends_with(" GMT") && date.len() == 29,
            "{}: {date:?}",
            v.name
        );
        let first_seen = v.answer.rsplit("\r\n").next().unwrap();
        if v.keeps {
            let second = c.response().await;
            assert_eq!(second.status_line, first.status_line, "{}", v.name);
            assert_eq!(second.body, b"GET /next <>", "{}", v.name);
            c.assert_quiet().await;
            assert_eq!(probe.seen(), [first_seen, "GET /next <>"], "{}", v.name);
        } else {
            c.assert_eof().await;
            c.served().await;
            assert_eq!(probe.seen(), [first_seen], "{}", v.name);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_of_unknown_length_is_chunked_on_1_1_and_ends_at_close_on_1_0() {
    let unsized_svc = || {
        |_: Request<RequestBody>| async {
            Response::new(Unsized(Some(Bytes::from_static(b"hello"))))
        }
    };
    let mut c = start(unsized_svc(), limits());
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        c.response().await.text,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    c.assert_quiet().await;

    // HTTP/1.0 has no chunking: the close ends the body, whatever the client asked for.
    let mut c = start(unsized_svc(), limits());
    c.send(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await;
    assert_eq!(
        c.response().await.text,
        "HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nhello"
    );
    c.assert_eof().await;
    c.served().await;
}

// ---------------------------------------------------------------------------------------
// Early answers to bodies the service did not read

struct Early {
    name: &'static str,
    wire: &'static str,
    /// The response texts, in order.
    answers: &'static [&'static str],
    seen: &'static [&'static str],
    /// Whether the connection is closed after them (else a next request is served).
    closes: bool,
    /// The `linger` flag afterwards.
    linger: bool,
}

const EARLY: &[Early] = &[
    Early {
        name: "Content-Length body all buffered: discarded, the connection goes on",
        wire: "POST /early HTTP/1.1\r\ncontent-length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n",
        answers: &["HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\nearly"],
        seen: &["POST /early unread", "GET /b <>"],
        closes: false,
        linger: false,
    },
    Early {
        name: "chunked body all buffered, trailers too: discarded, the connection goes on",
        wire: "POST /early HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx: y\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
        answers: &["HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\nearly"],
        seen: &["POST /early unread", "GET /b <>"],
        closes: false,
        linger: false,
    },
    Early {
        // A request inside the body is body, never a request.
        name: "a body that looks like a request is discarded as body",
        wire: "POST /early HTTP/1.1\r\ncontent-length: 24\r\n\r\nGET /smuggled HTTP/1.1\r\nGET /b HTTP/1.1\r\n\r\n",
        answers: &["HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\n\r\nearly"],
        seen: &["POST /early unread", "GET /b <>"],
        closes: false,
        linger: false,
    },
    Early {
        name: "Content-Length body still on the wire: close, lingering",
        wire: "POST /early HTTP/1.1\r\ncontent-length: 5\r\n\r\nhe",
        answers: &[
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
        ],
        seen: &["POST /early unread"],
        closes: true,
        linger: true,
    },
    Early {
        name: "chunked body without its last chunk: close, lingering",
        wire: "POST /early HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        answers: &[
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
        ],
        seen: &["POST /early unread"],
        closes: true,
        linger: true,
    },
    Early {
        // The client waits for a 100 that never comes: no body follows, and none is read.
        name: "Expect: 100-continue never wanted: no 100, close, lingering",
        wire: "POST /early HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n",
        answers: &[
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 5\r\nconnection: close\r\n\r\nearly",
        ],
        seen: &["POST /early unread"],
        closes: true,
        linger: true,
    },
];

#[tokio::test(start_paused = true)]
async fn an_early_answer_discards_a_buffered_body_and_closes_on_one_still_arriving() {
    for e in EARLY {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        c.send(e.wire.as_bytes()).await;
        for (i, want) in e.answers.iter().enumerate() {
            assert_eq!(c.response().await.text, *want, "{}: answer {i}", e.name);
        }
        if e.closes {
            c.assert_eof().await;
            c.served().await;
        } else {
            assert_eq!(c.response().await.text, ok("GET /b <>"), "{}", e.name);
            c.assert_quiet().await;
        }
        assert_eq!(probe.seen(), e.seen, "{}", e.name);
        assert_eq!(c.linger(), e.linger, "{}: linger", e.name);
    }
}

#[tokio::test(start_paused = true)]
async fn expect_100_continue_is_answered_when_the_service_reads_the_body() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(b"PUT /up HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n")
        .await;
    let cont = c.response().await;
    assert_eq!(cont.text, "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(cont.date, None);
    c.send(b"hello").await;
    assert_eq!(c.response().await.text, ok("PUT /up <hello>"));
    c.assert_quiet().await;
    assert_eq!(probe.seen(), ["PUT /up <hello>"]);
    assert!(!c.linger());
}

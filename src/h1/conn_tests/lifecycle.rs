//! The connection loop's turns: upgrades, the client's half-close, refused heads, the head
//! timeout and graceful shutdown.

use super::*;

// ---------------------------------------------------------------------------------------
// Upgrades

#[tokio::test(start_paused = true)]
async fn a_101_hands_the_connection_over_with_the_bytes_behind_the_head() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    // "early" is sent right behind the head, before any 101: it must reach the tunnel.
    c.send(b"GET /upgrade HTTP/1.1\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nearly")
        .await;
    let switched = c.response().await;
    assert_eq!(
        switched.text,
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n"
    );
    assert!(switched.date.is_some());
    // The connection's own future ends at the handoff; the IO lives on in the tunnel.
    c.served().await;
    assert_eq!(probe.next().await, "GET /upgrade upgrading");
    assert_eq!(probe.next().await, "tunnel read \"early\"");
    assert_eq!(c.take(5).await, b"early");
    // Both ways, after the handoff: what looks like a request is tunnel data now.
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.take(18).await, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        probe.next().await,
        "tunnel read \"GET / HTTP/1.1\\r\\n\\r\\n\""
    );
    // The client's close ends the tunnel, which closes its side.
    c.io.shutdown().await.unwrap();
    assert_eq!(probe.next().await, "tunnel closed");
    c.assert_eof().await;
    // The tunnel's own close must not linger.
    assert!(!c.linger());
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_request_answered_otherwise_stays_http() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(
        b"GET /no-upgrade HTTP/1.1\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(c.response().await.text, ok("GET /no-upgrade <>"));
    assert_eq!(c.response().await.text, ok("GET /b <>"));
    c.assert_quiet().await;
    let mut seen = probe.seen();
    seen.sort();
    assert_eq!(
        seen,
        [
            "GET /b <>",
            "GET /no-upgrade <>",
            "the connection was not upgraded"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn requests_that_cannot_upgrade_carry_no_on_upgrade() {
    // HTTP/1.0, or a body (whose bytes would go down the tunnel): no OnUpgrade, so the
    // service cannot answer 101 with a handoff.
    for (wire, seen) in [
        (
            "GET /upgrade HTTP/1.0\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            "GET /upgrade without OnUpgrade",
        ),
        (
            "POST /upgrade HTTP/1.1\r\nupgrade: echo\r\ncontent-length: 2\r\n\r\nhi",
            "POST /upgrade without OnUpgrade",
        ),
    ] {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        c.send(wire.as_bytes()).await;
        let resp = c.response().await;
        assert_eq!(&resp.status_line[9..], "200 OK", "{wire:?}");
        assert_eq!(resp.body, b"no upgrade asked", "{wire:?}");
        assert_eq!(probe.seen(), [seen]);
    }
}

// ---------------------------------------------------------------------------------------
// Half-close: the client shuts its write side down

struct HalfClose {
    name: &'static str,
    wire: &'static str,
    /// What arrives before the end of the connection.
    answer: Option<&'static str>,
    seen: &'static [&'static str],
    linger: bool,
}

const HALF_CLOSES: &[HalfClose] = &[
    HalfClose {
        name: "after a complete request answered at once: the answer, then the end",
        wire: "GET /a HTTP/1.1\r\n\r\n",
        answer: Some("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nGET /a <>"),
        seen: &["GET /a <>"],
        linger: false,
    },
    HalfClose {
        name: "after a complete request with its body",
        wire: "POST /a HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi",
        answer: Some("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\nPOST /a <hi>"),
        seen: &["POST /a <hi>"],
        linger: false,
    },
    HalfClose {
        // nginx's default too: a client that closes while served has left (a 499).
        name: "after a complete request not answered yet: abandoned, no answer",
        wire: "GET /wait HTTP/1.1\r\n\r\n",
        answer: None,
        seen: &["GET /wait waiting", "GET /wait abandoned"],
        linger: false,
    },
    HalfClose {
        name: "inside a body: the service sees it incomplete, its answer closes",
        wire: "POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhe",
        answer: Some(
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 59\r\nconnection: close\r\n\r\nthe client closed the connection before the end of the body",
        ),
        seen: &["POST /a failed: the client closed the connection before the end of the body"],
        linger: true,
    },
    HalfClose {
        name: "inside a head: closed without an answer, lingering on the unread bytes",
        wire: "GET /a HTTP/1.1\r\nhost:",
        answer: None,
        seen: &[],
        linger: true,
    },
    HalfClose {
        name: "before any byte: closed quietly",
        wire: "",
        answer: None,
        seen: &[],
        linger: false,
    },
];

#[tokio::test(start_paused = true)]
async fn a_client_half_close_ends_the_connection_after_what_it_completed() {
    for h in HALF_CLOSES {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        c.send(h.wire.as_bytes()).await;
        c.io.shutdown().await.unwrap();
        if let Some(answer) = h.answer {
            assert_eq!(c.response().await.text, answer, "{}", h.name);
        }
        c.assert_eof().await;
        c.served().await;
        assert_eq!(probe.seen(), h.seen, "{}", h.name);
        assert_eq!(c.linger(), h.linger, "{}: linger", h.name);
    }
}

// ---------------------------------------------------------------------------------------
// Refused heads

struct Refusal {
    name: &'static str,
    wire: String,
    status_line: &'static str,
    /// A valid request is sent right behind it (and must never be served).
    follow: bool,
}

fn refusals() -> Vec<Refusal> {
    let big = "x".repeat(1100);
    vec![
        Refusal {
            name: "not a request line",
            wire: "GARBAGE\r\n\r\n".into(),
            status_line: "HTTP/1.1 400 Bad Request",

            follow: true,
        },
        Refusal {
            name: "HTTP/2.0 in an HTTP/1 request line",
            wire: "GET / HTTP/2.0\r\n\r\n".into(),
            status_line: "HTTP/1.1 400 Bad Request",

            follow: true,
        },
        Refusal {
            name: "Content-Length and Transfer-Encoding",
            wire: "POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\nabc"
                .into(),
            status_line: "HTTP/1.1 400 Bad Request",

            follow: true,
        },
        Refusal {
            name: "a coding besides chunked",
            wire: "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n".into(),
            status_line: "HTTP/1.1 501 Not Implemented",

            follow: true,
        },
        Refusal {
            name: "a complete head over max_head",
            wire: format!("GET / HTTP/1.1\r\nx: {big}\r\n\r\n"),
            status_line: "HTTP/1.1 431 Request Header Fields Too Large",
            follow: true,
        },
        Refusal {
            // Refused as soon as it is too long, not when (if ever) it ends.
            name: "an unfinished head already over max_head",
            wire: format!("GET /{big}"),
            status_line: "HTTP/1.1 431 Request Header Fields Too Large",
            follow: false,
        },
    ]
}

#[tokio::test(start_paused = true)]
async fn a_refused_head_gets_its_status_and_the_connection_closes() {
    for r in refusals() {
        let (svc, mut probe) = service();
        let mut c = start(svc, limits());
        let after = if r.follow {
            "GET /after HTTP/1.1\r\n\r\n"
        } else {
            ""
        };
        c.send(format!("{}{after}", r.wire).as_bytes()).await;
        let resp = c.response().await;
        assert_eq!(resp.status_line, r.status_line, "{}", r.name);
        assert_eq!(resp.header("connection"), Some("close"), "{}", r.name);
        c.assert_eof().await;
        c.served().await;
        assert_eq!(probe.seen(), Vec::<String>::new(), "{}", r.name);
        // The client may still be sending: the close must not reset the answer.
        assert!(c.linger(), "{}: linger", r.name);
    }
}

#[tokio::test(start_paused = true)]
async fn a_refused_head_behind_a_good_one_is_refused_after_its_answer() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(b"GET /a HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok("GET /a <>"));
    let refused = c.response().await;
    assert_eq!(refused.status_line, "HTTP/1.1 400 Bad Request");
    assert_eq!(refused.header("connection"), Some("close"));
    c.assert_eof().await;
    assert_eq!(probe.seen(), ["GET /a <>"]);
}

// ---------------------------------------------------------------------------------------
// header_timeout

#[tokio::test(start_paused = true)]
async fn a_head_not_complete_within_header_timeout_ends_the_connection_without_an_answer() {
    // (name, bytes sent at once, linger afterwards)
    for (name, sent, linger) in [
        ("nothing sent", "", false),
        ("a partial head", "GET /a HTTP/1.1\r\nhost: x\r\n", true),
    ] {
        let (svc, mut probe) = service();
        let t0 = Instant::now();
        let mut c = start(svc, limits());
        c.send(sent.as_bytes()).await;
        // Not a moment before the timeout...
        let early = timeout(
            HEADER_TIMEOUT - Duration::from_millis(1),
            c.io.read_buf(&mut c.buf),
        )
        .await;
        assert!(early.is_err(), "{name}: {early:?}");
        // ...and then the end, with no 408 or anything else.
        c.assert_eof().await;
        assert_eq!(t0.elapsed(), HEADER_TIMEOUT, "{name}");
        c.served().await;
        assert_eq!(probe.seen(), Vec::<String>::new(), "{name}");
        assert_eq!(c.linger(), linger, "{name}: linger");
    }
}

#[tokio::test(start_paused = true)]
async fn header_timeout_counts_from_the_end_of_the_previous_response_not_per_byte() {
    let (svc, mut probe) = service();
    let t0 = Instant::now();
    let mut c = start(svc, limits());
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.send(b"GET /a HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok("GET /a <>"));
    // A client dripping its next head a byte a second is still cut off at the deadline:
    // bytes arriving do not extend it.
    let drip = b"GET /b HTTP/1.1\r\n";
    for &byte in &drip[..9] {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.send(&[byte]).await;
    }
    c.assert_eof().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(4) + HEADER_TIMEOUT);
    c.served().await;
    assert_eq!(probe.seen(), ["GET /a <>"]);
    assert!(c.linger(), "closed on a partial head");
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_closes_an_idle_connection_at_once() {
    for served_before in [false, true] {
        let (svc, mut probe) = service();
        let t0 = Instant::now();
        let mut c = start(svc, limits());
        if served_before {
            c.send(b"GET /a HTTP/1.1\r\n\r\n").await;
            assert_eq!(c.response().await.text, ok("GET /a <>"));
        }
        c.assert_quiet().await;
        c.graceful_shutdown();
        c.assert_eof().await;
        // At once: not at the head timeout.
        assert_eq!(t0.elapsed(), QUIET, "served before: {served_before}");
        c.served().await;
        let want: &[&str] = if served_before { &["GET /a <>"] } else { &[] };
        assert_eq!(probe.seen(), want);
        assert!(!c.linger());
    }
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_lets_the_request_in_flight_finish_with_connection_close() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    // A request pipelined behind the one in flight is never served.
    c.send(b"GET /wait HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
        .await;
    assert_eq!(probe.next().await, "GET /wait waiting");
    c.graceful_shutdown();
    c.assert_quiet().await;
    probe.gate.add_permits(1);
    assert_eq!(c.response().await.text, ok_close("GET /wait <>"));
    c.assert_eof().await;
    c.served().await;
    assert_eq!(probe.seen(), ["GET /wait <>"]);
    // The pipelined request was left unread: the close lingers.
    assert!(c.linger());
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_waits_for_a_head_already_begun_and_answers_it_with_close() {
    let (svc, mut probe) = service();
    let mut c = start(svc, limits());
    c.send(b"GET /a HTTP/1.1\r\n").await;
    Client::settle().await;
    c.graceful_shutdown();
    c.assert_quiet().await;
    c.send(b"host: x\r\n\r\n").await;
    assert_eq!(c.response().await.text, ok_close("GET /a <>"));
    c.assert_eof().await;
    c.served().await;
    assert_eq!(probe.seen(), ["GET /a <>"]);
}

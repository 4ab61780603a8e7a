//! Strict framing through the proxy (DESIGN §3 rules 1-5 and 10): malformed responses
//! from origins, responses nobody asked for, and request bodies in awkward shapes.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::sync::{mpsc, Arc, Mutex};

use support::*;

/// A complete, valid response: if any of it reaches a client, the client's next
/// response has been poisoned.
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON";

/// An origin answering `/bad` with `bad` (then closing) and anything else `200 <target>`.
fn origin_answering_bad_with(bad: &'static [u8]) -> Origin {
    Origin::spawn(move |req| {
        if req.target == "/bad" {
            Reply::close(bad)
        } else {
            Reply::keep(ok(&req.target))
        }
    })
}

/// Asserts that every response in `cases` is answered 502 http_protocol_error, and
/// that the client connection still serves a clean next request (or is closed).
fn assert_each_is_502(cases: &[(&str, &'static [u8])]) {
    for &(what, bad) in cases {
        let origin = origin_answering_bad_with(bad);
        let proxy = spawn_proxy(&[]);
        proxy.route("alpha.test", &origin);

        let mut client = proxy.connect();
        client.send(&get("http://alpha.test/bad", ""));
        let resp = client.read_response();
        assert_eq!(resp.status, 502, "{what}: {}", resp.text());
        resp.assert_error(502, "http_protocol_error");
        assert!(!has_bare_lf(&resp.raw_head), "{what}: bare LF passed on");
        assert!(
            !resp.text().contains("ok") && !resp.text().contains("POISON"),
            "{what}: the bad response's body reached the client: {:?}",
            resp.text()
        );
        // Whatever the proxy does with the connection, nothing of the bad response follows.
        if client.try_send(&get("http://alpha.test/next", "")).is_ok() {
            match client.try_read_response() {
                Ok(next) => {
                    assert_eq!(next.status, 200, "{what}: next response");
                    assert_eq!(next.text(), "/next", "{what}: next response");
                }
                // Closed after the 502: fine. A timeout is not.
                Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{what}: {e}"),
            }
        }
    }
}

#[test]
fn malformed_response_content_length_is_502() {
    assert_each_is_502(&[
        (
            "duplicate equal Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "duplicate different Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 6\r\n\r\nokPOISON",
        ),
        (
            "Content-Length list",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok",
        ),
        (
            "signed Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        ),
        (
            "negative Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok",
        ),
        (
            "empty Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nok",
        ),
        (
            "Content-Length with a leading zero",
            b"HTTP/1.1 200 OK\r\nContent-Length: 02\r\n\r\nok",
        ),
        (
            "hex Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x2\r\n\r\nok",
        ),
        (
            "overflowing Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\nok",
        ),
    ]);
}

#[test]
fn malformed_response_transfer_encoding_is_502() {
    assert_each_is_502(&[
        (
            "trailing comma",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "leading comma",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "two TE headers",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "unknown coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: x-smuggle, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "chunked twice",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
    ]);
}

#[test]
fn malformed_response_head_is_502() {
    assert_each_is_502(&[
        (
            "obs-fold",
            b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "bare LF in a field line",
            b"HTTP/1.1 200 OK\r\nX-A: a\nX-B: b\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "bare LF line ends throughout",
            b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        ),
        (
            "NUL in a field value",
            b"HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "bare CR in a field value",
            b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "space before the colon",
            b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nok",
        ),
    ]);
}

#[test]
fn unsolicited_101_is_502_and_its_bytes_never_reach_the_client() {
    assert_each_is_502(&[(
        "101 without an Upgrade request",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
    )]);
}

const CHUNKED_GZIP_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
const CLOSE_DELIMITED: &[u8] = b"\x1f\x8bnot really gzip, read until the origin closes";

fn chunked_then_gzip_origin() -> Origin {
    Origin::spawn(|_| Reply::close([CHUNKED_GZIP_HEAD, CLOSE_DELIMITED].concat()))
}

#[test]
fn chunked_not_last_in_a_response_is_never_framed_as_chunked() {
    // Either answer is safe: 502, or the body relayed until close and the client closed.
    let origin = chunked_then_gzip_origin();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    match head.start[1].as_str() {
        "502" => {
            let status = head.headers.get("proxy-status").unwrap_or_default();
            assert!(status.contains("error=http_protocol_error"), "{status}");
        }
        "200" => {
            let rest = client
                .read_to_end()
                .unwrap_or_else(|e| panic!("a close-delimited body must end with a close: {e}"));
            assert_eq!(rest, CLOSE_DELIMITED);
        }
        other => panic!("unexpected status {other}"),
    }
}

#[test]
fn chunked_not_last_in_a_response_is_read_until_close() {
    // RFC 9112 §6.3 rule 4: TE present in a response, chunked not final → the body
    // runs until the server closes. Relayed as is, then the client connection closes.
    let origin = chunked_then_gzip_origin();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(
        head.start[1],
        "200",
        "{}",
        String::from_utf8_lossy(&head.raw)
    );
    assert_eq!(head.headers.get("transfer-encoding"), Some("chunked, gzip"));
    let rest = client.read_to_end().unwrap();
    assert_eq!(rest, CLOSE_DELIMITED);
}

#[test]
fn bad_chunk_size_mid_body_truncates_then_closes() {
    const GOOD: &[u8] = b"5\r\nhello\r\n";
    let (client_has_prefix_tx, client_has_prefix_rx) = mpsc::channel::<()>();
    let client_has_prefix_rx = Mutex::new(client_has_prefix_rx);
    let (origin_closed_tx, origin_closed_rx) = mpsc::channel::<()>();
    let origin_closed_tx = Mutex::new(origin_closed_tx);
    let origin = Origin::raw(move |mut conn| {
        if conn.read_request().is_none() {
            return;
        }
        conn.send(
            &[
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                GOOD,
            ]
            .concat(),
        );
        client_has_prefix_rx
            .lock()
            .unwrap()
            .recv_timeout(WAIT)
            .unwrap();
        conn.send(b"zz\r\nworld\r\n0\r\n\r\n");
        // Keep the connection open: only the proxy may end it.
        assert!(conn.read_request().is_none());
        origin_closed_tx.lock().unwrap().send(()).unwrap();
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(head.start[1], "200");
    assert_eq!(client.read_exact_vec(GOOD.len()).unwrap(), GOOD);
    client_has_prefix_tx.send(()).unwrap();
    // The head is out, so no 502 is possible: the response is cut short by a close.
    client.expect_eof();
    origin_closed_rx
        .recv_timeout(WAIT)
        .expect("the proxy closed the upstream connection");
}

/// An origin that answers `/first` (any method) with `first` and, after `go`, sends
/// `late` on the same connection; every other request gets `200 <target>`.
fn origin_with_late_bytes(
    first: &'static [u8],
    late: &'static [u8],
) -> (Origin, mpsc::Sender<()>, mpsc::Receiver<()>) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let hooks = Mutex::new((go_rx, sent_tx));
    let origin = Origin::raw(move |mut conn| {
        while let Some(req) = conn.read_request() {
            if req.target == "/first" {
                conn.send(first);
                let hooks = hooks.lock().unwrap();
                hooks.0.recv_timeout(WAIT).unwrap();
                conn.send(late);
                hooks.1.send(()).unwrap();
            } else {
                conn.send(&ok(&req.target));
            }
        }
    });
    (origin, go_tx, sent_rx)
}

/// Sends `method /first`, expects `status` with `body`, then a GET for `/second` on
/// the same client connection must get `200 /second`.
fn first_then_second(proxy: &TestProxy, method: &str, status: u16, body: &str) -> Wire {
    let mut client = proxy.connect();
    client.send(
        format!("{method} http://alpha.test/first HTTP/1.1\r\nHost: alpha.test\r\n\r\n").as_bytes(),
    );
    let first = client.read_response_to(method);
    assert_eq!(first.status, status);
    assert_eq!(first.text(), body);
    client
}

#[track_caller]
fn assert_second_is_clean(client: &mut Wire) {
    client.send(&get("http://alpha.test/second", ""));
    let second = client.read_response();
    assert_eq!(second.status, 200, "second response: {}", second.text());
    assert_eq!(second.text(), "/second", "the second response was poisoned");
}

#[test]
fn body_on_a_bodiless_response_is_never_passed_on() {
    // The body comes in the same write as the head (HEAD, 204, 304).
    let cases: [(&str, u16, &'static [u8]); 3] = [
        (
            "HEAD",
            200,
            b"HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
        ),
        (
            "GET",
            204,
            b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
        ),
        (
            "GET",
            304,
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 44\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
        ),
    ];
    for (method, status, first) in cases {
        let origin = Origin::spawn(move |req| {
            Reply::keep(if req.target == "/first" {
                first.to_vec()
            } else {
                ok(&req.target)
            })
        });
        let proxy = spawn_proxy(&[]);
        proxy.route("alpha.test", &origin);
        let mut client = first_then_second(&proxy, method, status, "");
        assert_second_is_clean(&mut client);
        assert_eq!(
            origin.accepted(),
            2,
            "{method} {status}: the upstream connection with stray bytes was reused"
        );
    }
}

#[test]
fn bytes_after_a_complete_response_are_never_passed_on() {
    let origin = Origin::spawn(|req| {
        Reply::keep(if req.target == "/first" {
            [ok("first").as_slice(), POISON].concat()
        } else {
            ok(&req.target)
        })
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = first_then_second(&proxy, "GET", 200, "first");
    assert_second_is_clean(&mut client);
    assert_eq!(
        origin.accepted(),
        2,
        "the upstream connection with stray bytes was reused"
    );
}

#[test]
fn late_body_on_a_head_response_is_never_passed_on() {
    let (origin, go, sent) = origin_with_late_bytes(
        b"HTTP/1.1 200 OK\r\nContent-Length: 44\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
    );
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = first_then_second(&proxy, "HEAD", 200, "");
    // The body arrives only after the proxy has finished the HEAD exchange.
    go.send(()).unwrap();
    sent.recv_timeout(WAIT).unwrap();
    assert_second_is_clean(&mut client);
}

#[test]
fn late_bytes_after_a_complete_response_are_never_passed_on() {
    let (origin, go, sent) =
        origin_with_late_bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst", POISON);
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = first_then_second(&proxy, "GET", 200, "first");
    go.send(()).unwrap();
    sent.recv_timeout(WAIT).unwrap();
    assert_second_is_clean(&mut client);
}

// === request side ===

/// An origin echoing `<target> <body>` for every request.
fn echo_body_origin() -> Origin {
    Origin::spawn(|req| {
        Reply::keep(ok(format!(
            "{} {}",
            req.target,
            String::from_utf8_lossy(&req.body.data)
        )))
    })
}

#[test]
fn pipelined_requests_with_bodies_in_one_write_each_get_exactly_their_body() {
    let origin = echo_body_origin();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/a HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 5\r\n\r\nhello\
          POST http://alpha.test/b HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n\
          POST http://alpha.test/c HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 1\r\n\r\nc\
          PUT http://alpha.test/d HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 39\r\n\r\n\
          GET http://alpha.test/smuggled HTTP/1.1\
          GET http://alpha.test/e HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    );
    for expected in [
        "/a hello",
        "/b abcdefg",
        "/c c",
        "/d GET http://alpha.test/smuggled HTTP/1.1",
        "/e ",
    ] {
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), expected);
    }
    let requests = origin.requests();
    let targets: Vec<&str> = requests.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/a", "/b", "/c", "/d", "/e"]);
    assert_eq!(
        requests[1].body.raw,
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nX-Trailer: t\r\n\r\n"
    );
    assert_eq!(requests[2].body.data, b"c");
}

#[test]
fn content_length_zero_request_keeps_the_connection_alive() {
    // Pipelined so that a spurious close also loses the request behind it. The race
    // is lost only sometimes, so try enough times to see it.
    let origin = echo_body_origin();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    for i in 0..50 {
        let mut client = proxy.connect();
        client.send(
            b"POST http://alpha.test/empty HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 0\r\n\r\n\
              GET http://alpha.test/next HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        );
        let first = client.read_response();
        assert_eq!(first.text(), "/empty ");
        assert!(
            !first.headers.has_token("connection", "close"),
            "attempt {i}: {}",
            String::from_utf8_lossy(&first.raw_head)
        );
        assert_eq!(client.read_response().text(), "/next ");
    }
}

#[test]
fn request_split_into_one_byte_writes_is_forwarded_whole() {
    let origin = echo_body_origin();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let body = pattern(300)
        .iter()
        .map(|b| b'a' + b % 26)
        .collect::<Vec<u8>>();
    let mut length_framed = format!(
        "POST http://alpha.test/length HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    length_framed.extend_from_slice(&body);
    let chunked = b"POST http://alpha.test/chunked HTTP/1.1\r\nHost: alpha.test\r\n\
                    Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\na\r\n0123456789\r\n0\r\n\r\n";

    let mut client = proxy.connect();
    for byte in length_framed.iter().chain(chunked.iter()) {
        client.send(&[*byte]);
    }
    let first = client.read_response();
    assert_eq!(
        first.text(),
        format!("/length {}", String::from_utf8_lossy(&body))
    );
    let second = client.read_response();
    assert_eq!(second.text(), "/chunked x0123456789");
    assert_eq!(origin.requests().len(), 2);
}

#[test]
fn early_417_never_turns_the_unsent_body_into_a_request() {
    // A naive origin: it answers the POST at once without reading its body, keeps the
    // connection and would take the body for its next request.
    let seen: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let (ended_tx, ended_rx) = mpsc::channel::<usize>();
    let ended_tx = Mutex::new(ended_tx);
    let origin = {
        let seen = seen.clone();
        Origin::raw(move |mut conn| {
            while let Some(head) = conn.read_head() {
                let target = head.start[1].clone();
                seen.lock().unwrap().push((conn.index, target.clone()));
                if head.start[0] == "POST" {
                    conn.send(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n");
                } else {
                    conn.send(&ok(&target));
                }
            }
            let _ = ended_tx.lock().unwrap().send(conn.index);
        })
    };
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let smuggled = "GET http://alpha.test/smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n";
    let mut client = proxy.connect();
    client.send(
        format!(
            "POST http://alpha.test/upload HTTP/1.1\r\nHost: alpha.test\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
    );
    let refused = client.read_response();
    assert_eq!(refused.status, 417);

    // The client sends its body anyway, then one more request (the proxy may have closed).
    let after =
        "GET http://alpha.test/after HTTP/1.1\r\nHost: alpha.test\r\nConnection: close\r\n\r\n";
    let _ = client.try_send(format!("{smuggled}{after}").as_bytes());
    let rest = client.read_to_end().unwrap();
    if !rest.is_empty() {
        // The proxy drained the body and kept the connection: only /after is answered.
        let (resp, more) = parse_response(rest);
        assert_eq!(resp.text(), "/after", "the body was taken for a request");
        assert!(more.is_empty(), "{:?}", String::from_utf8_lossy(&more));
    }
    // The first upstream connection must end without the body read as a request on it.
    loop {
        let index = ended_rx
            .recv_timeout(WAIT)
            .expect("the proxy closed the upstream connection of the 417");
        if index == 0 {
            break;
        }
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|(_, target)| target != "/smuggled"),
        "the unsent body reached the origin as a request: {seen:?}"
    );
}

#[test]
fn http10_connect_without_headers_opens_a_tunnel() {
    let origin = Origin::raw(|mut conn| {
        let mut line = conn.wire.read_line().unwrap();
        line.extend_from_slice(b" (echoed)\r\n");
        conn.send(&line);
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(b"CONNECT alpha.test:443 HTTP/1.0\r\n\r\n");
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert!(head.start[0].starts_with("HTTP/1."), "{:?}", head.start);
    assert_eq!(
        head.start[1],
        "200",
        "{}",
        String::from_utf8_lossy(&head.raw)
    );
    client.send(b"ping through the tunnel\r\n");
    assert_eq!(
        client.read_line().unwrap(),
        b"ping through the tunnel (echoed)"
    );
}

#[test]
fn transfer_encoding_on_an_http10_request_is_400() {
    let origin = echo_body_origin();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let (resp, rest) = parse_response(raw_exchange(
        proxy.addr,
        b"POST http://alpha.test/ HTTP/1.0\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    ));
    resp.assert_error(400, "http_request_error");
    assert!(rest.is_empty(), "bytes after the 400: {rest:?}");
    assert!(origin.requests().is_empty(), "forwarded anyway");
}

/// A chunked body whose framing is broken in the bytes that came with the head is
/// refused before any upstream is contacted: the origin never sees the request.
#[test]
fn malformed_chunked_body_buffered_with_the_head_never_reaches_the_origin() {
    let origin = Origin::fixed("must not be reached");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let cases: &[(&str, &str)] = &[
        (
            "size over 16 hex digits",
            "11111111111111111\r\nx\r\n0\r\n\r\n",
        ),
        ("negative size", "-5\r\nhello\r\n0\r\n\r\n"),
        ("0x prefix", "0x10\r\n0123456789abcdef\r\n0\r\n\r\n"),
        ("bare LF after the size", "5\nhello\r\n0\r\n\r\n"),
        ("data without its CRLF", "5\r\nhelloXX0\r\n\r\n"),
        (
            "last chunk without its final CRLF, a request behind it",
            "0\r\nGET http://alpha.test/ HTTP/1.1\r\n\r\n",
        ),
        ("last chunk with a bare CR at the end", "0\r\n\rX"),
    ];
    for (what, body) in cases {
        let mut client = proxy.connect();
        let mut bytes = b"POST http://alpha.test/upload HTTP/1.1\r\nHost: alpha.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        bytes.extend_from_slice(body.as_bytes());
        client.send(&bytes);
        let resp = client.read_response();
        assert_eq!(resp.status, 400, "{what}");
        assert_eq!(origin.accepted(), 0, "{what}: the origin was contacted");
    }
}

/// A 101 must name the protocol it switches to, one the client asked for: else 502,
/// and nothing after it reaches the client.
#[test]
fn a_101_to_no_protocol_or_another_one_is_502() {
    for (what, reply) in [
        (
            "no Upgrade",
            &b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\nRAW"[..],
        ),
        (
            "another protocol",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: foo/1\r\n\r\nRAW",
        ),
    ] {
        let origin = Origin::spawn(move |_| Reply::keep(reply));
        let proxy = spawn_proxy(&[]);
        proxy.route("alpha.test", &origin);
        let bytes = raw_exchange(
            proxy.addr,
            b"GET http://alpha.test/ws HTTP/1.1\r\nHost: alpha.test\r\nConnection: upgrade\r\n\
              Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        );
        let (resp, rest) = parse_response(bytes);
        resp.assert_error(502, "http_protocol_error");
        assert!(!String::from_utf8_lossy(&rest).contains("RAW"), "{what}");
    }
}

/// `Upgrade: h2c` is not an upgrade through this proxy: the request goes on as plain
/// HTTP/1.1, without the Upgrade header, so no raw HTTP/2 can follow past the plugins.
#[test]
fn an_h2c_upgrade_is_forwarded_as_plain_http11() {
    let origin = Origin::fixed("plain");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let resp = request(
        proxy.addr,
        b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    );
    assert_eq!((resp.status, resp.text().as_str()), (200, "plain"));
    let seen = origin.next_request();
    assert!(!seen.headers.has("upgrade"), "{:?}", seen.headers);
    assert!(!seen.headers.has("http2-settings"), "{:?}", seen.headers);
}

// === HTTP/1.0 clients get no Transfer-Encoding (RFC 9112 §6.1) ===

/// Sends `request` (an HTTP/1.0 request for alpha.test) and returns everything the
/// proxy answers until it closes.
fn answer_to_http10(origin: &Origin, request: &str) -> Vec<u8> {
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", origin);
    let mut client = proxy.connect();
    client.send(request.as_bytes());
    client.read_to_end().unwrap()
}

#[test]
fn an_http10_client_never_gets_transfer_encoding() {
    // A bodiless response (HEAD, 304) keeps no Transfer-Encoding for a 1.0 client.
    let origin = Origin::spawn(|req| {
        let status = if req.method == "HEAD" {
            "200 OK"
        } else {
            "304 Not Modified"
        };
        Reply::close(format!(
            "HTTP/1.1 {status}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
        ))
    });
    for method in ["HEAD", "GET"] {
        let answer = answer_to_http10(
            &origin,
            &format!("{method} http://alpha.test/ HTTP/1.0\r\n\r\n"),
        );
        let head = parse_head(&answer);
        assert!(
            !head.headers.has("transfer-encoding"),
            "{method}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // A chunked body is de-chunked, and the trailers it announced are not passed on.
    let origin = Origin::spawn(|_| {
        Reply::close(
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
               5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"[..],
        )
    });
    let answer = answer_to_http10(&origin, "GET http://alpha.test/ HTTP/1.0\r\n\r\n");
    let head = parse_head(&answer);
    assert!(!head.headers.has("transfer-encoding"));
    assert!(!head.headers.has("trailer"));
    assert!(
        answer.ends_with(b"\r\n\r\nhello"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[test]
fn a_transfer_coding_that_cannot_be_undone_is_502_for_an_http10_client() {
    // The proxy undoes chunked for a 1.0 client, but not gzip: passing the body on
    // without its coding would present gzip as the content itself.
    for te in ["gzip, chunked", "gzip"] {
        let body: &[u8] = if te.ends_with("chunked") {
            b"4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"
        } else {
            b"\x1f\x8b\x08\x00"
        };
        let head = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
        let reply = [head.as_bytes(), body].concat();
        let origin = Origin::spawn(move |_| Reply::close(reply.clone()));
        let answer = answer_to_http10(&origin, "GET http://alpha.test/ HTTP/1.0\r\n\r\n");
        let (resp, _) = parse_response(answer);
        resp.assert_error(502, "http_protocol_error");
        // An HTTP/1.1 client gets it as the origin sent it.
        let proxy = spawn_proxy(&[]);
        proxy.route("alpha.test", &origin);
        let mut client = proxy.connect();
        client.send(&get("http://alpha.test/", ""));
        let head = parse_head(&client.read_head().unwrap().unwrap());
        assert_eq!(head.start[1], "200");
        assert_eq!(head.headers.get("transfer-encoding"), Some(te));
    }
}

#[test]
fn a_request_in_another_http_version_is_505() {
    let proxy = spawn_proxy(&[]);
    for line in [
        "GET http://alpha.test/ HTTP/2.0",
        "PRI * HTTP/2.0",
        "GET http://alpha.test/ HTTP/1.2",
    ] {
        let mut client = proxy.connect();
        client.send(format!("{line}\r\nHost: alpha.test\r\n\r\n").as_bytes());
        client
            .read_response()
            .assert_error(505, "http_version_not_supported");
    }
    let mut client = proxy.connect();
    client.send(b"GET http://alpha.test/ HTTP/1.1 extra\r\nHost: alpha.test\r\n\r\n");
    client
        .read_response()
        .assert_error(400, "http_request_error");
}

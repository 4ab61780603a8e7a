//! Security review: smuggling, response splitting, hangs and keep-alive decisions,
//! each attack sent as raw bytes. Tests marked `#[ignore = "bug: …"]` assert the
//! correct behaviour and fail today; the others pin attacks already handled.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::sync::mpsc;

use support::*;

/// Sends `bytes`, half-closes (so the proxy's linger ends at once), reads to EOF.
fn send_and_close(proxy: &TestProxy, bytes: &[u8]) -> Vec<u8> {
    let mut wire = proxy.connect();
    let _ = wire.try_send(bytes);
    let _ = wire.stream().shutdown(std::net::Shutdown::Write);
    wire.read_to_end().unwrap()
}

// === Connection-listed framing headers (hop-by-hop removal vs. framing) ===

/// `Connection: Content-Length` makes the proxy delete Content-Length from the
/// forwarded head while it still relays the 44 body bytes: the origin sees a bodiless
/// POST followed by a second request the proxy never saw (ACL/auth bypass).
///
/// Sent: `POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nConnection: Content-Length\r\n
/// Content-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n`.
/// Origin receives: `POST / HTTP/1.1\r\nHost: alpha.test\r\nVia: 1.1 proxy\r\n\r\n` and then
/// `GET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n` as its own request.
/// Expected: 400, or the POST forwarded with its Content-Length (body = the 44 bytes).
#[test]
fn request_whose_connection_names_content_length_is_refused() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n";
    let attack = [
        format!(
            "POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\
             Connection: Content-Length\r\nContent-Length: {}\r\n\r\n",
            smuggled.len()
        )
        .as_bytes(),
        smuggled,
    ]
    .concat();
    let mut client = proxy.connect();
    client.send(&attack);
    let resp = client.read_response();
    if resp.status == 400 {
        return;
    }
    let req = origin.next_request();
    assert_eq!(req.method, "POST");
    assert_eq!(
        req.headers.get("content-length"),
        Some("44"),
        "forwarded head: {}",
        String::from_utf8_lossy(&req.raw_head)
    );
    assert_eq!(req.body.data, smuggled);
}

/// Same with `Connection: Transfer-Encoding`: the chunked framing is deleted, the raw
/// chunks follow a bodiless POST and the origin parses them as the next request.
///
/// Sent: `POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nConnection: Transfer-Encoding\r\n
/// Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n`.
/// Origin receives: `POST / HTTP/1.1\r\nHost: alpha.test\r\nVia: 1.1 proxy\r\n\r\n5\r\nhello\r\n0\r\n\r\n`
/// (no framing header). Expected: 400, or Transfer-Encoding kept.
#[test]
fn request_whose_connection_names_transfer_encoding_is_refused() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\
          Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    let resp = client.read_response();
    if resp.status == 400 {
        return;
    }
    let req = origin.next_request();
    assert!(
        req.headers.has_token("transfer-encoding", "chunked"),
        "forwarded head: {}",
        String::from_utf8_lossy(&req.raw_head)
    );
    assert_eq!(req.body.data, b"hello");
}

/// An origin answering every request with `bytes` (keep-alive).
fn origin_replying(bytes: &'static [u8]) -> Origin {
    Origin::spawn(move |_| Reply::keep(bytes))
}

/// The response side: `Connection: Content-Length` in a response makes the proxy drop
/// Content-Length but keep the client connection open, so the client has no way to
/// find the end of the body (it reads until close: a hang, and the next response on
/// the connection becomes part of this body).
///
/// Origin sends: `HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello`.
/// Client receives: `HTTP/1.1 200 OK\r\n\r\nhello`: neither Content-Length,
/// Transfer-Encoding nor `Connection: close`, and the connection stays open.
/// Expected: 502, or the body framed (Content-Length: 5), or `Connection: close`.
#[test]
fn response_whose_connection_names_content_length_is_502() {
    let origin = origin_replying(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
    );
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert!(
        head.start.get(1).map(String::as_str) == Some("502")
            || head.headers.get("content-length") == Some("5")
            || head.headers.has_token("connection", "close"),
        "unframed body on a kept-alive connection: {}",
        String::from_utf8_lossy(&head.raw)
    );
}

/// Same with `Connection: Transfer-Encoding`: the raw chunks reach the client with no
/// Transfer-Encoding header, so `5\r\nhello\r\n0\r\n\r\n` becomes the body itself.
///
/// Origin sends: `HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n
/// 5\r\nhello\r\n0\r\n\r\n`. Client receives the head without Transfer-Encoding, then the chunks.
/// Expected: 502, or Transfer-Encoding kept.
#[test]
fn response_whose_connection_names_transfer_encoding_is_502() {
    let origin = origin_replying(
        b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    );
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert!(
        head.start.get(1).map(String::as_str) == Some("502")
            || head.headers.has_token("transfer-encoding", "chunked"),
        "chunked body without Transfer-Encoding: {}",
        String::from_utf8_lossy(&head.raw)
    );
}

// === TE.TE / CL.TE obfuscations (request side) ===

#[test]
fn obfuscated_transfer_encoding_requests_are_400_and_never_forwarded() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let post = "POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n";
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let cases: &[(&str, String)] = &[
        (
            "space before colon",
            format!("{post}Transfer-Encoding : chunked\r\n\r\n{body}"),
        ),
        (
            "TE chunked + Transfer-encoding identity",
            format!(
                "{post}Transfer-Encoding: chunked\r\nTransfer-encoding: identity\r\n\r\n{body}"
            ),
        ),
        (
            "chunked in a second TE line",
            format!("{post}Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n{body}"),
        ),
        (
            "vertical tab before chunked",
            format!("{post}Transfer-Encoding: \x0bchunked\r\n\r\n{body}"),
        ),
        (
            "form feed after chunked",
            format!("{post}Transfer-Encoding: chunked\x0c\r\n\r\n{body}"),
        ),
        (
            "chunked, identity",
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n{body}"),
        ),
        (
            "xchunked",
            format!("{post}Transfer-Encoding: xchunked\r\n\r\n{body}"),
        ),
        (
            "obs-fold continuation",
            format!("{post}Transfer-Encoding:\r\n chunked\r\n\r\n{body}"),
        ),
        (
            "CL with a space inside",
            format!("{post}Content-Length: 1 0\r\n\r\n{body}"),
        ),
        (
            "empty CL then CL",
            format!("{post}Content-Length:\r\nContent-Length: 5\r\n\r\nhello"),
        ),
        (
            "TE on HTTP/1.0 with CL",
            "POST http://alpha.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\
             Content-Length: 3\r\n\r\nabc"
                .to_owned(),
        ),
    ];
    for (what, bytes) in cases {
        let (resp, rest) = parse_response(send_and_close(&proxy, bytes.as_bytes()));
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        assert!(rest.is_empty(), "{what}: bytes after the 400: {rest:?}");
    }
    assert!(
        origin.requests().is_empty(),
        "forwarded: {:?}",
        origin.requests()
    );
}

/// Chunk-size tricks in request bodies: each is a 400 and the connection closes
/// (a silent origin keeps the 400 ours). What the origin received before the bad
/// line is never followed by anything else on that upstream connection.
#[test]
fn request_chunk_size_tricks_are_400_then_closed() {
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let origin = Origin::raw(move |mut conn| {
        // Read the head only, then stay silent until the test ends.
        let _ = conn.read_head();
        let _ = released.lock().unwrap().recv();
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let head = "POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "a".repeat(64 * 1024));
    let cases: &[(&str, String)] = &[
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n".into()),
        ("+ sign", "+5\r\nhello\r\n0\r\n\r\n".into()),
        ("leading space", " 5\r\nhello\r\n0\r\n\r\n".into()),
        (
            "17 digits of leading zeros",
            "00000000000000005\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("overflowing size", "1ffffffffffffffff\r\nx\r\n".into()),
        (
            "bare CR in extension",
            "5;a\rb\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("bare LF after size", "5\nhello\r\n0\r\n\r\n".into()),
        ("very long extension", long_ext),
        ("data longer than size", "3\r\nhello\r\n0\r\n\r\n".into()),
        ("obs-fold in trailers", "0\r\nA: b\r\n c\r\n\r\n".into()),
        ("empty size", "\r\nhello\r\n0\r\n\r\n".into()),
        ("bare LF final line", "0\r\n\n".into()),
    ];
    for (what, body) in cases {
        let bytes = [head.as_bytes(), body.as_bytes()].concat();
        let (resp, rest) = parse_response(send_and_close(&proxy, &bytes));
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        assert!(rest.is_empty(), "{what}: bytes after the 400: {rest:?}");
    }
    drop(release);
}

// === responses ===

/// An origin storming interim responses: every one reaches an HTTP/1.1 client in
/// order, the final response follows, and the connection stays usable.
#[test]
fn many_interim_responses_are_relayed_then_the_final_one() {
    let mut storm = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n".repeat(500);
    storm.extend_from_slice(&b"HTTP/1.1 100 Continue\r\n\r\n".repeat(500));
    storm.extend_from_slice(&ok("final"));
    let storm: &'static [u8] = storm.leak();
    let origin = origin_replying(storm);
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for path in ["/", "/again"] {
        client.send(&get(&format!("http://alpha.test{path}"), ""));
        for i in 0..1000 {
            let resp = client.read_response();
            let want = if i < 500 { 103 } else { 100 };
            assert_eq!(resp.status, want, "{path}: interim #{i}");
        }
        let resp = client.read_response();
        assert_eq!((resp.status, resp.text().as_str()), (200, "final"));
    }
}

/// A 1xx "with a body" (1xx never has one): the bytes after its head are read as the
/// next head, which is garbage, so the client gets a 502, never `hello` or the POISON.
///
/// Origin sends: `HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK…POISON`.
#[test]
fn interim_response_with_content_length_never_passes_its_body_on() {
    let origin = origin_replying(
        b"HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\nhello\
          HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON",
    );
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let bytes = send_and_close(&proxy, &get("http://alpha.test/", ""));
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("POISON"), "{text}");
    assert!(!text.contains("hello"), "{text}");
}

/// The origin never finishes a chunked body: with `--timeout 0.3` the proxy gives up
/// and closes the client connection (truncated body, no hang).
#[test]
fn origin_that_never_ends_a_chunked_body_is_cut_off_by_the_timeout() {
    let (release, released) = mpsc::channel::<()>();
    let released = std::sync::Mutex::new(released);
    let origin = Origin::raw(move |mut conn| {
        let _ = conn.read_request();
        conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n");
        let _ = released.lock().unwrap().recv();
    });
    let proxy = spawn_proxy(&["--timeout", "0.3"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(head.start[1], "200");
    let rest = client.read_to_end().unwrap();
    assert_eq!(rest, b"5\r\nhello\r\n", "truncated, never completed");
    drop(release);
}

/// A client that never reads a huge response: the proxy's writes stall, and after
/// `--timeout` it gives up on both sides (the origin's writes then fail), instead of
/// holding the exchange open forever.
#[test]
fn client_that_stops_reading_is_dropped_after_the_timeout() {
    let (failed_tx, failed_rx) = mpsc::channel::<()>();
    let failed_tx = std::sync::Mutex::new(failed_tx);
    let origin = Origin::raw(move |mut conn| {
        let _ = conn.read_request();
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n");
        let block = vec![b'x'; 256 * 1024];
        while conn.send(&block) {}
        let _ = failed_tx.lock().unwrap().send(());
    });
    let proxy = spawn_proxy(&["--timeout", "0.3"]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    failed_rx
        .recv_timeout(WAIT)
        .expect("the proxy still holds the upstream connection of a stalled client");
    drop(client);
}

// === requests ===

/// Host and absolute-form disagree: the origin sees the URL's host, exactly once.
#[test]
fn absolute_form_wins_over_a_different_host_header() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let resp = request(
        proxy.addr,
        b"GET http://alpha.test:8080/p HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    );
    assert_eq!(resp.status, 200);
    let req = origin.next_request();
    assert_eq!(req.headers.get_all("host"), ["alpha.test:8080"]);
    assert_eq!(req.target, "/p");
}

/// Host lines and request lines that other parsers read differently are 400.
#[test]
fn ambiguous_host_and_request_lines_are_400() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let cases: &[(&str, &[u8])] = &[
        (
            "two Host lines",
            b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nHost: evil.test\r\n\r\n",
        ),
        (
            "@ in Host",
            b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test@evil.test\r\n\r\n",
        ),
        (
            "space in Host",
            b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test evil.test\r\n\r\n",
        ),
        (
            "userinfo in the URL",
            b"GET http://alpha.test@evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        ),
        (
            "tab in the request line",
            b"GET\thttp://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        ),
        (
            "two spaces in the request line",
            b"GET  http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        ),
        (
            "trailing space after the version",
            b"GET http://alpha.test/ HTTP/1.1 \r\nHost: alpha.test\r\n\r\n",
        ),
        ("HTTP/0.9 request", b"GET http://alpha.test/\r\n\r\n"),
        (
            "space in the URL",
            b"GET http://alpha.test/a b HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
        ),
        (
            "CONNECT with userinfo",
            b"CONNECT user:pw@alpha.test:443 HTTP/1.1\r\nHost: alpha.test:443\r\n\r\n",
        ),
        (
            "CONNECT with a bad percent escape",
            b"CONNECT alpha%zz.test:443 HTTP/1.1\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let (resp, rest) = parse_response(send_and_close(&proxy, bytes));
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        assert!(rest.is_empty(), "{what}: {rest:?}");
    }
    assert!(origin.requests().is_empty());
}

/// A 1 MiB header value is refused (431) without reading the rest of it.
#[test]
fn one_mib_header_value_is_431() {
    let proxy = spawn_proxy(&[]);
    let mut bytes = b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nX-Big: ".to_vec();
    bytes.extend(std::iter::repeat_n(b'a', 1 << 20));
    bytes.extend_from_slice(b"\r\n\r\n");
    let mut wire = proxy.connect();
    let _ = wire.try_send(&bytes);
    let resp = wire.try_read_response().unwrap();
    assert_eq!(resp.status, 431);
}

/// A pooled upstream connection is keyed by host: a request for `beta.test` (another
/// name for the same address) never rides alpha's connection with alpha's Host.
#[test]
fn pooled_connection_carries_the_right_host() {
    let origin = Origin::spawn(|req| Reply::keep(ok(req.headers.get("host").unwrap_or(""))));
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    proxy.route("beta.test", &origin);
    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    assert_eq!(client.read_response().text(), "alpha.test");
    client.send(&get("http://beta.test/", ""));
    assert_eq!(client.read_response().text(), "beta.test");
}

/// With `--basic-auth`, the credentials never reach the origin, whether the request
/// is plain or an upgrade, and wrong credentials with a body close the connection
/// (the unread body is never taken for a request).
#[test]
fn proxy_authorization_never_reaches_the_origin_and_407_with_body_closes() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&["--basic-auth", "alice:secret"]);
    proxy.route("alpha.test", &origin);
    // alice:secret
    let auth = "Proxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n";
    let mut client = proxy.connect();
    client.send(&get(
        "http://alpha.test/",
        &format!("{auth}Connection: Upgrade\r\nUpgrade: websocket\r\n"),
    ));
    assert_eq!(client.read_response().status, 200);
    let req = origin.next_request();
    assert!(!req.headers.has("proxy-authorization"), "{:?}", req.headers);

    let smuggled = b"GET http://alpha.test/smuggled HTTP/1.1\r\nHost: alpha.test\r\n\r\n";
    let mut attack = format!(
        "POST http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    attack.extend_from_slice(smuggled);
    let bytes = send_and_close(&proxy, &attack);
    let (resp, rest) = parse_response(bytes);
    assert_eq!(resp.status, 407);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert_eq!(origin.requests().len(), 1);
}

/// Loop detection compares addresses as `IpAddr`, so the IPv4-mapped IPv6 spelling
/// of the proxy's own 127.0.0.1 listener is not recognised: the proxy connects to
/// itself (dual-stack socket) and sends itself `GET / HTTP/1.1`, which its own web
/// side answers (today a 404; with the static server or web-route plugins, a remote
/// client reaches them from a loopback address).
///
/// Sent: `GET http://[::ffff:127.0.0.1]:<proxy port>/ HTTP/1.1\r\nHost: [::ffff:127.0.0.1]:<port>\r\n\r\n`.
/// Received: `HTTP/1.1 404 Not Found` (from the proxy, via itself).
/// Expected: `508` with `Proxy-Status: proxy; error=proxy_loop_detected`.
#[test]
fn ipv4_mapped_ipv6_spelling_of_the_proxy_is_a_loop() {
    let proxy = spawn_proxy(&[]);
    let url = format!("http://[::ffff:127.0.0.1]:{}/", proxy.addr.port());
    let resp = request(proxy.addr, &get(&url, ""));
    resp.assert_error(508, "proxy_loop_detected");
}

/// RFC 9110 §8.6, RFC 9112 §6.1: no Content-Length or Transfer-Encoding on a 1xx or
/// 204. An origin's such fields are dropped, not relayed to mislead the client (the
/// bytes after a 204's head were never part of it).
#[test]
fn framing_fields_of_interim_and_204_responses_are_not_relayed() {
    let origin = Origin::spawn(|req| {
        Reply::keep(if req.target == "/204" {
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n".to_vec()
        } else if req.target == "/204-te" {
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 103 Early Hints\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .to_vec()
        })
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    for path in ["/204", "/204-te"] {
        client.send(&get(&format!("http://alpha.test{path}"), ""));
        let resp = client.read_response();
        assert_eq!(resp.status, 204, "{path}");
        assert_eq!(resp.headers.get("x-a"), Some("1"));
        assert!(
            !resp.headers.has("content-length"),
            "{path}: {:?}",
            resp.headers
        );
        assert!(
            !resp.headers.has("transfer-encoding"),
            "{path}: {:?}",
            resp.headers
        );
    }
    client.send(&get("http://alpha.test/103", ""));
    let interim = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(interim.start[1], "103");
    assert_eq!(interim.headers.get("link"), Some("</a>"));
    assert!(
        !interim.headers.has("content-length"),
        "{:?}",
        interim.headers
    );
    let fin = client.read_response();
    assert_eq!((fin.status, fin.text().as_str()), (200, "ok"));
}

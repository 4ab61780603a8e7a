//! Forwarding plain HTTP/1.x: what the origin receives, what the client gets back,
//! bodies in every framing, keep-alive, pipelining, upgrades and the upstream pool.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::io::Read;
use std::sync::mpsc;
use std::sync::Mutex;

use support::*;

#[test]
fn get_via_ureq_reaches_origin_in_origin_form() {
    let origin = Origin::fixed("hello from alpha");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let resp = ureq_agent(proxy.addr)
        .get("http://alpha.test/some/path?q=1&r=2")
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_string().unwrap(), "hello from alpha");

    let req = origin.next_request();
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/some/path?q=1&r=2");
    assert_eq!(req.version, "HTTP/1.1");
    assert_eq!(req.headers.get_all("host"), ["alpha.test"]);
}

#[test]
fn request_hop_by_hop_headers_are_removed_and_via_added() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let resp = request(
        proxy.addr,
        b"GET http://alpha.test/a HTTP/1.1\r\n\
          Host: alpha.test\r\n\
          Connection: keep-alive, X-Hop\r\n\
          X-Hop: secret-hop\r\n\
          Proxy-Connection: keep-alive\r\n\
          Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Upgrade: h2c\r\n\
          Cookie: a=1\r\n\
          X-End-To-End: Stays  As Is\r\n\
          Cookie: b=2\r\n\
          User-Agent: forward-test\r\n\
          \r\n",
    );
    assert_eq!(resp.status, 200);

    let req = origin.next_request();
    assert_eq!(req.target, "/a");
    assert_eq!(req.version, "HTTP/1.1");
    for hop in [
        "connection",
        "x-hop",
        "proxy-connection",
        "proxy-authorization",
        "keep-alive",
        "te",
        "upgrade",
    ] {
        // A `Connection: close`/`keep-alive` of the proxy's own is allowed; the client's is not.
        if hop == "connection" {
            assert!(
                !req.headers.has_token("connection", "x-hop"),
                "{:?}",
                req.headers
            );
            continue;
        }
        assert!(
            !req.headers.has(hop),
            "{hop} was forwarded: {:?}",
            req.headers
        );
    }
    assert_eq!(
        req.headers.get_all("cookie"),
        ["a=1", "b=2"],
        "both Cookie lines, in order"
    );
    assert_eq!(req.headers.get("x-end-to-end"), Some("Stays  As Is"));
    assert_eq!(req.headers.get("user-agent"), Some("forward-test"));
    assert_eq!(req.headers.get_all("via"), ["1.1 proxy"]);
    assert!(!has_bare_lf(&req.raw_head));
}

#[test]
fn existing_via_is_kept_and_ours_follows_it() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let resp = request(proxy.addr, &get("http://alpha.test/", "Via: 1.0 fred\r\n"));
    assert_eq!(resp.status, 200);

    let via: Vec<String> = origin
        .next_request()
        .headers
        .get_all("via")
        .iter()
        .map(|v| v.to_string())
        .collect();
    // Either as a second line or folded into one list, ours comes last.
    let joined = via.join(", ");
    assert_eq!(joined, "1.0 fred, 1.1 proxy");
}

/// RFC 9110 §7.6.3: a proxy adds Via to every message it forwards, both ways, naming
/// the protocol version it received the message with.
#[test]
fn via_names_the_received_version_on_requests_and_responses() {
    let origin = Origin::spawn(|req| {
        Reply::keep(if req.target == "/old" {
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\nVia: 1.1 upstream\r\n\r\nok"
                .to_vec()
        } else {
            ok("new")
        })
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"GET http://alpha.test/new HTTP/1.0\r\nHost: alpha.test\r\nConnection: keep-alive\r\n\r\n",
    );
    let resp = client.read_response();
    assert_eq!(resp.headers.get_all("via"), ["1.1 proxy"]);
    assert_eq!(origin.next_request().headers.get_all("via"), ["1.0 proxy"]);
    client.send(&get("http://alpha.test/old", ""));
    let resp = client.read_response();
    assert_eq!(resp.text(), "ok");
    assert_eq!(resp.headers.get_all("via"), ["1.1 upstream", "1.0 proxy"]);
    assert_eq!(origin.next_request().headers.get_all("via"), ["1.1 proxy"]);
}

#[test]
fn response_hop_by_hop_headers_are_removed_others_unchanged() {
    let origin = Origin::spawn(|_| {
        Reply::keep(
            "HTTP/1.1 200 OK\r\n\
             Connection: keep-alive, X-Hop-Resp\r\n\
             X-Hop-Resp: 1\r\n\
             Keep-Alive: timeout=5, max=100\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Set-Cookie: a=1; Path=/\r\n\
             X-Custom:   spaced  value\r\n\
             Set-Cookie: b=2\r\n\
             Content-Length: 5\r\n\
             \r\n\
             hello",
        )
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let resp = request(proxy.addr, &get("http://alpha.test/", ""));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
    assert!(!resp.headers.has("x-hop-resp"), "{:?}", resp.headers);
    assert!(!resp.headers.has("keep-alive"), "{:?}", resp.headers);
    assert!(!resp.headers.has_token("connection", "x-hop-resp"));
    assert_eq!(
        resp.headers.get("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(resp.headers.get_all("set-cookie"), ["a=1; Path=/", "b=2"]);
    assert_eq!(resp.headers.get("x-custom"), Some("spaced  value"));
    assert_eq!(resp.headers.get("content-length"), Some("5"));
}

#[test]
fn upload_of_5_mib_arrives_intact() {
    let origin = Origin::spawn(|req| Reply::keep(ok(checksum(&req.body.data).to_string())));
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let data = pattern(5 * 1024 * 1024);
    let resp = ureq_agent(proxy.addr)
        .post("http://alpha.test/upload")
        .send_bytes(&data)
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.into_string().unwrap(),
        checksum(&data).to_string(),
        "origin's checksum"
    );

    let req = origin.next_request();
    assert_eq!(req.body.data.len(), data.len());
    assert!(req.body.data == data, "uploaded bytes differ");
}

#[test]
fn download_of_5_mib_arrives_intact() {
    let origin = Origin::spawn(|_| Reply::keep(ok(pattern(5 * 1024 * 1024))));
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let resp = ureq_agent(proxy.addr)
        .get("http://alpha.test/big")
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    resp.into_reader().read_to_end(&mut got).unwrap();
    let want = pattern(5 * 1024 * 1024);
    assert_eq!(got.len(), want.len());
    assert_eq!(checksum(&got), checksum(&want));
}

/// proxy.py sends the second request to the first host: each must reach its own origin.
#[test]
fn keep_alive_client_connection_can_switch_hosts() {
    let alpha = Origin::spawn(|req| Reply::keep(ok(format!("alpha{}", req.target))));
    let beta = Origin::spawn(|req| Reply::keep(ok(format!("beta{}", req.target))));
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &alpha);
    proxy.route("beta.test", &beta);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/one", ""));
    assert_eq!(client.read_response().text(), "alpha/one");
    client.send(&get("http://beta.test/two", ""));
    assert_eq!(client.read_response().text(), "beta/two");

    let (a, b) = (alpha.requests(), beta.requests());
    assert_eq!(a.len(), 1, "alpha got {a:?}");
    assert_eq!(b.len(), 1, "beta got {b:?}");
    assert_eq!(a[0].headers.get("host"), Some("alpha.test"));
    assert_eq!(b[0].headers.get("host"), Some("beta.test"));
    assert_eq!(b[0].target, "/two");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let alpha = Origin::echo_target();
    let beta = Origin::echo_target();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &alpha);
    proxy.route("beta.test", &beta);

    let mut client = proxy.connect();
    let mut burst = get("http://alpha.test/1", "");
    burst.extend(get("http://beta.test/2", ""));
    burst.extend(get("http://alpha.test/3", ""));
    client.send(&burst);

    for want in ["/1", "/2", "/3"] {
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), want);
    }
    assert_eq!(alpha.requests().len(), 2);
    assert_eq!(beta.requests().len(), 1);
}

#[test]
fn chunked_request_body_is_passed_through() {
    let origin = Origin::spawn(|req| Reply::keep(ok(&req.body.data)));
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/chunked HTTP/1.1\r\n\
          Host: alpha.test\r\n\
          Transfer-Encoding: chunked\r\n\
          \r\n\
          5\r\nhello\r\n\
          1;ext=1\r\n \r\n\
          000b\r\nchunk world\r\n\
          0\r\n\r\n",
    );
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello chunk world");

    let req = origin.next_request();
    assert!(
        req.body.chunked,
        "origin should get a chunked body: {:?}",
        req.headers
    );
    assert!(!req.headers.has("content-length"));
    assert_eq!(req.body.data, b"hello chunk world");
}

#[test]
fn chunked_response_with_trailers_is_relayed_to_http11_client() {
    let origin = Origin::spawn(|_| {
        Reply::keep(
            "HTTP/1.1 200 OK\r\n\
             Transfer-Encoding: chunked\r\n\
             Trailer: X-Checksum\r\n\
             \r\n\
             6\r\nhello \r\n\
             5\r\nworld\r\n\
             0\r\n\
             X-Checksum: abc123\r\n\
             \r\n",
        )
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", "TE: trailers\r\n"));
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert!(resp.body.chunked, "{:?}", resp.headers);
    assert_eq!(resp.text(), "hello world");
    assert_eq!(resp.body.trailers.get("x-checksum"), Some("abc123"));

    // The connection is still usable afterwards.
    client.send(&get("http://alpha.test/again", ""));
    assert_eq!(client.read_response().text(), "hello world");
}

#[test]
fn http10_client_gets_decoded_body_of_chunked_response_then_eof() {
    let origin = Origin::spawn(|_| {
        Reply::keep("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n")
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let bytes = raw_exchange(
        proxy.addr,
        b"GET http://alpha.test/ HTTP/1.0\r\nHost: alpha.test\r\n\r\n",
    );
    let (resp, rest) = parse_response(bytes);
    assert_eq!(resp.status, 200);
    assert!(
        !resp.headers.has("transfer-encoding"),
        "no chunked for HTTP/1.0: {:?}",
        resp.headers
    );
    assert_eq!(resp.text(), "abcdefg");
    assert!(rest.is_empty(), "bytes after the response: {rest:?}");
}

#[test]
fn head_204_and_304_carry_no_body_and_the_connection_goes_on() {
    let origin = Origin::spawn(|req| {
        Reply::keep(match req.target.as_str() {
            // HEAD: the length of the body a GET would get, and no body.
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            "/204" => b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n".to_vec(),
            "/304" => {
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 50\r\n\r\n".to_vec()
            }
            _ => ok("after"),
        })
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(b"HEAD http://alpha.test/head HTTP/1.1\r\nHost: alpha.test\r\n\r\n");
    let head = client.read_response_to("HEAD");
    assert_eq!(head.status, 200);
    assert_eq!(head.headers.get("content-length"), Some("1234"));

    client.send(&get("http://alpha.test/204", ""));
    let no_content = client.read_response();
    assert_eq!(no_content.status, 204);
    assert_eq!(no_content.headers.get("x-kind"), Some("empty"));

    client.send(&get("http://alpha.test/304", "If-None-Match: \"v1\"\r\n"));
    let not_modified = client.read_response();
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.headers.get("etag"), Some("\"v1\""));

    client.send(&get("http://alpha.test/after", ""));
    let after = client.read_response();
    assert_eq!(after.status, 200);
    assert_eq!(after.text(), "after");
    assert!(
        client.buffered().is_empty(),
        "stray bytes: {:?}",
        client.buffered()
    );
}

#[test]
fn expect_100_continue_is_relayed() {
    let origin = Origin::raw(|mut conn| {
        let Some(head) = conn.read_head() else { return };
        assert!(conn.send(b"HTTP/1.1 100 Continue\r\n\r\n"));
        let req = conn.read_body(head);
        conn.send(&ok(format!(
            "got {}",
            String::from_utf8_lossy(&req.body.data)
        )));
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/upload HTTP/1.1\r\n\
          Host: alpha.test\r\n\
          Expect: 100-continue\r\n\
          Content-Length: 5\r\n\
          \r\n",
    );
    // RFC 9110 §10.1.1: the body goes only after the interim response.
    let interim = client.read_response();
    assert_eq!(interim.status, 100);
    client.send(b"hello");
    // More interim responses may follow (the proxy's own 100 and the origin's): skip them.
    let mut fin = client.read_response();
    while (100..200).contains(&fin.status) {
        fin = client.read_response();
    }
    assert_eq!(fin.status, 200);
    assert_eq!(fin.text(), "got hello");
}

#[test]
fn an_http10_expectation_is_not_forwarded() {
    // RFC 9110 §10.1.1: a 1.0 request's 100-continue is ignored, so the origin, which
    // gets the request in HTTP/1.1, must not see it.
    let origin = Origin::spawn(|req| Reply::close(ok(&req.body.data)));
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"POST http://alpha.test/ HTTP/1.0\r\nExpect: 100-continue\r\n\
          Content-Length: 5\r\n\r\nhello",
    );
    let resp = client.read_response();
    assert_eq!((resp.status, resp.text().as_str()), (200, "hello"));
    let req = origin.next_request();
    assert!(
        !req.headers.has("expect"),
        "{}",
        String::from_utf8_lossy(&req.raw_head)
    );
}

#[test]
fn http10_request_without_keep_alive_is_closed_after_the_response() {
    let origin = Origin::fixed("one-shot");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(b"GET http://alpha.test/ HTTP/1.0\r\nHost: alpha.test\r\n\r\n");
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "one-shot");
    client.expect_eof();
}

#[test]
fn http10_request_with_keep_alive_stays_open() {
    let origin = Origin::echo_target();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    for path in ["/first", "/second"] {
        client.send(
            format!("GET http://alpha.test{path} HTTP/1.0\r\nHost: alpha.test\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        );
        let resp = client.read_response();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), path);
        assert!(
            resp.headers.has_token("connection", "keep-alive"),
            "{:?}",
            resp.headers
        );
    }
}

#[test]
fn websocket_upgrade_switches_to_raw_bytes_both_ways() {
    let origin = Origin::raw(|mut conn| {
        let Some(head) = conn.read_head() else { return };
        let req = conn.read_body(head);
        let upgrading = req.headers.has_token("connection", "upgrade")
            && req.headers.get("upgrade") == Some("websocket");
        if !upgrading {
            conn.send(&response(400, &[], "upgrade headers were not forwarded"));
            return;
        }
        conn.send(
            b"HTTP/1.1 101 Switching Protocols\r\n\
              Upgrade: websocket\r\n\
              Connection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
              \r\n",
        );
        let ping = conn.wire.read_exact_vec(16).unwrap();
        assert_eq!(ping, b"ping-from-client");
        conn.send(b"pong-from-origin, after the switch");
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("ws.test", &origin);

    let mut client = proxy.connect();
    client.send(
        b"GET http://ws.test/chat HTTP/1.1\r\n\
          Host: ws.test\r\n\
          Connection: Upgrade\r\n\
          Upgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
          Sec-WebSocket-Version: 13\r\n\
          \r\n",
    );
    let switched = client.read_response();
    assert_eq!(switched.status, 101, "{}", switched.text());
    assert!(
        switched.headers.has_token("connection", "upgrade"),
        "{:?}",
        switched.headers
    );
    assert_eq!(switched.headers.get("upgrade"), Some("websocket"));

    client.send(b"ping-from-client");
    let pong = client
        .read_exact_vec(b"pong-from-origin, after the switch".len())
        .unwrap();
    assert_eq!(pong, b"pong-from-origin, after the switch");
}

#[test]
fn upgrade_answered_with_200_stays_http() {
    let origin = Origin::echo_target();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get(
        "http://alpha.test/maybe-ws",
        "Connection: Upgrade\r\nUpgrade: websocket\r\n",
    ));
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "/maybe-ws");

    // Still HTTP: a second request on the same connection gets a normal answer.
    client.send(&get("http://alpha.test/next", ""));
    let next = client.read_response();
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "/next");
}

#[test]
fn disable_headers_removes_the_listed_request_headers() {
    let origin = Origin::fixed("ok");
    let proxy = spawn_proxy(&["--disable-headers", "user-agent,x-secret"]);
    proxy.route("alpha.test", &origin);

    let resp = request(
        proxy.addr,
        &get(
            "http://alpha.test/",
            "User-Agent: curl/8\r\nX-SECRET: hunter2\r\nX-Keep: yes\r\n",
        ),
    );
    assert_eq!(resp.status, 200);

    let req = origin.next_request();
    assert!(!req.headers.has("user-agent"), "{:?}", req.headers);
    assert!(!req.headers.has("x-secret"), "{:?}", req.headers);
    assert_eq!(req.headers.get("x-keep"), Some("yes"));
}

#[test]
fn close_delimited_response_is_relayed_whole_then_closed() {
    let body = pattern(100_000);
    let origin_body = body.clone();
    let origin = Origin::spawn(move |_| {
        let mut bytes =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        bytes.extend_from_slice(&origin_body);
        Reply::close(bytes)
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.data.len(), body.len());
    assert!(resp.body.data == body, "body differs");
    client.expect_eof();
}

#[test]
fn upstream_connection_is_reused_across_client_connections() {
    let origin = Origin::echo_target();
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    for path in ["/a", "/b"] {
        let mut client = proxy.connect();
        client.send(&get(&format!("http://alpha.test{path}"), ""));
        assert_eq!(client.read_response().text(), path);
    }

    let reqs = origin.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        origin.accepted(),
        1,
        "both requests on one pooled origin connection"
    );
    assert_eq!((reqs[0].conn, reqs[1].conn), (0, 0));
}

/// A socket is waited on through its own waker slot, which keeps the last waiter's
/// waker: a pooled origin connection last read by one client's task, still alive, must
/// wake the task of the client that reuses it, when its response comes late.
#[test]
fn a_reused_origin_connection_wakes_the_task_that_waits_on_it() {
    let (received_tx, received_rx) = mpsc::channel();
    let (answer_tx, answer_rx) = mpsc::channel::<()>();
    let (received_tx, answer_rx) = (Mutex::new(received_tx), Mutex::new(answer_rx));
    let origin = Origin::raw(move |mut conn| {
        while let Some(req) = conn.read_request() {
            if req.target == "/late" {
                received_tx.lock().unwrap().send(()).unwrap();
                answer_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
            }
            conn.send(&ok(format!("for {}", req.target)));
        }
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    // The first client's task reads the origin connection, then stays, idle.
    let mut first = proxy.connect();
    first.send(&get("http://alpha.test/early", ""));
    assert_eq!(first.read_response().text(), "for /early");

    let mut second = proxy.connect();
    second.send(&get("http://alpha.test/late", ""));
    // The request is at the origin: the proxy waits for its answer, which comes only now.
    received_rx.recv_timeout(WAIT).unwrap();
    answer_tx.send(()).unwrap();
    assert_eq!(second.read_response().text(), "for /late");
    assert_eq!(origin.accepted(), 1, "one pooled origin connection");

    // And the first client is served still.
    first.send(&get("http://alpha.test/again", ""));
    assert_eq!(first.read_response().text(), "for /again");
}

#[test]
fn pooled_connection_closed_by_origin_is_retried_once() {
    // The first origin connection serves one keep-alive response, then closes.
    let (closed_tx, closed_rx) = mpsc::channel();
    let closed_tx = Mutex::new(closed_tx);
    let origin = Origin::raw(move |mut conn| {
        if conn.index == 0 {
            if conn.read_request().is_some() {
                conn.send(&ok("first"));
            }
            conn.wire
                .stream()
                .shutdown(std::net::Shutdown::Both)
                .unwrap();
            closed_tx.lock().unwrap().send(()).unwrap();
            return;
        }
        while let Some(req) = conn.read_request() {
            conn.send(&ok(format!("fresh {}", req.target)));
        }
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/1", ""));
    assert_eq!(client.read_response().text(), "first");
    closed_rx.recv_timeout(WAIT).unwrap();

    client.send(&get("http://alpha.test/2", ""));
    let resp = client.read_response();
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(resp.text(), "fresh /2");
    assert_eq!(origin.accepted(), 2);
}

/// RFC 9110 §7.6.2: OPTIONS and TRACE with `Max-Forwards: 0` are answered by the proxy
/// (TRACE echoes the request, less its credentials); above 0 the value goes on one
/// lower; other methods pass it unchanged.
#[test]
fn max_forwards_is_honoured_for_options_and_trace() {
    let origin = Origin::fixed("origin");
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = proxy.connect();
    client.send(
        b"OPTIONS http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nMax-Forwards: 0\r\n\r\n",
    );
    let resp = client.read_response();
    assert_eq!((resp.status, resp.body.data.len()), (200, 0));
    client.send(
        b"TRACE http://alpha.test/t HTTP/1.1\r\nHost: alpha.test\r\nMax-Forwards: 0\r\n\
          X-Probe: 1\r\nCookie: secret=1\r\nAuthorization: Basic c2VjcmV0\r\n\r\n",
    );
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.headers.get("content-type"), Some("message/http"));
    let echo = resp.text();
    assert!(
        echo.starts_with("TRACE http://alpha.test/t HTTP/1.1\r\n"),
        "{echo}"
    );
    assert!(echo.contains("X-Probe: 1\r\n"), "{echo}");
    assert!(!echo.contains("secret"), "credentials echoed: {echo}");
    assert!(!echo.contains("c2VjcmV0"), "credentials echoed: {echo}");
    assert_eq!(origin.accepted(), 0, "answered without the origin");

    client.send(
        b"OPTIONS http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nMax-Forwards: 3\r\n\r\n",
    );
    assert_eq!(client.read_response().text(), "origin");
    assert_eq!(origin.next_request().headers.get("max-forwards"), Some("2"));
    client.send(&get("http://alpha.test/", "Max-Forwards: 0\r\n"));
    assert_eq!(client.read_response().text(), "origin");
    assert_eq!(origin.next_request().headers.get("max-forwards"), Some("0"));
}

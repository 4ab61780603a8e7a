//! How a client connection ends when an exchange cannot end cleanly: a response sent
//! while the client is still uploading reaches it whole (a lingering close, RFC 9112
//! §9.6), a reply after which the proxy closes says `Connection: close`, and a
//! response the proxy knows to be cut short ends in a reset, so that a client reading
//! until close cannot take it for the whole (RFC 9112 §8).

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use support::*;

/// A connection to `proxy` (reads bounded by [`WAIT`]) that has sent `bytes`.
fn sending(proxy: std::net::SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut client = TcpStream::connect(proxy).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(bytes).unwrap();
    client
}

/// Reads `stream` to its end: the bytes, and whether it ended in a reset rather than
/// a clean close.
fn read_until_end(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return (out, false),
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (out, true),
            Err(e) => panic!("reading: {e} after {} bytes", out.len()),
        }
    }
}

#[test]
fn an_early_response_reaches_a_client_still_uploading() {
    const BODY: usize = 4 << 20;
    // The origin answers at once, with a large body, and never reads the upload; it
    // holds its connection until the test ends.
    let (hold, held) = mpsc::channel::<()>();
    let held = Arc::new(Mutex::new(held));
    let origin = Origin::raw(move |mut conn| {
        conn.read_head().unwrap();
        let reply = response(413, &[("Connection", "close")], pattern(BODY));
        conn.send(&reply);
        let _ = held.lock().unwrap().recv();
    });
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let client = sending(
        proxy.addr,
        b"PUT http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: 100000000\r\n\r\n",
    );
    // The client keeps uploading while it reads the response, until it has it all.
    let stop = Arc::new(AtomicBool::new(false));
    let uploader = {
        let mut up = client.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let block = vec![b'u'; 64 * 1024];
            while !stop.load(Ordering::Relaxed) && up.write_all(&block).is_ok() {}
        })
    };
    let mut wire = Wire::new(client.try_clone().unwrap());
    let resp = wire.read_response();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.body.data.len(), BODY, "the response was cut short");
    assert_eq!(checksum(&resp.body.data), checksum(&pattern(BODY)));
    let _ = client.shutdown(std::net::Shutdown::Both);
    uploader.join().unwrap();
    drop(hold);
}

#[test]
fn a_reply_after_which_the_proxy_closes_says_so() {
    // OPTIONS with Max-Forwards: 0 is answered by the proxy; its body is not read, so
    // the connection closes after the reply, which must say so.
    let proxy = spawn_proxy(&[]);
    let mut client = proxy.connect();
    client.send(
        b"OPTIONS http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nMax-Forwards: 0\r\n\
          Content-Length: 5\r\n\r\nhello",
    );
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert!(
        resp.headers.has_token("connection", "close"),
        "{}",
        String::from_utf8_lossy(&resp.raw_head)
    );
    client.expect_eof();
    // Without a body the connection stays, and the reply does not say close.
    let mut client = proxy.connect();
    client.send(
        b"OPTIONS http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\nMax-Forwards: 0\r\n\r\n",
    );
    let resp = client.read_response();
    assert!(!resp.headers.has_token("connection", "close"));
}

/// An origin that sends `bytes`, then resets its connection.
fn origin_sending_then_resetting(bytes: &'static [u8]) -> Origin {
    Origin::raw(move |mut conn| {
        conn.read_head().unwrap();
        conn.send(bytes);
        socket2::SockRef::from(conn.wire.stream())
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
    })
}

#[test]
fn a_response_the_proxy_knows_cut_short_ends_in_a_reset() {
    let cases: [(&str, &'static [u8], &str); 3] = [
        // No length: the client reads until close, so only a reset tells it apart.
        (
            "HTTP/1.1",
            b"HTTP/1.1 200 OK\r\n\r\nPARTIAL-BODY",
            "PARTIAL-BODY",
        ),
        // Chunked without its last chunk, de-chunked for an HTTP/1.0 client.
        (
            "HTTP/1.0",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nPARTIAL\r\n",
            "PARTIAL",
        ),
        // With a length the shortfall shows anyway; the reset says it too.
        (
            "HTTP/1.1",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nPARTIAL",
            "PARTIAL",
        ),
    ];
    for (version, sent, body) in cases {
        let origin = origin_sending_then_resetting(sent);
        let proxy = spawn_proxy(&[]);
        proxy.route("alpha.test", &origin);
        let mut client = sending(
            proxy.addr,
            format!("GET http://alpha.test/ {version}\r\nHost: alpha.test\r\n\r\n").as_bytes(),
        );
        let (got, reset) = read_until_end(&mut client);
        let text = String::from_utf8_lossy(&got);
        assert!(reset, "{version} {sent:?}: a clean close after {text:?}");
        assert!(text.ends_with(body), "{text}");
    }
}

#[test]
fn a_complete_close_delimited_response_ends_in_a_clean_close() {
    let origin = Origin::spawn(|_| Reply::close(&b"HTTP/1.1 200 OK\r\n\r\nWHOLE-BODY"[..]));
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);
    let mut client = sending(
        proxy.addr,
        b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    );
    let (got, reset) = read_until_end(&mut client);
    assert!(!reset);
    assert!(got.ends_with(b"\r\n\r\nWHOLE-BODY"));
}

#[test]
fn a_client_that_gives_up_on_a_stalled_origin_is_noticed_at_once() {
    // The origin sends part of a body, then goes silent; it reports when the proxy
    // closes its connection. The inactivity timeout is a minute: the close must come
    // from noticing the client, not from the timeout.
    let (closed_tx, closed_rx) = mpsc::channel();
    let closed_tx = Mutex::new(closed_tx);
    let origin = Origin::raw(move |mut conn| {
        conn.read_head().unwrap();
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n");
        conn.send(&[b'x'; 1000]);
        let mut rest = [0u8; 16];
        // Blocks until the proxy closes (or the wire's own 10 s timeout).
        let closed = match conn.wire.stream().read(&mut rest) {
            Ok(0) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        let _ = closed_tx.lock().unwrap().send(closed);
    });
    let proxy = spawn_proxy_with(&[], |config| {
        config.timeout = std::time::Duration::from_secs(60);
    });
    proxy.route("alpha.test", &origin);
    let mut client = sending(
        proxy.addr,
        b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    );
    let mut got = 0;
    let mut chunk = [0u8; 4096];
    while got < 1000 {
        let n = client.read(&mut chunk).unwrap();
        assert!(n > 0);
        got += n;
    }
    drop(client);
    assert_eq!(
        closed_rx.recv_timeout(WAIT),
        Ok(true),
        "the proxy kept the stalled origin"
    );
}

/// Reads `stream` until what it got ends with `suffix` (the connection still open).
fn read_until_suffix(stream: &mut TcpStream, suffix: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    while !seen.ends_with(suffix) {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).unwrap();
        assert_ne!(n, 0, "closed after {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

/// An origin that sends `bytes`, then holds its connection open, silent, until the
/// test ends.
fn origin_sending_then_stalling(bytes: &'static [u8]) -> (Origin, mpsc::Sender<()>) {
    let (release, hold) = mpsc::channel::<()>();
    let hold = Arc::new(Mutex::new(hold));
    let origin = Origin::raw(move |mut conn| {
        conn.read_head().unwrap();
        conn.send(bytes);
        let _ = hold.lock().unwrap().recv();
    });
    (origin, release)
}

#[test]
fn a_response_cut_when_the_grace_period_runs_out_ends_in_a_reset() {
    // No length: the client reads until close, so only a reset tells it the response
    // was cut. The origin never finishes; the drain's grace period is 0.
    let (origin, _release) = origin_sending_then_stalling(b"HTTP/1.1 200 OK\r\n\r\nPARTIAL");
    let mut proxy = spawn_proxy(&["--grace-period", "0", "--timeout", "60"]);
    proxy.route("alpha.test", &origin);
    let mut client = sending(
        proxy.addr,
        b"GET http://alpha.test/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n",
    );
    read_until_suffix(&mut client, b"PARTIAL");
    proxy.take_handle().stop();
    let (rest, reset) = read_until_end(&mut client);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(reset, "a cut response must not end in a clean close");
}

#[test]
fn a_tunnel_cut_when_the_grace_period_runs_out_ends_in_a_clean_close() {
    // A tunnel's bytes are not a message: its end is the other protocol's business.
    let (origin, _release) = origin_sending_then_stalling(b"");
    let mut proxy = spawn_proxy(&["--grace-period", "0", "--timeout", "60"]);
    let mut client = TcpStream::connect(proxy.addr).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let target = origin.addr;
    client
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .unwrap();
    let seen = read_until_suffix(&mut client, b"\r\n\r\n");
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );
    // The request head through the tunnel: the origin now holds the connection.
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    proxy.take_handle().stop();
    let (rest, reset) = read_until_end(&mut client);
    assert!(rest.is_empty(), "{rest:?}");
    assert!(!reset, "a tunnel's end keeps its close");
}

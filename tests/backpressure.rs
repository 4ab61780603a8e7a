//! Backpressure (DESIGN §3 rule 11): a client that stops reading, or an origin that
//! stops reading, stalls the other side instead of making the proxy buffer the body.
//!
//! Each test moves 50 MiB, lets the reader stall, waits until the writer's progress
//! stops growing, and asserts the writer got far less than 50 MiB out. Loopback socket
//! buffers hold a few MiB per socket (four sockets between writer and reader), and the
//! proxy one read buffer per direction, so 20 MiB is a generous ceiling. Then the
//! reader is released and the whole body is checked byte for byte.

#![expect(
    clippy::unwrap_used,
    reason = "a panic is how a test fails; allow-unwrap-in-tests does not reach helpers outside #[test] fns"
)]

mod support;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;

use support::*;

const TOTAL: usize = 50 * 1024 * 1024;
const CEILING: usize = 20 * 1024 * 1024;
const WRITE_CHUNK: usize = 64 * 1024;

/// The body: a pseudo-random block repeated. Its length is not a divisor of anything
/// the proxy or the kernel uses, so a lost, duplicated or reordered piece shows.
struct Cyclic {
    block: Vec<u8>,
}

impl Cyclic {
    fn new() -> Cyclic {
        Cyclic {
            block: pattern(1_000_003),
        }
    }

    /// The `len` bytes of the body starting at `offset`, as (block) slices.
    fn pieces(&self, mut offset: usize, mut len: usize) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while len > 0 {
            let at = offset % self.block.len();
            let n = len.min(self.block.len() - at);
            out.push(&self.block[at..at + n]);
            offset += n;
            len -= n;
        }
        out
    }

    /// Writes the whole body to `out` in `WRITE_CHUNK` writes, counting progress.
    fn write_all(&self, out: &mut impl Write, written: &AtomicUsize) -> std::io::Result<()> {
        let mut sent = 0;
        while sent < TOTAL {
            let n = WRITE_CHUNK.min(TOTAL - sent);
            for piece in self.pieces(sent, n) {
                out.write_all(piece)?;
            }
            sent += n;
            written.store(sent, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Checks that `got` is the body's bytes at `offset`.
    #[track_caller]
    fn check(&self, offset: usize, got: &[u8]) {
        let mut at = 0;
        for piece in self.pieces(offset, got.len()) {
            assert!(
                got[at..at + piece.len()] == *piece,
                "body differs somewhere in bytes {}..{}",
                offset + at,
                offset + at + piece.len()
            );
            at += piece.len();
        }
    }

    /// Reads exactly the whole body, `already` (bytes read with the head) first.
    fn read_and_check(&self, already: &[u8], mut stream: impl Read) {
        let mut offset = 0;
        self.check(offset, already);
        offset += already.len();
        let mut buf = vec![0u8; 256 * 1024];
        while offset < TOTAL {
            let n = stream
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("reading the body at {offset}: {e}"));
            assert!(n > 0, "EOF after {offset} of {TOTAL} body bytes");
            assert!(offset + n <= TOTAL, "more than {TOTAL} body bytes");
            self.check(offset, &buf[..n]);
            offset += n;
        }
    }
}

/// Polls `progress` until it has not changed for several consecutive checks (the
/// writer is blocked), bounded by [`WAIT`]. Returns the stalled value.
fn wait_for_stall(progress: &AtomicUsize) -> usize {
    const STEADY_CHECKS: u32 = 10;
    let deadline = std::time::Instant::now() + WAIT;
    let mut last = progress.load(Ordering::SeqCst);
    let mut steady = 0;
    while steady < STEADY_CHECKS {
        assert!(
            std::time::Instant::now() < deadline,
            "writer never stalled (at {last} bytes)"
        );
        thread::sleep(std::time::Duration::from_millis(25));
        let now = progress.load(Ordering::SeqCst);
        if now == last && now > 0 {
            steady += 1;
        } else {
            steady = 0;
            last = now;
        }
    }
    last
}

#[test]
fn slow_reader_stalls_the_origin_instead_of_being_buffered() {
    let body = Arc::new(Cyclic::new());
    let written = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (body, written) = (body.clone(), written.clone());
        Origin::raw(move |mut conn| {
            let Some(_request) = conn.read_request() else {
                return;
            };
            conn.send(format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n").as_bytes());
            let mut stream = conn.wire.stream().try_clone().unwrap();
            // A write error means the test already failed elsewhere.
            let _ = body.write_all(&mut stream, &written);
        })
    };
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(&get("http://alpha.test/big", ""));
    // Read nothing: the origin must stall with most of the body still unsent.
    let stalled = wait_for_stall(&written);
    assert!(
        stalled < CEILING,
        "the origin wrote {stalled} bytes to a client that read nothing"
    );

    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(head.start[1], "200");
    assert_eq!(
        head.headers.get("content-length"),
        Some(TOTAL.to_string().as_str())
    );
    let already = client.buffered().to_vec();
    body.read_and_check(&already, client.stream());
    assert_eq!(written.load(Ordering::SeqCst), TOTAL);
}

#[test]
fn slow_origin_stalls_the_upload_instead_of_it_being_buffered() {
    let body = Arc::new(Cyclic::new());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let origin = {
        let body = body.clone();
        Origin::raw(move |mut conn| {
            let Some(head) = conn.read_head() else {
                return;
            };
            assert_eq!(
                head.headers.get("content-length"),
                Some(TOTAL.to_string().as_str())
            );
            // Read nothing more until the test says so.
            release_rx.lock().unwrap().recv_timeout(WAIT).unwrap();
            let already = conn.wire.buffered().to_vec();
            body.read_and_check(&already, conn.wire.stream());
            conn.send(&ok("all 50 MiB arrived intact"));
        })
    };
    let proxy = spawn_proxy(&[]);
    proxy.route("alpha.test", &origin);

    let mut client = proxy.connect();
    client.send(
        format!(
            "POST http://alpha.test/upload HTTP/1.1\r\nHost: alpha.test\r\nContent-Length: {TOTAL}\r\n\r\n"
        )
        .as_bytes(),
    );
    let written = Arc::new(AtomicUsize::new(0));
    let uploader = {
        let (body, written) = (body.clone(), written.clone());
        let mut stream = client.stream().try_clone().unwrap();
        thread::spawn(move || body.write_all(&mut stream, &written))
    };

    let stalled = wait_for_stall(&written);
    assert!(
        stalled < CEILING,
        "the client wrote {stalled} bytes to an origin that read nothing"
    );

    release_tx.send(()).unwrap();
    uploader.join().unwrap().unwrap();
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "all 50 MiB arrived intact");
}

// === slow but steady: `--timeout` bounds inactivity, not a transfer's length ===
//
// A peer that keeps taking bytes, however slowly, is never cut. The kernel reports a
// socket writable again only once much of its send buffer has drained, which for a slow
// reader takes longer than the (here, short) timeout although bytes move all the time.

const STEADY_TOTAL: usize = 6 * 1024 * 1024;
const STEADY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

/// Reads exactly `total` bytes in `chunk` pieces, pausing after each (about 1.6 MB/s),
/// checking them against `body`.
fn read_steadily(body: &Cyclic, already: &[u8], mut stream: impl Read, total: usize) {
    let mut offset = already.len();
    body.check(0, already);
    let mut buf = vec![0u8; 32 * 1024];
    while offset < total {
        let want = buf.len().min(total - offset);
        let n = stream
            .read(&mut buf[..want])
            .unwrap_or_else(|e| panic!("reading at {offset} of {total}: {e}"));
        assert!(n > 0, "closed after {offset} of {total} bytes");
        body.check(offset, &buf[..n]);
        offset += n;
        thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A client socket with a small receive buffer, so that the proxy's send buffer fills.
fn small_window_client(addr: std::net::SocketAddr) -> Wire {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket.connect(&addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.set_write_timeout(Some(WAIT)).unwrap();
    Wire::new(stream)
}

/// An origin that answers one request with `STEADY_TOTAL` bytes of the cyclic body.
fn steady_body_origin(body: Arc<Cyclic>) -> Origin {
    Origin::raw(move |mut conn| {
        let Some(_request) = conn.read_request() else {
            return;
        };
        conn.send(format!("HTTP/1.1 200 OK\r\nContent-Length: {STEADY_TOTAL}\r\n\r\n").as_bytes());
        let mut stream = conn.wire.stream().try_clone().unwrap();
        for piece in body.pieces(0, STEADY_TOTAL) {
            if stream.write_all(piece).is_err() {
                return;
            }
        }
    })
}

#[test]
fn slow_steady_reader_gets_the_whole_download() {
    let body = Arc::new(Cyclic::new());
    let origin = steady_body_origin(body.clone());
    let proxy = spawn_proxy_with(&[], |config| config.timeout = STEADY_TIMEOUT);
    proxy.route("alpha.test", &origin);

    let mut client = small_window_client(proxy.handle().local_addr());
    client.send(&get("http://alpha.test/big", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(head.start[1], "200");
    let already = client.buffered().to_vec();
    read_steadily(&body, &already, client.stream(), STEADY_TOTAL);
}

#[test]
fn slow_steady_reader_gets_the_whole_tunnel_stream() {
    let body = Arc::new(Cyclic::new());
    let origin = steady_body_origin(body.clone());
    let proxy = spawn_proxy_with(&[], |config| config.timeout = STEADY_TIMEOUT);

    let mut client = small_window_client(proxy.handle().local_addr());
    client.open_tunnel(&origin.addr.to_string());
    client.send(&get("/big", ""));
    let head = parse_head(&client.read_head().unwrap().unwrap());
    assert_eq!(head.start[1], "200");
    let already = client.buffered().to_vec();
    read_steadily(&body, &already, client.stream(), STEADY_TOTAL);
}

#[test]
fn slow_steady_origin_gets_the_whole_upload_and_answers() {
    let body = Arc::new(Cyclic::new());
    // An origin with a small receive window that reads steadily: the proxy's send
    // buffer, not the origin's, holds what is in flight, as over a real network.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(32 * 1024).unwrap();
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(8).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let origin_addr = listener.local_addr().unwrap();
    let origin = {
        let body = body.clone();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut conn = Wire::new(stream);
            let head = parse_head(&conn.read_head().unwrap().unwrap());
            assert_eq!(
                head.headers.get("content-length"),
                Some(STEADY_TOTAL.to_string().as_str())
            );
            let already = conn.buffered().to_vec();
            read_steadily(&body, &already, conn.stream(), STEADY_TOTAL);
            conn.send(&ok("all of it, slowly"));
        })
    };
    let proxy = spawn_proxy_with(&[], |config| config.timeout = STEADY_TIMEOUT);

    let mut client = proxy.connect();
    client.send(
        format!(
            "POST http://{origin_addr}/upload HTTP/1.1\r\nHost: {origin_addr}\r\nContent-Length: {STEADY_TOTAL}\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut stream = client.stream().try_clone().unwrap();
    for piece in body.pieces(0, STEADY_TOTAL) {
        stream.write_all(piece).unwrap();
    }
    let resp = client.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "all of it, slowly");
    origin.join().unwrap();
}

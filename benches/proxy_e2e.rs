//! End-to-end: one keep-alive GET through the proxy, next to the same GET sent straight
//! to the origin (hudsucker's baseline idea), and one CONNECT round trip.
//!
//! The origin is a minimal blocking server (no HTTP library) so the numbers show the
//! proxy's cost, not a framework's. Run: `cargo bench --bench proxy_e2e`.
#![expect(
    clippy::expect_used,
    reason = "bench setup: any failure should stop the run"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BODY: &[u8] = b"hello from the origin\n";

/// Starts an origin answering every request head with a small keep-alive response.
fn spawn_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
    let addr = listener.local_addr().expect("origin addr");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve(stream));
        }
    });
    addr
}

fn serve(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    );
    let mut response = response.into_bytes();
    response.extend_from_slice(BODY);
    let mut buf = vec![0u8; 16 * 1024];
    let mut filled = 0;
    loop {
        match stream.read(&mut buf[filled..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => filled += n,
        }
        while let Some(end) = find_head_end(&buf[..filled]) {
            if stream.write_all(&response).is_err() {
                return;
            }
            buf.copy_within(end..filled, 0);
            filled -= end;
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Sends `request` and reads one response of known total length.
fn round_trip(stream: &mut TcpStream, request: &[u8], buf: &mut [u8]) {
    stream.write_all(request).expect("write request");
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).expect("read response");
        assert!(n > 0, "connection closed");
        filled += n;
        if let Some(end) = find_head_end(&buf[..filled]) {
            if filled >= end + BODY.len() {
                return;
            }
        }
    }
}

fn bench_get(c: &mut Criterion) {
    let origin = spawn_origin();
    let config = proxy::Config {
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        num_workers: 1,
        ..proxy::Config::default()
    };
    let handle = proxy::start(config).expect("start proxy");
    let proxy_addr = handle.local_addr();

    let mut group = c.benchmark_group("keep-alive GET");
    group.throughput(Throughput::Elements(1));
    let direct_req = format!("GET /small HTTP/1.1\r\nHost: {origin}\r\nUser-Agent: bench\r\n\r\n");
    let proxied_req = format!(
        "GET http://{origin}/small HTTP/1.1\r\nHost: {origin}\r\nUser-Agent: bench\r\n\r\n"
    );
    let mut buf = vec![0u8; 16 * 1024];

    let mut direct = TcpStream::connect(origin).expect("connect origin");
    direct.set_nodelay(true).expect("nodelay");
    group.bench_function("direct", |b| {
        b.iter(|| round_trip(&mut direct, direct_req.as_bytes(), &mut buf))
    });

    let mut via = TcpStream::connect(proxy_addr).expect("connect proxy");
    via.set_nodelay(true).expect("nodelay");
    group.bench_function("via proxy", |b| {
        b.iter(|| round_trip(&mut via, proxied_req.as_bytes(), &mut buf))
    });
    group.finish();

    let mut group = c.benchmark_group("CONNECT tunnel round trip");
    group.throughput(Throughput::Elements(1));
    let mut tunnel = TcpStream::connect(proxy_addr).expect("connect proxy");
    tunnel.set_nodelay(true).expect("nodelay");
    tunnel
        .write_all(format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
        .expect("write CONNECT");
    let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut reply = vec![0u8; established.len()];
    tunnel.read_exact(&mut reply).expect("CONNECT reply");
    assert_eq!(reply, established);
    group.bench_function("GET inside tunnel", |b| {
        b.iter(|| round_trip(&mut tunnel, direct_req.as_bytes(), &mut buf))
    });
    group.finish();
    drop((direct, via, tunnel));
    handle.stop();
}

criterion_group!(benches, bench_get);
criterion_main!(benches);

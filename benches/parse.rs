//! Criterion benches for the HTTP/1.x hot path: head parsing and chunked decoding.
//!
//! Run with `cargo bench --bench parse`; numbers are bytes/second of input so head sizes compare directly.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proxy::config::Limits;
use proxy::http::{parse_request, ChunkedDecoder, Parsed};

const SMALL_GET: &[u8] =
    b"GET http://example.com/index.html HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";

const BROWSER_GET: &[u8] = b"GET http://www.example.com/articles/2024/06/some-article-title?ref=homepage&utm=x HTTP/1.1\r\n\
Host: www.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Referer: http://www.example.com/\r\n\
Cookie: session=0123456789abcdef0123456789abcdef; theme=dark; consent=yes\r\n\
Proxy-Connection: keep-alive\r\n\
Upgrade-Insecure-Requests: 1\r\n\
Sec-Fetch-Dest: document\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-User: ?1\r\n\
Cache-Control: max-age=0\r\n\
Priority: u=0, i\r\n\r\n";

fn hundred_headers() -> Vec<u8> {
    let mut head = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n".to_vec();
    for i in 1..100 {
        head.extend_from_slice(format!("X-Header-{i:03}: value-{i:03}-abcdefghij\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn bench_heads(c: &mut Criterion) {
    let limits = Limits::default();
    let hundred = hundred_headers();
    let mut group = c.benchmark_group("parse_request");
    for (name, head) in [
        ("small_get", SMALL_GET),
        ("browser_get", BROWSER_GET),
        ("100_headers", &hundred[..]),
    ] {
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), head, |b, head| {
            let mut buf = BytesMut::with_capacity(head.len());
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(head);
                match parse_request(&mut buf, &limits) {
                    Ok(Parsed::Complete(h)) => black_box(h),
                    other => panic!("bench head did not parse: {other:?}"),
                }
            });
        });
    }
    group.finish();
}

/// A chunked body of `total` payload bytes in `chunk`-byte chunks, terminated.
fn chunked_body(total: usize, chunk: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(total + total / chunk * 8 + 8);
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        body.extend(std::iter::repeat(b'x').take(n));
        body.extend_from_slice(b"\r\n");
        left -= n;
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn bench_chunked(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("chunked_decode");
    let cases = [
        ("1MiB_in_4KiB_chunks", chunked_body(1 << 20, 4096)),
        ("64KiB_in_1B_chunks", chunked_body(1 << 16, 1)),
    ];
    for (name, body) in &cases {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), body, |b, body| {
            let mut ranges = Vec::with_capacity(1 << 16);
            b.iter(|| {
                ranges.clear();
                let mut dec = ChunkedDecoder::new(&limits);
                // Feed in 16 KiB reads, as a socket would deliver them.
                for piece in body.chunks(16 * 1024) {
                    match dec.advance(piece, Some(&mut ranges)) {
                        Ok(p) if p.done => break,
                        Ok(_) => {}
                        Err(e) => panic!("bench body did not decode: {e}"),
                    }
                }
                black_box(dec.is_done())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_heads, bench_chunked);
criterion_main!(benches);

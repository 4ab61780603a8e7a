//! Shared helpers for the integration tests: a proxy on port 0 with injected DNS,
//! origins with their own minimal HTTP/1.1 handling (so the proxy's parser is never
//! checked against itself), and raw client I/O that records exactly what arrived.
//!
//! Nothing here sleeps to wait for readiness: every listener is bound before the
//! function that creates it returns. Every read has a generous timeout that fails
//! the test instead of hanging it.

#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

use std::collections::HashMap;
use std::io::{self, Cursor, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use proxy::dns::{Resolve, ResolveFuture};

pub mod tls;
use proxy::{Config, ProxyHandle};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

// === proxy ===

/// A proxy started in-process on 127.0.0.1:0; shut down when dropped.
pub struct TestProxy {
    /// The proxy's first listening address.
    pub addr: SocketAddr,
    /// The names the proxy can resolve (`alpha.test` → an origin).
    pub names: Arc<MapResolver>,
    handle: Option<ProxyHandle>,
}

/// Starts a proxy with `["--port", "0", "--num-workers", "1"]` plus `args`.
pub fn spawn_proxy(args: &[&str]) -> TestProxy {
    spawn_proxy_with(args, |_| {})
}

/// Like [`spawn_proxy`], then lets `tweak` edit the config before it starts.
/// The resolver is a fresh [`MapResolver`] unless `tweak` replaces it.
pub fn spawn_proxy_with(args: &[&str], tweak: impl FnOnce(&mut Config)) -> TestProxy {
    spawn_proxy_plugins(args, tweak, Vec::new())
}

/// Like [`spawn_proxy_with`], with extra plugins after the configured ones
/// (`proxy::start_with`).
#[allow(dead_code)]
pub fn spawn_proxy_plugins(
    args: &[&str],
    tweak: impl FnOnce(&mut Config),
    plugins: Vec<Arc<dyn proxy::plugin::PluginFactory>>,
) -> TestProxy {
    let mut argv: Vec<String> = vec!["proxy".into()];
    // clap refuses a flag given twice, so the defaults only fill in what `args` lacks.
    if !args.contains(&"--port") {
        argv.extend(["--port".into(), "0".into()]);
    }
    if !args.contains(&"--num-workers") {
        argv.extend(["--num-workers".into(), "1".into()]);
    }
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut config = Config::from_args(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e:?}"));
    let names = Arc::new(MapResolver::default());
    config.resolver = names.clone();
    tweak(&mut config);
    let handle = proxy::start_with(config, plugins).unwrap_or_else(|e| panic!("proxy::start: {e}"));
    TestProxy {
        addr: handle.local_addr(),
        names,
        handle: Some(handle),
    }
}

impl TestProxy {
    /// Makes `name` resolve to `origin`'s address (whatever port the URL names).
    pub fn route(&self, name: &str, origin: &Origin) {
        self.names.insert(name, origin.addr);
    }

    /// Opens a client connection to the proxy.
    pub fn connect(&self) -> Wire {
        Wire::connect(self.addr)
    }

    /// The embedding handle.
    pub fn handle(&self) -> &ProxyHandle {
        self.handle.as_ref().unwrap()
    }

    /// Takes the handle out, e.g. to call `wait` or `stop` (consuming) on it.
    pub fn take_handle(&mut self) -> ProxyHandle {
        self.handle.take().unwrap()
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        // Signals shutdown without waiting: a failed test must not also hang on a drain.
        if let Some(handle) = self.handle.take() {
            handle.shutdown();
        }
    }
}

/// Test DNS: maps names to fixed addresses; every other name is `NotFound`.
#[derive(Default)]
pub struct MapResolver {
    names: Mutex<HashMap<String, Vec<SocketAddr>>>,
}

impl MapResolver {
    /// Makes `name` resolve to `addr`.
    pub fn insert(&self, name: &str, addr: SocketAddr) {
        self.insert_all(name, &[addr]);
    }

    /// Makes `name` resolve to `addrs`, in that order.
    pub fn insert_all(&self, name: &str, addrs: &[SocketAddr]) {
        self.names
            .lock()
            .unwrap()
            .insert(name.to_ascii_lowercase(), addrs.to_vec());
    }
}

impl Resolve for MapResolver {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> ResolveFuture<'a> {
        let found = self
            .names
            .lock()
            .unwrap()
            .get(&host.to_ascii_lowercase())
            .cloned();
        Box::pin(async move {
            match found {
                Some(addrs) => Ok(addrs),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no test name {host}"),
                )),
            }
        })
    }
}

/// A resolver that never answers (for `dns_timeout`).
pub struct HangingResolver;

impl Resolve for HangingResolver {
    fn resolve<'a>(&'a self, _host: &'a str, _port: u16) -> ResolveFuture<'a> {
        Box::pin(std::future::pending())
    }
}

// === wire: buffered raw I/O with our own framing ===

enum Source {
    Tcp(TcpStream),
    Bytes(Cursor<Vec<u8>>),
    /// Any other byte stream, e.g. a TLS session over TCP (see [`tls`]).
    Duplex(Box<dyn Duplex>),
}

/// A byte stream both ways, owned by a [`Wire`].
pub trait Duplex: Read + Write + Send {}

impl<T: Read + Write + Send> Duplex for T {}

/// A byte stream plus what has been read from it but not yet consumed.
pub struct Wire {
    source: Source,
    buf: Vec<u8>,
}

impl Wire {
    /// Connects to `addr` with [`WAIT`] as read and write timeout.
    pub fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Wire::new(stream)
    }

    /// Wraps an accepted or connected stream (sets [`WAIT`] timeouts).
    pub fn new(stream: TcpStream) -> Wire {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Wire {
            source: Source::Tcp(stream),
            buf: Vec::new(),
        }
    }

    /// Wraps any byte stream (timeouts are the stream's own business).
    pub fn from_duplex(stream: impl Duplex + 'static) -> Wire {
        Wire {
            source: Source::Duplex(Box::new(stream)),
            buf: Vec::new(),
        }
    }

    /// Reads from bytes already received (e.g. the result of [`raw_exchange`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Wire {
        Wire {
            source: Source::Bytes(Cursor::new(bytes)),
            buf: Vec::new(),
        }
    }

    /// The TCP stream (panics for a byte source).
    pub fn stream(&self) -> &TcpStream {
        match &self.source {
            Source::Tcp(s) => s,
            Source::Bytes(_) | Source::Duplex(_) => panic!("not a TCP wire"),
        }
    }

    /// Writes all of `bytes`, panicking on failure.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes)
            .unwrap_or_else(|e| panic!("write: {e}"));
    }

    /// Writes all of `bytes` (the peer may have closed already: callers decide).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match &mut self.source {
            Source::Tcp(s) => s.write_all(bytes),
            Source::Duplex(s) => s.write_all(bytes).and_then(|()| s.flush()),
            Source::Bytes(_) => Err(io::Error::other("not a TCP wire")),
        }
    }

    /// Half-closes: no more bytes from us.
    pub fn shutdown_write(&self) {
        self.stream().shutdown(Shutdown::Write).unwrap();
    }

    /// Bytes read but not yet consumed.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Reads more bytes into the buffer; `Ok(0)` at EOF. A reset counts as EOF.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let read = match &mut self.source {
            Source::Tcp(s) => s.read(&mut chunk),
            Source::Bytes(c) => c.read(&mut chunk),
            Source::Duplex(s) => s.read(&mut chunk),
        };
        match read {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(0),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "read timed out (test limit)",
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.buf.drain(..n).collect()
    }

    /// Reads a head through its blank line (included). `Ok(None)` at EOF before any byte.
    pub fn read_head(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                return Ok(Some(self.take(end + 4)));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a head",
                ));
            }
        }
    }

    /// Reads one line; returns it without its CRLF.
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let mut line = self.take(end + 2);
                line.truncate(end);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a line",
                ));
            }
        }
    }

    /// Reads exactly `n` bytes.
    pub fn read_exact_vec(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.take(n))
    }

    /// Reads everything until EOF.
    pub fn read_to_end(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? != 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Asserts that the peer closes without sending anything more.
    pub fn expect_eof(&mut self) {
        let rest = self
            .read_to_end()
            .unwrap_or_else(|e| panic!("waiting for EOF: {e}"));
        assert!(
            rest.is_empty(),
            "expected EOF, got {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// Reads one response to a request with `method` (HEAD has no body).
    pub fn read_response_to(&mut self, method: &str) -> Response {
        read_response_inner(self, method).unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    /// Reads one response to a GET-like request.
    pub fn read_response(&mut self) -> Response {
        self.read_response_to("GET")
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// === heads, bodies, requests, responses ===

/// Header fields in arrival order, as (name, value) with the value's OWS trimmed.
#[derive(Clone, Debug, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Whether a comma-separated header holds `token` (case-insensitive).
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// A parsed head: start line and fields, plus the exact bytes.
#[derive(Clone, Debug)]
pub struct Head {
    pub start: Vec<String>,
    pub headers: Headers,
    pub raw: Vec<u8>,
}

/// Splits a head (through its blank line) with our own code, not the proxy's.
pub fn parse_head(raw: &[u8]) -> Head {
    let text = String::from_utf8_lossy(raw);
    let mut lines = text.split("\r\n");
    let start_line = lines.next().unwrap_or_default();
    let start = start_line.splitn(3, ' ').map(str::to_owned).collect();
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.push((name.to_owned(), value.trim_matches([' ', '\t']).to_owned()));
    }
    Head {
        start,
        headers: Headers(headers),
        raw: raw.to_vec(),
    }
}

/// Whether `raw` holds an LF not preceded by CR.
pub fn has_bare_lf(raw: &[u8]) -> bool {
    raw.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'))
}

/// A decoded body plus its exact wire bytes.
#[derive(Clone, Debug, Default)]
pub struct Body {
    pub data: Vec<u8>,
    pub raw: Vec<u8>,
    pub chunked: bool,
    pub trailers: Headers,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

fn read_body(wire: &mut Wire, framing: Framing) -> io::Result<Body> {
    match framing {
        Framing::None => Ok(Body::default()),
        Framing::Length(n) => {
            let data = wire.read_exact_vec(n)?;
            Ok(Body {
                raw: data.clone(),
                data,
                ..Body::default()
            })
        }
        Framing::UntilClose => {
            let data = wire.read_to_end()?;
            Ok(Body {
                raw: data.clone(),
                data,
                ..Body::default()
            })
        }
        Framing::Chunked => read_chunked(wire),
    }
}

/// Decodes a chunked body strictly (RFC 9112 §7.1); any deviation is an error.
fn read_chunked(wire: &mut Wire) -> io::Result<Body> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut body = Body {
        chunked: true,
        ..Body::default()
    };
    loop {
        let line = wire.read_line()?;
        body.raw.extend_from_slice(&line);
        body.raw.extend_from_slice(b"\r\n");
        let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
        let size_text = std::str::from_utf8(size_part).map_err(|_| bad(format!("{line:?}")))?;
        if size_text.is_empty() || !size_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        let size = usize::from_str_radix(size_text, 16).map_err(|e| bad(e.to_string()))?;
        if size == 0 {
            loop {
                let trailer = wire.read_line()?;
                body.raw.extend_from_slice(&trailer);
                body.raw.extend_from_slice(b"\r\n");
                if trailer.is_empty() {
                    return Ok(body);
                }
                let text = String::from_utf8_lossy(&trailer);
                let (name, value) = text.split_once(':').ok_or_else(|| bad(text.to_string()))?;
                body.trailers
                    .0
                    .push((name.to_owned(), value.trim().to_owned()));
            }
        }
        let data = wire.read_exact_vec(size + 2)?;
        if !data.ends_with(b"\r\n") {
            return Err(bad("chunk data not followed by CRLF".into()));
        }
        body.raw.extend_from_slice(&data);
        body.data.extend_from_slice(&data[..size]);
    }
}

fn request_framing(headers: &Headers) -> Framing {
    if let Some(te) = headers.get("transfer-encoding") {
        assert!(
            te.rsplit(',')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("chunked"),
            "origin got a Transfer-Encoding not ending in chunked: {te}"
        );
        return Framing::Chunked;
    }
    match headers.get("content-length") {
        Some(cl) => Framing::Length(cl.parse().unwrap_or_else(|_| panic!("bad CL {cl:?}"))),
        None => Framing::None,
    }
}

/// One request as an origin received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Headers,
    /// The exact head bytes as they arrived.
    pub raw_head: Vec<u8>,
    pub body: Body,
    /// Which accepted connection (0, 1, …) it came on.
    pub conn: usize,
}

/// One response as a client received it.
#[derive(Clone, Debug)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub raw_head: Vec<u8>,
    pub body: Body,
}

impl Response {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body.data).into_owned()
    }

    /// The `Proxy-Status` error code, if the header is `proxy; error=<code>; …`.
    pub fn proxy_error(&self) -> Option<String> {
        let value = self.headers.get("proxy-status")?;
        let mut params = value.split(';').map(str::trim);
        params.next()?;
        params
            .find_map(|p| p.strip_prefix("error="))
            .map(|c| c.trim_matches('"').to_owned())
    }

    /// Asserts a synthetic error reply: `status` and `Proxy-Status: proxy; error=<code>`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "status; head: {}",
            String::from_utf8_lossy(&self.raw_head)
        );
        let value = self.headers.get("proxy-status").unwrap_or_else(|| {
            panic!(
                "no Proxy-Status in {}",
                String::from_utf8_lossy(&self.raw_head)
            )
        });
        assert!(
            value.starts_with("proxy"),
            "Proxy-Status names the proxy first: {value}"
        );
        assert_eq!(
            self.proxy_error().as_deref(),
            Some(code),
            "Proxy-Status: {value}"
        );
    }
}

fn read_response_inner(wire: &mut Wire, method: &str) -> io::Result<Response> {
    let raw = wire
        .read_head()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF instead of a response"))?;
    let head = parse_head(&raw);
    let version = head.start.first().cloned().unwrap_or_default();
    let status: u16 = head
        .start
        .get(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {:?}", head.start),
            )
        })?;
    // RFC 9112 §6.3: no body for HEAD, 1xx, 204, 304; TE chunked beats CL; else CL; else close.
    let framing =
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            Framing::None
        } else if head.headers.has_token("transfer-encoding", "chunked") {
            Framing::Chunked
        } else if let Some(cl) = head.headers.get("content-length") {
            Framing::Length(cl.parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad Content-Length {cl:?}"),
                )
            })?)
        } else {
            Framing::UntilClose
        };
    let body = read_body(wire, framing)?;
    Ok(Response {
        version,
        status,
        reason: head.start.get(2).cloned().unwrap_or_default(),
        headers: head.headers,
        raw_head: raw,
        body,
    })
}

// === client helpers ===

/// Connects to `addr`, writes `bytes`, reads until EOF. A write the peer cut short is ignored.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut wire = Wire::connect(addr);
    let _ = wire.try_send(bytes);
    wire.read_to_end()
        .unwrap_or_else(|e| panic!("waiting for EOF from {addr}: {e}"))
}

/// Connects to `addr`, writes `bytes`, reads one response (GET-like).
pub fn request(addr: SocketAddr, bytes: &[u8]) -> Response {
    let mut wire = Wire::connect(addr);
    let _ = wire.try_send(bytes);
    wire.read_response()
}

/// Parses the first response out of bytes already received; returns the rest too.
pub fn parse_response(bytes: Vec<u8>) -> (Response, Vec<u8>) {
    let mut wire = Wire::from_bytes(bytes);
    let response = wire.read_response();
    let rest = wire.read_to_end().unwrap();
    (response, rest)
}

/// `GET <url> HTTP/1.1` with a Host taken from the URL, plus `extra` header lines.
pub fn get(url: &str, extra: &str) -> Vec<u8> {
    let authority = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default();
    format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\n{extra}\r\n").into_bytes()
}

/// A ureq agent that sends everything through the proxy at `addr`.
pub fn ureq_agent(addr: SocketAddr) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .proxy(ureq::Proxy::new(format!("http://{addr}")).unwrap())
        .timeout(WAIT)
        .build()
}

/// Deterministic, non-repeating-looking test data (xorshift).
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a, to compare large bodies without printing them.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A fresh path under cargo's per-target temp dir (nothing created).
pub fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}-{n}", std::process::id()))
}

/// An address nothing listens on: bound, noted, closed.
pub fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// === origins ===

#[derive(Default)]
struct OriginState {
    accepted: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
}

/// An origin server on 127.0.0.1:0: one thread accepting, one thread per connection.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    arrivals: Mutex<Receiver<RecordedRequest>>,
}

/// One accepted origin connection, handed to a scripted handler.
pub struct OriginConn {
    /// 0 for the first accepted connection, 1 for the next, …
    pub index: usize,
    pub wire: Wire,
    state: Arc<OriginState>,
    arrivals: Sender<RecordedRequest>,
}

/// An accepted origin connection, before its wire exists (see [`Origin::accepting`]).
pub struct AcceptedConn {
    /// 0 for the first accepted connection, 1 for the next, …
    pub index: usize,
    state: Arc<OriginState>,
    arrivals: Sender<RecordedRequest>,
}

impl AcceptedConn {
    /// The connection, speaking over `wire`.
    pub fn conn(self, wire: Wire) -> OriginConn {
        OriginConn {
            index: self.index,
            wire,
            state: self.state,
            arrivals: self.arrivals,
        }
    }
}

impl OriginConn {
    /// Reads a request head; `None` when the proxy closed the connection (or it broke).
    pub fn read_head(&mut self) -> Option<Head> {
        match self.wire.read_head() {
            Ok(Some(raw)) => Some(parse_head(&raw)),
            Ok(None) => None,
            Err(e) => {
                eprintln!("origin: reading a head: {e}");
                None
            }
        }
    }

    /// Reads the body that `head` announces, then records the whole request.
    pub fn read_body(&mut self, head: Head) -> RecordedRequest {
        let framing = request_framing(&head.headers);
        let body = read_body(&mut self.wire, framing)
            .unwrap_or_else(|e| panic!("origin: reading a {framing:?} request body: {e}"));
        let request = RecordedRequest {
            method: head.start.first().cloned().unwrap_or_default(),
            target: head.start.get(1).cloned().unwrap_or_default(),
            version: head.start.get(2).cloned().unwrap_or_default(),
            headers: head.headers,
            raw_head: head.raw,
            body,
            conn: self.index,
        };
        self.state.requests.lock().unwrap().push(request.clone());
        let _ = self.arrivals.send(request.clone());
        request
    }

    /// Reads and records one whole request; `None` at EOF.
    pub fn read_request(&mut self) -> Option<RecordedRequest> {
        let head = self.read_head()?;
        Some(self.read_body(head))
    }

    /// Writes `bytes`; false if the proxy has gone.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.wire.try_send(bytes).is_ok()
    }
}

/// What an origin handler answers: raw bytes, then keep the connection or close it.
pub struct Reply {
    pub bytes: Vec<u8>,
    pub close: bool,
}

impl Reply {
    /// Sends `bytes` and keeps the connection for the next request.
    pub fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: false,
        }
    }

    /// Sends `bytes` and closes the connection.
    pub fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: true,
        }
    }
}

/// `HTTP/1.1 200 OK` with a Content-Length body.
pub fn ok(body: impl AsRef<[u8]>) -> Vec<u8> {
    response(200, &[], body)
}

/// A response with `headers` (name, value) and a Content-Length body.
pub fn response(status: u16, headers: &[(&str, &str)], body: impl AsRef<[u8]>) -> Vec<u8> {
    let body = body.as_ref();
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        304 => "Not Modified",
        404 => "Not Found",
        _ => "Whatever",
    }
}

impl Origin {
    /// An origin answering each request with `handler`'s reply (keep-alive loop).
    pub fn spawn<F>(handler: F) -> Origin
    where
        F: Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    {
        Origin::raw(move |mut conn| {
            while let Some(request) = conn.read_request() {
                let reply = handler(&request);
                if !conn.send(&reply.bytes) || reply.close {
                    return;
                }
            }
        })
    }

    /// An origin answering every request `200 OK` with `body`.
    pub fn fixed(body: &'static str) -> Origin {
        Origin::spawn(move |_| Reply::keep(ok(body)))
    }

    /// An origin that echoes each request's target as its body.
    pub fn echo_target() -> Origin {
        Origin::spawn(|req| Reply::keep(ok(&req.target)))
    }

    /// An origin whose every connection is run by `script` on its own thread.
    pub fn raw<F>(script: F) -> Origin
    where
        F: Fn(OriginConn) + Send + Sync + 'static,
    {
        Origin::accepting(move |stream, accepted| script(accepted.conn(Wire::new(stream))))
    }

    /// An origin that hands every accepted socket, with what its [`OriginConn`] needs
    /// besides a wire, to `serve` on its own thread (a TLS origin wraps the socket first).
    pub fn accepting<F>(serve: F) -> Origin
    where
        F: Fn(TcpStream, AcceptedConn) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let (tx, rx) = mpsc::channel();
        let serve = Arc::new(serve);
        let accept_state = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let accepted = AcceptedConn {
                    index: accept_state.accepted.fetch_add(1, Ordering::SeqCst),
                    state: accept_state.clone(),
                    arrivals: tx.clone(),
                };
                let serve = serve.clone();
                thread::spawn(move || serve(stream, accepted));
            }
        });
        Origin {
            addr,
            state,
            arrivals: Mutex::new(rx),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Every request recorded so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Waits (up to [`WAIT`]) for the next recorded request.
    pub fn next_request(&self) -> RecordedRequest {
        self.arrivals
            .lock()
            .unwrap()
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("origin {} got no request: {e}", self.addr))
    }

    /// `http://127.0.0.1:<port>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

// === added for framing, logging and listen tests ===

impl Wire {
    /// Reads one response to a GET-like request; an error instead of a panic (EOF,
    /// broken framing or the test's read limit), for peers that may have closed.
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        read_response_inner(self, "GET")
    }

    /// Sends `CONNECT <authority>` and asserts the proxy's exact `200 Connection
    /// established`; the wire is then a tunnel.
    #[allow(dead_code)]
    #[track_caller]
    pub fn open_tunnel(&mut self, authority: &str) {
        const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
        self.send(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes());
        assert_eq!(self.read_exact_vec(ESTABLISHED.len()).unwrap(), ESTABLISHED);
    }
}

// === the binary ===

/// The `proxy` binary, listening on 127.0.0.1:<ephemeral>; killed if dropped running.
#[allow(dead_code)]
pub struct ProxyBinary {
    /// The running process.
    pub child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The `--port-file` it wrote (removed on a clean exit).
    pub port_file: PathBuf,
}

#[allow(dead_code)]
impl ProxyBinary {
    /// Starts the binary with `--port 0 --num-workers 1 --port-file <tmp>` plus `extra`,
    /// and returns once the port file names its port (polled, bounded).
    pub fn spawn(extra: &[&str]) -> ProxyBinary {
        let mut args = vec!["--num-workers", "1"];
        args.extend_from_slice(extra);
        ProxyBinary::spawn_on(0, &args)
    }

    /// Starts the binary with `--port <port> --port-file <tmp>` plus `args` (nothing
    /// else), and returns once the port file names its port: the listeners are bound
    /// and listening by then (polled, bounded).
    pub fn spawn_on(port: u16, args: &[&str]) -> ProxyBinary {
        use std::process::{Command, Stdio};
        let port_file = temp_path("bin-port-file");
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--port", &port.to_string(), "--port-file"])
            .arg(&port_file)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        let port: u16 = loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break port;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("proxy exited early: {status}");
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("no port file after {WAIT:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        ProxyBinary {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            port_file,
        }
    }

    /// Runs the binary with `args` (plus `--port 0`) to its exit, which must come within
    /// [`WAIT`]: for usage errors and commands that print and exit.
    pub fn run_to_end(args: &[&str]) -> std::process::Output {
        use std::io::Read as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_proxy"))
            .args(["--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("proxy {args:?} did not exit within {WAIT:?}");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        child
            .stdout
            .take()
            .unwrap()
            .read_to_end(&mut stdout)
            .unwrap();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_end(&mut stderr)
            .unwrap();
        std::process::Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("proxy did not exit after SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for ProxyBinary {
    fn drop(&mut self) {
        // Only matters when a test failed before `terminate`.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `program` runs at all (`--version`); prints a skip note when it does not.
pub fn have(program: &str, what: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("note: {program} is not on PATH; skipping {what}");
    }
    found
}

/// `curl` with `args`, isolated from the user's curlrc and proxy environment; `None` if absent.
pub fn curl(args: &[&str]) -> Option<std::process::Output> {
    if !have("curl", "the curl test") {
        return None;
    }
    let output = std::process::Command::new("curl")
        .arg("-q") // must come first: ignore ~/.curlrc
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("CURL_CA_BUNDLE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .output()
        .unwrap();
    Some(output)
}

/// Decompresses gzip `data`.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

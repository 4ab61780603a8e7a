//! Soak driver for `helper/soak.sh`: many concurrent clients of mixed traffic through a
//! running proxy, against origins this process runs itself on loopback.
//!
//! Traffic kinds (client `i` runs kind `i % 8`): keep-alive small GETs, a new connection
//! per small GET, CONNECT tunnels carrying echoed messages, 1 MiB downloads, 1 MiB
//! uploads, slow readers (1 MiB at about 48 KB/s through a small receive window, so a
//! download outlasts `--timeout`), and two kinds of injected failures: clients that
//! close halfway through a download, and halfway through an upload. Everything is
//! checked (status, length, content); an unexpected outcome is an error.
//!
//! The proxy process (`--pid`) is sampled for RSS and open descriptors at the start and
//! every few seconds after the warm-up. Exit status 1 when any unexpected error occurred
//! or the median of the last fifth of the run is more than 10% above the median of the
//! first fifth after the warm-up (RSS or descriptors).
//!
//! Usage: soak --proxy 127.0.0.1:PORT --pid PID [--duration SECS] [--clients N]
//!             [--warmup SECS]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;
const SMALL: &[u8] = b"hello, soak\n";
/// Kinds, in the order clients are assigned to them.
const KINDS: [&str; 8] = [
    "keepalive_get",
    "newconn_get",
    "connect_echo",
    "download_1m",
    "upload_1m",
    "slow_reader",
    "abort_download",
    "abort_upload",
];
/// How often the proxy process is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Bound on any single wait of a client: far above `--timeout`, so a stall is an error.
const STALL: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Stats {
    ok: BTreeMap<&'static str, u64>,
    injected: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, u64>,
}

type Shared = Arc<Mutex<Stats>>;

fn record_ok(stats: &Shared, kind: &'static str) {
    if let Ok(mut s) = stats.lock() {
        *s.ok.entry(kind).or_default() += 1;
    }
}

fn record_injected(stats: &Shared, kind: &'static str) {
    if let Ok(mut s) = stats.lock() {
        *s.injected.entry(kind).or_default() += 1;
    }
}

fn record_error(stats: &Shared, kind: &'static str, what: String) {
    if let Ok(mut s) = stats.lock() {
        let n = s.errors.entry(format!("{kind}: {what}")).or_default();
        *n += 1;
        if *n <= 3 {
            eprintln!("soak: error: {kind}: {what}");
        }
    }
}

/// The 1 MiB body: a repeating pattern whose period is prime, so shifted or lost bytes show.
fn body_1m() -> Arc<Vec<u8>> {
    Arc::new((0..MIB).map(|i| (i % 251) as u8).collect())
}

// === origins ===

/// A keep-alive HTTP/1.1 origin: `GET /small`, `GET /1m`, `POST /upload` (answers with
/// the number of bytes it received and whether they matched the pattern).
async fn origin(listener: TcpListener, body: Arc<Vec<u8>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let _ = serve_origin(stream, body).await;
        });
    }
}

async fn serve_origin(mut stream: TcpStream, body: Arc<Vec<u8>>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(8192);
    loop {
        let Some((head, rest)) = read_head(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        buf = rest;
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        let length = content_length(&head).unwrap_or(0);
        if path == "/upload" {
            let (received, intact) = read_body_checked(&mut stream, &mut buf, length).await?;
            if received < length {
                return Ok(());
            }
            let text = format!("{received} {intact}\n");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            );
            stream.write_all(reply.as_bytes()).await?;
        } else if path == "/1m" {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n");
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(&body).await?;
        } else {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", SMALL.len());
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(SMALL).await?;
        }
    }
}

/// A TCP echo server: what a CONNECT tunnel reaches.
async fn echo(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

// === HTTP helpers (just enough for our own origins' and the proxy's responses) ===

/// Reads up to the end of a head; returns it and the bytes after it. `None` on a clean EOF.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            return Ok(Some((head, rest)));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("head over 64 KiB"));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(STALL, stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::other("stalled reading a head"))??;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::other("EOF inside a head"))
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Reads `length` body bytes (some may be in `buf` already), checking them against the
/// 1 MiB pattern. Returns how many arrived and whether they all matched.
async fn read_body_checked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    length: usize,
) -> std::io::Result<(usize, bool)> {
    let mut received = 0;
    let mut intact = true;
    let check = |bytes: &[u8], at: usize| {
        for (i, b) in bytes.iter().enumerate() {
            if *b != ((at + i) % 251) as u8 {
                return false;
            }
        }
        true
    };
    let take = buf.len().min(length);
    intact &= check(&buf[..take], 0);
    received += take;
    buf.drain(..take);
    let mut chunk = vec![0u8; 64 * 1024];
    while received < length {
        let want = chunk.len().min(length - received);
        let n = tokio::time::timeout(STALL, stream.read(&mut chunk[..want]))
            .await
            .map_err(|_| std::io::Error::other("stalled reading a body"))??;
        if n == 0 {
            break;
        }
        intact &= check(&chunk[..n], received);
        received += n;
    }
    Ok((received, intact))
}

/// Reads one response with a Content-Length body; returns status and body.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    let (head, rest) = read_head(stream, buf)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("closed before a response")?;
    *buf = rest;
    let length = content_length(&head).ok_or_else(|| format!("no Content-Length: {head}"))?;
    while buf.len() < length {
        let mut chunk = vec![0u8; (length - buf.len()).min(256 * 1024)];
        let n = tokio::time::timeout(STALL, stream.read(&mut chunk))
            .await
            .map_err(|_| "stalled reading a body".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {} of {length} body bytes", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..length).collect();
    Ok((status(&head), body))
}

fn get(origin: SocketAddr, path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    format!("GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n{connection}\r\n").into_bytes()
}

// === clients ===

struct Ctx {
    proxy: SocketAddr,
    origin: SocketAddr,
    echo: SocketAddr,
    body: Arc<Vec<u8>>,
    stats: Shared,
    until: Instant,
}

async fn client(kind: &'static str, ctx: Arc<Ctx>) {
    while Instant::now() < ctx.until {
        let result = match kind {
            "keepalive_get" => keepalive_get(&ctx).await,
            "newconn_get" => newconn_get(&ctx).await,
            "connect_echo" => connect_echo(&ctx).await,
            "download_1m" => download(&ctx, false).await,
            "upload_1m" => upload(&ctx, false).await,
            "slow_reader" => download(&ctx, true).await,
            "abort_download" => abort_download(&ctx).await,
            _ => upload(&ctx, true).await,
        };
        if let Err(what) = result {
            record_error(&ctx.stats, kind, what);
            // Do not spin on a persistent failure.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn connect(ctx: &Ctx) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(ctx.proxy)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn keepalive_get(ctx: &Ctx) -> Result<(), String> {
    let mut stream = connect(ctx).await?;
    let mut buf = Vec::new();
    let request = get(ctx.origin, "/small", false);
    // A few hundred requests per connection, then a new one.
    for _ in 0..500 {
        if Instant::now() >= ctx.until {
            break;
        }
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let (status, body) = read_response(&mut stream, &mut buf).await?;
        if status != 200 || body != SMALL {
            return Err(format!("status {status}, {} body bytes", body.len()));
        }
        record_ok(&ctx.stats, "keepalive_get");
    }
    Ok(())
}

async fn newconn_get(ctx: &Ctx) -> Result<(), String> {
    let mut stream = connect(ctx).await?;
    let mut buf = Vec::new();
    stream
        .write_all(&get(ctx.origin, "/small", true))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let (status, body) = read_response(&mut stream, &mut buf).await?;
    if status != 200 || body != SMALL {
        return Err(format!("status {status}, {} body bytes", body.len()));
    }
    record_ok(&ctx.stats, "newconn_get");
    Ok(())
}

async fn connect_echo(ctx: &Ctx) -> Result<(), String> {
    let mut stream = connect(ctx).await?;
    let authority = ctx.echo.to_string();
    stream
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let (head, rest) = read_head(&mut stream, &mut buf)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("closed before the CONNECT reply")?;
    if status(&head) != 200 || !rest.is_empty() {
        return Err(format!("CONNECT answered {head:?}"));
    }
    let message: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    let mut back = vec![0u8; message.len()];
    for _ in 0..20 {
        stream
            .write_all(&message)
            .await
            .map_err(|e| format!("tunnel write: {e}"))?;
        tokio::time::timeout(STALL, stream.read_exact(&mut back))
            .await
            .map_err(|_| "tunnel stalled".to_owned())?
            .map_err(|e| format!("tunnel read: {e}"))?;
        if back != message {
            return Err("echo differs".to_owned());
        }
        record_ok(&ctx.stats, "connect_echo");
    }
    Ok(())
}

async fn download(ctx: &Ctx, slow: bool) -> Result<(), String> {
    let kind = if slow { "slow_reader" } else { "download_1m" };
    let mut stream = if slow {
        // A small receive window, so that the proxy's send buffer fills and waits.
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        socket
            .set_recv_buffer_size(16 * 1024)
            .map_err(|e| e.to_string())?;
        socket
            .connect(ctx.proxy)
            .await
            .map_err(|e| format!("connect: {e}"))?
    } else {
        connect(ctx).await?
    };
    let mut buf = Vec::new();
    for _ in 0..if slow { 1 } else { 20 } {
        if Instant::now() >= ctx.until {
            break;
        }
        stream
            .write_all(&get(ctx.origin, "/1m", false))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let (head, rest) = read_head(&mut stream, &mut buf)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("closed before a response")?;
        buf = rest;
        if status(&head) != 200 || content_length(&head) != Some(MIB) {
            return Err(format!("answered {head:?}"));
        }
        let (received, intact) = if slow {
            slow_read(&mut stream, &mut buf).await?
        } else {
            read_body_checked(&mut stream, &mut buf, MIB)
                .await
                .map_err(|e| e.to_string())?
        };
        if received != MIB || !intact {
            return Err(format!("{received} of {MIB} bytes, intact: {intact}"));
        }
        record_ok(&ctx.stats, kind);
    }
    Ok(())
}

/// Reads 1 MiB at about 48 KB/s (16 KiB every third of a second): about 22 s.
async fn slow_read(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(usize, bool), String> {
    let mut received = buf.len();
    let mut intact = buf.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8);
    buf.clear();
    let mut chunk = vec![0u8; 16 * 1024];
    while received < MIB {
        let want = chunk.len().min(MIB - received);
        let n = tokio::time::timeout(STALL, stream.read(&mut chunk[..want]))
            .await
            .map_err(|_| "stalled".to_owned())?
            .map_err(|e| format!("read at {received}: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {received} of {MIB} bytes"));
        }
        intact &= chunk[..n]
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((received + i) % 251) as u8);
        received += n;
        tokio::time::sleep(Duration::from_millis(333)).await;
    }
    Ok((received, intact))
}

async fn upload(ctx: &Ctx, abort: bool) -> Result<(), String> {
    let mut stream = connect(ctx).await?;
    let origin = ctx.origin;
    let head = format!(
        "POST http://{origin}/upload HTTP/1.1\r\nHost: {origin}\r\nContent-Length: {MIB}\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    if abort {
        // Half the body, then gone: an injected failure.
        stream
            .write_all(&ctx.body[..MIB / 2])
            .await
            .map_err(|e| format!("write: {e}"))?;
        drop(stream);
        record_injected(&ctx.stats, "abort_upload");
        return Ok(());
    }
    stream
        .write_all(&ctx.body)
        .await
        .map_err(|e| format!("write body: {e}"))?;
    let mut buf = Vec::new();
    let (status, body) = read_response(&mut stream, &mut buf).await?;
    let expected = format!("{MIB} true\n");
    if status != 200 || body != expected.as_bytes() {
        return Err(format!(
            "status {status}, origin said {:?}",
            String::from_utf8_lossy(&body)
        ));
    }
    record_ok(&ctx.stats, "upload_1m");
    Ok(())
}

async fn abort_download(ctx: &Ctx) -> Result<(), String> {
    let mut stream = connect(ctx).await?;
    stream
        .write_all(&get(ctx.origin, "/1m", false))
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while got < MIB / 3 {
        let n = tokio::time::timeout(STALL, stream.read(&mut chunk))
            .await
            .map_err(|_| "stalled".to_owned())?
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {got} bytes"));
        }
        got += n;
    }
    drop(stream);
    record_injected(&ctx.stats, "abort_download");
    Ok(())
}

// === the proxy process ===

/// (RSS in KiB, open descriptors) of process `pid`.
fn sample(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

struct Args {
    proxy: SocketAddr,
    pid: u32,
    duration: Duration,
    clients: usize,
    warmup: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let (mut proxy, mut pid, mut duration, mut clients, mut warmup) =
        (None, None, Duration::from_secs(1800), 200, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let secs = |v: &str| {
            v.parse::<u64>()
                .map(Duration::from_secs)
                .map_err(|e| e.to_string())
        };
        match flag.as_str() {
            "--proxy" => proxy = Some(value.parse().map_err(|e| format!("--proxy: {e}"))?),
            "--pid" => pid = Some(value.parse().map_err(|e| format!("--pid: {e}"))?),
            "--duration" => duration = secs(&value)?,
            "--clients" => clients = value.parse().map_err(|e| format!("--clients: {e}"))?,
            "--warmup" => warmup = Some(secs(&value)?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        proxy: proxy.ok_or("--proxy is required")?,
        pid: pid.ok_or("--pid is required")?,
        duration,
        clients,
        warmup,
    })
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("soak: {e}\nusage: soak --proxy ADDR --pid PID [--duration S] [--clients N] [--warmup S]");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("soak: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

async fn run(args: Args) -> std::process::ExitCode {
    let body = body_1m();
    let (Ok(origin_listener), Ok(echo_listener)) = (
        TcpListener::bind("127.0.0.1:0").await,
        TcpListener::bind("127.0.0.1:0").await,
    ) else {
        eprintln!("soak: cannot bind the origins");
        return std::process::ExitCode::FAILURE;
    };
    let (Ok(origin_addr), Ok(echo_addr)) =
        (origin_listener.local_addr(), echo_listener.local_addr())
    else {
        return std::process::ExitCode::FAILURE;
    };
    tokio::spawn(origin(origin_listener, body.clone()));
    tokio::spawn(echo(echo_listener));

    let warmup = args.warmup.unwrap_or_else(|| {
        (args.duration / 10).clamp(Duration::from_secs(5), Duration::from_secs(60))
    });
    let start = sample(args.pid);
    let stats: Shared = Arc::default();
    let ctx = Arc::new(Ctx {
        proxy: args.proxy,
        origin: origin_addr,
        echo: echo_addr,
        body,
        stats: stats.clone(),
        until: Instant::now() + args.duration,
    });
    println!(
        "soak: {} clients for {:?} through {} (proxy pid {}), warm-up {:?}",
        args.clients, args.duration, args.proxy, args.pid, warmup
    );
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        tasks.push(tokio::spawn(client(KINDS[i % KINDS.len()], ctx.clone())));
    }
    // The proxy is sampled every few seconds. Memory and descriptors under load move
    // with what the clients happen to be doing at that instant (1 MiB bodies in flight,
    // tunnels open), so "flat" compares medians over a window: the first fifth after the
    // warm-up against the last fifth of the run.
    let began = Instant::now();
    let mut samples: Vec<(Duration, u64, u64)> = Vec::new();
    let mut next_report = warmup;
    while Instant::now() < ctx.until {
        let left = ctx.until.saturating_duration_since(Instant::now());
        tokio::time::sleep(SAMPLE_EVERY.min(left)).await;
        let at = began.elapsed();
        let now = sample(args.pid);
        if let Some((rss, fds)) = now {
            if at >= warmup {
                samples.push((at, rss, fds));
            }
        }
        if at >= next_report {
            next_report += Duration::from_secs(60);
            let served: u64 = stats.lock().map(|s| s.ok.values().sum()).unwrap_or(0);
            let errors: u64 = stats.lock().map(|s| s.errors.values().sum()).unwrap_or(0);
            println!(
                "soak: {:>5}s served {served}, unexpected errors {errors}, {}",
                at.as_secs(),
                show(now)
            );
        }
    }
    let fifth = (samples.len() / 5).max(1);
    let warm = median(samples.iter().take(fifth));
    let end = median(samples.iter().rev().take(fifth));
    for task in tasks {
        let _ = task.await;
    }
    let after = sample(args.pid);

    let Ok(stats) = stats.lock() else {
        return std::process::ExitCode::FAILURE;
    };
    println!("\n== requests served (checked)");
    for (kind, n) in &stats.ok {
        println!("  {kind:<16} {n}");
    }
    println!("  {:<16} {}", "total", stats.ok.values().sum::<u64>());
    println!("== injected failures (client aborts)");
    for (kind, n) in &stats.injected {
        println!("  {kind:<16} {n}");
    }
    let unexpected: u64 = stats.errors.values().sum();
    println!("== unexpected errors: {unexpected}");
    for (what, n) in &stats.errors {
        println!("  {n:>6}  {what}");
    }
    println!("== proxy process (RSS, open fds)");
    println!("  start            {}", show(start));
    println!(
        "  after warm-up    {} (median of the first fifth after warm-up, {} samples {:?} apart)",
        show(warm),
        fifth,
        SAMPLE_EVERY
    );
    println!(
        "  end (under load) {} (median of the last fifth)",
        show(end)
    );
    println!("  after the load   {}", show(after));
    let flat = match (warm, end) {
        (Some((rss_w, fds_w)), Some((rss_e, fds_e))) => {
            let ok = rss_e * 10 <= rss_w * 11 && fds_e * 10 <= fds_w.max(10) * 11;
            println!(
                "  end / warm-up: RSS {:.3}, fds {:.3} (flat within 10%: {})",
                rss_e as f64 / rss_w as f64,
                fds_e as f64 / fds_w.max(1) as f64,
                if ok { "yes" } else { "NO" }
            );
            ok
        }
        _ => {
            println!("  the proxy process could not be sampled");
            false
        }
    };
    if unexpected == 0 && flat {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Median RSS and median fd count of `samples`.
fn median<'a>(samples: impl Iterator<Item = &'a (Duration, u64, u64)>) -> Option<(u64, u64)> {
    let (mut rss, mut fds): (Vec<u64>, Vec<u64>) = samples.map(|&(_, r, f)| (r, f)).unzip();
    if rss.is_empty() {
        return None;
    }
    rss.sort_unstable();
    fds.sort_unstable();
    Some((rss[rss.len() / 2], fds[fds.len() / 2]))
}

fn show(sample: Option<(u64, u64)>) -> String {
    match sample {
        Some((rss, fds)) => format!("RSS {:.1} MiB, {fds} fds", rss as f64 / 1024.0),
        None => "not sampled".to_owned(),
    }
}

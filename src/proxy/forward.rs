//! Absolute-form HTTP requests: rewrite the head, get an upstream connection, then run
//! the upload (request body) and the download (interim responses, final head, body)
//! concurrently, so an origin may answer before the body is complete (an early 413,
//! `Expect: 100-continue`) and neither side is ever buffered whole.
//!
//! Bodies are relayed from one read buffer per direction: bytes read from one socket
//! are written from the same buffer to the other (no copies in between), and the next
//! read waits for that write, so a slow reader or a slow origin holds at most one
//! buffer per direction (DESIGN §3 rule 11).

use std::cell::Cell;
use std::pin::pin;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::access::Exchange;
use super::io::{read_head_bytes, read_some, write_all, write_parts, IoFail};
use super::{client_io_error, tunnel, upstream, Client, ConnState, Shared};
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError, Result};
use crate::http::response::CONTINUE_100;
use crate::http::target::host_header_value;
use crate::http::{
    parse_response, request_body_kind, response_body_kind, BodyKind, ChunkedDecoder, Parsed,
    RequestHead, ResponseHead, Scheme, Version,
};
use crate::plugin::{Chain, Flow, PluginError, RequestCx, WireSink, MAX_BUFFERED_REQUEST_BODY};

/// Our `Via` entry (RFC 9110 §7.6.3): protocol version and pseudonym.
const VIA: &[u8] = b"1.1 proxy";

/// Headers that describe one hop and are never forwarded (RFC 9110 §7.6.1), besides
/// the ones a `Connection` header lists. `Upgrade` is kept only while upgrading.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-authorization",
];

const HEAD_READ_CHUNK: usize = 16 * 1024;

/// Forwards one absolute-form request. Returns whether the client connection may
/// carry another request.
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
pub async fn run(
    client: &mut Client,
    shared: &Shared,
    mut head: RequestHead,
    host: &str,
    port: u16,
    path: Bytes,
    exchange: &mut Exchange,
    conn: &mut ConnState,
    shutdown: &watch::Receiver<bool>,
) -> Result<bool> {
    let config = &shared.config;
    let ConnState { parts, chain } = conn;
    let cx = shared.plugin_cx(client.addr);
    if names_framing_header(&head) {
        return Err(ProxyError::new(
            ErrorKind::HttpRequestError,
            "Connection names a framing header",
        ));
    }
    let mut body = match request_body_kind(&head)
        .map_err(|e| ProxyError::new(e.request_kind(), format!("request framing: {e:?}")))?
    {
        // `Content-Length: 0` is no body: nothing to upload, nothing to wait for.
        BodyKind::Length(0) => BodyKind::Empty,
        body => body,
    };
    // Chunked framing already buffered with the head is checked before any upstream is
    // contacted: a broken body is refused without the origin seeing its head.
    if body == BodyKind::Chunked && !client.buf.is_empty() {
        ChunkedDecoder::new(&config.limits)
            .advance(&client.buf, None)
            .map_err(|e| {
                ProxyError::new(e.request_kind(), format!("request chunked body: {e:?}"))
            })?;
    }
    // A body a plugin asked for is read whole now, rewritten, and sent right behind the
    // head with an exact length; nothing is left to upload from the client afterwards.
    let mut rewritten: Option<Bytes> = None;
    if body != BodyKind::Empty && !chain.is_empty() && chain.wants_request_body() {
        let whole = read_whole_body(client, &head, body, config).await?;
        let new = chain.on_request_body(&cx, whole).map_err(|(name, e)| {
            ProxyError::new(ErrorKind::ProxyInternalError, format!("plugin {name}: {e}"))
        })?;
        head.remove("transfer-encoding");
        head.remove("expect");
        head.set("Content-Length", new.len().to_string().as_bytes());
        rewritten = Some(new);
        body = BodyKind::Empty;
    }
    let request = RequestFacts {
        keep_alive: head.wants_keep_alive(),
        version: head.version(),
        is_head: head.is_method("HEAD"),
        upgrade: prepare_request(&mut head, host, port, path, config),
        body,
    };
    head.encode(Version::Http11, parts);
    parts.extend(rewritten.iter().cloned());
    let (mut sent, mut received) = if chain.is_empty() {
        (Recorders::default(), Recorders::default())
    } else {
        let (s, r) = chain.taps(&cx, &head, host, port).map_err(|(name, e)| {
            ProxyError::new(ErrorKind::ProxyInternalError, format!("plugin {name}: {e}"))
        })?;
        (Recorders::new(s), Recorders::new(r))
    };
    // Only a request that can be sent again unchanged (no body, idempotent) is retried.
    let retryable = body == BodyKind::Empty && rewritten.is_none() && is_idempotent(head.method());

    let mut attempt = 0;
    loop {
        let pooled = if attempt == 0 {
            shared.pool.take(host, port)
        } else {
            None
        };
        let reused = pooled.is_some();
        let (upstream, poolable) = match pooled {
            Some(stream) => (stream, true),
            None => {
                let plugin = upstream::resolve_hook(chain, &cx, host, port)?;
                let connected = upstream::connect(shared, host, port, plugin).await?;
                (connected.stream, connected.poolable)
            }
        };
        if attempt == 0 {
            // What is sent upstream is recorded once the connection exists (a retry
            // sends the same bytes again).
            for part in parts.iter() {
                sent.record(part);
            }
        }
        let outcome = exchange_once(
            client,
            config,
            &upstream,
            parts,
            &request,
            exchange,
            chain,
            &cx,
            shutdown,
            (&mut sent, &mut received),
        )
        .await;
        match outcome {
            Err(Failure::BeforeResponse(err)) if reused && retryable => {
                tracing::debug!(error = %err, "pooled upstream connection was closed; retrying once");
                // The failed attempt consumed the encoded head; encode it again.
                head.encode(Version::Http11, parts);
                attempt += 1;
            }
            Err(Failure::BeforeResponse(err)) | Err(Failure::Fatal(err)) => return Err(err),
            Ok(end) => {
                sent.end(true);
                received.end(true);
                if end.upstream_reusable && poolable {
                    shared.pool.put(host, port, upstream);
                }
                return Ok(end.client_keep_alive);
            }
        }
    }
}

/// The plugins' copies of one direction of an exchange (see `Plugin::tap`): empty, and
/// free, when no plugin records. A sink that panics is dropped (and logged); the
/// exchange goes on. Sinks not ended by then are ended as incomplete when dropped.
#[derive(Default)]
struct Recorders {
    sinks: Vec<Box<dyn WireSink>>,
}

impl Recorders {
    fn new(sinks: Vec<Box<dyn WireSink>>) -> Self {
        Recorders { sinks }
    }

    fn record(&mut self, bytes: &[u8]) {
        if !self.sinks.is_empty() && !bytes.is_empty() {
            self.each(|sink| sink.bytes(bytes));
        }
    }

    fn end(&mut self, complete: bool) {
        if !self.sinks.is_empty() {
            self.each(|sink| sink.end(complete));
            self.sinks.clear();
        }
    }

    fn each(&mut self, mut call: impl FnMut(&mut dyn WireSink)) {
        self.sinks.retain_mut(|sink| {
            let run = std::panic::AssertUnwindSafe(|| call(sink.as_mut()));
            let ok = std::panic::catch_unwind(run).is_ok();
            if !ok {
                tracing::error!(
                    "a plugin's wire tap panicked; it records no more of this exchange"
                );
            }
            ok
        });
    }
}

impl Drop for Recorders {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// What the exchange needs to remember about the request after its head is rewritten.
struct RequestFacts {
    keep_alive: bool,
    version: Version,
    is_head: bool,
    upgrade: bool,
    body: BodyKind,
}

/// How one attempt on one upstream connection ended badly.
enum Failure {
    /// The upstream closed or reset before sending a single response byte.
    BeforeResponse(ProxyError),
    /// Anything else.
    Fatal(ProxyError),
}

/// How one attempt ended well.
struct End {
    client_keep_alive: bool,
    upstream_reusable: bool,
}

/// Rewrites a request head for the origin. Returns whether this is an upgrade.
fn prepare_request(
    head: &mut RequestHead,
    host: &str,
    port: u16,
    path: Bytes,
    config: &Config,
) -> bool {
    let upgrade = head.version() == Version::Http11
        && head.count("upgrade") > 0
        && head.has_token("connection", "upgrade");
    remove_connection_listed(head, upgrade);
    for name in HOP_BY_HOP {
        if upgrade && *name == "upgrade" {
            continue;
        }
        head.remove(name);
    }
    if upgrade {
        head.append("Connection", b"upgrade");
    }
    for name in &config.disable_headers {
        head.remove(name);
    }
    // RFC 9112 §3.2.2: a proxy replaces Host with the absolute-form target's authority.
    head.set(
        "host",
        host_header_value(Scheme::Http, host, port).as_bytes(),
    );
    head.append("Via", VIA);
    head.set_target(path);
    upgrade
}

/// True when `Connection` names a framing header. RFC 9110 §7.6.1 says listed
/// headers are removed before forwarding, but removing `Content-Length` or
/// `Transfer-Encoding` after the framing was read from them would send a body with no
/// framing, and the next hop would read it as a new message (request smuggling, or a
/// response that swallows the next one). Such a message is refused.
fn names_framing_header<H: Headers>(head: &H) -> bool {
    let mut found = false;
    each_connection_token(head, &mut |token| {
        found |= token.eq_ignore_ascii_case(b"content-length")
            || token.eq_ignore_ascii_case(b"transfer-encoding");
    });
    found
}

/// Removes the headers a `Connection` header names (RFC 9110 §7.6.1). Allocates only
/// when it names something other than the usual `close`/`keep-alive`/`upgrade`.
fn remove_connection_listed<H: Headers>(head: &mut H, keep_upgrade: bool) {
    let mut listed: Vec<String> = Vec::new();
    each_connection_token(head, &mut |token| {
        let usual = token.eq_ignore_ascii_case(b"close")
            || token.eq_ignore_ascii_case(b"keep-alive")
            || (keep_upgrade && token.eq_ignore_ascii_case(b"upgrade"));
        if !usual {
            if let Ok(name) = std::str::from_utf8(token) {
                listed.push(name.to_ascii_lowercase());
            }
        }
    });
    for name in &listed {
        head.remove_all(name);
    }
}

/// Calls `f` with every non-empty, OWS-trimmed token of every `Connection` header,
/// without allocating (this runs on every exchange, twice per side).
fn each_connection_token<H: Headers>(head: &H, f: &mut dyn FnMut(&[u8])) {
    head.each_value("connection", &mut |value| {
        for token in value.split(|&b| b == b',') {
            let token = trim_ows(token);
            if !token.is_empty() {
                f(token);
            }
        }
    });
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The two head types seen through what connection-header cleanup needs.
trait Headers {
    fn each_value(&self, name: &str, f: &mut dyn FnMut(&[u8]));
    fn remove_all(&mut self, name: &str);
}

impl Headers for RequestHead {
    fn each_value(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.headers_named(name).for_each(f);
    }
    fn remove_all(&mut self, name: &str) {
        self.remove(name);
    }
}

impl Headers for ResponseHead {
    fn each_value(&self, name: &str, f: &mut dyn FnMut(&[u8])) {
        self.headers_named(name).for_each(f);
    }
    fn remove_all(&mut self, name: &str) {
        self.remove(name);
    }
}

/// Reads a whole request body (decoded) for the plugins that asked for it, within
/// [`MAX_BUFFERED_REQUEST_BODY`]. The origin is not contacted yet, so an
/// `Expect: 100-continue` is answered here.
async fn read_whole_body(
    client: &mut Client,
    head: &RequestHead,
    kind: BodyKind,
    config: &Config,
) -> Result<Bytes> {
    let too_large = || {
        ProxyError::new(
            ErrorKind::RequestBodyTooLarge,
            format!("a plugin reads request bodies whole, up to {MAX_BUFFERED_REQUEST_BODY} bytes"),
        )
    };
    if let BodyKind::Length(n) = kind {
        if n > MAX_BUFFERED_REQUEST_BODY as u64 {
            return Err(too_large());
        }
    }
    if head.version() == Version::Http11 && head.has_token("expect", "100-continue") {
        write_all(&client.stream, CONTINUE_100, config.timeout)
            .await
            .map_err(|e| client_io_error(e, "writing 100 Continue"))?;
    }
    let mut decoder = ChunkedDecoder::new(&config.limits);
    let mut whole = BytesMut::new();
    let mut ranges = Vec::new();
    loop {
        match kind {
            BodyKind::Length(n) => {
                let n = usize::try_from(n).map_err(|_| too_large())?;
                if client.buf.len() >= n {
                    return Ok(client.buf.split_to(n).freeze());
                }
            }
            BodyKind::Chunked => {
                ranges.clear();
                let progress = decoder
                    .advance(&client.buf, Some(&mut ranges))
                    .map_err(|e| {
                        ProxyError::new(e.request_kind(), format!("request chunked body: {e:?}"))
                    })?;
                for range in &ranges {
                    whole.extend_from_slice(client.buf.get(range.clone()).unwrap_or_default());
                }
                client.buf.advance(progress.consumed);
                if whole.len() > MAX_BUFFERED_REQUEST_BODY {
                    return Err(too_large());
                }
                if progress.done {
                    return Ok(whole.freeze());
                }
            }
            BodyKind::Empty | BodyKind::UntilClose => return Ok(Bytes::new()),
        }
        match read_some(
            &client.stream,
            &mut client.buf,
            config.client_recvbuf_size,
            config.timeout,
        )
        .await
        {
            Ok(0) => return Err(closed_in_body()),
            Ok(_) => {}
            Err(e) => return Err(client_io_error(e, "reading a request body")),
        }
    }
}

/// RFC 9110 §9.2.2.
fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// One request/response exchange on one upstream connection.
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
async fn exchange_once(
    client: &mut Client,
    config: &Config,
    upstream: &TcpStream,
    parts: &mut Vec<Bytes>,
    request: &RequestFacts,
    exchange: &mut Exchange,
    chain: &mut Chain,
    cx: &RequestCx<'_>,
    shutdown: &watch::Receiver<bool>,
    (sent, received): (&mut Recorders, &mut Recorders),
) -> std::result::Result<End, Failure> {
    if let Err(e) = write_parts(upstream, parts, config.timeout).await {
        return Err(Failure::BeforeResponse(upstream_error(
            e,
            "sending the request head",
        )));
    }
    let progress = UploadProgress {
        done: Cell::new(request.body == BodyKind::Empty),
        ended: Cell::new(None),
        unacknowledged: Cell::new(None),
    };
    // Both halves run until the download ends; the futures (and their borrows of the
    // client) are gone once this block ends.
    let downloaded = {
        let Client {
            stream: client_stream,
            buf: client_buf,
            ..
        } = &mut *client;
        let mut upload = pin!(upload(
            client_stream,
            client_buf,
            upstream,
            request.body,
            config,
            &progress.done,
            sent
        ));
        let mut download = pin!(download(
            client_stream,
            upstream,
            config,
            request,
            exchange,
            parts,
            Hooks { chain, cx },
            &progress,
            shutdown,
            received
        ));
        let mut upload_result: Option<std::result::Result<(), UploadFail>> = None;
        let downloaded = loop {
            tokio::select! {
                biased;
                d = &mut download => break d,
                u = &mut upload, if upload_result.is_none() => {
                    // Only a body's end counts: a bodiless request's upload "ends" at
                    // once, and stamping it would cost a clock read per request and
                    // stretch the response wait below by up to one more `--timeout`.
                    if request.body != BodyKind::Empty {
                        progress.ended.set(Some(Instant::now()));
                    }
                    match u {
                        // The client vanished or sent a broken body: the exchange is over.
                        Err(UploadFail::Client(err)) => return Err(Failure::Fatal(err)),
                        // Ok, or the origin stopped reading: its response may still come.
                        other => upload_result = Some(other),
                    }
                }
            }
        };
        downloaded
    };
    // `done` starts true for bodiless requests and is set when a body is complete.
    let upload_ok = progress.done.get();
    let end = match downloaded? {
        Downloaded::Done(end) => end,
        Downloaded::Upgraded(upstream_leftover) => {
            // Switch to a raw relay only now that the origin has said 101.
            if !upload_ok {
                return Err(Failure::Fatal(ProxyError::new(
                    ErrorKind::HttpUpgradeFailed,
                    "upgrade before the request body was complete",
                )));
            }
            return relay_upgraded(client, upstream, upstream_leftover, config, exchange).await;
        }
    };
    Ok(End {
        client_keep_alive: end.client_keep_alive && upload_ok,
        upstream_reusable: end.upstream_reusable && upload_ok,
    })
}

async fn relay_upgraded(
    client: &mut Client,
    upstream: &TcpStream,
    upstream_leftover: BytesMut,
    config: &Config,
    exchange: &mut Exchange,
) -> std::result::Result<End, Failure> {
    if !upstream_leftover.is_empty() {
        write_all(&client.stream, &upstream_leftover, config.timeout)
            .await
            .map_err(|e| Failure::Fatal(client_io_error(e, "writing upgraded bytes")))?;
        exchange.add_bytes(upstream_leftover.len() as u64);
    }
    if !client.buf.is_empty() {
        let early = std::mem::take(&mut client.buf);
        write_all(upstream, &early, config.timeout)
            .await
            .map_err(|e| Failure::Fatal(upstream_error(e, "writing upgraded bytes")))?;
    }
    client.buf = BytesMut::new();
    let relayed = tunnel::relay(
        &client.stream,
        upstream,
        config.server_recvbuf_size,
        config.timeout,
    )
    .await;
    exchange.add_bytes(relayed.to_client);
    relayed.result.map_err(Failure::Fatal)?;
    Ok(End {
        client_keep_alive: false,
        upstream_reusable: false,
    })
}

/// What the download half knows of the upload half.
struct UploadProgress {
    /// Set once the whole body has been sent (true from the start for bodiless requests).
    done: Cell<bool>,
    /// When the body's upload ended (well or not); never set for bodiless requests.
    ended: Cell<Option<Instant>>,
    /// What the upstream had not acknowledged at the last check, once the upload ended.
    unacknowledged: Cell<Option<usize>>,
}

impl UploadProgress {
    /// True while the upload runs, ended less than `idle` ago, or its last bytes are
    /// still draining from our send buffer to the origin (less is unacknowledged than
    /// at the previous check, one `idle` ago). Bodiless requests never wait longer.
    fn still_moving(&self, upstream: &TcpStream, idle: std::time::Duration) -> bool {
        let Some(ended) = self.ended.get() else {
            // Not ended: running, unless there was no body to send.
            return !self.done.get();
        };
        if ended.elapsed() < idle {
            return true;
        }
        let now = super::io::unacknowledged(upstream);
        let before = self.unacknowledged.replace(now);
        matches!((before, now), (None, Some(n)) if n > 0)
            || matches!((before, now), (Some(b), Some(n)) if n < b)
    }
}

enum UploadFail {
    /// Client-side failure: closed, timed out, or broken framing.
    Client(ProxyError),
    /// The origin stopped accepting the body.
    Upstream,
}

/// Relays the request body from the client to the origin, exactly as framed.
async fn upload(
    src: &TcpStream,
    buf: &mut BytesMut,
    dst: &TcpStream,
    kind: BodyKind,
    config: &Config,
    done: &Cell<bool>,
    sent: &mut Recorders,
) -> std::result::Result<(), UploadFail> {
    let chunk = config.client_recvbuf_size;
    match kind {
        BodyKind::Empty | BodyKind::UntilClose => {}
        BodyKind::Length(mut remaining) => loop {
            if !buf.is_empty() {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let piece = buf.split_to(take);
                sent.record(&piece);
                write_all(dst, &piece, config.timeout)
                    .await
                    .map_err(|_| UploadFail::Upstream)?;
                remaining -= take as u64;
            }
            if remaining == 0 {
                break;
            }
            match read_some(src, buf, chunk, config.timeout).await {
                Ok(0) => return Err(UploadFail::Client(closed_in_body())),
                Ok(_) => {}
                Err(e) => {
                    return Err(UploadFail::Client(client_io_error(
                        e,
                        "reading a request body",
                    )))
                }
            }
        },
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new(&config.limits);
            loop {
                if !buf.is_empty() {
                    let progress = decoder.advance(buf, None).map_err(|e| {
                        UploadFail::Client(ProxyError::new(
                            e.request_kind(),
                            format!("request chunked body: {e:?}"),
                        ))
                    })?;
                    let piece = buf.split_to(progress.consumed);
                    sent.record(&piece);
                    write_all(dst, &piece, config.timeout)
                        .await
                        .map_err(|_| UploadFail::Upstream)?;
                    if progress.done {
                        break;
                    }
                }
                match read_some(src, buf, chunk, config.timeout).await {
                    Ok(0) => return Err(UploadFail::Client(closed_in_body())),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(UploadFail::Client(client_io_error(
                            e,
                            "reading a request body",
                        )))
                    }
                }
            }
        }
    }
    done.set(true);
    Ok(())
}

fn closed_in_body() -> ProxyError {
    ProxyError::new(
        ErrorKind::ClientClosed,
        "client closed inside a request body",
    )
}

enum Downloaded {
    Done(End),
    /// The origin switched protocols; these bytes followed its 101 head.
    Upgraded(BytesMut),
}

/// The plugin chain and what its hooks see, for the download half.
struct Hooks<'a, 'c> {
    chain: &'a mut Chain,
    cx: &'a RequestCx<'c>,
}

/// Reads the response (interim heads, final head, body) and relays it to the client.
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
async fn download(
    client: &TcpStream,
    upstream: &TcpStream,
    config: &Config,
    request: &RequestFacts,
    exchange: &mut Exchange,
    parts: &mut Vec<Bytes>,
    hooks: Hooks<'_, '_>,
    upload: &UploadProgress,
    shutdown: &watch::Receiver<bool>,
    received: &mut Recorders,
) -> std::result::Result<Downloaded, Failure> {
    let mut buf = BytesMut::new();
    let mut received_any = false;
    let mut head = loop {
        let head =
            read_response_head(upstream, &mut buf, config, &mut received_any, upload).await?;
        received.record(head.raw());
        if !head.is_informational() {
            break head;
        }
        if head.status() == 101 {
            if !request.upgrade {
                // DESIGN §3 rule 10: a 101 nobody asked for must not switch anything.
                return Err(Failure::Fatal(ProxyError::new(
                    ErrorKind::HttpProtocolError,
                    "101 Switching Protocols without an Upgrade request",
                )));
            }
            let mut head = head;
            remove_connection_listed(&mut head, true);
            for name in HOP_BY_HOP {
                if *name != "upgrade" {
                    head.remove(name);
                }
            }
            head.append("Connection", b"upgrade");
            head.encode_with_version(Version::Http11, parts);
            let len: usize = parts.iter().map(Bytes::len).sum();
            write_parts(client, parts, config.timeout)
                .await
                .map_err(|e| Failure::Fatal(client_io_error(e, "writing a 101")))?;
            exchange.set_status(101);
            exchange.add_bytes(len as u64);
            return Ok(Downloaded::Upgraded(buf));
        }
        // RFC 9110 §15.2: 1xx responses are not sent to HTTP/1.0 clients.
        if request.version == Version::Http11 {
            let mut head = head;
            strip_hop_by_hop(&mut head);
            head.encode_with_version(Version::Http11, parts);
            let len: usize = parts.iter().map(Bytes::len).sum();
            write_parts(client, parts, config.timeout)
                .await
                .map_err(|e| Failure::Fatal(client_io_error(e, "writing an interim response")))?;
            exchange.add_bytes(len as u64);
        }
    };

    if names_framing_header(&head) {
        return Err(Failure::Fatal(ProxyError::new(
            ErrorKind::HttpProtocolError,
            "response Connection names a framing header",
        )));
    }
    let body = response_body_kind(&head, request.is_head).map_err(|e| {
        Failure::Fatal(ProxyError::new(
            e.response_kind(),
            format!("response framing: {e:?}"),
        ))
    })?;
    let origin_keeps_open = match head.version() {
        Version::Http11 => !head.has_token("connection", "close"),
        Version::Http10 => head.has_token("connection", "keep-alive"),
    };
    let dechunk = request.version == Version::Http10 && body == BodyKind::Chunked;
    let close_client = !request.keep_alive
        || body == BodyKind::UntilClose
        || dechunk
        || !upload.done.get()
        || *shutdown.borrow();
    strip_hop_by_hop(&mut head);
    // Plugins see the origin's framing; the edits that re-frame for the client follow.
    if !hooks.chain.is_empty() {
        let flow = hooks
            .chain
            .on_response(hooks.cx, &mut head)
            .map_err(|(name, e)| {
                Failure::Fatal(ProxyError::new(
                    ErrorKind::ProxyInternalError,
                    format!("plugin {name}: {e}"),
                ))
            })?;
        match flow {
            Flow::Continue => {}
            // Close without a reply: nothing was sent, nothing is reused.
            Flow::Close => {
                return Ok(Downloaded::Done(End {
                    client_keep_alive: false,
                    upstream_reusable: false,
                }))
            }
            // The origin's response is replaced: its body stays unread, so the
            // upstream connection cannot be reused.
            Flow::Respond(reply) => {
                write_all(client, &reply.bytes, config.timeout)
                    .await
                    .map_err(|e| Failure::Fatal(client_io_error(e, "writing a plugin's reply")))?;
                exchange.set_status(reply.status);
                exchange.add_bytes(reply.bytes.len() as u64);
                return Ok(Downloaded::Done(End {
                    client_keep_alive: !close_client && !reply.close,
                    upstream_reusable: false,
                }));
            }
        }
    }
    // A plugin that wants the body gets it decoded; what comes out of the chain has a
    // length nobody knows yet, so it is re-framed: chunked for HTTP/1.1 clients,
    // close-delimited for HTTP/1.0 ones.
    let transform =
        body != BodyKind::Empty && !hooks.chain.is_empty() && hooks.chain.wants_response_body();
    let close_client = close_client || (transform && request.version == Version::Http10);
    if dechunk {
        head.remove("transfer-encoding");
    }
    if transform {
        head.remove("content-length");
        head.remove("transfer-encoding");
        if request.version == Version::Http11 {
            head.append("Transfer-Encoding", b"chunked");
        }
    }
    if close_client {
        head.append("Connection", b"close");
    } else if request.version == Version::Http10 {
        head.append("Connection", b"keep-alive");
    }
    head.encode_with_version(Version::Http11, parts);
    // Body bytes that came with the head leave in the same write (one syscall for a
    // small response instead of two).
    let body = match body {
        BodyKind::Length(n) if !buf.is_empty() && !transform => {
            let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
            let piece = buf.split_to(take).freeze();
            received.record(&piece);
            parts.push(piece);
            BodyKind::Length(n - take as u64)
        }
        other => other,
    };
    let sent: usize = parts.iter().map(Bytes::len).sum();
    write_parts(client, parts, config.timeout)
        .await
        .map_err(|e| Failure::Fatal(client_io_error(e, "writing a response head")))?;
    exchange.set_status(head.status());
    exchange.add_bytes(sent as u64);

    let clean = if transform {
        let chunked = request.version == Version::Http11;
        let mut hooks = hooks;
        relay_transformed(
            client, upstream, &mut buf, body, chunked, config, exchange, &mut hooks, received,
        )
        .await?
    } else {
        relay_body(
            client, upstream, &mut buf, body, dechunk, config, exchange, received,
        )
        .await?
    };
    Ok(Downloaded::Done(End {
        client_keep_alive: !close_client,
        upstream_reusable: clean && origin_keeps_open && body != BodyKind::UntilClose,
    }))
}

/// Removes hop-by-hop headers from a response (the ones `Connection` lists too).
fn strip_hop_by_hop(head: &mut ResponseHead) {
    remove_connection_listed(head, false);
    for name in HOP_BY_HOP {
        head.remove(name);
    }
}

/// Reads one response head from the origin.
async fn read_response_head(
    upstream: &TcpStream,
    buf: &mut BytesMut,
    config: &Config,
    received_any: &mut bool,
    upload: &UploadProgress,
) -> std::result::Result<ResponseHead, Failure> {
    loop {
        if !buf.is_empty() {
            *received_any = true;
            match parse_response(buf, &config.limits) {
                Ok(Parsed::Complete(head)) => return Ok(head),
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    return Err(Failure::Fatal(ProxyError::new(
                        e.response_kind(),
                        format!("response head: {e:?}"),
                    )))
                }
            }
        }
        match read_head_bytes(upstream, buf, HEAD_READ_CHUNK, config.timeout).await {
            Ok(0) if !*received_any => {
                return Err(Failure::BeforeResponse(ProxyError::new(
                    ErrorKind::ConnectionTerminated,
                    "upstream closed before responding",
                )))
            }
            Ok(0) => {
                return Err(Failure::Fatal(ProxyError::new(
                    ErrorKind::HttpResponseIncomplete,
                    "upstream closed inside a response head",
                )))
            }
            Ok(_) => {}
            // The origin may answer only once it has the whole body: while the upload moves
            // (it has its own inactivity bounds) and for `--timeout` after it ended, the
            // wait goes on.
            Err(IoFail::Timeout) if upload.still_moving(upstream, config.timeout) => {}
            Err(IoFail::Io(e)) if !*received_any => {
                return Err(Failure::BeforeResponse(
                    ProxyError::new(
                        ErrorKind::ConnectionTerminated,
                        "upstream reset before responding",
                    )
                    .with_source(e),
                ))
            }
            Err(e) => return Err(Failure::Fatal(upstream_error(e, "reading a response head"))),
        }
    }
}

/// Relays a response body as framed. Returns whether it ended cleanly with no stray
/// bytes after it (the upstream connection may then be reused).
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
async fn relay_body(
    client: &TcpStream,
    upstream: &TcpStream,
    buf: &mut BytesMut,
    kind: BodyKind,
    dechunk: bool,
    config: &Config,
    exchange: &mut Exchange,
    received: &mut Recorders,
) -> std::result::Result<bool, Failure> {
    let chunk = config.server_recvbuf_size;
    let incomplete = || {
        Failure::Fatal(ProxyError::new(
            ErrorKind::HttpResponseIncomplete,
            "upstream closed mid-body",
        ))
    };
    let to_client = |e| Failure::Fatal(client_io_error(e, "writing a response body"));
    match kind {
        // DESIGN §3 rule 10: bytes after a complete response are never passed on.
        BodyKind::Empty => Ok(buf.is_empty()),
        BodyKind::Length(mut remaining) => loop {
            if !buf.is_empty() {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                received.record(&buf[..take]);
                write_all(client, &buf[..take], config.timeout)
                    .await
                    .map_err(to_client)?;
                buf.advance(take);
                remaining -= take as u64;
                exchange.add_bytes(take as u64);
            }
            if remaining == 0 {
                return Ok(buf.is_empty());
            }
            buf.clear();
            match read_some(upstream, buf, chunk, config.timeout).await {
                Ok(0) => return Err(incomplete()),
                Ok(_) => {}
                Err(e) => return Err(Failure::Fatal(upstream_error(e, "reading a response body"))),
            }
        },
        BodyKind::Chunked => {
            let mut decoder = ChunkedDecoder::new(&config.limits);
            let mut ranges = Vec::new();
            let mut parts: Vec<Bytes> = Vec::new();
            loop {
                if !buf.is_empty() {
                    ranges.clear();
                    let progress = decoder
                        .advance(buf, if dechunk { Some(&mut ranges) } else { None })
                        .map_err(|e| {
                            Failure::Fatal(ProxyError::new(
                                e.response_kind(),
                                format!("response chunked body: {e:?}"),
                            ))
                        })?;
                    let piece = buf.split_to(progress.consumed).freeze();
                    received.record(&piece);
                    if dechunk {
                        parts.extend(ranges.iter().map(|r| piece.slice(r.clone())));
                        let n: usize = parts.iter().map(Bytes::len).sum();
                        write_parts(client, &mut parts, config.timeout)
                            .await
                            .map_err(to_client)?;
                        exchange.add_bytes(n as u64);
                    } else {
                        write_all(client, &piece, config.timeout)
                            .await
                            .map_err(to_client)?;
                        exchange.add_bytes(piece.len() as u64);
                    }
                    if progress.done {
                        return Ok(buf.is_empty());
                    }
                }
                match read_some(upstream, buf, chunk, config.timeout).await {
                    Ok(0) => return Err(incomplete()),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(Failure::Fatal(upstream_error(e, "reading a response body")))
                    }
                }
            }
        }
        BodyKind::UntilClose => loop {
            if !buf.is_empty() {
                received.record(buf);
                write_all(client, buf, config.timeout)
                    .await
                    .map_err(to_client)?;
                exchange.add_bytes(buf.len() as u64);
                buf.clear();
            }
            match read_some(upstream, buf, chunk, config.timeout).await {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) => return Err(Failure::Fatal(upstream_error(e, "reading a response body"))),
            }
        },
    }
}

/// Relays a response body through the plugins that asked for it: decoded, passed
/// through the chain piece by piece, and re-framed (`chunked` for HTTP/1.1 clients,
/// raw bytes before a close otherwise). Memory stays bounded: one read buffer, plus
/// whatever the plugins themselves choose to keep. Returns whether the upstream
/// response ended cleanly with nothing after it.
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
async fn relay_transformed(
    client: &TcpStream,
    upstream: &TcpStream,
    buf: &mut BytesMut,
    kind: BodyKind,
    chunked: bool,
    config: &Config,
    exchange: &mut Exchange,
    hooks: &mut Hooks<'_, '_>,
    received: &mut Recorders,
) -> std::result::Result<bool, Failure> {
    let plugin_failed = |(name, e): (&'static str, PluginError)| {
        Failure::Fatal(ProxyError::new(
            ErrorKind::ProxyInternalError,
            format!("plugin {name}: {e}"),
        ))
    };
    let mut decoder = ChunkedDecoder::new(&config.limits);
    let mut remaining = match kind {
        BodyKind::Length(n) => n,
        _ => 0,
    };
    let mut done = matches!(kind, BodyKind::Empty | BodyKind::Length(0));
    let mut ranges = Vec::new();
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut parts: Vec<Bytes> = Vec::new();
    let clean = loop {
        if !buf.is_empty() && !done {
            match kind {
                BodyKind::Length(_) => {
                    let take = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.len());
                    let piece = buf.split_to(take).freeze();
                    received.record(&piece);
                    pieces.push(piece);
                    remaining -= take as u64;
                    done = remaining == 0;
                }
                BodyKind::Chunked => {
                    ranges.clear();
                    let progress = decoder.advance(buf, Some(&mut ranges)).map_err(|e| {
                        Failure::Fatal(ProxyError::new(
                            e.response_kind(),
                            format!("response chunked body: {e:?}"),
                        ))
                    })?;
                    let piece = buf.split_to(progress.consumed).freeze();
                    received.record(&piece);
                    pieces.extend(ranges.iter().map(|r| piece.slice(r.clone())));
                    done = progress.done;
                }
                BodyKind::UntilClose => {
                    let piece = buf.split().freeze();
                    received.record(&piece);
                    pieces.push(piece);
                }
                BodyKind::Empty => done = true,
            }
        }
        for piece in pieces.drain(..) {
            let out = hooks
                .chain
                .on_response_chunk(hooks.cx, piece)
                .map_err(plugin_failed)?;
            frame_piece(&mut parts, out, chunked);
        }
        if done {
            break buf.is_empty();
        }
        write_framed(client, &mut parts, config, exchange).await?;
        match read_some(upstream, buf, config.server_recvbuf_size, config.timeout).await {
            Ok(0) if kind == BodyKind::UntilClose => break false,
            Ok(0) => {
                return Err(Failure::Fatal(ProxyError::new(
                    ErrorKind::HttpResponseIncomplete,
                    "upstream closed mid-body",
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(Failure::Fatal(upstream_error(e, "reading a response body"))),
        }
    };
    let tail = hooks
        .chain
        .on_response_end(hooks.cx)
        .map_err(plugin_failed)?;
    frame_piece(&mut parts, tail, chunked);
    if chunked {
        parts.push(Bytes::from_static(b"0\r\n\r\n"));
    }
    write_framed(client, &mut parts, config, exchange).await?;
    Ok(clean)
}

/// Appends `data` to `parts`, as one chunk when `chunked` (nothing for empty data:
/// an empty chunk would end the body).
fn frame_piece(parts: &mut Vec<Bytes>, data: Bytes, chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        parts.push(Bytes::from(format!("{:x}\r\n", data.len())));
        parts.push(data);
        parts.push(Bytes::from_static(b"\r\n"));
    } else {
        parts.push(data);
    }
}

/// Writes out `parts` (if any) to the client and counts them.
async fn write_framed(
    client: &TcpStream,
    parts: &mut Vec<Bytes>,
    config: &Config,
    exchange: &mut Exchange,
) -> std::result::Result<(), Failure> {
    if parts.is_empty() {
        return Ok(());
    }
    let n: usize = parts.iter().map(Bytes::len).sum();
    write_parts(client, parts, config.timeout)
        .await
        .map_err(|e| Failure::Fatal(client_io_error(e, "writing a response body")))?;
    exchange.add_bytes(n as u64);
    Ok(())
}

/// Maps a failure on the upstream socket to an error.
fn upstream_error(err: IoFail, context: &'static str) -> ProxyError {
    match err {
        IoFail::Timeout => ProxyError::new(ErrorKind::ConnectionReadTimeout, context),
        IoFail::Closed => ProxyError::new(ErrorKind::HttpResponseIncomplete, context),
        IoFail::Io(e) => ProxyError::new(ErrorKind::HttpResponseIncomplete, context).with_source(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(b"GET"));
        assert!(is_idempotent(b"PUT"));
        assert!(!is_idempotent(b"POST"));
        assert!(!is_idempotent(b"get"), "methods are case-sensitive");
    }

    #[test]
    fn trims_optional_whitespace() {
        assert_eq!(trim_ows(b" \tx-foo \t"), b"x-foo");
        assert_eq!(trim_ows(b"   "), b"");
    }
}

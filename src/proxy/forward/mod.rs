//! Absolute-form HTTP requests: rewrite the head, get an upstream connection, then run
//! the upload (request body) and the download (interim responses, final head, body)
//! concurrently, so an origin may answer before the body is complete (an early 413,
//! `Expect: 100-continue`) and neither side is ever buffered whole.
//!
//! Bodies are relayed from one read buffer per direction: bytes read from one socket
//! are written from the same buffer to the other (no copies in between), and the next
//! read waits for that write, so a slow reader or a slow origin holds at most one
//! buffer per direction (DESIGN §3 rule 11).
//!
//! This file holds the exchange and its retry; each phase has a file of its own:
//! `request` (rewriting the head, reading a whole body for the plugins), `upload` (the
//! request body), `download` (interim and final response heads), `body` (relaying a
//! response body, as framed or through the plugins) and `websocket` (the relay after a
//! `101` when a plugin wants WebSocket messages; other upgrades are copied raw).

mod body;
mod download;
mod request;
mod upload;
mod websocket;

use std::cell::Cell;
use std::pin::pin;

use crate::conn::stop::Stop;
use crate::conn::Stream;
use crate::tls;
use bytes::{Bytes, BytesMut};

use super::access::Exchange;
use super::io::{write_all, write_parts, IoFail};
use super::{client_io_error, tunnel, upstream, Client, ConnState, Shared};
use crate::config::Config;
use crate::error::{ErrorKind, ProxyError, Result};
use crate::http::{request_body_kind, BodyKind, ChunkedDecoder, RequestHead, Version};
use crate::plugin::plugin_failed;
use crate::plugin::{Chain, RequestCx, WireSink};

use download::{download, Downloaded, Hooks};
pub(crate) use request::max_forwards;
pub use request::HOP_BY_HOP;
use request::{names_framing_header, prepare_request, read_whole_body};
use upload::{upload, UploadFail, UploadProgress};

/// Where a forwarded request goes.
#[derive(Clone, Copy)]
pub struct Upstream<'a> {
    /// The host connected to.
    pub host: &'a str,
    /// Its port.
    pub port: u16,
    /// `Some(name)`: over TLS, verifying the origin as `name`; `None`: plain HTTP.
    pub tls: Option<&'a str>,
}

/// Forwards one absolute-form request (or one inside an intercepted tunnel). Returns
/// whether the client connection may carry another request.
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
pub async fn run(
    client: &mut Client,
    shared: &Shared,
    mut head: RequestHead,
    target: Upstream<'_>,
    path: Bytes,
    early_body: Option<Bytes>,
    exchange: &mut Exchange,
    conn: &mut ConnState,
) -> Result<bool> {
    let config = &shared.config;
    let Upstream { host, port, tls } = target;
    let ConnState { parts, chain, .. } = conn;
    let cx = shared.plugin_cx(client);
    if names_framing_header(&head) {
        return Err(ProxyError::new(
            ErrorKind::HttpRequestError,
            "Connection names a framing header",
        ));
    }
    let mut body = match request_body_kind(&head)
        .map_err(|e| ProxyError::new(e.request_kind(), format!("request framing: {e}")))?
    {
        // `Content-Length: 0` is no body: nothing to upload, nothing to wait for.
        BodyKind::Length(0) => BodyKind::Empty,
        body => body,
    };
    // Chunked framing already buffered with the head is checked before any upstream is
    // contacted: a broken body is refused without the origin seeing its head. (A body
    // already read whole is gone from the buffer: what is left is the next request.)
    if body == BodyKind::Chunked && early_body.is_none() && !client.buf.is_empty() {
        ChunkedDecoder::new(&config.limits)
            .advance(&client.buf, None)
            .map_err(|e| ProxyError::new(e.request_kind(), format!("request chunked body: {e}")))?;
    }
    // A body a plugin asked for is read whole now, rewritten, and sent right behind the
    // head with an exact length; nothing is left to upload from the client afterwards.
    // A body read before `on_request` (see `read_body_first`) left the client with no
    // more to send.
    let whole = match early_body {
        Some(early) => Some(early),
        None if body != BodyKind::Empty && !chain.is_empty() && chain.wants_request_body() => {
            let read = Box::pin(read_whole_body(client, &head, body, config));
            Some(read.await?)
        }
        None => None,
    };
    let mut rewritten: Option<Bytes> = None;
    if let Some(whole) = whole {
        let had_body = body != BodyKind::Empty;
        let new = if chain.wants_request_body() {
            chain.on_request_body(&cx, whole).map_err(plugin_failed)?
        } else {
            whole
        };
        // A request without a body keeps having none unless a plugin gave it one.
        if had_body || !new.is_empty() {
            head.remove("transfer-encoding");
            head.remove("expect");
            head.set("Content-Length", new.len().to_string().as_bytes());
            rewritten = Some(new);
        }
        body = BodyKind::Empty;
    }
    let (keep_alive, version, is_head) = (
        head.wants_keep_alive(),
        head.version(),
        head.is_method("HEAD"),
    );
    let upgrade = prepare_request(&mut head, target, path, client.intercepted, config);
    let websocket = upgrade && head.has_token("upgrade", "websocket");
    // A plugin that reads messages cannot read compressed ones: no extension is offered.
    let ws_messages = websocket && !chain.is_empty() && chain.wants_websocket_messages();
    if ws_messages {
        head.remove("sec-websocket-extensions");
    }
    let request = RequestFacts {
        keep_alive,
        version,
        is_head,
        upgrade,
        websocket,
        ws_messages,
        body,
    };
    head.encode(Version::Http11, parts);
    parts.extend(rewritten.iter().cloned());
    let (mut sent, mut received) = if chain.is_empty() {
        (Recorders::default(), Recorders::default())
    } else {
        let (s, r) = chain.taps(&cx, &head, host, port).map_err(plugin_failed)?;
        (Recorders::new(s), Recorders::new(r))
    };
    // Only a request that can be sent again unchanged (no body, idempotent) is retried.
    let retryable = body == BodyKind::Empty && rewritten.is_none() && is_idempotent(head.method());

    let mut attempt = 0;
    loop {
        // Pooled TLS connections were verified for their host: a request that must go
        // to another name (an intercepted tunnel's SNI) gets its own connection.
        let pooled = if attempt == 0 && tls.map_or(true, |name| name == host) {
            shared.pool.take(host, port, tls.is_some())
        } else {
            None
        };
        let reused = pooled.is_some();
        let (upstream, poolable) = match pooled {
            Some(stream) => (stream, true),
            None => {
                let plugin = upstream::resolve_hook(chain, &cx, host, port)?;
                // Boxed: connecting (DNS, TCP, TLS) is rare next to reusing a pooled
                // connection, and its state would otherwise be carried by every exchange.
                let open = Box::pin(open_upstream(shared, target, plugin));
                open.await?
            }
        };
        if attempt == 0 && sent.any() {
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
            &shared.stop,
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

/// Connects to `target` (TLS included). Returns the connection and whether it may be
/// pooled afterwards.
async fn open_upstream(
    shared: &Shared,
    target: Upstream<'_>,
    plugin: Option<(&'static str, crate::plugin::ResolveFuture)>,
) -> Result<(Stream, bool)> {
    let Upstream { host, port, tls } = target;
    let config = &shared.config;
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let connected = upstream::connect(shared, host, port, plugin).await?;
    let stream = Stream::Tcp(connected.stream);
    let stream = match tls {
        None => stream,
        Some(name) => {
            let origins = shared.tls.origins();
            tls::client::handshake(stream, name, &origins, deadline, config.timeout).await?
        }
    };
    // A TLS connection verified for another name than its host (an intercepted tunnel's
    // SNI) serves only requests for that name: not pooled.
    let poolable = connected.poolable && tls.map_or(true, |name| name == host);
    Ok((stream, poolable))
}

/// The whole request body, for plugins that need it before `on_request` (empty when
/// the request has none). Framing is checked as `run` checks it; over
/// [`crate::plugin::MAX_BUFFERED_REQUEST_BODY`] is 413 before any upstream is contacted.
pub async fn read_body_first(
    client: &mut Client,
    head: &RequestHead,
    config: &Config,
) -> Result<Bytes> {
    if names_framing_header(head) {
        return Err(ProxyError::new(
            ErrorKind::HttpRequestError,
            "Connection names a framing header",
        ));
    }
    match request_body_kind(head)
        .map_err(|e| ProxyError::new(e.request_kind(), format!("request framing: {e}")))?
    {
        BodyKind::Empty | BodyKind::Length(0) => Ok(Bytes::new()),
        kind => read_whole_body(client, head, kind, config).await,
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

    /// Whether any plugin records this direction.
    fn any(&self) -> bool {
        !self.sinks.is_empty()
    }

    fn record(&mut self, bytes: &[u8]) {
        if self.any() && !bytes.is_empty() {
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
    /// An upgrade to `websocket`.
    websocket: bool,
    /// A plugin wants this WebSocket session's messages: the relay parses frames.
    ws_messages: bool,
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
    upstream: &Stream,
    parts: &mut Vec<Bytes>,
    request: &RequestFacts,
    exchange: &mut Exchange,
    chain: &mut Chain,
    cx: &RequestCx<'_>,
    shutdown: &Stop,
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
        // A bodiless request has nothing to upload: no upload future at all. A body's
        // upload is boxed, so that its state is not carried by every exchange.
        let mut upload = (request.body != BodyKind::Empty).then(|| {
            Box::pin(upload(
                client_stream,
                client_buf,
                upstream,
                request.body,
                config,
                &progress.done,
                sent,
            ))
        });
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
            let Some(uploading) = upload.as_mut().filter(|_| upload_result.is_none()) else {
                break (&mut download).await;
            };
            tokio::select! {
                biased;
                d = &mut download => break d,
                u = uploading => {
                    // Only a body's end is stamped (a bodiless request never gets here).
                    progress.end(upstream);
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
        Downloaded::Upgraded {
            leftover,
            websocket,
        } => {
            // Switch to a relay only now that the origin has said 101.
            if !upload_ok {
                return Err(Failure::Fatal(ProxyError::new(
                    ErrorKind::HttpUpgradeFailed,
                    "upgrade before the request body was complete",
                )));
            }
            let upgraded = Upgraded {
                leftover,
                websocket,
                parse: websocket && request.ws_messages,
            };
            // Boxed (a plain statement, not an inline `.await`): the relay's state is
            // large and rare, and would otherwise be carried by every exchange's future.
            let relay = Box::pin(relay_upgraded(
                client, upstream, upgraded, config, exchange, chain, cx,
            ));
            return relay.await;
        }
    };
    // The origin answered before the whole body came: the client may still be sending.
    client.unread_input = !upload_ok;
    Ok(End {
        client_keep_alive: end.client_keep_alive && upload_ok,
        upstream_reusable: end.upstream_reusable && upload_ok,
    })
}

/// What the origin's 101 switched to.
struct Upgraded {
    /// Bytes that followed the 101 head.
    leftover: BytesMut,
    /// The WebSocket protocol (the plugins' `on_websocket_start`/`end` run).
    websocket: bool,
    /// A plugin wants the messages: frames are parsed.
    parse: bool,
}

/// Relays an upgraded connection until it ends: bytes as they come, or WebSocket
/// messages through the plugins that want them.
async fn relay_upgraded(
    client: &mut Client,
    upstream: &Stream,
    upgraded: Upgraded,
    config: &Config,
    exchange: &mut Exchange,
    chain: &mut Chain,
    cx: &RequestCx<'_>,
) -> std::result::Result<End, Failure> {
    let Upgraded {
        leftover,
        websocket,
        parse,
    } = upgraded;
    // After a 101 the connection carries another protocol: its cut keeps a normal close.
    client.reset_on_drop = false;
    let hooks = websocket && !chain.is_empty();
    if hooks {
        if let Err((name, e)) = chain.on_websocket_start(cx) {
            // Nothing was relayed yet: both streams are at a frame boundary.
            let sent = websocket::refuse(&client.stream, upstream, config.timeout).await;
            exchange.add_bytes(sent);
            chain.on_websocket_end(cx);
            return Err(Failure::Fatal(plugin_failed((name, e))));
        }
    }
    let result = if parse {
        let early = std::mem::take(&mut client.buf);
        let (to_client, result) =
            websocket::relay(&client.stream, early, upstream, leftover, chain, cx).await;
        exchange.add_bytes(to_client);
        result
    } else {
        relay_raw(client, upstream, leftover, config, exchange).await
    };
    if hooks {
        chain.on_websocket_end(cx);
    }
    result.map_err(Failure::Fatal)?;
    Ok(End {
        client_keep_alive: false,
        upstream_reusable: false,
    })
}

/// Copies bytes both ways (any upgrade no plugin reads).
async fn relay_raw(
    client: &mut Client,
    upstream: &Stream,
    upstream_leftover: BytesMut,
    config: &Config,
    exchange: &mut Exchange,
) -> Result<()> {
    if !upstream_leftover.is_empty() {
        write_all(&client.stream, &upstream_leftover, config.timeout)
            .await
            .map_err(|e| client_io_error(e, "writing upgraded bytes"))?;
        exchange.add_bytes(upstream_leftover.len() as u64);
    }
    if !client.buf.is_empty() {
        let early = std::mem::take(&mut client.buf);
        write_all(upstream, &early, config.timeout)
            .await
            .map_err(|e| upstream_error(e, "writing upgraded bytes"))?;
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
    relayed.result
}

/// Maps a failure on the upstream socket to an error.
fn upstream_error(err: IoFail, context: &'static str) -> ProxyError {
    match err {
        IoFail::Timeout => ProxyError::new(ErrorKind::ConnectionReadTimeout, context),
        IoFail::Closed => ProxyError::new(ErrorKind::HttpResponseIncomplete, context),
        IoFail::Io(e) => ProxyError::new(ErrorKind::HttpResponseIncomplete, context).with_source(e),
        // Watched while the origin was silent: the client gave up.
        IoFail::ClientGone => ProxyError::new(ErrorKind::ClientClosed, context),
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
}

//! The download half: reading interim and final response heads from the origin and
//! relaying them to the client.

use crate::conn::stop::Stop;
use crate::conn::stream::rustls_error;
use crate::conn::Stream;
use bytes::{Bytes, BytesMut};

use super::body::{frame_piece, relay_body, relay_transformed, write_framed, Decoding};
use super::request::{is_hop_by_hop, names_framing_header, remove_connection_listed, via_line};
use super::upload::UploadProgress;
use super::{upstream_error, End, Failure, Recorders, RequestFacts};
use crate::config::Config;
use crate::conn::access::Exchange;
use crate::conn::io::{
    client_io_error, read_head_bytes, write_all, write_parts, IoFail, RecycledBuf,
};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::names_other_codings;
use crate::http::{parse_response, response_body_kind, BodyKind, Parsed, ResponseHead, Version};
use crate::plugin::{Chain, Flow, RequestCx, MAX_BUFFERED_RESPONSE_BODY};

const HEAD_READ_CHUNK: usize = 16 * 1024;

pub(super) enum Downloaded {
    Done(End),
    /// The origin switched protocols.
    Upgraded {
        /// The bytes that followed its 101 head.
        leftover: BytesMut,
        /// To WebSocket, as the request asked.
        websocket: bool,
    },
}

/// The plugin chain and what its hooks see, for the download half.
pub(super) struct Hooks<'a, 'c> {
    pub(super) chain: &'a mut Chain,
    pub(super) cx: &'a RequestCx<'c>,
}

/// Reads the response (interim heads, final head, body) and relays it to the client.
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
pub(super) async fn download(
    client: &Stream,
    upstream: &Stream,
    config: &Config,
    request: &RequestFacts,
    exchange: &mut Exchange,
    parts: &mut Vec<Bytes>,
    hooks: Hooks<'_, '_>,
    upload: &UploadProgress,
    shutdown: &Stop,
    received: &mut Recorders,
) -> std::result::Result<Downloaded, Failure> {
    // Back to the worker's spare buffers when the exchange is over (declared first, so
    // dropped last: after the heads that point into it).
    let mut buf = RecycledBuf::default();
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
            // RFC 9110 §15.2.2 and §7.8: a 101 names the protocol switched to, one the
            // client asked for. Otherwise a WebSocket session would be relayed raw,
            // unseen by the plugins that read its messages.
            let named = head.header("upgrade").is_some_and(|v| !v.is_empty());
            if !named || (request.websocket && !head.has_token("upgrade", "websocket")) {
                return Err(Failure::Fatal(ProxyError::new(
                    ErrorKind::HttpProtocolError,
                    "101 Switching Protocols to no protocol, or to one not asked for",
                )));
            }
            // Extensions were not offered when a plugin reads messages: one accepted
            // anyway would make frames the relay cannot read.
            if request.ws_messages && head.header("sec-websocket-extensions").is_some() {
                return Err(Failure::Fatal(ProxyError::new(
                    ErrorKind::WebsocketProtocolError,
                    "the origin accepted a WebSocket extension that was not offered",
                )));
            }
            let websocket = request.websocket && head.has_token("upgrade", "websocket");
            let mut head = head;
            remove_connection_listed(&mut head, true);
            head.remove_where(|name| is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"upgrade"));
            head.append("Connection", b"upgrade");
            encode_for_client(&mut head, parts);
            let len: usize = parts.iter().map(Bytes::len).sum();
            write_parts(client, parts, config.timeout)
                .await
                .map_err(|e| Failure::Fatal(client_io_error(e, "writing a 101")))?;
            exchange.set_status(101);
            exchange.add_bytes(len as u64);
            return Ok(Downloaded::Upgraded {
                leftover: std::mem::take(&mut *buf),
                websocket,
            });
        }
        // RFC 9110 §15.2: 1xx responses are not sent to HTTP/1.0 clients.
        if request.version == Version::Http11 {
            let mut head = head;
            strip_hop_by_hop(&mut head);
            remove_forbidden_framing(&mut head);
            encode_for_client(&mut head, parts);
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
            format!("response framing: {e}"),
        ))
    })?;
    let origin_keeps_open = match head.version() {
        Version::Http11 => !head.has_token("connection", "close"),
        Version::Http10 => head.has_token("connection", "keep-alive"),
    };
    let dechunk = request.version == Version::Http10 && body == BodyKind::Chunked;
    // The body is re-framed for an HTTP/1.0 client (RFC 9112 §6.1: it gets no
    // Transfer-Encoding) or for plugins that read it; a coding besides chunked would
    // then reach the client undone, gzip presented as plain content.
    let reframed = request.version == Version::Http10
        || (!hooks.chain.is_empty()
            && (hooks.chain.wants_response_body() || hooks.chain.wants_whole_response()));
    if reframed
        && body != BodyKind::Empty
        && head
            .header("transfer-encoding")
            .is_some_and(names_other_codings)
    {
        return Err(Failure::Fatal(ProxyError::new(
            ErrorKind::HttpProtocolError,
            if request.version == Version::Http10 {
                "the response's transfer-coding cannot be undone for an HTTP/1.0 client"
            } else {
                "the response's transfer-coding cannot be undone for the plugins"
            },
        )));
    }
    let close_client = !request.keep_alive
        || body == BodyKind::UntilClose
        || dechunk
        || !upload.done.get()
        || shutdown.is_set();
    strip_hop_by_hop(&mut head);
    // Plugins see the origin's framing; the edits that re-frame for the client follow.
    if !hooks.chain.is_empty() {
        let flow = hooks
            .chain
            .on_response(hooks.cx, &mut head)
            .map_err(|e| Failure::Fatal(crate::plugin::plugin_failed(e)))?;
        match flow {
            Flow::Continue => hooks
                .chain
                .wait_holds(config.timeout)
                .await
                .map_err(Failure::Fatal)?,
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
                send_reply(client, &reply, close_client, config, exchange).await?;
                return Ok(Downloaded::Done(End {
                    client_keep_alive: !close_client && !reply.close,
                    upstream_reusable: false,
                }));
            }
        }
    }
    if !hooks.chain.is_empty() && hooks.chain.wants_whole_response() {
        let mut hooks = hooks;
        // Boxed: only scripts that read whole responses take this path.
        let whole = Box::pin(whole_response(
            client,
            upstream,
            config,
            request,
            exchange,
            parts,
            &mut hooks,
            head,
            std::mem::take(&mut *buf),
            body,
            close_client,
            received,
        ));
        return whole.await.map(|(client_keep_alive, upstream_reusable)| {
            Downloaded::Done(End {
                client_keep_alive,
                upstream_reusable: upstream_reusable && origin_keeps_open,
            })
        });
    }
    // A plugin made the status one without content (204, 304): the origin's body is
    // not passed on, nor read, so the upstream connection is not reused.
    let body_dropped = body != BodyKind::Empty && !response_may_have_body(head.status());
    let body = if body_dropped {
        head.remove("content-length");
        head.remove("transfer-encoding");
        BodyKind::Empty
    } else {
        body
    };
    // The reverse: a response with nothing to send (a 304, a 204) that a plugin made a
    // 200 says it has no content, or the client would read until the connection closes
    // (or wait for the length a 304's Content-Length gave of another representation).
    if body == BodyKind::Empty
        && !request.is_head
        && !body_dropped
        && response_may_have_body(head.status())
        && !(head.count("content-length") == 1 && head.header("content-length") == Some(b"0"))
    {
        head.remove("transfer-encoding");
        head.set("Content-Length", b"0");
    }
    // A plugin that wants the body gets it decoded; what comes out of the chain has a
    // length nobody knows yet, so it is re-framed: chunked for HTTP/1.1 clients,
    // close-delimited for HTTP/1.0 ones.
    let transform =
        body != BodyKind::Empty && !hooks.chain.is_empty() && hooks.chain.wants_response_body();
    let close_client = close_client || (transform && request.version == Version::Http10);
    if request.version == Version::Http10 {
        head.remove("transfer-encoding");
    }
    if dechunk {
        // The trailers are not passed on to a client that cannot take them.
        head.remove("trailer");
    }
    if transform {
        head.remove("content-length");
        head.remove("transfer-encoding");
        if request.version == Version::Http11 {
            head.append("Transfer-Encoding", b"chunked");
        }
    }
    remove_forbidden_framing(&mut head);
    connection_header(&mut head, close_client, request.version);
    encode_for_client(&mut head, parts);
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
        let decoding = Decoding::new(body, config);
        relay_transformed(
            client,
            upstream,
            &mut buf,
            decoding,
            Vec::new(),
            chunked,
            config,
            exchange,
            &mut hooks,
            received,
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
        upstream_reusable: clean
            && origin_keeps_open
            && body != BodyKind::UntilClose
            && !body_dropped,
    }))
}

/// The response for plugins that want it whole (`Plugin::wants_whole_response`): the
/// body is read and decoded before anything is sent, the plugins see head and body
/// together, and the result leaves with an exact `Content-Length`. A body over
/// [`MAX_BUFFERED_RESPONSE_BODY`] is not held: the plugins see the head alone, and the
/// body passes on as received (re-framed, through any chunk plugins), logged as
/// `http_response_body_size`. Returns (client keep-alive, upstream clean).
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
async fn whole_response(
    client: &Stream,
    upstream: &Stream,
    config: &Config,
    request: &RequestFacts,
    exchange: &mut Exchange,
    parts: &mut Vec<Bytes>,
    hooks: &mut Hooks<'_, '_>,
    mut head: ResponseHead,
    mut buf: BytesMut,
    body: BodyKind,
    close_client: bool,
    received: &mut Recorders,
) -> std::result::Result<(bool, bool), Failure> {
    let plugin_failed = |e: (&'static str, crate::plugin::PluginError)| {
        Failure::Fatal(crate::plugin::plugin_failed(e))
    };
    let mut decoding = Decoding::new(body, config);
    let mut pieces: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    let mut over = matches!(body, BodyKind::Length(n) if n > MAX_BUFFERED_RESPONSE_BODY as u64);
    while !over {
        let before = pieces.len();
        decoding.take(&mut buf, &mut pieces, received)?;
        size += pieces[before..].iter().map(Bytes::len).sum::<usize>();
        over = size > MAX_BUFFERED_RESPONSE_BODY;
        if decoding.done() || over {
            break;
        }
        decoding.fill(upstream, &mut buf, config).await?;
    }
    let whole = (!over).then(|| concat(&pieces));
    let (flow, new_body) = hooks
        .chain
        .on_whole_response(hooks.cx, &mut head, whole.clone())
        .map_err(plugin_failed)?;
    match flow {
        Flow::Continue => hooks
            .chain
            .wait_holds(config.timeout)
            .await
            .map_err(Failure::Fatal)?,
        Flow::Close => return Ok((false, false)),
        Flow::Respond(reply) => {
            send_reply(client, &reply, close_client, config, exchange).await?;
            // Whatever of the origin's body was not read stays unread.
            let clean = decoding.done() && decoding.clean(&buf);
            return Ok((!close_client && !reply.close, clean));
        }
    }
    let streamed = over && new_body.is_none();
    if over {
        tracing::warn!(
            error.code = ErrorKind::HttpResponseBodySize.code(),
            "a response body over {MAX_BUFFERED_RESPONSE_BODY} bytes passes unseen by the plugins that wanted it whole"
        );
    }
    if streamed {
        // Re-framed as in the chunk-plugin path: the decoded prefix, then the rest.
        let chunked = request.version == Version::Http11;
        let close_client = close_client || !chunked;
        head.remove("content-length");
        head.remove("transfer-encoding");
        if chunked {
            head.append("Transfer-Encoding", b"chunked");
        }
        connection_header(&mut head, close_client, request.version);
        encode_for_client(&mut head, parts);
        write_framed(client, parts, config, exchange).await?;
        exchange.set_status(head.status());
        let clean = relay_transformed(
            client, upstream, &mut buf, decoding, pieces, chunked, config, exchange, hooks,
            received,
        )
        .await?;
        return Ok((!close_client, clean));
    }
    // The whole body, changed or not, then through any chunk plugins.
    let mut data = new_body.or(whole).unwrap_or_default();
    if hooks.chain.wants_response_body() {
        let out = hooks
            .chain
            .on_response_chunk(hooks.cx, data)
            .map_err(plugin_failed)?;
        let tail = hooks
            .chain
            .on_response_end(hooks.cx)
            .map_err(plugin_failed)?;
        data = concat(&[out, tail]);
    }
    head.remove("transfer-encoding");
    remove_forbidden_framing(&mut head);
    if request.is_head || !response_may_have_body(head.status()) {
        // HEAD, 204, 304: the origin's Content-Length (if any) describes another message.
    } else {
        head.set("Content-Length", data.len().to_string().as_bytes());
    }
    // An unread (or close-delimited) origin body: the upstream is not reused.
    let clean = decoding.done() && decoding.clean(&buf);
    connection_header(&mut head, close_client, request.version);
    encode_for_client(&mut head, parts);
    if !request.is_head && response_may_have_body(head.status()) {
        frame_piece(parts, data, false);
    }
    let sent: usize = parts.iter().map(Bytes::len).sum();
    write_parts(client, parts, config.timeout)
        .await
        .map_err(|e| Failure::Fatal(client_io_error(e, "writing a response")))?;
    exchange.set_status(head.status());
    exchange.add_bytes(sent as u64);
    Ok((!close_client, clean))
}

/// Sends a plugin's reply in place of the origin's response.
async fn send_reply(
    client: &Stream,
    reply: &crate::plugin::Reply,
    close_client: bool,
    config: &Config,
    exchange: &mut Exchange,
) -> std::result::Result<(), Failure> {
    let bytes = reply.bytes_for(exchange.is_head(), close_client);
    write_all(client, &bytes, config.timeout)
        .await
        .map_err(|e| Failure::Fatal(client_io_error(e, "writing a plugin's reply")))?;
    exchange.set_status(reply.status);
    exchange.add_bytes(bytes.len() as u64);
    Ok(())
}

/// Encodes `head` for the client into `parts`: in our HTTP version (RFC 9110 §6.2),
/// with our `Via` after the origin's (§7.6.3).
fn encode_for_client(head: &mut ResponseHead, parts: &mut Vec<Bytes>) {
    head.set_last_line(via_line(head.version()));
    head.encode_with_version(Version::Http11, parts);
}

/// Why the origin's TLS refused us, when a read failed on the alert it sent in place
/// of data.
fn origin_alert(err: &std::io::Error) -> Option<String> {
    match rustls_error(err)? {
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            Some("the origin requires a client certificate".to_owned())
        }
        rustls::Error::AlertReceived(alert) => {
            Some(format!("the origin's TLS sent the alert {alert:?}"))
        }
        _ => None,
    }
}

/// RFC 9110 §8.6 and RFC 9112 §6.1: a 1xx or 204 response must not carry
/// Content-Length or Transfer-Encoding. Its body was never read (it has none), so an
/// origin's such fields are dropped rather than passed on to mislead the client.
fn remove_forbidden_framing(head: &mut ResponseHead) {
    let status = head.status();
    if status == 204 || (100..200).contains(&status) {
        head.remove("content-length");
        head.remove("transfer-encoding");
    }
}

/// Whether a response with this status carries a body (RFC 9110 §6.4.1).
fn response_may_have_body(status: u16) -> bool {
    !(status == 204 || status == 304 || (100..200).contains(&status))
}

/// `Connection: close` when the client connection ends here; `keep-alive` for an
/// HTTP/1.0 client that keeps it.
fn connection_header(head: &mut ResponseHead, close_client: bool, version: Version) {
    if close_client {
        head.append("Connection", b"close");
    } else if version == Version::Http10 {
        head.append("Connection", b"keep-alive");
    }
}

/// One `Bytes` of `pieces` (no copy for zero or one piece).
fn concat(pieces: &[Bytes]) -> Bytes {
    match pieces {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => Bytes::from(many.concat()),
    }
}

/// Removes hop-by-hop headers from a response (the ones `Connection` lists too).
fn strip_hop_by_hop(head: &mut ResponseHead) {
    remove_connection_listed(head, false);
    head.remove_where(is_hop_by_hop);
}

/// Reads one response head from the origin.
async fn read_response_head(
    upstream: &Stream,
    buf: &mut BytesMut,
    config: &Config,
    received_any: &mut bool,
    upload: &UploadProgress,
) -> std::result::Result<ResponseHead, Failure> {
    let mut wait = config.timeout;
    loop {
        if !buf.is_empty() {
            *received_any = true;
            match parse_response(buf, &config.limits) {
                Ok(Parsed::Complete(head)) => return Ok(head),
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    return Err(Failure::Fatal(ProxyError::new(
                        e.response_kind(),
                        format!("response head: {e}"),
                    )))
                }
            }
        }
        match read_head_bytes(upstream, buf, HEAD_READ_CHUNK, wait).await {
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
            Ok(_) => wait = config.timeout,
            // The origin may answer only once it has the whole body: while the upload moves
            // (it has its own inactivity bounds) and for `--timeout` after it ended, the
            // wait goes on.
            Err(IoFail::Timeout) => match upload.wait_more(upstream, config.timeout) {
                Some(more) => wait = more,
                None => {
                    return Err(Failure::Fatal(upstream_error(
                        IoFail::Timeout,
                        "reading a response head",
                    )))
                }
            },
            Err(IoFail::Io(e)) => {
                // A TLS alert from the origin instead of a response: its TLS refused us
                // after the handshake (TLS 1.3 asks for a client certificate only then).
                // Said as a TLS error, and not retried: it would recur.
                if let Some(details) = origin_alert(&e) {
                    return Err(Failure::Fatal(
                        ProxyError::new(ErrorKind::TlsProtocolError, details).with_source(e),
                    ));
                }
                if !*received_any {
                    return Err(Failure::BeforeResponse(
                        ProxyError::new(
                            ErrorKind::ConnectionTerminated,
                            "upstream reset before responding",
                        )
                        .with_source(e),
                    ));
                }
                return Err(Failure::Fatal(upstream_error(
                    IoFail::Io(e),
                    "reading a response head",
                )));
            }
            Err(e) => return Err(Failure::Fatal(upstream_error(e, "reading a response head"))),
        }
    }
}

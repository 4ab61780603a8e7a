//! Relaying a response body to the client: as framed, or decoded, through the plugins
//! and re-framed.

use crate::conn::Stream;
use bytes::{Buf, Bytes, BytesMut};

use super::download::Hooks;
use super::{upstream_error, Failure, Recorders};
use crate::config::Config;
use crate::conn::access::Exchange;
use crate::conn::io::{client_io_error, read_some, read_some_watching, write_all, write_parts};
use crate::error::{ErrorKind, ProxyError};
use crate::http::{BodyKind, ChunkedDecoder, FramingError};
use crate::plugin::PluginError;

/// Relays a response body as framed. Returns whether it ended cleanly with no stray
/// bytes after it (the upstream connection may then be reused).
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
pub(super) async fn relay_body(
    client: &Stream,
    upstream: &Stream,
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
            match read_some_watching(upstream, buf, chunk, config.timeout, client).await {
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
                        .map_err(chunked_failure)?;
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
                match read_some_watching(upstream, buf, chunk, config.timeout, client).await {
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
            match read_some_watching(upstream, buf, chunk, config.timeout, client).await {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) => return Err(Failure::Fatal(upstream_error(e, "reading a response body"))),
            }
        },
    }
}

/// A response body read from the origin and decoded (any chunked framing removed),
/// piece by piece: what [`relay_transformed`] and the whole-body read share.
pub(super) struct Decoding {
    kind: BodyKind,
    decoder: ChunkedDecoder,
    /// Bytes still to come of a `Content-Length` body.
    remaining: u64,
    done: bool,
    /// Whether the body ended with nothing after it (the connection may be reused).
    clean: bool,
    ranges: Vec<std::ops::Range<usize>>,
}

impl Decoding {
    pub(super) fn new(kind: BodyKind, config: &Config) -> Self {
        Decoding {
            kind,
            decoder: ChunkedDecoder::new(&config.limits),
            remaining: match kind {
                BodyKind::Length(n) => n,
                _ => 0,
            },
            done: matches!(kind, BodyKind::Empty | BodyKind::Length(0)),
            clean: true,
            ranges: Vec::new(),
        }
    }

    /// The whole body was decoded.
    pub(super) fn done(&self) -> bool {
        self.done
    }

    /// The body ended with no stray bytes after it (meaningful once `done`).
    pub(super) fn clean(&self, buf: &BytesMut) -> bool {
        self.clean && buf.is_empty()
    }

    /// Decodes what `buf` holds into `pieces` (body bytes only).
    pub(super) fn take(
        &mut self,
        buf: &mut BytesMut,
        pieces: &mut Vec<Bytes>,
        received: &mut Recorders,
    ) -> std::result::Result<(), Failure> {
        if buf.is_empty() || self.done {
            return Ok(());
        }
        match self.kind {
            BodyKind::Length(_) => {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let piece = buf.split_to(take).freeze();
                received.record(&piece);
                pieces.push(piece);
                self.remaining -= take as u64;
                self.done = self.remaining == 0;
            }
            BodyKind::Chunked => {
                self.ranges.clear();
                let progress = self
                    .decoder
                    .advance(buf, Some(&mut self.ranges))
                    .map_err(chunked_failure)?;
                let piece = buf.split_to(progress.consumed).freeze();
                received.record(&piece);
                pieces.extend(self.ranges.iter().map(|r| piece.slice(r.clone())));
                self.done = progress.done;
            }
            BodyKind::UntilClose => {
                let piece = buf.split().freeze();
                received.record(&piece);
                pieces.push(piece);
            }
            BodyKind::Empty => self.done = true,
        }
        Ok(())
    }

    /// Reads more of the body into `buf`. A close ends a close-delimited body (not
    /// clean: nothing can follow it); anywhere else it is an incomplete response.
    pub(super) async fn fill(
        &mut self,
        upstream: &Stream,
        buf: &mut BytesMut,
        config: &Config,
    ) -> std::result::Result<(), Failure> {
        match read_some(upstream, buf, config.server_recvbuf_size, config.timeout).await {
            Ok(0) if self.kind == BodyKind::UntilClose => {
                self.done = true;
                self.clean = false;
                Ok(())
            }
            Ok(0) => Err(Failure::Fatal(ProxyError::new(
                ErrorKind::HttpResponseIncomplete,
                "upstream closed mid-body",
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(Failure::Fatal(upstream_error(e, "reading a response body"))),
        }
    }
}

/// Relays a response body through the plugins that asked for it: decoded, passed
/// through the chain piece by piece, and re-framed (`chunked` for HTTP/1.1 clients,
/// raw bytes before a close otherwise). `pieces` holds body bytes already decoded by
/// `decoding`. Memory stays bounded: one read buffer, plus whatever the plugins
/// themselves choose to keep. Returns whether the upstream response ended cleanly with
/// nothing after it.
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's sockets, buffers and state; a struct would only rename them"
)]
pub(super) async fn relay_transformed(
    client: &Stream,
    upstream: &Stream,
    buf: &mut BytesMut,
    mut decoding: Decoding,
    mut pieces: Vec<Bytes>,
    chunked: bool,
    config: &Config,
    exchange: &mut Exchange,
    hooks: &mut Hooks<'_, '_>,
    received: &mut Recorders,
) -> std::result::Result<bool, Failure> {
    let plugin_failed =
        |e: (&'static str, PluginError)| Failure::Fatal(crate::plugin::plugin_failed(e));
    let mut parts: Vec<Bytes> = Vec::new();
    loop {
        decoding.take(buf, &mut pieces, received)?;
        for piece in pieces.drain(..) {
            let out = hooks
                .chain
                .on_response_chunk(hooks.cx, piece)
                .map_err(plugin_failed)?;
            frame_piece(&mut parts, out, chunked);
        }
        if decoding.done() {
            break;
        }
        write_framed(client, &mut parts, config, exchange).await?;
        decoding.fill(upstream, buf, config).await?;
    }
    let tail = hooks
        .chain
        .on_response_end(hooks.cx)
        .map_err(plugin_failed)?;
    frame_piece(&mut parts, tail, chunked);
    if chunked {
        parts.push(Bytes::from_static(b"0\r\n\r\n"));
    }
    write_framed(client, &mut parts, config, exchange).await?;
    Ok(decoding.clean(buf))
}

/// A broken chunked response body: the exchange is over.
fn chunked_failure(e: FramingError) -> Failure {
    Failure::Fatal(ProxyError::new(
        e.response_kind(),
        format!("response chunked body: {e}"),
    ))
}

/// Appends `data` to `parts`, as one chunk when `chunked` (nothing for empty data:
/// an empty chunk would end the body).
pub(super) fn frame_piece(parts: &mut Vec<Bytes>, data: Bytes, chunked: bool) {
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
pub(super) async fn write_framed(
    client: &Stream,
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

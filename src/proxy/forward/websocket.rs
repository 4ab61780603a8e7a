//! The relay of a WebSocket session whose messages a plugin wants (after the `101`).
//!
//! Each direction reads into its own buffer and takes whole frames out of it
//! ([`Reader`]): control frames (ping, pong, close) are forwarded untouched as they come,
//! in order; data frames are reassembled into whole messages (at most
//! [`MAX_MESSAGE`] bytes of frames), passed through the plugins, then forwarded as they
//! came when unchanged, re-framed as one frame when changed (towards the server with a
//! fresh mask key), or not at all when dropped. A Close ends its direction; the session
//! ends when both directions have ended (Close or EOF, which is passed on as a
//! half-close as in the raw relay). Nothing moving in either direction for `--timeout`
//! ends it too, with the raw relay's semantics: a write under way counts as moving.
//!
//! A protocol violation, a message over the bound or a failing plugin ends the session:
//! both peers get a Close (1002, 1009, 1011), unless a frame to that peer was cut short
//! or it already got one, and the error is returned with its stable code.
//!
//! Memory: per direction, one frame being read (at most the bound) and the message
//! being reassembled (its frames as received plus its payload, the bound each): a few
//! times 8 MiB at worst, and nothing while idle.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::pin;
use std::time::Duration;

use bytes::BytesMut;

use crate::conn::io::{client_io_error, read_some, shutdown_write, write_all};
use crate::conn::Stream;
use crate::error::{ErrorKind, ProxyError, Result};
use crate::http::websocket::{
    close_frame, fresh_mask, message_frame, ControlKind, Event, FrameError, Reader,
    CLOSE_INTERNAL_ERROR, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, MAX_MESSAGE,
};
use crate::plugin::{Chain, RequestCx, WsMessage, WsVerdict};
use crate::proxy::tunnel::Activity;

/// A direction, as an index into the per-peer flags: the peer that sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client → server.
    Up = 0,
    /// Server → client.
    Down = 1,
}

impl Dir {
    fn client_sends(self) -> bool {
        self == Dir::Up
    }

    /// The sending peer, for logs.
    fn sender(self) -> &'static str {
        match self {
            Dir::Up => "the client",
            Dir::Down => "the origin",
        }
    }

    /// Index of the peer this direction writes to (0: client, 1: server).
    fn receiver(self) -> usize {
        match self {
            Dir::Up => 1,
            Dir::Down => 0,
        }
    }
}

/// Why a direction stopped the session.
enum Stop {
    Frame(Dir, FrameError),
    Plugin(String),
    Io(ProxyError),
}

/// What both directions share.
struct Session<'a, 'c> {
    chain: RefCell<&'a mut Chain>,
    cx: &'a RequestCx<'c>,
    activity: Activity,
    idle: Duration,
    chunk: usize,
    /// A write to [client, server] is under way: a frame to it may be cut short.
    writing: [Cell<bool>; 2],
    /// [client, server] got a Close.
    got_close: [Cell<bool>; 2],
    to_client: Cell<u64>,
}

/// Relays a WebSocket session between `client` and `upstream`, parsing frames.
/// `client_early` and `upstream_early` are bytes already read from each (after the
/// request head, after the 101). Returns the bytes sent to the client and how it ended.
pub(super) async fn relay(
    client: &Stream,
    client_early: BytesMut,
    upstream: &Stream,
    upstream_early: BytesMut,
    chain: &mut Chain,
    cx: &RequestCx<'_>,
) -> (u64, Result<()>) {
    let config = cx.config;
    let session = Session {
        chain: RefCell::new(chain),
        cx,
        activity: Activity::new(),
        idle: config.timeout,
        chunk: config.server_recvbuf_size.max(4096),
        writing: [Cell::new(false), Cell::new(false)],
        got_close: [Cell::new(false), Cell::new(false)],
        to_client: Cell::new(0),
    };
    let s = &session;
    let stop = {
        let mut up = pin!(pump(s, Dir::Up, client, upstream, client_early));
        let mut down = pin!(pump(s, Dir::Down, upstream, client, upstream_early));
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(stop) => break Some(stop),
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(stop) => break Some(stop),
                },
                () = s.activity.idle_for(s.idle) => {
                    break Some(Stop::Io(ProxyError::new(ErrorKind::ClientTimeout, "websocket idle")))
                }
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    let result = match stop {
        None => Ok(()),
        Some(stop) => {
            let (code, reason, err) = match stop {
                Stop::Frame(dir, FrameError::TooBig) => (
                    CLOSE_TOO_BIG,
                    "message too big",
                    ProxyError::new(
                        ErrorKind::WebsocketMessageTooLarge,
                        format!(
                            "{} sent a message over {MAX_MESSAGE} bytes of frames",
                            dir.sender()
                        ),
                    ),
                ),
                Stop::Frame(dir, FrameError::Protocol(violation)) => (
                    CLOSE_PROTOCOL_ERROR,
                    "protocol error",
                    ProxyError::new(
                        ErrorKind::WebsocketProtocolError,
                        format!("{} sent {}", dir.sender(), violation.describe()),
                    ),
                ),
                Stop::Plugin(why) => (
                    CLOSE_INTERNAL_ERROR,
                    "proxy error",
                    ProxyError::new(ErrorKind::ProxyInternalError, why),
                ),
                Stop::Io(err) => return (session.to_client.get(), Err(err)),
            };
            close_both(s, client, upstream, code, reason).await;
            Err(err)
        }
    };
    (session.to_client.get(), result)
}

/// Sends a Close with `code` to each peer that did not get one yet and whose stream is
/// at a frame boundary (best effort, bounded by `--timeout`), then lingers so that the
/// Close is read before the connections close.
async fn close_both(
    s: &Session<'_, '_>,
    client: &Stream,
    upstream: &Stream,
    code: u16,
    reason: &str,
) {
    for (index, stream) in [client, upstream].into_iter().enumerate() {
        if s.writing[index].get() || s.got_close[index].get() {
            continue;
        }
        let mask = if index == 1 {
            match fresh_mask() {
                Some(mask) => Some(mask),
                None => continue,
            }
        } else {
            None
        };
        let frame = close_frame(code, reason, mask);
        if write_all(stream, &frame, s.idle).await.is_ok() && index == 0 {
            s.to_client.set(s.to_client.get() + frame.len() as u64);
        }
        s.got_close[index].set(true);
    }
    tokio::join!(linger(client, s.idle), linger(upstream, s.idle));
}

/// Reads and discards what the peer still sends (its Close in reply, the rest of a
/// message too big) until it closes, for a short, bounded while: closing with unread
/// input would reset the connection, and a reset can discard our Close before the peer
/// reads it.
async fn linger(stream: &Stream, idle: Duration) {
    const LINGER_BYTES: usize = 256 * 1024;
    let deadline = tokio::time::Instant::now() + idle.min(Duration::from_secs(2));
    let mut drained = 0;
    let mut scratch = BytesMut::new();
    while drained < LINGER_BYTES {
        scratch.clear();
        let read =
            tokio::time::timeout_at(deadline, read_some(stream, &mut scratch, 16 * 1024, idle))
                .await;
        match read {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

/// Closes the session with 1011 on both sides before any frame was relayed (a plugin
/// failed in `on_websocket_start`).
pub(super) async fn refuse(client: &Stream, upstream: &Stream, idle: Duration) -> u64 {
    let to_client = close_frame(CLOSE_INTERNAL_ERROR, "proxy error", None);
    let sent = write_all(client, &to_client, idle).await.is_ok();
    if let Some(mask) = fresh_mask() {
        let to_server = close_frame(CLOSE_INTERNAL_ERROR, "proxy error", Some(mask));
        let _ = write_all(upstream, &to_server, idle).await;
    }
    tokio::join!(linger(client, idle), linger(upstream, idle));
    if sent {
        to_client.len() as u64
    } else {
        0
    }
}

/// One direction: frames from `src`, relayed to `dst`, until a Close (forwarded) or EOF
/// (passed on as a half-close).
async fn pump(
    s: &Session<'_, '_>,
    dir: Dir,
    src: &Stream,
    dst: &Stream,
    mut buf: BytesMut,
) -> std::result::Result<(), Stop> {
    let mut reader = Reader::new(dir.client_sends(), MAX_MESSAGE);
    loop {
        while let Some(event) = reader.next(&mut buf).map_err(|e| Stop::Frame(dir, e))? {
            match event {
                Event::Control { kind, raw } => {
                    send(s, dir, dst, &raw).await?;
                    if kind == ControlKind::Close {
                        s.got_close[dir.receiver()].set(true);
                        return Ok(());
                    }
                }
                Event::Message { kind, raw, payload } => {
                    let mut msg = WsMessage {
                        kind,
                        data: payload.clone(),
                        from_client: dir.client_sends(),
                    };
                    let verdict = s
                        .chain
                        .borrow_mut()
                        .on_websocket_message(s.cx, &mut msg)
                        .map_err(|(name, e)| Stop::Plugin(format!("plugin {name}: {e}")))?;
                    if verdict == WsVerdict::Drop {
                        continue;
                    }
                    if msg.kind == kind && msg.data == payload {
                        send(s, dir, dst, &raw).await?;
                    } else {
                        let mask = match dir {
                            Dir::Up => Some(fresh_mask().ok_or_else(|| {
                                Stop::Plugin("no random mask key for a changed message".into())
                            })?),
                            Dir::Down => None,
                        };
                        send(s, dir, dst, &message_frame(msg.kind, &msg.data, mask)).await?;
                    }
                }
            }
        }
        // Read more: whatever is there, else wait (an idle direction holds no buffer).
        loop {
            if buf.capacity() - buf.len() < s.chunk / 4 {
                buf.reserve(s.chunk);
            }
            match src.try_read_buf(&mut buf) {
                Ok(0) => {
                    shutdown_write(dst);
                    return Ok(());
                }
                Ok(_) => {
                    s.activity.moved();
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if buf.is_empty() {
                        buf = BytesMut::new();
                    }
                    src.readable().await.map_err(|e| read_error(dir, e))?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_error(dir, e)),
            }
        }
    }
}

/// Writes `bytes` to `dst`, counting as activity while under way.
async fn send(
    s: &Session<'_, '_>,
    dir: Dir,
    dst: &Stream,
    bytes: &[u8],
) -> std::result::Result<(), Stop> {
    let to = dir.receiver();
    s.writing[to].set(true);
    s.activity.write_started();
    let written = write_all(dst, bytes, s.idle).await;
    s.activity.write_ended();
    s.writing[to].set(false);
    match written {
        Ok(()) => {
            s.activity.moved();
            if dir == Dir::Down {
                s.to_client.set(s.to_client.get() + bytes.len() as u64);
            }
            Ok(())
        }
        Err(e) => Err(Stop::Io(match dir {
            Dir::Down => client_io_error(e, "websocket: writing the client"),
            Dir::Up => super::upstream_error(e, "websocket: writing the origin"),
        })),
    }
}

fn read_error(dir: Dir, e: io::Error) -> Stop {
    Stop::Io(match dir {
        Dir::Up => {
            ProxyError::new(ErrorKind::ClientClosed, "websocket: reading the client").with_source(e)
        }
        Dir::Down => ProxyError::new(
            ErrorKind::HttpResponseIncomplete,
            "websocket: reading the origin",
        )
        .with_source(e),
    })
}

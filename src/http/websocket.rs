//! WebSocket framing (RFC 6455 §5) for a relay that lets plugins see whole messages.
//!
//! Frame headers are parsed and written by `tungstenite`'s frame codec
//! ([`FrameHeader::parse`], [`FrameHeader::format`]); what a relay needs on top lives
//! here: the checks an intermediary makes (masking by direction, reserved bits, control
//! frames), the reassembly of fragmented messages within a size bound, and the frames
//! the proxy writes itself (a changed message, a Close).
//!
//! [`Reader`] works on one direction's read buffer: it takes whole frames out of it
//! (`split_to`, no copy) and returns either a control frame to forward untouched or a
//! complete message with both its frames exactly as received (to forward when no plugin
//! changed it) and its unmasked payload (for the plugins). A message that arrives in one
//! frame from the server costs no copy at all; a client's (masked) one costs one.

use std::io::Cursor;

use bytes::{Bytes, BytesMut};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// The largest message a relay reassembles, counted as the bytes of its frames (headers
/// and payloads). Past it the session is closed with status 1009.
pub const MAX_MESSAGE: usize = 8 * 1024 * 1024;

/// Close status: normal closure.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close status: the peer broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close status: a message too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close status: the proxy (a plugin) failed.
pub const CLOSE_INTERNAL_ERROR: u16 = 1011;

/// What a data message holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsKind {
    /// UTF-8 text (not checked by the proxy: that is the endpoints' business).
    Text,
    /// Bytes.
    Binary,
}

impl WsKind {
    /// `"text"` or `"binary"`.
    pub fn as_str(self) -> &'static str {
        match self {
            WsKind::Text => "text",
            WsKind::Binary => "binary",
        }
    }

    fn opcode(self) -> OpCode {
        match self {
            WsKind::Text => OpCode::Data(Data::Text),
            WsKind::Binary => OpCode::Data(Data::Binary),
        }
    }
}

/// A control frame's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlKind {
    /// Ping.
    Ping,
    /// Pong.
    Pong,
    /// Close: the sender sends nothing more.
    Close,
}

/// How a peer broke RFC 6455.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A client's frame without a mask (§5.1).
    UnmaskedClientFrame,
    /// A server's frame with a mask (§5.1).
    MaskedServerFrame,
    /// A reserved bit set with no extension negotiated (§5.2).
    ReservedBits,
    /// A reserved opcode (§5.2).
    BadOpcode,
    /// A control frame with more than 125 bytes of payload (§5.5).
    ControlTooLong,
    /// A fragmented control frame (§5.5).
    ControlFragmented,
    /// A continuation frame with no message to continue (§5.4).
    UnexpectedContinuation,
    /// A new text or binary frame before the fragmented message ended (§5.4).
    UnfinishedMessage,
}

impl Violation {
    /// A short description for logs.
    pub fn describe(self) -> &'static str {
        match self {
            Violation::UnmaskedClientFrame => "a client frame without a mask",
            Violation::MaskedServerFrame => "a server frame with a mask",
            Violation::ReservedBits => "reserved bits set without an extension",
            Violation::BadOpcode => "a reserved opcode",
            Violation::ControlTooLong => "a control frame over 125 bytes",
            Violation::ControlFragmented => "a fragmented control frame",
            Violation::UnexpectedContinuation => "a continuation frame outside a message",
            Violation::UnfinishedMessage => "a new message inside a fragmented one",
        }
    }
}

/// Why a [`Reader`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The peer broke the protocol.
    Protocol(Violation),
    /// A message is larger than the reader's bound.
    TooBig,
}

/// What the next frames of a direction hold.
#[derive(Debug)]
pub enum Event {
    /// A control frame, to forward as it came (`raw`).
    Control {
        /// Ping, pong or close.
        kind: ControlKind,
        /// The frame as received.
        raw: Bytes,
    },
    /// A whole data message.
    Message {
        /// Text or binary.
        kind: WsKind,
        /// Its frames as received, to forward when the message is unchanged.
        raw: Bytes,
        /// The payload, unmasked and reassembled.
        payload: Bytes,
    },
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Pending {
    kind: WsKind,
    raw: BytesMut,
    payload: BytesMut,
}

/// Parses one direction of a WebSocket connection.
#[derive(Debug)]
pub struct Reader {
    from_client: bool,
    max: usize,
    pending: Option<Pending>,
}

impl Reader {
    /// A reader for frames sent by the client (`from_client`: masked) or by the server,
    /// with messages bounded by `max` bytes of frames.
    pub fn new(from_client: bool, max: usize) -> Self {
        Reader {
            from_client,
            max,
            pending: None,
        }
    }

    /// Takes the next control frame or whole message out of `buf`; `Ok(None)` when
    /// `buf` holds no whole frame yet (the fragments of a message are taken as they come,
    /// so `buf` never holds more than one frame's worth waiting).
    ///
    /// # Errors
    /// A protocol violation, or a message over the bound (detected from a frame's header,
    /// before its payload is waited for). The reader is not meant to be used afterwards.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        loop {
            let mut cursor = Cursor::new(&buf[..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return Ok(None),
                // The only error a parse of bytes in memory can give is a reserved opcode.
                Err(_) => return Err(FrameError::Protocol(Violation::BadOpcode)),
            };
            let header_len = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
            self.check(&header, length, header_len)?;
            // `check` bounded the length, so this fits.
            let total = header_len + usize::try_from(length).unwrap_or(usize::MAX);
            // Not reserved ahead: a header announcing 8 MiB costs nothing until the
            // bytes come.
            if buf.len() < total {
                return Ok(None);
            }
            let raw = buf.split_to(total);
            match header.opcode {
                OpCode::Control(control) => {
                    let kind = match control {
                        Control::Ping => ControlKind::Ping,
                        Control::Pong => ControlKind::Pong,
                        Control::Close => ControlKind::Close,
                        Control::Reserved(_) => {
                            return Err(FrameError::Protocol(Violation::BadOpcode))
                        }
                    };
                    return Ok(Some(Event::Control {
                        kind,
                        raw: raw.freeze(),
                    }));
                }
                OpCode::Data(data) => {
                    let kind = match data {
                        Data::Text => Some(WsKind::Text),
                        Data::Binary => Some(WsKind::Binary),
                        Data::Continue => None,
                        Data::Reserved(_) => {
                            return Err(FrameError::Protocol(Violation::BadOpcode))
                        }
                    };
                    match (kind, self.pending.take()) {
                        // The usual case: a whole message in one frame.
                        (Some(kind), None) if header.is_final => {
                            let payload = match header.mask {
                                Some(mask) => {
                                    let mut payload = BytesMut::from(&raw[header_len..]);
                                    apply_mask(&mut payload, mask);
                                    payload.freeze()
                                }
                                None => {
                                    let raw = raw.freeze();
                                    let payload = raw.slice(header_len..);
                                    return Ok(Some(Event::Message { kind, raw, payload }));
                                }
                            };
                            return Ok(Some(Event::Message {
                                kind,
                                raw: raw.freeze(),
                                payload,
                            }));
                        }
                        (Some(kind), None) => {
                            let mut payload = BytesMut::from(&raw[header_len..]);
                            if let Some(mask) = header.mask {
                                apply_mask(&mut payload, mask);
                            }
                            self.pending = Some(Pending { kind, raw, payload });
                        }
                        (None, Some(mut pending)) => {
                            let start = pending.payload.len();
                            pending.payload.extend_from_slice(&raw[header_len..]);
                            if let Some(mask) = header.mask {
                                apply_mask(&mut pending.payload[start..], mask);
                            }
                            pending.raw.extend_from_slice(&raw);
                            if header.is_final {
                                return Ok(Some(Event::Message {
                                    kind: pending.kind,
                                    raw: pending.raw.freeze(),
                                    payload: pending.payload.freeze(),
                                }));
                            }
                            self.pending = Some(pending);
                        }
                        // `check` refused the other combinations.
                        (None, None) => {
                            return Err(FrameError::Protocol(Violation::UnexpectedContinuation))
                        }
                        (Some(_), Some(_)) => {
                            return Err(FrameError::Protocol(Violation::UnfinishedMessage))
                        }
                    }
                }
            }
        }
    }

    /// The checks made from a frame's header alone.
    fn check(
        &self,
        header: &FrameHeader,
        length: u64,
        header_len: usize,
    ) -> Result<(), FrameError> {
        let violation = |v| Err(FrameError::Protocol(v));
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return violation(Violation::ReservedBits);
        }
        match (self.from_client, header.mask.is_some()) {
            (true, false) => return violation(Violation::UnmaskedClientFrame),
            (false, true) => return violation(Violation::MaskedServerFrame),
            _ => {}
        }
        match header.opcode {
            OpCode::Control(_) => {
                if length > 125 {
                    return violation(Violation::ControlTooLong);
                }
                if !header.is_final {
                    return violation(Violation::ControlFragmented);
                }
                Ok(())
            }
            OpCode::Data(data) => {
                match (data, &self.pending) {
                    (Data::Continue, None) => return violation(Violation::UnexpectedContinuation),
                    (Data::Text | Data::Binary, Some(_)) => {
                        return violation(Violation::UnfinishedMessage)
                    }
                    _ => {}
                }
                let before = self.pending.as_ref().map_or(0, |p| p.raw.len());
                let frames = ((before + header_len) as u64).saturating_add(length);
                if frames > self.max as u64 {
                    return Err(FrameError::TooBig);
                }
                Ok(())
            }
        }
    }
}

/// XORs `data` with `mask` (RFC 6455 §5.3), starting at the mask's first byte.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (byte, m) in chunks.into_remainder().iter_mut().zip(mask.iter().cycle()) {
        *byte ^= m;
    }
}

/// A fresh mask key from the system's random source (frames the proxy sends to a server
/// must be masked with an unpredictable key, §5.3); `None` if it failed.
pub fn fresh_mask() -> Option<[u8; 4]> {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut mask = [0u8; 4];
    SystemRandom::new().fill(&mut mask).ok()?;
    Some(mask)
}

/// One final frame carrying `payload` as a `kind` message, masked with `mask` when
/// given (towards a server).
pub fn message_frame(kind: WsKind, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    frame(kind.opcode(), payload, mask)
}

/// A Close frame with `code` and a short `reason` (cut at 123 bytes), masked with `mask`
/// when given.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    frame(OpCode::Control(Control::Close), &payload, mask)
}

fn frame(opcode: OpCode, payload: &[u8], mask: Option<[u8; 4]>) -> Bytes {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
    };
    let length = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(length) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(length, &mut out);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        apply_mask(&mut out[start..], mask);
    }
    Bytes::from(out)
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;

//! HTTP/1.x messages as bytes: strict head parsing into spans, request targets, body framing, synthetic replies;
//! and WebSocket framing for the relay that shows plugins whole messages ([`websocket`]).
//!
//! Pure functions over `Bytes`; no I/O lives here. The proxy core reads into a `BytesMut`, calls
//! [`parse_request`]/[`parse_response`], decides framing with [`request_body_kind`]/[`response_body_kind`],
//! and writes heads back out with `encode` (untouched spans are reused, never copied).

pub mod body;
pub mod head;
pub mod parse;
pub mod response;
pub mod target;
pub mod websocket;

pub use body::{
    request_body_kind, response_body_kind, BodyKind, ChunkedDecoder, FramingError, Progress,
};
pub use head::{RequestHead, ResponseHead, Version};
pub use parse::{parse_request, parse_response, ParseError, Parsed};
pub use target::{host_header_value, parse_target, Scheme, Target};

/// RFC 9110 §5.6.2 `tchar`: the bytes allowed in a token (method, header name, transfer-coding).
pub(crate) const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
}

/// RFC 9110 §5.5 `field-vchar` plus SP/HTAB: what may appear inside a field value.
pub(crate) const fn is_field_byte(b: u8) -> bool {
    matches!(b, b'\t' | b' '..=b'~' | 0x80..=0xff)
}

/// Strips RFC 9110 §5.6.3 OWS (SP / HTAB) from both ends.
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

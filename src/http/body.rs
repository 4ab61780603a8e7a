//! Message body framing (RFC 9112 §6): which framing a head declares, and a strict resumable chunked decoder.

use std::fmt;
use std::ops::Range;

use super::head::{RequestHead, ResponseHead, Version};
use super::{is_field_byte, is_tchar, trim_ows};
use crate::config::Limits;
use crate::error::ErrorKind;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: …, chunked`.
    Chunked,
    /// Until the origin closes the connection (responses only).
    UntilClose,
}

/// Why a body's framing was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FramingError {
    /// A framing rule was broken; the text names it (for logs only).
    Malformed(&'static str),
    /// A chunk-size line or the trailer section is over its limit.
    TooLarge,
}

impl FramingError {
    /// The error kind when the body came from a client.
    pub fn request_kind(&self) -> ErrorKind {
        ErrorKind::HttpRequestError
    }

    /// The error kind when the body came from an origin.
    pub fn response_kind(&self) -> ErrorKind {
        ErrorKind::HttpProtocolError
    }
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::Malformed(rule) => write!(f, "bad body framing: {rule}"),
            FramingError::TooLarge => f.write_str("chunk line or trailers too large"),
        }
    }
}

impl std::error::Error for FramingError {}

// === framing from heads ===

/// RFC 9112 §6.3 for requests: TE+CL, TE on HTTP/1.0, TE not ending in `chunked`, and bad or repeated CL are
/// errors; no TE/CL means no body (never `UntilClose`).
pub fn request_body_kind(head: &RequestHead) -> Result<BodyKind, FramingError> {
    let found = head.framing();
    match Framing::of(found.transfer_encodings, found.content_lengths)? {
        Framing::None => Ok(BodyKind::Empty),
        Framing::Length => content_length(found.content_length),
        Framing::Te => {
            // RFC 9112 §6.1: TE in an HTTP/1.0 message means the framing is faulty.
            if head.version() == Version::Http10 {
                return Err(FramingError::Malformed("Transfer-Encoding on HTTP/1.0"));
            }
            if found.transfer_encoding_ws {
                return Err(FramingError::Malformed(
                    "whitespace after Transfer-Encoding",
                ));
            }
            let value = found.transfer_encoding.unwrap_or_default();
            match transfer_codings(value, Side::Request)? {
                // RFC 9112 §6.3 rule 4: a request whose TE does not end in chunked has no reliable length.
                ChunkedLast::No => Err(FramingError::Malformed(
                    "request Transfer-Encoding not ending in chunked",
                )),
                ChunkedLast::Yes => Ok(BodyKind::Chunked),
            }
        }
    }
}

/// RFC 9112 §6.3 for responses: no body for HEAD/1xx/204/304 (framing still validated); TE ending in chunked
/// is `Chunked`, other TE is `UntilClose`; TE+CL and bad CL are errors; no framing is `UntilClose`.
///
/// A 2xx to CONNECT has no body either; the signature does not carry the method, so the caller handles it.
pub fn response_body_kind(
    head: &ResponseHead,
    request_was_head: bool,
) -> Result<BodyKind, FramingError> {
    let found = head.framing();
    let kind = match Framing::of(found.transfer_encodings, found.content_lengths)? {
        Framing::None => BodyKind::UntilClose,
        Framing::Length => content_length(found.content_length)?,
        Framing::Te => {
            // RFC 9112 §6.1: TE in an HTTP/1.0 message means the framing is faulty (and no 1.1 server sends it
            // to our HTTP/1.1 request with a 1.0 status line).
            if head.version() == Version::Http10 {
                return Err(FramingError::Malformed("Transfer-Encoding on HTTP/1.0"));
            }
            if found.transfer_encoding_ws {
                return Err(FramingError::Malformed(
                    "whitespace after Transfer-Encoding",
                ));
            }
            match transfer_codings(found.transfer_encoding.unwrap_or_default(), Side::Response)? {
                ChunkedLast::Yes => BodyKind::Chunked,
                ChunkedLast::No => BodyKind::UntilClose,
            }
        }
    };
    let status = head.status();
    // RFC 9112 §6.3 rule 1: these never have content, whatever the headers say.
    if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(BodyKind::Empty);
    }
    Ok(kind)
}

/// Which framing header a message carries, after the "exactly one kind, exactly one header" checks.
enum Framing {
    None,
    Length,
    Te,
}

impl Framing {
    fn of(te_count: usize, cl_count: usize) -> Result<Self, FramingError> {
        match (te_count, cl_count) {
            (0, 0) => Ok(Framing::None),
            // RFC 9112 §6.3 rule 3: TE+CL is a smuggling attempt until proven otherwise; we never guess.
            (1.., 1..) => Err(FramingError::Malformed(
                "both Transfer-Encoding and Content-Length",
            )),
            (1, 0) => Ok(Framing::Te),
            (_, 0) => Err(FramingError::Malformed("more than one Transfer-Encoding")),
            (0, 1) => Ok(Framing::Length),
            // RFC 9112 §6.3 rule 5 allows identical repeats; a proxy that merged them would disagree with one
            // that does not, so even equal repeats are rejected.
            (0, _) => Err(FramingError::Malformed("more than one Content-Length")),
        }
    }
}

/// The single Content-Length value: `1*DIGIT` (RFC 9110 §8.6), overflow-checked.
///
/// Leading zeros are valid `1*DIGIT` and read as decimal ("05" is 5). `str::parse::<u64>` is not used: it
/// accepts "+5".
fn content_length(value: Option<&[u8]>) -> Result<BodyKind, FramingError> {
    let value = value.unwrap_or_default();
    if value.is_empty() {
        return Err(FramingError::Malformed("empty Content-Length"));
    }
    // DESIGN §3 rule 2: `0|[1-9][0-9]*`. RFC 9110 allows leading zeros, but a next hop
    // may read `010` otherwise (as octal): a value that is not canonical is refused.
    if value.len() > 1 && value[0] == b'0' {
        return Err(FramingError::Malformed("Content-Length has a leading zero"));
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return Err(FramingError::Malformed("Content-Length is not 1*DIGIT"));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(FramingError::Malformed("Content-Length overflows"))?;
    }
    Ok(BodyKind::Length(n))
}

/// Whether a valid Transfer-Encoding list ends in `chunked`.
enum ChunkedLast {
    Yes,
    No,
}

/// Validates a Transfer-Encoding list (RFC 9112 §6.1, §7): known codings only, no empty items, no parameters,
/// `chunked` at most once and only last.
fn transfer_codings(value: &[u8], side: Side) -> Result<ChunkedLast, FramingError> {
    const KNOWN: [&[u8]; 5] = [b"gzip", b"x-gzip", b"deflate", b"compress", b"x-compress"];
    let mut items = value.split(|&b| b == b',').peekable();
    let mut seen_chunked = false;
    while let Some(raw_item) = items.next() {
        let item = trim_ows(raw_item);
        if item.is_empty() {
            return Err(FramingError::Malformed("empty Transfer-Encoding item"));
        }
        if !item.iter().all(|&b| is_tchar(b)) {
            return Err(FramingError::Malformed(
                "Transfer-Encoding item is not a token",
            ));
        }
        if item.eq_ignore_ascii_case(b"chunked") {
            // RFC 9112 §6.1: chunked is applied at most once.
            if seen_chunked {
                return Err(FramingError::Malformed("chunked applied twice"));
            }
            seen_chunked = true;
            if items.peek().is_none() {
                return Ok(ChunkedLast::Yes);
            }
            // RFC 9112 §6.3 rule 4: a request whose final coding is not chunked has
            // no reliable length (400); a response is then read until close.
            if side == Side::Request {
                return Err(FramingError::Malformed(
                    "chunked is not the last transfer-coding",
                ));
            }
            continue;
        }
        if !KNOWN.iter().any(|k| item.eq_ignore_ascii_case(k)) {
            return Err(FramingError::Malformed("unknown transfer-coding"));
        }
    }
    Ok(ChunkedLast::No)
}

/// Whether a Transfer-Encoding value (already checked by [`response_body_kind`]) names a
/// coding besides chunked (`gzip, chunked`): such a body cannot be re-framed for the
/// client without decoding it, which the proxy does not do.
pub fn names_other_codings(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| !trim_ows(item).eq_ignore_ascii_case(b"chunked"))
}

/// Which message a framing rule is applied to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

// === impl ChunkedDecoder ===

/// How far `ChunkedDecoder::advance` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to this body.
    pub consumed: usize,
    /// The last chunk and the trailer section have been read.
    pub done: bool,
}

/// Where in the chunked grammar (RFC 9112 §7.1) the decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk-size: `digits` hex digits read so far, value `size`.
    Size { size: u64, digits: u8 },
    /// BWS after the size: only more SP/HTAB or `;` may follow.
    SizeWs { size: u64 },
    /// In the chunk extensions, up to the CR.
    Ext { size: u64 },
    /// Saw the CR ending the size line.
    SizeLf { size: u64 },
    /// In chunk data.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// In a trailer field name.
    TrailerName,
    /// In a trailer field value.
    TrailerValue,
    /// Saw the CR ending a trailer line.
    TrailerLf,
    /// Saw the CR of the final empty line.
    EndLf,
    /// The message is complete.
    Done,
    /// An error was reported; the stream is unusable.
    Failed,
}

/// Resumable validating chunked decoder: byte-level state machine for lines, bulk skip over data.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Bytes of the current chunk-size line so far (CRLF excluded).
    line_len: usize,
    /// Bytes of the trailer section so far (its field lines with their CRLFs; the final CRLF is not counted).
    trailer_len: usize,
    max_chunk_line: usize,
    max_trailers: usize,
    /// In a trailer field name: its bytes so far, and which of [`FRAMING_FIELDS`] it
    /// may still be (one bit each).
    name_len: usize,
    name_may_be: u8,
}

/// Fields that frame a message: never accepted in trailers (RFC 9110 §6.5.1), where a
/// next hop that merges trailers into the head would reframe the message by them.
const FRAMING_FIELDS: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];

/// The longest chunk-size that fits a `u64`; more digits are rejected rather than overflowed.
const MAX_SIZE_DIGITS: u8 = 16;

fn hex_value(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new(limits: &Limits) -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            line_len: 0,
            trailer_len: 0,
            max_chunk_line: limits.max_chunk_line,
            max_trailers: limits.max_trailers,
            name_len: 0,
            name_may_be: 0,
        }
    }

    /// Whether the whole body (last chunk and trailers) has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Validates `buf` as the next bytes of the body; pushes chunk payload ranges (relative to `buf`) to `data`.
    ///
    /// Consumes all of `buf` unless the body ends inside it; then `done` is set and `consumed` stops just after
    /// the final CRLF. Partial lines are remembered, never rescanned.
    pub fn advance(
        &mut self,
        buf: &[u8],
        mut data: Option<&mut Vec<Range<usize>>>,
    ) -> Result<Progress, FramingError> {
        match self.state {
            State::Done => {
                return Ok(Progress {
                    consumed: 0,
                    done: true,
                })
            }
            State::Failed => return Err(FramingError::Malformed("chunked body already failed")),
            _ => {}
        }
        let mut i = 0;
        while i < buf.len() {
            if let State::Data { remaining } = self.state {
                let avail = buf.len() - i;
                let n = usize::try_from(remaining).map_or(avail, |r| r.min(avail));
                if let Some(ranges) = data.as_deref_mut() {
                    ranges.push(i..i + n);
                }
                i += n;
                let left = remaining - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { remaining: left }
                };
                continue;
            }
            let Some(&b) = buf.get(i) else { break };
            i += 1;
            if let Err(err) = self.step(b) {
                self.state = State::Failed;
                return Err(err);
            }
            if self.state == State::Done {
                return Ok(Progress {
                    consumed: i,
                    done: true,
                });
            }
        }
        Ok(Progress {
            consumed: buf.len(),
            done: false,
        })
    }

    /// One byte of the line grammar (everything but chunk data).
    fn step(&mut self, b: u8) -> Result<(), FramingError> {
        use FramingError::Malformed;
        self.state = match self.state {
            State::Size { size, digits } => {
                // The CR that ends the line is not part of it: the limit is on the line without its CRLF, as in
                // `Ext`, where the CR is not counted either.
                if b != b'\r' {
                    self.count_line_byte()?;
                }
                match (hex_value(b), b) {
                    (Some(_), _) if digits == MAX_SIZE_DIGITS => {
                        return Err(Malformed("chunk size over 16 hex digits"))
                    }
                    (Some(v), _) => State::Size {
                        size: size << 4 | v,
                        digits: digits + 1,
                    },
                    // No sign, no "0x", no leading space, not empty (RFC 9112 §7.1: chunk-size = 1*HEXDIG).
                    (None, _) if digits == 0 => {
                        return Err(Malformed("chunk size must start with a hex digit"))
                    }
                    (None, b'\r') => State::SizeLf { size },
                    (None, b';') => State::Ext { size },
                    (None, b' ' | b'\t') => State::SizeWs { size },
                    (None, _) => return Err(Malformed("invalid byte after chunk size")),
                }
            }
            State::SizeWs { size } => {
                self.count_line_byte()?;
                match b {
                    // RFC 9112 §7.1.1: BWS is only allowed before a chunk-ext's ";".
                    b' ' | b'\t' => State::SizeWs { size },
                    b';' => State::Ext { size },
                    _ => return Err(Malformed("whitespace after chunk size")),
                }
            }
            State::Ext { size } => match b {
                b'\r' => State::SizeLf { size },
                b'\n' => return Err(Malformed("bare LF in chunk extension")),
                _ if is_field_byte(b) => {
                    self.count_line_byte()?;
                    State::Ext { size }
                }
                _ => return Err(Malformed("control byte in chunk extension")),
            },
            State::SizeLf { size } => {
                // A CR anywhere else in the line (e.g. in an extension) is bare: only CRLF ends it.
                if b != b'\n' {
                    return Err(Malformed("bare CR in chunk size line"));
                }
                self.line_len = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data { remaining: size }
                }
            }
            // Unreachable: `advance` handles data in bulk. Kept total so no byte can panic.
            State::Data { remaining } => State::Data { remaining },
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataCr => return Err(Malformed("chunk data not followed by CRLF")),
            State::DataLf if b == b'\n' => State::Size { size: 0, digits: 0 },
            State::DataLf => return Err(Malformed("chunk data not followed by CRLF")),
            State::TrailerStart => {
                // The final CRLF ends the body; it is not part of the trailer section (RFC 9112 §7.1).
                if b != b'\r' {
                    self.count_trailer_byte()?;
                }
                match b {
                    b'\r' => State::EndLf,
                    _ if is_tchar(b) => {
                        self.name_len = 0;
                        self.name_may_be = (1 << FRAMING_FIELDS.len()) - 1;
                        self.match_name_byte(b);
                        State::TrailerName
                    }
                    // RFC 9112 §5.2: obs-fold is rejected in trailers as in heads.
                    b' ' | b'\t' => return Err(Malformed("obs-fold in trailers")),
                    _ => return Err(Malformed("invalid trailer field name")),
                }
            }
            State::TrailerName => {
                self.count_trailer_byte()?;
                match b {
                    b':' => {
                        let whole = FRAMING_FIELDS.iter().enumerate().any(|(i, name)| {
                            self.name_may_be & (1 << i) != 0 && name.len() == self.name_len
                        });
                        if whole {
                            return Err(Malformed("framing field in trailers"));
                        }
                        State::TrailerValue
                    }
                    _ if is_tchar(b) => {
                        self.match_name_byte(b);
                        State::TrailerName
                    }
                    _ => return Err(Malformed("invalid trailer field name")),
                }
            }
            State::TrailerValue => {
                self.count_trailer_byte()?;
                match b {
                    b'\r' => State::TrailerLf,
                    _ if is_field_byte(b) => State::TrailerValue,
                    _ => return Err(Malformed("invalid byte in trailer value")),
                }
            }
            State::TrailerLf => {
                self.count_trailer_byte()?;
                if b != b'\n' {
                    return Err(Malformed("bare CR in trailers"));
                }
                State::TrailerStart
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(Malformed("bare CR at end of chunked body"));
                }
                State::Done
            }
            State::Done | State::Failed => {
                return Err(Malformed("bytes after end of chunked body"))
            }
        };
        Ok(())
    }

    fn count_line_byte(&mut self) -> Result<(), FramingError> {
        self.line_len += 1;
        if self.line_len > self.max_chunk_line {
            return Err(FramingError::TooLarge);
        }
        Ok(())
    }

    /// Narrows which framing field the trailer name being read may be, by its next byte.
    fn match_name_byte(&mut self, b: u8) {
        let at = self.name_len;
        for (i, name) in FRAMING_FIELDS.iter().enumerate() {
            if name.get(at) != Some(&b.to_ascii_lowercase()) {
                self.name_may_be &= !(1 << i);
            }
        }
        self.name_len += 1;
    }

    fn count_trailer_byte(&mut self) -> Result<(), FramingError> {
        self.trailer_len += 1;
        if self.trailer_len > self.max_trailers {
            return Err(FramingError::TooLarge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse::{parse_request, parse_response, Parsed};
    use bytes::BytesMut;

    fn request(head: &str) -> RequestHead {
        let mut buf = BytesMut::from(head.as_bytes());
        match parse_request(&mut buf, &Limits::default()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn response(head: &str) -> ResponseHead {
        let mut buf = BytesMut::from(head.as_bytes());
        match parse_response(&mut buf, &Limits::default()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{head:?}: {other:?}"),
        }
    }

    fn req_kind(headers: &str) -> Result<BodyKind, FramingError> {
        request_body_kind(&request(&format!(
            "POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n"
        )))
    }

    fn res_kind(
        status_line: &str,
        headers: &str,
        was_head: bool,
    ) -> Result<BodyKind, FramingError> {
        response_body_kind(
            &response(&format!("{status_line}\r\n{headers}\r\n")),
            was_head,
        )
    }

    // --- request framing ---

    #[test]
    fn request_without_framing_is_empty() {
        assert_eq!(req_kind(""), Ok(BodyKind::Empty));
    }

    #[test]
    fn request_content_length() {
        assert_eq!(req_kind("Content-Length: 0\r\n"), Ok(BodyKind::Length(0)));
        assert_eq!(req_kind("Content-Length: 42\r\n"), Ok(BodyKind::Length(42)));
        assert_eq!(
            req_kind("Content-Length:   7  \r\n"),
            Ok(BodyKind::Length(7))
        );
        assert_eq!(
            req_kind("Content-Length: 18446744073709551615\r\n"),
            Ok(BodyKind::Length(u64::MAX))
        );
    }

    #[test]
    fn content_length_is_canonical_without_leading_zeros() {
        assert_eq!(req_kind("Content-Length: 0\r\n"), Ok(BodyKind::Length(0)));
        assert_eq!(req_kind("Content-Length: 10\r\n"), Ok(BodyKind::Length(10)));
        for v in ["05", "000", "00", "010"] {
            assert!(
                matches!(
                    req_kind(&format!("Content-Length: {v}\r\n")),
                    Err(FramingError::Malformed(_))
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn content_length_syntax_errors() {
        for v in [
            "+5",
            "-5",
            "5 5",
            "5,5",
            "0x5",
            "5.0",
            "five",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(
                    req_kind(&format!("Content-Length: {v}\r\n")),
                    Err(FramingError::Malformed(_))
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn empty_content_length_is_rejected() {
        assert!(matches!(
            req_kind("Content-Length:\r\n"),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            req_kind("Content-Length:  \r\n"),
            Err(FramingError::Malformed(_))
        ));
    }

    #[test]
    fn duplicate_content_length_is_rejected_even_if_equal() {
        assert!(matches!(
            req_kind("Content-Length: 5\r\nContent-Length: 5\r\n"),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            req_kind("Content-Length: 5\r\ncontent-length: 6\r\n"),
            Err(FramingError::Malformed(_))
        ));
    }

    #[test]
    fn te_and_cl_together_are_rejected() {
        let both = "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n";
        assert!(matches!(req_kind(both), Err(FramingError::Malformed(_))));
        assert!(matches!(
            res_kind("HTTP/1.1 200 OK", both, false),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            res_kind("HTTP/1.1 304 Not Modified", both, false),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            res_kind("HTTP/1.1 200 OK", both, true),
            Err(FramingError::Malformed(_))
        ));
    }

    #[test]
    fn request_chunked() {
        assert_eq!(
            req_kind("Transfer-Encoding: chunked\r\n"),
            Ok(BodyKind::Chunked)
        );
        assert_eq!(
            req_kind("Transfer-Encoding: CHUNKED\r\n"),
            Ok(BodyKind::Chunked)
        );
        assert_eq!(
            req_kind("Transfer-Encoding: gzip, chunked\r\n"),
            Ok(BodyKind::Chunked)
        );
        assert_eq!(
            req_kind("Transfer-Encoding: gzip,chunked\r\n"),
            Ok(BodyKind::Chunked)
        );
    }

    #[test]
    fn response_with_chunked_not_last_is_read_until_close() {
        // RFC 9112 §6.3 rule 4 (for requests the same list is a 400, see te_list_errors).
        assert_eq!(
            res_kind(
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked, gzip\r\n",
                false
            ),
            Ok(BodyKind::UntilClose)
        );
        assert!(matches!(
            res_kind(
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked, gzip, chunked\r\n",
                false
            ),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            res_kind(
                "HTTP/1.1 200 OK",
                "Transfer-Encoding: chunked, chunked\r\n",
                false
            ),
            Err(FramingError::Malformed(_))
        ));
    }

    #[test]
    fn te_list_errors() {
        for v in [
            ",chunked",
            "chunked,",
            "chunked, chunked",
            "chunked, gzip",
            "gzip",
            "identity",
            "foo, chunked",
            "gzip, , chunked",
            "chunked;q=1",
            "\"chunked\"",
            "chunke d",
        ] {
            assert!(
                matches!(
                    req_kind(&format!("Transfer-Encoding: {v}\r\n")),
                    Err(FramingError::Malformed(_))
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn te_with_trailing_whitespace_is_rejected() {
        assert!(matches!(
            req_kind("Transfer-Encoding: chunked\t\r\n"),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            req_kind("Transfer-Encoding: chunked \r\n"),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            res_kind("HTTP/1.1 200 OK", "Transfer-Encoding: chunked\t\r\n", false),
            Err(FramingError::Malformed(_))
        ));
    }

    #[test]
    fn duplicate_te_headers_are_rejected() {
        let two = "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n";
        assert!(matches!(req_kind(two), Err(FramingError::Malformed(_))));
        assert!(matches!(
            res_kind("HTTP/1.1 200 OK", two, false),
            Err(FramingError::Malformed(_))
        ));
    }

    #[test]
    fn te_on_http_1_0_request_is_rejected() {
        let head = request("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(
            request_body_kind(&head),
            Err(FramingError::Malformed(_))
        ));
        let head = request("POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(request_body_kind(&head), Ok(BodyKind::Length(3)));
    }

    // --- response framing ---

    #[test]
    fn response_without_framing_reads_until_close() {
        assert_eq!(
            res_kind("HTTP/1.1 200 OK", "", false),
            Ok(BodyKind::UntilClose)
        );
        assert_eq!(
            res_kind("HTTP/1.0 200 OK", "", false),
            Ok(BodyKind::UntilClose)
        );
    }

    #[test]
    fn response_length_and_chunked() {
        assert_eq!(
            res_kind("HTTP/1.1 200 OK", "Content-Length: 10\r\n", false),
            Ok(BodyKind::Length(10))
        );
        assert_eq!(
            res_kind("HTTP/1.1 200 OK", "Transfer-Encoding: chunked\r\n", false),
            Ok(BodyKind::Chunked)
        );
        let bad = res_kind("HTTP/1.1 200 OK", "Content-Length: +10\r\n", false);
        assert!(matches!(bad, Err(FramingError::Malformed(_))));
    }

    #[test]
    fn response_te_without_chunked_last_reads_until_close() {
        assert_eq!(
            res_kind("HTTP/1.1 200 OK", "Transfer-Encoding: gzip\r\n", false),
            Ok(BodyKind::UntilClose)
        );
        let unknown = res_kind("HTTP/1.1 200 OK", "Transfer-Encoding: br\r\n", false);
        assert!(matches!(unknown, Err(FramingError::Malformed(_))));
    }

    #[test]
    fn bodiless_responses_are_empty_but_still_validated() {
        let cl = "Content-Length: 10\r\n";
        let te = "Transfer-Encoding: chunked\r\n";
        assert_eq!(
            res_kind("HTTP/1.1 204 No Content", cl, false),
            Ok(BodyKind::Empty)
        );
        assert_eq!(
            res_kind("HTTP/1.1 304 Not Modified", te, false),
            Ok(BodyKind::Empty)
        );
        assert_eq!(
            res_kind("HTTP/1.1 101 Switching Protocols", "", false),
            Ok(BodyKind::Empty)
        );
        assert_eq!(
            res_kind("HTTP/1.1 100 Continue", "", false),
            Ok(BodyKind::Empty)
        );
        assert_eq!(res_kind("HTTP/1.1 200 OK", cl, true), Ok(BodyKind::Empty));
        assert_eq!(res_kind("HTTP/1.1 200 OK", "", true), Ok(BodyKind::Empty));
        assert!(matches!(
            res_kind("HTTP/1.1 304 Not Modified", "Content-Length: 5x\r\n", false),
            Err(FramingError::Malformed(_))
        ));
        assert!(matches!(
            res_kind(
                "HTTP/1.1 200 OK",
                "Content-Length: 1\r\nContent-Length: 1\r\n",
                true
            ),
            Err(FramingError::Malformed(_))
        ));
    }

    #[test]
    fn te_on_http_1_0_response_is_rejected() {
        let bad = res_kind("HTTP/1.0 200 OK", "Transfer-Encoding: chunked\r\n", false);
        assert!(matches!(bad, Err(FramingError::Malformed(_))));
    }

    #[test]
    fn framing_error_kinds() {
        assert_eq!(
            FramingError::TooLarge.request_kind(),
            ErrorKind::HttpRequestError
        );
        assert_eq!(
            FramingError::Malformed("x").response_kind(),
            ErrorKind::HttpProtocolError
        );
    }

    // --- chunked decoder ---

    fn limits() -> Limits {
        Limits::default()
    }

    /// Feeds `input` in the given pieces; returns (payload, consumed total, done).
    fn decode_pieces(
        input: &[u8],
        cuts: &[usize],
        l: &Limits,
    ) -> Result<(Vec<u8>, usize, bool), FramingError> {
        let mut dec = ChunkedDecoder::new(l);
        let mut payload = Vec::new();
        let mut consumed = 0;
        let mut start = 0;
        let mut ranges = Vec::new();
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            if end < start {
                continue;
            }
            let piece = &input[start..end];
            ranges.clear();
            let p = dec.advance(piece, Some(&mut ranges))?;
            for r in &ranges {
                payload.extend_from_slice(&piece[r.clone()]);
            }
            consumed += p.consumed;
            if p.done {
                assert!(dec.is_done());
                return Ok((payload, consumed, true));
            }
            assert_eq!(p.consumed, piece.len());
            start = end;
        }
        Ok((payload, consumed, false))
    }

    fn decode(input: &[u8]) -> Result<(Vec<u8>, usize, bool), FramingError> {
        decode_pieces(input, &[], &limits())
    }

    fn decode_err(input: &[u8]) -> FramingError {
        match decode(input) {
            Err(e) => e,
            Ok(v) => panic!(
                "expected error for {:?}, got {v:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    const BODY: &[u8] = b"4\r\nWiki\r\n5;name=val;q=\"a b\"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n10 ;x\r\n0123456789abcdef\r\n0\r\nExpires: never\r\nX-T: 1\r\n\r\nNEXT";

    #[test]
    fn decodes_a_chunked_body_with_extensions_and_trailers() {
        let (payload, consumed, done) = decode(BODY).unwrap();
        assert!(done);
        assert_eq!(payload, b"Wikipedia in\r\n\r\nchunks.0123456789abcdef");
        assert_eq!(consumed, BODY.len() - 4, "stops right after the final CRLF");
    }

    #[test]
    fn whole_bytewise_and_random_splits_agree() {
        let whole = decode(BODY).unwrap();
        let bytewise: Vec<usize> = (1..BODY.len()).collect();
        assert_eq!(decode_pieces(BODY, &bytewise, &limits()).unwrap(), whole);
        // xorshift: deterministic pseudo-random cut points, no extra crates.
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200 {
            let mut cuts = Vec::new();
            for _ in 0..6 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                cuts.push((seed % BODY.len() as u64) as usize);
            }
            cuts.sort_unstable();
            assert_eq!(
                decode_pieces(BODY, &cuts, &limits()).unwrap(),
                whole,
                "{cuts:?}"
            );
        }
    }

    #[test]
    fn errors_are_the_same_however_split() {
        let bad = b"5\r\nhello\r\n3\r\nabcX\r\n0\r\n\r\n";
        let whole = decode_err(bad);
        let bytewise: Vec<usize> = (1..bad.len()).collect();
        assert_eq!(decode_pieces(bad, &bytewise, &limits()).unwrap_err(), whole);
    }

    #[test]
    fn partial_body_is_not_done() {
        let (payload, consumed, done) = decode(b"5\r\nhel").unwrap();
        assert!(!done);
        assert_eq!(payload, b"hel");
        assert_eq!(consumed, 6);
    }

    #[test]
    fn done_decoder_consumes_nothing_more() {
        let mut dec = ChunkedDecoder::new(&limits());
        assert_eq!(
            dec.advance(b"0\r\n\r\nGET", None),
            Ok(Progress {
                consumed: 5,
                done: true
            })
        );
        assert_eq!(
            dec.advance(b"GET", None),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
    }

    #[test]
    fn chunk_size_syntax_errors() {
        for bad in [
            &b"\r\n"[..],             // empty size
            b"+a\r\n",                // sign
            b"-1\r\n",                // sign
            b"0x1\r\nA\r\n0\r\n\r\n", // 0x prefix
            b" 1\r\nA\r\n0\r\n\r\n",  // leading space
            b"g\r\n",                 // not hex
            b"1 \r\nA\r\n0\r\n\r\n",  // trailing space without extension
            b"00000000000000001\r\n", // 17 digits
        ] {
            assert!(
                matches!(decode_err(bad), FramingError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode(b"0000000000000001\r\nA\r\n0\r\n\r\n").unwrap().0,
            b"A",
            "16 digits are fine"
        );
        assert!(decode(b"FFFFFFFFFFFFFFFF\r\n").is_ok());
    }

    #[test]
    fn chunk_line_endings_must_be_crlf() {
        assert!(matches!(
            decode_err(b"1\nA\r\n0\r\n\r\n"),
            FramingError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(b"1\r\nA\n0\r\n\r\n"),
            FramingError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(b"1\r\nA\r\n0\n\r\n"),
            FramingError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(b"1\r\nA\r\n0\r\n\n"),
            FramingError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(b"1\rA\r\n0\r\n\r\n"),
            FramingError::Malformed(_)
        ));
    }

    #[test]
    fn missing_crlf_after_data_is_rejected() {
        assert!(matches!(
            decode_err(b"1\r\nAB\r\n0\r\n\r\n"),
            FramingError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(b"1\r\nA0\r\n\r\n"),
            FramingError::Malformed(_)
        ));
        assert!(matches!(
            decode_err(b"1\r\nA\r0\r\n\r\n"),
            FramingError::Malformed(_)
        ));
    }

    #[test]
    fn chunk_extension_rules() {
        assert!(decode(b"1;a=b;c=\"d;e\"\r\nA\r\n0\r\n\r\n").is_ok());
        assert!(decode(b"1 ; a\r\nA\r\n0\r\n\r\n").is_ok());
        assert!(
            matches!(
                decode_err(b"1;a\rb\r\nA\r\n0\r\n\r\n"),
                FramingError::Malformed(_)
            ),
            "bare CR"
        );
        assert!(
            matches!(
                decode_err(b"1;a\nb\r\nA\r\n0\r\n\r\n"),
                FramingError::Malformed(_)
            ),
            "bare LF"
        );
        assert!(
            matches!(
                decode_err(b"1;a\0b\r\nA\r\n0\r\n\r\n"),
                FramingError::Malformed(_)
            ),
            "NUL"
        );
    }

    #[test]
    fn chunk_line_over_limit_is_too_large() {
        let l = Limits {
            max_chunk_line: 16,
            ..limits()
        };
        let long = [b"1;".as_slice(), &[b'x'; 20], b"\r\nA\r\n0\r\n\r\n"].concat();
        assert_eq!(
            decode_pieces(&long, &[], &l).unwrap_err(),
            FramingError::TooLarge
        );
        let ok = [b"1;".as_slice(), &[b'x'; 14], b"\r\nA\r\n0\r\n\r\n"].concat();
        assert!(decode_pieces(&ok, &[], &l).is_ok());
    }

    #[test]
    fn chunk_line_limit_excludes_the_crlf() {
        // Found by fuzz/fuzz_targets/chunked.rs: with max_chunk_line 1, "1\r\x11\n" was TooLarge at the CR (the
        // CR after the size was counted, the one after an extension was not) instead of a bare CR at 0x11.
        let l = Limits {
            max_chunk_line: 1,
            ..limits()
        };
        assert_eq!(
            decode_pieces(b"1\r\x11\n", &[], &l).unwrap_err(),
            FramingError::Malformed("bare CR in chunk size line")
        );
        assert_eq!(
            decode_pieces(b"1\r\nA\r\n0\r\n\r\n", &[], &l).unwrap(),
            (b"A".to_vec(), 11, true)
        );
        assert_eq!(
            decode_pieces(b"10\r\n", &[], &l).unwrap_err(),
            FramingError::TooLarge
        );
        // The same line length with an extension: "1;" is two bytes either way.
        let two = Limits {
            max_chunk_line: 2,
            ..limits()
        };
        assert!(decode_pieces(b"1;\r\nA\r\n0\r\n\r\n", &[], &two).is_ok());
        assert!(decode_pieces(b"10\r\n", &[], &two).is_ok());
    }

    #[test]
    fn trailer_rules() {
        assert!(decode(b"0\r\nA: b\r\nC:\r\n\r\n").unwrap().2);
        // Names that only begin or end like a framing field are fine.
        assert!(
            decode(b"0\r\nContent-Lengths: 1\r\nContent: 2\r\nX-Content-Length: 3\r\n\r\n")
                .unwrap()
                .2
        );
        // A name split across reads is matched as a whole.
        assert!(matches!(
            decode_pieces(b"0\r\nContent-Length: 1\r\n\r\n", &[10], &limits()),
            Err(FramingError::Malformed(_))
        ));
        for bad in [
            &b"0\r\nA : b\r\n\r\n"[..],        // whitespace before colon
            b"0\r\nA: b\r\n c\r\n\r\n",        // obs-fold
            b"0\r\n: b\r\n\r\n",               // empty name
            b"0\r\nA(b: c\r\n\r\n",            // non-token name
            b"0\r\nA: b\0\r\n\r\n",            // NUL
            b"0\r\nA: b\rc\r\n\r\n",           // bare CR
            b"0\r\nA: b\n\r\n",                // bare LF
            b"0\r\nAb\r\n\r\n",                // no colon
            b"0\r\n\rX",                       // bare CR on the final line
            b"0\r\nContent-Length: 5\r\n\r\n", // framing fields, any case
            b"0\r\nA: b\r\ntransfer-ENCODING: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(decode_err(bad), FramingError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn trailers_over_limit_are_too_large() {
        let l = Limits {
            max_trailers: 32,
            ..limits()
        };
        let body = [b"0\r\n".as_slice(), &b"X-A: 123456\r\n".repeat(4), b"\r\n"].concat();
        assert_eq!(
            decode_pieces(&body, &[], &l).unwrap_err(),
            FramingError::TooLarge
        );
    }

    #[test]
    fn trailer_limit_excludes_the_final_crlf() {
        // Found by fuzz/fuzz_targets/chunked.rs: with max_trailers 0, "0\r\n\r\n," (no trailers at all) was
        // TooLarge: the CR of the final empty line was counted as a trailer byte.
        let none = Limits {
            max_trailers: 0,
            ..limits()
        };
        assert_eq!(
            decode_pieces(b"0\r\n\r\n,", &[], &none).unwrap(),
            (Vec::new(), 5, true)
        );
        // "A: b\r\n" is 6 bytes of trailer section.
        let body = b"0\r\nA: b\r\n\r\n";
        let six = Limits {
            max_trailers: 6,
            ..limits()
        };
        assert_eq!(
            decode_pieces(body, &[], &six).unwrap(),
            (Vec::new(), 11, true)
        );
        let five = Limits {
            max_trailers: 5,
            ..limits()
        };
        assert_eq!(
            decode_pieces(body, &[], &five).unwrap_err(),
            FramingError::TooLarge
        );
    }

    #[test]
    fn failed_decoder_stays_failed() {
        let mut dec = ChunkedDecoder::new(&limits());
        assert!(dec.advance(b"x", None).is_err());
        assert!(dec.advance(b"0\r\n\r\n", None).is_err());
    }

    #[test]
    fn large_chunk_sizes_do_not_overflow_ranges() {
        let mut dec = ChunkedDecoder::new(&limits());
        let mut ranges = Vec::new();
        let p = dec
            .advance(b"FFFFFFFFFFFFFFFF\r\nabc", Some(&mut ranges))
            .unwrap();
        assert_eq!(
            p,
            Progress {
                consumed: 21,
                done: false
            }
        );
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0], 18..21);
    }
}

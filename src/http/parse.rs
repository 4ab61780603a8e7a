//! Strict request/response head parsing: httparse for the grammar, plus the checks httparse leaves out.
//!
//! httparse accepts bare LF as a line end and bytes 0x80..=0xFF in the request-target. A head it parses whole
//! is checked from its spans (`check_lines`: the CR before each LF, the line limits); partial or refused input
//! is scanned byte by byte (`scan_head`: bare LF, bare CR, NUL, obs-fold, the line limits), so a peer that
//! never finishes its head holds at most `limits.max_head` bytes.

use std::fmt;
use std::mem::MaybeUninit;

use bytes::{Buf, BytesMut};

use super::head::{Field, Fields, RequestHead, ResponseHead, Span, Version};
use crate::config::Limits;
use crate::error::ErrorKind;

/// httparse header slots on the stack; `limits.max_headers` above this is capped here.
const MAX_HEADER_SLOTS: usize = 128;

/// The result of a parse attempt that did not fail.
#[derive(Debug)]
pub enum Parsed<T> {
    /// A whole head was parsed and split off the buffer.
    Complete(T),
    /// More bytes are needed; the buffer was not touched.
    Partial,
}

/// Why a head was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// A syntax or strictness violation; the text names the rule (for logs only, not an API).
    Malformed(&'static str),
    /// Well-formed, but asks for something we do not do (e.g. an `ftp://` target).
    Unsupported(&'static str),
    /// The request line is longer than `limits.max_request_line`.
    UriTooLong,
    /// A header line, the header count or the whole head is over its limit.
    HeadTooLarge,
    /// A well-formed request line in an HTTP version other than 1.0 and 1.1
    /// (`HTTP/2.0`: prior-knowledge HTTP/2 sent to an HTTP/1 proxy).
    Version,
}

impl ParseError {
    /// The error kind when this came from a client's request.
    pub fn request_kind(&self) -> ErrorKind {
        match self {
            ParseError::Malformed(_) => ErrorKind::HttpRequestError,
            ParseError::Unsupported(_) => ErrorKind::UnsupportedRequest,
            ParseError::UriTooLong => ErrorKind::UriTooLong,
            ParseError::HeadTooLarge => ErrorKind::RequestHeaderTooLarge,
            ParseError::Version => ErrorKind::HttpVersionNotSupported,
        }
    }

    /// The error kind when this came from an origin's response.
    pub fn response_kind(&self) -> ErrorKind {
        match self {
            ParseError::Malformed(_) | ParseError::Unsupported(_) | ParseError::Version => {
                ErrorKind::HttpProtocolError
            }
            ParseError::UriTooLong | ParseError::HeadTooLarge => {
                ErrorKind::HttpResponseHeaderSectionSize
            }
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Malformed(rule) => write!(f, "malformed head: {rule}"),
            ParseError::Unsupported(what) => write!(f, "unsupported: {what}"),
            ParseError::UriTooLong => f.write_str("request line too long"),
            ParseError::HeadTooLarge => f.write_str("head too large"),
            ParseError::Version => f.write_str("HTTP version other than 1.0 and 1.1"),
        }
    }
}

impl std::error::Error for ParseError {}

/// httparse with every leniency off (its defaults, spelled out so a dependency bump cannot relax them).
fn strict_config() -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_spaces_after_header_name_in_responses(false)
        .allow_obsolete_multiline_headers_in_responses(false)
        .allow_multiple_spaces_in_request_line_delimiters(false)
        .allow_multiple_spaces_in_response_status_delimiters(false)
        .allow_space_before_first_header_name(false)
        .ignore_invalid_headers_in_requests(false)
        .ignore_invalid_headers_in_responses(false);
    config
}

fn httparse_error(err: httparse::Error) -> ParseError {
    use httparse::Error as E;
    match err {
        E::TooManyHeaders => ParseError::HeadTooLarge,
        E::HeaderName => ParseError::Malformed("invalid header name"),
        E::HeaderValue => ParseError::Malformed("invalid header value"),
        E::NewLine => ParseError::Malformed("invalid line ending"),
        E::Status => ParseError::Malformed("invalid status line"),
        E::Token => ParseError::Malformed("invalid method or request-target"),
        E::Version => ParseError::Malformed("bad HTTP version (or a space in the request-target)"),
    }
}

/// Whether the request line is `method SP target SP HTTP/d.d` in a version other than
/// 1.0 and 1.1, which httparse refuses as it refuses a malformed one (RFC 9110
/// §15.6.6: 505, not 400).
fn names_other_version(window: &[u8]) -> bool {
    let line = window.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return false;
    };
    !method.is_empty()
        && !target.is_empty()
        && matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// Which start line a head has (its length limit and error differ).
#[derive(Clone, Copy)]
enum StartLine {
    Request,
    Status,
}

/// One pass over (part of) a head: NUL, bare CR, bare LF, obs-fold, and the per-line and header-count limits.
///
/// `bytes` is either a complete head or everything received so far; a trailing CR is allowed (its LF may be
/// in the next read) and the unfinished last line is held to its limit too.
///
/// Eight bytes are looked at together ([`has_byte_below`]): a header line is mostly text, and only the word
/// that holds its CR LF (or a NUL, or another control byte) is looked at byte by byte.
fn scan_head(bytes: &[u8], start: StartLine, limits: &Limits) -> Result<(), ParseError> {
    let mut line_start = 0usize;
    let mut line_index = 0usize;
    let mut header_lines = 0usize;
    let mut pos = 0usize;
    while let Some(&b) = bytes.get(pos) {
        if let Some(word) = bytes.get(pos..pos + 8) {
            let word = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or([0; 8]));
            // Straight to the first byte that matters in this word, or past the word.
            let below = bytes_below(word, 0x0e);
            if below == 0 {
                pos += 8;
                continue;
            }
            let skip = (below.trailing_zeros() / 8) as usize;
            if skip > 0 {
                pos += skip;
                continue;
            }
        }
        match b {
            0 => return Err(ParseError::Malformed("NUL in head")),
            // RFC 9112 §2.2: a CR not followed by LF is invalid; a CR at the very end may still get its LF.
            b'\r' if bytes.get(pos + 1).is_some_and(|&next| next != b'\n') => {
                return Err(ParseError::Malformed("bare CR in head"));
            }
            b'\n' => {
                // RFC 9112 §2.2 lets a recipient accept bare LF; a proxy that did would disagree with servers
                // that do not (request smuggling), so only CRLF ends a line here.
                if pos == 0 || bytes.get(pos - 1) != Some(&b'\r') {
                    return Err(ParseError::Malformed("bare LF in head"));
                }
                // RFC 9112 §5.2: obs-fold (a line starting with SP/HTAB) must be rejected in requests; we reject
                // it in responses too rather than unfold and re-serialise.
                if matches!(bytes.get(pos + 1), Some(b' ' | b'\t')) {
                    return Err(ParseError::Malformed("obs-fold in head"));
                }
                let len = pos - 1 - line_start;
                check_line(line_index, len, start, limits)?;
                if line_index > 0 && len > 0 {
                    header_lines += 1;
                    if header_lines > limits.max_headers {
                        return Err(ParseError::HeadTooLarge);
                    }
                }
                line_index += 1;
                line_start = pos + 1;
            }
            _ => {}
        }
        pos += 1;
    }
    let tail = bytes.get(line_start..).unwrap_or_default();
    let tail_len = tail.len() - usize::from(tail.last() == Some(&b'\r'));
    check_line(line_index, tail_len, start, limits)
}

/// [`scan_head`]'s rules for a head httparse parsed whole, from where its lines start
/// (O(lines), not O(bytes)).
///
/// A complete parse already rules out what the scan looks for inside lines: httparse
/// refuses NUL and every other control byte but HTAB in each part of a head, takes a CR
/// only before an LF, and refuses a line that starts with SP or HTAB (obs-fold; see
/// [`strict_config`]). Each line ends with an LF right before the next one starts, and a
/// header line starts with its name. What is left is the CR before each of those LFs
/// (httparse also takes a bare LF) and the limits. `tests::check_lines_agrees_with_scan_head`
/// holds this to the scan on every head httparse completes.
fn check_lines(
    head: &[u8],
    fields: &[Field],
    start: StartLine,
    limits: &Limits,
) -> Result<(), ParseError> {
    const BARE_LF: ParseError = ParseError::Malformed("bare LF in head");
    // httparse skips empty lines (bare LFs too) before the start line: then the first
    // line does not start at 0, and the scan decides (callers skip CR LFs themselves).
    if matches!(head.first(), Some(b'\r' | b'\n')) {
        return scan_head(head, start, limits);
    }
    let len = head.len();
    // The head ends with its empty line: CR LF, or a bare LF.
    let empty_line = if head.get(len.wrapping_sub(2)) == Some(&b'\r') {
        len - 2
    } else {
        len.saturating_sub(1)
    };
    let ends = fields
        .iter()
        .map(|f| f.line_start() as usize)
        .chain(std::iter::once(empty_line));
    let mut line_start = 0;
    for (index, next) in ends.enumerate() {
        if next < line_start + 2 || head.get(next - 2..next) != Some(b"\r\n") {
            return Err(BARE_LF);
        }
        check_line(index, next - 2 - line_start, start, limits)?;
        if index > limits.max_headers {
            return Err(ParseError::HeadTooLarge);
        }
        line_start = next;
    }
    if head.get(empty_line..) != Some(b"\r\n") {
        return Err(BARE_LF);
    }
    Ok(())
}

/// The bytes of `word` (little-endian lanes) that are below `n` (at most 128): the high
/// bit of each such byte's lane is set, every other bit is clear. Exact per byte: the low
/// seven bits of a lane plus `0x80 - n` never carry into the next lane.
fn bytes_below(word: u64, n: u8) -> u64 {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const LOWS: u64 = u64::from_le_bytes([0x7f; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let at_least = (word & LOWS).wrapping_add(ONES * u64::from(0x80 - n.min(0x80))) | word;
    !at_least & HIGHS
}

fn check_line(
    index: usize,
    len: usize,
    start: StartLine,
    limits: &Limits,
) -> Result<(), ParseError> {
    match (index, start) {
        (0, StartLine::Request) if len > limits.max_request_line => Err(ParseError::UriTooLong),
        (0, StartLine::Status) if len > limits.max_request_line => Err(ParseError::HeadTooLarge),
        (1.., _) if len > limits.max_header_line => Err(ParseError::HeadTooLarge),
        _ => Ok(()),
    }
}

/// The span of `part` inside `base` (httparse hands out subslices; this turns them into offsets, checked).
fn span_in(base: &[u8], part: &[u8]) -> Result<Span, ParseError> {
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    let end = start.wrapping_add(part.len());
    if start > base.len() || end > base.len() || end < start {
        return Err(ParseError::Malformed("span outside head"));
    }
    let start = u32::try_from(start).map_err(|_| ParseError::HeadTooLarge)?;
    let end = u32::try_from(end).map_err(|_| ParseError::HeadTooLarge)?;
    Ok(Span::new(start, end))
}

fn version_of(v: Option<u8>) -> Result<Version, ParseError> {
    match v {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(ParseError::Malformed("unsupported HTTP version")),
    }
}

fn fields_of(base: &[u8], headers: &[httparse::Header<'_>]) -> Result<Vec<Field>, ParseError> {
    // Room for the few lines a proxy appends (`Via`, `Connection`) without growing.
    let mut list = Vec::with_capacity(headers.len() + 2);
    for h in headers {
        list.push(Field::received(
            span_in(base, h.name.as_bytes())?,
            span_in(base, h.value)?,
        ));
    }
    Ok(list)
}

/// RFC 3986 §3.2.2 `uri-host [ ":" port ]` bytes: reg-name (unreserved, pct-encoded, sub-delims), IP-literal
/// brackets and the port colon. Anything else (NUL, SP, '@', '/', …) in Host is rejected.
fn is_host_byte(b: u8) -> bool {
    matches!(b,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
        | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
        | b'%' | b':' | b'[' | b']')
}

/// Skips the CRLFs a client may send before a request line (RFC 9112 §2.2); returns how many bytes.
fn leading_empty_lines(buf: &[u8]) -> usize {
    let mut skip = 0;
    while buf.get(skip..skip + 2) == Some(b"\r\n") {
        skip += 2;
    }
    skip
}

/// What a complete request head parsed into, before the buffer is split.
struct RequestParts {
    len: usize,
    method: Span,
    target: Span,
    version: Version,
    fields: Vec<Field>,
}

/// Parses a request head from the front of `buf`; on `Complete` the head (and any leading CRLFs) is split off.
///
/// On `Partial` `buf` is untouched. Limits hold on partial input too: a first line longer than
/// `max_request_line` is `UriTooLong`, more than `max_head` bytes without a complete head is `HeadTooLarge`.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Parsed<RequestHead>, ParseError> {
    let skip = leading_empty_lines(buf);
    let end = buf.len().min(limits.max_head);
    let Some(window) = buf.get(skip..end) else {
        // Nothing but empty lines up to the head limit.
        return Err(ParseError::HeadTooLarge);
    };
    let at_limit = buf.len() >= limits.max_head;
    let Some(parts) = read_request(window, at_limit, limits)? else {
        return Ok(Parsed::Partial);
    };
    buf.advance(skip);
    let raw = buf.split_to(parts.len).freeze();
    let fields = Fields::new(raw, parts.fields);
    Ok(Parsed::Complete(RequestHead::new(
        fields,
        parts.method,
        parts.target,
        parts.version,
    )))
}

fn read_request(
    window: &[u8],
    at_limit: bool,
    limits: &Limits,
) -> Result<Option<RequestParts>, ParseError> {
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADER_SLOTS];
    let slots = slots
        .get_mut(..limits.max_headers.min(MAX_HEADER_SLOTS))
        .unwrap_or_default();
    let mut req = httparse::Request::new(&mut []);
    let len = match strict_config().parse_request_with_uninit_headers(&mut req, window, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            scan_head(window, StartLine::Request, limits)?;
            return if at_limit {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(err) => {
            // Prefer our own, more specific diagnosis (bare CR, NUL, line too long) when there is one.
            scan_head(window, StartLine::Request, limits)?;
            if err == httparse::Error::Version && names_other_version(window) {
                return Err(ParseError::Version);
            }
            return Err(httparse_error(err));
        }
    };
    let head = window.get(..len).unwrap_or_default();
    let fields = fields_of(head, req.headers)?;
    check_lines(head, &fields, StartLine::Request, limits)?;

    let method = span_in(head, req.method.unwrap_or_default().as_bytes())?;
    let target_bytes = req.path.unwrap_or_default().as_bytes();
    // RFC 9112 §3.2 / RFC 3986: a request-target is visible US-ASCII; httparse also lets 0x80..=0xFF through.
    if !target_bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ParseError::Malformed("invalid byte in request-target"));
    }
    let target = span_in(head, target_bytes)?;
    let version = version_of(req.version)?;

    let mut hosts = 0;
    for h in req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("host"))
    {
        hosts += 1;
        // RFC 9112 §3.2: a request with more than one Host is answered 400.
        if hosts > 1 {
            return Err(ParseError::Malformed("more than one Host"));
        }
        if !h.value.iter().all(|&b| is_host_byte(b)) {
            return Err(ParseError::Malformed("invalid byte in Host"));
        }
    }
    Ok(Some(RequestParts {
        len,
        method,
        target,
        version,
        fields,
    }))
}

/// What a complete response head parsed into, before the buffer is split.
struct ResponseParts {
    len: usize,
    status: u16,
    reason: Span,
    version: Version,
    fields: Vec<Field>,
}

/// Parses a response head from the front of `buf`; on `Complete` the head is split off.
///
/// On `Partial` `buf` is untouched. Limits as for requests (an over-long status line is `HeadTooLarge`).
/// Unlike requests, empty lines before the status line are rejected: they are bytes after the previous
/// response, which must never be passed on (DESIGN §3 rule 10).
pub fn parse_response(
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Parsed<ResponseHead>, ParseError> {
    if matches!(buf.first(), Some(b'\r' | b'\n')) {
        return Err(ParseError::Malformed("empty line before status line"));
    }
    let end = buf.len().min(limits.max_head);
    let window = buf.get(..end).unwrap_or_default();
    let at_limit = buf.len() >= limits.max_head;
    let Some(parts) = read_response(window, at_limit, limits)? else {
        return Ok(Parsed::Partial);
    };
    let raw = buf.split_to(parts.len).freeze();
    let fields = Fields::new(raw, parts.fields);
    Ok(Parsed::Complete(ResponseHead::new(
        fields,
        parts.status,
        parts.reason,
        parts.version,
    )))
}

fn read_response(
    window: &[u8],
    at_limit: bool,
    limits: &Limits,
) -> Result<Option<ResponseParts>, ParseError> {
    let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADER_SLOTS];
    let slots = slots
        .get_mut(..limits.max_headers.min(MAX_HEADER_SLOTS))
        .unwrap_or_default();
    let mut res = httparse::Response::new(&mut []);
    let len = match strict_config().parse_response_with_uninit_headers(&mut res, window, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            scan_head(window, StartLine::Status, limits)?;
            return if at_limit {
                Err(ParseError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(err) => {
            scan_head(window, StartLine::Status, limits)?;
            return Err(httparse_error(err));
        }
    };
    let head = window.get(..len).unwrap_or_default();
    let fields = fields_of(head, res.headers)?;
    check_lines(head, &fields, StartLine::Status, limits)?;

    let version = version_of(res.version)?;
    // RFC 9110 §15: status-code is three digits; the first must be 1..=9.
    let status = res.code.unwrap_or_default();
    if !(100..=999).contains(&status) {
        return Err(ParseError::Malformed("status code out of range"));
    }
    // "HTTP/1.1 200 OK\r\n": the reason starts after the second SP (offset 13) and runs to the CRLF;
    // httparse drops reasons with obs-text, so take it from the bytes.
    let line_end = fields
        .first()
        .map_or(len.saturating_sub(2), |f| f.line_start() as usize)
        .saturating_sub(2);
    let line_end = u32::try_from(line_end).map_err(|_| ParseError::HeadTooLarge)?;
    let reason = Span::new(13.min(line_end), line_end);
    Ok(Some(ResponseParts {
        len,
        status,
        reason,
        version,
        fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte reading of `scan_head`'s rules, to check the word-at-a-time one
    /// against.
    fn scan_head_bytewise(
        bytes: &[u8],
        start: StartLine,
        limits: &Limits,
    ) -> Result<(), ParseError> {
        let mut line_start = 0usize;
        let mut line_index = 0usize;
        let mut header_lines = 0usize;
        for (pos, &b) in bytes.iter().enumerate() {
            match b {
                0 => return Err(ParseError::Malformed("NUL in head")),
                b'\r' if bytes.get(pos + 1).is_some_and(|&next| next != b'\n') => {
                    return Err(ParseError::Malformed("bare CR in head"))
                }
                b'\n' => {
                    if pos == 0 || bytes[pos - 1] != b'\r' {
                        return Err(ParseError::Malformed("bare LF in head"));
                    }
                    if matches!(bytes.get(pos + 1), Some(b' ' | b'\t')) {
                        return Err(ParseError::Malformed("obs-fold in head"));
                    }
                    let len = pos - 1 - line_start;
                    check_line(line_index, len, start, limits)?;
                    if line_index > 0 && len > 0 {
                        header_lines += 1;
                        if header_lines > limits.max_headers {
                            return Err(ParseError::HeadTooLarge);
                        }
                    }
                    line_index += 1;
                    line_start = pos + 1;
                }
                _ => {}
            }
        }
        let tail = &bytes[line_start..];
        let tail_len = tail.len() - usize::from(tail.last() == Some(&b'\r'));
        check_line(line_index, tail_len, start, limits)
    }

    #[test]
    fn another_http_version_is_505_and_a_broken_line_400() {
        let parse = |line: &[u8]| {
            let mut buf = BytesMut::from(line);
            parse_request(&mut buf, &Limits::default()).err()
        };
        for line in [
            &b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET http://a/ HTTP/1.2\r\n\r\n",
        ] {
            let err = parse(line);
            assert_eq!(
                err,
                Some(ParseError::Version),
                "{:?}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(err.unwrap().request_kind().status(), Some(505));
        }
        for line in [
            &b"GET /a b HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.10\r\n\r\n",
            b"GET / HTTPS/1.1\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"GET / HTTP/x.1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(line), Some(ParseError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn bytes_below_is_exact_per_byte() {
        for n in [1u8, 0x0e, 0x20, 0x80] {
            for probe in 0u8..=255 {
                for filler in [0u8, 0x0d, b'a', 0xff] {
                    for lane in 0..8 {
                        let mut bytes = [filler; 8];
                        bytes[lane] = probe;
                        let below = bytes_below(u64::from_le_bytes(bytes), n).to_le_bytes();
                        for (i, b) in bytes.iter().enumerate() {
                            assert_eq!(below[i] == 0x80, *b < n, "n={n} {bytes:?} lane {i}");
                            assert!(below[i] == 0 || below[i] == 0x80);
                        }
                    }
                }
            }
        }
    }

    /// The next number of a xorshift generator: generated test cases with no
    /// dependency, the same on every run.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn scan_head_agrees_with_the_bytewise_rules() {
        let limits = Limits {
            max_request_line: 40,
            max_header_line: 30,
            max_headers: 6,
            ..Limits::default()
        };
        // Short heads over an alphabet rich in the bytes that matter, at every length
        // and alignment (a deterministic generator: no dependency, same cases each run).
        let alphabet = b"\r\n\0\t a:\x7f\x80\xff\x0b\x0e";
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || xorshift(&mut state);
        for _ in 0..200_000 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % 3 == 0 {
                        alphabet[(r / 3 % alphabet.len() as u64) as usize]
                    } else {
                        let text = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
                        text[(r / 3 % text.len() as u64) as usize]
                    }
                })
                .collect();
            for start in [StartLine::Request, StartLine::Status] {
                assert_eq!(
                    scan_head(&bytes, start, &limits),
                    scan_head_bytewise(&bytes, start, &limits),
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
            }
        }
    }

    /// Whatever httparse completes, `check_lines` (over its spans) decides as `scan_head`
    /// (over the bytes) would, error for error. Heads are built line by line from parts
    /// that matter (CR, LF, NUL, controls, obs-text, leading SP/HTAB, long lines, many
    /// lines, each kind of line end), so that httparse completes a good share of them.
    #[test]
    fn check_lines_agrees_with_scan_head() {
        let limits = Limits {
            max_request_line: 40,
            max_header_line: 24,
            max_headers: 5,
            ..Limits::default()
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| (xorshift(&mut state) % n as u64) as usize;
        let starts: [&[u8]; 6] = [
            b"GET / HTTP/1.1",
            b"GET http://a.test/a-long-enough-path?q=1 HTTP/1.1",
            b"POST http://a.test/ HTTP/1.0",
            b"HTTP/1.1 200 OK",
            b"HTTP/1.1 404 Not Found But Longer Than The Limit Allows",
            b"HTTP/1.0 204 ",
        ];
        let names: [&[u8]; 4] = [b"Host", b"A", b"X-Quite-Long-Name", b"Content-Length"];
        let values: [&[u8]; 5] = [
            b"a.test",
            b"",
            b"1",
            b"v  w",
            b"a-value-long-enough-to-pass",
        ];
        let ends: [&[u8]; 9] = [
            b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r\n",
        ];
        let odd = b"\0\r\n\t \x01\x7f\x80\xff:";
        let (mut complete, mut accepted) = (0, 0);
        let mut kinds = std::collections::BTreeMap::new();
        for _ in 0..300_000 {
            let mut head = starts[next(starts.len())].to_vec();
            head.extend_from_slice(ends[next(ends.len())]);
            for _ in 0..next(8) {
                if next(10) == 0 {
                    head.push(b" \t"[next(2)]);
                }
                head.extend_from_slice(names[next(names.len())]);
                head.extend_from_slice(b": ");
                head.extend_from_slice(values[next(values.len())]);
                head.extend_from_slice(ends[next(ends.len())]);
            }
            head.extend_from_slice(if next(6) == 0 { b"\n" } else { b"\r\n" });
            for _ in 0..next(3) {
                if next(2) == 0 {
                    let at = next(head.len() + 1);
                    head.insert(at, odd[next(odd.len())]);
                }
            }
            for start in [StartLine::Request, StartLine::Status] {
                let mut slots = [MaybeUninit::<httparse::Header<'_>>::uninit(); 16];
                let slots = &mut slots[..limits.max_headers];
                let if_whole =
                    |status: Result<httparse::Status<usize>, httparse::Error>,
                     headers: &[httparse::Header<'_>]| match status {
                        Ok(httparse::Status::Complete(len)) => {
                            Some((len, fields_of(&head, headers)))
                        }
                        _ => None,
                    };
                let parsed = match start {
                    StartLine::Request => {
                        let mut req = httparse::Request::new(&mut []);
                        let status = strict_config()
                            .parse_request_with_uninit_headers(&mut req, &head, slots);
                        if_whole(status, req.headers)
                    }
                    StartLine::Status => {
                        let mut res = httparse::Response::new(&mut []);
                        let status = strict_config()
                            .parse_response_with_uninit_headers(&mut res, &head, slots);
                        if_whole(status, res.headers)
                    }
                };
                let Some((len, fields)) = parsed else {
                    continue;
                };
                complete += 1;
                let whole = &head[..len];
                let by_lines = check_lines(whole, &fields.unwrap(), start, &limits);
                accepted += usize::from(by_lines.is_ok());
                *kinds.entry(format!("{by_lines:?}")).or_insert(0) += 1;
                assert_eq!(
                    by_lines,
                    scan_head(whole, start, &limits),
                    "{:?}",
                    String::from_utf8_lossy(whole)
                );
            }
        }
        // Each outcome, often: accepted, bare LF, a long line of each kind.
        assert!(
            complete > 50_000 && accepted > 5_000,
            "{complete} {accepted}"
        );
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        assert!(kinds.values().all(|&n| n > 5_000), "{kinds:?}");
    }

    use bytes::Bytes;

    fn limits() -> Limits {
        Limits::default()
    }

    fn req(bytes: &[u8]) -> Result<Parsed<RequestHead>, ParseError> {
        parse_request(&mut BytesMut::from(bytes), &limits())
    }

    fn req_ok(bytes: &[u8]) -> RequestHead {
        match req(bytes) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("expected complete head, got {other:?}"),
        }
    }

    fn req_err(bytes: &[u8]) -> ParseError {
        match req(bytes) {
            Err(e) => e,
            other => panic!(
                "expected error for {:?}, got {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    fn res(bytes: &[u8]) -> Result<Parsed<ResponseHead>, ParseError> {
        parse_response(&mut BytesMut::from(bytes), &limits())
    }

    fn res_ok(bytes: &[u8]) -> ResponseHead {
        match res(bytes) {
            Ok(Parsed::Complete(head)) => head,
            other => panic!("expected complete head, got {other:?}"),
        }
    }

    fn res_err(bytes: &[u8]) -> ParseError {
        match res(bytes) {
            Err(e) => e,
            other => panic!("expected error, got {other:?}"),
        }
    }

    fn joined(parts: &[Bytes]) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    const GET: &[u8] =
        b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\
Accept: */*\r\nProxy-Connection: keep-alive\r\n\r\n";

    #[test]
    fn parses_a_simple_request() {
        let head = req_ok(GET);
        assert_eq!(head.method(), b"GET");
        assert!(head.is_method("GET"));
        assert!(!head.is_method("get"));
        assert_eq!(head.target(), b"http://example.com/a?b=1");
        assert_eq!(head.version(), Version::Http11);
        assert_eq!(head.header("host"), Some(&b"example.com"[..]));
        assert_eq!(head.header("HOST"), Some(&b"example.com"[..]));
        assert_eq!(head.count("accept"), 1);
        assert_eq!(head.raw().as_ref(), GET);
        let names: Vec<&[u8]> = head.headers().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [&b"Host"[..], b"User-Agent", b"Accept", b"Proxy-Connection"]
        );
    }

    /// Lookups skip a head's lines for names it never had (`Fields::names`); that must
    /// never hide one it has: received in any case, appended, set (also where the set
    /// name is rendered differently), or added after a removal.
    #[test]
    fn name_filter_never_hides_a_header() {
        let mut head = req_ok(
            b"GET / HTTP/1.1\r\nhOsT: a\r\nX-A: 1\r\nconnection: close\r\nUPGRADE: w\r\n\r\n",
        );
        for name in ["host", "HOST", "x-a", "Connection", "upgrade"] {
            assert_eq!(head.count(name), 1, "{name}");
        }
        for name in [
            "transfer-encoding",
            "content-length",
            "te",
            "keep-alive",
            "x-b",
            "",
        ] {
            assert_eq!(head.count(name), 0, "{name}");
        }
        assert!(head.has_token("CONNECTION", "close"));
        head.append("Keep-Alive", b"timeout=5");
        head.set("tE", b"trailers");
        head.set("x a", b"space in name");
        head.append_static(b"Via: 1.1 proxy\r\n");
        head.remove("upgrade");
        head.append("upgrade", b"h2c");
        for (name, value) in [
            ("keep-alive", &b"timeout=5"[..]),
            ("te", b"trailers"),
            ("x-a", b"1"),
            ("X-A", b"1"),
            ("via", b"1.1 proxy"),
            ("upgrade", b"h2c"),
        ] {
            assert_eq!(head.header(name), Some(value), "{name}");
        }
        assert_eq!(head.count("x-a"), 2, "`x a` is sent as `x-a`");
        assert_eq!(head.framing().content_lengths, 0);
        head.append("Content-Length", b"0");
        assert_eq!(head.framing().content_lengths, 1);
    }

    #[test]
    fn complete_splits_head_and_keeps_the_rest() {
        let mut buf = BytesMut::from(&b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET"[..]);
        let Ok(Parsed::Complete(head)) = parse_request(&mut buf, &limits()) else {
            panic!()
        };
        assert_eq!(
            head.raw().as_ref(),
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
        );
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn partial_leaves_buffer_untouched() {
        let mut buf = BytesMut::from(&b"\r\nGET / HTTP/1.1\r\nHost: a\r\n"[..]);
        assert!(matches!(
            parse_request(&mut buf, &limits()),
            Ok(Parsed::Partial)
        ));
        assert_eq!(&buf[..], b"\r\nGET / HTTP/1.1\r\nHost: a\r\n");
    }

    #[test]
    fn leading_empty_lines_are_skipped_and_consumed() {
        let mut buf = BytesMut::from(&b"\r\n\r\nGET / HTTP/1.1\r\n\r\nx"[..]);
        let Ok(Parsed::Complete(head)) = parse_request(&mut buf, &limits()) else {
            panic!()
        };
        assert_eq!(head.raw().as_ref(), b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(&buf[..], b"x");
    }

    #[test]
    fn every_split_offset_gives_partial_then_the_same_head() {
        let whole: Vec<u8> = [GET, b"body"].concat();
        let head_len = GET.len();
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            let first = parse_request(&mut buf, &limits());
            if cut < head_len {
                assert!(matches!(first, Ok(Parsed::Partial)), "cut {cut}: {first:?}");
                assert_eq!(&buf[..], &whole[..cut], "partial must not consume");
                buf.extend_from_slice(&whole[cut..]);
                let Ok(Parsed::Complete(head)) = parse_request(&mut buf, &limits()) else {
                    panic!("cut {cut}")
                };
                assert_eq!(head.raw().as_ref(), GET);
                assert_eq!(head.target(), b"http://example.com/a?b=1");
                assert_eq!(head.headers().count(), 4);
                assert_eq!(&buf[..], b"body");
            } else {
                let Ok(Parsed::Complete(head)) = first else {
                    panic!("cut {cut}")
                };
                assert_eq!(head.raw().as_ref(), GET);
                assert_eq!(&buf[..], &whole[head_len..cut]);
            }
        }
    }

    #[test]
    fn mutated_heads_never_panic() {
        use crate::http::{parse_target, request_body_kind, response_body_kind};
        let seeds: [&[u8]; 3] = [
            GET,
            b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y\r\n\r\n",
        ];
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let interesting = [
            b'\r', b'\n', 0, b' ', b'\t', b':', b',', b'[', b']', b'@', b'%', 0xff, b'0',
        ];
        for _ in 0..5000 {
            let mut bytes = seeds[(next() % 3) as usize].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % bytes.len() as u64) as usize;
                let b = interesting[(next() % interesting.len() as u64) as usize];
                match next() % 3 {
                    0 => bytes[at] = b,
                    1 => bytes.insert(at, b),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            if let Ok(Parsed::Complete(head)) = req(&bytes) {
                let _ = request_body_kind(&head);
                let _ = parse_target(
                    &Bytes::copy_from_slice(head.target()),
                    head.is_method("CONNECT"),
                );
                let mut out = Vec::new();
                head.encode(Version::Http11, &mut out);
                assert!(matches!(req(&joined(&out)), Ok(Parsed::Complete(_))));
            }
            if let Ok(Parsed::Complete(head)) = res(&bytes) {
                let _ = response_body_kind(&head, false);
            }
        }
    }

    // --- strictness: one test per rule ---

    #[test]
    fn rejects_bare_lf_line_ending() {
        assert_eq!(
            req_err(b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
            ParseError::Malformed("bare LF in head")
        );
        assert_eq!(
            req_err(b"GET / HTTP/1.1\r\nHost: a\n\r\n"),
            ParseError::Malformed("bare LF in head")
        );
        assert_eq!(
            req_err(b"GET / HTTP/1.1\r\nHost: a\r\n\n"),
            ParseError::Malformed("bare LF in head")
        );
        assert_eq!(
            req_err(b"\nGET / HTTP/1.1\r\n\r\n"),
            ParseError::Malformed("bare LF in head")
        );
        // Detected on partial input as well.
        assert_eq!(
            req_err(b"GET / HTTP/1.1\nHost: a"),
            ParseError::Malformed("bare LF in head")
        );
        assert_eq!(
            res_err(b"HTTP/1.1 200 OK\nA: b\r\n\r\n"),
            ParseError::Malformed("bare LF in head")
        );
    }

    #[test]
    fn rejects_bare_cr() {
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            res_err(b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        // A CR at the end of a partial buffer is not (yet) bare.
        assert!(matches!(
            req(b"GET / HTTP/1.1\r\nA: b\r"),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn rejects_nul() {
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nA: b\0c\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET /\0 HTTP/1.1\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            res_err(b"HTTP/1.1 200 O\0K\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn rejects_obs_fold() {
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nA: b\r\n\tc\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            res_err(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn rejects_whitespace_before_colon() {
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            res_err(b"HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn rejects_non_token_header_names() {
        for name in [&b"A(b"[..], b"A b", b"A\"b", b"A/b", b"", b"\xc3\xa9"] {
            let head = [b"GET / HTTP/1.1\r\n", name, b": v\r\n\r\n"].concat();
            assert!(
                matches!(req_err(&head), ParseError::Malformed(_)),
                "{name:?}"
            );
        }
    }

    #[test]
    fn accepts_only_http_1_0_and_1_1() {
        assert_eq!(req_ok(b"GET / HTTP/1.0\r\n\r\n").version(), Version::Http10);
        // Another version, well-formed: 505 (see the test below).
        for v in [&b"HTTP/1.2"[..], b"HTTP/2.0", b"HTTP/0.9"] {
            let head = [b"GET / ", v, b"\r\n\r\n"].concat();
            assert_eq!(req_err(&head), ParseError::Version, "{v:?}");
        }
        for v in [&b"http/1.1"[..], b"HTTP/1.10", b"HTTP/1.1 "] {
            let head = [b"GET / ", v, b"\r\n\r\n"].concat();
            assert!(matches!(req_err(&head), ParseError::Malformed(_)), "{v:?}");
        }
        assert!(matches!(
            res_err(b"HTTP/2.0 200 OK\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET /\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn rejects_duplicate_host() {
        assert_eq!(
            req_err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            ParseError::Malformed("more than one Host")
        );
    }

    #[test]
    fn rejects_invalid_host_chars() {
        for host in [
            &b"a b"[..],
            b"a\0b",
            b"a@b",
            b"a/b",
            b"a\\b",
            b"a\"b",
            b"\xc3\xa9",
        ] {
            let head = [b"GET / HTTP/1.1\r\nHost: ", host, b"\r\n\r\n"].concat();
            assert!(
                matches!(req_err(&head), ParseError::Malformed(_)),
                "{host:?}"
            );
        }
        assert_eq!(
            req_ok(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").header("host"),
            Some(&b"[::1]:8080"[..])
        );
        assert_eq!(
            req_ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").header("host"),
            Some(&b""[..])
        );
    }

    #[test]
    fn rejects_bad_method_and_target() {
        assert!(matches!(
            req_err(b"G(T / HTTP/1.1\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET  / HTTP/1.1\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET /a\x7f HTTP/1.1\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET /a\tb HTTP/1.1\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    // --- limits ---

    #[test]
    fn long_request_line_is_uri_too_long_even_when_partial() {
        let l = Limits {
            max_request_line: 64,
            ..limits()
        };
        let long = [b"GET /".as_slice(), &[b'a'; 100]].concat();
        assert_eq!(
            parse_request(&mut BytesMut::from(&long[..]), &l).err(),
            Some(ParseError::UriTooLong)
        );
        let complete = [&long[..], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(
            parse_request(&mut BytesMut::from(&complete[..]), &l).err(),
            Some(ParseError::UriTooLong)
        );
        // Exactly at the limit is fine.
        let at = [b"GET /".as_slice(), &[b'a'; 50], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(at.len() - 4, 64);
        assert!(matches!(
            parse_request(&mut BytesMut::from(&at[..]), &l),
            Ok(Parsed::Complete(_))
        ));
    }

    #[test]
    fn unfinished_huge_head_is_head_too_large() {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        while head.len() < 70 * 1024 {
            head.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let l = Limits {
            max_headers: 10_000,
            ..limits()
        };
        assert_eq!(
            parse_request(&mut BytesMut::from(&head[..]), &l).err(),
            Some(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn long_header_line_is_head_too_large_even_when_partial() {
        let l = Limits {
            max_header_line: 32,
            ..limits()
        };
        let partial = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'v'; 40]].concat();
        assert_eq!(
            parse_request(&mut BytesMut::from(&partial[..]), &l).err(),
            Some(ParseError::HeadTooLarge)
        );
        let complete = [&partial[..], b"\r\n\r\n"].concat();
        assert_eq!(
            parse_request(&mut BytesMut::from(&complete[..]), &l).err(),
            Some(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn too_many_headers_is_head_too_large() {
        let l = Limits {
            max_headers: 3,
            ..limits()
        };
        let ok = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        assert!(matches!(
            parse_request(&mut BytesMut::from(&ok[..]), &l),
            Ok(Parsed::Complete(_))
        ));
        let over = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        assert_eq!(
            parse_request(&mut BytesMut::from(&over[..]), &l).err(),
            Some(ParseError::HeadTooLarge)
        );
        let partial = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n";
        assert_eq!(
            parse_request(&mut BytesMut::from(&partial[..]), &l).err(),
            Some(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn whole_head_over_limit_is_head_too_large() {
        let l = Limits {
            max_head: 40,
            ..limits()
        };
        let head = b"GET / HTTP/1.1\r\nA: 1234567890\r\nB: 1234567890\r\n\r\n";
        assert_eq!(
            parse_request(&mut BytesMut::from(&head[..]), &l).err(),
            Some(ParseError::HeadTooLarge)
        );
        let fits = b"GET / HTTP/1.1\r\nA: 1234567890\r\n\r\n";
        assert!(matches!(
            parse_request(&mut BytesMut::from(&fits[..]), &l),
            Ok(Parsed::Complete(_))
        ));
        let only_crlf = b"\r\n".repeat(30);
        assert_eq!(
            parse_request(&mut BytesMut::from(&only_crlf[..]), &l).err(),
            Some(ParseError::HeadTooLarge)
        );
    }

    #[test]
    fn error_kinds_map_as_documented() {
        assert_eq!(
            ParseError::Malformed("x").request_kind(),
            ErrorKind::HttpRequestError
        );
        assert_eq!(ParseError::UriTooLong.request_kind(), ErrorKind::UriTooLong);
        assert_eq!(
            ParseError::HeadTooLarge.request_kind(),
            ErrorKind::RequestHeaderTooLarge
        );
        assert_eq!(
            ParseError::Malformed("x").response_kind(),
            ErrorKind::HttpProtocolError
        );
        assert_eq!(
            ParseError::HeadTooLarge.response_kind(),
            ErrorKind::HttpResponseHeaderSectionSize
        );
        assert_eq!(
            ParseError::UriTooLong.response_kind(),
            ErrorKind::HttpResponseHeaderSectionSize
        );
    }

    // --- responses ---

    #[test]
    fn parses_a_response() {
        let bytes = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nnext";
        let mut buf = BytesMut::from(&bytes[..]);
        let Ok(Parsed::Complete(head)) = parse_response(&mut buf, &limits()) else {
            panic!()
        };
        assert_eq!(head.status(), 404);
        assert_eq!(head.reason(), b"Not Found");
        assert_eq!(head.version(), Version::Http11);
        assert_eq!(head.header("content-length"), Some(&b"0"[..]));
        assert_eq!(&buf[..], b"next");
        assert!(!head.is_informational());
        assert!(res_ok(b"HTTP/1.1 100 Continue\r\n\r\n").is_informational());
    }

    #[test]
    fn response_reason_may_be_empty_or_obs_text() {
        assert_eq!(res_ok(b"HTTP/1.1 200\r\n\r\n").reason(), b"");
        assert_eq!(res_ok(b"HTTP/1.1 200 \r\nA: b\r\n\r\n").reason(), b"");
        assert_eq!(
            res_ok(b"HTTP/1.0 200 D\xe9j\xe0 vu\r\n\r\n").reason(),
            b"D\xe9j\xe0 vu"
        );
    }

    #[test]
    fn response_status_must_be_three_digits_from_100() {
        for line in [
            &b"HTTP/1.1 099 X"[..],
            b"HTTP/1.1 20 X",
            b"HTTP/1.1 2000 X",
            b"HTTP/1.1 abc X",
            b"HTTP/1.1 -20 X",
        ] {
            let head = [line, b"\r\n\r\n"].concat();
            assert!(
                matches!(res_err(&head), ParseError::Malformed(_)),
                "{line:?}"
            );
        }
        assert_eq!(res_ok(b"HTTP/1.1 999 Odd\r\n\r\n").status(), 999);
    }

    #[test]
    fn response_leading_empty_line_is_rejected() {
        assert!(matches!(
            res_err(b"\r\nHTTP/1.1 200 OK\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn response_unfinished_huge_head_is_too_large() {
        let l = Limits {
            max_head: 100,
            ..limits()
        };
        let head = [b"HTTP/1.1 200 OK\r\n".as_slice(), &b"A: b\r\n".repeat(30)].concat();
        let err = parse_response(&mut BytesMut::from(&head[..]), &l).err();
        assert_eq!(
            err.map(|e| e.response_kind()),
            Some(ErrorKind::HttpResponseHeaderSectionSize)
        );
    }

    // --- encode ---

    #[test]
    fn untouched_request_encodes_as_one_slice_of_raw() {
        let head = req_ok(GET);
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0], head.raw());
        assert_eq!(
            out[0].as_ptr(),
            head.raw().as_ptr(),
            "must be a slice, not a copy"
        );
    }

    #[test]
    fn last_line_follows_every_header_and_keeps_untouched_runs_whole() {
        let mut head = req_ok(GET);
        head.set_last_line(b"Via: 1.1 proxy\r\n");
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        assert_eq!(
            joined(&out),
            b"GET http://example.com/a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t/1\r\n\
Accept: */*\r\nProxy-Connection: keep-alive\r\nVia: 1.1 proxy\r\n\r\n"
        );
        // The untouched head up to its final CRLF, the line, the final CRLF.
        assert_eq!(out.len(), 3);
        assert_eq!(head.header("via"), None, "lookups do not see it");
        // After an edit at the end, the line still comes last, once.
        head.set("x-new", b"1");
        head.set_last_line(b"Via: 1.0 proxy\r\n");
        head.encode(Version::Http11, &mut out);
        assert!(joined(&out).ends_with(b"\r\nx-new: 1\r\nVia: 1.0 proxy\r\n\r\n"));
        assert_eq!(joined(&out).windows(4).filter(|w| w == b"Via:").count(), 1);
    }

    #[test]
    fn edited_request_coalesces_untouched_runs() {
        let mut head = req_ok(GET);
        head.set_target(Bytes::from_static(b"/a?b=1"));
        assert_eq!(head.remove("proxy-connection"), 1);
        head.set("user-agent", b"x/2");
        head.append_static(b"Via: 1.1 proxy\r\n");
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        assert_eq!(
            joined(&out),
            b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nuser-agent: x/2\r\nAccept: */*\r\nVia: 1.1 proxy\r\n\r\n"
        );
        // request line (method, SP, target, SP + version), "Host" run, user-agent,
        // "Accept" run, Via, final CRLF.
        assert_eq!(out.len(), 9);
        let raw = head.raw().as_ptr_range();
        assert!(
            raw.contains(&out[0].as_ptr()),
            "the method is a slice of the head"
        );
        assert_eq!(head.header("via"), Some(&b"1.1 proxy"[..]));
        assert_eq!(head.target(), b"http://example.com/a?b=1");
        assert_eq!(head.effective_target(), b"/a?b=1");
    }

    #[test]
    fn request_version_change_rerenders_only_the_request_line() {
        let head = req_ok(b"GET / HTTP/1.0\r\nA: 1\r\nB: 2\r\n\r\n");
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        assert_eq!(joined(&out), b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n");
        // The request line's four pieces, then the untouched rest in one slice.
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn header_edits_follow_the_contract() {
        let mut head =
            req_ok(b"GET / HTTP/1.1\r\nA: 1\r\nB: x, Keep-Alive ,y\r\na: 2\r\nC: 3\r\n\r\n");
        assert_eq!(head.count("a"), 2);
        assert_eq!(
            head.headers_named("A").collect::<Vec<_>>(),
            [&b"1"[..], b"2"]
        );
        assert!(head.has_token("b", "keep-alive"));
        assert!(!head.has_token("b", "keep"));
        head.set("A", b" new ");
        assert_eq!(head.count("a"), 1);
        assert_eq!(head.header("a"), Some(&b"new"[..]));
        head.append("D", b"4");
        head.set("D", b"5");
        let all: Vec<(Vec<u8>, Vec<u8>)> = head
            .headers()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = [
            ("A", "new"),
            ("B", "x, Keep-Alive ,y"),
            ("C", "3"),
            ("D", "5"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        assert_eq!(all, want);
        assert_eq!(head.remove("d"), 1);
        assert_eq!(head.remove("d"), 0);
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        assert_eq!(
            joined(&out),
            b"GET / HTTP/1.1\r\nA: new\r\nB: x, Keep-Alive ,y\r\nC: 3\r\n\r\n"
        );
    }

    #[test]
    fn edits_cannot_inject_lines() {
        let mut head = req_ok(b"GET / HTTP/1.1\r\n\r\n");
        head.append("X\r\nEvil", b"a\r\nInjected: 1");
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        let wire = joined(&out);
        let mut buf = BytesMut::from(&wire[..]);
        let Ok(Parsed::Complete(again)) = parse_request(&mut buf, &limits()) else {
            panic!("{wire:?}")
        };
        assert_eq!(again.headers().count(), 1);
        assert_eq!(again.count("injected"), 0);
    }

    #[test]
    fn edited_values_are_trimmed_after_control_bytes_become_spaces() {
        // Found by fuzz/fuzz_targets/request_head.rs: "\x01va\r\nlue\x7f\r" was sent as " va  lue  ", which
        // the next hop reads as "va  lue" while the head reported the untrimmed value.
        let mut head = req_ok(b"GET http://a/ HTTP/1.1\r\n\r\n");
        head.append("X-Bad", b"\x01va\r\nlue\x7f\r");
        head.append("X-Ctl", b"\r\n\x00");
        assert_eq!(head.header("x-bad"), Some(&b"va  lue"[..]));
        assert_eq!(head.header("x-ctl"), Some(&b""[..]));
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        let wire = joined(&out);
        assert_eq!(
            wire,
            b"GET http://a/ HTTP/1.1\r\nX-Bad: va  lue\r\nX-Ctl: \r\n\r\n"
        );
        let again = req_ok(&wire);
        let sent: Vec<_> = again.headers().collect();
        let reported: Vec<_> = head.headers().collect();
        assert_eq!(sent, reported);
    }

    #[test]
    fn response_encode_untouched_is_raw_and_edits_apply() {
        let mut head =
            res_ok(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n");
        let mut out = Vec::new();
        head.encode(&mut out);
        assert_eq!(out, [head.raw().clone()]);
        head.remove("connection");
        head.append("Via", b"1.1 p");
        head.encode(&mut out);
        assert_eq!(
            joined(&out),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nVia: 1.1 p\r\n\r\n"
        );
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn response_version_is_rewritten_without_copying_the_rest() {
        let mut head = res_ok(b"HTTP/1.0 404 Gone Away\r\nContent-Length: 0\r\n\r\n");
        let mut out = Vec::new();
        head.encode_with_version(Version::Http11, &mut out);
        assert_eq!(
            joined(&out),
            b"HTTP/1.1 404 Gone Away\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(out.len(), 2, "the version, then one slice of raw");
        head.encode_with_version(Version::Http10, &mut out);
        assert_eq!(out, [head.raw().clone()]);
        head.append("connection", b"close");
        head.encode_with_version(Version::Http11, &mut out);
        assert_eq!(
            joined(&out),
            b"HTTP/1.1 404 Gone Away\r\nContent-Length: 0\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn empty_and_obs_text_values_are_accepted() {
        let head = req_ok(b"GET / HTTP/1.1\r\nA:\r\nB:   \r\nC: caf\xe9\r\n\r\n");
        assert_eq!(head.header("a"), Some(&b""[..]));
        assert_eq!(head.header("b"), Some(&b""[..]));
        assert_eq!(head.header("c"), Some(&b"caf\xe9"[..]));
        let mut out = Vec::new();
        head.encode(Version::Http11, &mut out);
        assert_eq!(joined(&out), head.raw().as_ref());
    }

    #[test]
    fn rejects_control_bytes_in_values() {
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nA: b\x7fc\r\n\r\n"),
            ParseError::Malformed(_)
        ));
        assert!(matches!(
            req_err(b"GET / HTTP/1.1\r\nA: b\x01c\r\n\r\n"),
            ParseError::Malformed(_)
        ));
    }

    #[test]
    fn trailing_whitespace_is_trimmed_but_remembered() {
        let head = req_ok(b"GET / HTTP/1.1\r\nA: v \t\r\nB:  w\r\n\r\n");
        assert_eq!(head.header("a"), Some(&b"v"[..]));
        assert_eq!(head.header("b"), Some(&b"w"[..]));
        let head = req_ok(
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked \r\nTransfer-Encoding: gzip\r\n\r\n",
        );
        let found = head.framing();
        assert_eq!(found.transfer_encodings, 2);
        assert_eq!(found.transfer_encoding, Some(&b"chunked"[..]));
        assert!(found.transfer_encoding_ws);
        assert_eq!(found.content_lengths, 1);
        assert_eq!(found.content_length, Some(&b"3"[..]));
        let head = req_ok(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nA: v \r\n\r\n");
        assert!(!head.framing().transfer_encoding_ws);
    }
}

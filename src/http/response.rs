//! Synthetic replies the proxy writes itself: errors with `Proxy-Status`, tunnel setup, interim responses.

use bytes::{Bytes, BytesMut};

use super::{is_field_byte, is_tchar};

/// The reply to a CONNECT once the tunnel to the origin is up.
pub const CONNECT_ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The interim reply to `Expect: 100-continue`.
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The RFC 9110 §15 reason phrase for `status` ("Unknown" for codes it does not define).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        511 => "Network Authentication Required",
        _ => "Unknown",
    }
}

/// A plain-text error reply carrying an RFC 9209 `Proxy-Status` with `error=<code>` and optional `details`.
///
/// `details` is written as a quoted-string (RFC 9651 §3.3.3 sf-string): `"` and `\` are escaped and anything
/// outside printable ASCII becomes `?`, so no input can break the header.
pub fn error_response(status: u16, code: &str, details: Option<&str>, close: bool) -> Bytes {
    let reason = reason_phrase(status);
    let code: String = code
        .chars()
        .map(|c| {
            if c.is_ascii() && is_tchar(c as u8) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let body = format!("{status} {reason}: {code}\n");
    let mut proxy_status = format!("proxy; error={code}");
    if let Some(details) = details {
        proxy_status.push_str("; details=\"");
        for c in details.chars() {
            match c {
                '"' | '\\' => {
                    proxy_status.push('\\');
                    proxy_status.push(c);
                }
                ' '..='~' => proxy_status.push(c),
                _ => proxy_status.push('?'),
            }
        }
        proxy_status.push('"');
    }
    simple_response(
        status,
        &[
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Proxy-Status", &proxy_status),
        ],
        body.as_bytes(),
        close,
    )
}

/// A complete reply: status line, `headers` in order, Content-Length, `Connection: close` when `close`, body.
///
/// A 1xx, 204 or 304 reply never carries content (RFC 9110 §6.4.1): `body` is dropped, and so is
/// Content-Length, which 1xx and 204 must not carry (§8.6) and which for a 304 would have to be the length of a
/// representation the proxy does not have. Header bytes that would break the head (CR, LF, NUL, other CTLs;
/// non-token name bytes) are replaced, never emitted.
pub fn simple_response(status: u16, headers: &[(&str, &str)], body: &[u8], close: bool) -> Bytes {
    response_with_reason(status, reason_phrase(status), headers, body, close)
}

/// [`simple_response`] with its own reason phrase (control bytes in it are replaced).
pub fn response_with_reason(
    status: u16,
    reason: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    close: bool,
) -> Bytes {
    let extra: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(64 + reason.len() + extra + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
    out.extend(
        reason
            .bytes()
            .map(|b| if is_field_byte(b) { b } else { b' ' }),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend(name.bytes().map(|b| if is_tchar(b) { b } else { b'-' }));
        out.extend_from_slice(b": ");
        out.extend(
            value
                .bytes()
                .map(|b| if is_field_byte(b) { b } else { b' ' }),
        );
        out.extend_from_slice(b"\r\n");
    }
    let has_content = !((100..200).contains(&status) || status == 204 || status == 304);
    if has_content {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if has_content {
        out.extend_from_slice(body);
    }
    Bytes::from(out)
}

/// The head of a complete reply (`bytes` up to and including the blank line), for a
/// request whose method is HEAD: its response carries no body (RFC 9110 §9.3.2), but
/// keeps the `Content-Length` the same GET would get. Bytes without a blank line are
/// returned whole.
pub fn head_only(bytes: &Bytes) -> Bytes {
    match memchr::memmem::find(bytes, b"\r\n\r\n") {
        Some(end) => bytes.slice(..end + 4),
        None => bytes.clone(),
    }
}

/// `bytes` (a complete reply) saying `Connection: close`: the client must know that the
/// connection ends after it (RFC 9112 §9.6). Unless a `Connection` header already says
/// `close`, the reply's own `Connection` and `Keep-Alive` lines (a plugin's
/// `keep-alive`, which would contradict it) give way to one `Connection: close`. Bytes
/// without a blank line are returned whole.
pub fn with_close(bytes: &Bytes) -> Bytes {
    let Some(end) = memchr::memmem::find(bytes, b"\r\n\r\n") else {
        return bytes.clone();
    };
    let name_of = |line: &[u8]| -> Option<(bool, bool)> {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        Some((
            name.eq_ignore_ascii_case(b"connection"),
            name.eq_ignore_ascii_case(b"keep-alive"),
        ))
    };
    let says_close = bytes[..end]
        .split(|&b| b == b'\n')
        .skip(1)
        .filter(|line| name_of(line).is_some_and(|(connection, _)| connection))
        .filter_map(|line| line.iter().position(|&b| b == b':').map(|c| &line[c + 1..]))
        .flat_map(|value| value.split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
    if says_close {
        return bytes.clone();
    }
    let mut out = BytesMut::with_capacity(bytes.len() + 19);
    // The status line and every header line but the connection's own, each with its CRLF.
    for (i, line) in bytes[..end + 2]
        .split_inclusive(|&b| b == b'\n')
        .enumerate()
    {
        if i > 0 && name_of(line).is_some_and(|(connection, keep_alive)| connection || keep_alive) {
            continue;
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b"Connection: close\r\n");
    out.extend_from_slice(&bytes[end + 2..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::http::parse::{parse_response, Parsed};
    use bytes::BytesMut;

    #[test]
    fn a_reply_without_content_drops_its_body() {
        for status in [204, 304] {
            assert_eq!(
                simple_response(status, &[("X-A", "1")], b"must not be sent", false),
                format!(
                    "HTTP/1.1 {status} {}\r\nX-A: 1\r\n\r\n",
                    reason_phrase(status)
                )
                .as_bytes()
            );
        }
    }

    #[test]
    fn with_close_says_close_once() {
        let open = simple_response(200, &[("X-A", "1")], b"body", false);
        assert_eq!(
            &with_close(&open)[..],
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody"
        );
        let closed = simple_response(200, &[], b"body", true);
        assert_eq!(with_close(&closed), closed);
        let listed =
            Bytes::from_static(b"HTTP/1.1 200 OK\r\nconnection: Keep-Alive , CLOSE\r\n\r\n");
        assert_eq!(with_close(&listed), listed);
        // A token that only contains "close" is not one; a keep-alive gives way.
        let other = Bytes::from_static(
            b"HTTP/1.1 204 No Content\r\nConnection: closed\r\nX-A: 1\r\nKeep-Alive: timeout=5\r\n\r\n",
        );
        assert_eq!(
            &with_close(&other)[..],
            b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nConnection: close\r\n\r\n"
        );
        let keep = simple_response(200, &[("Connection", "keep-alive")], b"x", false);
        assert_eq!(
            &with_close(&keep)[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
        );
        assert_eq!(&with_close(&Bytes::from_static(b"partial"))[..], b"partial");
    }

    #[test]
    fn head_only_keeps_the_head_and_its_content_length() {
        let full = simple_response(200, &[("X-A", "1")], b"\r\n\r\nbody", false);
        let head = head_only(&full);
        assert_eq!(
            &head[..],
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 8\r\n\r\n"
        );
        let bodiless = simple_response(204, &[], b"", true);
        assert_eq!(head_only(&bodiless), bodiless);
        assert_eq!(
            &head_only(&Bytes::from_static(b"no blank line"))[..],
            b"no blank line"
        );
    }

    #[test]
    fn error_response_has_the_documented_shape() {
        let r = error_response(502, "dns_error", Some("no \"such\" host\\ é"), true);
        let want = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n\
Proxy-Status: proxy; error=dns_error; details=\"no \\\"such\\\" host\\\\ ?\"\r\nContent-Length: 27\r\n\
Connection: close\r\n\r\n502 Bad Gateway: dns_error\n";
        assert_eq!(std::str::from_utf8(&r).unwrap(), want);
    }

    #[test]
    fn error_response_without_details_or_close() {
        let r = error_response(414, "http_request_uri_too_long", None, false);
        let text = std::str::from_utf8(&r).unwrap();
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\n"));
        assert!(text.contains("\r\nProxy-Status: proxy; error=http_request_uri_too_long\r\n"));
        assert!(!text.contains("Connection"));
        assert!(text.ends_with("\r\n\r\n414 URI Too Long: http_request_uri_too_long\n"));
    }

    #[test]
    fn synthetic_responses_parse_back_strictly() {
        let r = error_response(431, "x", Some("line\r\nInjected: 1"), true);
        let mut buf = BytesMut::from(&r[..]);
        let Ok(Parsed::Complete(head)) = parse_response(&mut buf, &Limits::default()) else {
            panic!()
        };
        assert_eq!(head.status(), 431);
        assert_eq!(head.count("injected"), 0);
        assert_eq!(
            head.header("content-length"),
            Some(buf.len().to_string().as_bytes())
        );
    }

    #[test]
    fn simple_response_orders_headers_and_sanitises() {
        let r = simple_response(
            407,
            &[
                ("Proxy-Authenticate", "Basic realm=\"p\""),
                ("X\nY", "a\r\nb"),
            ],
            b"no",
            false,
        );
        assert_eq!(
            &r[..],
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\nX-Y: a  b\r\n\
Content-Length: 2\r\n\r\nno"
        );
        let r = simple_response(204, &[], b"", true);
        assert_eq!(
            &r[..],
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(400), "Bad Request");
        assert_eq!(reason_phrase(418), "I'm a teapot");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(508), "Loop Detected");
        assert_eq!(reason_phrase(599), "Unknown");
    }

    #[test]
    fn constants_parse() {
        for bytes in [CONNECT_ESTABLISHED, CONTINUE_100] {
            let mut buf = BytesMut::from(bytes);
            assert!(matches!(
                parse_response(&mut buf, &Limits::default()),
                Ok(Parsed::Complete(_))
            ));
            assert!(buf.is_empty());
        }
    }
}

//! Preparing the request: rewriting its head for the origin, and reading a whole body
//! for the plugins that asked for one.

use bytes::{Buf, Bytes, BytesMut};

use super::upload::closed_in_body;
use crate::config::Config;
use crate::conn::io::{client_io_error, read_some, write_all};
use crate::conn::Client;
use crate::error::{ErrorKind, ProxyError, Result};
use crate::http::response::CONTINUE_100;
use crate::http::target::{host_header_is, host_header_value};
use crate::http::{BodyKind, ChunkedDecoder, RequestHead, ResponseHead, Scheme, Version};
use crate::plugin::{Reply, MAX_BUFFERED_REQUEST_BODY};

/// Our `Via` line (RFC 9110 §7.6.3): the protocol version the message was received
/// with, and our pseudonym. Added to every request and response passed on.
pub(super) fn via_line(received: Version) -> &'static [u8] {
    match received {
        Version::Http11 => b"Via: 1.1 proxy\r\n",
        Version::Http10 => b"Via: 1.0 proxy\r\n",
    }
}

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

/// Whether `name` is one of [`HOP_BY_HOP`] (case-insensitive). Asked of every header
/// of both heads of each exchange: the length picks the one or two names to compare.
pub(super) fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |hop: &str| name.eq_ignore_ascii_case(hop.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// Rewrites a request head for the origin. Returns whether this is an upgrade.
/// `intercepted`: the request came inside an intercepted tunnel; if in origin-form, its
/// `Host` is the client's own and is kept.
pub(super) fn prepare_request(
    head: &mut RequestHead,
    target: super::Upstream<'_>,
    path: Bytes,
    intercepted: bool,
    config: &Config,
) -> bool {
    // `h2c` is never an upgrade here: after a 101 the connection would be relayed raw,
    // and the HTTP/2 requests on it would pass no plugin ("h2c smuggling"). Without
    // the token the request is plain HTTP/1.1 (RFC 9110 §7.8 lets an intermediary drop
    // upgrade tokens; RFC 9113 §3.1 deprecates this one).
    let upgrade = head.version() == Version::Http11
        && head.count("upgrade") > 0
        && head.has_token("connection", "upgrade")
        && !head.has_token("upgrade", "h2c");
    remove_connection_listed(head, upgrade);
    head.remove_where(|name| {
        is_hop_by_hop(name) && !(upgrade && name.eq_ignore_ascii_case(b"upgrade"))
    });
    if upgrade {
        head.append("Connection", b"upgrade");
    }
    for name in &config.disable_headers {
        head.remove(name);
    }
    // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request is ignored;
    // forwarded in HTTP/1.1, it would be acted on (and a 100 is not sent to 1.0 clients).
    if head.version() == Version::Http10 && head.count("expect") > 0 {
        head.remove("expect");
    }
    // RFC 9112 §3.2.2: a proxy replaces Host with the absolute-form target's authority.
    let scheme = if target.tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let (single_host, same_host) = {
        let mut hosts = head.headers_named("host");
        let single = hosts.next().filter(|_| hosts.next().is_none());
        // A client's own Host that already names the target is kept as sent (most
        // clients send exactly that): nothing to render.
        let same =
            single.is_some_and(|value| host_header_is(value, scheme, target.host, target.port));
        (single.is_some(), same)
    };
    // Inside an intercepted tunnel the single Host of an origin-form request is the
    // client's own: kept too. An absolute-form one names its target (RFC 9112 §3.2.2).
    let origin_form = head.target().first() == Some(&b'/');
    if !(same_host || intercepted && origin_form && single_host) {
        head.set(
            "host",
            host_header_value(scheme, target.host, target.port).as_bytes(),
        );
    }
    head.set_last_line(via_line(head.version()));
    head.set_target(path);
    upgrade
}

/// RFC 9110 §7.6.2: `Max-Forwards` on an OPTIONS or TRACE request. At 0 this proxy is
/// the final recipient and answers itself: OPTIONS with `200` and no content, TRACE
/// with `200 message/http` echoing the request as received, less the fields that carry
/// credentials (§9.3.8). Above 0 the value is decremented on the way. Other methods,
/// and a value that is not `1*DIGIT`, pass unchanged.
pub(crate) fn max_forwards(head: &mut RequestHead) -> Option<Reply> {
    let trace = head.is_method("TRACE");
    if !trace && !head.is_method("OPTIONS") {
        return None;
    }
    let value = head.header("max-forwards")?;
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Saturates: a value beyond u64 is only "many hops".
    let hops = value.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    if hops > 0 {
        head.set("Max-Forwards", (hops - 1).to_string().as_bytes());
        return None;
    }
    if !trace {
        return Some(Reply::new(200, &[], b"", false));
    }
    let mut echo = Vec::with_capacity(head.raw().len());
    echo.extend_from_slice(head.method());
    echo.push(b' ');
    echo.extend_from_slice(head.target());
    echo.push(b' ');
    echo.extend_from_slice(head.version().as_bytes());
    echo.extend_from_slice(b"\r\n");
    for (name, value) in head.headers() {
        let secret = ["authorization", "proxy-authorization", "cookie"]
            .iter()
            .any(|s| name.eq_ignore_ascii_case(s.as_bytes()));
        if !secret {
            echo.extend_from_slice(name);
            echo.extend_from_slice(b": ");
            echo.extend_from_slice(value);
            echo.extend_from_slice(b"\r\n");
        }
    }
    echo.extend_from_slice(b"\r\n");
    Some(Reply::new(
        200,
        &[("Content-Type", "message/http")],
        &echo,
        false,
    ))
}

/// True when `Connection` names a framing header. RFC 9110 §7.6.1 says listed
/// headers are removed before forwarding, but removing `Content-Length` or
/// `Transfer-Encoding` after the framing was read from them would send a body with no
/// framing, and the next hop would read it as a new message (request smuggling, or a
/// response that swallows the next one). Such a message is refused.
pub(super) fn names_framing_header<H: Headers>(head: &H) -> bool {
    let mut found = false;
    each_connection_token(head, &mut |token| {
        found |= token.eq_ignore_ascii_case(b"content-length")
            || token.eq_ignore_ascii_case(b"transfer-encoding");
    });
    found
}

/// Removes the headers a `Connection` header names (RFC 9110 §7.6.1). Allocates only
/// when it names something other than the usual `close`/`keep-alive`/`upgrade`.
pub(super) fn remove_connection_listed<H: Headers>(head: &mut H, keep_upgrade: bool) {
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
pub(super) trait Headers {
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
pub(super) async fn read_whole_body(
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
                        ProxyError::new(e.request_kind(), format!("request chunked body: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_optional_whitespace() {
        assert_eq!(trim_ows(b" \tx-foo \t"), b"x-foo");
        assert_eq!(trim_ows(b"   "), b"");
    }

    #[test]
    fn hop_by_hop_is_exactly_the_list_in_any_case() {
        for hop in HOP_BY_HOP {
            assert!(is_hop_by_hop(hop.as_bytes()), "{hop}");
            assert!(is_hop_by_hop(hop.to_ascii_uppercase().as_bytes()), "{hop}");
            // The same length, one letter off; one byte more or less.
            let mut near = hop.as_bytes().to_vec();
            near[0] ^= 0x01;
            assert!(!is_hop_by_hop(&near), "{hop}");
            assert!(!is_hop_by_hop(&hop.as_bytes()[1..]), "{hop}");
            assert!(!is_hop_by_hop(format!("{hop}s").as_bytes()), "{hop}");
        }
        for other in [
            "",
            "host",
            "trailer",
            "transfer-encoding",
            "content-length",
            "tes",
        ] {
            assert!(!is_hop_by_hop(other.as_bytes()), "{other}");
        }
    }
}

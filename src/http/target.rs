//! Request-target forms (RFC 9112 §3.2): origin, absolute, authority (CONNECT) and asterisk.

use std::fmt::Write as _;
use std::net::Ipv6Addr;

use bytes::Bytes;

use super::parse::ParseError;

/// The scheme of an absolute-form target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

impl Scheme {
    /// The port used when the authority has none.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A request-target, classified and (for the forms that name a host) parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// "/path?q" (origin-form)
    Origin,
    /// `http://host[:port]/path?q`; host lower-cased, IPv6 without brackets; port defaulted by scheme (80/443).
    /// `path` is the origin-form to send upstream ("/" when the URL has no path; query kept), as Bytes sliced from
    /// the input where possible.
    Absolute {
        /// `http` or `https`.
        scheme: Scheme,
        /// Lower-cased host; an IPv6 literal in canonical form, without brackets.
        host: String,
        /// The explicit port, else the scheme's default.
        port: u16,
        /// Origin-form path and query to send upstream.
        path: Bytes,
    },
    /// "host:port" (CONNECT); the port is required (RFC 9112 §3.2.3).
    Authority {
        /// Lower-cased host; an IPv6 literal in canonical form, without brackets.
        host: String,
        /// The port.
        port: u16,
    },
    /// "*" (OPTIONS)
    Asterisk,
}

impl Target {
    /// The host a proxied request goes to (absolute-form or CONNECT); `None` for a
    /// request addressed to this server (origin-form, `*`).
    pub fn upstream_host(&self) -> Option<&str> {
        match self {
            Target::Absolute { host, .. } | Target::Authority { host, .. } => Some(host),
            Target::Origin | Target::Asterisk => None,
        }
    }
}

/// `host` without the trailing dots of a fully qualified name (`example.com.` names the
/// same DNS host as `example.com`): the form host lists are compared in, so that a
/// trailing dot cannot slip a listed host past a filter. IP literals are unchanged.
pub fn comparable_host(host: &str) -> &str {
    host.trim_end_matches('.')
}

/// Classifies and parses a request-target; `is_connect` selects authority-form (RFC 9112 §3.2.3).
pub fn parse_target(raw: &Bytes, is_connect: bool) -> Result<Target, ParseError> {
    // RFC 9112 §3.2: a fragment is never part of a request-target.
    if memchr::memchr(b'#', raw).is_some() {
        return Err(ParseError::Malformed("fragment in request-target"));
    }
    if is_connect {
        // RFC 9112 §3.2.3: authority-form is `uri-host ":" port`; proxy.py guesses 443
        // for a missing port, we refuse to guess.
        let (host, port) = parse_authority(raw, None)?;
        return Ok(Target::Authority { host, port });
    }
    match raw.as_ref() {
        [b'/', ..] => Ok(Target::Origin),
        b"*" => Ok(Target::Asterisk),
        _ => parse_absolute(raw),
    }
}

fn parse_absolute(raw: &Bytes) -> Result<Target, ParseError> {
    let Some(colon) = memchr::memmem::find(raw, b"://") else {
        return Err(ParseError::Malformed("request-target form"));
    };
    let scheme = match raw.get(..colon) {
        Some(s) if s.eq_ignore_ascii_case(b"http") => Scheme::Http,
        Some(s) if s.eq_ignore_ascii_case(b"https") => Scheme::Https,
        // RFC 3986 §3.1: a well-formed scheme we do not proxy (ftp, ws…) is unsupported,
        // anything else is malformed.
        Some([first, rest @ ..])
            if first.is_ascii_alphabetic()
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b)) =>
        {
            return Err(ParseError::Unsupported("scheme"))
        }
        _ => return Err(ParseError::Malformed("scheme")),
    };
    let authority_start = colon + 3;
    let rest = raw.get(authority_start..).unwrap_or_default();
    let authority_len = memchr::memchr2(b'/', b'?', rest).unwrap_or(rest.len());
    let authority = rest.get(..authority_len).unwrap_or_default();
    let (host, port) = parse_authority(authority, Some(scheme.default_port()))?;
    let path_start = authority_start + authority_len;
    let path = match raw.get(path_start) {
        None => Bytes::from_static(b"/"),
        Some(b'/') => raw.slice(path_start..),
        // "http://host?q": origin-form needs the "/" the URL left implicit (RFC 9112 §3.2.1).
        Some(_) => Bytes::from([b"/", raw.get(path_start..).unwrap_or_default()].concat()),
    };
    Ok(Target::Absolute {
        scheme,
        host,
        port,
        path,
    })
}

/// `host [":" port]` (RFC 3986 §3.2) without userinfo; returns the lower-cased host and the port.
fn parse_authority(
    authority: &[u8],
    default_port: Option<u16>,
) -> Result<(String, u16), ParseError> {
    if memchr::memchr(b'@', authority).is_some() {
        return Err(ParseError::Malformed("userinfo in authority"));
    }
    let (host, port) = if let Some(literal) = authority.strip_prefix(b"[") {
        let Some(close) = memchr::memchr(b']', literal) else {
            return Err(ParseError::Malformed("bad IPv6 literal"));
        };
        let inner = literal.get(..close).unwrap_or_default();
        let addr = std::str::from_utf8(inner)
            .ok()
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .ok_or(ParseError::Malformed("bad IPv6 literal"))?;
        let port = match literal.get(close + 1..).unwrap_or_default() {
            [] => None,
            [b':', port @ ..] => Some(port),
            _ => return Err(ParseError::Malformed("bad IPv6 literal")),
        };
        (addr.to_string(), port)
    } else {
        let (host, port) = match memchr::memchr(b':', authority) {
            Some(i) => (
                authority.get(..i).unwrap_or_default(),
                authority.get(i + 1..),
            ),
            None => (authority, None),
        };
        (reg_name(host)?, port)
    };
    let port = match (port, default_port) {
        (Some(digits), _) => parse_port(digits)?,
        (None, Some(default)) => default,
        (None, None) => return Err(ParseError::Malformed("authority-form needs a port")),
    };
    Ok((host, port))
}

/// RFC 3986 §3.2.2 reg-name (also covers IPv4): unreserved / pct-encoded / sub-delims, non-empty.
fn reg_name(host: &[u8]) -> Result<String, ParseError> {
    if host.is_empty() {
        return Err(ParseError::Malformed("empty host"));
    }
    let mut i = 0;
    while let Some(&b) = host.get(i) {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {}
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => {}
            b'%' => {
                let hex = host.get(i + 1..i + 3).unwrap_or_default();
                if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(ParseError::Malformed("bad percent-encoding in host"));
                }
                i += 2;
            }
            _ => return Err(ParseError::Malformed("invalid byte in host")),
        }
        i += 1;
    }
    // Every byte is ASCII here: lower-cased in one copy, and valid UTF-8.
    String::from_utf8(host.to_ascii_lowercase())
        .map_err(|_| ParseError::Malformed("invalid byte in host"))
}

/// RFC 3986 §3.2.3 port, restricted to 1..=65535 and non-empty (an empty or zero port names no server).
fn parse_port(digits: &[u8]) -> Result<u16, ParseError> {
    if digits.is_empty() {
        return Err(ParseError::Malformed("empty port"));
    }
    let mut port: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(ParseError::Malformed("bad port"));
        }
        port = port * 10 + u32::from(d - b'0');
        if port > u32::from(u16::MAX) {
            return Err(ParseError::Malformed("bad port"));
        }
    }
    match u16::try_from(port) {
        Ok(0) | Err(_) => Err(ParseError::Malformed("bad port")),
        Ok(port) => Ok(port),
    }
}

/// `host:port` for messages and logs, an IPv6 host in brackets (`[::1]:443`).
pub struct Authority<'a>(pub &'a str, pub u16);

impl std::fmt::Display for Authority<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Authority(host, port) = *self;
        if host.contains(':') {
            write!(f, "[{host}]:{port}")
        } else {
            write!(f, "{host}:{port}")
        }
    }
}

/// The authority to put in Host: "host", "host:port" when port != default for scheme, `[v6]` bracketed.
pub fn host_header_value(scheme: Scheme, host: &str, port: u16) -> String {
    let mut value = String::with_capacity(host.len() + 8);
    if host.contains(':') {
        value.push('[');
        value.push_str(host);
        value.push(']');
    } else {
        value.push_str(host);
    }
    if port != scheme.default_port() {
        let _ = write!(value, ":{port}");
    }
    value
}

/// Whether a received Host `value` names the same authority [`host_header_value`] would
/// write (letter case aside), so that it can be forwarded untouched.
pub fn host_header_is(value: &[u8], scheme: Scheme, host: &str, port: u16) -> bool {
    let bracketed = host.contains(':');
    let value = if bracketed {
        value.strip_prefix(b"[").unwrap_or_default()
    } else {
        value
    };
    let rest = match value.split_at_checked(host.len()) {
        Some((h, rest)) if h.eq_ignore_ascii_case(host.as_bytes()) => Some(rest),
        _ => None,
    };
    let rest = if bracketed {
        rest.and_then(|r| r.strip_prefix(b"]"))
    } else {
        rest
    };
    let Some(rest) = rest else {
        return false;
    };
    if port == scheme.default_port() {
        return rest.is_empty();
    }
    rest.strip_prefix(b":")
        .is_some_and(|digits| digits == itoa::Buffer::new().format(port).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &'static str, connect: bool) -> Result<Target, ParseError> {
        parse_target(&Bytes::from_static(raw.as_bytes()), connect)
    }

    fn abs(scheme: Scheme, host: &str, port: u16, path: &'static str) -> Target {
        Target::Absolute {
            scheme,
            host: host.to_owned(),
            port,
            path: Bytes::from_static(path.as_bytes()),
        }
    }

    #[test]
    fn origin_and_asterisk() {
        assert_eq!(t("/a/b?c=d", false), Ok(Target::Origin));
        assert_eq!(t("*", false), Ok(Target::Asterisk));
        assert!(t("/a#frag", false).is_err());
    }

    #[test]
    fn absolute_form() {
        assert_eq!(
            t("http://Example.COM/a?b", false),
            Ok(abs(Scheme::Http, "example.com", 80, "/a?b"))
        );
        assert_eq!(
            t("HTTPS://example.com", false),
            Ok(abs(Scheme::Https, "example.com", 443, "/"))
        );
        assert_eq!(
            t("http://example.com:8080", false),
            Ok(abs(Scheme::Http, "example.com", 8080, "/"))
        );
        assert_eq!(
            t("http://example.com?q=1", false),
            Ok(abs(Scheme::Http, "example.com", 80, "/?q=1"))
        );
        assert_eq!(
            t("http://[::1]:81/x", false),
            Ok(abs(Scheme::Http, "::1", 81, "/x"))
        );
        assert_eq!(
            t("http://[2001:DB8::1]/", false),
            Ok(abs(Scheme::Http, "2001:db8::1", 80, "/"))
        );
        assert_eq!(
            t("http://10.0.0.1:80/", false),
            Ok(abs(Scheme::Http, "10.0.0.1", 80, "/"))
        );
    }

    #[test]
    fn absolute_path_is_a_slice_of_the_input() {
        let raw = Bytes::from_static(b"http://h/path");
        let Ok(Target::Absolute { path, .. }) = parse_target(&raw, false) else {
            panic!()
        };
        assert_eq!(path.as_ptr(), raw[8..].as_ptr());
    }

    #[test]
    fn authority_form() {
        assert_eq!(
            t("example.com:443", true),
            Ok(Target::Authority {
                host: "example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            t("Example.com:443", true),
            Ok(Target::Authority {
                host: "example.com".into(),
                port: 443
            })
        );
        assert!(t("example.com", true).is_err(), "no port");
        assert!(t("[::1]", true).is_err(), "no port");
        assert_eq!(
            t("[::1]:8443", true),
            Ok(Target::Authority {
                host: "::1".into(),
                port: 8443
            })
        );
        assert!(t("/path", true).is_err());
        assert!(t("http://example.com:443/", true).is_err());
    }

    #[test]
    fn rejects_bad_targets() {
        let cases = [
            ("http://user@example.com/", false),
            ("http://user:pw@example.com/", false),
            ("example.com:443", false),
            ("user@example.com:443", true),
            ("http:///x", false),
            ("http://:80/", false),
            (":443", true),
            ("http://example.com:/", false),
            ("example.com:", true),
            ("http://example.com:0/", false),
            ("http://example.com:65536/", false),
            ("http://example.com:99999999999999999999/", false),
            ("http://example.com:8a/", false),
            ("http://example.com:-1/", false),
            ("http://[::1/", false),
            ("http://[::g]/", false),
            ("http://[::1]x/", false),
            ("http://::1/", false),
            ("http://[fe80::1%25eth0]/", false),
            ("http://exa mple.com/", false),
            ("http://exa%zzmple.com/", false),
            ("http://exa%2/", false),
            ("http://exa\0mple.com/", false),
            ("http:/example.com/", false),
            ("1ftp://example.com/", false),
            ("http://example.com/#top", false),
        ];
        for (raw, connect) in cases {
            assert!(
                matches!(t(raw, connect), Err(ParseError::Malformed(_))),
                "{raw}"
            );
        }
        for raw in ["ftp://example.com/", "ws://example.com/", "gopher://x/"] {
            assert_eq!(
                t(raw, false),
                Err(ParseError::Unsupported("scheme")),
                "{raw}"
            );
        }
    }

    #[test]
    fn percent_encoded_host_is_allowed() {
        assert_eq!(
            t("http://a%2Db/", false),
            Ok(abs(Scheme::Http, "a%2db", 80, "/"))
        );
    }

    #[test]
    fn host_header_values() {
        assert_eq!(
            host_header_value(Scheme::Http, "example.com", 80),
            "example.com"
        );
        assert_eq!(
            host_header_value(Scheme::Http, "example.com", 8080),
            "example.com:8080"
        );
        assert_eq!(
            host_header_value(Scheme::Https, "example.com", 443),
            "example.com"
        );
        assert_eq!(
            host_header_value(Scheme::Https, "example.com", 80),
            "example.com:80"
        );
        assert_eq!(host_header_value(Scheme::Http, "::1", 80), "[::1]");
        assert_eq!(host_header_value(Scheme::Http, "::1", 81), "[::1]:81");
    }

    #[test]
    fn host_header_is_what_would_be_written() {
        let cases: &[(Scheme, &str, u16)] = &[
            (Scheme::Http, "example.com", 80),
            (Scheme::Http, "example.com", 8080),
            (Scheme::Https, "example.com", 443),
            (Scheme::Https, "example.com", 80),
            (Scheme::Http, "::1", 80),
            (Scheme::Http, "::1", 65535),
            (Scheme::Http, "127.0.0.1", 1),
        ];
        for &(scheme, host, port) in cases {
            let written = host_header_value(scheme, host, port);
            assert!(
                host_header_is(written.as_bytes(), scheme, host, port),
                "{written}"
            );
            assert!(host_header_is(
                written.to_ascii_uppercase().as_bytes(),
                scheme,
                host,
                port
            ));
            for other in [
                format!("{written}:1"),
                format!("{written}0"),
                format!("x{written}"),
                written[..written.len() - 1].to_owned(),
                String::new(),
            ] {
                assert!(
                    !host_header_is(other.as_bytes(), scheme, host, port),
                    "{other:?} is not {written:?}"
                );
            }
        }
        // A default port written out is a different value: rewritten, not kept.
        assert!(!host_header_is(
            b"example.com:80",
            Scheme::Http,
            "example.com",
            80
        ));
        assert!(!host_header_is(b"::1", Scheme::Http, "::1", 80));
    }
}

//! `parse_target` the way the proxy calls it (src/proxy/mod.rs `route`): on the request-target bytes, with
//! `is_connect` for CONNECT. Every input is tried both ways.
//!
//! Checks: each form is what its bytes say (origin starts with "/", asterisk is "*", CONNECT is authority-form
//! only); a parsed host is canonical (lower-case reg-name, or an IPv6 address in its canonical text) and a port
//! is never 0; the path sent upstream starts with "/" and is the rest of the target; the Host value the proxy
//! writes from it passes the proxy's own request parser; and writing a parsed target back out and parsing it
//! again gives the same target.

#![no_main]

use std::net::Ipv6Addr;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proxy::config::Limits;
use proxy::http::{
    host_header_value, parse_request, parse_target, ParseError, Parsed, Scheme, Target,
};

fuzz_target!(|data: &[u8]| {
    let raw = Bytes::copy_from_slice(data);
    for is_connect in [false, true] {
        let first = parse_target(&raw, is_connect);
        assert_eq!(parse_target(&raw, is_connect), first, "not deterministic");
        match first {
            Ok(target) => check(&raw, is_connect, &target),
            Err(ParseError::Malformed(_)) => {}
            Err(ParseError::Unsupported(what)) => {
                assert!(!is_connect && what == "scheme", "Unsupported({what})")
            }
            Err(e) => panic!("parse_target gave {e:?}"),
        }
    }
});

fn check(raw: &Bytes, is_connect: bool, target: &Target) {
    assert!(!raw.contains(&b'#'), "fragment accepted");
    match target {
        Target::Origin => {
            assert!(!is_connect);
            assert_eq!(raw.first(), Some(&b'/'));
            assert_eq!(target.upstream_host(), None);
        }
        Target::Asterisk => {
            assert!(!is_connect);
            assert_eq!(&raw[..], b"*");
            assert_eq!(target.upstream_host(), None);
        }
        Target::Authority { host, port } => {
            assert!(is_connect, "authority-form without CONNECT");
            assert!(!raw.contains(&b'@'), "userinfo accepted");
            check_host(host);
            assert_ne!(*port, 0);
            assert_eq!(target.upstream_host(), Some(host.as_str()));
            let again = format!("{}:{port}", bracketed(host));
            assert_eq!(
                parse_target(&Bytes::from(again.clone()), true).as_ref(),
                Ok(target),
                "{again}"
            );
            check_host_header(&host_header_value(Scheme::Https, host, *port));
        }
        Target::Absolute {
            scheme,
            host,
            port,
            path,
        } => {
            assert!(!is_connect, "absolute-form with CONNECT");
            let name: &[u8] = match scheme {
                Scheme::Http => b"http://",
                Scheme::Https => b"https://",
            };
            assert!(raw.len() >= name.len() && raw[..name.len()].eq_ignore_ascii_case(name));
            check_host(host);
            assert_ne!(*port, 0);
            assert_eq!(target.upstream_host(), Some(host.as_str()));
            // The authority runs to the first "/" or "?"; the path is the rest, with the "/" an empty path
            // leaves implicit.
            let after = &raw[name.len()..];
            let authority_len = after
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(after.len());
            assert!(!after[..authority_len].contains(&b'@'), "userinfo accepted");
            let rest = &after[authority_len..];
            let want: Vec<u8> = match rest.first() {
                None => b"/".to_vec(),
                Some(b'/') => rest.to_vec(),
                Some(_) => [b"/", rest].concat(),
            };
            assert_eq!(&path[..], &want[..], "path of {raw:?}");

            // What the proxy writes upstream, parsed again, is the same target.
            let host_value = host_header_value(*scheme, host, *port);
            let again = [name, host_value.as_bytes(), &path[..]].concat();
            assert_eq!(
                parse_target(&Bytes::from(again.clone()), false).as_ref(),
                Ok(target),
                "{:?}",
                String::from_utf8_lossy(&again)
            );
            check_host_header(&host_header_value(Scheme::Http, host, *port));
        }
    }
}

/// A host as the proxy keeps it: non-empty and canonical.
fn check_host(host: &str) {
    assert!(!host.is_empty(), "empty host");
    if host.contains(':') {
        let addr: Ipv6Addr = host.parse().unwrap_or_else(|e| panic!("{host:?}: {e}"));
        assert_eq!(addr.to_string(), host, "IPv6 host not canonical");
    } else {
        assert!(
            host.bytes().all(|b| b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b"-._~!$&'()*+,;=%".contains(&b)),
            "host {host:?}"
        );
    }
}

fn bracketed(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The Host value the proxy writes from a parsed target passes the proxy's own request parser.
fn check_host_header(value: &str) {
    let head = format!("GET / HTTP/1.1\r\nHost: {value}\r\n\r\n");
    let mut buf = BytesMut::from(head.as_bytes());
    match parse_request(&mut buf, &Limits::default()) {
        Ok(Parsed::Complete(parsed)) => assert_eq!(parsed.header("host"), Some(value.as_bytes())),
        other => panic!("Host: {value:?} is rejected: {other:?}"),
    }
}

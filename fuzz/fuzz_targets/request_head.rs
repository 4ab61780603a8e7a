//! `parse_request` the way the proxy calls it (src/proxy/mod.rs `read_head`): bytes appended to one buffer as
//! reads arrive, the parser called again after each read until the head is complete or rejected.
//!
//! Checks: the outcome does not depend on how the bytes were split into reads; a complete head is exactly the
//! bytes it was cut from, within the limits, with consistent accessors and body framing; `encode` gives back the
//! received bytes; and a head rewritten as the proxy rewrites it (hop-by-hop headers removed, Host and target
//! replaced, Via added, plus one arbitrary edit) encodes to bytes our own parser reads back as the same head.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use proxy::config::Limits;
use proxy::http::{
    host_header_value, parse_request, parse_target, request_body_kind, BodyKind, ChunkedDecoder,
    ParseError, Parsed, RequestHead, Scheme, Target, Version,
};
use proxy_fuzz::*;

/// What feeding a stream to the parser came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// Every call said Partial.
    Partial,
    /// A head was split off: its bytes, and everything after it.
    Complete { raw: Bytes, rest: Vec<u8> },
    /// Rejected (the kind may depend on which bytes had arrived, so it is not compared).
    Error(ParseError),
}

/// Appends each piece to the buffer and parses, as `read_head` does (never on an empty buffer).
fn feed(data: &[u8], cuts: &[usize], limits: &Limits) -> Outcome {
    let pieces = pieces(data, cuts);
    let mut buf = BytesMut::new();
    for (i, piece) in pieces.iter().enumerate() {
        buf.extend_from_slice(piece);
        if buf.is_empty() {
            continue;
        }
        let before = buf.clone();
        match parse_request(&mut buf, limits) {
            Ok(Parsed::Partial) => {
                assert_eq!(buf, before, "Partial must leave the buffer untouched")
            }
            Ok(Parsed::Complete(head)) => {
                let mut rest = buf.to_vec();
                for later in &pieces[i + 1..] {
                    rest.extend_from_slice(later);
                }
                return Outcome::Complete {
                    raw: head.raw().clone(),
                    rest,
                };
            }
            Err(e) => return Outcome::Error(e),
        }
    }
    Outcome::Partial
}

fn same_outcome(a: &Outcome, b: &Outcome) -> bool {
    match (a, b) {
        (Outcome::Error(_), Outcome::Error(_)) => true,
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rng = Rng::new(data);
    let limits = head_limits(&mut rng);

    let whole = feed(data, &[], &limits);
    let cuts = cuts(&mut rng, data.len());
    let split = feed(data, &cuts, &limits);
    assert!(
        same_outcome(&whole, &split),
        "whole: {whole:?}\nsplit at {cuts:?}: {split:?}"
    );
    if data.len() <= 512 {
        let bytewise: Vec<usize> = (1..data.len()).collect();
        let one_by_one = feed(data, &bytewise, &limits);
        assert!(
            same_outcome(&whole, &one_by_one),
            "whole: {whole:?}\nbyte by byte: {one_by_one:?}"
        );
    }

    let mut buf = BytesMut::from(data);
    if let Ok(Parsed::Complete(head)) = parse_request(&mut buf, &limits) {
        check_head(&head, data, &buf, &limits);
        check_framing(&head, &buf);
        check_encode(&head);
        check_rewrite(&head, &buf, &mut rng);
    }
});

/// The head is the bytes it was cut from, strict and within the limits, with consistent accessors.
fn check_head(head: &RequestHead, data: &[u8], rest: &[u8], limits: &Limits) {
    let raw = head.raw();
    let skip = data.len() - rest.len() - raw.len();
    assert!(
        data[..skip].chunks(2).all(|c| c == b"\r\n"),
        "only CRLFs are skipped"
    );
    assert_eq!(&data[skip..skip + raw.len()], &raw[..]);
    assert!(skip + raw.len() <= limits.max_head, "head over max_head");
    assert!(raw.ends_with(b"\r\n\r\n"));
    for (i, &b) in raw.iter().enumerate() {
        assert_ne!(b, 0, "NUL in head");
        if b == b'\r' {
            assert_eq!(raw.get(i + 1), Some(&b'\n'), "bare CR");
        }
        if b == b'\n' {
            assert!(i > 0 && raw[i - 1] == b'\r', "bare LF");
            assert!(!matches!(raw.get(i + 1), Some(b' ' | b'\t')), "obs-fold");
        }
    }
    let lines = lines_of(raw);
    assert!(
        lines[0].len() <= limits.max_request_line,
        "request line over limit"
    );
    for line in &lines[1..] {
        assert!(
            line.len() <= limits.max_header_line,
            "header line over limit"
        );
    }

    let method = head.method();
    assert!(
        !method.is_empty() && method.iter().all(|&b| is_tchar(b)),
        "method {method:?}"
    );
    let Ok(method_str) = std::str::from_utf8(method) else {
        panic!("token method is ASCII")
    };
    assert!(head.is_method(method_str));
    let target = head.target();
    assert!(
        !target.is_empty() && target.iter().all(|b| (0x21..=0x7e).contains(b)),
        "target {target:?}"
    );
    assert_eq!(&head.target_bytes()[..], target);
    assert_eq!(head.effective_target(), target);
    assert_eq!(&head.effective_target_bytes()[..], target);
    let line = [
        method,
        b" ",
        target,
        b" ",
        head.version().as_bytes(),
        b"\r\n",
    ]
    .concat();
    assert!(
        raw.starts_with(&line),
        "request line is not method SP target SP version"
    );

    let headers = head.headers().count();
    assert_eq!(headers, lines.len() - 1, "one header per line");
    assert!(
        headers <= limits.max_headers,
        "more headers than max_headers"
    );
    check_headers(&head.headers().collect::<Vec<_>>(), head);
    assert!(head.count("host") <= 1, "more than one Host");
    let _ = head.wants_keep_alive();
}

/// `request_body_kind` agrees with the framing headers it was decided from.
fn check_framing(head: &RequestHead, rest: &[u8]) {
    let te = head.count("transfer-encoding");
    let cl = head.count("content-length");
    match request_body_kind(head) {
        Ok(BodyKind::Empty) => assert!(te == 0 && cl == 0, "Empty with TE {te} CL {cl}"),
        Ok(BodyKind::Length(n)) => {
            assert!(te == 0 && cl == 1, "Length with TE {te} CL {cl}");
            let value = head.header("content-length").unwrap_or_default();
            assert!(
                !value.is_empty() && value.iter().all(u8::is_ascii_digit),
                "{value:?}"
            );
            let parsed = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            assert_eq!(parsed, Some(n));
        }
        Ok(BodyKind::Chunked) => {
            assert!(te == 1 && cl == 0, "Chunked with TE {te} CL {cl}");
            assert_eq!(head.version(), Version::Http11, "chunked on HTTP/1.0");
            let value = head.header("transfer-encoding").unwrap_or_default();
            let items: Vec<&[u8]> = value.split(|&b| b == b',').map(trim).collect();
            assert!(items
                .last()
                .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked")));
            let chunked = items
                .iter()
                .filter(|i| i.eq_ignore_ascii_case(b"chunked"))
                .count();
            assert_eq!(chunked, 1, "chunked twice: {value:?}");
            // The body that follows, as the proxy would read it next.
            let mut decoder = ChunkedDecoder::new(&Limits::default());
            if let Ok(progress) = decoder.advance(rest, None) {
                assert!(progress.consumed <= rest.len());
            }
        }
        Ok(BodyKind::UntilClose) => panic!("a request is never read until close"),
        Err(e) => assert!(te + cl > 0, "framing error without framing headers: {e:?}"),
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// An untouched head encodes as its own bytes (one slice); at the other version only the request line changes.
fn check_encode(head: &RequestHead) {
    let raw = head.raw();
    let mut out = Vec::new();
    head.encode(head.version(), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0], raw);
    assert_eq!(
        out[0].as_ptr(),
        raw.as_ptr(),
        "untouched head must be a slice, not a copy"
    );

    let other = match head.version() {
        Version::Http10 => Version::Http11,
        Version::Http11 => Version::Http10,
    };
    head.encode(other, &mut out);
    let line_len = head.method().len() + head.target().len() + 12;
    let want = [
        head.method(),
        b" ",
        head.target(),
        b" ",
        other.as_bytes(),
        b"\r\n",
        &raw[line_len..],
    ]
    .concat();
    assert_eq!(joined(&out), want);
}

/// Rewrites the head as forward.rs does, plus one edit with arbitrary bytes, and parses the encoding back.
fn check_rewrite(head: &RequestHead, rest: &[u8], rng: &mut Rng) {
    let mut edited = head.clone();
    for name in HOP_BY_HOP {
        edited.remove(name);
        assert_eq!(edited.count(name), 0);
    }
    match parse_target(&head.target_bytes(), head.is_method("CONNECT")) {
        Ok(Target::Absolute {
            host, port, path, ..
        }) => {
            edited.set(
                "host",
                host_header_value(Scheme::Http, &host, port).as_bytes(),
            );
            edited.set_target(path.clone());
            assert_eq!(edited.effective_target(), &path[..]);
            assert_eq!(edited.effective_target_bytes(), path);
        }
        Ok(Target::Origin | Target::Authority { .. } | Target::Asterisk) | Err(_) => {}
    }
    edited.append("Via", b"1.1 proxy");
    // Host is not sanitised by the edit API (its rules are the caller's), so the arbitrary edit avoids it.
    if let Some((name, value)) = edit_from(rest).filter(|(n, _)| !n.eq_ignore_ascii_case("host")) {
        match rng.below(3) {
            0 => edited.set(&name, &value),
            1 => edited.append(&name, &value),
            _ => {
                edited.remove(&name);
            }
        }
    }
    check_headers(&edited.headers().collect::<Vec<_>>(), &edited);

    let mut out = Vec::new();
    edited.encode(Version::Http11, &mut out);
    let wire = joined(&out);
    let mut buf = BytesMut::from(&wire[..]);
    let again = match parse_request(&mut buf, &reparse_limits()) {
        Ok(Parsed::Complete(again)) => again,
        other => panic!(
            "the rewritten head does not parse back: {other:?}\n{:?}",
            String::from_utf8_lossy(&wire)
        ),
    };
    assert!(buf.is_empty(), "bytes left after the rewritten head");
    assert_eq!(again.method(), edited.method());
    assert_eq!(again.target(), edited.effective_target());
    assert_eq!(again.version(), Version::Http11);
    assert_eq!(
        header_list(again.headers()),
        header_list(edited.headers()),
        "what is sent differs from what the edited head reports\n{:?}",
        String::from_utf8_lossy(&wire)
    );
}
